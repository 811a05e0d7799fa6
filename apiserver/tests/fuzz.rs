//! Property tests over request bodies, patches and selectors, against the real server over HTTP:
//! whatever arrives, the answer is a success or a 4xx `Status` whose code matches the HTTP code —
//! never a 5xx, never a dropped connection — and a rejected write changes nothing.
//! Inputs come from a seeded generator (the seed is printed on failure), so a failure replays.

use capstan_testkit::{TestCluster, http_request};
use serde_json::{Map, Value, json};

/// Random JSON, biased toward the shapes and names the API cares about.
fn value(rng: &mut fastrand::Rng, depth: u32) -> Value {
    const KEYS: &[&str] = &[
        "metadata",
        "name",
        "namespace",
        "labels",
        "annotations",
        "spec",
        "status",
        "data",
        "replicas",
        "selector",
        "matchLabels",
        "template",
        "containers",
        "image",
        "finalizers",
        "generateName",
        "resourceVersion",
        "uid",
        "apiVersion",
        "kind",
        "binaryData",
        "ports",
        "x",
    ];
    const STRINGS: &[&str] = &[
        "",
        "a",
        "web",
        "default",
        "Bad_Name",
        "v1",
        "apps/v1",
        "ConfigMap",
        "Pod",
        "-",
        "0",
        "ünïcode",
        "a/b",
        "x.y/z",
        "99999999999999999999",
        "\u{0}",
        "😀",
        "null",
    ];
    let pick = if depth == 0 {
        rng.u8(0..5)
    } else {
        rng.u8(0..8)
    };
    match pick {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 => match rng.u8(0..3) {
            0 => json!(rng.i64(..)),
            1 => json!(rng.f64() * 1e6 - 5e5),
            _ => json!(rng.i32(-3..3)),
        },
        3 | 4 => json!(STRINGS[rng.usize(..STRINGS.len())]),
        5 => Value::Array(
            (0..rng.usize(0..4))
                .map(|_| value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.usize(0..5) {
                m.insert(
                    KEYS[rng.usize(..KEYS.len())].to_string(),
                    value(rng, depth - 1),
                );
            }
            Value::Object(m)
        }
    }
}

/// Replaces one random node of `v` with random JSON.
fn mutate(rng: &mut fastrand::Rng, v: &mut Value) {
    let mut node = v;
    loop {
        let children = match node {
            Value::Object(m) if !m.is_empty() => m.len(),
            Value::Array(a) if !a.is_empty() => a.len(),
            _ => 0,
        };
        if children == 0 || rng.u8(0..3) == 0 {
            *node = value(rng, 3);
            return;
        }
        let i = rng.usize(..children);
        node = match node {
            Value::Object(m) => m.values_mut().nth(i).expect("index in range"),
            Value::Array(a) => &mut a[i],
            _ => unreachable!(),
        };
    }
}

fn seeds() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "labels": {"a": "b"}}, "data": {"k": "v"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "a"}},
                        "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    ]
}

const PATHS: &[&str] = &[
    "/api/v1/namespaces/default/configmaps",
    "/apis/apps/v1/namespaces/default/deployments",
    "/api/v1/namespaces/default/pods",
];

