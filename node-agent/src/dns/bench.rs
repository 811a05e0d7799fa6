//! `capstan bench dns`: queries per second and latency of the DNS server for a cluster name,
//! beside a floor — a bare UDP responder in the same process that answers every query with a
//! pre-built copy of the server's own answer (socket cost only, no parsing or lookup). Both are
//! driven by the same in-process load generator: `concurrency` clients, each with its own socket,
//! one query in flight at a time, for `duration`. Everything stays on 127.0.0.1.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::net::UdpSocket;

use super::{DnsConfig, DnsMetrics, DnsServer, Zone};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Clients sending at once.
    pub concurrency: usize,
    /// How long each of the two runs lasts.
    pub duration: Duration,
    /// Services in the zone (the one asked for among them).
    pub services: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            concurrency: 32,
            duration: Duration::from_secs(5),
            services: 1000,
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadResult {
    pub answered: u64,
    /// Queries with no answer within a second.
    pub lost: u64,
    pub qps: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// The server's run beside the floor's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchReport {
    pub server: LoadResult,
    pub floor: LoadResult,
    /// server qps / floor qps (target ≥ 0.5).
    pub ratio: f64,
}

impl fmt::Display for LoadResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>9.0} queries/s  p50 {:>7.1} µs  p99 {:>7.1} µs  ({} answered, {} lost)",
            self.qps,
            self.p50.as_secs_f64() * 1e6,
            self.p99.as_secs_f64() * 1e6,
            self.answered,
            self.lost
        )
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dns server (cluster name, A): {}", self.server)?;
        writeln!(f, "floor (bare UDP responder):   {}", self.floor)?;
        write!(f, "ratio server/floor: {:.2}x (target >= 0.5x)", self.ratio)
    }
}

/// Runs the floor, then the server, and reports both.
pub async fn bench(opts: &BenchOptions) -> std::io::Result<BenchReport> {
    let mut zone = Zone::new("cluster.local", 5).map_err(std::io::Error::other)?;
    let services = opts.services.max(1);
    for i in 0..services {
        zone.apply_service(&service(i));
    }
    let mut cfg = DnsConfig::new(([127, 0, 0, 1], 0).into(), "bench");
    cfg.publish = false;
    // No upstream: nothing leaves the machine.
    cfg.upstreams = vec![([127, 0, 0, 1], 9).into()];
    let server = DnsServer::serve(zone, &cfg, DnsMetrics::unregistered(), true)
        .await
        .map_err(std::io::Error::other)?;
    let name = format!("svc-{}.default.svc.cluster.local.", services / 2);
    let query = query_bytes(&name)?;

    // The floor answers with the server's own answer, so both send the same bytes.
    let answer = exchange_once(server.local_addr(), &query).await?;
    let floor_sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let floor_addr = floor_sock.local_addr()?;
    let floor_task = tokio::spawn(floor(floor_sock, answer));
    let floor = load(floor_addr, &query, opts).await;
    floor_task.abort();

    let result = load(server.local_addr(), &query, opts).await;
    server.shutdown().await.map_err(std::io::Error::other)?;
    let ratio = if floor.qps > 0.0 {
        result.qps / floor.qps
    } else {
        0.0
    };
    Ok(BenchReport {
        server: result,
        floor,
        ratio,
    })
}

fn service(i: usize) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some(format!("svc-{i}")),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(format!("10.96.{}.{}", (i / 250) % 250, i % 250 + 1)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn query_bytes(name: &str) -> std::io::Result<Vec<u8>> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    let name = Name::from_ascii(name).map_err(std::io::Error::other)?;
    m.add_query(Query::query(name, RecordType::A));
    m.to_vec().map_err(std::io::Error::other)
}

async fn exchange_once(to: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    sock.connect(to).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("the DNS server did not answer"))??;
    buf.truncate(n);
    Ok(buf)
}

/// Answers every datagram with `answer`, the query's ID copied in.
async fn floor(sock: Arc<UdpSocket>, answer: Vec<u8>) {
    let mut buf = vec![0u8; 4096];
    let mut out = answer;
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        if n < 2 {
            continue;
        }
        out[..2].copy_from_slice(&buf[..2]);
        let _ = sock.send_to(&out, peer).await;
    }
}

/// `concurrency` clients, one query in flight each, until `duration` is up.
async fn load(to: SocketAddr, query: &[u8], opts: &BenchOptions) -> LoadResult {
    let started = Instant::now();
    let deadline = started + opts.duration;
    let clients: Vec<_> = (0..opts.concurrency.max(1))
        .map(|c| {
            let query = query.to_vec();
            tokio::spawn(async move { client(to, query, deadline, c as u16).await })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut lost = 0;
    for c in clients {
        if let Ok((l, n)) = c.await {
            latencies.extend(l);
            lost += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    LoadResult {
        answered: latencies.len() as u64,
        lost,
        qps: latencies.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

async fn client(
    to: SocketAddr,
    mut query: Vec<u8>,
    deadline: Instant,
    seed: u16,
) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::new();
    let mut lost = 0;
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else {
        return (latencies, 1);
    };
    if sock.connect(to).await.is_err() {
        return (latencies, 1);
    }
    let mut buf = vec![0u8; 4096];
    let mut id = seed.wrapping_mul(2053);
    while Instant::now() < deadline {
        id = id.wrapping_add(1);
        query[..2].copy_from_slice(&id.to_be_bytes());
        let sent = Instant::now();
        if sock.send(&query).await.is_err() {
            lost += 1;
            continue;
        }
        let got = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match sock.recv(&mut buf).await {
                    Ok(n) if n >= 2 && buf[..2] == id.to_be_bytes() => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        })
        .await;
        match got {
            Ok(true) => latencies.push(sent.elapsed()),
            _ => lost += 1,
        }
    }
    (latencies, lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bench_runs_and_reports_both_figures() {
        let opts = BenchOptions {
            concurrency: 4,
            duration: Duration::from_millis(300),
            services: 50,
        };
        let report = bench(&opts).await.unwrap();
        assert!(report.server.answered > 0, "{report}");
        assert!(report.floor.answered > 0, "{report}");
        assert!(report.ratio > 0.0);
        assert!(report.to_string().contains("ratio"));
    }

    /// The figures for docs/benchmarks.md (`cargo test --release -- --ignored --nocapture`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a 10-second benchmark; run by hand"]
    async fn bench_report() {
        let report = bench(&BenchOptions::default()).await.unwrap();
        println!("{report}");
    }
}
