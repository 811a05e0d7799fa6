//! A PodDisruptionBudget's status from its pods (kubernetes/pkg/controller/disruption:
//! getExpectedPodCount, countHealthyPods, buildDisruptedPodMap, updatePdbStatus), pure.
//!
//! | spec              | expectedPods                 | desiredHealthy                      |
//! |-------------------|------------------------------|-------------------------------------|
//! | minAvailable: 2   | the selected pods            | 2                                   |
//! | minAvailable: 50% | the controllers' replicas    | ⌈50% × expected⌉                    |
//! | maxUnavailable: N | the controllers' replicas    | expected − N (N of a % rounded up)  |
//!
//! Worked example: a Deployment of 3 replicas, `maxUnavailable: 34%` → ⌈0.34 × 3⌉ = 2
//! unavailable allowed, desiredHealthy 1; with 3 Ready pods, disruptionsAllowed = 3 − 1 = 2.
//!
//! currentHealthy counts the Ready pods that are not being deleted and were not just evicted
//! (an eviction records the pod in `disruptedPods`; the entry lapses when the pod is deleted,
//! or after 2 minutes if it never is). disruptionsAllowed = currentHealthy − desiredHealthy,
//! never below 0, and 0 when no pod is expected.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::podutil;

/// How long an evicted pod stays in `disruptedPods` waiting to be deleted (DeletionTimeout).
pub const DELETION_TIMEOUT: SignedDuration = SignedDuration::from_secs(120);

/// What the budget's status should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computed {
    pub expected_pods: i32,
    pub desired_healthy: i32,
    pub current_healthy: i32,
    pub disruptions_allowed: i32,
    /// Evicted pods not yet deleted, with when they were evicted.
    pub disrupted_pods: BTreeMap<String, Timestamp>,
    /// Entries that lapsed (the pod was never deleted): a NotDeleted event each.
    pub expired: Vec<String>,
    /// When the next entry lapses (sync again then).
    pub next_expiry: Option<Timestamp>,
}

/// `value` of `total`, a percentage rounded up or an integer (GetScaledValueFromIntOrPercent).
pub fn scaled(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match value {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            let product = pct * total as i64;
            Ok(if round_up {
                (product + 99).div_euclid(100)
            } else {
                product.div_euclid(100)
            } as i32)
        }
    }
}

fn is_percent(v: &IntOrString) -> bool {
    matches!(v, IntOrString::String(_))
}

/// Whether the budget needs its pods' controllers' scale (percentages, maxUnavailable).
pub fn needs_scale(pdb: &PodDisruptionBudget) -> bool {
    let spec = pdb.spec.as_ref();
    spec.and_then(|s| s.max_unavailable.as_ref()).is_some()
        || spec
            .and_then(|s| s.min_available.as_ref())
            .is_some_and(is_percent)
}

