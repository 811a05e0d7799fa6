//! autoscaling/v2 HorizontalPodAutoscaler validation (kubernetes/pkg/apis/autoscaling/validation):
//! the replica bounds, the target reference, each metric (exactly its own source set, a
//! metric name that is a path segment, a target of the right type, positive values) and the
//! behavior's rules (stabilization 0–3600 s, Max/Min/Disabled, at least one policy of Pods or
//! Percent with a positive value over 1–1800 s). Run after defaulting, as Kubernetes runs it.

use capstan_api::validation::FieldError;
use serde_json::Value;

fn err(field: &str, value: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        value: value.into(),
        message: message.into(),
    }
}

fn required(field: &str, message: &str) -> FieldError {
    err(field, "", format!("Required value: {message}"))
}

fn forbidden(field: &str, message: &str) -> FieldError {
    err(field, "", format!("Forbidden: {message}"))
}

fn unsupported(field: &str, value: &str, supported: &[&str]) -> FieldError {
    let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    err(
        field,
        "",
        format!(
            "Unsupported value: \"{value}\": supported values: {}",
            list.join(", ")
        ),
    )
}

/// `IsValidPathSegmentName`: not `.` or `..`, no `/` or `%`.
fn path_segment(field: &str, name: &str, errs: &mut Vec<FieldError>) {
    if name == "." || name == ".." {
        errs.push(err(field, name, format!("may not be '{name}'")));
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            errs.push(err(field, name, format!("may not contain '{bad}'")));
        }
    }
}

fn object_reference(r: &Value, path: &str, errs: &mut Vec<FieldError>) {
    for key in ["kind", "name"] {
        match r[key].as_str().filter(|s| !s.is_empty()) {
            None => errs.push(required(&format!("{path}.{key}"), "")),
            Some(v) => path_segment(&format!("{path}.{key}"), v, errs),
        }
    }
}

fn positive_quantity(q: &Value) -> Option<bool> {
    let s = q.as_str()?;
    Some(capstan_api::quantity::parse(s, 1000.0).is_some_and(|v| v > 0))
}

fn metric_target(t: &Value, path: &str, errs: &mut Vec<FieldError>) {
    match t["type"].as_str().unwrap_or_default() {
        "" => errs.push(required(
            &format!("{path}.type"),
            "must specify a metric target type",
        )),
        "Utilization" | "Value" | "AverageValue" => {}
        other => errs.push(err(
            &format!("{path}.type"),
            other,
            "must be either Utilization, Value, or AverageValue",
        )),
    }
    for key in ["value", "averageValue"] {
        if !t[key].is_null() && positive_quantity(&t[key]) != Some(true) {
            errs.push(err(
                &format!("{path}.{key}"),
                &t[key].as_str().map_or(t[key].to_string(), str::to_string),
                "must be positive",
            ));
        }
    }
    if let Some(u) = t["averageUtilization"].as_i64()
        && u < 1
    {
        errs.push(err(
            &format!("{path}.averageUtilization"),
            &u.to_string(),
            "must be greater than 0",
        ));
    }
}

fn metric_identifier(m: &Value, path: &str, errs: &mut Vec<FieldError>) {
    match m["name"].as_str().filter(|s| !s.is_empty()) {
        None => errs.push(required(
            &format!("{path}.name"),
            "must specify a metric name",
        )),
        Some(n) => path_segment(&format!("{path}.name"), n, errs),
    }
}

fn set(v: &Value) -> bool {
    !v.is_null()
}

/// One metric source, by its field name.
fn source(kind: &str, src: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let target = &src["target"];
    let tpath = format!("{path}.target");
    match kind {
        "object" => {
            object_reference(
                &src["describedObject"],
                &format!("{path}.describedObject"),
                errs,
            );
            metric_identifier(&src["metric"], &format!("{path}.metric"), errs);
            metric_target(target, &tpath, errs);
            if !set(&target["value"]) && !set(&target["averageValue"]) {
                errs.push(required(
                    &format!("{tpath}.averageValue"),
                    "must set either a target value or averageValue",
                ));
            }
        }
        "external" => {
            metric_identifier(&src["metric"], &format!("{path}.metric"), errs);
            metric_target(target, &tpath, errs);
            if !set(&target["value"]) && !set(&target["averageValue"]) {
                errs.push(required(
                    &format!("{tpath}.averageValue"),
                    "must set either a target value for metric or a per-pod target",
                ));
            }
            if set(&target["value"]) && set(&target["averageValue"]) {
                errs.push(forbidden(
                    &format!("{tpath}.value"),
                    "may not set both a target value for metric and a per-pod target",
                ));
            }
        }
        "pods" => {
            metric_identifier(&src["metric"], &format!("{path}.metric"), errs);
            metric_target(target, &tpath, errs);
            if !set(&target["averageValue"]) {
                errs.push(required(
                    &format!("{tpath}.averageValue"),
                    "must specify a positive target averageValue",
                ));
            }
        }
        _ => {
            // resource and containerResource
            if src["name"].as_str().is_none_or(str::is_empty) {
                errs.push(required(
                    &format!("{path}.name"),
                    "must specify a resource name",
                ));
            }
            if kind == "containerResource" && src["container"].as_str().is_none_or(str::is_empty) {
                errs.push(required(
                    &format!("{path}.container"),
                    "must specify a container",
                ));
            }
            metric_target(target, &tpath, errs);
            let (util, avg) = (
                set(&target["averageUtilization"]),
                set(&target["averageValue"]),
            );
            if !util && !avg {
                errs.push(required(
                    &format!("{tpath}.averageUtilization"),
                    "must set either a target raw value or a target utilization",
                ));
            }
            if util && avg {
                errs.push(forbidden(
                    &format!("{tpath}.averageValue"),
                    "may not set both a target raw value and a target utilization",
                ));
            }
        }
    }
}

