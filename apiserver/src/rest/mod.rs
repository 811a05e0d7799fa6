//! The REST storage layer (kube-apiserver's `registry/generic/registry` + `endpoints/handlers`):
//! the verbs of every resource in the registry, built-in or custom, one file per verb. Start with
//! [`create`], [`update`] (`guaranteed_update`: read, transform, validate, compare-and-swap) and
//! [`watch`].
//!
//! Every write follows kube-apiserver's shape: read the live object, compute the new one
//! (metadata rules, strategy, validation), write it with the live `mod_revision` as the
//! precondition; when the client gave no resourceVersion of its own, a lost race is retried on
//! the newer object, otherwise it is the client's 409 Conflict. Resource-specific work around the
//! write (a Service's ClusterIP) runs through the resource's [`crate::strategy::StorageHooks`].

pub mod agent_conn;
pub mod apply;
pub mod binding;
pub mod continue_token;
pub mod create;
pub mod delete;
pub mod field_validation;
pub mod filter;
pub mod get;
pub mod list;
pub mod patch;
pub mod pod_attach;
pub mod pod_eviction;
pub mod pod_exec;
pub mod pod_log;
pub mod pod_portforward;
pub mod scale;
pub mod token_request;
pub mod update;
pub mod watch;

use bytes::Bytes;
use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult, from_storage};
use crate::object::{self, ObjectExt};
use crate::registry::ResourceInfo;
use crate::request::Target;

/// The stored form of an object: no resourceVersion (the store's revision is), and the
/// resource's storage version as its apiVersion (conversion strategy None).
fn encode(info: &ResourceInfo, obj: &Value) -> ApiResult<Bytes> {
    let mut stored = obj.clone();
    if info.version != info.storage_version {
        stored["apiVersion"] = json!(info.storage_api_version());
    }
    if let Some(c) = &info.conversion {
        (c.to_storage)(&mut stored);
    }
    stored.remove_meta("resourceVersion");
    stored.remove_meta("selfLink");
    serde_json::to_vec(&stored)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("encoding object: {e}")))
}

