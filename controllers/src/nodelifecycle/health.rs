//! What the controller knows of each node's liveness (Kubernetes' nodeHealthMap): when it last
//! *saw* the node alive — a Lease renewal or a status heartbeat it had not seen before — by its
//! own clock, never by the timestamps written on the objects (a skewed node clock must not
//! make a live node look dead, nor a dead one alive). And the Unknown conditions it writes on a
//! node that went silent.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::time::Instant;

/// Reasons the controller writes (so that its own writes are never taken for a heartbeat).
pub const REASON_UNKNOWN: &str = "NodeStatusUnknown";
pub const REASON_NEVER_UPDATED: &str = "NodeStatusNeverUpdated";
pub const MESSAGE_UNKNOWN: &str = "Kubelet stopped posting node status.";
pub const MESSAGE_NEVER_UPDATED: &str = "Kubelet never posted node status.";

/// The conditions a silent node has set to Unknown (nodeConditionTypes plus Ready).
pub const CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// One node's liveness as observed.
#[derive(Debug, Clone)]
pub struct Probe {
    /// When the controller last saw the node alive.
    pub at: Instant,
    /// The latest heartbeat time among the node's own conditions, as last seen.
    heartbeat: Option<jiff::Timestamp>,
    /// The Lease's renewTime, as last seen.
    renew: Option<jiff::Timestamp>,
    /// The Lease's duration (the agent renews at a quarter of it).
    pub lease_duration: Option<Duration>,
    /// Condition statuses and `spec.unschedulable`, as last seen: a change asks for a pass.
    facts: String,
    /// The node's zone key ([`super::zones::zone_of`]), kept so that a pass allocates nothing
    /// for a node it has seen before.
    pub zone: String,
    /// The last pass that saw the node (older: the node is gone).
    seen_in: u64,
}

/// Every node's [`Probe`].
#[derive(Debug, Default)]
pub struct Probes {
    map: HashMap<String, Probe>,
}

/// Whether a condition was written by this controller.
pub fn is_ours(c: &NodeCondition) -> bool {
    matches!(
        c.reason.as_deref(),
        Some(REASON_UNKNOWN | REASON_NEVER_UPDATED)
    )
}

fn conditions(node: &Node) -> &[NodeCondition] {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or(&[])
}

/// The node's latest own heartbeat: the newest heartbeat time among the conditions it posted.
/// (The controller's own writes keep heartbeat times, so they never move it forward.)
fn heartbeat_of(node: &Node) -> Option<jiff::Timestamp> {
    conditions(node)
        .iter()
        .filter(|c| !is_ours(c))
        .filter_map(|c| c.last_heartbeat_time.as_ref().map(|t| t.0))
        .max()
}

/// What decides taints: condition statuses and unschedulable.
fn facts_of(node: &Node) -> String {
    let mut out = String::new();
    for c in conditions(node) {
        out.push_str(&format!("{}={};", c.type_, c.status));
    }
    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable);
    out.push_str(&format!("u={unschedulable:?}"));
    out
}

impl Probes {
    fn entry(&mut self, name: &str, now: Instant) -> (&mut Probe, bool) {
        // A lookup first: the hot path (a known node) allocates no key.
        let new = !self.map.contains_key(name);
        if new {
            self.map.insert(
                name.to_string(),
                Probe {
                    at: now,
                    heartbeat: None,
                    renew: None,
                    lease_duration: None,
                    facts: String::new(),
                    zone: String::new(),
                    seen_in: 0,
                },
            );
        }
        let p = self.map.get_mut(name).expect("just made sure it is there");
        (p, new)
    }

    /// A node as the informer delivers it. Returns whether something that decides taints
    /// changed (so a pass should run soon); a new heartbeat moves the probe time.
    pub fn observe_node(&mut self, node: &Node, now: Instant) -> bool {
        let Some(name) = node.metadata.name.as_deref() else {
            return false;
        };
        let (heartbeat, facts) = (heartbeat_of(node), facts_of(node));
        let zone = super::zones::zone_of(node);
        let (p, new) = self.entry(name, now);
        p.zone = zone;
        if new || heartbeat > p.heartbeat {
            p.heartbeat = heartbeat;
            p.at = now;
        }
        let changed = new || p.facts != facts;
        p.facts = facts;
        changed
    }

    /// A node Lease (kube-node-lease/NODE): a renewTime not seen before moves the probe time.
    pub fn observe_lease(&mut self, lease: &Lease, now: Instant) {
        let Some(name) = lease.metadata.name.as_deref() else {
            return;
        };
        let spec = lease.spec.as_ref();
        let renew = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
        let duration = spec
            .and_then(|s| s.lease_duration_seconds)
            .filter(|d| *d > 0)
            .map(|d| Duration::from_secs(d as u64));
        let (p, _) = self.entry(name, now);
        if renew.is_some() && p.renew != renew {
            p.renew = renew;
            p.at = now;
        }
        p.lease_duration = duration;
    }

    pub fn get(&self, name: &str) -> Option<&Probe> {
        self.map.get(name)
    }