/// The response is a success, or a 4xx Status whose `code` is the HTTP status.
fn check(what: &str, seed: u64, code: u16, body: &str) {
    assert!(
        code < 500,
        "seed {seed}: {what}: server error {code}: {body}"
    );
    if code >= 400 {
        let s: Value = serde_json::from_str(body).unwrap_or_else(|_| {
            panic!("seed {seed}: {what}: {code} without a Status body: {body}")
        });
        assert_eq!(s["kind"], "Status", "seed {seed}: {what}: {body}");
        assert_eq!(
            s["code"].as_u64(),
            Some(code as u64),
            "seed {seed}: {what}: {body}"
        );
        assert!(
            s["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "seed {seed}: {what}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_create_bodies_are_accepted_or_refused_with_a_status() {
    let c = TestCluster::start().await;
    let addr = c.addr.to_string();
    let seed = 0x5eed_0001;
    let mut rng = fastrand::Rng::with_seed(seed);
    let ct = [("Content-Type", "application/json")];
    tokio::task::spawn_blocking(move || {
        for i in 0..400 {
            let which = rng.usize(..PATHS.len());
            let mut body = seeds()[which].clone();
            for _ in 0..rng.usize(1..4) {
                mutate(&mut rng, &mut body);
            }
            let bytes = if i % 10 == 0 {
                // Raw garbage, truncated JSON and non-UTF-8 now and then.
                let mut b = serde_json::to_vec(&body).unwrap();
                b.truncate(rng.usize(0..=b.len()));
                if i % 20 == 0 {
                    b.push(0xff);
                }
                b
            } else {
                serde_json::to_vec(&body).unwrap()
            };
            let (code, resp) = http_request(&addr, "POST", PATHS[which], &ct, &bytes).unwrap();
            check(
                &format!("create #{i} {}", String::from_utf8_lossy(&bytes)),
                seed,
                code,
                &resp,
            );
            if code == 201 {
                // What was accepted reads back, as stored.
                let created: Value = serde_json::from_str(&resp).unwrap();
                let name = created["metadata"]["name"].as_str().unwrap();
                let (code, got) =
                    http_request(&addr, "GET", &format!("{}/{name}", PATHS[which]), &[], b"")
                        .unwrap();
                assert_eq!(code, 200, "seed {seed}: {got}");
                let got: Value = serde_json::from_str(&got).unwrap();
                assert_eq!(got["metadata"]["uid"], created["metadata"]["uid"]);
                let (code, _) = http_request(
                    &addr,
                    "DELETE",
                    &format!("{}/{name}?gracePeriodSeconds=0", PATHS[which]),
                    &[],
                    b"",
                )
                .unwrap();
                assert_eq!(code, 200);
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_patches_apply_or_change_nothing() {
    let c = TestCluster::start().await;
    let addr = c.addr.to_string();
    let seed = 0x5eed_0002;
    let mut rng = fastrand::Rng::with_seed(seed);
    let ct = [("Content-Type", "application/json")];
    let (code, body) = http_request(
        &addr,
        "POST",
        PATHS[1],
        &ct,
        seeds()[1].to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    let url = format!("{}/d", PATHS[1]);
    tokio::task::spawn_blocking(move || {
        const OPS: &[&str] = &["add", "remove", "replace", "move", "copy", "test", "bogus"];
        const PTRS: &[&str] = &["", "/", "/spec/replicas", "/metadata/labels/x", "/metadata/name",
            "/spec/template/spec/containers/0/image", "/spec/template/spec/containers/-", "/status",
            "/metadata/finalizers", "/a~1b", "/spec/selector/matchLabels/app", "/kind", "/~2"];
        for i in 0..300 {
            let (_, before) = http_request(&addr, "GET", &url, &[], b"").unwrap();
            let before: Value = serde_json::from_str(&before).unwrap();
            let (ct, patch) = match i % 3 {
                0 => ("application/merge-patch+json", {
                    let mut p = seeds()[1].clone();
                    mutate(&mut rng, &mut p);
                    if let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("name");
                    }
                    p
                }),
                1 => ("application/json-patch+json", Value::Array((0..rng.usize(1..4)).map(|_| {
                    let mut op = json!({"op": OPS[rng.usize(..OPS.len())], "path": PTRS[rng.usize(..PTRS.len())]});
                    match rng.u8(0..3) {
                        0 => op["value"] = value(&mut rng, 2),
                        1 => op["from"] = json!(PTRS[rng.usize(..PTRS.len())]),
                        _ => {}
                    }
                    op
                }).collect())),
                2 if i % 4 == 1 => ("application/apply-patch+yaml", {
                    let mut p = seeds()[1].clone();
                    mutate(&mut rng, &mut p);
                    p
                }),
                2 if i % 2 == 0 => ("application/strategic-merge-patch+json", {
                    let mut p = seeds()[1].clone();
                    for _ in 0..rng.usize(1..3) {
                        mutate(&mut rng, &mut p);
                    }
                    if let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("name");
                    }
                    p
                }),
                _ => ("application/merge-patch+json", value(&mut rng, 3)),
            };
            let target = if ct == "application/apply-patch+yaml" { format!("{url}?fieldManager=fuzz&force=true") } else { url.clone() };
            let (code, resp) = http_request(&addr, "PATCH", &target, &[("Content-Type", ct)], patch.to_string().as_bytes()).unwrap();
            check(&format!("patch #{i} {ct} {patch}"), seed, code, &resp);
            let (gc, after) = http_request(&addr, "GET", &url, &[], b"").unwrap();
            assert_eq!(gc, 200, "seed {seed}: patch #{i} {patch} lost the object: {resp}");
            let after: Value = serde_json::from_str(&after).unwrap();
            if code >= 400 {
                assert_eq!(after, before, "seed {seed}: a refused patch changed the object: {patch}");
            } else {
                assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"], "seed {seed}: {patch}");
                assert_eq!(after["metadata"]["name"], "d");
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_selectors_and_query_parameters_are_200_or_400() {
    let c = TestCluster::start().await;
    let addr = c.addr.to_string();
    let seed = 0x5eed_0003;
    let mut rng = fastrand::Rng::with_seed(seed);
    tokio::task::spawn_blocking(move || {
        const PIECES: &[&str] = &[
            "app",
            "=",
            "==",
            "!=",
            "!",
            " in ",
            " notin ",
            "(",
            ")",
            ",",
            "web",
            "x/y",
            "metadata.name",
            "spec.nodeName",
            "status.phase",
            " ",
            "%20",
            "%",
            "%ZZ",
            "a.b-c_d",
            "é",
        ];
        const PARAMS: &[&str] = &[
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "resourceVersion",
            "resourceVersionMatch",
            "timeoutSeconds",
            "watch",
            "dryRun",
            "propagationPolicy",
        ];
        for i in 0..400 {
            let mut query = String::new();
            for _ in 0..rng.usize(1..3) {
                let p = PARAMS[rng.usize(..PARAMS.len())];
                let v: String = (0..rng.usize(0..5))
                    .map(|_| PIECES[rng.usize(..PIECES.len())])
                    .collect::<String>()
                    .replace(' ', "%20");
                // Never an unbounded watch: a watch that is accepted must end by itself.
                let v = if p == "watch" { "false".to_string() } else { v };
                query.push_str(&format!("{p}={v}&"));
            }
            let path = format!("/api/v1/pods?{query}timeoutSeconds=1");
            let (code, body) = http_request(&addr, "GET", &path, &[], b"").unwrap();
            check(&format!("list #{i} {path}"), seed, code, &body);
            assert!(
                code == 200 || code == 400 || code == 410 || code == 504,
                "seed {seed}: {path}: {code} {body}"
            );
        }
    })
    .await
    .unwrap();
}

/// Protobuf bodies (client-go's typed clients): real kubectl bodies, corrupted. Every answer is
/// a success or a 4xx Status, and a refused one stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_protobuf_bodies_are_accepted_or_refused_with_a_status() {
    let c = TestCluster::start().await;
    let addr = c.addr.to_string();
    let seed = 0x5eed_0004;
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/protobuf/testdata");
    let cases: Vec<(Vec<u8>, &str)> = [
        ("configmaps", "/api/v1/namespaces/default/configmaps"),
        ("secrets", "/api/v1/namespaces/default/secrets"),
        (
            "deployments",
            "/apis/apps/v1/namespaces/default/deployments",
        ),
        ("services", "/api/v1/namespaces/default/services"),
        (
            "serviceaccounts",
            "/api/v1/namespaces/default/serviceaccounts",
        ),
    ]
    .into_iter()
    .map(|(f, p)| (std::fs::read(format!("{dir}/{f}.pb")).unwrap(), p))
    .collect();
    let ct = [("Content-Type", "application/vnd.kubernetes.protobuf")];
    tokio::task::spawn_blocking(move || {
        let count = |path: &str| {
            let (code, body) = http_request(&addr, "GET", path, &[], b"").unwrap();
            assert_eq!(code, 200);
            serde_json::from_str::<Value>(&body).unwrap()["items"]
                .as_array()
                .unwrap()
                .len()
        };
        let (mut accepted, mut refused) = (0, 0);
        for i in 0..300 {
            let (body, path) = &cases[rng.usize(..cases.len())];
            let mut b = body.clone();
            if i % 3 == 0 {
                b.truncate(rng.usize(0..=b.len()));
            } else {
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..b.len());
                    b[at] = rng.u8(..);
                }
            }
            let before = count(path);
            let (code, resp) = http_request(&addr, "POST", path, &ct, &b).unwrap();
            check(&format!("protobuf create #{i} {b:?}"), seed, code, &resp);
            if code == 201 {
                accepted += 1;
                let created: Value = serde_json::from_str(&resp).unwrap();
                let name = created["metadata"]["name"].as_str().unwrap();
                let (code, _) =
                    http_request(&addr, "DELETE", &format!("{path}/{name}"), &[], b"").unwrap();
                assert_eq!(code, 200, "seed {seed}");
            } else {
                refused += 1;
                assert_eq!(
                    count(path),
                    before,
                    "seed {seed}: a refused body stored something"
                );
            }
        }
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    })
    .await
    .unwrap();
}
