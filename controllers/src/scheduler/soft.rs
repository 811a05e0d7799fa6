//! Soft constraints, as scores added to the profile's (kube-scheduler's NodeAffinity,
//! InterPodAffinity and PodTopologySpread score plugins, each weighted 2 as in its default
//! profile):
//! - preferred node affinity: the weights of the preferred terms a node matches;
//! - preferred pod affinity and anti-affinity: per term, its weight times the pods it selects
//!   in the node's topology domain, added for affinity and taken away for anti-affinity;
//! - `whenUnsatisfiable: ScheduleAnyway` topology spread: fewer matching pods in the node's
//!   domain score higher.
//!
//! Each is normalized over the feasible nodes to 0–100, so a pod without soft constraints is
//! placed exactly as before. Pod affinity is scored both ways, as InterPodAffinity does: the
//! terms of pods already placed that select the incoming pod count too — their preferred
//! affinity (+weight) and anti-affinity (−weight), and their required affinity (+1,
//! `hardPodAffinityWeight`), in the placed pod's domain.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{
    Pod, PodAffinityTerm, PreferredSchedulingTerm, TopologySpreadConstraint,
};

use super::cache::{Cache, NodeInfo};
use super::filter::{affinity_terms, node_affinity_fits, selector_matches, term_matches};

/// Each plugin's weight in the sum.
const WEIGHT: f64 = 2.0;
/// What an existing pod's required affinity term selecting the incoming pod is worth.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// A pod's preferred pod (anti-)affinity terms with their signed weights.
fn preferred_pod_terms(pod: &Pod) -> Vec<(&PodAffinityTerm, i64)> {
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let mut out = Vec::new();
    for (terms, sign) in [
        (
            affinity
                .and_then(|a| a.pod_affinity.as_ref())
                .and_then(|p| {
                    p.preferred_during_scheduling_ignored_during_execution
                        .as_deref()
                }),
            1,
        ),
        (
            affinity
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|p| {
                    p.preferred_during_scheduling_ignored_during_execution
                        .as_deref()
                }),
            -1,
        ),
    ] {
        for w in terms.unwrap_or(&[]) {
            out.push((&w.pod_affinity_term, sign * w.weight as i64));
        }
    }
    out
}

/// Whether a placed pod's terms score incoming pods (the cache keeps such pods whole).
pub fn has_pod_terms(pod: &Pod) -> bool {
    !preferred_pod_terms(pod).is_empty() || !affinity_terms(pod).is_empty()
}

/// What scoring needs of the pod's soft constraints, computed once per attempt.
#[derive(Debug)]
pub struct Soft<'a> {
    preferred_nodes: &'a [PreferredSchedulingTerm],
    /// Per preferred pod (anti-)affinity term: its topology key and the signed weight each
    /// domain earns.
    pod_terms: Vec<(String, HashMap<String, i64>)>,
    /// Per ScheduleAnyway constraint: its topology key and the matching pods per domain.
    spread: Vec<(String, HashMap<String, i64>)>,
}

