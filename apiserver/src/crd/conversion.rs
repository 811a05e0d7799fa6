//! Conversion between the versions of a custom resource. With `conversion.strategy: None` the
//! versions differ only in `apiVersion`. With `Webhook` a `ConversionReview`
//! (apiextensions.k8s.io/v1) is POSTed to the CRD's conversion webhook for every object read
//! or written at a version other than the one it is stored at — as kube-apiserver does — and
//! its answer is checked: as many objects as were sent, each of the desired apiVersion and
//! kind; of the metadata only labels and annotations may change (the rest is kept as sent).
//!
//! Where conversions happen: writes convert to the storage version before the store write;
//! the watch cache of each version converts what the store holds once per change (every
//! watcher and cached read of that version shares the result — cheaper than kube's per-watch
//! conversion); reads from the store (a consistent get, a paged list) convert the page they
//! read in one review. A failed conversion is a 500 naming the webhook's message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::registry::ResourceInfo;
use crate::webhook::client::Client;

/// The time a conversion may take (kube-apiserver's fixed 30 s).
const TIMEOUT: Duration = Duration::from_secs(30);
/// Objects per review when a list or a cache sync converts many.
const BATCH: usize = 100;

/// A CRD's conversion webhook.
#[derive(Debug)]
pub struct ConversionWebhook {
    /// The CRD's name (for metrics and messages).
    pub crd: String,
    client: Result<Client, String>,
    /// `apiextensions.k8s.io/v1` or `/v1beta1`: the first of conversionReviewVersions spoken.
    review_api_version: String,
}

impl ConversionWebhook {
    /// The webhook of a CRD spec with `conversion.strategy: Webhook`.
    pub fn of(crd_name: &str, spec: &Value) -> Option<Arc<ConversionWebhook>> {
        let conversion = &spec["conversion"];
        if conversion["strategy"].as_str() != Some("Webhook") {
            return None;
        }
        let webhook = &conversion["webhook"];
        let versions = crate::object::strings(Some(&webhook["conversionReviewVersions"]));
        let version = versions
            .iter()
            .find(|v| matches!(v.as_str(), "v1" | "v1beta1"))
            .map_or("v1", String::as_str);
        Some(Arc::new(ConversionWebhook {
            crd: crd_name.to_string(),
            client: Client::new(&webhook["clientConfig"]),
            review_api_version: format!("apiextensions.k8s.io/{version}"),
        }))
    }
}

/// The checks of `spec.conversion` (kube's `validateCustomResourceConversion`), as
/// (field, message) pairs.
pub fn check(spec: &Value) -> Vec<(String, String)> {
    let conversion = &spec["conversion"];
    let mut errs = Vec::new();
    match conversion["strategy"].as_str() {
        None | Some("None") => {
            if !conversion["webhook"].is_null() {
                errs.push((
                    "spec.conversion.webhook".into(),
                    "Forbidden: should not be set when strategy is not set to Webhook".into(),
                ));
            }
        }
        Some("Webhook") => {
            let webhook = &conversion["webhook"];
            if !webhook.is_object() {
                errs.push((
                    "spec.conversion.webhook".into(),
                    "Required value: required when strategy is set to Webhook".into(),
                ));
                return errs;
            }
            let versions = crate::object::strings(Some(&webhook["conversionReviewVersions"]));
            if versions.is_empty() {
                errs.push((
                    "spec.conversion.webhook.conversionReviewVersions".into(),
                    "Required value: must specify one of v1, v1beta1".into(),
                ));
            } else if !versions
                .iter()
                .any(|v| matches!(v.as_str(), "v1" | "v1beta1"))
            {
                errs.push((
                    "spec.conversion.webhook.conversionReviewVersions".into(),
                    format!(
                        "Invalid value: {versions:?}: must include at least one of v1, v1beta1"
                    ),
                ));
            }
            errs.extend(crate::webhook::client::check_config(
                &webhook["clientConfig"],
                "spec.conversion.webhook.clientConfig",
            ));
        }
        Some(other) => errs.push((
            "spec.conversion.strategy".into(),
            format!("Unsupported value: {other:?}: supported values: \"None\", \"Webhook\""),
        )),
    }
    errs
}

/// `obj` at `to`'s version.
pub async fn convert(api: &ApiServer, to: &ResourceInfo, obj: Value) -> ApiResult<Value> {
    let mut out = convert_all(api, to, vec![obj]).await?;
    out.pop()
        .ok_or_else(|| ApiError::internal("conversion lost the object"))
}

