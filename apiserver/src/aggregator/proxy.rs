//! Proxying one request to an extension API server, as kube-aggregator's proxy handler does:
//! the caller's credentials stripped (`Authorization`, `Impersonate-*`, any `X-Remote-*` it
//! sent) and replaced by who the caller was authenticated as, over TLS with the front-proxy
//! certificate. Watches and other long requests stream both ways on a connection of their own;
//! short requests reuse idle connections (HTTP/1.1 keep-alive). Protocol upgrades (exec,
//! port-forward) are refused: no extension server here needs them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::Remote;
use crate::ApiServer;
use crate::auth::UserInfo;
use crate::errors::ApiError;

/// How long a short request may take, connection included (kube-aggregator's default
/// request timeout is a minute as well).
const TIMEOUT: Duration = Duration::from_secs(60);
/// Responses to short requests are read whole, up to this.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers never passed on (hop-by-hop, and what the proxy answers for itself).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
];

/// `insecureSkipTLSVerify`: any certificate is accepted (signatures are still checked, so the
/// handshake is with whoever holds the key of the certificate shown).
#[derive(Debug)]
pub struct NoVerification(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The headers sent on: the caller's, less credentials and hop-by-hop ones, plus who the caller
/// is.
fn forwarded_headers(from: &HeaderMap, user: &UserInfo, server_name: &str) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in from {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || n == "authorization"
            || n.starts_with("impersonate-")
            || n.starts_with("x-remote-")
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if let Ok(host) = HeaderValue::from_str(server_name) {
        out.insert(header::HOST, host);
    }
    let mut add = |name: &str, value: &str| {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            out.append(n, v);
        }
    };
    add("X-Remote-User", &user.username);
    if !user.uid.is_empty() {
        add("X-Remote-Uid", &user.uid);
    }
    for g in &user.groups {
        add("X-Remote-Group", g);
    }
    for (key, values) in &user.extra {
        for v in values {
            add(&format!("X-Remote-Extra-{}", escape_extra_key(key)), v);
        }
    }
    out
}

/// An extra's key as a header name carries it (Kubernetes percent-encodes what a header name
/// may not hold, and folds case).
fn escape_extra_key(key: &str) -> String {
    let mut out = String::new();
    for b in key.to_ascii_lowercase().bytes() {
        if b.is_ascii_alphanumeric() || b"-!#$&'*+.^_`|~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether the request stays open (a watch): it gets its own connection and streams.
fn long_running(req: &Request) -> bool {
    req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1" || kv == "watch")
    })
}

async fn connect(
    remote: &Remote,
    addr: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("dial tcp {addr}: i/o timeout"))?
        .map_err(|e| format!("dial tcp {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name =
        ServerName::try_from(remote.server_name()).map_err(|e| format!("server name: {e}"))?;
    tokio_rustls::TlsConnector::from(remote.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))
}

fn unreachable(remote: &Remote, why: &str) -> Response {
    tracing::debug!(apiservice = %remote.name, %why, "extension server unreachable");
    ApiError::unavailable(format!(
        "the server is currently unable to handle the request: error trying to reach service {}/{} ({}): {why}",
        remote.namespace, remote.service, remote.name
    ))
    .into_response()
}

fn response_of(parts: hyper::http::response::Parts, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            resp.headers_mut().append(name.clone(), value.clone());
        }
    }
    resp
}

