//! pods/attach: `kubectl attach` and `kubectl run -it`. kubectl (≥ 1.30) asks for a WebSocket
//! (`v5.channel.k8s.io`, as for exec) and falls back to a SPDY/3.1 upgrade (remotecommand
//! `v4.channel.k8s.io`); either is passed on to the agent of the pod's node
//! (`/attach/{ns}/{pod}/{container}`), which attaches to the container's own stdio through its
//! runtime the way kubelet does.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::rest::pod_exec::{streamed_pod, upgrade_of, upgrade_to_agent};
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
    let pod = streamed_pod(
        api,
        namespace,
        name,
        req.method(),
        "attach",
        "cannot attach to a container in a completed pod",
    )
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
    let upgrade = upgrade_of(&req);
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
