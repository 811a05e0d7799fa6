//! `capstan bench pods`: pod startup latency on containerd — created through the API with
//! their node set, Running observed through a watch — for 1 pod at a time and for 30 at once,
//! against the raw floors in the same run: the same pods started straight through CRI
//! (RunPodSandbox, CreateContainer, StartContainer) and `ctr run -d`. Also the agent's RSS
//! with 30 pods running. Needs root, containerd, runc, the CNI plugins, umoci and skopeo.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capstan_node_agent::containerd;
use capstan_node_agent::runtime::cri::CriRuntime;
use capstan_node_agent::runtime::{ContainerConfig, Runtime, SandboxConfig};
use clap::Args;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;

use super::{LocalServer, ms};

#[derive(Debug, Args)]
pub struct PodsBench {
    /// Sequential single-pod starts measured (the median and p99 are reported).
    #[arg(long, default_value_t = 10)]
    single: usize,
    /// Pods started at once.
    #[arg(long, default_value_t = 30)]
    burst: usize,
    /// The busybox and pause OCI archives; built with e2e/images/build.sh when absent (without
    /// pause.tar, the agent's own pause image is made and imported).
    #[arg(long)]
    image_dir: Option<PathBuf>,
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
    /// The agent's `--stats-interval` (0: no resource sampling), to compare the metrics
    /// pipeline's cost against an agent without it.
    #[arg(long, default_value = "10s")]
    agent_stats_interval: String,
    /// How long the agent's CPU is measured with the burst's pods running.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
}

const NODE: &str = "bench-node";

/// The nftables table of the bench agent's service proxy.
const PROXY_TABLE: &str = "capstanbenchpods";

fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return Duration::ZERO;
    }
    s[((s.len() as f64 - 1.0) * q).round() as usize]
}

fn sandbox(i: usize, attempt: &str, log_root: &Path) -> SandboxConfig {
    let uid = format!("raw-{attempt}-{i}");
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("io.capstan.bench".to_string(), "raw".to_string());
    SandboxConfig {
        name: format!("raw-{attempt}-{i}"),
        namespace: "bench".into(),
        uid: uid.clone(),
        labels,
        log_directory: log_root.join(&uid),
        hostname: format!("raw-{i}"),
        cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
        ..Default::default()
    }
}

fn sleeper() -> ContainerConfig {
    ContainerConfig {
        name: "app".into(),
        image: "localhost/busybox:1".into(),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "app/0.log".into(),
        ..Default::default()
    }
}

/// One pod straight through CRI: sandbox, container, start (returns once it runs).
async fn raw_pod(rt: &CriRuntime, cfg: SandboxConfig) -> Result<Duration> {
    let t = Instant::now();
    let sb = rt.run_sandbox(&cfg).await?;
    let c = rt.create_container(&sb.id, &sleeper()).await?;
    rt.start_container(&c.id).await?;
    Ok(t.elapsed())
}

async fn clear(rt: &CriRuntime) -> Result<()> {
    for sb in rt.list_sandboxes().await? {
        rt.stop_sandbox(&sb.id).await?;
        rt.remove_sandbox(&sb.id).await?;
    }
    Ok(())
}

fn pod(name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": "localhost/busybox:1", "command": ["sleep", "3600"]}]
        }
    }))?)
}

/// Creates `names` at once and returns each one's create → Running (seen by a watch) time.
async fn start_pods(pods: &Api<Pod>, names: &[String]) -> Result<Vec<Duration>> {
    let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
    // The watch is open before the first create.
    while let Some(ev) = events.next().await {
        if matches!(ev?, watcher::Event::InitDone) {
            break;
        }
    }
    let mut started: HashMap<String, Instant> = HashMap::new();
    let creates = names.iter().map(|n| {
        let pods = pods.clone();
        let n = n.clone();
        async move {
            let t = Instant::now();
            pods.create(&PostParams::default(), &pod(&n)?).await?;
            Ok::<_, anyhow::Error>((n, t))
        }
    });
    for r in futures_util::future::join_all(creates).await {
        let (n, t) = r?;
        started.insert(n, t);
    }
    let mut done: HashMap<String, Duration> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while done.len() < names.len() {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .context("pods not Running within 120 s")?;
        let Some(ev) = ev else {
            bail!("the watch ended")
        };
        if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev? {
            let name = p.metadata.name.clone().unwrap_or_default();
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running
                && !done.contains_key(&name)
                && let Some(t) = started.get(&name)
            {
                done.insert(name, t.elapsed());
            }
        }
    }
    Ok(names.iter().filter_map(|n| done.get(n).copied()).collect())
}

