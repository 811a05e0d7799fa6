//! Filters: can this pod run on this node? Each failing check names its reason in kube-
//! scheduler's words, so "0/5 nodes are available: 3 Insufficient cpu, 2 node(s) had untolerated
//! taint {dedicated: gpu}." reads as it does on Kubernetes.
//!
//! Checks, in order (the first failing group decides): cordoned, not Ready, nodeSelector and
//! required node affinity, NoSchedule/NoExecute taints, cpu/memory/pods (all insufficient ones
//! are named), hostPort conflicts, required pod anti-affinity (both the incoming pod's terms and
//! those of pods already placed), required pod affinity (a pod its term selects in the node's
//! domain; the first pod of a group that selects itself may go anywhere), DoNotSchedule
//! topology spread constraints.

use std::collections::{BTreeMap, HashMap, HashSet};

use capstan_api::Selector;
use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, Taint, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::cache::{Cache, NodeInfo};
use super::resources::{Resources, anti_affinity_terms, host_ports, pod_requests};
pub use crate::taints::{tolerates, tolerations};

/// What the filters need of the pod being scheduled, computed once per attempt.
#[derive(Debug)]
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub namespace: &'a str,
    pub requests: Resources,
    pub host_ports: Vec<(String, i32, String)>,
    /// Forbidden (topologyKey, value) domains from anti-affinity, both directions, with the
    /// pods that forbid each (uid, node), so preemption can tell when evicting them frees it.
    pub forbidden: HashMap<(String, String), Vec<(String, String)>>,
    /// Hard spread constraints: (constraint, counts per domain value, min count).
    pub spread: Vec<(&'a TopologySpreadConstraint, HashMap<String, i64>, i64)>,
    /// Required pod affinity: per term, its topology key, the domains holding a pod it
    /// selects, and whether the pod selects itself (then, with no such pod anywhere, any
    /// domain will do).
    pub affinity: Vec<(String, HashSet<String>, bool)>,
}

impl<'a> PodFacts<'a> {
    pub fn new(pod: &'a Pod, cache: &Cache) -> Self {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
        let host_ports = host_ports(pod);
        let mut facts = PodFacts {
            pod,
            namespace,
            requests: pod_requests(pod, false),
            host_ports,
            forbidden: HashMap::new(),
            spread: Vec::new(),
            affinity: Vec::new(),
        };
        facts.pod_affinity(cache);
        facts.anti_affinity(cache);
        facts.spread_counts(cache);
        facts
    }

    fn pod_affinity(&mut self, cache: &Cache) {
        let terms = affinity_terms(self.pod);
        if terms.is_empty() {
            return;
        }
        let labels = self.pod.metadata.labels.clone().unwrap_or_default();
        for term in terms {
            let mut domains = HashSet::new();
            for info in cache.nodes.values() {
                let Some(v) = info.labels().and_then(|l| l.get(&term.topology_key)) else {
                    continue;
                };
                if info
                    .pods
                    .values()
                    .any(|p| term_matches(term, self.namespace, &p.namespace, &p.labels))
                {
                    domains.insert(v.clone());
                }
            }
            let selects_itself = term_matches(term, self.namespace, self.namespace, &labels);
            self.affinity
                .push((term.topology_key.clone(), domains, selects_itself));
        }
    }

    fn anti_affinity(&mut self, cache: &Cache) {
        let own_terms = anti_affinity_terms(self.pod);
        if own_terms.is_empty() && cache.with_anti_affinity == 0 {
            return;
        }
        let labels = self.pod.metadata.labels.clone().unwrap_or_default();
        for info in cache.nodes.values() {
            let node_labels = info.labels();
            for placed in info.pods.values() {
                // The incoming pod's terms against pods already placed.
                for term in own_terms {
                    if term_matches(term, self.namespace, &placed.namespace, &placed.labels)
                        && let Some(v) = node_labels.and_then(|l| l.get(&term.topology_key))
                    {
                        self.forbidden
                            .entry((term.topology_key.clone(), v.clone()))
                            .or_default()
                            .push((placed.uid.clone(), info.name.clone()));
                    }
                }
                // Placed pods' terms against the incoming pod.
                let Some(other) = placed.pod.as_ref() else {
                    continue;
                };
                for term in anti_affinity_terms(other) {
                    if term_matches(term, &placed.namespace, self.namespace, &labels)
                        && let Some(v) = node_labels.and_then(|l| l.get(&term.topology_key))
                    {
                        self.forbidden
                            .entry((term.topology_key.clone(), v.clone()))
                            .or_default()
                            .push((placed.uid.clone(), info.name.clone()));
                    }
                }
            }
        }
    }

    fn spread_counts(&mut self, cache: &Cache) {
        let constraints: &'a [TopologySpreadConstraint] = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_deref())
            .unwrap_or(&[]);
        for c in constraints
            .iter()
            .filter(|c| c.when_unsatisfiable == "DoNotSchedule")
        {
            let mut counts: HashMap<String, i64> = HashMap::new();
            for info in cache.candidates() {
                if !node_affinity_fits(self.pod, info) {
                    continue;
                }
                let Some(v) = info.labels().and_then(|l| l.get(&c.topology_key)) else {
                    continue;
                };
                let n = info
                    .pods
                    .values()
                    .filter(|p| {
                        p.namespace == self.namespace
                            && selector_matches(c.label_selector.as_ref(), &p.labels)
                    })
                    .count() as i64;
                *counts.entry(v.clone()).or_default() += n;
            }
            let min = counts.values().copied().min().unwrap_or(0);
            self.spread.push((c, counts, min));
        }
    }
}

