//! Label and field selectors of a list or watch (kube-apiserver's SelectionPredicate).

use capstan_api::Selector;
use serde_json::Value;

use crate::errors::{ApiError, ApiResult};
use crate::object::ObjectExt;
use crate::registry::ResourceInfo;
use crate::request::Params;

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

    /// Whether it lets everything through (no selector given).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
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
