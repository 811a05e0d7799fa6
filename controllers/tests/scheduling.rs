//! The scheduler against a real in-process API server with simulated nodes: a high-priority
//! pod preempts exactly one low-priority pod on a full node (DisruptionTarget, a Preempted
//! event, nominatedNodeName, then bound there) while a pod whose class says Never waits;
//! required pod affinity follows a pod into its zone (or refuses, in kube-scheduler's words);
//! a preferred node wins over the spread score; a pod that can no longer preempt gives up its
//! nominatedNodeName.

mod common;

use std::time::Duration;

use capstan_testkit::sim::{SimConfig, SimNodes};
use capstan_testkit::{TestCluster, until};
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

struct Env {
    /// Stopped first, before the cluster it talks to (fields drop in order).
    _manager: capstan_testkit::Background,
    c: TestCluster,
    _sim: SimNodes,
}

async fn env(nodes: usize) -> Env {
    let c = TestCluster::start().await;
    let sim = SimNodes::start(
        c.client.clone(),
        SimConfig {
            nodes,
            cpu: "2".into(),
            memory: "8Gi".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let classes: Api<PriorityClass> = Api::all(c.client.clone());
    for (name, value, policy) in [
        ("low", 10, "PreemptLowerPriority"),
        ("high", 1000, "PreemptLowerPriority"),
        ("polite", 1000, "Never"),
    ] {
        let pc: PriorityClass = serde_json::from_value(json!({"metadata": {"name": name},
            "value": value, "preemptionPolicy": policy}))
        .unwrap();
        classes.create(&PostParams::default(), &pc).await.unwrap();
    }
    let manager = common::manager(&c, &["scheduler"]);
    Env {
        c,
        _sim: sim,
        _manager: manager,
    }
}

fn pod(name: &str, class: &str, cpu: &str) -> Pod {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"class": class}},
        "spec": {"priorityClassName": class, "containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": cpu}}}]}}),
    )
    .unwrap()
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone()
}

fn condition(p: &Pod, ty: &str) -> Option<(String, String)> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

