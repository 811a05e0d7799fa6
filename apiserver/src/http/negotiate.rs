//! Content negotiation: which [`View`] the client's Accept header asks for (objects, Tables,
//! PartialObjectMetadata), whether it takes JSON at all, and `Warning` headers.

use axum::http::{HeaderMap, header};
use axum::response::Response;

use crate::request::View;

/// How the client asked to see objects, from the first media type it accepts: a Table
/// (kubectl get's human output), PartialObjectMetadata (metadata-only informers, such as the
/// garbage collector's), or the objects themselves.
pub fn view(headers: &HeaderMap) -> View {
    let first = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split(',').next())
        .unwrap_or_default();
    let param = |k: &str| {
        first
            .split(';')
            .skip(1)
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.trim())
    };
    match param("as") {
        Some("Table") => View::Table,
        Some("PartialObjectMetadata" | "PartialObjectMetadataList")
            if param("g").is_none_or(|g| g == "meta.k8s.io") =>
        {
            View::Metadata
        }
        _ => View::Object,
    }
}

pub fn accepts_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    accept.split(',').any(|a| {
        let mt = a.split(';').next().unwrap_or_default().trim();
        matches!(mt, "application/json" | "*/*" | "application/*" | "")
    })
}

/// Adds `Warning: 299 - "…"` headers (fieldValidation=Warn), as kube-apiserver sends them.
pub fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    // At most 50 distinct warnings of at most 256 characters, like kube-apiserver's limits.
    let mut seen = std::collections::HashSet::new();
    for w in warnings.iter().filter(|w| seen.insert(*w)).take(50) {
        let w: String = w.chars().take(256).collect();
        let text = format!("299 - \"{}\"", w.replace('"', "'"));
        if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}
