//! The RollingUpdate strategy (rolling.go): bring up the new ReplicaSet within maxSurge, take
//! old ones down while at least replicas − maxUnavailable pods stay available.
//!
//! Worked example, replicas=10, maxSurge=3, maxUnavailable=2, all 10 old pods available:
//! 1. scale up: at most 10+3=13 pods may exist, so new → 3 (13 total).
//! 2. scale down: at least 10−2=8 must stay available; 10 are, so 2 old go (old → 8). The new
//!    pods are not available yet, so no more: 11 pods, 8 available... and so on, each pass
//!    bounded by both limits.

use super::sync::{Rollout, create_new, finish};
use super::util;

pub fn rollout(r: &mut Rollout<'_>) {
    let want = util::replicas(r.d);
    if r.new.is_none() {
        let n = new_replicas(r, 0);
        create_new(r, n);
        finish(r, false);
        return;
    }
    if reconcile_new(r, want) {
        finish(r, false);
        return;
    }
    reconcile_old(r, want);
    finish(r, false);
}

/// The size the new ReplicaSet may grow to now (NewRSNewReplicas).
fn new_replicas(r: &Rollout<'_>, new_size: i32) -> i32 {
    let want = util::replicas(r.d);
    let (surge, _) = util::surge_and_unavailable(r.d);
    let current: i32 = r.all().iter().map(|rs| util::rs_replicas(rs)).sum();
    let max_total = want + surge;
    if current >= max_total {
        return new_size;
    }
    let up = (max_total - current).min(want - new_size);
    new_size + up.max(0)
}

/// Scales the new ReplicaSet toward `want`; true when it changed size.
fn reconcile_new(r: &mut Rollout<'_>, want: i32) -> bool {
    let Some(new) = r.new.clone() else {
        return false;
    };
    let name = new.metadata.name.clone().unwrap_or_default();
    let size = util::rs_replicas(&new);
    if size == want {
        r.scale(&name, size); // keeps the annotations current
        return false;
    }
    if size > want {
        r.scale(&name, want);
        return true;
    }
    let to = new_replicas(r, size);
    r.scale(&name, to);
    to != size
}

/// Scales old ReplicaSets down: first their unhealthy pods, then as availability allows.
fn reconcile_old(r: &mut Rollout<'_>, want: i32) {
    let old_count: i32 = r.old.iter().map(util::rs_replicas).sum();
    if old_count == 0 {
        return;
    }
    let (_, max_unavailable) = util::surge_and_unavailable(r.d);
    let all_count: i32 = r.all().iter().map(|rs| util::rs_replicas(rs)).sum();
    let min_available = want - max_unavailable;
    let new_unavailable = r
        .new
        .as_ref()
        .map(|n| util::rs_replicas(n) - util::rs_available(n))
        .unwrap_or(0);
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return;
    }
    // Unhealthy old pods first: taking them down costs no availability.
    let mut order: Vec<(Option<jiff::Timestamp>, String)> = r
        .old
        .iter()
        .map(|rs| {
            (
                util::created(rs),
                rs.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    order.sort();
    let mut cleaned = 0;
    for (_, name) in &order {
        if cleaned >= max_scaled_down {
            break;
        }
        let Some(rs) = r
            .old
            .iter()
            .find(|rs| rs.metadata.name.as_ref() == Some(name))
        else {
            continue;
        };
        let (size, available) = (util::rs_replicas(rs), util::rs_available(rs));
        if size == 0 || size <= available {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(size - available);
        cleaned += down;
        r.scale(name, size - down);
    }
    // Then healthy ones, keeping minAvailable.
    let available: i32 = r.all().iter().map(|rs| util::rs_available(rs)).sum();
    if available <= min_available {
        return;
    }
    let total = available - min_available;
    let mut done = 0;
    for (_, name) in &order {
        if done >= total {
            break;
        }
        let Some(rs) = r
            .old
            .iter()
            .find(|rs| rs.metadata.name.as_ref() == Some(name))
        else {
            continue;
        };
        let size = util::rs_replicas(rs);
        if size == 0 {
            continue;
        }
        let down = size.min(total - done);
        done += down;
        r.scale(name, size - down);
    }
}
