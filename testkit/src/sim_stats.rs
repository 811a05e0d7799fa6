//! Resource usage of simulated nodes: each node answers the kubelet's `/stats/summary` (which
//! the API server turns into metrics.k8s.io) on a loopback address of its own — node `i` is
//! `127.1.{i/256}.{i%256}` (the whole of 127.0.0.0/8 reaches this host) — all served by one
//! listener that tells the nodes apart by the address a connection came in on. Every Running pod
//! bound to a node reports each of its containers using [`Usage`]'s CPU (a knob for the whole
//! simulation and one per namespace, turned by tests and benchmarks to make a metric change)
//! and 16 MiB of memory.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Full;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::net::TcpListener;

/// The CPU every simulated container reports using, in millicores, with figures of their
/// own for the pods of chosen namespaces; shared by clones.
#[derive(Clone, Debug, Default)]
pub struct Usage(Arc<UsageInner>);

#[derive(Debug, Default)]
struct UsageInner {
    all: AtomicU64,
    namespaces: Mutex<HashMap<String, u64>>,
}

impl Usage {
    pub fn new(millicores: u64) -> Usage {
        let u = Usage::default();
        u.set_cpu_millicores(millicores);
        u
    }

    /// Every container's CPU (but those of namespaces given their own).
    pub fn set_cpu_millicores(&self, m: u64) {
        self.0.all.store(m, Ordering::Relaxed);
    }

    /// The CPU of every container in `namespace`.
    pub fn set_namespace_cpu_millicores(&self, namespace: &str, m: u64) {
        if let Ok(mut ns) = self.0.namespaces.lock() {
            ns.insert(namespace.to_string(), m);
        }
    }

    pub fn cpu_millicores(&self, namespace: &str) -> u64 {
        self.0
            .namespaces
            .lock()
            .ok()
            .and_then(|ns| ns.get(namespace).copied())
            .unwrap_or_else(|| self.0.all.load(Ordering::Relaxed))
    }
}

/// Node `i`'s address when it serves stats.
pub fn node_ip(i: usize) -> String {
    format!("127.1.{}.{}", (i / 256) % 256, i % 256)
}

/// The node index an address of [`node_ip`] stands for.
fn index_of(ip: IpAddr) -> Option<usize> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            (a == 127 && b == 1).then_some(usize::from(c) * 256 + usize::from(d))
        }
        IpAddr::V6(_) => None,
    }
}

/// The summary node `name` serves: its Running pods, each container at `usage`.
fn summary(pods: &Store<Pod>, name: &str, usage: &Usage) -> serde_json::Value {
    let now = jiff::Timestamp::now().to_string();
    let memory = 16u64 << 20;
    let cpu = |n: u64| json!({"time": now, "usageNanoCores": n, "usageCoreNanoSeconds": 0, "windowSeconds": 10.0});
    let mem = |b: u64| json!({"time": now, "workingSetBytes": b});
    let items: Vec<serde_json::Value> = pods
        .state()
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name))
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| {
            let names: Vec<&str> = p
                .spec
                .as_ref()
                .map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
                .unwrap_or_default();
            let n = names.len() as u64;
            let ns = p.metadata.namespace.as_deref().unwrap_or_default();
            let nano = usage.cpu_millicores(ns) * 1_000_000;
            json!({
                "podRef": {"name": p.metadata.name, "namespace": p.metadata.namespace, "uid": p.metadata.uid},
                "containers": names.iter().map(|c| json!({"name": c, "cpu": cpu(nano), "memory": mem(memory)})).collect::<Vec<_>>(),
                "cpu": cpu(nano * n),
                "memory": mem(memory * n),
            })
        })
        .collect();
    let count = items.len() as u64;
    let used: u64 = items
        .iter()
        .filter_map(|p| p["cpu"]["usageNanoCores"].as_u64())
        .sum();
    json!({
        "node": {"nodeName": name, "cpu": cpu(used), "memory": mem(memory * count.max(1))},
        "pods": items,
    })
}

/// Serves every simulated node's summary on `listener` (bound to 0.0.0.0; only loopback peers
/// are answered) until the task is dropped.
pub(crate) async fn serve(
    client: kube::Client,
    listener: TcpListener,
    prefix: String,
    usage: Usage,
) {
    let (store, writer) = reflector::store();
    let pods: Api<Pod> = Api::all(client);
    let feed = watcher(pods, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(|_| async {});
    let feed = tokio::spawn(feed);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            break;
        };
        if !peer.ip().is_loopback() {
            continue;
        }
        let Some(index) = stream
            .local_addr()
            .ok()
            .as_ref()
            .map(SocketAddr::ip)
            .and_then(index_of)
        else {
            continue;
        };
        let (store, usage) = (store.clone(), usage.clone());
        let name = format!("{prefix}{index}");
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = if req.uri().path() == "/stats/summary" {
                        Ok(summary(&store, &name, &usage).to_string())
                    } else {
                        Err(())
                    };
                    async move {
                        match body {
                            Ok(b) => hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(b))),
                            Err(()) => hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new())),
                        }
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
    feed.abort();
}

/// A listener every node address reaches.
pub(crate) async fn listen() -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_map_back_to_their_index() {
        for i in [0, 1, 255, 256, 4999] {
            assert_eq!(index_of(node_ip(i).parse().unwrap()), Some(i));
        }
        assert_eq!(index_of("127.0.0.1".parse().unwrap()), None);
        assert_eq!(index_of("10.1.0.1".parse().unwrap()), None);
    }
}
