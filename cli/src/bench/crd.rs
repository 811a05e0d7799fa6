//! `capstan bench crd`: what a custom resource costs next to a built-in.
//! 1. Schema admission (prune + default + validate) of one object against a 50-field structural
//!    schema, per object, in-process — next to decoding the same bytes (serde_json) and to a
//!    ConfigMap's typed validation, the work a built-in pays instead.
//! 2. Creates/s over HTTP of that custom resource and of a ConfigMap of the same JSON size, at
//!    1 and 64 clients, with the store's raw create of the same bytes as the floor, in one run on
//!    the embedded store. Target: a CR costs under 1.3x a ConfigMap.
//! 3. The same CRD with 10 CEL validation rules (`x-kubernetes-validations` on spec): their
//!    evaluation per object in-process, and creates/s over HTTP against the CRD without rules
//!    in the same run. Target: ≥ 0.8x.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use axum::http::StatusCode;
use bytes::Bytes;
use capstan_apiserver::crd::schema::Schema;
use clap::Args;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};

use super::api::{Http, expect};
use super::{LocalServer, drive, ms};

#[derive(Debug, Args)]
pub struct CrdBench {
    /// Objects admitted in the in-process validation measurement.
    #[arg(long, default_value_t = 20_000)]
    validations: usize,
    /// Creates per row.
    #[arg(long, default_value_t = 5000)]
    ops: usize,
    /// Concurrent clients to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

/// The 50 fields: integers with ranges, patterned and enumerated strings, booleans, numbers,
/// timestamps; every fifth has a default.
fn fields() -> Vec<(String, Value, Value)> {
    (0..50)
        .map(|i| {
            let name = format!("field{i:02}");
            let (mut schema, value) = match i % 6 {
                0 => (json!({"type": "integer", "minimum": 0, "maximum": 1_000_000, "format": "int32"}), json!(i * 1000)),
                1 => (json!({"type": "string", "maxLength": 64, "pattern": "^[a-z0-9-]+$"}), json!(format!("value-{i}"))),
                2 => (json!({"type": "string", "enum": ["alpha", "beta", "gamma", "delta"]}), json!("gamma")),
                3 => (json!({"type": "boolean"}), json!(i % 2 == 0)),
                4 => (json!({"type": "number", "minimum": 0}), json!(i as f64 * 1.5)),
                _ => (json!({"type": "string", "format": "date-time"}), json!("2026-11-24T10:00:00Z")),
            };
            if i % 5 == 0 {
                schema["default"] = value.clone();
            }
            (name, schema, value)
        })
        .collect()
}

fn crd() -> Value {
    let props: Map<String, Value> = fields().into_iter().map(|(n, s, _)| (n, s)).collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "benches.bench.capstan.dev"},
        "spec": {"group": "bench.capstan.dev", "scope": "Namespaced",
            "names": {"plural": "benches", "kind": "Bench"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": props}}}}}]}
    })
}

/// Ten rules over the spec's fields, of the kinds CRDs use: comparisons, membership, string
/// functions, a regex, `has`, arithmetic across fields.
const RULES: &[&str] = &[
    "self.field00 >= 0",
    "self.field01.startsWith('value')",
    "self.field02 in ['alpha', 'beta', 'gamma', 'delta']",
    "self.field06 <= 1000000",
    "self.field07.size() <= 64",
    "self.field04 >= 0.0",
    "has(self.field03)",
    "self.field13.matches('^[a-z0-9-]+$')",
    "self.field12 <= self.field18 + 1000000",
    "!has(self.field05) || self.field05.size() > 0",
];

/// The bench CRD again (`rulebenches`), its spec carrying [`RULES`].
fn crd_with_rules() -> Value {
    let mut c = crd();
    c["metadata"]["name"] = json!("rulebenches.bench.capstan.dev");
    c["spec"]["names"] = json!({"plural": "rulebenches", "kind": "RuleBench"});
    let rules: Vec<Value> = RULES.iter().map(|r| json!({"rule": r})).collect();
    c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] =
        json!(rules);
    c
}

