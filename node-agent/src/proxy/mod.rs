//! The service proxy: kube-proxy's nftables mode (kubernetes `pkg/proxy/nftables/proxier.go`).
//! Start at [`start`]: it watches v1 Services and discovery.k8s.io/v1 EndpointSlices in every
//! namespace, folds them into a [`model::State`], and a bounded-frequency runner
//! ([`sync::BoundedFrequency`]) hands each state to the [`sync::Syncer`], which plans nft text
//! ([`plan`], pure) and applies it with `nft -f -` ([`nft`]).
//!
//! Lifecycle of the table (`ip capstan` by default):
//! - Start-up *adopts* an existing table: the first sync is a full one that rewrites the table's
//!   contents in one transaction (`add table`, `flush table`, everything again, stale chains
//!   deleted) — the table is never deleted first, so Services keep working across an agent
//!   restart. The first sync waits until both watches have listed, so a restarting agent never
//!   programs an empty world over a good table.
//! - [`Proxy::shutdown`] stops syncing and deletes the table (a clean stop). Dropping a
//!   [`Proxy`] without it stops syncing but leaves the rules, as a crash would.
//!
//! Pods on a Linux bridge (the CNI bridge plugin) without `br_netfilter`: a pod reaching a
//! Service whose chosen endpoint is a pod on the same bridge gets the reply straight over the
//! bridge, never un-NATed, and drops it. So when `cluster_cidr` (the pod CIDR) is configured and
//! `/proc/sys/net/bridge/bridge-nf-call-iptables` is not `1` at start-up (absent counts as not
//! 1), service traffic *from* the pod CIDR is masqueraded (kube-proxy's `--cluster-cidr` /
//! masquerade-all, narrowed to pod sources): the endpoint then answers the node, which un-NATs.
//! The cost is that such endpoints see the node's bridge address, not the client pod's. With
//! bridge-nf-call-iptables = 1 bridged frames pass the `ip` hooks, conntrack un-NATs the reply,
//! and pod traffic keeps its source address. Traffic from the host itself to a ClusterIP (the nat
//! output hook) needs no masquerade. [`ProxyConfig::masquerade_pod_traffic`] overrides the check.
//!
//! Wiring it into an agent:
//!
//! ```no_run
//! # async fn agent(client: kube::Client, registry: &prometheus::Registry) -> Result<(), capstan_node_agent::proxy::ProxyError> {
//! use capstan_node_agent::proxy::{self, ProxyConfig};
//! let mut cfg = ProxyConfig::new("node-a");
//! cfg.node_ips = vec!["192.168.1.10".parse().unwrap()];
//! cfg.cluster_cidr = Some("10.88.0.0/16".into());
//! let proxy = proxy::start(client, cfg, registry).await?;
//! // ... on a clean stop:
//! proxy.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Not implemented: IPv6 (an `ip6` table), LoadBalancer ingress IPs and externalIPs,
//! loadBalancerSourceRanges, health-check node ports, topology-aware hints, and clearing stale
//! UDP conntrack entries when an endpoint goes (kube-proxy runs `conntrack -D` for that).

pub mod bench;
pub mod model;
pub mod nft;
pub mod plan;
pub mod sync;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use model::TableConfig;
use nft::{Nft, NftError};
use sync::{BoundedFrequency, Metrics, SyncKind, Syncer};

const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// This node's name: endpoints with this `nodeName` are local.
    pub node_name: String,
    /// NodePorts answer on these addresses; empty: every local address but loopback.
    pub node_ips: Vec<Ipv4Addr>,
    /// The `ip` family nftables table the proxy owns.
    pub table: String,
    /// The pod CIDR (`10.88.0.0/16`), for masquerading pod traffic (see the module doc).
    pub cluster_cidr: Option<String>,
    /// `Some(b)`: masquerade traffic from `cluster_cidr` or not, whatever the bridge says.
    pub masquerade_pod_traffic: Option<bool>,
    /// Syncs are at least this far apart; changes in between coalesce (kube-proxy: 1 s).
    pub min_sync_period: Duration,
    /// A full resync this often even when nothing failed.
    pub full_sync_period: Duration,
    /// The `nft` binary.
    pub nft: PathBuf,
}

impl ProxyConfig {
    pub fn new(node_name: &str) -> ProxyConfig {
        ProxyConfig {
            node_name: node_name.to_string(),
            node_ips: Vec::new(),
            table: "capstan".to_string(),
            cluster_cidr: None,
            masquerade_pod_traffic: None,
            min_sync_period: Duration::from_millis(100),
            full_sync_period: Duration::from_secs(3600),
            nft: PathBuf::from("nft"),
        }
    }

