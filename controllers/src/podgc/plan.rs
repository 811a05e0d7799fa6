//! Which pods the pod garbage collector removes (kubernetes/pkg/controller/podgc), as a pure
//! function of the pods, the nodes and the time:
//! - **orphaned**: bound to a node that no longer exists — once the node has been missing for
//!   the quarantine (40 s, so a node re-registering or a cache behind does not cost its pods);
//! - **terminating on an out-of-service node**: being deleted, on a node that is not Ready and
//!   carries `node.kubernetes.io/out-of-service:NoExecute` (an admin's word that the machine is
//!   down for good: its pods are not coming back to confirm their deletion);
//! - **unscheduled and terminating**: being deleted but never bound (no agent will confirm);
//! - **terminated beyond the threshold**: Succeeded/Failed pods past
//!   `--terminated-pod-gc-threshold` (12,500), oldest first.
//!
//! Each is deleted with grace period 0 (forced: no agent is there to finish it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use tokio::time::Instant;

use crate::podutil;
use crate::taints::NO_EXECUTE;

/// The taint an admin sets on a node that is down for good (NodeOutOfServiceVolumeDetach).
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Orphaned,
    OutOfService,
    UnscheduledTerminating,
    Terminated,
}

impl Why {
    /// The DisruptionTarget message (set only where Kubernetes sets one).
    pub fn message(self) -> Option<&'static str> {
        match self {
            Why::Orphaned => Some("PodGC: node no longer exists"),
            Why::OutOfService => Some("PodGC: node is out-of-service"),
            _ => None,
        }
    }
}

/// Settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--terminated-pod-gc-threshold` (0: never collect terminated pods).
    pub terminated_threshold: usize,
    /// How long a node must be missing before its pods are orphans.
    pub quarantine: Duration,
    /// A pass at least this often (Kubernetes: 20 s).
    pub period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            terminated_threshold: 12_500,
            quarantine: Duration::from_secs(40),
            period: Duration::from_secs(20),
        }
    }
}

/// Nodes seen missing, and since when.
#[derive(Debug, Default)]
pub struct Quarantine {
    missing: HashMap<String, Instant>,
}

fn terminated(p: &Pod) -> bool {
    matches!(podutil::phase(p), "Succeeded" | "Failed")
}

fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn out_of_service(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| {
            ts.iter()
                .any(|t| t.key == OUT_OF_SERVICE && t.effect == NO_EXECUTE)
        })
}

impl Quarantine {
    /// The pods to delete now, and why. `nodes` is everything the cache holds.
    pub fn plan(
        &mut self,
        cfg: &Config,
        pods: &[Arc<Pod>],
        nodes: &[Arc<Node>],
        now: Instant,
    ) -> Vec<(Arc<Pod>, Why)> {
        let by_name: BTreeMap<&str, &Node> = nodes
            .iter()
            .filter_map(|n| Some((n.metadata.name.as_deref()?, &**n)))
            .collect();
        let mut out = Vec::new();
        let mut still_missing = HashMap::new();
        for p in pods {
            let deleting = p.metadata.deletion_timestamp.is_some();
            match podutil::node_name(p) {
                None if deleting => out.push((p.clone(), Why::UnscheduledTerminating)),
                None => {}
                Some(node) => match by_name.get(node) {
                    Some(n) => {
                        if deleting && !ready(n) && out_of_service(n) {
                            out.push((p.clone(), Why::OutOfService));
                        }
                    }
                    None => {
                        let since = *self.missing.get(node).unwrap_or(&now);
                        still_missing.insert(node.to_string(), since);
                        if now.saturating_duration_since(since) >= cfg.quarantine {
                            out.push((p.clone(), Why::Orphaned));
                        }
                    }
                },
            }
        }
        self.missing = still_missing;
        if cfg.terminated_threshold > 0 {
            let mut done: Vec<&Arc<Pod>> = pods
                .iter()
                .filter(|p| terminated(p) && p.metadata.deletion_timestamp.is_none())
                .filter(|p| !out.iter().any(|(o, _)| Arc::ptr_eq(o, p)))
                .collect();
            if done.len() > cfg.terminated_threshold {
                done.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
                let excess = done.len() - cfg.terminated_threshold;
                out.extend(
                    done.into_iter()
                        .take(excess)
                        .map(|p| (p.clone(), Why::Terminated)),
                );
            }
        }
        out
    }

