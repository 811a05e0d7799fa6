//! The node IPAM controller (kube-controller-manager's node-ipam-controller with the range
//! allocator): gives every Node a pod range cut from `--cluster-cidr`
//! (`--node-cidr-mask-size`, /24 by default) in `spec.podCIDR` / `spec.podCIDRs`, which its
//! agent uses for its pods' addresses and every other agent routes to it. Ranges already on
//! Nodes are respected; a deleted Node's range is free again (handed out last, [`cidrset`]).
//! When the cluster CIDR is used up a Node waits, with a `CIDRNotAvailable` Warning Event, until
//! another Node goes. Without `--cluster-cidr` the controller allocates nothing.
//!
//! Level-triggered: every pass rebuilds the used set from the Nodes in the cache plus the
//! ranges this process has written and the cache has not shown yet, so a restart or a second
//! manager after a failover starts from what the API holds (the API server refuses to change a
//! range once set, so a stale allocator can never move one).

pub mod cidrset;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use prometheus::{IntCounter, IntGauge, Opts};
use serde_json::json;
use tokio::time::Instant;

use crate::Manager;
use crate::runtime::Recorder;
pub use cidrset::{CidrSet, Net4};

pub const NAME: &str = "nodeipam";

/// `--cluster-cidr` and `--node-cidr-mask-size`.
#[derive(Debug, Clone)]
pub struct Config {
    /// None: nothing is allocated (Kubernetes' --allocate-node-cidrs=false).
    pub cluster_cidr: Option<Net4>,
    pub node_cidr_mask_size: u8,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster_cidr: None,
            node_cidr_mask_size: 24,
        }
    }
}

impl Config {
    /// The allocator these flags describe (None without a cluster CIDR); Err names the flag.
    pub fn cidr_set(&self) -> Result<Option<CidrSet>, String> {
        self.cluster_cidr
            .map(|c| CidrSet::new(c, self.node_cidr_mask_size))
            .transpose()
    }
}

struct Metrics {
    usage: IntGauge,
    allocations: IntCounter,
    exhausted: IntCounter,
}

impl Metrics {
    fn register(registry: &prometheus::Registry, cluster: Net4) -> Metrics {
        let label = |name: &str, help: &str| {
            Opts::new(name, help).const_label("clusterCIDR", cluster.to_string())
        };
        let m = Metrics {
            usage: IntGauge::with_opts(label(
                "node_ipam_controller_cidrset_usage_cidrs",
                "Pod ranges of the cluster CIDR given to Nodes",
            ))
            .expect("valid metric"),
            allocations: IntCounter::with_opts(label(
                "node_ipam_controller_cidrset_cidrs_allocations_total",
                "Pod ranges given to Nodes",
            ))
            .expect("valid metric"),
            exhausted: IntCounter::with_opts(label(
                "node_ipam_controller_cidrset_allocation_failures_total",
                "Nodes left without a pod range because the cluster CIDR was used up",
            ))
            .expect("valid metric"),
        };
        let _ = registry.register(Box::new(m.usage.clone()));
        let _ = registry.register(Box::new(m.allocations.clone()));
        let _ = registry.register(Box::new(m.exhausted.clone()));
        m
    }
}

/// A node's first pod range, if it has one.
pub fn pod_cidr(node: &Node) -> Option<&str> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidr
        .as_deref()
        .or_else(|| spec.pod_cidrs.as_ref()?.first().map(String::as_str))
        .filter(|c| !c.is_empty())
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let mut set = match m.node_ipam.cidr_set() {
        Ok(Some(set)) => set,
        Ok(None) => {
            tracing::info!("no --cluster-cidr: Nodes' pod ranges are not allocated");
            return std::future::pending().await;
        }
        Err(e) => {
            tracing::error!(error = %e, "the node IPAM controller cannot start");
            return std::future::pending().await;
        }
    };
    let metrics = Metrics::register(&m.registry, set.cluster());
    let recorder = Recorder::new(m.client.clone(), "node-ipam-controller");
    let nodes = m.informers.nodes();
    nodes.wait_synced().await;
    let mut allocator = Allocator::default();
    let mut changes = nodes.subscribe().boxed();
    let mut wake = Instant::now();
    loop {
        tokio::select! {
            Some(_) = changes.next() => {
                wake = wake.min(Instant::now() + Duration::from_millis(20));
            }
            _ = tokio::time::sleep_until(wake) => {
                let state = nodes.store().state();
                let retry = allocator.pass(&m.client, &mut set, &state, &recorder, &metrics).await;
                // A failed write is tried again; otherwise only a Node change wakes us.
                wake = Instant::now() + if retry { Duration::from_secs(2) } else { Duration::from_secs(3600) };
            }
        }
    }
}