    /// The planner's table settings, validated; reads the bridge setting when it must.
    pub fn table_config(&self) -> Result<TableConfig, ProxyError> {
        if !valid_table_name(&self.table) {
            return Err(ProxyError::Config(format!(
                "table name {:?}: want a letter then letters, digits, - or _",
                self.table
            )));
        }
        let cidr = self.cluster_cidr.as_deref().map(parse_cidr).transpose()?;
        let masquerade = match self.masquerade_pod_traffic {
            Some(m) => m,
            None => {
                let bridge = std::fs::read_to_string(BRIDGE_NF_CALL_IPTABLES).ok();
                pod_masquerade_needed(bridge.as_deref())
            }
        };
        Ok(TableConfig {
            table: self.table.clone(),
            masquerade_cidr: cidr.filter(|_| masquerade),
            node_ips: self.node_ips.clone(),
        })
    }
}

/// Whether pod traffic must be masqueraded, given the contents of bridge-nf-call-iptables
/// (`None`: the file is absent, br_netfilter is not loaded).
pub fn pod_masquerade_needed(bridge_nf_call_iptables: Option<&str>) -> bool {
    bridge_nf_call_iptables.map(str::trim) != Some("1")
}

/// An nftables table name Capstan accepts: a letter, then letters, digits, - or _.
pub(crate) fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64
}

/// `a.b.c.d/n` → its network in canonical form (`10.88.1.2/16` → `10.88.0.0/16`).
pub fn parse_cidr(s: &str) -> Result<String, ProxyError> {
    let bad = || ProxyError::Config(format!("cluster CIDR {s:?}: want an IPv4 a.b.c.d/n"));
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok(format!("{}/{len}", Ipv4Addr::from(u32::from(ip) & mask)))
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid proxy config: {0}")]
    Config(String),
    #[error("registering proxy metrics")]
    Metrics(#[source] prometheus::Error),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("the proxy's sync task panicked")]
    Panicked,
}

/// What the last successful sync programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncStatus {
    /// Successful syncs so far (0: none yet).
    pub generation: u64,
    pub kind: Option<SyncKind>,
    /// Service ports in the programmed state.
    pub service_ports: usize,
}

/// A running proxy. [`Proxy::shutdown`] removes its rules; dropping it leaves them.
#[derive(Debug)]
pub struct Proxy {
    table: String,
    nft: Nft,
    stop: watch::Sender<bool>,
    runner: Option<JoinHandle<()>>,
    watchers: Vec<JoinHandle<()>>,
    synced: watch::Receiver<SyncStatus>,
}

/// Starts the proxy: two watches (Services, EndpointSlices; all namespaces) and the sync task.
/// Returns at once; the first sync follows the first complete list of both.
pub async fn start(
    client: kube::Client,
    cfg: ProxyConfig,
    registry: &prometheus::Registry,
) -> Result<Proxy, ProxyError> {
    let table = cfg.table_config()?;
    let metrics = Metrics::new();
    metrics.register(registry).map_err(ProxyError::Metrics)?;
    let nft = Nft::new(cfg.nft.clone());
    let changed = Arc::new(Notify::new());
    let (svc_store, svc_task, svc_ready) =
        watch_all::<Service>(Api::all(client.clone()), changed.clone());
    let (eps_store, eps_task, eps_ready) =
        watch_all::<EndpointSlice>(Api::all(client), changed.clone());
    let (stop, stop_rx) = watch::channel(false);
    let (synced_tx, synced) = watch::channel(SyncStatus {
        generation: 0,
        kind: None,
        service_ports: 0,
    });
    tracing::info!(table = %table.table, masquerade_cidr = ?table.masquerade_cidr, "service proxy starting");
    let runner = tokio::spawn(run(Runner {
        syncer: Syncer::new(nft.clone(), metrics),
        table,
        node_name: cfg.node_name,
        services: svc_store,
        slices: eps_store,
        ready: vec![svc_ready, eps_ready],
        changed,
        stop: stop_rx,
        synced: synced_tx,
        min_sync_period: cfg.min_sync_period,
        full_sync_period: cfg.full_sync_period,
    }));
    Ok(Proxy {
        table: cfg.table,
        nft,
        stop,
        runner: Some(runner),
        watchers: vec![svc_task, eps_task],
        synced,
    })
}

impl Proxy {
    /// The last successful sync; `changed()` wakes on every new one.
    pub fn synced(&self) -> watch::Receiver<SyncStatus> {
        self.synced.clone()
    }

