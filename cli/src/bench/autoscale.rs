//! `capstan bench autoscale`: N HorizontalPodAutoscalers, each on a Deployment of one pod
//! (request 100m, target 50%), on simulated nodes that serve `/stats/summary` with every
//! container at one CPU figure the benchmark sets. The autoscaler runs as its own process
//! (`capstan controllers --controllers horizontalpodautoscaling`), so its CPU is its own.
//! 1. Steady: every pod at 40m (80% of target, within the tolerance of no change) — the
//!    controller's CPU per minute while it syncs every autoscaler each period, and no rescale.
//! 2. A metric change: the pods of 10 autoscalers at a time (`--rounds` rounds, each in a
//!    namespace of its own, among all the others) go to 150m (300%) — from the moment the nodes
//!    report it to each Deployment's `spec.replicas` written (through its scale subresource):
//!    p50/p99/max, against the target of the sync period + 1 s. The API server reuses a node's
//!    summary for up to 1 s (part of the figure); a real agent samples every 10 s (not part).
//! 3. A stampede: every other pod at once — 1,000 rescales and 2,000 new pods in one period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use capstan_controllers::Manager;
use capstan_testkit::sim::{SimConfig, SimNodes};
use capstan_testkit::sim_stats::Usage;
use clap::Args;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use super::cpu_seconds;
use super::jobs::until_all;
use super::schedule::namespace;
use super::{LocalServer, drive};

