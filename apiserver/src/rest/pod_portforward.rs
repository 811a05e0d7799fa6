//! pods/portforward: `kubectl port-forward` (≥ 1.31) opens a WebSocket whose subprotocol is
//! `SPDY/3.1+portforward.k8s.io` — SPDY frames carried in binary messages — and falls back to a
//! plain SPDY/3.1 upgrade (`X-Stream-Protocol-Version: portforward.k8s.io`) when the server
//! refuses it (as does `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`). Both are passed as they are to
//! the agent of the pod's node (`/portForward/{ns}/{pod}`), which speaks both; here the pod is
//! checked and the bytes are copied (kube-apiserver's UpgradeAwareHandler).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::rest::pod_exec::{streamed_pod, upgrade_of, upgrade_to_agent};
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
    let pod = streamed_pod(
        api,
        namespace,
        name,
        req.method(),
        "portforward",
        "cannot port-forward to a completed pod",
    )
    .await?;
    let upgrade = upgrade_of(&req);
    if upgrade != "websocket" && !upgrade.starts_with("spdy/3.1") {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let uri = format!("/portForward/{}/{}", percent(namespace), percent(name));
    let what = format!("portforward {namespace}/{name}");
    upgrade_to_agent(api, &pod, uri, req, what).await
}
