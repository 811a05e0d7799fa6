//! `capstan bench api`: the API server over HTTP — creates, gets and lists of ConfigMaps at
//! several client counts, with the same operations straight on the store as the floor in the same
//! run; watch fan-out (N watchers, time until all have seen one write); and the idle RSS of
//! `capstan up`. The server runs in this process on 127.0.0.1, sharing the machine's cores with
//! the clients, as it would on a 2-core box.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use capstan_apiserver::ApiServer;
use capstan_storage::embedded::{EmbeddedOptions, EmbeddedStore};
use capstan_storage::etcd::{EtcdOptions, EtcdStore};
use capstan_storage::{ListOptions, Storage};
use capstan_testkit::EtcdProcess;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{Samples, drive, ms};

#[derive(Debug, Args)]
pub struct ApiBench {
    /// Creates per row (gets: 4x as many).
    #[arg(long, default_value_t = 5000)]
    ops: usize,
    /// Concurrent clients to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Watchers in the fan-out test.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Objects in the listed namespace.
    #[arg(long, default_value_t = 500)]
    list_objects: usize,
    /// Backends to run: embedded, etcd.
    #[arg(long, value_delimiter = ',', default_value = "embedded,etcd")]
    backends: Vec<String>,
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

pub type Http = Client<HttpConnector, Full<Bytes>>;

/// A client keeping every connection it opened (the benchmarks' many concurrent requests).
pub fn http_client() -> Http {
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build_http()
}

/// POSTs `body` to `url`, expecting 201 Created.
pub async fn create(http: &Http, url: &str, body: &serde_json::Value) -> Result<()> {
    expect(
        http,
        "POST",
        url,
        Some(Bytes::from(body.to_string())),
        StatusCode::CREATED,
    )
    .await
}

/// A ConfigMap of about 400 bytes of JSON.
fn configmap(ns: &str, name: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench", "tier": "web"}},
            "data": {"config": "x".repeat(256)},
        })
        .to_string(),
    )
}

pub async fn call(
    http: &Http,
    method: &str,
    url: &str,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes)> {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(body.unwrap_or_default()))?;
    let resp = http.request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

pub async fn expect(
    http: &Http,
    method: &str,
    url: &str,
    body: Option<Bytes>,
    want: StatusCode,
) -> Result<()> {
    let (status, body) = call(http, method, url, body).await?;
    if status != want {
        bail!(
            "{method} {url}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

struct Row {
    what: String,
    clients: usize,
    samples: Samples,
    floor: Option<f64>,
}

pub async fn run(b: ApiBench) -> Result<()> {
    let mut report = Vec::new();
    let mut fanouts = Vec::new();
    for backend in &b.backends {
        let scratch = tempfile::Builder::new()
            .prefix("capstan-bench-api-")
            .tempdir_in(&b.scratch)?;
        let mut etcd_proc = None;
        let store: Arc<dyn Storage> = match backend.as_str() {
            "embedded" => {
                let mut opts = EmbeddedOptions::new(scratch.path());
                opts.compaction = None;
                EmbeddedStore::open(opts).await?
            }
            "etcd" => {
                let p = tokio::task::spawn_blocking(EtcdProcess::start).await??;
                let store = EtcdStore::connect(EtcdOptions::new(vec![p.endpoint.clone()])).await?;
                etcd_proc = Some(p);
                Arc::new(store)
            }
            other => bail!("unknown backend {other:?}: embedded or etcd"),
        };
        let api = ApiServer::new(store.clone(), prometheus::Registry::new())
            .await
            .map_err(|e| anyhow::anyhow!("starting the API server: {}", e.message))?;
        if !api.wait_ready(Duration::from_secs(30)).await {
            bail!("API server not ready");
        }
        for ns in ["list", "fanout"] {
            let target = format!("namespaces/{ns}");
            let obj = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            store.create(&target, Bytes::from(obj.to_string())).await?;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let app = capstan_apiserver::router(api);
            capstan_apiserver::serve(listener, app, Default::default(), std::future::pending())
                .await
        });
        let http: Http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .build_http();

        for &c in &b.clients {
            // Creates: the store's own create of the same bytes is the floor.
            let floor = {
                let s = store.clone();
                drive(c, b.ops, move |i| {
                    let s = s.clone();
                    async move {
                        let name = format!("floor-c{c}-{i}");
                        s.create(
                            &format!("configmaps/floor/{name}"),
                            configmap("floor", &name),
                        )
                        .await?;
                        Ok(())
                    }
                })
                .await?
                .rate()
            };
            let (h, url) = (
                http.clone(),
                format!("{base}/api/v1/namespaces/default/configmaps"),
            );
            let samples = drive(c, b.ops, move |i| {
                let (h, url) = (h.clone(), url.clone());
                async move {
                    let body = configmap("default", &format!("cm-c{c}-{i}"));
                    expect(&h, "POST", &url, Some(body), StatusCode::CREATED).await
                }
            })
            .await?;
            report.push(Row {
                what: format!("{backend}: create ConfigMap"),
                clients: c,
                samples,
                floor: Some(floor),
            });

            // Gets of the objects just created.
            let gets = b.ops * 4;
            let floor = {
                let (s, n) = (store.clone(), b.ops);
                drive(c, gets, move |i| {
                    let s = s.clone();
                    async move {
                        s.get(&format!("configmaps/default/cm-c{c}-{}", i % n))
                            .await?
                            .context("missing")?;
                        Ok(())
                    }
                })
                .await?
                .rate()
            };
            let (h, base2, n) = (http.clone(), base.clone(), b.ops);
            let samples = drive(c, gets, move |i| {
                let (h, url) = (
                    h.clone(),
                    format!(
                        "{base2}/api/v1/namespaces/default/configmaps/cm-c{c}-{}",
                        i % n
                    ),
                );
                async move { expect(&h, "GET", &url, None, StatusCode::OK).await }
            })
            .await?;
            report.push(Row {
                what: format!("{backend}: get ConfigMap"),
                clients: c,
                samples,
                floor: Some(floor),
            });
        }

        // Lists of one namespace holding `list_objects` objects, 16 clients.
        {
            let s = store.clone();
            drive(32, b.list_objects, move |i| {
                let s = s.clone();
                async move {
                    let name = format!("l-{i:05}");
                    s.create(&format!("configmaps/list/{name}"), configmap("list", &name))
                        .await?;
                    Ok(())
                }
            })
            .await?;
            let lists = 200;
            let floor = {
                let (s, want) = (store.clone(), b.list_objects);
                drive(16, lists, move |_| {
                    let s = s.clone();
                    async move {
                        let n = s
                            .list("configmaps/list/", ListOptions::default())
                            .await?
                            .items
                            .len();
                        if n != want {
                            bail!("store listed {n}");
                        }
                        Ok(())
                    }
                })
                .await?
                .rate()
            };
            let (h, url) = (
                http.clone(),
                format!("{base}/api/v1/namespaces/list/configmaps"),
            );
            let samples = drive(16, lists, move |_| {
                let (h, url) = (h.clone(), url.clone());
                async move { expect(&h, "GET", &url, None, StatusCode::OK).await }
            })
            .await?;
            report.push(Row {
                what: format!("{backend}: list {} ConfigMaps", b.list_objects),
                clients: 16,
                samples,
                floor: Some(floor),
            });
        }

        fanouts.push((backend.clone(), fanout(&http, &base, b.watchers).await?));
        // Idle pooled connections hold the router (and the server) alive: close them first.
        drop(http);
        server.abort();
        let _ = server.await;
        drop(store);
        if let Some(mut p) = etcd_proc {
            tokio::task::spawn_blocking(move || p.stop()).await??;
        }
    }
    let rss = idle_rss(&b.scratch).await?;

    println!(
        "### capstan bench api — {} creates / {} gets per row, ConfigMaps of ~400 B, {} cores\n",
        b.ops,
        b.ops * 4,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| what | clients | ops/s | p50 | p99 | store floor ops/s | vs floor |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &report {
        let rate = r.samples.rate();
        let floor = r.floor.unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {:.0} | {} | {} | {:.0} | {:.2}x |",
            r.what,
            r.clients,
            rate,
            ms(r.samples.quantile(0.5)),
            ms(r.samples.quantile(0.99)),
            floor,
            rate / floor
        );
    }
    println!(
        "\n| watch fan-out: {} watchers, one write | all have seen it | p50 | p99 |",
        b.watchers
    );
    println!("|---|---:|---:|---:|");
    for (backend, s) in &fanouts {
        println!(
            "| {backend} | {} | {} | {} |",
            ms(s.elapsed),
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99))
        );
    }
    println!(
        "\nIdle RSS of `capstan up` (embedded store, no workload, 2 s after ready): {:.1} MiB",
        rss as f64 / 1024.0
    );
    Ok(())
}

