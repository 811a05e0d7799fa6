//! `capstan bench cluster`: the control plane at scale on one machine, as Kubernetes' density
//! and load tests measure it (clusterloader2), with every component its own process of this
//! binary so each one's memory is its own:
//! - `capstan up --runtime none --controllers none` (the API server on the embedded store);
//! - `capstan controllers` (every controller, one process, as kube-controller-manager);
//! - `capstan sim --nodes N` (simulated nodes: they register, renew their Leases every 10 s,
//!   post their status every minute and run the pods bound to them without containers).
//!
//! Phases: the nodes register; Deployments of `--replicas` pods each (spread over
//! `--namespaces`) until `--pods` run; then churn: bare pods created and deleted at
//! `--churn-rate` calls per second for `--churn-seconds`, with a cluster-wide list of pods and
//! of nodes every 10 s and a get of one pod every second.
//!
//! Reported: pod startup latency (first seen by a watch → seen Running and Ready; SLO p99 ≤ 5 s),
//! the API server's own request latency per verb and resource from its
//! `apiserver_request_duration_seconds` histogram for each phase (every caller: controllers,
//! nodes, the bench; SLO p99 ≤ 1 s for single-object calls, ≤ 30 s for lists), the bench's own
//! cluster-wide lists as a client sees them, and each process's resident memory over time —
//! plotted as PNG files with `--plot-dir`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use super::plot::{Chart, Series};

#[derive(Debug, Args)]
pub struct ClusterBench {
    /// Simulated nodes.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pods created through Deployments.
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    /// Replicas of each Deployment.
    #[arg(long, default_value_t = 100)]
    replicas: usize,
    /// Namespaces the Deployments are spread over.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Pod creates plus deletes per second during the churn.
    #[arg(long, default_value_t = 20)]
    churn_rate: u32,
    /// How long the churn lasts (seconds).
    #[arg(long, default_value_t = 300)]
    churn_seconds: u64,
    /// How often each process's memory is sampled (milliseconds).
    #[arg(long, default_value_t = 1000)]
    sample_ms: u64,
    /// Writes cluster-memory.png and cluster-pods.png here.
    #[arg(long)]
    plot_dir: Option<PathBuf>,
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
}

/// A child process of this binary, stopped (SIGTERM, then -9) when dropped.
struct Proc {
    name: &'static str,
    child: std::process::Child,
}

