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
    /// The agent's serving certificate (PEM) for its port; with --tls-private-key-file. Without
    /// them it makes a self-signed one under ROOT_DIR/pki (`capstan up`: one from the cluster
    /// CA, which the API server checks).
    #[arg(long, requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// Client certificates from this CA (PEM) are accepted on the agent's port; default: the
    /// kubeconfig's CA. Without any the agent serves plain HTTP.
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
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
    /// Program Services into nftables on this node (kube-proxy's job): `auto` does when
    /// running as root with `nft` installed.
    #[arg(long, value_enum, default_value = "auto")]
    pub proxy: Toggle,
    /// The nftables table (family ip) the service proxy owns.
    #[arg(long, default_value = "capstan")]
    pub proxy_table: String,
    /// The pods' IPv4 range, every node's: Service traffic from it is masqueraded when bridged
    /// traffic bypasses netfilter (no br_netfilter); with --cni-conf-dir, traffic leaving it is
    /// masqueraded (nftables table `capstan-egress`) and pod-to-pod traffic keeps its source.
    /// Inside `capstan up`: its --pod-cidr.
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// Route every other Node's pod range (`spec.podCIDR`) via its InternalIP (host-gw, as
    /// flannel's backend of that name), so pods reach pods on other machines; the machines
    /// must share an L2 segment. `auto`: on when the agent writes its CNI config from the
    /// Node's assigned range (--cni-conf-dir, --containerd-dir) and runs as root; `on` needs
    /// root and iproute2.
    #[arg(long, value_enum, default_value = "auto")]
    pub pod_routes: Toggle,
    /// Write the pods' CNI config (a bridge over this Node's `spec.podCIDR`, once the node IPAM
    /// controller assigns it) to this directory: containerd's CNI conf_dir, for an agent whose
    /// pod range the cluster chooses.
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// The bridge that CNI config attaches pods to.
    #[arg(long, default_value = "cni0")]
    pub cni_conf_bridge: String,
    /// Serve cluster DNS on the node IP and publish it as a kube-dns endpoint (`auto`: carry
    /// on without it when the port is taken).
    #[arg(long, value_enum, default_value = "auto")]
    pub dns: Toggle,
    /// The cluster DNS server's port on the node IP (0: any free one; the kube-dns Service
    /// reaches it through the proxy whatever it is).
    #[arg(long, default_value_t = 53)]
    pub dns_port: u16,
    /// The nameserver pods with dnsPolicy ClusterFirst get (default: the ClusterIP of
    /// kube-system/kube-dns).
    #[arg(long)]
    pub cluster_dns: Option<String>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The node Lease's duration; the agent renews it every quarter of it (40 → every 10 s,
    /// as the kubelet). The node-lifecycle controller's grace period must exceed the renewal.
    #[arg(long, default_value_t = capstan_node_agent::node::LEASE_DURATION_SECONDS, value_parser = clap::value_parser!(i64).range(1..=3600))]
    pub node_lease_duration_seconds: i64,
    /// Thresholds of the pressure conditions, in the kubelet's syntax (signals not named keep
    /// these defaults). A node under pressure gets a NoSchedule taint.
    #[arg(long, default_value = "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,pid.available<5%", value_parser = capstan_node_agent::conditions::Thresholds::parse)]
    pub eviction_hard: capstan_node_agent::conditions::Thresholds,
    /// How often the node's, pods' and containers' CPU and memory use is sampled for
    /// `/stats/summary`, which metrics.k8s.io (`kubectl top`, autoscalers) reads; CPU rates
    /// are averaged over it. 0 turns sampling off.
    #[arg(long, default_value = "10s", value_parser = crate::controllers_cmd::parse_duration)]
    pub stats_interval: std::time::Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    Auto,
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct AgentCmd {
    #[arg(long, value_enum, default_value = "auto")]
    pub runtime: Runtime,
    /// containerd's socket, for `--runtime cri` (and `auto`).
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub cri_socket: PathBuf,
    /// Join the cluster at this API server URL with --token (instead of a kubeconfig).
    #[arg(long, requires_all = ["token", "ca_file"])]
    pub server: Option<String>,
    /// A bootstrap token (`capstan token create`): the agent asks for its own client and
    /// serving certificates with it, kept under ROOT_DIR/pki.
    #[arg(long, requires = "server")]
    pub token: Option<String>,
    /// The cluster CA (DATA_DIR/pki/ca.crt on the server) that --server must present.
    #[arg(long, requires = "server")]
    pub ca_file: Option<PathBuf>,
    /// Run a containerd of the agent's own under this directory (as `capstan up` does; its
    /// socket replaces --cri-socket), its pods on the bridge --cni-conf-bridge over the range
    /// the cluster assigns this Node (--cni-conf-dir defaults to DIR/net.d). Stopped with the
    /// agent; the pods' shims live on.
    #[arg(long)]
    pub containerd_dir: Option<PathBuf>,
    #[command(flatten)]
    pub agent: AgentArgs,
}

