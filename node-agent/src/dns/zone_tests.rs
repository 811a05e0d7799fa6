//! Table tests of the cluster zone: Services and EndpointSlices in, answers out, no sockets.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Lookup, SERVICE_NAME_LABEL, Zone};

fn n(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn port(name: &str, proto: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        protocol: Some(proto.into()),
        port,
        ..Default::default()
    }
}

fn service(ns: &str, name: &str, cluster_ip: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn external(ns: &str, name: &str, target: &str) -> Service {
    let mut svc = service(ns, name, "", vec![]);
    let spec = svc.spec.as_mut().unwrap();
    spec.type_ = Some("ExternalName".into());
    spec.external_name = Some(target.into());
    svc
}

/// (address, hostname, ready)
fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    eps: &[(&str, Option<&str>, Option<bool>)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: eps
            .iter()
            .map(|(ip, host, ready)| Endpoint {
                addresses: vec![ip.to_string()],
                hostname: host.map(str::to_string),
                conditions: Some(EndpointConditions {
                    ready: *ready,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            protocol: Some("TCP".into()),
            port: Some(8080),
            ..Default::default()
        }]),
    }
}

fn answer(zone: &Zone, name: &str, qtype: RecordType) -> super::Answer {
    match zone.lookup(&n(name), qtype) {
        Lookup::Answer(a) => a,
        Lookup::NotAuthoritative => panic!("{name} {qtype}: not authoritative"),
    }
}

fn a(name: &str, ip: [u8; 4]) -> Record {
    Record::from_rdata(n(name), 5, RData::A(A(Ipv4Addr::from(ip))))
}

/// A zone with: ClusterIP web (http 80, unnamed 81), headless db with two ready endpoints (one with
/// a hostname) and one not ready, ExternalName ext → example.com, ExternalName alias → web.
fn zone() -> Zone {
    let mut z = Zone::new("cluster.local", 5).unwrap();
    let mut web = service(
        "default",
        "web",
        "10.96.0.10",
        vec![port("http", "TCP", 80)],
    );
    web.spec
        .as_mut()
        .unwrap()
        .ports
        .as_mut()
        .unwrap()
        .push(ServicePort {
            port: 81,
            ..Default::default()
        });
    z.apply_service(&web);
    z.apply_service(&service(
        "prod",
        "db",
        "None",
        vec![port("http", "TCP", 80)],
    ));
    z.apply_slice(&slice(
        "prod",
        "db-abc",
        "db",
        &[
            ("10.1.0.1", Some("db-0"), Some(true)),
            ("10.1.0.2", None, None),
            ("10.1.0.3", Some("db-2"), Some(false)),
        ],
    ));
    z.apply_service(&external("default", "ext", "example.com"));
    z.apply_service(&external(
        "default",
        "alias",
        "web.default.svc.cluster.local",
    ));
    z
}

#[test]
fn cluster_ip_service_answers_a_with_its_cluster_ip_and_ttl() {
    let z = zone();
    let ans = answer(&z, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(ans.rcode, ResponseCode::NoError);
    assert_eq!(
        ans.answers,
        vec![a("web.default.svc.cluster.local.", [10, 96, 0, 10])]
    );
    assert!(ans.authorities.is_empty());
}

#[test]
fn names_are_case_insensitive() {
    let z = zone();
    let ans = answer(&z, "WEB.Default.SVC.cluster.LOCAL.", RecordType::A);
    assert_eq!(ans.answers.len(), 1);
}

#[test]
fn aaaa_for_a_v4_only_name_is_nodata_with_soa() {
    let z = zone();
    let ans = answer(&z, "web.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(ans.rcode, ResponseCode::NoError);
    assert!(ans.answers.is_empty());
    assert_eq!(ans.authorities[0].record_type(), RecordType::SOA);
}

#[test]
fn unknown_names_in_the_zone_are_nxdomain_with_soa() {
    let z = zone();
    for name in [
        "nope.default.svc.cluster.local.",
        "web.other.svc.cluster.local.",
        "x.cluster.local.",
    ] {
        let ans = answer(&z, name, RecordType::A);
        assert_eq!(ans.rcode, ResponseCode::NXDomain, "{name}");
        assert_eq!(ans.authorities.len(), 1, "{name}");
        assert_eq!(ans.authorities[0].record_type(), RecordType::SOA);
    }
}

#[test]
fn names_above_records_exist_and_answer_nodata() {
    let z = zone();
    for name in [
        "default.svc.cluster.local.",
        "svc.cluster.local.",
        "_tcp.web.default.svc.cluster.local.",
        "cluster.local.",
    ] {
        let ans = answer(&z, name, RecordType::A);
        assert_eq!(ans.rcode, ResponseCode::NoError, "{name}");
        assert!(ans.answers.is_empty(), "{name}");
    }
}

#[test]
fn srv_for_a_named_port_of_a_cluster_ip_service_targets_the_service_with_glue() {
    let z = zone();
    let ans = answer(
        &z,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    let target = n("web.default.svc.cluster.local.");
    assert_eq!(
        ans.answers,
        vec![Record::from_rdata(
            n("_http._tcp.web.default.svc.cluster.local."),
            5,
            RData::SRV(SRV::new(0, 100, 80, target.clone()))
        )]
    );
    assert_eq!(
        ans.additionals,
        vec![a("web.default.svc.cluster.local.", [10, 96, 0, 10])]
    );
    // A UDP SRV name for a TCP port does not exist.
    let ans = answer(
        &z,
        "_http._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(ans.rcode, ResponseCode::NXDomain);
}

#[test]
fn headless_service_answers_one_a_per_ready_endpoint() {
    let z = zone();
    let ans = answer(&z, "db.prod.svc.cluster.local.", RecordType::A);
    let mut ips: Vec<_> = ans.answers.iter().map(|r| r.data.clone()).collect();
    ips.sort_by_key(|d| format!("{d:?}"));
    assert_eq!(
        ips,
        vec![RData::A(A::new(10, 1, 0, 1)), RData::A(A::new(10, 1, 0, 2))],
        "the not-ready endpoint is left out"
    );
}

#[test]
fn headless_endpoints_get_hostname_or_dashed_address_names() {
    let z = zone();
    let ans = answer(&z, "db-0.db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(
        ans.answers,
        vec![a("db-0.db.prod.svc.cluster.local.", [10, 1, 0, 1])]
    );
    let ans = answer(&z, "10-1-0-2.db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(
        ans.answers,
        vec![a("10-1-0-2.db.prod.svc.cluster.local.", [10, 1, 0, 2])]
    );
    let ans = answer(&z, "db-2.db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(ans.rcode, ResponseCode::NXDomain, "not ready");
}

#[test]
fn headless_srv_has_one_record_per_endpoint_with_its_a_in_additionals() {
    let z = zone();
    let ans = answer(&z, "_http._tcp.db.prod.svc.cluster.local.", RecordType::SRV);
    let mut targets: Vec<(u16, String)> = ans
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(s) => (s.port, s.target.to_string()),
            other => panic!("{other:?}"),
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            (8080, "10-1-0-2.db.prod.svc.cluster.local.".to_string()),
            (8080, "db-0.db.prod.svc.cluster.local.".to_string())
        ]
    );
    assert_eq!(ans.additionals.len(), 2);
}

#[test]
fn publish_not_ready_addresses_includes_unready_endpoints() {
    let mut z = zone();
    let mut db = service("prod", "db", "None", vec![]);
    db.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
    z.apply_service(&db);
    let ans = answer(&z, "db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(ans.answers.len(), 3);
}

#[test]
fn ptr_for_cluster_ip_and_headless_endpoint() {
    let z = zone();
    let ans = answer(&z, "10.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        ans.answers,
        vec![Record::from_rdata(
            n("10.0.96.10.in-addr.arpa."),
            5,
            RData::PTR(PTR(n("web.default.svc.cluster.local.")))
        )]
    );
    let ans = answer(&z, "1.0.1.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        ans.answers[0].data,
        RData::PTR(PTR(n("db-0.db.prod.svc.cluster.local.")))
    );
    // An address the zone does not know is someone else's.
    assert_eq!(
        z.lookup(&n("9.9.9.9.in-addr.arpa."), RecordType::PTR),
        Lookup::NotAuthoritative
    );
}

#[test]
fn external_name_answers_cname_for_any_type() {
    let z = zone();
    let ans = answer(&z, "ext.default.svc.cluster.local.", RecordType::A);
    assert_eq!(ans.answers.len(), 1);
    assert_eq!(ans.answers[0].data, RData::CNAME(CNAME(n("example.com."))));
    assert_eq!(ans.cname_target(), Some(&n("example.com.")));
}

#[test]
fn a_cname_to_a_service_in_the_zone_is_followed() {
    let z = zone();
    let ans = answer(&z, "alias.default.svc.cluster.local.", RecordType::A);
    assert_eq!(ans.answers.len(), 2);
    assert_eq!(
        ans.answers[1],
        a("web.default.svc.cluster.local.", [10, 96, 0, 10])
    );
    assert_eq!(ans.cname_target(), None);
}

#[test]
fn dns_version_is_txt_1_1_0() {
    let z = zone();
    let ans = answer(&z, "dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(
        ans.answers[0].data,
        RData::TXT(TXT::new(vec!["1.1.0".into()]))
    );
}

#[test]
fn pod_names_answer_the_address_they_spell() {
    let z = zone();
    let ans = answer(&z, "10-2-3-4.default.pod.cluster.local.", RecordType::A);
    assert_eq!(
        ans.answers,
        vec![a("10-2-3-4.default.pod.cluster.local.", [10, 2, 3, 4])]
    );
    let ans = answer(&z, "fd00--1.default.pod.cluster.local.", RecordType::AAAA);
    assert_eq!(
        ans.answers[0].data,
        RData::AAAA(AAAA("fd00::1".parse::<Ipv6Addr>().unwrap()))
    );
    let ans = answer(&z, "nonsense.default.pod.cluster.local.", RecordType::A);
    assert_eq!(ans.rcode, ResponseCode::NXDomain);
}

#[test]
fn names_outside_the_zone_are_not_authoritative() {
    let z = zone();
    assert_eq!(
        z.lookup(&n("example.com."), RecordType::A),
        Lookup::NotAuthoritative
    );
    assert_eq!(
        z.lookup(&n("local."), RecordType::A),
        Lookup::NotAuthoritative
    );
}

#[test]
fn deleting_a_service_removes_its_records_and_parents() {
    let mut z = zone();
    z.delete_service("default", "web");
    let ans = answer(&z, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(ans.rcode, ResponseCode::NXDomain);
    assert_eq!(
        z.lookup(&n("10.0.96.10.in-addr.arpa."), RecordType::PTR),
        Lookup::NotAuthoritative
    );
    // default still has ext and alias.
    assert_eq!(
        answer(&z, "default.svc.cluster.local.", RecordType::A).rcode,
        ResponseCode::NoError
    );
}

#[test]
fn slice_changes_update_a_headless_service() {
    let mut z = zone();
    z.apply_slice(&slice(
        "prod",
        "db-abc",
        "db",
        &[("10.1.0.9", None, Some(true))],
    ));
    let ans = answer(&z, "db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(
        ans.answers,
        vec![a("db.prod.svc.cluster.local.", [10, 1, 0, 9])]
    );
    z.delete_slice("prod", "db-abc");
    let ans = answer(&z, "db.prod.svc.cluster.local.", RecordType::A);
    assert!(
        ans.answers.is_empty(),
        "the Service exists with no endpoints: NODATA"
    );
    assert_eq!(ans.rcode, ResponseCode::NoError);
}

#[test]
fn a_slice_before_its_service_counts_once_the_service_arrives() {
    let mut z = Zone::new("cluster.local", 5).unwrap();
    z.apply_slice(&slice("ns", "s-1", "s", &[("10.1.0.7", None, None)]));
    assert_eq!(
        answer(&z, "s.ns.svc.cluster.local.", RecordType::A).rcode,
        ResponseCode::NXDomain
    );
    z.apply_service(&service("ns", "s", "None", vec![]));
    assert_eq!(
        answer(&z, "s.ns.svc.cluster.local.", RecordType::A)
            .answers
            .len(),
        1
    );
}

#[test]
fn reset_drops_what_the_relist_no_longer_has() {
    let mut z = zone();
    z.reset_services(&[service("default", "web", "10.96.0.11", vec![])]);
    assert_eq!(
        answer(&z, "web.default.svc.cluster.local.", RecordType::A).answers,
        vec![a("web.default.svc.cluster.local.", [10, 96, 0, 11])]
    );
    assert_eq!(
        answer(&z, "ext.default.svc.cluster.local.", RecordType::A).rcode,
        ResponseCode::NXDomain
    );
    z.reset_slices(&[]);
    z.apply_service(&service("prod", "db", "None", vec![]));
    assert!(
        answer(&z, "db.prod.svc.cluster.local.", RecordType::A)
            .answers
            .is_empty()
    );
}

#[test]
fn a_custom_domain_and_ttl_are_used() {
    let mut z = Zone::new("example.internal.", 30).unwrap();
    z.apply_service(&service("a", "b", "10.0.0.1", vec![]));
    let ans = answer(&z, "b.a.svc.example.internal.", RecordType::A);
    assert_eq!(ans.answers[0].ttl, 30);
    assert_eq!(
        z.lookup(&n("b.a.svc.cluster.local."), RecordType::A),
        Lookup::NotAuthoritative
    );
}

#[test]
fn every_change_bumps_the_soa_serial() {
    let mut z = zone();
    let before = z.serial();
    z.delete_service("default", "web");
    assert!(z.serial() > before);
}
