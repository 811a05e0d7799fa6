//! The aggregation layer (kube-aggregator): an `apiregistration.k8s.io/v1` APIService with a
//! `spec.service` hands its group/version to an extension API server — a custom or external
//! metrics adapter (prometheus-adapter, KEDA), metrics-server, or any other — and this server
//! proxies every request for it there ([`proxy`]), after authenticating and authorizing it as
//! any other request.
//!
//! - **Who asks**: the extension server learns the caller from the `X-Remote-User`,
//!   `X-Remote-Uid`, `X-Remote-Group` and `X-Remote-Extra-*` headers, and trusts them because
//!   the request comes with the front-proxy client certificate (`front-proxy-client`, signed by
//!   a CA of its own, never the cluster CA: that one signs CSRs). Where to check them is
//!   published as kube-apiserver publishes it, in `kube-system/extension-apiserver-
//!   authentication` ([`publish_authentication`]).
//! - **Where it is**: one ready endpoint of the Service, from its EndpointSlices (kube-
//!   apiserver's `--enable-aggregator-routing`), its certificate checked against `caBundle`
//!   for `NAME.NAMESPACE.svc` (or not at all with `insecureSkipTLSVerify`).
//! - **Whether it answers** ([`availability`]): each remote APIService's `Available` condition
//!   says why not (ServiceNotFound, ServicePortError, MissingEndpoints, FailedDiscoveryCheck),
//!   checked every 10 s and when APIServices, Services or EndpointSlices change. The
//!   resources its discovery document lists join `/apis` (aggregated discovery too).

pub mod availability;
pub mod proxy;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::ApiResult;
use crate::request::{Params, Target};
use crate::watch_cache::derived::Derived;

/// The name extension servers allow for the front proxy (`--requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";
/// Where the request-header settings are published.
pub const AUTHENTICATION_CONFIGMAP: (&str, &str) =
    ("kube-system", "extension-apiserver-authentication");

/// The front proxy's identity and what extension servers must trust
/// (`--proxy-client-cert-file`, `--requestheader-client-ca-file`, `--client-ca-file`).
#[derive(Clone, Debug)]
pub struct FrontProxy {
    /// The client certificate presented to extension servers (CN `front-proxy-client`).
    pub identity: capstan_pki::Issued,
    /// The CA that signed it (PEM).
    pub ca_pem: String,
    /// The cluster's client CA (PEM), published for extension servers that accept client
    /// certificates directly.
    pub client_ca_pem: Option<String>,
}

/// One extension API server's group/version.
pub struct Remote {
    pub name: String,
    pub group: String,
    pub version: String,
    pub namespace: String,
    pub service: String,
    pub port: i32,
    pub group_priority_minimum: i64,
    pub version_priority: i64,
    /// Whether its `Available` condition is True (requests are refused with a 503 until it is).
    pub available: bool,
    tls: Arc<rustls::ClientConfig>,
    idle: crate::webhook::client::IdleConnections,
    /// The ready endpoints as of the Services' and EndpointSlices' change counts then.
    endpoints: Mutex<Option<(Vec<u64>, Vec<String>)>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> service/{} in {:?} port {}",
            self.name, self.service, self.namespace, self.port
        )
    }
}

impl Remote {
    /// The Remote an APIService object names, or None when it is served here (no
    /// `spec.service`) or cannot be used (written before validation checked it).
    fn of(obj: &Value, identity: Option<&capstan_pki::Issued>) -> Option<Remote> {
        let spec = &obj["spec"];
        let svc = spec.get("service").filter(|s| s.is_object())?;
        let tls = client_tls(spec, identity)
            .map_err(|e| tracing::warn!(apiservice = ?obj["metadata"]["name"], error = %e, "unusable TLS settings"))
            .ok()?;
        Some(Remote {
            name: obj["metadata"]["name"].as_str()?.to_string(),
            group: spec["group"].as_str().unwrap_or_default().to_string(),
            version: spec["version"].as_str()?.to_string(),
            namespace: svc["namespace"].as_str()?.to_string(),
            service: svc["name"].as_str()?.to_string(),
            port: svc["port"].as_i64().unwrap_or(443) as i32,
            group_priority_minimum: spec["groupPriorityMinimum"].as_i64().unwrap_or_default(),
            version_priority: spec["versionPriority"].as_i64().unwrap_or_default(),
            available: obj["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Available" && c["status"] == "True"),
            tls: Arc::new(tls),
            idle: Default::default(),
            endpoints: Mutex::new(None),
        })
    }

