//! The decision of one sync, without I/O: from the triggers' proposals and activity, the
//! target's current count and the bounds, what to set — KEDA's rules around the HPA's.
//! - At zero: the first active trigger wakes the target straight to its proposal (at least 1,
//!   within bounds); with minReplicas above 0 it goes to minReplicas.
//! - Above zero: the highest proposal, within max(minReplicas, 1) and maxReplicas, goes through
//!   the behavior (stabilization and rate policies) — or, with minReplicas 0 and no trigger
//!   active for the cooldown period, straight to zero.
//! - No proposal at all (every source failing without fallback): the count stays (within bounds).

use std::time::Duration;

use jiff::Timestamp;

/// What a sync decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave the count.
    Stay,
    /// Set this count as is (waking from zero, to zero after the cooldown, into bounds).
    Direct { replicas: i32, reason: String },
    /// Bring the count towards this one through the behavior.
    Behave { replicas: i32, reason: String },
}

/// The inputs of a decision.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub current: i32,
    pub min: i32,
    pub max: i32,
    /// Each trigger's proposal (None: it proposes nothing).
    pub proposals: &'a [Option<i32>],
    pub active: bool,
    /// When some trigger was last active (else when the policy was made).
    pub last_active: Timestamp,
    pub cooldown: Duration,
    pub now: Timestamp,
}

pub fn decide(i: &Inputs) -> Decision {
    let floor = i.min.max(1);
    let best = i.proposals.iter().flatten().copied().max();
    if i.current == 0 {
        if i.active {
            let replicas = best.unwrap_or(1).clamp(floor, i.max.max(floor));
            return Decision::Direct {
                replicas,
                reason: "a trigger became active".into(),
            };
        }
        if i.min > 0 {
            return Decision::Direct {
                replicas: i.min,
                reason: "below minReplicas".into(),
            };
        }
        return Decision::Stay;
    }
    if !i.active && i.min == 0 {
        let quiet = i.now.duration_since(i.last_active);
        if quiet >= jiff::SignedDuration::try_from(i.cooldown).unwrap_or_default() {
            return Decision::Direct {
                replicas: 0,
                reason: format!(
                    "no trigger active for the cooldown period ({}s)",
                    i.cooldown.as_secs()
                ),
            };
        }
    }
    if i.current > i.max {
        return Decision::Direct {
            replicas: i.max,
            reason: "above maxReplicas".into(),
        };
    }
    if i.current < floor {
        return Decision::Direct {
            replicas: floor,
            reason: "below minReplicas".into(),
        };
    }
    match best {
        None => Decision::Stay,
        Some(b) => {
            let replicas = b.clamp(floor, i.max.max(floor));
            let reason = if replicas > i.current {
                "triggers above target".to_string()
            } else {
                "all triggers below target".to_string()
            };
            Decision::Behave { replicas, reason }
        }
    }
}

/// ceil(value / per_replica) as a count (0 for nothing; saturating for absurd values).
pub fn per_replica(value: f64, per_replica: f64) -> i32 {
    // (NaN is neither above nor below zero: it proposes nothing.)
    if value.is_nan() || per_replica.is_nan() || value <= 0.0 || per_replica <= 0.0 {
        return 0;
    }
    let n = (value / per_replica).ceil();
    if n >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        n as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn decide_with(
        current: i32,
        min: i32,
        proposals: &[Option<i32>],
        active: bool,
        quiet: i64,
    ) -> Decision {
        decide(&Inputs {
            current,
            min,
            max: 20,
            proposals,
            active,
            last_active: at(0),
            cooldown: Duration::from_secs(300),
            now: at(quiet),
        })
    }

    #[test]
    fn zero_wakes_on_activity_and_returns_after_the_cooldown() {
        // 50 messages at 10 per replica wake the target straight to 5.
        assert!(matches!(
            decide_with(0, 0, &[Some(5)], true, 0),
            Decision::Direct { replicas: 5, .. }
        ));
        // Active with nothing proposed (a schedule of 0): at least one.
        assert!(matches!(
            decide_with(0, 0, &[None], true, 0),
            Decision::Direct { replicas: 1, .. }
        ));
        // Quiet at zero stays.
        assert_eq!(decide_with(0, 0, &[Some(0)], false, 1000), Decision::Stay);
        // Drained: within the cooldown the count only comes down to 1 (through behavior) …
        assert!(matches!(
            decide_with(5, 0, &[Some(0)], false, 299),
            Decision::Behave { replicas: 1, .. }
        ));
        // … and after it, to zero at once.
        assert!(matches!(
            decide_with(5, 0, &[Some(0)], false, 300),
            Decision::Direct { replicas: 0, .. }
        ));
        // minReplicas 2 never goes to zero, and lifts a target found at zero.
        assert!(matches!(
            decide_with(5, 2, &[Some(0)], false, 9999),
            Decision::Behave { replicas: 2, .. }
        ));
        assert!(matches!(
            decide_with(0, 2, &[None], false, 0),
            Decision::Direct { replicas: 2, .. }
        ));
    }

    #[test]
    fn the_highest_proposal_wins_within_bounds_and_failing_sources_hold_the_count() {
        assert!(matches!(
            decide_with(3, 0, &[Some(2), Some(7), None], true, 0),
            Decision::Behave { replicas: 7, .. }
        ));
        assert!(matches!(
            decide_with(3, 0, &[Some(99)], true, 0),
            Decision::Behave { replicas: 20, .. }
        ));
        assert!(matches!(
            decide_with(25, 0, &[Some(3)], true, 0),
            Decision::Direct { replicas: 20, .. }
        ));
        assert_eq!(decide_with(3, 0, &[None, None], true, 0), Decision::Stay);
        assert_eq!(per_replica(50.0, 10.0), 5);
        assert_eq!(per_replica(51.0, 10.0), 6);
        assert_eq!(per_replica(0.0, 10.0), 0);
        assert_eq!(per_replica(f64::NAN, 10.0), 0);
        assert_eq!(per_replica(1e300, 1.0), i32::MAX);
    }
}