    /// Stops syncing and deletes the table: the node no longer proxies Services.
    pub async fn shutdown(mut self) -> Result<(), ProxyError> {
        let _ = self.stop.send(true);
        for w in &self.watchers {
            w.abort();
        }
        if let Some(runner) = self.runner.take() {
            runner.await.map_err(|_| ProxyError::Panicked)?;
        }
        self.nft.delete_table(&self.table).await?;
        tracing::info!(table = %self.table, "service proxy stopped; rules removed");
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
        if let Some(r) = &self.runner {
            r.abort();
        }
    }
}

/// A watch of every `K` into a store; `changed` is notified after every applied event.
fn watch_all<K>(
    api: Api<K>,
    changed: Arc<Notify>,
) -> (Store<K>, JoinHandle<()>, watch::Receiver<bool>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let mut writer: Writer<K> = Writer::new(());
    let store = writer.as_reader();
    let (ready_tx, ready) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "proxy watch failed; retrying");
                    continue;
                }
            };
            writer.apply_watcher_event(&event);
            match event {
                // A relist fills a buffer the store swaps in at InitDone: nothing to see before.
                watcher::Event::Init | watcher::Event::InitApply(_) => {}
                watcher::Event::InitDone => {
                    ready_tx.send_replace(true);
                    changed.notify_one();
                }
                watcher::Event::Apply(_) | watcher::Event::Delete(_) => changed.notify_one(),
            }
        }
    });
    (store, task, ready)
}

struct Runner {
    syncer: Syncer,
    table: TableConfig,
    node_name: String,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    ready: Vec<watch::Receiver<bool>>,
    changed: Arc<Notify>,
    stop: watch::Receiver<bool>,
    synced: watch::Sender<SyncStatus>,
    min_sync_period: Duration,
    full_sync_period: Duration,
}

async fn run(mut r: Runner) {
    // Never program before both lists are complete: an empty store would wipe an adopted table.
    for ready in &mut r.ready {
        tokio::select! {
            _ = ready.wait_for(|ready| *ready) => {}
            _ = r.stop.wait_for(|stop| *stop) => return,
        }
    }
    let mut bf = BoundedFrequency::new(r.min_sync_period, r.full_sync_period);
    let mut generation = 0u64;
    loop {
        let due = bf.next();
        tokio::select! {
            _ = r.stop.wait_for(|stop| *stop) => return,
            _ = r.changed.notified() => {
                bf.changed();
                continue;
            }
            _ = tokio::time::sleep_until(due.at) => {}
        }
        if due.full {
            r.syncer.force_full();
        }
        let services = r.services.state();
        let slices = r.slices.state();
        let state = model::build(
            r.table.clone(),
            &r.node_name,
            services.iter().map(|s| &**s),
            slices.iter().map(|s| &**s),
        );
        let ports = state.services.len();
        let started = tokio::time::Instant::now();
        let result = r.syncer.sync(state).await;
        let ok = result.is_ok();
        bf.ran(started, matches!(result, Ok(SyncKind::Full)), ok);
        if let Ok(kind) = result {
            generation += 1;
            r.synced.send_replace(SyncStatus {
                generation,
                kind: Some(kind),
                service_ports: ports,
            });
        }
    }
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod traffic_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_traffic_is_masqueraded_unless_the_bridge_calls_iptables() {
        assert!(pod_masquerade_needed(None));
        assert!(pod_masquerade_needed(Some("0\n")));
        assert!(!pod_masquerade_needed(Some("1\n")));
    }

    #[test]
    fn cluster_cidrs_are_canonical_networks() {
        assert_eq!(parse_cidr("10.88.1.2/16").unwrap(), "10.88.0.0/16");
        assert!(parse_cidr("10.88.0.0").is_err());
        assert!(parse_cidr("10.88.0.0/33").is_err());
    }

    #[test]
    fn table_names_must_be_nft_identifiers() {
        let mut cfg = ProxyConfig::new("n");
        cfg.table = "capstan-test-1".into();
        assert!(cfg.table_config().is_ok());
        cfg.table = "1bad".into();
        assert!(cfg.table_config().is_err());
        cfg.table = "bad name".into();
        assert!(cfg.table_config().is_err());
    }

    #[test]
    fn the_pod_cidr_is_masqueraded_only_when_asked_or_needed() {
        let mut cfg = ProxyConfig::new("n");
        cfg.cluster_cidr = Some("10.88.0.0/16".into());
        cfg.masquerade_pod_traffic = Some(true);
        assert_eq!(
            cfg.table_config().unwrap().masquerade_cidr.as_deref(),
            Some("10.88.0.0/16")
        );
        cfg.masquerade_pod_traffic = Some(false);
        assert_eq!(cfg.table_config().unwrap().masquerade_cidr, None);
    }
}
