//! GET of one object: from the watch cache when it has caught up, else from the store.

use std::time::Duration;

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::request::Target;
use serde_json::Value;

use super::name_of;

impl ApiServer {
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
}
