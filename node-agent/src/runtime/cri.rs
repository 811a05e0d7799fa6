//! The CRI runtime: containerd (or any CRI v1 runtime) over its unix socket, with tonic and the
//! `k8s-cri` protos.
//!
//! What CRI does not keep for us rides along in annotations (`cri_annotations.rs`).
//! ListContainers lacks exit codes and times, so each
//! container's ContainerStatus is fetched once per state it reaches and cached (a running
//! container's status does not change, nor an exited one's a few seconds after its exit),
//! which keeps the PLEG's relist to two RPCs a second plus one per container that changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

use super::containerd_tasks as tasks;
use super::cri_annotations::*;
use super::{
    Container, ContainerConfig, ContainerState, ExecRequest, ExecResult, ExecSession, Result,
    Runtime, RuntimeError, Sandbox, SandboxConfig, SandboxState,
};

/// How long a plain CRI call may take (not stops and execs, which carry their own time).
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A CRI runtime reached over a unix socket.
pub struct CriRuntime {
    /// The socket's channel, for containerd's own API (exec).
    channel: Channel,
    /// Where exec FIFOs are made (the shim opens them: a host path).
    exec_dir: PathBuf,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    version: String,
    cgroup_root: PathBuf,
    /// ContainerStatus by container id, with the state it was fetched in.
    containers: Mutex<HashMap<String, Container>>,
    /// Sandbox IPs by sandbox id (fixed for a sandbox's life).
    ips: Mutex<HashMap<String, Option<String>>>,
}

impl std::fmt::Debug for CriRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriRuntime")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

