//! The agent's Node: registration with what the machine has (cpu, memory, pods,
//! ephemeral-storage; addresses; nodeInfo), the Lease in kube-node-lease renewed every quarter
//! of its duration (40 s → every 10 s, as the kubelet; node-lifecycle reads it as the
//! heartbeat), and the NodeStatus — its conditions judged at every renewal from the machine
//! and the runtime ([`crate::conditions`]) — posted at start, when a condition changes, when
//! the Node's conditions differ from the agent's (the node-lifecycle controller marked them
//! Unknown while the agent was away) and at least every minute, through /status as the
//! kubelet does.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;

use crate::conditions::{Signals, Thresholds, Tracker, evaluate};
use crate::runtime::Runtime;

/// The kubelet's nodeLeaseDurationSeconds default.
pub const LEASE_DURATION_SECONDS: i64 = 40;
pub const STATUS_EVERY: Duration = Duration::from_secs(60);

/// How often a Lease of `duration_seconds` is renewed: a quarter of it
/// (the kubelet's NodeLeaseRenewIntervalFraction), at least every 250 ms.
pub fn lease_renew_interval(duration_seconds: i64) -> Duration {
    Duration::from_millis((duration_seconds.max(1) as u64 * 1000 / 4).max(250))
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub host_ip: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub max_pods: u32,
    pub runtime_version: String,
    /// Where pod data lives (its filesystem's size is the ephemeral-storage capacity).
    pub root_dir: std::path::PathBuf,
    /// The agent's HTTP port (logs, metrics): status.daemonEndpoints.kubeletEndpoint.
    pub port: u16,
    /// Cluster DNS's address for pods with dnsPolicy ClusterFirst (the kubelet's
    /// `--cluster-dns`); without one they get the host's resolv.conf, as on Kubernetes.
    pub cluster_dns: Vec<String>,
    /// The cluster's DNS domain (`--cluster-domain`, default `cluster.local`).
    pub cluster_domain: String,
    /// The node Lease's duration (`--node-lease-duration-seconds`, default 40); renewed every
    /// quarter of it.
    pub lease_duration_seconds: i64,
    /// The pressure conditions' thresholds (`--eviction-hard`).
    pub eviction_hard: Thresholds,
}

/// cpu, memory, pods and ephemeral-storage of this machine, as Quantity strings.
pub fn capacity(cfg: &NodeConfig) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let info = rustix::system::sysinfo();
    let memory_ki = (info.totalram as u128 * info.mem_unit as u128) / 1024;
    let storage_ki = rustix::fs::statvfs(&cfg.root_dir)
        .map(|s| (s.f_blocks as u128 * s.f_frsize as u128) / 1024)
        .unwrap_or(0);
    json!({
        "cpu": cpus.to_string(),
        "memory": format!("{memory_ki}Ki"),
        "pods": cfg.max_pods.to_string(),
        "ephemeral-storage": format!("{storage_ki}Ki"),
    })
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The status the agent posts, with `conditions` as [`Tracker::render`] made them.
pub fn node_status(cfg: &NodeConfig, conditions: Value) -> Value {
    let cap = capacity(cfg);
    let uname = rustix::system::uname();
    json!({
        "capacity": cap, "allocatable": cap,
        "conditions": conditions,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.port}},
        "addresses": [
            {"type": "InternalIP", "address": cfg.host_ip},
            {"type": "Hostname", "address": cfg.name},
        ],
        "nodeInfo": {
            "kubeletVersion": concat!("v1.33.0-capstan-", env!("CARGO_PKG_VERSION")),
            "containerRuntimeVersion": cfg.runtime_version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a },
            "osImage": os_image(),
            "kernelVersion": uname.release().to_string_lossy(),
            "machineID": read_trimmed("/etc/machine-id"),
            "systemUUID": read_trimmed("/sys/class/dmi/id/product_uuid"),
            "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
        },
    })
}

/// The Node annotation naming the directory that holds the node's local-path volumes.
pub const LOCAL_PATH_DIR: &str = "capstan.dev/local-path-dir";

/// `ROOT/storage`: where the local-path provisioner puts this node's volumes.
pub fn local_path_dir(root: &std::path::Path) -> String {
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    root.join("storage").display().to_string()
}