const TYPES: &[(&str, &str)] = &[
    ("ContainerResource", "containerResource"),
    ("External", "external"),
    ("Object", "object"),
    ("Pods", "pods"),
    ("Resource", "resource"),
];

fn metric(m: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let type_ = m["type"].as_str().unwrap_or_default();
    let supported: Vec<&str> = TYPES.iter().map(|(t, _)| *t).collect();
    let expected = TYPES.iter().find(|(t, _)| *t == type_).map(|(_, f)| *f);
    match expected {
        None if type_.is_empty() => errs.push(required(
            &format!("{path}.type"),
            "must specify a metric source type",
        )),
        None => errs.push(unsupported(&format!("{path}.type"), type_, &supported)),
        Some(field) if !set(&m[field]) => errs.push(required(
            &format!("{path}.{field}"),
            "must populate information for the given metric source",
        )),
        Some(_) => {}
    }
    // Only the first source present is checked, and only the expected one may be set.
    let present: Vec<&str> = [
        "object",
        "external",
        "pods",
        "resource",
        "containerResource",
    ]
    .into_iter()
    .filter(|f| set(&m[*f]))
    .collect();
    if let Some(first) = present.first() {
        source(first, &m[*first], &format!("{path}.{first}"), errs);
    }
    let mut sorted = present.clone();
    sorted.sort_unstable();
    if let Some(other) = sorted.iter().find(|f| Some(**f) != expected) {
        errs.push(forbidden(
            &format!("{path}.{other}"),
            "must populate the given metric source only",
        ));
    }
}

fn scaling_rules(r: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if r.is_null() {
        return;
    }
    if let Some(w) = r["stabilizationWindowSeconds"].as_i64() {
        if w < 0 {
            errs.push(err(
                &format!("{path}.stabilizationWindowSeconds"),
                &w.to_string(),
                "must be greater than or equal to zero",
            ));
        }
        if w > 3600 {
            errs.push(err(
                &format!("{path}.stabilizationWindowSeconds"),
                &w.to_string(),
                "must be less than or equal to 3600",
            ));
        }
    }
    if let Some(p) = r["selectPolicy"].as_str()
        && !matches!(p, "Max" | "Min" | "Disabled")
    {
        errs.push(unsupported(
            &format!("{path}.selectPolicy"),
            p,
            &["Disabled", "Max", "Min"],
        ));
    }
    let policies = r["policies"].as_array().cloned().unwrap_or_default();
    if policies.is_empty() {
        errs.push(required(
            &format!("{path}.policies"),
            "must specify at least one Policy",
        ));
    }
    for (i, p) in policies.iter().enumerate() {
        let at = format!("{path}.policies[{i}]");
        let t = p["type"].as_str().unwrap_or_default();
        if !matches!(t, "Pods" | "Percent") {
            errs.push(unsupported(&format!("{at}.type"), t, &["Percent", "Pods"]));
        }
        let value = p["value"].as_i64().unwrap_or_default();
        if value <= 0 {
            errs.push(err(
                &format!("{at}.value"),
                &value.to_string(),
                "must be greater than zero",
            ));
        }
        let period = p["periodSeconds"].as_i64().unwrap_or_default();
        if period <= 0 {
            errs.push(err(
                &format!("{at}.periodSeconds"),
                &period.to_string(),
                "must be greater than zero",
            ));
        }
        if period > 1800 {
            errs.push(err(
                &format!("{at}.periodSeconds"),
                &period.to_string(),
                "must be less than or equal to 1800",
            ));
        }
    }
}

pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &obj["spec"];
    let min = spec["minReplicas"].as_i64();
    let max = spec["maxReplicas"].as_i64().unwrap_or_default();
    if let Some(min) = min
        && min < 1
    {
        errs.push(err(
            "spec.minReplicas",
            &min.to_string(),
            "must be greater than or equal to 1",
        ));
    }
    if max < 1 {
        errs.push(err(
            "spec.maxReplicas",
            &max.to_string(),
            "must be greater than 0",
        ));
    }
    if let Some(min) = min
        && max < min
    {
        errs.push(err(
            "spec.maxReplicas",
            &max.to_string(),
            "must be greater than or equal to `minReplicas`",
        ));
    }
    object_reference(&spec["scaleTargetRef"], "spec.scaleTargetRef", &mut errs);
    for (i, m) in spec["metrics"].as_array().into_iter().flatten().enumerate() {
        metric(m, &format!("spec.metrics[{i}]"), &mut errs);
    }
    scaling_rules(
        &spec["behavior"]["scaleUp"],
        "spec.behavior.scaleUp",
        &mut errs,
    );
    scaling_rules(
        &spec["behavior"]["scaleDown"],
        "spec.behavior.scaleDown",
        &mut errs,
    );
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(spec: Value) -> Vec<String> {
        validate(&json!({"spec": spec}))
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn base(metrics: Value) -> Value {
        json!({"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 5, "metrics": metrics})
    }

    #[test]
    fn well_formed_autoscalers_pass() {
        let all = json!([
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
            {"type": "ContainerResource", "containerResource": {"name": "memory", "container": "app", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
            {"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
            {"type": "Object", "object": {"describedObject": {"apiVersion": "v1", "kind": "Service", "name": "web"}, "metric": {"name": "hits"}, "target": {"type": "Value", "value": "2k"}}},
            {"type": "External", "external": {"metric": {"name": "queue", "selector": {"matchLabels": {"q": "jobs"}}}, "target": {"type": "AverageValue", "averageValue": "30"}}},
        ]);
        let mut spec = base(all);
        spec["behavior"] = json!({"scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
            "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}]}});
        assert_eq!(fields(spec), Vec::<String>::new());
    }

    #[test]
    fn each_kubernetes_rule_names_its_field() {
        let cases = [
            (json!({"maxReplicas": 0}), "spec.maxReplicas"),
            (json!({"minReplicas": 0}), "spec.minReplicas"),
            (json!({"minReplicas": 6}), "spec.maxReplicas"),
            (
                json!({"scaleTargetRef": {"kind": "Deployment"}}),
                "spec.scaleTargetRef.name",
            ),
            (
                json!({"scaleTargetRef": {"kind": "Deployment", "name": "a/b"}}),
                "spec.scaleTargetRef.name",
            ),
            (
                json!({"metrics": [{"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "Value", "value": "1"}}}]}),
                "spec.metrics[0].pods.target.averageValue",
            ),
            (
                json!({"metrics": [{"type": "External", "external": {"metric": {"name": "q"}, "target": {"type": "Value", "value": "1", "averageValue": "1"}}}]}),
                "spec.metrics[0].external.target.value",
            ),
            (
                json!({"metrics": [{"type": "External", "external": {"metric": {"name": "q"}, "target": {"type": "Value", "value": "-1"}}}]}),
                "spec.metrics[0].external.target.value",
            ),
            (
                json!({"metrics": [{"type": "Object", "object": {"describedObject": {"kind": "Service", "name": "s"}, "metric": {"name": ""}, "target": {"type": "Value", "value": "1"}}}]}),
                "spec.metrics[0].object.metric.name",
            ),
            (
                json!({"metrics": [{"type": "Object", "object": {"describedObject": {"kind": "Service", "name": "s"}, "metric": {"name": "m"}, "target": {"type": "Nope", "value": "1"}}}]}),
                "spec.metrics[0].object.target.type",
            ),
            (
                json!({"metrics": [{"type": "Resource"}]}),
                "spec.metrics[0].resource",
            ),
            (
                json!({"metrics": [{"type": "Gauge"}]}),
                "spec.metrics[0].type",
            ),
            (
                json!({"metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}, "pods": {"metric": {"name": "x"}}}]}),
                "spec.metrics[0].pods",
            ),
            (
                json!({"metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 0}}}]}),
                "spec.metrics[0].resource.target.averageUtilization",
            ),
            (
                json!({"behavior": {"scaleDown": {"stabilizationWindowSeconds": 4000, "policies": [{"type": "Percent", "value": 10, "periodSeconds": 15}]}}}),
                "spec.behavior.scaleDown.stabilizationWindowSeconds",
            ),
            (
                json!({"behavior": {"scaleDown": {"selectPolicy": "Most", "policies": [{"type": "Percent", "value": 10, "periodSeconds": 15}]}}}),
                "spec.behavior.scaleDown.selectPolicy",
            ),
            (
                json!({"behavior": {"scaleUp": {"policies": []}}}),
                "spec.behavior.scaleUp.policies",
            ),
            (
                json!({"behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 2000}]}}}),
                "spec.behavior.scaleUp.policies[0].periodSeconds",
            ),
            (
                json!({"behavior": {"scaleUp": {"policies": [{"type": "Nodes", "value": 1, "periodSeconds": 15}]}}}),
                "spec.behavior.scaleUp.policies[0].type",
            ),
        ];
        for (patch, field) in cases {
            let mut spec = base(
                json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]),
            );
            for (k, v) in patch.as_object().unwrap() {
                spec[k] = v.clone();
            }
            let got = fields(spec);
            assert!(got.iter().any(|f| f == field), "{field}: {got:?}");
        }
    }
}
