//! The operational endpoints: `/version`, `/healthz`, `/livez`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ApiServer;
use crate::errors::ApiError;

use super::json_response;

pub async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "33",
            "gitVersion": format!("v1.33.0-capstan.{}", env!("CARGO_PKG_VERSION")),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "",
            "goVersion": "",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
        }),
    )
}

pub async fn readyz(State(api): State<Arc<ApiServer>>) -> Response {
    match tokio::time::timeout(Duration::from_secs(1), api.store.current_revision()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok").into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]store failed: {e}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "[-]store failed: no answer within 1s\n",
        )
            .into_response(),
    }
}

pub async fn metrics(State(api): State<Arc<ApiServer>>) -> Response {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    let encoded = enc.encode(&api.prometheus.gather(), &mut buf);
    buf.extend_from_slice(watch_cache_metrics(&api).as_bytes());
    match encoded {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, enc.format_type().to_string())],
            buf,
        )
            .into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// What each watch cache holds, read at scrape time: `apiserver_watch_cache_objects`,
/// `..._object_bytes`, `..._events` and `..._event_bytes` by group and resource.
fn watch_cache_metrics(api: &ApiServer) -> String {
    use crate::watch_cache::CacheMemory;
    use std::fmt::Write;
    let caches = api.cache_memory();
    let mut out = String::new();
    type Gauge = (&'static str, &'static str, fn(&CacheMemory) -> usize);
    let series: [Gauge; 4] = [
        ("objects", "Objects in the watch cache.", |m| m.objects),
        (
            "object_bytes",
            "Bytes the watch cache's current objects hold (JSON plus the selector index).",
            |m| m.object_bytes,
        ),
        ("events", "Events in the watch cache's history.", |m| {
            m.events
        }),
        (
            "event_bytes",
            "Bytes the history's events hold beyond the current objects they share.",
            |m| m.event_bytes,
        ),
    ];
    for (name, help, value) in series {
        let _ = writeln!(out, "# HELP apiserver_watch_cache_{name} {help}");
        let _ = writeln!(out, "# TYPE apiserver_watch_cache_{name} gauge");
        for (group, resource, m) in &caches {
            let _ = writeln!(
                out,
                "apiserver_watch_cache_{name}{{group=\"{group}\",resource=\"{resource}\"}} {}",
                value(m)
            );
        }
    }
    out
}
