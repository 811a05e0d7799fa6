//! apps/v1 workloads (`pkg/apis/apps/v1/defaults.go`): Deployments, ReplicaSets and
//! DaemonSets, and their pod templates.

use serde_json::{Value, json};

use super::{default_ptr, default_str, object_at, pod};

/// `SetDefaults_Deployment`: one replica, a RollingUpdate of 25% surge and 25% unavailable,
/// ten old ReplicaSets kept, 600 s to make progress.
pub fn deployment(obj: &mut Value) {
    let Some(spec) = super::spec(obj) else {
        return;
    };
    default_ptr(spec, "replicas", json!(1));
    if let Some(strategy) = object_at(spec, "strategy") {
        default_str(strategy, "type", "RollingUpdate");
        if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
            && let Some(rolling) = object_at(strategy, "rollingUpdate")
        {
            default_ptr(rolling, "maxUnavailable", json!("25%"));
            default_ptr(rolling, "maxSurge", json!("25%"));
        }
    }
    default_ptr(spec, "revisionHistoryLimit", json!(10));
    default_ptr(spec, "progressDeadlineSeconds", json!(600));
    pod::template_of(spec);
}

/// `SetDefaults_ReplicaSet`: one replica.
pub fn replica_set(obj: &mut Value) {
    let Some(spec) = super::spec(obj) else {
        return;
    };
    default_ptr(spec, "replicas", json!(1));
    pod::template_of(spec);
}

/// `SetDefaults_DaemonSet`: a RollingUpdate of one unavailable pod and no surge, ten old
/// revisions kept.
pub fn daemon_set(obj: &mut Value) {
    let Some(spec) = super::spec(obj) else {
        return;
    };
    if let Some(strategy) = object_at(spec, "updateStrategy") {
        default_str(strategy, "type", "RollingUpdate");
        if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
            && let Some(rolling) = object_at(strategy, "rollingUpdate")
        {
            default_ptr(rolling, "maxUnavailable", json!(1));
            default_ptr(rolling, "maxSurge", json!(0));
        }
    }
    default_ptr(spec, "revisionHistoryLimit", json!(10));
    pod::template_of(spec);
}

/// `SetDefaults_StatefulSet`: OrderedReady, a RollingUpdate from partition 0, both claim
/// retention policies Retain, one replica, ten revisions; each claim template Filesystem and
/// Pending (`SetDefaults_PersistentVolumeClaim`).
pub fn stateful_set(obj: &mut Value) {
    let Some(spec) = super::spec(obj) else {
        return;
    };
    default_str(spec, "podManagementPolicy", "OrderedReady");
    if let Some(strategy) = object_at(spec, "updateStrategy") {
        default_str(strategy, "type", "RollingUpdate");
        if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
            && let Some(rolling) = object_at(strategy, "rollingUpdate")
        {
            default_ptr(rolling, "partition", json!(0));
        }
    }
    if let Some(retention) = object_at(spec, "persistentVolumeClaimRetentionPolicy") {
        default_str(retention, "whenDeleted", "Retain");
        default_str(retention, "whenScaled", "Retain");
    }
    default_ptr(spec, "replicas", json!(1));
    default_ptr(spec, "revisionHistoryLimit", json!(10));
    for t in super::each(spec, "volumeClaimTemplates") {
        super::core::claim(t);
    }
    pod::template_of(spec);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    }

    fn defaulted_template() -> Value {
        json!({"metadata": {"labels": {"app": "x"}}, "spec": {
            "containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "Always",
                "resources": {}, "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File"}],
            "dnsPolicy": "ClusterFirst", "restartPolicy": "Always",
            "schedulerName": "default-scheduler", "securityContext": {},
            "terminationGracePeriodSeconds": 30}})
    }

    #[test]
    fn a_minimal_deployment_gets_kubernetes_spec_defaults() {
        let mut d = json!({"spec": {"selector": {"matchLabels": {"app": "x"}},
            "template": template(), "strategy": {}}});
        deployment(&mut d);
        assert_eq!(
            d["spec"],
            json!({
                "replicas": 1,
                "selector": {"matchLabels": {"app": "x"}},
                "strategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
                "template": defaulted_template(),
            })
        );
    }

    #[test]
    fn a_deployments_given_strategy_and_numbers_are_kept() {
        let cases = [
            (json!({"type": "Recreate"}), json!({"type": "Recreate"})),
            (
                json!({"rollingUpdate": {"maxSurge": 0}}),
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "25%"}}),
            ),
            (
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}),
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2, "maxSurge": "25%"}}),
            ),
        ];
        for (given, want) in cases {
            let mut d = json!({"spec": {"replicas": 0, "revisionHistoryLimit": 0,
                "progressDeadlineSeconds": 60, "strategy": given.clone()}});
            deployment(&mut d);
            assert_eq!(d["spec"]["strategy"], want, "strategy {given}");
            assert_eq!(d["spec"]["replicas"], 0);
            assert_eq!(d["spec"]["revisionHistoryLimit"], 0);
            assert_eq!(d["spec"]["progressDeadlineSeconds"], 60);
        }
    }

    #[test]
    fn a_replica_set_gets_one_replica_and_a_defaulted_template() {
        let mut rs = json!({"spec": {"template": template()}});
        replica_set(&mut rs);
        assert_eq!(
            rs["spec"],
            json!({"replicas": 1, "template": defaulted_template()})
        );
        let mut scaled_down = json!({"spec": {"replicas": 0}});
        replica_set(&mut scaled_down);
        assert_eq!(scaled_down["spec"]["replicas"], 0);
    }

    #[test]
    fn a_daemon_set_rolls_one_node_at_a_time_unless_told_otherwise() {
        let mut ds = json!({"spec": {"selector": {"matchLabels": {"app": "x"}},
            "template": template()}});
        daemon_set(&mut ds);
        assert_eq!(
            ds["spec"],
            json!({
                "selector": {"matchLabels": {"app": "x"}},
                "updateStrategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                "revisionHistoryLimit": 10,
                "template": defaulted_template(),
            })
        );
        let mut on_delete = json!({"spec": {"updateStrategy": {"type": "OnDelete"},
            "revisionHistoryLimit": 2}});
        daemon_set(&mut on_delete);
        assert_eq!(
            on_delete["spec"]["updateStrategy"],
            json!({"type": "OnDelete"})
        );
        assert_eq!(on_delete["spec"]["revisionHistoryLimit"], 2);
        let mut surge = json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxSurge": "10%", "maxUnavailable": 0}}}});
        daemon_set(&mut surge);
        assert_eq!(
            surge["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "10%", "maxUnavailable": 0}})
        );
    }
}
