//! `capstan bench aggregator`: what the aggregation layer adds to an extension API server's
//! requests, and how soon a change of an external metric scales its target. One in-process API
//! server (plain HTTP, every request allowed, as the other in-process benchmarks) with a
//! front-proxy certificate, and testkit's metrics adapter (HTTPS, the front-proxy CA required)
//! behind an APIService, in one run:
//! 1. `--requests` GETs of an external metric from `--clients` keep-alive connections at once,
//!    straight to the adapter with the front-proxy certificate (the floor), then through the API
//!    server, which authenticates, authorizes and proxies each over its own kept connections;
//!    and, for comparison, a GET the API server answers itself (what any request costs it).
//! 2. `--rounds` rises of the metric at the adapter, each at a random point of the sync period,
//!    timed until an HPA (External metric, AverageValue target, `--sync-period`) has written the
//!    Deployment's new `spec.replicas` through its scale: p50/p99/max against the sync period
//!    + 1 s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use capstan_controllers::{Config, Manager, autoscaler};
use capstan_testkit::metrics_adapter::MetricsAdapter;
use capstan_testkit::sim::{SimConfig, SimNodes};
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::{LocalServer, Samples, drive};

#[derive(Debug, Args)]
pub struct AggregatorBench {
    #[arg(long, default_value_t = 50_000)]
    requests: usize,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Rises of the metric timed until the target is scaled.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// The autoscaler's `--horizontal-pod-autoscaler-sync-period`.
    #[arg(long, default_value = "15s", value_parser = crate::controllers_cmd::parse_duration)]
    sync_period: Duration,
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

const METRIC_PATH: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_messages?labelSelector=queue%3Djobs";

type Conn = SendRequest<Empty<Bytes>>;

/// Keep-alive HTTP/1.1 connections to one server, opened as needed and reused.
struct Pool<F> {
    idle: Mutex<Vec<Conn>>,
    open: F,
    host: String,
}

impl<F, Fut> Pool<F>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Conn>>,
{
    /// One GET of `path`; an error unless it answers 200.
    async fn get(&self, path: &str) -> Result<()> {
        let taken = self.idle.lock().ok().and_then(|mut i| i.pop());
        let mut conn = match taken {
            Some(c) if c.is_ready() => c,
            _ => (self.open)().await?,
        };
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::new())?;
        let resp = conn.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status != 200 {
            bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        Ok(())
    }
}

async fn handshake<T>(io: T) -> Result<Conn>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn measure<F, Fut>(
    pool: Arc<Pool<F>>,
    b: &AggregatorBench,
    path: &'static str,
) -> Result<Samples>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Conn>> + Send,
{
    drive(b.clients, b.requests, move |_| {
        let pool = pool.clone();
        async move { pool.get(path).await }
    })
    .await
}

fn row(what: &str, s: &Samples, floor: Option<f64>) {
    println!(
        "| {what} | {:.0} | {:.2} ms | {:.2} ms | {} |",
        s.rate(),
        s.quantile(0.5).as_secs_f64() * 1e3,
        s.quantile(0.99).as_secs_f64() * 1e3,
        floor.map_or("floor".into(), |f| format!("{:.2}x", s.rate() / f)),
    );
}

pub async fn run(b: AggregatorBench) -> Result<()> {
    let ca = capstan_pki::Ca::generate()?;
    let identity = ca.client(capstan_apiserver::aggregator::FRONT_PROXY_CLIENT, &[])?;
    let front_proxy = capstan_apiserver::aggregator::FrontProxy {
        identity: identity.clone(),
        ca_pem: ca.cert_pem().to_string(),
        client_ca_pem: None,
    };
    let server =
        LocalServer::start_with(&b.scratch, "capstan-bench-aggregator-", Some(front_proxy)).await?;
    let client = kube::Client::try_from(kube::Config::new(server.url.parse()?))?;
    let adapter = MetricsAdapter::start(&["metrics-adapter.monitoring.svc"], ca.cert_pem()).await?;
    adapter.set_external("default", "queue_messages", &[(&[("queue", "jobs")], "10")]);
    adapter.register(&client).await?;
    let apiservices: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource {
            group: "apiregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: "apiregistration.k8s.io/v1".into(),
            kind: "APIService".into(),
            plural: "apiservices".into(),
        },
    );
    let started = Instant::now();
    loop {
        let s = apiservices.get("v1beta1.external.metrics.k8s.io").await?;
        let available = s.data["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True")
        });
        if available {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "the APIService did not become Available: {:?}",
                s.data["status"]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "GET {METRIC_PATH}: {} requests from {} keep-alive connections\n",
        b.requests, b.clients
    );
    println!("| path | requests/s | p50 | p99 | of the floor |");
    println!("|---|---:|---:|---:|---:|");

    // 1. The floor: straight to the adapter, as the front proxy.
    let pem = String::from_utf8(base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        &adapter.ca_bundle,
    )?)?;
    let tls = Arc::new(capstan_pki::tls::client_config(&pem, Some(&identity))?);
    let addr = adapter.addr;
    let direct = Arc::new(Pool {
        idle: Mutex::new(Vec::new()),
        host: "metrics-adapter.monitoring.svc".into(),
        open: move || {
            let tls = tls.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name =
                    rustls::pki_types::ServerName::try_from("metrics-adapter.monitoring.svc")?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await?;
                handshake(stream).await
            }
        },
    });
    let floor = measure(direct, &b, METRIC_PATH)
        .await
        .context("straight to the adapter")?;
    row(
        "straight to the adapter (TLS, front-proxy certificate)",
        &floor,
        None,
    );

    // 2. Through the API server.
    let api_addr: std::net::SocketAddr = server.url.trim_start_matches("http://").parse()?;
    let proxied = Arc::new(Pool {
        idle: Mutex::new(Vec::new()),
        host: api_addr.to_string(),
        open: move || async move {
            let tcp = tokio::net::TcpStream::connect(api_addr).await?;
            tcp.set_nodelay(true)?;
            handshake(tcp).await
        },
    });
    let through = measure(proxied.clone(), &b, METRIC_PATH)
        .await
        .context("through the API server")?;
    row(
        "through the API server (proxied)",
        &through,
        Some(floor.rate()),
    );
    // What any request costs the server, for comparison: a GET it answers itself.
    let local = measure(proxied, &b, "/api/v1/namespaces/default")
        .await
        .context("a local GET")?;
    row(
        "a GET the API server answers itself (namespace default)",
        &local,
        Some(floor.rate()),
    );
    println!(
        "\nadded per request at p50: {:.2} ms",
        (through.quantile(0.5).as_secs_f64() - floor.quantile(0.5).as_secs_f64()) * 1e3
    );

    // 3. A metric's rise → the target's new scale.
    let _sim = SimNodes::start(client.clone(), SimConfig::roomy(4)).await?;
    let config = Config {
        autoscaler: autoscaler::Config {
            sync_period: b.sync_period,
            ..Default::default()
        },
        ..Default::default()
    };
    let manager = Manager::with_config(client.clone(), &prometheus::Registry::new(), config);
    let names = ["scheduler", "deployment", "replicaset", autoscaler::NAME]
        .into_iter()
        .map(String::from)
        .collect();
    let _controllers = tokio::spawn(async move { manager.run(&names).await });
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "consumer"},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "consumer"}},
                    "template": {"metadata": {"labels": {"app": "consumer"}},
                        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}))?,
        )
        .await?;
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        Api::namespaced(client.clone(), "default");
    hpas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "consumer"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "consumer"},
                "minReplicas": 1, "maxReplicas": 50,
                "metrics": [{"type": "External", "external": {
                    "metric": {"name": "queue_messages", "selector": {"matchLabels": {"queue": "jobs"}}},
                    "target": {"type": "AverageValue", "averageValue": "10"}}}]}})) ?,
    )
    .await?;
    // Settled at 1 replica on 10 messages: the HPA has synced once.
    let settled = Instant::now();
    while hpas
        .get("consumer")
        .await?
        .status
        .and_then(|s| s.current_metrics)
        .is_none()
    {
        if settled.elapsed() > b.sync_period * 2 + Duration::from_secs(10) {
            bail!("the autoscaler never read the metric");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut took = Vec::new();
    for round in 0..b.rounds {
        // A change lands anywhere in the sync period, not just after the last sync.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        tokio::time::sleep(b.sync_period.mul_f64(f64::from(nanos % 1000) / 1000.0)).await;
        let want = round as i32 + 2;
        let value = (want * 10).to_string();
        let changed = Instant::now();
        adapter.set_external(
            "default",
            "queue_messages",
            &[(&[("queue", "jobs")], &value)],
        );
        loop {
            let replicas = deployments
                .get("consumer")
                .await?
                .spec
                .and_then(|s| s.replicas)
                .unwrap_or(0);
            if replicas >= want {
                took.push(changed.elapsed());
                break;
            }
            if changed.elapsed() > b.sync_period * 3 + Duration::from_secs(30) {
                bail!("round {round}: still {replicas} replicas, want {want}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    took.sort();
    let q = |p: f64| took[((took.len() as f64 - 1.0) * p).round() as usize].as_secs_f64();
    println!(
        "\nan external metric's rise → the Deployment's spec.replicas written ({} rounds, sync period {:?}): p50 {:.2} s, p99 {:.2} s, max {:.2} s; target ≤ {:.0} s",
        took.len(),
        b.sync_period,
        q(0.5),
        q(0.99),
        q(1.0),
        (b.sync_period + Duration::from_secs(1)).as_secs_f64()
    );
    Ok(())
}
