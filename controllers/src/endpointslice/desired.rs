//! What a Service's EndpointSlices should hold, from its pods (kubernetes/pkg/controller/util/
//! endpointslice's podToEndpoint and getEndpointPorts, pkg/api/v1/pod's FindPort and
//! pkg/controller/util/endpoint's ShouldPodBeInEndpoints / ShouldSetHostname). Pure.
//!
//! Endpoints are grouped by their resolved port set: a named targetPort is looked up in each
//! pod's container ports, so two pods of one Service may serve it on different numbers, and each
//! set of numbers gets slices of its own (an EndpointSlice has one `ports` list for all its
//! endpoints).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::reconcile::Group;
use crate::podutil;

/// The zone label on Nodes (v1.LabelTopologyZone).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The Service's selector when it has one (an empty selector is none: it does not survive the
/// API's round trip in Kubernetes either).
pub fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

pub fn is_external_name(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName")
}

pub fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

pub fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// Whether the Service's selector picks `pod` (same namespace, every selector label equal).
pub fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(sel) = selector(svc) else {
        return false;
    };
    if svc.metadata.namespace != pod.metadata.namespace {
        return false;
    }
    let labels = pod.metadata.labels.as_ref();
    sel.iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Whether `pod` belongs in a Service's endpoints at all: it has an IP and has not finished;
/// a pod being deleted only when `include_terminating` (ShouldPodBeInEndpoints).
pub fn should_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    let phase = podutil::phase(pod);
    if phase == "Succeeded" || phase == "Failed" {
        return false;
    }
    if pod_ip(pod).is_none() {
        return false;
    }
    include_terminating || pod.metadata.deletion_timestamp.is_none()
}

/// The pod's primary IP.
pub fn pod_ip(pod: &Pod) -> Option<&str> {
    let st = pod.status.as_ref()?;
    st.pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
        .or_else(|| st.pod_ips.as_deref()?.first().map(|p| p.ip.as_str()))
}

/// The pod's hostname when it is published for this Service: spec.hostname set and
/// spec.subdomain naming the Service (ShouldSetHostname).
pub fn hostname_for(pod: &Pod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()
        && pod.metadata.namespace == svc.metadata.namespace)
        .then(|| host.to_string())
}

/// The container port number a Service port targets on `pod` (FindPort): a number is taken as
/// it is; a name is looked up among the containers' (and restartable init containers') ports
/// with the Service port's protocol. None when the name is not there.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let target = port
        .target_port
        .clone()
        .unwrap_or(IntOrString::Int(port.port));
    let name = match target {
        IntOrString::Int(n) if n != 0 => return Some(n),
        IntOrString::Int(_) => return Some(port.port),
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => return Some(n),
            Err(_) => s,
        },
    };
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    let spec = pod.spec.as_ref()?;
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name.as_str())
                && p.protocol.as_deref().unwrap_or("TCP") == protocol
        })
        .map(|p| p.container_port)
}

/// The slice ports `pod` serves the Service on, canonically sorted; Service ports whose target
/// the pod lacks are left out (getEndpointPorts).
pub fn endpoint_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let mut out: Vec<EndpointPort> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(find_port(pod, p)?),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    super::reconcile::sort_ports(&mut out);
    out
}

/// The endpoint for `pod` (podToEndpoint):
/// - serving = the pod is Ready, whether or not it is terminating;
/// - terminating = it is being deleted;
/// - ready = serving and not terminating — or always, with publishNotReadyAddresses.
pub fn pod_to_endpoint(pod: &Pod, node: Option<&Node>, svc: &Service) -> Endpoint {
    let serving = podutil::is_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = publish_not_ready(svc) || (serving && !terminating);
    Endpoint {
        addresses: pod_ip(pod)
            .map(|ip| vec![ip.to_string()])
            .unwrap_or_default(),
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        node_name: podutil::node_name(pod).map(str::to_string),
        zone: node
            .and_then(|n| n.metadata.labels.as_ref()?.get(ZONE_LABEL))
            .filter(|z| !z.is_empty())
            .cloned(),
        hostname: hostname_for(pod, svc),
        ..Default::default()
    }
}

