//! The scale subresource: the autoscaling/v1 Scale view of a workload's (or a custom resource's
//! mapped) replicas; GET, PUT and PATCH change spec.replicas only.

use bytes::Bytes;
use capstan_api::Selector;
use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::body::parse_body;
use crate::errors::{ApiError, ApiResult};
use crate::object::{self, ObjectExt};
use crate::patch::{PatchKind, json, merge, patch_kind};
use crate::registry::ResourceInfo;
use crate::request::{Params, Target};

use super::name_of;

impl ApiServer {
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
                        merge::apply(&mut doc, &patch)
                    }
                    PatchKind::Json => {
                        let ops = json::parse(&patch)?;
                        json::apply(&mut doc, &ops).map_err(|e| match e {
                            json::PatchError::Failed(why) => ApiError::bad_request(format!(
                                "the JSON patch could not be applied: {why}"
                            )),
                            too_much => too_much.api_error(),
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
