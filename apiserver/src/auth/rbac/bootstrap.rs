//! The default roles and bindings every cluster starts with (kube-apiserver's bootstrap
//! policy, trimmed to what Capstan serves): `cluster-admin` for `system:masters`; the
//! user-facing `admin`, `edit` and `view`, aggregated from `system:aggregate-to-*` as in
//! Kubernetes (so a CRD's roles can join them by label); discovery, public info and self-review
//! for everyone; and the roles of Capstan's own components — the controller manager (with its
//! scheduler) and the node agents (group `system:nodes`).
//!
//! Each is created when missing and left alone when present (an administrator's edit stands),
//! as kube-apiserver does for objects it marks `rbac.authorization.kubernetes.io/autoupdate:
//! "false"`.

use serde_json::{Value, json};

use super::GROUP;
use crate::ApiServer;
use crate::errors::ApiResult;
use crate::request::{Params, Target};

pub(super) fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
/// Every verb of a resource.
const ALL_WRITE: &[&str] = crate::registry::VERBS;

fn meta(name: &str, labels: Value) -> Value {
    let mut l = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    if let (Some(l), Some(extra)) = (l.as_object_mut(), labels.as_object()) {
        l.extend(extra.clone());
    }
    json!({
        "name": name,
        "labels": l,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": meta(name, labels), "rules": rules,
    })
}

fn aggregated(name: &str, label: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": meta(name, json!({})),
        "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{label}"): "true"}}
        ]},
        "rules": [],
    })
}

fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, name)| json!({"kind": kind, "apiGroup": GROUP, "name": name}))
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": meta(name, json!({})),
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// The group of bootstrap token users.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The group node agents' certificates name.
pub const NODES: &str = "system:nodes";
/// The controller manager's user.
pub const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";
/// The user of the API server's client certificate for node agents' ports (kubeadm's name).
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";
/// The ingress proxy's user (`capstan up` gives it a certificate; `capstan ingress` users bind
/// their own identity to the role of the same name).
pub const INGRESS: &str = "system:capstan:ingress";
/// What may use a node agent's port: logs, exec, attach, port-forward, metrics.
pub const KUBELET_API_ADMIN: &str = "system:kubelet-api-admin";