/// The budget's status. `scale`: the sum of the pods' controllers' replicas, when
/// [`needs_scale`] (an error names a pod whose controller has no scale).
pub fn compute(
    pdb: &PodDisruptionBudget,
    pods: &[Arc<Pod>],
    scale: Option<i32>,
    now: Timestamp,
) -> Result<Computed, String> {
    let spec = pdb.spec.clone().unwrap_or_default();
    let (expected, desired) = match (&spec.max_unavailable, &spec.min_available) {
        (Some(max), _) => {
            let expected = scale.ok_or("the pods' controllers' scale is unknown")?;
            let max = scaled(max, expected, true)?;
            (expected, (expected - max).max(0))
        }
        (None, Some(IntOrString::Int(min))) => (pods.len() as i32, *min),
        (None, Some(min)) => {
            let expected = scale.ok_or("the pods' controllers' scale is unknown")?;
            (expected, scaled(min, expected, true)?)
        }
        (None, None) => (0, 0),
    };
    let previous: BTreeMap<String, Timestamp> = pdb
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.as_ref())
        .map(|m| m.iter().map(|(k, t)| (k.clone(), t.0)).collect())
        .unwrap_or_default();
    let mut disrupted = BTreeMap::new();
    let mut expired = Vec::new();
    let mut next_expiry: Option<Timestamp> = None;
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(at) = previous.get(&name) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue; // deleted as expected
        }
        let lapses = at.checked_add(DELETION_TIMEOUT).unwrap_or(*at);
        if lapses <= now {
            expired.push(name);
            continue;
        }
        next_expiry = Some(next_expiry.map_or(lapses, |n| n.min(lapses)));
        disrupted.insert(name, *at);
    }
    let healthy = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default())
                && podutil::is_ready(p)
        })
        .count() as i32;
    let allowed = if expected <= 0 {
        0
    } else {
        (healthy - desired).max(0)
    };
    Ok(Computed {
        expected_pods: expected,
        desired_healthy: desired,
        current_healthy: healthy,
        disruptions_allowed: allowed,
        disrupted_pods: disrupted,
        expired,
        next_expiry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podutil::fixtures::{at, pod};
    use k8s_openapi::api::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pdb(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ready(n: usize) -> Vec<Arc<Pod>> {
        (0..n)
            .map(|i| pod(&format!("p{i}")).running().ready_since(0).build())
            .collect()
    }

    #[test]
    fn percentages_round_up() {
        assert_eq!(scaled(&IntOrString::String("34%".into()), 3, true), Ok(2));
        assert_eq!(scaled(&IntOrString::String("50%".into()), 3, true), Ok(2));
        assert_eq!(scaled(&IntOrString::String("0%".into()), 3, true), Ok(0));
        assert!(scaled(&IntOrString::String("x".into()), 3, true).is_err());
    }

    #[test]
    fn budgets_count_as_kubernetes_does() {
        let now = at(1000);
        let cases = [
            (
                "minAvailable 2 of 3",
                pdb(Some(IntOrString::Int(2)), None),
                None,
                (3, 2, 3, 1),
            ),
            (
                "minAvailable 3 of 3",
                pdb(Some(IntOrString::Int(3)), None),
                None,
                (3, 3, 3, 0),
            ),
            (
                "minAvailable 50% of 3",
                pdb(Some(IntOrString::String("50%".into())), None),
                Some(3),
                (3, 2, 3, 1),
            ),
            (
                "maxUnavailable 1 of 3",
                pdb(None, Some(IntOrString::Int(1))),
                Some(3),
                (3, 2, 3, 1),
            ),
            (
                "maxUnavailable 34% of 3",
                pdb(None, Some(IntOrString::String("34%".into()))),
                Some(3),
                (3, 1, 3, 2),
            ),
            (
                "maxUnavailable 0",
                pdb(None, Some(IntOrString::Int(0))),
                Some(3),
                (3, 3, 3, 0),
            ),
            ("neither", pdb(None, None), None, (0, 0, 3, 0)),
        ];
        for (name, b, scale, (exp, des, cur, allowed)) in cases {
            let c = compute(&b, &ready(3), scale, now).unwrap();
            assert_eq!(
                (
                    c.expected_pods,
                    c.desired_healthy,
                    c.current_healthy,
                    c.disruptions_allowed
                ),
                (exp, des, cur, allowed),
                "{name}"
            );
        }
        assert!(compute(&pdb(None, Some(IntOrString::Int(1))), &ready(3), None, now).is_err());
    }

    #[test]
    fn evicted_pods_do_not_count_until_deleted_or_lapsed() {
        let mut b = pdb(Some(IntOrString::Int(2)), None);
        b.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: Some(BTreeMap::from([
                ("p0".to_string(), Time(at(1000))),
                ("p1".to_string(), Time(at(800))),
                ("gone".to_string(), Time(at(1000))),
            ])),
            ..Default::default()
        });
        let c = compute(&b, &ready(3), None, at(1000)).unwrap();
        // p0 is fresh: not healthy; p1 lapsed (evicted 200 s ago, never deleted); "gone" is.
        assert_eq!(c.disrupted_pods.keys().collect::<Vec<_>>(), vec!["p0"]);
        assert_eq!(c.expired, vec!["p1"]);
        assert_eq!(c.current_healthy, 2);
        assert_eq!(c.disruptions_allowed, 0);
        assert_eq!(c.next_expiry, Some(at(1120)));
        let mut pods = ready(3);
        pods[0] = pod("p0").running().ready_since(0).deleting().build();
        let c = compute(&b, &pods, None, at(1000)).unwrap();
        assert!(c.disrupted_pods.is_empty(), "a deleted pod leaves the map");
        assert_eq!(c.current_healthy, 2);
    }
}
