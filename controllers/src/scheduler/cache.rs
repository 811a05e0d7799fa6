//! The scheduler's own cache of nodes and the pods on them. A pod is *assumed* onto its node the
//! moment the scheduler decides (before the binding is written), so the next decision already
//! sees it and a node is never double-booked between a bind and its watch event. The watch then
//! confirms the pod (same UID: counted once); a failed bind forgets it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};

use super::resources::{Resources, allocatable, anti_affinity_terms, host_ports, pod_requests};
use crate::podutil;

/// What the scheduler keeps of a pod placed on a node.
#[derive(Debug, Clone)]
pub struct PlacedPod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// `spec.priority` (0 when unset): preemption takes lower ones first.
    pub priority: i32,
    /// Being deleted already.
    pub terminating: bool,
    pub labels: BTreeMap<String, String>,
    /// Its controller's UID (spreading a workload's replicas).
    pub owner: Option<String>,
    pub requests: Resources,
    pub scoring: Resources,
    pub host_ports: Vec<(String, i32, String)>,
    /// The pod carries required anti-affinity terms (checked against incoming pods).
    pub pod: Option<Arc<Pod>>,
    pub assumed: bool,
}

#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub node: Option<Arc<Node>>,
    pub allocatable: Resources,
    pub requested: Resources,
    /// Requests with request-less containers counted at the scoring defaults.
    pub scoring: Resources,
    pub pods: HashMap<String, PlacedPod>,
    /// Pods per controller UID (for spreading).
    pub owners: HashMap<String, i64>,
}

impl PlacedPod {
    pub fn of(pod: &Arc<Pod>, assumed: bool) -> PlacedPod {
        PlacedPod {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            priority: pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            owner: podutil::controller_ref(&pod.metadata).map(|r| r.uid.clone()),
            requests: pod_requests(pod, false),
            scoring: pod_requests(pod, true),
            host_ports: host_ports(pod),
            pod: needs_whole_pod(pod).then(|| pod.clone()),
            assumed,
        }
    }
}

/// Whether the cache keeps the whole pod: it has terms incoming pods are checked against
/// (required anti-affinity) or scored by (its pod affinity and preferred anti-affinity, as
/// InterPodAffinity scores them both ways).
fn needs_whole_pod(pod: &Pod) -> bool {
    !anti_affinity_terms(pod).is_empty() || super::soft::has_pod_terms(pod)
}

impl NodeInfo {
    /// Counts a pod here.
    pub fn insert(&mut self, placed: PlacedPod) {
        self.requested.add(&placed.requests);
        self.scoring.add(&placed.scoring);
        if let Some(o) = &placed.owner {
            *self.owners.entry(o.clone()).or_default() += 1;
        }
        self.pods.insert(placed.uid.clone(), placed);
    }

    /// Stops counting a pod here; what it was.
    pub fn remove(&mut self, uid: &str) -> Option<PlacedPod> {
        let p = self.pods.remove(uid)?;
        self.requested.sub(&p.requests);
        self.scoring.sub(&p.scoring);
        if let Some(o) = &p.owner
            && let Some(n) = self.owners.get_mut(o)
        {
            *n -= 1;
            if *n <= 0 {
                self.owners.remove(o);
            }
        }
        Some(p)
    }

    fn new(name: &str) -> Self {
        NodeInfo {
            name: name.to_string(),
            node: None,
            allocatable: Resources::default(),
            requested: Resources::default(),
            scoring: Resources::default(),
            pods: HashMap::new(),
            owners: HashMap::new(),
        }
    }

    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.node.as_ref()?.metadata.labels.as_ref()
    }

    pub fn taints(&self) -> &[Taint] {
        self.node
            .as_ref()
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.taints.as_deref())
            .unwrap_or(&[])
    }

    pub fn unschedulable(&self) -> bool {
        self.node
            .as_ref()
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    }

    pub fn ready(&self) -> bool {
        self.node
            .as_ref()
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True")
    }
}

#[derive(Debug, Default)]
pub struct Cache {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Which node each pod (by UID) is counted on.
    placed: HashMap<String, String>,
    /// How many placed pods carry required anti-affinity terms (0: nothing to check).
    pub with_anti_affinity: usize,
}

impl Cache {
    pub fn set_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let info = self
            .nodes
            .entry(name.clone())
            .or_insert_with(|| NodeInfo::new(&name));
        info.allocatable = allocatable(&node);
        info.node = Some(node);
    }

    pub fn remove_node(&mut self, name: &str) {
        // Pods stay counted (they may still run); the node is just no longer a candidate.
        if let Some(info) = self.nodes.get_mut(name) {
            info.node = None;
        }
    }

    /// Counts `pod` on `node` (replacing an earlier record of the same UID).
    pub fn add_pod(&mut self, pod: &Arc<Pod>, node: &str, assumed: bool) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.remove_pod(&uid);
        let placed = PlacedPod::of(pod, assumed);
        if placed.pod.is_some() {
            self.with_anti_affinity += 1;
        }
        self.nodes
            .entry(node.to_string())
            .or_insert_with(|| NodeInfo::new(node))
            .insert(placed);
        self.placed.insert(uid, node.to_string());
    }

    pub fn remove_pod(&mut self, uid: &str) {
        let Some(node) = self.placed.remove(uid) else {
            return;
        };
        if let Some(p) = self.nodes.get_mut(&node).and_then(|info| info.remove(uid))
            && p.pod.is_some()
        {
            self.with_anti_affinity -= 1;
        }
    }

    pub fn is_placed(&self, uid: &str) -> bool {
        self.placed.contains_key(uid)
    }

    /// Whether `pod` is already counted, confirmed, on `node` with these labels and deletion
    /// state: its status changes (Running, Ready, ...) then change nothing the scheduler keeps.
    pub fn is_current(&self, pod: &Pod, node: &str) -> bool {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        self.placed.get(uid).is_some_and(|n| n == node)
            && self
                .nodes
                .get(node)
                .and_then(|info| info.pods.get(uid))
                .is_some_and(|p| {
                    !p.assumed
                        && p.terminating == pod.metadata.deletion_timestamp.is_some()
                        && pod
                            .metadata
                            .labels
                            .as_ref()
                            .map_or(p.labels.is_empty(), |l| *l == p.labels)
                })
    }

    /// Candidate nodes: known from the API (not only from the pods on them).
    pub fn candidates(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().filter(|n| n.node.is_some())
    }
}