    /// When a quarantined node's pods become orphans (the next pass then).
    pub fn next_release(&self, cfg: &Config) -> Option<Instant> {
        self.missing.values().map(|s| *s + cfg.quarantine).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podutil::fixtures::pod;
    use crate::taints;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};

    fn node(name: &str, ready: bool, oos: bool) -> Arc<Node> {
        Arc::new(Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: oos.then(|| vec![taints::taint(OUT_OF_SERVICE, NO_EXECUTE)]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "Unknown" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn names(out: &[(Arc<Pod>, Why)]) -> Vec<(String, Why)> {
        out.iter()
            .map(|(p, w)| (p.metadata.name.clone().unwrap(), *w))
            .collect()
    }

    #[test]
    fn orphans_go_after_the_quarantine_and_not_before() {
        let cfg = Config::default();
        let mut q = Quarantine::default();
        let t0 = Instant::now();
        let pods = vec![
            pod("a").on("gone").running().build(),
            pod("b").on("here").running().build(),
        ];
        let nodes = vec![node("here", true, false)];
        assert!(q.plan(&cfg, &pods, &nodes, t0).is_empty());
        assert_eq!(q.next_release(&cfg), Some(t0 + cfg.quarantine));
        assert!(
            q.plan(&cfg, &pods, &nodes, t0 + Duration::from_secs(39))
                .is_empty()
        );
        let out = q.plan(&cfg, &pods, &nodes, t0 + Duration::from_secs(40));
        assert_eq!(names(&out), vec![("a".into(), Why::Orphaned)]);
        // The node came back in between: the clock starts again when it goes missing again.
        let mut q = Quarantine::default();
        q.plan(&cfg, &pods, &nodes, t0);
        let back = vec![node("here", true, false), node("gone", true, false)];
        assert!(
            q.plan(&cfg, &pods, &back, t0 + Duration::from_secs(30))
                .is_empty()
        );
        assert!(
            q.plan(&cfg, &pods, &nodes, t0 + Duration::from_secs(50))
                .is_empty()
        );
    }

    #[test]
    fn terminating_pods_go_from_out_of_service_nodes_and_from_nowhere() {
        let cfg = Config::default();
        let mut q = Quarantine::default();
        let t0 = Instant::now();
        let pods = vec![
            pod("on-oos").on("down").running().deleting().build(),
            pod("live-on-oos").on("down").running().build(),
            pod("on-ready-oos").on("up").running().deleting().build(),
            pod("unbound").deleting().build(),
            pod("pending").build(),
        ];
        let nodes = vec![node("down", false, true), node("up", true, true)];
        let out = q.plan(&cfg, &pods, &nodes, t0);
        assert_eq!(
            names(&out),
            vec![
                ("on-oos".into(), Why::OutOfService),
                ("unbound".into(), Why::UnscheduledTerminating)
            ]
        );
    }

    #[test]
    fn terminated_pods_beyond_the_threshold_go_oldest_first() {
        let cfg = Config {
            terminated_threshold: 2,
            ..Default::default()
        };
        let mut q = Quarantine::default();
        let pods = vec![
            pod("new").on("n").phase("Succeeded").created(30).build(),
            pod("old").on("n").phase("Failed").created(10).build(),
            pod("mid").on("n").phase("Succeeded").created(20).build(),
            pod("running").on("n").running().created(0).build(),
        ];
        let out = q.plan(&cfg, &pods, &[node("n", true, false)], Instant::now());
        assert_eq!(names(&out), vec![("old".into(), Why::Terminated)]);
    }
}
