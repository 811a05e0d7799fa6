//! One request through the proxy: route it by host and path on the current snapshot, pick a
//! ready endpoint of the backend (the next one when it cannot be reached), forward it as
//! HTTP/1.1 with the X-Forwarded-* headers, and stream the response back — or answer 404 (no
//! rule), 503 (no ready endpoint), 502 (no endpoint reachable or a broken response) or 504
//! (no response headers in time) with a one-line body that says why.
//!
//! WebSockets (and any HTTP/1.1 Upgrade) pass through: the upstream's 101 is relayed and the
//! two upgraded connections are joined byte for byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use super::Shared;
use super::metrics::RouteLabels;
use super::state::Resolved;
use super::upstream::ConnectError;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// How many endpoints one request may try to connect to (ingress-nginx's
/// `proxy-next-upstream-tries` is 3).
const TRIES: usize = 3;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), dropped both ways.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut body = msg.into();
    body.push('\n');
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The host a request names: the Host header (HTTP/1.1), or the URI's authority (HTTP/2).
fn request_host(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Drops the hop-by-hop headers and those the Connection header names; keeps
/// `Connection: upgrade` and `Upgrade` when `upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in named {
        if !(upgrade && h == header::UPGRADE) {
            headers.remove(h);
        }
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Sets X-Forwarded-For (appending the client), -Proto, -Host, -Port and X-Real-IP, as an edge
/// proxy does: the client's own -Proto/-Host/-Port are not trusted.
fn forwarded_headers(
    headers: &mut HeaderMap,
    client: SocketAddr,
    scheme: Scheme,
    host: &str,
    port: u16,
) {
    let ip = client.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip.clone(),
    };
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set("x-forwarded-for", &xff);
    set("x-real-ip", &ip);
    set("x-forwarded-proto", scheme.as_str());
    set("x-forwarded-host", host);
    set("x-forwarded-port", &port.to_string());
}

/// Answers one request.
pub async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    client: SocketAddr,
    local: SocketAddr,
    scheme: Scheme,
) -> Response<Body> {
    let started = Instant::now();
    if !shared.is_synced() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "ingress: the proxy has not read the cluster's Ingresses and endpoints yet",
        );
    }
    let Some(host) = request_host(&req) else {
        return text(
            StatusCode::BAD_REQUEST,
            "ingress: the request names no host",
        );
    };
    let snapshot = shared.snapshot();
    let path = req.uri().path().to_string();
    let Some(matched) = snapshot.table.route(&host, &path) else {
        let r = text(
            StatusCode::NOT_FOUND,
            format!(
                "ingress: no Ingress rule matches host {:?} and path {path:?}",
                super::routes::normalize_host(&host)
            ),
        );
        shared
            .metrics
            .answered(RouteLabels::default(), 404, started.elapsed());
        return r;
    };
    let service = format!("{}/{}", matched.backend.namespace, matched.backend.service);
    let labels = RouteLabels::of(matched, &service);
    let upstream = match snapshot.resolve(&matched.backend) {
        Resolved::Ready(u) => u,
        Resolved::Unavailable(why) => {
            shared.metrics.answered(labels, 503, started.elapsed());
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("ingress: {why}"));
        }
    };

    // The request as the endpoint gets it: origin-form, HTTP/1.1, a Host header.
    let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let pq = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    if let Ok(h) = HeaderValue::from_str(&host) {
        headers.insert(header::HOST, h);
    }
    forwarded_headers(headers, client, scheme, &host, local.port());

    // Connect: the next ready endpoint, going on while they cannot be reached.
    let mut last_error = None;
    let mut connected = None;
    for addr in upstream.order().take(TRIES) {
        match shared.pool.get(addr, shared.config.connect_timeout).await {
            Ok(sender) => {
                connected = Some((addr, sender));
                break;
            }
            Err(e) => {
                let reason = match e {
                    ConnectError::Timeout { .. } => "timeout",
                    _ => "connect",
                };
                shared.metrics.upstream_error(labels, reason);
                tracing::debug!(route = %matched.ingress, error = %e, "ingress: endpoint unreachable; trying the next");
                last_error = Some(e);
            }
        }
    }
    let Some((addr, mut sender)) = connected else {
        shared.metrics.answered(labels, 502, started.elapsed());
        let why = last_error.map(|e| e.to_string()).unwrap_or_default();
        return text(
            StatusCode::BAD_GATEWAY,
            format!("ingress: no endpoint of service {service} could be reached: {why}"),
        );
    };

    let response = tokio::time::timeout(shared.config.response_timeout, sender.send_request(req));
    let mut resp = match response.await {
        Err(_) => {
            shared.metrics.upstream_error(labels, "timeout");
            shared.metrics.answered(labels, 504, started.elapsed());
            return text(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "ingress: {addr} (service {service}) sent no response within {:?}",
                    shared.config.response_timeout
                ),
            );
        }
        Ok(Err(e)) => {
            shared.metrics.upstream_error(labels, "response");
            shared.metrics.answered(labels, 502, started.elapsed());
            return text(
                StatusCode::BAD_GATEWAY,
                format!("ingress: {addr} (service {service}) failed the request: {e}"),
            );
        }
        Ok(Ok(r)) => r,
    };
    let code = resp.status();
    shared
        .metrics
        .answered(labels, code.as_u16(), started.elapsed());
    if code == StatusCode::SWITCHING_PROTOCOLS
        && let Some(downstream) = downstream_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(downstream, upstream_upgrade) {
                Ok((d, u)) => {
                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                    let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                }
                Err(e) => tracing::debug!(error = %e, "ingress: an upgrade did not complete"),
            }
        });
    } else {
        // An endpoint that closes after this answer (busybox httpd) costs no idle-list task.
        let closes = resp.version() < Version::HTTP_11
            || resp
                .headers()
                .get_all(header::CONNECTION)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if !closes {
            shared.pool.release(addr, sender);
        }
        strip_hop_by_hop(resp.headers_mut(), false);
    }
    resp.map(|b| b.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_an_upgrade_keeps_what_it_needs() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        let names: Vec<&str> = plain.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["accept"]);

        let mut ws = HeaderMap::new();
        ws.insert("connection", HeaderValue::from_static("Upgrade"));
        ws.insert("upgrade", HeaderValue::from_static("websocket"));
        ws.insert("sec-websocket-key", HeaderValue::from_static("k"));
        assert!(is_upgrade(&ws));
        strip_hop_by_hop(&mut ws, true);
        assert_eq!(ws["connection"], "upgrade");
        assert_eq!(ws["upgrade"], "websocket");
        assert_eq!(ws["sec-websocket-key"], "k");
        assert!(!is_upgrade(&HeaderMap::new()));
    }

    #[test]
    fn forwarded_headers_append_the_client_and_replace_what_the_client_claimed() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        forwarded_headers(
            &mut h,
            "198.51.100.7:5555".parse().unwrap(),
            Scheme::Http,
            "a.example.test",
            8080,
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 198.51.100.7");
        assert_eq!(h["x-real-ip"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example.test");
        assert_eq!(h["x-forwarded-port"], "8080");
        let mut fresh = HeaderMap::new();
        forwarded_headers(
            &mut fresh,
            "[2001:db8::1]:1".parse().unwrap(),
            Scheme::Https,
            "h",
            443,
        );
        assert_eq!(fresh["x-forwarded-for"], "2001:db8::1");
        assert_eq!(fresh["x-forwarded-proto"], "https");
    }
}
