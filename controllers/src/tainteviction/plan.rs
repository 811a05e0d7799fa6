//! Whether a pod may stay on a node with NoExecute taints, and for how long
//! (kubernetes/pkg/controller/tainteviction: getMatchingTolerations, getMinTolerationTime).
//!
//! A pod that does not tolerate every NoExecute taint goes at once. One that does stays for
//! the smallest `tolerationSeconds` among the tolerations that match (a toleration without
//! seconds tolerates for ever; zero or less means at once). Example: taint unreachable, pod
//! tolerating it for 300 s (the DefaultTolerationSeconds admission's default) and tolerating
//! everything for ever through `operator: Exists` → evicted after 300 s.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Taint};

use crate::taints::{NO_EXECUTE, tolerates, tolerations};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No NoExecute taint, or all tolerated for ever.
    Stay,
    /// Evict once this long has passed since the pod was seen on the tainted node.
    EvictAfter(Duration),
}

pub fn verdict(pod: &Pod, taints: &[Taint]) -> Verdict {
    let tols = tolerations(pod);
    let mut min: Option<i64> = None;
    let mut any = false;
    for taint in taints.iter().filter(|t| t.effect == NO_EXECUTE) {
        any = true;
        let matching: Vec<_> = tols.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Verdict::EvictAfter(Duration::ZERO);
        }
        for s in matching.iter().filter_map(|t| t.toleration_seconds) {
            min = Some(min.map_or(s, |m| m.min(s)));
        }
    }
    match (any, min) {
        (false, _) | (true, None) => Verdict::Stay,
        (true, Some(s)) => Verdict::EvictAfter(Duration::from_secs(s.max(0) as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taints::{self, NO_SCHEDULE};
    use k8s_openapi::api::core::v1::{PodSpec, Toleration};

    fn pod(tols: Vec<Toleration>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                tolerations: Some(tols),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tol(key: &str, op: &str, effect: Option<&str>, secs: Option<i64>) -> Toleration {
        Toleration {
            key: (!key.is_empty()).then(|| key.to_string()),
            operator: Some(op.into()),
            effect: effect.map(String::from),
            toleration_seconds: secs,
            ..Default::default()
        }
    }

    #[test]
    fn tolerations_decide_how_long_a_pod_stays() {
        let unreachable = taints::taint(taints::UNREACHABLE, NO_EXECUTE);
        let not_ready = taints::taint(taints::NOT_READY, NO_EXECUTE);
        let default_300 = tol(taints::UNREACHABLE, "Exists", Some(NO_EXECUTE), Some(300));
        let cases: Vec<(&str, Vec<Toleration>, Vec<Taint>, Verdict)> = vec![
            ("no taint", vec![], vec![], Verdict::Stay),
            (
                "NoSchedule only",
                vec![],
                vec![taints::taint(taints::UNREACHABLE, NO_SCHEDULE)],
                Verdict::Stay,
            ),
            (
                "untolerated",
                vec![],
                vec![unreachable.clone()],
                Verdict::EvictAfter(Duration::ZERO),
            ),
            (
                "tolerated 300 s",
                vec![default_300.clone()],
                vec![unreachable.clone()],
                Verdict::EvictAfter(Duration::from_secs(300)),
            ),
            (
                "one of two taints untolerated",
                vec![default_300.clone()],
                vec![unreachable.clone(), not_ready.clone()],
                Verdict::EvictAfter(Duration::ZERO),
            ),
            (
                "for ever",
                vec![tol("", "Exists", None, None)],
                vec![unreachable.clone()],
                Verdict::Stay,
            ),
            (
                "the smallest matching seconds win",
                vec![
                    tol("", "Exists", None, None),
                    default_300.clone(),
                    tol(taints::UNREACHABLE, "Exists", None, Some(5)),
                ],
                vec![unreachable.clone()],
                Verdict::EvictAfter(Duration::from_secs(5)),
            ),
            (
                "negative seconds mean now",
                vec![tol(taints::UNREACHABLE, "Exists", None, Some(-3))],
                vec![unreachable.clone()],
                Verdict::EvictAfter(Duration::ZERO),
            ),
        ];
        for (name, tols, taints, want) in cases {
            assert_eq!(verdict(&pod(tols), &taints), want, "{name}");
        }
    }
}
