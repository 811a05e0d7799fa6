//! `capstan agent`: the node agent against the cluster in the kubeconfig (and, inside
//! `capstan up`, against the local API server); `capstan shim DIR` is the per-container shim
//! the process runtime starts (hidden: not for users).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use capstan_node_agent::runtime::cri::CriRuntime;
use capstan_node_agent::runtime::process::ProcessRuntime;
use capstan_node_agent::{Agent, NodeConfig};
use clap::Args;

use crate::client_cmd::{ClientArgs, client};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// containerd's CRI when its socket is there, else processes (said so in the log).
    Auto,
    /// Pods through containerd's CRI.
    Cri,
    /// Each container a process group on this machine (no images, no isolation).
    Process,
    /// No node agent.
    None,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The Node's name (default: this machine's hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The IP the node reports (default: the address of the route to the outside).
    #[arg(long)]
    pub node_ip: Option<String>,
    /// Where the agent keeps its runtime state, pod volumes and logs (default:
    /// /var/lib/capstan/agent; DATA_DIR/agent inside `capstan up`).
    #[arg(long)]
    pub root_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Node labels as KEY=VALUE (repeat or comma-separate).
    #[arg(long = "node-label", value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// The agent's HTTP port on the node IP (logs for `kubectl logs`, /metrics); 0 picks a
    /// free one (default: 10250; any free port inside `capstan up`).
    #[arg(long)]
    pub port: Option<u16>,
    /// OCI archives (*.tar) in this directory are imported into containerd at start
    /// (default inside `capstan up`: DATA_DIR/images).
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgentCmd {
    #[arg(long, value_enum, default_value = "auto")]
    pub runtime: Runtime,
    /// containerd's socket, for `--runtime cri` (and `auto`).
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub cri_socket: PathBuf,
    #[command(flatten)]
    pub agent: AgentArgs,
}

pub async fn run(client_args: ClientArgs, cmd: AgentCmd) -> Result<()> {
    let client = client(&client_args).await?;
    let runtime = match cmd.runtime {
        Runtime::Auto if cmd.cri_socket.exists() => Runtime::Cri,
        Runtime::Auto => {
            tracing::warn!(
                "no containerd socket at {}: RUNNING PODS AS PLAIN PROCESSES (no images, no isolation)",
                cmd.cri_socket.display()
            );
            Runtime::Process
        }
        r => r,
    };
    run_agent(client, runtime, &cmd.cri_socket, cmd.agent).await
}

/// `capstan image import FILE.tar...`: loads OCI archives into containerd's k8s.io namespace
/// (the one CRI sees), through containerd's `ctr`.
#[derive(Debug, Args)]
pub struct ImageImportCmd {
    /// containerd's socket (`capstan up` runs its own at DATA_DIR/containerd/containerd.sock).
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub cri_socket: PathBuf,
    /// OCI archives, e.g. made by e2e/images/build.sh.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub async fn image_import(cmd: ImageImportCmd) -> Result<()> {
    let names = capstan_node_agent::containerd::import(&cmd.cri_socket, &cmd.files).await?;
    for n in names {
        println!("imported {n}");
    }
    Ok(())
}

/// Runs the agent with `runtime` (Cri, Process or None: resolve Auto first) until it fails
/// (or forever).
pub async fn run_agent(
    client: kube::Client,
    runtime: Runtime,
    cri_socket: &std::path::Path,
    args: AgentArgs,
) -> Result<()> {
    if runtime == Runtime::None {
        return Ok(());
    }
    let name = match args.node_name {
        Some(n) => n,
        None => rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .to_lowercase(),
    };
    let host_ip = args
        .node_ip
        .unwrap_or_else(capstan_node_agent::node::host_ip);
    let mut labels = std::collections::BTreeMap::new();
    for l in &args.node_labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--node-label {l:?}: expected KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let root_dir = args
        .root_dir
        .unwrap_or_else(|| PathBuf::from("/var/lib/capstan/agent"));
    std::fs::create_dir_all(&root_dir)
        .with_context(|| format!("creating {}", root_dir.display()))?;
    let port = args.port.unwrap_or(10250);
    let listener = tokio::net::TcpListener::bind((host_ip.as_str(), port))
        .await
        .with_context(|| format!("listening on {host_ip}:{port}"))?;
    let node = NodeConfig {
        name: name.clone(),
        host_ip: host_ip.clone(),
        labels,
        max_pods: args.max_pods,
        runtime_version: String::new(),
        root_dir: root_dir.clone(),
        port: 0,
    };
    let log_root = root_dir.join("logs");
    match runtime {
        Runtime::Cri => {
            let rt = CriRuntime::connect(cri_socket, std::path::Path::new("/sys/fs/cgroup"))
                .await
                .with_context(|| format!("connecting to containerd at {}", cri_socket.display()))?;
            if let Some(dir) = &args.image_dir {
                let archives = capstan_node_agent::containerd::archives_in(dir);
                if !archives.is_empty() {
                    let names = capstan_node_agent::containerd::import(cri_socket, &archives)
                        .await
                        .context("importing images")?;
                    tracing::info!(dir = %dir.display(), images = ?names, "images imported");
                }
            }
            // Pods cannot start without the sandbox image: when containerd lacks it, Capstan
            // makes its own (this binary, as `capstan pause`) and imports it. Failing that, the
            // agent still runs (a containerd with a registry may pull the image itself), and
            // says why its pods may not start.
            match rt.sandbox_image().await {
                Ok(Some(image)) => {
                    let work = root_dir.join("pause-image");
                    if let Err(e) =
                        capstan_node_agent::pause_image::ensure(&rt, cri_socket, &image, &work)
                            .await
                    {
                        tracing::error!(
                            %image,
                            error = %e,
                            "the sandbox image is missing and Capstan could not provide its own: pods will not start"
                        );
                    }
                }
                Ok(None) => tracing::warn!(
                    "the CRI runtime does not name its sandbox image: if it lacks one, pods will not start"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "asking the CRI runtime for its sandbox image")
                }
            }
            if !rt.network_ready().await.unwrap_or(false) {
                tracing::warn!(
                    "the CRI runtime reports its network not ready (no CNI config?): pods will wait in ContainerCreating"
                );
            }
            let node = NodeConfig {
                runtime_version: capstan_node_agent::runtime::Runtime::version(&rt),
                ..node
            };
            tracing::info!(node = %name, socket = %cri_socket.display(), root = %root_dir.display(), version = %node.runtime_version, "node agent starting (containerd CRI runtime)");
            Agent::new(client, Arc::new(rt), node, log_root, "containerd")
                .serve(listener)
                .run()
                .await?;
        }
        _ => {
            let exe =
                std::env::current_exe().context("locating the capstan binary for the shim")?;
            let rt = ProcessRuntime::new(
                root_dir.join("process"),
                vec![exe.display().to_string(), "shim".into()],
                &host_ip,
            )?;
            let node = NodeConfig {
                runtime_version: capstan_node_agent::runtime::Runtime::version(&rt),
                ..node
            };
            tracing::info!(node = %name, root = %root_dir.display(), limits = rt.applies_limits(), "node agent starting (process runtime)");
            if !rt.applies_limits() {
                tracing::warn!(
                    "process runtime: /sys/fs/cgroup is not a writable cgroup v2 tree with cpu and memory, so containers run WITHOUT their CPU and memory limits"
                );
            }
            Agent::new(client, Arc::new(rt), node, log_root, "process")
                .serve(listener)
                .run()
                .await?;
        }
    }
    Ok(())
}
