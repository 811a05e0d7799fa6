//! The agent's Node: registration with what the machine has (cpu, memory, pods,
//! ephemeral-storage; addresses; nodeInfo), the Lease in kube-node-lease renewed every 10 s
//! (node-lifecycle reads it as the heartbeat), and the NodeStatus conditions posted at start
//! and every minute, through /status as the kubelet does.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;

pub const LEASE_DURATION_SECONDS: i64 = 40;
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
pub const STATUS_EVERY: Duration = Duration::from_secs(60);

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

/// The status the agent posts (conditions all healthy: the agent is up and posting).
pub fn node_status(cfg: &NodeConfig) -> Value {
    let now = jiff::Timestamp::now().to_string();
    let cond = |ty: &str, status: &str, reason: &str, message: &str| {
        json!({"type": ty, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let cap = capacity(cfg);
    let uname = rustix::system::uname();
    json!({
        "capacity": cap, "allocatable": cap,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "capstan agent is posting ready status"),
        ],
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

/// Creates the Node (or takes over an existing one of the same name) and posts its status.
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
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": cfg.name, "labels": labels},
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
                    &Patch::Merge(json!({"metadata": {"labels": labels}})),
                )
                .await?;
            tracing::info!(node = %cfg.name, "node already registered; taking it over");
        }
        Err(e) => return Err(e),
    }
    post_status(client, cfg).await
}

pub async fn post_status(client: &kube::Client, cfg: &NodeConfig) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            &cfg.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": node_status(cfg)})),
        )
        .await
        .map(|_| ())
}

/// Renews the node's Lease every 10 s and posts the node status every minute, until dropped.
pub async fn heartbeat(client: kube::Client, cfg: NodeConfig) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut since_status = Duration::ZERO;
    loop {
        let now = jiff::Timestamp::now();
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": cfg.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": cfg.name, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                     "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}});
        let pp = PatchParams::apply("capstan-agent").force();
        if let Err(e) = leases.patch(&cfg.name, &pp, &Patch::Apply(&lease)).await {
            tracing::warn!(node = %cfg.name, error = %e, "renewing the node lease failed");
        }
        if since_status >= STATUS_EVERY {
            since_status = Duration::ZERO;
            if let Err(e) = post_status(&client, &cfg).await {
                tracing::warn!(node = %cfg.name, error = %e, "posting the node status failed");
            }
        }
        tokio::time::sleep(LEASE_RENEW).await;
        since_status += LEASE_RENEW;
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
