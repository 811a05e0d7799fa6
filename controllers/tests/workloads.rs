//! The workload controllers and the scheduler against a real in-process API server, with
//! simulated nodes playing the kubelet.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use capstan_controllers::Manager;
use capstan_testkit::sim::{SimConfig, SimNodes};
use capstan_testkit::{TestCluster, until};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

struct Env {
    c: TestCluster,
    _sim: SimNodes,
    manager: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(m) = self.manager.take() {
            m.abort();
        }
    }
}

impl Env {
    async fn start(nodes: usize) -> Env {
        let mut env = Env::without_manager(nodes).await;
        env.start_manager();
        env
    }

    /// Nodes but no controllers yet (set the nodes up first, then `start_manager`).
    async fn without_manager(nodes: usize) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let c = TestCluster::start().await;
        let sim = SimNodes::start(
            c.client.clone(),
            SimConfig {
                nodes,
                zones: nodes, // one node per zone: spreading over nodes and zones agree
                ..Default::default()
            },
        )
        .await
        .unwrap();
        Env {
            c,
            _sim: sim,
            manager: None,
        }
    }

    fn start_manager(&mut self) {
        let m = Manager::new(self.c.client.clone(), &prometheus::Registry::new());
        self.manager = Some(tokio::spawn(async move {
            m.run(&capstan_controllers::all()).await.unwrap();
        }));
    }

    fn stop_manager(&mut self) {
        if let Some(m) = self.manager.take() {
            m.abort();
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.c.client.clone(), "default")
    }
}

fn deployment(name: &str, replicas: i32, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image,
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}
            }
        }
    }))
    .unwrap()
}

