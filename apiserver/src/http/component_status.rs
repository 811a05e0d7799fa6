//! `componentstatuses` (core/v1 ComponentStatus, deprecated since 1.19 and still served by
//! Kubernetes 1.33): computed on each request, never stored. Like kube-apiserver, the server
//! probes each component where it listens by default — the controller manager's `/healthz` on
//! 127.0.0.1:10257 (Capstan's scheduler runs inside it, so `scheduler` reads the same probe) —
//! and the store (`etcd-0`) by asking for its current revision. A component running inside the
//! same process (`capstan up`'s controller manager) is registered with
//! [`ApiServer::set_component`] and reports whether it is still running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::json_response;
use super::negotiate::{view, with_warnings};
use crate::ApiServer;
use crate::errors::ApiError;
use crate::request::View;
use crate::table::{Column, Table};

/// The warning kube-apiserver sends with every ComponentStatus response.
pub const DEPRECATION: &str = "v1 ComponentStatus is deprecated in v1.19+";

/// Where a component's health is read.
#[derive(Clone, Debug)]
pub enum Probe {
    /// GET this URL: 2xx is healthy.
    Http(String),
    /// The store answers its current revision.
    Store,
    /// A component in this process: healthy while the flag is set.
    InProcess(Arc<AtomicBool>),
}

/// The components kube-apiserver reports, and where it looks for them by default.
pub fn default_components() -> Vec<(String, Probe)> {
    let manager = || Probe::Http("http://127.0.0.1:10257/healthz".into());
    vec![
        ("controller-manager".into(), manager()),
        ("etcd-0".into(), Probe::Store),
        ("scheduler".into(), manager()),
    ]
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// (healthy, message, error) of one probe.
async fn probe(api: &ApiServer, p: &Probe) -> (bool, String, String) {
    match p {
        Probe::InProcess(running) => match running.load(Ordering::Relaxed) {
            true => (true, "ok".into(), String::new()),
            false => (false, String::new(), "stopped".into()),
        },
        Probe::Store => {
            match tokio::time::timeout(PROBE_TIMEOUT, api.store.current_revision()).await {
                Ok(Ok(_)) => (true, "ok".into(), String::new()),
                Ok(Err(e)) => (false, String::new(), e.to_string()),
                Err(_) => (false, String::new(), "no answer within 1s".into()),
            }
        }
        Probe::Http(url) => {
            let url = url.as_str();
            let get = async {
                let uri: axum::http::Uri = url.parse().map_err(|e| format!("{e}"))?;
                let resp = crate::rest::pod_log::client()
                    .get(uri)
                    .await
                    .map_err(|e| format!("Get \"{url}\": {e}"))?;
                let code = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_else(|_| Bytes::new());
                let text = String::from_utf8_lossy(&body).trim().to_string();
                if code.is_success() {
                    Ok(text)
                } else {
                    Err(format!("Get \"{url}\": HTTP {code}: {text}"))
                }
            };
            match tokio::time::timeout(PROBE_TIMEOUT, get).await {
                Ok(Ok(text)) => (true, text, String::new()),
                Ok(Err(e)) => (false, String::new(), e),
                Err(_) => (
                    false,
                    String::new(),
                    format!("Get \"{url}\": no answer within 1s"),
                ),
            }
        }
    }
}

async fn status_of(api: &ApiServer, name: &str, p: &Probe) -> Value {
    let (healthy, message, error) = probe(api, p).await;
    let mut condition =
        json!({"type": "Healthy", "status": if healthy { "True" } else { "False" }});
    if !message.is_empty() {
        condition["message"] = json!(message);
    }
    if !error.is_empty() {
        condition["error"] = json!(error);
    }
    json!({
        "kind": "ComponentStatus",
        "apiVersion": "v1",
        "metadata": {"name": name},
        "conditions": [condition],
    })
}

/// kubectl get cs: NAME STATUS MESSAGE ERROR.
fn table() -> Table {
    let col = |name: &str| Column {
        name: name.into(),
        ty: "string".into(),
        priority: 0,
        description: String::new(),
    };
    Table::new(
        vec![col("Status"), col("Message"), col("Error")],
        Arc::new(|o: &Value| {
            let c = &o["conditions"][0];
            let status = if c["status"] == "True" {
                "Healthy"
            } else {
                "Unhealthy"
            };
            vec![json!(status), c["message"].clone(), c["error"].clone()]
                .into_iter()
                .map(|v| if v.is_null() { json!("") } else { v })
                .collect()
        }),
    )
}

fn respond(headers: &HeaderMap, items: Vec<Value>, list: bool) -> Response {
    let body = match view(headers) {
        View::Table => crate::table::render(&table(), &items, None, "", None),
        _ if list => {
            json!({"kind": "ComponentStatusList", "apiVersion": "v1", "metadata": {}, "items": items})
        }
        _ => items.into_iter().next().unwrap_or(Value::Null),
    };
    with_warnings(
        json_response(StatusCode::OK, &body),
        &[DEPRECATION.to_string()],
    )
}

/// GET /api/v1/componentstatuses
pub async fn list(State(api): State<Arc<ApiServer>>, headers: HeaderMap) -> Response {
    let mut items = Vec::new();
    for (name, p) in api.components() {
        items.push(status_of(&api, &name, &p).await);
    }
    respond(&headers, items, true)
}

/// GET /api/v1/componentstatuses/{name}
pub async fn get(
    State(api): State<Arc<ApiServer>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match api.components().into_iter().find(|(n, _)| *n == name) {
        Some((n, p)) => respond(&headers, vec![status_of(&api, &n, &p).await], false),
        None => ApiError::not_found("", "componentstatuses", &name).into_response(),
    }
}
