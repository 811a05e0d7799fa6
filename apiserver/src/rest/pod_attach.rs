//! pods/attach: `kubectl attach` and `kubectl run -it`. kubectl (≥ 1.30) asks for a WebSocket
//! (`v5.channel.k8s.io`, as for exec) and falls back to a SPDY/3.1 upgrade (remotecommand
//! `v4.channel.k8s.io`); either is passed on to the agent of the pod's node
//! (`/attach/{ns}/{pod}/{container}`), which attaches to the container's own stdio through its
//! runtime the way kubelet does.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::request::Target;
use crate::rest::pod_exec::upgrade_to_agent;
use crate::rest::pod_log::{choose_container, percent};

pub async fn pod_attach(
    State(api): State<Arc<ApiServer>>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let query = query.unwrap_or_default();
    match attach(&api, &namespace, &name, &query, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn attach(
    api: &ApiServer,
    namespace: &str,
    name: &str,
    query: &str,
    req: Request,
) -> ApiResult<Response> {
    if !matches!(*req.method(), Method::GET | Method::POST) {
        return Err(ApiError::method_not_allowed(format!(
            "{} is not supported on pods/attach",
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
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("the query: {e}")))?;
    let container = choose_container(
        &pod,
        params
            .iter()
            .find(|(k, _)| k == "container")
            .map(|(_, v)| v.as_str()),
    )?;
    if let Some(phase @ ("Succeeded" | "Failed")) = pod["status"]["phase"].as_str() {
        return Err(ApiError::bad_request(format!(
            "cannot attach to a container in a completed pod; current phase is {phase}"
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
    let uri = format!(
        "/attach/{}/{}/{}?{query}",
        percent(namespace),
        percent(name),
        percent(&container)
    );
    let what = format!("attach {namespace}/{name}/{container}");
    upgrade_to_agent(api, &pod, uri, req, what).await
}
