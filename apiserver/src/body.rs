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
/// The whole body, up to [`MAX_BODY_BYTES`] (413 beyond). A body that cannot be read — a
/// malformed chunk, a connection closed mid-body — is the client's error: 400.
pub async fn read_body(body: Body) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let e = e.into_inner();
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::too_large(format!(
                    "the request body is larger than the limit of {MAX_BODY_BYTES} bytes"
                ))
            } else {
                ApiError::bad_request(format!("the request body could not be read: {e}"))
            }
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
