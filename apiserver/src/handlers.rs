//! The verbs: get, list, watch, create, update, patch, delete, deletecollection — and the
//! status, scale and binding subresources — for every resource in the registry, built-in or not.
//!
//! Every write follows kube-apiserver's shape: read the live object, compute the new one
//! (metadata rules, strategy, validation), write it with the live `mod_revision` as the
//! precondition; when the client gave no resourceVersion of its own, a lost race is retried on
//! the newer object, otherwise it is the client's 409 Conflict.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use capstan_api::Selector;
use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::cacher::{self, CacheEvent, Kind};
use crate::errors::{ApiError, ApiResult, from_storage};
use crate::object::{self, ObjectExt};
use crate::registry::ResourceInfo;

/// The largest request body accepted (kube-apiserver's limit).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Default watch length when the client names none (kube-apiserver picks 30–60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a watch with allowWatchBookmarks gets a BOOKMARK (kube-apiserver: about a minute;
/// client-go expects them within its watch timeout).
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

/// What one request is about (kube-apiserver's RequestInfo, after the resource was resolved).
#[derive(Debug, Clone)]
pub struct Target {
    pub info: Arc<ResourceInfo>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Query parameters, with the handful every verb reads.
#[derive(Debug, Default)]
pub struct Params(
    pub HashMap<String, String>,
    /// The field manager to record when the request names none: the User-Agent's product
    /// (`kubectl/v1.32.0 (linux/amd64) …` → `kubectl`), as kube-apiserver derives it.
    pub Option<String>,
);

impl Params {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    /// Who a non-apply write is recorded under in managedFields.
    pub fn manager(&self) -> &str {
        self.get("fieldManager")
            .or(self.1.as_deref())
            .unwrap_or("unknown")
    }

    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "Invalid dryRun value {other:?}: the only supported value is \"All\""
            ))),
        }
    }

    fn int(&self, k: &str) -> ApiResult<Option<i64>> {
        self.get(k)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid {k} {v:?}: not an integer"))
                })
            })
            .transpose()
    }

    /// A resourceVersion parameter: None for unset or "0" (any / current state).
    fn resource_version(&self) -> ApiResult<Option<i64>> {
        match self.get("resourceVersion") {
            None | Some("0") => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(rv) if rv > 0 => Ok(Some(rv)),
                _ => Err(ApiError::bad_request(format!(
                    "invalid resourceVersion {v:?}"
                ))),
            },
        }
    }
}

/// How to treat fields the type does not know (`?fieldValidation=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl Params {
    pub fn field_validation(&self) -> ApiResult<FieldValidation> {
        match self.get("fieldValidation") {
            None | Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other:?} (use Ignore, Warn or Strict)"
            ))),
        }
    }
}

/// fieldValidation=Strict: unknown fields are a 400, kube-apiserver's message. Returns nothing
/// otherwise (warnings are added by the caller that owns the response).
pub fn strict_check(t: &Target, p: &Params, obj: &Value) -> ApiResult<()> {
    if p.field_validation()? != FieldValidation::Strict {
        return Ok(());
    }
    let unknown = t.info.strategy.unknown_fields(obj);
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    Err(ApiError::bad_request(format!(
        "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
        list.join(", "),
        kind = &t.info.kind,
        version = &t.info.version
    )))
}

/// fieldValidation=Warn: one warning per unknown field of a request body.
pub fn unknown_field_warnings(t: &Target, p: &Params, obj: &Value) -> ApiResult<Vec<String>> {
    if p.field_validation()? != FieldValidation::Warn {
        return Ok(Vec::new());
    }
    Ok(t.info
        .strategy
        .unknown_fields(obj)
        .into_iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect())
}

/// Label and field selectors of a list or watch, checked against the resource.
#[derive(Debug)]
pub struct Filter {
    labels: Selector,
    fields: Selector,
}

impl Filter {
    pub fn from_params(info: &ResourceInfo, p: &Params) -> ApiResult<Filter> {
        let labels = Selector::parse_labels(p.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid labelSelector: {e}")))?;
        let fields = Selector::parse_fields(p.get("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid fieldSelector: {e}")))?;
        for r in &fields.requirements {
            if !info.strategy.supports_field(&r.key) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {}",
                    r.key
                )));
            }
        }
        Ok(Filter { labels, fields })
    }

    pub fn matches(&self, info: &ResourceInfo, obj: &Value) -> bool {
        if !self.labels.is_empty() {
            let labels = obj.labels();
            if !self.labels.matches_map(&labels) {
                return false;
            }
        }
        self.fields.is_empty() || self.fields.matches(|f| info.strategy.field(obj, f))
    }
}

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

fn with_rv(mut obj: Value, rv: i64) -> Value {
    obj.set_meta("resourceVersion", json!(rv.to_string()));
    obj
}

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

fn name_of(t: &Target) -> &str {
    t.name.as_deref().unwrap_or_default()
}

impl ApiServer {
    fn invalid(&self, t: &Target, name: &str, causes: Vec<FieldError>) -> ApiError {
        ApiError::invalid(&t.info.group, &t.info.kind, name, causes)
    }

    /// The live object and its mod_revision.
    async fn live(&self, t: &Target) -> ApiResult<(Value, i64)> {
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
        Ok((obj, kv.mod_revision))
    }

    /// A consistent GET: from the watch cache when it has caught up with the store's current
    /// revision (known without I/O on the embedded store), else from the store.
    pub async fn get(&self, t: &Target) -> ApiResult<Value> {
        if let Some(current) = self.store.revision_hint() {
            let cacher = self.cacher(&t.info)?;
            if cacher.wait_for(current, Duration::from_millis(50)).await {
                let name = name_of(t);
                return match cacher.get(&t.info.key(t.namespace.as_deref(), name)) {
                    Some(obj) => Ok((*obj).clone()),
                    None => Err(ApiError::not_found(&t.info.group, &t.info.plural, name)),
                };
            }
        }
        Ok(self.live(t).await?.0)
    }

