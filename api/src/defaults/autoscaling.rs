//! autoscaling/v2 (`pkg/apis/autoscaling/v2/defaults.go`): HorizontalPodAutoscalers.

use serde_json::{Map, Value, json};

use super::{default_ptr, existing};

/// `SetDefaults_HorizontalPodAutoscaler`: at least one replica, 80% average CPU utilization when
/// no metric is given, and a given `behavior` completed rule by rule.
pub fn horizontal_pod_autoscaler(obj: &mut Value) {
    let Some(spec) = super::spec(obj) else {
        return;
    };
    default_ptr(spec, "minReplicas", json!(1));
    let no_metrics = spec
        .get("metrics")
        .is_none_or(|m| m.is_null() || m.as_array().is_some_and(Vec::is_empty));
    if no_metrics {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}]),
        );
    }
    if let Some(behavior) = existing(spec, "behavior") {
        let up = scaling_rules(behavior.get("scaleUp"), scale_up_rules());
        let down = scaling_rules(behavior.get("scaleDown"), scale_down_rules());
        behavior.insert("scaleUp".into(), up);
        behavior.insert("scaleDown".into(), down);
    }
}

/// Scale up at once (no stabilization), by the larger of 4 pods or 100% every 15 s.
fn scale_up_rules() -> Value {
    json!({
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Pods", "value": 4, "periodSeconds": 15},
            {"type": "Percent", "value": 100, "periodSeconds": 15},
        ],
    })
}

/// Scale down by up to 100% every 15 s; the stabilization window is left to the controller's
/// flag (5 min by default), so Kubernetes leaves it unset.
fn scale_down_rules() -> Value {
    json!({
        "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
    })
}

/// The default rules with every field the user set (`copyHPAScalingRules`).
fn scaling_rules(given: Option<&Value>, defaults: Value) -> Value {
    let mut rules: Map<String, Value> = match defaults {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if let Some(given) = given.and_then(Value::as_object) {
        for (key, value) in given.iter().filter(|(_, v)| !v.is_null()) {
            rules.insert(key.clone(), value.clone());
        }
    }
    Value::Object(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_autoscaler_scales_on_cpu_from_one_replica() {
        let mut hpa = json!({"spec": {"maxReplicas": 5,
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}});
        horizontal_pod_autoscaler(&mut hpa);
        assert_eq!(
            hpa["spec"],
            json!({
                "maxReplicas": 5,
                "minReplicas": 1,
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 80}}}],
            })
        );
    }

    #[test]
    fn given_metrics_and_replicas_are_kept() {
        let metrics = json!([{"type": "Resource", "resource": {"name": "memory",
            "target": {"type": "AverageValue", "averageValue": "100Mi"}}}]);
        let mut hpa = json!({"spec": {"minReplicas": 3, "metrics": metrics.clone()}});
        horizontal_pod_autoscaler(&mut hpa);
        assert_eq!(hpa["spec"]["minReplicas"], 3);
        assert_eq!(hpa["spec"]["metrics"], metrics);
    }

    #[test]
    fn a_given_behavior_is_completed_rule_by_rule() {
        let mut hpa = json!({"spec": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 60,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 30}]}}}});
        horizontal_pod_autoscaler(&mut hpa);
        assert_eq!(
            hpa["spec"]["behavior"],
            json!({
                "scaleUp": scale_up_rules(),
                "scaleDown": {"stabilizationWindowSeconds": 60, "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 30}]},
            })
        );
        let mut without = json!({"spec": {}});
        horizontal_pod_autoscaler(&mut without);
        assert!(without["spec"].get("behavior").is_none());
    }
}