impl Proc {
    fn spawn(name: &'static str, args: &[&str], log: &Path) -> Result<Proc> {
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc { name, child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the first line on its stdout (what each command prints once it is ready).
    async fn ready(&mut self, within: Duration) -> Result<String> {
        let out = self.child.stdout.take().context("stdout")?;
        let mut lines =
            tokio::io::BufReader::new(tokio::process::ChildStdout::from_std(out)?).lines();
        tokio::time::timeout(within, lines.next_line())
            .await
            .with_context(|| format!("{} was not ready within {within:?}", self.name))??
            .with_context(|| format!("{} exited", self.name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        use rustix::process::{Pid, Signal, kill_process};
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pod startup as a watch sees it.
#[derive(Default)]
struct Startup {
    /// uid → (namespace is the churn's, first seen).
    pending: HashMap<String, (bool, Instant)>,
    running: usize,
    deploy: Vec<Duration>,
    churn: Vec<Duration>,
}

fn running_and_ready(p: &Pod) -> bool {
    let Some(s) = &p.status else { return false };
    s.phase.as_deref() == Some("Running")
        && s.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Follows every pod: when it is first seen, when it first runs Ready, how many run now.
fn track(client: kube::Client, startup: Arc<Mutex<Startup>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen_running = std::collections::HashSet::new();
        let mut events = watcher(Api::<Pod>::all(client), watcher::Config::default()).boxed();
        while let Some(e) = events.next().await {
            let (pods, deleted) = match e {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => (vec![p], false),
                Ok(watcher::Event::Delete(p)) => (vec![p], true),
                _ => continue,
            };
            let now = Instant::now();
            let mut st = startup.lock().unwrap_or_else(|p| p.into_inner());
            for p in pods {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                let churn = p.metadata.namespace.as_deref() == Some(CHURN_NS);
                if deleted {
                    st.pending.remove(&uid);
                    if seen_running.remove(&uid) {
                        st.running -= 1;
                    }
                    continue;
                }
                if seen_running.contains(&uid) {
                    continue;
                }
                let first = st.pending.entry(uid.clone()).or_insert((churn, now)).1;
                if running_and_ready(&p) {
                    st.pending.remove(&uid);
                    seen_running.insert(uid);
                    st.running += 1;
                    let took = now - first;
                    if churn {
                        st.churn.push(took);
                    } else {
                        st.deploy.push(took);
                    }
                }
            }
        }
    })
}

const CHURN_NS: &str = "bench-churn";

/// Memory samples: seconds since the start, then KiB of each process.
type MemorySamples = Arc<Mutex<Vec<(f64, Vec<u64>)>>>;

/// What the sampler keeps: memory, running pods over time, and each process's most open files
/// (sockets, mostly) seen in a sample.
struct Sampled {
    memory: MemorySamples,
    running: Arc<Mutex<Vec<(f64, f64)>>>,
    open_files: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

fn sample(pids: Vec<u32>, every: Duration, startup: Arc<Mutex<Startup>>, t0: Instant) -> Sampled {
    let (memory, running) = (MemorySamples::default(), Arc::<Mutex<Vec<_>>>::default());
    let open_files = Arc::new(Mutex::new(vec![0; pids.len()]));
    let (m, r, o) = (memory.clone(), running.clone(), open_files.clone());
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let t = t0.elapsed().as_secs_f64();
            let kib = pids.iter().map(|p| super::rss_kib(*p)).collect();
            m.lock().unwrap_or_else(|p| p.into_inner()).push((t, kib));
            let mut most = o.lock().unwrap_or_else(|p| p.into_inner());
            for (i, p) in pids.iter().enumerate() {
                let n = std::fs::read_dir(format!("/proc/{p}/fd")).map_or(0, |d| d.count());
                most[i] = most[i].max(n);
            }
            drop(most);
            let n = startup.lock().unwrap_or_else(|p| p.into_inner()).running;
            r.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((t, n as f64));
        }
    });
    Sampled {
        memory,
        running,
        open_files,
        task,
    }
}

/// A process's thread count (0 when it cannot be read).
fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn deployment(name: &str, replicas: usize) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app", "image": "registry.local/app:1",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                }]},
            },
        },
    }))
    .expect("a valid Deployment")
}

fn churn_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "churn"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "app", "image": "registry.local/app:1",
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            }],
        },
    }))
    .expect("a valid Pod")
}

/// `apiserver_request_duration_seconds` by (verb, resource): cumulative bucket counts by upper
/// bound (f64::INFINITY last).
type Histograms = BTreeMap<(String, String), Vec<(f64, f64)>>;

async fn scrape(client: &kube::Client) -> Result<String> {
    let req = axum::http::Request::get("/metrics").body(Vec::new())?;
    Ok(client.request_text(req).await?)
}

/// The watch caches' gauges (`apiserver_watch_cache_{objects,object_bytes,events,event_bytes}`)
/// by resource, in that order.
fn parse_caches(text: &str) -> BTreeMap<String, [f64; 4]> {
    let mut out: BTreeMap<String, [f64; 4]> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_watch_cache_") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once('{') else {
            continue;
        };
        let Some(i) = ["objects", "object_bytes", "events", "event_bytes"]
            .iter()
            .position(|n| *n == name)
        else {
            continue;
        };
        let Some((labels, value)) = sample_of(rest) else {
            continue;
        };
        let Some(key) = resource_key(&labels) else {
            continue;
        };
        out.entry(key).or_default()[i] = value.parse().unwrap_or(0.0);
    }
    out
}

