//! The other core/v1 kinds with defaults: Namespaces, Secrets, Nodes, PersistentVolumes and
//! PersistentVolumeClaims. (ConfigMaps' only
//! default, a non-nil empty `data`, never shows: Go omits an empty map.)

use serde_json::{Value, json};

use super::{Object, default_str, existing, object_at};

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `SetDefaults_Namespace` and `_NamespaceStatus`: the `kubernetes.io/metadata.name` label is
/// the namespace's name (always: a different value is overwritten), and the phase is Active.
/// A namespace without a name yet (generateName) gets its label once it is named.
pub fn namespace(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    let name = o
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    if let Some(name) = name
        && let Some(labels) = object_at(o, "metadata").and_then(|m| object_at(m, "labels"))
    {
        labels.insert(NAMESPACE_NAME_LABEL.into(), json!(name));
    }
    if let Some(status) = object_at(o, "status") {
        default_str(status, "phase", "Active");
    }
}

/// `SetDefaults_Secret`: type Opaque.
pub fn secret(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        default_str(o, "type", "Opaque");
    }
}

/// `SetDefaults_NodeStatus`: a node that reports capacity but no allocatable can allocate all of
/// its capacity. And the pod ranges agree, as Kubernetes' conversion keeps them: `podCIDRs`
/// from a lone `podCIDR`, `podCIDR` from the first of `podCIDRs`.
pub fn node(obj: &mut Value) {
    if let Some(spec) = obj.as_object_mut().and_then(|o| existing(o, "spec")) {
        let single = spec.get("podCIDR").and_then(Value::as_str).unwrap_or("");
        let first = spec
            .get("podCIDRs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or("");
        if first.is_empty() && !single.is_empty() {
            let single = single.to_string();
            spec.insert("podCIDRs".into(), json!([single]));
        } else if single.is_empty() && !first.is_empty() {
            let first = first.to_string();
            spec.insert("podCIDR".into(), Value::String(first));
        }
    }
    let Some(status) = obj.as_object_mut().and_then(|o| existing(o, "status")) else {
        return;
    };
    let capacity = status.get("capacity").filter(|c| !c.is_null()).cloned();
    if let Some(capacity) = capacity
        && status.get("allocatable").is_none_or(Value::is_null)
    {
        status.insert("allocatable".into(), capacity);
    }
}

/// `SetDefaults_PersistentVolumeClaim[Spec]`: Filesystem mode, phase Pending.
pub fn persistent_volume_claim(obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        claim(m);
    }
}

/// A claim's (or a StatefulSet's claim template's) defaults.
pub(super) fn claim(m: &mut Object) {
    if let Some(s) = object_at(m, "spec") {
        default_str(s, "volumeMode", "Filesystem");
    }
    if let Some(status) = object_at(m, "status") {
        default_str(status, "phase", "Pending");
    }
}

/// `SetDefaults_PersistentVolume`: reclaim Retain, Filesystem mode, phase Pending.
pub fn persistent_volume(obj: &mut Value) {
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    if let Some(s) = object_at(m, "spec") {
        default_str(s, "persistentVolumeReclaimPolicy", "Retain");
        default_str(s, "volumeMode", "Filesystem");
    }
    if let Some(status) = object_at(m, "status") {
        default_str(status, "phase", "Pending");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_labelled_with_its_name_and_active() {
        let cases = [
            (
                json!({"metadata": {"name": "team"}}),
                json!({"metadata": {"name": "team", "labels": {NAMESPACE_NAME_LABEL: "team"}},
                    "status": {"phase": "Active"}}),
            ),
            (
                json!({"metadata": {"name": "team", "labels": {"a": "b", NAMESPACE_NAME_LABEL: "other"}},
                    "status": {"phase": "Terminating"}}),
                json!({"metadata": {"name": "team", "labels": {"a": "b", NAMESPACE_NAME_LABEL: "team"}},
                    "status": {"phase": "Terminating"}}),
            ),
            (
                json!({"metadata": {"generateName": "team-"}}),
                json!({"metadata": {"generateName": "team-"}, "status": {"phase": "Active"}}),
            ),
        ];
        for (given, want) in cases {
            let mut ns = given.clone();
            namespace(&mut ns);
            assert_eq!(ns, want, "namespace {given}");
        }
    }

    #[test]
    fn a_secret_is_opaque_unless_typed() {
        let mut s = json!({"data": {}});
        secret(&mut s);
        assert_eq!(s["type"], "Opaque");
        let mut tls = json!({"type": "kubernetes.io/tls"});
        secret(&mut tls);
        assert_eq!(tls["type"], "kubernetes.io/tls");
    }

    #[test]
    fn a_nodes_allocatable_defaults_to_its_capacity() {
        let mut n = json!({"status": {"capacity": {"cpu": "4", "pods": "110"}}});
        node(&mut n);
        assert_eq!(
            n["status"]["allocatable"],
            json!({"cpu": "4", "pods": "110"})
        );
        let mut given = json!({"status": {"capacity": {"cpu": "4"}, "allocatable": {"cpu": "3"}}});
        node(&mut given);
        assert_eq!(given["status"]["allocatable"], json!({"cpu": "3"}));
        let mut bare = json!({"spec": {}});
        node(&mut bare);
        assert_eq!(bare, json!({"spec": {}}));
    }
}
