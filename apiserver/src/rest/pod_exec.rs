//! pods/exec: `kubectl exec` (≥ 1.30) opens a WebSocket (`v5.channel.k8s.io`, or v4) on
//! `/api/v1/namespaces/{ns}/pods/{name}/exec?command=…&container=…&stdin=…`. The API server
//! checks the pod and container, opens the same upgrade to the agent of the pod's node
//! (`/exec/{ns}/{pod}/{container}`), answers the client with the agent's 101, and from then on
//! copies bytes both ways — kube-apiserver's UpgradeAwareHandler, without SPDY (kubectl < 1.30
//! speaks only SPDY and gets a clear 400). Plain HTTP to the agent until the security issue.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::request::Target;
use crate::rest::pod_log::{choose_container, percent};

/// The headers of a WebSocket handshake, passed on both ways.
const REQUEST_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];
const RESPONSE_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

pub async fn pod_exec(
    State(api): State<Arc<ApiServer>>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    match exec(
        &api,
        &namespace,
        &name,
        query.as_deref().unwrap_or_default(),
        req,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn exec(
    api: &ApiServer,
    namespace: &str,
    name: &str,
    query: &str,
    req: Request,
) -> ApiResult<Response> {
    let pod = streamed_pod(
        api,
        namespace,
        name,
        req.method(),
        "exec",
        "cannot exec into a container in a completed pod",
    )
    .await?;
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("the query: {e}")))?;
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let container = choose_container(&pod, param("container"))?;
    if param("command").is_none() {
        return Err(ApiError::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    let upgrade = upgrade_of(&req);
    if upgrade.starts_with("spdy") {
        return Err(ApiError::bad_request(
            "SPDY is not supported: exec needs a WebSocket (v5.channel.k8s.io), which kubectl 1.30 and newer use",
        ));
    }
    if upgrade != "websocket" {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let uri = format!(
        "/exec/{}/{}/{}?{query}",
        percent(namespace),
        percent(name),
        percent(&container)
    );
    let what = format!("exec {namespace}/{name}/{container}");
    upgrade_to_agent(api, &pod, uri, req, what).await
}

/// The pod a streaming subresource (pods/exec, attach, portforward) is asked of: GET or POST
/// only, and not of a finished pod (`completed` is the refusal's start, as Kubernetes words it).
pub(crate) async fn streamed_pod(
    api: &ApiServer,
    namespace: &str,
    name: &str,
    method: &Method,
    subresource: &str,
    completed: &str,
) -> ApiResult<serde_json::Value> {
    if !matches!(*method, Method::GET | Method::POST) {
        return Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on pods/{subresource}"
        )));
    }
    let pods = api
        .registry
        .get("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not served"))?;
    let pod = api
        .get(&Target {
            info: pods,
            namespace: Some(namespace.to_string()),
            name: Some(name.to_string()),
            subresource: None,
        })
        .await?;
    if let Some(phase @ ("Succeeded" | "Failed")) = pod["status"]["phase"].as_str() {
        return Err(ApiError::bad_request(format!(
            "{completed}; current phase is {phase}"
        )));
    }
    Ok(pod)
}

/// The request's Upgrade header, lower-cased (empty without one).
pub(crate) fn upgrade_of(req: &Request) -> String {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Opens the client's upgrade (its handshake headers passed on) to the agent of the pod's
/// node at `uri`, answers the client with the agent's answer, and once both sides switched,
/// copies bytes both ways until either closes.
pub(crate) async fn upgrade_to_agent(
    api: &ApiServer,
    pod: &serde_json::Value,
    uri: String,
    mut req: Request,
    what: String,
) -> ApiResult<Response> {
    let headers = req.headers().clone();
    let (host, port, node) = api.node_endpoint(pod).await?;
    let unavailable = |e: &dyn std::fmt::Display| {
        ApiError::unavailable(format!(
            "the node agent of {node} ({host}:{port}) does not answer: {e}"
        ))
    };
    let mut sender = super::agent_conn::open(api.kubelet_tls.as_ref(), &host, port)
        .await
        .map_err(|e| unavailable(&e))?;
    let mut out = hyper::Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::HOST, format!("{host}:{port}"));
    for h in REQUEST_HEADERS {
        for v in headers.get_all(*h) {
            out = out.header(*h, v);
        }
    }
    let out = out
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut resp = sender
        .send_request(out)
        .await
        .map_err(|e| unavailable(&e))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The agent's refusal (a Status) goes to the client as it is.
        let status = resp.status();
        let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut r = Response::builder().status(status);
        if let Some(ct) = ct {
            r = r.header(header::CONTENT_TYPE, ct);
        }
        return r
            .body(Body::from(body))
            .map_err(|e| ApiError::internal(e.to_string()));
    }
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for h in RESPONSE_HEADERS {
        for v in resp.headers().get_all(*h) {
            answer = answer.header(*h, v);
        }
    }
    let client = hyper::upgrade::on(&mut req);
    let agent = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        match tokio::try_join!(client, agent) {
            Ok((c, a)) => {
                let (mut c, mut a) = (TokioIo::new(c), TokioIo::new(a));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut a).await {
                    tracing::debug!(stream = %what, error = %e, "stream ended");
                }
            }
            Err(e) => tracing::warn!(stream = %what, error = %e, "upgrade failed"),
        }
    });
    answer
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_headers_are_valid_names() {
        for h in REQUEST_HEADERS.iter().chain(RESPONSE_HEADERS) {
            assert!(header::HeaderName::from_bytes(h.as_bytes()).is_ok(), "{h}");
        }
    }
}
