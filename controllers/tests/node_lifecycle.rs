//! The node-lifecycle and taint-eviction controllers against a real in-process API server, with
//! simulated nodes (testkit::sim) that renew their Leases every 250 ms (Lease duration 1 s) and
//! a 2 s grace period: a node that dies is marked Unknown and tainted, its pods marked NotReady
//! and replaced elsewhere once their tolerationSeconds run out, and it is untainted when it
//! comes back; when every node goes silent at once, nothing is evicted and no pod is marked;
//! the pod garbage collector removes what no agent will finish.

use std::time::{Duration, Instant};

use capstan_controllers::nodelifecycle::{self, Settings};
use capstan_controllers::podgc;
use capstan_controllers::{Config, Manager};
use capstan_testkit::sim::{SimConfig, SimNodes};
use capstan_testkit::{TestCluster, until};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

const GRACE: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(30);

struct Env {
    c: TestCluster,
    sim: SimNodes,
    manager: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.manager.abort();
    }
}

async fn start(nodes: usize) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let c = TestCluster::start().await;
    let sim = SimNodes::start(
        c.client.clone(),
        SimConfig {
            nodes,
            zones: 1,
            lease_every: Duration::from_millis(250),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let config = Config {
        node_lifecycle: nodelifecycle::Config {
            settings: Settings {
                grace: GRACE,
                startup_grace: GRACE,
                ..Default::default()
            },
            monitor_period: Duration::from_millis(500),
        },
        pod_gc: podgc::Config {
            quarantine: Duration::from_secs(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let m = Manager::with_config(c.client.clone(), &prometheus::Registry::new(), config);
    let names = [
        "deployment",
        "replicaset",
        "scheduler",
        "nodelifecycle",
        "tainteviction",
        "podgc",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let manager = tokio::spawn(async move { m.run(&names).await.unwrap() });
    Env { c, sim, manager }
}

fn deployment(replicas: i32, toleration_seconds: i64) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "containers": [{"name": "app", "image": "localhost/busybox:1"}],
                "tolerations": [
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                     "effect": "NoExecute", "tolerationSeconds": toleration_seconds},
                ],
            }}}
    }))
    .unwrap()
}

fn ready(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

fn node_ready(n: &Node) -> Option<String> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

fn no_execute(n: &Node) -> Vec<String> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.effect == "NoExecute")
        .map(|t| t.key)
        .collect()
}

impl Env {
    /// The Deployment `web` of `replicas`, tolerating unreachable for `toleration_seconds`,
    /// running.
    async fn deploy(&self, replicas: i32, toleration_seconds: i64) {
        let deps: Api<Deployment> = Api::namespaced(self.c.client.clone(), "default");
        deps.create(
            &PostParams::default(),
            &deployment(replicas, toleration_seconds),
        )
        .await
        .unwrap();
        self.running(replicas as usize, "every replica running")
            .await;
    }

