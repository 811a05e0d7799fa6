//! What mirrored slices hold, from user-written Endpoints (kubernetes/pkg/controller/
//! endpointslicemirroring's reconciler and utils: addressToEndpoint, epPortsToEpsPorts,
//! newEndpointSlice). Pure.
//!
//! Each subset's addresses become endpoints (ready for `addresses`, not ready for
//! `notReadyAddresses`) under that subset's ports; addresses that are no IP are skipped, and a
//! subset keeps at most `max_per_subset` addresses, ready ones first.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

use super::MANAGED_BY;
use crate::endpointslice::reconcile::{Group, ports_key, sort_ports};
use crate::endpointslice::{LABEL_MANAGED_BY, LABEL_SERVICE_NAME};

/// Annotations never copied to slices.
const NOT_COPIED: &[&str] = &[
    "endpoints.kubernetes.io/last-change-trigger-time",
    "kubectl.kubernetes.io/last-applied-configuration",
];

fn address_to_endpoint(a: &EndpointAddress, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![a.ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            ..Default::default()
        }),
        target_ref: a.target_ref.clone(),
        node_name: a.node_name.clone().filter(|n| !n.is_empty()),
        hostname: a.hostname.clone().filter(|h| !h.is_empty()),
        ..Default::default()
    }
}

fn address_type(ip: &str) -> Option<&'static str> {
    match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(_) => Some("IPv4"),
        std::net::IpAddr::V6(_) => Some("IPv6"),
    }
}

/// The desired endpoints grouped by (address type, port set), and how many addresses were
/// dropped over `max_per_subset`.
pub fn groups(e: &Endpoints, max_per_subset: usize) -> (Vec<Group>, usize) {
    let mut out: BTreeMap<(String, String), Group> = BTreeMap::new();
    let mut dropped = 0;
    for subset in e.subsets.iter().flatten() {
        let mut ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        sort_ports(&mut ports);
        let ready = subset.addresses.iter().flatten().map(|a| (a, true));
        let not_ready = subset
            .not_ready_addresses
            .iter()
            .flatten()
            .map(|a| (a, false));
        let mut taken = 0;
        for (a, is_ready) in ready.chain(not_ready) {
            let Some(family) = address_type(&a.ip) else {
                continue;
            };
            if taken == max_per_subset {
                dropped += 1;
                continue;
            }
            taken += 1;
            out.entry((family.to_string(), ports_key(&ports)))
                .or_insert_with(|| Group {
                    address_type: family.to_string(),
                    ports: ports.clone(),
                    endpoints: Vec::new(),
                })
                .endpoints
                .push(address_to_endpoint(a, is_ready));
        }
    }
    (out.into_values().collect(), dropped)
}

/// The Endpoints' labels (but the reserved ones), the service name and the manager.
pub fn labels(e: &Endpoints) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = e
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != LABEL_SERVICE_NAME && k.as_str() != LABEL_MANAGED_BY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(
        LABEL_SERVICE_NAME.into(),
        e.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    labels
}

/// The Endpoints' annotations, but the trigger time and kubectl's last-applied configuration.
pub fn annotations(e: &Endpoints) -> BTreeMap<String, String> {
    e.metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EndpointPort as V1Port, EndpointSubset};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn addr(ip: &str) -> EndpointAddress {
        EndpointAddress {
            ip: ip.into(),
            ..Default::default()
        }
    }

    fn endpoints(subsets: Vec<EndpointSubset>) -> Endpoints {
        Endpoints {
            metadata: ObjectMeta {
                name: Some("ext".into()),
                namespace: Some("default".into()),
                labels: Some([("team".to_string(), "a".to_string())].into()),
                annotations: Some(
                    [
                        ("note".to_string(), "x".to_string()),
                        (NOT_COPIED[1].to_string(), "{}".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            subsets: Some(subsets),
        }
    }

    fn subset(ready: &[&str], not_ready: &[&str], port: i32) -> EndpointSubset {
        EndpointSubset {
            addresses: Some(ready.iter().map(|ip| addr(ip)).collect()),
            not_ready_addresses: Some(not_ready.iter().map(|ip| addr(ip)).collect()),
            ports: Some(vec![V1Port {
                name: Some("db".into()),
                port,
                protocol: None,
                app_protocol: None,
            }]),
        }
    }

    #[test]
    fn addresses_become_endpoints_by_family_and_ports() {
        let e = endpoints(vec![
            subset(
                &["192.0.2.1", "2001:db8::1", "not-an-ip"],
                &["192.0.2.2"],
                5432,
            ),
            subset(&["192.0.2.3"], &[], 5432),
            subset(&["192.0.2.4"], &[], 6432),
        ]);
        let (groups, dropped) = groups(&e, 1000);
        assert_eq!(dropped, 0);
        type Summary<'a> = (&'a str, Option<i32>, Vec<(&'a str, bool)>);
        let summary: Vec<Summary> = groups
            .iter()
            .map(|g| {
                (
                    g.address_type.as_str(),
                    g.ports[0].port,
                    g.endpoints
                        .iter()
                        .map(|e| {
                            (
                                e.addresses[0].as_str(),
                                e.conditions.as_ref().unwrap().ready.unwrap(),
                            )
                        })
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "IPv4",
                    Some(5432),
                    vec![
                        ("192.0.2.1", true),
                        ("192.0.2.2", false),
                        ("192.0.2.3", true)
                    ]
                ),
                ("IPv4", Some(6432), vec![("192.0.2.4", true)]),
                ("IPv6", Some(5432), vec![("2001:db8::1", true)]),
            ]
        );
        let p = &groups[0].ports[0];
        assert_eq!(
            (p.name.as_deref(), p.protocol.as_deref()),
            (Some("db"), Some("TCP"))
        );
    }

    #[test]
    fn a_subset_over_the_limit_keeps_ready_addresses_first() {
        let e = endpoints(vec![subset(&["192.0.2.1", "192.0.2.2"], &["192.0.2.3"], 1)]);
        let (groups, dropped) = groups(&e, 2);
        assert_eq!(dropped, 1);
        assert!(
            groups[0]
                .endpoints
                .iter()
                .all(|e| e.conditions.as_ref().unwrap().ready == Some(true))
        );
    }

    #[test]
    fn labels_and_annotations_are_copied_but_reserved_ones() {
        let e = endpoints(vec![]);
        let l = labels(&e);
        assert_eq!(l.get("team").map(String::as_str), Some("a"));
        assert_eq!(l.get(LABEL_SERVICE_NAME).map(String::as_str), Some("ext"));
        assert_eq!(
            l.get(LABEL_MANAGED_BY).map(String::as_str),
            Some(MANAGED_BY)
        );
        let a = annotations(&e);
        assert_eq!(a.len(), 1);
        assert_eq!(a.get("note").map(String::as_str), Some("x"));
    }
}
