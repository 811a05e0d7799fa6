//! `capstan bench nodes`: node lifecycle at scale, against an in-process API server on the
//! embedded store with simulated nodes (testkit::sim), in one run:
//! 1. **failover**: one node runs every replica of a Deployment (100 by default; the other
//!    nodes cordoned while it was deployed). Right after one of its Lease renewals is seen, the
//!    node dies (its Lease is no longer renewed, its pods left alone). Reported: when the
//!    controller tainted it, and when every replacement pod ran Ready elsewhere — as the
//!    overhead beyond grace period + tolerationSeconds, the part the controllers add (target
//!    ≤ 2 s). Kubernetes' defaults make that 50 s + 300 s; Nomad ~20 s, Swarm ~15 s in all.
//! 2. **idle cost**: the node-lifecycle and taint-eviction controllers as their own process
//!    (`capstan controllers`), watching 5,000 healthy simulated nodes that renew their Leases
//!    every 10 s and post their status every minute, as agents do: the process's CPU seconds
//!    per minute (user + system, /proc/PID/stat; target < 1 s), against the API server's
//!    own in the same run.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capstan_controllers::Manager;
use capstan_controllers::nodelifecycle::{self, Settings};
use capstan_testkit::sim::{SimConfig, SimNodes};
use clap::Args;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use super::LocalServer;

#[derive(Debug, Args)]
pub struct NodesBench {
    /// Replicas on the node that dies.
    #[arg(long, default_value_t = 100)]
    pods: i32,
    /// Nodes of the failover part (one dies).
    #[arg(long, default_value_t = 10)]
    failover_nodes: usize,
    /// The failover part's grace period (seconds).
    #[arg(long, default_value_t = 5)]
    grace_seconds: u64,
    /// The pods' tolerationSeconds for node.kubernetes.io/unreachable.
    #[arg(long, default_value_t = 2)]
    toleration_seconds: i64,
    /// Nodes of the idle-cost part (0 skips it).
    #[arg(long, default_value_t = 5000)]
    idle_nodes: usize,
    /// How long the idle cost is measured (seconds).
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

pub async fn run(b: NodesBench) -> Result<()> {
    println!("# capstan bench nodes\n");
    failover(&b).await?;
    if b.idle_nodes > 0 {
        idle(&b).await?;
    }
    Ok(())
}

async fn cordon(nodes: &Api<Node>, name: &str, on: bool) -> Result<()> {
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": on}})),
        )
        .await?;
    Ok(())
}

