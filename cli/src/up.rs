//! `capstan up`: the single-machine Capstan — the object store, the Kubernetes API server over
//! it, and the controller manager talking to that server over HTTP like any client (the node
//! agent joins here when it is built). Writes `DATA_DIR/kubeconfig` for kubectl and prints one
//! line ("capstan is up: ...") once /readyz answers and the in-process controllers lead (or
//! stand by for another replica on the same etcd). `capstan apiserver` is the same without the
//! controllers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use capstan_apiserver::ApiServer;
use capstan_apiserver::http::component_status::Probe;
use capstan_storage::{CompactionPolicy, StorageMetrics};
use clap::Args;

use crate::controllers_cmd::ManagerState;
use crate::signals::shutdown_signal;
use crate::store_args::StoreArgs;

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to serve the API on (HTTPS; plain HTTP with --insecure-http, on loopback only).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Which node agent runs pods: `auto` (containerd when installed, else processes),
    /// `cri`, `process`, or `none`.
    #[arg(long, value_enum, default_value = "auto")]
    pub runtime: Runtime,
    /// Use the containerd at this socket; without it, `cri` and `auto` run their own under
    /// DATA_DIR/containerd.
    #[arg(long)]
    pub cri_socket: Option<std::path::PathBuf>,
    /// The pods' IPv4 range (the managed containerd's CNI config). With
    /// `--allocate-node-cidrs=true` this node's range is the one the controller cuts for it
    /// from --cluster-cidr instead, as every joined agent's is.
    #[arg(long, default_value = DEFAULT_POD_CIDR)]
    pub pod_cidr: String,
    /// The bridge the pods attach to (the managed containerd's CNI config).
    #[arg(long, default_value = "cni0")]
    pub cni_bridge: String,
    #[command(flatten)]
    pub agent: crate::agent_cmd::AgentArgs,
    /// Service ClusterIPs are allocated from this IPv4 range.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: capstan_apiserver::service::cluster_ip::ServiceCidr,
    /// NodePorts are allocated from this range.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: capstan_apiserver::service::node_port::NodePortRange,
    /// The address the `kubernetes` Service's endpoints name for this server (default: the
    /// listen address, or the host's address when listening on all of them).
    #[arg(long)]
    pub advertise_address: Option<std::net::Ipv4Addr>,
    /// Seconds every new pod tolerates the node.kubernetes.io/not-ready:NoExecute taint, unless
    /// it says otherwise (the DefaultTolerationSeconds admission).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(i64).range(0..))]
    pub default_not_ready_toleration_seconds: i64,
    /// Seconds every new pod tolerates the node.kubernetes.io/unreachable:NoExecute taint.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(i64).range(0..))]
    pub default_unreachable_toleration_seconds: i64,
    #[command(flatten)]
    pub manager: crate::controllers_cmd::ManagerArgs,
    #[command(flatten)]
    pub serve: crate::serve_args::ServeArgs,
    #[command(flatten)]
    pub auth: crate::auth_args::AuthArgs,
    /// Encrypt these resources' values in the store: kube-apiserver's EncryptionConfiguration
    /// (aesgcm keys, the first encrypts; values are re-encrypted under it at start).
    #[arg(long)]
    pub encryption_provider_config: Option<std::path::PathBuf>,
    /// Do not create the `local-path` StorageClass (the default class, whose claims become
    /// directories under the data dir of the node their first pod runs on).
    #[arg(long)]
    pub disable_local_storage: bool,
    /// Do not run the ingress proxy, nor create the `capstan` IngressClass.
    #[arg(long)]
    pub disable_ingress: bool,
    #[command(flatten)]
    pub ingress: crate::ingress_cmd::IngressArgs,
}

pub use crate::agent_cmd::Runtime;

const DEFAULT_POD_CIDR: &str = "10.88.0.0/16";

