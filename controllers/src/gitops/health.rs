//! Whether an applied object is healthy (Flux's `wait`, kstatus's rules, cut to what Capstan
//! serves): a Deployment, StatefulSet or DaemonSet rolled out (`kubectl rollout status`'s
//! checks), a Job complete, a CRD Established, a PVC Bound, any object with a `Ready`
//! condition Ready; anything else as soon as it exists.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub enum Health {
    Healthy,
    /// Not yet, and why.
    Progressing(String),
    /// Not going to be (a failed Job, a Ready=False that says Failed).
    Failed(String),
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The health of `obj` (its kind from `kind`).
pub fn of(kind: &str, obj: &Value) -> Health {
    let (spec, status) = (&obj["spec"], &obj["status"]);
    let observed = int(&status["observedGeneration"]) >= int(&obj["metadata"]["generation"]);
    let waiting = |why: String| Health::Progressing(why);
    match kind {
        "Deployment" | "StatefulSet" => {
            let want = spec["replicas"].as_i64().unwrap_or(1);
            if !observed {
                return waiting("the controller has not seen the latest spec".into());
            }
            if kind == "Deployment"
                && condition(obj, "Progressing")
                    .is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded")
            {
                return Health::Failed("progress deadline exceeded".into());
            }
            let updated = int(&status["updatedReplicas"]);
            let ready = int(&status[if kind == "Deployment" {
                "availableReplicas"
            } else {
                "readyReplicas"
            }]);
            if updated < want {
                waiting(format!("{updated} of {want} replicas updated"))
            } else if int(&status["replicas"]) > want {
                waiting(format!(
                    "{} old replicas pending termination",
                    int(&status["replicas"]) - want
                ))
            } else if ready < want {
                waiting(format!("{ready} of {want} updated replicas available"))
            } else {
                Health::Healthy
            }
        }
        "DaemonSet" => {
            let (desired, updated, available) = (
                int(&status["desiredNumberScheduled"]),
                int(&status["updatedNumberScheduled"]),
                int(&status["numberAvailable"]),
            );
            if !observed {
                waiting("the controller has not seen the latest spec".into())
            } else if updated < desired || available < desired {
                waiting(format!("{available} of {desired} daemon pods available"))
            } else {
                Health::Healthy
            }
        }
        "Job" => {
            if condition(obj, "Failed").is_some_and(|c| c["status"] == "True") {
                let c = condition(obj, "Failed").cloned().unwrap_or_default();
                Health::Failed(format!(
                    "the Job failed: {}",
                    c["message"].as_str().unwrap_or_default()
                ))
            } else if condition(obj, "Complete").is_some_and(|c| c["status"] == "True") {
                Health::Healthy
            } else {
                waiting("the Job has not completed".into())
            }
        }
        "CustomResourceDefinition" => {
            if condition(obj, "Established").is_some_and(|c| c["status"] == "True") {
                Health::Healthy
            } else {
                waiting("not Established yet".into())
            }
        }
        "PersistentVolumeClaim" => match status["phase"].as_str() {
            Some("Bound") => Health::Healthy,
            // WaitForFirstConsumer claims bind once a pod uses them: nothing to wait for.
            _ if obj["metadata"]["annotations"]["volume.kubernetes.io/selected-node"].is_null()
                && status["phase"] == "Pending" =>
            {
                Health::Healthy
            }
            p => waiting(format!("phase {}", p.unwrap_or("unknown"))),
        },
        _ => match condition(obj, "Ready") {
            Some(c) if c["status"] == "True" => Health::Healthy,
            Some(c)
                if c["status"] == "False"
                    && c["reason"].as_str().is_some_and(|r| r.contains("Fail")) =>
            {
                Health::Failed(c["message"].as_str().unwrap_or_default().to_string())
            }
            Some(c) => waiting(format!(
                "Ready is {}: {}",
                c["status"].as_str().unwrap_or("Unknown"),
                c["message"].as_str().unwrap_or_default()
            )),
            None => Health::Healthy,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployments_are_healthy_once_rolled_out() {
        let d = |g: i64, observed: i64, updated: i64, replicas: i64, available: i64| {
            json!({"metadata": {"generation": g}, "spec": {"replicas": 2},
                "status": {"observedGeneration": observed, "updatedReplicas": updated,
                    "replicas": replicas, "availableReplicas": available}})
        };
        assert_eq!(of("Deployment", &d(2, 2, 2, 2, 2)), Health::Healthy);
        assert!(matches!(
            of("Deployment", &d(3, 2, 2, 2, 2)),
            Health::Progressing(_)
        ));
        assert!(
            matches!(of("Deployment", &d(2, 2, 1, 3, 2)), Health::Progressing(m) if m.contains("1 of 2"))
        );
        assert!(
            matches!(of("Deployment", &d(2, 2, 2, 3, 2)), Health::Progressing(m) if m.contains("old"))
        );
        assert!(matches!(
            of("Deployment", &d(2, 2, 2, 2, 1)),
            Health::Progressing(_)
        ));
        let mut stuck = d(2, 2, 1, 2, 1);
        stuck["status"]["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]);
        assert!(matches!(of("Deployment", &stuck), Health::Failed(_)));
    }

    #[test]
    fn jobs_crds_and_ready_conditions() {
        let job = |t: &str| json!({"status": {"conditions": [{"type": t, "status": "True", "message": "BackoffLimitExceeded"}]}});
        assert_eq!(of("Job", &job("Complete")), Health::Healthy);
        assert!(matches!(of("Job", &job("Failed")), Health::Failed(_)));
        assert!(matches!(of("Job", &json!({})), Health::Progressing(_)));
        assert_eq!(
            of("CustomResourceDefinition", &job("Established")),
            Health::Healthy
        );
        assert!(matches!(
            of(
                "GitSync",
                &json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Progressing"}]}})
            ),
            Health::Progressing(_)
        ));
        assert!(matches!(
            of(
                "GitSync",
                &json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "BuildFailed"}]}})
            ),
            Health::Failed(_)
        ));
        assert_eq!(of("ConfigMap", &json!({"data": {}})), Health::Healthy);
    }
}
