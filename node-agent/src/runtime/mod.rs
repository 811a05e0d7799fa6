//! The container runtime as the agent sees it: CRI's RuntimeService, reduced to what the pod
//! workers use (sandboxes, containers, their statuses). Implementations:
//! - [`process::ProcessRuntime`]: each container is a process group started through a small
//!   shim (`capstan shim`) that outlives the agent, writes CRI-format logs and records the exit;
//! - [`fake::FakeRuntime`]: in memory, for the pod workers' unit tests;
//! - [`cri::CriRuntime`]: containerd (or any CRI runtime) over its unix socket, through
//!   tonic and the `k8s-cri` protos.
//!
//! Identity lives in labels, as with CRI: every sandbox carries the pod's uid, name and
//! namespace, every container its pod uid and container name, so a restarted agent adopts
//! what is running instead of duplicating it.

mod containerd_tasks;
pub mod cri;
mod cri_annotations;
pub mod exec;
pub mod fake;
pub mod process;
pub mod remotecommand;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;

/// Labels the agent puts on sandboxes and containers (Kubernetes' names).
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The container cannot be created from its spec (CreateContainerConfigError).
    #[error("{0}")]
    Config(String),
    /// The runtime refused or failed a call (CRI's gRPC status).
    #[error("{op}: {message}")]
    Rpc { op: &'static str, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxConfig {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// How many sandboxes this pod had before (CRI's attempt).
    pub attempt: u32,
    pub labels: BTreeMap<String, String>,
    pub host_network: bool,
    /// The pod's processes: the node's (`hostPID`), one namespace for the whole pod
    /// (`shareProcessNamespace`), or else one per container. The process runtime shares the
    /// host's anyway.
    pub pids: PidSharing,
    /// `hostIPC`: the node's IPC namespace rather than the pod's.
    pub host_ipc: bool,
    pub log_directory: PathBuf,
    /// The pod's hostname (empty for host-network pods: they keep the node's).
    pub hostname: String,
    /// hostPort mappings (CNI's portmap).
    pub port_mappings: Vec<PortMapping>,
    /// The pod's cgroup (cgroupfs path such as `/kubepods/burstable/pod<uid>`).
    pub cgroup_parent: String,
    /// The pod's resolv.conf (CRI's DNSConfig); `None` leaves the runtime's default (the
    /// host's).
    pub dns: Option<DnsSettings>,
}

/// Whose process namespace a pod's containers are in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PidSharing {
    /// Each container its own (Kubernetes' default).
    #[default]
    Container,
    /// One for the pod (`shareProcessNamespace: true`).
    Pod,
    /// The node's (`hostPID: true`).
    Node,
}

/// A pod's resolv.conf: nameservers, search domains, options (`ndots:5`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMapping {
    /// TCP, UDP or SCTP.
    pub protocol: String,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

/// A host path bind-mounted into a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    pub container_path: String,
    pub host_path: PathBuf,
    pub readonly: bool,
}

/// Linux resources of a container, as CRI takes them (zero: unset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    pub cpu_shares: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
    pub memory_limit_in_bytes: i64,
    pub oom_score_adj: i64,
}

/// What an exec in a container returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub use exec::{ExecRequest, ExecSession};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub id: String,
    pub config: SandboxConfig,
    pub state: SandboxState,
    pub created_at: jiff::Timestamp,
    /// The pod's IP in this sandbox (the host's for host-network sandboxes).
    pub ip: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerConfig {
    pub name: String,
    pub attempt: u32,
    pub image: String,
    /// The container's command and args, `$(VAR)`-expanded; empty ones fall back to the image's
    /// entrypoint and cmd (CRI) — the process runtime, which has no images, runs command+args.
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Relative to the sandbox's log directory.
    pub log_path: String,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    /// The pod spec's `stdin`, `stdinOnce` and `tty`: a container `kubectl attach` (and
    /// `kubectl run -it`) can talk to.
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// The runtime id of the container whose processes this one sees (an ephemeral
    /// container's `targetContainerName`: CRI's TARGET pid namespace). The process runtime
    /// shares the host's anyway.
    pub pid_target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub id: String,
    pub sandbox_id: String,
    pub config: ContainerConfig,
    pub state: ContainerState,
    pub created_at: jiff::Timestamp,
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: Option<jiff::Timestamp>,
    pub exit_code: Option<i32>,
    /// Why it exited: Completed, Error, OOMKilled, ContainerStatusUnknown.
    pub reason: Option<String>,
    pub message: Option<String>,
    /// The image it runs, resolved (`sha256:...`; the image name for the process runtime).
    pub image_ref: String,
}

/// A container's resource use as its runtime counts it (CRI's ContainerStats): cumulative CPU
/// time and the memory working set (usage less inactive file pages, what the kernel would
/// not simply drop under pressure). None where the runtime cannot tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerStats {
    pub id: String,
    pub cpu_usage_ns: Option<u64>,
    pub memory_working_set_bytes: Option<u64>,
}