/// `objects` at `to`'s version, in their order: those at another version converted by the
/// webhook (one review per stored version, per [`BATCH`] objects), the rest as they are.
pub async fn convert_all(
    api: &ApiServer,
    to: &ResourceInfo,
    objects: Vec<Value>,
) -> ApiResult<Vec<Value>> {
    let webhook = to.conversion_webhook.is_some();
    let mut objects = convert_all_to(api, to, objects, &to.api_version()).await?;
    if webhook {
        // Pruned and defaulted by the schema of the version they are now at.
        for o in &mut objects {
            to.strategy.canonicalize(o);
        }
    }
    Ok(objects)
}

/// `objects` of `info`'s resource at apiVersion `desired` (any version of the resource, the
/// storage version included even when it is not served).
pub async fn convert_all_to(
    api: &ApiServer,
    info: &ResourceInfo,
    mut objects: Vec<Value>,
    desired: &str,
) -> ApiResult<Vec<Value>> {
    let Some(webhook) = &info.conversion_webhook else {
        // Versions differ only in apiVersion (objects read from the store have it already).
        for o in &mut objects {
            if o["apiVersion"].as_str() != Some(desired) {
                o["apiVersion"] = json!(desired);
            }
        }
        return Ok(objects);
    };
    let pending: Vec<usize> = (0..objects.len())
        .filter(|&i| objects[i]["apiVersion"].as_str() != Some(desired))
        .collect();
    for chunk in pending.chunks(BATCH) {
        let batch: Vec<Value> = chunk.iter().map(|&i| objects[i].clone()).collect();
        let converted = review(api, webhook, &info.kind, desired, batch).await?;
        for (&i, o) in chunk.iter().zip(converted) {
            objects[i] = o;
        }
    }
    Ok(objects)
}

/// One ConversionReview of `objects` to `desired`.
async fn review(
    api: &ApiServer,
    webhook: &ConversionWebhook,
    kind: &str,
    desired: &str,
    objects: Vec<Value>,
) -> ApiResult<Vec<Value>> {
    let from = objects[0]["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let failed = |why: String| {
        ApiError::internal(format!(
            "Internal error occurred: conversion webhook for {from}, Kind={kind} failed: {why}"
        ))
    };
    let client = webhook.client.as_ref().map_err(|e| failed(e.clone()))?;
    let uid = uuid::Uuid::new_v4().to_string();
    let body = json!({
        "apiVersion": webhook.review_api_version,
        "kind": "ConversionReview",
        "request": {"uid": uid, "desiredAPIVersion": desired, "objects": objects},
    });
    let started = Instant::now();
    let answer = client
        .post(api, bytes::Bytes::from(body.to_string()), TIMEOUT)
        .await
        .map_err(&failed)
        .and_then(|v| checked(&v, &uid, kind, desired, &objects).map_err(failed));
    api.observe_conversion(webhook, &from, desired, started, answer.is_ok());
    answer
}

