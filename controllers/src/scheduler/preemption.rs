//! Preemption (kube-scheduler's DefaultPreemption post-filter), with no I/O: when a pod fits
//! nowhere, which pods of lower priority to evict, and from which node, so that it fits.
//!
//! - A pod preempts unless its `preemptionPolicy` is `Never`; only pods of strictly lower
//!   priority are victims.
//! - Only nodes where removing pods can help are tried: the pod failed there for resources,
//!   pod count, host ports or anti-affinity, never for taints, selectors or a cordon.
//! - On each such node, every lower-priority pod is taken away; if the pod then fits, they are
//!   given back one at a time — those a PodDisruptionBudget protects first, then the rest, each
//!   group from the highest priority down — and whichever no longer lets the pod fit is a
//!   victim (`selectVictimsOnNode`). So the victims are as few and as unimportant as can be.
//! - Among the nodes, the pick (`pickOneNodeForPreemption`): fewest budget violations, then the
//!   lowest highest-victim priority, the smallest sum of victim priorities, the fewest victims,
//!   the most recently started highest-priority victim.
//!
//! Preemption frees resources, ports and anti-affinity domains (a domain forbidden only by
//! pods of the node being tried is free once they are evicted, in both directions); the
//! spread and required-affinity facts of the incoming pod are computed with the victims still
//! in place.

use super::cache::{Cache, NodeInfo, PlacedPod};
use super::filter::{PodFacts, filter};

/// What preemption asks of the rest of the scheduler: whether a PodDisruptionBudget forbids
/// evicting a pod, and when a pod started (read only for the pods in question, so the cache
/// need not follow every pod's start).
pub struct Lookups<'a> {
    pub protected: &'a dyn Fn(&PlacedPod) -> bool,
    pub started: &'a dyn Fn(&PlacedPod) -> Option<jiff::Timestamp>,
}

impl std::fmt::Debug for Lookups<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookups").finish_non_exhaustive()
    }
}

/// A victim with its start time.
#[derive(Debug, Clone)]
pub struct Victim {
    pub pod: PlacedPod,
    pub started: Option<jiff::Timestamp>,
}

/// What preempting on one node takes.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Victim>,
    /// Victims whose eviction a PodDisruptionBudget does not allow.
    pub violations: usize,
}

/// Whether removing pods can fix a filter failure.
fn resolvable(reason: &str) -> bool {
    reason.starts_with("Insufficient")
        || reason == "Too many pods"
        || reason.contains("free ports")
        || reason.contains("anti-affinity")
}

