//! Calling a webhook — admission or conversion — as kube-apiserver does: a JSON POST over
//! HTTPS to `clientConfig.url` or to `clientConfig.service`, trusting `caBundle` (the system's
//! roots when it is empty), within the webhook's timeout.
//!
//! A Service is reached at one of its ready endpoints, read from its EndpointSlices (kube-
//! apiserver's endpoint routing, `--enable-aggregator-routing`), so a webhook works on a host
//! that does not route Service IPs; a Service without endpoints falls back to its ClusterIP.
//! The certificate is checked for `NAME.NAMESPACE.svc`, as Kubernetes checks it.
//!
//! Connections are kept and reused (HTTP/1.1 keep-alive): a webhook called per request pays
//! its TLS handshake once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use serde_json::Value;

use crate::ApiServer;

/// Where the system's trusted roots are on Debian (used when `caBundle` is empty).
pub(crate) const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Idle connections kept per webhook.
const MAX_IDLE: usize = 16;
/// Responses larger than this are refused (kube-apiserver reads at most 3 MiB more than the
/// object; this is the same order).
const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// Where a webhook is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Url {
        host: String,
        port: u16,
        /// Path and query.
        path: String,
    },
    Service {
        namespace: String,
        name: String,
        port: i32,
        path: String,
    },
}

/// A webhook's client: its endpoint, its TLS trust and its idle connections.
pub struct Client {
    endpoint: Endpoint,
    tls: Arc<rustls::ClientConfig>,
    idle: IdleConnections,
}

/// Idle HTTP/1.1 keep-alive connections, by address, at most a bound of them (webhooks'
/// clients and the aggregation layer's).
#[derive(Default)]
pub(crate) struct IdleConnections {
    idle: Mutex<Vec<(String, SendRequest<Full<Bytes>>)>>,
}

impl IdleConnections {
    /// A ready connection to `addr`, if one is kept.
    pub(crate) fn take(&self, addr: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(i) = idle.iter().rposition(|(a, _)| a == addr) {
            let (_, s) = idle.swap_remove(i);
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    /// Keeps `sender` for the next request to `addr` (closed ones are dropped first).
    pub(crate) fn put(&self, addr: String, sender: SendRequest<Full<Bytes>>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|(_, s)| !s.is_closed());
            if idle.len() < MAX_IDLE {
                idle.push((addr, sender));
            }
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "webhook client for {}", self.url())
    }
}

/// The checks of a `clientConfig` as written (kube's `ValidateWebhookClientConfig`), as
/// (field below `path`, message) pairs.
pub fn check_config(config: &Value, path: &str) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let url = config.get("url").filter(|v| !v.is_null());
    let service = config.get("service").filter(|v| !v.is_null());
    match (url, service) {
        (Some(_), Some(_)) | (None, None) => errs.push((
            path.to_string(),
            "Required value: exactly one of url or service is required".into(),
        )),
        (Some(url), None) => {
            if let Err(e) = parse_url(url.as_str().unwrap_or_default()) {
                errs.push((format!("{path}.url"), format!("Invalid value: {url}: {e}")));
            }
        }
        (None, Some(svc)) => {
            for key in ["namespace", "name"] {
                if svc[key].as_str().is_none_or(str::is_empty) {
                    errs.push((
                        format!("{path}.service.{key}"),
                        format!("Required value: service {key} is required"),
                    ));
                }
            }
            if let Some(p) = svc["path"].as_str()
                && !p.is_empty()
                && (!p.starts_with('/') || p.contains(['?', '#']) || p.contains("//"))
            {
                errs.push((
                    format!("{path}.service.path"),
                    format!(
                        "Invalid value: {p:?}: must be an absolute path without a query or fragment"
                    ),
                ));
            }
            if let Some(p) = svc["port"].as_i64()
                && !(1..=65535).contains(&p)
            {
                errs.push((
                    format!("{path}.service.port"),
                    format!("Invalid value: {p}: port is not valid: must be between 1 and 65535, inclusive"),
                ));
            }
        }
    }
    if let Some(b) = config["caBundle"].as_str().filter(|b| !b.is_empty())
        && decode_bundle(b).is_err()
    {
        errs.push((
            format!("{path}.caBundle"),
            "Invalid value: must be base64 of PEM-encoded certificates".into(),
        ));
    }
    errs
}

