//! Scaling a Deployment that is not rolling (or is paused): the one active ReplicaSet follows the
//! Deployment's size; during a rollout the extra (or missing) replicas are shared out in
//! proportion to each ReplicaSet's size — proportional scaling, so a scale in the middle of a
//! rollout keeps its old/new ratio instead of dumping everything on one side.
//!
//! Worked example: replicas 10 → 15 with maxSurge 3 while old has 8 and new 5 (13 = 10 + 3).
//! Allowed = 15 + ceil(25% of 15)=4 → 19, so 6 more to share: old gets round(8·19/13) − 8 = 4,
//! new gets round(5·19/13) − 5 = 2; the leftover (0) goes to the biggest.

use super::sync::Rollout;
use super::util::{self, MAX_REPLICAS};
use k8s_openapi::api::apps::v1::ReplicaSet;

pub fn scale(r: &mut Rollout<'_>) {
    let want = util::replicas(r.d);
    let active: Vec<ReplicaSet> = r
        .all()
        .into_iter()
        .filter(|rs| util::rs_replicas(rs) > 0)
        .cloned()
        .collect();
    // One active (or none: the newest) ReplicaSet takes the Deployment's size.
    let only = match active.len() {
        1 => Some(active[0].clone()),
        0 => r.new.clone().or_else(|| {
            r.old
                .iter()
                .max_by_key(|rs| (util::created(rs), rs.metadata.name.clone()))
                .cloned()
        }),
        _ => None,
    };
    if let Some(rs) = only {
        let name = rs.metadata.name.clone().unwrap_or_default();
        r.scale(&name, want);
        return;
    }
    // The new ReplicaSet is saturated: the old ones go.
    if let Some(new) = r.new.clone()
        && util::rs_replicas(&new) == want
        && util::annotation_i32(&new, util::DESIRED_REPLICAS) == Some(want)
        && util::rs_available(&new) >= want
    {
        for rs in active {
            if rs.metadata.name != new.metadata.name {
                r.scale(rs.metadata.name.as_deref().unwrap_or(""), 0);
            }
        }
        return;
    }
    if util::is_recreate(r.d) {
        return;
    }
    let (surge, _) = util::surge_and_unavailable(r.d);
    let current: i32 = active.iter().map(util::rs_replicas).sum();
    let allowed = if want > 0 { want + surge } else { 0 };
    let to_add = allowed - current;
    let mut sorted = active;
    if to_add > 0 {
        // Biggest first; newer first among equals.
        sorted.sort_by(|a, b| {
            util::rs_replicas(b)
                .cmp(&util::rs_replicas(a))
                .then(util::created(b).cmp(&util::created(a)))
        });
    } else {
        // Biggest first; older first among equals.
        sorted.sort_by(|a, b| {
            util::rs_replicas(b)
                .cmp(&util::rs_replicas(a))
                .then(util::created(a).cmp(&util::created(b)))
        });
    }
    let mut added = 0;
    let mut sizes: Vec<(String, i32)> = Vec::new();
    for rs in &sorted {
        let size = util::rs_replicas(rs);
        let share = if to_add == 0 || to_add == added {
            0
        } else {
            let fraction = fraction(rs, r.d, want, surge);
            let allowed_more = to_add - added;
            if to_add > 0 {
                fraction.min(allowed_more)
            } else {
                fraction.max(allowed_more)
            }
        };
        added += share;
        sizes.push((rs.metadata.name.clone().unwrap_or_default(), size + share));
    }
    if to_add != 0
        && let Some(first) = sizes.first_mut()
    {
        first.1 = (first.1 + to_add - added).max(0);
    }
    for (name, size) in sizes {
        r.scale(&name, size);
    }
}

/// How many replicas `rs` gains (or loses) in proportion to its share of the size it was last
/// scaled for (its max-replicas annotation).
fn fraction(
    rs: &ReplicaSet,
    d: &k8s_openapi::api::apps::v1::Deployment,
    want: i32,
    surge: i32,
) -> i32 {
    let size = util::rs_replicas(rs);
    if want == 0 {
        return -size;
    }
    let target = want + surge;
    let annotated = util::annotation_i32(rs, MAX_REPLICAS)
        .or_else(|| d.status.as_ref().and_then(|s| s.replicas))
        .unwrap_or(0);
    if annotated <= 0 {
        return 0;
    }
    let new_size = (size as f64 * target as f64 / annotated as f64).round() as i32;
    new_size - size
}