/// A pod of higher priority first, then the one that started earlier (`MoreImportantPod`).
fn more_important_first(pods: &mut [Victim]) {
    pods.sort_by(|a, b| {
        b.pod
            .priority
            .cmp(&a.pod.priority)
            .then_with(|| match (a.started, b.started) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
            .then_with(|| a.pod.name.cmp(&b.pod.name))
    });
}

/// The victims on `node` for a pod of `priority`, if evicting some lets it fit.
fn victims_on(
    facts: &PodFacts<'_>,
    node: &NodeInfo,
    priority: i32,
    look: &Lookups<'_>,
) -> Option<Candidate> {
    let reasons = filter(facts, node);
    if reasons.is_empty() || !reasons.iter().all(|r| resolvable(r)) {
        return None;
    }
    let lower: Vec<PlacedPod> = node
        .pods
        .values()
        .filter(|p| p.priority < priority && !p.terminating && !p.assumed)
        .cloned()
        .collect();
    if lower.is_empty() {
        return None;
    }
    let mut trial = node.clone();
    for p in &lower {
        trial.remove(&p.uid);
    }
    if !filter(facts, &trial).is_empty() {
        return None;
    }
    let (mut guarded, mut free): (Vec<_>, Vec<_>) = lower
        .into_iter()
        .map(|pod| Victim {
            started: (look.started)(&pod),
            pod,
        })
        .partition(|v| (look.protected)(&v.pod));
    more_important_first(&mut guarded);
    more_important_first(&mut free);
    let mut victims = Vec::new();
    let mut violations = 0;
    for (group, counts) in [(guarded, true), (free, false)] {
        for p in group {
            trial.insert(p.pod.clone());
            if !filter(facts, &trial).is_empty() {
                trial.remove(&p.pod.uid);
                if counts {
                    violations += 1;
                }
                victims.push(p);
            }
        }
    }
    Some(Candidate {
        node: node.name.clone(),
        victims,
        violations,
    })
}

/// The best node to preempt on for a pod of `priority` (see the module docs), if any.
pub fn find(
    facts: &PodFacts<'_>,
    cache: &Cache,
    priority: i32,
    look: &Lookups<'_>,
) -> Option<Candidate> {
    let mut candidates: Vec<Candidate> = cache
        .candidates()
        .filter_map(|n| victims_on(facts, n, priority, look))
        .collect();
    // pickOneNodeForPreemption's criteria, as one ordering (smallest first).
    candidates.sort_by_key(|c| {
        let highest = c
            .victims
            .iter()
            .map(|v| v.pod.priority)
            .max()
            .unwrap_or(i32::MIN);
        let sum: i64 = c.victims.iter().map(|v| v.pod.priority as i64).sum();
        let latest = c
            .victims
            .iter()
            .filter(|v| v.pod.priority == highest)
            .filter_map(|v| v.started)
            .min()
            .map(|t| std::cmp::Reverse(t.as_millisecond()));
        (c.violations, highest, sum, c.victims.len(), latest)
    });
    candidates.into_iter().next()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::json;

    use super::*;

    fn node(name: &str, cpu: &str, extra: serde_json::Value) -> Arc<Node> {
        let mut v = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]}});
        if let Some(spec) = extra.get("spec") {
            v["spec"] = spec.clone();
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn pod(name: &str, cpu: &str, priority: i32, _started: i64) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": name,
                    "labels": {"app": name}},
                "spec": {"priority": priority, "containers": [{"name": "c", "image": "x",
                    "resources": {"requests": {"cpu": cpu}}}]}}))
            .unwrap(),
        )
    }

    /// When the test pods started: "new" at 100 s, the others at 0.
    fn started(p: &PlacedPod) -> Option<jiff::Timestamp> {
        let secs = if p.name == "new" { 100 } else { 0 };
        jiff::Timestamp::from_second(1_700_000_000 + secs).ok()
    }

    fn look<'a>(protected: &'a dyn Fn(&PlacedPod) -> bool) -> Lookups<'a> {
        Lookups {
            protected,
            started: &started,
        }
    }

    fn cache(nodes: &[Arc<Node>], pods: &[(&str, Arc<Pod>)]) -> Cache {
        let mut c = Cache::default();
        for n in nodes {
            c.set_node(n.clone());
        }
        for (n, p) in pods {
            c.add_pod(p, n, false);
        }
        c
    }

    fn names(c: &Candidate) -> Vec<String> {
        let mut v: Vec<String> = c.victims.iter().map(|p| p.pod.name.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_fewest_and_least_important_victims_are_chosen() {
        let c = cache(
            &[node("a", "4", json!({})), node("b", "4", json!({}))],
            &[
                ("a", pod("a-low", "2", 1, 0)),
                ("a", pod("a-mid", "2", 50, 0)),
                ("b", pod("b-mid1", "2", 50, 0)),
                ("b", pod("b-mid2", "2", 50, 0)),
            ],
        );
        let high = pod("high", "2", 100, 0);
        let facts = PodFacts::new(&high, &c);
        let got = find(&facts, &c, 100, &look(&|_| false)).unwrap();
        assert_eq!(
            got.node, "a",
            "a's highest victim (1) is lower than b's (50)"
        );
        assert_eq!(
            names(&got),
            ["a-low"],
            "a-mid is given back: the pod fits without evicting it"
        );
        // Equal priorities do not preempt.
        let peer = pod("peer", "2", 50, 0);
        let c2 = cache(
            &[node("b", "4", json!({}))],
            &[("b", pod("b1", "2", 50, 0)), ("b", pod("b2", "2", 50, 0))],
        );
        assert!(find(&PodFacts::new(&peer, &c2), &c2, 50, &look(&|_| false)).is_none());
    }

    #[test]
    fn evicting_the_pods_that_forbid_a_domain_frees_it() {
        let c = cache(
            &[node("a", "8", json!({}))],
            &[("a", pod("db", "1", 1, 0)), ("a", pod("other", "1", 1, 0))],
        );
        // Room enough, but "high" may not share a node with app=db.
        let mut spec = serde_json::to_value(pod("high", "1", 100, 0).as_ref()).unwrap();
        spec["spec"]["affinity"] = json!({"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"app": "db"}}}]}});
        let high: Pod = serde_json::from_value(spec).unwrap();
        let facts = PodFacts::new(&high, &c);
        assert!(!filter(&facts, &c.nodes["a"]).is_empty(), "blocked by db");
        let got = find(&facts, &c, 100, &look(&|_| false)).unwrap();
        assert_eq!(
            names(&got),
            ["db"],
            "only the pod that forbids the node goes"
        );
    }

    #[test]
    fn budgets_steer_preemption_and_untouchable_failures_are_skipped() {
        let c = cache(
            &[
                node("a", "2", json!({})),
                node("b", "2", json!({})),
                node(
                    "tainted",
                    "2",
                    json!({"spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}}),
                ),
            ],
            &[
                ("a", pod("guarded", "2", 1, 0)),
                ("b", pod("free", "2", 10, 0)),
                ("tainted", pod("t", "2", 0, 0)),
            ],
        );
        let high = pod("high", "2", 100, 0);
        let facts = PodFacts::new(&high, &c);
        let protected = |p: &PlacedPod| p.name == "guarded";
        let got = find(&facts, &c, 100, &look(&protected)).unwrap();
        assert_eq!(
            got.node, "b",
            "a violation weighs more than a higher victim priority"
        );
        assert_eq!(got.violations, 0);
        // Only a protected victim left: it is still taken, and counted.
        let only = cache(
            &[node("a", "2", json!({}))],
            &[("a", pod("guarded", "2", 1, 0))],
        );
        let got = find(&PodFacts::new(&high, &only), &only, 100, &look(&protected)).unwrap();
        assert_eq!(
            (names(&got), got.violations),
            (vec!["guarded".to_string()], 1)
        );
        // A node whose taint the pod does not tolerate is never a candidate.
        let tainted = cache(
            &[node(
                "tainted",
                "2",
                json!({"spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}}),
            )],
            &[("tainted", pod("t", "2", 0, 0))],
        );
        assert!(
            find(
                &PodFacts::new(&high, &tainted),
                &tainted,
                100,
                &look(&|_| false)
            )
            .is_none()
        );
    }

    #[test]
    fn ties_go_to_the_node_whose_victims_started_last() {
        let c = cache(
            &[node("a", "2", json!({})), node("b", "2", json!({}))],
            &[("a", pod("old", "2", 5, 0)), ("b", pod("new", "2", 5, 100))],
        );
        let high = pod("high", "2", 100, 0);
        let got = find(&PodFacts::new(&high, &c), &c, 100, &look(&|_| false)).unwrap();
        assert_eq!(got.node, "b");
    }
}