    async fn pods(&self) -> Vec<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.c.client.clone(), "default");
        pods.list(&ListParams::default()).await.unwrap().items
    }

    /// Waits until `n` pods run Ready and not terminating.
    async fn running(&self, n: usize, what: &str) {
        until(WAIT, what, || async {
            self.pods()
                .await
                .iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none() && ready(p).as_deref() == Some("True")
                })
                .count()
                == n
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_tainted_and_its_pods_replaced_on_the_others() {
    let env = start(3).await;
    env.deploy(6, 1).await;
    let pods = env.pods().await;
    // DefaultTolerationSeconds: the pod's own unreachable toleration stays, not-ready is added.
    let tols = pods[0].spec.as_ref().unwrap().tolerations.clone().unwrap();
    assert!(
        tols.iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready")
                && t.toleration_seconds == Some(300)),
        "{tols:?}"
    );
    let victim = pods[0].spec.as_ref().unwrap().node_name.clone().unwrap();
    let doomed: Vec<String> = pods
        .iter()
        .filter(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some(victim.as_str()))
        .map(|p| p.metadata.uid.clone().unwrap())
        .collect();

    let killed = Instant::now();
    env.sim.silence(&victim);
    let nodes: Api<Node> = Api::all(env.c.client.clone());
    until(
        WAIT,
        "the dead node Unknown and tainted unreachable",
        || async {
            let n = nodes.get(&victim).await.unwrap();
            node_ready(&n).as_deref() == Some("Unknown")
                && no_execute(&n) == ["node.kubernetes.io/unreachable"]
        },
    )
    .await;
    let detected = killed.elapsed();
    // Renewals every 250 ms, grace 2 s; the pass runs when the grace period ends.
    assert!(
        detected < GRACE + Duration::from_millis(1500),
        "{detected:?}"
    );
    for p in env.pods().await {
        if doomed.contains(p.metadata.uid.as_ref().unwrap()) {
            assert_eq!(ready(&p).as_deref(), Some("False"), "{:?}", p.metadata.name);
        }
    }
    // tolerationSeconds 1: evicted, replaced on the live nodes.
    until(WAIT, "replacements running elsewhere", || async {
        let pods = env.pods().await;
        let live: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        live.len() == 6
            && live.iter().all(|p| {
                ready(p).as_deref() == Some("True")
                    && p.spec.as_ref().unwrap().node_name.as_deref() != Some(victim.as_str())
            })
    })
    .await;
    let moved = killed.elapsed();
    assert!(moved < GRACE + Duration::from_secs(4), "{moved:?}");
    let evicted = env
        .pods()
        .await
        .into_iter()
        .filter(|p| doomed.contains(p.metadata.uid.as_ref().unwrap()))
        .collect::<Vec<_>>();
    assert!(
        !evicted.is_empty(),
        "the dead node's pods stay Terminating until it is back"
    );
    for p in &evicted {
        let conds = p.status.as_ref().unwrap().conditions.clone().unwrap();
        assert!(
            conds.iter().any(|c| c.type_ == "DisruptionTarget"
                && c.reason.as_deref() == Some("DeletionByTaintManager")),
            "{conds:?}"
        );
    }

    // Back: Ready, untainted, and its deleted pods gone.
    env.sim.revive(&victim).await.unwrap();
    until(WAIT, "the node back Ready and untainted", || async {
        let n = nodes.get(&victim).await.unwrap();
        node_ready(&n).as_deref() == Some("True") && no_execute(&n).is_empty()
    })
    .await;
    until(WAIT, "the evicted pods gone", || async {
        env.pods()
            .await
            .iter()
            .all(|p| !doomed.contains(p.metadata.uid.as_ref().unwrap()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_node_goes_silent_nothing_is_evicted_nor_marked_not_ready() {
    let env = start(3).await;
    env.deploy(3, 0).await;
    let before: Vec<String> = env
        .pods()
        .await
        .iter()
        .map(|p| p.metadata.uid.clone().unwrap())
        .collect();
    for n in &env.sim.names {
        env.sim.silence(n);
    }
    let nodes: Api<Node> = Api::all(env.c.client.clone());
    until(WAIT, "every node Unknown", || async {
        let list = nodes.list(&ListParams::default()).await.unwrap().items;
        list.iter()
            .all(|n| node_ready(n).as_deref() == Some("Unknown"))
    })
    .await;
    // For three more grace periods: no NoExecute taint, every pod Ready and kept.
    let watched = Instant::now();
    while watched.elapsed() < 3 * GRACE {
        for n in nodes.list(&ListParams::default()).await.unwrap().items {
            assert!(no_execute(&n).is_empty(), "{:?}", n.spec);
        }
        for p in env.pods().await {
            assert!(
                p.metadata.deletion_timestamp.is_none(),
                "{:?} evicted",
                p.metadata.name
            );
            assert_eq!(ready(&p).as_deref(), Some("True"), "{:?}", p.metadata.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in &env.sim.names {
        env.sim.revive(n).await.unwrap();
    }
    until(WAIT, "every node Ready again", || async {
        let list = nodes.list(&ListParams::default()).await.unwrap().items;
        list.iter()
            .all(|n| node_ready(n).as_deref() == Some("True") && no_execute(n).is_empty())
    })
    .await;
    let after: Vec<String> = env
        .pods()
        .await
        .iter()
        .map(|p| p.metadata.uid.clone().unwrap())
        .collect();
    assert_eq!(before, after, "the same pods run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_no_agent_will_finish_are_garbage_collected() {
    let env = start(3).await;
    env.deploy(6, 0).await;
    let on = |pods: &[Pod], node: &str| -> Vec<String> {
        pods.iter()
            .filter(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some(node))
            .map(|p| p.metadata.uid.clone().unwrap())
            .collect()
    };
    let pods = env.pods().await;
    let (dead, gone) = (env.sim.names[0].clone(), env.sim.names[1].clone());
    let (stuck, orphans) = (on(&pods, &dead), on(&pods, &gone));
    assert!(
        !stuck.is_empty() && !orphans.is_empty(),
        "spread over the nodes"
    );
    let uids = |pods: Vec<Pod>| -> Vec<String> {
        pods.into_iter().map(|p| p.metadata.uid.unwrap()).collect()
    };

    // A dead node's evicted pods stay Terminating: no agent confirms them...
    env.sim.silence(&dead);
    until(WAIT, "the dead node's pods evicted", || async {
        let pods = env.pods().await;
        stuck.iter().all(|u| {
            pods.iter().any(|p| {
                p.metadata.uid.as_ref() == Some(u) && p.metadata.deletion_timestamp.is_some()
            })
        })
    })
    .await;
    // ... until an admin says the machine is gone for good.
    let nodes: Api<Node> = Api::all(env.c.client.clone());
    let mut n = nodes.get(&dead).await.unwrap();
    n.spec
        .get_or_insert_with(Default::default)
        .taints
        .get_or_insert_with(Vec::new)
        .push(
            serde_json::from_value(json!({"key": "node.kubernetes.io/out-of-service",
            "value": "nodeshutdown", "effect": "NoExecute"}))
            .unwrap(),
        );
    nodes
        .replace(&dead, &PostParams::default(), &n)
        .await
        .unwrap();
    until(
        WAIT,
        "the out-of-service node's pods force-deleted",
        || async {
            let now = uids(env.pods().await);
            stuck.iter().all(|u| !now.contains(u))
        },
    )
    .await;

    // A deleted node's pods are orphans once its quarantine ends.
    nodes.delete(&gone, &Default::default()).await.unwrap();
    until(WAIT, "the deleted node's pods collected", || async {
        let now = uids(env.pods().await);
        orphans.iter().all(|u| !now.contains(u))
    })
    .await;
    env.running(6, "6 pods running on what is left").await;
}
