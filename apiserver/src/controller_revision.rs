//! apps/v1 ControllerRevision (kubernetes/pkg/registry/apps/controllerrevision): the
//! immutable snapshots of a DaemonSet's (or StatefulSet's) template that `kubectl rollout
//! history/undo` read. `data` is required and never changes; `revision` is non-negative.

use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::strategy::{invalid, required};
use crate::table::{self, Table, age};

pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if obj["data"].is_null() {
        errs.push(FieldError {
            message: "Required value: data is mandatory".into(),
            ..required("data")
        });
    }
    if let Some(r) = obj["revision"].as_i64()
        && r < 0
    {
        errs.push(invalid(
            "revision",
            &r.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    errs
}

pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    if new["data"] != old["data"] {
        return vec![FieldError {
            field: "data".into(),
            value: String::new(),
            message: "Invalid value: field is immutable".into(),
        }];
    }
    Vec::new()
}

/// `kubectl get controllerrevisions`: NAME CONTROLLER REVISION AGE, the controller as
/// `daemonset.apps/NAME`.
pub fn table() -> Table {
    table::table(
        &[
            ("Controller", "string", 0),
            ("Revision", "integer", 0),
            ("Age", "string", 0),
        ],
        |o| {
            vec![
                json!(controller(o)),
                json!(o["revision"].as_i64().unwrap_or(0)),
                age(o),
            ]
        },
    )
}

fn controller(o: &Value) -> String {
    let owner = o["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["controller"] == true);
    let Some(r) = owner else {
        return "<none>".into();
    };
    let kind = r["kind"].as_str().unwrap_or_default().to_ascii_lowercase();
    let group = r["apiVersion"]
        .as_str()
        .and_then(|v| v.rsplit_once('/'))
        .map(|(g, _)| g)
        .unwrap_or("");
    let name = r["name"].as_str().unwrap_or_default();
    if group.is_empty() {
        format!("{kind}/{name}")
    } else {
        format!("{kind}.{group}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_names_its_controller_by_kind_and_group() {
        let o = json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "u", "controller": true}]}});
        assert_eq!(controller(&o), "daemonset.apps/agent");
        assert_eq!(controller(&json!({"metadata": {}})), "<none>");
    }

    #[test]
    fn data_is_required_and_immutable() {
        let v = json!({"metadata": {"name": "x-1"}, "revision": 1});
        assert_eq!(validate(&v)[0].message, "Required value: data is mandatory");
        let a = json!({"data": {"spec": {}}, "revision": 1});
        let mut b = a.clone();
        b["revision"] = json!(2);
        assert!(validate_update(&b, &a).is_empty());
        b["data"] = json!({"spec": {"template": {}}});
        assert_eq!(validate_update(&b, &a)[0].field, "data");
        assert!(!validate(&json!({"data": {}, "revision": -1})).is_empty());
    }
}