async fn active_pods(api: &Api<Pod>, app: &str) -> Vec<Pod> {
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

async fn rolled_out(api: &Api<Deployment>, name: &str, replicas: i32) -> bool {
    let d = api.get(name).await.unwrap();
    let s = d.status.unwrap_or_default();
    s.observed_generation == d.metadata.generation
        && s.updated_replicas == Some(replicas)
        && s.replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
}

/// Counts the most pods of `app` that existed (not terminating) at once, from a watch.
fn max_pods_watch(api: Api<Pod>, app: &str) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let max = Arc::new(AtomicUsize::new(0));
    let m = max.clone();
    let cfg = watcher::Config::default().labels(&format!("app={app}"));
    let task = tokio::spawn(async move {
        let mut live = std::collections::HashSet::new();
        let mut events = watcher(api, cfg).boxed();
        while let Some(Ok(e)) = events.next().await {
            match e {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let uid = p.metadata.uid.clone().unwrap();
                    if p.metadata.deletion_timestamp.is_none() {
                        live.insert(uid);
                    } else {
                        live.remove(&uid);
                    }
                }
                watcher::Event::Delete(p) => {
                    live.remove(&p.metadata.uid.unwrap());
                }
                _ => {}
            }
            m.fetch_max(live.len(), Ordering::SeqCst);
        }
    });
    (max, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_rolls_out_updates_and_rolls_back_within_max_surge() {
    let env = Env::start(3).await;
    let deployments: Api<Deployment> = env.api();
    let pods: Api<Pod> = env.api();
    let rss: Api<ReplicaSet> = env.api();
    let (max, watch) = max_pods_watch(pods.clone(), "web");
    deployments
        .create(&PostParams::default(), &deployment("web", 3, "busybox:1"))
        .await
        .unwrap();
    until(WAIT, "3 replicas available", || {
        rolled_out(&deployments, "web", 3)
    })
    .await;
    let running = active_pods(&pods, "web").await;
    assert_eq!(running.len(), 3);
    for p in &running {
        assert!(p.spec.as_ref().unwrap().node_name.is_some(), "scheduled");
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    }
    let first = rss.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(first.len(), 1);
    let rs1 = &first[0];
    let hash = rs1.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert!(rs1.metadata.name.as_ref().unwrap().ends_with(&hash));
    assert_eq!(
        rs1.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "1"
    );

    // A new image: a second ReplicaSet, revision 2, never more than 3 + maxSurge(1) pods.
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}})),
        )
        .await
        .unwrap();
    until(WAIT, "the update rolled out", || async {
        rolled_out(&deployments, "web", 3).await
            && rss.list(&ListParams::default()).await.unwrap().items.len() == 2
    })
    .await;
    let all = rss.list(&ListParams::default()).await.unwrap().items;
    let old = all
        .iter()
        .find(|r| r.metadata.uid == rs1.metadata.uid)
        .unwrap();
    let new = all
        .iter()
        .find(|r| r.metadata.uid != rs1.metadata.uid)
        .unwrap();
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(0));
    assert_eq!(
        new.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "2"
    );
    let d = deployments.get("web").await.unwrap();
    assert_eq!(
        d.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "2"
    );
    let conds = d.status.unwrap().conditions.unwrap();
    let progressing = conds.iter().find(|c| c.type_ == "Progressing").unwrap();
    assert_eq!(
        progressing.reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
    let available = conds.iter().find(|c| c.type_ == "Available").unwrap();
    assert_eq!(available.status, "True");

    // Roll back to the first template: the old ReplicaSet comes back as revision 3.
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}})),
        )
        .await
        .unwrap();
    until(WAIT, "rolled back", || async {
        let r = rss.get(rs1.metadata.name.as_ref().unwrap()).await.unwrap();
        rolled_out(&deployments, "web", 3).await
            && r.spec.unwrap().replicas == Some(3)
            && r.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"] == "3"
    })
    .await;
    assert_eq!(
        rss.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    assert!(
        max.load(Ordering::SeqCst) <= 4,
        "max pods {}",
        max.load(Ordering::SeqCst)
    );
    watch.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_recreate_and_pause_behave_like_kubernetes() {
    let env = Env::start(2).await;
    let deployments: Api<Deployment> = env.api();
    let pods: Api<Pod> = env.api();
    let mut d = deployment("db", 2, "busybox:1");
    d.spec.as_mut().unwrap().strategy =
        Some(serde_json::from_value(json!({"type": "Recreate"})).unwrap());
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    until(WAIT, "2 available", || rolled_out(&deployments, "db", 2)).await;

    // Scale through the scale subresource, as `kubectl scale` does.
    deployments
        .patch_scale(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    until(WAIT, "4 available", || rolled_out(&deployments, "db", 4)).await;
    assert_eq!(active_pods(&pods, "db").await.len(), 4);

    // Recreate: every old pod is gone before any new one exists.
    let (max, watch) = max_pods_watch(pods.clone(), "db");
    deployments
        .patch("db", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}})))
        .await
        .unwrap();
    until(WAIT, "recreated", || rolled_out(&deployments, "db", 4)).await;
    assert!(max.load(Ordering::SeqCst) <= 4);
    watch.abort();
    for p in active_pods(&pods, "db").await {
        assert_eq!(
            p.spec.unwrap().containers[0].image.as_deref(),
            Some("busybox:2")
        );
    }

    // Paused: a template change makes no new ReplicaSet until resumed.
    deployments
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await
        .unwrap();
    until(WAIT, "paused condition", || async {
        let d = deployments.get("db").await.unwrap();
        d.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.reason.as_deref() == Some("DeploymentPaused"))
    })
    .await;
    deployments
        .patch("db", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:3"}]}}}})))
        .await
        .unwrap();
    let rss: Api<ReplicaSet> = env.api();
    until(WAIT, "the paused change observed", || async {
        let d = deployments.get("db").await.unwrap();
        d.status.and_then(|s| s.observed_generation) == d.metadata.generation
    })
    .await;
    assert_eq!(
        rss.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    deployments
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    until(WAIT, "resumed and rolled", || async {
        rolled_out(&deployments, "db", 4).await
            && rss.list(&ListParams::default()).await.unwrap().items.len() == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicaset_replaces_deleted_pods_adopts_orphans_and_releases_strays() {
    let env = Env::start(2).await;
    let pods: Api<Pod> = env.api();
    let rss: Api<ReplicaSet> = env.api();
    // An orphan that matches: adopted, so only 2 more are created.
    let orphan: Pod = serde_json::from_value(
        json!({"metadata": {"name": "orphan", "labels": {"app": "cache"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .unwrap();
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "cache"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "cache"}},
                 "template": {"metadata": {"labels": {"app": "cache"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    })).unwrap();
    let rs = rss.create(&PostParams::default(), &rs).await.unwrap();
    until(WAIT, "3 ready", || async {
        let s = rss.get("cache").await.unwrap().status.unwrap_or_default();
        s.ready_replicas == Some(3) && s.replicas == 3
    })
    .await;
    let all = active_pods(&pods, "cache").await;
    assert_eq!(all.len(), 3);
    let o = pods.get("orphan").await.unwrap();
    assert_eq!(
        o.metadata.owner_references.unwrap()[0].uid,
        rs.metadata.uid.clone().unwrap()
    );

    // Delete one: replaced.
    let victim = all
        .iter()
        .find(|p| p.metadata.name.as_deref() != Some("orphan"))
        .unwrap();
    pods.delete(
        victim.metadata.name.as_ref().unwrap(),
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    until(WAIT, "replaced", || async {
        let now = active_pods(&pods, "cache").await;
        now.len() == 3 && now.iter().all(|p| p.metadata.uid != victim.metadata.uid)
    })
    .await;

    // Relabel one: released (no owner), and a replacement is made.
    pods.patch(
        "orphan",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    until(WAIT, "released and replaced", || async {
        let o = pods.get("orphan").await.unwrap();
        o.metadata.owner_references.unwrap_or_default().is_empty()
            && active_pods(&pods, "cache").await.len() == 3
    })
    .await;

    // Scale down: the extra pods go.
    rss.patch_scale(
        "cache",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    until(WAIT, "scaled down", || async {
        active_pods(&pods, "cache").await.len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_manager_converges_without_exceeding_max_surge() {
    let mut env = Env::start(3).await;
    let deployments: Api<Deployment> = env.api();
    let pods: Api<Pod> = env.api();
    deployments
        .create(&PostParams::default(), &deployment("api", 6, "busybox:1"))
        .await
        .unwrap();
    until(WAIT, "6 available", || rolled_out(&deployments, "api", 6)).await;
    let (max, watch) = max_pods_watch(pods.clone(), "api");
    deployments
        .patch("api", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}})))
        .await
        .unwrap();
    // Kill the manager as soon as the rollout has started.
    until(WAIT, "rollout started", || async {
        active_pods(&pods, "api")
            .await
            .iter()
            .any(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("busybox:2"))
    })
    .await;
    env.stop_manager();
    env.start_manager();
    until(WAIT, "converged after restart", || {
        rolled_out(&deployments, "api", 6)
    })
    .await;
    assert!(
        max.load(Ordering::SeqCst) <= 7,
        "max pods {}",
        max.load(Ordering::SeqCst)
    );
    assert_eq!(active_pods(&pods, "api").await.len(), 6);
    watch.abort();
}

async fn pod_on(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name).await.ok()?.spec?.node_name
}

fn bare_pod(name: &str, extra: serde_json::Value) -> Pod {
    let mut v = json!({"metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}});
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
        for (k, val) in extra {
            spec.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_honours_constraints_and_explains_failures() {
    let mut env = Env::without_manager(3).await;
    let nodes: Api<Node> = Api::all(env.c.client.clone());
    let pods: Api<Pod> = env.api();
    // sim-0: tainted; sim-1: cordoned; sim-2: labelled disk=ssd.
    nodes.patch("sim-0", &PatchParams::default(), &Patch::Merge(json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}))).await.unwrap();
    nodes
        .patch(
            "sim-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    nodes
        .patch(
            "sim-2",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"disk": "ssd"}}})),
        )
        .await
        .unwrap();
    env.start_manager();

    pods.create(&PostParams::default(), &bare_pod("plain", json!({})))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &bare_pod("tolerant", json!({
        "nodeSelector": {"kubernetes.io/hostname": "sim-0"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}))).await.unwrap();
    pods.create(&PostParams::default(), &bare_pod("affine", json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}}))).await.unwrap();
    until(WAIT, "placed", || async {
        pod_on(&pods, "plain").await.as_deref() == Some("sim-2")
            && pod_on(&pods, "tolerant").await.as_deref() == Some("sim-0")
            && pod_on(&pods, "affine").await.as_deref() == Some("sim-2")
    })
    .await;

    // Too big for anything: PodScheduled=False with every node's reason, and an event.
    pods.create(
        &PostParams::default(),
        &bare_pod(
            "huge",
            json!({"containers": [{"name": "c", "image": "busybox",
        "resources": {"requests": {"cpu": "64"}}}]}),
        ),
    )
    .await
    .unwrap();
    let expected = "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable.";
    until(WAIT, "unschedulable condition", || async {
        let p = pods.get("huge").await.unwrap();
        p.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
                    && c.message.as_deref() == Some(expected)
            })
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = env.api();
    until(WAIT, "FailedScheduling event", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.note.as_deref() == Some(expected)
            })
    })
    .await;
    // A node change retries it: uncordon sim-1 and give it room... it still does not fit (64 cpu).
    // Host ports: two pods asking for the same hostPort land on different nodes.
    nodes
        .patch(
            "sim-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": false}})),
        )
        .await
        .unwrap();
    for name in ["port-a", "port-b"] {
        pods.create(
            &PostParams::default(),
            &bare_pod(
                name,
                json!({"containers": [{"name": "c", "image": "busybox",
            "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
            ),
        )
        .await
        .unwrap();
    }
    until(WAIT, "ports placed apart", || async {
        let (a, b) = (pod_on(&pods, "port-a").await, pod_on(&pods, "port-b").await);
        a.is_some() && b.is_some() && a != b
    })
    .await;
    assert!(pod_on(&pods, "huge").await.is_none());

    // A parked pod that is itself changed is retried at once, not at the minute's flush:
    // nothing else in the cluster changes here to wake it.
    pods.create(
        &PostParams::default(),
        &bare_pod(
            "wants-gpu",
            json!({"nodeSelector": {"kubernetes.io/hostname": "sim-0"}}),
        ),
    )
    .await
    .unwrap();
    until(WAIT, "wants-gpu unschedulable", || async {
        let p = pods.get("wants-gpu").await.unwrap();
        p.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "False")
    })
    .await;
    pods.patch(
        "wants-gpu",
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"tolerations": [
            {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}})),
    )
    .await
    .unwrap();
    until(
        Duration::from_secs(15),
        "wants-gpu placed after its update",
        || async { pod_on(&pods, "wants-gpu").await.as_deref() == Some("sim-0") },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_binpack_and_anti_affinity_place_replicas_as_asked() {
    let env = Env::start(4).await;
    let pods: Api<Pod> = env.api();
    let deployments: Api<Deployment> = env.api();
    // Spread: 8 replicas over 4 nodes → 2 each.
    deployments
        .create(&PostParams::default(), &deployment("spread", 8, "busybox"))
        .await
        .unwrap();
    until(WAIT, "spread rolled out", || {
        rolled_out(&deployments, "spread", 8)
    })
    .await;
    let mut per_node = std::collections::BTreeMap::new();
    for p in active_pods(&pods, "spread").await {
        *per_node
            .entry(p.spec.unwrap().node_name.unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2, 2],
        "{per_node:?}"
    );

    // Binpack: 6 replicas fill the fullest node first (each node fits 8 cpu / 100m pods easily).
    let mut bp = deployment("packed", 6, "busybox");
    bp.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .scheduler_name = Some("binpack-scheduler".into());
    deployments
        .create(&PostParams::default(), &bp)
        .await
        .unwrap();
    until(WAIT, "packed rolled out", || {
        rolled_out(&deployments, "packed", 6)
    })
    .await;
    let nodes: std::collections::BTreeSet<String> = active_pods(&pods, "packed")
        .await
        .into_iter()
        .map(|p| p.spec.unwrap().node_name.unwrap())
        .collect();
    assert_eq!(nodes.len(), 1, "binpack used {nodes:?}");

    // Required anti-affinity on hostname: 5 replicas, 4 nodes → 4 placed, 1 pending with reason.
    let mut aa = deployment("solo", 5, "busybox");
    aa.spec.as_mut().unwrap().strategy = None;
    aa.spec.as_mut().unwrap().template.spec.as_mut().unwrap().affinity = Some(serde_json::from_value(json!({
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "solo"}}, "topologyKey": "kubernetes.io/hostname"}]}})).unwrap());
    deployments
        .create(&PostParams::default(), &aa)
        .await
        .unwrap();
    until(WAIT, "4 solo pods placed, 1 pending", || async {
        let all = active_pods(&pods, "solo").await;
        let placed: std::collections::BTreeSet<_> = all.iter().filter_map(|p| p.spec.as_ref().unwrap().node_name.clone()).collect();
        let pending = all.iter().filter(|p| p.spec.as_ref().unwrap().node_name.is_none()).any(|p| {
            p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c|
                c.message.as_deref() == Some("0/4 nodes are available: 4 node(s) didn't match pod anti-affinity rules.")))
        });
        all.len() == 5 && placed.len() == 4 && pending
    })
    .await;
}
