//! GET of one object: from the watch cache when it has caught up, else from the store.

use std::sync::Arc;
use std::time::Duration;

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult, from_storage};
use crate::registry::ResourceInfo;
use crate::request::{Params, Target};
use serde_json::Value;

use super::name_of;

/// How long a read naming a resourceVersion the store has not reached waits for it
/// (kube-apiserver's cacher waits 3 s, then answers 504 "Too large resource version").
pub const FUTURE_RESOURCE_VERSION_WAIT: Duration = Duration::from_secs(3);

impl ApiServer {
    /// GET with the request's `resourceVersion`: unset or "0" reads the current object; a
    /// revision the store has not reached is waited for, never answered with older data.
    pub async fn get_at(&self, t: &Target, p: &Params) -> ApiResult<Value> {
        if let Some(rv) = p.resource_version()? {
            self.wait_for_revision(&t.info, rv).await?;
        }
        self.get(t).await
    }

    /// Returns once the store (as the resource's watch cache sees it) has reached `rv`: at once
    /// when it has, else within [`FUTURE_RESOURCE_VERSION_WAIT`] or a 504 "Too large resource
    /// version".
    pub async fn wait_for_revision(&self, info: &Arc<ResourceInfo>, rv: i64) -> ApiResult<()> {
        let current = self
            .store
            .current_revision()
            .await
            .map_err(|e| from_storage(e, &info.group, &info.plural, ""))?;
        if rv <= current {
            return Ok(());
        }
        if !info.watch_cached() {
            return match crate::watch_cache::uncached::wait_for_store(&self.store, rv).await? {
                true => Ok(()),
                false => Err(ApiError::too_large_resource_version(rv, current)),
            };
        }
        if self
            .cacher(info)?
            .wait_for(rv, FUTURE_RESOURCE_VERSION_WAIT)
            .await
        {
            return Ok(());
        }
        Err(ApiError::too_large_resource_version(rv, current))
    }

    /// A consistent GET: from the watch cache when it has caught up with the store's current
    /// revision (known without I/O on the embedded store), else from the store.
    pub async fn get(&self, t: &Target) -> ApiResult<Value> {
        if let Some(current) = self.store.revision_hint().filter(|_| t.info.watch_cached()) {
            let cacher = self.cacher(&t.info)?;
            if cacher.wait_for(current, Duration::from_millis(50)).await {
                let name = name_of(t);
                return match cacher.get(&t.info.key(t.namespace.as_deref(), name)) {
                    Some(obj) => Ok(obj.value()),
                    None => Err(ApiError::not_found(&t.info.group, &t.info.plural, name)),
                };
            }
        }
        Ok(self.live(t).await?.0)
    }
}
