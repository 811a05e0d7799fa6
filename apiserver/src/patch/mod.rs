//! The patch engines, one file per patch type kubectl sends: [`json`] (RFC 6902, `rollout
//! undo`), [`merge`] (RFC 7386, custom resources), [`strategic`] (strategic merge patch, built-ins
//! only) and [`apply`] (server-side apply; field ownership in [`managed_fields`], field paths in
//! [`field_paths`]); what each may cost is [`budget`]. The verbs that use them are
//! [`crate::rest::patch`] and [`crate::rest::apply`].

pub mod apply;
pub mod budget;
pub mod field_paths;
pub mod json;
pub mod managed_fields;
pub mod merge;
pub mod strategic;

use crate::errors::{ApiError, ApiResult};
use crate::registry::ResourceInfo;

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

pub fn patch_kind(content_type: &str, info: &ResourceInfo) -> ApiResult<PatchKind> {
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
