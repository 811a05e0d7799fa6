use super::*;
use k8s_openapi::ByteString;
use serde_json::json;

fn key(ns: &str, name: &str) -> Key {
    (ns.to_string(), name.to_string())
}

fn objects() -> Objects {
    let mut o = Objects::default();
    let ing: Ingress = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"ingressClassName": "capstan",
            "tls": [{"hosts": ["a.example.test"], "secretName": "a-tls"},
                    {"hosts": ["b.example.test"], "secretName": "missing"}],
            "rules": [{"host": "a.example.test", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "a", "port": {"number": 80}}}},
                {"path": "/named", "pathType": "Prefix", "backend": {"service": {"name": "a", "port": {"name": "admin"}}}},
                {"path": "/gone", "pathType": "Prefix", "backend": {"service": {"name": "gone", "port": {"number": 80}}}},
                {"path": "/noport", "pathType": "Prefix", "backend": {"service": {"name": "a", "port": {"number": 81}}}},
                {"path": "/empty", "pathType": "Prefix", "backend": {"service": {"name": "empty", "port": {"number": 80}}}}]}}]}
    }))
    .unwrap();
    o.ingresses.insert(key("shop", "web"), ing);
    for (name, ports) in [
        (
            "a",
            json!([{"name": "http", "port": 80, "targetPort": 8080}, {"name": "admin", "port": 9000}]),
        ),
        ("empty", json!([{"port": 80}])),
    ] {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"ports": ports}
        }))
        .unwrap();
        o.services.insert(key("shop", name), svc);
    }
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "a-1", "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "a"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "admin", "port": 9090, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
            {"addresses": ["10.0.0.3"]}
        ]
    }))
    .unwrap();
    o.slices.insert(key("shop", "a-1"), slice);
    // A slice of another namespace's Service of the same name stays out.
    let mut other = o.slices[&key("shop", "a-1")].clone();
    other.metadata.namespace = Some("elsewhere".into());
    other.endpoints[0].addresses = vec!["10.9.9.9".into()];
    o.slices.insert(key("elsewhere", "a-1"), other);
    o
}

fn filter() -> ClassFilter {
    ClassFilter {
        class: "capstan".into(),
        unclassed: false,
    }
}

fn resolved(s: &Snapshot, path: &str) -> Result<Vec<SocketAddr>, String> {
    let m = s.table.route("a.example.test", path).unwrap();
    match s.resolve(&m.backend) {
        Resolved::Ready(u) => Ok(u.addrs.clone()),
        Resolved::Unavailable(why) => Err(why),
    }
}

#[test]
fn backends_resolve_to_ready_endpoints_by_port_number_or_name() {
    let s = Snapshot::build(&objects(), &filter());
    let addrs = |v: &[&str]| -> Vec<SocketAddr> { v.iter().map(|a| a.parse().unwrap()).collect() };
    assert_eq!(
        resolved(&s, "/"),
        Ok(addrs(&["10.0.0.1:8080", "10.0.0.3:8080"]))
    );
    assert_eq!(
        resolved(&s, "/named/x"),
        Ok(addrs(&["10.0.0.1:9090", "10.0.0.3:9090"]))
    );
    assert_eq!(
        resolved(&s, "/gone"),
        Err("service shop/gone does not exist".into())
    );
    assert_eq!(
        resolved(&s, "/noport"),
        Err("service shop/a has no port 81".into())
    );
    assert_eq!(
        resolved(&s, "/empty"),
        Err("service shop/empty has no ready endpoints for port 80".into())
    );
}

#[test]
fn each_request_starts_at_the_next_endpoint_and_goes_on_through_the_rest() {
    let u = Upstream::new(vec![
        "10.0.0.1:80".parse().unwrap(),
        "10.0.0.2:80".parse().unwrap(),
        "10.0.0.3:80".parse().unwrap(),
    ]);
    let firsts: Vec<u8> = (0..4)
        .map(|_| match u.order().next().unwrap().ip() {
            std::net::IpAddr::V4(ip) => ip.octets()[3],
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(firsts, vec![1, 2, 3, 1]);
    assert_eq!(u.order().count(), 3);
    assert_eq!(Upstream::new(Vec::new()).order().count(), 0);
}

#[test]
fn tls_sections_serve_their_secrets_and_say_why_one_cannot() {
    let ca = capstan_pki::Ca::generate().unwrap();
    let issued = ca.serving("a", &["a.example.test".to_string()]).unwrap();
    let mut o = objects();
    let tls_secret = |crt: &str, key: &str| -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("a-tls".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [
                    ("tls.crt".to_string(), ByteString(crt.as_bytes().to_vec())),
                    ("tls.key".to_string(), ByteString(key.as_bytes().to_vec())),
                ]
                .into(),
            ),
            ..Default::default()
        }
    };
    o.secrets.insert(
        key("shop", "a-tls"),
        tls_secret(&issued.cert_pem, &issued.key_pem),
    );
    let s = Snapshot::build(&o, &filter());
    let cert = s.certificate("A.example.test").expect("a certificate");
    assert_eq!(cert.cert.len(), 1);
    assert!(s.certificate("b.example.test").is_none());
    assert!(s.certificate("c.example.test").is_none());
    assert_eq!(
        s.cert_errors
            .get(&key("shop", "missing"))
            .map(String::as_str),
        Some("no such kubernetes.io/tls Secret")
    );

    // A key that is not the certificate's, and a certificate that is not PEM, are refused.
    let other = ca.serving("b", &["b.example.test".to_string()]).unwrap();
    o.secrets.insert(
        key("shop", "a-tls"),
        tls_secret(&issued.cert_pem, &other.key_pem),
    );
    let s = Snapshot::build(&o, &filter());
    assert!(s.certificate("a.example.test").is_none());
    assert!(
        s.cert_errors[&key("shop", "a-tls")].starts_with("tls.key does not match tls.crt"),
        "{:?}",
        s.cert_errors
    );
    o.secrets
        .insert(key("shop", "a-tls"), tls_secret("garbage", &issued.key_pem));
    let s = Snapshot::build(&o, &filter());
    assert_eq!(
        s.cert_errors[&key("shop", "a-tls")],
        "tls.crt holds no certificate"
    );
}
