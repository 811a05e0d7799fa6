//! The Services the API server keeps itself, as kube-apiserver does:
//! - `kube-system/kube-dns`: cluster DNS at the 10th address of the service CIDR (kubeadm's
//!   choice, which Kubernetes clients and tools assume), ports `dns` 53/UDP and `dns-tcp`
//!   53/TCP. Selectorless: each node agent's DNS server publishes its own EndpointSlice.
//! - `default/kubernetes`: the API at the 1st address of the service CIDR, port 443 (`https`),
//!   whose endpoints are the live API servers. Each server renews a lease in the store
//!   (`masterleases/<ip>:<port>`) every [`LEASE_INTERVAL`] and rewrites the Endpoints and the
//!   EndpointSlice from the leases that moved recently — judged by when *this* server saw them
//!   change, never by timestamps another server wrote (kube-apiserver's "lease" endpoint
//!   reconciler, with the store's revisions instead of etcd TTLs). A server that stops cleanly
//!   removes its lease and itself at once; one that dies drops out after three intervals.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use capstan_storage::StorageError;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult, from_storage};
use crate::request::{Params, Target};

pub const KUBERNETES: &str = "kubernetes";
pub const KUBE_DNS: &str = "kube-dns";
pub const LEASE_INTERVAL: Duration = Duration::from_secs(10);
const LEASES: &str = "masterleases/";
/// The label that keeps the EndpointSlice mirroring controller off Endpoints written here.
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";

fn target(api: &ApiServer, version: (&str, &str, &str), ns: &str, name: &str) -> ApiResult<Target> {
    let info = api
        .registry
        .get(version.0, version.1, version.2)
        .ok_or_else(|| ApiError::internal(format!("{} are not registered", version.2)))?;
    Ok(Target {
        info,
        namespace: Some(ns.to_string()),
        name: Some(name.to_string()),
        subresource: None,
    })
}

/// Creates `obj` unless it exists; returns the live object. (Another API server may create it
/// in between: its claim on the ClusterIP then refuses ours, and the object is there.)
async fn ensure(api: &ApiServer, t: &Target, obj: Value) -> ApiResult<Value> {
    if let Ok(live) = api.get(t).await {
        return Ok(live);
    }
    match api.create(t, obj, &Params::default()).await {
        Ok(v) => Ok(v),
        Err(e) => api.get(t).await.map_err(|_| e),
    }
}

/// Writes `obj` (create, or replace when its content differs from the live one's).
async fn put(
    api: &ApiServer,
    t: &Target,
    obj: Value,
    same: impl Fn(&Value) -> bool,
) -> ApiResult<()> {
    match api.get(t).await {
        Ok(live) if same(&live) => Ok(()),
        Ok(_) => api.update(t, obj, &Params::default()).await.map(|_| ()),
        Err(e) if e.code == 404 => match api.create(t, obj, &Params::default()).await {
            Err(e) if e.reason != "AlreadyExists" => Err(e),
            _ => Ok(()),
        },
        Err(e) => Err(e),
    }
}

/// Creates `kube-system/kube-dns` at the 10th address of the service CIDR, if missing.
pub async fn ensure_dns_service(api: &ApiServer) -> ApiResult<()> {
    let cidr = api.ips.cidr();
    if !cidr.contains(cidr.nth(10)) {
        tracing::warn!(%cidr, "the service CIDR is too small for kube-dns at its 10th address");
        return Ok(());
    }
    let ip = cidr.nth(10).to_string();
    let t = target(api, ("", "v1", "services"), "kube-system", KUBE_DNS)?;
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": KUBE_DNS, "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CapstanDNS",
                       "kubernetes.io/cluster-service": "true"}},
        "spec": {"clusterIP": ip, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}
    });
    let live = ensure(api, &t, svc).await?;
    if live["spec"]["clusterIP"] != ip.as_str() {
        tracing::warn!(
            want = ip,
            have = %live["spec"]["clusterIP"],
            "kube-system/kube-dns exists with another ClusterIP; pods are pointed at the one it has"
        );
    }
    Ok(())
}

/// Keeps `default/kubernetes` and its endpoints while it runs.
#[derive(Debug)]
pub struct EndpointReconciler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl EndpointReconciler {
    /// Creates the `kubernetes` Service (if missing), then renews this server's lease and
    /// rewrites the endpoints every `interval` ([`LEASE_INTERVAL`] in production).
    pub async fn start(
        api: Arc<ApiServer>,
        advertise: SocketAddrV4,
        interval: Duration,
    ) -> ApiResult<EndpointReconciler> {
        ensure_kubernetes_service(&api, advertise.port()).await?;
        let mut state = Leases::default();
        state.renew_and_sync(&api, advertise, interval).await?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                if let Err(e) = state.renew_and_sync(&api, advertise, interval).await {
                    tracing::warn!(error = %e.message, "keeping the kubernetes Service's endpoints failed");
                }
            }
            // Leaving: the lease goes, and the endpoints without this server.
            let key = lease_key(advertise);
            if let Err(e) = api.store.delete(&key, None).await
                && !matches!(e, StorageError::NotFound { .. })
            {
                tracing::warn!(error = %e, "removing this API server's lease");
            }
            state.seen.remove(&key);
            if let Err(e) = state.sync(&api, interval).await {
                tracing::warn!(error = %e.message, "removing this API server from the kubernetes endpoints");
            }
        });
        Ok(EndpointReconciler { stop, task })
    }

    /// Removes this server from the endpoints and stops.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn lease_key(addr: SocketAddrV4) -> String {
    format!("{LEASES}{addr}")
}

