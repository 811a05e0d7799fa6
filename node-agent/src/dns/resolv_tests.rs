//! Table tests of resolv.conf parsing and the kubelet's pod DNS rules.

use k8s_openapi::api::core::v1::{PodDNSConfig, PodDNSConfigOption};

use super::{ResolvConf, kube_dns_ip, pod_dns_config};

fn host() -> ResolvConf {
    ResolvConf::parse(
        "# generated\nnameserver 192.0.2.53\nnameserver 192.0.2.54 ; second\n\
         search example.com. corp.example.com\noptions edns0 ndots:2\n",
    )
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn parse_reads_nameservers_last_search_and_options() {
    let conf = ResolvConf::parse(
        "nameserver 1.1.1.1\nsearch a.example\nsearch b.example. .\noptions rotate\n\
         ; comment\n#nameserver 9.9.9.9\noptions timeout:1\nnameserver fe80::1%eth0\nbogus line\n",
    );
    assert_eq!(conf.servers, strings(&["1.1.1.1", "fe80::1%eth0"]));
    assert_eq!(conf.searches, strings(&["b.example"]));
    assert_eq!(conf.options, strings(&["rotate", "timeout:1"]));
    assert_eq!(
        conf.upstreams(),
        vec![
            "1.1.1.1:53".parse().unwrap(),
            "[fe80::1]:53".parse().unwrap()
        ]
    );
}

#[test]
fn render_round_trips() {
    let conf = host();
    assert_eq!(ResolvConf::parse(&conf.render()), conf);
    assert_eq!(
        conf.render(),
        "nameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch example.com corp.example.com\noptions edns0 ndots:2\n"
    );
}

#[test]
fn pod_dns_policies_follow_the_kubelet() {
    let dns = strings(&["10.96.0.10"]);
    let cluster = ResolvConf {
        servers: dns.clone(),
        searches: strings(&[
            "ns1.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "example.com",
            "corp.example.com",
        ]),
        options: strings(&["ndots:5"]),
    };
    // (policy, hostNetwork, cluster DNS, expected)
    type Case<'a> = (Option<&'a str>, bool, &'a [String], Option<ResolvConf>);
    let cases: Vec<Case> = vec![
        (Some("ClusterFirst"), false, &dns, Some(cluster.clone())),
        (None, false, &dns, Some(cluster.clone())),
        (Some("ClusterFirst"), true, &dns, Some(host())),
        (
            Some("ClusterFirstWithHostNet"),
            true,
            &dns,
            Some(cluster.clone()),
        ),
        (
            Some("ClusterFirstWithHostNet"),
            false,
            &dns,
            Some(cluster.clone()),
        ),
        (Some("Default"), false, &dns, Some(host())),
        (Some("None"), false, &dns, Some(ResolvConf::default())),
        (Some("ClusterFirst"), false, &[], Some(host())),
        (Some("Bogus"), false, &dns, None),
    ];
    for (policy, host_network, cluster_dns, want) in cases {
        let got = pod_dns_config(
            policy,
            None,
            host_network,
            cluster_dns,
            "cluster.local",
            "ns1",
            &host(),
        );
        assert_eq!(
            got, want,
            "{policy:?} hostNetwork={host_network} dns={cluster_dns:?}"
        );
    }
}

#[test]
fn dns_config_is_appended_deduplicated_and_options_merged_by_name() {
    let extra = PodDNSConfig {
        nameservers: Some(strings(&["10.96.0.10", "192.0.2.99"])),
        searches: Some(strings(&["svc.cluster.local", "my.example"])),
        options: Some(vec![
            PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("2".into()),
            },
            PodDNSConfigOption {
                name: Some("single-request".into()),
                value: None,
            },
        ]),
    };
    let got = pod_dns_config(
        Some("ClusterFirst"),
        Some(&extra),
        false,
        &strings(&["10.96.0.10"]),
        "cluster.local",
        "ns1",
        &ResolvConf::default(),
    )
    .unwrap();
    assert_eq!(got.servers, strings(&["10.96.0.10", "192.0.2.99"]));
    assert_eq!(
        got.searches,
        strings(&[
            "ns1.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "my.example"
        ])
    );
    assert_eq!(got.options, strings(&["ndots:2", "single-request"]));
}

#[test]
fn policy_none_takes_only_the_dns_config() {
    let extra = PodDNSConfig {
        nameservers: Some(strings(&["1.2.3.4"])),
        searches: Some(strings(&["a.example"])),
        options: Some(vec![PodDNSConfigOption {
            name: Some("edns0".into()),
            value: None,
        }]),
    };
    let got = pod_dns_config(
        Some("None"),
        Some(&extra),
        false,
        &strings(&["10.96.0.10"]),
        "cluster.local",
        "x",
        &host(),
    )
    .unwrap();
    assert_eq!(
        got,
        ResolvConf {
            servers: strings(&["1.2.3.4"]),
            searches: strings(&["a.example"]),
            options: strings(&["edns0"]),
        }
    );
}

#[test]
fn limits_cap_nameservers_and_searches() {
    let extra = PodDNSConfig {
        nameservers: Some(strings(&["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"])),
        searches: Some((0..40).map(|i| format!("d{i}.example")).collect()),
        options: None,
    };
    let got = pod_dns_config(
        Some("None"),
        Some(&extra),
        false,
        &[],
        "cluster.local",
        "x",
        &host(),
    )
    .unwrap();
    assert_eq!(got.servers.len(), 3);
    assert_eq!(got.searches.len(), 32);
    let long: Vec<String> = (0..32)
        .map(|i| format!("{i:02}{}", "a".repeat(98)))
        .collect();
    let extra = PodDNSConfig {
        searches: Some(long),
        ..Default::default()
    };
    let got = pod_dns_config(
        Some("None"),
        Some(&extra),
        false,
        &[],
        "cluster.local",
        "x",
        &host(),
    )
    .unwrap();
    assert!(got.searches.join(" ").len() <= 2048);
    assert_eq!(
        got.searches.len(),
        20,
        "20 domains of 100 characters and their spaces fit in 2,048"
    );
}

#[test]
fn an_empty_cluster_domain_searches_only_the_hosts_domains() {
    let got = pod_dns_config(
        Some("ClusterFirst"),
        None,
        false,
        &strings(&["10.0.0.10"]),
        "",
        "ns",
        &host(),
    )
    .unwrap();
    assert_eq!(got.searches, strings(&["example.com", "corp.example.com"]));
}

#[test]
fn kube_dns_ip_is_the_tenth_address_of_the_service_cidr() {
    let cases = [
        ("10.96.0.0/12", Some("10.96.0.10")),
        ("10.96.5.7/16", Some("10.96.0.10")),
        ("172.20.0.0/28", Some("172.20.0.10")),
        ("10.0.0.0/29", None),
        ("fd00:10:96::/112", Some("fd00:10:96::a")),
        ("nonsense", None),
        ("10.0.0.0/x", None),
    ];
    for (cidr, want) in cases {
        assert_eq!(
            kube_dns_ip(cidr),
            want.map(|w| w.parse().unwrap()),
            "{cidr}"
        );
    }
}
