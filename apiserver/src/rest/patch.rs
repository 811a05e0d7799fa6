//! PATCH with JSON Patch, JSON merge patch and (built-ins) strategic merge patch, through
//! [`ApiServer::guaranteed_update`]. The patch engines are in [`crate::patch`]; server-side apply
//! is [`super::apply`].

use bytes::Bytes;
use serde_json::Value;

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::object::ObjectExt;
use crate::patch::{PatchKind, json, merge, patch_kind};
use crate::request::{Params, Target};

use super::field_validation::{duplicate_field_check, strict_check, unknown_field_warnings};
use super::{check_resource_version, resource_version_of, subresource_rules};

impl ApiServer {
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
        let duplicates = duplicate_field_check(t, p, &body)?;
        let json_patch = match kind {
            PatchKind::Json => Some(json::parse(&patch)?),
            PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply => {
                merge::check(&patch)?;
                None
            }
        };
        // A merge patch naming a resourceVersion is a precondition (never retried); one that
        // sets it otherwise (a JSON patch) is checked against each live object it is applied to.
        let precondition = match kind {
            PatchKind::Json => None,
            _ => resource_version_of(&t.info, &patch)?,
        };
        let sub = t.subresource.clone();
        let info = t.info.clone();
        let warnings = std::sync::Mutex::new(Vec::new());
        let patched = self
            .guaranteed_update(t, precondition, p.dry_run()?, Some(p.manager()), |live| {
                let mut doc = live.clone();
                match (&json_patch, kind) {
                    (Some(ops), _) => {
                        json::apply(&mut doc, ops).map_err(json::PatchError::api_error)?
                    }
                    (None, PatchKind::Strategic) => {
                        doc = crate::patch::strategic::apply(&info.kind, &doc, &patch).map_err(
                            |e| {
                                ApiError::bad_request(format!(
                                    "the strategic merge patch could not be applied: {}",
                                    e.0
                                ))
                            },
                        )?
                    }
                    (None, _) => merge::apply(&mut doc, &patch),
                }
                if !doc.is_object() {
                    return Err(ApiError::bad_request(
                        "the patched object is not a JSON object",
                    ));
                }
                strict_check(t, p, &doc)?;
                if let Ok(mut w) = warnings.lock() {
                    *w = duplicates.clone();
                    w.extend(unknown_field_warnings(t, p, &doc)?);
                }
                check_resource_version(&info, live, &doc)?;
                if doc.name() != live.name() || doc.namespace() != live.namespace() {
                    return Err(ApiError::bad_request(
                        "a patch cannot change metadata.name or metadata.namespace",
                    ));
                }
                Ok(subresource_rules(&info, live, doc, sub.as_deref()))
            })
            .await?;
        Ok((patched, warnings.into_inner().unwrap_or_default()))
    }
}