pub async fn run(mut args: UpArgs, with_controllers: bool) -> Result<()> {
    // A named containerd must answer before anything starts; our own one starts last, once
    // the API server is up (a failed start leaves nothing behind).
    let mut runtime = if with_controllers {
        args.runtime
    } else {
        Runtime::None
    };
    if let (Runtime::Cri | Runtime::Auto, Some(sock)) = (runtime, &args.cri_socket) {
        if tokio::net::UnixStream::connect(sock).await.is_err() {
            bail!(
                "--cri-socket {}: no containerd answers there",
                sock.display()
            );
        }
        runtime = Runtime::Cri;
    }
    let managed_possible =
        capstan_node_agent::containerd::available() && rustix::process::geteuid().is_root();
    if runtime == Runtime::Cri && args.cri_socket.is_none() && !managed_possible {
        bail!(
            "--runtime cri: containerd, runc and the CNI plugins must be installed (apt-get install containerd runc containernetworking-plugins) and capstan must run as root; or name a running containerd with --cri-socket"
        );
    }
    if with_controllers {
        // The Nodes' ranges are cut from the agent's --cluster-cidr (the one pod range).
        args.manager.cluster_cidr = args
            .agent
            .cluster_cidr
            .as_deref()
            .map(crate::controllers_cmd::parse_cluster_cidr)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?;
        if args.manager.allocate_node_cidrs && args.pod_cidr != DEFAULT_POD_CIDR {
            bail!(
                "--pod-cidr names this node's range when the cluster does not allocate ranges; with --allocate-node-cidrs=true it is cut from --cluster-cidr"
            );
        }
        args.manager.names()?; // an unknown controller fails here, before anything starts
        args.manager.node_lifecycle()?;
        args.manager.node_ipam()?;
        args.manager.autoscaler()?;
    }
    args.auth.check(args.listen)?;
    // Who the in-process components are: the controller manager, and the node agent as its
    // node (system:node:NAME in system:nodes). On plain HTTP they (and the administrator's
    // kubeconfig) authenticate with tokens made for this run.
    let node_user = format!("system:node:{}", crate::agent_cmd::node_name(&args.agent));
    let identities: [(&str, &str, Vec<&str>); 4] = [
        (
            "admin",
            crate::certs::ADMIN,
            vec![capstan_apiserver::auth::MASTERS],
        ),
        (
            "controller-manager",
            capstan_apiserver::auth::rbac::bootstrap::CONTROLLER_MANAGER,
            vec![],
        ),
        (
            "node",
            &node_user,
            vec![capstan_apiserver::auth::rbac::bootstrap::NODES],
        ),
        (
            "ingress",
            capstan_apiserver::auth::rbac::bootstrap::INGRESS,
            vec![],
        ),
    ];
    let mut tokens = Vec::new();
    if args.auth.insecure_http {
        for (_, user, groups) in &identities {
            tokens.push((
                crate::auth_args::random_token()?,
                user.to_string(),
                groups.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
            ));
        }
    }
    let mut auth_config = args.auth.config(&tokens)?;
    auth_config.service_accounts = Some(args.auth.service_accounts(&args.store.data_dir)?);
    let registry = prometheus::Registry::new();
    let metrics = StorageMetrics::register(&registry).context("registering metrics")?;
    let mut store = args.store.open(Some(CompactionPolicy::default())).await?;
    if let Some(path) = &args.encryption_provider_config {
        store = crate::encryption::wrap(store, path).await?;
    }
    let store = metrics.wrap(store);
    // The API server reaches agents' ports over TLS with a client certificate of its own,
    // checking theirs against the cluster CA (plain HTTP on --insecure-http).
    let pki_dir = args.store.data_dir.join("pki");
    let kubelet_tls = if args.auth.insecure_http {
        None
    } else {
        std::fs::create_dir_all(&pki_dir)
            .with_context(|| format!("creating {}", pki_dir.display()))?;
        let ca = capstan_pki::Ca::load_or_create(&pki_dir).context("the cluster CA")?;
        let id = ca
            .ensure_client(
                &pki_dir,
                "apiserver-kubelet-client",
                capstan_apiserver::auth::rbac::bootstrap::KUBELET_CLIENT,
                &[],
            )
            .context("the API server's client certificate for agents")?;
        Some(Arc::new(capstan_pki::tls::client_config(
            ca.cert_pem(),
            Some(&id),
        )?))
    };
    let front_proxy = front_proxy(&pki_dir, args.auth.insecure_http)?;
    let config = capstan_apiserver::Config {
        service_cidr: args.service_cidr,
        node_ports: args.service_node_port_range,
        default_tolerations:
            capstan_apiserver::default_toleration_seconds::DefaultTolerationSeconds {
                not_ready: args.default_not_ready_toleration_seconds,
                unreachable: args.default_unreachable_toleration_seconds,
            },
        auth: auth_config,
        audit: args.auth.audit()?,
        inflight: args.serve.inflight(),
        service_account_admission: args.auth.service_account_admission(),
        kubelet_tls,
        front_proxy: Some(front_proxy),
    };
    let api = ApiServer::with_config(store.clone(), registry, config)
        .await
        .map_err(|e| anyhow::anyhow!("starting the API server: {}", e.message))?;
    if !api.wait_ready(Duration::from_secs(30)).await {
        bail!("the API server's watch caches did not fill within 30s");
    }
    if !args.disable_local_storage {
        capstan_apiserver::volumes::storage_class::ensure_local_path(&api)
            .await
            .map_err(|e| anyhow::anyhow!("creating the local-path StorageClass: {}", e.message))?;
    }
    let ingress = with_controllers && !args.disable_ingress;
    if ingress {
        capstan_apiserver::ingress::ensure_class(
            &api,
            capstan_node_agent::ingress::DEFAULT_CLASS,
            capstan_node_agent::ingress::CONTROLLER,
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating the capstan IngressClass: {}", e.message))?;
    }
    capstan_apiserver::crd::builtin::ensure(&api)
        .await
        .map_err(|e| anyhow::anyhow!("installing Capstan's CRDs: {}", e.message))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let advertise = advertise_address(args.advertise_address, addr)?;
    let endpoints = capstan_apiserver::service::system::EndpointReconciler::start(
        api.clone(),
        advertise,
        capstan_apiserver::service::system::LEASE_INTERVAL,
    )
    .await
    .map_err(|e| anyhow::anyhow!("keeping the kubernetes Service: {}", e.message))?;
    let kubeconfig = args.store.data_dir.join("kubeconfig");
    let scheme = if args.auth.insecure_http {
        "http"
    } else {
        "https"
    };
    let url = format!("{scheme}://{addr}");
    // Each in-process component's kubeconfig: the CA and its certificate, or its token.
    let mut kubeconfigs = Vec::new();
    let mut tls = None;
    if args.auth.insecure_http {
        for (token, ..) in &tokens {
            kubeconfigs.push(crate::certs::kubeconfig(
                &url,
                None,
                crate::certs::Credentials::Token(token),
            ));
        }
    } else {
        let names = crate::certs::serving_names(
            addr,
            Some(*advertise.ip()),
            Some(args.service_cidr.nth(1)),
            &args.auth.tls_sans,
        );
        let certs = crate::certs::ClusterCerts::prepare(&args.store.data_dir.join("pki"), &names)?;
        for (file, user, groups) in &identities {
            let id = certs.client(file, user, groups)?;
            kubeconfigs.push(crate::certs::kubeconfig(
                &url,
                Some(certs.ca.cert_pem()),
                crate::certs::Credentials::Cert(&id),
            ));
        }
        tls = Some(certs.server_config()?);
    }
    crate::certs::write_kubeconfig(&kubeconfig, &kubeconfigs[0])?;
    let app = capstan_apiserver::router(api.clone());
    let limits = args.serve.limits();
    // The server stops last: the agent leaving removes its DNS endpoint through it.
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = server_stopped.await;
    };
    let mut server = match tls {
        Some(tls) => tokio::spawn(capstan_apiserver::serve_tls(
            listener, app, limits, tls, stopped,
        )),
        None => tokio::spawn(capstan_apiserver::serve(listener, app, limits, stopped)),
    };
    let (leading_tx, mut leading) = tokio::sync::watch::channel(if with_controllers {
        ManagerState::Campaigning
    } else {
        ManagerState::Leading
    });
    let mut manager_task = None;
    if with_controllers {
        let base = crate::certs::config_of(&kubeconfigs[1])
            .await
            .context("client for the controllers")?;
        let client = kube::Client::try_from(base.clone())?;
        let (mut manager, registry) = (args.manager.clone(), api.prometheus.clone());
        // On plain HTTP (development) every controller acts as the manager.
        if args.auth.insecure_http {
            manager.use_service_account_credentials = false;
        }
        manager.controller_token_dir = Some(args.store.data_dir.join("controller-tokens"));
        manager
            .gitops_cache_dir
            .get_or_insert_with(|| args.store.data_dir.join("gitops"));
        if manager.leader_elect_identity.is_none() {
            manager.leader_elect_identity = Some(stable_identity(&args.store));
        }
        if !args.auth.insecure_http {
            let pki = args.store.data_dir.join("pki");
            manager
                .root_ca_file
                .get_or_insert_with(|| pki.join("ca.crt"));
            if manager.cluster_signing_cert_file.is_none() {
                manager.cluster_signing_cert_file = Some(pki.join("ca.crt"));
                manager.cluster_signing_key_file = Some(pki.join("ca.key"));
            }
        }
        // componentstatuses reports the in-process controller manager (and its scheduler).
        let running = Arc::new(AtomicBool::new(true));
        for component in ["controller-manager", "scheduler"] {
            api.set_component(component, Probe::InProcess(running.clone()));
        }
        manager_task = Some(tokio::spawn(async move {
            let r = manager
                .run(client, base, &registry, leading_tx, shutdown_signal())
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "the controller manager failed");
            }
            running.store(false, Ordering::Relaxed);
        }));
    }
    let mut managed = None;
    let mut cri_socket = args.cri_socket.clone().unwrap_or_default();
    if matches!(runtime, Runtime::Cri | Runtime::Auto) && args.cri_socket.is_none() {
        if managed_possible {
            // When the cluster allocates ranges, this node's comes from the controller like
            // any joined agent's: the agent writes the CNI config once the Node has it.
            let allocated = args.manager.allocate_node_cidrs;
            let cfg = capstan_node_agent::containerd::Config {
                dir: args.store.data_dir.join("containerd"),
                pod_cidr: if allocated {
                    String::new()
                } else {
                    args.pod_cidr.clone()
                },
                bridge: args.cni_bridge.clone(),
                sandbox_image: "localhost/pause:1".into(),
            };
            if allocated {
                args.agent.cni_conf_dir.get_or_insert(cfg.cni_conf_dir());
                args.agent.cni_conf_bridge = args.cni_bridge.clone();
            }
            let c = capstan_node_agent::containerd::start(&cfg).await?;
            cri_socket = c.socket.clone();
            managed = Some(c);
            runtime = Runtime::Cri;
        } else {
            tracing::warn!(
                "containerd is not installed (or capstan is not root): RUNNING PODS AS PLAIN PROCESSES (no images, no isolation)"
            );
            runtime = Runtime::Process;
        }
    }
    let mut agent_task = None;
    if runtime != Runtime::None {
        let client = crate::certs::client_of(&kubeconfigs[2])
            .await
            .context("client for the node agent")?;
        let mut agent = args.agent.clone();
        if agent.root_dir.is_none() {
            agent.root_dir = Some(args.store.data_dir.join("agent"));
        }
        agent.port.get_or_insert(0);
        if agent.image_dir.is_none() {
            agent.image_dir = Some(args.store.data_dir.join("images"));
        }
        if agent.cluster_cidr.is_none() && runtime == Runtime::Cri {
            agent.cluster_cidr = Some(args.pod_cidr.clone());
        }
        // Its port serves with a certificate from the cluster CA (which the API server checks)
        // and takes the API server's client certificate.
        if !args.auth.insecure_http && agent.tls_cert_file.is_none() {
            let ca = capstan_pki::Ca::load_or_create(&pki_dir).context("the cluster CA")?;
            let host_ip = agent
                .node_ip
                .clone()
                .unwrap_or_else(capstan_node_agent::node::host_ip);
            ca.ensure_serving(&pki_dir, "agent", &crate::agent_cmd::agent_names(&host_ip))
                .context("the agent's serving certificate")?;
            agent.tls_cert_file = Some(pki_dir.join("agent.crt"));
            agent.tls_private_key_file = Some(pki_dir.join("agent.key"));
        }
        if !args.auth.insecure_http && agent.client_ca_file.is_none() {
            agent.client_ca_file = Some(pki_dir.join("ca.crt"));
        }
        let socket = cri_socket.clone();
        // Stops with the server (its pod watch would hold the graceful shutdown open),
        // removing its proxy rules and DNS endpoint first; the pods keep running.
        agent_task = Some(tokio::spawn(async move {
            let r = crate::agent_cmd::run_agent(client, runtime, &socket, agent, shutdown_signal())
                .await;
            if let Err(e) = r {
                tracing::error!(error = format!("{e:#}"), "the node agent failed");
            }
        }));
    }
    // The ingress proxy, as its own identity. Its ports are the host's 80 and 443 by default:
    // when one is taken, the cluster runs without it (and says so) rather than not at all.
    let mut ingress_proxy = None;
    if ingress {
        let client = crate::certs::client_of(&kubeconfigs[3])
            .await
            .context("client for the ingress proxy")?;
        let node_ip = args
            .agent
            .node_ip
            .clone()
            .unwrap_or_else(capstan_node_agent::node::host_ip);
        let config = args.ingress.config(node_ip.parse().ok());
        let metrics = capstan_node_agent::ingress::IngressMetrics::register(&api.prometheus)
            .context("registering the ingress metrics")?;
        match capstan_node_agent::ingress::start(client, config, metrics).await {
            Ok(p) => ingress_proxy = Some(p),
            Err(e) => tracing::warn!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "ingress: not started; Ingresses are not served here (free the port, or give --ingress-http-address / --ingress-https-address, or --disable-ingress)"
            ),
        }
    }
    // Ready once the in-process controllers lead: a client acting right after the line is
    // served by them (a restart on the same data dir takes its own Lease back at once, a
    // released one is taken at once). Or once another replica sharing the store (on etcd) is
    // seen to hold the Lease: this one stands by, as it will until that one goes.
    let ready = async {
        match leading.wait_for(|s| *s != ManagerState::Campaigning).await {
            Ok(s) => {
                if let ManagerState::StandingBy(holder) = &*s {
                    tracing::info!(%holder, "the controllers stand by: another replica leads");
                }
            }
            // The manager ended before leading (its error is logged): no ready line.
            Err(_) => std::future::pending::<()>().await,
        }
        println!(
            "capstan is up: {url}/readyz answers; store={}; kubectl --kubeconfig {} get ns",
            store.backend(),
            kubeconfig.display()
        );
        std::future::pending::<()>().await
    };
    let early = tokio::select! {
        _ = shutdown_signal() => None,
        r = &mut server => Some(r),
        _ = ready => None,
    };
    if let Some(t) = agent_task
        && tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
    {
        tracing::warn!("the node agent did not stop within 10s");
    }
    // The proxy's watches would hold the server's graceful shutdown open.
    drop(ingress_proxy);
    // The manager releases its Lease through the server, so it stops before the server does.
    if let Some(t) = manager_task
        && tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .is_err()
    {
        tracing::warn!("the controller manager did not stop within 5s");
    }
    let _ = stop_server.send(());
    let served = match early {
        Some(r) => r,
        None => server.await,
    }
    .context("server task");
    endpoints.stop().await;
    if let Some(c) = managed {
        // Its pods keep running (their shims outlive it) and are adopted on the next start.
        tracing::info!(pid = c.pid, "stopping containerd; its pods keep running");
        c.stop();
    }
    served?.context("serving")?;
    tracing::info!("shutting down");
    Ok(())
}

