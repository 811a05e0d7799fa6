//! `capstan sim --nodes N`: simulated nodes (kwok-like) against the cluster in the kubeconfig —
//! they register, renew their Leases and run the pods bound to them without containers (see
//! capstan_testkit::sim). For exercising the control plane at scale without machines.

use std::time::{Duration, Instant};

use anyhow::Result;
use capstan_testkit::sim::{SimConfig, SimNodes};
use clap::Args;

use crate::client_cmd::{ClientArgs, client};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Node names are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// Zones (topology.kubernetes.io/zone) the nodes cycle through.
    #[arg(long, default_value_t = 3)]
    zones: usize,
    #[arg(long, default_value = "8")]
    cpu: String,
    #[arg(long, default_value = "32Gi")]
    memory: String,
    #[arg(long, default_value_t = 110)]
    pods: u32,
    /// Milliseconds a bound pod takes to become Running and Ready.
    #[arg(long, default_value_t = 0)]
    ready_after_ms: u64,
    /// Each node posts its status again this often, as an agent does (0: only at registration).
    #[arg(long, default_value_t = 0)]
    status_every_seconds: u64,
}

pub async fn run(client_args: ClientArgs, args: SimArgs) -> Result<()> {
    let client = client(&client_args).await?;
    let cfg = SimConfig {
        nodes: args.nodes,
        prefix: args.prefix,
        zones: args.zones,
        cpu: args.cpu,
        memory: args.memory,
        pods: args.pods,
        ready_after: Duration::from_millis(args.ready_after_ms),
        status_every: (args.status_every_seconds > 0)
            .then(|| Duration::from_secs(args.status_every_seconds)),
        ..Default::default()
    };
    let started = Instant::now();
    let sim = SimNodes::start(client, cfg).await?;
    println!(
        "capstan sim: {} nodes registered and Ready in {:.2}s; running their pods (Ctrl-C stops)",
        sim.names.len(),
        started.elapsed().as_secs_f64()
    );
    tokio::signal::ctrl_c().await?;
    drop(sim);
    Ok(())
}