fn custom(name: &str) -> Value {
    let spec: Map<String, Value> = fields().into_iter().map(|(n, _, v)| (n, v)).collect();
    json!({"apiVersion": "bench.capstan.dev/v1", "kind": "Bench",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "bench"}}, "spec": spec})
}

/// A ConfigMap padded to the custom resource's JSON size (50 keys).
fn configmap(name: &str, size: usize) -> Value {
    let mut data = Map::new();
    for (n, _, v) in fields() {
        data.insert(n, json!(v.to_string()));
    }
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "bench"}}, "data": data});
    let short = size.saturating_sub(cm.to_string().len() + 12);
    cm["data"]["pad"] = json!("x".repeat(short));
    cm
}

fn per_object(total: Duration, n: usize) -> String {
    format!("{:.1} µs", total.as_secs_f64() * 1e6 / n as f64)
}

pub async fn run(b: CrdBench) -> Result<()> {
    // 1. In-process cost per object.
    let mut errs = Vec::new();
    let schema_json = &crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let schema = Schema::parse(schema_json, "bench", &mut errs);
    if !errs.is_empty() {
        bail!("the bench schema is not structural: {errs:?}");
    }
    let obj = custom("x");
    let bytes = serde_json::to_vec(&obj)?;
    let cm_bytes = serde_json::to_vec(&configmap("x", bytes.len()))?;
    let n = b.validations;
    let t = Instant::now();
    for _ in 0..n {
        let v: Value = serde_json::from_slice(&bytes)?;
        std::hint::black_box(v);
    }
    let decode = t.elapsed();
    let t = Instant::now();
    for _ in 0..n {
        let mut v = obj.clone();
        let errs = schema.admit(&mut v);
        if !errs.is_empty() {
            bail!("the bench object is invalid: {errs:?}");
        }
        std::hint::black_box(v);
    }
    let admit = t.elapsed();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(schema.validate_root(&obj));
    }
    let validate = t.elapsed();
    let t = Instant::now();
    for _ in 0..n {
        let v = obj.clone();
        std::hint::black_box(v);
    }
    let clone = t.elapsed();
    let cm_value: Value = serde_json::from_slice(&cm_bytes)?;
    let t = Instant::now();
    for _ in 0..n {
        let cm: capstan_api::k8s_openapi::api::core::v1::ConfigMap =
            serde_json::from_value(cm_value.clone())?;
        std::hint::black_box(cm);
    }
    let typed = t.elapsed();
    let ruled_json = &crd_with_rules()["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let ruled = Schema::parse(ruled_json, "bench", &mut errs);
    if !errs.is_empty() {
        bail!("the bench rules do not compile: {errs:?}");
    }
    let t = Instant::now();
    for _ in 0..n {
        let errs = ruled.validate_rules(&obj, None);
        if !errs.is_empty() {
            bail!("the bench object fails its rules: {errs:?}");
        }
    }
    let rules = t.elapsed();

    // 2. Creates over HTTP, CR vs ConfigMap vs raw store.
    let server = LocalServer::start(&b.scratch, "capstan-bench-crd-").await?;
    let (base, store) = (server.url.clone(), server.store.clone());
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build_http();
    expect(
        &http,
        "POST",
        &format!("{base}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
        Some(Bytes::from(crd().to_string())),
        StatusCode::CREATED,
    )
    .await?;
    expect(
        &http,
        "POST",
        &format!("{base}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
        Some(Bytes::from(crd_with_rules().to_string())),
        StatusCode::CREATED,
    )
    .await?;
    let cr_url = format!("{base}/apis/bench.capstan.dev/v1/namespaces/default/benches");
    let ruled_url = format!("{base}/apis/bench.capstan.dev/v1/namespaces/default/rulebenches");
    let deadline = Instant::now() + Duration::from_secs(10);
    for url in [&cr_url, &ruled_url] {
        while expect(&http, "GET", url, None, StatusCode::OK)
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("the bench CRDs were not served within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let mut rows = Vec::new();
    for &c in &b.clients {
        let floor = {
            let s = store.clone();
            let size = bytes.len();
            drive(c, b.ops, move |i| {
                let s = s.clone();
                async move {
                    let name = format!("floor-c{c}-{i}");
                    let body = Bytes::from(serde_json::to_vec(&configmap(&name, size))?);
                    s.create(&format!("configmaps/floor/{name}"), body).await?;
                    Ok(())
                }
            })
            .await?
        };
        let (h, url, size) = (
            http.clone(),
            format!("{base}/api/v1/namespaces/default/configmaps"),
            bytes.len(),
        );
        let cms = drive(c, b.ops, move |i| {
            let (h, url) = (h.clone(), url.clone());
            async move {
                let body = Bytes::from(configmap(&format!("cm-c{c}-{i}"), size).to_string());
                expect(&h, "POST", &url, Some(body), StatusCode::CREATED).await
            }
        })
        .await?;
        let (h, url) = (http.clone(), cr_url.clone());
        let crs = drive(c, b.ops, move |i| {
            let (h, url) = (h.clone(), url.clone());
            async move {
                let body = Bytes::from(custom(&format!("cr-c{c}-{i}")).to_string());
                expect(&h, "POST", &url, Some(body), StatusCode::CREATED).await
            }
        })
        .await?;
        let (h, url) = (http.clone(), ruled_url.clone());
        let ruled = drive(c, b.ops, move |i| {
            let (h, url) = (h.clone(), url.clone());
            async move {
                let mut body = custom(&format!("rcr-c{c}-{i}"));
                body["kind"] = json!("RuleBench");
                expect(
                    &h,
                    "POST",
                    &url,
                    Some(Bytes::from(body.to_string())),
                    StatusCode::CREATED,
                )
                .await
            }
        })
        .await?;
        rows.push((c, floor, cms, crs, ruled));
    }
    drop(http);
    drop(server);

    println!(
        "### capstan bench crd — 50-field schema, objects of {} B JSON, {} cores\n",
        bytes.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| per object ({n} objects) | time |");
    println!("|---|---:|");
    println!(
        "| decode the JSON bytes (serde_json, the floor) | {} |",
        per_object(decode, n)
    );
    println!(
        "| clone the decoded object (part of admit below) | {} |",
        per_object(clone, n)
    );
    println!(
        "| CR: prune + default + validate (50 fields) | {} |",
        per_object(admit, n)
    );
    println!("| CR: validate only | {} |", per_object(validate, n));
    println!(
        "| CR: its 10 CEL rules (`validate_rules`) | {} |",
        per_object(rules, n)
    );
    println!(
        "| ConfigMap of the same size: typed decode (its validation) | {} |",
        per_object(typed, n)
    );
    println!(
        "\n| creates over HTTP | clients | ops/s | p50 | p99 | store floor ops/s | CR / ConfigMap time |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (c, floor, cms, crs, ruled) in &rows {
        for (what, s) in [
            ("ConfigMap", cms),
            ("custom resource", crs),
            ("custom resource with 10 CEL rules", ruled),
        ] {
            println!(
                "| {what} | {c} | {:.0} | {} | {} | {:.0} | {} |",
                s.rate(),
                ms(s.quantile(0.5)),
                ms(s.quantile(0.99)),
                floor.rate(),
                match what {
                    "ConfigMap" => String::new(),
                    "custom resource" => format!("{:.2}x", cms.rate() / crs.rate()),
                    _ => format!(
                        "{:.2}x (rules / no rules throughput: {:.2}x)",
                        cms.rate() / s.rate(),
                        s.rate() / crs.rate()
                    ),
                }
            );
        }
    }
    Ok(())
}
