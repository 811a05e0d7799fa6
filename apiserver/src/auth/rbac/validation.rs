//! Validation of the RBAC kinds, as Kubernetes' rbac validation: every rule has verbs and
//! either resources (with apiGroups) or nonResourceURLs (never both, and URLs only in
//! ClusterRoles); a binding's roleRef names a Role or ClusterRole of this group and never
//! changes; subjects are Users, Groups or ServiceAccounts (these with a namespace).

use capstan_api::validation::FieldError;
use serde_json::Value;

use super::GROUP;

fn err(field: String, value: &str, message: &str) -> FieldError {
    FieldError {
        field,
        value: value.to_string(),
        message: message.to_string(),
    }
}

fn non_empty_list(v: &Value) -> bool {
    v.as_array().is_some_and(|a| !a.is_empty())
}

fn rules(obj: &Value, cluster: bool) -> Vec<FieldError> {
    let mut out = Vec::new();
    for (i, r) in obj["rules"].as_array().into_iter().flatten().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        if !non_empty_list(&r["verbs"]) {
            out.push(err(
                at("verbs"),
                "",
                "Required value: verbs must contain at least one value",
            ));
        }
        let has_urls = non_empty_list(&r["nonResourceURLs"]);
        let has_resources = non_empty_list(&r["resources"]);
        if has_urls {
            if !cluster {
                out.push(err(
                    at("nonResourceURLs"),
                    "",
                    "Invalid value: namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if has_resources || non_empty_list(&r["apiGroups"]) {
                out.push(err(at("nonResourceURLs"), "", "Invalid value: rules cannot apply to both regular resources and non-resource URLs"));
            }
            continue;
        }
        if !has_resources {
            out.push(err(
                at("resources"),
                "",
                "Required value: resource rules must supply at least one resource",
            ));
        }
        if !non_empty_list(&r["apiGroups"]) {
            out.push(err(
                at("apiGroups"),
                "",
                "Required value: resource rules must supply at least one api group",
            ));
        }
    }
    out
}

/// Roles: rules without non-resource URLs.
pub fn role(obj: &Value) -> Vec<FieldError> {
    rules(obj, false)
}

/// ClusterRoles.
pub fn cluster_role(obj: &Value) -> Vec<FieldError> {
    rules(obj, true)
}

fn binding(obj: &Value, cluster: bool) -> Vec<FieldError> {
    let mut out = Vec::new();
    let rr = &obj["roleRef"];
    if rr["apiGroup"].as_str() != Some(GROUP) {
        out.push(err(
            "roleRef.apiGroup".into(),
            rr["apiGroup"].as_str().unwrap_or_default(),
            &format!("Unsupported value: supported values: \"{GROUP}\""),
        ));
    }
    match rr["kind"].as_str() {
        Some("ClusterRole") => {}
        Some("Role") if !cluster => {}
        other => out.push(err(
            "roleRef.kind".into(),
            other.unwrap_or_default(),
            if cluster {
                "Unsupported value: supported values: \"ClusterRole\""
            } else {
                "Unsupported value: supported values: \"Role\", \"ClusterRole\""
            },
        )),
    }
    match rr["name"].as_str() {
        Some(n) if !n.is_empty() => {
            if let Err(e) = crate::object::path_segment(n) {
                out.push(err(
                    "roleRef.name".into(),
                    n,
                    &format!("Invalid value: {e}"),
                ));
            }
        }
        _ => out.push(err("roleRef.name".into(), "", "Required value")),
    }
    for (i, s) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
        let at = |f: &str| format!("subjects[{i}].{f}");
        let name = s["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            out.push(err(at("name"), "", "Required value"));
        }
        match s["kind"].as_str() {
            Some("User") | Some("Group") => {
                if s["apiGroup"].as_str() != Some(GROUP) {
                    out.push(err(
                        at("apiGroup"),
                        s["apiGroup"].as_str().unwrap_or_default(),
                        &format!("Unsupported value: supported values: \"{GROUP}\""),
                    ));
                }
            }
            Some("ServiceAccount") => {
                if s["apiGroup"].as_str().is_some_and(|g| !g.is_empty()) {
                    out.push(err(
                        at("apiGroup"),
                        s["apiGroup"].as_str().unwrap_or_default(),
                        "Unsupported value: supported values: \"\"",
                    ));
                }
                if cluster && s["namespace"].as_str().is_none_or(str::is_empty) {
                    out.push(err(at("namespace"), "", "Required value"));
                }
            }
            other => out.push(err(
                at("kind"),
                other.unwrap_or_default(),
                "Unsupported value: supported values: \"ServiceAccount\", \"User\", \"Group\"",
            )),
        }
    }
    out
}

/// RoleBindings.
pub fn role_binding(obj: &Value) -> Vec<FieldError> {
    binding(obj, false)
}

/// ClusterRoleBindings.
pub fn cluster_role_binding(obj: &Value) -> Vec<FieldError> {
    binding(obj, true)
}

/// Updates of either binding: the roleRef never changes (delete and recreate instead).
pub fn binding_update(new: &Value, live: &Value) -> Vec<FieldError> {
    if new["roleRef"] != live["roleRef"] {
        return vec![err(
            "roleRef".into(),
            "",
            "Invalid value: cannot change roleRef",
        )];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(errs: Vec<FieldError>) -> Vec<String> {
        errs.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn rules_and_bindings_are_checked_as_kubernetes_checks_them() {
        let ok = json!({"rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}, {"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]});
        assert!(cluster_role(&ok).is_empty());
        assert_eq!(fields(role(&ok)), ["rules[1].nonResourceURLs"]);
        let bad = json!({"rules": [{"verbs": [], "resources": ["pods"]}, {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "nonResourceURLs": ["/x"]}]});
        assert_eq!(
            fields(cluster_role(&bad)),
            [
                "rules[0].verbs",
                "rules[0].apiGroups",
                "rules[1].nonResourceURLs"
            ]
        );

        let b = json!({"roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "r"},
            "subjects": [{"kind": "User", "apiGroup": GROUP, "name": "jane"}, {"kind": "ServiceAccount", "name": "default"}]});
        assert!(role_binding(&b).is_empty());
        assert_eq!(
            fields(cluster_role_binding(&b)),
            ["roleRef.kind", "subjects[1].namespace"]
        );
        let b = json!({"roleRef": {"apiGroup": "x", "kind": "Thing", "name": ""}, "subjects": [{"kind": "Robot", "name": ""}]});
        assert_eq!(
            fields(role_binding(&b)),
            [
                "roleRef.apiGroup",
                "roleRef.kind",
                "roleRef.name",
                "subjects[0].name",
                "subjects[0].kind"
            ]
        );
        let live = json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "view"}});
        let new = json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "edit"}});
        assert_eq!(fields(binding_update(&new, &live)), ["roleRef"]);
        assert!(binding_update(&live, &live).is_empty());
    }
}
