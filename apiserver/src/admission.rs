//! Several [`StorageHooks`] on one resource, run in order (the pods' admission plugins:
//! ServiceAccount, then DefaultTolerationSeconds, as kube-apiserver orders them). A create
//! one of them refuses is aborted in those that already began, newest first.

use std::sync::Arc;

use serde_json::Value;

use crate::errors::ApiResult;
use crate::strategy::StorageHooks;

/// Hooks run one after another.
#[derive(Debug, Clone, Default)]
pub struct Chain(pub Vec<Arc<dyn StorageHooks>>);

#[async_trait::async_trait]
impl StorageHooks for Chain {
    async fn begin_create(&self, obj: &mut Value, dry_run: bool) -> ApiResult<()> {
        for (i, h) in self.0.iter().enumerate() {
            if let Err(e) = h.begin_create(obj, dry_run).await {
                if !dry_run {
                    for done in self.0[..i].iter().rev() {
                        done.abort_create(obj).await;
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }
    async fn abort_create(&self, obj: &Value) {
        for h in self.0.iter().rev() {
            h.abort_create(obj).await;
        }
    }
    async fn begin_update(&self, live: &Value, new: &mut Value, dry_run: bool) -> ApiResult<()> {
        for (i, h) in self.0.iter().enumerate() {
            if let Err(e) = h.begin_update(live, new, dry_run).await {
                if !dry_run {
                    for done in self.0[..i].iter().rev() {
                        done.abort_update(live, new).await;
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }
    async fn abort_update(&self, live: &Value, new: &Value) {
        for h in self.0.iter().rev() {
            h.abort_update(live, new).await;
        }
    }
    async fn after_update(&self, live: &Value, stored: &Value) {
        for h in &self.0 {
            h.after_update(live, stored).await;
        }
    }
    async fn after_delete(&self, obj: &Value) {
        for h in &self.0 {
            h.after_delete(obj).await;
        }
    }
}
