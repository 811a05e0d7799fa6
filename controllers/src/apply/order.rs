//! The order objects are applied in (and pruned in reverse): CustomResourceDefinitions, then
//! Namespaces and cluster roles, then other cluster-scoped kinds, then namespaced ones, as
//! Flux's staged apply does; within a stage, Helm's install order of kinds (what a workload
//! refers to — accounts, secrets, config, claims, roles, Services — before the workload), then
//! custom resources, then the order of the files.

/// A stage: objects of a stage are applied before any of the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// CustomResourceDefinitions: applied, then waited on until Established.
    Definitions,
    /// Namespaces, ClusterRoles and ClusterRoleBindings.
    Cluster,
    /// Other cluster-scoped objects.
    ClusterScoped,
    /// Namespaced objects.
    Namespaced,
}

impl Stage {
    pub fn of(group: &str, kind: &str, namespaced: bool) -> Stage {
        match (group, kind) {
            ("apiextensions.k8s.io", "CustomResourceDefinition") => Stage::Definitions,
            ("", "Namespace")
            | ("rbac.authorization.k8s.io", "ClusterRole" | "ClusterRoleBinding") => Stage::Cluster,
            _ if !namespaced => Stage::ClusterScoped,
            _ => Stage::Namespaced,
        }
    }
}

/// Helm's install order of the built-in kinds (releaseutil.InstallOrder).
const KINDS: &[&str] = &[
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
];

/// The sort key of an object: stage, then kind (custom kinds after the built-ins).
pub fn key(group: &str, kind: &str, namespaced: bool) -> (Stage, usize) {
    let builtin = !group.contains('.') || group.ends_with(".k8s.io");
    let rank = KINDS
        .iter()
        .position(|k| *k == kind)
        .filter(|_| builtin)
        .unwrap_or(KINDS.len());
    (Stage::of(group, kind, namespaced), rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_then_namespaces_then_cluster_then_namespaced() {
        let mut objs = vec![
            ("capstan.dev", "GitSync", true),
            ("apps", "Deployment", true),
            ("", "Service", true),
            ("", "ConfigMap", true),
            ("storage.k8s.io", "StorageClass", false),
            ("", "Namespace", false),
            ("apiextensions.k8s.io", "CustomResourceDefinition", false),
            ("rbac.authorization.k8s.io", "ClusterRole", false),
            ("", "ServiceAccount", true),
        ];
        objs.sort_by_key(|(g, k, n)| key(g, k, *n));
        let kinds: Vec<_> = objs.iter().map(|(_, k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition",
                "Namespace",
                "ClusterRole",
                "StorageClass",
                "ServiceAccount",
                "ConfigMap",
                "Service",
                "Deployment",
                "GitSync",
            ]
        );
        // A custom kind named like a built-in is still a custom kind.
        assert_eq!(key("example.com", "Service", true).1, KINDS.len());
    }
}
