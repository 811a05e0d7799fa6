//! Table tests of the StatefulSet controller's decisions, no I/O: ordered and parallel
//! creation, scale-down order, the rolling update with partition and maxUnavailable, failed
//! pods, the status and revision hand-over, pod identity and claim ownership.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::plan::{self, Create, Revisions};
use crate::history::REVISION_HASH;
use crate::podutil::fixtures::{at, pod};

fn sts(extra: Value) -> StatefulSet {
    let mut v = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-web", "generation": 3},
        "spec": {"replicas": 3, "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}]}});
    capstan_testkit::merge_json(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn revs(current: &str, update: &str) -> Revisions {
    let set = sts(json!({}));
    let t = set.spec.unwrap().template;
    Revisions {
        current: current.into(),
        current_template: t.clone(),
        update: update.into(),
        update_template: t,
    }
}

/// Pod `web-N` of revision `rev`, running and ready since t=0.
fn ready(ordinal: i32, rev: &str) -> Arc<Pod> {
    pod(&format!("web-{ordinal}"))
        .owned_by("StatefulSet", "web")
        .labels(&[("app", "web"), (REVISION_HASH, rev)])
        .ready_since(0)
        .build()
}

fn pending(ordinal: i32, rev: &str) -> Arc<Pod> {
    pod(&format!("web-{ordinal}"))
        .owned_by("StatefulSet", "web")
        .labels(&[("app", "web"), (REVISION_HASH, rev)])
        .build()
}

fn creates(p: &plan::Plan) -> Vec<i32> {
    p.create.iter().map(|c| c.ordinal).collect()
}

#[test]
fn ordinals_parse_only_from_the_sets_own_names() {
    assert_eq!(plan::ordinal_of("web", "web-0"), Some(0));
    assert_eq!(plan::ordinal_of("web", "web-12"), Some(12));
    for other in [
        "web-", "web-01", "web-x", "webby-1", "web", "db-1", "web-1-2",
    ] {
        assert_eq!(plan::ordinal_of("web", other), None, "{other}");
    }
    assert_eq!(plan::ordinal_of("web-1", "web-1-2"), Some(2));
}

#[test]
fn ordered_ready_creates_one_pod_at_a_time_in_order() {
    let set = sts(json!({}));
    let r = revs("web-a", "web-a");
    let p = plan::plan(&set, &[], &r, at(10));
    assert_eq!(
        p.create,
        [Create {
            ordinal: 0,
            update: true
        }]
    );
    let p = plan::plan(&set, &[pending(0, "web-a")], &r, at(10));
    assert!(p.create.is_empty(), "waits for web-0 to be ready");
    assert!(p.waiting.unwrap().contains("web-0"));
    let p = plan::plan(&set, &[ready(0, "web-a")], &r, at(10));
    assert_eq!(creates(&p), [1]);
    // A gap is filled before anything above it.
    let p = plan::plan(&set, &[ready(0, "web-a"), ready(2, "web-a")], &r, at(10));
    assert_eq!(creates(&p), [1]);
}

#[test]
fn parallel_creates_and_deletes_everything_at_once() {
    let set = sts(json!({"spec": {"podManagementPolicy": "Parallel", "replicas": 4}}));
    let r = revs("web-a", "web-a");
    let p = plan::plan(&set, &[pending(1, "web-a")], &r, at(10));
    assert_eq!(creates(&p), [0, 2, 3]);
    let down = sts(json!({"spec": {"podManagementPolicy": "Parallel", "replicas": 1}}));
    let pods = [ready(0, "web-a"), pending(1, "web-a"), ready(2, "web-a")];
    let p = plan::plan(&down, &pods, &r, at(10));
    assert_eq!(p.delete, ["web-2", "web-1"]);
    assert_eq!(p.condemned, [2, 1]);
}

#[test]
fn ordered_scale_down_goes_from_the_highest_ordinal_while_all_are_healthy() {
    let set = sts(json!({"spec": {"replicas": 1}}));
    let r = revs("web-a", "web-a");
    let pods = [ready(0, "web-a"), ready(1, "web-a"), ready(2, "web-a")];
    let p = plan::plan(&set, &pods, &r, at(10));
    assert_eq!(p.delete, ["web-2"], "one at a time, highest first");
    let pods = [ready(0, "web-a"), pending(1, "web-a"), ready(2, "web-a")];
    let p = plan::plan(&set, &pods, &r, at(10));
    assert!(p.delete.is_empty(), "web-1 is unhealthy: {p:?}");
    let dying = pod("web-2")
        .owned_by("StatefulSet", "web")
        .labels(&[(REVISION_HASH, "web-a")])
        .deleting()
        .build();
    let p = plan::plan(
        &set,
        &[ready(0, "web-a"), ready(1, "web-a"), dying],
        &r,
        at(10),
    );
    assert!(p.delete.is_empty(), "waits for web-2 to go");
}

#[test]
fn a_failed_pod_is_deleted_to_be_recreated() {
    let set = sts(json!({}));
    let r = revs("web-a", "web-a");
    let failed = pod("web-1")
        .owned_by("StatefulSet", "web")
        .labels(&[(REVISION_HASH, "web-a")])
        .phase("Failed")
        .build();
    let p = plan::plan(&set, &[ready(0, "web-a"), failed], &r, at(10));
    assert_eq!(p.delete, ["web-1"]);
    assert!(p.create.is_empty());
}

#[test]
fn the_rolling_update_replaces_from_the_top_down_to_the_partition() {
    let set = sts(json!({}));
    let r = revs("web-a", "web-b");
    let pods = [ready(0, "web-a"), ready(1, "web-a"), ready(2, "web-a")];
    let p = plan::plan(&set, &pods, &r, at(10));
    assert_eq!(p.delete, ["web-2"]);
    let pods = [ready(0, "web-a"), ready(1, "web-a"), ready(2, "web-b")];
    assert_eq!(plan::plan(&set, &pods, &r, at(10)).delete, ["web-1"]);
    // An unhealthy pod uses up the one unavailable pod allowed.
    let pods = [ready(0, "web-a"), ready(1, "web-a"), pending(2, "web-b")];
    assert!(plan::plan(&set, &pods, &r, at(10)).delete.is_empty());
    // Partition 2: only web-2 is updated; a recreated web-1 keeps the current revision.
    let part = sts(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 2}}}}));
    let pods = [ready(0, "web-a"), ready(1, "web-a"), ready(2, "web-b")];
    let p = plan::plan(&part, &pods, &r, at(10));
    assert!(p.delete.is_empty(), "{p:?}");
    let p = plan::plan(&part, &[ready(0, "web-a"), ready(2, "web-b")], &r, at(10));
    assert_eq!(
        p.create,
        [Create {
            ordinal: 1,
            update: false
        }]
    );
    // maxUnavailable 2 replaces two at once.
    let wide = sts(json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 2}}}}));
    let pods = [ready(0, "web-a"), ready(1, "web-a"), ready(2, "web-a")];
    assert_eq!(
        plan::plan(&wide, &pods, &r, at(10)).delete,
        ["web-2", "web-1"]
    );
    // OnDelete waits for the user.
    let manual =
        sts(json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}}));
    assert!(plan::plan(&manual, &pods, &r, at(10)).delete.is_empty());
    let p = plan::plan(&manual, &[ready(0, "web-a"), ready(1, "web-a")], &r, at(10));
    assert_eq!(
        p.create,
        [Create {
            ordinal: 2,
            update: true
        }]
    );
}

