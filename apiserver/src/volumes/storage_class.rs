//! storage.k8s.io/v1 StorageClasses: validation (`ValidateStorageClass[Update]`), defaults
//! (reclaim Delete, binding Immediate) and `kubectl get sc` columns (the default class marked
//! `(default)`).

use capstan_api::validation::{self, FieldError};
use serde_json::{Value, json};

use super::claim::DEFAULT_CLASS;
use crate::object::ObjectExt;
use crate::strategy::{invalid, required};
use crate::table::{self, Column, Table, age};

pub const GROUP: &str = "storage.k8s.io";

pub fn defaults(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        o.entry("reclaimPolicy").or_insert_with(|| json!("Delete"));
        o.entry("volumeBindingMode")
            .or_insert_with(|| json!("Immediate"));
    }
}

pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match obj["provisioner"].as_str() {
        None | Some("") => errs.push(required("provisioner")),
        Some(p) => {
            if let Err(m) = validation::qualified_name(&p.to_ascii_lowercase()) {
                errs.push(invalid("provisioner", p, m));
            }
        }
    }
    if let Some(p) = obj["reclaimPolicy"].as_str()
        && !matches!(p, "Delete" | "Retain")
    {
        errs.push(invalid(
            "reclaimPolicy",
            p,
            "Unsupported value: supported values: \"Delete\", \"Retain\"",
        ));
    }
    if let Some(m) = obj["volumeBindingMode"].as_str()
        && !matches!(m, "Immediate" | "WaitForFirstConsumer")
    {
        errs.push(invalid(
            "volumeBindingMode",
            m,
            "Unsupported value: supported values: \"Immediate\", \"WaitForFirstConsumer\"",
        ));
    }
    errs
}

/// Parameters, provisioner, reclaim policy and binding mode never change.
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (key, what) in [
        ("parameters", "parameters"),
        ("provisioner", "provisioner"),
        ("reclaimPolicy", "reclaimPolicy"),
        ("volumeBindingMode", "volumeBindingMode"),
    ] {
        if new[key] != old[key] {
            errs.push(FieldError {
                field: key.into(),
                value: String::new(),
                message: format!("Forbidden: updates to {what} are forbidden."),
            });
        }
    }
    errs
}

/// `kubectl get sc`: NAME PROVISIONER RECLAIMPOLICY VOLUMEBINDINGMODE ALLOWVOLUMEEXPANSION AGE.
pub fn table() -> Table {
    let col = |name: &str| Column {
        name: name.into(),
        ty: "string".into(),
        priority: 0,
        description: String::new(),
    };
    Table {
        columns: [
            "Name",
            "Provisioner",
            "ReclaimPolicy",
            "VolumeBindingMode",
            "AllowVolumeExpansion",
            "Age",
        ]
        .into_iter()
        .map(col)
        .collect(),
        row: std::sync::Arc::new(|o: &Value| {
            let mut name = o.name().unwrap_or_default().to_string();
            if o["metadata"]["annotations"][DEFAULT_CLASS] == "true" {
                name.push_str(" (default)");
            }
            vec![
                json!(name),
                json!(table::s(&o["provisioner"])),
                json!(o["reclaimPolicy"].as_str().unwrap_or("Delete")),
                json!(o["volumeBindingMode"].as_str().unwrap_or("Immediate")),
                json!(o["allowVolumeExpansion"].as_bool().unwrap_or(false)),
                age(o),
            ]
        }),
        name_first: false,
    }
}

/// The default class `capstan up` ships (as k3s ships `local-path`): node-local directories
/// made by the built-in provisioner, bound where the first pod lands.
pub const LOCAL_PATH_CLASS: &str = "local-path";

/// Creates the `local-path` StorageClass, marked default, unless a class of that name exists
/// (a user's edits or removal of the default mark are kept).
pub async fn ensure_local_path(api: &crate::ApiServer) -> crate::errors::ApiResult<()> {
    let obj = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": LOCAL_PATH_CLASS,
            "annotations": {DEFAULT_CLASS: "true"}},
        "provisioner": "capstan.dev/local-path",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer"});
    api.create_if_missing((GROUP, "v1", "storageclasses"), obj)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_default_to_delete_and_immediate_and_never_change_how_they_provision() {
        let mut c = json!({"metadata": {"name": "fast"}, "provisioner": "capstan.dev/local-path"});
        defaults(&mut c);
        assert_eq!(c["reclaimPolicy"], "Delete");
        assert_eq!(c["volumeBindingMode"], "Immediate");
        assert!(validate(&c).is_empty());
        let mut bad = c.clone();
        bad["volumeBindingMode"] = json!("Later");
        bad.as_object_mut().unwrap().remove("provisioner");
        assert_eq!(validate(&bad).len(), 2);
        let mut changed = c.clone();
        changed["reclaimPolicy"] = json!("Retain");
        assert_eq!(
            validate_update(&changed, &c)[0].message,
            "Forbidden: updates to reclaimPolicy are forbidden."
        );
    }
}