    /// A list: from the watch cache when it is current, else (or when paginating) from the store.
    pub async fn list(
        &self,
        t: &Target,
        p: &Params,
    ) -> ApiResult<(Vec<Value>, i64, Option<String>)> {
        let filter = Filter::from_params(&t.info, p)?;
        let limit = p.int("limit")?.filter(|l| *l > 0).map(|l| l as usize);
        let cont = p.get("continue");
        let rv = p.resource_version()?;
        // Exact when asked for, and — Kubernetes' legacy rule — for a paginated list naming a
        // resourceVersion without a match mode.
        let exact = p.get("resourceVersionMatch") == Some("Exact")
            || (limit.is_some()
                && cont.is_none()
                && rv.is_some()
                && p.get("resourceVersionMatch").is_none());
        if let Some(m) = p.get("resourceVersionMatch")
            && !matches!(m, "Exact" | "NotOlderThan")
        {
            return Err(ApiError::bad_request(format!(
                "invalid resourceVersionMatch {m:?}: supported values are \"Exact\" and \"NotOlderThan\""
            )));
        }
        if exact && rv.is_none() {
            return Err(ApiError::bad_request(
                "resourceVersionMatch=Exact requires a non-zero resourceVersion",
            ));
        }
        let prefix = t.info.list_prefix(t.namespace.as_deref());
        if limit.is_none() && cont.is_none() && !exact {
            let cacher = self.cacher(&t.info)?;
            // resourceVersion "0": any state is fine. Unset: at least the store's current one.
            let needed = match (p.get("resourceVersion"), rv) {
                (Some("0"), _) => 0,
                (_, Some(r)) => r,
                (None, None) => match self.store.revision_hint() {
                    Some(r) => r,
                    None => self
                        .store
                        .current_revision()
                        .await
                        .map_err(|e| from_storage(e, &t.info.group, &t.info.plural, ""))?,
                },
                (Some(_), None) => 0,
            };
            // The embedded store reports progress at once; a cache that is still behind after
            // 50 ms (etcd sends progress rarely) is bypassed for a read from the store.
            if cacher.wait_for(needed, Duration::from_millis(50)).await {
                let (items, rev) = cacher.list(&prefix);
                let items = items
                    .into_iter()
                    .filter(|o| filter.matches(&t.info, o))
                    .map(|o| (*o).clone())
                    .collect();
                return Ok((items, rev, None));
            }
            // A resourceVersion newer than the store: wait for it (3 s, as Kubernetes does),
            // never answer with an older state.
            if let Some(r) = rv {
                let current = self
                    .store
                    .current_revision()
                    .await
                    .map_err(|e| from_storage(e, &t.info.group, &t.info.plural, ""))?;
                if r > current {
                    if !cacher.wait_for(r, Duration::from_secs(3)).await {
                        return Err(ApiError::timeout(format!(
                            "Too large resource version: {r}, current: {current}"
                        )));
                    }
                    let (items, rev) = cacher.list(&prefix);
                    let items = items
                        .into_iter()
                        .filter(|o| filter.matches(&t.info, o))
                        .map(|o| (*o).clone())
                        .collect();
                    return Ok((items, rev, None));
                }
            }
        }
        self.list_from_store(
            t,
            &prefix,
            &filter,
            limit,
            cont,
            if exact { rv } else { None },
        )
        .await
    }

    /// Pages through the store, filtering, until `limit` matches; the continue token carries the
    /// snapshot revision and the last key examined, so every page reads the same snapshot.
    async fn list_from_store(
        &self,
        t: &Target,
        prefix: &str,
        filter: &Filter,
        limit: Option<usize>,
        cont: Option<&str>,
        exact: Option<i64>,
    ) -> ApiResult<(Vec<Value>, i64, Option<String>)> {
        let (mut revision, mut start_after) = match cont {
            Some(token) => {
                let (rev, key) = decode_continue(token)?;
                if !key.starts_with(prefix) {
                    return Err(ApiError::bad_request(
                        "continue key is not valid: wrong resource",
                    ));
                }
                (Some(rev), Some(key))
            }
            None => (exact, None),
        };
        let mut items = Vec::new();
        loop {
            let want = limit.map(|l| (l - items.len()).max(50));
            let page = self
                .store
                .list(
                    prefix,
                    capstan_storage::ListOptions {
                        revision,
                        limit: want,
                        start_after: start_after.clone(),
                    },
                )
                .await
                .map_err(|e| match e {
                    capstan_storage::StorageError::Compacted { .. } if cont.is_some() => {
                        ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
                    }
                    e => from_storage(e, &t.info.group, &t.info.plural, ""),
                })?;
            revision = Some(page.revision);
            for (i, kv) in page.items.iter().enumerate() {
                let Some(obj) = t.info.decode(&kv.value, kv.mod_revision) else {
                    continue;
                };
                if filter.matches(&t.info, &obj) {
                    items.push(obj);
                    if limit == Some(items.len()) {
                        let more = page.more || i + 1 < page.items.len();
                        let token = more.then(|| encode_continue(page.revision, &kv.key));
                        return Ok((items, page.revision, token));
                    }
                }
            }
            if !page.more {
                return Ok((items, page.revision, None));
            }
            start_after = page.items.last().map(|kv| kv.key.clone());
        }
    }