/// CRI's RuntimeService, the part the agent uses.
pub trait Runtime: Send + Sync + 'static {
    /// The runtime's name and version, for the Node's nodeInfo.containerRuntimeVersion.
    fn version(&self) -> String;

    /// The time on the runtime's clock, which stamps containers' start and finish: back-offs
    /// and probe delays are measured against it. The wall clock, but for the fake runtime,
    /// whose clock follows tokio's (paused in tests).
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }

    fn run_sandbox(&self, config: &SandboxConfig) -> impl Future<Output = Result<Sandbox>> + Send;
    /// Stops every container of the sandbox (SIGKILL: graceful stops come first, per
    /// container) and marks it NotReady. Idempotent.
    fn stop_sandbox(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Removes a stopped sandbox and its containers. Idempotent.
    fn remove_sandbox(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn list_sandboxes(&self) -> impl Future<Output = Result<Vec<Sandbox>>> + Send;

    fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> impl Future<Output = Result<Container>> + Send;
    fn start_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// SIGTERM, then SIGKILL after `grace`; returns once it has exited. Idempotent.
    fn stop_container(
        &self,
        id: &str,
        grace: std::time::Duration,
    ) -> impl Future<Output = Result<()>> + Send;
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn list_containers(&self) -> impl Future<Output = Result<Vec<Container>>> + Send;
    /// The sandboxes of the pod with `uid` (its `POD_UID` label), oldest first, and their
    /// containers: a pod worker's look, where the PLEG lists everything. This default filters
    /// the full lists; a runtime that can filter at the source does.
    fn pod_state(
        &self,
        uid: &str,
    ) -> impl Future<Output = Result<(Vec<Sandbox>, Vec<Container>)>> + Send {
        async move {
            let sandboxes: Vec<Sandbox> = self
                .list_sandboxes()
                .await?
                .into_iter()
                .filter(|s| s.config.labels.get(POD_UID).map(String::as_str) == Some(uid))
                .collect();
            let containers = self
                .list_containers()
                .await?
                .into_iter()
                .filter(|c| sandboxes.iter().any(|s| s.id == c.sandbox_id))
                .collect();
            Ok((sandboxes, containers))
        }
    }
    /// Runs `cmd` in a running container and waits for it (exec probes).
    fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: std::time::Duration,
    ) -> impl Future<Output = Result<ExecResult>> + Send;

    /// Starts `req.command` in a running container with the streams it asks for (`kubectl
    /// exec`). Dropping the session kills the command if it still runs.
    fn exec(&self, id: &str, req: &ExecRequest)
    -> impl Future<Output = Result<ExecSession>> + Send;

    /// `kubectl attach`: a session on the running container `id`'s own stdio, with the
    /// streams `req` names (its tty is the container's). Dropping the session detaches;
    /// the container goes on.
    fn attach(
        &self,
        _id: &str,
        _req: &ExecRequest,
    ) -> impl Future<Output = Result<ExecSession>> + Send {
        async {
            Err(RuntimeError::Config(
                "attach is not supported by this runtime".into(),
            ))
        }
    }

    /// The URL of the runtime's streaming server (Kubernetes' remotecommand protocol over
    /// SPDY) for attaching to `id`, as CRI's Attach answers — where a SPDY client (kubectl
    /// before 1.30) is passed on as it is. None where the runtime has no streaming server.
    fn attach_url(
        &self,
        _id: &str,
        _req: &ExecRequest,
    ) -> impl Future<Output = Result<Option<String>>> + Send {
        async { Ok(None) }
    }

    /// Whether the runtime can run pods (the Node's Ready condition): Err says why not, as
    /// kubelet words it ("container runtime network not ready: ...").
    fn health(&self) -> impl Future<Output = std::result::Result<(), String>> + Send {
        async { Ok(()) }
    }

    /// The network namespace `kubectl port-forward` connects in: None when the sandbox shares
    /// the host's network (the process runtime, the fake), Some(the namespace file) on CRI.
    fn sandbox_netns(
        &self,
        _id: &str,
    ) -> impl Future<Output = Result<Option<std::path::PathBuf>>> + Send {
        async { Ok(None) }
    }

    /// The resource use of every running container (CRI's ListContainerStats). Rates are the
    /// caller's to compute from two readings: containerd's own `usage_nano_cores` is worked out
    /// between calls of any client, and reads 0 when two clients poll.
    fn container_stats(&self) -> impl Future<Output = Result<Vec<ContainerStats>>> + Send {
        async { Ok(Vec::new()) }
    }

    /// CRI's ImageService: the image's id when it is present, None when it is not.
    fn image_status(&self, image: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Pulls `image` (CRI always goes to the network), returning its id.
    fn pull_image(&self, image: &str) -> impl Future<Output = Result<String>> + Send;
}