#[derive(Default)]
struct Allocator {
    /// Ranges written for a Node (by uid) that the cache does not show yet.
    written: HashMap<String, Net4>,
    /// Nodes told the cluster CIDR is used up (told once until they get a range).
    warned: HashSet<String>,
    /// Nodes whose range is not one of the cluster CIDR's (logged once).
    foreign: HashSet<String>,
}

impl Allocator {
    /// One pass over every Node; true when a write failed and the pass should run again.
    async fn pass(
        &mut self,
        client: &kube::Client,
        set: &mut CidrSet,
        nodes: &[Arc<Node>],
        recorder: &Recorder,
        metrics: &Metrics,
    ) -> bool {
        set.clear();
        let mut waiting = Vec::new();
        let uids: HashSet<&str> = nodes
            .iter()
            .filter_map(|n| n.metadata.uid.as_deref())
            .collect();
        self.written.retain(|uid, _| uids.contains(uid.as_str()));
        // What is remembered of Nodes since deleted goes with them.
        let names: HashSet<&str> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        self.warned.retain(|n| names.contains(n.as_str()));
        self.foreign.retain(|n| names.contains(n.as_str()));
        for node in nodes {
            let name = node.metadata.name.as_deref().unwrap_or_default();
            let uid = node.metadata.uid.as_deref().unwrap_or_default();
            match pod_cidr(node) {
                Some(c) => {
                    self.written.remove(uid);
                    self.warned.remove(name);
                    let occupied = c.parse::<Net4>().and_then(|net| set.occupy(net));
                    if let Err(e) = occupied
                        && self.foreign.insert(name.to_string())
                    {
                        tracing::warn!(node = %name, pod_cidr = %c, error = %e, "a Node's pod range is not the allocator's; left as it is");
                    }
                }
                None => match self.written.get(uid) {
                    Some(net) => {
                        let _ = set.occupy(*net);
                    }
                    None if node.metadata.deletion_timestamp.is_none() => waiting.push(node),
                    None => {}
                },
            }
        }
        let mut retry = false;
        for node in waiting {
            let name = node.metadata.name.clone().unwrap_or_default();
            let Some(net) = set.allocate() else {
                if self.warned.insert(name.clone()) {
                    metrics.exhausted.inc();
                    recorder.warning(
                        &**node,
                        "CIDRNotAvailable",
                        format!(
                            "Node {name} status is now: CIDRNotAvailable (every /{} of {} is given to a Node)",
                            set.node_bits(),
                            set.cluster()
                        ),
                    );
                }
                continue;
            };
            match write(client, node, net).await {
                Ok(()) => {
                    metrics.allocations.inc();
                    if let Some(uid) = &node.metadata.uid {
                        self.written.insert(uid.clone(), net);
                    }
                    tracing::info!(node = %name, pod_cidr = %net, "pod range allocated");
                    recorder.normal(
                        &**node,
                        "CIDRAssigned",
                        format!("Node {name} was given the pod range {net}"),
                    );
                }
                Err(e) => {
                    set.release(net);
                    if !crate::error::is_not_found(&e) {
                        retry = true;
                        tracing::warn!(node = %name, pod_cidr = %net, error = %e, "giving a Node its pod range failed");
                    }
                }
            }
        }
        metrics.usage.set(set.used() as i64);
        retry
    }
}

/// Sets the Node's pod range, only if it is still the Node seen (uid) and still has none: the
/// API server refuses a change of a set range, and the uid precondition a recreated Node.
async fn write(client: &kube::Client, node: &Node, net: Net4) -> Result<(), kube::Error> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let patch = json!({
        "metadata": {"uid": node.metadata.uid},
        "spec": {"podCIDR": net.to_string(), "podCIDRs": [net.to_string()]},
    });
    Api::<Node>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}