async fn delete_all(pods: &Api<Pod>) -> Result<()> {
    pods.delete_collection(&DeleteParams::default(), &Default::default())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pods.list(&Default::default()).await?.items.is_empty() {
        if Instant::now() > deadline {
            bail!("pods not gone within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

struct Cleanup {
    containerd: Option<containerd::Containerd>,
    agent: Option<std::process::Child>,
    bridge: String,
    socket: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        // Pods first (through CRI), then containerd, then the bridge.
        let socket = self.socket.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let cri = CriRuntime::connect(&socket, Path::new("/sys/fs/cgroup"))
                    .await
                    .ok()?;
                clear(&cri).await.ok()
            })
        })
        .join();
        if let Some(c) = self.containerd.take() {
            c.stop();
        }
        super::delete_link(&self.bridge);
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", PROXY_TABLE])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

pub async fn run(b: PodsBench) -> Result<()> {
    if !rustix::process::geteuid().is_root() || !containerd::available() {
        bail!("bench pods needs root, containerd, runc and the CNI plugins");
    }
    let scratch = tempfile::Builder::new()
        .prefix("capstan-bench-pods-")
        .tempdir_in(&b.scratch)?;
    let image_dir = super::test_images(b.image_dir.as_deref(), scratch.path())?;
    let cfg = containerd::Config {
        dir: scratch.path().join("containerd"),
        pod_cidr: "10.244.0.0/16".into(),
        bridge: "captbench0".into(),
        sandbox_image: "localhost/pause:1".into(),
    };
    let mut cleanup = Cleanup {
        containerd: None,
        agent: None,
        bridge: cfg.bridge.clone(),
        socket: cfg.socket(),
    };
    let c = containerd::start(&cfg).await?;
    let socket = c.socket.clone();
    cleanup.containerd = Some(c);
    containerd::import(&socket, &containerd::archives_in(&image_dir)).await?;
    let cri = CriRuntime::connect(&socket, Path::new("/sys/fs/cgroup")).await?;
    capstan_node_agent::pause_image::ensure(
        &cri,
        &socket,
        &cfg.sandbox_image,
        &scratch.path().join("pause-image"),
    )
    .await?;
    let logs = scratch.path().join("raw-logs");

    println!("# Pod startup on containerd ({})\n", cri.version());
    println!(
        "`capstan bench pods --single {} --burst {}`: busybox `sleep 3600` pods, bridge CNI, overlayfs; 2 cores.\n",
        b.single, b.burst
    );

    // The floors: CRI directly, then `ctr run -d`.
    let mut raw_single = Vec::new();
    for i in 0..b.single {
        raw_single.push(raw_pod(&cri, sandbox(i, "single", &logs)).await?);
        clear(&cri).await?;
    }
    let t = Instant::now();
    let burst = (0..b.burst).map(|i| raw_pod(&cri, sandbox(i, "burst", &logs)));
    let raw_burst: Vec<Duration> = futures_util::future::join_all(burst)
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let raw_burst_all = t.elapsed();
    clear(&cri).await?;
    let ctr = containerd::which("ctr").context("ctr is not installed")?;
    let mut ctr_single = Vec::new();
    for i in 0..b.single {
        let id = format!("bench-ctr-{i}");
        let t = Instant::now();
        let ok = std::process::Command::new(&ctr)
            .arg("--address")
            .arg(&socket)
            .args([
                "-n",
                "k8s.io",
                "run",
                "-d",
                "localhost/busybox:1",
                &id,
                "sleep",
                "3600",
            ])
            .stdout(std::process::Stdio::null())
            .status()?;
        ctr_single.push(t.elapsed());
        if !ok.success() {
            bail!("ctr run failed");
        }
        for args in [
            vec!["task", "kill", "-s", "KILL", &id],
            vec!["task", "rm", "-f", &id],
            vec!["containers", "rm", &id],
        ] {
            let _ = std::process::Command::new(&ctr)
                .arg("--address")
                .arg(&socket)
                .args(["-n", "k8s.io"])
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            if args[0] == "task" && args[1] == "kill" {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    // Capstan: an API server in this process, the agent as its own process (for its RSS).
    let server = LocalServer::start(scratch.path(), "api-").await?;
    let kubeconfig = scratch.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let agent = std::process::Command::new(std::env::current_exe()?)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "agent",
            "--runtime",
            "cri",
            "--node-name",
            NODE,
            "--port",
            "0",
            "--node-ip",
            "127.0.0.1",
            // The service proxy runs as on any node, in a table of the bench's own that the
            // clean-up removes (a killed agent cannot).
            "--proxy-table",
            PROXY_TABLE,
            "--stats-interval",
            &b.agent_stats_interval,
        ])
        .arg("--cri-socket")
        .arg(&socket)
        .arg("--root-dir")
        .arg(scratch.path().join("agent"))
        // CAPSTAN_BENCH_AGENT_LOG: the agent's log filter (its stderr is the bench's), for
        // profiling a run (`capstan_node_agent=debug` times each pod's actions).
        .env(
            "RUST_LOG",
            std::env::var("CAPSTAN_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let agent_pid = agent.id();
    cleanup.agent = Some(agent);
    let client = kube::Client::try_from(kube::Config::new(server.url.parse()?))?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.get_opt(NODE).await?.is_none() {
        if Instant::now() > deadline {
            bail!("the agent did not register within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle_rss = super::rss_kib(agent_pid);
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let mut single = Vec::new();
    for i in 0..b.single {
        single.extend(start_pods(&pods, &[format!("single-{i}")]).await?);
        delete_all(&pods).await?;
    }
    let names: Vec<String> = (0..b.burst).map(|i| format!("burst-{i}")).collect();
    let t = Instant::now();
    let burst = start_pods(&pods, &names).await?;
    let burst_all = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = super::cpu_seconds(agent_pid)?;
    tokio::time::sleep(Duration::from_secs(b.idle_seconds)).await;
    let cpu_per_min = (super::cpu_seconds(agent_pid)? - cpu0) * 60.0 / b.idle_seconds.max(1) as f64;
    let busy_rss = super::rss_kib(agent_pid);
    delete_all(&pods).await?;

    println!("| path | pods | p50 | p99 | all running after |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, n: usize, v: &[Duration], all: Option<Duration>| {
        println!(
            "| {name} | {n} | {} | {} | {} |",
            ms(quantile(v, 0.5)),
            ms(quantile(v, 0.99)),
            all.map(ms).unwrap_or_else(|| "—".into())
        );
    };
    row("`ctr run -d` (no CNI, no sandbox)", 1, &ctr_single, None);
    row("raw CRI: sandbox + create + start", 1, &raw_single, None);
    row("Capstan: create → Running (watch)", 1, &single, None);
    row(
        "raw CRI, concurrently",
        b.burst,
        &raw_burst,
        Some(raw_burst_all),
    );
    row("Capstan, created at once", b.burst, &burst, Some(burst_all));
    let ratio = quantile(&single, 0.5).as_secs_f64() / quantile(&raw_single, 0.5).as_secs_f64();
    println!(
        "\nCapstan p50 / raw CRI p50 (1 pod): {ratio:.2}x. Agent RSS: {:.1} MiB idle, {:.1} MiB with {} pods running.",
        idle_rss as f64 / 1024.0,
        busy_rss as f64 / 1024.0,
        b.burst
    );
    println!(
        "Agent CPU with {} pods running (--stats-interval {}), over {} s: {cpu_per_min:.2} s per minute.",
        b.burst, b.agent_stats_interval, b.idle_seconds
    );
    drop(cleanup);
    drop(server);
    Ok(())
}