/// The controller manager's Lease identity for `capstan up`: this machine's name and a hash of
/// the store it serves (the data dir, or etcd's endpoints and prefix), the same on every start,
/// so a restarted `up` finds the Lease its previous run held and takes it at once. Two `up`s
/// never share it: the embedded store locks its data dir, and two on one etcd prefix would
/// also share a kubeconfig.
fn stable_identity(store: &crate::store_args::StoreArgs) -> String {
    let dir = std::fs::canonicalize(&store.data_dir).unwrap_or_else(|_| store.data_dir.clone());
    let mut key = dir.to_string_lossy().into_owned();
    if store.store == crate::store_args::Backend::Etcd {
        key = format!(
            "{key} {} {}",
            store.etcd_endpoints.join(","),
            store.etcd_prefix
        );
    }
    // FNV-1a: stable across builds, unlike std's DefaultHasher.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{}_{:08x}", crate::controllers_cmd::hostname(), hash as u32)
}

/// What the `kubernetes` Service's endpoints name for this server: the given address, else the
/// address it listens on, else (listening on every address) the host's.
fn advertise_address(
    given: Option<std::net::Ipv4Addr>,
    listen: SocketAddr,
) -> Result<std::net::SocketAddrV4> {
    let ip = match (given, listen.ip()) {
        (Some(ip), _) => ip,
        (None, std::net::IpAddr::V4(ip)) if !ip.is_unspecified() => ip,
        _ => capstan_node_agent::node::host_ip()
            .parse()
            .context("the host's IPv4 address (pass --advertise-address)")?,
    };
    Ok(std::net::SocketAddrV4::new(ip, listen.port()))
}

