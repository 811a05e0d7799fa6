//! `capstan bench schedule`: the scheduler and the Deployment controller at scale, against an
//! in-process API server on the embedded store with simulated nodes (kwok-like), in one run:
//! 1. floor: the raw binding writes alone (pods/binding POSTs for pre-created pending pods,
//!    round-robin over the nodes, no decisions) at the scheduler's bind concurrency;
//! 2. per strategy (spread, binpack): pods created by 64 clients while the scheduler runs —
//!    pods/s from the first create to the last bind, p50/p99 of create-acknowledged → bound
//!    seen on a watch, and placement quality (stddev of pods per node; nodes used);
//! 3. a Deployment of N replicas rolled from one template to another (wall time);
//! 4. that Deployment deleted in the foreground: the garbage collector removes its pods and
//!    ReplicaSets, then it (wall time).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capstan_controllers::Manager;
use capstan_controllers::scheduler::{Config, Strategy};
use capstan_testkit::sim::{SimConfig, SimNodes};
use clap::Args;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Binding, Namespace, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use super::{LocalServer, Samples, drive, ms};

#[derive(Debug, Args)]
pub struct ScheduleBench {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Strategies to measure.
    #[arg(long, value_delimiter = ',', default_value = "spread,binpack")]
    strategies: Vec<String>,
    /// Replicas of the Deployment rolled in part 3 (0 skips it).
    #[arg(long, default_value_t = 1000)]
    rollout_replicas: i32,
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

fn pod(name: &str, scheduler: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"schedulerName": scheduler, "containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
    }))
    .expect("valid pod")
}

pub(super) async fn namespace(client: &kube::Client, name: &str) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// Pod name → when it was first seen bound, and to which node.
type Bound = Arc<Mutex<HashMap<String, (Instant, String)>>>;

/// Watches pods in `ns` and records when each was first seen bound, and on which node.
fn watch_bound(api: Api<Pod>) -> (Bound, tokio::task::JoinHandle<()>) {
    let seen: Bound = Arc::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(e) = events.next().await {
            let pods = match e {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => p,
                _ => continue,
            };
            if let Some(node) = pods.spec.as_ref().and_then(|s| s.node_name.clone()) {
                let name = pods.metadata.name.clone().unwrap_or_default();
                if let Ok(mut m) = s.lock() {
                    m.entry(name).or_insert((Instant::now(), node));
                }
            }
        }
    });
    (seen, task)
}