/// The converted objects of a review response, checked as kube-apiserver checks them.
fn checked(
    response: &Value,
    uid: &str,
    kind: &str,
    desired: &str,
    sent: &[Value],
) -> Result<Vec<Value>, String> {
    let r = &response["response"];
    if !r.is_object() {
        return Err("no response provided".into());
    }
    if r["uid"].as_str() != Some(uid) {
        return Err(format!(
            "expected response.uid={uid:?}, got {:?}",
            r["uid"].as_str().unwrap_or_default()
        ));
    }
    if r["result"]["status"].as_str() != Some("Success") {
        let message = r["result"]["message"].as_str().unwrap_or_default();
        return Err(if message.is_empty() {
            "conversion failed without a message".into()
        } else {
            message.to_string()
        });
    }
    let converted = r["convertedObjects"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if converted.len() != sent.len() {
        return Err(format!(
            "expected {} converted objects, got {}",
            sent.len(),
            converted.len()
        ));
    }
    let mut out = Vec::with_capacity(sent.len());
    for (i, (mut c, original)) in converted.into_iter().zip(sent).enumerate() {
        if c["apiVersion"].as_str() != Some(desired) {
            return Err(format!(
                "invalid converted object at index {i}: invalid apiVersion {:?}, expected {desired:?}",
                c["apiVersion"].as_str().unwrap_or_default()
            ));
        }
        if c["kind"].as_str() != Some(kind) {
            return Err(format!(
                "invalid converted object at index {i}: invalid kind {:?}, expected {kind:?}",
                c["kind"].as_str().unwrap_or_default()
            ));
        }
        // Only labels and annotations of the metadata come from the webhook.
        let mut meta = original["metadata"].clone();
        for key in ["labels", "annotations"] {
            match c["metadata"].get(key) {
                Some(v) if !v.is_null() => {
                    if !v.is_object()
                        || v.as_object()
                            .is_some_and(|m| m.values().any(|x| !x.is_string()))
                    {
                        return Err(format!(
                            "invalid converted object at index {i}: metadata.{key} must be a map of strings"
                        ));
                    }
                    meta[key] = v.clone();
                }
                _ => {
                    if let Some(m) = meta.as_object_mut() {
                        m.remove(key);
                    }
                }
            }
        }
        c["metadata"] = meta;
        out.push(c);
    }
    Ok(out)
}

impl ApiServer {
    fn observe_conversion(
        &self,
        w: &ConversionWebhook,
        from: &str,
        to: &str,
        started: Instant,
        ok: bool,
    ) {
        if let Some(m) = &self.metrics {
            let version = |v: &str| v.rsplit('/').next().unwrap_or_default().to_string();
            m.conversion_duration
                .with_label_values(&[
                    w.crd.as_str(),
                    &version(from),
                    &version(to),
                    if ok { "true" } else { "false" },
                ])
                .observe(started.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widget(version: &str) -> Value {
        json!({"apiVersion": format!("example.test/{version}"), "kind": "Widget",
               "metadata": {"name": "w", "uid": "u1", "labels": {"a": "1"}}, "spec": {"size": 3}})
    }

    #[test]
    fn responses_are_checked_as_kubernetes_checks_them() {
        let sent = [widget("v1")];
        let ok = |objects: Value| json!({"response": {"uid": "x", "result": {"status": "Success"}, "convertedObjects": objects}});
        let mut renamed = widget("v2");
        renamed["metadata"]["name"] = json!("other");
        renamed["metadata"]["labels"] = json!({"b": "2"});
        let out = checked(
            &ok(json!([renamed])),
            "x",
            "Widget",
            "example.test/v2",
            &sent,
        )
        .unwrap();
        assert_eq!(
            out[0]["metadata"]["name"], "w",
            "only labels and annotations change"
        );
        assert_eq!(out[0]["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out[0]["metadata"]["uid"], "u1");

        let err = |v: Value| checked(&v, "x", "Widget", "example.test/v2", &sent).unwrap_err();
        assert!(err(ok(json!([widget("v1")]))).contains("invalid apiVersion"));
        assert!(err(ok(json!([]))).contains("expected 1 converted objects, got 0"));
        assert!(err(json!({"response": {"uid": "y"}})).contains("expected response.uid"));
        assert_eq!(
            err(
                json!({"response": {"uid": "x", "result": {"status": "Failure", "message": "size unknown"}}})
            ),
            "size unknown"
        );
        let mut bad_labels = widget("v2");
        bad_labels["metadata"]["labels"] = json!({"a": 1});
        assert!(err(ok(json!([bad_labels]))).contains("map of strings"));
    }

    #[test]
    fn conversion_settings_are_validated() {
        assert!(check(&json!({"conversion": {"strategy": "None"}})).is_empty());
        let webhook = json!({"conversion": {"strategy": "Webhook", "webhook": {
            "conversionReviewVersions": ["v1"], "clientConfig": {"url": "https://conv.example/convert"}}}});
        assert!(check(&webhook).is_empty());
        let fields = |v: Value| check(&v).into_iter().map(|e| e.0).collect::<Vec<_>>();
        assert_eq!(
            fields(json!({"conversion": {"strategy": "Webhook"}})),
            ["spec.conversion.webhook"]
        );
        assert_eq!(
            fields(
                json!({"conversion": {"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v9"], "clientConfig": {}}}})
            ),
            [
                "spec.conversion.webhook.conversionReviewVersions",
                "spec.conversion.webhook.clientConfig"
            ]
        );
        assert_eq!(
            fields(json!({"conversion": {"strategy": "Magic"}})),
            ["spec.conversion.strategy"]
        );
    }
}
