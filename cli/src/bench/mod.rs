//! `capstan bench ...`: benchmarks that print a Markdown report, each measuring its raw floor in
//! the same run (e.g. raw etcd-client puts next to the store's puts). Figures and the exact
//! commands are recorded in docs/benchmarks.md. Build with --release before trusting numbers.

mod admission;
mod aggregator;
mod api;
mod auth;
mod autoscale;
mod cluster;
mod crd;
mod cri;
mod daemonset;
mod gitops;
mod ha;
mod idle;
mod ingress;
mod jobs;
mod multinode;
mod nodes;
mod plot;
mod pods;
mod quota;
mod schedule;
mod services;
mod store;
mod streams;
mod webhook;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct BenchCmd {
    #[command(subcommand)]
    which: Which,
}

#[derive(Debug, Subcommand)]
enum Which {
    /// The object store: puts/s and latency at 1 and 32 writers, watch delivery, lists of
    /// 10,000 keys — embedded and etcd backends against raw etcd-client.
    Store(store::StoreBench),
    /// The API server: creates/gets/lists at 1, 16 and 64 clients against the raw store, watch
    /// fan-out to 1,000 watchers, idle RSS of `capstan up` — on both store backends.
    Api(api::ApiBench),
    /// TLS, authentication and RBAC: creates/s and gets/s through HTTPS with a client
    /// certificate and RBAC against plain HTTP, and the RBAC decision time with 1,000 Roles and
    /// 10,000 RoleBindings.
    Auth(auth::AuthBench),
    /// Custom resources: schema validation cost per object (50 fields) and creates/s of CRs
    /// against ConfigMaps of the same size and the raw store, in one run.
    Crd(crd::CrdBench),
    /// ValidatingAdmissionPolicy: Deployment creates/s under a policy of 5 validations against
    /// the same creates in a namespace the binding does not select, in one run.
    Admission(admission::AdmissionBench),
    /// Admission webhooks: ConfigMap creates with a validating webhook, and with a mutating
    /// and a validating one, against creates no webhook sees (p50/p99 overhead per request),
    /// and the webhook round trip alone.
    Webhook(webhook::WebhookBench),
    /// The scheduler (spread, binpack) on simulated nodes against the raw binding writes, and a
    /// Deployment of 1,000 replicas rolled from one template to another.
    Schedule(schedule::ScheduleBench),
    /// Jobs: 1,000 Jobs of one pod each on simulated nodes, created → all Complete, against
    /// the same number of bare pods created → all Succeeded, in one run.
    Jobs(jobs::JobsBench),
    /// GitOps: the first sync of a repository of 1,000 manifests against `kubectl apply
    /// --server-side -f DIR`, a resync with nothing changed (time, writes), and one changed
    /// manifest → applied by the controller.
    Gitops(gitops::GitopsBench),
    /// HorizontalPodAutoscalers: the autoscaler's CPU with 1,000 of them on simulated pods,
    /// and a metric change → each target's scale written (p50/p99 against the sync period).
    Autoscale(autoscale::AutoscaleBench),
    /// The aggregation layer: GETs of an external metric straight to a metrics adapter and
    /// through the API server, and a rise of the metric → an HPA's scale written.
    Aggregator(aggregator::AggregatorBench),
    /// DaemonSets: one on 1,000 simulated nodes created → ready everywhere and rolled with
    /// maxUnavailable 10%, against a Deployment of 1,000 replicas rolled with the same budget.
    Daemonset(daemonset::DaemonSetBench),
    /// ResourceQuota: pod creates/s into a namespace under a quota (each create checked and
    /// charged) against a namespace without one, in one run.
    Quota(quota::QuotaBench),
    /// What an idle `capstan up` holds: the API server alone, with every controller, with the
    /// node agent; the allocator's arenas committed lazily (the default) and eagerly.
    Idle(idle::IdleBench),
    /// Node lifecycle: failover of 100 pods from a node that dies (overhead beyond grace +
    /// tolerationSeconds), and the node-lifecycle controller's CPU watching 5,000 healthy nodes.
    Nodes(nodes::NodesBench),
    /// The control plane at scale: 5,000 simulated nodes, 50,000 pods through Deployments,
    /// then pod churn — API latency per verb and resource, pod startup, each process's memory
    /// over time (with PNG plots).
    Cluster(cluster::ClusterBench),
    /// Pod startup on containerd (1 pod, 30 at once) against raw CRI and `ctr run -d`, and the
    /// agent's RSS with 30 pods.
    Pods(pods::PodsBench),
    /// Services: the proxy's rule sync (1,000 Services × 10 endpoints) against raw `nft -f`,
    /// and pod Ready → EndpointSlice → rule propagation with 1,000 endpoints (root, nft).
    Services(services::ServicesBench),
    /// Cluster DNS: queries/s and p99 against a bare UDP responder in the same run.
    Dns(services::DnsBench),
    /// The control plane on a 3-member etcd cluster: creates/s through two API servers (and
    /// one) against raw etcd puts on the same cluster, healthy and with a member killed.
    Ha(ha::HaBench),
    /// Pod-to-pod latency across two machines (network namespaces, each its own node) against
    /// the same ping between the machines (root, containerd).
    Multinode(multinode::MultinodeBench),
    /// Ingress: requests/s and p99 through the ingress proxy to a busybox httpd pod against
    /// the same load straight at the pod's IP, on a `capstan up --runtime cri` of its own
    /// (root, containerd).
    Ingress(ingress::IngressBench),
    /// port-forward (20 connections) against the pod's IP, and exec and attach round trips
    /// against containerd's own, on a `capstan up --runtime cri` of its own (root, containerd).
    Streams(streams::StreamsBench),
    /// The benchmarks' HTTP target, run inside a pod by `bench streams`.
    #[command(hide = true)]
    Httpd(streams::HttpdArgs),
}

pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd.which {
        Which::Store(b) => store::run(b).await,
        Which::Api(b) => api::run(b).await,
        Which::Auth(b) => auth::run(b).await,
        Which::Crd(b) => crd::run(b).await,
        Which::Admission(b) => admission::run(b).await,
        Which::Webhook(b) => webhook::run(b).await,
        Which::Schedule(b) => schedule::run(b).await,
        Which::Jobs(b) => jobs::run(b).await,
        Which::Daemonset(b) => daemonset::run(b).await,
        Which::Autoscale(b) => autoscale::run(b).await,
        Which::Aggregator(b) => aggregator::run(b).await,
        Which::Gitops(b) => gitops::run(b).await,
        Which::Quota(b) => quota::run(b).await,
        Which::Idle(b) => idle::run(b).await,
        Which::Pods(b) => pods::run(b).await,
        Which::Nodes(b) => nodes::run(b).await,
        Which::Cluster(b) => cluster::run(b).await,
        Which::Services(b) => services::run(b).await,
        Which::Dns(b) => services::dns(b).await,
        Which::Ha(b) => ha::run(b).await,
        Which::Multinode(b) => multinode::run(b).await,
        Which::Ingress(b) => ingress::run(b).await,
        Which::Streams(b) => streams::run(b).await,
        Which::Httpd(a) => tokio::task::block_in_place(|| streams::httpd(a)),
    }
}