pub(super) fn rpc(op: &'static str) -> impl Fn(tonic::Status) -> RuntimeError {
    move |s| {
        if s.code() == tonic::Code::NotFound {
            RuntimeError::NotFound {
                what: op,
                id: s.message().to_string(),
            }
        } else {
            RuntimeError::Rpc {
                op,
                message: s.message().to_string(),
            }
        }
    }
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

fn ts(nanos: i64) -> Option<jiff::Timestamp> {
    (nanos > 0)
        .then(|| jiff::Timestamp::from_nanosecond(nanos as i128).ok())
        .flatten()
}

/// CRI's enum values (k8s-cri keeps them as i32 on the wire types).
mod wire {
    pub const SANDBOX_READY: i32 = 0;
    pub const CONTAINER_CREATED: i32 = 0;
    pub const CONTAINER_RUNNING: i32 = 1;
    pub const CONTAINER_EXITED: i32 = 2;
    pub const NAMESPACE_POD: i32 = 0;
    pub const NAMESPACE_CONTAINER: i32 = 1;
    pub const NAMESPACE_NODE: i32 = 2;
    pub const NAMESPACE_TARGET: i32 = 3;
    pub fn protocol(p: &str) -> i32 {
        match p {
            "UDP" => 1,
            "SCTP" => 2,
            _ => 0,
        }
    }
}

/// How long after an exit containerd may still amend it: its OOM event can be handled after
/// the exit event, turning `Error` into `OOMKilled` (seen with a process killed in its first
/// milliseconds).
const EXIT_SETTLES: Duration = Duration::from_secs(5);

/// Whether a container's status will not change while it stays in its state (so it can be
/// cached): running ones, and exited ones once their exit has settled.
/// The network namespace in containerd's verbose sandbox info: the runtime spec's `network`
/// namespace path, else `/proc/<pid>/ns/net` of the pause process; None when neither is there.
fn netns_of(info: &serde_json::Value) -> Option<std::path::PathBuf> {
    let spec = info["runtimeSpec"]["linux"]["namespaces"].as_array();
    let path = spec
        .into_iter()
        .flatten()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .filter(|p| !p.is_empty());
    match (path, info["pid"].as_u64()) {
        (Some(p), _) => Some(p.into()),
        (None, Some(pid)) if pid > 0 => Some(format!("/proc/{pid}/ns/net").into()),
        _ => None,
    }
}

fn settled(c: &Container) -> bool {
    match c.state {
        ContainerState::Running => true,
        ContainerState::Exited => c.finished_at.is_some_and(|f| {
            jiff::Timestamp::now().duration_since(f).unsigned_abs() >= EXIT_SETTLES
        }),
        _ => false,
    }
}

fn container_state(v: i32) -> ContainerState {
    match v {
        wire::CONTAINER_CREATED => ContainerState::Created,
        wire::CONTAINER_RUNNING => ContainerState::Running,
        wire::CONTAINER_EXITED => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

impl CriRuntime {
    /// Connects to the CRI socket at `socket` and asks for the runtime's version. Pod cgroups
    /// are looked for under `cgroup_root` (normally /sys/fs/cgroup) when a sandbox is removed.
    pub async fn connect(socket: &Path, cgroup_root: &Path) -> Result<Self> {
        let path = socket.to_path_buf();
        let channel = Endpoint::try_from("http://[::]:50051")
            .map_err(|e| RuntimeError::Rpc {
                op: "connect",
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| RuntimeError::Rpc {
                op: "connect",
                message: format!("{}: {e}", socket.display()),
            })?;
        let mut runtime = RuntimeServiceClient::new(channel.clone());
        let images = ImageServiceClient::new(channel.clone());
        // A containerd that just started accepts connections before its CRI plugin serves.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let v = loop {
            match runtime
                .version(request(
                    cri::VersionRequest {
                        version: "v1".into(),
                    },
                    Duration::from_secs(5),
                ))
                .await
            {
                Ok(v) => break v.into_inner(),
                Err(s) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %s.message(), "CRI not serving yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => {
                    return Err(RuntimeError::Rpc {
                        op: "version",
                        message: format!(
                            "{} does not answer CRI v1: {}",
                            socket.display(),
                            s.message()
                        ),
                    });
                }
            }
        };
        Ok(CriRuntime {
            channel,
            exec_dir: std::env::temp_dir().join("capstan-exec"),
            runtime,
            images,
            version: format!("{}://{}", v.runtime_name, v.runtime_version),
            cgroup_root: cgroup_root.to_path_buf(),
            containers: Mutex::new(HashMap::new()),
            ips: Mutex::new(HashMap::new()),
        })
    }

    /// The sandbox ("pause") image the runtime starts pods with, from its verbose status
    /// (containerd's CRI config, `sandboxImage`); None when it does not say.
    pub async fn sandbox_image(&self) -> Result<Option<String>> {
        let st = self
            .runtime
            .clone()
            .status(request(cri::StatusRequest { verbose: true }, CALL_TIMEOUT))
            .await
            .map_err(rpc("status"))?
            .into_inner();
        Ok(st
            .info
            .get("config")
            .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
            .and_then(|c| c["sandboxImage"].as_str().map(str::to_string))
            .filter(|i| !i.is_empty()))
    }

    /// Whether the runtime reports its network ready (a CNI config is loaded).
    pub async fn network_ready(&self) -> Result<bool> {
        let st = self
            .runtime
            .clone()
            .status(request(cri::StatusRequest { verbose: false }, CALL_TIMEOUT))
            .await
            .map_err(rpc("status"))?
            .into_inner();
        Ok(st
            .status
            .iter()
            .flat_map(|s| &s.conditions)
            .any(|c| c.r#type == "NetworkReady" && c.status))
    }

    async fn sandbox_ip(&self, id: &str) -> Result<Option<String>> {
        if let Some(ip) = self.lock_ips().get(id) {
            return Ok(ip.clone());
        }
        let st = self
            .runtime
            .clone()
            .pod_sandbox_status(request(
                cri::PodSandboxStatusRequest {
                    pod_sandbox_id: id.to_string(),
                    verbose: false,
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(rpc("sandbox"))?
            .into_inner();
        let ip = st
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty());
        self.lock_ips().insert(id.to_string(), ip.clone());
        Ok(ip)
    }

    async fn pod_sandboxes(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>> {
        Ok(self
            .runtime
            .clone()
            .list_pod_sandbox(request(cri::ListPodSandboxRequest { filter }, CALL_TIMEOUT))
            .await
            .map_err(rpc("list sandboxes"))?
            .into_inner()
            .items)
    }

    /// `items` with their IPs (fetched once per sandbox), oldest first.
    async fn sandboxes_of(&self, items: Vec<cri::PodSandbox>) -> Result<Vec<Sandbox>> {
        let mut out = Vec::with_capacity(items.len());
        for sb in items {
            let ip = if sb.state == wire::SANDBOX_READY {
                match self.sandbox_ip(&sb.id).await {
                    Ok(ip) => ip,
                    Err(RuntimeError::NotFound { .. }) => continue, // removed meanwhile
                    Err(e) => return Err(e),
                }
            } else {
                self.lock_ips().get(&sb.id).cloned().flatten()
            };
            out.push(self.sandbox_of(sb, ip));
        }
        out.sort_by_key(|s| (s.created_at, s.config.attempt));
        Ok(out)
    }

    async fn listed_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>> {
        Ok(self
            .runtime
            .clone()
            .list_containers(request(cri::ListContainersRequest { filter }, CALL_TIMEOUT))
            .await
            .map_err(rpc("list containers"))?
            .into_inner()
            .containers)
    }

    /// `items` with what ListContainers leaves out: ContainerStatus once per state reached.
    async fn containers_of(&self, items: &[cri::Container]) -> Result<Vec<Container>> {
        let mut out = Vec::with_capacity(items.len());
        for listed in items {
            let state = container_state(listed.state);
            let cached = self
                .lock_containers()
                .get(&listed.id)
                .filter(|c| c.state == state)
                .cloned();
            let c = match cached {
                Some(c) => c,
                None => match self.container_status(listed).await {
                    Ok(c) => {
                        if settled(&c) {
                            self.lock_containers().insert(c.id.clone(), c.clone());
                        }
                        c
                    }
                    Err(RuntimeError::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                },
            };
            out.push(c);
        }
        Ok(out)
    }

    fn lock_ips(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<String>>> {
        self.ips.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the pod's cgroup directories (containerd leaves them): every hierarchy on v1,
    /// the unified tree on v2. Only empty directories go (rmdir), so nothing alive is touched.
    fn remove_cgroup(&self, parent: &str) {
        let rel = parent.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|p| p == "..") {
            return;
        }
        let mut dirs = vec![self.cgroup_root.join(rel)];
        if let Ok(rd) = std::fs::read_dir(&self.cgroup_root) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path().join(rel));
                }
            }
        }
        for d in dirs {
            match std::fs::remove_dir(&d) {
                Ok(()) => tracing::debug!(dir = %d.display(), "removed the pod cgroup"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(dir = %d.display(), error = %e, "removing a pod cgroup"),
            }
        }
    }

    fn sandbox_of(&self, sb: cri::PodSandbox, ip: Option<String>) -> Sandbox {
        let meta = sb.metadata.unwrap_or_default();
        let ann = &sb.annotations;
        Sandbox {
            config: SandboxConfig {
                name: meta.name,
                namespace: meta.namespace,
                uid: meta.uid,
                attempt: meta.attempt,
                labels: sb.labels.into_iter().collect(),
                host_network: ann.get(HOST_NETWORK).is_some_and(|v| v == "true"),
                log_directory: ann
                    .get(LOG_DIRECTORY)
                    .map(PathBuf::from)
                    .unwrap_or_default(),
                cgroup_parent: ann.get(CGROUP_PARENT).cloned().unwrap_or_default(),
                ..Default::default()
            },
            id: sb.id,
            state: if sb.state == wire::SANDBOX_READY {
                SandboxState::Ready
            } else {
                SandboxState::NotReady
            },
            created_at: ts(sb.created_at).unwrap_or_default(),
            ip,
        }
    }

    async fn container_status(&self, listed: &cri::Container) -> Result<Container> {
        let st = self
            .runtime
            .clone()
            .container_status(request(
                cri::ContainerStatusRequest {
                    container_id: listed.id.clone(),
                    verbose: false,
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(rpc("container"))?
            .into_inner()
            .status
            .ok_or_else(|| RuntimeError::NotFound {
                what: "container",
                id: listed.id.clone(),
            })?;
        let meta = st.metadata.unwrap_or_default();
        let state = container_state(st.state);
        let exited = state == ContainerState::Exited;
        Ok(Container {
            id: st.id,
            sandbox_id: listed.pod_sandbox_id.clone(),
            config: ContainerConfig {
                name: meta.name,
                attempt: meta.attempt,
                image: st
                    .annotations
                    .get(IMAGE)
                    .cloned()
                    .or_else(|| st.image.map(|i| i.image))
                    .unwrap_or_default(),
                labels: st.labels.into_iter().collect(),
                log_path: st.annotations.get(LOG_PATH).cloned().unwrap_or_default(),
                stdin: stdio(&st.annotations, "stdin"),
                stdin_once: stdio(&st.annotations, "once"),
                tty: stdio(&st.annotations, "tty"),
                ..Default::default()
            },
            state,
            created_at: ts(st.created_at).unwrap_or_default(),
            started_at: ts(st.started_at),
            finished_at: ts(st.finished_at),
            exit_code: exited.then_some(st.exit_code),
            reason: (!st.reason.is_empty()).then_some(st.reason),
            message: (!st.message.is_empty()).then_some(st.message),
            image_ref: st.image_ref,
        })
    }
}

impl Runtime for CriRuntime {
    fn version(&self) -> String {
        self.version.clone()
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<Sandbox> {
        std::fs::create_dir_all(&config.log_directory).map_err(|e| {
            RuntimeError::io(format!("creating {}", config.log_directory.display()), e)
        })?;
        let mut annotations = HashMap::new();
        annotations.insert(
            LOG_DIRECTORY.to_string(),
            config.log_directory.display().to_string(),
        );
        annotations.insert(HOST_NETWORK.to_string(), config.host_network.to_string());
        annotations.insert(CGROUP_PARENT.to_string(), config.cgroup_parent.clone());
        let pid = match config.pids {
            super::PidSharing::Node => "node",
            super::PidSharing::Pod => "pod",
            super::PidSharing::Container => "container",
        };
        let ipc = if config.host_ipc { "node" } else { "pod" };
        annotations.insert(NAMESPACES.to_string(), format!("pid={pid},ipc={ipc}"));
        let network = if config.host_network {
            wire::NAMESPACE_NODE
        } else {
            wire::NAMESPACE_POD
        };
        let sandbox_config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: config.name.clone(),
                uid: config.uid.clone(),
                namespace: config.namespace.clone(),
                attempt: config.attempt,
            }),
            // Host-network sandboxes must leave the hostname to the node.
            hostname: if config.host_network {
                String::new()
            } else {
                config.hostname.clone()
            },
            log_directory: config.log_directory.display().to_string(),
            port_mappings: config
                .port_mappings
                .iter()
                .map(|p| cri::PortMapping {
                    protocol: wire::protocol(&p.protocol),
                    container_port: p.container_port,
                    host_port: p.host_port,
                    host_ip: p.host_ip.clone(),
                })
                .collect(),
            labels: config.labels.clone().into_iter().collect(),
            annotations,
            dns_config: config.dns.as_ref().map(|d| cri::DnsConfig {
                servers: d.servers.clone(),
                searches: d.searches.clone(),
                options: d.options.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: config.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network,
                        pid: namespace_mode(pid),
                        ipc: namespace_mode(ipc),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .runtime
            .clone()
            .run_pod_sandbox(request(
                cri::RunPodSandboxRequest {
                    config: Some(sandbox_config),
                    runtime_handler: String::new(),
                },
                Duration::from_secs(120),
            ))
            .await
            .map_err(rpc("run sandbox"))?
            .into_inner()
            .pod_sandbox_id;
        let ip = self.sandbox_ip(&id).await?;
        Ok(Sandbox {
            id,
            config: config.clone(),
            state: SandboxState::Ready,
            created_at: jiff::Timestamp::now(),
            ip,
        })
    }

    async fn stop_sandbox(&self, id: &str) -> Result<()> {
        match self
            .runtime
            .clone()
            .stop_pod_sandbox(request(
                cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.to_string(),
                },
                Duration::from_secs(120),
            ))
            .await
            .map_err(rpc("stop sandbox"))
        {
            Ok(_) | Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove_sandbox(&self, id: &str) -> Result<()> {
        let status = self
            .runtime
            .clone()
            .pod_sandbox_status(request(
                cri::PodSandboxStatusRequest {
                    pod_sandbox_id: id.to_string(),
                    verbose: false,
                },
                CALL_TIMEOUT,
            ))
            .await;
        let parent = match status {
            Ok(r) => r
                .into_inner()
                .status
                .and_then(|s| s.annotations.get(CGROUP_PARENT).cloned()),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            Err(s) => return Err(rpc("sandbox")(s)),
        };
        match self
            .runtime
            .clone()
            .remove_pod_sandbox(request(
                cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id.to_string(),
                },
                Duration::from_secs(120),
            ))
            .await
            .map_err(rpc("remove sandbox"))
        {
            Ok(_) | Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        self.lock_ips().remove(id);
        if let Some(parent) = parent {
            self.remove_cgroup(&parent);
        }
        Ok(())
    }

    async fn list_sandboxes(&self) -> Result<Vec<Sandbox>> {
        let items = self.pod_sandboxes(None).await?;
        let live: std::collections::HashSet<&str> = items.iter().map(|s| s.id.as_str()).collect();
        self.lock_ips().retain(|id, _| live.contains(id.as_str()));
        self.sandboxes_of(items).await
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<Container> {
        // The sandbox's config is needed again by CRI (containerd reads its log directory and
        // namespaces from it).
        let st = self
            .runtime
            .clone()
            .pod_sandbox_status(request(
                cri::PodSandboxStatusRequest {
                    pod_sandbox_id: sandbox_id.to_string(),
                    verbose: false,
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(rpc("sandbox"))?
            .into_inner()
            .status
            .ok_or_else(|| RuntimeError::NotFound {
                what: "sandbox",
                id: sandbox_id.to_string(),
            })?;
        let meta = st.metadata.clone().unwrap_or_default();
        let log_directory = st
            .annotations
            .get(LOG_DIRECTORY)
            .cloned()
            .unwrap_or_default();
        if let Some(dir) = Path::new(&log_directory).join(&config.log_path).parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        }
        let sandbox_config = cri::PodSandboxConfig {
            metadata: Some(meta),
            log_directory: log_directory.clone(),
            labels: st.labels.clone(),
            annotations: st.annotations.clone(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: st
                    .annotations
                    .get(CGROUP_PARENT)
                    .cloned()
                    .unwrap_or_default(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut annotations = HashMap::new();
        annotations.insert(IMAGE.to_string(), config.image.clone());
        annotations.insert(LOG_PATH.to_string(), config.log_path.clone());
        let stdio = [
            (config.stdin, "stdin"),
            (config.stdin_once, "once"),
            (config.tty, "tty"),
        ];
        let stdio: Vec<&str> = stdio
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        annotations.insert(STDIO.to_string(), stdio.join(","));
        let r = &config.resources;
        let container_config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: config.name.clone(),
                attempt: config.attempt,
            }),
            image: Some(cri::ImageSpec {
                image: config.image.clone(),
                ..Default::default()
            }),
            command: config.command.clone(),
            args: config.args.clone(),
            working_dir: config.working_dir.clone().unwrap_or_default(),
            envs: config
                .env
                .iter()
                .map(|(k, v)| cri::KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            mounts: config
                .mounts
                .iter()
                .map(|m| cri::Mount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.display().to_string(),
                    readonly: m.readonly,
                    ..Default::default()
                })
                .collect(),
            labels: config.labels.clone().into_iter().collect(),
            annotations,
            log_path: config.log_path.clone(),
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    cpu_period: r.cpu_period,
                    cpu_quota: r.cpu_quota,
                    cpu_shares: r.cpu_shares,
                    memory_limit_in_bytes: r.memory_limit_in_bytes,
                    oom_score_adj: r.oom_score_adj,
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: if st
                            .annotations
                            .get(HOST_NETWORK)
                            .is_some_and(|v| v == "true")
                        {
                            wire::NAMESPACE_NODE
                        } else {
                            wire::NAMESPACE_POD
                        },
                        pid: match &config.pid_target {
                            Some(_) => wire::NAMESPACE_TARGET,
                            None => namespace_mode(&sandbox_namespace(&st.annotations, "pid")),
                        },
                        target_id: config.pid_target.clone().unwrap_or_default(),
                        ipc: namespace_mode(&sandbox_namespace(&st.annotations, "ipc")),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let id = self
            .runtime
            .clone()
            .create_container(request(
                cri::CreateContainerRequest {
                    pod_sandbox_id: sandbox_id.to_string(),
                    config: Some(container_config),
                    sandbox_config: Some(sandbox_config),
                },
                Duration::from_secs(120),
            ))
            .await
            .map_err(rpc("create container"))?
            .into_inner()
            .container_id;
        Ok(Container {
            id,
            sandbox_id: sandbox_id.to_string(),
            config: config.clone(),
            state: ContainerState::Created,
            created_at: jiff::Timestamp::now(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            reason: None,
            message: None,
            image_ref: String::new(),
        })
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.runtime
            .clone()
            .start_container(request(
                cri::StartContainerRequest {
                    container_id: id.to_string(),
                },
                Duration::from_secs(120),
            ))
            .await
            .map_err(rpc("start container"))?;
        Ok(())
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        match self
            .runtime
            .clone()
            .stop_container(request(
                cri::StopContainerRequest {
                    container_id: id.to_string(),
                    timeout: grace.as_secs() as i64,
                },
                grace + Duration::from_secs(60),
            ))
            .await
            .map_err(rpc("stop container"))
        {
            Ok(_) | Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        match self
            .runtime
            .clone()
            .remove_container(request(
                cri::RemoveContainerRequest {
                    container_id: id.to_string(),
                },
                Duration::from_secs(120),
            ))
            .await
            .map_err(rpc("remove container"))
        {
            Ok(_) | Err(RuntimeError::NotFound { .. }) => {
                self.lock_containers().remove(id);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn list_containers(&self) -> Result<Vec<Container>> {
        let items = self.listed_containers(None).await?;
        let live: std::collections::HashSet<&str> = items.iter().map(|c| c.id.as_str()).collect();
        self.lock_containers()
            .retain(|id, _| live.contains(id.as_str()));
        self.containers_of(&items).await
    }

    /// Two filtered RPCs (containerd matches the pod's uid label), so a worker's look at its
    /// pod does not grow with the node's other pods — each of which a full list would encode,
    /// send and decode, and a burst of 30 starting pods looks ~8 times each.
    async fn pod_state(&self, uid: &str) -> Result<(Vec<Sandbox>, Vec<Container>)> {
        let selector: HashMap<String, String> =
            HashMap::from([(super::POD_UID.to_string(), uid.to_string())]);
        let sandboxes = self
            .pod_sandboxes(Some(cri::PodSandboxFilter {
                label_selector: selector.clone(),
                ..Default::default()
            }))
            .await?;
        let sandboxes = self.sandboxes_of(sandboxes).await?;
        let containers = self
            .listed_containers(Some(cri::ContainerFilter {
                label_selector: selector,
                ..Default::default()
            }))
            .await?;
        let containers = self.containers_of(&containers).await?;
        Ok((sandboxes, containers))
    }

    async fn container_stats(&self) -> Result<Vec<super::ContainerStats>> {
        let stats = self
            .runtime
            .clone()
            .list_container_stats(request(
                cri::ListContainerStatsRequest { filter: None },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(rpc("list container stats"))?
            .into_inner()
            .stats;
        Ok(stats
            .into_iter()
            .filter_map(|s| {
                Some(super::ContainerStats {
                    id: s.attributes?.id,
                    cpu_usage_ns: s
                        .cpu
                        .and_then(|c| c.usage_core_nano_seconds)
                        .map(|v| v.value),
                    memory_working_set_bytes: s
                        .memory
                        .and_then(|m| m.working_set_bytes)
                        .map(|v| v.value),
                })
            })
            .collect())
    }

    async fn exec_sync(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecResult> {
        let r = self
            .runtime
            .clone()
            .exec_sync(request(
                cri::ExecSyncRequest {
                    container_id: id.to_string(),
                    cmd: cmd.to_vec(),
                    timeout: timeout.as_secs().max(1) as i64,
                },
                timeout + Duration::from_secs(5),
            ))
            .await
            .map_err(rpc("exec"))?
            .into_inner();
        Ok(ExecResult {
            exit_code: r.exit_code,
            stdout: r.stdout,
            stderr: r.stderr,
        })
    }

    /// `kubectl exec` through containerd's Tasks API (see [`tasks`] for why not CRI's Exec):
    /// FIFOs for the streams, CloseIO when input ends, ResizePty, Wait for the exit code.
    async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecSession> {
        tasks::exec(&self.channel, &self.exec_dir, id, req).await
    }

    /// CRI Attach, then the remotecommand protocol on containerd's streaming server.
    async fn attach(&self, id: &str, req: &ExecRequest) -> Result<ExecSession> {
        let url = self.attach_url(id, req).await?.unwrap_or_default();
        super::remotecommand::dial(&url, req)
            .await
            .map_err(|e| RuntimeError::io(format!("attach to {id} at {url}"), e))
    }

    /// CRI Status: RuntimeReady and NetworkReady, as kubelet reads them.
    async fn health(&self) -> std::result::Result<(), String> {
        let st = self
            .runtime
            .clone()
            .status(request(cri::StatusRequest { verbose: false }, CALL_TIMEOUT))
            .await
            .map_err(|e| format!("container runtime is down: {}", e.message()))?
            .into_inner();
        let conditions: Vec<_> = st.status.iter().flat_map(|s| &s.conditions).collect();
        for (ty, what) in [
            ("RuntimeReady", "container runtime not ready"),
            ("NetworkReady", "container runtime network not ready"),
        ] {
            match conditions.iter().find(|c| c.r#type == ty) {
                Some(c) if c.status => {}
                Some(c) => {
                    return Err(format!(
                        "{what}: {ty}=false reason:{} message:{}",
                        c.reason, c.message
                    ));
                }
                None => return Err(format!("{what}: {ty} is not reported")),
            }
        }
        Ok(())
    }

    async fn attach_url(&self, id: &str, req: &ExecRequest) -> Result<Option<String>> {
        Ok(Some(
            self.runtime
                .clone()
                .attach(request(
                    cri::AttachRequest {
                        container_id: id.to_string(),
                        stdin: req.stdin,
                        tty: req.tty,
                        stdout: req.stdout,
                        stderr: req.stderr,
                    },
                    CALL_TIMEOUT,
                ))
                .await
                .map_err(rpc("attach"))?
                .into_inner()
                .url,
        ))
    }

    /// From the sandbox's verbose status: the network namespace its runtime spec names, or
    /// else the one of its pause process.
    async fn sandbox_netns(&self, id: &str) -> Result<Option<std::path::PathBuf>> {
        let st = self
            .runtime
            .clone()
            .pod_sandbox_status(request(
                cri::PodSandboxStatusRequest {
                    pod_sandbox_id: id.to_string(),
                    verbose: true,
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(rpc("sandbox"))?
            .into_inner();
        let info: serde_json::Value = st
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        Ok(netns_of(&info))
    }

    async fn image_status(&self, image: &str) -> Result<Option<String>> {
        let r = self
            .images
            .clone()
            .image_status(request(
                cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                    verbose: false,
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(rpc("image status"))?
            .into_inner();
        Ok(r.image.map(|i| i.id).filter(|id| !id.is_empty()))
    }

    async fn pull_image(&self, image: &str) -> Result<String> {
        let r = self
            .images
            .clone()
            .pull_image(request(
                cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                    auth: None,
                    sandbox_config: None,
                },
                Duration::from_secs(300),
            ))
            .await
            .map_err(rpc("pull image"))?
            .into_inner();
        Ok(r.image_ref)
    }
}

/// CRI's namespace mode for `node`, `pod` or `container`.
fn namespace_mode(mode: &str) -> i32 {
    match mode {
        "node" => wire::NAMESPACE_NODE,
        "pod" => wire::NAMESPACE_POD,
        _ => wire::NAMESPACE_CONTAINER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_netns_is_the_specs_path_else_the_pause_process_ones() {
        let info = serde_json::json!({"pid": 42, "runtimeSpec": {"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/run/netns/cni-1"}]}}});
        assert_eq!(netns_of(&info), Some("/run/netns/cni-1".into()));
        let info = serde_json::json!({"pid": 42, "runtimeSpec": {"linux": {"namespaces": []}}});
        assert_eq!(netns_of(&info), Some("/proc/42/ns/net".into()));
        assert_eq!(netns_of(&serde_json::json!({})), None);
    }
}