async fn live(api: &Api<Pod>, class: &str) -> Vec<Pod> {
    api.list(&ListParams::default().labels(&format!("class={class}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_pod_preempts_one_low_priority_pod_on_a_full_node() {
    let e = env(2).await;
    let pods: Api<Pod> = Api::namespaced(e.c.client.clone(), "default");
    let pp = PostParams::default();
    for i in 0..4 {
        pods.create(&pp, &pod(&format!("low-{i}"), "low", "1"))
            .await
            .unwrap();
    }
    until(WAIT, "the four low pods fill both nodes", || async {
        let l = live(&pods, "low").await;
        l.len() == 4 && l.iter().all(|p| node_of(p).is_some())
    })
    .await;

    // A class that never preempts: the pod waits, unschedulable, and nobody is evicted.
    pods.create(&pp, &pod("polite", "polite", "1"))
        .await
        .unwrap();
    until(WAIT, "the polite pod is reported unschedulable", || async {
        let p = pods.get("polite").await.unwrap();
        condition(&p, "PodScheduled") == Some(("False".into(), "Unschedulable".into()))
    })
    .await;
    assert_eq!(live(&pods, "low").await.len(), 4);

    // A high-priority pod takes the room of exactly one low-priority pod.
    pods.create(&pp, &pod("urgent", "high", "1")).await.unwrap();
    until(WAIT, "the urgent pod is bound", || async {
        node_of(&pods.get("urgent").await.unwrap()).is_some()
    })
    .await;
    let urgent = pods.get("urgent").await.unwrap();
    let node = node_of(&urgent).unwrap();
    assert_eq!(
        urgent
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.clone()),
        Some(node.clone()),
        "nominatedNodeName named the node it got"
    );
    let low = live(&pods, "low").await;
    assert_eq!(low.len(), 3, "one victim, not more");
    let on_node = low
        .iter()
        .filter(|p| node_of(p).as_deref() == Some(&node))
        .count();
    assert_eq!(
        on_node, 1,
        "the victim came from the node the urgent pod got"
    );
    let events: Api<Event> = Api::namespaced(e.c.client.clone(), "default");
    until(WAIT, "a Preempted event on the victim", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|ev| {
                ev.reason.as_deref() == Some("Preempted")
                    && ev
                        .message
                        .as_deref()
                        .is_some_and(|m| m.contains(&format!("on node {node}")))
                    && ev
                        .involved_object
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("low-"))
            })
    })
    .await;
    // The polite pod still waits: it outranks the low pods but never preempts.
    assert!(node_of(&pods.get("polite").await.unwrap()).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victims_carry_the_disruption_target_condition() {
    let e = env(1).await;
    let pods: Api<Pod> = Api::namespaced(e.c.client.clone(), "default");
    let pp = PostParams::default();
    // Watch the low pod for the condition the scheduler writes before deleting it.
    pods.create(&pp, &pod("victim", "low", "2")).await.unwrap();
    until(WAIT, "the low pod is bound", || async {
        node_of(&pods.get("victim").await.unwrap()).is_some()
    })
    .await;
    let seen = tokio::spawn({
        let pods = pods.clone();
        async move {
            use futures_util::StreamExt;
            let cfg = kube::runtime::watcher::Config::default().fields("metadata.name=victim");
            let mut s = std::pin::pin!(kube::runtime::watcher(pods, cfg));
            while let Some(Ok(ev)) = s.next().await {
                if let kube::runtime::watcher::Event::Apply(p) = ev
                    && let Some(c) = condition(&p, "DisruptionTarget")
                {
                    return c;
                }
            }
            (String::new(), String::new())
        }
    });
    pods.create(&pp, &pod("urgent", "high", "2")).await.unwrap();
    let c = tokio::time::timeout(WAIT, seen).await.unwrap().unwrap();
    assert_eq!(c, ("True".to_string(), "PreemptionByScheduler".to_string()));
    until(WAIT, "the urgent pod runs where the victim was", || async {
        node_of(&pods.get("urgent").await.unwrap()).as_deref() == Some("sim-0")
    })
    .await;
}

fn free_pod(name: &str, labels: serde_json::Value, spec: serde_json::Value) -> Pod {
    let mut s = json!({"containers": [{"name": "c", "image": "busybox",
        "resources": {"requests": {"cpu": "100m"}}}]});
    for (k, v) in spec.as_object().into_iter().flatten() {
        s[k] = v.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": s}))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_affinity_and_preferred_node_affinity_place_pods() {
    let e = env(3).await;
    let pods: Api<Pod> = Api::namespaced(e.c.client.clone(), "default");
    let pp = PostParams::default();
    let zone = "topology.kubernetes.io/zone";
    let near = |app: &str| {
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": zone, "labelSelector": {"matchLabels": {"app": app}}}]}}})
    };
    pods.create(&pp, &free_pod("db", json!({"app": "db"}), json!({})))
        .await
        .unwrap();
    until(WAIT, "db is bound", || async {
        node_of(&pods.get("db").await.unwrap()).is_some()
    })
    .await;
    let db_node = node_of(&pods.get("db").await.unwrap()).unwrap();
    // Required affinity: the app follows the database into its zone (one node per zone).
    pods.create(&pp, &free_pod("app", json!({"app": "app"}), near("db")))
        .await
        .unwrap();
    // Nothing to follow: refused, in kube-scheduler's words.
    pods.create(
        &pp,
        &free_pod("lonely", json!({"app": "lonely"}), near("nothing")),
    )
    .await
    .unwrap();
    // The first pod of a group that follows itself may go anywhere.
    pods.create(
        &pp,
        &free_pod("first", json!({"app": "group"}), near("group")),
    )
    .await
    .unwrap();
    // A preferred node wins over the spread score.
    let preferred = json!({"affinity": {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference":
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [db_node.clone()]}]}}]}}});
    pods.create(&pp, &free_pod("pref", json!({"app": "pref"}), preferred))
        .await
        .unwrap();
    until(WAIT, "app, first and pref are bound", || async {
        let mut all = true;
        for n in ["app", "first", "pref"] {
            all &= node_of(&pods.get(n).await.unwrap()).is_some();
        }
        all
    })
    .await;
    assert_eq!(
        node_of(&pods.get("app").await.unwrap()),
        Some(db_node.clone())
    );
    assert_eq!(
        node_of(&pods.get("pref").await.unwrap()),
        Some(db_node.clone())
    );
    until(WAIT, "lonely is reported unschedulable", || async {
        let p = pods.get("lonely").await.unwrap();
        p.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| {
                c.type_ == "PodScheduled"
                    && c.message.as_deref()
                        == Some(
                            "0/3 nodes are available: 3 node(s) didn't match pod affinity rules.",
                        )
            })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_can_no_longer_preempt_gives_up_its_nomination() {
    let e = env(1).await;
    let pods: Api<Pod> = Api::namespaced(e.c.client.clone(), "default");
    // Fits nowhere, even with every other pod gone: preemption cannot help.
    pods.create(&PostParams::default(), &pod("huge", "high", "64"))
        .await
        .unwrap();
    until(WAIT, "the huge pod is reported unschedulable", || async {
        let p = pods.get("huge").await.unwrap();
        condition(&p, "PodScheduled") == Some(("False".into(), "Unschedulable".into()))
    })
    .await;
    // A nomination left from an earlier attempt (as after its victims' node shrank)...
    pods.patch_status(
        "huge",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"nominatedNodeName": "gone-node"}})),
    )
    .await
    .unwrap();
    // ...is cleared at the next attempt (a label change retries the parked pod at once).
    pods.patch(
        "huge",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"retry": "1"}}})),
    )
    .await
    .unwrap();
    until(WAIT, "nominatedNodeName is cleared", || async {
        let p = pods.get("huge").await.unwrap();
        p.status.and_then(|s| s.nominated_node_name).is_none()
    })
    .await;
}
