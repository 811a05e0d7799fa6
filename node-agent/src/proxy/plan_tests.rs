//! Table tests of the planner: text out for states in, no I/O.

use std::net::Ipv4Addr;

use super::*;
use crate::proxy::model::{Endpoint, Protocol, ServicePort, ServicePortName, State, TableConfig};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn key(name: &str) -> ServicePortName {
    ServicePortName {
        namespace: "ns".into(),
        name: name.into(),
        port: "http".into(),
        protocol: Protocol::Tcp,
    }
}

fn eps(ips: &[&str]) -> Vec<Endpoint> {
    ips.iter().map(|i| Endpoint::ready(ip(i), 8080)).collect()
}

fn state(services: Vec<(&str, ServicePort)>) -> State {
    let mut s = State::new(TableConfig::new("t"));
    for (name, sp) in services {
        s.services.insert(key(name), sp);
    }
    s
}

fn web(endpoints: &[&str]) -> ServicePort {
    ServicePort::cluster_ip(ip("10.96.0.10"), 80, eps(endpoints))
}

fn api(endpoints: &[&str]) -> ServicePort {
    ServicePort::cluster_ip(ip("10.96.0.20"), 443, eps(endpoints))
}

/// The lines of `text` that mention `needle`.
fn mentioning<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

const WEB: &str = "service-Y6QD5CCT-ns/web/tcp/http";
const WEB_EP5: &str = "endpoint-QKZW7KBR-ns/web/tcp/http__10.88.0.5/8080";

#[test]
fn a_full_plan_of_one_service_is_exactly_kube_proxys_layout() {
    let text = full(&state(vec![("web", web(&["10.88.0.5"]))]));
    let want = format!(
        "\
add table ip t
flush table ip t
add chain ip t filter-prerouting {{ type filter hook prerouting priority -110; policy accept; }}
add chain ip t filter-output {{ type filter hook output priority -110; policy accept; }}
add chain ip t nat-prerouting {{ type nat hook prerouting priority -100; policy accept; }}
add chain ip t nat-output {{ type nat hook output priority -100; policy accept; }}
add chain ip t nat-postrouting {{ type nat hook postrouting priority 100; policy accept; }}
add chain ip t service-endpoints-check
add chain ip t services
add chain ip t masquerading
add chain ip t mark-for-masquerade
add chain ip t reject-chain
add map ip t service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
flush map ip t service-ips
add map ip t service-nodeports {{ type inet_proto . inet_service : verdict; }}
flush map ip t service-nodeports
add map ip t no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
flush map ip t no-endpoint-services
add map ip t no-endpoint-nodeports {{ type inet_proto . inet_service : verdict; }}
flush map ip t no-endpoint-nodeports
add chain ip t {WEB}
add chain ip t {WEB_EP5}
add rule ip t filter-prerouting ct state new jump service-endpoints-check
add rule ip t filter-output ct state new jump service-endpoints-check
add rule ip t service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule ip t service-endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip t nat-prerouting jump services
add rule ip t nat-output jump services
add rule ip t nat-postrouting jump masquerading
add rule ip t masquerading meta mark & 0x4000 == 0 return
add rule ip t masquerading meta mark set meta mark ^ 0x4000
add rule ip t masquerading masquerade fully-random
add rule ip t mark-for-masquerade meta mark set meta mark | 0x4000
add rule ip t reject-chain reject
add rule ip t services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip t services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
add rule ip t {WEB} numgen random mod 1 vmap {{ 0 : goto {WEB_EP5} }}
add rule ip t {WEB_EP5} ip saddr 10.88.0.5 jump mark-for-masquerade
add rule ip t {WEB_EP5} meta l4proto tcp dnat to 10.88.0.5:8080
add element ip t service-ips {{ 10.96.0.10 . tcp . 80 : goto {WEB} }}
"
    );
    assert_eq!(text, want);
}

#[test]
fn an_unchanged_state_plans_nothing() {
    let s = state(vec![
        ("web", web(&["10.88.0.5"])),
        ("api", api(&["10.88.0.7"])),
    ]);
    assert_eq!(partial(&s, &s.clone()), "");
}

#[test]
fn a_one_service_change_touches_only_that_services_chains_and_elements() {
    let old = state(vec![
        ("web", web(&["10.88.0.5"])),
        ("api", api(&["10.88.0.7", "10.88.0.8"])),
    ]);
    let mut new = old.clone();
    new.services
        .insert(key("web"), web(&["10.88.0.5", "10.88.0.6"]));
    let text = partial(&old, &new);
    assert!(text.lines().all(|l| !l.contains("ns/api/")), "{text}");
    assert!(
        !text.contains("flush table") && !text.contains("add table"),
        "{text}"
    );
    // the new endpoint's chain is added, the service chain refilled with two choices
    let ep6 = "endpoint-";
    let added: Vec<&str> = mentioning(&text, "add chain");
    assert_eq!(added.len(), 1, "{text}");
    assert!(added[0].contains(ep6) && added[0].ends_with("__10.88.0.6/8080"));
    assert!(
        text.contains(&format!("flush chain ip t {WEB}\n")),
        "{text}"
    );
    assert!(text.contains("numgen random mod 2 vmap"), "{text}");
    // the unchanged endpoint chain and the unchanged map element are not re-sent
    assert!(
        mentioning(&text, WEB_EP5)
            .iter()
            .all(|l| l.contains(&format!("add rule ip t {WEB} ")))
    );
    assert!(!text.contains("element"), "{text}");
}