    /// The name its certificate must carry.
    pub fn server_name(&self) -> String {
        format!("{}.{}.svc", self.service, self.namespace)
    }

    /// `host:port` of a ready endpoint now (else of the Service's ClusterIP). The endpoints
    /// are looked up again only when Services or EndpointSlices changed.
    pub fn address(&self, api: &ApiServer) -> Result<String, String> {
        let changes: Vec<u64> = [("", "services"), ("discovery.k8s.io", "endpointslices")]
            .iter()
            .filter_map(|(group, plural)| {
                let info = api.registry.get(group, "v1", plural)?;
                api.cacher(&info).ok().map(|c| c.changes())
            })
            .collect();
        let pick = |addrs: &[String]| addrs[fastrand::usize(..addrs.len())].clone();
        if let Ok(cached) = self.endpoints.lock()
            && let Some((seen, addrs)) = cached.as_ref()
            && *seen == changes
            && !addrs.is_empty()
        {
            return Ok(pick(addrs));
        }
        let (_, ready) = crate::webhook::client::ready_endpoints(
            api,
            &self.namespace,
            &self.service,
            self.port,
        )?;
        if ready.is_empty() {
            return crate::webhook::client::service_address(
                api,
                &self.namespace,
                &self.service,
                self.port,
            );
        }
        let chosen = pick(&ready);
        if let Ok(mut cached) = self.endpoints.lock() {
            *cached = Some((changes, ready));
        }
        Ok(chosen)
    }
}

