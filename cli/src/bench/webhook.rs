//! `capstan bench webhook`: what admission webhooks cost a write. ConfigMap creates over HTTP
//! into a namespace a validating webhook selects, and into one a mutating (JSON patch) and a
//! validating webhook select, against creates into a namespace no webhook selects — in one
//! run on one embedded store, ABBA-ordered — and the webhook round trip alone (the API
//! server's webhook client POSTing the same AdmissionReview, no API request around it). The
//! webhook is testkit's HTTPS server on loopback; the overhead per request is the difference
//! of the quantiles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use axum::http::StatusCode;
use bytes::Bytes;
use capstan_testkit::webhook::{self, WebhookServer};
use clap::Args;
use serde_json::{Value, json};

use super::api::{Http, call, create, expect, http_client};
use super::{LocalServer, Samples, drive, ms};

#[derive(Debug, Args)]
pub struct WebhookBench {
    /// Creates per row.
    #[arg(long, default_value_t = 2000)]
    ops: usize,
    /// Concurrent clients to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    clients: Vec<usize>,
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

/// One webhook configuration of `kind` selecting namespaces labelled `label=on`.
fn configuration(server: &WebhookServer, kind: &str, path: &str, label: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
        "metadata": {"name": format!("bench-{label}")},
        "webhooks": [{
            "name": format!("{label}.bench.capstan.dev"),
            "clientConfig": server.client_config(path),
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
            "namespaceSelector": {"matchLabels": {label: "on"}},
            "sideEffects": "None", "admissionReviewVersions": ["v1"],
        }]
    })
}

fn configmap(name: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"app": "bench"}}, "data": {"k": "v"}})
}

/// A review as the API server sends one, for the round trip alone.
fn review() -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "bench", "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
        "resource": {"group": "", "version": "v1", "resource": "configmaps"},
        "name": "x", "namespace": "validated", "operation": "CREATE",
        "userInfo": {"username": "bench"}, "object": configmap("x"), "oldObject": null, "dryRun": false}})
}

pub async fn run(b: WebhookBench) -> Result<()> {
    let server = LocalServer::start(&b.scratch, "capstan-bench-webhook-").await?;
    let hook = WebhookServer::start(
        &[],
        Arc::new(|path, review| match path {
            "/mutate" => webhook::patch(
                &review,
                json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}]),
            ),
            _ => webhook::allow(&review, &[]),
        }),
    )
    .await?;
    let base = server.url.clone();
    let http: Http = http_client();
    let post = |path: String, body: Value| {
        let http = http.clone();
        async move { create(&http, &path, &body).await }
    };
    for (ns, labels) in [
        ("free", json!({})),
        ("validated", json!({"validate": "on"})),
        ("mutated", json!({"validate": "on", "mutate": "on"})),
    ] {
        post(
            format!("{base}/api/v1/namespaces"),
            json!({"metadata": {"name": ns, "labels": labels}}),
        )
        .await?;
    }
    let group = format!("{base}/apis/admissionregistration.k8s.io/v1");
    post(
        format!("{group}/validatingwebhookconfigurations"),
        configuration(
            &hook,
            "ValidatingWebhookConfiguration",
            "/validate",
            "validate",
        ),
    )
    .await?;
    post(
        format!("{group}/mutatingwebhookconfigurations"),
        configuration(&hook, "MutatingWebhookConfiguration", "/mutate", "mutate"),
    )
    .await?;
    // In force once a create in "mutated" comes back mutated.
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0.. {
        let (_, created) = call(
            &http,
            "POST",
            &format!("{base}/api/v1/namespaces/mutated/configmaps"),
            Some(Bytes::from(configmap(&format!("probe-{i}")).to_string())),
        )
        .await?;
        let created: Value = serde_json::from_slice(&created).unwrap_or_default();
        if created["metadata"]["labels"]["mutated"] == "yes" {
            break;
        }
        if Instant::now() > deadline {
            bail!("the bench webhooks were not in force within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The round trip alone, through the API server's own webhook client.
    let client = capstan_apiserver::webhook::client::Client::new(&hook.client_config("/validate"))
        .map_err(|e| anyhow::anyhow!(e))?;
    let body = Bytes::from(review().to_string());
    let mut alone = Samples {
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(b.ops),
    };
    let started = Instant::now();
    for _ in 0..b.ops {
        let t = Instant::now();
        client
            .post(&server.api, body.clone(), Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        alone.latencies.push(t.elapsed());
    }
    alone.elapsed = started.elapsed();

    let mut rows = Vec::new();
    for &c in &b.clients {
        // ABBA order: the store grows through the run, and that falls on every side alike.
        let order = [
            "free",
            "validated",
            "mutated",
            "mutated",
            "validated",
            "free",
        ];
        let mut runs = Vec::new();
        for (round, ns) in order.into_iter().enumerate() {
            let (h, url) = (
                http.clone(),
                format!("{base}/api/v1/namespaces/{ns}/configmaps"),
            );
            let s = drive(c, b.ops, move |i| {
                let (h, url) = (h.clone(), url.clone());
                async move {
                    let body = Bytes::from(configmap(&format!("cm-c{c}-r{round}-{i}")).to_string());
                    expect(&h, "POST", &url, Some(body), StatusCode::CREATED).await
                }
            })
            .await?;
            runs.push(s);
        }
        rows.push((c, runs));
    }
    let calls = hook.calls();
    drop(http);
    drop(server);
    println!(
        "### capstan bench webhook — ConfigMap creates through admission webhooks (HTTPS on loopback), {} cores\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| what | clients | ops/s | p50 | p99 | p50 overhead | p99 overhead |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| webhook round trip alone (the server's client) | 1 | {:.0} | {} | {} | | |",
        alone.rate(),
        ms(alone.quantile(0.5)),
        ms(alone.quantile(0.99))
    );
    for (c, runs) in &rows {
        let merged = |a: &Samples, b: &Samples| Samples {
            elapsed: a.elapsed + b.elapsed,
            latencies: a.latencies.iter().chain(&b.latencies).copied().collect(),
        };
        let free = merged(&runs[0], &runs[5]);
        for (what, s) in [
            ("no webhook", &free),
            ("a validating webhook", &merged(&runs[1], &runs[4])),
            (
                "a mutating and a validating webhook",
                &merged(&runs[2], &runs[3]),
            ),
        ] {
            let over = |q: f64| {
                if std::ptr::eq(s, &free) {
                    String::new()
                } else {
                    ms(s.quantile(q).saturating_sub(free.quantile(q)))
                }
            };
            println!(
                "| {what} | {c} | {:.0} | {} | {} | {} | {} |",
                s.rate(),
                ms(s.quantile(0.5)),
                ms(s.quantile(0.99)),
                over(0.5),
                over(0.99)
            );
        }
    }
    println!("\n{calls} webhook calls answered.");
    Ok(())
}
