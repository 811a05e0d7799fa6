//! `capstan bench daemonset`: a DaemonSet on N simulated nodes (1,000 by default) created →
//! a ready pod on every node, then rolled to a new image with maxUnavailable 10% → every node
//! runs the new template, against a Deployment of N replicas rolled with the same budget
//! (maxSurge 0, maxUnavailable 10%) in the same run: the same pod churn, placed by the
//! Deployment and ReplicaSet controllers instead. An in-process API server (embedded store)
//! with the scheduler and both controllers; the simulated kubelet makes a bound pod Running
//! and Ready at once.

use std::time::{Duration, Instant};

use anyhow::Result;
use capstan_controllers::Manager;
use capstan_testkit::sim::{SimConfig, SimNodes};
use clap::Args;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::LocalServer;
use super::jobs::{print_writes, until_all};
use super::schedule::namespace;

#[derive(Debug, Args)]
pub struct DaemonSetBench {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// The rolling update's maxUnavailable (both the DaemonSet's and the Deployment's).
    #[arg(long, default_value = "10%")]
    max_unavailable: String,
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

fn template(image: &str) -> Value {
    json!({"metadata": {"labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": image,
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
}

fn image_patch(image: &str) -> Patch<Value> {
    Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
        {"name": "c", "image": image}]}}}}))
}

/// (updated, available, observed) of a DaemonSet.
async fn ds_progress(api: &Api<DaemonSet>) -> Result<(usize, usize, bool)> {
    let ds = api.get("bench").await?;
    let s = ds.status.unwrap_or_default();
    Ok((
        s.updated_number_scheduled.unwrap_or(0) as usize,
        s.number_available.unwrap_or(0) as usize,
        s.observed_generation == ds.metadata.generation,
    ))
}

async fn deploy_progress(api: &Api<Deployment>) -> Result<(usize, usize, bool)> {
    let d = api.get("bench").await?;
    let s = d.status.unwrap_or_default();
    let settled =
        s.observed_generation == d.metadata.generation && s.replicas == s.updated_replicas;
    Ok((
        s.updated_replicas.unwrap_or(0) as usize,
        s.available_replicas.unwrap_or(0) as usize,
        settled,
    ))
}

pub async fn run(b: DaemonSetBench) -> Result<()> {
    let server = LocalServer::start(&b.scratch, "capstan-bench-daemonset-").await?;
    let client = kube::Client::try_from(kube::Config::new(server.url.parse()?))?;
    let started = Instant::now();
    let _sim = SimNodes::start(client.clone(), SimConfig::roomy(b.nodes)).await?;
    println!(
        "{} simulated nodes registered in {:.1} s; maxUnavailable {}",
        b.nodes,
        started.elapsed().as_secs_f64(),
        b.max_unavailable
    );
    let manager = Manager::new(client.clone(), &prometheus::Registry::new());
    let names = ["scheduler", "daemonset", "deployment", "replicaset"]
        .into_iter()
        .map(String::from)
        .collect();
    let controllers = tokio::spawn(async move { manager.run(&names).await });
    let n = b.nodes;
    let budget = match b.max_unavailable.parse::<i64>() {
        Ok(i) => json!(i),
        Err(_) => json!(b.max_unavailable),
    };

    namespace(&client, "ds").await?;
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), "ds");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "bench"},
        "spec": {"selector": {"matchLabels": {"app": "bench"}},
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": budget, "maxSurge": 0}},
            "template": template("busybox:1")}}))?;
    let t = Instant::now();
    ds_api.create(&PostParams::default(), &ds).await?;
    until_all(n, "daemon pods ready on every node", || async {
        let (updated, available, observed) = ds_progress(&ds_api).await?;
        Ok(if observed { updated.min(available) } else { 0 })
    })
    .await?;
    let ds_create = t.elapsed();
    let t = Instant::now();
    ds_api
        .patch("bench", &PatchParams::default(), &image_patch("busybox:2"))
        .await?;
    until_all(n, "the DaemonSet rolled", || async {
        let (updated, available, observed) = ds_progress(&ds_api).await?;
        Ok(if observed { updated.min(available) } else { 0 })
    })
    .await?;
    let ds_roll = t.elapsed();

    namespace(&client, "deploy").await?;
    let d_api: Api<Deployment> = Api::namespaced(client.clone(), "deploy");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "bench"},
        "spec": {"replicas": n, "selector": {"matchLabels": {"app": "bench"}},
            "strategy": {"rollingUpdate": {"maxUnavailable": budget, "maxSurge": 0}},
            "template": template("busybox:1")}}))?;
    let t = Instant::now();
    d_api.create(&PostParams::default(), &d).await?;
    until_all(n, "Deployment pods ready", || async {
        let (updated, available, settled) = deploy_progress(&d_api).await?;
        Ok(if settled { updated.min(available) } else { 0 })
    })
    .await?;
    let d_create = t.elapsed();
    let t = Instant::now();
    d_api
        .patch("bench", &PatchParams::default(), &image_patch("busybox:2"))
        .await?;
    until_all(n, "the Deployment rolled", || async {
        let (updated, available, settled) = deploy_progress(&d_api).await?;
        Ok(if settled { updated.min(available) } else { 0 })
    })
    .await?;
    let d_roll = t.elapsed();
    controllers.abort();
    print_writes(&server.url, "both runs").await?;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "daemonset:  created → {n} pods ready in {:.2} s ({:.0} pods/s); rolled in {:.2} s ({:.0} nodes/s)",
        ds_create.as_secs_f64(),
        rate(ds_create),
        ds_roll.as_secs_f64(),
        rate(ds_roll)
    );
    println!(
        "deployment: created → {n} pods ready in {:.2} s ({:.0} pods/s); rolled in {:.2} s ({:.0} pods/s)",
        d_create.as_secs_f64(),
        rate(d_create),
        d_roll.as_secs_f64(),
        rate(d_roll)
    );
    println!(
        "ratio:      DaemonSet roll {:.2}x the Deployment's",
        ds_roll.as_secs_f64() / d_roll.as_secs_f64()
    );
    Ok(())
}
