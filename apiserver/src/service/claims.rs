//! Claims on a range shared by every API server of a cluster — Service ClusterIPs and NodePorts.
//!
//! Each claimed value is a store key `<prefix><value>` holding its owner (`namespace/name`),
//! made with a compare-and-swap create, so API servers sharing one store never hand out the same
//! value twice (Kubernetes keeps IPAddress objects and an etcd bitmap for the same reason). A
//! value is released when its Service lets go of it. A crash between claiming and storing the
//! Service leaves a claim behind: [`Claims::repair`] (run every minute, like kube-apiserver's
//! repair controllers) releases a claim no Service uses once it has seen it unused, unchanged,
//! on two consecutive passes — so an allocation in flight is never taken back — and re-claims
//! the value of a stored Service whose claim was lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use capstan_storage::{Storage, StorageError};
use serde_json::Value;

use crate::errors::{ApiResult, from_storage};

/// The claims under one store prefix.
#[derive(Clone, Debug)]
pub struct Claims {
    prefix: &'static str,
    what: &'static str,
    store: Arc<dyn Storage>,
}

impl Claims {
    /// `what` names the values in logs ("ClusterIP", "NodePort").
    pub fn new(prefix: &'static str, what: &'static str, store: Arc<dyn Storage>) -> Claims {
        Claims {
            prefix,
            what,
            store,
        }
    }

    pub fn store(&self) -> &Arc<dyn Storage> {
        &self.store
    }

    fn key(&self, value: &str) -> String {
        format!("{}{value}", self.prefix)
    }

    /// Claims `value` for `owner`; false when it is taken.
    pub async fn claim(&self, value: &str, owner: &str) -> ApiResult<bool> {
        match self
            .store
            .create(&self.key(value), Bytes::from(owner.to_string()))
            .await
        {
            Ok(_) => Ok(true),
            Err(StorageError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(from_storage(e, "", "services", owner)),
        }
    }

    /// Whether `value` is claimed now (a dry run's check, which claims nothing).
    pub async fn is_claimed(&self, value: &str) -> ApiResult<bool> {
        self.store
            .get(&self.key(value))
            .await
            .map(|kv| kv.is_some())
            .map_err(|e| from_storage(e, "", "services", ""))
    }

    /// Releases `value` (idempotent).
    pub async fn release(&self, value: &str) {
        match self.store.delete(&self.key(value), None).await {
            Ok(_) | Err(StorageError::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(value, what = self.what, error = %e, "could not release a claim")
            }
        }
    }

    /// Claims the first free value of `size` candidates (`nth(i)` is the i-th), starting at a
    /// random one and probing linearly, at most `tries` of them; `None` when none was free.
    /// With `dry_run` nothing is claimed: the first value free now is returned.
    pub async fn claim_any(
        &self,
        size: u32,
        tries: u32,
        nth: impl Fn(u32) -> String,
        owner: &str,
        dry_run: bool,
    ) -> ApiResult<Option<String>> {
        if size == 0 {
            return Ok(None);
        }
        let start = fastrand::u32(..size);
        for i in 0..size.min(tries) {
            let value = nth((start + i) % size);
            let free = if dry_run {
                !self.is_claimed(&value).await?
            } else {
                self.claim(&value, owner).await?
            };
            if free {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// One repair pass. `used_by` lists the values a stored Service holds (only values of this
    /// range: others are never claimed). Returns the claims no Service uses now, with the
    /// revision each was seen at; releases a claim only if `previously_leaked` saw it unused
    /// at the same revision — a claim made again in between (a new Service on its way) is left
    /// alone. Also claims the values of stored Services that hold none (a lost claim).
    pub async fn repair(
        &self,
        previously_leaked: &HashMap<String, i64>,
        used_by: impl Fn(&Value) -> Vec<String>,
    ) -> ApiResult<HashMap<String, i64>> {
        let claims = self
            .store
            .list(self.prefix, Default::default())
            .await
            .map_err(|e| from_storage(e, "", "services", ""))?;
        // Services are read after the claims: a Service stored in between is seen as a user.
        let services = self
            .store
            .list("services/", Default::default())
            .await
            .map_err(|e| from_storage(e, "", "services", ""))?;
        let mut used: HashMap<String, String> = HashMap::new();
        for kv in &services.items {
            if let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) {
                let owner = kv.key.trim_start_matches("services/").to_string();
                for value in used_by(&svc) {
                    used.insert(value, owner.clone());
                }
            }
        }
        let claimed: HashSet<&str> = claims
            .items
            .iter()
            .map(|kv| kv.key.trim_start_matches(self.prefix))
            .collect();
        for (value, owner) in &used {
            if !claimed.contains(value.as_str()) && self.claim(value, owner).await? {
                tracing::info!(
                    value,
                    owner,
                    what = self.what,
                    "claimed the value of a Service that had lost its claim"
                );
            }
        }
        let mut leaked = HashMap::new();
        for kv in &claims.items {
            let value = kv.key.trim_start_matches(self.prefix).to_string();
            if used.contains_key(&value) {
                continue;
            }
            if previously_leaked.get(&value) == Some(&kv.mod_revision) {
                match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                    Ok(_) => {
                        tracing::info!(value, what = self.what, "released a claim no Service uses")
                    }
                    Err(StorageError::NotFound { .. } | StorageError::Conflict { .. }) => {}
                    Err(e) => {
                        tracing::warn!(value, what = self.what, error = %e, "could not release a leaked claim")
                    }
                }
            } else {
                leaked.insert(value, kv.mod_revision);
            }
        }
        Ok(leaked)
    }
}