#[test]
fn the_status_counts_pods_and_hands_the_revision_over_when_all_are_updated() {
    let set = sts(json!({"spec": {"minReadySeconds": 30}}));
    let r = revs("web-a", "web-b");
    let pods = [ready(0, "web-a"), ready(1, "web-b"), pending(2, "web-b")];
    let s = plan::plan(&set, &pods, &r, at(10)).status;
    assert_eq!(s.replicas, 3);
    assert_eq!(s.ready_replicas, Some(2));
    assert_eq!(s.available_replicas, Some(0), "not ready for 30 s yet");
    assert_eq!(s.current_replicas, Some(1));
    assert_eq!(s.updated_replicas, Some(2));
    assert_eq!(s.current_revision.as_deref(), Some("web-a"));
    assert_eq!(s.update_revision.as_deref(), Some("web-b"));
    assert_eq!(s.observed_generation, Some(3));
    let done = [ready(0, "web-b"), ready(1, "web-b"), ready(2, "web-b")];
    let s = plan::plan(&set, &done, &r, at(100)).status;
    assert_eq!(s.available_replicas, Some(3));
    assert_eq!(s.current_revision.as_deref(), Some("web-b"));
    assert_eq!(s.current_replicas, Some(3));
    assert_eq!(
        plan::next_available(&set, &pods, at(10)),
        Some(std::time::Duration::from_secs(20))
    );
}

