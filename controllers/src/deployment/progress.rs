//! Deployment status and its conditions (progress.go, sync.go's calculateStatus):
//! - Available: True (MinimumReplicasAvailable) while at least replicas − maxUnavailable pods are
//!   available, else False (MinimumReplicasUnavailable);
//! - Progressing: NewReplicaSetCreated / FoundNewReplicaSet / ReplicaSetUpdated while pods move,
//!   NewReplicaSetAvailable once complete, False with ProgressDeadlineExceeded when nothing moved
//!   for progressDeadlineSeconds, Unknown with DeploymentPaused / DeploymentResumed.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::sync::Rollout;
use super::util;

pub fn status(r: &Rollout<'_>) -> DeploymentStatus {
    let d = r.d;
    let all = r.all();
    let sum = |f: &dyn Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32| -> i32 {
        all.iter().filter_map(|rs| rs.status.as_ref()).map(f).sum()
    };
    let replicas = sum(&|s| s.replicas);
    let ready = sum(&|s| s.ready_replicas.unwrap_or(0));
    let available = sum(&|s| s.available_replicas.unwrap_or(0));
    let updated = r
        .new
        .as_ref()
        .and_then(|n| n.status.as_ref())
        .map_or(0, |s| s.replicas);
    let want = util::replicas(d);
    let (_, max_unavailable) = util::surge_and_unavailable(d);
    let old = d.status.clone().unwrap_or_default();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((want - available).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        terminating_replicas: old.terminating_replicas,
    };
    let now = r.now;
    if available >= want - max_unavailable {
        set(
            &mut status,
            cond(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                now,
            ),
        );
    } else {
        set(
            &mut status,
            cond(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                now,
            ),
        );
    }
    progressing(r, &mut status);
    status
}

fn progressing(r: &Rollout<'_>, status: &mut DeploymentStatus) {
    let d = r.d;
    let now = r.now;
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let current = get(status, "Progressing").cloned();
    let reason = current.as_ref().and_then(|c| c.reason.clone());
    if paused {
        if reason.as_deref() != Some("DeploymentPaused") {
            set(
                status,
                cond(
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused",
                    now,
                ),
            );
        }
        return;
    }
    if reason.as_deref() == Some("DeploymentPaused") {
        set(
            status,
            cond(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed",
                now,
            ),
        );
    }
    if deadline(d).is_none() {
        // progressDeadlineSeconds = MaxInt32: no Progressing condition is kept.
        return;
    }
    let new_name = r
        .new
        .as_ref()
        .and_then(|n| n.metadata.name.clone())
        .unwrap_or_default();
    let reason = get(status, "Progressing").and_then(|c| c.reason.clone());
    if r.plan.create.is_some() {
        set(
            status,
            cond(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                &format!("Created new replica set {new_name:?}"),
                now,
            ),
        );
        return;
    }
    if complete(d, status) {
        if reason.as_deref() != Some("NewReplicaSetAvailable") {
            set(
                status,
                cond(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    &format!("ReplicaSet {new_name:?} has successfully progressed."),
                    now,
                ),
            );
        }
        return;
    }
    if reason.is_none() && r.new.is_some() {
        set(
            status,
            cond(
                "Progressing",
                "True",
                "FoundNewReplicaSet",
                &format!("Found new replica set {new_name:?}"),
                now,
            ),
        );
        return;
    }
    if moved(d, status) {
        // Progress refreshes lastUpdateTime; the transition time stays while still True.
        let mut c = cond(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            &format!("ReplicaSet {new_name:?} is progressing."),
            now,
        );
        if let Some(cur) = get(status, "Progressing")
            && cur.status == "True"
        {
            c.last_transition_time = cur.last_transition_time.clone();
        }
        replace(status, c);
        return;
    }
    if timed_out(d, status, now) && reason.as_deref() != Some("ProgressDeadlineExceeded") {
        set(
            status,
            cond(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                &format!("ReplicaSet {new_name:?} has timed out progressing."),
                now,
            ),
        );
    }
}

/// Every replica updated and available, none old left, and the latest spec observed.
pub fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = util::replicas(d);
    s.updated_replicas == Some(want)
        && s.replicas == Some(want)
        && s.available_replicas == Some(want)
        && s.observed_generation >= d.metadata.generation
}

/// Pods moved since the last status: more updated, fewer old, more ready or available.
fn moved(d: &Deployment, s: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let new_old = s.replicas.unwrap_or(0) - s.updated_replicas.unwrap_or(0);
    s.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || new_old < old_old
        || s.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || s.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

fn deadline(d: &Deployment) -> Option<SignedDuration> {
    let secs = d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);
    (secs != i32::MAX).then(|| SignedDuration::from_secs(secs.max(0) as i64))
}

fn timed_out(d: &Deployment, s: &DeploymentStatus, now: Timestamp) -> bool {
    let Some(limit) = deadline(d) else {
        return false;
    };
    let Some(c) = get(s, "Progressing") else {
        return false;
    };
    match c.reason.as_deref() {
        Some("NewReplicaSetAvailable") => false,
        Some("ProgressDeadlineExceeded") => true,
        _ => c
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0 + limit < now),
    }
}

/// When to look again: at the progress deadline of a rollout still under way.
pub fn requeue_after(r: &Rollout<'_>, s: &DeploymentStatus) -> Option<Duration> {
    let limit = deadline(r.d)?;
    if complete(r.d, s) || r.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false) {
        return None;
    }
    let c = get(s, "Progressing")?;
    if c.reason.as_deref() == Some("ProgressDeadlineExceeded") {
        return None;
    }
    let at = c.last_update_time.as_ref()?.0 + limit;
    let wait = if at > r.now {
        at.duration_since(r.now)
    } else {
        SignedDuration::ZERO
    };
    Some(Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(100))
}

fn cond(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn get<'a>(s: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

/// Sets a condition; an unchanged status and reason keep their timestamps (no churn).
fn set(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = get(s, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    replace(s, c);
}

fn replace(s: &mut DeploymentStatus, c: DeploymentCondition) {
    let list = s.conditions.get_or_insert_with(Vec::new);
    list.retain(|x| x.type_ != c.type_);
    list.push(c);
}