#[test]
fn a_port_change_replaces_the_map_element_delete_first() {
    let old = state(vec![("web", web(&["10.88.0.5"]))]);
    let mut new = old.clone();
    new.services.get_mut(&key("web")).unwrap().port = 81;
    let text = partial(&old, &new);
    let del = text
        .find("delete element ip t service-ips { 10.96.0.10 . tcp . 80 }")
        .expect(&text);
    let add = text
        .find(&format!(
            "add element ip t service-ips {{ 10.96.0.10 . tcp . 81 : goto {WEB} }}"
        ))
        .expect(&text);
    assert!(del < add);
    assert!(!text.contains("chain"), "the chains did not change: {text}");
}

#[test]
fn a_removed_services_chains_are_flushed_then_deleted_after_its_elements() {
    let old = state(vec![
        ("web", web(&["10.88.0.5"])),
        ("api", api(&["10.88.0.7"])),
    ]);
    let new = state(vec![("api", api(&["10.88.0.7"]))]);
    let text = partial(&old, &new);
    let want = format!(
        "\
delete element ip t service-ips {{ 10.96.0.10 . tcp . 80 }}
flush chain ip t {WEB_EP5}
flush chain ip t {WEB}
delete chain ip t {WEB_EP5}
delete chain ip t {WEB}
"
    );
    assert_eq!(text, want);
}

#[test]
fn a_service_without_endpoints_goes_to_the_reject_map_with_no_chains() {
    let mut sp = web(&[]);
    sp.node_port = Some(30080);
    let text = full(&state(vec![("web", sp)]));
    assert!(
        text.contains(
            "add element ip t no-endpoint-services { 10.96.0.10 . tcp . 80 : goto reject-chain }"
        ),
        "{text}"
    );
    assert!(
        text.contains("add element ip t no-endpoint-nodeports { tcp . 30080 : goto reject-chain }"),
        "{text}"
    );
    assert!(mentioning(&text, "ns/web").is_empty(), "{text}");

    // endpoints appear: out of the reject map, into service-ips, in one partial sync
    let old = state(vec![("web", web(&[]))]);
    let new = state(vec![("web", web(&["10.88.0.5"]))]);
    let text = partial(&old, &new);
    assert!(text.contains("delete element ip t no-endpoint-services { 10.96.0.10 . tcp . 80 }"));
    assert!(text.contains(&format!(
        "add element ip t service-ips {{ 10.96.0.10 . tcp . 80 : goto {WEB} }}"
    )));
}

#[test]
fn client_ip_affinity_gets_a_dynamic_set_per_endpoint() {
    let mut sp = web(&["10.88.0.5", "10.88.0.6"]);
    sp.affinity_timeout = Some(600);
    let text = full(&state(vec![("web", sp)]));
    let sets = mentioning(&text, "add set ip t affinity-");
    assert_eq!(sets.len(), 2, "{text}");
    assert!(sets[0].ends_with("{ type ipv4_addr; flags dynamic,timeout; timeout 600s; }"));
    let set5 = sets
        .iter()
        .find(|l| l.contains("__10.88.0.5/8080"))
        .and_then(|l| l.split_whitespace().nth(4))
        .unwrap();
    // the endpoint records the client, the service chain sends it back there first
    assert!(
        text.contains(&format!(
            "add rule ip t {WEB_EP5} update @{set5} {{ ip saddr }}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "add rule ip t {WEB} ip saddr @{set5} goto {WEB_EP5}"
        )),
        "{text}"
    );

    // a changed timeout is a new set; the old one is deleted after its users are refilled
    let mut old = state(vec![("web", web(&["10.88.0.5"]))]);
    old.services.get_mut(&key("web")).unwrap().affinity_timeout = Some(600);
    let mut new = old.clone();
    new.services.get_mut(&key("web")).unwrap().affinity_timeout = Some(60);
    let text = partial(&old, &new);
    let add = text.find("timeout 60s").expect(&text);
    let del = text.find(&format!("delete set ip t {set5}")).expect(&text);
    assert!(add < del);
}

fn local(ip_: &str) -> Endpoint {
    Endpoint {
        local: true,
        ..Endpoint::ready(ip(ip_), 8080)
    }
}