/// The address type of an IP (IPv4 unless it parses as IPv6).
pub fn address_type(ip: &str) -> &'static str {
    if ip.parse::<std::net::Ipv6Addr>().is_ok() {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// The Service's desired endpoints, grouped by address type and port set, and the pods left
/// out because their Node is not (yet) known — the caller retries those later. As in
/// Kubernetes, such a pod is still published when the Service publishes not-ready addresses.
pub fn desired(
    svc: &Service,
    pods: &[Arc<Pod>],
    node_named: impl Fn(&str) -> Option<Arc<Node>>,
) -> (Vec<Group>, Vec<String>) {
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    let mut missing_nodes = Vec::new();
    for pod in pods {
        if !selects(svc, pod) || !should_be_in_endpoints(pod, true) {
            continue;
        }
        let node = match podutil::node_name(pod) {
            Some(n) => match node_named(n) {
                Some(node) => Some(node),
                None if publish_not_ready(svc) => None,
                None => {
                    missing_nodes.push(podutil::key(&pod.metadata));
                    continue;
                }
            },
            None => None,
        };
        let ep = pod_to_endpoint(pod, node.as_deref(), svc);
        let family = address_type(ep.addresses.first().map(String::as_str).unwrap_or(""));
        // By the pod IP's family (Kubernetes goes by the Service's ipFamilies instead; the same
        // for single-stack pods, which is all Capstan runs).
        let ports = endpoint_ports(svc, pod);
        let key = (family.to_string(), super::reconcile::ports_key(&ports));
        groups
            .entry(key)
            .or_insert_with(|| Group {
                address_type: family.to_string(),
                ports,
                endpoints: Vec::new(),
            })
            .endpoints
            .push(ep);
    }
    (groups.into_values().collect(), missing_nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podutil::fixtures::pod;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::HashMap;

    fn svc(target: IntOrString) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("uid-svc".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    target_port: Some(target),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_ip(
        p: crate::podutil::fixtures::PodBuilder,
        ip: &str,
    ) -> crate::podutil::fixtures::PodBuilder {
        let mut p = p;
        p.0.status.as_mut().unwrap().pod_ip = Some(ip.into());
        p
    }

    fn with_http_port(
        p: crate::podutil::fixtures::PodBuilder,
        n: i32,
    ) -> crate::podutil::fixtures::PodBuilder {
        let mut p = p;
        p.0.spec = Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: n,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        });
        p
    }

    #[test]
    fn conditions_follow_readiness_and_deletion_as_kubernetes_defines_them() {
        let s = svc(IntOrString::Int(8080));
        // (ready pod, deleting, publishNotReady) -> (ready, serving, terminating)
        let cases = [
            (true, false, false, (true, true, false)),
            (false, false, false, (false, false, false)),
            (true, true, false, (false, true, true)),
            (false, true, false, (false, false, true)),
            (false, false, true, (true, false, false)),
            (true, true, true, (true, true, true)),
        ];
        for (ready, deleting, publish, want) in cases {
            let mut b = with_ip(pod("a").running(), "10.0.0.1");
            if ready {
                b = b.ready_since(0);
            }
            if deleting {
                b = b.deleting();
            }
            let mut s = s.clone();
            s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(publish);
            let c = pod_to_endpoint(&b.build(), None, &s).conditions.unwrap();
            assert_eq!(
                (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap()),
                want,
                "ready={ready} deleting={deleting} publish={publish}"
            );
        }
    }

    #[test]
    fn pods_without_ip_or_finished_are_left_out_and_deleting_ones_stay() {
        let s = svc(IntOrString::Int(8080));
        let pods = vec![
            pod("no-ip").running().build(),
            with_ip(pod("done"), "10.0.0.2").phase("Succeeded").build(),
            with_ip(pod("failed"), "10.0.0.3").phase("Failed").build(),
            with_ip(pod("going"), "10.0.0.4")
                .running()
                .deleting()
                .build(),
            with_ip(pod("other"), "10.0.0.5")
                .labels(&[("app", "db")])
                .build(),
            with_ip(pod("ok"), "10.0.0.6").running().build(),
        ];
        let (groups, missing) = desired(&s, &pods, |_| None);
        assert!(missing.is_empty());
        assert_eq!(groups.len(), 1);
        let names: Vec<_> = groups[0]
            .endpoints
            .iter()
            .map(|e| e.target_ref.as_ref().unwrap().name.clone().unwrap())
            .collect();
        assert_eq!(names, ["going", "ok"]);
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_split_groups() {
        let s = svc(IntOrString::String("http".into()));
        let pods = vec![
            with_http_port(with_ip(pod("a"), "10.0.0.1"), 8080).build(),
            with_http_port(with_ip(pod("b"), "10.0.0.2"), 8080).build(),
            with_http_port(with_ip(pod("c"), "10.0.0.3"), 9090).build(),
            with_ip(pod("no-port"), "10.0.0.4").build(),
        ];
        let (groups, _) = desired(&s, &pods, |_| None);
        let summary: Vec<(Vec<Option<i32>>, usize)> = groups
            .iter()
            .map(|g| (g.ports.iter().map(|p| p.port).collect(), g.endpoints.len()))
            .collect();
        assert_eq!(
            summary,
            [(vec![], 1), (vec![Some(8080)], 2), (vec![Some(9090)], 1)]
        );
        let p = &groups[1].ports[0];
        assert_eq!(
            (p.name.as_deref(), p.protocol.as_deref()),
            (Some("http"), Some("TCP"))
        );
    }

    #[test]
    fn node_zone_hostname_and_missing_nodes() {
        let mut s = svc(IntOrString::Int(80));
        let node = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some([(ZONE_LABEL.to_string(), "z1".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let nodes: HashMap<String, Arc<Node>> = [("n1".to_string(), Arc::new(node))].into();
        let mut named = with_ip(pod("a"), "10.0.0.1").on("n1");
        named.0.spec.as_mut().unwrap().hostname = Some("a".into());
        named.0.spec.as_mut().unwrap().subdomain = Some("web".into());
        let pods = vec![
            named.build(),
            with_ip(pod("b"), "10.0.0.2").on("gone").build(),
        ];
        let (groups, missing) = desired(&s, &pods, |n| nodes.get(n).cloned());
        assert_eq!(missing, ["default/b"]);
        let ep = &groups[0].endpoints[0];
        assert_eq!(ep.zone.as_deref(), Some("z1"));
        assert_eq!(ep.node_name.as_deref(), Some("n1"));
        assert_eq!(ep.hostname.as_deref(), Some("a"));
        // With publishNotReadyAddresses the pod on an unknown node is published anyway.
        s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let (groups, missing) = desired(&s, &pods, |n| nodes.get(n).cloned());
        assert!(missing.is_empty());
        assert_eq!(groups[0].endpoints.len(), 2);
    }
}
