//! The fixtures in testdata/ are request bodies kubectl 1.32 sent (captured on the wire by a
//! recording proxy in front of the API server): `create namespace foo`, `create configmap cm1
//! --from-literal=a=b --from-literal=c=`, `create secret generic s1 --from-literal=pw=hunter2
//! --from-literal=bin=$'\x01\x02'`, `create deployment web --image=busybox --replicas=0 --port=80
//! -- httpd -f -p 80`, `create service clusterip svc1 --tcp=80:8080 --tcp=443:https`, `create
//! serviceaccount sa1`, and the DeleteOptions of `drain --disable-eviction --grace-period=0`.

use serde_json::{Value, json};

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/src/protobuf/testdata/{name}.pb",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn decode(name: &str, api_version: &str, kind: &str) -> Value {
    to_json(&fixture(name), api_version, kind).unwrap()
}

#[test]
fn kubectl_generator_bodies_decode_to_what_the_json_client_sends() {
    assert_eq!(
        decode("namespaces", "v1", "Namespace"),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "foo"}, "spec": {}, "status": {}})
    );
    assert_eq!(
        decode("configmaps", "v1", "ConfigMap"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1"},
               "data": {"a": "b", "c": ""}})
    );
    // Secret data are bytes on the wire, base64 in JSON.
    assert_eq!(
        decode("secrets", "v1", "Secret"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"},
               "data": {"pw": "aHVudGVyMg==", "bin": "AQI="}})
    );
    assert_eq!(
        decode("serviceaccounts", "v1", "ServiceAccount"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa1"}})
    );
}

#[test]
fn a_deployment_keeps_its_explicit_zero_and_drops_go_zero_values() {
    let d = decode("deployments", "apps/v1", "Deployment");
    assert_eq!(d["kind"], "Deployment");
    assert_eq!(d["apiVersion"], "apps/v1");
    // `--replicas=0` is a pointer's 0: kept, or defaulting would make it 1.
    assert_eq!(d["spec"]["replicas"], 0);
    assert_eq!(
        d["spec"]["selector"],
        json!({"matchLabels": {"app": "web"}})
    );
    assert_eq!(d["spec"]["strategy"], json!({}));
    // The template's zero creationTimestamp (an empty Time) and generation 0 are gone, as in
    // Go's JSON.
    assert_eq!(
        d["spec"]["template"]["metadata"],
        json!({"labels": {"app": "web"}})
    );
    assert_eq!(
        d["spec"]["template"]["spec"],
        json!({"containers": [{
            "name": "busybox",
            "image": "busybox",
            "command": ["httpd", "-f", "-p", "80"],
            "ports": [{"containerPort": 80}],
            "resources": {},
        }]})
    );
    assert!(d["spec"].get("paused").is_none());
    assert!(d["spec"].get("minReadySeconds").is_none());
}

#[test]
fn a_service_port_reads_int_or_string_both_ways() {
    let s = decode("services", "v1", "Service");
    assert_eq!(
        s["spec"]["ports"],
        json!([
            {"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080},
            {"name": "443-https", "protocol": "TCP", "port": 443, "targetPort": "https"},
        ])
    );
    assert_eq!(s["spec"]["type"], "ClusterIP");
    assert_eq!(s["spec"]["selector"], json!({"app": "svc1"}));
}

#[test]
fn delete_options_keep_a_zero_grace_period() {
    let o = decode("deleteoptions", "v1", "DeleteOptions");
    assert_eq!(o["kind"], "DeleteOptions");
    assert_eq!(o["gracePeriodSeconds"], 0);
}

/// The envelope's TypeMeta wins over the endpoint's; an empty one takes the endpoint's.
#[test]
fn the_envelope_names_the_kind() {
    let mut body = b"k8s\0".to_vec();
    // Unknown { raw: ConfigMap { data: {"k": "v"} } }, no typeMeta.
    let entry = [0x0a, 1, b'k', 0x12, 1, b'v'];
    let mut cm = vec![0x12, entry.len() as u8];
    cm.extend(entry);
    body.extend([0x12, cm.len() as u8]);
    body.extend(&cm);
    assert_eq!(
        to_json(&body, "v1", "ConfigMap").unwrap(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}})
    );
    // A kind with no protobuf form (a custom resource): 415, as in Kubernetes.
    let e = to_json(&body, "example.com/v1", "Widget").unwrap_err();
    assert_eq!(e.code, 415, "{e:?}");
    // Not an envelope at all.
    let e = to_json(b"{\"kind\":\"ConfigMap\"}", "v1", "ConfigMap").unwrap_err();
    assert_eq!(e.code, 400, "{e:?}");
}

