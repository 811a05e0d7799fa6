//! `capstan agent`: the node agent against the cluster in the kubeconfig (and, inside
//! `capstan up`, against the local API server); `capstan shim DIR` is the per-container shim
//! the process runtime starts (hidden: not for users).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
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
    /// Where the agent keeps its runtime state and pod logs (default: /var/lib/capstan/agent;
    /// DATA_DIR/agent inside `capstan up`).
    #[arg(long)]
    pub root_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Node labels as KEY=VALUE (repeat or comma-separate).
    #[arg(long = "node-label", value_delimiter = ',')]
    pub node_labels: Vec<String>,
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
    run_agent(client, cmd.runtime, &cmd.cri_socket, cmd.agent).await
}

/// Runs the agent with `runtime` until it fails (or forever).
pub async fn run_agent(
    client: kube::Client,
    runtime: Runtime,
    cri_socket: &std::path::Path,
    args: AgentArgs,
) -> Result<()> {
    let runtime = match runtime {
        Runtime::None => return Ok(()),
        Runtime::Cri => bail!(
            "--runtime cri: the CRI runtime (containerd) is not built yet; use --runtime process"
        ),
        Runtime::Auto => {
            if cri_socket.exists() {
                tracing::warn!(socket = %cri_socket.display(), "containerd is here, but the CRI runtime is not built yet: RUNNING PODS AS PLAIN PROCESSES (no images, no isolation)");
            } else {
                tracing::warn!(
                    "no containerd socket at {}: RUNNING PODS AS PLAIN PROCESSES (no images, no isolation)",
                    cri_socket.display()
                );
            }
            Runtime::Process
        }
        r => r,
    };
    debug_assert_eq!(runtime, Runtime::Process);
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
    let exe = std::env::current_exe().context("locating the capstan binary for the shim")?;
    let rt = ProcessRuntime::new(
        root_dir.join("process"),
        vec![exe.display().to_string(), "shim".into()],
        &host_ip,
    )?;
    let node = NodeConfig {
        name: name.clone(),
        host_ip,
        labels,
        max_pods: args.max_pods,
        runtime_version: capstan_node_agent::runtime::Runtime::version(&rt),
        root_dir: root_dir.clone(),
    };
    tracing::info!(node = %name, root = %root_dir.display(), "node agent starting (process runtime)");
    let agent = Agent::new(client, Arc::new(rt), node, root_dir.join("pods"), "process");
    agent.run().await?;
    Ok(())
}