    /// Creates an object; `dry_run` validates and returns it without storing.
    pub async fn create(&self, t: &Target, mut obj: Value, p: &Params) -> ApiResult<Value> {
        let dry_run = p.dry_run()?;
        let info = &t.info;
        if info.terminating {
            return Err(ApiError::method_not_allowed(format!(
                "create not allowed while custom resource definition is terminating: {}",
                crate::errors::qualified(&info.group, &info.plural)
            )));
        }
        check_type(info, &mut obj)?;
        strict_check(t, p, &obj)?;
        info.strategy.prune_unknown(&mut obj);
        info.strategy.canonicalize(&mut obj);
        if info.namespaced {
            let ns = t
                .namespace
                .clone()
                .ok_or_else(|| ApiError::method_not_allowed("namespaced resources are created in a namespace: POST /.../namespaces/{namespace}/{resource}"))?;
            match obj.namespace() {
                Some(given) if given != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => obj.set_meta("namespace", json!(ns)),
            }
        } else {
            obj.remove_meta("namespace");
        }
        if obj.name().is_none() {
            match obj.meta_str("generateName").filter(|g| !g.is_empty()) {
                Some(prefix) => {
                    let name = object::generate_name(prefix);
                    obj.set_meta("name", json!(name));
                }
                None => {
                    return Err(self.invalid(
                        t,
                        "",
                        vec![FieldError {
                            field: "metadata.name".into(),
                            value: String::new(),
                            message: "Required value: name or generateName is required".into(),
                        }],
                    ));
                }
            }
        }
        let name = obj.name().unwrap_or_default().to_string();
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            obj.remove_meta(field);
        }
        if obj
            .meta()
            .and_then(|m| m.get("managedFields"))
            .is_none_or(|mf| mf.as_array().is_none_or(Vec::is_empty))
        {
            crate::ssa::track_update(
                &info.kind,
                &info.api_version(),
                p.manager(),
                None,
                &mut obj,
                &object::now(),
            );
        }
        obj.set_meta("uid", json!(uuid::Uuid::new_v4().to_string()));
        obj.set_meta("creationTimestamp", json!(object::now()));
        if info.strategy.tracks_generation() {
            obj.set_meta("generation", json!(1));
        } else {
            obj.remove_meta("generation");
        }
        info.strategy.prepare_for_create(&mut obj);
        let errs = info.validate(&obj);
        if !errs.is_empty() {
            return Err(self.invalid(t, &name, errs));
        }
        if info.namespaced {
            self.check_namespace(obj.namespace().unwrap_or_default())
                .await?;
        }
        if dry_run {
            return Ok(obj);
        }
        let key = info.key_of(&obj);
        if is_service(info) {
            // Claiming an IP and storing the Service run to completion in their own task: a
            // client that disconnects in between must not leave the IP claimed.
            let (ips, store, group, plural) = (
                self.ips.clone(),
                self.store.clone(),
                info.group.clone(),
                info.plural.clone(),
            );
            let svc_info = t.info.clone();
            let task = tokio::spawn(async move {
                let allocated = allocate_cluster_ip(&ips, &mut obj, &name).await?;
                let stored = match encode(&svc_info, &obj) {
                    Ok(bytes) => store
                        .create(&key, bytes)
                        .await
                        .map_err(|e| from_storage(e, &group, &plural, &name)),
                    Err(e) => Err(e),
                };
                match stored {
                    Ok(kv) => Ok(with_rv(obj, kv.mod_revision)),
                    Err(e) => {
                        if let Some(ip) = allocated {
                            ips.release(&ip).await;
                        }
                        Err(e)
                    }
                }
            });
            return task
                .await
                .map_err(|e| ApiError::internal(format!("create task failed: {e}")))?;
        }
        let kv = self
            .store
            .create(&key, encode(info, &obj)?)
            .await
            .map_err(|e| from_storage(e, &info.group, &info.plural, &name))?;
        Ok(with_rv(obj, kv.mod_revision))
    }

    /// What deleting an object frees: a Service's ClusterIP.
    async fn after_delete(&self, info: &ResourceInfo, obj: &Value) {
        if is_service(info)
            && let Some(ip) = obj["spec"]["clusterIP"]
                .as_str()
                .filter(|ip| !ip.is_empty() && *ip != "None")
        {
            self.ips.release(ip).await;
        }
    }

    /// Namespaced objects are created only in namespaces that exist and are not terminating.
    async fn check_namespace(&self, ns: &str) -> ApiResult<()> {
        let key = format!("namespaces/{ns}");
        let cached = self
            .registry
            .get("", "v1", "namespaces")
            .and_then(|info| self.cacher(&info).ok())
            .and_then(|c| c.get(&key));
        let ns_obj = match cached {
            Some(o) => Some((*o).clone()),
            None => self
                .store
                .get(&key)
                .await
                .map_err(|e| from_storage(e, "", "namespaces", ns))?
                .and_then(|kv| cacher::decode(&kv.value, kv.mod_revision)),
        };
        match ns_obj {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(o) if o.is_deleting() => Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
                details: None,
            }),
            Some(_) => Ok(()),
        }
    }

    /// PUT (whole object, or its status with subresource "status").
    pub async fn update(&self, t: &Target, body: Value, p: &Params) -> ApiResult<Value> {
        let name = name_of(t).to_string();
        if body.name().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                body.name().unwrap_or_default()
            )));
        }
        if let (Some(ns), Some(given)) = (&t.namespace, body.namespace())
            && t.info.namespaced
            && given != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let precondition =
            match body.meta_str("resourceVersion").filter(|s| !s.is_empty()) {
                Some(rv) => Some(rv.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?),
                None => None,
            };
        let status_only = t.subresource.as_deref() == Some("status");
        self.guaranteed_update(t, precondition, p.dry_run()?, Some(p.manager()), |live| {
            let mut new = body.clone();
            check_type(&t.info, &mut new)?;
            strict_check(t, p, &new)?;
            Ok(status_rules(&t.info, live, new, status_only))
        })
        .await
    }

    /// Read, transform, validate, compare-and-swap; retried on a lost race unless the client
    /// named the resourceVersion it expects.
    pub async fn guaranteed_update(
        &self,
        t: &Target,
        precondition: Option<i64>,
        dry_run: bool,
        manager: Option<&str>,
        transform: impl Fn(&Value) -> ApiResult<Value>,
    ) -> ApiResult<Value> {
        let name = name_of(t).to_string();
        let info = &t.info;
        for _ in 0..16 {
            let (live, rev) = self.live(t).await?;
            if let Some(expected) = precondition
                && expected != rev
            {
                return Err(ApiError::conflict(
                    &info.group,
                    &info.plural,
                    &name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            let mut new = transform(&live)?;
            info.strategy.prune_unknown(&mut new);
            info.strategy.canonicalize(&mut new);
            preserve_meta(&live, &mut new)?;
            if is_service(info) {
                keep_cluster_ip(&live, &mut new, &name)?;
            }
            if let Some(m) = manager {
                crate::ssa::track_update(
                    &info.kind,
                    &info.api_version(),
                    m,
                    Some(&live),
                    &mut new,
                    &object::now(),
                );
            }
            if info.strategy.tracks_generation() {
                // The generation follows the spec: everything but metadata and, when a status
                // subresource owns it, status (so a custom resource without one bumps on
                // status changes too, as in Kubernetes).
                let generation = live["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = if info.status {
                    object::spec_of(&new) != object::spec_of(&live)
                } else {
                    new.get("status") != live.get("status")
                        || object::spec_of(&new) != object::spec_of(&live)
                };
                let generation = if changed { generation + 1 } else { generation };
                new.set_meta("generation", json!(generation));
            } else {
                new.remove_meta("generation");
            }
            let mut errs = info.validate(&new);
            errs.extend(info.strategy.validate_update(&new, &live));
            if !errs.is_empty() {
                return Err(self.invalid(t, &name, errs));
            }
            if dry_run {
                return Ok(with_rv(new, rev));
            }
            // An object being deleted goes once its last finalizer is removed — unless it is
            // still in its grace period (a pod its node has not stopped yet: Kubernetes'
            // ShouldDeleteDuringUpdate).
            if new.is_deleting()
                && new.finalizers().is_empty()
                && !namespace_finalizers_pending(info, &new)
                && new
                    .meta()
                    .and_then(|m| m.get("deletionGracePeriodSeconds"))
                    .and_then(Value::as_i64)
                    .is_none_or(|g| g == 0)
            {
                return match self.store.delete(&info.key_of(&new), Some(rev)).await {
                    Ok((_, del_rev)) => {
                        self.after_delete(info, &new).await;
                        Ok(with_rv(new, del_rev))
                    }
                    Err(capstan_storage::StorageError::Conflict { .. })
                        if precondition.is_none() =>
                    {
                        continue;
                    }
                    Err(e) => Err(from_storage(e, &info.group, &info.plural, &name)),
                };
            }
            let mut unchanged = live.clone();
            unchanged.remove_meta("resourceVersion");
            if new == unchanged {
                return Ok(live); // nothing changed: no write, same resourceVersion
            }
            match self
                .store
                .update(&info.key_of(&new), encode(info, &new)?, rev)
                .await
            {
                Ok(kv) => return Ok(with_rv(new, kv.mod_revision)),
                Err(capstan_storage::StorageError::Conflict { .. }) if precondition.is_none() => {
                    continue;
                }
                Err(e) => return Err(from_storage(e, &info.group, &info.plural, &name)),
            }
        }
        Err(too_many_writers(info, &name))
    }

    /// PATCH: JSON Patch, JSON merge patch and (built-ins) strategic merge patch. Server-side
    /// apply on the object itself is [`ApiServer::server_side_apply`]; on subresources it is
    /// refused by name.
    pub async fn patch(
        &self,
        t: &Target,
        content_type: &str,
        body: Bytes,
        p: &Params,
    ) -> ApiResult<Value> {
        self.patch_with_warnings(t, content_type, body, p)
            .await
            .map(|(v, _)| v)
    }

    /// As [`ApiServer::patch`], with the `fieldValidation=Warn` warnings for the patched object.
    pub async fn patch_with_warnings(
        &self,
        t: &Target,
        content_type: &str,
        body: Bytes,
        p: &Params,
    ) -> ApiResult<(Value, Vec<String>)> {
        let kind = patch_kind(content_type, &t.info)?;
        if kind == PatchKind::Apply {
            return Err(ApiError::unsupported_media_type(
                "server-side apply is served on the object itself, not on its subresources yet",
            ));
        }
        let patch: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
        let json_patch = match kind {
            PatchKind::Json => Some(
                serde_json::from_value::<json_patch::Patch>(patch.clone())
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?,
            ),
            PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                None
            }
        };
        let precondition = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(|s| {
                s.parse::<i64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}")))
            })
            .transpose()?;
        let status_only = t.subresource.as_deref() == Some("status");
        let info = t.info.clone();
        let warnings = std::sync::Mutex::new(Vec::new());
        let patched = self
            .guaranteed_update(t, precondition, p.dry_run()?, Some(p.manager()), |live| {
                let mut doc = live.clone();
                match (&json_patch, kind) {
                    (Some(ops), _) => json_patch::patch(&mut doc, ops).map_err(|e| ApiError {
                        code: 422,
                        reason: "Invalid",
                        message: format!("the JSON patch could not be applied: {e}"),
                        details: None,
                    })?,
                    (None, PatchKind::Strategic) => {
                        doc = crate::smp::apply(&info.kind, &doc, &patch).map_err(|e| {
                            ApiError::bad_request(format!(
                                "the strategic merge patch could not be applied: {}",
                                e.0
                            ))
                        })?
                    }
                    (None, _) => json_patch::merge(&mut doc, &patch),
                }
                if !doc.is_object() {
                    return Err(ApiError::bad_request(
                        "the patched object is not a JSON object",
                    ));
                }
                strict_check(t, p, &doc)?;
                if let Ok(mut w) = warnings.lock() {
                    *w = unknown_field_warnings(t, p, &doc)?;
                }
                if doc.name() != live.name() || doc.namespace() != live.namespace() {
                    return Err(ApiError::bad_request(
                        "a patch cannot change metadata.name or metadata.namespace",
                    ));
                }
                Ok(status_rules(&info, live, doc, status_only))
            })
            .await?;
        Ok((patched, warnings.into_inner().unwrap_or_default()))
    }

    /// Server-side apply (see [`crate::ssa`]): creates the object when it is missing (true), or
    /// merges the applied configuration into it under the field manager's ownership.
    pub async fn server_side_apply(
        &self,
        t: &Target,
        body: &Bytes,
        p: &Params,
    ) -> ApiResult<(bool, Value, Vec<String>)> {
        let info = &t.info;
        let name = name_of(t).to_string();
        let manager = p.get("fieldManager").ok_or_else(|| {
            self.invalid(
                t,
                &name,
                vec![FieldError {
                    field: "fieldManager".into(),
                    value: String::new(),
                    message: "Required value: is required for apply patch".into(),
                }],
            )
        })?;
        let force = match p.get("force") {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "invalid force {other:?}: true or false"
                )));
            }
        };
        let mut applied: Value = serde_json::from_slice(body)
            .or_else(|_| serde_yaml::from_slice::<Value>(body))
            .map_err(|e| {
                ApiError::bad_request(format!("the apply patch is not valid YAML or JSON: {e}"))
            })?;
        if !applied.is_object() {
            return Err(ApiError::bad_request("the apply patch must be an object"));
        }
        if applied.get("apiVersion").is_none() || applied.get("kind").is_none() {
            return Err(ApiError::bad_request(
                "apiVersion and kind must be set in an applied configuration",
            ));
        }
        check_type(info, &mut applied)?;
        if applied.name() != Some(name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "the name of the applied object ({}) does not match the name on the URL ({name})",
                applied.name().unwrap_or_default()
            )));
        }
        if let (Some(ns), Some(given)) = (&t.namespace, applied.namespace())
            && given != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        strict_check(t, p, &applied)?;
        let warnings = unknown_field_warnings(t, p, &applied)?;
        // The manager owns only fields the type has.
        info.strategy.prune_unknown(&mut applied);
        let api_version = info.api_version();
        for _ in 0..4 {
            let now = object::now();
            match self.live(t).await {
                Err(e) if e.code == 404 => {
                    let obj = crate::ssa::apply(
                        &info.kind,
                        &api_version,
                        None,
                        &applied,
                        manager,
                        force,
                        &now,
                    )
                    .map_err(|e| apply_error(info, &name, e))?;
                    let collection = Target {
                        name: None,
                        subresource: None,
                        ..t.clone()
                    };
                    match self.create(&collection, obj, p).await {
                        Err(e) if e.reason == "AlreadyExists" => continue, // lost a race: merge instead
                        other => return other.map(|o| (true, o, warnings.clone())),
                    }
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            let updated = self
                .guaranteed_update(t, None, p.dry_run()?, None, |live| {
                    let mut out = crate::ssa::apply(
                        &info.kind,
                        &api_version,
                        Some(live),
                        &applied,
                        manager,
                        force,
                        &now,
                    )
                    .map_err(|e| apply_error(info, &name, e))?;
                    // kubectl migrating from client-side apply: keep last-applied in sync.
                    const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
                    if manager == "kubectl"
                        && live
                            .pointer("/metadata/annotations")
                            .and_then(|a| a.get(LAST_APPLIED))
                            .is_some()
                    {
                        let mut config = applied.clone();
                        if let Some(a) = config
                            .pointer_mut("/metadata/annotations")
                            .and_then(Value::as_object_mut)
                        {
                            a.remove(LAST_APPLIED);
                        }
                        object::set_path(
                            &mut out,
                            &["metadata", "annotations", LAST_APPLIED],
                            json!(format!("{config}\n")),
                        );
                    }
                    Ok(out)
                })
                .await;
            return match updated {
                Err(e) if e.code == 404 => continue, // deleted meanwhile: create it
                other => other.map(|o| (false, o, warnings.clone())),
            };
        }
        Err(too_many_writers(info, &name))
    }

    /// DELETE: immediate, or — with finalizers, a propagation policy that needs the garbage
    /// collector, a pod still bound to a node, or a namespace — marked with deletionTimestamp and
    /// left for its finalizers to clear.
    pub async fn delete(&self, t: &Target, body: &Bytes, p: &Params) -> ApiResult<Value> {
        let opts: Value = if body.is_empty() {
            json!({})
        } else {
            parse_body(body)?
        };
        let dry_run = p.dry_run()?
            || opts["dryRun"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "All"));
        let policy = p
            .get("propagationPolicy")
            .map(str::to_string)
            .or_else(|| opts["propagationPolicy"].as_str().map(str::to_string));
        let finalizer = match policy.as_deref() {
            None | Some("Background") => None,
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "invalid propagationPolicy {other:?}: supported values are Background, Foreground and Orphan"
                )));
            }
        };
        let grace = match p.int("gracePeriodSeconds")? {
            Some(g) => Some(g),
            None => opts["gracePeriodSeconds"].as_i64(),
        };
        let name = name_of(t).to_string();
        let info = &t.info;
        for _ in 0..16 {
            let (live, rev) = self.live(t).await?;
            if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
                && live.meta_str("uid") != Some(uid)
            {
                return Err(ApiError::conflict(
                    &info.group,
                    &info.plural,
                    &name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        live.meta_str("uid").unwrap_or_default()
                    ),
                ));
            }
            if let Some(want) = opts
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                && want != rev.to_string()
            {
                return Err(ApiError::conflict(
                    &info.group,
                    &info.plural,
                    &name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}"
                    ),
                ));
            }
            let mut finalizers = live.finalizers();
            // The garbage collector's finalizers follow the policy: added on a first delete;
            // on a later delete that names a policy, switched to it (Kubernetes lets a user
            // turn a foreground deletion into an orphaning one, or release it).
            if policy.is_some() || !live.is_deleting() {
                if policy.is_some() {
                    finalizers.retain(|x| {
                        !matches!(x.as_str(), "foregroundDeletion" | "orphan")
                            || Some(x.as_str()) == finalizer
                    });
                }
                if let Some(f) = finalizer
                    && !finalizers.iter().any(|x| x == f)
                {
                    finalizers.push(f.to_string());
                }
            }
            let pod_grace = (info.group.is_empty()
                && info.plural == "pods"
                && live["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty()))
            .then(|| {
                grace
                    .or(live["spec"]["terminationGracePeriodSeconds"].as_i64())
                    .unwrap_or(30)
            })
            .filter(|g| *g > 0);
            let namespace_pending = namespace_finalizers_pending(info, &live);
            if finalizers.is_empty() && pod_grace.is_none() && !namespace_pending {
                if dry_run {
                    return Ok(live);
                }
                match self.store.delete(&info.key_of(&live), Some(rev)).await {
                    Ok((_, del_rev)) => {
                        self.after_delete(info, &live).await;
                        return Ok(with_rv(live, del_rev));
                    }
                    Err(capstan_storage::StorageError::Conflict { .. }) => continue,
                    Err(e) => return Err(from_storage(e, &info.group, &info.plural, &name)),
                }
            }
            if live.is_deleting() && finalizers == live.finalizers() {
                return Ok(live); // already being deleted
            }
            let mut marked = live.clone();
            marked.set_meta("finalizers", json!(finalizers));
            if !live.is_deleting() {
                marked.set_meta("deletionTimestamp", json!(object::now()));
                marked.set_meta("deletionGracePeriodSeconds", json!(pod_grace.unwrap_or(0)));
                if namespace_pending {
                    object::set_path(&mut marked, &["status", "phase"], json!("Terminating"));
                }
            }
            if dry_run {
                return Ok(marked);
            }
            match self
                .store
                .update(&info.key_of(&marked), encode(info, &marked)?, rev)
                .await
            {
                Ok(kv) => return Ok(with_rv(marked, kv.mod_revision)),
                Err(capstan_storage::StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(from_storage(e, &info.group, &info.plural, &name)),
            }
        }
        Err(too_many_writers(info, &name))
    }

    /// DELETE on a collection: every object matching the selectors, one by one.
    pub async fn delete_collection(
        &self,
        t: &Target,
        body: &Bytes,
        p: &Params,
    ) -> ApiResult<Value> {
        let (items, _, _) = self.list(t, p).await?;
        let mut deleted = Vec::new();
        for obj in items {
            let one = Target {
                info: t.info.clone(),
                namespace: obj.namespace().map(str::to_string),
                name: obj.name().map(str::to_string),
                subresource: None,
            };
            match self.delete(&one, body, p).await {
                Ok(o) => deleted.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(json!({
            "kind": t.info.list_kind,
            "apiVersion": t.info.api_version(),
            "metadata": {},
            "items": deleted,
        }))
    }

    /// POST pods/NAME/binding: assigns a pending pod to a node, once.
    pub async fn bind(&self, t: &Target, body: Value, p: &Params) -> ApiResult<Value> {
        let node = body
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                self.invalid(
                    t,
                    name_of(t),
                    vec![FieldError {
                        field: "target.name".into(),
                        value: String::new(),
                        message: "Required value".into(),
                    }],
                )
            })?
            .to_string();
        let name = name_of(t).to_string();
        self.guaranteed_update(t, None, p.dry_run()?, Some(p.manager()), |live| {
            if let Some(current) = live["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                return Err(ApiError::conflict("", "pods", &name, &format!("pod {name} is already assigned to node \"{current}\"")));
            }
            if live.is_deleting() {
                return Err(ApiError::conflict("", "pods", &name, "pod is being deleted, cannot be assigned to a host"));
            }
            let mut bound = live.clone();
            object::set_path(&mut bound, &["spec", "nodeName"], json!(node));
            let conds = bound["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
            conds.push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": object::now()}));
            object::set_path(&mut bound, &["status", "conditions"], json!(conds));
            Ok(bound)
        })
        .await?;
        Ok(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )
    }

    /// GET .../scale: the autoscaling/v1 Scale view of spec.replicas.
    pub async fn get_scale(&self, t: &Target) -> ApiResult<Value> {
        Ok(scale_of(&t.info, &self.get(t).await?))
    }

    /// PUT or PATCH (merge or JSON patch) .../scale: changes spec.replicas only.
    pub async fn update_scale(
        &self,
        t: &Target,
        content_type: Option<&str>,
        body: Bytes,
        p: &Params,
    ) -> ApiResult<Value> {
        let paths = t
            .info
            .scale
            .clone()
            .ok_or_else(|| ApiError::internal("the resource has no scale subresource"))?;
        let (live, _) = self.live(t).await?;
        let scale = match content_type {
            None => parse_body(&body)?,
            Some(ct) => {
                let mut doc = scale_of(&t.info, &live);
                let patch: Value = serde_json::from_slice(&body).map_err(|e| {
                    ApiError::bad_request(format!("the patch is not valid JSON: {e}"))
                })?;
                match patch_kind(ct, &t.info)? {
                    // A Scale has no lists: a strategic merge patch is a merge patch here.
                    PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply => {
                        json_patch::merge(&mut doc, &patch)
                    }
                    PatchKind::Json => {
                        let ops: json_patch::Patch =
                            serde_json::from_value(patch).map_err(|e| {
                                ApiError::bad_request(format!("invalid JSON patch: {e}"))
                            })?;
                        json_patch::patch(&mut doc, &ops).map_err(|e| {
                            ApiError::bad_request(format!(
                                "the JSON patch could not be applied: {e}"
                            ))
                        })?;
                    }
                }
                doc
            }
        };
        // A PUT without spec.replicas means 0 (as Kubernetes decodes it); anything but an
        // int32 is refused, never read as 0.
        let replicas = match scale.pointer("/spec/replicas") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_i64()
                .filter(|n| i32::try_from(*n).is_ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Scale in version \"v1\" cannot be handled as a Scale: spec.replicas must be a 32-bit integer, not {v}"
                    ))
                })?,
        };
        if replicas < 0 {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                name_of(t),
                vec![FieldError {
                    field: "spec.replicas".into(),
                    value: replicas.to_string(),
                    message: "must be greater than or equal to 0".into(),
                }],
            ));
        }
        let precondition =
            match (
                content_type,
                scale
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str),
            ) {
                (None, Some(rv)) if !rv.is_empty() => Some(rv.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?),
                _ => None,
            };
        let updated = self
            .guaranteed_update(t, precondition, p.dry_run()?, Some(p.manager()), |live| {
                let mut new = live.clone();
                let path: Vec<String> = paths
                    .spec_replicas
                    .split('/')
                    .skip(1)
                    .map(|p| p.replace("~1", "/").replace("~0", "~"))
                    .collect();
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                object::set_path(&mut new, &path, json!(replicas));
                Ok(new)
            })
            .await?;
        Ok(scale_of(&t.info, &updated))
    }

    /// A client watch, as a stream of JSON lines.
    pub async fn watch(
        &self,
        t: &Target,
        p: &Params,
        view: View,
    ) -> ApiResult<impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + use<>>
    {
        // Streaming lists (KEP-3157): the current objects as ADDED, then a BOOKMARK annotated
        // k8s.io/initial-events-end, then changes. Kubernetes' rules for the parameters apply.
        let send_initial = match p.get("sendInitialEvents") {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "invalid sendInitialEvents {other:?}"
                )));
            }
        };
        if send_initial == Some(true) {
            let mut causes = Vec::new();
            if p.get("resourceVersionMatch") != Some("NotOlderThan") {
                causes.push(FieldError {
                    field: "resourceVersionMatch".into(),
                    value: p.get("resourceVersionMatch").unwrap_or_default().into(),
                    message: "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into(),
                });
            }
            if !p.flag("allowWatchBookmarks") {
                causes.push(FieldError {
                    field: "allowWatchBookmarks".into(),
                    value: String::new(),
                    message: "Required value: sendInitialEvents requires allowWatchBookmarks=true"
                        .into(),
                });
            }
            if !causes.is_empty() {
                return Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", causes));
            }
        }
        let filter = Filter::from_params(&t.info, p)?;
        let timeout = p
            .int("timeoutSeconds")?
            .filter(|s| *s > 0) // 0 means the default, as in Kubernetes
            .map(|s| Duration::from_secs(s as u64))
            .unwrap_or(DEFAULT_WATCH_TIMEOUT);
        let bookmarks = p.flag("allowWatchBookmarks");
        let bookmark_every = self.bookmark_interval();
        let cacher = self.cacher(&t.info)?;
        let rv = p.resource_version()?;
        let (initial, mut live, snapshot_rv) = match send_initial {
            // The state at (at least) the given RV — or, unset, the store's current one.
            Some(true) => {
                let min = match rv {
                    Some(r) => r,
                    None => match self.store.revision_hint() {
                        Some(r) => r,
                        None => self
                            .store
                            .current_revision()
                            .await
                            .map_err(|e| from_storage(e, &t.info.group, &t.info.plural, ""))?,
                    },
                };
                cacher.watch_at_least(None, min).await?
            }
            // Explicitly no initial events: from the RV, or from now.
            Some(false) => {
                let (events, rx, at) = cacher.watch(rv).await?;
                (if rv.is_none() { Vec::new() } else { events }, rx, at)
            }
            None => cacher.watch(rv).await?,
        };
        let initial_end = send_initial == Some(true);
        let info = t.info.clone();
        let ns_prefix = t.info.list_prefix(t.namespace.as_deref());
        let name = t.name.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        tokio::spawn(async move {
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval(bookmark_every);
            tick.reset();
            let mut last_rv = 0;
            let in_scope = |o: &Value| {
                info.key_of(o).starts_with(&ns_prefix)
                    && name.as_deref().is_none_or(|n| o.name() == Some(n))
            };
            let render = |e: &CacheEvent| -> Option<Bytes> {
                let (kind, obj) =
                    translate(e, &|o: &Value| in_scope(o) && filter.matches(&info, o))?;
                let object = match view {
                    View::Table => crate::table::render(
                        &info.strategy.table(),
                        std::slice::from_ref(obj),
                        None,
                        &e.rv.to_string(),
                        None,
                    ),
                    View::Metadata => partial_metadata(obj),
                    View::Object => (*obj).clone(),
                };
                let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).ok()?;
                line.push(b'\n');
                Some(Bytes::from(line))
            };
            for e in &initial {
                last_rv = last_rv.max(e.rv);
                if let Some(line) = render(e)
                    && tx.send(line).await.is_err()
                {
                    return;
                }
            }
            // The initial events bring the watcher to the snapshot's revision (even when none
            // passed its filter): bookmarks start from there, never from 0.
            last_rv = last_rv.max(snapshot_rv);
            if initial_end {
                let line = json!({"type": "BOOKMARK", "object": {"kind": &info.kind, "apiVersion": info.api_version(),
                    "metadata": {"resourceVersion": last_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}});
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                if tx.send(Bytes::from(bytes)).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                    _ = tick.tick(), if bookmarks && view != View::Table => {
                        // Only what this watcher has been sent: the cache may be ahead of
                        // events still queued for it, and a bookmark must never skip them.
                        let rv = last_rv;
                        let line = json!({"type": "BOOKMARK", "object": {"kind": &info.kind, "apiVersion": info.api_version(), "metadata": {"resourceVersion": rv.to_string()}}});
                        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                        bytes.push(b'\n');
                        if tx.send(Bytes::from(bytes)).await.is_err() { return; }
                    }
                    ev = live.recv() => match ev {
                        Ok(e) => {
                            last_rv = e.rv;
                            if let Some(line) = render(&e)
                                && tx.send(line).await.is_err()
                            {
                                return;
                            }
                        }
                        // Too slow, or the cache relisted: end the watch; the client re-watches
                        // from its last resourceVersion (or relists on 410).
                        Err(_) => return,
                    }
                }
            }
        });
        Ok(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(b), rx))
        }))
    }
}

