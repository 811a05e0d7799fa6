//! ResourceQuotas and LimitRanges against a real in-process API server with the
//! resource-quota controller: creates beyond a quota are refused with Kubernetes' 403 (also
//! when they race), deletions give the budget back, LimitRange defaults count, scopes pick
//! pods, object counts cover any kind, and a ReplicaSet under a full quota says why it cannot
//! create, and claims are charged by size, in all and per StorageClass.

mod common;

use std::time::Duration;

use capstan_testkit::{TestCluster, until};
use futures_util::future::join_all;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, PersistentVolumeClaim, Pod, ResourceQuota,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    /// Stopped first, before the cluster it talks to (fields drop in order).
    _manager: capstan_testkit::Background,
    c: TestCluster,
}

async fn cluster() -> Cluster {
    let c = TestCluster::start().await;
    Cluster {
        _manager: common::manager(
            &c,
            &["resourcequota", "replicaset", "persistentvolume-binder"],
        ),
        c,
    }
}

fn pod(name: &str, resources: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": resources}]}}))
    .unwrap()
}

fn cpu(q: &str) -> Value {
    json!({"requests": {"cpu": q}})
}

async fn quota(c: &TestCluster, name: &str, spec: Value) -> Api<ResourceQuota> {
    let api: Api<ResourceQuota> = Api::namespaced(c.client.clone(), "default");
    let q: ResourceQuota =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    api.create(&PostParams::default(), &q).await.unwrap();
    until(WAIT, "the quota's status is computed", || async {
        let q = api.get(name).await.unwrap();
        q.status.and_then(|s| s.used).is_some()
    })
    .await;
    api
}

async fn used(api: &Api<ResourceQuota>, name: &str, resource: &str) -> String {
    let q = api.get(name).await.unwrap();
    q.status
        .and_then(|s| s.used)
        .and_then(|u| u.get(resource).map(|q| q.0.clone()))
        .unwrap_or_default()
}

