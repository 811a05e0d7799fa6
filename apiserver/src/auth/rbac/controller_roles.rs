//! One least-privilege identity per controller, as kube-controller-manager's
//! `--use-service-account-credentials` gives them: the ServiceAccount
//! `kube-system/NAME-controller` (NAME as `--controllers` names it) bound to the ClusterRole
//! `system:controller:NAME-controller`, which grants what that controller writes and reads
//! (the resources of its informers included, so that the role alone runs it: the Helm chart
//! in charts/capstan grants a manager the roles of the controllers it runs, generated from
//! here). The controller manager's own identity (`system:kube-controller-manager`) keeps the
//! shared watches, leader election and minting these accounts' tokens.

use serde_json::{Value, json};

use super::bootstrap::{CONTROLLER_MANAGER, rule};

/// Where the controllers' ServiceAccounts live.
pub const NAMESPACE: &str = "kube-system";

/// The ServiceAccount of controller `name`.
pub fn account(name: &str) -> String {
    format!("{name}-controller")
}

const READ: &[&str] = &["get", "list", "watch"];
const ALL: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

fn events() -> Value {
    rule(
        &["create", "update", "patch"],
        &["", "events.k8s.io"],
        &["events"],
    )
}

/// Each controller and what its role grants.
fn grants() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        (
            "deployment",
            vec![
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &["apps"],
                    &["deployments"],
                ),
                rule(
                    &["update", "patch"],
                    &["apps"],
                    &["deployments/status", "deployments/finalizers"],
                ),
                rule(ALL, &["apps"], &["replicasets"]),
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &[""],
                    &["pods"],
                ),
                events(),
            ],
        ),
        (
            "replicaset",
            vec![
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &["apps"],
                    &["replicasets"],
                ),
                rule(
                    &["update", "patch"],
                    &["apps"],
                    &["replicasets/status", "replicasets/finalizers"],
                ),
                rule(ALL, &[""], &["pods"]),
                events(),
            ],
        ),
        (
            "daemonset",
            vec![
                rule(READ, &["apps"], &["daemonsets"]),
                rule(
                    &["update", "patch"],
                    &["apps"],
                    &["daemonsets/status", "daemonsets/finalizers"],
                ),
                rule(ALL, &["apps"], &["controllerrevisions"]),
                rule(READ, &[""], &["nodes"]),
                rule(ALL, &[""], &["pods"]),
                events(),
            ],
        ),
        (
            // Reads metrics and any target's scale; writes the scale and its own status.
            "horizontalpodautoscaling",
            vec![
                rule(READ, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(
                    &["update"],
                    &["autoscaling"],
                    &["horizontalpodautoscalers/status"],
                ),
                rule(&["get", "update", "patch"], &["*"], &["*/scale"]),
                rule(READ, &[""], &["pods"]),
                rule(READ, &["apps"], &["deployments", "replicasets"]),
                rule(READ, &["capstan.dev"], &["scalingpolicies"]),
                rule(&["list"], &["metrics.k8s.io"], &["pods"]),
                rule(&["get", "list"], &["custom.metrics.k8s.io"], &["*"]),
                rule(&["get", "list"], &["external.metrics.k8s.io"], &["*"]),
                events(),
            ],
        ),
        (
            // Capstan's ScalingPolicies: any target's scale, its own status, the Secrets its
            // triggers' credentials come from.
            "scalingpolicy",
            vec![
                rule(READ, &["capstan.dev"], &["scalingpolicies"]),
                rule(
                    &["update", "patch"],
                    &["capstan.dev"],
                    &["scalingpolicies/status"],
                ),
                // An autoscaler on the same target wins: the policy stands aside.
                rule(READ, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(&["get", "update", "patch"], &["*"], &["*/scale"]),
                rule(&["get"], &[""], &["secrets"]),
                events(),
            ],
        ),
        (
            // The GitOps controller applies whatever its repositories hold (Flux's
            // kustomize-controller runs as cluster-admin): every verb on every resource.
            "gitops",
            vec![rule(&["*"], &["*"], &["*"])],
        ),
        (
            "statefulset",
            vec![
                rule(READ, &["apps"], &["statefulsets"]),
                rule(
                    &["update", "patch"],
                    &["apps"],
                    &["statefulsets/status", "statefulsets/finalizers"],
                ),
                rule(ALL, &["apps"], &["controllerrevisions"]),
                rule(ALL, &[""], &["pods"]),
                rule(
                    &["get", "list", "watch", "create", "update", "patch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                events(),
            ],
        ),
        (
            // Binds claims, provisions local volumes, reclaims and unprotects them.
            "persistentvolume-binder",
            vec![
                rule(
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                    &[""],
                    &["persistentvolumes", "persistentvolumes/status"],
                ),
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &[""],
                    &["persistentvolumeclaims", "persistentvolumeclaims/status"],
                ),
                rule(READ, &[""], &["pods", "nodes"]),
                rule(READ, &["storage.k8s.io"], &["storageclasses"]),
                events(),
            ],
        ),
        (
            // Counts any kind, as Kubernetes' resourcequota-controller.
            "resourcequota",
            vec![
                rule(&["list", "watch"], &["*"], &["*"]),
                rule(READ, &[""], &["resourcequotas"]),
                rule(&["update"], &[""], &["resourcequotas/status"]),
                events(),
            ],
        ),
        (
            "job",
            vec![
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &["batch"],
                    &["jobs"],
                ),
                rule(
                    &["update", "patch"],
                    &["batch"],
                    &["jobs/status", "jobs/finalizers"],
                ),
                rule(ALL, &[""], &["pods"]),
                events(),
            ],
        ),
        (
            "cronjob",
            vec![
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &["batch"],
                    &["cronjobs"],
                ),
                rule(
                    &["update", "patch"],
                    &["batch"],
                    &["cronjobs/status", "cronjobs/finalizers"],
                ),
                rule(ALL, &["batch"], &["jobs"]),
                rule(&["get", "list", "watch", "delete"], &[""], &["pods"]),
                events(),
            ],
        ),
        (
            "ttlafterfinished",
            vec![rule(
                &["get", "list", "watch", "delete"],
                &["batch"],
                &["jobs"],
            )],
        ),
        (
            "scheduler",
            vec![
                rule(READ, &[""], &["pods", "nodes", "namespaces", "services"]),
                // Preemption evicts lower-priority pods, within their budgets.
                rule(&["delete"], &[""], &["pods"]),
                rule(READ, &["policy"], &["poddisruptionbudgets"]),
                rule(&["create"], &[""], &["pods/binding", "bindings"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(READ, &["apps"], &["replicasets", "statefulsets"]),
                // VolumeBinding: where claims pin a pod, and the node a claim waits for.
                rule(
                    READ,
                    &[""],
                    &["persistentvolumeclaims", "persistentvolumes"],
                ),
                rule(&["patch", "update"], &[""], &["persistentvolumeclaims"]),
                rule(READ, &["storage.k8s.io"], &["storageclasses"]),
                events(),
            ],
        ),
        (
            // Any kind, as Kubernetes' generic-garbage-collector.
            "garbagecollector",
            vec![rule(
                &["get", "list", "watch", "patch", "update", "delete"],
                &["*"],
                &["*"],
            )],
        ),
        (
            // Empties namespaces of any kind, as Kubernetes' namespace-controller.
            "namespace",
            vec![
                rule(
                    &["get", "list", "watch", "delete", "deletecollection"],
                    &["*"],
                    &["*"],
                ),
                rule(
                    &["update", "patch"],
                    &[""],
                    &["namespaces/finalize", "namespaces/status"],
                ),
                events(),
            ],
        ),
        (
            "endpointslice",
            vec![
                rule(READ, &[""], &["services", "pods", "nodes"]),
                rule(&["update", "patch"], &[""], &["services/finalizers"]),
                rule(ALL, &["discovery.k8s.io"], &["endpointslices"]),
                events(),
            ],
        ),
        (
            "endpoints",
            vec![
                rule(READ, &[""], &["services", "pods"]),
                rule(ALL, &[""], &["endpoints"]),
                rule(&["create"], &[""], &["endpoints/restricted"]),
                events(),
            ],
        ),
        (
            "endpointslicemirroring",
            vec![
                rule(READ, &[""], &["services", "endpoints"]),
                rule(ALL, &["discovery.k8s.io"], &["endpointslices"]),
                events(),
            ],
        ),
        (
            "nodelifecycle",
            vec![
                rule(
                    &["get", "list", "watch", "update", "patch", "delete"],
                    &[""],
                    &["nodes"],
                ),
                rule(
                    &["patch", "update"],
                    &[""],
                    &["nodes/status", "pods/status"],
                ),
                rule(&["get", "list", "watch", "delete"], &[""], &["pods"]),
                rule(READ, &["coordination.k8s.io"], &["leases"]),
                events(),
            ],
        ),
        (
            "nodeipam",
            vec![
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &[""],
                    &["nodes"],
                ),
                events(),
            ],
        ),
        (
            "tainteviction",
            vec![
                rule(&["get", "list", "watch", "delete"], &[""], &["pods"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(&["create"], &[""], &["pods/eviction"]),
                rule(READ, &[""], &["nodes"]),
                events(),
            ],
        ),
        (
            "podgc",
            vec![
                rule(&["get", "list", "watch", "delete"], &[""], &["pods"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(READ, &[""], &["nodes"]),
            ],
        ),
        (
            "disruption",
            vec![
                rule(READ, &["policy"], &["poddisruptionbudgets"]),
                rule(
                    &["update", "patch"],
                    &["policy"],
                    &["poddisruptionbudgets/status"],
                ),
                rule(READ, &[""], &["pods", "replicationcontrollers"]),
                rule(
                    READ,
                    &["apps"],
                    &["deployments", "replicasets", "statefulsets"],
                ),
                rule(&["get"], &["*"], &["*/scale"]),
                events(),
            ],
        ),
        (
            "serviceaccount",
            vec![
                rule(READ, &[""], &["namespaces", "serviceaccounts"]),
                rule(&["create"], &[""], &["serviceaccounts"]),
            ],
        ),
        (
            "root-ca-certificate-publisher",
            vec![
                rule(READ, &[""], &["namespaces", "configmaps"]),
                rule(&["create", "update"], &[""], &["configmaps"]),
            ],
        ),
        (
            "csr",
            vec![
                rule(
                    READ,
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                ),
                rule(
                    &["update", "patch"],
                    &["certificates.k8s.io"],
                    &[
                        "certificatesigningrequests/approval",
                        "certificatesigningrequests/status",
                    ],
                ),
                rule(&["approve", "sign"], &["certificates.k8s.io"], &["signers"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                rule(READ, &[""], &["nodes"]),
            ],
        ),
    ]
}

/// Each controller's rules, by the name `--controllers` knows it by.
pub fn controller_rules() -> Vec<(&'static str, Vec<Value>)> {
    grants()
}

/// The controllers that run under their own identity.
pub fn controllers() -> Vec<&'static str> {
    grants().into_iter().map(|(n, _)| n).collect()
}

fn role_name(controller: &str) -> String {
    format!("system:controller:{}", account(controller))
}

/// `system:controller:NAME-controller` for every controller, and what makes the accounts:
/// the controller manager may create them and their tokens.
pub fn cluster_roles() -> Vec<Value> {
    let mut out: Vec<Value> = grants()
        .into_iter()
        .map(|(name, rules)| {
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": role_name(name),
                    "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                    "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
                "rules": rules,
            })
        })
        .collect();
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "system:controller:token-issuer",
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
        "rules": [rule(&["get", "create"], &[""], &["serviceaccounts"]),
                  rule(&["create"], &[""], &["serviceaccounts/token"])],
    }));
    out
}

/// Each role bound to its controller's account; the token issuer to the controller manager.
pub fn cluster_role_bindings() -> Vec<Value> {
    let mut out: Vec<Value> = controllers()
        .into_iter()
        .map(|name| {
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": role_name(name),
                    "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name(name)},
                "subjects": [{"kind": "ServiceAccount", "name": account(name), "namespace": NAMESPACE}],
            })
        })
        .collect();
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "system:controller:token-issuer",
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:controller:token-issuer"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": CONTROLLER_MANAGER}],
    }));
    out
}
