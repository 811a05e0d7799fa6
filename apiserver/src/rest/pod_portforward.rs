//! pods/portforward: `kubectl port-forward` (≥ 1.31) opens a WebSocket whose subprotocol is
//! `SPDY/3.1+portforward.k8s.io` — SPDY frames carried in binary messages — and falls back to a
//! plain SPDY/3.1 upgrade (`X-Stream-Protocol-Version: portforward.k8s.io`) when the server
//! refuses it (as does `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`). Both are passed as they are to
//! the agent of the pod's node (`/portForward/{ns}/{pod}`), which speaks both; here the pod is
//! checked and the bytes are copied (kube-apiserver's UpgradeAwareHandler).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::request::Target;
use crate::rest::pod_exec::upgrade_to_agent;
use crate::rest::pod_log::percent;

pub async fn pod_portforward(
    State(api): State<Arc<ApiServer>>,
    Path((namespace, name)): Path<(String, String)>,
    req: Request,
) -> Response {
    match portforward(&api, &namespace, &name, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn portforward(
    api: &ApiServer,
    namespace: &str,
    name: &str,
    req: Request,
) -> ApiResult<Response> {
    if !matches!(*req.method(), Method::GET | Method::POST) {
        return Err(ApiError::method_not_allowed(format!(
            "{} is not supported on pods/portforward",
            req.method()
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
            "cannot port-forward to a completed pod; current phase is {phase}"
        )));
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if upgrade != "websocket" && !upgrade.starts_with("spdy/3.1") {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let uri = format!("/portForward/{}/{}", percent(namespace), percent(name));
    let what = format!("portforward {namespace}/{name}");
    upgrade_to_agent(api, &pod, uri, req, what).await
}
