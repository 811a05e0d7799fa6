//! Request bodies: the size limit, JSON (and protobuf, decoded to the JSON a Go client would
//! have sent) into a [`serde_json::Value`].

use std::cell::RefCell;
use std::collections::HashSet;

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

/// The most duplicate fields [`duplicate_fields`] reports.
const MAX_DUPLICATES_REPORTED: usize = 100;

/// The paths (`metadata.labels.a`, `spec.containers[0].name`) of the keys a JSON body repeats
/// within one object — which serde_json's decoding drops in silence, the last one winning; empty
/// for a body that is not JSON. One more pass over the bytes: the path is a stack of steps,
/// spelled out only for a duplicate.
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    enum Step {
        Key(String),
        Index(usize),
    }
    #[derive(Default)]
    struct Walk {
        path: Vec<Step>,
        found: Vec<String>,
    }
    impl Walk {
        fn spell(&self, last: &str) -> String {
            let mut s = String::new();
            for step in &self.path {
                match step {
                    Step::Key(k) => {
                        if !s.is_empty() {
                            s.push('.');
                        }
                        s.push_str(k);
                    }
                    Step::Index(i) => s.push_str(&format!("[{i}]")),
                }
            }
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(last);
            s
        }
    }
    #[derive(Clone, Copy)]
    struct Seed<'a>(&'a RefCell<Walk>);
    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            loop {
                self.0.borrow_mut().path.push(Step::Index(i));
                let more = seq.next_element_seed(self)?.is_some();
                self.0.borrow_mut().path.pop();
                if !more {
                    return Ok(());
                }
                i += 1;
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(k) = map.next_key::<String>()? {
                {
                    let mut w = self.0.borrow_mut();
                    if seen.contains(&k) {
                        if w.found.len() < MAX_DUPLICATES_REPORTED {
                            let p = w.spell(&k);
                            w.found.push(p);
                        }
                    } else {
                        seen.insert(k.clone());
                    }
                    w.path.push(Step::Key(k));
                }
                map.next_value_seed(self)?;
                self.0.borrow_mut().path.pop();
            }
            Ok(())
        }
    }
    let walk = RefCell::new(Walk::default());
    let mut de = serde_json::Deserializer::from_slice(body);
    if Seed(&walk).deserialize(&mut de).is_err() {
        return Vec::new();
    }
    walk.into_inner().found
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_are_found_with_their_paths() {
        let body = br#"{"a": 1, "m": {"x": 1, "l": [{"n": 1, "n": 2}], "x": 2}, "a": 3}"#;
        assert_eq!(duplicate_fields(body), ["m.l[0].n", "m.x", "a"]);
        assert!(duplicate_fields(br#"{"a": {"a": {"a": 1}}}"#).is_empty());
        assert!(duplicate_fields(b"not json").is_empty());
    }
}