/// Opens `n` watches, writes once, and measures when each watcher receives the event.
async fn fanout(http: &Http, base: &str, n: usize) -> Result<Samples> {
    let (status, body) = call(
        http,
        "GET",
        &format!("{base}/api/v1/namespaces/fanout/configmaps"),
        None,
    )
    .await?;
    if status != StatusCode::OK {
        bail!("list: {status}");
    }
    let rv = serde_json::from_slice::<serde_json::Value>(&body)?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n);
    let (go_tx, _) = tokio::sync::broadcast::channel::<Instant>(1);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (http, ready_tx, mut go) = (http.clone(), ready_tx.clone(), go_tx.subscribe());
        let url =
            format!("{base}/api/v1/namespaces/fanout/configmaps?watch=1&resourceVersion={rv}");
        tasks.push(tokio::spawn(async move {
            let req = Request::get(url).body(Full::new(Bytes::new()))?;
            let resp = http.request(req).await?;
            if resp.status() != StatusCode::OK {
                bail!("watch: {}", resp.status());
            }
            ready_tx.send(()).await?;
            let started = go.recv().await?;
            let mut body = resp.into_body();
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
                    .await?
                    .context("watch ended")??;
                if let Ok(data) = frame.into_data()
                    && data.contains(&b'\n')
                {
                    return Ok(started.elapsed());
                }
            }
        }));
    }
    for _ in 0..n {
        ready_rx.recv().await.context("a watcher failed to start")?;
    }
    let started = Instant::now();
    go_tx.send(started)?;
    expect(
        http,
        "POST",
        &format!("{base}/api/v1/namespaces/fanout/configmaps"),
        Some(configmap("fanout", "ping")),
        StatusCode::CREATED,
    )
    .await?;
    let mut latencies = Vec::with_capacity(n);
    for t in tasks {
        latencies.push(t.await??);
    }
    Ok(Samples {
        elapsed: started.elapsed(),
        latencies,
    })
}

/// Starts `capstan up` on a fresh data dir and reads its resident set size once it is idle.
async fn idle_rss(scratch: &std::path::Path) -> Result<u64> {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::Builder::new()
        .prefix("capstan-rss-")
        .tempdir_in(scratch)?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "up",
            "--runtime",
            "none",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await??
        .context("capstan up exited")?;
    tokio::time::sleep(Duration::from_secs(2)).await; // idle: a measurement, not synchronisation
    let pid = child.id().context("no pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    child.kill().await?;
    Ok(kib)
}