pub(crate) fn decode_bundle(b64: &str) -> Result<String, String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| e.to_string())?;
    let pem = String::from_utf8(bytes).map_err(|e| e.to_string())?;
    capstan_pki::tls::certs(&pem).map_err(|e| e.to_string())?;
    Ok(pem)
}

/// An `https://host[:port]/path[?query]` URL without user info or fragment.
fn parse_url(s: &str) -> Result<(String, u16, String), String> {
    let uri: hyper::Uri = s.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("'https' is the only allowed URL scheme".into());
    }
    let authority = uri.authority().ok_or("host must be specified")?;
    if authority.as_str().contains('@') {
        return Err("user information is not permitted in the URL".into());
    }
    if s.contains('#') {
        return Err("fragments are not permitted in the URL".into());
    }
    let host = authority.host().to_string();
    if host.is_empty() {
        return Err("host must be specified".into());
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok((host, authority.port_u16().unwrap_or(443), path))
}

impl Client {
    /// The client of a `clientConfig` (checked already when the object was written).
    pub fn new(config: &Value) -> Result<Client, String> {
        let endpoint = if let Some(url) = config["url"].as_str() {
            let (host, port, path) = parse_url(url)?;
            Endpoint::Url { host, port, path }
        } else {
            let svc = &config["service"];
            Endpoint::Service {
                namespace: svc["namespace"].as_str().unwrap_or_default().into(),
                name: svc["name"].as_str().unwrap_or_default().into(),
                port: svc["port"].as_i64().unwrap_or(443) as i32,
                path: svc["path"].as_str().unwrap_or("/").into(),
            }
        };
        let pem = match config["caBundle"].as_str().filter(|b| !b.is_empty()) {
            Some(b) => decode_bundle(b)?,
            None => std::fs::read_to_string(SYSTEM_ROOTS).unwrap_or_default(),
        };
        let tls = capstan_pki::tls::client_config(&pem, None)
            .or_else(|_| {
                // No usable roots (an empty bundle on a host without system roots): every
                // call fails its handshake, saying so.
                let roots = rustls::RootCertStore::empty();
                Ok::<_, String>(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
                )
            })
            .map_err(|e| format!("TLS configuration: {e}"))?;
        Ok(Client {
            endpoint,
            tls: Arc::new(tls),
            idle: IdleConnections::default(),
        })
    }

    /// The webhook's URL, as errors name it.
    pub fn url(&self) -> String {
        match &self.endpoint {
            Endpoint::Url { host, port, path } => format!("https://{host}:{port}{path}"),
            Endpoint::Service {
                namespace,
                name,
                port,
                path,
            } => format!("https://{name}.{namespace}.svc:{port}{path}"),
        }
    }

    /// Where to connect now (`host:port`) and the TLS name to check.
    fn resolve(&self, api: &ApiServer) -> Result<(String, String), String> {
        match &self.endpoint {
            Endpoint::Url { host, port, .. } => Ok((format!("{host}:{port}"), host.clone())),
            Endpoint::Service {
                namespace,
                name,
                port,
                ..
            } => {
                let server_name = format!("{name}.{namespace}.svc");
                let addr = service_address(api, namespace, name, *port)?;
                Ok((addr, server_name))
            }
        }
    }

    /// POSTs `body` (JSON) with `?timeout=` and answers the response's JSON.
    pub async fn post(
        &self,
        api: &ApiServer,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Value, String> {
        let (addr, server_name) = self.resolve(api)?;
        let path = match &self.endpoint {
            Endpoint::Url { path, .. } | Endpoint::Service { path, .. } => path,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let uri = format!("{path}{sep}timeout={}s", timeout.as_secs());
        let call = async {
            let mut sender = match self.idle.take(&addr) {
                Some(s) => s,
                None => self.connect(&addr, &server_name).await?,
            };
            let request = hyper::Request::post(&uri)
                .header(hyper::header::HOST, &server_name)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::ACCEPT, "application/json")
                .body(Full::new(body))
                .map_err(|e| e.to_string())?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let bytes = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the response: {e}"))?
                .to_bytes();
            self.idle.put(addr.clone(), sender);
            if !status.is_success() {
                return Err(format!(
                    "the server responded with status {}: {}",
                    status.as_u16(),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).trim()
                ));
            }
            serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| format!("the response is not JSON: {e}"))
        };
        let url = format!("{}{sep}timeout={}s", self.url(), timeout.as_secs());
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| "context deadline exceeded".to_string())
            .and_then(|r| r)
            .map_err(|e| format!("Post \"{url}\": {e}"))
    }

    async fn connect(
        &self,
        addr: &str,
        server_name: &str,
    ) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(
            server_name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        )
        .map_err(|e| format!("{server_name}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "webhook connection");
            }
        });
        Ok(sender)
    }
}