/// Every prefix and many corruptions of real bodies: a value or a 400/415, never a panic.
#[test]
fn truncated_and_corrupted_bodies_are_errors_not_panics() {
    let mut rng = fastrand::Rng::with_seed(7);
    for (name, v, k) in [
        ("namespaces", "v1", "Namespace"),
        ("configmaps", "v1", "ConfigMap"),
        ("secrets", "v1", "Secret"),
        ("deployments", "apps/v1", "Deployment"),
        ("services", "v1", "Service"),
        ("deleteoptions", "v1", "DeleteOptions"),
    ] {
        let body = fixture(name);
        let mut failed = 0;
        for len in 0..body.len() {
            if let Err(e) = to_json(&body[..len], v, k) {
                assert!(matches!(e.code, 400 | 415), "{name}[..{len}]: {e:?}");
                failed += 1;
            }
        }
        assert!(failed > 0, "{name}: no truncation was refused");
        for _ in 0..2000 {
            let mut b = body.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            if let Err(e) = to_json(&b, v, k) {
                assert!(matches!(e.code, 400 | 415), "{name}: {e:?}");
            }
        }
    }
}

#[test]
fn nesting_is_bounded() {
    // JSONSchemaProps.not nested 200 deep.
    let props =
        lookup("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps").unwrap();
    let not = props.fields.iter().find(|f| f.name == "not").unwrap();
    let varint = |mut n: usize, out: &mut Vec<u8>| {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    };
    let key = |len: usize| {
        let mut out = Vec::new();
        varint((not.tag as usize) << 3 | 2, &mut out);
        varint(len, &mut out);
        out
    };
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..200 {
        let mut next = key(inner.len());
        next.extend(&inner);
        inner = next;
    }
    let e = message(
        &inner,
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps",
        0,
    )
    .unwrap_err();
    assert!(e.0.contains("deeper"), "{e}");
    // Ten deep is fine.
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..10 {
        let mut next = key(inner.len());
        next.extend(&inner);
        inner = next;
    }
    let v = message(
        &inner,
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps",
        0,
    )
    .unwrap();
    assert!(v["not"]["not"]["not"].is_object());
}

#[test]
fn times_and_durations_read_as_go_writes_them() {
    // Time { seconds: 1700000000 } and MicroTime { seconds: 1700000000, nanos: 123456789 }
    let t = [0x08, 0x80, 0xe2, 0xcf, 0xaa, 0x06];
    assert_eq!(timestamp(&t, false).unwrap(), json!("2023-11-14T22:13:20Z"));
    let mut m = t.to_vec();
    m.extend([0x10, 0x95, 0x9a, 0xef, 0x3a]);
    assert_eq!(
        timestamp(&m, true).unwrap(),
        json!("2023-11-14T22:13:20.123456Z")
    );
    assert_eq!(timestamp(&[], false).unwrap(), Value::Null);
    // The Unix epoch itself is a real time, written with its explicit zero.
    assert_eq!(
        timestamp(&[0x08, 0x00], false).unwrap(),
        json!("1970-01-01T00:00:00Z")
    );
    assert!(
        timestamp(
            &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            false
        )
        .is_err()
    );
    for (nanos, s) in [
        (0, "0s"),
        (999, "999ns"),
        (1_500, "1.5µs"),
        (250_000_000, "250ms"),
        (1_500_000_000, "1.5s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (-5_000_000_000, "-5s"),
    ] {
        assert_eq!(go_duration(nanos), s);
    }
}

/// The table covers the served schema: every property of every kind with a protobuf form (and
/// of everything it contains) has a field number, so nothing a client sends is silently lost.
/// It fails when k8s-openapi gains fields: regenerate messages.rs (examples/gen_protobuf.rs).
#[test]
fn every_served_field_has_a_number() {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    for r in crate::builtins::builtins() {
        let _ = r.strategy.openapi_schema(&mut generator);
    }
    let defs = generator.take_definitions(true);
    let special = |name: &str| special(&[], name, 0).ok().flatten().is_some();
    let mut missing = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut queue: Vec<String> = messages::KINDS.iter().map(|k| k.2.to_string()).collect();
    while let Some(def) = queue.pop() {
        if !seen.insert(def.clone()) || special(&def) {
            continue;
        }
        let Some(msg) = lookup(&def) else {
            missing.push(format!("{def} (no message)"));
            continue;
        };
        // Fields reachable through inlined structs count as the message's own.
        let mut names: Vec<&str> = Vec::new();
        let mut stack = vec![msg];
        while let Some(m) = stack.pop() {
            for f in m.fields {
                match f.ty {
                    Ty::Inline(i) => stack.push(lookup(i).unwrap()),
                    Ty::Msg(n) | Ty::MapMsg(n) => {
                        queue.push(n.to_string());
                        names.push(f.name);
                    }
                    _ => names.push(f.name),
                }
            }
        }
        let Some(props) = defs
            .get(&def)
            .and_then(|d| d.get("properties"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        for p in props.keys() {
            if !names.contains(&p.as_str()) && p != "apiVersion" && p != "kind" {
                missing.push(format!("{def}.{p}"));
            }
        }
    }
    assert!(seen.len() > 100, "only {} messages reached", seen.len());
    assert!(missing.is_empty(), "no field number for: {missing:#?}");
}