#[derive(Debug, Args)]
pub struct AutoscaleBench {
    #[arg(long, default_value_t = 1000)]
    hpas: usize,
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// The autoscaler's `--horizontal-pod-autoscaler-sync-period`.
    #[arg(long, default_value = "15s", value_parser = crate::controllers_cmd::parse_duration)]
    sync_period: Duration,
    /// How long the steady state is measured.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Rounds of 10 autoscalers whose metric changes.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

const NS: &str = "hpa";
/// Autoscalers per round of metric changes.
const HOT: usize = 10;

fn hot_namespace(round: usize) -> String {
    format!("hpa-hot-{round}")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub async fn run(b: AutoscaleBench) -> Result<()> {
    let server = LocalServer::start(&b.scratch, "capstan-bench-autoscale-").await?;
    let client = kube::Client::try_from(kube::Config::new(server.url.parse()?))?;
    let usage = Usage::new(40);
    let _sim = SimNodes::start(
        client.clone(),
        SimConfig {
            stats: Some(usage.clone()),
            ..SimConfig::roomy(b.nodes)
        },
    )
    .await?;
    let manager = Manager::new(client.clone(), &prometheus::Registry::new());
    let names = ["scheduler", "deployment", "replicaset"]
        .into_iter()
        .map(String::from)
        .collect();
    let _controllers = tokio::spawn(async move { manager.run(&names).await });
    namespace(&client, NS).await?;
    for r in 0..b.rounds {
        namespace(&client, &hot_namespace(r)).await?;
    }
    println!(
        "{} HorizontalPodAutoscalers (one per Deployment of 1 pod, request 100m, target 50%), {} simulated nodes, sync period {:?}\n",
        b.hpas, b.nodes, b.sync_period
    );

    let total = b.hpas + b.rounds * HOT;
    let c = client.clone();
    let main = b.hpas;
    drive(32, total, move |i| {
        let ns = if i < main {
            NS.to_string()
        } else {
            hot_namespace((i - main) / HOT)
        };
        let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(c.clone(), &ns);
        async move {
            let name = format!("w-{i}");
            let d: Deployment = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": "c", "image": "busybox",
                            "resources": {"requests": {"cpu": "100m", "memory": "16Mi"}}}]}}},
            }))?;
            deployments.create(&PostParams::default(), &d).await?;
            let h: HorizontalPodAutoscaler = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicas": 1, "maxReplicas": 3,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 50}}}]},
            }))?;
            hpas.create(&PostParams::default(), &h).await?;
            Ok(())
        }
    })
    .await?;
    let pods: Api<Pod> = Api::all(client.clone());
    until_all(total, "pods Running", || async {
        Ok(pods
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count())
    })
    .await?;

    // The autoscaler, a process of its own.
    let dir = tempfile::Builder::new()
        .prefix("bench-autoscale-")
        .tempdir_in(&b.scratch)?;
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let period = format!("{}ms", b.sync_period.as_millis());
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "controllers",
            "--controllers",
            capstan_controllers::autoscaler::NAME,
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            "--metrics-listen",
            "127.0.0.1:0",
            "--horizontal-pod-autoscaler-sync-period",
            &period,
        ])
        .env(
            "RUST_LOG",
            std::env::var("CAPSTAN_BENCH_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    let outcome = measure(&b, &client, &usage, pid).await;
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// Sets the pods' CPU with `change`, then times each of the `n` Deployments `deployments` sees
/// until its `spec.replicas` rises above 1 (at most 3 sync periods + 30 s).
async fn time_change(
    deployments: Api<Deployment>,
    n: usize,
    period: Duration,
    change: impl FnOnce(),
) -> Vec<Duration> {
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let seen = seen.clone();
        let stream = watcher(deployments, watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(d)) = stream.next().await {
                if d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) > 1
                    && let Some(name) = d.metadata.name
                    && let Ok(mut s) = seen.lock()
                {
                    s.entry(name).or_insert_with(Instant::now);
                }
            }
        })
    };
    // The watch is listening before anything changes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let changed = Instant::now();
    change();
    let deadline = changed + period * 3 + Duration::from_secs(30);
    while seen.lock().map_or(0, |s| s.len()) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watch.abort();
    let mut out: Vec<Duration> = seen
        .lock()
        .map(|s| s.values().map(|t| t.duration_since(changed)).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn latency_row(what: &str, l: &[Duration], n: usize, target: Duration, cpu: f64) {
    println!(
        "| {what} | {}/{n} | {:.2} s | {:.2} s | {:.2} s | ≤ {:.0} s | {cpu:.2} s |",
        l.len(),
        percentile(l, 0.5).as_secs_f64(),
        percentile(l, 0.99).as_secs_f64(),
        l.last().copied().unwrap_or_default().as_secs_f64(),
        target.as_secs_f64(),
    );
}

async fn measure(b: &AutoscaleBench, client: &kube::Client, usage: &Usage, pid: u32) -> Result<()> {
    let hpas: Api<HorizontalPodAutoscaler> = Api::all(client.clone());
    let deployments: Api<Deployment> = Api::all(client.clone());
    let total = b.hpas + b.rounds * HOT;
    let started = Instant::now();
    until_all(total, "autoscalers with current metrics", || async {
        Ok(hpas
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|h| {
                h.status
                    .as_ref()
                    .and_then(|s| s.current_metrics.as_ref())
                    .is_some_and(|m| m.iter().any(|m| m.resource.is_some()))
            })
            .count())
    })
    .await?;
    let first_pass = started.elapsed();

    // 1. Steady state.
    let me = std::process::id();
    let (c0, s0, t0) = (cpu_seconds(pid)?, cpu_seconds(me)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(b.seconds)).await;
    let (c1, s1, elapsed) = (cpu_seconds(pid)?, cpu_seconds(me)?, t0.elapsed());
    let per_min = |d: f64| d * 60.0 / elapsed.as_secs_f64();
    let rss_kib = super::rss_kib(pid);
    let rescaled = deployments
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|d| d.spec.as_ref().and_then(|s| s.replicas) != Some(1))
        .count();
    if rescaled > 0 {
        bail!("{rescaled} Deployments were rescaled at 80% of target (within tolerance)");
    }
    println!(
        "## Steady state: {total} autoscalers, every pod at 80% of target, {} s\n",
        b.seconds
    );
    println!("| process | CPU per minute | RSS |");
    println!("|---|---:|---:|");
    println!(
        "| `capstan controllers --controllers horizontalpodautoscaling` | **{:.2} s** (target < 2 s) | {:.1} MiB |",
        per_min(c1 - c0),
        rss_kib as f64 / 1024.0
    );
    println!(
        "| the bench process: API server, scheduler, Deployment and ReplicaSet controllers, {} simulated nodes | {:.2} s | |",
        b.nodes,
        per_min(s1 - s0)
    );
    println!(
        "\nFirst pass (every autoscaler synced once after start): {:.1} s. Deployments rescaled: 0.\n",
        first_pass.as_secs_f64()
    );

    // 2. Metric changes, 10 autoscalers at a time, among all the others.
    let target = b.sync_period + Duration::from_secs(1);
    let mut rounds = Vec::new();
    let c2 = cpu_seconds(pid)?;
    for r in 0..b.rounds {
        let ns = hot_namespace(r);
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let u = usage.clone();
        rounds.extend(
            time_change(api, HOT, b.sync_period, move || {
                u.set_namespace_cpu_millicores(&ns, 150)
            })
            .await,
        );
    }
    let rounds_cpu = cpu_seconds(pid)? - c2;
    rounds.sort();
    // 3. The stampede.
    let c3 = cpu_seconds(pid)?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let u = usage.clone();
    let all = time_change(api, b.hpas, b.sync_period, move || {
        u.set_cpu_millicores(150)
    })
    .await;
    let all_cpu = cpu_seconds(pid)? - c3;
    println!("## Metric changes (pods from 40m to 150m): node stats → scale written\n");
    println!("| change | rescaled | p50 | p99 | max | target | controller CPU meanwhile |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    latency_row(
        &format!("{HOT} autoscalers at a time, {} rounds", b.rounds),
        &rounds,
        b.rounds * HOT,
        target,
        rounds_cpu,
    );
    latency_row(
        &format!("all {} others at once (2 new pods each)", b.hpas),
        &all,
        b.hpas,
        target,
        all_cpu,
    );
    if rounds.len() < b.rounds * HOT || all.len() < b.hpas {
        bail!("not every Deployment was rescaled");
    }
    Ok(())
}
