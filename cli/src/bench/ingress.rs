//! `capstan bench ingress`: requests/s and latency through the ingress proxy to a busybox
//! httpd pod, against the same load straight at the pod's IP, in one run, on a `capstan up
//! --runtime cri` of its own (the proxy on a loopback port). The load: `connections` threads,
//! each doing `requests` GETs one after another, twice: as HTTP/1.1 clients that keep their
//! connection while the server does (wrk's and browsers' way: busybox httpd closes after every
//! answer, so the direct path reconnects each time, while the proxy keeps the client's
//! connection and opens a new one to the pod), and with a new connection per GET. The two
//! paths take turns for three rounds and each path's median round is reported.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use capstan_testkit::portforward::{Load, Reuse, get, load_with};
use capstan_testkit::{eventually, free_port, kubectl};
use clap::Args;

use super::cri::CriCluster;
use super::ms;

#[derive(Debug, Args)]
pub struct IngressBench {
    /// Clients at once (below busybox httpd's listen backlog of 9, so the direct path never
    /// waits on SYN retries).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// GETs per client in each round.
    #[arg(long, default_value_t = 250)]
    requests: usize,
    /// The proxy's worker threads (`capstan up --ingress-workers`; default: one per core).
    #[arg(long)]
    workers: Option<u16>,
    /// Where e2e/images/build.sh left busybox.tar (built into the scratch dir when absent).
    #[arg(long)]
    image_dir: Option<PathBuf>,
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: localhost/busybox:1
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  rules:
  - http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
"#;

/// The round with the median requests/s of three.
fn median(mut v: Vec<Load>) -> Load {
    v.sort_by(|a, b| a.requests_per_second().total_cmp(&b.requests_per_second()));
    v.swap_remove(1)
}

pub async fn run(b: IngressBench) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("capstan-bench-ingress-")
        .tempdir_in(&b.scratch)?;
    let images = super::test_images(b.image_dir.as_deref(), scratch.path())?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let workers = b.workers.map(|n| n.to_string());
    let mut flags = vec![
        "--ingress-http-address",
        &listen,
        "--ingress-https-address",
        "off",
    ];
    if let Some(n) = &workers {
        flags.extend(["--ingress-workers", n]);
    }
    let cluster = tokio::task::block_in_place(|| {
        CriCluster::start(
            "ingress",
            scratch.path(),
            &images,
            "bench-ingress",
            "10.245.0.0/16",
            "captbench3",
            &flags,
        )
    })?;
    cluster.apply(MANIFEST)?;
    let mut ip = String::new();
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(120),
            "the pod answering, directly and through the ingress",
            || {
                let out = kubectl(
                    &cluster.kubeconfig,
                    &["get", "pod", "web", "-o", "jsonpath={.status.podIP}"],
                    None,
                );
                ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
                !ip.is_empty()
                    && get(&format!("{ip}:8080"), "/").is_ok()
                    && get(&listen, "/").is_ok()
            },
        )
    })?;
    let direct = format!("{ip}:8080");
    let modes = [
        (
            Reuse::KeepAlive,
            "HTTP/1.1 clients keeping their connection while the server does (as wrk, browsers)",
        ),
        (Reuse::PerRequest, "a new connection per GET (HTTP/1.0)"),
    ];
    let mut results = Vec::new();
    for (reuse, _) in modes {
        let (d, i) = tokio::task::block_in_place(|| {
            let (mut d, mut i) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                d.push(load_with(&direct, "/", b.connections, b.requests, reuse));
                i.push(load_with(&listen, "/", b.connections, b.requests, reuse));
            }
            (median(d), median(i))
        });
        for (what, l) in [("direct", &d), ("ingress", &i)] {
            if !l.errors.is_empty() {
                bail!(
                    "{what} ({reuse:?}): {} errors, the first: {}",
                    l.errors.len(),
                    l.errors[0]
                );
            }
        }
        results.push((d, i));
    }
    println!("# capstan bench ingress\n");
    println!(
        "`capstan bench ingress --connections {} --requests {}{}`: 2 cores; {} clients at once, {} GETs each per round; the two paths take turns, the median of 3 rounds per path.\n",
        b.connections,
        b.requests,
        workers
            .as_ref()
            .map(|n| format!(" --workers {n}"))
            .unwrap_or_default(),
        b.connections,
        b.requests
    );
    println!(
        "| clients | path | requests | connections opened | req/s | p50 | p99 |\n|---|---|---|---|---|---|---|"
    );
    for ((_, clients), (d, i)) in modes.iter().zip(&results) {
        for (what, l) in [
            ("straight to the pod IP (busybox httpd)", d),
            ("through the ingress proxy (loopback → proxy → pod)", i),
        ] {
            println!(
                "| {clients} | {what} | {} | {} | {:.0} | {} | {} |",
                l.requests,
                l.connects,
                l.requests_per_second(),
                ms(l.quantile(0.5)),
                ms(l.quantile(0.99))
            );
        }
    }
    println!();
    for ((reuse, _), (d, i)) in modes.iter().zip(&results) {
        println!(
            "ingress / direct requests/s, {}: {:.2}x (target ≥ 0.7x)",
            match reuse {
                Reuse::KeepAlive => "clients keeping connections",
                Reuse::PerRequest => "a new connection per GET",
            },
            i.requests_per_second() / d.requests_per_second()
        );
    }
    drop(cluster);
    Ok(())
}
