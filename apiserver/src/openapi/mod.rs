//! OpenAPI: `/openapi/v3` (root and per-group-version documents, [`v3`]) and `/openapi/v2`
//! (Swagger JSON and the gnostic protobuf kubectl reads, [`v2`]), built from the registry and
//! cached per registry generation (CRDs change it).

pub mod v2;
pub mod v3;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::ApiServer;
use crate::http::json_response;

/// The /openapi/v3 root and its per-group-version documents.
pub type OpenApiDocs = (Value, HashMap<String, Value>);
/// /openapi/v2: the Swagger JSON and its gnostic protobuf encoding.
pub type SwaggerDocs = (Value, Vec<u8>);

impl ApiServer {
    pub(crate) fn openapi(&self) -> Arc<OpenApiDocs> {
        let generation = self.registry.generation();
        if let Ok(cached) = self.openapi.read()
            && let Some((g, docs)) = cached.as_ref()
            && *g == generation
        {
            return docs.clone();
        }
        let (root, docs) = v3::build(&self.registry);
        let built = Arc::new((root, docs));
        if let Ok(mut cached) = self.openapi.write() {
            *cached = Some((generation, built.clone()));
        }
        built
    }
}

impl ApiServer {
    fn openapi_v2(&self) -> Arc<SwaggerDocs> {
        let generation = self.registry.generation();
        if let Ok(cached) = self.openapi_v2.read()
            && let Some((g, doc)) = cached.as_ref()
            && *g == generation
        {
            return doc.clone();
        }
        let swagger = v2::swagger(&self.openapi().1);
        let proto = v2::to_protobuf(&swagger);
        let built = Arc::new((swagger, proto));
        if let Ok(mut cached) = self.openapi_v2.write() {
            *cached = Some((generation, built.clone()));
        }
        built
    }
}

/// GET /openapi/v2: protobuf when asked for (kubectl), else JSON.
pub async fn openapi_v2(State(api): State<Arc<ApiServer>>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let doc = api.openapi_v2();
    if accept.contains("protobuf") {
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            )],
            doc.1.clone(),
        )
            .into_response()
    } else {
        json_response(StatusCode::OK, &doc.0)
    }
}

pub async fn openapi_root(State(api): State<Arc<ApiServer>>) -> Response {
    json_response(StatusCode::OK, &api.openapi().0)
}

pub async fn openapi_document(
    State(api): State<Arc<ApiServer>>,
    Path(gv): Path<String>,
) -> Response {
    match api.openapi().1.get(gv.trim_matches('/')) {
        Some(doc) => json_response(StatusCode::OK, doc),
        None => crate::errors::route_not_found().into_response(),
    }
}
