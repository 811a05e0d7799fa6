//! The DaemonSet rolling update, with no I/O (kubernetes/pkg/controller/daemon/update.go
//! `rollingUpdate`). Two modes, by which of maxUnavailable and maxSurge is non-zero:
//!
//! - **Unavailable** (the default, maxUnavailable 1): an old pod is deleted, and the manage
//!   loop creates the new one on that node. Nodes whose pod is missing, unavailable or being
//!   replaced count against maxUnavailable; old pods that are unavailable anyway are replaced
//!   at once, beyond the budget.
//!
//!   Worked example: 10 nodes, maxUnavailable 2, all old pods available. Pass 1 deletes two
//!   old pods. Pass 2 sees those two nodes with a new pod not yet ready: 2 unavailable, no room,
//!   nothing deleted. When one new pod turns ready, one more old pod goes. At most 2 nodes are
//!   ever without an available pod.
//!
//! - **Surge** (maxSurge non-zero, maxUnavailable 0): a new pod is started next to an old one
//!   and the old one is deleted once the new one is available, so every node keeps an
//!   available pod. At most maxSurge nodes run two pods at once; a node whose old pod is
//!   unavailable gets its new pod at once, beyond the budget.
//!
//! Percentages are of the nodes that should run the pod, rounded up.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};

use super::plan::{is_updated, node_fit};
use crate::podutil;

/// (maxSurge, maxUnavailable) as node counts of `desired` (both round up, `SurgeCount` /
/// `UnavailableCount`). OnDelete rolls nothing: (0, 0).
pub fn surge_and_unavailable(ds: &DaemonSet, desired: i32) -> (i32, i32) {
    let strategy = ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete") {
        return (0, 0);
    }
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let scaled = crate::deployment::util::scaled;
    let surge = scaled(rolling.and_then(|r| r.max_surge.as_ref()), 0, desired, true);
    let unavailable = scaled(
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        0,
        desired,
        true,
    );
    (surge, unavailable)
}

/// What one rolling-update pass does: pods to delete and nodes to start a new pod on.
#[derive(Debug, Default, PartialEq)]
pub struct Roll {
    pub delete: Vec<String>,
    pub create_on: Vec<String>,
}

/// On one node, its current-revision pod and its older pod (pods being deleted ignored);
/// None when it has two of either kind (the manage loop settles that first).
fn pods_on_node<'p>(
    pods: &'p [Arc<Pod>],
    hash: &str,
    generation: Option<&str>,
) -> Option<(Option<&'p Pod>, Option<&'p Pod>)> {
    let (mut new, mut old) = (None, None);
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let slot = if is_updated(p, hash, generation) {
            &mut new
        } else {
            &mut old
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(&**p);
    }
    Some((new, old))
}

fn name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// One pass of the rolling update over the nodes that have pods or should run one.
pub fn rolling_update(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    pods_by_node: &BTreeMap<String, Vec<Arc<Pod>>>,
    hash: &str,
    now: Timestamp,
) -> Roll {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let generation = super::plan::template_generation(ds);
    let available = |p: &Pod| podutil::is_available(p, min_ready, now);
    // Every node that should run the pod, with its pods (none for some).
    let mut candidates: BTreeMap<&str, &[Arc<Pod>]> = BTreeMap::new();
    let mut should_run = std::collections::HashSet::new();
    for n in nodes {
        let name = n.metadata.name.as_deref().unwrap_or("");
        if node_fit(ds, n).should_run {
            should_run.insert(name);
            candidates.insert(name, &[]);
        }
    }
    for (node, pods) in pods_by_node {
        candidates.insert(node.as_str(), pods.as_slice());
    }
    let desired = should_run.len() as i32;
    let (max_surge, mut max_unavailable) = surge_and_unavailable(ds, desired);
    if desired > 0 && max_surge == 0 && max_unavailable == 0 {
        // An impossible configuration (validation forbids it): roll one at a time.
        max_unavailable = 1;
    }
    let mut roll = Roll::default();
    if max_surge == 0 {
        let mut unavailable = 0;
        let mut replace_now = Vec::new();
        let mut candidates_to_delete = Vec::new();
        for pods in candidates.values() {
            let Some((new, old)) = pods_on_node(pods, hash, generation) else {
                unavailable += 1;
                continue;
            };
            match (new, old) {
                (None, None) | (Some(_), Some(_)) => unavailable += 1,
                (Some(new), None) => {
                    if !available(new) {
                        unavailable += 1;
                    }
                }
                (None, Some(old)) => {
                    if !available(old) {
                        replace_now.push(name(old));
                    } else if unavailable < max_unavailable {
                        candidates_to_delete.push(name(old));
                    }
                }
            }
        }
        let room = (max_unavailable - unavailable).max(0) as usize;
        roll.delete = replace_now;
        roll.delete
            .extend(candidates_to_delete.into_iter().take(room));
        return roll;
    }

    let mut surging = 0;
    let mut available_nodes = 0;
    let mut allowed_new = Vec::new();
    let mut candidate_new = Vec::new();
    let mut off_node_old = Vec::new();
    for (node, pods) in &candidates {
        let Some((new, old)) = pods_on_node(pods, hash, generation) else {
            surging += 1;
            continue;
        };
        if let Some(p) = old.or(new)
            && available(p)
        {
            available_nodes += 1;
        }
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) => {
                let runs_here = should_run.contains(node);
                if !available(old) {
                    if runs_here {
                        allowed_new.push(node.to_string());
                    } else {
                        roll.delete.push(name(old));
                    }
                } else if !runs_here {
                    off_node_old.push(name(old));
                } else if surging < max_surge {
                    candidate_new.push(node.to_string());
                }
            }
            (Some(new), Some(old)) => {
                if available(new) {
                    roll.delete.push(name(old));
                } else {
                    surging += 1;
                }
            }
        }
    }
    // Old pods on nodes that should no longer run one go only while enough pods elsewhere are
    // available, so a move from one node to another never leaves the set short.
    let spare = (available_nodes - desired).max(0) as usize;
    roll.delete.extend(off_node_old.into_iter().take(spare));
    let room = (max_surge - surging).max(0) as usize;
    roll.create_on = allowed_new;
    roll.create_on.extend(candidate_new.into_iter().take(room));
    roll
}
