//! The v1 Endpoints of a Service, from its pods (kubernetes/pkg/controller/endpoint's
//! syncService and addEndpointSubset, pkg/api/v1/endpoints' RepackSubsets, and truncateEndpoints).
//! Pure.
//!
//! Each pod contributes one address per Service port it resolves (named targetPorts looked up in
//! its containers); addresses with the same set of ports share a subset. Ready pods go to
//! `addresses`, the others to `notReadyAddresses`; terminating pods are left out — unless the
//! Service publishes not-ready addresses, when every pod with an IP is an address.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, ObjectReference, Pod, Service,
};

use crate::endpointslice::desired::{
    find_port, hostname_for, is_headless, pod_ip, publish_not_ready, selects,
    should_be_in_endpoints,
};
use crate::podutil;

/// At most this many addresses in one Endpoints object (maxCapacity).
pub const MAX_CAPACITY: usize = 1000;
/// Set to "truncated" when addresses were left out (EndpointsOverCapacity).
pub const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";

/// The Service's subsets in canonical order, and whether they were truncated to
/// [`MAX_CAPACITY`] addresses.
pub fn subsets(svc: &Service, pods: &[Arc<Pod>]) -> (Vec<EndpointSubset>, bool) {
    let tolerate_unready = publish_not_ready(svc);
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    // ports key -> (ports, ready, not ready)
    type Entry = (
        Vec<EndpointPort>,
        Vec<EndpointAddress>,
        Vec<EndpointAddress>,
    );
    let mut by_ports: BTreeMap<String, Entry> = BTreeMap::new();
    for pod in pods {
        if !selects(svc, pod) || !should_be_in_endpoints(pod, tolerate_unready) {
            continue;
        }
        let Some(ip) = pod_ip(pod) else { continue };
        let address = EndpointAddress {
            ip: ip.to_string(),
            hostname: hostname_for(pod, svc),
            node_name: podutil::node_name(pod).map(str::to_string),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
        };
        let mut pod_ports: Vec<EndpointPort> = ports
            .iter()
            .filter_map(|p| {
                Some(EndpointPort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port: find_port(pod, p)?,
                    protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect();
        // A pod serving none of the ports is no endpoint — except of a headless Service
        // without ports, which lists bare addresses.
        if pod_ports.is_empty() && !(ports.is_empty() && is_headless(svc)) {
            continue;
        }
        sort_ports(&mut pod_ports);
        let entry = by_ports
            .entry(ports_key(&pod_ports))
            .or_insert_with(|| (pod_ports, Vec::new(), Vec::new()));
        if tolerate_unready || podutil::is_ready(pod) {
            entry.1.push(address);
        } else {
            entry.2.push(address);
        }
    }
    let mut out: Vec<EndpointSubset> = by_ports
        .into_values()
        .map(|(ports, ready, not_ready)| EndpointSubset {
            addresses: Some(ready),
            not_ready_addresses: Some(not_ready),
            ports: Some(ports),
        })
        .collect();
    let truncated = truncate(&mut out, MAX_CAPACITY);
    (canonical(out), truncated)
}

/// Subsets in one order, with empty lists as None (as they come back from the API), so that
/// what exists and what is desired compare equal when they mean the same.
pub fn canonical(subsets: Vec<EndpointSubset>) -> Vec<EndpointSubset> {
    let mut out: Vec<EndpointSubset> = subsets
        .into_iter()
        .map(|mut s| {
            for list in [&mut s.addresses, &mut s.not_ready_addresses] {
                if let Some(l) = list.as_mut() {
                    l.sort_by(|a, b| address_order(a).cmp(&address_order(b)));
                }
                if list.as_ref().is_some_and(|l| l.is_empty()) {
                    *list = None;
                }
            }
            if let Some(p) = s.ports.as_mut() {
                for port in p.iter_mut() {
                    if port.name.as_deref() == Some("") {
                        port.name = None;
                    }
                    port.protocol.get_or_insert_with(|| "TCP".into());
                }
                sort_ports(p);
            }
            if s.ports.as_ref().is_some_and(|p| p.is_empty()) {
                s.ports = None;
            }
            s
        })
        .filter(|s| s.addresses.is_some() || s.not_ready_addresses.is_some())
        .collect();
    out.sort_by_key(|s| ports_key(s.ports.as_deref().unwrap_or(&[])));
    out
}

fn address_order(a: &EndpointAddress) -> (&str, &str) {
    let uid = a
        .target_ref
        .as_ref()
        .and_then(|r| r.uid.as_deref())
        .unwrap_or("");
    (a.ip.as_str(), uid)
}

fn sort_ports(ports: &mut [EndpointPort]) {
    ports.sort_by(|a, b| port_tuple(a).cmp(&port_tuple(b)));
}

fn port_tuple(p: &EndpointPort) -> (&str, &str, i32) {
    (
        p.name.as_deref().unwrap_or(""),
        p.protocol.as_deref().unwrap_or("TCP"),
        p.port,
    )
}

fn ports_key(ports: &[EndpointPort]) -> String {
    ports
        .iter()
        .map(|p| {
            let (n, proto, port) = port_tuple(p);
            format!(
                "{n}/{proto}/{port}/{}",
                p.app_protocol.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Keeps at most `max` addresses, ready ones first, each subset keeping a share proportional
/// to its size (truncateEndpoints). True when anything was dropped.
///
/// Example, max 10: subsets with 12 and 4 ready addresses (and 5 not ready) → the 16 ready do
/// not fit, so no not-ready address stays, and the ready ones get floor shares 10·12/16 = 7 and
/// 10·4/16 = 2, the one left over going to the first subset with room: 8 and 2.
pub fn truncate(subsets: &mut [EndpointSubset], max: usize) -> bool {
    let len = |l: &Option<Vec<EndpointAddress>>| l.as_ref().map_or(0, Vec::len);
    let ready: usize = subsets.iter().map(|s| len(&s.addresses)).sum();
    let not_ready: usize = subsets.iter().map(|s| len(&s.not_ready_addresses)).sum();
    if ready + not_ready <= max {
        return false;
    }
    let keep_ready = ready.min(max);
    let keep_not_ready = max - keep_ready;
    let ready_sizes: Vec<usize> = subsets.iter().map(|s| len(&s.addresses)).collect();
    let not_ready_sizes: Vec<usize> = subsets
        .iter()
        .map(|s| len(&s.not_ready_addresses))
        .collect();
    let ready_shares = shares(&ready_sizes, keep_ready);
    let not_ready_shares = shares(&not_ready_sizes, keep_not_ready);
    for (i, s) in subsets.iter_mut().enumerate() {
        if let Some(l) = s.addresses.as_mut() {
            l.truncate(ready_shares[i]);
        }
        if let Some(l) = s.not_ready_addresses.as_mut() {
            l.truncate(not_ready_shares[i]);
        }
    }
    true
}

/// Splits `keep` over `sizes` proportionally (floor), the remainder to the first that have room.
fn shares(sizes: &[usize], keep: usize) -> Vec<usize> {
    let total: usize = sizes.iter().sum();
    if total == 0 {
        return vec![0; sizes.len()];
    }
    let mut out: Vec<usize> = sizes.iter().map(|s| s * keep / total).collect();
    let mut left = keep - out.iter().sum::<usize>();
    for (i, s) in sizes.iter().enumerate() {
        while left > 0 && out[i] < *s {
            out[i] += 1;
            left -= 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podutil::fixtures::{PodBuilder, pod};
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn svc(publish: bool) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                publish_not_ready_addresses: Some(publish),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::String("http".into())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn serving(b: PodBuilder, ip: &str, port: i32) -> PodBuilder {
        let mut b = b;
        b.0.status.as_mut().unwrap().pod_ip = Some(ip.into());
        b.0.spec = Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: port,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        });
        b
    }

    fn ips(l: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        l.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_and_not_ready_pods_split_and_terminating_ones_are_left_out() {
        let pods = vec![
            serving(pod("a"), "10.0.0.2", 8080).ready_since(0).build(),
            serving(pod("b"), "10.0.0.1", 8080).running().build(),
            serving(pod("c"), "10.0.0.3", 8080)
                .ready_since(0)
                .deleting()
                .build(),
            serving(pod("d"), "10.0.0.4", 8080).phase("Failed").build(),
        ];
        let (s, truncated) = subsets(&svc(false), &pods);
        assert!(!truncated);
        assert_eq!(s.len(), 1);
        assert_eq!(ips(&s[0].addresses), ["10.0.0.2"]);
        assert_eq!(ips(&s[0].not_ready_addresses), ["10.0.0.1"]);
        let p = &s[0].ports.as_ref().unwrap()[0];
        assert_eq!((p.name.as_deref(), p.port), (Some("http"), 8080));
        let r = s[0].addresses.as_ref().unwrap()[0]
            .target_ref
            .clone()
            .unwrap();
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref()),
            (Some("Pod"), Some("a"))
        );
    }

    #[test]
    fn publishing_not_ready_addresses_lists_every_pod_as_an_address() {
        let pods = vec![
            serving(pod("a"), "10.0.0.2", 8080).ready_since(0).build(),
            serving(pod("b"), "10.0.0.1", 8080).running().build(),
            serving(pod("c"), "10.0.0.3", 8080).deleting().build(),
        ];
        let (s, _) = subsets(&svc(true), &pods);
        assert_eq!(ips(&s[0].addresses), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert_eq!(s[0].not_ready_addresses, None);
    }

    #[test]
    fn pods_resolving_different_ports_get_different_subsets() {
        let pods = vec![
            serving(pod("a"), "10.0.0.1", 8080).ready_since(0).build(),
            serving(pod("b"), "10.0.0.2", 9090).ready_since(0).build(),
            serving(pod("c"), "10.0.0.3", 8080).ready_since(0).build(),
        ];
        let (s, _) = subsets(&svc(false), &pods);
        let summary: Vec<(i32, Vec<&str>)> = s
            .iter()
            .map(|s| (s.ports.as_ref().unwrap()[0].port, ips(&s.addresses)))
            .collect();
        assert_eq!(
            summary,
            [
                (8080, vec!["10.0.0.1", "10.0.0.3"]),
                (9090, vec!["10.0.0.2"])
            ]
        );
    }

    #[test]
    fn canonical_form_ignores_order_and_empty_lists() {
        let pods = vec![
            serving(pod("a"), "10.0.0.2", 8080).ready_since(0).build(),
            serving(pod("b"), "10.0.0.1", 8080).ready_since(0).build(),
        ];
        let (s, _) = subsets(&svc(false), &pods);
        let mut shuffled = s.clone();
        shuffled[0].addresses.as_mut().unwrap().reverse();
        shuffled[0].not_ready_addresses = Some(vec![]);
        shuffled[0].ports.as_mut().unwrap()[0].protocol = None;
        assert_eq!(canonical(shuffled), s);
    }

    #[test]
    fn over_capacity_keeps_ready_addresses_first_in_proportion() {
        let addr = |i: usize| EndpointAddress {
            ip: format!("10.0.{}.{}", i / 256, i % 256),
            ..Default::default()
        };
        let subset = |ready: usize, not_ready: usize| EndpointSubset {
            addresses: Some((0..ready).map(addr).collect()),
            not_ready_addresses: Some((0..not_ready).map(addr).collect()),
            ports: None,
        };
        let mut s = vec![subset(12, 5), subset(4, 0)];
        assert!(truncate(&mut s, 10));
        let kept: Vec<(usize, usize)> = s
            .iter()
            .map(|s| (ips(&s.addresses).len(), ips(&s.not_ready_addresses).len()))
            .collect();
        assert_eq!(kept, [(8, 0), (2, 0)]);
        let mut s = vec![subset(600, 300), subset(200, 100)];
        assert!(truncate(&mut s, MAX_CAPACITY));
        let total: usize = s
            .iter()
            .map(|s| ips(&s.addresses).len() + ips(&s.not_ready_addresses).len())
            .sum();
        assert_eq!(total, MAX_CAPACITY);
        assert_eq!(ips(&s[0].addresses).len() + ips(&s[1].addresses).len(), 800);
        let mut s = vec![subset(3, 3)];
        assert!(!truncate(&mut s, 10));
    }
}
