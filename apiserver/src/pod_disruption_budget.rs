//! policy/v1 PodDisruptionBudget validation (kubernetes/pkg/apis/policy/validation): one of
//! minAvailable and maxUnavailable, each a non-negative integer or a percentage of at most
//! 100%; a valid selector; unhealthyPodEvictionPolicy IfHealthyBudget or AlwaysAllow.
//! Its status is the disruption controller's; pods/eviction reads it
//! ([`crate::rest::pod_eviction`]).

use capstan_api::validation::FieldError;
use serde_json::Value;

fn err(field: &str, value: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        value: value.into(),
        message: message.into(),
    }
}

/// ValidatePositiveIntOrPercent and IsNotMoreThan100Percent.
pub(crate) fn int_or_percent(field: &str, v: &Value, errs: &mut Vec<FieldError>) {
    match v {
        Value::Null => {}
        Value::Number(n) => {
            if n.as_i64().is_none_or(|i| i < 0) {
                errs.push(err(
                    field,
                    &n.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
        }
        Value::String(s) => {
            let pct = s
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u64>().ok());
            match pct {
                None => errs.push(err(field, s, "must be an integer or percentage (e.g '5%')")),
                Some(p) if p > 100 => errs.push(err(field, s, "must not be greater than 100%")),
                Some(_) => {}
            }
        }
        other => errs.push(err(
            field,
            &other.to_string(),
            "must be an integer or percentage (e.g '5%')",
        )),
    }
}

pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &obj["spec"];
    let (min, max) = (&spec["minAvailable"], &spec["maxUnavailable"]);
    if !min.is_null() && !max.is_null() {
        errs.push(err(
            "spec",
            "",
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    int_or_percent("spec.minAvailable", min, &mut errs);
    int_or_percent("spec.maxUnavailable", max, &mut errs);
    if let Some(sel) = spec.get("selector").filter(|s| !s.is_null()) {
        let parsed = serde_json::from_value(sel.clone())
            .map_err(|e| e.to_string())
            .and_then(|ls| {
                capstan_api::Selector::from_label_selector(&ls).map_err(|e| e.to_string())
            });
        if let Err(e) = parsed {
            errs.push(err("spec.selector", "", e));
        }
    }
    if let Some(p) = spec["unhealthyPodEvictionPolicy"].as_str()
        && !matches!(p, "IfHealthyBudget" | "AlwaysAllow")
    {
        errs.push(err(
            "spec.unhealthyPodEvictionPolicy",
            "",
            format!(
                "Unsupported value: \"{p}\": supported values: \"AlwaysAllow\", \"IfHealthyBudget\""
            ),
        ));
    }
    for f in [
        "currentHealthy",
        "desiredHealthy",
        "expectedPods",
        "disruptionsAllowed",
    ] {
        if obj["status"][f].as_i64().is_some_and(|v| v < 0) {
            errs.push(err(
                &format!("status.{f}"),
                &obj["status"][f].to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(spec: Value) -> Vec<String> {
        validate(&json!({"spec": spec}))
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn budgets_are_validated_as_kubernetes_does() {
        assert!(
            messages(json!({"minAvailable": 2, "selector": {"matchLabels": {"a": "b"}}}))
                .is_empty()
        );
        assert!(messages(json!({"maxUnavailable": "25%"})).is_empty());
        assert_eq!(
            messages(json!({"minAvailable": 1, "maxUnavailable": 1})),
            vec!["spec: minAvailable and maxUnavailable cannot be both set"]
        );
        assert_eq!(
            messages(json!({"minAvailable": -1})),
            vec!["spec.minAvailable: must be greater than or equal to 0"]
        );
        assert_eq!(
            messages(json!({"maxUnavailable": "150%"})),
            vec!["spec.maxUnavailable: must not be greater than 100%"]
        );
        assert_eq!(
            messages(json!({"minAvailable": "half"})),
            vec!["spec.minAvailable: must be an integer or percentage (e.g '5%')"]
        );
        assert_eq!(
            messages(json!({"unhealthyPodEvictionPolicy": "Never"})).len(),
            1
        );
        assert_eq!(
            messages(json!({"selector": {"matchExpressions": [{"key": "a", "operator": "Bad"}]}}))
                .len(),
            1
        );
    }
}