/// What a client watching with a filter sees of one event: an object entering the filter is
/// ADDED, one leaving it is DELETED (kube-apiserver's cacheWatcher does the same).
fn translate<'a>(
    e: &'a CacheEvent,
    pass: &dyn Fn(&Value) -> bool,
) -> Option<(&'static str, &'a Value)> {
    let now = pass(&e.object);
    let before = e.prev.as_deref().is_some_and(pass);
    match e.kind {
        Kind::Added if now => Some(("ADDED", &e.object)),
        Kind::Modified if now && before => Some(("MODIFIED", &e.object)),
        Kind::Modified if now => Some(("ADDED", &e.object)),
        Kind::Modified if before => Some(("DELETED", &e.object)),
        Kind::Deleted if before || now => Some(("DELETED", &e.object)),
        _ => None,
    }
}

fn apply_error(info: &ResourceInfo, name: &str, e: crate::ssa::ApplyError) -> ApiError {
    match e {
        crate::ssa::ApplyError::Conflicts(c) => apply_conflict(info, name, c),
        crate::ssa::ApplyError::Invalid(why) => ApiError::bad_request(format!(
            "the applied configuration cannot be applied: {why}"
        )),
    }
}

/// A 409 listing each conflicting field and its manager, in kube-apiserver's words.
fn apply_conflict(
    info: &ResourceInfo,
    name: &str,
    conflicts: Vec<crate::ssa::Conflict>,
) -> ApiError {
    let list: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "conflict with \"{}\" using {}: {}",
                c.manager, c.api_version, c.path
            )
        })
        .collect();
    let n = conflicts.len();
    let mut e = ApiError::conflict(&info.group, &info.plural, name, "");
    e.message = format!(
        "Apply failed with {n} conflict{}: {}",
        if n == 1 { "" } else { "s" },
        list.join("\n")
    );
    if let Some(d) = e.details.as_mut() {
        d.causes = conflicts
            .into_iter()
            .map(|c| FieldError {
                field: c.path,
                value: String::new(),
                message: format!("conflict with \"{}\" using {}", c.manager, c.api_version),
            })
            .collect();
    }
    e
}

