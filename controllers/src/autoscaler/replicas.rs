//! The replica calculator (kubernetes/pkg/controller/podautoscaler/replica_calculator.go): how
//! many replicas bring one metric to its target, from the target's pods and their samples.
//!
//! - Pods being deleted or Failed are ignored; Pending ones count as unready.
//! - For CPU, a pod still in its initialization period (`--horizontal-pod-autoscaler-cpu-
//!   initialization-period`, 5 min from its start) is unready while it is not Ready or its
//!   sample was taken within one window of its last readiness change; after that, a pod that
//!   is not Ready and never was (its readiness last changed within the initial readiness
//!   delay, 30 s, of its start) is unready.
//! - The ratio of usage to target over the ready pods with samples decides. Within the
//!   tolerance (0.1) nothing changes. Otherwise, when no pod lacks a sample and no unready
//!   pod could hold back a scale-up, the count is `ceil(ratio × ready pods)`.
//! - Else the ratio is worked out again, pessimistically: pods without a sample count as
//!   using the whole target (100% of their request) when scaling down and nothing when
//!   scaling up, unready pods as nothing when scaling up. If that flips the direction or
//!   falls within tolerance, nothing changes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

/// The calculator's settings: kube-controller-manager's flags of the same names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// `--horizontal-pod-autoscaler-tolerance` (0.1).
    pub tolerance: f64,
    /// `--horizontal-pod-autoscaler-cpu-initialization-period` (5 min).
    pub cpu_initialization_period: Duration,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay` (30 s).
    pub initial_readiness_delay: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tolerance: 0.1,
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// What the calculator reads of a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub name: String,
    pub phase: Phase,
    pub deleting: bool,
    /// The Ready condition: (status is True, lastTransitionTime).
    pub ready: Option<(bool, Timestamp)>,
    pub start_time: Option<Timestamp>,
    /// The summed request of the metric's resource (milli-units), or why there is none.
    pub request: Result<i64, String>,
}

/// One pod's sample of the metric, in milli-units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub value: i64,
    pub timestamp: Timestamp,
    pub window: Duration,
}

/// What the metric is held to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Percent of the pods' requests.
    Utilization(i32),
    /// A value per pod (milli-units).
    AverageValue(i64),
}

/// One metric's proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub replicas: i32,
    /// The current utilization, percent of requests (Utilization targets only).
    pub utilization: Option<i32>,
    /// The current average value per pod (milli-units).
    pub average: i64,
    /// When the samples were taken (the oldest).
    pub timestamp: Option<Timestamp>,
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(t)
}

/// (ready count, unready, missing, ignored) — `groupPods`.
fn group(
    pods: &[PodInfo],
    samples: &BTreeMap<String, Sample>,
    cpu: bool,
    s: &Settings,
    now: Timestamp,
) -> (usize, BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let (mut ready, mut unready, mut missing, mut ignored) =
        (0, BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for pod in pods {
        if pod.deleting || pod.phase == Phase::Failed {
            ignored.insert(pod.name.clone());
            continue;
        }
        if pod.phase == Phase::Pending {
            unready.insert(pod.name.clone());
            continue;
        }
        let Some(sample) = samples.get(&pod.name) else {
            missing.insert(pod.name.clone());
            continue;
        };
        if cpu {
            let is_unready = match (pod.ready, pod.start_time) {
                (None, _) | (_, None) => true,
                (Some((is_ready, changed)), Some(start)) => {
                    if after(start, s.cpu_initialization_period) > now {
                        !is_ready || sample.timestamp < after(changed, sample.window)
                    } else {
                        !is_ready && after(start, s.initial_readiness_delay) > changed
                    }
                }
            };
            if is_unready {
                unready.insert(pod.name.clone());
                continue;
            }
        }
        ready += 1;
    }
    (ready, unready, missing, ignored)
}

/// Usage over target for `samples`: (ratio, current utilization or average, raw average).
fn ratio(
    samples: &BTreeMap<String, Sample>,
    requests: &BTreeMap<&str, i64>,
    target: Target,
) -> Result<(f64, Option<i32>, i64), String> {
    match target {
        Target::Utilization(pct) => {
            let (mut used, mut requested, mut counted) = (0i64, 0i64, 0i64);
            for (pod, sample) in samples {
                if let Some(r) = requests.get(pod.as_str()) {
                    used = used.saturating_add(sample.value);
                    requested = requested.saturating_add(*r);
                    counted += 1;
                }
            }
            if requested == 0 {
                return Err("no metrics returned matched known pods".into());
            }
            let utilization = (used.saturating_mul(100) / requested) as i32;
            let raw = used / counted;
            Ok((
                utilization as f64 / pct.max(1) as f64,
                Some(utilization),
                raw,
            ))
        }
        Target::AverageValue(v) => {
            let total: i64 = samples.values().map(|s| s.value).sum();
            let average = total / samples.len().max(1) as i64;
            Ok((average as f64 / v.max(1) as f64, None, average))
        }
    }
}

/// The replicas `target` calls for, from the `current` count, the target's pods and their
/// samples (keyed by pod name).
pub fn replicas(
    current: i32,
    target: Target,
    cpu: bool,
    pods: &[PodInfo],
    samples: &BTreeMap<String, Sample>,
    s: &Settings,
    now: Timestamp,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let (ready, unready, missing, ignored) = group(pods, samples, cpu, s, now);
    let mut samples: BTreeMap<String, Sample> = samples
        .iter()
        .filter(|(p, _)| !unready.contains(*p) && !ignored.contains(*p))
        .filter(|(p, _)| pods.iter().any(|pod| &pod.name == *p))
        .map(|(p, v)| (p.clone(), *v))
        .collect();
    if samples.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let mut requests: BTreeMap<&str, i64> = BTreeMap::new();
    if let Target::Utilization(_) = target {
        for pod in pods {
            requests.insert(&pod.name, pod.request.clone()?);
        }
    }
    let timestamp = samples.values().map(|v| v.timestamp).min();
    let (usage_ratio, utilization, average) = ratio(&samples, &requests, target)?;
    let proposal = |replicas| Proposal {
        replicas,
        utilization,
        average,
        timestamp,
    };
    let scale_up_with_unready = !unready.is_empty() && usage_ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - usage_ratio).abs() <= s.tolerance {
            return Ok(proposal(current));
        }
        return Ok(proposal((usage_ratio * ready as f64).ceil() as i32));
    }
    let fill = |value: i64| Sample {
        value,
        timestamp: now,
        window: Duration::ZERO,
    };
    for pod in &missing {
        // Missing pods count as using the whole target (at least their request) on the way
        // down, nothing on the way up.
        let value = match target {
            Target::Utilization(pct) if usage_ratio < 1.0 => {
                let fallback = i64::from(pct.max(100));
                Some(requests.get(pod.as_str()).copied().unwrap_or(0) * fallback / 100)
            }
            Target::Utilization(_) => (usage_ratio > 1.0).then_some(0),
            Target::AverageValue(v) => Some(if usage_ratio < 1.0 { v } else { 0 }),
        };
        if let Some(value) = value {
            samples.insert(pod.clone(), fill(value));
        }
    }
    if scale_up_with_unready {
        for pod in &unready {
            samples.insert(pod.clone(), fill(0));
        }
    }
    let (new_ratio, _, _) = ratio(&samples, &requests, target)?;
    if (1.0 - new_ratio).abs() <= s.tolerance
        || (usage_ratio < 1.0 && new_ratio > 1.0)
        || (usage_ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = (new_ratio * samples.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

#[cfg(test)]
#[path = "replicas_tests.rs"]
mod tests;
