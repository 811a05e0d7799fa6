//! The proxy's view of the cluster, pure: v1 Services and discovery.k8s.io/v1 EndpointSlices in,
//! one [`ServicePort`] per (Service, port) out — kube-proxy's `ServicePortMap` and
//! `EndpointsMap` (pkg/proxy/servicechangetracker.go, endpointschangetracker.go) folded into one
//! value the planner can compare.
//!
//! What is kept:
//! - Services with an IPv4 ClusterIP; ExternalName and headless (`clusterIP: None`) Services get
//!   no rules, so they are left out here.
//! - EndpointSlices of any manager, joined to their Service by the `kubernetes.io/service-name`
//!   label; a slice port joins a Service port by name and protocol (as kube-proxy does), and the
//!   endpoint's port is the slice port's number. Endpoints seen in several slices count once.
//! - Each endpoint's conditions (ready, serving, terminating) and whether it runs on this node;
//!   which of them receive traffic is decided by [`ServicePort::cluster_endpoints`] and
//!   [`ServicePort::local_endpoints`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The name nft uses (`meta l4proto tcp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// kube-proxy's ServicePortName: namespace/name, the port's name ("" when unnamed) and protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    /// `ns/name/tcp/port`: the readable half of every chain name of this port.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            self.port
        )
    }
}

/// One endpoint of a service port, with the conditions that decide whether it gets traffic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// `conditions.ready` (absent counts as ready).
    pub ready: bool,
    /// `conditions.serving` (absent: same as ready).
    pub serving: bool,
    /// `conditions.terminating` (absent counts as not terminating).
    pub terminating: bool,
    /// The endpoint's `nodeName` is this node.
    pub local: bool,
}

impl Endpoint {
    /// A ready endpoint (test and benchmark fixtures).
    pub fn ready(ip: Ipv4Addr, port: u16) -> Endpoint {
        Endpoint {
            ip,
            port,
            ready: true,
            serving: true,
            terminating: false,
            local: false,
        }
    }
}

/// Everything the planner needs about one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// `sessionAffinity: ClientIP`: the affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local` (only meaningful with a node port).
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// Sorted, without duplicates.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// A ClusterIP service port with these endpoints (test and benchmark fixtures).
    pub fn cluster_ip(cluster_ip: Ipv4Addr, port: u16, endpoints: Vec<Endpoint>) -> ServicePort {
        let mut endpoints = endpoints;
        endpoints.sort();
        endpoints.dedup();
        ServicePort {
            cluster_ip,
            port,
            node_port: None,
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            endpoints,
        }
    }

    /// The endpoints cluster-wide traffic goes to: the ready ones; if none is ready, the serving
    /// terminating ones (kube-proxy's terminating-endpoint fallback, KEP-1669).
    pub fn cluster_endpoints(&self) -> Vec<&Endpoint> {
        usable(self.endpoints.iter())
    }

    /// The same choice among the endpoints on this node (traffic policy Local).
    pub fn local_endpoints(&self) -> Vec<&Endpoint> {
        usable(self.endpoints.iter().filter(|e| e.local))
    }
}

fn usable<'a>(eps: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<&Endpoint> = eps.clone().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.filter(|e| e.serving && e.terminating).collect()
}

/// The table-wide settings the planner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    /// The `ip` family table Capstan owns.
    pub table: String,
    /// Masquerade service traffic from this CIDR (`a.b.c.d/n`): the pod CIDR when the bridge
    /// does not pass bridged frames through netfilter (see the module doc of `proxy`).
    pub masquerade_cidr: Option<String>,
    /// NodePorts answer on these addresses; empty means every local address but loopback.
    pub node_ips: Vec<Ipv4Addr>,
}

impl TableConfig {
    pub fn new(table: &str) -> TableConfig {
        TableConfig {
            table: table.to_string(),
            masquerade_cidr: None,
            node_ips: Vec::new(),
        }
    }
}

/// The desired state: what one sync programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub config: TableConfig,
    pub services: BTreeMap<ServicePortName, ServicePort>,
}