/// Capstan's own kinds (its CRDs) — in the user-facing roles.
const CAPSTAN_GROUP: &str = "capstan.dev";

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let to = |labels: &[&str]| {
        let mut m = serde_json::Map::new();
        for l in labels {
            m.insert(
                format!("rbac.authorization.k8s.io/aggregate-to-{l}"),
                json!("true"),
            );
        }
        Value::Object(m)
    };
    vec![
        cluster_role(
            "cluster-admin",
            json!({}),
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated("admin", "admin"),
        aggregated("edit", "edit"),
        aggregated("view", "view"),
        cluster_role(
            "system:aggregate-to-admin",
            to(&["admin"]),
            vec![
                rule(ALL_WRITE, &[GROUP], &["roles", "rolebindings"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            to(&["admin", "edit"]),
            vec![
                rule(
                    WRITE,
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                rule(
                    &["create"],
                    &[""],
                    &["pods/eviction", "serviceaccounts/token"],
                ),
                rule(
                    &["get", "list", "watch"],
                    &[""],
                    &[
                        "secrets",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "services/proxy",
                    ],
                ),
                rule(&["impersonate"], &[""], &["serviceaccounts"]),
                rule(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
                rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
                rule(
                    WRITE,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                rule(WRITE, &["discovery.k8s.io"], &["endpointslices"]),
                rule(WRITE, &[CAPSTAN_GROUP], &["*"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            to(&["admin", "edit", "view"]),
            vec![
                rule(
                    READ,
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                        "namespaces",
                    ],
                ),
                rule(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                rule(
                    READ,
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                rule(
                    READ,
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                rule(
                    READ,
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(READ, &["events.k8s.io"], &["events"]),
                rule(READ, &[CAPSTAN_GROUP], &["*"]),
            ],
        ),
        // metrics-server's role: reading the resource metrics (`kubectl top`) is viewing.
        cluster_role(
            "system:aggregated-metrics-reader",
            to(&["admin", "edit", "view"]),
            vec![rule(READ, &["metrics.k8s.io"], &["pods", "nodes"])],
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/readyz",
                    "/version",
                    "/version/",
                    "/openapi",
                    "/openapi/*",
                ],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        cluster_role(
            "system:monitoring",
            json!({}),
            vec![urls(
                &["get"],
                &[
                    "/metrics",
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/livez/*",
                    "/readyz/*",
                ],
            )],
        ),
        cluster_role(
            "system:auth-delegator",
            json!({}),
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        // What a node agent does (narrowed by the node authorizer, auth::node): its Node and
        // Lease, the pods bound to it and their status, Services and EndpointSlices for the
        // proxy and DNS (its own DNS endpoint included), and Events.
        cluster_role(
            "system:node",
            json!({}),
            vec![
                rule(
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                    &[""],
                    &["nodes"],
                ),
                rule(&["get", "update", "patch"], &[""], &["nodes/status"]),
                rule(&["get", "list", "watch", "delete"], &[""], &["pods"]),
                rule(&["update", "patch"], &[""], &["pods/status"]),
                rule(&["create"], &[""], &["pods/eviction"]),
                // Secrets, ConfigMaps, volumes and ServiceAccount tokens: only what its own
                // pods use, which the node authorizer (auth::node) decides.
                rule(
                    &["get", "list", "watch"],
                    &[""],
                    &["services", "endpoints", "namespaces"],
                ),
                rule(
                    &["create", "update", "patch"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                    &["coordination.k8s.io"],
                    &["leases"],
                ),
                rule(
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                rule(
                    &["create", "get", "list", "watch"],
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                ),
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        // Joining: a bootstrap token may ask for (and follow) a node's certificate, and have
        // it approved; a node may have its own renewed.
        cluster_role(
            "system:node-bootstrapper",
            json!({}),
            vec![rule(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            json!({}),
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            json!({}),
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
        // Everything on a node agent's port (kube's system:kubelet-api-admin).
        cluster_role(
            KUBELET_API_ADMIN,
            json!({}),
            vec![
                rule(&["get", "list", "watch", "proxy"], &[""], &["nodes"]),
                rule(
                    &["*"],
                    &[""],
                    &[
                        "nodes/proxy",
                        "nodes/log",
                        "nodes/stats",
                        "nodes/metrics",
                        "nodes/spec",
                    ],
                ),
            ],
        ),
        // The ingress proxy: reads what it routes (Ingresses, Services, EndpointSlices, the
        // TLS Secrets its Ingresses name — it watches only kubernetes.io/tls ones, but RBAC
        // cannot narrow by type) and writes the Ingresses' status.
        cluster_role(
            INGRESS,
            json!({}),
            vec![
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingressclasses"],
                ),
                rule(
                    &["update", "patch"],
                    &["networking.k8s.io"],
                    &["ingresses/status"],
                ),
                rule(READ, &[""], &["services", "secrets"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
            ],
        ),
        // The controller manager and its scheduler. The garbage collector and the namespace
        // controller read and delete any kind (as Kubernetes' generic-garbage-collector and
        // namespace-controller roles); creating is limited to what controllers make. It cannot
        // write roles or bindings.
        cluster_role(
            CONTROLLER_MANAGER,
            json!({}),
            vec![
                rule(
                    &[
                        "get",
                        "list",
                        "watch",
                        "patch",
                        "update",
                        "delete",
                        "deletecollection",
                    ],
                    &["*"],
                    &["*"],
                ),
                rule(
                    &["create"],
                    &[""],
                    &[
                        "pods",
                        "pods/binding",
                        "pods/eviction",
                        "bindings",
                        "events",
                        "endpoints",
                        "serviceaccounts",
                        "secrets",
                        "configmaps",
                        "namespaces",
                    ],
                ),
                rule(
                    &["create"],
                    &["apps"],
                    &["replicasets", "controllerrevisions"],
                ),
                rule(&["create"], &["batch"], &["jobs"]),
                rule(&["create"], &["events.k8s.io"], &["events"]),
                rule(&["create"], &["discovery.k8s.io"], &["endpointslices"]),
                rule(&["create"], &["coordination.k8s.io"], &["leases"]),
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                rule(&["create"], &[CAPSTAN_GROUP], &["*"]),
                rule(&["approve", "sign"], &["certificates.k8s.io"], &["signers"]),
                urls(&["get"], &["/healthz", "/readyz", "/livez"]),
            ],
        ),
    ]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding(
            "cluster-admin",
            "cluster-admin",
            &[("Group", super::super::MASTERS)],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &[("Group", super::super::AUTHENTICATED)],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            &[("Group", super::super::AUTHENTICATED)],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[
                ("Group", super::super::AUTHENTICATED),
                ("Group", super::super::UNAUTHENTICATED),
            ],
        ),
        binding(
            "system:monitoring",
            "system:monitoring",
            &[("Group", "system:monitoring")],
        ),
        binding("system:node", "system:node", &[("Group", NODES)]),
        binding(
            "system:node-bootstrapper",
            "system:node-bootstrapper",
            &[("Group", BOOTSTRAPPERS)],
        ),
        binding(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[("Group", BOOTSTRAPPERS)],
        ),
        binding(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[("Group", NODES)],
        ),
        binding(
            "system:kube-apiserver-kubelet-client",
            KUBELET_API_ADMIN,
            &[("User", KUBELET_CLIENT)],
        ),
        binding(
            CONTROLLER_MANAGER,
            CONTROLLER_MANAGER,
            &[("User", CONTROLLER_MANAGER)],
        ),
        binding(INGRESS, INGRESS, &[("User", INGRESS)]),
    ]
}

/// Creates the default roles and bindings that are missing.
pub async fn ensure(api: &ApiServer) -> ApiResult<()> {
    let roles: Vec<Value> = cluster_roles()
        .into_iter()
        .chain(super::controller_roles::cluster_roles())
        .collect();
    let bindings: Vec<Value> = cluster_role_bindings()
        .into_iter()
        .chain(super::controller_roles::cluster_role_bindings())
        .collect();
    for (plural, objects) in [("clusterroles", roles), ("clusterrolebindings", bindings)] {
        let Some(info) = api.registry.get(GROUP, "v1", plural) else {
            continue;
        };
        let target = Target {
            info,
            namespace: None,
            name: None,
            subresource: None,
        };
        for obj in objects {
            match api.create(&target, obj, &Params::default()).await {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
    }
    // kube-system's reader of the front proxy's settings, which extension API servers bind
    // their ServiceAccounts to.
    if let Some(info) = api.registry.get(GROUP, "v1", "roles") {
        let (namespace, name) = crate::aggregator::AUTHENTICATION_CONFIGMAP;
        let mut reader = rule(&["get", "list", "watch"], &[""], &["configmaps"]);
        reader["resourceNames"] = json!([name]);
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {
                "name": "extension-apiserver-authentication-reader",
                "namespace": namespace,
                "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
            },
            "rules": [reader],
        });
        let target = Target {
            info,
            namespace: Some(namespace.into()),
            name: None,
            subresource: None,
        };
        match api.create(&target, role, &Params::default()).await {
            Ok(_) => {}
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
