//! The HTTP face: the [`router`] (discovery, OpenAPI, every resource verb through
//! [`dispatch`], the operational endpoints), request resolution ([`resolve`]), content
//! negotiation ([`negotiate`]), and serving it on a socket within limits ([`serve`]).

pub mod component_status;
pub mod dispatch;
pub mod guard;
pub mod inflight;
pub mod negotiate;
pub mod resolve;
pub mod serve;
pub mod system;

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::Value;

use crate::ApiServer;
use crate::auth::reviews;
use crate::{discovery, openapi, resource_metrics, rest};

/// The HTTP surface: discovery, every resource verb, and the operational endpoints, each
/// request authenticated and authorized first ([`guard`]).
pub fn router(api: Arc<ApiServer>) -> Router {
    Router::new()
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            post(reviews::self_subject_access_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            post(reviews::subject_access_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/namespaces/{namespace}/localsubjectaccessreviews",
            post(reviews::local_subject_access_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            post(reviews::self_subject_rules_review),
        )
        .route(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            post(reviews::self_subject_review),
        )
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(reviews::token_review),
        )
        .route("/version", get(system::version))
        .route("/api", get(discovery::api_versions))
        .route("/apis", get(discovery::api_groups))
        .route("/api/v1", get(discovery::core_resources))
        .route("/apis/{group}", get(discovery::group_info))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/exec",
            any(rest::pod_exec::pod_exec),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/attach",
            any(rest::pod_attach::pod_attach),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/portforward",
            any(rest::pod_portforward::pod_portforward),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/{sub}",
            any(dispatch::pod_subresource),
        )
        .route(
            "/api/v1/componentstatuses",
            get(component_status::list).fallback(read_only),
        )
        .route(
            "/api/v1/componentstatuses/{name}",
            get(component_status::get).fallback(read_only),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/nodes",
            any(resource_metrics::list_nodes),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/nodes/{name}",
            any(resource_metrics::get_node),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/pods",
            any(resource_metrics::list_all_pods),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods",
            any(resource_metrics::list_pods),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{name}",
            any(resource_metrics::get_pod),
        )
        .route("/api/v1/{*rest}", any(dispatch::core_dispatch))
        .route(
            "/apis/{group}/{version}/{*rest}",
            any(dispatch::group_dispatch),
        )
        .route("/openapi/v2", get(openapi::openapi_v2))
        .route("/openapi/v3", get(openapi::openapi_root))
        .route("/openapi/v3/{*gv}", get(openapi::openapi_document))
        .route("/healthz", get(system::readyz))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .fallback(|| async { crate::errors::route_not_found() })
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            guard::guard,
        ))
        .with_state(api)
}

/// 405 for a write to a resource that is only read (componentstatuses).
async fn read_only(method: axum::http::Method) -> Response {
    crate::errors::ApiError::method_not_allowed(format!(
        "{method} is not supported: this resource is read-only"
    ))
    .into_response()
}

/// A JSON response with `code`.
pub fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// A list of cached objects as JSON, each object's bytes written as the cache holds them: the
/// same document [`json_response`] makes of the parsed list (keys in the same order), without
/// parsing and re-serializing every item, and streamed in chunks of about 64 KiB rather than
/// built whole (a list of 50,000 pods is 130 MB of JSON; Kubernetes 1.33 streams lists too).
pub fn raw_list_response(
    t: &crate::request::Target,
    items: Vec<std::sync::Arc<crate::watch_cache::Cached>>,
    rv: i64,
) -> Response {
    const CHUNK: usize = 64 * 1024;
    let mut head = b"{\"apiVersion\":".to_vec();
    let _ = serde_json::to_writer(&mut head, &t.info.api_version());
    head.extend_from_slice(b",\"items\":[");
    let mut tail = b"],\"kind\":".to_vec();
    let _ = serde_json::to_writer(&mut tail, &t.info.list_kind);
    tail.extend_from_slice(b",\"metadata\":{\"resourceVersion\":");
    let _ = serde_json::to_writer(&mut tail, &rv.to_string());
    tail.extend_from_slice(b"}}");
    // State: the items, the next one to write, the chunk begun (the head first), the tail
    // (taken once written).
    let state = (items, 0usize, head, Some(tail));
    let stream =
        futures_util::stream::unfold(state, |(items, mut next, mut buf, mut tail)| async move {
            while buf.len() < CHUNK && next < items.len() {
                if next > 0 {
                    buf.push(b',');
                }
                buf.extend_from_slice(items[next].json());
                next += 1;
            }
            if next == items.len() {
                buf.extend_from_slice(&tail.take()?);
            }
            let chunk = bytes::Bytes::from(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK)));
            Some((
                Ok::<_, std::convert::Infallible>(chunk),
                (items, next, buf, tail),
            ))
        });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from_stream(stream))
        .unwrap_or_else(|e| crate::errors::ApiError::internal(e.to_string()).into_response())
}