/// TLS to an extension server: its `caBundle` (the system's roots when empty) or no check at
/// all (`insecureSkipTLSVerify`), presenting the front-proxy certificate.
fn client_tls(
    spec: &Value,
    identity: Option<&capstan_pki::Issued>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if spec["insecureSkipTLSVerify"].as_bool() == Some(true) {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(proxy::NoVerification(provider)))
    } else {
        let pem = match spec["caBundle"].as_str().filter(|b| !b.is_empty()) {
            Some(b) => crate::webhook::client::decode_bundle(b)?,
            None => {
                std::fs::read_to_string(crate::webhook::client::SYSTEM_ROOTS).unwrap_or_default()
            }
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in capstan_pki::tls::certs(&pem).unwrap_or_default() {
            roots.add(c).map_err(|e| e.to_string())?;
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                capstan_pki::tls::certs(&id.cert_pem).map_err(|e| e.to_string())?,
                capstan_pki::tls::private_key(&id.key_pem).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug, Default)]
struct Remotes {
    /// By `group/version`.
    by_version: BTreeMap<String, Arc<Remote>>,
}

/// The remote APIServices, rebuilt when one changes.
#[derive(Debug)]
pub struct Aggregator {
    remotes: Derived<Remotes>,
    front_proxy: Option<FrontProxy>,
    /// Each remote's discovery document (APIResourceList) as last fetched, by APIService name.
    discovered: Mutex<BTreeMap<String, Value>>,
}

impl Aggregator {
    pub fn new(front_proxy: Option<FrontProxy>) -> Aggregator {
        Aggregator {
            remotes: Derived::new(&[("apiregistration.k8s.io", "v1", "apiservices")]),
            front_proxy,
            discovered: Mutex::new(BTreeMap::new()),
        }
    }

    fn current(&self, api: &ApiServer) -> Arc<Remotes> {
        let identity = self.front_proxy.as_ref().map(|f| &f.identity);
        self.remotes.get(api, |lists| Remotes {
            by_version: lists[0]
                .iter()
                .filter_map(|o| Remote::of(o, identity))
                .map(|r| (format!("{}/{}", r.group, r.version), Arc::new(r)))
                .collect(),
        })
    }

    /// The extension server of `group/version`, when one serves it.
    pub fn remote(&self, api: &ApiServer, group: &str, version: &str) -> Option<Arc<Remote>> {
        if group.is_empty() {
            return None;
        }
        self.current(api)
            .by_version
            .get(&format!("{group}/{version}"))
            .cloned()
    }

    /// Every remote group/version.
    pub fn all(&self, api: &ApiServer) -> Vec<Arc<Remote>> {
        self.current(api).by_version.values().cloned().collect()
    }

    /// The remote versions of `group`, preferred first (versionPriority, highest first).
    pub fn versions_of(&self, api: &ApiServer, group: &str) -> Vec<String> {
        let mut remotes: Vec<Arc<Remote>> = self
            .all(api)
            .into_iter()
            .filter(|r| r.group == group)
            .collect();
        remotes.sort_by_key(|r| std::cmp::Reverse(r.version_priority));
        remotes.iter().map(|r| r.version.clone()).collect()
    }

    /// The last discovery document of APIService `name`.
    pub fn discovered(&self, name: &str) -> Option<Value> {
        self.discovered.lock().ok()?.get(name).cloned()
    }

    fn remember(&self, name: &str, doc: Option<Value>) {
        if let Ok(mut d) = self.discovered.lock() {
            match doc {
                Some(doc) => d.insert(name.to_string(), doc),
                None => d.remove(name),
            };
        }
    }

    /// Whether this server presents a front-proxy certificate.
    pub fn has_front_proxy(&self) -> bool {
        self.front_proxy.is_some()
    }
}

/// The certificates of PEM bundle `old`, then those of `new` it lacks.
fn merge_bundles(old: &str, new: &str) -> String {
    let blocks = |pem: &str| -> Vec<String> {
        pem.split_inclusive("-----END CERTIFICATE-----")
            .map(|b| b.trim().to_string())
            .filter(|b| b.starts_with("-----BEGIN CERTIFICATE-----"))
            .collect()
    };
    let mut all = blocks(old);
    for b in blocks(new) {
        if !all.contains(&b) {
            all.push(b);
        }
    }
    let mut out = all.join("\n");
    out.push('\n');
    out
}

/// Creates or updates `kube-system/extension-apiserver-authentication`: the request-header
/// settings extension servers read to trust the front proxy, and the cluster's client CA.
pub async fn publish_authentication(api: &ApiServer) -> ApiResult<()> {
    let Some(fp) = &api.aggregator.front_proxy else {
        return Ok(());
    };
    let Some(info) = api.registry.get("", "v1", "configmaps") else {
        return Ok(());
    };
    let (namespace, name) = AUTHENTICATION_CONFIGMAP;
    let mut data = json!({
        "requestheader-client-ca-file": fp.ca_pem,
        "requestheader-allowed-names": json!([FRONT_PROXY_CLIENT]).to_string(),
        "requestheader-username-headers": json!(["X-Remote-User"]).to_string(),
        "requestheader-uid-headers": json!(["X-Remote-Uid"]).to_string(),
        "requestheader-group-headers": json!(["X-Remote-Group"]).to_string(),
        "requestheader-extra-headers-prefix": json!(["X-Remote-Extra-"]).to_string(),
    });
    if let Some(ca) = &fp.client_ca_pem {
        data["client-ca-file"] = json!(ca);
    }
    let target = Target {
        info,
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        subresource: None,
    };
    let params = Params {
        user_agent_manager: Some("capstan-apiserver".into()),
        ..Params::default()
    };
    match api.get(&target).await {
        Ok(mut live) => {
            // API servers sharing a store may each have a front-proxy CA of their own: as
            // kube-apiserver's cluster-authentication-trust controller, keep every server's
            // certificates in the bundles, so any of them may proxy.
            for key in ["requestheader-client-ca-file", "client-ca-file"] {
                if let (Some(old), Some(new)) = (live["data"][key].as_str(), data[key].as_str()) {
                    data[key] = json!(merge_bundles(old, new));
                }
            }
            if live["data"] == data {
                return Ok(());
            }
            live["data"] = data;
            api.update(&target, live, &params).await.map(|_| ())
        }
        Err(e) if e.code == 404 => {
            let obj = json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace},
                "data": data,
            });
            match api.create(&target, obj, &params).await {
                Err(e) if e.reason != "AlreadyExists" => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_keep_every_servers_certificates_once() {
        let a = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n";
        let b = "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        let both = merge_bundles(a, b);
        assert_eq!(both, format!("{}{}", a, b));
        assert_eq!(merge_bundles(&both, a), both);
        assert_eq!(merge_bundles(&both, b), both);
        assert_eq!(merge_bundles("", a), a);
    }
}