fn serving(p: &Pod, avoid: &str) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(avoid)
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn failover(b: &NodesBench) -> Result<()> {
    let server = LocalServer::start(&b.scratch, "bench-nodes-").await?;
    let client = kube::Client::try_from(kube::Config::new(server.url.parse()?))?;
    let sim = SimNodes::start(
        client.clone(),
        SimConfig {
            nodes: b.failover_nodes.max(2),
            zones: 1,
            lease_every: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await?;
    let grace = Duration::from_secs(b.grace_seconds);
    let config = capstan_controllers::Config {
        node_lifecycle: nodelifecycle::Config {
            settings: Settings {
                grace,
                startup_grace: grace,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let m = Manager::with_config(client.clone(), &prometheus::Registry::new(), config);
    let names = [
        "deployment",
        "replicaset",
        "scheduler",
        "nodelifecycle",
        "tainteviction",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let manager = tokio::spawn(async move {
        let _ = m.run(&names).await;
    });
    let nodes: Api<Node> = Api::all(client.clone());
    let victim = sim.names[0].clone();
    for n in &sim.names[1..] {
        cordon(&nodes, n, true).await?;
    }
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "failover"},
        "spec": {"replicas": b.pods, "selector": {"matchLabels": {"app": "failover"}},
            "template": {"metadata": {"labels": {"app": "failover"}}, "spec": {
                "containers": [{"name": "app", "image": "busybox"}],
                "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                    "effect": "NoExecute", "tolerationSeconds": b.toleration_seconds}]}}}
    }))?;
    deps.create(&PostParams::default(), &d).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let want = b.pods as usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = pods.list(&ListParams::default()).await?.items;
        if list.iter().filter(|p| serving(p, "")).count() == want {
            break;
        }
        if Instant::now() > deadline {
            bail!("the {want} pods did not run on {victim}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in &sim.names[1..] {
        cordon(&nodes, n, false).await?;
    }
    // Die right after a renewal is seen: the grace period runs from then.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut renewals = watcher(
        leases,
        watcher::Config::default().fields(&format!("metadata.name={victim}")),
    )
    .boxed();
    let mut seen = 0;
    while let Some(e) = renewals.next().await {
        if let Ok(watcher::Event::Apply(_)) = e {
            seen += 1;
            if seen == 2 {
                break;
            }
        }
    }
    let died = Instant::now();
    sim.silence(&victim);
    let mut tainted = None;
    let mut all_running = None;
    let deadline = died + grace + Duration::from_secs(b.toleration_seconds.max(0) as u64 + 60);
    while all_running.is_none() {
        if tainted.is_none() {
            let n = nodes.get(&victim).await?;
            let has = n
                .spec
                .and_then(|s| s.taints)
                .unwrap_or_default()
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute");
            if has {
                tainted = Some(died.elapsed());
            }
        }
        let list = pods.list(&ListParams::default()).await?.items;
        if list.iter().filter(|p| serving(p, &victim)).count() == want {
            all_running = Some(died.elapsed());
        }
        if Instant::now() > deadline {
            bail!("the replacements did not all run within a minute");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    manager.abort();
    let (tainted, total) = (
        tainted.context("never saw the taint")?,
        all_running.unwrap_or_default(),
    );
    let floor = grace + Duration::from_secs(b.toleration_seconds.max(0) as u64);
    println!(
        "## Failover: {want} pods on a node that dies ({} simulated nodes)\n",
        b.failover_nodes
    );
    println!("| step | since the last renewal | beyond the floor |");
    println!("|---|---:|---:|");
    println!(
        "| node tainted unreachable (floor: grace {}s) | {:.2} s | {:+.2} s |",
        b.grace_seconds,
        tainted.as_secs_f64(),
        tainted.as_secs_f64() - grace.as_secs_f64()
    );
    println!(
        "| every replacement Running and Ready (floor: grace + tolerationSeconds {}s) | {:.2} s | **{:+.2} s** |",
        b.toleration_seconds,
        total.as_secs_f64(),
        total.as_secs_f64() - floor.as_secs_f64()
    );
    println!();
    Ok(())
}

async fn idle(b: &NodesBench) -> Result<()> {
    let server = LocalServer::start(&b.scratch, "bench-nodes-idle-").await?;
    let client = kube::Client::try_from(kube::Config::new(server.url.parse()?))?;
    let started = Instant::now();
    let _sim = SimNodes::start(
        client.clone(),
        SimConfig {
            nodes: b.idle_nodes,
            zones: 3,
            lease_every: Duration::from_secs(10),
            status_every: Some(Duration::from_secs(60)),
            parallelism: 64,
            ..Default::default()
        },
    )
    .await?;
    let registered = started.elapsed();
    let dir = tempfile::Builder::new()
        .prefix("bench-nodes-")
        .tempdir_in(&b.scratch)?;
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "controllers",
            "--controllers",
            "nodelifecycle,tainteviction",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    // Let it list and settle (the first full pass), then measure.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let me = std::process::id();
    let (c0, s0, t0) = (
        super::cpu_seconds(pid)?,
        super::cpu_seconds(me)?,
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(b.idle_seconds)).await;
    let (c1, s1, elapsed) = (
        super::cpu_seconds(pid)?,
        super::cpu_seconds(me)?,
        t0.elapsed(),
    );
    let rss_kib = super::rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    let nodes: Api<Node> = Api::all(client.clone());
    let tainted = nodes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    let per_min = |d: f64| d * 60.0 / elapsed.as_secs_f64();
    println!(
        "## Idle cost: {} healthy simulated nodes (Lease every 10 s, status every 60 s; registered in {:.1} s)\n",
        b.idle_nodes,
        registered.as_secs_f64()
    );
    println!("| process | CPU per minute | RSS |");
    println!("|---|---:|---:|");
    println!(
        "| `capstan controllers --controllers nodelifecycle,tainteviction` | **{:.2} s** | {:.1} MiB |",
        per_min(c1 - c0),
        rss_kib as f64 / 1024.0
    );
    println!(
        "| the bench process: API server + {} simulated nodes (for scale) | {:.2} s | |",
        b.idle_nodes,
        per_min(s1 - s0)
    );
    println!("\nNodes tainted at the end (must be 0): {tainted}\n");
    Ok(())
}