#[test]
fn a_pod_has_a_stable_identity_and_its_own_claims() {
    let set = sts(json!({"spec": {"template": {"spec": {"volumes": [
        {"name": "data", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}]}}}}));
    let t = set.spec.clone().unwrap().template;
    let p = plan::new_pod(&set, &t, "web-b", 2);
    assert_eq!(p.metadata.name.as_deref(), Some("web-2"));
    let labels = p.metadata.labels.clone().unwrap();
    assert_eq!(labels[REVISION_HASH], "web-b");
    assert_eq!(labels[plan::POD_NAME_LABEL], "web-2");
    assert_eq!(labels[plan::POD_INDEX_LABEL], "2");
    let spec = p.spec.unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-2"));
    assert_eq!(spec.subdomain.as_deref(), Some("web"));
    let volumes = spec.volumes.unwrap();
    assert_eq!(volumes.len(), 2);
    let data = volumes.iter().find(|v| v.name == "data").unwrap();
    assert_eq!(
        data.persistent_volume_claim.as_ref().unwrap().claim_name,
        "data-web-2"
    );
    let claims = plan::claims_for(&set, 2);
    assert_eq!(claims[0].metadata.name.as_deref(), Some("data-web-2"));
    assert_eq!(claims[0].metadata.labels.clone().unwrap()["app"], "web");
}

#[test]
fn claim_owners_follow_the_retention_policy() {
    let claim = plan::claims_for(&sts(json!({})), 2).remove(0);
    let doomed = pending(2, "web-a");
    let retain = sts(json!({}));
    assert!(plan::claim_owners(&retain, &claim, Some(&doomed)).is_empty());
    let deleted = sts(json!({"spec": {"persistentVolumeClaimRetentionPolicy":
        {"whenDeleted": "Delete", "whenScaled": "Retain"}}}));
    let refs = plan::claim_owners(&deleted, &claim, Some(&doomed));
    assert_eq!(refs.len(), 1);
    assert_eq!(
        (refs[0].kind.as_str(), refs[0].uid.as_str()),
        ("StatefulSet", "uid-web")
    );
    assert_eq!(refs[0].controller, None);
    let scaled = sts(json!({"spec": {"persistentVolumeClaimRetentionPolicy":
        {"whenDeleted": "Retain", "whenScaled": "Delete"}}}));
    assert!(plan::claim_owners(&scaled, &claim, None).is_empty());
    let refs = plan::claim_owners(&scaled, &claim, Some(&doomed));
    assert_eq!(
        (refs[0].kind.as_str(), refs[0].name.as_str()),
        ("Pod", "web-2")
    );
    let both = sts(json!({"spec": {"persistentVolumeClaimRetentionPolicy":
        {"whenDeleted": "Delete", "whenScaled": "Delete"}}}));
    let refs = plan::claim_owners(&both, &claim, Some(&doomed));
    assert_eq!(
        refs.len(),
        1,
        "the pod alone owns a condemned claim: {refs:?}"
    );
    assert_eq!(refs[0].kind, "Pod");
}
