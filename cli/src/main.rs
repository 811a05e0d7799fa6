//! The `capstan` binary. Start at [`Command`]: each subcommand lives in its own module.
//! - `up`: the single-machine cluster (the store, the Kubernetes API server and the controller
//!   manager); `apiserver`: the API server alone; `controllers`: the controller manager alone.
//! - `store`: look inside a store (either backend), like etcdctl.
//! - `bench`: benchmarks with their raw floors measured in the same run.
//! - `crd print`: Capstan's own CRDs as YAML, generated from api/.
//! - `sim`: simulated nodes for exercising the control plane without machines.
//! - `apply`, `get`, `delete`: kubectl's everyday verbs, for machines without kubectl.

/// mimalloc instead of glibc's malloc: the API server allocates and frees many small JSON
/// values from every worker thread, where glibc's arenas contend (measured in
/// docs/benchmarks.md, the scheduler section: floor 1,724 → 2,712 binds/s).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod agent_cmd;
mod api_failover;
mod auth_args;
mod bench;
mod certs;
mod client_cmd;
mod controllers_cmd;
mod crd_cmd;
mod diff;
mod encryption;
mod image_cmd;
mod ingress_cmd;
mod join;
mod pause_cmd;
mod serve_args;
mod signals;
mod sim_cmd;
mod storage_cmd;
mod store_args;
mod store_cmd;
mod token_cmd;
mod up;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "capstan", version, about = "A Kubernetes-style declarative platform", long_about = None)]
struct Cli {
    #[command(flatten)]
    client: client_cmd::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a single-machine Capstan: the object store, the Kubernetes API server and the
    /// controllers and a node agent.
    Up(up::UpArgs),
    /// Run the Kubernetes API server alone, over the embedded store or an etcd cluster.
    Apiserver(up::UpArgs),
    /// Run the controller manager (the controllers `--controllers` names) against a cluster.
    Controllers(controllers_cmd::ControllersArgs),
    /// Inspect or maintain a store directly (get, list, watch, compact, defrag, status).
    Store(store_cmd::StoreCmd),
    /// Maintain what the API server stores: `migrate` rewrites custom resources at their
    /// storage version (through the API, conversion webhooks included).
    #[command(subcommand)]
    Storage(storage_cmd::StorageCmd),
    /// Run a benchmark and print a Markdown report.
    Bench(bench::BenchCmd),
    /// Capstan's own CustomResourceDefinitions (`crd print`), generated from api/.
    Crd(crd_cmd::CrdCmd),
    /// Simulated nodes (kwok-like): register, renew Leases, run bound pods without containers.
    Sim(sim_cmd::SimArgs),
    /// Run the node agent: register this machine as a Node and run the pods bound to it.
    Agent(agent_cmd::AgentCmd),
    /// Run the ingress proxy alone: HTTP(S) routed into Services by the Ingresses of its
    /// class (`capstan up` runs one itself).
    Ingress(ingress_cmd::IngressCmd),
    /// Container images for the containerd runtime.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Bootstrap tokens agents join with (create, list, delete).
    #[command(subcommand)]
    Token(token_cmd::TokenCmd),
    /// The process runtime's per-container shim (started by the agent, not by users).
    #[command(hide = true)]
    Shim {
        /// The container's directory (its container.json).
        dir: std::path::PathBuf,
    },
    /// The process runtime's trampoline: join a cgroup, then exec the container's command.
    #[command(hide = true)]
    ShimExec {
        /// One per hierarchy (cgroup v1 has several).
        #[arg(long)]
        cgroup: Vec<std::path::PathBuf>,
        #[arg(long, allow_hyphen_values = true)]
        oom_score_adj: i64,
        /// Start a session whose controlling terminal is stdin (`kubectl exec -t`).
        #[arg(long)]
        tty: bool,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// The process of Capstan's own pause (sandbox) image: sleeps until SIGTERM or SIGINT,
    /// reaping orphans (started by containerd, not by users).
    #[command(hide = true)]
    Pause,
    #[command(flatten)]
    Client(client_cmd::ClientCmd),
}

#[derive(Debug, clap::Subcommand)]
enum ImageCmd {
    /// Import OCI archives (e.g. from e2e/images/build.sh) into containerd's k8s.io namespace.
    Import(agent_cmd::ImageImportCmd),
    /// Write the capstan image (this binary, with git, sh and ssh for its controllers) as an
    /// OCI archive: what the Helm chart runs.
    Build(image_cmd::ImageBuildCmd),
}

fn main() -> std::process::ExitCode {
    // The long-running commands commit the allocator's arenas lazily: mimalloc commits each
    // arena eagerly by default, and with transparent huge pages (madvise) that faults in 2 MiB
    // at a time — `capstan up` idled at 43 MiB of anonymous memory, 32 MiB of it huge pages,
    // and at 14 MiB lazily (measured, docs/benchmarks.md). mimalloc reads its options from the
    // environment once, before main: re-exec once with the variable set. Containers never see
    // it: the runtimes give them their own environment.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let has = |names: &[&str]| args.iter().skip(1).any(|a| names.iter().any(|n| a == n));
    let helper = has(&["shim", "shim-exec", "pause"]);
    if has(&["agent"]) && !helper {
        // The node agent, small and on every node, also keeps its own pages small (~8 MiB
        // less, measured). Set before the arenas are touched, so first thing; it survives
        // execve (and its children inherit it, which `capstan up` therefore does not do).
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
    const LAZY: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
    // `bench` too: its in-process servers then run as `capstan apiserver` does.
    if has(&[
        "agent",
        "up",
        "controllers",
        "apiserver",
        "ingress",
        "sim",
        "bench",
    ]) && !helper
        && std::env::var_os(LAZY).is_none()
        && let Ok(exe) = std::env::current_exe()
    {
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(exe)
            .args(&args[1..])
            .env(LAZY, "0")
            .exec();
        eprintln!("capstan: re-exec with {LAZY}=0 failed ({err}); going on");
    }
    let cli = Cli::parse();
    if let Command::ShimExec {
        cgroup,
        oom_score_adj,
        tty,
        argv,
    } = &cli.command
    {
        // Returns only when the exec failed.
        let code =
            capstan_node_agent::runtime::process::shim_exec(cgroup, *oom_score_adj, *tty, argv);
        return std::process::ExitCode::from(code.clamp(0, 255) as u8);
    }
    if let Command::Pause = &cli.command {
        return pause_cmd::run();
    }
    if let Command::Shim { dir } = &cli.command {
        // Synchronous, no async runtime: it lives as long as its container.
        let code = capstan_node_agent::runtime::process::shim_main(dir);
        return std::process::ExitCode::from(code.clamp(0, 255) as u8);
    }
    init_tracing();
    // The blocking pool serves the embedded store's reads (and file I/O). Tokio allows 512
    // threads; under a burst of reads (50,000 pods starting) the API server grew 240 of them,
    // each with its own allocator heap holding pages: more threads than this do not read faster
    // on any machine the store suits, and beyond it reads queue.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(32)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("capstan: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args, true).await,
            Command::Apiserver(args) => up::run(args, false).await,
            Command::Controllers(args) => controllers_cmd::run(cli.client, args).await,
            Command::Store(cmd) => store_cmd::run(cmd).await,
            Command::Bench(cmd) => bench::run(cmd).await,
            Command::Crd(cmd) => crd_cmd::run(cmd),
            Command::Sim(args) => sim_cmd::run(cli.client, args).await,
            Command::Agent(cmd) => agent_cmd::run(cli.client, cmd).await,
            Command::Ingress(cmd) => ingress_cmd::run(cli.client, cmd).await,
            Command::Token(cmd) => token_cmd::run(cli.client, cmd).await,
            Command::Storage(cmd) => storage_cmd::run(cli.client, cmd).await,
            Command::Image(ImageCmd::Import(cmd)) => agent_cmd::image_import(cmd).await,
            Command::Image(ImageCmd::Build(cmd)) => image_cmd::build(cmd),
            Command::Shim { .. } | Command::ShimExec { .. } | Command::Pause => Ok(()),
            Command::Client(cmd) => client_cmd::run(cli.client, cmd).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capstan: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr through `tracing`; `RUST_LOG` filters (default: info). Colour codes only
/// when stderr is a terminal (and `NO_COLOR` is unset): a log file or pipe gets plain text.
fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}
