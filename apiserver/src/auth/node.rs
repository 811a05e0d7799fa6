//! What a node agent may do, beyond what RBAC's `system:node` role grants: Kubernetes' Node
//! authorizer and the NodeRestriction admission plugin, for users `system:node:NAME` in
//! `system:nodes`.
//!
//! - [`decide`] (before RBAC): a node reads a Secret, ConfigMap, PersistentVolumeClaim or
//!   PersistentVolume only when a pod bound to it uses it (volumes, projected sources, env,
//!   envFrom, image pull secrets), and never lists or watches them; it asks for a
//!   ServiceAccount token only for an account a pod bound to it runs as; it changes,
//!   evicts or deletes only pods bound to it, its own Node and its own Lease.
//! - [`admit_create`]: it creates only its own Node and Lease, and no pods.
//!
//! A denial names the node and what it lacks a relationship with, as Kubernetes words it.

use std::sync::Arc;

use serde_json::Value;

use super::attributes::Attributes;
use super::{Decision, UserInfo};
use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::object::ObjectExt;
use crate::registry::ResourceInfo;

/// The group of node agents.
pub const NODES: &str = "system:nodes";
const PREFIX: &str = "system:node:";

/// The node a user is, if it is one.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    user.username
        .strip_prefix(PREFIX)
        .filter(|n| !n.is_empty() && user.in_group(NODES))
}

fn allow(why: &str) -> Option<Decision> {
    Some(Decision {
        allowed: true,
        reason: why.into(),
    })
}

fn deny(node: &str, what: &str) -> Option<Decision> {
    Some(Decision {
        allowed: false,
        reason: format!("node '{node}' {what}"),
    })
}

/// Whether a denial of `a` is the node authorizer's (its reason is then shown).
pub fn explains(a: &Attributes, d: &Decision) -> bool {
    node_of(&a.user).is_some_and(|n| d.reason.starts_with(&format!("node '{n}' ")))
}

/// The names of `kind` (secret, configMap, persistentVolumeClaim) a pod uses.
fn references(pod: &Value, kind: &str) -> Vec<String> {
    let spec = &pod["spec"];
    let mut out = Vec::new();
    let mut push = |v: &Value| {
        if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
            out.push(s.to_string());
        }
    };
    for v in spec["volumes"].as_array().into_iter().flatten() {
        match kind {
            "secret" => push(&v["secret"]["secretName"]),
            "configMap" => push(&v["configMap"]["name"]),
            _ => push(&v["persistentVolumeClaim"]["claimName"]),
        }
        for s in v["projected"]["sources"].as_array().into_iter().flatten() {
            if kind != "persistentVolumeClaim" {
                push(&s[kind]["name"]);
            }
        }
    }
    if kind == "secret" {
        for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
            push(&s["name"]);
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                push(&e["valueFrom"][format!("{kind}KeyRef")]["name"]);
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                push(&e[format!("{kind}Ref")]["name"]);
            }
        }
    }
    out
}

/// The pods of `namespace` bound to `node` (from the watch cache).
fn pods_on(api: &ApiServer, namespace: &str, node: &str) -> Vec<Arc<Value>> {
    let Some(info) = api.registry.get("", "v1", "pods") else {
        return Vec::new();
    };
    let Ok(cache) = api.cacher(&info) else {
        return Vec::new();
    };
    let (pods, _) = cache.list(&info.list_prefix(Some(namespace)));
    // spec.nodeName is a selectable field: the index has it, so only this node's pods parse.
    pods.into_iter()
        .filter(|p| p.index()["spec"]["nodeName"] == node)
        .map(|p| Arc::new(p.value()))
        .collect()
}

/// One object from the watch cache.
fn cached(api: &ApiServer, plural: &str, group: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
    let info = api.registry.get(group, "v1", plural)?;
    let cache = api.cacher(&info).ok()?;
    cache.get_value(&info.key((!ns.is_empty()).then_some(ns), name))
}

/// A volume the local-path provisioner made on `node` (its node affinity names the node).
fn local_path_on(pv: &Value, node: &str) -> bool {
    pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == "capstan.dev/local-path"
        && pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
            .as_array()
            .is_some_and(|terms| {
                !terms.is_empty()
                    && terms.iter().all(|t| {
                        t["matchExpressions"].as_array().is_some_and(|e| {
                            e.iter().any(|r| {
                                r["key"] == "kubernetes.io/hostname"
                                    && r["operator"] == "In"
                                    && r["values"] == serde_json::json!([node])
                            })
                        })
                    })
            })
}

