//! The ReplicaSet controller's decisions, as pure functions of the ReplicaSet and the pods in its
//! namespace (kubernetes/pkg/controller/replicaset's syncReplicaSet, claimPods, manageReplicas and
//! calculateStatus). No I/O: the caller applies the [`Plan`].

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;

use crate::claims::{self, Claims};
use crate::podutil::{self, is_active, is_available, is_ready};

/// At most this many pods are created or deleted in one sync (Kubernetes' burstReplicas).
pub const BURST_REPLICAS: usize = 500;

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Orphans matching the selector: take them (set our controller reference).
    pub adopt: Vec<Arc<Pod>>,
    /// Pods we control that stopped matching the selector: let them go.
    pub release: Vec<Arc<Pod>>,
    /// How many pods to create from the template.
    pub create: usize,
    /// Pods to delete, best candidates first.
    pub delete: Vec<Arc<Pod>>,
    /// The status to write (when it differs from the current one).
    pub status: Option<ReplicaSetStatus>,
}

/// What the ReplicaSet controls after claiming its namespace's pods.
pub fn claim(rs: &ReplicaSet, pods: &[Arc<Pod>]) -> Claims<Pod> {
    claims::claim(&rs.metadata, rs.spec.as_ref().map(|s| &s.selector), pods)
}

/// The whole decision. `may_manage` is false while expectations are pending or the ReplicaSet is
/// being deleted: then nothing is created or deleted, but claims and status still happen.
/// `manage_error` is the last create/delete failure, kept as the ReplicaFailure condition.
pub fn plan(
    rs: &ReplicaSet,
    pods: &[Arc<Pod>],
    may_manage: bool,
    manage_error: Option<&str>,
    now: Timestamp,
) -> Plan {
    let Claims {
        owned,
        adopt,
        release,
    } = claim(rs, pods);
    let active: Vec<Arc<Pod>> = owned.into_iter().filter(|p| is_active(p)).collect();
    let want = rs
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize;
    let mut plan = Plan {
        adopt,
        release,
        ..Plan::default()
    };
    if may_manage && rs.metadata.deletion_timestamp.is_none() {
        match active.len().cmp(&want) {
            Ordering::Less => plan.create = (want - active.len()).min(BURST_REPLICAS),
            Ordering::Greater => {
                let n = (active.len() - want).min(BURST_REPLICAS);
                plan.delete = pods_to_delete(&active, n);
            }
            Ordering::Equal => {}
        }
    }
    let status = status(rs, &active, manage_error, now);
    if rs.status.as_ref() != Some(&status) {
        plan.status = Some(status);
    }
    plan
}

/// The status the pods make (calculateStatus).
pub fn status(
    rs: &ReplicaSet,
    active: &[Arc<Pod>],
    manage_error: Option<&str>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            template_labels
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let available = active
        .iter()
        .filter(|p| is_available(p, min_ready, now))
        .count();
    let old = rs.status.clone().unwrap_or_default();
    let mut conditions: Vec<ReplicaSetCondition> = old
        .conditions
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "ReplicaFailure")
        .collect();
    if let Some(msg) = manage_error {
        let prior = rs
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "ReplicaFailure"));
        conditions.push(ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some(if msg.contains("delete") {
                "FailedDelete".into()
            } else {
                "FailedCreate".into()
            }),
            message: Some(msg.to_string()),
            last_transition_time: prior.and_then(|c| c.last_transition_time.clone()).or(Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
            )),
        });
    }
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(fully_labeled as i32),
        ready_replicas: Some(ready as i32),
        available_replicas: Some(available as i32),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: old.terminating_replicas,
    }
}