/// Creates the Node (or takes over an existing one of the same name).
pub async fn register(client: &kube::Client, cfg: &NodeConfig) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = cfg.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), cfg.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert(
        "kubernetes.io/arch".into(),
        match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        }
        .into(),
    );
    // Where this node's local-path volumes live (the provisioner reads it).
    let annotations = json!({LOCAL_PATH_DIR: local_path_dir(&cfg.root_dir)});
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": cfg.name, "labels": labels, "annotations": annotations},
        "spec": {},
    }))
    .map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!(node = %cfg.name, "node registered"),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Re-registering: our labels win, the rest (taints, cordon) is the user's.
            nodes
                .patch(
                    &cfg.name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"labels": labels, "annotations": annotations}}),
                    ),
                )
                .await?;
            tracing::info!(node = %cfg.name, "node already registered; taking it over");
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The Node's status now: conditions judged from the machine and `runtime`.
pub struct StatusPoster<R> {
    client: kube::Client,
    cfg: NodeConfig,
    runtime: std::sync::Arc<R>,
    thresholds: Thresholds,
    tracker: Tracker,
    last_post: Option<tokio::time::Instant>,
}

impl<R> std::fmt::Debug for StatusPoster<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusPoster")
            .field("node", &self.cfg.name)
            .field("tracker", &self.tracker)
            .finish()
    }
}

impl<R: Runtime> StatusPoster<R> {
    pub fn new(client: kube::Client, cfg: NodeConfig, runtime: std::sync::Arc<R>) -> Self {
        StatusPoster {
            client,
            thresholds: cfg.eviction_hard,
            cfg,
            runtime,
            tracker: Tracker::default(),
            last_post: None,
        }
    }

    /// Judges the conditions and posts the status when one changed, when `STATUS_EVERY` has
    /// passed since the last post, or the first time.
    pub async fn tick(&mut self) -> Result<bool, kube::Error> {
        let health = self.runtime.health().await;
        let signals = Signals::sample(&self.cfg.root_dir);
        let conditions = evaluate(&signals, &self.thresholds, &health);
        let (mut rendered, changed) = self.tracker.render(&conditions, jiff::Timestamp::now());
        let due = self.last_post.is_none_or(|t| t.elapsed() >= STATUS_EVERY);
        if !changed && !due {
            if !self.posted_differs(&rendered).await? {
                return Ok(false);
            }
            tracing::info!(node = %self.cfg.name, "the Node's conditions differ from this agent's (marked Unknown while it was away?): posting");
            self.tracker.reset();
            rendered = self.tracker.render(&conditions, jiff::Timestamp::now()).0;
        }
        if changed {
            for c in conditions
                .iter()
                .filter(|c| c.status != (c.type_ == "Ready"))
            {
                tracing::warn!(node = %self.cfg.name, condition = c.type_, reason = c.reason, message = %c.message, "node condition");
            }
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .patch_status(
                &self.cfg.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": node_status(&self.cfg, rendered)})),
            )
            .await?;
        self.last_post = Some(tokio::time::Instant::now());
        Ok(true)
    }

    /// Whether the Node's condition statuses are not those the agent last posted.
    async fn posted_differs(&self, rendered: &Value) -> Result<bool, kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes.get_status(&self.cfg.name).await?;
        let posted = node.status.and_then(|s| s.conditions).unwrap_or_default();
        let ours = rendered.as_array().map(Vec::as_slice).unwrap_or(&[]);
        Ok(ours.iter().any(|c| {
            !posted
                .iter()
                .any(|p| c["type"] == p.type_.as_str() && c["status"] == p.status.as_str())
        }))
    }
}

/// Renews the node's Lease every quarter of its duration and posts the node status on change and at least every
/// minute, until dropped.
pub async fn heartbeat<R: Runtime>(mut status: StatusPoster<R>) {
    let cfg = status.cfg.clone();
    let leases: Api<Lease> = Api::namespaced(status.client.clone(), "kube-node-lease");
    loop {
        let now = jiff::Timestamp::now();
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": cfg.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": cfg.name, "leaseDurationSeconds": cfg.lease_duration_seconds,
                     "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}});
        let pp = PatchParams::apply("capstan-agent").force();
        if let Err(e) = leases.patch(&cfg.name, &pp, &Patch::Apply(&lease)).await {
            tracing::warn!(node = %cfg.name, error = %e, "renewing the node lease failed");
        }
        if let Err(e) = status.tick().await {
            tracing::warn!(node = %cfg.name, error = %e, "posting the node status failed");
        }
        tokio::time::sleep(lease_renew_interval(cfg.lease_duration_seconds)).await;
    }
}

/// This machine's first non-loopback IPv4 address (what a node reports as InternalIP), from
/// the route the kernel would use to reach the outside; 127.0.0.1 when there is none.
pub fn host_ip() -> String {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?; // TEST-NET-1: never sent, only routed
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}
