//! `kubectl attach` (and `kubectl run -it`) on the agent: `/attach/{namespace}/{pod}/{container}
//! ?stdin=…&stdout=…&stderr=…&tty=…`, passed on by the API server's pods/attach.
//!
//! - A WebSocket (`v5.channel.k8s.io` or v4, kubectl ≥ 1.30): the runtime's attach session
//!   (containerd: CRI Attach and the remotecommand protocol on its streaming server, spoken
//!   here as kube-apiserver's stream translator does; the process runtime: the shim's attach
//!   socket) served on the channel protocol exec uses — stdin closed by `[255, 0]`, resizes
//!   on channel 4, the Status on channel 3.
//! - A SPDY/3.1 upgrade (older kubectl, or its fallback): as kubelet serves attach for CRI
//!   runtimes, the runtime's streaming URL gets the upgrade and the bytes are copied both
//!   ways, untouched; a runtime without a streaming server refuses it.
//!
//! As kubelet does, the terminal is the container's (a pod made with `tty: true` has one
//! whatever the client asks; `kubectl run -i` with piped input asks for none): with a
//! terminal there is no separate stderr.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::exec_ws::{self, V4, V5, protocol, running_container};
use crate::runtime::{ExecRequest, Runtime};
use crate::server::{Served, status};

/// The upgrade's headers, passed on both ways.
const HANDSHAKE: &[&str] = &["upgrade", "connection", "x-stream-protocol-version"];

/// The request's streams as kubelet reads them.
pub fn parse(query: &str) -> Result<ExecRequest, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| format!("the query: {e}"))?;
    let mut req = ExecRequest::default();
    for (k, v) in pairs {
        let on = matches!(v.as_str(), "true" | "1");
        match k.as_str() {
            "stdin" => req.stdin = on,
            "stdout" => req.stdout = on,
            "stderr" => req.stderr = on,
            "tty" => req.tty = on,
            _ => {}
        }
    }
    if !(req.stdin || req.stdout || req.stderr) {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    if req.tty && req.stderr {
        // kubelet: with a tty, stderr goes to stdout.
        req.stderr = false;
    }
    Ok(req)
}

pub(crate) async fn attach<R: Runtime>(
    State(s): State<Arc<Served<R>>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let bad = |m: String| status(StatusCode::BAD_REQUEST, "BadRequest", m);
    let mut streams = match parse(query.as_deref().unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if upgrade != "websocket" && !upgrade.starts_with("spdy/3.1") {
        return bad("attach needs a WebSocket (v5.channel.k8s.io) or SPDY/3.1 upgrade".into());
    }
    let c = match running_container(&*s.runtime, &namespace, &pod, &container).await {
        Ok(c) => c,
        Err((code, reason, msg)) => return status(code, reason, msg),
    };
    streams.tty = c.config.tty;
    streams.stderr &= !streams.tty;
    tracing::info!(%namespace, %pod, %container, stdin = streams.stdin, tty = streams.tty, %upgrade, "attach");
    if upgrade == "websocket" {
        return websocket(s.runtime.clone(), c.id, streams, req).await;
    }
    let url = match s.runtime.attach_url(&c.id, &streams).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            return bad(format!(
                "attach over SPDY needs a runtime with a streaming server; use a WebSocket ({V5}, kubectl 1.30 or newer)"
            ));
        }
        Err(e) => return bad(format!("attach to {namespace}/{pod}/{container}: {e}")),
    };
    spdy_passthrough(&url, req).await
}

/// The runtime's attach session on a WebSocket.
async fn websocket<R: Runtime>(
    runtime: Arc<R>,
    id: String,
    streams: ExecRequest,
    req: Request,
) -> Response {
    let proto = protocol(req.headers());
    let ws = match WebSocketUpgrade::from_request(req, &()).await {
        Ok(ws) => ws,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.body_text()),
    };
    let Some(proto) = proto else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("no supported WebSocket subprotocol offered: this node speaks {V5} and {V4}"),
        );
    };
    // Started before the upgrade, so that a refusal is an HTTP error kubectl prints.
    let session = match runtime.attach(&id, &streams).await {
        Ok(s) => s,
        Err(e) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("attach to container {id}: {e}"),
            );
        }
    };
    ws.protocols([proto]).on_upgrade(move |socket| async move {
        exec_ws::serve(socket, proto == V5, &[], Ok(session)).await;
    })
}

/// Passes a SPDY upgrade on to the runtime's streaming server at `url`.
async fn spdy_passthrough(url: &str, mut req: Request) -> Response {
    let bad = |m: String| status(StatusCode::BAD_REQUEST, "BadRequest", m);
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("the runtime's attach URL {url:?}"),
        );
    };
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let unavailable = |e: &dyn std::fmt::Display| {
        status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("the runtime's streaming server ({authority}): {e}"),
        )
    };
    let stream = match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&authority),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return unavailable(&e),
        Err(_) => return unavailable(&"connect timed out"),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => return unavailable(&e),
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut out = hyper::Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, &authority);
    for h in HANDSHAKE {
        for v in req.headers().get_all(*h) {
            out = out.header(*h, v);
        }
    }
    let Ok(out) = out.body(Empty::<bytes::Bytes>::new()) else {
        return bad("the attach request".into());
    };
    let mut resp = match sender.send_request(out).await {
        Ok(r) => r,
        Err(e) => return unavailable(&e),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let code = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return status(
            code,
            "BadRequest",
            format!(
                "the runtime refused the attach: {}",
                String::from_utf8_lossy(&body).trim()
            ),
        );
    }
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for h in HANDSHAKE {
        for v in resp.headers().get_all(*h) {
            answer = answer.header(*h, v);
        }
    }
    let client = hyper::upgrade::on(&mut req);
    let runtime = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        if let Ok((c, r)) = tokio::try_join!(client, runtime) {
            let (mut c, mut r) = (TokioIo::new(c), TokioIo::new(r));
            let _ = tokio::io::copy_bidirectional(&mut c, &mut r).await;
        }
    });
    answer.body(Body::empty()).unwrap_or_else(|e| {
        status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tty_folds_stderr_into_stdout_and_some_stream_is_needed() {
        let r = parse("stdin=true&stdout=true&stderr=true&tty=true").unwrap();
        assert!(r.stdin && r.stdout && r.tty && !r.stderr);
        assert!(parse("tty=true").is_err());
    }
}