pub async fn run(client_args: ClientArgs, mut cmd: AgentCmd) -> Result<()> {
    let client = if let (Some(server), Some(token), Some(ca_file)) =
        (&cmd.server, &cmd.token, &cmd.ca_file)
    {
        let root = cmd
            .agent
            .root_dir
            .get_or_insert_with(|| PathBuf::from(DEFAULT_ROOT_DIR))
            .clone();
        let host_ip = cmd
            .agent
            .node_ip
            .clone()
            .unwrap_or_else(capstan_node_agent::node::host_ip);
        let joined = crate::join::join(
            server,
            token,
            ca_file,
            &root,
            &node_name(&cmd.agent),
            &agent_names(&host_ip),
        )
        .await?;
        cmd.agent.tls_cert_file = Some(joined.serving_cert);
        cmd.agent.tls_private_key_file = Some(joined.serving_key);
        cmd.agent.client_ca_file = Some(ca_file.clone());
        if client_args.failover_servers.is_empty() {
            joined.client
        } else {
            // The node's own kubeconfig (join wrote it), through a failover front.
            let text = std::fs::read_to_string(root.join("kubeconfig"))?;
            let config = crate::certs::config_of(&text).await?;
            let config = crate::api_failover::config(config, &client_args.failover_servers).await?;
            kube::Client::try_from(config)?
        }
    } else {
        let client = client(&client_args).await?;
        if cmd.agent.client_ca_file.is_none()
            && let Some(pem) = kubeconfig_ca(&client_args).await?
        {
            let dir = cmd
                .agent
                .root_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT_DIR))
                .join("pki");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join("client-ca.crt");
            capstan_pki::write_file(&path, &pem, 0o644)?;
            cmd.agent.client_ca_file = Some(path);
        }
        client
    };
    // A containerd of the agent's own, whose pods get the Node's assigned range.
    let managed = match &cmd.containerd_dir {
        Some(dir) => {
            let cfg = capstan_node_agent::containerd::Config {
                dir: dir.clone(),
                pod_cidr: String::new(),
                bridge: cmd.agent.cni_conf_bridge.clone(),
                sandbox_image: "localhost/pause:1".into(),
            };
            let c = capstan_node_agent::containerd::start(&cfg)
                .await
                .context("starting containerd")?;
            cmd.cri_socket = c.socket.clone();
            cmd.runtime = Runtime::Cri;
            cmd.agent.cni_conf_dir.get_or_insert(cfg.cni_conf_dir());
            Some(c)
        }
        None => None,
    };
    let runtime = resolve_runtime(cmd.runtime, &cmd.cri_socket);
    let ran = run_agent(
        client,
        runtime,
        &cmd.cri_socket,
        cmd.agent,
        crate::signals::shutdown_signal(),
    )
    .await;
    if let Some(c) = managed {
        tokio::task::block_in_place(|| c.stop());
    }
    ran
}

