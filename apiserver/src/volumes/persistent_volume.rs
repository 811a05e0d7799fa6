//! core/v1 PersistentVolumes: validation (`ValidatePersistentVolume[Update]`), defaults,
//! `kubectl get pv` columns, and the `kubernetes.io/pv-protection` finalizer every new volume
//! gets (StorageObjectInUseProtection).

use capstan_api::validation::{self, FieldError};
use serde_json::{Value, json};

use super::{access_modes_cell, add_finalizer, validate_access_modes, validate_storage};
use crate::object::ObjectExt;
use crate::strategy::{invalid, required};
use crate::table::{self, Table, age};

/// The finalizer that keeps a volume while a claim is bound to it.
pub const PROTECTION: &str = "kubernetes.io/pv-protection";

/// The volume sources a PersistentVolume may name (`PersistentVolumeSource`).
const SOURCES: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "csi",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "glusterfs",
    "hostPath",
    "iscsi",
    "local",
    "nfs",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
];

pub fn on_create(obj: &mut Value) {
    add_finalizer(obj, PROTECTION);
}

pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &obj["spec"];
    validate_access_modes("spec.accessModes", &spec["accessModes"], &mut errs);
    if spec["capacity"].is_null() {
        errs.push(required("spec.capacity"));
    } else {
        validate_storage(
            "spec.capacity[storage]",
            &spec["capacity"]["storage"],
            &mut errs,
        );
    }
    let sources: Vec<&str> = SOURCES
        .iter()
        .copied()
        .filter(|s| !spec[*s].is_null())
        .collect();
    match sources.as_slice() {
        [] => errs.push(FieldError {
            field: "spec".into(),
            value: String::new(),
            message: "Required value: must specify a volume type".into(),
        }),
        [one] => {
            let path = &spec[*one]["path"];
            if matches!(*one, "hostPath" | "local") {
                match path.as_str() {
                    None | Some("") => errs.push(required(&format!("spec.{one}.path"))),
                    Some(p) if !p.starts_with('/') || p.split('/').any(|c| c == "..") => {
                        errs.push(invalid(
                            &format!("spec.{one}.path"),
                            p,
                            "must be an absolute path without '..'",
                        ))
                    }
                    Some(_) => {}
                }
            }
            if *one == "local" && spec["nodeAffinity"].is_null() {
                errs.push(FieldError {
                    field: "spec.nodeAffinity".into(),
                    value: String::new(),
                    message: "Required value: Local volumes require node affinity".into(),
                });
            }
        }
        [_, second, ..] => errs.push(FieldError {
            field: format!("spec.{second}"),
            value: String::new(),
            message: "Forbidden: may not specify more than 1 volume type".into(),
        }),
    }
    if let Some(p) = spec["persistentVolumeReclaimPolicy"].as_str()
        && !matches!(p, "Retain" | "Delete" | "Recycle")
    {
        errs.push(invalid(
            "spec.persistentVolumeReclaimPolicy",
            p,
            "Unsupported value: supported values: \"Delete\", \"Recycle\", \"Retain\"",
        ));
    }
    if let Some(class) = spec["storageClassName"].as_str()
        && !class.is_empty()
        && let Err(m) = validation::dns1123_subdomain(class)
    {
        errs.push(invalid("spec.storageClassName", class, m));
    }
    super::validate_volume_mode("spec.volumeMode", &spec["volumeMode"], &mut errs);
    errs
}

/// The source never changes; node affinity may only be set where there was none.
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let source = |o: &Value| {
        SOURCES
            .iter()
            .map(|s| o["spec"][*s].clone())
            .collect::<Vec<_>>()
    };
    if source(new) != source(old) {
        errs.push(FieldError {
            field: "spec.persistentvolumesource".into(),
            value: String::new(),
            message: "Forbidden: spec.persistentvolumesource is immutable after creation".into(),
        });
    }
    if !old["spec"]["nodeAffinity"].is_null()
        && new["spec"]["nodeAffinity"] != old["spec"]["nodeAffinity"]
    {
        errs.push(FieldError {
            field: "spec.nodeAffinity".into(),
            value: String::new(),
            message: "Invalid value: field is immutable".into(),
        });
    }
    errs
}

/// `kubectl get pv`: NAME CAPACITY ACCESS MODES RECLAIM POLICY STATUS CLAIM STORAGECLASS
/// VOLUMEATTRIBUTESCLASS REASON AGE, and VOLUMEMODE with `-o wide`.
pub fn table() -> Table {
    table::table(
        &[
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("Reclaim Policy", "string", 0),
            ("Status", "string", 0),
            ("Claim", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Reason", "string", 0),
            ("Age", "string", 0),
            ("VolumeMode", "string", 1),
        ],
        |o| {
            let (spec, status) = (&o["spec"], &o["status"]);
            let claim = match (
                spec["claimRef"]["namespace"].as_str(),
                spec["claimRef"]["name"].as_str(),
            ) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                _ => String::new(),
            };
            let phase = if o.meta_str("deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else {
                table::s(&status["phase"])
            };
            vec![
                json!(table::s(&spec["capacity"]["storage"])),
                json!(access_modes_cell(&spec["accessModes"])),
                json!(table::s(&spec["persistentVolumeReclaimPolicy"])),
                json!(phase),
                json!(claim),
                json!(table::s(&spec["storageClassName"])),
                json!(
                    spec["volumeAttributesClassName"]
                        .as_str()
                        .unwrap_or("<unset>")
                ),
                json!(table::s(&status["reason"])),
                age(o),
                json!(spec["volumeMode"].as_str().unwrap_or("Filesystem")),
            ]
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(source: Value) -> Value {
        let mut v = json!({"metadata": {"name": "pv-1"}, "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}});
        for (k, s) in source.as_object().unwrap() {
            v["spec"][k] = s.clone();
        }
        capstan_api::defaults::core::persistent_volume(&mut v);
        v
    }

    fn msgs(errs: &[FieldError]) -> Vec<String> {
        errs.iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn a_volume_has_exactly_one_source_and_local_ones_a_node() {
        assert!(validate(&pv(json!({"hostPath": {"path": "/data/a"}}))).is_empty());
        assert_eq!(
            pv(json!({}))["spec"]["persistentVolumeReclaimPolicy"],
            "Retain"
        );
        assert_eq!(
            msgs(&validate(&pv(json!({})))),
            ["spec: Required value: must specify a volume type"]
        );
        assert_eq!(
            msgs(&validate(&pv(
                json!({"hostPath": {"path": "/a"}, "nfs": {"server": "x", "path": "/"}})
            ))),
            ["spec.nfs: Forbidden: may not specify more than 1 volume type"]
        );
        assert_eq!(
            msgs(&validate(&pv(json!({"local": {"path": "rel/../x"}})))),
            [
                "spec.local.path: must be an absolute path without '..'",
                "spec.nodeAffinity: Required value: Local volumes require node affinity"
            ]
        );
    }

    #[test]
    fn the_source_is_immutable() {
        let old = pv(json!({"hostPath": {"path": "/a"}}));
        let mut new = old.clone();
        new["spec"]["persistentVolumeReclaimPolicy"] = json!("Delete");
        assert!(validate_update(&new, &old).is_empty());
        new["spec"]["hostPath"]["path"] = json!("/b");
        assert_eq!(
            msgs(&validate_update(&new, &old)),
            [
                "spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is immutable after creation"
            ]
        );
    }
}