async fn ensure_kubernetes_service(api: &ApiServer, port: u16) -> ApiResult<()> {
    let ip = api.ips.cidr().nth(1).to_string();
    let t = target(api, ("", "v1", "services"), "default", KUBERNETES)?;
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": KUBERNETES, "namespace": "default",
            "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": ip, "sessionAffinity": "None", "ports": [
            {"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}
    });
    ensure(api, &t, svc).await.map(|_| ())
}

/// The leases this server has seen: each key's revision and when it last changed, by this
/// server's clock.
#[derive(Default)]
struct Leases {
    seen: HashMap<String, (i64, Instant)>,
}

impl Leases {
    async fn renew_and_sync(
        &mut self,
        api: &ApiServer,
        me: SocketAddrV4,
        interval: Duration,
    ) -> ApiResult<()> {
        let key = lease_key(me);
        let value = Bytes::from(json!({"renewed": crate::object::now()}).to_string());
        let renewed = match api.store.get(&key).await {
            Ok(Some(kv)) => api.store.update(&key, value, kv.mod_revision).await,
            Ok(None) => api.store.create(&key, value).await,
            Err(e) => Err(e),
        };
        if let Err(e) = renewed {
            return Err(from_storage(e, "", "endpoints", KUBERNETES));
        }
        self.sync(api, interval).await
    }

    /// Rewrites the endpoints from the leases that changed within three intervals; deletes
    /// the leases of servers gone for longer.
    async fn sync(&mut self, api: &ApiServer, interval: Duration) -> ApiResult<()> {
        let now = Instant::now();
        let list = api
            .store
            .list(LEASES, Default::default())
            .await
            .map_err(|e| from_storage(e, "", "endpoints", KUBERNETES))?;
        let mut live: Vec<SocketAddrV4> = Vec::new();
        let mut present = HashMap::new();
        for kv in &list.items {
            let changed = match self.seen.get(&kv.key) {
                Some((rev, at)) if *rev == kv.mod_revision => *at,
                _ => now,
            };
            present.insert(kv.key.clone(), (kv.mod_revision, changed));
            if now.duration_since(changed) <= interval * 3 {
                if let Ok(addr) = kv.key.trim_start_matches(LEASES).parse() {
                    live.push(addr);
                }
            } else if let Err(e) = api.store.delete(&kv.key, Some(kv.mod_revision)).await
                && !matches!(
                    e,
                    StorageError::NotFound { .. } | StorageError::Conflict { .. }
                )
            {
                tracing::warn!(key = kv.key, error = %e, "removing an expired API server lease");
            }
        }
        self.seen = present;
        live.sort();
        write_endpoints(api, &live).await
    }
}

/// The Endpoints (one subset per port) and EndpointSlices (one per port) of the `kubernetes`
/// Service for `servers`.
async fn write_endpoints(api: &ApiServer, servers: &[SocketAddrV4]) -> ApiResult<()> {
    let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for s in servers {
        by_port
            .entry(s.port())
            .or_default()
            .push(s.ip().to_string());
    }
    let subsets: Vec<Value> = by_port
        .iter()
        .map(|(port, ips)| {
            json!({"addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                   "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
        })
        .collect();
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": KUBERNETES, "namespace": "default",
                     "labels": {SKIP_MIRROR: "true"}},
        "subsets": subsets,
    });
    let t = target(api, ("", "v1", "endpoints"), "default", KUBERNETES)?;
    let want = endpoints["subsets"].clone();
    put(api, &t, endpoints, |live| {
        live["subsets"] == want
            || (want.as_array().is_some_and(Vec::is_empty) && live["subsets"].is_null())
    })
    .await?;
    for (i, (port, ips)) in by_port.iter().enumerate() {
        let name = if i == 0 {
            KUBERNETES.to_string()
        } else {
            format!("{KUBERNETES}-{port}")
        };
        let endpoints: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
            .collect();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                "labels": {"kubernetes.io/service-name": KUBERNETES,
                           "endpointslice.kubernetes.io/managed-by": "capstan-apiserver"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        });
        let t = target(
            api,
            ("discovery.k8s.io", "v1", "endpointslices"),
            "default",
            &name,
        )?;
        let (want_eps, want_ports) = (slice["endpoints"].clone(), slice["ports"].clone());
        put(api, &t, slice, |live| {
            live["endpoints"] == want_eps && live["ports"] == want_ports
        })
        .await?;
    }
    // With no server left (the last one stopping), the slice stays, empty.
    if by_port.is_empty() {
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": KUBERNETES, "namespace": "default",
                "labels": {"kubernetes.io/service-name": KUBERNETES,
                           "endpointslice.kubernetes.io/managed-by": "capstan-apiserver"}},
            "addressType": "IPv4", "endpoints": [], "ports": [],
        });
        let t = target(
            api,
            ("discovery.k8s.io", "v1", "endpointslices"),
            "default",
            KUBERNETES,
        )?;
        put(api, &t, slice, |live| {
            live["endpoints"].as_array().is_none_or(Vec::is_empty)
        })
        .await?;
    }
    Ok(())
}
