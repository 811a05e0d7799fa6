//! Cluster DNS: the node agent's DNS server for the cluster zone — what CoreDNS with its
//! `kubernetes` and `forward` plugins is to a Kubernetes cluster, following kubernetes/dns
//! `docs/specification.md`.
//!
//! Start at [`start`]: it binds UDP and TCP on one port (`server.rs`), watches Services and
//! EndpointSlices in every namespace into the pure [`zone::Zone`], forwards every other name to
//! the host's resolvers ([`forward`]), and publishes itself as an endpoint of
//! `kube-system/kube-dns` ([`publish`]). [`resolv`] computes pods' resolv.conf; [`bench`](mod@bench) measures
//! the server against a bare UDP responder.

pub mod bench;
pub mod forward;
pub mod metrics;
pub mod publish;
pub mod resolv;
mod server;
mod watch;
pub mod zone;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;

pub use metrics::DnsMetrics;
pub use resolv::{HostResolv, ResolvConf, kube_dns_ip, pod_dns_config};
pub use zone::Zone;

/// The resolv.conf of `pod`'s sandbox on this node (the kubelet's `GetPodDNS`): its dnsPolicy
/// and dnsConfig over the node's cluster DNS address and the host's resolv.conf — systemd-
/// resolved's upstream list rather than its 127.0.0.53 stub, which a pod cannot reach. `None`
/// leaves the runtime's default (a policy Kubernetes does not know, refused by validation).
pub fn pod_resolv(
    pod: &k8s_openapi::api::core::v1::Pod,
    node: &crate::NodeConfig,
) -> Option<crate::runtime::DnsSettings> {
    let spec = pod.spec.as_ref()?;
    let mut host = ResolvConf::read(Path::new("/etc/resolv.conf")).unwrap_or_default();
    if host.servers.iter().any(|s| s.starts_with("127.")) {
        let resolved = Path::new("/run/systemd/resolve/resolv.conf");
        if let Ok(r) = ResolvConf::read(resolved) {
            host = r;
        }
    }
    let conf = pod_dns_config(
        spec.dns_policy.as_deref(),
        spec.dns_config.as_ref(),
        spec.host_network.unwrap_or(false),
        node.cluster_dns.as_slice(),
        &node.cluster_domain,
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        &host,
    )?;
    Some(crate::runtime::DnsSettings {
        servers: conf.servers,
        searches: conf.searches,
        options: conf.options,
    })
}

/// How the DNS server runs.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Where to listen, UDP and TCP (port 0: one free port for both). The agent uses
    /// `<node ip>:53`; tests use 127.0.0.1:0.
    pub listen: SocketAddr,
    /// The cluster domain, "cluster.local".
    pub domain: String,
    /// TTL of every record (and of negative answers), seconds.
    pub ttl: u32,
    /// Upstream resolvers; empty means the nameservers of the host's /etc/resolv.conf.
    pub upstreams: Vec<SocketAddr>,
    /// How long a forwarded query may take across all upstreams before SERVFAIL.
    pub forward_timeout: Duration,
    /// This node's name (the published EndpointSlice is `kube-dns-<node_name>`).
    pub node_name: String,
    /// Whether to publish the kube-dns EndpointSlice (needs a specific listen IP).
    pub publish: bool,
    /// How often the published slice is checked (and written again if it is gone or differs).
    pub publish_resync: Duration,
}

impl DnsConfig {
    /// The defaults: cluster.local, TTL 5 s, the host's resolvers, 2 s forward timeout,
    /// published.
    pub fn new(listen: SocketAddr, node_name: impl Into<String>) -> DnsConfig {
        DnsConfig {
            listen,
            domain: "cluster.local".to_string(),
            ttl: 5,
            upstreams: Vec::new(),
            forward_timeout: Duration::from_secs(2),
            node_name: node_name.into(),
            publish: true,
            publish_resync: Duration::from_secs(30),
        }
    }
}

/// Why the DNS server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding DNS listeners on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid cluster domain {domain:?}")]
    Domain {
        domain: String,
        #[source]
        source: hickory_proto::ProtoError,
    },
    #[error("publishing needs a specific listen address, not {0}")]
    PublishAddress(SocketAddr),
    #[error("registering DNS metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("deleting the kube-dns EndpointSlice of node {node}")]
    Unpublish {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// A running DNS server. Stops (and unpublishes) on [`DnsServer::shutdown`]; dropping it stops
/// it too, unpublishing in the background when a runtime is still there.
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    tasks: Vec<JoinHandle<()>>,
    synced: tokio::sync::watch::Receiver<bool>,
    /// Set while the kube-dns slice may exist.
    published: Option<(kube::Client, String)>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .field("synced", &self.is_synced())
            .field("published", &self.published.as_ref().map(|(_, node)| node))
            .finish_non_exhaustive()
    }
}

