//! `capstan bench ha`: the control plane on a 3-member etcd cluster (real etcd processes on
//! loopback). ConfigMap creates/s through two API servers (`capstan up --store etcd
//! --controllers none` of this binary, clients split between them) and through one, against
//! raw etcd puts of the same bytes on the same cluster (etcd-client, the same concurrency), in
//! one run; then the same creates with one member killed (-9), against raw puts then.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use capstan_testkit::CapstanUp;
use capstan_testkit::etcd_cluster::EtcdCluster;
use clap::Args;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

use super::{Samples, drive, ms};

#[derive(Debug, Args)]
pub struct HaBench {
    /// Creates per measurement.
    #[arg(long, default_value_t = 2000)]
    ops: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
}

fn config_map(i: usize, tag: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{tag}-{i:06}"), "namespace": "default"},
        "data": {"value": "x".repeat(256)},
    }))
    .expect("a ConfigMap")
}

pub async fn run(b: HaBench) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("capstan-bench-ha-")
        .tempdir_in(&b.scratch)?;
    let mut etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3))
        .await?
        .context("starting 3 etcd members (install etcd-server)")?;
    let endpoints = etcd.endpoints();
    let me = std::env::current_exe()?;
    let mut servers = Vec::new();
    for i in 0..2 {
        let dir = scratch.path().join(format!("s{i}"));
        std::fs::create_dir_all(&dir)?;
        let data = dir.display().to_string();
        let (me, endpoints) = (me.clone(), endpoints.clone());
        let up = tokio::task::spawn_blocking(move || {
            CapstanUp::start(
                &me,
                &[
                    "--data-dir",
                    &data,
                    "--store",
                    "etcd",
                    "--etcd-endpoints",
                    &endpoints,
                    "--controllers",
                    "none",
                ],
            )
        })
        .await??;
        servers.push(up);
    }
    let pki = capstan_testkit::pki::pki();
    let mut apis = Vec::new();
    for s in &servers {
        let client = pki.client(&format!("https://{}", s.addr), None).await?;
        apis.push(Api::<ConfigMap>::namespaced(client, "default"));
    }
    let apis = Arc::new(apis);
    let raw = etcd_client::Client::connect(endpoints.split(',').collect::<Vec<_>>(), None)
        .await
        .context("connecting to etcd")?;
    let value = serde_json::to_vec(&config_map(0, "raw"))?;

    let creates = |servers: usize, tag: &'static str| {
        let apis = apis.clone();
        drive(b.clients, b.ops, move |i| {
            let api = apis[i % servers].clone();
            async move {
                api.create(&PostParams::default(), &config_map(i, tag))
                    .await?;
                Ok(())
            }
        })
    };
    let puts = |raw: &etcd_client::Client, tag: &'static str| {
        let (c, v) = (raw.clone(), value.clone());
        drive(b.clients, b.ops, move |i| {
            let (mut kv, v) = (c.kv_client(), v.clone());
            async move {
                kv.put(format!("/bench-ha/{tag}/{i:06}"), v, None).await?;
                Ok(())
            }
        })
    };
    let raw_all = puts(&raw, "all").await?;
    let two = creates(2, "two").await?;
    let one = creates(1, "one").await?;
    etcd.kill(0);
    // The store notices within a probe period (500 ms) and its timeout (800 ms).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // The raw floor then: a client of the live members only (etcd-client alone keeps sending
    // to the dead one).
    let live: Vec<&str> = endpoints.split(',').skip(1).collect();
    let raw_live = etcd_client::Client::connect(live, None).await?;
    let raw_degraded = puts(&raw_live, "degraded").await?;
    let two_degraded = creates(2, "two-degraded").await?;

    println!("# capstan bench ha\n");
    println!(
        "`capstan bench ha --ops {} --clients {}`: 3 etcd members on loopback, 2 API servers, ConfigMaps of {} bytes, 2 cores shared by all.\n",
        b.ops,
        b.clients,
        value.len()
    );
    println!("| what | per second | p50 | p99 |\n|---|---|---|---|");
    let row = |what: &str, s: &Samples| {
        println!(
            "| {what} | {:.0} | {} | {} |",
            s.rate(),
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99))
        );
    };
    row("raw etcd puts (3 members)", &raw_all);
    row("creates through 2 API servers", &two);
    row("creates through 1 API server", &one);
    row("raw etcd puts, 1 member killed", &raw_degraded);
    row(
        "creates through 2 API servers, 1 member killed",
        &two_degraded,
    );
    println!(
        "\n2 API servers / raw etcd: {:.2}x (target ≥ 0.5x); with a member down: {:.2}x",
        two.rate() / raw_all.rate(),
        two_degraded.rate() / raw_degraded.rate()
    );
    drop(servers);
    drop(etcd);
    Ok(())
}
