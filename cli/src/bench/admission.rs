//! `capstan bench admission`: what a ValidatingAdmissionPolicy costs a write. Deployment
//! creates/s over HTTP into a namespace a policy of 5 validations (with a ConfigMap as its
//! params, a variable and a match condition) governs, against the same creates into a
//! namespace its binding does not select, in one run on one embedded store. Target: ≥ 0.9x.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use axum::http::StatusCode;
use bytes::Bytes;
use clap::Args;
use serde_json::{Value, json};

use super::api::{Http, create, expect, http_client};
use super::{LocalServer, drive, ms};

#[derive(Debug, Args)]
pub struct AdmissionBench {
    /// Creates per row.
    #[arg(long, default_value_t = 3000)]
    ops: usize,
    /// Concurrent clients to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

fn policy() -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "bench"},
        "spec": {
            "failurePolicy": "Fail",
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
            "matchConditions": [{"name": "not-exempt", "expression": "!('exempt' in object.metadata.labels)"}],
            "variables": [{"name": "limit", "expression": "int(params.data.maxReplicas)"}],
            "validations": [
                {"expression": "object.spec.replicas <= variables.limit"},
                {"expression": "object.spec.template.spec.containers.all(c, !c.image.endsWith(':latest'))"},
                {"expression": "object.spec.template.spec.containers.size() <= 5"},
                {"expression": "'app' in object.metadata.labels"},
                {"expression": "object.metadata.name.matches('^[a-z0-9-]+$')"}
            ]
        }
    })
}

fn deployment(name: &str, ns: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "bench"}},
            "template": {"metadata": {"labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}
    })
}

pub async fn run(b: AdmissionBench) -> Result<()> {
    let server = LocalServer::start(&b.scratch, "capstan-bench-admission-").await?;
    let base = server.url.clone();
    let http: Http = http_client();
    let post = |path: String, body: Value| {
        let http = http.clone();
        async move { create(&http, &path, &body).await }
    };
    for (ns, labels) in [("governed", json!({"policy": "on"})), ("free", json!({}))] {
        post(
            format!("{base}/api/v1/namespaces"),
            json!({"metadata": {"name": ns, "labels": labels}}),
        )
        .await?;
    }
    post(
        format!("{base}/api/v1/namespaces/governed/configmaps"),
        json!({"metadata": {"name": "limits"}, "data": {"maxReplicas": "10"}}),
    )
    .await?;
    let vap = format!("{base}/apis/admissionregistration.k8s.io/v1");
    post(format!("{vap}/validatingadmissionpolicies"), policy()).await?;
    post(
        format!("{vap}/validatingadmissionpolicybindings"),
        json!({"metadata": {"name": "bench"}, "spec": {"policyName": "bench", "validationActions": ["Deny"],
            "paramRef": {"name": "limits", "namespace": "governed", "parameterNotFoundAction": "Deny"},
            "matchResources": {"namespaceSelector": {"matchLabels": {"policy": "on"}}}}}),
    )
    .await?;
    // The policy is in force once a violating create is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut bad = deployment("probe", "governed");
        bad["spec"]["replicas"] = json!(50);
        let refused = expect(
            &http,
            "POST",
            &format!("{base}/apis/apps/v1/namespaces/governed/deployments"),
            Some(Bytes::from(bad.to_string())),
            StatusCode::FORBIDDEN,
        )
        .await
        .is_ok()
            || expect(
                &http,
                "POST",
                &format!("{base}/apis/apps/v1/namespaces/governed/deployments"),
                Some(Bytes::from(bad.to_string())),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
            .is_ok();
        if refused {
            break;
        }
        if Instant::now() > deadline {
            bail!("the bench policy was not in force within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut rows = Vec::new();
    for &c in &b.clients {
        // ABBA order (free, governed, governed, free): the store grows through the run, and
        // what that costs falls on both sides alike.
        let mut pair = Vec::new();
        for (round, ns) in ["free", "governed", "governed", "free"]
            .into_iter()
            .enumerate()
        {
            let (h, url) = (
                http.clone(),
                format!("{base}/apis/apps/v1/namespaces/{ns}/deployments"),
            );
            let s = drive(c, b.ops, move |i| {
                let (h, url) = (h.clone(), url.clone());
                async move {
                    let body =
                        Bytes::from(deployment(&format!("d-c{c}-r{round}-{i}"), ns).to_string());
                    expect(&h, "POST", &url, Some(body), StatusCode::CREATED).await
                }
            })
            .await?;
            pair.push(s);
        }
        rows.push((c, pair));
    }
    drop(http);
    drop(server);
    println!(
        "### capstan bench admission — a policy of 5 validations on Deployment creates, {} cores\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| Deployment creates (ops/s: mean of two runs, ABBA order) | clients | ops/s | p50 | p99 | with policy / without |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (c, runs) in &rows {
        let free = (runs[0].rate() + runs[3].rate()) / 2.0;
        let governed = (runs[1].rate() + runs[2].rate()) / 2.0;
        for (what, rate, s) in [
            ("namespace without policy", free, &runs[0]),
            ("namespace with the policy", governed, &runs[1]),
        ] {
            let ratio = if what.ends_with("the policy") {
                format!("{:.2}x", governed / free)
            } else {
                String::new()
            };
            println!(
                "| {what} | {c} | {rate:.0} | {} | {} | {ratio} |",
                ms(s.quantile(0.5)),
                ms(s.quantile(0.99)),
            );
        }
    }
    Ok(())
}
