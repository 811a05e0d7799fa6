//! batch/v1 (`pkg/apis/batch/v1/defaults.go`): Jobs and CronJobs, and their pod templates.

use serde_json::{Value, json};

use super::{default_ptr, default_str, each, existing, object_at, pod};

/// `SetDefaults_Job`: one completion and parallelism 1 when neither is set, 6 retries
/// (2³¹−1 with a per-index limit), NonIndexed, not suspended, the pod replacement policy
/// (Failed with a podFailurePolicy, else TerminatingOrFailed), condition patterns of the
/// failure policy `True`; a Job without labels takes its template's.
pub fn job(obj: &mut Value) {
    let template_labels = obj
        .pointer("/spec/template/metadata/labels")
        .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
        .cloned();
    if let (Some(labels), Some(meta)) = (template_labels, obj.get_mut("metadata"))
        && let Some(meta) = meta.as_object_mut()
        && meta
            .get("labels")
            .is_none_or(|l| l.as_object().is_none_or(|m| m.is_empty()))
    {
        meta.insert("labels".into(), labels);
    }
    let Some(spec) = super::spec(obj) else {
        return;
    };
    job_spec(spec);
}

fn job_spec(spec: &mut super::Object) {
    let unset = |s: &super::Object, k: &str| s.get(k).is_none_or(Value::is_null);
    if unset(spec, "completions") && unset(spec, "parallelism") {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    default_ptr(spec, "parallelism", json!(1));
    let backoff = if unset(spec, "backoffLimitPerIndex") {
        6
    } else {
        i64::from(i32::MAX)
    };
    default_ptr(spec, "backoffLimit", json!(backoff));
    default_str(spec, "completionMode", "NonIndexed");
    default_ptr(spec, "suspend", json!(false));
    let has_failure_policy = !unset(spec, "podFailurePolicy");
    if let Some(policy) = existing(spec, "podFailurePolicy") {
        for rule in each(policy, "rules") {
            for pattern in each(rule, "onPodConditions") {
                default_str(pattern, "status", "True");
            }
        }
    }
    let replacement = if has_failure_policy {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    default_str(spec, "podReplacementPolicy", replacement);
    pod::template_of(spec);
}

/// `SetDefaults_CronJob`: concurrencyPolicy Allow, not suspended, 3 successful and 1 failed
/// Job kept; the Job template's pod template is defaulted as any pod template.
pub fn cron_job(obj: &mut Value) {
    let Some(spec) = super::spec(obj) else {
        return;
    };
    default_str(spec, "concurrencyPolicy", "Allow");
    default_ptr(spec, "suspend", json!(false));
    default_ptr(spec, "successfulJobsHistoryLimit", json!(3));
    default_ptr(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(template) = object_at(spec, "jobTemplate")
        && let Some(job_spec) = object_at(template, "spec")
    {
        pod::template_of(job_spec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "x"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}})
    }

    #[test]
    fn a_minimal_job_gets_kubernetes_defaults() {
        let mut j = json!({"metadata": {"name": "j"}, "spec": {"template": template()}});
        job(&mut j);
        let s = &j["spec"];
        assert_eq!(
            (&s["completions"], &s["parallelism"], &s["backoffLimit"]),
            (&json!(1), &json!(1), &json!(6))
        );
        assert_eq!(s["completionMode"], "NonIndexed");
        assert_eq!(s["suspend"], false);
        assert_eq!(s["podReplacementPolicy"], "TerminatingOrFailed");
        assert_eq!(j["metadata"]["labels"], json!({"app": "x"}));
        assert_eq!(s["template"]["spec"]["dnsPolicy"], "ClusterFirst");
    }

    #[test]
    fn parallelism_alone_leaves_completions_unset_and_a_failure_policy_changes_replacement() {
        let mut j = json!({"metadata": {"labels": {"mine": "1"}}, "spec": {"parallelism": 3,
            "backoffLimitPerIndex": 1, "completionMode": "Indexed",
            "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]},
            "template": template()}});
        job(&mut j);
        let s = &j["spec"];
        assert!(s.get("completions").is_none());
        assert_eq!(s["backoffLimit"], json!(i32::MAX));
        assert_eq!(s["completionMode"], "Indexed");
        assert_eq!(s["podReplacementPolicy"], "Failed");
        assert_eq!(
            s["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["status"],
            "True"
        );
        assert_eq!(j["metadata"]["labels"], json!({"mine": "1"}));
    }

    #[test]
    fn a_cron_job_keeps_three_successes_and_one_failure() {
        let mut c = json!({"spec": {"schedule": "* * * * *",
            "jobTemplate": {"spec": {"template": template()}}}});
        cron_job(&mut c);
        let s = &c["spec"];
        assert_eq!(s["concurrencyPolicy"], "Allow");
        assert_eq!(s["suspend"], false);
        assert_eq!(
            (
                &s["successfulJobsHistoryLimit"],
                &s["failedJobsHistoryLimit"]
            ),
            (&json!(3), &json!(1))
        );
        assert_eq!(
            s["jobTemplate"]["spec"]["template"]["spec"]["schedulerName"],
            "default-scheduler"
        );
        // The Job defaults are the Job's to apply when it is created.
        assert!(s["jobTemplate"]["spec"].get("backoffLimit").is_none());
    }
}