fn refusal(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_refuses_the_fourth_pod_and_takes_it_after_a_delete() {
    let k = cluster().await;
    let quotas = quota(
        &k.c,
        "compute",
        json!({"hard": {"pods": "3", "requests.cpu": "1"}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(k.c.client.clone(), "default");
    let pp = PostParams::default();
    for i in 0..3 {
        pods.create(&pp, &pod(&format!("p{i}"), cpu("100m")))
            .await
            .unwrap();
    }
    assert_eq!(used(&quotas, "compute", "pods").await, "3");
    assert_eq!(used(&quotas, "compute", "requests.cpu").await, "300m");
    let (code, message) = refusal(pods.create(&pp, &pod("p3", cpu("100m"))).await.unwrap_err());
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "pods \"p3\" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=3, limited: pods=3"
    );
    let (code, message) = refusal(pods.create(&pp, &pod("free", json!({}))).await.unwrap_err());
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "pods \"free\" is forbidden: failed quota: compute: must specify requests.cpu for: c"
    );
    // A dry run is checked and charges nothing.
    pods.delete("p0", &DeleteParams::default()).await.unwrap();
    until(WAIT, "the deleted pod's share is given back", || async {
        used(&quotas, "compute", "pods").await == "2"
    })
    .await;
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    pods.create(&dry, &pod("p3", cpu("100m"))).await.unwrap();
    assert_eq!(used(&quotas, "compute", "pods").await, "2");
    pods.create(&pp, &pod("p3", cpu("100m"))).await.unwrap();
    assert_eq!(used(&quotas, "compute", "pods").await, "3");
    let (_, message) = refusal(pods.create(&pp, &pod("big", cpu("2"))).await.unwrap_err());
    assert!(message.contains("exceeded quota: compute, requested: pods=1,requests.cpu=2, used: pods=3,requests.cpu=300m, limited: pods=3,requests.cpu=1"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_never_pass_a_quota_together() {
    let k = cluster().await;
    let quotas = quota(&k.c, "ten", json!({"hard": {"pods": "10"}})).await;
    let pods: Api<Pod> = Api::namespaced(k.c.client.clone(), "default");
    let results = join_all((0..30).map(|i| {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &pod(&format!("r{i}"), json!({})))
                .await
        }
    }))
    .await;
    let made = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(made, 10, "30 racing creates under pods=10");
    assert!(
        results
            .into_iter()
            .filter_map(Result::err)
            .all(|e| refusal(e).0 == 403)
    );
    assert_eq!(used(&quotas, "ten", "pods").await, "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_range_defaults_count_and_its_bounds_refuse() {
    let k = cluster().await;
    let ranges: Api<LimitRange> = Api::namespaced(k.c.client.clone(), "default");
    let lr: LimitRange = serde_json::from_value(json!({"metadata": {"name": "defaults"},
        "spec": {"limits": [{"type": "Container", "default": {"cpu": "200m"},
            "defaultRequest": {"cpu": "100m"}, "max": {"cpu": "500m"}}]}}))
    .unwrap();
    ranges.create(&PostParams::default(), &lr).await.unwrap();
    let stored = ranges.get("defaults").await.unwrap();
    assert_eq!(
        stored.spec.unwrap().limits[0].default.as_ref().unwrap()["cpu"].0,
        "200m"
    );
    let quotas = quota(
        &k.c,
        "cpu",
        json!({"hard": {"requests.cpu": "1", "limits.cpu": "2"}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(k.c.client.clone(), "default");
    let made = pods
        .create(&PostParams::default(), &pod("defaulted", json!({})))
        .await
        .unwrap();
    let c = &made.spec.unwrap().containers[0];
    let r = c.resources.clone().unwrap();
    assert_eq!(r.requests.unwrap()["cpu"].0, "100m");
    assert_eq!(r.limits.unwrap()["cpu"].0, "200m");
    assert_eq!(
        made.metadata.annotations.unwrap()["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu request for container c; cpu limit for container c"
    );
    assert_eq!(used(&quotas, "cpu", "requests.cpu").await, "100m");
    assert_eq!(used(&quotas, "cpu", "limits.cpu").await, "200m");
    let (code, message) = refusal(
        pods.create(
            &PostParams::default(),
            &pod("greedy", json!({"limits": {"cpu": "1"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "pods \"greedy\" is forbidden: maximum cpu usage per Container is 500m, but limit is 1"
    );
    // A LimitRange that contradicts itself is refused.
    let bad: LimitRange = serde_json::from_value(json!({"metadata": {"name": "bad"},
        "spec": {"limits": [{"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"}}]}}))
    .unwrap();
    let (code, message) = refusal(
        ranges
            .create(&PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(
        message.contains("min value 2 is greater than max value 1"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_object_counts_and_a_replica_set_under_a_full_quota() {
    let k = cluster().await;
    let quotas = quota(
        &k.c,
        "best-effort",
        json!({"hard": {"pods": "1"}, "scopes": ["BestEffort"]}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(k.c.client.clone(), "default");
    let pp = PostParams::default();
    pods.create(&pp, &pod("be0", json!({}))).await.unwrap();
    let (code, _) = refusal(pods.create(&pp, &pod("be1", json!({}))).await.unwrap_err());
    assert_eq!(code, 403, "a second best-effort pod");
    pods.create(&pp, &pod("burstable", cpu("10m")))
        .await
        .unwrap();
    assert_eq!(used(&quotas, "best-effort", "pods").await, "1");

    // Object counts of any kind; deleting one gives it back.
    let counts = quota(
        &k.c,
        "counts",
        json!({"hard": {"count/configmaps": "2",
        "count/replicasets.apps": "1"}}),
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(k.c.client.clone(), "default");
    let cm = |n: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": n}})).unwrap()
    };
    // kube-root-ca.crt is not made here (no serviceaccount controller): two fit.
    cms.create(&pp, &cm("a")).await.unwrap();
    cms.create(&pp, &cm("b")).await.unwrap();
    let (_, message) = refusal(cms.create(&pp, &cm("c")).await.unwrap_err());
    assert!(message.contains("exceeded quota: counts, requested: count/configmaps=1, used: count/configmaps=2, limited: count/configmaps=2"), "{message}");
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    until(WAIT, "the ConfigMap's count is given back", || async {
        used(&counts, "counts", "count/configmaps").await == "1"
    })
    .await;
    cms.create(&pp, &cm("c")).await.unwrap();

    // A ReplicaSet whose pods the quota refuses says so in its ReplicaFailure condition.
    quota(&k.c, "three", json!({"hard": {"pods": "3"}})).await;
    let rss: Api<ReplicaSet> = Api::namespaced(k.c.client.clone(), "default");
    let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"replicas": 5, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                    "resources": {"requests": {"cpu": "10m"}}}]}}}}))
    .unwrap();
    rss.create(&pp, &rs).await.unwrap();
    until(WAIT, "ReplicaFailure names the quota", || async {
        let rs = rss.get("web").await.unwrap();
        rs.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| {
                c.type_ == "ReplicaFailure"
                    && c.message
                        .as_deref()
                        .unwrap_or("")
                        .contains("exceeded quota: three")
            })
    })
    .await;
    let rs2: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "second"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}))
    .unwrap();
    let (code, _) = refusal(rss.create(&pp, &rs2).await.unwrap_err());
    assert_eq!(code, 403, "count/replicasets.apps=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_charged_by_size_and_per_class() {
    let k = cluster().await;
    let q = quota(
        &k.c,
        "storage",
        json!({"hard": {"requests.storage": "3Gi", "persistentvolumeclaims": "5",
            "fast.storageclass.storage.k8s.io/requests.storage": "1Gi"}}),
    )
    .await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(k.c.client.clone(), "default");
    let claim = |name: &str, class: &str, size: &str| -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": class,
            "resources": {"requests": {"storage": size}}}}))
        .unwrap()
    };
    let pp = PostParams::default();
    claims
        .create(&pp, &claim("a", "slow", "2Gi"))
        .await
        .unwrap();
    claims
        .create(&pp, &claim("b", "fast", "1Gi"))
        .await
        .unwrap();
    assert_eq!(used(&q, "storage", "requests.storage").await, "3Gi");
    assert_eq!(
        used(
            &q,
            "storage",
            "fast.storageclass.storage.k8s.io/requests.storage"
        )
        .await,
        "1Gi"
    );
    let (code, message) = refusal(
        claims
            .create(&pp, &claim("c", "slow", "1Gi"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    assert!(
        message.contains("exceeded quota: storage, requested: requests.storage=1Gi, used: requests.storage=3Gi, limited: requests.storage=3Gi"),
        "{message}"
    );
    // A deleted claim (its protection lifted: no pod uses it) gives its size back.
    claims.delete("a", &DeleteParams::default()).await.unwrap();
    until(WAIT, "the claim's size is given back", || async {
        used(&q, "storage", "requests.storage").await == "1Gi"
    })
    .await;
    claims
        .create(&pp, &claim("c", "slow", "1Gi"))
        .await
        .unwrap();
    // Growing a claim is charged the difference.
    let grow =
        |size: &str| Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": size}}}}));
    claims
        .patch("c", &PatchParams::default(), &grow("2Gi"))
        .await
        .unwrap();
    assert_eq!(used(&q, "storage", "requests.storage").await, "3Gi");
    let (code, message) = refusal(
        claims
            .patch("c", &PatchParams::default(), &grow("3Gi"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    assert!(
        message.contains("requested: requests.storage=1Gi, used: requests.storage=3Gi"),
        "{message}"
    );
    let (code, _) = refusal(
        claims
            .create(&pp, &claim("d", "fast", "1Mi"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403, "the fast class is full");
}
