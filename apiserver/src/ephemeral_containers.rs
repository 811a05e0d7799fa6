//! Ephemeral containers (`kubectl debug`): added to a running pod only through the
//! `pods/ephemeralcontainers` subresource, never changed or removed once added, and without the
//! fields a long-running container has (kube-apiserver's `validateEphemeralContainers` and
//! `ValidatePodEphemeralContainersUpdate`).

use std::collections::BTreeSet;

use capstan_api::validation::{self, FieldError};
use serde_json::{Value, json};

/// The pod path the subresource writes.
pub const PATH: &[&str] = &["spec", "ephemeralContainers"];

/// Fields an ephemeral container may not set (Kubernetes: "cannot be set for an Ephemeral
/// Container").
const FORBIDDEN: &[&str] = &[
    "ports",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "resources",
    "resizePolicy",
    "restartPolicy",
];

fn list(spec: &Value, key: &str) -> Vec<Value> {
    spec[key].as_array().cloned().unwrap_or_default()
}

/// Checks a pod spec's ephemeral containers: a valid name unique among all the pod's containers,
/// an image, none of the forbidden fields, a targetContainerName naming a container.
pub fn validate(spec: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut names: BTreeSet<String> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| list(spec, k))
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let regular = names.clone();
    for (i, c) in list(spec, "ephemeralContainers").iter().enumerate() {
        let path = format!("spec.ephemeralContainers[{i}]");
        let name = c["name"].as_str().unwrap_or_default();
        if let Err(m) = validation::dns1123_label(name) {
            errs.push(FieldError {
                field: format!("{path}.name"),
                value: name.into(),
                message: m,
            });
        } else if !names.insert(name.to_string()) {
            errs.push(FieldError {
                field: format!("{path}.name"),
                value: name.into(),
                message: "Duplicate value".into(),
            });
        }
        if c["image"].as_str().is_none_or(str::is_empty) {
            errs.push(FieldError {
                field: format!("{path}.image"),
                value: String::new(),
                message: "Required value".into(),
            });
        }
        for f in FORBIDDEN {
            // Set means not Go's zero value: `resources` is a struct, so `{}` (which defaulting
            // gives every container) is unset.
            let zero = |v: &Value| v.is_null() || (*f == "resources" && v == &json!({}));
            if c.get(*f).is_some_and(|v| !zero(v)) {
                errs.push(FieldError {
                    field: format!("{path}.{f}"),
                    value: String::new(),
                    message: "Forbidden: cannot be set for an Ephemeral Container".into(),
                });
            }
        }
        if let Some(target) = c["targetContainerName"].as_str()
            && !target.is_empty()
            && !regular.contains(target)
        {
            errs.push(FieldError {
                field: format!("{path}.targetContainerName"),
                value: target.into(),
                message: "Not found: target container not found".into(),
            });
        }
    }
    errs
}

/// An update keeps every ephemeral container the pod had, unchanged: they can only be added.
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let now = list(&new["spec"], "ephemeralContainers");
    let mut errs = Vec::new();
    for before in list(&old["spec"], "ephemeralContainers") {
        let name = before["name"].as_str().unwrap_or_default();
        match now.iter().position(|c| c["name"] == before["name"]) {
            None => errs.push(FieldError {
                field: "spec.ephemeralContainers".into(),
                value: name.into(),
                message: "Forbidden: existing ephemeral containers may not be removed".into(),
            }),
            Some(i) if now[i] != before => errs.push(FieldError {
                field: format!("spec.ephemeralContainers[{i}]"),
                value: name.into(),
                message: "Forbidden: existing ephemeral containers may not be changed".into(),
            }),
            Some(_) => {}
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(ephemeral: Value) -> Value {
        json!({"spec": {"containers": [{"name": "app", "image": "x"}], "ephemeralContainers": ephemeral}})
    }

    #[test]
    fn a_debug_container_is_valid_and_long_running_fields_are_forbidden() {
        let ok = pod(
            json!([{"name": "debugger", "image": "busybox", "targetContainerName": "app", "stdin": true, "tty": true}]),
        );
        assert!(validate(&ok["spec"]).is_empty());
        let defaulted = pod(json!([{"name": "debugger", "image": "busybox", "resources": {}}]));
        assert!(
            validate(&defaulted["spec"]).is_empty(),
            "resources: {{}} is unset"
        );
        let limited = pod(json!([{"name": "debugger", "image": "busybox",
            "resources": {"limits": {"cpu": "1"}}}]));
        assert_eq!(validate(&limited["spec"]).len(), 1);
        let bad = pod(
            json!([{"name": "app", "image": "", "ports": [{"containerPort": 80}], "targetContainerName": "nope"}]),
        );
        let fields: Vec<String> = validate(&bad["spec"])
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.ephemeralContainers[0].name",
                "spec.ephemeralContainers[0].image",
                "spec.ephemeralContainers[0].ports",
                "spec.ephemeralContainers[0].targetContainerName",
            ]
        );
    }

    #[test]
    fn ephemeral_containers_are_only_ever_added() {
        let one = pod(json!([{"name": "d1", "image": "busybox"}]));
        let two =
            pod(json!([{"name": "d1", "image": "busybox"}, {"name": "d2", "image": "busybox"}]));
        assert!(validate_update(&two, &one).is_empty());
        assert_eq!(validate_update(&pod(json!([])), &one).len(), 1);
        let changed = pod(json!([{"name": "d1", "image": "alpine"}]));
        assert!(
            validate_update(&changed, &one)[0]
                .message
                .contains("may not be changed")
        );
    }
}