/// Gives a new Service its ClusterIP (the requested one, or a free one), unless it is
/// headless (`None`) or an ExternalName. Returns the IP it claimed.
async fn allocate_cluster_ip(
    ips: &crate::ipalloc::Allocator,
    svc: &mut Value,
    name: &str,
) -> ApiResult<Option<String>> {
    if svc["spec"]["type"] == "ExternalName" {
        return Ok(None);
    }
    let wanted = svc["spec"]["clusterIP"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    if wanted.as_deref() == Some("None") {
        object::set_path(svc, &["spec", "clusterIPs"], json!(["None"]));
        return Ok(None);
    }
    let owner = format!("{}/{name}", svc.namespace().unwrap_or_default());
    let ip = ips
        .allocate(wanted.as_deref(), &owner)
        .await
        .map_err(|mut e| {
            if let Some(d) = e.details.as_mut() {
                d.name = name.to_string();
            }
            e.message = e
                .message
                .replace("Service \"\"", &format!("Service \"{name}\""));
            e
        })?;
    let ip = ip.to_string();
    object::set_path(svc, &["spec", "clusterIP"], json!(ip));
    object::set_path(svc, &["spec", "clusterIPs"], json!([ip]));
    object::set_path(svc, &["spec", "ipFamilies"], json!(["IPv4"]));
    object::set_path(svc, &["spec", "ipFamilyPolicy"], json!("SingleStack"));
    Ok(Some(ip))
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

fn is_service(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.plural == "services"
}

/// spec.clusterIP is immutable once allocated; an update that leaves it out keeps it.
fn keep_cluster_ip(live: &Value, new: &mut Value, name: &str) -> ApiResult<()> {
    let Some(ip) = live["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty())
    else {
        return Ok(());
    };
    match new
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        None => {
            object::set_path(new, &["spec", "clusterIP"], json!(ip));
            if let Some(ips) = live.pointer("/spec/clusterIPs") {
                object::set_path(new, &["spec", "clusterIPs"], ips.clone());
            }
            Ok(())
        }
        Some(given) if given == ip => Ok(()),
        Some(given) => Err(ApiError::invalid(
            "",
            "Service",
            name,
            vec![FieldError {
                field: "spec.clusterIPs[0]".into(),
                value: given.into(),
                message: "Invalid value: field is immutable".into(),
            }],
        )),
    }
}

/// The status subresource's split: a write to /status changes only status (the rest comes from
/// the live object); a write to the object itself keeps the live status.
fn status_rules(info: &ResourceInfo, live: &Value, mut new: Value, status_only: bool) -> Value {
    if status_only {
        let mut merged = live.clone();
        merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        return merged;
    }
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
    new
}

/// How a response shows objects (chosen by the client's Accept header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Object,
    /// meta.k8s.io/v1 Table rows (kubectl get).
    Table,
    /// meta.k8s.io/v1 PartialObjectMetadata: the metadata alone.
    Metadata,
}

/// An object as PartialObjectMetadata (what metadata-only informers ask for).
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn namespace_finalizers_pending(info: &ResourceInfo, obj: &Value) -> bool {
    info.group.is_empty()
        && info.plural == "namespaces"
        && obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
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

/// Metadata the server owns survives every update: uid, creation time, deletion state, name
/// and namespace. A client-given uid that differs is a precondition failure.
fn preserve_meta(live: &Value, new: &mut Value) -> ApiResult<()> {
    if let (Some(given), Some(uid)) = (new.meta_str("uid"), live.meta_str("uid"))
        && !given.is_empty()
        && given != uid
    {
        return Err(ApiError::conflict(
            "",
            "",
            live.name().unwrap_or_default(),
            &format!(
                "Precondition failed: UID in precondition: {given}, UID in object meta: {uid}"
            ),
        ));
    }
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "name",
        "namespace",
    ] {
        match live.meta().and_then(|m| m.get(field)) {
            Some(v) => new.set_meta(field, v.clone()),
            None => new.remove_meta(field),
        }
    }
    // Finalizers can only be removed once deletion started, never added back.
    if live.is_deleting() {
        let allowed = live.finalizers();
        let kept: Vec<String> = new
            .finalizers()
            .into_iter()
            .filter(|f| allowed.contains(f))
            .collect();
        new.set_meta("finalizers", json!(kept));
    }
    new.remove_meta("resourceVersion");
    Ok(())
}

/// The autoscaling/v1 Scale view of an object, read where the resource's scale paths say.
fn scale_of(info: &ResourceInfo, obj: &Value) -> Value {
    let workload = crate::registry::ScalePaths::workload();
    let paths = info.scale.as_ref().unwrap_or(&workload);
    let selector = match &paths.selector {
        Some(crate::registry::SelectorAt::LabelSelector(at)) => obj
            .pointer(at)
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .and_then(|ls| Selector::from_label_selector(&ls).ok())
            .map(|s| s.to_string())
            .unwrap_or_default(),
        Some(crate::registry::SelectorAt::String(at)) => obj
            .pointer(at)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None => String::new(),
    };
    let meta = obj.meta();
    let pick = |k: &str| meta.and_then(|m| m.get(k)).cloned().unwrap_or(Value::Null);
    let spec_default = if info.group.is_empty() || info.group == "apps" {
        1
    } else {
        0
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": pick("name"),
            "namespace": pick("namespace"),
            "uid": pick("uid"),
            "resourceVersion": pick("resourceVersion"),
            "creationTimestamp": pick("creationTimestamp"),
        },
        "spec": { "replicas": obj.pointer(&paths.spec_replicas).and_then(Value::as_i64).unwrap_or(spec_default) },
        "status": {
            "replicas": obj.pointer(&paths.status_replicas).and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

/// Whether a PATCH content type is server-side apply.
pub fn is_apply(content_type: &str) -> bool {
    content_type.split(';').next().unwrap_or_default().trim() == "application/apply-patch+yaml"
}

fn patch_kind(content_type: &str, info: &ResourceInfo) -> ApiResult<PatchKind> {
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    match ct {
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/strategic-merge-patch+json" if info.strategic_merge => {
            Ok(PatchKind::Strategic)
        }
        "application/strategic-merge-patch+json" => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json (strategic merge patch is not supported for {})",
            crate::errors::qualified(&info.group, &info.plural)
        ))),
        "application/apply-patch+yaml" => Ok(PatchKind::Apply),
        other => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format ({other:?}) - accepted media types include: application/json-patch+json, application/merge-patch+json"
        ))),
    }
}

