//! The DaemonSet controller against a real in-process API server, with simulated nodes
//! playing the kubelet: one pod per node, a node added later gets its pod within seconds,
//! node labels and taints move pods, a rolling update never takes more than maxUnavailable
//! nodes down (or, surging, never leaves a node without an available pod), and every template
//! has a ControllerRevision.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use capstan_testkit::sim::{SimConfig, SimNodes};
use capstan_testkit::{TestCluster, until};
use common::SimCluster;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn cluster(nodes: usize, ready_after: Duration) -> SimCluster {
    let config = SimConfig {
        nodes,
        ready_after,
        ..Default::default()
    };
    common::sim_cluster(config, &["daemonset", "scheduler", "garbagecollector"]).await
}

fn daemon_set(name: &str, image: &str, extra: Value) -> DaemonSet {
    let mut v = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image,
                    "resources": {"requests": {"cpu": "10m"}}}]}}}});
    capstan_testkit::merge_json(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

/// The DaemonSet's live pods by node, with their image.
async fn placed(c: &TestCluster, app: &str) -> BTreeMap<String, Vec<String>> {
    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in api
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
    {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let spec = p.spec.unwrap_or_default();
        let Some(node) = spec.node_name else { continue };
        let image = spec.containers[0].image.clone().unwrap_or_default();
        out.entry(node).or_default().push(image);
    }
    out
}

/// The nodes running a live pod of the DaemonSet, in name order.
async fn nodes_running(c: &TestCluster, app: &str) -> Vec<String> {
    placed(c, app).await.into_keys().collect()
}

fn status(ds: &DaemonSet) -> (i32, i32, i32, i32) {
    let s = ds.status.clone().unwrap_or_default();
    (
        s.desired_number_scheduled,
        s.current_number_scheduled,
        s.updated_number_scheduled.unwrap_or(0),
        s.number_available.unwrap_or(0),
    )
}

async fn rolled_out(api: &Api<DaemonSet>, name: &str, n: i32) {
    until(WAIT, "the DaemonSet rolled out", || async {
        let ds = api.get(name).await.unwrap();
        let observed =
            ds.status.as_ref().and_then(|s| s.observed_generation) == ds.metadata.generation;
        observed && status(&ds) == (n, n, n, n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_per_node_and_a_new_node_gets_its_own() {
    let k = cluster(3, Duration::ZERO).await;
    let api: Api<DaemonSet> = Api::namespaced(k.c.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &daemon_set("agent", "busybox:1", json!({})),
    )
    .await
    .unwrap();
    rolled_out(&api, "agent", 3).await;
    let pods = placed(&k.c, "agent").await;
    assert_eq!(pods.len(), 3, "{pods:?}");
    assert!(pods.values().all(|p| p.len() == 1), "{pods:?}");

    // A fourth node joins: its pod follows within seconds.
    let started = Instant::now();
    let _more = SimNodes::start(
        k.c.client.clone(),
        SimConfig {
            nodes: 1,
            prefix: "late-".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    until(WAIT, "the new node runs the daemon pod", || async {
        placed(&k.c, "agent").await.contains_key("late-0")
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    rolled_out(&api, "agent", 4).await;

    // One revision so far, labelled with the pods' hash and owned by the DaemonSet.
    let revs: Api<ControllerRevision> = Api::namespaced(k.c.client.clone(), "default");
    let list = revs.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].revision, 1);
    let hash = &list[0].metadata.labels.as_ref().unwrap()["controller-revision-hash"];
    assert_eq!(
        list[0].metadata.name.as_deref(),
        Some(format!("agent-{hash}").as_str())
    );
    let pod_api: Api<Pod> = Api::namespaced(k.c.client.clone(), "default");
    let pods = pod_api
        .list(&ListParams::default().labels(&format!("controller-revision-hash={hash}")))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_labels_and_taints_decide_where_pods_run() {
    let k = cluster(3, Duration::ZERO).await;
    let api: Api<DaemonSet> = Api::namespaced(k.c.client.clone(), "default");
    let nodes: Api<Node> = Api::all(k.c.client.clone());
    let ds = daemon_set(
        "edge",
        "busybox:1",
        json!({"spec": {"template": {"spec": {"nodeSelector": {"role": "edge"}}}}}),
    );
    api.create(&PostParams::default(), &ds).await.unwrap();
    until(WAIT, "observed with nothing to run", || async {
        let d = api.get("edge").await.unwrap();
        d.status.and_then(|s| s.observed_generation) == Some(1)
    })
    .await;
    assert!(placed(&k.c, "edge").await.is_empty());

    let label = |v: Value| Patch::Merge(json!({"metadata": {"labels": {"role": v}}}));
    for n in ["sim-0", "sim-1"] {
        nodes
            .patch(n, &PatchParams::default(), &label(json!("edge")))
            .await
            .unwrap();
    }
    until(WAIT, "pods on the two edge nodes", || async {
        nodes_running(&k.c, "edge").await == ["sim-0", "sim-1"]
    })
    .await;

    // The label goes: so does the pod.
    nodes
        .patch("sim-1", &PatchParams::default(), &label(Value::Null))
        .await
        .unwrap();
    // A NoSchedule taint leaves the running pod alone; a NoExecute one evicts it.
    let taint = |effect: &str| {
        Patch::Merge(json!({"spec": {"taints": [{"key": "maintenance", "effect": effect}]}}))
    };
    nodes
        .patch("sim-0", &PatchParams::default(), &taint("NoSchedule"))
        .await
        .unwrap();
    until(WAIT, "only sim-0 keeps its pod", || async {
        nodes_running(&k.c, "edge").await == ["sim-0"]
    })
    .await;
    nodes
        .patch("sim-0", &PatchParams::default(), &taint("NoExecute"))
        .await
        .unwrap();
    until(WAIT, "no pod left", || async {
        placed(&k.c, "edge").await.is_empty()
    })
    .await;
    until(WAIT, "the status says so", || async {
        status(&api.get("edge").await.unwrap()) == (0, 0, 0, 0)
    })
    .await;
}

/// Follows the DaemonSet's status during a roll and returns the most nodes seen without an
/// available pod at once.
fn watch_unavailable(api: Api<DaemonSet>, name: &str) -> tokio::task::JoinHandle<i32> {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api, cfg);
    tokio::spawn(async move {
        let mut worst = 0;
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(ev)) = stream.next().await {
            if let watcher::Event::Apply(ds) | watcher::Event::InitApply(ds) = ev {
                let s = ds.status.unwrap_or_default();
                worst = worst.max(s.number_unavailable.unwrap_or(0));
                if s.updated_number_scheduled == Some(s.desired_number_scheduled)
                    && s.number_available == Some(s.desired_number_scheduled)
                    && s.observed_generation == ds.metadata.generation
                    && ds.metadata.generation > Some(1)
                {
                    break;
                }
            }
        }
        worst
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_updates_stay_within_their_budget_and_keep_revisions() {
    // Pods take 300 ms to turn ready, so a careless roll would show several nodes down.
    let k = cluster(5, Duration::from_millis(300)).await;
    let api: Api<DaemonSet> = Api::namespaced(k.c.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &daemon_set("roll", "busybox:1", json!({})),
    )
    .await
    .unwrap();
    rolled_out(&api, "roll", 5).await;

    let watch = watch_unavailable(api.clone(), "roll");
    let image = |i: &str| {
        Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "main", "image": i}]}}}}))
    };
    api.patch("roll", &PatchParams::default(), &image("busybox:2"))
        .await
        .unwrap();
    rolled_out(&api, "roll", 5).await;
    let worst = tokio::time::timeout(WAIT, watch).await.unwrap().unwrap();
    assert!(
        worst <= 1,
        "maxUnavailable 1, yet {worst} nodes were down at once"
    );
    let pods = placed(&k.c, "roll").await;
    assert!(pods.values().all(|p| p == &["busybox:2"]), "{pods:?}");
    let ds = api.get("roll").await.unwrap();
    assert_eq!(
        ds.metadata.annotations.unwrap()["deprecated.daemonset.template.generation"],
        "2"
    );

    // Surging: every node keeps an available pod throughout.
    api.patch(
        "roll",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate":
            {"maxUnavailable": 0, "maxSurge": 2}}}})),
    )
    .await
    .unwrap();
    let watch = watch_unavailable(api.clone(), "roll");
    api.patch("roll", &PatchParams::default(), &image("busybox:3"))
        .await
        .unwrap();
    rolled_out(&api, "roll", 5).await;
    let worst = tokio::time::timeout(WAIT, watch).await.unwrap().unwrap();
    assert_eq!(
        worst, 0,
        "a surge roll left a node without an available pod"
    );
    until(WAIT, "the old pods are gone", || async {
        let pods = placed(&k.c, "roll").await;
        pods.len() == 5 && pods.values().all(|p| p == &["busybox:3"])
    })
    .await;

    // Three templates, three revisions, numbered in order.
    let revs: Api<ControllerRevision> = Api::namespaced(k.c.client.clone(), "default");
    let mut numbers: Vec<i64> = revs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| r.revision)
        .collect();
    numbers.sort();
    assert_eq!(numbers, [1, 2, 3]);

    // Back to the first template: its revision becomes number 4 again, no new one is made.
    api.patch("roll", &PatchParams::default(), &image("busybox:1"))
        .await
        .unwrap();
    rolled_out(&api, "roll", 5).await;
    until(WAIT, "the first revision is current again", || async {
        let mut numbers: Vec<i64> = revs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|r| r.revision)
            .collect();
        numbers.sort();
        numbers == [2, 3, 4]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_delete_replaces_only_what_the_user_deletes() {
    let k = cluster(2, Duration::ZERO).await;
    let api: Api<DaemonSet> = Api::namespaced(k.c.client.clone(), "default");
    let ds = daemon_set(
        "manual",
        "busybox:1",
        json!({"spec": {"updateStrategy": {"type": "OnDelete"}}}),
    );
    api.create(&PostParams::default(), &ds).await.unwrap();
    rolled_out(&api, "manual", 2).await;
    api.patch(
        "manual",
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "main", "image": "busybox:2"}]}}}})),
    )
    .await
    .unwrap();
    until(WAIT, "the change is observed", || async {
        let d = api.get("manual").await.unwrap();
        d.status.and_then(|s| s.observed_generation) == Some(2)
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(k.c.client.clone(), "default");
    let on_sim0 = pods
        .list(
            &ListParams::default()
                .labels("app=manual")
                .fields("spec.nodeName=sim-0"),
        )
        .await
        .unwrap()
        .items;
    assert_eq!(on_sim0.len(), 1);
    pods.delete(
        on_sim0[0].metadata.name.as_deref().unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    until(
        WAIT,
        "sim-0 runs the new template, sim-1 still the old",
        || async {
            let p = placed(&k.c, "manual").await;
            p.get("sim-0") == Some(&vec!["busybox:2".to_string()])
                && p.get("sim-1") == Some(&vec!["busybox:1".to_string()])
        },
    )
    .await;
    // The status follows in a later pass: one node updated, the other left alone.
    until(WAIT, "the status counts one updated node", || async {
        let d = api.get("manual").await.unwrap();
        d.status.and_then(|s| s.updated_number_scheduled) == Some(1)
    })
    .await;
    let p = placed(&k.c, "manual").await;
    assert_eq!(p.get("sim-1"), Some(&vec!["busybox:1".to_string()]));
}
