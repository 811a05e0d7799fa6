//! `metav1.Condition` lists as custom resources keep them (apimachinery's
//! `meta.SetStatusCondition`): one condition per type, its transition time kept while its
//! status holds, in an order the kind chooses.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// One condition to set.
#[derive(Clone, Debug)]
pub struct Set<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
}

/// Sets condition `c` in `conds` (observed at `generation`), then orders the list as `order`
/// names the types (others last).
pub fn set(
    conds: &mut Vec<Condition>,
    c: Set<'_>,
    generation: Option<i64>,
    now: Timestamp,
    order: &[&str],
) {
    let status = if c.status { "True" } else { "False" };
    let since = conds
        .iter()
        .find(|old| old.type_ == c.type_ && old.status == status)
        .map(|old| old.last_transition_time.clone())
        .unwrap_or(Time(now));
    conds.retain(|old| old.type_ != c.type_);
    conds.push(Condition {
        type_: c.type_.into(),
        status: status.into(),
        reason: c.reason.into(),
        message: c.message,
        last_transition_time: since,
        observed_generation: generation,
    });
    conds.sort_by_key(|x| {
        order
            .iter()
            .position(|t| *t == x.type_)
            .unwrap_or(order.len())
    });
}

/// Whether `conds` has `type_` with status True.
pub fn is_true(conds: &[Condition], type_: &str) -> bool {
    conds.iter().any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_times_hold_while_the_status_does() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let order = ["Ready", "Stalled"];
        let mut conds = Vec::new();
        let c = |status, reason| Set {
            type_: "Ready",
            status,
            reason,
            message: String::new(),
        };
        set(
            &mut conds,
            Set {
                type_: "Stalled",
                status: true,
                reason: "X",
                message: "m".into(),
            },
            Some(1),
            t0,
            &order,
        );
        set(&mut conds, c(false, "A"), Some(1), t0, &order);
        set(&mut conds, c(false, "B"), Some(2), t1, &order);
        assert_eq!(conds[0].type_, "Ready");
        assert_eq!(
            (conds[0].reason.as_str(), conds[0].last_transition_time.0),
            ("B", t0)
        );
        set(&mut conds, c(true, "C"), Some(2), t1, &order);
        assert_eq!(conds[0].last_transition_time.0, t1);
        assert!(is_true(&conds, "Ready") && is_true(&conds, "Stalled"));
        assert_eq!(conds.len(), 2);
    }
}
