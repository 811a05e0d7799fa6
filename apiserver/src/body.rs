//! Request bodies: the size limit, JSON (and protobuf, decoded to the JSON a Go client would
//! have sent) into a [`serde_json::Value`].

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use serde_json::Value;

use crate::errors::{ApiError, ApiResult};
use crate::protobuf;

/// The largest request body accepted (kube-apiserver's limit).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The largest object stored (etcd's default request limit, 1.5 MiB, which the stores share).
pub const MAX_OBJECT_BYTES: usize = capstan_storage::DEFAULT_MAX_VALUE_BYTES;

pub fn parse_body(body: &Bytes) -> ApiResult<Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}
/// A server-side apply body: JSON when it is JSON (serde_json: linear, at most 128 levels deep),
/// else YAML ([`crate::yaml::decode`], bounded in depth and alias expansion), decoded on a
/// blocking thread so that a slow document never holds a runtime thread other requests need.
pub async fn decode_apply(body: Bytes) -> ApiResult<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
        return Ok(v);
    }
    tokio::task::spawn_blocking(move || crate::yaml::decode(&body))
        .await
        .map_err(|e| ApiError::internal(format!("decoding the apply patch: {e}")))?
        .map_err(|e| {
            ApiError::bad_request(format!(
                "the apply patch is not valid YAML or JSON: {}",
                e.message
            ))
        })
}

pub async fn read_body(body: Body) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::too_large(format!(
                "the request body is larger than the limit of {MAX_BODY_BYTES} bytes"
            ))
        })
}

pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string()
}

/// A write's body as JSON. Protobuf bodies (client-go's typed clients) are decoded to the JSON a
/// Go client would have sent; `api_version`/`kind` are what the endpoint takes, for envelopes
/// that leave their TypeMeta empty.
pub fn json_body(
    headers: &HeaderMap,
    body: &Bytes,
    api_version: &str,
    kind: &str,
) -> ApiResult<Value> {
    let ct = content_type(headers);
    let mt = ct.split(';').next().unwrap_or_default().trim();
    match mt {
        "application/json" | "" => crate::body::parse_body(body),
        protobuf::MEDIA_TYPE => protobuf::to_json(body, api_version, kind),
        _ => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format ({mt}) - accepted media types include: application/json, {}",
            protobuf::MEDIA_TYPE
        ))),
    }
}

/// A body handed on as bytes (DeleteOptions, Scale): protobuf ones become JSON first.
pub fn json_bytes(
    headers: &HeaderMap,
    body: Bytes,
    api_version: &str,
    kind: &str,
) -> ApiResult<Bytes> {
    if protobuf::is_protobuf(&content_type(headers)) {
        let value = protobuf::to_json(&body, api_version, kind)?;
        return Ok(Bytes::from(serde_json::to_vec(&value).unwrap_or_default()));
    }
    Ok(body)
}
