//! `capstan bench jobs`: N Jobs of one pod each on simulated nodes, created → every Job
//! Complete, against the same number of bare pods created → every pod Succeeded, in the same
//! run, on an in-process API server (embedded store) with the scheduler and the job
//! controller. The simulated kubelet runs each pod for `--run-ms` and exits 0. What the Jobs
//! add over the pods is the controller's work: a Job create, a pod create, the status writes
//! recording the outcome and the finalizer removal.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use capstan_controllers::Manager;
use capstan_testkit::sim::{self, SimConfig, SimNodes};
use clap::Args;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use super::schedule::namespace;
use super::{LocalServer, drive};

#[derive(Debug, Args)]
pub struct JobsBench {
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// How long each pod runs.
    #[arg(long, default_value_t = 0)]
    run_ms: u64,
    /// Concurrent clients creating.
    #[arg(long, default_value_t = 32)]
    writers: usize,
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

fn template(run_ms: u64) -> serde_json::Value {
    json!({
        "metadata": {"annotations": {sim::RUN_MS: run_ms.to_string()}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    })
}

/// Polls `done` (every 100 ms, up to 10 minutes) until it reaches `n`.
pub(super) async fn until_all<F, Fut>(n: usize, what: &str, done: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<usize>>,
{
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if done().await? >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not all {n} within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(b: JobsBench) -> Result<()> {
    let server = LocalServer::start(&b.scratch, "capstan-bench-jobs-").await?;
    let client = kube::Client::try_from(kube::Config::new(server.url.parse()?))?;
    let _sim = SimNodes::start(client.clone(), SimConfig::roomy(b.nodes)).await?;
    let manager = Manager::new(client.clone(), &prometheus::Registry::new());
    let names = ["scheduler".to_string(), "job".to_string()]
        .into_iter()
        .collect();
    let controllers = tokio::spawn(async move { manager.run(&names).await });
    println!(
        "{} Jobs of one pod against {} bare pods, {} simulated nodes, pods run {} ms",
        b.jobs, b.jobs, b.nodes, b.run_ms
    );

    // Bare pods: created → Succeeded.
    namespace(&client, "pods").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "pods");
    let t = Instant::now();
    let (api, run_ms) = (pods.clone(), b.run_ms);
    drive(b.writers, b.jobs, move |i| {
        let api = api.clone();
        async move {
            let mut p = template(run_ms);
            p["metadata"]["name"] = json!(format!("p{i}"));
            api.create(&PostParams::default(), &serde_json::from_value(p)?)
                .await?;
            Ok(())
        }
    })
    .await?;
    until_all(b.jobs, "pods Succeeded", || async {
        let list = pods.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
            .count())
    })
    .await?;
    let bare = t.elapsed();

    // Jobs: created → Complete.
    namespace(&client, "jobs").await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "jobs");
    let t = Instant::now();
    let api = jobs.clone();
    drive(b.writers, b.jobs, move |i| {
        let api = api.clone();
        async move {
            let j = json!({"metadata": {"name": format!("j{i}")},
                "spec": {"template": template(run_ms)}});
            api.create(&PostParams::default(), &serde_json::from_value(j)?)
                .await?;
            Ok(())
        }
    })
    .await?;
    until_all(b.jobs, "Jobs Complete", || async {
        let list = jobs.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .filter(|j| {
                j.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Complete" && c.status == "True")
                    })
            })
            .count())
    })
    .await?;
    let with_jobs = t.elapsed();
    controllers.abort();
    print_writes(&server.url, "both runs").await?;
    println!(
        "bare pods: {} pods created → Succeeded in {:.2} s ({:.0} pods/s)",
        b.jobs,
        bare.as_secs_f64(),
        b.jobs as f64 / bare.as_secs_f64()
    );
    println!(
        "jobs:      {} Jobs created → Complete in {:.2} s ({:.0} Jobs/s)",
        b.jobs,
        with_jobs.as_secs_f64(),
        b.jobs as f64 / with_jobs.as_secs_f64()
    );
    println!(
        "ratio:     {:.2}x the bare pods' time (target ≤ 1.5x)",
        with_jobs.as_secs_f64() / bare.as_secs_f64()
    );
    Ok(())
}

/// What the API server was asked to write, per resource and verb, from its metrics.
pub(super) async fn print_writes(url: &str, what: &str) -> Result<()> {
    let metrics = reqwest_free_get(url, "/metrics").await?;
    let mut writes: std::collections::BTreeMap<String, f64> = Default::default();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |k: &str| {
            line.split(&format!("{k}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let verb = label("verb");
        if matches!(verb.to_ascii_lowercase().as_str(), "get" | "list" | "watch") {
            continue;
        }
        let what = format!("{} {}{}", verb, label("resource"), {
            let sub = label("subresource");
            if sub.is_empty() {
                sub
            } else {
                format!("/{sub}")
            }
        });
        let n: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *writes.entry(what).or_default() += n;
    }
    println!("writes by resource ({what}):");
    for (what, n) in &writes {
        println!("  {what}: {n}");
    }
    Ok(())
}

/// A GET over plain HTTP/1.1 (the bench server has no TLS).
async fn reqwest_free_get(url: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
