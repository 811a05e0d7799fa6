//! The StatefulSet controller and the volume binder against a real in-process API server,
//! with simulated nodes playing the kubelet: pods come up in ordinal order with a claim each,
//! provisioned on the pod's node; a deleted pod comes back with its name, node and claim;
//! scale-down goes from the top and keeps claims (or deletes them, as the retention policy
//! says); a partitioned rolling update stops at the partition and hands the revision over
//! when done; a claim binds the smallest volume that fits and releases it when deleted.

mod common;

use std::time::Duration;

use capstan_testkit::sim::SimConfig;
use capstan_testkit::{TestCluster, until};
use common::SimCluster;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn cluster(nodes: usize, ready_after: Duration) -> SimCluster {
    let config = SimConfig {
        nodes,
        ready_after,
        ..Default::default()
    };
    common::sim_cluster(
        config,
        &[
            "statefulset",
            "scheduler",
            "garbagecollector",
            "persistentvolume-binder",
        ],
    )
    .await
}

async fn local_path_class(c: &TestCluster) {
    let class: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "local-path",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "capstan.dev/local-path",
        "volumeBindingMode": "WaitForFirstConsumer"}))
    .unwrap();
    Api::<StorageClass>::all(c.client.clone())
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
}

fn stateful_set(extra: Value) -> StatefulSet {
    let mut v = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": "busybox:1",
                    "resources": {"requests": {"cpu": "10m"}}}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}]}});
    capstan_testkit::merge_json(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

/// The set's live pods by name: (uid, node, image).
async fn pods(c: &TestCluster) -> Vec<(String, String, String, String)> {
    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let mut out: Vec<_> = api
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let spec = p.spec.unwrap_or_default();
            (
                p.metadata.name.unwrap_or_default(),
                p.metadata.uid.unwrap_or_default(),
                spec.node_name.unwrap_or_default(),
                spec.containers[0].image.clone().unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn ready(api: &Api<StatefulSet>, n: i32) -> StatefulSet {
    until(WAIT, "the StatefulSet is ready", || async {
        let s = api.get("web").await.unwrap();
        let st = s.status.clone().unwrap_or_default();
        st.observed_generation == s.metadata.generation
            && st.replicas == n
            && st.ready_replicas == Some(n)
            && st.current_revision == st.update_revision
    })
    .await;
    api.get("web").await.unwrap()
}

async fn scale(api: &Api<StatefulSet>, replicas: i32) {
    let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
    api.patch("web", &PatchParams::default(), &patch)
        .await
        .unwrap();
}

fn ready_at(p: &Pod) -> jiff::Timestamp {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .and_then(|c| c.last_transition_time.clone())
        .expect("ready")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_come_up_in_order_and_keep_their_name_node_and_claim() {
    let k = cluster(3, Duration::from_secs(1)).await;
    local_path_class(&k.c).await;
    let api: Api<StatefulSet> = Api::namespaced(k.c.client.clone(), "default");
    api.create(&PostParams::default(), &stateful_set(json!({})))
        .await
        .unwrap();
    ready(&api, 3).await;
    let pod_api: Api<Pod> = Api::namespaced(k.c.client.clone(), "default");
    // OrderedReady: each pod was created only once the one before it was ready.
    for (before, after) in [("web-0", "web-1"), ("web-1", "web-2")] {
        let (b, a) = (
            pod_api.get(before).await.unwrap(),
            pod_api.get(after).await.unwrap(),
        );
        let created = a.metadata.creation_timestamp.clone().unwrap().0;
        assert!(
            created >= ready_at(&b),
            "{after} created before {before} was ready"
        );
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(k.c.client.clone(), "default");
    let volumes: Api<PersistentVolume> = Api::all(k.c.client.clone());
    let before = pods(&k.c).await;
    for (name, _, node, _) in &before {
        let ord = name.trim_start_matches("web-");
        let claim_name = format!("data-web-{ord}");
        let claim = claims.get(&claim_name).await.unwrap();
        assert_eq!(
            claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
            Some("local-path"),
            "the default class"
        );
        assert_eq!(
            claim.status.as_ref().unwrap().phase.as_deref(),
            Some("Bound")
        );
        let pv = volumes
            .get(claim.spec.as_ref().unwrap().volume_name.as_deref().unwrap())
            .await
            .unwrap();
        let pinned = serde_json::to_value(&pv.spec.as_ref().unwrap().node_affinity).unwrap();
        assert_eq!(
            pinned["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
            node.as_str(),
            "{claim_name}'s volume is on its pod's node"
        );
        let pod = pod_api.get(name).await.unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(name.as_str()));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
    }
    let events: Api<Event> = Api::namespaced(k.c.client.clone(), "default");
    let notes: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.message)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n == "create Claim data-web-0 Pod web-0 in StatefulSet web success"),
        "{notes:?}"
    );

    // web-1 deleted comes back as web-1, on the same node (its volume is there), same claim.
    let old = before.iter().find(|p| p.0 == "web-1").unwrap().clone();
    let claim_uid = claims.get("data-web-1").await.unwrap().metadata.uid;
    pod_api
        .delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    until(WAIT, "web-1 is back", || async {
        pods(&k.c)
            .await
            .iter()
            .any(|p| p.0 == "web-1" && p.1 != old.1 && !p.2.is_empty())
    })
    .await;
    let back = pods(&k.c).await;
    let web1 = back.iter().find(|p| p.0 == "web-1").unwrap();
    assert_eq!(web1.2, old.2, "web-1 went back to its volume's node");
    assert_eq!(
        claims.get("data-web-1").await.unwrap().metadata.uid,
        claim_uid
    );
    ready(&api, 3).await;

    // Scale-down from the top; the claims stay (whenScaled: Retain).
    scale(&api, 1).await;
    ready(&api, 1).await;
    let left: Vec<String> = pods(&k.c).await.into_iter().map(|p| p.0).collect();
    assert_eq!(left, ["web-0"]);
    let kept = claims
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(kept, 3, "claims outlive scale-down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_rolling_update_stops_at_the_partition_then_completes() {
    let k = cluster(2, Duration::ZERO).await;
    let api: Api<StatefulSet> = Api::namespaced(k.c.client.clone(), "default");
    let set = stateful_set(json!({"spec": {"podManagementPolicy": "Parallel",
        "volumeClaimTemplates": null,
        "updateStrategy": {"rollingUpdate": {"partition": 2}}}}));
    api.create(&PostParams::default(), &set).await.unwrap();
    let first = ready(&api, 3).await;
    let rev1 = first.status.unwrap().current_revision.unwrap();
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "main", "image": "busybox:2"}]}}}})),
    )
    .await
    .unwrap();
    until(WAIT, "web-2 is updated", || async {
        let s = api.get("web").await.unwrap().status.unwrap_or_default();
        s.updated_replicas == Some(1) && s.ready_replicas == Some(3)
    })
    .await;
    let images: Vec<String> = pods(&k.c).await.into_iter().map(|p| p.3).collect();
    assert_eq!(images, ["busybox:1", "busybox:1", "busybox:2"]);
    let s = api.get("web").await.unwrap().status.unwrap();
    assert_eq!(s.current_revision.as_deref(), Some(rev1.as_str()));
    assert_ne!(s.update_revision, s.current_revision);
    // Partition 0: the rest follows, and the update revision becomes the current one.
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await
    .unwrap();
    let done = ready(&api, 3).await;
    let images: Vec<String> = pods(&k.c).await.into_iter().map(|p| p.3).collect();
    assert_eq!(images, ["busybox:2", "busybox:2", "busybox:2"]);
    assert_ne!(done.status.unwrap().current_revision.unwrap(), rev1);
    let revisions: Api<ControllerRevision> = Api::namespaced(k.c.client.clone(), "default");
    assert_eq!(
        revisions
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_follow_the_retention_policy_and_volumes_their_reclaim_policy() {
    let k = cluster(2, Duration::ZERO).await;
    local_path_class(&k.c).await;
    let api: Api<StatefulSet> = Api::namespaced(k.c.client.clone(), "default");
    let set = stateful_set(json!({"spec": {"replicas": 2,
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"}}}));
    api.create(&PostParams::default(), &set).await.unwrap();
    ready(&api, 2).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(k.c.client.clone(), "default");
    let volumes: Api<PersistentVolume> = Api::all(k.c.client.clone());
    let names = |l: Vec<PersistentVolumeClaim>| -> Vec<String> {
        l.into_iter().filter_map(|c| c.metadata.name).collect()
    };
    assert_eq!(
        names(claims.list(&ListParams::default()).await.unwrap().items),
        ["data-web-0", "data-web-1"]
    );
    scale(&api, 1).await;
    until(WAIT, "data-web-1 went with web-1", || async {
        names(claims.list(&ListParams::default()).await.unwrap().items) == ["data-web-0"]
    })
    .await;
    api.delete("web", &DeleteParams::background())
        .await
        .unwrap();
    // The volumes are deleted, and wait only for their nodes to remove the data (simulated
    // nodes never do; the agent's side is tested in e2e/tests/statefulsets.rs).
    until(
        WAIT,
        "the claims are gone and their volumes going",
        || async {
            let going = volumes.list(&ListParams::default()).await.unwrap().items;
            claims
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
                && going.len() == 2
                && going.iter().all(|v| {
                    v.metadata.deletion_timestamp.is_some()
                        && v.metadata.finalizers.as_deref()
                            == Some(&["capstan.dev/local-path-cleanup".to_string()][..])
                })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_binds_the_smallest_fitting_volume_and_releases_it() {
    let k = cluster(1, Duration::ZERO).await;
    let volumes: Api<PersistentVolume> = Api::all(k.c.client.clone());
    for (name, size) in [("big", "10Gi"), ("small", "2Gi"), ("tiny", "500Mi")] {
        let pv: PersistentVolume = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual", "hostPath": {"path": format!("/srv/{name}")}}}))
        .unwrap();
        volumes.create(&PostParams::default(), &pv).await.unwrap();
    }
    let manual: StorageClass = serde_json::from_value(json!({"metadata": {"name": "manual"},
        "provisioner": "kubernetes.io/no-provisioner"}))
    .unwrap();
    Api::<StorageClass>::all(k.c.client.clone())
        .create(&PostParams::default(), &manual)
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(k.c.client.clone(), "default");
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({"metadata": {"name": "c"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
            "resources": {"requests": {"storage": "1Gi"}}}}))
    .unwrap();
    claims.create(&PostParams::default(), &claim).await.unwrap();
    until(WAIT, "the claim is bound", || async {
        let c = claims.get("c").await.unwrap();
        c.status.and_then(|s| s.phase).as_deref() == Some("Bound")
    })
    .await;
    let c = claims.get("c").await.unwrap();
    assert_eq!(c.spec.unwrap().volume_name.as_deref(), Some("small"));
    assert_eq!(
        c.metadata.finalizers.unwrap_or_default(),
        ["kubernetes.io/pvc-protection"]
    );
    let phase = |v: PersistentVolume| v.status.and_then(|s| s.phase).unwrap_or_default();
    until(WAIT, "the volumes' phases", || async {
        phase(volumes.get("small").await.unwrap()) == "Bound"
            && phase(volumes.get("big").await.unwrap()) == "Available"
    })
    .await;
    // Deleted, the claim lets its volume go: Released, kept (Retain, the default).
    claims.delete("c", &DeleteParams::default()).await.unwrap();
    until(WAIT, "the volume is released", || async {
        phase(volumes.get("small").await.unwrap()) == "Released"
    })
    .await;
    assert!(claims.get_opt("c").await.unwrap().is_none());

    // A claim made before any volume fits binds once one is made.
    let early: PersistentVolumeClaim =
        serde_json::from_value(json!({"metadata": {"name": "early"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
            "resources": {"requests": {"storage": "20Gi"}}}}))
        .unwrap();
    claims.create(&PostParams::default(), &early).await.unwrap();
    let late: PersistentVolume = serde_json::from_value(json!({"metadata": {"name": "late"},
        "spec": {"capacity": {"storage": "20Gi"}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "manual", "hostPath": {"path": "/srv/late"}}}))
    .unwrap();
    volumes.create(&PostParams::default(), &late).await.unwrap();
    until(WAIT, "the early claim binds the late volume", || async {
        let c = claims.get("early").await.unwrap();
        c.spec.and_then(|s| s.volume_name).as_deref() == Some("late")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_a_pod_still_runs_is_kept_past_the_history_limit() {
    let k = cluster(2, Duration::ZERO).await;
    let api: Api<StatefulSet> = Api::namespaced(k.c.client.clone(), "default");
    let set = stateful_set(
        json!({"spec": {"replicas": 2, "podManagementPolicy": "Parallel",
        "volumeClaimTemplates": null, "revisionHistoryLimit": 0,
        "updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}}),
    );
    api.create(&PostParams::default(), &set).await.unwrap();
    ready(&api, 2).await;
    let image = |tag: &str| {
        Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "main", "image": format!("busybox:{tag}")}]}}}}))
    };
    api.patch("web", &PatchParams::default(), &image("2"))
        .await
        .unwrap();
    // OnDelete: web-1 runs the second template only once deleted.
    let pod_api: Api<Pod> = Api::namespaced(k.c.client.clone(), "default");
    until(WAIT, "the second revision exists", || async {
        let st = api.get("web").await.unwrap().status.unwrap_or_default();
        st.update_revision.is_some() && st.update_revision != st.current_revision
    })
    .await;
    pod_api
        .delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    until(WAIT, "web-1 runs busybox:2", || async {
        pods(&k.c)
            .await
            .iter()
            .any(|p| p.0 == "web-1" && p.3 == "busybox:2" && !p.2.is_empty())
    })
    .await;
    let second =
        pod_api.get("web-1").await.unwrap().metadata.labels.unwrap()["controller-revision-hash"]
            .clone();
    api.patch("web", &PatchParams::default(), &image("3"))
        .await
        .unwrap();
    until(
        WAIT,
        "the third revision is the update revision",
        || async {
            let st = api.get("web").await.unwrap().status.unwrap_or_default();
            st.update_revision.is_some()
                && st.update_revision.as_deref() != Some(second.as_str())
                && st.update_revision != st.current_revision
        },
    )
    .await;
    let revisions: Api<ControllerRevision> = Api::namespaced(k.c.client.clone(), "default");
    let names: Vec<String> = revisions
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .collect();
    assert!(
        names.contains(&second),
        "web-1's revision was kept: {names:?}"
    );
    assert_eq!(names.len(), 3, "current, web-1's and the update: {names:?}");
}
