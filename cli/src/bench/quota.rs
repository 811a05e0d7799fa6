//! `capstan bench quota`: what a ResourceQuota costs a create. Pod creates/s over HTTP into a
//! namespace whose quota limits pods, cpu and memory (every create is checked and charged
//! with a compare-and-swap on the quota's status, and the resource-quota controller is not
//! running, so the charges are all there is) against the same creates into a namespace
//! without one, in one run on one embedded store, in ABBA order. The charge serializes the
//! namespace's creates on one object, so many clients contend; that is the number to watch.

use anyhow::Result;
use axum::http::StatusCode;
use bytes::Bytes;
use clap::Args;
use serde_json::{Value, json};

use super::api::{Http, call, create, expect, http_client};
use super::{LocalServer, drive, ms};

#[derive(Debug, Args)]
pub struct QuotaBench {
    /// Creates per row.
    #[arg(long, default_value_t = 3000)]
    ops: usize,
    /// Concurrent clients to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                "limits": {"cpu": "10m", "memory": "16Mi"}}}]}})
}

pub async fn run(b: QuotaBench) -> Result<()> {
    let server = LocalServer::start(&b.scratch, "capstan-bench-quota-").await?;
    let base = server.url.clone();
    let http: Http = http_client();
    for ns in ["quota", "free"] {
        create(
            &http,
            &format!("{base}/api/v1/namespaces"),
            &json!({"metadata": {"name": ns}}),
        )
        .await?;
    }
    // The controller is not running here: the status it would write, by hand.
    let hard = json!({"pods": "1000000", "requests.cpu": "100000", "requests.memory": "1000Ti",
        "limits.cpu": "100000", "limits.memory": "1000Ti"});
    let used = json!({"pods": "0", "requests.cpu": "0", "requests.memory": "0",
        "limits.cpu": "0", "limits.memory": "0"});
    create(
        &http,
        &format!("{base}/api/v1/namespaces/quota/resourcequotas"),
        &json!({"metadata": {"name": "budget"}, "spec": {"hard": hard}}),
    )
    .await?;
    let (_, q) = call(
        &http,
        "GET",
        &format!("{base}/api/v1/namespaces/quota/resourcequotas/budget"),
        None,
    )
    .await?;
    let mut with_status: Value = serde_json::from_slice(&q)?;
    with_status["status"] = json!({"hard": hard, "used": used});
    expect(
        &http,
        "PUT",
        &format!("{base}/api/v1/namespaces/quota/resourcequotas/budget/status"),
        Some(Bytes::from(with_status.to_string())),
        StatusCode::OK,
    )
    .await?;

    let mut rows = Vec::new();
    for &c in &b.clients {
        let mut runs = Vec::new();
        for (round, ns) in ["free", "quota", "quota", "free"].into_iter().enumerate() {
            let (h, url) = (http.clone(), format!("{base}/api/v1/namespaces/{ns}/pods"));
            let s = drive(c, b.ops, move |i| {
                let (h, url) = (h.clone(), url.clone());
                async move {
                    let body = Bytes::from(pod(&format!("p-c{c}-r{round}-{i}")).to_string());
                    expect(&h, "POST", &url, Some(body), StatusCode::CREATED).await
                }
            })
            .await?;
            runs.push(s);
        }
        rows.push((c, runs));
    }
    // Every create was charged: the quota's status counts them all.
    let (_, q) = call(
        &http,
        "GET",
        &format!("{base}/api/v1/namespaces/quota/resourcequotas/budget"),
        None,
    )
    .await?;
    let q: Value = serde_json::from_slice(&q)?;
    let charged = q["status"]["used"]["pods"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let expected = 2 * b.ops * b.clients.len();
    drop(http);
    drop(server);
    println!(
        "### capstan bench quota — pod creates under a ResourceQuota, {} cores\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("quota status after the run: pods={charged} (creates made: {expected})\n");
    println!(
        "| pod creates (ops/s: mean of two runs, ABBA order) | clients | ops/s | p50 | p99 | with quota / without |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (c, runs) in &rows {
        let free = (runs[0].rate() + runs[3].rate()) / 2.0;
        let quota = (runs[1].rate() + runs[2].rate()) / 2.0;
        println!(
            "| namespace without a quota | {c} | {free:.0} | {} | {} | |",
            ms(runs[0].quantile(0.5)),
            ms(runs[0].quantile(0.99))
        );
        println!(
            "| namespace with a quota | {c} | {quota:.0} | {} | {} | {:.2}x |",
            ms(runs[1].quantile(0.5)),
            ms(runs[1].quantile(0.99)),
            quota / free
        );
    }
    Ok(())
}