/// `host:port` of a ready endpoint of Service `namespace/name` for its port `port`, else of
/// its ClusterIP.
pub(crate) fn service_address(
    api: &ApiServer,
    namespace: &str,
    name: &str,
    port: i32,
) -> Result<String, String> {
    let (svc, mut ready) = ready_endpoints(api, namespace, name, port)?;
    if !ready.is_empty() {
        return Ok(ready.swap_remove(fastrand::usize(..ready.len())));
    }
    match svc["spec"]["clusterIP"].as_str() {
        Some(ip) if !ip.is_empty() && ip != "None" => Ok(host_port(ip, i64::from(port))),
        _ => Err(format!("service {namespace}/{name} has no ready endpoints")),
    }
}

/// Service `namespace/name` and the `host:port`s of its ready endpoints for its port `port`
/// (from its EndpointSlices); an error when the Service or the port is not there.
pub(crate) fn ready_endpoints(
    api: &ApiServer,
    namespace: &str,
    name: &str,
    port: i32,
) -> Result<(Arc<Value>, Vec<String>), String> {
    let cached = |group: &str, plural: &str| {
        let info = api.registry.get(group, "v1", plural)?;
        api.cacher(&info).ok().map(|c| (info, c))
    };
    let (info, services) = cached("", "services").ok_or("services are not served")?;
    let svc = services
        .get_value(&info.key(Some(namespace), name))
        .ok_or_else(|| format!("service/{name} in {namespace:?} is not present"))?;
    let svc_port = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_i64() == Some(i64::from(port)))
        .ok_or_else(|| {
            format!("service/{name} in {namespace:?} is not listening on port {port}")
        })?;
    let port_name = svc_port["name"].as_str().unwrap_or_default();
    let mut ready = Vec::new();
    if let Some((info, slices)) = cached("discovery.k8s.io", "endpointslices") {
        for slice in slices.list(&info.list_prefix(Some(namespace))).0 {
            if slice
                .index()
                .pointer("/metadata/labels/kubernetes.io~1service-name")
                != Some(&Value::from(name))
            {
                continue;
            }
            let slice = slice.value();
            let Some(target) = slice["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
                .and_then(|p| p["port"].as_i64())
            else {
                continue;
            };
            for ep in slice["endpoints"].as_array().into_iter().flatten() {
                if ep.pointer("/conditions/ready") == Some(&Value::Bool(false)) {
                    continue;
                }
                if let Some(ip) = ep["addresses"][0].as_str() {
                    ready.push(host_port(ip, target));
                }
            }
        }
    }
    Ok((svc, ready))
}

fn host_port(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_must_be_https_without_user_or_fragment() {
        assert_eq!(
            parse_url("https://hook.example:8443/validate?x=1").unwrap(),
            ("hook.example".into(), 8443, "/validate?x=1".into())
        );
        assert_eq!(parse_url("https://10.0.0.1").unwrap().1, 443);
        assert!(parse_url("http://hook.example/").is_err());
        assert!(parse_url("https://user@hook.example/").is_err());
        assert!(parse_url("https://hook.example/#frag").is_err());
        assert!(parse_url("not a url").is_err());
    }

    #[test]
    fn a_client_config_names_exactly_one_target() {
        assert!(check_config(&json!({"url": "https://a/"}), "c").is_empty());
        assert!(check_config(&json!({"service": {"namespace": "n", "name": "s"}}), "c").is_empty());
        let both = check_config(
            &json!({"url": "https://a/", "service": {"namespace": "n", "name": "s"}}),
            "c",
        );
        assert_eq!(both[0].0, "c");
        let bad = check_config(
            &json!({"service": {"name": "", "port": 70000, "path": "x"}, "caBundle": "!!"}),
            "c",
        );
        let fields: Vec<&str> = bad.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            fields,
            [
                "c.service.namespace",
                "c.service.name",
                "c.service.path",
                "c.service.port",
                "c.caBundle"
            ]
        );
    }
}