/// The node authorizer's decision, or None when it has no say (RBAC decides).
pub fn decide(api: &ApiServer, a: &Attributes) -> Option<Decision> {
    let node = node_of(&a.user)?;
    if !a.resource_request {
        return None;
    }
    let (group, res, sub, verb) = (
        a.api_group.as_str(),
        a.resource.as_str(),
        a.subresource.as_str(),
        a.verb.as_str(),
    );
    match (group, res, sub) {
        ("", "secrets" | "configmaps" | "persistentvolumeclaims", "") => {
            if verb != "get" {
                return deny(
                    node,
                    &format!("may not {verb} {res}: only get those its pods use"),
                );
            }
            let kind = match res {
                "secrets" => "secret",
                "configmaps" => "configMap",
                _ => "persistentVolumeClaim",
            };
            let used = pods_on(api, &a.namespace, node)
                .iter()
                .any(|p| references(p, kind).contains(&a.name));
            if used {
                allow("used by a pod bound to the node")
            } else {
                deny(
                    node,
                    &format!(
                        "has no relationship with {res} '{}/{}'",
                        a.namespace, a.name
                    ),
                )
            }
        }
        ("", "persistentvolumes", "") => {
            // The local-path volumes pinned to this node: the node removes their data and
            // their cleanup finalizer when they are deleted.
            let pinned = cached(api, "persistentvolumes", "", "", &a.name)
                .is_some_and(|pv| local_path_on(&pv, node));
            if pinned && matches!(verb, "get" | "patch" | "update") {
                return allow("a local volume on the node");
            }
            if verb != "get" {
                return deny(node, &format!("may not {verb} persistentvolumes"));
            }
            let bound = api
                .registry
                .get("", "v1", "persistentvolumeclaims")
                .and_then(|info| api.cacher(&info).ok().map(|c| c.values(&info.prefix()).0))
                .into_iter()
                .flatten()
                .filter(|c| c["spec"]["volumeName"] == a.name.as_str())
                .any(|c| {
                    let ns = c.namespace().unwrap_or_default();
                    let claim = c.name().unwrap_or_default();
                    pods_on(api, ns, node).iter().any(|p| {
                        references(p, "persistentVolumeClaim")
                            .iter()
                            .any(|n| n == claim)
                    })
                });
            if bound {
                allow("claimed by a pod bound to the node")
            } else {
                deny(
                    node,
                    &format!("has no relationship with persistentvolume '{}'", a.name),
                )
            }
        }
        ("", "serviceaccounts", "token") => {
            let runs_as = pods_on(api, &a.namespace, node).iter().any(|p| {
                p["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default")
                    == a.name
            });
            if runs_as {
                allow("a pod bound to the node runs as this account")
            } else {
                deny(
                    node,
                    &format!(
                        "has no pod running as serviceaccount '{}/{}'",
                        a.namespace, a.name
                    ),
                )
            }
        }
        ("", "pods", "" | "status" | "eviction") if !matches!(verb, "get" | "list" | "watch") => {
            if verb == "create" && sub.is_empty() {
                return deny(node, "may not create pods (Capstan has no mirror pods)");
            }
            if a.name.is_empty() {
                return deny(node, &format!("may not {verb} pods it is not bound to"));
            }
            match cached(api, "pods", "", &a.namespace, &a.name) {
                // Already gone: nothing to protect (the handler answers 404).
                None => allow("no such pod"),
                Some(p) if p["spec"]["nodeName"] == node => allow("a pod bound to the node"),
                Some(_) => deny(
                    node,
                    &format!(
                        "may not {verb} pod '{}/{}': it is bound to another node",
                        a.namespace, a.name
                    ),
                ),
            }
        }
        ("", "nodes", _) if !matches!(verb, "get" | "list" | "watch" | "create") => {
            if a.name == node {
                allow("its own Node")
            } else {
                deny(node, &format!("may not {verb} node '{}'", a.name))
            }
        }
        ("coordination.k8s.io", "leases", "")
            if a.namespace == "kube-node-lease" && !matches!(verb, "list" | "watch" | "create") =>
        {
            if a.name == node {
                allow("its own Lease")
            } else {
                deny(node, &format!("may not {verb} lease '{}'", a.name))
            }
        }
        _ => None,
    }
}

/// NodeRestriction on creates: a node creates only its own Node and Lease, and no pods.
pub fn admit_create(info: &ResourceInfo, obj: &Value) -> ApiResult<()> {
    let Some(user) = crate::auth::rbac::escalation::request_user() else {
        return Ok(());
    };
    let Some(node) = node_of(&user) else {
        return Ok(());
    };
    let name = obj.name().unwrap_or_default();
    let refused = match (info.group.as_str(), info.plural.as_str()) {
        ("", "nodes") if name != node => {
            Some(format!("node '{node}' may not create node '{name}'"))
        }
        ("coordination.k8s.io", "leases")
            if obj.namespace() == Some("kube-node-lease") && name != node =>
        {
            Some(format!("node '{node}' may not create lease '{name}'"))
        }
        ("", "pods") => Some(format!("node '{node}' may not create pods")),
        _ => None,
    };
    match refused {
        Some(why) => Err(ApiError::forbidden(&info.group, &info.plural, name, &why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_way_a_pod_uses_an_object_counts() {
        let pod = json!({"spec": {
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol-secret"}},
                {"name": "b", "configMap": {"name": "vol-cm"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "d", "projected": {"sources": [
                    {"secret": {"name": "proj-secret"}}, {"configMap": {"name": "kube-root-ca.crt"}}]}}],
            "imagePullSecrets": [{"name": "pull"}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": "from-cm"}}]}]}});
        let mut s = references(&pod, "secret");
        s.sort();
        assert_eq!(
            s,
            [
                "env-secret",
                "init-env",
                "proj-secret",
                "pull",
                "vol-secret"
            ]
        );
        let mut c = references(&pod, "configMap");
        c.sort();
        assert_eq!(c, ["env-cm", "from-cm", "kube-root-ca.crt", "vol-cm"]);
        assert_eq!(references(&pod, "persistentVolumeClaim"), ["data"]);
    }

    #[test]
    fn only_node_users_are_nodes() {
        let node = UserInfo::authenticated("system:node:n1", "", &[NODES.into()]);
        assert_eq!(node_of(&node), Some("n1"));
        let pretender = UserInfo::authenticated("system:node:n1", "", &[]);
        assert_eq!(node_of(&pretender), None);
        let empty = UserInfo::authenticated("system:node:", "", &[NODES.into()]);
        assert_eq!(node_of(&empty), None);
    }
}