/// `auto`: containerd when its socket is there, else plain processes.
fn resolve_runtime(runtime: Runtime, cri_socket: &std::path::Path) -> Runtime {
    match runtime {
        Runtime::Auto if cri_socket.exists() => Runtime::Cri,
        Runtime::Auto => {
            tracing::warn!(
                "no containerd socket at {}: RUNNING PODS AS PLAIN PROCESSES (no images, no isolation)",
                cri_socket.display()
            );
            Runtime::Process
        }
        r => r,
    }
}

/// Where the agent keeps its state without --root-dir.
const DEFAULT_ROOT_DIR: &str = "/var/lib/capstan/agent";

/// The CA (PEM) of the kubeconfig's cluster, for the agent to check client certificates with;
/// None when the kubeconfig names none.
async fn kubeconfig_ca(args: &ClientArgs) -> Result<Option<String>> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let Some(certs) = config.root_cert.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    use base64::Engine as _;
    let mut pem = String::new();
    for der in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    Ok(Some(pem))
}

/// The agent port's TLS: its certificate (given, or self-signed under `root_dir/pki`) and the
/// client CA; None (plain HTTP) without a client CA.
fn agent_tls(
    args: &AgentArgs,
    root_dir: &std::path::Path,
    host_ip: &str,
) -> Result<Option<Arc<rustls::ServerConfig>>> {
    let Some(ca_file) = &args.client_ca_file else {
        return Ok(None);
    };
    let client_ca = std::fs::read_to_string(ca_file)
        .with_context(|| format!("reading --client-ca-file {}", ca_file.display()))?;
    let serving = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(c), Some(k)) => capstan_pki::Issued {
            cert_pem: std::fs::read_to_string(c)
                .with_context(|| format!("reading --tls-cert-file {}", c.display()))?,
            key_pem: std::fs::read_to_string(k)
                .with_context(|| format!("reading --tls-private-key-file {}", k.display()))?,
        },
        _ => {
            // kubelet's fallback: a certificate of its own, kept under its root dir.
            let dir = root_dir.join("pki");
            std::fs::create_dir_all(&dir)?;
            let own = capstan_pki::Ca::load_or_create(&dir)?;
            own.ensure_serving(&dir, "agent", &agent_names(host_ip))?
        }
    };
    Ok(Some(Arc::new(capstan_pki::tls::server_config(
        &client_ca, &serving,
    )?)))
}

