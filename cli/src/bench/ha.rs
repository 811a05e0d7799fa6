//! `capstan bench ha`: the control plane on a 3-member etcd cluster (real etcd processes on
//! loopback). ConfigMap creates/s through two API servers (`capstan up --store etcd
//! --controllers none` of this binary, clients split between them) and through one, against
//! raw etcd puts of the same bytes on the same cluster (etcd-client, the same concurrency), in
//! one run; then the same creates with one member killed (-9), against raw puts then. Last,
//! leader failover: two leader-elected `capstan controllers` (Kubernetes' lease defaults); the
//! leader is killed (-9) and the time until the standby holds the Lease is measured, for
//! several rounds (the killed one comes back as the next standby).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use capstan_testkit::CapstanUp;
use capstan_testkit::etcd_cluster::EtcdCluster;
use clap::Args;
use k8s_openapi::api::coordination::v1::Lease;
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
    /// Leader failovers measured (0: none).
    #[arg(long, default_value_t = 3)]
    failover_rounds: usize,
    /// The controller managers' lease duration (Kubernetes' default: 15 s).
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
}

/// A `capstan controllers` of this binary, leader-elected as `identity`, killed on drop.
struct Manager {
    identity: String,
    log: PathBuf,
    child: std::process::Child,
}

impl Manager {
    fn start(
        kubeconfig: &Path,
        identity: &str,
        lease_seconds: u64,
        path: &Path,
    ) -> Result<Manager> {
        let log = std::fs::File::create(path)?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["controllers", "--controllers", "deployment,replicaset"])
            .args(["--leader-elect-identity", identity])
            .args(["--leader-elect-lease-seconds", &lease_seconds.to_string()])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting capstan controllers")?;
        Ok(Manager {
            identity: identity.to_string(),
            log: path.to_path_buf(),
            child,
        })
    }

    /// Waits until it campaigns for the Lease (its log says so; it tries at once), so a
    /// failover measured from then on does not include its start-up.
    async fn campaigning(&self) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains("campaigning for the controller-manager lease") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("{} did not start campaigning within 30 s", self.identity)
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (polling every 20 ms, up to `within`) until `identity` holds the Lease.
async fn until_leading(leases: &Api<Lease>, identity: &str, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if capstan_testkit::manager_lease_holder(leases)
            .await
            .as_deref()
            == Some(identity)
        {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("{identity} did not take the Lease within {within:?}")
}

/// Create-if-absent transactions of `value` under `/bench-ha/TAG/` with two watchers on the
/// prefix (as two API servers' watch caches), with or without previous values.
async fn watched_creates(
    raw: &etcd_client::Client,
    value: &[u8],
    tag: &'static str,
    prev: bool,
    clients: usize,
    ops: usize,
) -> Result<Samples> {
    let prefix = format!("/bench-ha/{tag}/");
    let mut drains = Vec::new();
    for _ in 0..2 {
        let mut w = raw.watch_client();
        let mut opts = etcd_client::WatchOptions::new().with_prefix();
        if prev {
            opts = opts.with_prev_key();
        }
        let mut stream = w.watch(prefix.as_str(), Some(opts)).await?;
        drains.push(tokio::spawn(async move {
            let _keep = w;
            while let Ok(Some(_)) = stream.message().await {}
        }));
    }
    let (c, v) = (raw.clone(), value.to_vec());
    let samples = drive(clients, ops, move |i| {
        let (mut kv, v, key) = (c.kv_client(), v.clone(), format!("{prefix}{i:06}"));
        async move {
            let txn = etcd_client::Txn::new()
                .when([etcd_client::Compare::create_revision(
                    key.as_str(),
                    etcd_client::CompareOp::Equal,
                    0,
                )])
                .and_then([etcd_client::TxnOp::put(key.as_str(), v, None)]);
            kv.txn(txn).await?;
            Ok(())
        }
    })
    .await;
    for d in drains {
        d.abort();
    }
    samples
}

/// Leader failover times: `rounds` kills of the leading manager.
async fn failovers(
    kubeconfig: &Path,
    leases: &Api<Lease>,
    logs: &Path,
    rounds: usize,
    lease_seconds: u64,
) -> Result<Vec<Duration>> {
    let within = Duration::from_secs(lease_seconds * 2 + 10);
    let mut leader = Manager::start(kubeconfig, "cm-0", lease_seconds, &logs.join("cm-0.log"))?;
    until_leading(leases, "cm-0", within).await?;
    let mut standby = Manager::start(kubeconfig, "cm-1", lease_seconds, &logs.join("cm-1.log"))?;
    standby.campaigning().await?;
    let mut times = Vec::new();
    for round in 0..rounds {
        let killed = Instant::now();
        drop(leader); // kill -9
        until_leading(leases, &standby.identity, within).await?;
        times.push(killed.elapsed());
        let next = format!("cm-{}", round + 2);
        leader = standby;
        standby = Manager::start(
            kubeconfig,
            &next,
            lease_seconds,
            &logs.join(format!("{next}.log")),
        )?;
        standby.campaigning().await?;
    }
    Ok(times)
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
    // What etcd itself must do for any API server's create (Kubernetes' too): a
    // create-if-absent transaction, and the event sent to each server's watch (with the
    // previous value, which deletes need; and without, to show what that costs).
    let raw_watched = watched_creates(&raw, &value, "watched", true, b.clients, b.ops).await?;
    let raw_watched_no_prev =
        watched_creates(&raw, &value, "watched-no-prev", false, b.clients, b.ops).await?;
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
    let leases: Api<Lease> = Api::namespaced(
        pki.client(&format!("https://{}", servers[1].addr), None)
            .await?,
        "kube-system",
    );
    let failover = if b.failover_rounds > 0 {
        failovers(
            &scratch.path().join("s0/kubeconfig"),
            &leases,
            scratch.path(),
            b.failover_rounds,
            b.lease_seconds,
        )
        .await?
    } else {
        Vec::new()
    };

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
    row(
        "raw etcd create-if-absent transactions, 2 watchers",
        &raw_watched,
    );
    row(
        "the same, the watchers without previous values",
        &raw_watched_no_prev,
    );
    row("creates through 2 API servers", &two);
    row("creates through 1 API server", &one);
    row("raw etcd puts, 1 member killed", &raw_degraded);
    row(
        "creates through 2 API servers, 1 member killed",
        &two_degraded,
    );
    println!(
        "\n2 API servers / raw etcd puts: {:.2}x (target ≥ 0.5x); with a member down: {:.2}x",
        two.rate() / raw_all.rate(),
        two_degraded.rate() / raw_degraded.rate()
    );
    println!(
        "etcd's own share of a create (transaction + 2 watchers) / raw etcd puts: {:.2}x; 2 API servers / that: {:.2}x",
        raw_watched.rate() / raw_all.rate(),
        two.rate() / raw_watched.rate()
    );
    if !failover.is_empty() {
        let shown: Vec<String> = failover
            .iter()
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .collect();
        let worst = failover.iter().max().copied().unwrap_or_default();
        println!(
            "\nLeader failover after kill -9 of the leading manager (lease {} s, renew deadline {} s, retry {:.1} s; etcd with a member down): {} — worst {:.2} s (target ≤ lease + 2 s = {} s)",
            b.lease_seconds,
            b.lease_seconds * 2 / 3,
            (b.lease_seconds * 2) as f64 / 15.0,
            shown.join(", "),
            worst.as_secs_f64(),
            b.lease_seconds + 2
        );
    }
    drop(servers);
    drop(etcd);
    Ok(())
}
