//! From a proposal to the replicas actually set (kubernetes/pkg/controller/podautoscaler/
//! horizontal.go): stabilization over recent recommendations, the rate limits of `behavior`'s
//! policies counted from the scale events of each policy's period, then min and max — with the
//! AbleToScale and ScalingLimited reasons Kubernetes gives.
//!
//! Without `spec.behavior` (Kubernetes' legacy path): scale-down stabilized over
//! `--horizontal-pod-autoscaler-downscale-stabilization` (5 min), scale-up limited to
//! max(2 × current, 4).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Pods { value: i32, period: Duration },
    Percent { value: i32, period: Duration },
}

impl Policy {
    fn period(&self) -> Duration {
        match self {
            Policy::Pods { period, .. } | Policy::Percent { period, .. } => *period,
        }
    }
}

/// One direction's rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub stabilization: Duration,
    pub select: Select,
    pub policies: Vec<Policy>,
}

impl Rules {
    /// From the API's rules (as the API server defaulted them); `window` when the
    /// stabilization is unset (scale-down's, left to the controller's flag).
    fn from_api(r: Option<&HPAScalingRules>, window: Duration, up: bool) -> Rules {
        let Some(r) = r else {
            return if up {
                default_up()
            } else {
                default_down(window)
            };
        };
        let policies = r
            .policies
            .iter()
            .flatten()
            .filter_map(|p| {
                let period = Duration::from_secs(p.period_seconds.max(0) as u64);
                match p.type_.as_str() {
                    "Pods" => Some(Policy::Pods {
                        value: p.value,
                        period,
                    }),
                    "Percent" => Some(Policy::Percent {
                        value: p.value,
                        period,
                    }),
                    _ => None,
                }
            })
            .collect();
        Rules {
            stabilization: r
                .stabilization_window_seconds
                .map_or(window, |s| Duration::from_secs(s.max(0) as u64)),
            select: match r.select_policy.as_deref() {
                Some("Min") => Select::Min,
                Some("Disabled") => Select::Disabled,
                _ => Select::Max,
            },
            policies,
        }
    }
}

fn default_up() -> Rules {
    let period = Duration::from_secs(15);
    Rules {
        stabilization: Duration::ZERO,
        select: Select::Max,
        policies: vec![
            Policy::Pods { value: 4, period },
            Policy::Percent { value: 100, period },
        ],
    }
}

