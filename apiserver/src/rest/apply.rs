//! Server-side apply (PATCH `application/apply-patch+yaml`): creates the object when missing, else
//! merges the applied configuration under the field manager's ownership; conflicts are a 409
//! listing each field and its manager. The merge and managedFields are [`crate::patch::apply`].

use bytes::Bytes;
use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::object::{self, ObjectExt};
use crate::registry::ResourceInfo;
use crate::request::{Params, Target};

use super::field_validation::{duplicate_field_check, strict_check, unknown_field_warnings};
use super::{
    Retry, check_resource_version, check_type, name_of, resource_version_of, too_many_writers,
};

impl ApiServer {
    /// Server-side apply (see [`crate::patch::apply`]): creates the object when it is missing (true), or
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
        let mut applied = crate::body::decode_apply(body.clone()).await?;
        if !applied.is_object() {
            return Err(ApiError::bad_request("the apply patch must be an object"));
        }
        if applied.get("apiVersion").is_none() || applied.get("kind").is_none() {
            return Err(ApiError::bad_request(
                "apiVersion and kind must be set in an applied configuration",
            ));
        }
        check_type(info, &mut applied)?;
        // A configuration that leaves out its name or namespace takes them from the URL, as in
        // Kubernetes; one that names others is refused.
        if applied.name().is_none_or(str::is_empty) {
            applied.set_meta("name", json!(name));
        }
        if let Some(ns) = &t.namespace
            && applied.namespace().is_none_or(str::is_empty)
        {
            applied.set_meta("namespace", json!(ns));
        }
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
        // A resourceVersion in the configuration is a precondition on the live object.
        resource_version_of(info, &applied)?;
        let mut warnings = duplicate_field_check(t, p, body)?;
        strict_check(t, p, &applied)?;
        warnings.extend(unknown_field_warnings(t, p, &applied)?);
        // The manager owns only fields the type has.
        info.strategy.prune_unknown(&mut applied);
        let api_version = info.api_version();
        let mut retry = Retry::new();
        loop {
            let now = object::now();
            match self.live(t).await {
                Err(e) if e.code == 404 => {
                    let obj = crate::patch::apply::apply(
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
                    match self.create_applied(&collection, obj, p).await {
                        // Lost a race: merge instead.
                        Err(e) if e.reason == "AlreadyExists" && retry.again().await => continue,
                        other => return other.map(|o| (true, o, warnings.clone())),
                    }
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            let updated = self
                .guaranteed_update(t, None, p.dry_run()?, None, |live| {
                    check_resource_version(info, live, &applied)?;
                    let mut out = crate::patch::apply::apply(
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
                // Deleted meanwhile: create it.
                Err(e) if e.code == 404 && retry.again().await => continue,
                Err(e) if e.code == 404 => Err(too_many_writers(info, &name)),
                other => other.map(|o| (false, o, warnings.clone())),
            };
        }
    }
}

fn apply_error(info: &ResourceInfo, name: &str, e: crate::patch::apply::ApplyError) -> ApiError {
    match e {
        crate::patch::apply::ApplyError::Conflicts(c) => apply_conflict(info, name, c),
        crate::patch::apply::ApplyError::Invalid(why) => ApiError::bad_request(format!(
            "the applied configuration cannot be applied: {why}"
        )),
    }
}

/// A 409 listing each conflicting field and its manager, in kube-apiserver's words.
fn apply_conflict(
    info: &ResourceInfo,
    name: &str,
    conflicts: Vec<crate::patch::apply::Conflict>,
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
