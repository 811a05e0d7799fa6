//! What the proxy serves at one moment, pure: the watched Ingresses, Services,
//! EndpointSlices and TLS Secrets in, one immutable [`Snapshot`] out — the routing table, the
//! ready endpoints of every backend it names, and the certificates of its TLS sections.
//!
//! A request holds the snapshot it started with (an `Arc`), so a new one replaces the old
//! without touching requests in flight.
//!
//! A backend's Service port is found as Kubernetes' ingress controllers find it: by number
//! (`port.number` is the Service's `port`) or by name, then the EndpointSlices labelled with
//! the Service's name give that port's number on each endpoint, by the port's name ("" when
//! the Service has one unnamed port). Only ready endpoints take traffic (absent `ready`
//! counts as ready, as the EndpointSlice API says).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::routes::{Backend, ClassFilter, PortRef, Table};
use crate::proxy::model::{Protocol, SERVICE_NAME_LABEL, endpoints_for};

/// `namespace/name`.
pub type Key = (String, String);

/// The objects the proxy watches, by namespace and name.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    pub ingresses: BTreeMap<Key, Ingress>,
    pub services: BTreeMap<Key, Service>,
    pub slices: BTreeMap<Key, EndpointSlice>,
    /// Only `kubernetes.io/tls` Secrets are watched.
    pub secrets: BTreeMap<Key, Secret>,
}

/// The ready endpoints of one backend, taken in turn.
#[derive(Debug)]
pub struct Upstream {
    pub addrs: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(addrs: Vec<SocketAddr>) -> Upstream {
        Upstream {
            addrs,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoints in the order one request tries them: round robin across requests, each
    /// request going on to the next endpoint when one cannot be reached.
    pub fn order(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.addrs.len();
        let start = if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        (0..n).map(move |i| self.addrs[(start + i) % n])
    }
}

/// Where a backend's requests go, or why they cannot go anywhere (the 503's body).
#[derive(Debug, Clone)]
pub enum Resolved {
    Ready(Arc<Upstream>),
    Unavailable(String),
}

/// Everything one request needs, immutable.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub table: Table,
    upstreams: HashMap<Backend, Resolved>,
    certs: HashMap<Key, Arc<CertifiedKey>>,
    /// Secrets a TLS section names that cannot serve (missing, or not a certificate and key),
    /// with why: logged when a snapshot is built.
    pub cert_errors: BTreeMap<Key, String>,
}

impl Snapshot {
    pub fn build(objs: &Objects, filter: &ClassFilter) -> Snapshot {
        let ingresses: Vec<Ingress> = objs.ingresses.values().cloned().collect();
        let table = Table::build(&ingresses, filter);
        let mut slices_of: BTreeMap<Key, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in objs.slices.values() {
            let (Some(ns), Some(svc)) = (
                slice.metadata.namespace.as_ref(),
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            slices_of
                .entry((ns.clone(), svc.clone()))
                .or_default()
                .push(slice);
        }
        let mut upstreams = HashMap::new();
        for backend in table.backends() {
            if upstreams.contains_key(backend) {
                continue;
            }
            let r = resolve(objs, &slices_of, backend);
            upstreams.insert(backend.clone(), r);
        }
        let mut certs = HashMap::new();
        let mut cert_errors = BTreeMap::new();
        for tls in &table.tls {
            if certs.contains_key(&tls.secret) || cert_errors.contains_key(&tls.secret) {
                continue;
            }
            match objs.secrets.get(&tls.secret).map(certified_key) {
                Some(Ok(k)) => {
                    certs.insert(tls.secret.clone(), Arc::new(k));
                }
                Some(Err(e)) => {
                    cert_errors.insert(tls.secret.clone(), e);
                }
                None => {
                    cert_errors.insert(
                        tls.secret.clone(),
                        "no such kubernetes.io/tls Secret".to_string(),
                    );
                }
            }
        }
        Snapshot {
            table,
            upstreams,
            certs,
            cert_errors,
        }
    }

    pub fn resolve(&self, backend: &Backend) -> Resolved {
        self.upstreams.get(backend).cloned().unwrap_or_else(|| {
            Resolved::Unavailable(format!(
                "service {}/{} is not known",
                backend.namespace, backend.service
            ))
        })
    }

    /// The certificate for a TLS handshake naming `sni`: the Secret of the TLS section that
    /// covers the name, if it can serve.
    pub fn certificate(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let secret = self.table.certificate_for(sni)?;
        self.certs.get(secret).cloned()
    }
}

fn resolve(
    objs: &Objects,
    slices_of: &BTreeMap<Key, Vec<&EndpointSlice>>,
    b: &Backend,
) -> Resolved {
    let key = (b.namespace.clone(), b.service.clone());
    let name = format!("{}/{}", b.namespace, b.service);
    let Some(svc) = objs.services.get(&key) else {
        return Resolved::Unavailable(format!("service {name} does not exist"));
    };
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let port = ports.iter().find(|p| match &b.port {
        PortRef::Number(n) => p.port == *n,
        PortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
    });
    let Some(port) = port else {
        let want = match &b.port {
            PortRef::Number(n) => n.to_string(),
            PortRef::Name(n) => format!("{n:?}"),
        };
        return Resolved::Unavailable(format!("service {name} has no port {want}"));
    };
    if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
        return Resolved::Unavailable(format!("service {name}'s port {} is not TCP", port.port));
    }
    let slices = slices_of.get(&key).map(Vec::as_slice).unwrap_or_default();
    let addrs: Vec<SocketAddr> = endpoints_for(
        slices,
        port.name.as_deref().unwrap_or(""),
        Protocol::Tcp,
        "",
    )
    .into_iter()
    .filter(|e| e.ready)
    .map(|e| SocketAddr::from((e.ip, e.port)))
    .collect();
    if addrs.is_empty() {
        return Resolved::Unavailable(format!(
            "service {name} has no ready endpoints for port {}",
            port.port
        ));
    }
    Resolved::Ready(Arc::new(Upstream::new(addrs)))
}

/// A `kubernetes.io/tls` Secret's certificate chain and key, ready for rustls.
fn certified_key(secret: &Secret) -> Result<CertifiedKey, String> {
    let data = secret.data.as_ref();
    let field = |k: &str| {
        data.and_then(|d| d.get(k))
            .map(|b| b.0.as_slice())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| format!("the Secret has no {k}"))
    };
    certified_key_pem(field("tls.crt")?, field("tls.key")?)
}

/// A PEM certificate chain and its PEM private key, checked to belong together.
pub(super) fn certified_key_pem(crt: &[u8], key: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".to_string());
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("tls.key is not a PEM private key: {e}"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key: {e}"))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| format!("tls.key does not match tls.crt: {e}"))?;
    Ok(ck)
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