async fn wait_for(seen: &Bound, n: usize, within: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let count = seen.lock().map(|m| m.len()).unwrap_or(0);
        if count >= n {
            return Ok(());
        }
        if start.elapsed() > within {
            bail!("only {count}/{n} pods bound within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(b: ScheduleBench) -> Result<()> {
    let server = LocalServer::start(&b.scratch, "capstan-bench-schedule-").await?;
    let url = server.url.clone();
    let client = kube::Client::try_from(kube::Config::new(url.parse()?))?;
    let t = Instant::now();
    let sim = SimNodes::start(
        client.clone(),
        SimConfig {
            nodes: b.nodes,
            cpu: "32".into(),
            memory: "128Gi".into(),
            lease_every: Duration::from_secs(3600),
            parallelism: 64,
            ..Default::default()
        },
    )
    .await?;
    println!(
        "## Scheduling: {} simulated nodes (32 cpu, 128Gi, 110 pods each), {} pods of 100m/128Mi\n",
        b.nodes, b.pods
    );
    println!(
        "Nodes registered and Ready in {:.2}s. Embedded store, in-process API server, the scheduler \
         binding through HTTP like any client; the simulated kubelets mark bound pods Running meanwhile.\n",
        t.elapsed().as_secs_f64()
    );
    println!("| run | pods/s | p50 create→bound | p99 create→bound | placement |");
    println!("|---|---:|---:|---:|---|");

    // 1. The floor: raw binding writes.
    namespace(&client, "floor").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "floor");
    drive(64, b.pods, {
        let pods = pods.clone();
        move |i| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &pod(&format!("p{i}"), "nobody"))
                    .await?;
                Ok(())
            }
        }
    })
    .await?;
    let nodes = b.nodes;
    let floor = drive(64, b.pods, {
        let pods = pods.clone();
        move |i| {
            let pods = pods.clone();
            async move {
                let name = format!("p{i}");
                let binding = Binding {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                    target: ObjectReference {
                        kind: Some("Node".into()),
                        name: Some(format!("sim-{}", i % nodes)),
                        ..Default::default()
                    },
                };
                let _: serde_json::Value = pods
                    .create_subresource("binding", &name, &PostParams::default(), &binding)
                    .await?;
                Ok(())
            }
        }
    })
    .await?;
    println!(
        "| floor: raw pods/binding writes, 64 clients | {:.0} | {} (per write) | {} (per write) | round-robin |",
        floor.rate(),
        ms(floor.quantile(0.5)),
        ms(floor.quantile(0.99))
    );

    // 2. The scheduler, per strategy.
    let manager = Manager::with_config(
        client.clone(),
        &prometheus::Registry::new(),
        capstan_controllers::Config {
            scheduler: Config::default()
                .profile("bench-spread", Strategy::Spread)
                .profile("bench-binpack", Strategy::Binpack)
                .profile("bench-random", Strategy::Random),
            ..Default::default()
        },
    );
    let names = ["scheduler".to_string()].into_iter().collect();
    let m = manager.clone();
    let sched = tokio::spawn(async move { m.run(&names).await });
    for strategy in &b.strategies {
        let ns = format!("sched-{strategy}");
        namespace(&client, &ns).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let (seen, watch) = watch_bound(pods.clone());
        let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let start = Instant::now();
        let profile = format!("bench-{strategy}");
        drive(64, b.pods, {
            let (pods, created, profile) = (pods.clone(), created.clone(), profile.clone());
            move |i| {
                let (pods, created, profile) = (pods.clone(), created.clone(), profile.clone());
                async move {
                    let name = format!("p{i}");
                    pods.create(&PostParams::default(), &pod(&name, &profile))
                        .await?;
                    if let Ok(mut c) = created.lock() {
                        c.insert(name, Instant::now());
                    }
                    Ok(())
                }
            }
        })
        .await?;
        wait_for(&seen, b.pods, Duration::from_secs(600)).await?;
        watch.abort();
        let seen = seen.lock().map(|m| m.clone()).unwrap_or_default();
        let created = created.lock().map(|m| m.clone()).unwrap_or_default();
        let last = seen.values().map(|(t, _)| *t).max().unwrap_or(start);
        let latencies: Vec<Duration> = seen
            .iter()
            .filter_map(|(n, (t, _))| created.get(n).map(|c| t.saturating_duration_since(*c)))
            .collect();
        let samples = Samples {
            elapsed: last.duration_since(start),
            latencies,
        };
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for (_, node) in seen.values() {
            *per_node.entry(node.as_str()).or_default() += 1;
        }
        let mean = b.pods as f64 / b.nodes as f64;
        let var = (0..b.nodes)
            .map(|i| {
                let n = per_node
                    .get(format!("sim-{i}").as_str())
                    .copied()
                    .unwrap_or(0) as f64;
                (n - mean).powi(2)
            })
            .sum::<f64>()
            / b.nodes as f64;
        println!(
            "| scheduler, {strategy} | {:.0} | {} | {} | stddev {:.2} pods/node, {} nodes used |",
            b.pods as f64 / samples.elapsed.as_secs_f64(),
            ms(samples.quantile(0.5)),
            ms(samples.quantile(0.99)),
            var.sqrt(),
            per_node.len()
        );
    }
    sched.abort();
    drop(manager);

    // 3. A Deployment rolled from one template to another.
    if b.rollout_replicas > 0 {
        namespace(&client, "rollout").await?;
        let manager = Manager::new(client.clone(), &prometheus::Registry::new());
        let m = manager.clone();
        let ctl = tokio::spawn(async move { m.run(&capstan_controllers::all()).await });
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "rollout");
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "big"},
            "spec": {"replicas": b.rollout_replicas, "selector": {"matchLabels": {"app": "big"}},
                "template": {"metadata": {"labels": {"app": "big"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox:1",
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
        }))?;
        let t = Instant::now();
        deployments.create(&PostParams::default(), &d).await?;
        wait_rolled(&deployments, b.rollout_replicas).await?;
        let first = t.elapsed();
        let t = Instant::now();
        deployments
            .patch(
                "big",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}})),
            )
            .await?;
        wait_rolled(&deployments, b.rollout_replicas).await?;
        let rolled = t.elapsed();
        println!(
            "\n## Deployment of {} replicas (25% surge / 25% unavailable, pods Ready at once)\n",
            b.rollout_replicas
        );
        println!("| step | wall time |\n|---|---:|");
        println!("| created → all available | {:.2} s |", first.as_secs_f64());
        println!(
            "| new template → rolled out (old ReplicaSet at 0) | {:.2} s |",
            rolled.as_secs_f64()
        );
        // 4. The garbage collector: a foreground delete returns the Deployment to nothing,
        // dependents first (the simulated kubelets confirm each pod's graceful deletion).
        let pods: Api<Pod> = Api::namespaced(client.clone(), "rollout");
        let t = Instant::now();
        deployments
            .delete("big", &DeleteParams::foreground())
            .await?;
        loop {
            if deployments.get_opt("big").await?.is_none() {
                break;
            }
            if t.elapsed() > Duration::from_secs(600) {
                bail!("the deployment was not deleted within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let deleted = t.elapsed();
        let left = pods.list(&ListParams::default()).await?.items.len();
        println!(
            "| foreground delete → Deployment gone ({} pods and the ReplicaSets first; {left} pods left) | {:.2} s |",
            b.rollout_replicas,
            deleted.as_secs_f64()
        );
        ctl.abort();
    }
    drop(sim);
    drop(server);
    Ok(())
}

async fn wait_rolled(api: &Api<Deployment>, replicas: i32) -> Result<()> {
    let start = Instant::now();
    loop {
        let d = api.get("big").await.context("reading the deployment")?;
        let s = d.status.clone().unwrap_or_default();
        if s.observed_generation == d.metadata.generation
            && s.updated_replicas == Some(replicas)
            && s.replicas == Some(replicas)
            && s.available_replicas == Some(replicas)
        {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("the deployment did not roll out within 10 minutes: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