/// The aggregation layer's client certificate (`front-proxy-client`), from a CA of its own
/// under `pki/front-proxy/` (never the cluster CA, which signs what CSRs ask for), and the
/// cluster CA extension API servers may trust for client certificates.
fn front_proxy(
    pki_dir: &std::path::Path,
    insecure_http: bool,
) -> Result<capstan_apiserver::aggregator::FrontProxy> {
    let dir = pki_dir.join("front-proxy");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = capstan_pki::Ca::load_or_create(&dir).context("the front-proxy CA")?;
    let identity = ca
        .ensure_client(
            &dir,
            "client",
            capstan_apiserver::aggregator::FRONT_PROXY_CLIENT,
            &[],
        )
        .context("the front-proxy client certificate")?;
    let client_ca_pem = if insecure_http {
        None
    } else {
        Some(
            capstan_pki::Ca::load_or_create(pki_dir)
                .context("the cluster CA")?
                .cert_pem()
                .to_string(),
        )
    };
    Ok(capstan_apiserver::aggregator::FrontProxy {
        identity,
        ca_pem: ca.cert_pem().to_string(),
        client_ca_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::stable_identity;
    use crate::store_args::{Backend, StoreArgs};

    fn store(dir: &str) -> StoreArgs {
        StoreArgs {
            store: Backend::Embedded,
            data_dir: dir.into(),
            etcd_endpoints: Vec::new(),
            etcd_prefix: "/registry/".into(),
            etcd_startup_timeout: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn the_lease_identity_is_the_same_for_a_data_dir_and_differs_between_them() {
        let a = stable_identity(&store("/nonexistent/a"));
        assert_eq!(a, stable_identity(&store("/nonexistent/a")));
        assert_ne!(a, stable_identity(&store("/nonexistent/b")));
        assert!(a.starts_with(&format!("{}_", crate::controllers_cmd::hostname())));
        let mut etcd = store("/nonexistent/a");
        etcd.store = Backend::Etcd;
        etcd.etcd_endpoints = vec!["http://127.0.0.1:2379".into()];
        assert_ne!(a, stable_identity(&etcd));
    }
}