/// Serves `req` (already authenticated and authorized) from `remote`.
pub async fn forward(api: Arc<ApiServer>, remote: Arc<Remote>, req: Request) -> Response {
    if req.headers().contains_key(header::UPGRADE) {
        return ApiError::bad_request(format!(
            "protocol upgrades are not proxied to extension API servers ({})",
            remote.name
        ))
        .into_response();
    }
    if !remote.available {
        return ApiError::unavailable(format!(
            "service unavailable: APIService {} is not available (see its Available condition)",
            remote.name
        ))
        .into_response();
    }
    let user = req
        .extensions()
        .get::<Arc<UserInfo>>()
        .cloned()
        .unwrap_or_default();
    let addr = match remote.address(&api) {
        Ok(a) => a,
        Err(e) => return unreachable(&remote, &e),
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let headers = forwarded_headers(req.headers(), &user, &remote.server_name());
    let method = req.method().clone();
    if long_running(&req) {
        return stream(&remote, &addr, method, &path, headers, req.into_body()).await;
    }
    let body = match crate::body::read_body(req.into_body()).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let call = async {
        let mut sender = match remote.idle.take(&addr) {
            Some(s) => s,
            None => {
                let tls = connect(&remote, &addr).await?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }
        };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(&path)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        *request.headers_mut() = headers;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let bytes = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?
            .to_bytes();
        remote.idle.put(addr.clone(), sender);
        Ok::<_, String>(response_of(parts, Body::from(bytes)))
    };
    match tokio::time::timeout(TIMEOUT, call).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => unreachable(&remote, &e),
        Err(_) => ApiError::timeout(format!(
            "the extension API server {} did not answer within {}s",
            remote.name,
            TIMEOUT.as_secs()
        ))
        .into_response(),
    }
}

/// A long request on a connection of its own, streamed both ways.
async fn stream(
    remote: &Remote,
    addr: &str,
    method: axum::http::Method,
    path: &str,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let open = async {
        let tls = connect(remote, addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .body(body)
            .map_err(|e| e.to_string())?;
        *request.headers_mut() = headers;
        sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(TIMEOUT, open).await {
        Ok(Ok(response)) => {
            let (parts, body) = response.into_parts();
            response_of(parts, Body::new(body))
        }
        Ok(Err(e)) => unreachable(remote, &e),
        Err(_) => unreachable(remote, "no answer within 60s"),
    }
}

/// GETs `path` from `remote` (the availability check): the status and the body.
pub async fn get(
    api: &ApiServer,
    remote: &Remote,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    let addr = remote.address(api)?;
    let call = async {
        let tls = connect(remote, &addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let system = UserInfo {
            username: "system:kube-aggregator".into(),
            groups: vec!["system:masters".into()],
            ..UserInfo::default()
        };
        let mut request = hyper::Request::get(path)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        *request.headers_mut() =
            forwarded_headers(&HeaderMap::new(), &system, &remote.server_name());
        request
            .headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("no answer within {}s", timeout.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn credentials_are_replaced_by_who_the_caller_is() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        h.insert("impersonate-user", HeaderValue::from_static("root"));
        h.insert("x-remote-user", HeaderValue::from_static("forged"));
        h.insert("x-remote-group", HeaderValue::from_static("system:masters"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let user = UserInfo {
            username: "jane".into(),
            uid: "u-1".into(),
            groups: vec!["dev".into(), "system:authenticated".into()],
            extra: BTreeMap::from([("scopes.example/Key".into(), vec!["a".into(), "b".into()])]),
        };
        let out = forwarded_headers(&h, &user, "adapter.monitoring.svc");
        let all =
            |n: &str| -> Vec<&str> { out.get_all(n).iter().map(|v| v.to_str().unwrap()).collect() };
        assert_eq!(all("authorization"), Vec::<&str>::new());
        assert_eq!(all("impersonate-user"), Vec::<&str>::new());
        assert_eq!(all("connection"), Vec::<&str>::new());
        assert_eq!(all("x-remote-user"), ["jane"]);
        assert_eq!(all("x-remote-uid"), ["u-1"]);
        assert_eq!(all("x-remote-group"), ["dev", "system:authenticated"]);
        assert_eq!(all("x-remote-extra-scopes.example%2Fkey"), ["a", "b"]);
        assert_eq!(all("accept"), ["application/json"]);
        assert_eq!(all("host"), ["adapter.monitoring.svc"]);
    }
}