impl State {
    pub fn new(config: TableConfig) -> State {
        State {
            config,
            services: BTreeMap::new(),
        }
    }
}

/// Builds the desired state from the Services and EndpointSlices in the informers' stores.
pub fn build<'a>(
    config: TableConfig,
    node_name: &str,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> State {
    // (namespace, service) -> endpoint slices of it
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let ns = slice.metadata.namespace.as_deref().unwrap_or("");
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        by_service
            .entry((ns, svc.as_str()))
            .or_default()
            .push(slice);
    }
    let mut state = State::new(config);
    for svc in services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("");
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue; // headless ("None"), unallocated, or IPv6
        };
        let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
        });
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for sp in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(sp.port) else {
                continue;
            };
            let port_name = sp.name.clone().unwrap_or_default();
            let endpoints = endpoints_for(slices, &port_name, protocol, node_name);
            let key = ServicePortName {
                namespace: ns.to_string(),
                name: name.to_string(),
                port: port_name,
                protocol,
            };
            state.services.insert(
                key,
                ServicePort {
                    cluster_ip,
                    port,
                    node_port: sp
                        .node_port
                        .filter(|_| node_ports)
                        .and_then(|p| u16::try_from(p).ok()),
                    affinity_timeout,
                    external_local,
                    internal_local,
                    endpoints,
                },
            );
        }
    }
    state
}