/// A pod's required (hard) pod affinity terms.
pub fn affinity_terms(pod: &Pod) -> &[PodAffinityTerm] {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or(&[])
}

pub(super) fn selector_matches(
    sel: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(sel) = sel else { return false };
    Selector::from_label_selector(sel).is_ok_and(|s| s.matches_map(labels))
}

pub(super) fn term_matches(
    term: &PodAffinityTerm,
    term_ns: &str,
    pod_ns: &str,
    pod_labels: &BTreeMap<String, String>,
) -> bool {
    let in_ns = match term.namespaces.as_deref() {
        Some(list) if !list.is_empty() => list.iter().any(|n| n == pod_ns),
        _ => term.namespace_selector.is_some() || term_ns == pod_ns,
    };
    in_ns && selector_matches(term.label_selector.as_ref(), pod_labels)
}

/// The reasons `node` cannot take the pod; empty when it can.
pub fn filter(f: &PodFacts<'_>, node: &NodeInfo) -> Vec<String> {
    if node.unschedulable() && !tolerates_unschedulable(f.pod) {
        return vec!["node(s) were unschedulable".into()];
    }
    if !node.ready() {
        return vec!["node(s) were not ready".into()];
    }
    if !node_affinity_fits(f.pod, node) {
        return vec!["node(s) didn't match Pod's node affinity/selector".into()];
    }
    if let Some(t) = untolerated_taint(f.pod, node.taints()) {
        return vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or("")
        )];
    }
    let mut reasons = Vec::new();
    let free = |alloc: i64, used: i64| alloc - used;
    if f.requests.cpu_milli > 0
        && f.requests.cpu_milli > free(node.allocatable.cpu_milli, node.requested.cpu_milli)
    {
        reasons.push("Insufficient cpu".to_string());
    }
    if f.requests.memory > 0
        && f.requests.memory > free(node.allocatable.memory, node.requested.memory)
    {
        reasons.push("Insufficient memory".to_string());
    }
    if node.requested.pods + 1 > node.allocatable.pods {
        reasons.push("Too many pods".to_string());
    }
    if !reasons.is_empty() {
        return reasons;
    }
    if !f.host_ports.is_empty() {
        let conflict = node.pods.values().any(|p| {
            p.host_ports.iter().any(|(proto, port, ip)| {
                f.host_ports.iter().any(|(p2, port2, ip2)| {
                    proto == p2
                        && port == port2
                        && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
                })
            })
        });
        if conflict {
            return vec!["node(s) didn't have free ports for the requested pod ports".into()];
        }
    }
    // A domain stays forbidden while a pod forbidding it is on another node, or still on
    // this one (preemption tries this node without its victims).
    let still_there =
        |(uid, on): &(String, String)| *on != node.name || node.pods.contains_key(uid);
    if !f.forbidden.is_empty()
        && let Some(labels) = node.labels()
        && f.forbidden
            .iter()
            .any(|((k, v), by)| labels.get(k) == Some(v) && by.iter().any(still_there))
    {
        return vec!["node(s) didn't match pod anti-affinity rules".into()];
    }
    for (key, domains, selects_itself) in &f.affinity {
        let value = node.labels().and_then(|l| l.get(key));
        let fits = match value {
            Some(v) => domains.contains(v) || (domains.is_empty() && *selects_itself),
            None => false,
        };
        if !fits {
            return vec!["node(s) didn't match pod affinity rules".into()];
        }
    }
    for (c, counts, min) in &f.spread {
        let Some(v) = node.labels().and_then(|l| l.get(&c.topology_key)) else {
            return vec![
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into(),
            ];
        };
        let here = counts.get(v).copied().unwrap_or(0);
        if here + 1 - min > c.max_skew as i64 {
            return vec!["node(s) didn't match pod topology spread constraints".into()];
        }
    }
    vec![]
}

fn tolerates_unschedulable(pod: &Pod) -> bool {
    let t = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    tolerations(pod).iter().any(|tol| tolerates(tol, &t))
}

/// The first NoSchedule/NoExecute taint none of the pod's tolerations tolerates.
pub fn untolerated_taint<'t>(pod: &Pod, taints: &'t [Taint]) -> Option<&'t Taint> {
    let tols = tolerations(pod);
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tols.iter().any(|tol| tolerates(tol, t)))
}

/// nodeSelector and requiredDuringScheduling node affinity, against the node's labels and name.
pub fn node_affinity_fits(pod: &Pod, node: &NodeInfo) -> bool {
    let empty = BTreeMap::new();
    crate::nodeaffinity::required_fits(pod, node.labels().unwrap_or(&empty), &node.name)
}

/// "0/5 nodes are available: 3 Insufficient cpu, 2 node(s) had untolerated taint {a: b}."
pub fn fit_error(total: usize, reasons: &HashMap<String, usize>) -> String {
    let mut parts: Vec<(&String, &usize)> = reasons.iter().collect();
    parts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let list: Vec<String> = parts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    if list.is_empty() {
        format!("0/{total} nodes are available.")
    } else {
        format!("0/{total} nodes are available: {}.", list.join(", "))
    }
}
