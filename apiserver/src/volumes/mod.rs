//! Storage kinds (pkg/apis/core/validation and pkg/apis/storage): PersistentVolumeClaims,
//! PersistentVolumes and StorageClasses — validation, defaulting, Table columns — and the two
//! admission plugins that go with them: DefaultStorageClass (a claim without a class gets the
//! default one) and StorageObjectInUseProtection (claims and volumes are created with the
//! finalizer that keeps them while in use).

pub mod claim;
pub mod persistent_volume;
pub mod storage_class;

use capstan_api::validation::FieldError;
use serde_json::Value;

use crate::strategy::invalid;

/// The access modes a claim or volume may ask for.
const ACCESS_MODES: &[&str] = &[
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

/// `spec.accessModes`: at least one, each known; ReadWriteOncePod alone.
fn validate_access_modes(path: &str, modes: &Value, errs: &mut Vec<FieldError>) {
    let list = modes.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        errs.push(FieldError {
            field: path.into(),
            value: String::new(),
            message: "Required value: at least 1 access mode is required".into(),
        });
    }
    for m in list {
        let m = m.as_str().unwrap_or_default();
        if !ACCESS_MODES.contains(&m) {
            errs.push(invalid(
                path,
                m,
                "Unsupported value: supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"",
            ));
        }
    }
    if list.len() > 1 && list.iter().any(|m| m == "ReadWriteOncePod") {
        errs.push(FieldError {
            field: path.into(),
            value: String::new(),
            message: "Forbidden: may not use ReadWriteOncePod with other access modes".into(),
        });
    }
}

/// A storage quantity at `path`: present, parseable and positive.
fn validate_storage(path: &str, q: &Value, errs: &mut Vec<FieldError>) {
    match q.as_str().or(q.as_i64().map(|_| "")) {
        None => errs.push(FieldError {
            field: path.into(),
            value: String::new(),
            message: "Required value".into(),
        }),
        Some("") if q.is_number() => {
            if q.as_i64().is_some_and(|n| n <= 0) {
                errs.push(invalid(path, &q.to_string(), "must be greater than zero"));
            }
        }
        Some(s) => match capstan_api::quantity::parse(s, 1.0) {
            None => errs.push(invalid(
                path,
                s,
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            )),
            Some(n) if n <= 0 => errs.push(invalid(path, s, "must be greater than zero")),
            Some(_) => {}
        },
    }
}

/// `volumeMode`: Filesystem or Block.
fn validate_volume_mode(path: &str, mode: &Value, errs: &mut Vec<FieldError>) {
    if let Some(m) = mode.as_str()
        && !matches!(m, "Filesystem" | "Block")
    {
        errs.push(invalid(
            path,
            m,
            "Unsupported value: supported values: \"Block\", \"Filesystem\"",
        ));
    }
}

/// `ACCESS MODES` as kubectl prints them: RWO,ROX,RWX,RWOP.
fn access_modes_cell(modes: &Value) -> String {
    modes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Adds `finalizer` to a new object's finalizers (once).
fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let list = meta
        .entry("finalizers")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !list.is_array() {
        *list = Value::Array(Vec::new());
    }
    if let Some(a) = list.as_array_mut()
        && !a.iter().any(|f| f == finalizer)
    {
        a.push(Value::String(finalizer.into()));
    }
}

/// `spec` fields other than `allowed` must not change; one error naming them all.
fn immutable_except(
    path: &str,
    new: &Value,
    old: &Value,
    allowed: &[&str],
    message: &str,
) -> Option<FieldError> {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            for k in allowed {
                m.remove(*k);
            }
        }
        v
    };
    (strip(new) != strip(old)).then(|| FieldError {
        field: path.into(),
        value: String::new(),
        message: format!("Forbidden: {message}"),
    })
}
