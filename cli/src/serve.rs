//! The process's operational endpoints: /healthz, /livez, /readyz (the store answers) and
//! /metrics (Prometheus text format). The API server mounts the same routes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use capstan_storage::Storage;
use prometheus::{Encoder, Registry, TextEncoder};

#[derive(Clone)]
pub struct OpsState {
    pub store: Arc<dyn Storage>,
    pub registry: Registry,
}

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn livez() -> &'static str {
    "ok"
}

/// Healthy means the store answers within a second.
async fn healthz(state: State<OpsState>) -> impl IntoResponse {
    readyz(state).await
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    match tokio::time::timeout(Duration::from_secs(1), state.store.current_revision()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok".to_string()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]store failed: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "[-]store failed: no answer within 1s\n".to_string(),
        ),
    }
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    match encoder.encode(&state.registry.gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_string())],
            buf,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            e.to_string().into_bytes(),
        ),
    }
}