/// An API server on a fresh embedded store (no compaction) in a scratch directory, served over
/// plain HTTP with every request allowed on a free loopback port; stopped and removed when
/// dropped.
pub struct LocalServer {
    pub url: String,
    pub store: Arc<dyn capstan_storage::Storage>,
    pub api: Arc<capstan_apiserver::ApiServer>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LocalServer {
    pub async fn start(scratch: &std::path::Path, prefix: &str) -> Result<LocalServer> {
        Self::start_with(scratch, prefix, None).await
    }

    /// As [`LocalServer::start`], presenting `front_proxy` to extension API servers.
    pub async fn start_with(
        scratch: &std::path::Path,
        prefix: &str,
        front_proxy: Option<capstan_apiserver::aggregator::FrontProxy>,
    ) -> Result<LocalServer> {
        use capstan_storage::embedded::{EmbeddedOptions, EmbeddedStore};
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(scratch)?;
        let mut opts = EmbeddedOptions::new(dir.path());
        opts.compaction = None;
        let store: Arc<dyn capstan_storage::Storage> = EmbeddedStore::open(opts).await?;
        // Plain HTTP and every request allowed: these benchmarks measure the store and API
        // paths; what TLS, authentication and RBAC cost is `bench auth`'s.
        let config = capstan_apiserver::Config {
            auth: capstan_apiserver::auth::AuthConfig {
                mode: capstan_apiserver::auth::Mode::AlwaysAllow,
                ..Default::default()
            },
            front_proxy,
            ..Default::default()
        };
        let api = capstan_apiserver::ApiServer::with_config(
            store.clone(),
            prometheus::Registry::new(),
            config,
        )
        .await
        .map_err(|e| anyhow::anyhow!("starting the API server: {}", e.message))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let served = api.clone();
        let task = tokio::spawn(async move {
            let app = capstan_apiserver::router(served);
            capstan_apiserver::serve(listener, app, Default::default(), std::future::pending())
                .await
        });
        Ok(LocalServer {
            url,
            store,
            api,
            task,
            _dir: dir,
        })
    }
}

impl LocalServer {
    /// Writes a kubeconfig for this server (plain HTTP, no credentials) at `path`, for the
    /// processes a benchmark starts against it.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> Result<()> {
        crate::certs::write_kubeconfig(
            path,
            &crate::certs::kubeconfig(&self.url, None, crate::certs::Credentials::None),
        )
    }
}

/// A process's resident set, in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A process's CPU time so far (utime + stime), in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    use anyhow::Context;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok(ticks / hz)
}

/// Runs `ops` calls of `op(i)` from `writers` concurrent tasks; returns the latencies.
pub async fn drive<F, Fut>(writers: usize, ops: usize, op: F) -> Result<Samples>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                op(i).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(ops);
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Samples {
        elapsed: started.elapsed(),
        latencies,
    })
}

/// Latency samples of one measured run.
#[derive(Debug)]
pub struct Samples {
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Samples {
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted[idx]
    }
}

/// Where busybox.tar and pause.tar are: `given`, or built into `scratch/images` by
/// e2e/images/build.sh (run from the repository root).
pub fn test_images(
    given: Option<&std::path::Path>,
    scratch: &std::path::Path,
) -> Result<std::path::PathBuf> {
    if let Some(d) = given {
        return Ok(d.to_path_buf());
    }
    let d = scratch.join("images");
    let ok = std::process::Command::new("bash")
        .arg("e2e/images/build.sh")
        .arg(&d)
        .status()
        .map_err(|e| anyhow::anyhow!("running e2e/images/build.sh (run from the repository root, or pass --image-dir): {e}"))?;
    if !ok.success() {
        anyhow::bail!("e2e/images/build.sh failed");
    }
    Ok(d)
}

/// Removes a bench's bridge (what CNI made of it), quietly.
pub fn delete_link(name: &str) {
    let _ = std::process::Command::new("ip")
        .args(["link", "delete", name])
        .stderr(std::process::Stdio::null())
        .status();
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let s = Samples {
            elapsed: Duration::from_secs(2),
            latencies: (1..=100).map(Duration::from_millis).collect(),
        };
        assert_eq!(s.quantile(0.5), Duration::from_millis(51));
        assert_eq!(s.quantile(0.99), Duration::from_millis(99));
        assert_eq!(s.quantile(0.0), Duration::from_millis(1));
        assert_eq!(s.rate(), 50.0);
    }
}