/// Starts the DNS server: binds, starts watching Services and EndpointSlices, and (once the
/// first lists are in) answers cluster names authoritatively and publishes itself. Until then
/// cluster names are answered SERVFAIL; other names are forwarded at once.
pub async fn start(
    client: kube::Client,
    cfg: DnsConfig,
    registry: &prometheus::Registry,
) -> Result<DnsServer, DnsError> {
    let metrics = DnsMetrics::register(registry)?;
    if cfg.publish && cfg.listen.ip().is_unspecified() {
        return Err(DnsError::PublishAddress(cfg.listen));
    }
    let zone = Zone::new(&cfg.domain, cfg.ttl).map_err(|source| DnsError::Domain {
        domain: cfg.domain.clone(),
        source,
    })?;
    let mut server = DnsServer::serve(zone, &cfg, metrics, false).await?;
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    server.synced = synced_rx;
    let shared = server.shared.clone();
    server
        .tasks
        .push(tokio::spawn(watch::run(client.clone(), shared, synced_tx)));
    if cfg.publish {
        let (api, node, ip, port) = (
            client.clone(),
            cfg.node_name.clone(),
            cfg.listen.ip(),
            server.addr.port(),
        );
        let mut synced = server.synced.clone();
        let resync = cfg.publish_resync;
        server.tasks.push(tokio::spawn(async move {
            // Published only once it answers cluster names: the proxy must not send queries to a
            // server that would SERVFAIL them.
            if synced.wait_for(|s| *s).await.is_err() {
                return;
            }
            publish::keep_published(&api, &node, ip, port, resync).await;
        }));
        server.published = Some((client, cfg.node_name.clone()));
    }
    Ok(server)
}

impl DnsServer {
    /// Serves a given zone without watching anything (benchmarks, tests); `synced` says whether
    /// it answers cluster names at once.
    pub async fn serve(
        zone: Zone,
        cfg: &DnsConfig,
        metrics: DnsMetrics,
        synced: bool,
    ) -> Result<DnsServer, DnsError> {
        let (udp, tcp) = server::bind(cfg.listen)
            .await
            .map_err(|source| DnsError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = udp.local_addr().map_err(|source| DnsError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let upstreams = if cfg.upstreams.is_empty() {
            match ResolvConf::read(Path::new("/etc/resolv.conf")) {
                Ok(host) => host.upstreams(),
                Err(e) => {
                    tracing::warn!(error = %e, "dns: cannot read /etc/resolv.conf; no upstreams");
                    Vec::new()
                }
            }
        } else {
            cfg.upstreams.clone()
        };
        let forwarder =
            forward::Forwarder::new(&upstreams, &[addr, cfg.listen], cfg.forward_timeout);
        tracing::info!(%addr, domain = %cfg.domain, upstreams = ?forwarder.upstreams(), "dns: serving");
        let shared = Arc::new(server::Shared::new(zone, forwarder, metrics, synced));
        let mut tasks = server::spawn(shared.clone(), udp, tcp);
        let probe = shared.clone();
        tasks.push(tokio::spawn(async move { probe.probe_loop().await }));
        Ok(DnsServer {
            addr,
            shared,
            tasks,
            synced: tokio::sync::watch::channel(synced).1,
            published: None,
        })
    }

    /// The address served, UDP and TCP alike (the actual port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the first lists of Services and EndpointSlices are in.
    pub fn is_synced(&self) -> bool {
        self.shared.synced.load(Ordering::Acquire)
    }

    /// Waits until synced, at most `within`; returns whether it is.
    pub async fn wait_synced(&self, within: Duration) -> bool {
        let mut rx = self.synced.clone();
        let _ = tokio::time::timeout(within, rx.wait_for(|s| *s)).await;
        self.is_synced()
    }

    /// Whether this server found that its upstream leads back to itself (it then forwards
    /// nothing, answering SERVFAIL, rather than loop).
    pub fn forwarding_loop_detected(&self) -> bool {
        self.shared.looping()
    }

    /// Runs `f` on the zone (e.g. to fill a benchmark's).
    pub fn with_zone<T>(&self, f: impl FnOnce(&mut Zone) -> T) -> T {
        let mut zone = self.shared.zone.write().unwrap_or_else(|e| e.into_inner());
        f(&mut zone)
    }

    /// Stops serving and deletes the published kube-dns EndpointSlice.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        // Aborted and awaited: no publish is in flight once the delete goes out.
        let tasks: Vec<JoinHandle<()>> = self.tasks.drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        if let Some((client, node)) = self.published.take() {
            publish::unpublish(&client, &node)
                .await
                .map_err(|source| DnsError::Unpublish { node, source })?;
        }
        Ok(())
    }

    fn stop_tasks(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop_tasks();
        if let Some((client, node)) = self.published.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if let Err(e) = publish::unpublish(&client, &node).await {
                    tracing::warn!(error = %e, "dns: unpublishing on drop failed");
                }
            });
        }
    }
}
