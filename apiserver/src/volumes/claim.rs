//! core/v1 PersistentVolumeClaims: validation (`ValidatePersistentVolumeClaim[Update]`),
//! defaults, `kubectl get pvc` columns, and the admission that gives a new claim the default
//! StorageClass and the `kubernetes.io/pvc-protection` finalizer.

use std::sync::{Arc, OnceLock, Weak};

use capstan_api::validation::{self, FieldError};
use serde_json::{Value, json};

use super::{
    access_modes_cell, add_finalizer, immutable_except, validate_access_modes, validate_storage,
    validate_volume_mode,
};
use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::object::ObjectExt;
use crate::strategy::{StorageHooks, invalid};
use crate::table::{self, Table, age};

/// The finalizer that keeps a claim while a pod uses it.
pub const PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The annotation naming the default StorageClass.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// A claim's spec at `path`: access modes, a positive storage request, a valid class name
/// and volume mode.
pub fn validate_spec(path: &str, spec: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_access_modes(
        &format!("{path}.accessModes"),
        &spec["accessModes"],
        &mut errs,
    );
    let requests = &spec["resources"]["requests"];
    if requests["storage"].is_null() {
        errs.push(FieldError {
            field: format!("{path}.resources[storage]"),
            value: String::new(),
            message: "Required value".into(),
        });
    } else {
        validate_storage(
            &format!("{path}.resources[storage]"),
            &requests["storage"],
            &mut errs,
        );
    }
    if let Some(class) = spec["storageClassName"].as_str()
        && !class.is_empty()
        && let Err(m) = validation::dns1123_subdomain(class)
    {
        errs.push(invalid(&format!("{path}.storageClassName"), class, m));
    }
    validate_volume_mode(
        &format!("{path}.volumeMode"),
        &spec["volumeMode"],
        &mut errs,
    );
    errs
}

pub fn validate(obj: &Value) -> Vec<FieldError> {
    validate_spec("spec", &obj["spec"])
}

/// The spec is immutable but for the requested size, and a volume name or class set where
/// none was (what binding writes).
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut new_spec = new["spec"].clone();
    for key in ["volumeName", "storageClassName"] {
        if old["spec"][key].as_str().is_none_or(str::is_empty)
            && let Some(m) = new_spec.as_object_mut()
        {
            match old["spec"].get(key) {
                Some(v) => m.insert(key.into(), v.clone()),
                None => m.remove(key),
            };
        }
    }
    let mut errs = Vec::new();
    errs.extend(immutable_except(
        "spec",
        &new_spec,
        &old["spec"],
        &["resources", "volumeAttributesClassName"],
        "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
    ));
    errs
}

/// `kubectl get pvc`: NAME STATUS VOLUME CAPACITY ACCESS MODES STORAGECLASS
/// VOLUMEATTRIBUTESCLASS AGE, and VOLUMEMODE with `-o wide`.
pub fn table() -> Table {
    table::table(
        &[
            ("Status", "string", 0),
            ("Volume", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Age", "string", 0),
            ("VolumeMode", "string", 1),
        ],
        |o| {
            let (spec, status) = (&o["spec"], &o["status"]);
            let bound = status["phase"] == "Bound";
            let capacity = if bound {
                table::s(&status["capacity"]["storage"])
            } else {
                String::new()
            };
            let modes = if bound {
                access_modes_cell(&status["accessModes"])
            } else {
                String::new()
            };
            let phase = if o.meta_str("deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else {
                table::s(&status["phase"])
            };
            vec![
                json!(phase),
                json!(table::s(&spec["volumeName"])),
                json!(capacity),
                json!(modes),
                json!(table::s(&spec["storageClassName"])),
                json!(
                    spec["volumeAttributesClassName"]
                        .as_str()
                        .unwrap_or("<unset>")
                ),
                age(o),
                json!(spec["volumeMode"].as_str().unwrap_or("Filesystem")),
            ]
        },
    )
}

/// DefaultStorageClass and StorageObjectInUseProtection for claims.
#[derive(Debug, Default)]
pub struct ClaimAdmission {
    api: OnceLock<Weak<ApiServer>>,
}

impl ClaimAdmission {
    pub fn attach(&self, api: Weak<ApiServer>) {
        let _ = self.api.set(api);
    }

    /// The default class: of those annotated as default, the newest (then the first by name).
    fn default_class(&self) -> ApiResult<Option<String>> {
        let api = self
            .api
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| ApiError::internal("the claim admission has no server"))?;
        let Some(info) = api
            .registry
            .get(super::storage_class::GROUP, "v1", "storageclasses")
        else {
            return Ok(None);
        };
        let classes = api.cacher(&info)?.values("").0;
        Ok(pick_default(&classes))
    }
}

