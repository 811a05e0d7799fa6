//! The agent's HTTP endpoint (kubelet's port): `/containerLogs/{namespace}/{pod}/{container}`
//! for the API server's pods/log, `/exec/{namespace}/{pod}/{container}` (a WebSocket, see
//! [`crate::exec_ws`]) for pods/exec, `/portForward/{namespace}/{pod}` (SPDY, see
//! [`crate::portforward`]) for pods/portforward, `/attach/{namespace}/{pod}/{container}`
//! (SPDY, proxied to the runtime's streaming server, see [`crate::attach`]) for pods/attach,
//! `/metrics`, `/stats/summary` (see [`crate::stats`]), `/healthz`. Plain HTTP and unauthenticated
//! until the security issue: it listens on the node's IP only.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::logs::{self, Options};
use crate::runtime::{CONTAINER_NAME, ContainerState, POD_NAME, POD_NAMESPACE, Runtime};

/// The agent's Prometheus metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: prometheus::Registry,
    pub pods: prometheus::IntGauge,
    pub containers: prometheus::IntGaugeVec,
    pub relist: prometheus::Histogram,
    pub syncs: prometheus::IntCounterVec,
    pub pod_start: prometheus::Histogram,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = prometheus::Registry::new();
        let pods = prometheus::IntGauge::new(
            "capstan_agent_running_pods",
            "Pods with a ready sandbox on this node.",
        )?;
        let containers = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "capstan_agent_containers",
                "Containers on this node by state.",
            ),
            &["state"],
        )?;
        let relist = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "capstan_agent_pleg_relist_duration_seconds",
                "How long one relist of the runtime took.",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14)?),
        )?;
        let syncs = prometheus::IntCounterVec::new(
            prometheus::Opts::new("capstan_agent_pod_syncs_total", "Pod worker syncs."),
            &["result"],
        )?;
        let pod_start = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "capstan_agent_pod_start_duration_seconds",
                "From the pod's creation to its containers running, as this agent saw it.",
            )
            .buckets(prometheus::exponential_buckets(0.05, 2.0, 12)?),
        )?;
        registry.register(Box::new(pods.clone()))?;
        registry.register(Box::new(containers.clone()))?;
        registry.register(Box::new(relist.clone()))?;
        registry.register(Box::new(syncs.clone()))?;
        registry.register(Box::new(pod_start.clone()))?;
        Ok(Metrics {
            registry,
            pods,
            containers,
            relist,
            syncs,
            pod_start,
        })
    }
}

pub(crate) struct Served<R> {
    pub(crate) runtime: Arc<R>,
    metrics: Metrics,
    stats: crate::stats::Latest,
}

/// The router; serve it with `axum::serve`. `/stats/summary` answers the newest of `stats`.
pub fn router<R: Runtime>(
    runtime: Arc<R>,
    metrics: Metrics,
    stats: crate::stats::Latest,
) -> Router {
    Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs::<R>),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(crate::exec_ws::exec::<R>),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            axum::routing::any(crate::attach::attach::<R>),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            axum::routing::any(crate::portforward::port_forward::<R>),
        )
        .route("/metrics", get(metrics_text::<R>))
        .route("/stats/summary", get(stats_summary::<R>))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Arc::new(Served {
            runtime,
            metrics,
            stats,
        }))
}

pub(crate) fn status(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })
        .to_string(),
    )
        .into_response()
}

/// The kubelet's Summary API (node, pods, containers: CPU and memory); 503 until the first
/// sample is taken.
async fn stats_summary<R: Runtime>(State(s): State<Arc<Served<R>>>) -> Response {
    let summary = s.stats.get();
    if summary.is_empty() {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "no resource usage has been sampled yet".into(),
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        summary,
    )
        .into_response()
}

async fn metrics_text<R: Runtime>(State(s): State<Arc<Served<R>>>) -> Response {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    match enc.encode(&s.metrics.registry.gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, enc.format_type().to_string())],
            buf,
        )
            .into_response(),
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        ),
    }
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

fn options(q: &HashMap<String, String>) -> Result<Options, String> {
    let num = |k: &str| -> Result<Option<i64>, String> {
        q.get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| format!("{k}: {v:?} is not an integer"))
            })
            .transpose()
    };
    let since = match (q.get("sinceTime"), num("sinceSeconds")?) {
        (Some(_), Some(_)) => {
            return Err("at most one of sinceTime or sinceSeconds may be specified".into());
        }
        (Some(t), None) => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|e| format!("sinceTime {t:?}: {e}"))?,
        ),
        (None, Some(s)) if s < 1 => return Err("sinceSeconds must be greater than 0".into()),
        (None, Some(s)) => Some(
            jiff::Timestamp::now()
                .checked_sub(jiff::SignedDuration::from_secs(s))
                .map_err(|e| e.to_string())?,
        ),
        (None, None) => None,
    };
    let tail = match num("tailLines")? {
        Some(n) if n < 0 => return Err("tailLines must be greater than or equal to 0".into()),
        n => n.map(|n| n as usize),
    };
    let limit = match num("limitBytes")? {
        Some(n) if n < 1 => return Err("limitBytes must be greater than 0".into()),
        n => n.map(|n| n as usize),
    };
    Ok(Options {
        follow: flag(q, "follow"),
        tail_lines: tail,
        since,
        timestamps: flag(q, "timestamps"),
        limit_bytes: limit,
    })
}

async fn container_logs<R: Runtime>(
    State(s): State<Arc<Served<R>>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let opts = match options(&q) {
        Ok(o) => o,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e),
    };
    let previous = flag(&q, "previous");
    let (sandboxes, containers) = match (
        s.runtime.list_sandboxes().await,
        s.runtime.list_containers().await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                e.to_string(),
            );
        }
    };
    // The pod's newest sandbox, and its instances of the container, newest first.
    let Some(sb) = sandboxes
        .iter()
        .filter(|sb| {
            sb.config.labels.get(POD_NAMESPACE) == Some(&namespace)
                && sb.config.labels.get(POD_NAME) == Some(&pod)
        })
        .max_by_key(|sb| (sb.config.attempt, sb.created_at))
    else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pod {namespace}/{pod} has no sandbox on this node"),
        );
    };
    let mut instances: Vec<_> = containers
        .iter()
        .filter(|c| {
            c.sandbox_id == sb.id && c.config.labels.get(CONTAINER_NAME) == Some(&container)
        })
        .collect();
    instances.sort_by_key(|c| std::cmp::Reverse((c.config.attempt, c.created_at)));
    let chosen = if previous {
        match instances.get(1) {
            Some(c) => *c,
            None => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("previous terminated container {container:?} in pod {pod:?} not found"),
                );
            }
        }
    } else {
        match instances.first() {
            Some(c) => *c,
            None => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!(
                        "container {container:?} in pod {pod:?} is waiting to start: ContainerCreating"
                    ),
                );
            }
        }
    };
    let path = sb.config.log_directory.join(&chosen.config.log_path);
    let (rt, id) = (s.runtime.clone(), chosen.id.clone());
    let follow = opts.follow && chosen.state == ContainerState::Running && !previous;
    let opts = Options { follow, ..opts };
    let body = logs::stream(path, opts, move || {
        let (rt, id) = (rt.clone(), id.clone());
        async move {
            rt.list_containers().await.is_ok_and(|cs| {
                cs.iter()
                    .any(|c| c.id == id && c.state == ContainerState::Running)
            })
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })
}