/// The names an agent's serving certificate covers: its node IP, loopback and host name.
pub(crate) fn agent_names(host_ip: &str) -> Vec<String> {
    let mut names = vec![host_ip.to_string(), "127.0.0.1".into(), "localhost".into()];
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .to_lowercase();
    if !host.is_empty() {
        names.push(host);
    }
    names.dedup();
    names
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

/// Runs the agent with `runtime` (Cri, Process or None: resolve Auto first), its service
/// proxy and its DNS server until it fails or `shutdown` resolves; then removes the proxy's
/// rules and the DNS server's endpoint (the pods keep running, as containers outlive a
/// kubelet, and are adopted on the next start).
pub async fn run_agent(
    client: kube::Client,
    runtime: Runtime,
    cri_socket: &std::path::Path,
    args: AgentArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    if runtime == Runtime::None {
        return Ok(());
    }
    // One /metrics for the agent, its proxy and its DNS server.
    let metrics = capstan_node_agent::server::Metrics::new().context("the agent's metrics")?;
    let services = NodeServices::start(&client, &args, &metrics.registry).await?;
    let dns = services.cluster_dns.clone();
    let ran = tokio::select! {
        r = run_node(client, runtime, cri_socket, args, dns, metrics) => r,
        _ = shutdown => {
            tracing::info!("node agent stopping; its pods keep running");
            Ok(())
        }
    };
    services.stop().await;
    ran
}

/// The agent's share of Services: the proxy and the cluster DNS server; and the routes to
/// other nodes' pods.
struct NodeServices {
    proxy: Option<capstan_node_agent::proxy::Proxy>,
    /// Keeps the pod routes while it lives (the routes stay after it).
    pod_routes: Option<tokio::task::JoinHandle<()>>,
    /// Keeps the CNI config equal to the Node's pod range.
    cni_config: Option<tokio::task::JoinHandle<()>>,
    /// The pod egress masquerade and the task keeping it (the table goes on a clean stop).
    egress: Option<(
        capstan_node_agent::pod_egress::PodEgress,
        tokio::task::JoinHandle<()>,
    )>,
    dns: Option<capstan_node_agent::dns::DnsServer>,
    /// What pods with dnsPolicy ClusterFirst are given.
    cluster_dns: Option<String>,
}

impl NodeServices {
    async fn start(
        client: &kube::Client,
        args: &AgentArgs,
        registry: &prometheus::Registry,
    ) -> Result<NodeServices> {
        let name = node_name(args);
        let host_ip = args
            .node_ip
            .clone()
            .unwrap_or_else(capstan_node_agent::node::host_ip);
        let root = rustix::process::geteuid().is_root();
        let nft = capstan_node_agent::containerd::which("nft").is_some();
        let proxy = match (args.proxy, root && nft) {
            (Toggle::Off, _) => None,
            (Toggle::Auto, false) => {
                tracing::warn!(
                    "not root or no `nft` (apt-get install nftables): Services are NOT proxied on this node"
                );
                None
            }
            _ => {
                let mut cfg = capstan_node_agent::proxy::ProxyConfig::new(&name);
                cfg.table = args.proxy_table.clone();
                cfg.cluster_cidr = args.cluster_cidr.clone();
                if let Ok(ip) = host_ip.parse() {
                    cfg.node_ips = vec![ip];
                }
                Some(
                    capstan_node_agent::proxy::start(client.clone(), cfg, registry)
                        .await
                        .context("starting the service proxy")?,
                )
            }
        };
        let dns = match args.dns {
            Toggle::Off => None,
            _ => {
                let ip: std::net::IpAddr = host_ip
                    .parse()
                    .with_context(|| format!("node IP {host_ip:?}"))?;
                let mut cfg = capstan_node_agent::dns::DnsConfig::new(
                    std::net::SocketAddr::new(ip, args.dns_port),
                    name.clone(),
                );
                cfg.domain = args.cluster_domain.clone();
                match capstan_node_agent::dns::start(client.clone(), cfg, registry).await {
                    Ok(d) => {
                        tracing::info!(addr = %d.local_addr(), "cluster DNS serving");
                        Some(d)
                    }
                    Err(e) if args.dns == Toggle::Auto => {
                        tracing::error!(error = format!("{e:#}"), "cluster DNS not started");
                        None
                    }
                    Err(e) => return Err(e).context("starting cluster DNS"),
                }
            }
        };
        // An agent that writes its CNI config from the Node's assigned range is one machine of
        // many: pods route to other machines' ranges (unless told not to), and leave the
        // cluster range masqueraded by the agent, not by the bridge plugin (which would also
        // rewrite pod-to-pod traffic to other nodes).
        let assigned_ranges = args.cni_conf_dir.is_some();
        let routes_on = match args.pod_routes {
            Toggle::On => true,
            Toggle::Auto => assigned_ranges && root,
            Toggle::Off => false,
        };
        let egress = match (&args.cluster_cidr, assigned_ranges) {
            (Some(cidr), true) if root && nft => Some(
                capstan_node_agent::pod_egress::PodEgress::new(
                    capstan_node_agent::proxy::nft::Nft::new("nft"),
                    capstan_node_agent::pod_egress::TABLE,
                    cidr,
                )
                .map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?,
            ),
            (_, true) => {
                tracing::warn!(
                    "no --cluster-cidr, or not root with `nft`: the CNI bridge masquerades pod traffic leaving this node's range, so pods on other machines see this node's address, not the pod's"
                );
                None
            }
            _ => None,
        };
        if let Some(e) = &egress {
            // Before the CNI config exists, so no pod starts with the bridge's masquerade off
            // and nothing in its place.
            e.apply()
                .await
                .context("programming the pod egress masquerade")?;
        }
        let egress_task = egress.clone().map(|e| tokio::spawn(e.run()));
        let pod_routes = routes_on.then(|| {
            tokio::spawn(capstan_node_agent::pod_routes::run(
                client.clone(),
                name.clone(),
                capstan_node_agent::pod_routes::Kernel::default(),
            ))
        });
        let cni_config = args.cni_conf_dir.as_ref().map(|dir| {
            let cfg = capstan_node_agent::cni_config::CniConfig {
                dir: dir.clone(),
                bridge: args.cni_conf_bridge.clone(),
                ipam_dir: args
                    .root_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT_DIR))
                    .join("cni-ipam"),
                ip_masq: egress.is_none(),
            };
            tokio::spawn(capstan_node_agent::cni_config::run(
                client.clone(),
                name.clone(),
                cfg,
            ))
        });
        let cluster_dns = match &args.cluster_dns {
            Some(ip) => Some(ip.clone()),
            None => kube_dns_ip(client).await,
        };
        if cluster_dns.is_none() {
            tracing::warn!(
                "no kube-system/kube-dns Service and no --cluster-dns: pods get the host's resolv.conf"
            );
        }
        Ok(NodeServices {
            proxy,
            pod_routes,
            egress: egress.zip(egress_task),
            cni_config,
            dns,
            cluster_dns,
        })
    }

    async fn stop(self) {
        for t in self.pod_routes.iter().chain(&self.cni_config) {
            t.abort();
        }
        if let Some((egress, task)) = self.egress {
            task.abort();
            if let Err(e) = egress.remove().await {
                tracing::warn!(error = %e, "removing the pod egress masquerade");
            }
        }
        if let Some(p) = self.proxy
            && let Err(e) = p.shutdown().await
        {
            tracing::warn!(
                error = format!("{e:#}"),
                "removing the service proxy's rules"
            );
        }
        if let Some(d) = self.dns
            && let Err(e) = d.shutdown().await
        {
            tracing::warn!(error = format!("{e:#}"), "stopping cluster DNS");
        }
    }
}