/// [`encode`], refused with a 413 over [`crate::body::MAX_OBJECT_BYTES`]: every write checks the
/// size of what it would store, dry runs included, before any store is asked.
fn encode_checked(info: &ResourceInfo, obj: &Value) -> ApiResult<Bytes> {
    let bytes = encode(info, obj)?;
    let limit = crate::body::MAX_OBJECT_BYTES;
    if bytes.len() > limit {
        return Err(ApiError::too_large(format!(
            "Request entity too large: the object is {} bytes, over the limit of {limit} bytes",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// [`encode_checked`] for writers outside the verbs (the quota admission's status charge).
pub(crate) fn encode_stored(info: &ResourceInfo, obj: &Value) -> ApiResult<Bytes> {
    encode_checked(info, obj)
}

fn with_rv(mut obj: Value, rv: i64) -> Value {
    obj.set_meta("resourceVersion", json!(rv.to_string()));
    obj
}

fn name_of(t: &Target) -> &str {
    t.name.as_deref().unwrap_or_default()
}

impl ApiServer {
    /// What an object frees once it has left the store (its resource's hooks).
    async fn after_delete(&self, info: &ResourceInfo, obj: &Value) {
        if let Some(hooks) = &info.hooks {
            hooks.after_delete(obj).await;
        }
    }

    fn invalid(&self, t: &Target, name: &str, causes: Vec<FieldError>) -> ApiError {
        ApiError::invalid(&t.info.group, &t.info.kind, name, causes)
    }

    /// The live object and its mod_revision.
    async fn live(&self, t: &Target) -> ApiResult<(Value, i64)> {
        self.live_stored(t).await.map(|(obj, rev, _)| (obj, rev))
    }

    /// [`ApiServer::live`], and whether it is stored at a version other than the storage
    /// version (so that even an update that changes nothing rewrites it: storage migration).
    async fn live_stored(&self, t: &Target) -> ApiResult<(Value, i64, bool)> {
        let name = name_of(t);
        let key = t.info.key(t.namespace.as_deref(), name);
        let kv = self
            .store
            .get(&key)
            .await
            .map_err(|e| from_storage(e, &t.info.group, &t.info.plural, name))?
            .ok_or_else(|| ApiError::not_found(&t.info.group, &t.info.plural, name))?;
        let obj = t.info.decode(&kv.value, kv.mod_revision).ok_or_else(|| {
            ApiError::internal(format!("stored object {key} is not a JSON object"))
        })?;
        let obj = crate::crd::conversion::convert(self, &t.info, obj).await?;
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(rename = "apiVersion", borrow)]
            api_version: Option<std::borrow::Cow<'a, str>>,
        }
        // (Resources with a field-level mapping onto another's store — events.k8s.io — are
        // stored in that other shape, never "at another version".)
        let stale = t.info.conversion.is_none()
            && serde_json::from_slice::<Head>(&kv.value)
                .ok()
                .and_then(|h| h.api_version)
                .is_some_and(|v| v != t.info.storage_api_version());
        Ok((obj, kv.mod_revision, stale))
    }

    /// An object as it is stored: at its resource's storage version (converted by the
    /// conversion webhook when the request's version is another).
    async fn stored_form(&self, info: &ResourceInfo, obj: &Value) -> ApiResult<Bytes> {
        if info.conversion_webhook.is_none() || info.version == info.storage_version {
            return encode_checked(info, obj);
        }
        let desired = info.storage_api_version();
        let converted =
            crate::crd::conversion::convert_all_to(self, info, vec![obj.clone()], &desired).await?;
        encode_checked(info, &converted[0])
    }
}

/// How a write without a precondition retries a lost compare-and-swap (kube-apiserver's
/// GuaranteedUpdate retries until its request times out): at once for the first few losses,
/// then after a short jittered pause that grows to 50 ms, for up to [`Retry::PATIENCE`]. Every
/// lost race means another write landed, so the object moves on while this one waits.
#[derive(Debug)]
struct Retry {
    started: std::time::Instant,
    lost: u32,
}

impl Retry {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

    fn new() -> Retry {
        Retry {
            started: std::time::Instant::now(),
            lost: 0,
        }
    }

    /// After a lost race: whether to try again (false once out of patience).
    async fn again(&mut self) -> bool {
        self.lost += 1;
        if self.started.elapsed() > Self::PATIENCE {
            return false;
        }
        if self.lost <= 3 {
            tokio::task::yield_now().await;
        } else {
            let cap = (1u64 << (self.lost - 3).min(6)).min(50);
            tokio::time::sleep(std::time::Duration::from_millis(fastrand::u64(1..=cap))).await;
        }
        true
    }
}

/// A write that lost every compare-and-swap retry.
fn too_many_writers(info: &ResourceInfo, name: &str) -> ApiError {
    ApiError::conflict(
        &info.group,
        &info.plural,
        name,
        "too many concurrent writers; try again",
    )
}

/// The subresources' split of an object: a write to /status changes only status, a write to a
/// subresource that owns other fields (pods/ephemeralcontainers) only those — the rest comes from
/// the live object; a write to the object itself keeps the live status and subresource-owned
/// fields.
fn subresource_rules(
    info: &ResourceInfo,
    live: &Value,
    mut new: Value,
    sub: Option<&str>,
) -> Value {
    let owned = info.strategy.subresource_fields();
    match sub {
        Some("status") => {
            let mut merged = live.clone();
            merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            merged
        }
        Some(s) => {
            let mut merged = live.clone();
            for (_, path) in owned.iter().filter(|(name, _)| *name == s) {
                copy_path(&new, &mut merged, path);
            }
            merged
        }
        None => {
            if info.status
                && let Some(m) = new.as_object_mut()
            {
                match live.get("status") {
                    Some(s) => {
                        m.insert("status".into(), s.clone());
                    }
                    None => {
                        m.remove("status");
                    }
                }
            }
            for (_, path) in owned {
                copy_path(live, &mut new, path);
            }
            new
        }
    }
}

/// Sets `path` in `to` to its value in `from`, or removes it when `from` has none.
fn copy_path(from: &Value, to: &mut Value, path: &[&str]) {
    let mut at = from;
    for step in path {
        match at.get(*step) {
            Some(v) => at = v,
            None => {
                object::remove_path(to, path);
                return;
            }
        }
    }
    object::set_path(to, path, at.clone());
}

fn namespace_finalizers_pending(info: &ResourceInfo, obj: &Value) -> bool {
    info.group.is_empty()
        && info.plural == "namespaces"
        && obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
}

/// The resourceVersion an object carries as a precondition: None when unset or empty; a 400
/// when it is not a string (as decoding into ObjectMeta fails in Kubernetes) or not a revision.
pub(crate) fn resource_version_of(info: &ResourceInfo, obj: &Value) -> ApiResult<Option<i64>> {
    match obj.meta().and_then(|m| m.get("resourceVersion")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => match s.parse::<i64>() {
            Ok(rv) if rv > 0 => Ok(Some(rv)),
            _ => Err(ApiError::bad_request(format!(
                "invalid resourceVersion {s:?}"
            ))),
        },
        Some(other) => Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: json: cannot unmarshal {what} into Go struct field ObjectMeta.metadata.resourceVersion of type string",
            kind = &info.kind,
            version = &info.version,
            what = match other {
                Value::Number(_) => "number",
                Value::Bool(_) => "bool",
                Value::Array(_) => "array",
                _ => "object",
            }
        ))),
    }
}

/// A write whose result names a resourceVersion (a patch that sets it, an applied
/// configuration carrying one) holds only against that version of the live object: a 409
/// otherwise, never retried — as Kubernetes takes the patched object's resourceVersion as the
/// update's precondition.
fn check_resource_version(info: &ResourceInfo, live: &Value, new: &Value) -> ApiResult<()> {
    let Some(wanted) = resource_version_of(info, new)? else {
        return Ok(());
    };
    if live.meta_str("resourceVersion") == Some(wanted.to_string().as_str()) {
        return Ok(());
    }
    Err(ApiError::conflict(
        &info.group,
        &info.plural,
        live.name().unwrap_or_default(),
        "the object has been modified; please apply your changes to the latest version and try again",
    ))
}

/// Checks apiVersion/kind against the resource (and fills them in when absent).
fn check_type(info: &ResourceInfo, obj: &mut Value) -> ApiResult<()> {
    let want = info.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != want => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({want})"
            )));
        }
        _ => obj["apiVersion"] = json!(want),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != info.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                &info.kind
            )));
        }
        _ => obj["kind"] = json!(&info.kind),
    }
    Ok(())
}