    /// Makes sure a node has a probe (first seen now) and marks it seen in pass `pass`.
    pub fn ensure(&mut self, node: &Node, now: Instant, pass: u64) {
        let Some(name) = node.metadata.name.as_deref() else {
            return;
        };
        if let Some(p) = self.map.get_mut(name) {
            p.seen_in = pass;
            return;
        }
        let (p, _) = self.entry(name, now);
        p.zone = super::zones::zone_of(node);
        p.seen_in = pass;
    }

    /// Forgets the nodes pass `pass` did not see (deleted); returns their names.
    pub fn sweep(&mut self, pass: u64) -> Vec<String> {
        let mut gone = Vec::new();
        self.map.retain(|n, p| {
            let seen = p.seen_in == pass;
            if !seen {
                gone.push(n.clone());
            }
            seen
        });
        gone
    }

    /// Every node seen alive now: leaving full disruption gives each a fresh grace period.
    pub fn reset_all(&mut self, now: Instant) {
        for p in self.map.values_mut() {
            p.at = now;
        }
    }
}

/// `node`'s conditions with Ready and the pressure conditions set to Unknown, as
/// tryUpdateNodeHealth does for a node silent past its grace period: present ones keep their
/// heartbeat time and get a new transition time when their status changes; missing ones are
/// added as never updated. None when there is nothing to change.
pub fn unknown_conditions(node: &Node, now: &Time) -> Option<Vec<NodeCondition>> {
    let mut conds: Vec<NodeCondition> = conditions(node).to_vec();
    let mut changed = false;
    for ty in CONDITIONS {
        match conds.iter_mut().find(|c| c.type_ == *ty) {
            Some(c) if c.status == "Unknown" => {}
            Some(c) => {
                c.status = "Unknown".into();
                c.reason = Some(REASON_UNKNOWN.into());
                c.message = Some(MESSAGE_UNKNOWN.into());
                c.last_transition_time = Some(now.clone());
                changed = true;
            }
            None => {
                conds.push(NodeCondition {
                    type_: ty.to_string(),
                    status: "Unknown".into(),
                    reason: Some(REASON_NEVER_UPDATED.into()),
                    message: Some(MESSAGE_NEVER_UPDATED.into()),
                    last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                    last_transition_time: Some(now.clone()),
                });
                changed = true;
            }
        }
    }
    changed.then_some(conds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::NodeStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn node(conds: Vec<NodeCondition>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.status = Some(NodeStatus {
            conditions: Some(conds),
            ..Default::default()
        });
        n
    }

    fn cond(ty: &str, status: &str, heartbeat_secs: i64) -> NodeCondition {
        NodeCondition {
            type_: ty.into(),
            status: status.into(),
            last_heartbeat_time: Some(Time(jiff::Timestamp::from_second(heartbeat_secs).unwrap())),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_new_heartbeats_and_renewals_move_the_probe() {
        let t0 = Instant::now();
        let mut p = Probes::default();
        assert!(p.observe_node(&node(vec![cond("Ready", "True", 10)]), t0));
        let t1 = t0 + Duration::from_secs(5);
        // The same heartbeat again (a write by someone else): no probe.
        assert!(!p.observe_node(&node(vec![cond("Ready", "True", 10)]), t1));
        assert_eq!(p.get("n1").unwrap().at, t0);
        // The controller's own Unknown write keeps the heartbeat: no probe, but a fact change.
        let mut ours = cond("Ready", "Unknown", 10);
        ours.reason = Some(REASON_UNKNOWN.into());
        assert!(p.observe_node(&node(vec![ours]), t1));
        assert_eq!(p.get("n1").unwrap().at, t0);
        // A Lease renewal is a probe, whatever time it carries.
        let lease = |renew: i64| Lease {
            metadata: kube::api::ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(jiff::Timestamp::from_second(renew).unwrap())),
                lease_duration_seconds: Some(40),
                ..Default::default()
            }),
        };
        p.observe_lease(&lease(0), t1);
        assert_eq!(p.get("n1").unwrap().at, t1);
        let t2 = t1 + Duration::from_secs(5);
        p.observe_lease(&lease(0), t2);
        assert_eq!(p.get("n1").unwrap().at, t1, "same renewTime");
        assert_eq!(
            p.get("n1").unwrap().lease_duration,
            Some(Duration::from_secs(40))
        );
    }

    #[test]
    fn a_silent_node_gets_every_condition_unknown_once() {
        let now = Time(jiff::Timestamp::from_second(100).unwrap());
        let n = node(vec![
            cond("Ready", "True", 10),
            cond("MemoryPressure", "False", 10),
        ]);
        let conds = unknown_conditions(&n, &now).unwrap();
        assert_eq!(conds.len(), 4);
        for c in &conds {
            assert_eq!(c.status, "Unknown", "{c:?}");
            assert_eq!(c.last_transition_time.as_ref(), Some(&now));
        }
        let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason.as_deref(), Some(REASON_UNKNOWN));
        assert_eq!(
            ready.last_heartbeat_time,
            cond("Ready", "True", 10).last_heartbeat_time
        );
        let disk = conds.iter().find(|c| c.type_ == "DiskPressure").unwrap();
        assert_eq!(disk.reason.as_deref(), Some(REASON_NEVER_UPDATED));
        assert_eq!(unknown_conditions(&node(conds), &now), None);
    }
}