/// The ClusterIP of kube-system/kube-dns (the API server creates it), asked a few times.
async fn kube_dns_ip(client: &kube::Client) -> Option<String> {
    let api: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(client.clone(), "kube-system");
    for _ in 0..10 {
        match api.get_opt("kube-dns").await {
            Ok(Some(s)) => {
                return s
                    .spec
                    .and_then(|s| s.cluster_ip)
                    .filter(|ip| !ip.is_empty() && ip != "None");
            }
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "reading kube-system/kube-dns");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    None
}

pub(crate) fn node_name(args: &AgentArgs) -> String {
    match &args.node_name {
        Some(n) => n.clone(),
        None => rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .to_lowercase(),
    }
}

/// The node agent itself: registers the node and runs its pods.
async fn run_node(
    client: kube::Client,
    runtime: Runtime,
    cri_socket: &std::path::Path,
    args: AgentArgs,
    cluster_dns: Option<String>,
    metrics: capstan_node_agent::server::Metrics,
) -> Result<()> {
    let name = node_name(&args);
    let host_ip = args
        .node_ip
        .clone()
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
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT_DIR));
    std::fs::create_dir_all(&root_dir)
        .with_context(|| format!("creating {}", root_dir.display()))?;
    let port = args.port.unwrap_or(10250);
    let tls = agent_tls(&args, &root_dir, &host_ip)?;
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
        cluster_dns: cluster_dns.into_iter().collect(),
        cluster_domain: args.cluster_domain.clone(),
        lease_duration_seconds: args.node_lease_duration_seconds,
        eviction_hard: args.eviction_hard,
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
            let mut agent = Agent::new(client, Arc::new(rt), node, log_root, "containerd")
                .with_metrics(metrics)
                .with_stats_interval(args.stats_interval)
                .serve(listener);
            if let Some(tls) = tls {
                agent = agent.with_tls(tls);
            }
            agent.run().await?;
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
            let mut agent = Agent::new(client, Arc::new(rt), node, log_root, "process")
                .with_metrics(metrics)
                .with_stats_interval(args.stats_interval)
                .serve(listener);
            if let Some(tls) = tls {
                agent = agent.with_tls(tls);
            }
            agent.run().await?;
        }
    }
    Ok(())
}