#[test]
fn internal_traffic_policy_local_sends_cluster_ip_traffic_to_local_endpoints_only() {
    let mut sp = web(&["10.88.0.6"]);
    sp.endpoints.push(local("10.88.0.5"));
    sp.endpoints.sort();
    sp.internal_local = true;
    let text = full(&state(vec![("web", sp.clone())]));
    let local_chain = "local-Y6QD5CCT-ns/web/tcp/http";
    assert!(
        text.contains(&format!(
            "service-ips {{ 10.96.0.10 . tcp . 80 : goto {local_chain} }}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "add rule ip t {local_chain} numgen random mod 1 vmap {{ 0 : goto {WEB_EP5} }}"
        )),
        "{text}"
    );
    assert!(
        !text.contains("__10.88.0.6/8080"),
        "the remote endpoint is unused: {text}"
    );

    // no local endpoint: ClusterIP traffic is dropped, not sent elsewhere
    sp.endpoints.retain(|e| !e.local);
    let text = full(&state(vec![("web", sp)]));
    assert!(
        text.contains("no-endpoint-services { 10.96.0.10 . tcp . 80 : drop }"),
        "{text}"
    );
    assert!(!text.contains("add element ip t service-ips"), "{text}");
}

#[test]
fn external_traffic_policy_local_sends_node_port_traffic_to_local_endpoints_only() {
    let mut sp = web(&["10.88.0.6"]);
    sp.endpoints.push(local("10.88.0.5"));
    sp.endpoints.sort();
    sp.node_port = Some(30080);
    sp.external_local = true;
    let text = full(&state(vec![("web", sp.clone())]));
    let ext = "external-Y6QD5CCT-ns/web/tcp/http";
    let local_chain = "local-Y6QD5CCT-ns/web/tcp/http";
    assert!(
        text.contains(&format!("service-nodeports {{ tcp . 30080 : goto {ext} }}")),
        "{text}"
    );
    // ClusterIP traffic still goes cluster-wide
    assert!(
        text.contains(&format!(
            "service-ips {{ 10.96.0.10 . tcp . 80 : goto {WEB} }}"
        )),
        "{text}"
    );
    let ext_rules = mentioning(&text, &format!("add rule ip t {ext} "));
    assert_eq!(
        ext_rules.last().unwrap(),
        &format!("add rule ip t {ext} goto {local_chain}")
    );
    assert!(
        !ext_rules
            .iter()
            .any(|r| r.ends_with(&format!("{ext} jump mark-for-masquerade"))),
        "external clients keep their address"
    );
    assert!(text.contains(&format!(
        "add rule ip t {local_chain} numgen random mod 1 vmap {{ 0 : goto {WEB_EP5} }}"
    )));

    // policy Cluster masquerades node port traffic
    sp.external_local = false;
    let text = full(&state(vec![("web", sp.clone())]));
    assert_eq!(
        mentioning(&text, &format!("add rule ip t {ext} ")),
        [
            format!("add rule ip t {ext} jump mark-for-masquerade"),
            format!("add rule ip t {ext} goto {WEB}")
        ]
    );

    // no local endpoint: node port traffic dropped
    sp.external_local = true;
    sp.endpoints.retain(|e| !e.local);
    let text = full(&state(vec![("web", sp)]));
    assert!(
        text.contains("no-endpoint-nodeports { tcp . 30080 : drop }"),
        "{text}"
    );
}

#[test]
fn pod_cidr_masquerade_and_node_ips_shape_the_table() {
    let mut s = state(vec![("web", web(&["10.88.0.5"]))]);
    s.config.masquerade_cidr = Some("10.88.0.0/16".into());
    s.config.node_ips = vec![ip("192.168.1.10")];
    let text = full(&s);
    assert!(text.contains(&format!(
        "add rule ip t {WEB} ip saddr 10.88.0.0/16 jump mark-for-masquerade"
    )));
    assert!(text.contains("add rule ip t services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"));
    assert!(text.contains("add element ip t nodeport-ips { 192.168.1.10 }"));
}

#[test]
fn an_adopting_full_plan_deletes_stale_chains_and_sets_but_keeps_its_own() {
    let s = state(vec![("web", web(&["10.88.0.5"]))]);
    let mut existing = existing_of(&s);
    existing
        .chains
        .insert("service-OLD00000-ns/gone/tcp/http".into());
    existing
        .sets
        .insert("affinity-OLD00000-ns/gone/tcp/http__10.0.0.1/80".into());
    let (text, counts) = full_adopting(&s, &existing);
    let deletes = mentioning(&text, "delete ");
    assert_eq!(
        deletes,
        [
            "delete set ip t affinity-OLD00000-ns/gone/tcp/http__10.0.0.1/80",
            "delete chain ip t service-OLD00000-ns/gone/tcp/http"
        ]
    );
    assert!(!text.contains("delete table"));
    assert_eq!(counts.chains, 12);
}

#[test]
fn partial_counts_follow_the_changes() {
    let old = state(vec![("web", web(&["10.88.0.5"]))]);
    let new = state(vec![
        ("web", web(&["10.88.0.5", "10.88.0.6"])),
        ("api", api(&["10.88.0.7"])),
    ]);
    let (_, before) = full_adopting(&old, &Existing::default());
    let (_, after) = full_adopting(&new, &Existing::default());
    let (_, delta) = partial_counted(&old, &new);
    assert_eq!(before.chains + delta.chains, after.chains);
    assert_eq!(before.rules + delta.rules, after.rules);
}