fn cache_table(title: &str, caches: &BTreeMap<String, [f64; 4]>) {
    let mut rows: Vec<_> = caches.iter().collect();
    rows.sort_by(|a, b| (b.1[1] + b.1[3]).total_cmp(&(a.1[1] + a.1[3])));
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let total: f64 = rows.iter().map(|(_, v)| v[1] + v[3]).sum();
    println!("#### {title}: {:.0} MiB in all\n", mib(total));
    println!("| resource | objects | their MiB | history events | their MiB |");
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in rows.iter().take(8) {
        println!(
            "| {name} | {:.0} | {:.1} | {:.0} | {:.1} |",
            v[0],
            mib(v[1]),
            v[2],
            mib(v[3])
        );
    }
    println!();
}

fn parse_histograms(text: &str) -> Histograms {
    let mut out = Histograms::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_duration_seconds_bucket{") else {
            continue;
        };
        let Some((labels, value)) = sample_of(rest) else {
            continue;
        };
        let (Some(verb), Some(resource), Some(le)) =
            (labels.get("verb"), resource_key(&labels), labels.get("le"))
        else {
            continue;
        };
        let le = if *le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        let count = value.parse().unwrap_or(0.0);
        out.entry((verb.to_string(), resource))
            .or_default()
            .push((le, count));
    }
    for b in out.values_mut() {
        b.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// One Prometheus text sample, after its metric name's `{`: its labels and its value.
fn sample_of(rest: &str) -> Option<(HashMap<&str, &str>, &str)> {
    let (labels, value) = rest.rsplit_once("} ")?;
    let labels = labels
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k, v.trim_matches('"')))
        })
        .collect();
    Some((labels, value.trim()))
}

/// `pods`, or `deployments.apps`: a sample's resource and group.
fn resource_key(labels: &HashMap<&str, &str>) -> Option<String> {
    let resource = labels.get("resource")?;
    Some(match labels.get("group") {
        Some(g) if !g.is_empty() => format!("{resource}.{g}"),
        _ => resource.to_string(),
    })
}

/// `after - before`, bucket by bucket.
fn since(after: &Histograms, before: &Histograms) -> Histograms {
    after
        .iter()
        .map(|(k, b)| {
            let prev = before.get(k);
            let d = b
                .iter()
                .enumerate()
                .map(|(i, (le, n))| (*le, n - prev.and_then(|p| p.get(i)).map_or(0.0, |p| p.1)))
                .collect();
            (k.clone(), d)
        })
        .filter(|(_, b): &(_, Vec<(f64, f64)>)| b.last().is_some_and(|l| l.1 > 0.0))
        .collect()
}

/// The q-quantile of a cumulative histogram as Prometheus' histogram_quantile estimates it
/// (linear within the bucket); None when it falls in the +Inf bucket.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return None;
            }
            let width = n - lower.1;
            let frac = if width > 0.0 {
                (rank - lower.1) / width
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, n);
    }
    None
}

fn latency_table(title: &str, h: &Histograms) {
    println!("#### {title}\n");
    println!("| verb | resource | calls | p50 | p99 | SLO (p99) |");
    println!("|---|---|---:|---:|---:|---|");
    let seconds = |v: Option<f64>| match v {
        Some(s) if s < 1.0 => format!("{:.1} ms", s * 1000.0),
        Some(s) => format!("{s:.2} s"),
        None => "> 5 s".into(),
    };
    for ((verb, resource), b) in h {
        let calls = b.last().map_or(0.0, |l| l.1);
        let p99 = quantile(b, 0.99);
        let limit = if verb == "list" { 30.0 } else { 1.0 };
        let ok = if p99.is_some_and(|p| p <= limit) {
            format!("≤ {limit} s: met")
        } else {
            format!("≤ {limit} s: **missed**")
        };
        println!(
            "| {verb} | {resource} | {calls:.0} | {} | {} | {ok} |",
            seconds(quantile(b, 0.5)),
            seconds(p99)
        );
    }
    println!();
}

