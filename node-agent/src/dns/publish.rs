//! Publishing this node's DNS server as an endpoint of `kube-system/kube-dns`, so the service
//! proxy sends the kube-dns ClusterIP's traffic to it: one EndpointSlice per node,
//! `kube-dns-<node>`, written by server-side apply and deleted on clean shutdown. Its owner is
//! the Node (when the Node exists), so the garbage collector removes it with a deleted node.
//!
//! The Kubernetes counterpart is the EndpointSlice a controller writes for CoreDNS's pods; here
//! the server is per node, so the agent writes its own slice (as EndpointSlice mirroring does for
//! custom endpoints), with its own `managed-by` so the endpoint controller leaves it alone.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

/// Where the slice lives and which Service it serves.
pub const NAMESPACE: &str = "kube-system";
pub const SERVICE: &str = "kube-dns";
/// The field manager and `endpointslice.kubernetes.io/managed-by` value.
pub const MANAGER: &str = "capstan-agent";

/// The slice's name for `node`.
pub fn slice_name(node: &str) -> String {
    format!("{SERVICE}-{node}")
}

/// The slice advertising `ip:port` (UDP `dns`, TCP `dns-tcp`) on `node`, owned by the Node with
/// `node_uid` when given.
pub fn slice(node: &str, node_uid: Option<&str>, ip: IpAddr, port: u16) -> serde_json::Value {
    let owners = match node_uid {
        Some(uid) => json!([{
            "apiVersion": "v1",
            "kind": "Node",
            "name": node,
            "uid": uid,
        }]),
        None => json!([]),
    };
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(node),
            "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": SERVICE,
                "endpointslice.kubernetes.io/managed-by": MANAGER,
            },
            "ownerReferences": owners,
        },
        "addressType": if ip.is_ipv4() { "IPv4" } else { "IPv6" },
        "ports": [
            {"name": "dns", "protocol": "UDP", "port": port},
            {"name": "dns-tcp", "protocol": "TCP", "port": port},
        ],
        "endpoints": [{
            "addresses": [ip.to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node,
        }],
    })
}

/// Applies the slice. Returns whether it names its Node as owner (false when the Node does not
/// exist yet: the caller applies again later).
pub async fn publish(
    client: &kube::Client,
    node: &str,
    ip: IpAddr,
    port: u16,
) -> Result<bool, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let uid = nodes.get_opt(node).await?.and_then(|n| n.metadata.uid);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let body = slice(node, uid.as_deref(), ip, port);
    slices
        .patch(
            &slice_name(node),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    tracing::info!(node, %ip, port, "dns: published kube-dns endpoint");
    Ok(uid.is_some())
}

/// Deletes the slice (absent already is fine).
pub async fn unpublish(client: &kube::Client, node: &str) -> Result<(), kube::Error> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    match slices
        .delete(&slice_name(node), &DeleteParams::default())
        .await
    {
        Ok(_) => {
            tracing::info!(node, "dns: unpublished kube-dns endpoint");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the slice exists as [`slice()`] would write it, owner included.
pub async fn is_current(
    client: &kube::Client,
    node: &str,
    ip: IpAddr,
    port: u16,
) -> Result<bool, kube::Error> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let Some(s) = slices.get_opt(&slice_name(node)).await? else {
        return Ok(false);
    };
    let ports: Vec<(Option<&str>, Option<i32>)> = s
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.port))
        .collect();
    let owned = s
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|o| !o.is_empty());
    let addresses_match = s.endpoints.len() == 1 && s.endpoints[0].addresses == [ip.to_string()];
    Ok(owned
        && addresses_match
        && ports
            == [
                (Some("dns"), Some(i32::from(port))),
                (Some("dns-tcp"), Some(i32::from(port))),
            ])
}

/// Publishes, then checks every `resync` and publishes again when the slice is not current;
/// failures back off from 500 ms to `resync`. Runs until aborted.
pub async fn keep_published(
    client: &kube::Client,
    node: &str,
    ip: IpAddr,
    port: u16,
    resync: Duration,
) {
    let mut backoff = Duration::from_millis(500).min(resync);
    loop {
        let outcome = match is_current(client, node, ip, port).await {
            Ok(true) => Ok(()),
            Ok(false) => publish(client, node, ip, port).await.map(|_| ()),
            Err(e) => Err(e),
        };
        let wait = match outcome {
            Ok(()) => {
                backoff = Duration::from_millis(500).min(resync);
                resync
            }
            Err(e) => {
                tracing::warn!(error = %e, "dns: publishing the kube-dns endpoint failed");
                backoff = (backoff * 2).min(resync);
                backoff
            }
        };
        tokio::time::sleep(wait).await;
    }
}
