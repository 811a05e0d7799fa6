//! Kubernetes' defaulting of the built-in kinds, as kube-apiserver 1.33 applies it when it
//! decodes an object: the `SetDefaults_*` functions of `pkg/apis/core/v1/defaults.go`, `apps/v1`,
//! `autoscaling/v2`, `discovery/v1` and kube-aggregator's `apiregistration/v1`, and the
//! declarative `+default=` markers of `k8s.io/api` (what `zz_generated.defaults.go` calls). Start
//! at a kind's function: [`pod::pod`], [`apps::deployment`], [`service::service`] …
//!
//! Each function works on the object as JSON, in place, and only fills what is unset — in Go's
//! sense: a string field is unset when absent, null or `""`, an integer field (not a pointer) when
//! 0, a pointer when absent or null. A value of the wrong type is left for validation to refuse.
//! The API server runs these on every write (create, update, patch, apply) before validation and
//! on every read, as kube-apiserver defaults whatever it decodes, from a request or from etcd.
//!
//! What the API server settles elsewhere is not here: a pod's status and QoS class, a Service's
//! ClusterIP and IP families, a namespace's finalizer (the REST strategies' PrepareForCreate).

pub mod apiregistration;
pub mod apps;
pub mod autoscaling;
pub mod batch;
pub mod core;
pub mod pod;
pub mod service;

use serde_json::{Map, Value};

type Object = Map<String, Value>;

/// Go's unset string: absent, null or empty.
fn unset_str(m: &Object, key: &str) -> bool {
    match m.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    }
}

/// Sets a string field Go would see as "" (absent, null or empty).
fn default_str(m: &mut Object, key: &str, value: &str) {
    if unset_str(m, key) {
        m.insert(key.into(), Value::String(value.into()));
    }
}

/// Sets a pointer field Go would see as nil (absent or null).
fn default_ptr(m: &mut Object, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.into(), value);
    }
}

/// Sets a non-pointer integer Go would see as 0 (absent, null or 0).
fn default_int(m: &mut Object, key: &str, value: i64) {
    if m.get(key)
        .is_none_or(|v| v.is_null() || v.as_i64() == Some(0))
    {
        m.insert(key.into(), Value::from(value));
    }
}

/// The object at `key`, made `{}` when absent or null (a nil struct pointer given its zero
/// value); None when it holds something else.
fn object_at<'a>(m: &'a mut Object, key: &str) -> Option<&'a mut Object> {
    default_ptr(m, key, Value::Object(Map::new()));
    m.get_mut(key).and_then(Value::as_object_mut)
}

/// The object at `key` when there is one.
fn existing<'a>(m: &'a mut Object, key: &str) -> Option<&'a mut Object> {
    m.get_mut(key).and_then(Value::as_object_mut)
}

/// An object's `spec`, made `{}` when absent (Go's spec structs are values, never nil).
fn spec(obj: &mut Value) -> Option<&mut Object> {
    object_at(obj.as_object_mut()?, "spec")
}

/// The objects of the list at `key` (none when there is no list).
fn each<'a>(m: &'a mut Object, key: &str) -> impl Iterator<Item = &'a mut Object> {
    m.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// The declarative defaults (`+default=` in k8s.io/api 1.33) that kube-apiserver's OpenAPI
/// documents carry as a schema `default`: (schema, property, value). The `SetDefaults_*` ones
/// (imagePullPolicy, replicas, …) are computed, so Kubernetes' schemas do not show them, and
/// neither do Capstan's.
pub fn openapi_defaults() -> Vec<(&'static str, &'static str, Value)> {
    use serde_json::json;
    vec![
        ("io.k8s.api.core.v1.ContainerPort", "protocol", json!("TCP")),
        ("io.k8s.api.core.v1.ServicePort", "protocol", json!("TCP")),
        ("io.k8s.api.core.v1.GRPCAction", "service", json!("")),
        ("io.k8s.api.core.v1.LocalObjectReference", "name", json!("")),
        ("io.k8s.api.core.v1.RBDVolumeSource", "pool", json!("rbd")),
        ("io.k8s.api.core.v1.RBDVolumeSource", "user", json!("admin")),
        (
            "io.k8s.api.core.v1.RBDVolumeSource",
            "keyring",
            json!("/etc/ceph/keyring"),
        ),
        (
            "io.k8s.api.core.v1.ISCSIVolumeSource",
            "iscsiInterface",
            json!("default"),
        ),
        (
            "io.k8s.api.core.v1.AzureDiskVolumeSource",
            "cachingMode",
            json!("ReadWrite"),
        ),
        (
            "io.k8s.api.core.v1.AzureDiskVolumeSource",
            "fsType",
            json!("ext4"),
        ),
        (
            "io.k8s.api.core.v1.AzureDiskVolumeSource",
            "readOnly",
            json!(false),
        ),
        (
            "io.k8s.api.core.v1.AzureDiskVolumeSource",
            "kind",
            json!("Shared"),
        ),
        (
            "io.k8s.api.core.v1.ScaleIOVolumeSource",
            "storageMode",
            json!("ThinProvisioned"),
        ),
        (
            "io.k8s.api.core.v1.ScaleIOVolumeSource",
            "fsType",
            json!("xfs"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn go_zero_values_count_as_unset_and_everything_else_is_kept() {
        let cases = [
            (json!({}), json!("d")),
            (json!({"f": null}), json!("d")),
            (json!({"f": ""}), json!("d")),
            (json!({"f": "given"}), json!("given")),
            (json!({"f": 7}), json!(7)),
        ];
        for (given, want) in cases {
            let mut m = obj(given.clone());
            default_str(&mut m, "f", "d");
            assert_eq!(m["f"], want, "default_str on {given}");
        }
        let cases = [
            (json!({}), json!(5)),
            (json!({"f": null}), json!(5)),
            (json!({"f": 0}), json!(5)),
            (json!({"f": 3}), json!(3)),
        ];
        for (given, want) in cases {
            let mut m = obj(given.clone());
            default_int(&mut m, "f", 5);
            assert_eq!(m["f"], want, "default_int on {given}");
        }
        // A pointer set to its zero value is set: only nil is defaulted.
        let mut m = obj(json!({"f": 0}));
        default_ptr(&mut m, "f", json!(5));
        assert_eq!(m["f"], 0);
    }

    #[test]
    fn object_at_gives_a_nil_struct_its_zero_value_but_not_a_wrong_type() {
        let mut m = obj(json!({"a": null, "b": "x"}));
        assert!(object_at(&mut m, "a").is_some());
        assert_eq!(m["a"], json!({}));
        assert!(object_at(&mut m, "b").is_none());
        assert_eq!(m["b"], "x");
    }
}