/// See [`ClaimAdmission::default_class`].
pub fn pick_default(classes: &[Arc<Value>]) -> Option<String> {
    crate::object::newest_default(classes, DEFAULT_CLASS)
}

#[derive(Debug)]
pub struct ClaimHooks(pub Arc<ClaimAdmission>);

#[async_trait::async_trait]
impl StorageHooks for ClaimHooks {
    async fn begin_create(&self, obj: &mut Value, _dry_run: bool) -> ApiResult<()> {
        if obj["spec"]
            .get("storageClassName")
            .is_none_or(Value::is_null)
            && let Some(class) = self.0.default_class()?
        {
            obj["spec"]["storageClassName"] = json!(class);
        }
        add_finalizer(obj, PROTECTION);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc() -> Value {
        let mut c = json!({"metadata": {"name": "data"}, "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}});
        capstan_api::defaults::core::persistent_volume_claim(&mut c);
        c
    }

    fn msgs(errs: &[FieldError]) -> Vec<String> {
        errs.iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn a_claim_needs_access_modes_and_a_positive_size() {
        assert!(validate(&pvc()).is_empty());
        assert_eq!(pvc()["spec"]["volumeMode"], "Filesystem");
        assert_eq!(pvc()["status"]["phase"], "Pending");
        let mut bad = pvc();
        bad["spec"]["accessModes"] = json!([]);
        bad["spec"]["resources"]["requests"]["storage"] = json!("0");
        bad["spec"]["volumeMode"] = json!("Raw");
        assert_eq!(
            msgs(&validate(&bad)),
            [
                "spec.accessModes: Required value: at least 1 access mode is required",
                "spec.resources[storage]: must be greater than zero",
                "spec.volumeMode: Unsupported value: supported values: \"Block\", \"Filesystem\""
            ]
        );
        let mut none = pvc();
        none["spec"]["resources"] = json!({});
        none["spec"]["accessModes"] = json!(["ReadWriteOncePod", "ReadWriteOnce"]);
        assert_eq!(
            msgs(&validate(&none)),
            [
                "spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes",
                "spec.resources[storage]: Required value"
            ]
        );
    }

    #[test]
    fn binding_may_fill_the_volume_name_once_and_only_the_size_changes_after() {
        let old = pvc();
        let mut bound = old.clone();
        bound["spec"]["volumeName"] = json!("pv-1");
        bound["spec"]["storageClassName"] = json!("local-path");
        assert!(validate_update(&bound, &old).is_empty());
        let mut moved = bound.clone();
        moved["spec"]["volumeName"] = json!("pv-2");
        assert_eq!(
            msgs(&validate_update(&moved, &bound)),
            [
                "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"
            ]
        );
        let mut grown = bound.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert!(validate_update(&grown, &bound).is_empty());
    }

    #[test]
    fn the_newest_default_class_wins() {
        let class = |name: &str, default: bool, created: &str| {
            Arc::new(
                json!({"metadata": {"name": name, "creationTimestamp": created,
                "annotations": {DEFAULT_CLASS: if default { "true" } else { "false" }}}}),
            )
        };
        assert_eq!(
            pick_default(&[class("a", false, "2026-01-01T00:00:00Z")]),
            None
        );
        assert_eq!(
            pick_default(&[
                class("old", true, "2026-01-01T00:00:00Z"),
                class("new", true, "2026-02-01T00:00:00Z"),
                class("plain", false, "2026-03-01T00:00:00Z"),
            ]),
            Some("new".into())
        );
    }
}
