//! `capstan bench services` and `capstan bench dns`: what Services cost, each beside its floor
//! in the same run.
//! 1. Rule sync (root, `nft`): 1,000 Services × 10 endpoints programmed by the proxy (full sync,
//!    and a one-Service change) against `nft -f` loading the same ruleset text.
//! 2. Endpoint propagation: an in-process API server, the endpointslice controller and the
//!    proxy (a scratch table); 1,000 pods behind one Service, then pods turned Ready one at a
//!    time: pod Ready written → its address ready in an EndpointSlice → its endpoint chain in
//!    the kernel, p50/p99.
//! 3. DNS: queries/s and p99 of the agent's DNS server beside a bare UDP responder answering a
//!    pre-built response, from the same in-process load generator.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capstan_node_agent::proxy;
use clap::Args;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{LocalServer, Samples, ms};

#[derive(Debug, Args)]
pub struct ServicesBench {
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Pods behind the Service of the propagation run (0 skips it).
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Of them, how many are turned Ready one at a time and measured.
    #[arg(long, default_value_t = 100)]
    measured: usize,
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct DnsBench {
    /// Clients sending at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds each of the two runs lasts.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Services in the zone.
    #[arg(long, default_value_t = 1000)]
    services: usize,
}

pub async fn run(b: ServicesBench) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("capstan bench services programs nftables: run it as root");
    }
    println!("# capstan bench services\n");
    let opts = proxy::bench::BenchOptions {
        services: b.services,
        endpoints_per_service: b.endpoints,
        ..Default::default()
    };
    let report = proxy::bench::run(&opts)
        .await
        .context("the rule sync benchmark")?;
    println!("## Rule sync\n\n{report}\n");
    if b.pods > 0 {
        propagation(&b).await?;
    }
    Ok(())
}

pub async fn dns(b: DnsBench) -> Result<()> {
    println!("# capstan bench dns\n");
    let opts = capstan_node_agent::dns::bench::BenchOptions {
        concurrency: b.concurrency,
        duration: Duration::from_secs(b.seconds),
        services: b.services,
    };
    let report = capstan_node_agent::dns::bench::bench(&opts).await?;
    println!("{report}");
    Ok(())
}

fn pod_ip(i: usize) -> String {
    format!("10.250.{}.{}", i / 250, i % 250 + 1)
}

async fn propagation(b: &ServicesBench) -> Result<()> {
    let server = LocalServer::start(&b.scratch, "capstan-bench-services-").await?;
    let client = kube::Client::try_from(kube::Config::new(server.url.parse()?))?;
    let registry = prometheus::Registry::new();
    let manager = capstan_controllers::Manager::with_config(
        client.clone(),
        &registry,
        capstan_controllers::Config::default(),
    );
    let controllers = tokio::spawn(async move {
        let names = BTreeSet::from(["endpointslice".to_string()]);
        manager.run(&names).await
    });
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "bench-node"}}))?;
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await?;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "prop"},
        "spec": {"selector": {"app": "prop"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))?;
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let status = |i: usize, ready: bool| {
        json!({"status": {"phase": "Running", "podIP": pod_ip(i), "podIPs": [{"ip": pod_ip(i)}],
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    };
    let measured_from = b.pods - b.measured.min(b.pods);
    let t0 = Instant::now();
    for i in 0..b.pods {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p{i}"), "labels": {"app": "prop"}},
            "spec": {"nodeName": "bench-node", "containers": [{"name": "c", "image": "busybox"}]}
        }))?;
        pods.create(&PostParams::default(), &p).await?;
        pods.patch_status(
            &format!("p{i}"),
            &PatchParams::default(),
            &Patch::Merge(status(i, i < measured_from)),
        )
        .await?;
    }
    let table = format!("capstan-bench-prop-{}", std::process::id());
    let mut cfg = proxy::ProxyConfig::new("bench-node");
    cfg.table = table.clone();
    let px = proxy::start(client.clone(), cfg, &registry).await?;
    let nft = proxy::nft::Nft::new("nft");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice_ready = |ip: String| {
        let slices = slices.clone();
        async move {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=prop"))
                .await?;
            Ok::<_, anyhow::Error>(list.items.iter().any(|s| {
                s.endpoints.iter().any(|e| {
                    e.addresses.contains(&ip)
                        && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
                })
            }))
        }
    };
    let chained = |ip: String| {
        let (nft, table) = (nft.clone(), table.clone());
        async move {
            let needle = format!("__{ip}/8080");
            Ok::<_, anyhow::Error>(
                nft.existing(&table)
                    .await?
                    .chains
                    .iter()
                    .any(|c| c.ends_with(&needle)),
            )
        }
    };
    // Everything ready so far is programmed before measuring.
    let last_ready = pod_ip(measured_from.saturating_sub(1));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !chained(last_ready.clone()).await? {
        if Instant::now() > deadline {
            bail!("the first {measured_from} endpoints were not programmed within 120s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "## Endpoint propagation\n\n{} pods behind one Service ({} Ready at the start, set up in {:.1} s); each of the other {} turned Ready in turn:\n",
        b.pods,
        measured_from,
        t0.elapsed().as_secs_f64(),
        b.pods - measured_from
    );
    let (mut to_slice, mut to_rule) = (Vec::new(), Vec::new());
    for i in measured_from..b.pods {
        let ip = pod_ip(i);
        let start = Instant::now();
        pods.patch_status(
            &format!("p{i}"),
            &PatchParams::default(),
            &Patch::Merge(status(i, true)),
        )
        .await?;
        let (mut slice_at, mut rule_at) = (None, None);
        while rule_at.is_none() || slice_at.is_none() {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("pod p{i} ({ip}) not propagated within 30s");
            }
            if slice_at.is_none() && slice_ready(ip.clone()).await? {
                slice_at = Some(start.elapsed());
            }
            if rule_at.is_none() && chained(ip.clone()).await? {
                rule_at = Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (s, r) = (slice_at.unwrap_or_default(), rule_at.unwrap_or_default());
        to_slice.push(s);
        to_rule.push(r.max(s));
    }
    let samples = |latencies: Vec<Duration>| Samples {
        elapsed: Duration::from_secs(1),
        latencies,
    };
    let (slice, rule) = (samples(to_slice), samples(to_rule));
    println!("| step | p50 | p99 |\n|---|---|---|");
    println!(
        "| Ready written → address ready in the slice | {} | {} |",
        ms(slice.quantile(0.5)),
        ms(slice.quantile(0.99))
    );
    println!(
        "| Ready written → endpoint chain in the kernel | {} | {} |",
        ms(rule.quantile(0.5)),
        ms(rule.quantile(0.99))
    );
    println!(
        "\n(Endpoint batch period 100 ms, proxy minimum sync period 100 ms: the defaults. Polled every ~2 ms plus one `nft list` of the table's chain names.)"
    );
    px.shutdown().await?;
    controllers.abort();
    Ok(())
}