pub(crate) fn endpoints_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    node_name: &str,
) -> Vec<Endpoint> {
    let mut out = BTreeSet::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        }) else {
            continue;
        };
        let Some(port) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(ip) = ep
                .addresses
                .first()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            out.insert(Endpoint {
                ip,
                port,
                ready,
                serving: cond.and_then(|c| c.serving).unwrap_or(ready),
                terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
                local: ep.node_name.as_deref() == Some(node_name),
            });
        }
    }
    // Two slices may list one address with different conditions (a move between slices): keep
    // the last in sort order per (ip, port), which is the ready one (`true` sorts after `false`).
    let mut eps: Vec<Endpoint> = Vec::with_capacity(out.len());
    for ep in out {
        match eps.last_mut() {
            Some(last) if last.ip == ep.ip && last.port == ep.port => *last = ep,
            _ => eps.push(ep),
        }
    }
    eps
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort as K8sPort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::EndpointPort;
    use k8s_openapi::api::discovery::v1::{Endpoint as K8sEndpoint, EndpointConditions};
    use kube::api::ObjectMeta;

    fn svc(name: &str, ip: &str, ports: &[(&str, i32)]) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| K8sPort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// An endpoint's address and its ready, serving and terminating conditions.
    type Ep<'a> = (&'a str, Option<bool>, Option<bool>, Option<bool>);

    fn slice(svc: &str, port: (&str, i32), eps: &[Ep<'_>]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some(format!("{svc}-x")),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ports: Some(vec![EndpointPort {
                name: (!port.0.is_empty()).then(|| port.0.to_string()),
                port: Some(port.1),
                ..Default::default()
            }]),
            endpoints: eps
                .iter()
                .map(|(ip, ready, serving, terminating)| K8sEndpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        serving: *serving,
                        terminating: *terminating,
                    }),
                    node_name: Some("node-a".into()),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn key(name: &str, port: &str) -> ServicePortName {
        ServicePortName {
            namespace: "ns".into(),
            name: name.into(),
            port: port.into(),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn slice_ports_join_service_ports_by_name() {
        let s = svc("web", "10.96.0.10", &[("http", 80), ("metrics", 9090)]);
        let a = slice("web", ("http", 8080), &[("10.88.0.5", None, None, None)]);
        let b = slice(
            "web",
            ("metrics", 9100),
            &[("10.88.0.6", Some(true), None, None)],
        );
        let state = build(TableConfig::new("t"), "node-a", [&s], [&a, &b]);
        let http = &state.services[&key("web", "http")];
        assert_eq!(http.port, 80);
        assert_eq!(http.endpoints.len(), 1);
        assert_eq!(
            (http.endpoints[0].ip, http.endpoints[0].port),
            ("10.88.0.5".parse().unwrap(), 8080)
        );
        assert!(http.endpoints[0].local);
        let metrics = &state.services[&key("web", "metrics")];
        assert_eq!(metrics.endpoints[0].port, 9100);
    }

    #[test]
    fn headless_and_external_name_services_get_no_service_ports() {
        let headless = svc("h", "None", &[("", 80)]);
        let mut ext = svc("e", "", &[("", 80)]);
        ext.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        let state = build(TableConfig::new("t"), "n", [&headless, &ext], []);
        assert!(state.services.is_empty());
    }

    #[test]
    fn terminating_serving_endpoints_are_used_only_when_none_is_ready() {
        let s = svc("web", "10.96.0.10", &[("", 80)]);
        let sl = slice(
            "web",
            ("", 80),
            &[
                ("10.88.0.1", Some(false), Some(true), Some(true)),
                ("10.88.0.2", Some(false), Some(false), Some(true)),
            ],
        );
        let state = build(TableConfig::new("t"), "n", [&s], [&sl]);
        let sp = &state.services[&key("web", "")];
        let ips: Vec<_> = sp
            .cluster_endpoints()
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(ips, ["10.88.0.1"]);

        let sl = slice(
            "web",
            ("", 80),
            &[
                ("10.88.0.1", Some(false), Some(true), Some(true)),
                ("10.88.0.3", None, None, None),
            ],
        );
        let state = build(TableConfig::new("t"), "n", [&s], [&sl]);
        let sp = &state.services[&key("web", "")];
        let ips: Vec<_> = sp
            .cluster_endpoints()
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(ips, ["10.88.0.3"]);
    }

    #[test]
    fn affinity_timeout_defaults_to_three_hours() {
        let mut s = svc("web", "10.96.0.10", &[("", 80)]);
        s.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        let state = build(TableConfig::new("t"), "n", [&s], []);
        assert_eq!(
            state.services[&key("web", "")].affinity_timeout,
            Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
        );
    }

    #[test]
    fn an_endpoint_in_two_slices_counts_once() {
        let s = svc("web", "10.96.0.10", &[("", 80)]);
        let a = slice("web", ("", 80), &[("10.88.0.1", Some(false), None, None)]);
        let mut b = slice("web", ("", 80), &[("10.88.0.1", Some(true), None, None)]);
        b.metadata.name = Some("web-y".into());
        let state = build(TableConfig::new("t"), "n", [&s], [&a, &b]);
        let sp = &state.services[&key("web", "")];
        assert_eq!(sp.endpoints.len(), 1);
        assert!(sp.endpoints[0].ready);
    }

    #[test]
    fn node_ports_and_traffic_policies_come_from_the_service_type_and_spec() {
        let mut s = svc("web", "10.96.0.10", &[("", 80)]);
        s.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(30080);
        let state = build(TableConfig::new("t"), "n", [&s], []);
        assert_eq!(
            state.services[&key("web", "")].node_port,
            None,
            "a ClusterIP Service has none"
        );
        let spec = s.spec.as_mut().unwrap();
        spec.type_ = Some("NodePort".into());
        spec.external_traffic_policy = Some("Local".into());
        spec.internal_traffic_policy = Some("Local".into());
        let state = build(TableConfig::new("t"), "n", [&s], []);
        let sp = &state.services[&key("web", "")];
        assert_eq!(sp.node_port, Some(30080));
        assert!(sp.external_local && sp.internal_local);
    }

    #[test]
    fn local_endpoints_are_those_on_this_node() {
        let s = svc("web", "10.96.0.10", &[("", 80)]);
        let mut sl = slice(
            "web",
            ("", 80),
            &[
                ("10.88.0.1", None, None, None),
                ("10.88.0.2", None, None, None),
            ],
        );
        sl.endpoints[1].node_name = Some("node-b".into());
        let state = build(TableConfig::new("t"), "node-b", [&s], [&sl]);
        let sp = &state.services[&key("web", "")];
        let local: Vec<_> = sp
            .local_endpoints()
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(local, ["10.88.0.2"]);
        assert_eq!(sp.cluster_endpoints().len(), 2);
    }
}
