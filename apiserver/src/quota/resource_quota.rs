//! core/v1 ResourceQuota (pkg/apis/core/validation `ValidateResourceQuota`, the printer's
//! REQUEST and LIMIT columns). Its status (`hard`, `used`) is the resource-quota
//! controller's, and the admission's ([`super::admission`]) as it charges creates.

use capstan_api::quota::{format, parse_list};
use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::strategy::invalid;
use crate::table::{self, Table, age};

const SCOPES: &[&str] = &[
    "Terminating",
    "NotTerminating",
    "BestEffort",
    "NotBestEffort",
    "PriorityClass",
    "CrossNamespacePodAffinity",
];

/// Scopes that select only pods without compute requests can only limit pod counts.
const BEST_EFFORT_RESOURCES: &[&str] = &["pods", "count/pods"];

pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let hard = &obj["spec"]["hard"];
    for (k, v) in hard.as_object().into_iter().flatten() {
        let field = format!("spec.hard[{k}]");
        if k.is_empty() || k.contains(char::is_whitespace) {
            errs.push(invalid(&field, k, "must be a standard resource for quota"));
        }
        match parse_list(&json!({k.clone(): v})).get(k) {
            None => errs.push(invalid(
                &field,
                &v.to_string(),
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            )),
            Some(n) if *n < 0 => errs.push(invalid(
                &field,
                v.as_str().unwrap_or_default(),
                "must be greater than or equal to 0",
            )),
            Some(_) => {}
        }
    }
    let mut scopes: Vec<String> = obj["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    for (i, e) in obj["spec"]["scopeSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("spec.scopeSelector.matchExpressions[{i}]");
        let name = e["scopeName"].as_str().unwrap_or("");
        let op = e["operator"].as_str().unwrap_or("");
        if !matches!(op, "In" | "NotIn" | "Exists" | "DoesNotExist") {
            errs.push(invalid(
                &format!("{at}.operator"),
                op,
                "Unsupported value: supported values: \"DoesNotExist\", \"Exists\", \"In\", \"NotIn\"",
            ));
        }
        let has_values = e["values"].as_array().is_some_and(|v| !v.is_empty());
        if matches!(op, "In" | "NotIn") && !has_values {
            errs.push(invalid(
                &format!("{at}.values"),
                "",
                "must be at least one value when `operator` is 'In' or 'NotIn' for scope selector",
            ));
        }
        if matches!(op, "Exists" | "DoesNotExist") && has_values {
            errs.push(invalid(
                &format!("{at}.values"),
                "",
                "must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector",
            ));
        }
        scopes.push(name.to_string());
    }
    for (i, s) in scopes.iter().enumerate() {
        if !SCOPES.contains(&s.as_str()) {
            errs.push(FieldError {
                field: format!("spec.scopes[{i}]"),
                value: s.clone(),
                message: "unsupported scope".into(),
            });
        }
    }
    let has = |s: &str| scopes.iter().any(|x| x == s);
    if has("Terminating") && has("NotTerminating") || has("BestEffort") && has("NotBestEffort") {
        errs.push(invalid(
            "spec.scopes",
            &scopes.join(","),
            "conflicting scopes",
        ));
    }
    if has("BestEffort") {
        for k in hard.as_object().into_iter().flatten().map(|(k, _)| k) {
            if !BEST_EFFORT_RESOURCES.contains(&k.as_str()) {
                errs.push(invalid(
                    &format!("spec.hard[{k}]"),
                    k,
                    "unsupported scope applied to resource",
                ));
            }
        }
    }
    errs
}

/// `kubectl get quota`: NAME AGE REQUEST LIMIT, each `resource: used/hard` from the status,
/// `limits.*` under LIMIT.
pub fn table() -> Table {
    table::table(
        &[
            ("Age", "string", 0),
            ("Request", "string", 0),
            ("Limit", "string", 0),
        ],
        |o| {
            let used = parse_list(&o["status"]["used"]);
            let hard = parse_list(&o["status"]["hard"]);
            let (mut request, mut limit) = (Vec::new(), Vec::new());
            let mut names: Vec<&String> = o["spec"]["hard"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
                .collect();
            names.sort();
            for n in names {
                let cell = format!(
                    "{n}: {}/{}",
                    format(n, used.get(n).copied().unwrap_or(0)),
                    format(n, hard.get(n).copied().unwrap_or(0))
                );
                if n.starts_with("limits.") {
                    limit.push(cell);
                } else {
                    request.push(cell);
                }
            }
            vec![age(o), json!(request.join(", ")), json!(limit.join(", "))]
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_are_checked_as_kubernetes_checks_them() {
        let ok = json!({"spec": {"hard": {"pods": "3", "requests.cpu": "1", "count/deployments.apps": 2}}});
        assert!(validate(&ok).is_empty(), "{:?}", validate(&ok));
        let bad = json!({"spec": {"hard": {"cpu": "-1", "memory": "lots"},
            "scopes": ["Terminating", "NotTerminating", "Sometimes"]}});
        let fields: Vec<String> = validate(&bad)
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        assert!(
            fields.contains(&"spec.hard[cpu]: must be greater than or equal to 0".to_string()),
            "{fields:?}"
        );
        assert!(
            fields
                .iter()
                .any(|f| f.starts_with("spec.hard[memory]: quantities")),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"spec.scopes[2]: unsupported scope".to_string()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"spec.scopes: conflicting scopes".to_string()),
            "{fields:?}"
        );
        let be = json!({"spec": {"hard": {"pods": "1", "cpu": "1"}, "scopes": ["BestEffort"]}});
        assert_eq!(validate(&be)[0].field, "spec.hard[cpu]");
    }

    #[test]
    fn the_columns_show_used_over_hard() {
        let q = json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "4", "requests.cpu": "1", "limits.memory": "1Gi"}},
            "status": {"hard": {"pods": "4", "requests.cpu": "1", "limits.memory": "1Gi"},
                "used": {"pods": "3", "requests.cpu": "300m", "limits.memory": "512Mi"}}});
        let row = crate::table::row(&table(), &q, None);
        assert_eq!(row["cells"][2], "pods: 3/4, requests.cpu: 300m/1");
        assert_eq!(row["cells"][3], "limits.memory: 512Mi/1Gi");
    }
}