fn encode_continue(rev: i64, key: &str) -> String {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{rev}.{hex}")
}

fn decode_continue(token: &str) -> ApiResult<(i64, String)> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let (rev, hex) = token.split_once('.').ok_or_else(bad)?;
    let rev = rev.parse::<i64>().map_err(|_| bad())?;
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad())?;
    Ok((rev, String::from_utf8(bytes).map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_garbage_is_a_bad_request() {
        let t = encode_continue(42, "pods/default/web-1");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, "pods/default/web-1".to_string())
        );
        for bad in ["", "x", "1.zz", "1.abc", "a.00", "1.ff"] {
            assert_eq!(decode_continue(bad).unwrap_err().code, 400, "{bad}");
        }
    }

    #[test]
    fn filtered_watchers_see_objects_enter_and_leave() {
        let obj = |app: &str| Arc::new(json!({"metadata": {"labels": {"app": app}}}));
        let pass = |o: &Value| o["metadata"]["labels"]["app"] == "web";
        let ev = |kind, now, prev| CacheEvent {
            kind,
            rv: 2,
            object: now,
            prev,
        };
        assert_eq!(
            translate(&ev(Kind::Modified, obj("web"), Some(obj("db"))), &pass)
                .unwrap()
                .0,
            "ADDED"
        );
        assert_eq!(
            translate(&ev(Kind::Modified, obj("db"), Some(obj("web"))), &pass)
                .unwrap()
                .0,
            "DELETED"
        );
        assert_eq!(
            translate(&ev(Kind::Modified, obj("web"), Some(obj("web"))), &pass)
                .unwrap()
                .0,
            "MODIFIED"
        );
        assert!(translate(&ev(Kind::Modified, obj("db"), Some(obj("db"))), &pass).is_none());
        assert!(translate(&ev(Kind::Added, obj("db"), None), &pass).is_none());
    }
}
