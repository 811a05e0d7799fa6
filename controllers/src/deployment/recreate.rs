//! The Recreate strategy (recreate.go): scale every old ReplicaSet to zero, wait until none of
//! their pods is running any more, then create (or scale up) the new ReplicaSet.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use super::sync::{Rollout, create_new, finish};
use super::util;
use crate::podutil::{controller_ref, phase};

pub fn rollout(r: &mut Rollout<'_>, pods: &[Arc<Pod>]) {
    let active_old: Vec<String> = r
        .old
        .iter()
        .filter(|rs| util::rs_replicas(rs) > 0)
        .filter_map(|rs| rs.metadata.name.clone())
        .collect();
    if !active_old.is_empty() {
        for name in active_old {
            r.scale(&name, 0);
        }
        finish(r, false);
        return;
    }
    if old_pods_running(r, pods) {
        finish(r, false);
        return;
    }
    let want = util::replicas(r.d);
    match r.new.clone() {
        None => create_new(r, want),
        Some(new) => r.scale(new.metadata.name.as_deref().unwrap_or(""), want),
    }
    finish(r, false);
}

/// Whether any pod of an old ReplicaSet may still be running (not Succeeded or Failed, even if
/// it is terminating: its containers may still be up).
fn old_pods_running(r: &Rollout<'_>, pods: &[Arc<Pod>]) -> bool {
    let old_uids: Vec<&str> = r
        .old
        .iter()
        .filter_map(|rs| rs.metadata.uid.as_deref())
        .collect();
    if r.old
        .iter()
        .any(|rs| rs.status.as_ref().is_some_and(|s| s.replicas > 0))
    {
        return true;
    }
    pods.iter().any(|p| {
        controller_ref(&p.metadata).is_some_and(|c| old_uids.contains(&c.uid.as_str()))
            && !matches!(phase(p), "Succeeded" | "Failed")
    })
}