fn default_down(window: Duration) -> Rules {
    Rules {
        stabilization: window,
        select: Select::Max,
        policies: vec![Policy::Percent {
            value: 100,
            period: Duration::from_secs(15),
        }],
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    pub up: Rules,
    pub down: Rules,
}

impl Behavior {
    /// `spec.behavior`, with `window` for an unset scale-down stabilization.
    pub fn from_api(b: &HorizontalPodAutoscalerBehavior, window: Duration) -> Behavior {
        Behavior {
            up: Rules::from_api(b.scale_up.as_ref(), Duration::ZERO, true),
            down: Rules::from_api(b.scale_down.as_ref(), window, false),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ScaleEvent {
    change: i32,
    at: Timestamp,
    outdated: bool,
}

/// A condition's status, reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

fn reason(status: bool, reason: &'static str, message: &str) -> Reason {
    Reason {
        status,
        reason,
        message: message.into(),
    }
}

/// The normalized count, with the AbleToScale and ScalingLimited conditions it implies.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub replicas: i32,
    pub able: Reason,
    pub limited: Reason,
}

/// One autoscaler's memory: its recent recommendations and scale events.
#[derive(Debug, Clone, Default)]
pub struct History {
    recommendations: Vec<(Timestamp, i32)>,
    up: Vec<ScaleEvent>,
    down: Vec<ScaleEvent>,
}

fn before(now: Timestamp, d: Duration) -> Timestamp {
    now.checked_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

/// Replicas added (or removed) within `period` before `now`.
fn changed_within(events: &[ScaleEvent], period: Duration, now: Timestamp) -> i32 {
    let cutoff = before(now, period);
    events
        .iter()
        .filter(|e| e.at > cutoff)
        .map(|e| e.change)
        .sum()
}

const WITHIN_RANGE: &str = "the desired count is within the acceptable range";
const UP_STABILIZED: &str =
    "recent recommendations were lower than current one, applying the lowest recent recommendation";
const DOWN_STABILIZED: &str = "recent recommendations were higher than current one, applying the highest recent recommendation";
const READY: &str = "recommended size matches current size";
const TOO_FEW: &str = "the desired replica count is less than the minimum replica count";
const TOO_MANY: &str = "the desired replica count is more than the maximum replica count";

impl History {
    /// The first recommendation is the count found (`recordInitialRecommendation`).
    pub fn record_initial(&mut self, current: i32, now: Timestamp) {
        if self.recommendations.is_empty() {
            self.recommendations.push((now, current));
        }
    }

    /// `desired` (the metrics' proposal) brought to what may be set now.
    #[allow(clippy::too_many_arguments)]
    pub fn normalize(
        &mut self,
        behavior: Option<&Behavior>,
        downscale_window: Duration,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: Timestamp,
    ) -> Normalized {
        match behavior {
            Some(b) => self.with_behavior(b, current, desired, min, max, now),
            None => self.legacy(downscale_window, current, desired, min, max, now),
        }
    }

    /// `normalizeDesiredReplicas`.
    fn legacy(
        &mut self,
        window: Duration,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: Timestamp,
    ) -> Normalized {
        let cutoff = before(now, window);
        let mut highest = desired;
        let mut old = None;
        for (i, (at, r)) in self.recommendations.iter().enumerate() {
            if *at < cutoff {
                old = Some(i);
            } else if *r > highest {
                highest = *r;
            }
        }
        match old {
            Some(i) => self.recommendations[i] = (now, desired),
            None => self.recommendations.push((now, desired)),
        }
        let able = if highest != desired {
            reason(true, "ScaleDownStabilized", DOWN_STABILIZED)
        } else {
            reason(true, "ReadyForNewScale", READY)
        };
        let up_limit = (2 * current).max(4);
        let (ceiling, why, message) = if max > up_limit {
            (
                up_limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (max, "TooManyReplicas", TOO_MANY)
        };
        let (replicas, limited) = if highest < min {
            (min, reason(true, "TooFewReplicas", TOO_FEW))
        } else if highest > ceiling {
            (ceiling, reason(true, why, message))
        } else {
            (highest, reason(false, "DesiredWithinRange", WITHIN_RANGE))
        };
        Normalized {
            replicas,
            able,
            limited,
        }
    }

    /// `normalizeDesiredReplicasWithBehaviors`.
    fn with_behavior(
        &mut self,
        b: &Behavior,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: Timestamp,
    ) -> Normalized {
        let (up_cutoff, down_cutoff) = (
            before(now, b.up.stabilization),
            before(now, b.down.stabilization),
        );
        let (mut up, mut down) = (desired, desired);
        let mut old = None;
        for (i, (at, r)) in self.recommendations.iter().enumerate() {
            if *at > up_cutoff {
                up = up.min(*r);
            }
            if *at > down_cutoff {
                down = down.max(*r);
            }
            if *at < up_cutoff && *at < down_cutoff {
                old = Some(i);
            }
        }
        let stabilized = current.max(up).min(down);
        match old {
            Some(i) => self.recommendations[i] = (now, desired),
            None => self.recommendations.push((now, desired)),
        }
        let able = if stabilized == desired {
            reason(true, "ReadyForNewScale", READY)
        } else if desired >= current {
            reason(true, "ScaleUpStabilized", UP_STABILIZED)
        } else {
            reason(true, "ScaleDownStabilized", DOWN_STABILIZED)
        };
        let (replicas, limited) = self.rate_limited(b, current, stabilized, min, max, now);
        Normalized {
            replicas,
            able,
            limited,
        }
    }

    /// `convertDesiredReplicasWithBehaviorRate`.
    fn rate_limited(
        &self,
        b: &Behavior,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: Timestamp,
    ) -> (i32, Reason) {
        if desired > current {
            let limit = self.limit(current, &b.up, now, true).max(current);
            let (ceiling, why) = if max > limit {
                (
                    limit,
                    reason(
                        true,
                        "ScaleUpLimit",
                        "the desired replica count is increasing faster than the maximum scale rate",
                    ),
                )
            } else {
                (max, reason(true, "TooManyReplicas", TOO_MANY))
            };
            if desired > ceiling {
                return (ceiling, why);
            }
        } else if desired < current {
            let limit = self.limit(current, &b.down, now, false).min(current);
            let (floor, why) = if min < limit {
                (
                    limit,
                    reason(
                        true,
                        "ScaleDownLimit",
                        "the desired replica count is decreasing faster than the maximum scale rate",
                    ),
                )
            } else {
                (min, reason(true, "TooFewReplicas", TOO_FEW))
            };
            if desired < floor {
                return (floor, why);
            }
        }
        (desired, reason(false, "DesiredWithinRange", WITHIN_RANGE))
    }

    /// The count each policy's period started from.
    fn period_start(&self, current: i32, period: Duration, now: Timestamp) -> i32 {
        current - changed_within(&self.up, period, now) + changed_within(&self.down, period, now)
    }

    /// How far the policies let the count go from `current` in one direction
    /// (`calculateScaleUpLimitWithScalingRules`, `calculateScaleDownLimitWithBehaviors`): each
    /// policy's bound counted from its period's starting count; selectPolicy Max takes the
    /// largest change, Min the smallest, Disabled none.
    fn limit(&self, current: i32, rules: &Rules, now: Timestamp, up: bool) -> i32 {
        if rules.select == Select::Disabled {
            return current;
        }
        let highest = (rules.select == Select::Max) == up;
        let (mut result, pick): (i32, fn(i32, i32) -> i32) = if highest {
            (i32::MIN, i32::max)
        } else {
            (i32::MAX, i32::min)
        };
        for p in &rules.policies {
            let start = self.period_start(current, p.period(), now);
            let proposed = match (*p, up) {
                (Policy::Pods { value, .. }, true) => start.saturating_add(value),
                (Policy::Pods { value, .. }, false) => start.saturating_sub(value),
                (Policy::Percent { value, .. }, true) => {
                    (f64::from(start) * (1.0 + f64::from(value) / 100.0)).ceil() as i32
                }
                (Policy::Percent { value, .. }, false) => {
                    (f64::from(start) * (1.0 - f64::from(value) / 100.0)) as i32
                }
            };
            result = pick(result, proposed);
        }
        result
    }

    /// Records a rescale from `from` to `to` (`storeScaleEvent`; only with `behavior`, whose
    /// rate limits read the events), reusing a slot older than the longest policy period.
    pub fn record_scale(
        &mut self,
        behavior: Option<&Behavior>,
        from: i32,
        to: i32,
        now: Timestamp,
    ) {
        let Some(b) = behavior else {
            return;
        };
        let (events, rules, change) = if to > from {
            (&mut self.up, &b.up, to - from)
        } else {
            (&mut self.down, &b.down, from - to)
        };
        let longest = rules
            .policies
            .iter()
            .map(Policy::period)
            .max()
            .unwrap_or_default();
        let cutoff = before(now, longest);
        for e in events.iter_mut() {
            if e.at < cutoff {
                e.outdated = true;
            }
        }
        let fresh = ScaleEvent {
            change,
            at: now,
            outdated: false,
        };
        match events.iter_mut().find(|e| e.outdated) {
            Some(slot) => *slot = fresh,
            None => events.push(fresh),
        }
    }
}

#[cfg(test)]
#[path = "behavior_tests.rs"]
mod tests;