impl<'a> Soft<'a> {
    /// None when the pod has no soft constraints.
    pub fn new(pod: &'a Pod, cache: &Cache) -> Option<Soft<'a>> {
        let spec = pod.spec.as_ref()?;
        let affinity = spec.affinity.as_ref();
        let preferred_nodes = affinity
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or(&[]);
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let weighted = preferred_pod_terms(pod);
        let anyway: Vec<&TopologySpreadConstraint> = spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .filter(|c| c.when_unsatisfiable == "ScheduleAnyway")
            .collect();
        let symmetric = symmetric_terms(pod, cache);
        if preferred_nodes.is_empty()
            && weighted.is_empty()
            && anyway.is_empty()
            && symmetric.is_empty()
        {
            return None;
        }
        let mut pod_terms = symmetric;
        for (term, weight) in weighted {
            let mut per_domain: HashMap<String, i64> = HashMap::new();
            for info in cache.nodes.values() {
                let Some(v) = info.labels().and_then(|l| l.get(&term.topology_key)) else {
                    continue;
                };
                let n = info
                    .pods
                    .values()
                    .filter(|p| term_matches(term, ns, &p.namespace, &p.labels))
                    .count() as i64;
                *per_domain.entry(v.clone()).or_default() += weight * n;
            }
            pod_terms.push((term.topology_key.clone(), per_domain));
        }
        let mut spread = Vec::new();
        for c in anyway {
            let mut counts: HashMap<String, i64> = HashMap::new();
            for info in cache.candidates().filter(|n| node_affinity_fits(pod, n)) {
                let Some(v) = info.labels().and_then(|l| l.get(&c.topology_key)) else {
                    continue;
                };
                let n = info
                    .pods
                    .values()
                    .filter(|p| {
                        p.namespace == ns && selector_matches(c.label_selector.as_ref(), &p.labels)
                    })
                    .count() as i64;
                *counts.entry(v.clone()).or_default() += n;
            }
            spread.push((c.topology_key.clone(), counts));
        }
        Some(Soft {
            preferred_nodes,
            pod_terms,
            spread,
        })
    }

    /// The soft score of each feasible node (0 to 600).
    pub fn scores(&self, feasible: &[&NodeInfo]) -> Vec<f64> {
        let value = |n: &NodeInfo, key: &str| n.labels().and_then(|l| l.get(key)).cloned();
        let empty = std::collections::BTreeMap::new();
        let node_affinity: Vec<i64> = feasible
            .iter()
            .map(|n| {
                self.preferred_nodes
                    .iter()
                    .filter(|t| {
                        crate::nodeaffinity::term_fits(
                            &t.preference,
                            n.labels().unwrap_or(&empty),
                            &n.name,
                        )
                    })
                    .map(|t| t.weight as i64)
                    .sum()
            })
            .collect();
        let pod_affinity: Vec<i64> = feasible
            .iter()
            .map(|n| {
                self.pod_terms
                    .iter()
                    .filter_map(|(key, per)| per.get(&value(n, key)?).copied())
                    .sum()
            })
            .collect();
        let spread: Vec<i64> = feasible
            .iter()
            .map(|n| {
                self.spread
                    .iter()
                    .map(|(key, counts)| match value(n, key) {
                        Some(v) => counts.get(&v).copied().unwrap_or(0),
                        // A node without the key is the least wanted.
                        None => counts.values().copied().max().unwrap_or(0) + 1,
                    })
                    .sum()
            })
            .collect();
        let up = normalize(&node_affinity, false);
        let pods = normalize(&pod_affinity, false);
        let spread = normalize(&spread, true);
        (0..feasible.len())
            .map(|i| WEIGHT * (up[i] + pods[i] + spread[i]))
            .collect()
    }
}

/// The placed pods' terms that select `pod`: per topology key, the signed weight each domain
/// earns (see the module docs).
fn symmetric_terms(pod: &Pod, cache: &Cache) -> Vec<(String, HashMap<String, i64>)> {
    if cache.with_anti_affinity == 0 {
        return Vec::new();
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let empty = std::collections::BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let mut by_key: HashMap<String, HashMap<String, i64>> = HashMap::new();
    for info in cache.nodes.values() {
        for placed in info.pods.values() {
            let Some(other) = placed.pod.as_ref() else {
                continue;
            };
            let hard = affinity_terms(other)
                .iter()
                .map(|t| (t, HARD_POD_AFFINITY_WEIGHT));
            for (term, weight) in preferred_pod_terms(other).into_iter().chain(hard) {
                if !term_matches(term, &placed.namespace, ns, labels) {
                    continue;
                }
                let Some(v) = info.labels().and_then(|l| l.get(&term.topology_key)) else {
                    continue;
                };
                *by_key
                    .entry(term.topology_key.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default() += weight;
            }
        }
    }
    by_key.into_iter().collect()
}

/// Scales raw scores to 0–100 over the nodes (`reverse`: lower raw is better); all equal: 0.
fn normalize(raw: &[i64], reverse: bool) -> Vec<f64> {
    let (Some(min), Some(max)) = (raw.iter().min(), raw.iter().max()) else {
        return Vec::new();
    };
    if min == max {
        return vec![0.0; raw.len()];
    }
    let span = (max - min) as f64;
    raw.iter()
        .map(|&r| {
            let x = (r - min) as f64 / span * 100.0;
            if reverse { 100.0 - x } else { x }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Node;
    use serde_json::{Value, json};

    use super::*;

    fn node(name: &str, zone: &str, extra: Value) -> Arc<Node> {
        let mut labels = json!({"kubernetes.io/hostname": name, "zone": zone});
        if let Some(m) = extra.as_object() {
            for (k, v) in m {
                labels[k] = v.clone();
            }
        }
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
                "status": {"allocatable": {"cpu": "8", "memory": "8Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap(),
        )
    }

    fn pod(name: &str, labels: Value, spec: Value) -> Arc<Pod> {
        let mut s = json!({"containers": [{"name": "c", "image": "x"}]});
        if let Some(m) = spec.as_object() {
            for (k, v) in m {
                s[k] = v.clone();
            }
        }
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default",
                "uid": name, "labels": labels}, "spec": s}))
            .unwrap(),
        )
    }

    fn best(soft: &Soft<'_>, c: &Cache) -> String {
        let feasible: Vec<&NodeInfo> = c.candidates().collect();
        let scores = soft.scores(&feasible);
        let i = (0..scores.len())
            .max_by(|a, b| scores[*a].total_cmp(&scores[*b]).then(b.cmp(a)))
            .unwrap();
        feasible[i].name.clone()
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

    #[test]
    fn preferred_node_affinity_weights_decide() {
        let c = cache(
            &[
                node("a", "z1", json!({"disk": "hdd"})),
                node("b", "z1", json!({"disk": "ssd", "gpu": "yes"})),
            ],
            &[],
        );
        let p = pod(
            "p",
            json!({}),
            json!({"affinity": {"nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
                {"weight": 1, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]}}]}}}),
        );
        let soft = Soft::new(&p, &c).unwrap();
        assert_eq!(best(&soft, &c), "b");
        let plain = pod("q", json!({}), json!({}));
        assert!(
            Soft::new(&plain, &c).is_none(),
            "nothing soft, nothing to add"
        );
    }

    #[test]
    fn placed_pods_terms_score_the_incoming_pod_both_ways() {
        // "cache" wants web pods in its zone; "loner" wants them out of its zone.
        let cache_pod = pod(
            "cache",
            json!({"app": "cache"}),
            json!({"affinity": {"podAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50,
                    "podAffinityTerm": {"topologyKey": "zone",
                        "labelSelector": {"matchLabels": {"app": "web"}}}}]}}}),
        );
        let loner = pod(
            "loner",
            json!({"app": "loner"}),
            json!({"affinity": {"podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100,
                    "podAffinityTerm": {"topologyKey": "zone",
                        "labelSelector": {"matchLabels": {"app": "web"}}}}]}}}),
        );
        let c = cache(
            &[
                node("a", "z1", json!({})),
                node("b", "z2", json!({})),
                node("c", "z3", json!({})),
            ],
            &[("b", cache_pod), ("c", loner)],
        );
        // A web pod with no soft constraints of its own still goes where "cache" wants it.
        let web = pod("web", json!({"app": "web"}), json!({}));
        let soft = Soft::new(&web, &c).expect("the placed pods' terms select it");
        assert_eq!(best(&soft, &c), "b");
        let feasible: Vec<&NodeInfo> = c.candidates().collect();
        let scores = soft.scores(&feasible);
        assert!(scores[2] < scores[0], "z3 is avoided: {scores:?}");
        // A pod their terms do not select is placed as before.
        let other = pod("db", json!({"app": "db"}), json!({}));
        assert!(Soft::new(&other, &c).is_none());
    }

    #[test]
    fn preferred_pod_affinity_joins_and_anti_affinity_avoids() {
        let c = cache(
            &[
                node("a", "z1", json!({})),
                node("b", "z2", json!({})),
                node("c", "z3", json!({})),
            ],
            &[
                ("b", pod("cache-0", json!({"app": "cache"}), json!({}))),
                ("c", pod("web-0", json!({"app": "web"}), json!({}))),
            ],
        );
        let term = |app: &str| {
            json!({"weight": 50, "podAffinityTerm": {"topologyKey": "zone",
            "labelSelector": {"matchLabels": {"app": app}}}})
        };
        let near_cache = pod(
            "w",
            json!({"app": "web"}),
            json!({"affinity": {
            "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [term("cache")]}}}),
        );
        assert_eq!(best(&Soft::new(&near_cache, &c).unwrap(), &c), "b");
        let away = pod(
            "w2",
            json!({"app": "web"}),
            json!({"affinity": {
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [term("web"), term("cache")]}}}),
        );
        assert_eq!(best(&Soft::new(&away, &c).unwrap(), &c), "a");
    }

    #[test]
    fn schedule_anyway_spread_prefers_emptier_domains() {
        let c = cache(
            &[
                node("a", "z1", json!({})),
                node("b", "z1", json!({})),
                node("c", "z2", json!({})),
            ],
            &[
                ("a", pod("w0", json!({"app": "w"}), json!({}))),
                ("b", pod("w1", json!({"app": "w"}), json!({}))),
            ],
        );
        let p = pod(
            "w2",
            json!({"app": "w"}),
            json!({"topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app": "w"}}}]}),
        );
        assert_eq!(best(&Soft::new(&p, &c).unwrap(), &c), "c");
        assert_eq!(normalize(&[3, 3], true), [0.0, 0.0]);
        assert_eq!(normalize(&[0, 5, 10], false), [0.0, 50.0, 100.0]);
    }
}