/// The `n` pods to delete first, by Kubernetes' ranking (ActivePodsWithRanks): unscheduled before
/// scheduled; Pending before Unknown before Running; not ready before ready; pods sharing a node
/// with more of their siblings first; ready for less time first; more restarts first; newer
/// first.
pub fn pods_to_delete(active: &[Arc<Pod>], n: usize) -> Vec<Arc<Pod>> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in active {
        if let Some(node) = podutil::node_name(p) {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let colocated = |p: &Pod| podutil::node_name(p).map_or(0, |n| per_node[n]);
    let mut ranked: Vec<&Arc<Pod>> = active.iter().collect();
    ranked.sort_by(|a, b| deletion_order(a, b, colocated(a), colocated(b)));
    ranked.into_iter().take(n).cloned().collect()
}

fn deletion_order(a: &Pod, b: &Pod, rank_a: usize, rank_b: usize) -> Ordering {
    let assigned = |p: &Pod| podutil::node_name(p).is_some();
    let phase_rank = |p: &Pod| match podutil::phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    };
    let ready_since = |p: &Pod| {
        podutil::condition(p, "Ready")
            .filter(|c| c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0)
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    assigned(a)
        .cmp(&assigned(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(is_ready(a).cmp(&is_ready(b)))
        .then(rank_b.cmp(&rank_a))
        // Both ready: the one ready more recently goes first.
        .then_with(|| match (ready_since(a), ready_since(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            _ => Ordering::Equal,
        })
        .then(podutil::restarts(b).cmp(&podutil::restarts(a)))
        .then(created(b).cmp(&created(a)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podutil::fixtures::{at, pod};
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};

    fn rs(replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("uid-web".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "web".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: None,
                }),
                min_ready_seconds: None,
            }),
            status: None,
        }
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<&str> {
        pods.iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect()
    }

    #[test]
    fn missing_pods_are_created_and_extra_pods_deleted() {
        let pods = vec![pod("a").owned_by("ReplicaSet", "web").build()];
        let p = plan(&rs(3), &pods, true, None, at(10));
        assert_eq!((p.create, p.delete.len()), (2, 0));
        let p = plan(&rs(0), &pods, true, None, at(10));
        assert_eq!((p.create, names(&p.delete)), (0, vec!["a"]));
    }

    #[test]
    fn nothing_is_created_or_deleted_while_expectations_are_pending() {
        let p = plan(&rs(3), &[], false, None, at(10));
        assert_eq!(p.create, 0);
        // ...but the status is still written.
        assert_eq!(p.status.unwrap().observed_generation, Some(2));
    }

    #[test]
    fn orphans_matching_the_selector_are_adopted_and_non_matching_pods_released() {
        let pods = vec![
            pod("orphan").build(),
            pod("other-app").labels(&[("app", "db")]).build(),
            pod("strayed")
                .owned_by("ReplicaSet", "web")
                .labels(&[("app", "db")])
                .build(),
            pod("someone-elses").owned_by("ReplicaSet", "db").build(),
            pod("orphan-deleting").deleting().build(),
        ];
        let p = plan(&rs(1), &pods, true, None, at(10));
        assert_eq!(names(&p.adopt), vec!["orphan"]);
        assert_eq!(names(&p.release), vec!["strayed"]);
        // The adopted orphan counts: nothing to create.
        assert_eq!(p.create, 0);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn terminating_and_finished_pods_do_not_count() {
        let pods = vec![
            pod("a").owned_by("ReplicaSet", "web").deleting().build(),
            pod("b")
                .owned_by("ReplicaSet", "web")
                .phase("Succeeded")
                .build(),
            pod("c").owned_by("ReplicaSet", "web").running().build(),
        ];
        let p = plan(&rs(2), &pods, true, None, at(10));
        assert_eq!(p.create, 1);
        assert_eq!(p.status.unwrap().replicas, 1);
    }

    #[test]
    fn deletion_prefers_unscheduled_then_pending_then_unready_then_newest() {
        let o = |b: crate::podutil::fixtures::PodBuilder| b.owned_by("ReplicaSet", "web");
        let pods = vec![
            o(pod("ready-old"))
                .on("n1")
                .ready_since(1)
                .created(0)
                .build(),
            o(pod("ready-new"))
                .on("n2")
                .ready_since(5)
                .created(2)
                .build(),
            o(pod("running-unready")).on("n3").running().build(),
            o(pod("pending")).on("n4").build(),
            o(pod("unscheduled")).build(),
        ];
        let order = names(&pods_to_delete(&pods, 5))
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        assert_eq!(
            order,
            vec![
                "unscheduled",
                "pending",
                "running-unready",
                "ready-new",
                "ready-old"
            ]
        );
    }

    #[test]
    fn deletion_prefers_pods_crowded_on_one_node() {
        let o = |b: crate::podutil::fixtures::PodBuilder| b.owned_by("ReplicaSet", "web");
        let pods = vec![
            o(pod("alone")).on("n1").ready_since(1).created(5).build(),
            o(pod("crowd-a")).on("n2").ready_since(1).created(0).build(),
            o(pod("crowd-b")).on("n2").ready_since(1).created(1).build(),
        ];
        assert_eq!(names(&pods_to_delete(&pods, 1)), vec!["crowd-b"]);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let mut r = rs(2);
        r.spec.as_mut().unwrap().min_ready_seconds = Some(10);
        let pods = vec![
            pod("a")
                .owned_by("ReplicaSet", "web")
                .ready_since(0)
                .build(),
            pod("b")
                .owned_by("ReplicaSet", "web")
                .ready_since(5)
                .build(),
        ];
        let s = plan(&r, &pods, true, None, at(12)).status.unwrap();
        assert_eq!(s.ready_replicas, Some(2));
        assert_eq!(s.available_replicas, Some(1));
        assert_eq!(s.fully_labeled_replicas, Some(2));
    }

    #[test]
    fn a_failed_create_shows_as_replica_failure_and_clears_on_success() {
        let r = rs(1);
        let s = plan(&r, &[], true, Some("pods \"x\" is forbidden"), at(1))
            .status
            .unwrap();
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.type_.as_str(), c.reason.as_deref()),
            ("ReplicaFailure", Some("FailedCreate"))
        );
        let mut failed = r.clone();
        failed.status = Some(s);
        let s = plan(&failed, &[], true, None, at(2)).status.unwrap();
        assert!(s.conditions.is_none());
        let _ = Time(at(0));
    }

    #[test]
    fn an_unchanged_status_is_not_rewritten() {
        let mut r = rs(1);
        let pods = vec![
            pod("a")
                .owned_by("ReplicaSet", "web")
                .ready_since(0)
                .build(),
        ];
        r.status = plan(&r, &pods, true, None, at(1)).status;
        assert!(plan(&r, &pods, true, None, at(2)).status.is_none());
    }
}