fn percentile(v: &mut [Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

pub async fn run(b: ClusterBench) -> Result<()> {
    if b.replicas == 0 || b.namespaces == 0 {
        bail!("--replicas and --namespaces must be at least 1");
    }
    let dir = tempfile::Builder::new()
        .prefix("bench-cluster-")
        .tempdir_in(&b.scratch)?;
    let data = dir.path().join("data");
    let log = |n: &str| dir.path().join(format!("{n}.log"));
    let t0 = Instant::now();
    let mut up = Proc::spawn(
        "capstan up",
        &[
            "up",
            "--runtime",
            "none",
            "--controllers",
            "none",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().context("path")?,
        ],
        &log("up"),
    )?;
    up.ready(Duration::from_secs(60)).await?;
    let kubeconfig = data.join("kubeconfig");
    let kc = kubeconfig.to_str().context("path")?;
    let client = crate::certs::client_of(&std::fs::read_to_string(&kubeconfig)?).await?;
    let mut controllers = Proc::spawn(
        "capstan controllers",
        &[
            "--kubeconfig",
            kc,
            "controllers",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &log("controllers"),
    )?;
    let nodes_str = b.nodes.to_string();
    let registering = Instant::now();
    let mut sim = Proc::spawn(
        "capstan sim",
        &[
            "--kubeconfig",
            kc,
            "sim",
            "--nodes",
            &nodes_str,
            "--status-every-seconds",
            "60",
        ],
        &log("sim"),
    )?;
    let pids = vec![up.pid(), controllers.pid(), sim.pid()];
    let startup = Arc::new(Mutex::new(Startup::default()));
    let tracker = track(client.clone(), startup.clone());
    let Sampled {
        memory,
        running,
        open_files,
        task: sampler,
    } = sample(
        pids,
        Duration::from_millis(b.sample_ms),
        startup.clone(),
        t0,
    );
    sim.ready(Duration::from_secs(600)).await?;
    let registered = registering.elapsed();
    // The controllers print nothing on stdout; their metrics answer once they run.
    drop(controllers.child.stdout.take());
    let mut marks = vec![(t0.elapsed().as_secs_f64(), "deploy".to_string())];

    // Deployments.
    let h0 = parse_histograms(&scrape(&client).await?);
    let deploying = Instant::now();
    let count = b.pods.div_ceil(b.replicas);
    let nss: Vec<String> = (0..b.namespaces).map(|i| format!("bench-{i}")).collect();
    for ns in nss.iter().map(String::as_str).chain([CHURN_NS]) {
        let api: Api<Namespace> = Api::all(client.clone());
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    }
    let (c, nss2, replicas, total) = (client.clone(), nss.clone(), b.replicas, b.pods);
    super::drive(8, count, move |i| {
        let api: Api<Deployment> = Api::namespaced(c.clone(), &nss2[i % nss2.len()]);
        let n = replicas.min(total - i * replicas);
        async move {
            api.create(&PostParams::default(), &deployment(&format!("d-{i}"), n))
                .await?;
            Ok(())
        }
    })
    .await?;
    let created = deploying.elapsed();
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let n = startup.lock().unwrap_or_else(|p| p.into_inner()).running;
        if n >= b.pods {
            break;
        }
        if Instant::now() > deadline {
            bail!("{n} of {} pods ran within 30 minutes", b.pods);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deployed = deploying.elapsed();
    // Converged: every Deployment reports all its replicas available (the controllers have
    // caught up with the burst), so the churn measures a steady cluster.
    let deployments: Api<Deployment> = Api::all(client.clone());
    loop {
        let list = deployments.list(&ListParams::default()).await?.items;
        let available = list
            .iter()
            .filter(|d| {
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                d.status.as_ref().and_then(|s| s.available_replicas) == Some(want)
            })
            .count();
        if available == count {
            break;
        }
        if Instant::now() > deadline {
            bail!("{available} of {count} Deployments were available within 30 minutes");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let converged = deploying.elapsed();
    let text = scrape(&client).await?;
    let (h1, caches_deployed) = (parse_histograms(&text), parse_caches(&text));
    let memory_deployed = memory
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .last()
        .cloned();
    let threads_deployed: Vec<u64> = [up.pid(), controllers.pid(), sim.pid()]
        .iter()
        .map(|p| threads(*p))
        .collect();

    // Churn.
    marks.push((t0.elapsed().as_secs_f64(), "churn".to_string()));
    let churn = run_churn(&client, &b, &nss).await?;
    let text = scrape(&client).await?;
    let (h2, caches_churned) = (parse_histograms(&text), parse_caches(&text));
    marks.push((t0.elapsed().as_secs_f64(), "end".to_string()));
    sampler.abort();
    tracker.abort();
    let (mut deploy_lat, mut churn_lat) = {
        let st = startup.lock().unwrap_or_else(|p| p.into_inner());
        (st.deploy.clone(), st.churn.clone())
    };
    let memory = memory.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let running = running.lock().unwrap_or_else(|p| p.into_inner()).clone();
    drop(sim);
    drop(controllers);
    drop(up);

    // Report.
    println!(
        "## `capstan bench cluster`: {} simulated nodes, {} pods in {} Deployments, churn {} calls/s for {} s\n",
        b.nodes, b.pods, count, b.churn_rate, b.churn_seconds
    );
    println!("| step | time |");
    println!("|---|---:|");
    println!(
        "| {} nodes registered and Ready | {:.1} s |",
        b.nodes,
        registered.as_secs_f64()
    );
    println!(
        "| {count} Deployments created (8 clients) | {:.1} s |",
        created.as_secs_f64()
    );
    println!(
        "| all {} pods Running and Ready, from the first create | {:.1} s ({:.0} pods/s) |",
        b.pods,
        deployed.as_secs_f64(),
        b.pods as f64 / deployed.as_secs_f64()
    );
    println!(
        "| every Deployment's status says all replicas available | {:.1} s |",
        converged.as_secs_f64()
    );
    println!();
    println!("#### Pod startup (first seen by a watch → Running and Ready; SLO p99 ≤ 5 s)\n");
    println!("| phase | pods | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in [("Deployments", &mut deploy_lat), ("churn", &mut churn_lat)] {
        println!(
            "| {name} | {} | {:.2} s | **{:.2} s** | {:.2} s |",
            v.len(),
            percentile(v, 0.5).as_secs_f64(),
            percentile(v, 0.99).as_secs_f64(),
            percentile(v, 1.0).as_secs_f64()
        );
    }
    println!();
    latency_table(
        "API server latency while the Deployments ran up (its histogram; every caller)",
        &since(&h1, &h0),
    );
    latency_table(
        "API server latency during the churn (its histogram; every caller)",
        &since(&h2, &h1),
    );
    println!("#### The bench's own calls during the churn (client side)\n");
    println!("| call | calls | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    for (name, mut v) in churn {
        let n = v.len();
        println!(
            "| {name} | {n} | {} | {} | {} |",
            super::ms(percentile(&mut v, 0.5)),
            super::ms(percentile(&mut v, 0.99)),
            super::ms(percentile(&mut v, 1.0))
        );
    }
    println!();
    cache_table(
        "The API server's watch caches once the Deployments ran",
        &caches_deployed,
    );
    cache_table("… and at the end of the churn", &caches_churned);
    let names = [
        "API server (`capstan up`)",
        "controllers",
        "simulated nodes",
    ];
    let mib = |k: u64| k as f64 / 1024.0;
    println!("#### Resident memory (MiB)\n");
    let open_files = open_files.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!(
        "| process | Deployments up | peak | end of churn | threads once up | most open files |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let column = |i: usize| memory.iter().map(move |(_, k)| k[i]);
    let plane = |k: &Vec<u64>| k[0] + k[1];
    for (i, name) in names.iter().enumerate() {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {} | {} |",
            memory_deployed.as_ref().map_or(0.0, |m| mib(m.1[i])),
            mib(column(i).max().unwrap_or(0)),
            memory.last().map_or(0.0, |m| mib(m.1[i])),
            threads_deployed[i],
            open_files[i]
        );
    }
    println!(
        "| **control plane (API server + controllers)** | {:.0} | **{:.0}** | {:.0} | | |",
        memory_deployed.as_ref().map_or(0.0, |m| mib(plane(&m.1))),
        mib(memory.iter().map(|m| plane(&m.1)).max().unwrap_or(0)),
        memory.last().map_or(0.0, |m| mib(plane(&m.1)))
    );
    println!();
    if let Some(dir) = &b.plot_dir {
        std::fs::create_dir_all(dir)?;
        let mut series: Vec<Series> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Series {
                name: n.replace('`', ""),
                points: memory.iter().map(|(t, k)| (*t, mib(k[i]))).collect(),
            })
            .collect();
        series.push(Series {
            name: "control plane".into(),
            points: memory.iter().map(|(t, k)| (*t, mib(plane(k)))).collect(),
        });
        Chart {
            title: format!(
                "Resident memory: {} nodes, {} pods, churn {}/s",
                b.nodes, b.pods, b.churn_rate
            ),
            x_label: "seconds".into(),
            y_label: "MiB".into(),
            series,
            marks: marks.clone(),
        }
        .write_png(&dir.join("cluster-memory.png"))?;
        Chart {
            title: "Pods running and Ready".into(),
            x_label: "seconds".into(),
            y_label: "pods".into(),
            series: vec![Series {
                name: "running".into(),
                points: running,
            }],
            marks,
        }
        .write_png(&dir.join("cluster-pods.png"))?;
        println!(
            "Plots: {}/cluster-memory.png, {}/cluster-pods.png\n",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// The churn: creates and deletes alternating at `churn_rate` calls per second (each in its own
/// task, so a slow call does not slow the rate), a get of one pod every second, and
/// cluster-wide lists of pods and nodes every 10 s. Returns each call's latencies.
async fn run_churn(
    client: &kube::Client,
    b: &ClusterBench,
    nss: &[String],
) -> Result<Vec<(String, Vec<Duration>)>> {
    type Lat = Arc<Mutex<BTreeMap<&'static str, Vec<Duration>>>>;
    let lat: Lat = Arc::default();
    let record = |lat: &Lat, name: &'static str, d: Duration| {
        lat.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name)
            .or_default()
            .push(d);
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), CHURN_NS);
    let errors: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let failed = |errors: &Mutex<BTreeMap<String, usize>>, e: kube::Error| {
        let what = match e {
            kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
            e => e.to_string().chars().take(80).collect(),
        };
        *errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(what)
            .or_default() += 1;
    };
    let mut calls = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / b.churn_rate.max(1) as f64));
    let end = Instant::now() + Duration::from_secs(b.churn_seconds);
    let (mut made, mut removed, mut n) = (0usize, 0usize, 0u64);
    let mut next_read = Instant::now();
    let mut next_list = Instant::now();
    while Instant::now() < end {
        tick.tick().await;
        n += 1;
        let (api, call_lat, errors) = (pods.clone(), lat.clone(), errors.clone());
        // Creates run ahead of deletes by up to 50 pods, so the churn keeps ~50 pods alive.
        if n % 2 == 1 || made < removed + 50 {
            let name = format!("churn-{made}");
            made += 1;
            calls.push(tokio::spawn(async move {
                let t = Instant::now();
                match api.create(&PostParams::default(), &churn_pod(&name)).await {
                    Ok(_) => record(&call_lat, "create pod", t.elapsed()),
                    Err(e) => failed(&errors, e),
                }
            }));
        } else {
            let name = format!("churn-{removed}");
            removed += 1;
            calls.push(tokio::spawn(async move {
                let t = Instant::now();
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => record(&call_lat, "delete pod", t.elapsed()),
                    Err(e) => failed(&errors, e),
                }
            }));
        }
        if Instant::now() >= next_read {
            next_read += Duration::from_secs(1);
            let api: Api<Pod> = Api::namespaced(client.clone(), &nss[0]);
            let lat = lat.clone();
            calls.push(tokio::spawn(async move {
                let t = Instant::now();
                let lp = ListParams::default().limit(1);
                if let Ok(l) = api.list(&lp).await
                    && let Some(name) = l.items.first().and_then(|p| p.metadata.name.clone())
                {
                    let t = Instant::now();
                    if api.get(&name).await.is_ok() {
                        record(&lat, "get pod", t.elapsed());
                    }
                }
                record(&lat, "list pods (namespace, limit 1)", t.elapsed());
            }));
        }
        if Instant::now() >= next_list {
            next_list += Duration::from_secs(10);
            let (c, lat) = (client.clone(), lat.clone());
            calls.push(tokio::spawn(async move {
                let t = Instant::now();
                if Api::<Pod>::all(c.clone())
                    .list(&ListParams::default())
                    .await
                    .is_ok()
                {
                    record(&lat, "list pods (cluster)", t.elapsed());
                }
                let t = Instant::now();
                if Api::<Node>::all(c)
                    .list(&ListParams::default())
                    .await
                    .is_ok()
                {
                    record(&lat, "list nodes (cluster)", t.elapsed());
                }
            }));
        }
    }
    for c in calls {
        let _ = c.await;
    }
    for (what, n) in errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        println!("({n} churn calls failed: {what})\n");
    }
    let lat = std::mem::take(&mut *lat.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(lat.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# TYPE apiserver_request_duration_seconds histogram
apiserver_request_duration_seconds_bucket{group="",resource="pods",verb="create",le="0.01"} 50
apiserver_request_duration_seconds_bucket{group="",resource="pods",verb="create",le="0.1"} 90
apiserver_request_duration_seconds_bucket{group="",resource="pods",verb="create",le="1"} 100
apiserver_request_duration_seconds_bucket{group="",resource="pods",verb="create",le="+Inf"} 100
apiserver_request_duration_seconds_bucket{group="apps",resource="deployments",verb="list",le="0.01"} 0
apiserver_request_duration_seconds_bucket{group="apps",resource="deployments",verb="list",le="+Inf"} 4
apiserver_request_total{code="201",group="",resource="pods",verb="create"} 100
"#;

    #[test]
    fn histograms_are_read_per_verb_and_resource() {
        let h = parse_histograms(METRICS);
        assert_eq!(h.len(), 2);
        let pods = &h[&("create".to_string(), "pods".to_string())];
        assert_eq!(pods.len(), 4);
        // Rank 50 ends the first bucket; rank 99 is 90% of the way through (0.1, 1].
        assert_eq!(quantile(pods, 0.5), Some(0.01));
        let p99 = quantile(pods, 0.99).unwrap();
        assert!((p99 - 0.91).abs() < 1e-9, "{p99}");
        // Every list took longer than the last finite bucket.
        let lists = &h[&("list".to_string(), "deployments.apps".to_string())];
        assert_eq!(quantile(lists, 0.5), None);
    }

    #[test]
    fn watch_cache_gauges_are_read_per_resource() {
        let text = "apiserver_watch_cache_objects{group=\"\",resource=\"pods\"} 3\n\
                    apiserver_watch_cache_object_bytes{group=\"\",resource=\"pods\"} 9000\n\
                    apiserver_watch_cache_events{group=\"apps\",resource=\"deployments\"} 7\n\
                    apiserver_watch_cache_objects_other{group=\"\",resource=\"pods\"} 1\n";
        let c = parse_caches(text);
        assert_eq!(c["pods"], [3.0, 9000.0, 0.0, 0.0]);
        assert_eq!(c["deployments.apps"], [0.0, 0.0, 7.0, 0.0]);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_phase_counts_only_its_own_calls() {
        let before = parse_histograms(METRICS);
        let after = parse_histograms(&METRICS.replace("} 100", "} 110").replace("} 90", "} 95"));
        let d = since(&after, &before);
        // Lists did not change: the phase has no row for them.
        assert_eq!(d.len(), 1);
        let pods = &d[&("create".to_string(), "pods".to_string())];
        assert_eq!(
            pods.iter().map(|b| b.1).collect::<Vec<_>>(),
            [0.0, 5.0, 10.0, 10.0]
        );
    }
}
