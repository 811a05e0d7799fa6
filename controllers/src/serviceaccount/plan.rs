//! What the ServiceAccount and root-CA controllers must write, from what they see: pure, so
//! the decisions are table-tested without a cluster.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};

/// The account every namespace has.
pub const DEFAULT_ACCOUNT: &str = "default";
/// The ConfigMap with the cluster CA every namespace has.
pub const ROOT_CA: &str = "kube-root-ca.crt";
/// The key of the CA in [`ROOT_CA`].
pub const CA_KEY: &str = "ca.crt";

/// Namespaces that are not being deleted (nothing is made in a terminating one: the
/// namespace controller is emptying it).
pub fn active(namespaces: &[std::sync::Arc<Namespace>]) -> BTreeSet<String> {
    namespaces
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_none_or(|p| p != "Terminating")
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

/// The active namespaces without a `default` ServiceAccount.
pub fn missing_accounts(
    active: &BTreeSet<String>,
    accounts: &[std::sync::Arc<ServiceAccount>],
) -> Vec<String> {
    let have: BTreeSet<&str> = accounts
        .iter()
        .filter(|a| a.metadata.name.as_deref() == Some(DEFAULT_ACCOUNT))
        .filter_map(|a| a.metadata.namespace.as_deref())
        .collect();
    active
        .iter()
        .filter(|ns| !have.contains(ns.as_str()))
        .cloned()
        .collect()
}

/// What to do about one namespace's `kube-root-ca.crt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCa {
    Create(String),
    /// It exists with other data: its data is set back to the CA (by resourceVersion).
    Update {
        namespace: String,
        resource_version: String,
    },
}

/// The namespaces whose `kube-root-ca.crt` is missing or does not hold exactly `ca`.
pub fn root_ca_changes(
    active: &BTreeSet<String>,
    config_maps: &[std::sync::Arc<ConfigMap>],
    ca: &str,
) -> Vec<RootCa> {
    let by_ns: BTreeMap<&str, &ConfigMap> = config_maps
        .iter()
        .filter(|c| c.metadata.name.as_deref() == Some(ROOT_CA))
        .filter_map(|c| Some((c.metadata.namespace.as_deref()?, &**c)))
        .collect();
    let want = BTreeMap::from([(CA_KEY.to_string(), ca.to_string())]);
    active
        .iter()
        .filter_map(|ns| match by_ns.get(ns.as_str()) {
            None => Some(RootCa::Create(ns.clone())),
            Some(cm) if cm.data.as_ref() != Some(&want) || cm.binary_data.is_some() => {
                Some(RootCa::Update {
                    namespace: ns.clone(),
                    resource_version: cm.metadata.resource_version.clone().unwrap_or_default(),
                })
            }
            Some(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn ns(name: &str, terminating: bool) -> Arc<Namespace> {
        let mut v = json!({"metadata": {"name": name}, "status": {"phase": "Active"}});
        if terminating {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            v["status"]["phase"] = json!("Terminating");
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn sa(ns: &str, name: &str) -> Arc<ServiceAccount> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}})).unwrap(),
        )
    }

    fn cm(ns: &str, name: &str, data: serde_json::Value) -> Arc<ConfigMap> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": ns, "resourceVersion": "7"}, "data": data}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn every_active_namespace_gets_a_default_account() {
        let active = active(&[ns("a", false), ns("b", false), ns("gone", true)]);
        assert_eq!(active, BTreeSet::from(["a".into(), "b".into()]));
        // `b` has only another account; `gone` is terminating and gets nothing.
        let missing = missing_accounts(
            &active,
            &[sa("a", "default"), sa("b", "builder"), sa("gone", "x")],
        );
        assert_eq!(missing, vec!["b".to_string()]);
    }

    #[test]
    fn the_root_ca_is_created_and_put_back_when_changed() {
        let active = active(&[ns("a", false), ns("b", false), ns("c", false)]);
        let changes = root_ca_changes(
            &active,
            &[
                cm("a", ROOT_CA, json!({"ca.crt": "CA"})),
                cm("b", ROOT_CA, json!({"ca.crt": "tampered"})),
                cm("c", "other", json!({"ca.crt": "CA"})),
            ],
            "CA",
        );
        assert_eq!(
            changes,
            vec![
                RootCa::Update {
                    namespace: "b".into(),
                    resource_version: "7".into()
                },
                RootCa::Create("c".into()),
            ]
        );
        // An extra key is taken out too.
        let changes = root_ca_changes(
            &active,
            &[cm("a", ROOT_CA, json!({"ca.crt": "CA", "x": "y"}))],
            "CA",
        );
        assert!(changes.contains(&RootCa::Update {
            namespace: "a".into(),
            resource_version: "7".into()
        }));
    }
}
