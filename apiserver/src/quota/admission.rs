//! The ResourceQuota admission plugin (plugin/pkg/admission/resourcequota): every create of a
//! namespaced object is checked against the quotas of its namespace whose scopes select it,
//! after the mutating plugins (so LimitRange defaults count) and before the object is stored.
//!
//! - A quota limiting cpu or memory refuses pods whose containers do not state them:
//!   `failed quota: NAME: must specify limits.cpu for: c`.
//! - A quota whose status the controller has not computed yet refuses what it limits:
//!   `status unknown for quota: NAME, resources: pods`.
//! - What would pass `status.hard` is refused: `exceeded quota: NAME, requested: pods=1, used:
//!   pods=3, limited: pods=3`, a 403 as in Kubernetes.
//! - Otherwise the object is charged: the quota's `status.used` grows by what it uses, written
//!   with a compare-and-swap on the quota (re-read and re-checked when another write won), so
//!   concurrent creates can never pass a quota together. What is freed later (deletes, pods
//!   finishing) the resource-quota controller gives back.
//!
//! Updates are not charged (pods' resources do not change; a Service turned NodePort is not
//! counted until the controller recalculates).

use std::sync::{OnceLock, Weak};

use capstan_api::quota::{self, Usage, format, parse_list, pretty};
use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::object::ObjectExt;
use crate::registry::ResourceInfo;

/// How many times a charge re-reads a quota another write changed first.
const ATTEMPTS: usize = 20;

#[derive(Debug, Default)]
pub struct QuotaAdmission {
    api: OnceLock<Weak<ApiServer>>,
}

fn forbidden(info: &ResourceInfo, obj: &Value, message: String) -> ApiError {
    ApiError::forbidden(
        &info.group,
        &info.plural,
        obj.name().unwrap_or_default(),
        &message,
    )
}

impl QuotaAdmission {
    pub fn attach(&self, api: Weak<ApiServer>) {
        let _ = self.api.set(api);
    }

    /// Checks `obj`, about to be created, against its namespace's quotas and charges it (only
    /// checks with `dry_run`).
    pub async fn admit_create(
        &self,
        info: &ResourceInfo,
        obj: &Value,
        dry_run: bool,
    ) -> ApiResult<()> {
        if !info.namespaced {
            return Ok(());
        }
        let Some(api) = self.api.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let Some(quota_info) = api.registry.get("", "v1", "resourcequotas") else {
            return Ok(());
        };
        let ns = obj.namespace().unwrap_or_default().to_string();
        let mut quotas = api
            .cacher(&quota_info)?
            .list(&quota_info.list_prefix(Some(&ns)))
            .0;
        if quotas.is_empty() {
            return Ok(());
        }
        let delta = quota::usage(&info.group, &info.plural, obj, jiff::Timestamp::now());
        if delta.is_empty() {
            return Ok(());
        }
        quotas.sort_by(|a, b| a.name().cmp(&b.name()));
        let selecting: Vec<&Value> = quotas
            .iter()
            .map(|q| &**q)
            .filter(|q| quota::matches_scopes(q, &info.group, &info.plural, obj))
            .collect();
        let is_pod = info.group.is_empty() && info.plural == "pods";
        let mut charged = Vec::new();
        for q in selecting {
            let hard = parse_list(&q["spec"]["hard"]);
            let name = q.name().unwrap_or_default().to_string();
            if is_pod && let Err(e) = quota::pod_constraints(&hard, obj) {
                return Err(forbidden(info, obj, format!("failed quota: {name}: {e}")));
            }
            let relevant: Vec<String> = delta
                .keys()
                .filter(|k| hard.contains_key(*k))
                .cloned()
                .collect();
            if !relevant.is_empty() {
                charged.push((name, relevant));
            }
        }
        for (name, relevant) in charged {
            self.charge(
                &api,
                &quota_info,
                info,
                obj,
                &ns,
                &name,
                &relevant,
                &delta,
                dry_run,
            )
            .await?;
        }
        Ok(())
    }

    /// Adds `delta` (its `relevant` part) to the quota's `status.used`, or refuses.
    #[allow(clippy::too_many_arguments)]
    async fn charge(
        &self,
        api: &ApiServer,
        quota_info: &ResourceInfo,
        info: &ResourceInfo,
        obj: &Value,
        ns: &str,
        name: &str,
        relevant: &[String],
        delta: &Usage,
        dry_run: bool,
    ) -> ApiResult<()> {
        let key = quota_info.key(Some(ns), name);
        for _ in 0..ATTEMPTS {
            let Some(kv) = api
                .store
                .get(&key)
                .await
                .map_err(|e| ApiError::internal(format!("reading quota {name}: {e}")))?
            else {
                return Ok(()); // deleted meanwhile: nothing to charge
            };
            let Some(mut q) = quota_info.decode(&kv.value, kv.mod_revision) else {
                return Err(ApiError::internal(format!("quota {name} is not readable")));
            };
            let hard = parse_list(&q["status"]["hard"]);
            let used = parse_list(&q["status"]["used"]);
            let unknown: Vec<&str> = relevant
                .iter()
                .filter(|r| !hard.contains_key(*r) || !used.contains_key(*r))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                return Err(forbidden(
                    info,
                    obj,
                    format!(
                        "status unknown for quota: {name}, resources: {}",
                        unknown.join(",")
                    ),
                ));
            }
            let mut after = used.clone();
            for r in relevant {
                *after.entry(r.clone()).or_default() += delta.get(r).copied().unwrap_or(0);
            }
            let exceeded: Vec<String> = relevant
                .iter()
                .filter(|r| after[*r] > hard[*r])
                .cloned()
                .collect();
            if !exceeded.is_empty() {
                return Err(forbidden(
                    info,
                    obj,
                    format!(
                        "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                        pretty(delta, &exceeded),
                        pretty(&used, &exceeded),
                        pretty(&hard, &exceeded)
                    ),
                ));
            }
            if dry_run {
                return Ok(());
            }
            for r in relevant {
                q["status"]["used"][r] = json!(format(r, after[r]));
            }
            let bytes = crate::rest::encode_stored(quota_info, &q)?;
            match api.store.update(&key, bytes, kv.mod_revision).await {
                Ok(_) => return Ok(()),
                Err(capstan_storage::StorageError::Conflict { .. }) => continue,
                Err(capstan_storage::StorageError::NotFound { .. }) => return Ok(()),
                Err(e) => {
                    return Err(ApiError::internal(format!("charging quota {name}: {e}")));
                }
            }
        }
        Err(ApiError::conflict(
            "",
            "resourcequotas",
            name,
            &format!(
                "the quota changed {ATTEMPTS} times while this request was charged to it; try again"
            ),
        ))
    }
}
