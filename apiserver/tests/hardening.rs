//! What an adversarial probe of the API server found (issue 16), each as the request that showed
//! it, over raw HTTP: expensive patches and bodies are refused early and quickly, the server owns
//! apiVersion, kind and the system namespaces, resourceVersion preconditions hold on every path,
//! unconditional writes retry their own conflicts, and malformed names, keys and managers are
//! 4xx Status errors that change nothing.

use std::time::{Duration, Instant};

use capstan_testkit::{TestCluster, http_json, until};
use serde_json::{Value, json};

/// One request with a raw body: (code, response header lines, body as JSON or Null).
async fn call_raw(
    c: &TestCluster,
    method: &'static str,
    path: &str,
    content_type: &'static str,
    body: Vec<u8>,
) -> (u16, Vec<String>, Value) {
    http_json(
        c.addr,
        method,
        path,
        &[("Content-Type", content_type)],
        body,
    )
    .await
}

/// One request with a JSON body (none for Null): (code, body).
async fn call(
    c: &TestCluster,
    method: &'static str,
    path: &str,
    content_type: &'static str,
    body: Value,
) -> (u16, Value) {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    let (code, _, v) = call_raw(c, method, path, content_type, bytes).await;
    (code, v)
}

/// Asserts a response is the Status with this code and reason.
fn expect_status(code: u16, status: &Value, want: u16, reason: &str, context: &str) {
    assert_eq!(
        (code, status["reason"].as_str()),
        (want, Some(reason)),
        "{context} {status}"
    );
}

const JSON: &str = "application/json";
const JSON_PATCH: &str = "application/json-patch+json";
const MERGE: &str = "application/merge-patch+json";
const SMP: &str = "application/strategic-merge-patch+json";
const APPLY: &str = "application/apply-patch+yaml";

const CM: &str = "/api/v1/namespaces/default/configmaps";
const SECRETS: &str = "/api/v1/namespaces/default/secrets";

/// A ConfigMap `name` with `data`; returns it as created.
async fn configmap(c: &TestCluster, name: &str, data: Value) -> Value {
    let body =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data});
    let (code, obj) = call(c, "POST", CM, JSON, body).await;
    assert_eq!(code, 201, "{obj}");
    obj
}

/// A namespaced CRD `things.example.com` whose objects keep unknown fields.
async fn things_crd(c: &TestCluster) {
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "things", "singular": "thing", "kind": "Thing"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
    let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    let (code, body) = call(c, "POST", crds, JSON, crd).await;
    assert_eq!(code, 201, "{body}");
    until(Duration::from_secs(5), "things served", || async {
        call(c, "GET", THINGS, JSON, Value::Null).await.0 == 200
    })
    .await;
}

const THINGS: &str = "/apis/example.com/v1/namespaces/default/things";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_patch_copies_that_double_the_object_are_refused_quickly() {
    // Issue 16 item 1: 21 copies in a 1.1 KB patch cost 22 s of CPU and 8.8 GiB, dry run or not.
    let c = TestCluster::start().await;
    things_crd(&c).await;
    let thing = json!({"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"},
                       "spec": {"a": ["x".repeat(1000)]}});
    let (code, body) = call(&c, "POST", THINGS, JSON, thing).await;
    assert_eq!(code, 201, "{body}");
    let ops: Vec<Value> = (0..21)
        .flat_map(|_| {
            [
                json!({"op": "copy", "from": "/spec/a", "path": "/spec/b"}),
                json!({"op": "move", "from": "/spec/b", "path": "/spec/a/-"}),
            ]
        })
        .collect();
    for dry in ["?dryRun=All", ""] {
        let started = Instant::now();
        let (code, status) = call(
            &c,
            "PATCH",
            &format!("{THINGS}/t{dry}"),
            JSON_PATCH,
            Value::Array(ops.clone()),
        )
        .await;
        expect_status(code, &status, 413, "RequestEntityTooLarge", "");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    // Copies that stay small are fine; a result over the object limit is refused even in a dry
    // run, by the size check every write makes.
    let (code, _) = call(
        &c,
        "PATCH",
        &format!("{THINGS}/t"),
        JSON_PATCH,
        json!([{"op": "copy", "from": "/spec/a", "path": "/spec/b"}]),
    )
    .await;
    assert_eq!(code, 200);
    let big = "y".repeat(1024 * 1024);
    let (code, status) = call(
        &c,
        "PATCH",
        &format!("{THINGS}/t?dryRun=All"),
        MERGE,
        json!({"spec": {"c": big, "d": big}}),
    )
    .await;
    assert_eq!(code, 413, "{status}");
    let (_, live) = call(&c, "GET", &format!("{THINGS}/t"), JSON, Value::Null).await;
    assert!(live["spec"].get("c").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_yaml_is_refused_at_once_and_stalls_no_one() {
    // Issue 16 item 2: 100,000 nested `[` as apply-patch+yaml took 17.6 s, and four of them
    // stalled every other request for 12.5 s.
    let c = TestCluster::start().await;
    configmap(&c, "probe", json!({"a": "1"})).await;
    let started = Instant::now();
    let path = "/api/v1/namespaces/default/configmaps/x?fieldManager=m";
    let deep = || call_raw(&c, "PATCH", path, APPLY, "[".repeat(100_000).into_bytes());
    let probe = format!("{CM}/probe");
    let (a, b, d, e, (get, _)) = tokio::join!(
        deep(),
        deep(),
        deep(),
        deep(),
        call(&c, "GET", &probe, JSON, Value::Null)
    );
    for (code, _, status) in [a, b, d, e] {
        assert_eq!(code, 400, "{status}");
    }
    assert_eq!(get, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The same depth as JSON is refused too, and nothing was created.
    let (code, _, _) = call_raw(
        &c,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/x?fieldManager=m",
        APPLY,
        format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
    )
    .await;
    assert_eq!(code, 400);
    let (code, _) = call(&c, "GET", &format!("{CM}/x"), JSON, Value::Null).await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_cannot_remove_or_change_kind_and_api_version() {
    // Issue 16 item 5: merge, JSON and strategic merge patches stored objects without kind.
    let c = TestCluster::start().await;
    configmap(&c, "k", json!({"a": "1"})).await;
    let at = format!("{CM}/k");
    for (ct, patch) in [
        (
            MERGE,
            json!({"kind": null, "apiVersion": null, "data": {"b": "2"}}),
        ),
        (SMP, json!({"kind": null, "data": {"c": "3"}})),
        (
            JSON_PATCH,
            json!([{"op": "remove", "path": "/kind"}, {"op": "remove", "path": "/apiVersion"}]),
        ),
    ] {
        let (code, obj) = call(&c, "PATCH", &at, ct, patch).await;
        assert_eq!(code, 200, "{ct}: {obj}");
        assert_eq!(
            (obj["kind"].as_str(), obj["apiVersion"].as_str()),
            (Some("ConfigMap"), Some("v1")),
            "{ct}"
        );
        let (_, live) = call(&c, "GET", &at, JSON, Value::Null).await;
        assert_eq!(live["kind"], "ConfigMap", "{ct}");
    }
    // Another kind is refused and changes nothing.
    let (_, before) = call(&c, "GET", &at, JSON, Value::Null).await;
    let (code, status) = call(
        &c,
        "PATCH",
        &at,
        MERGE,
        json!({"kind": "Secret", "data": {"z": "1"}}),
    )
    .await;
    expect_status(code, &status, 400, "BadRequest", "");
    let (_, after) = call(&c, "GET", &at, JSON, Value::Null).await;
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_version_in_any_write_is_a_precondition() {
    // Issue 16 item 7: a stale resourceVersion in an apply body or set by a JSON patch, and a
    // merge patch with an integer resourceVersion, all succeeded.
    let c = TestCluster::start().await;
    let first = configmap(&c, "rv", json!({"a": "1"})).await;
    let stale = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let at = format!("{CM}/rv");
    let (code, _) = call(&c, "PATCH", &at, MERGE, json!({"data": {"a": "2"}})).await;
    assert_eq!(code, 200);
    let (_, before) = call(&c, "GET", &at, JSON, Value::Null).await;

    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "rv", "resourceVersion": stale}, "data": {"a": "3"}});
    let (code, status) = call(&c, "PATCH", &format!("{at}?fieldManager=m"), APPLY, applied).await;
    expect_status(code, &status, 409, "Conflict", "");

    let ops = json!([{"op": "replace", "path": "/metadata/resourceVersion", "value": stale},
                     {"op": "replace", "path": "/data/a", "value": "4"}]);
    let (code, status) = call(&c, "PATCH", &at, JSON_PATCH, ops).await;
    expect_status(code, &status, 409, "Conflict", "");

    let (code, status) = call(
        &c,
        "PATCH",
        &at,
        MERGE,
        json!({"metadata": {"resourceVersion": 1}, "data": {"a": "5"}}),
    )
    .await;
    assert_eq!(code, 400, "{status}");
    let mut put = before.clone();
    put["metadata"]["resourceVersion"] = json!(12);
    put["data"]["a"] = json!("6");
    let (code, status) = call(&c, "PUT", &at, JSON, put).await;
    assert_eq!(code, 400, "{status}");

    let (_, after) = call(&c, "GET", &at, JSON, Value::Null).await;
    assert_eq!(before, after, "nothing changed");
    // The current resourceVersion passes.
    let current = before["metadata"]["resourceVersion"].clone();
    let ops = json!([{"op": "replace", "path": "/metadata/resourceVersion", "value": current},
                     {"op": "replace", "path": "/data/a", "value": "7"}]);
    let (code, obj) = call(&c, "PATCH", &at, JSON_PATCH, ops).await;
    assert_eq!(code, 200, "{obj}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconditional_writes_retry_their_own_conflicts() {
    // Issue 16 item 9: 4 writers merge-patching one object saw 409 "too many concurrent
    // writers" (2 in 120). A write without a precondition retries until it lands.
    let c = TestCluster::start().await;
    configmap(&c, "hot", json!({})).await;
    let at = format!("{CM}/hot");
    let writers = (0..8).map(|w| {
        let (c, at) = (&c, at.clone());
        async move {
            let mut failures = Vec::new();
            for i in 0..30 {
                let key = format!("w{w}");
                let (ct, body) = match i % 3 {
                    0 => (MERGE, json!({"data": {key: i.to_string()}})),
                    1 => (SMP, json!({"metadata": {"labels": {key: i.to_string()}}})),
                    _ => (JSON_PATCH, json!([{"op": "add", "path": format!("/metadata/annotations"), "value": {key: i.to_string()}}])),
                };
                let (code, status) = call(c, "PATCH", &at, ct, body).await;
                if code != 200 {
                    failures.push(format!("{code} {status}"));
                }
            }
            failures
        }
    });
    let failures: Vec<String> = futures_util::future::join_all(writers).await.concat();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let (_, live) = call(&c, "GET", &at, JSON, Value::Null).await;
    assert_eq!(live["data"].as_object().map(|d| d.len()), Some(8), "{live}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_namespaces_cannot_be_deleted() {
    // Issue 16 item 6: DELETE of kube-system (and the other three) succeeded.
    let c = TestCluster::start().await;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let (code, status) = call(
            &c,
            "DELETE",
            &format!("/api/v1/namespaces/{ns}"),
            JSON,
            Value::Null,
        )
        .await;
        expect_status(code, &status, 403, "Forbidden", ns);
        assert_eq!(
            status["message"],
            format!("namespaces \"{ns}\" is forbidden: this namespace may not be deleted")
        );
        let (code, live) = call(
            &c,
            "GET",
            &format!("/api/v1/namespaces/{ns}"),
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(code, 200);
        assert!(
            live["metadata"].get("deletionTimestamp").is_none(),
            "{live}"
        );
    }
    let (code, status) = call(&c, "DELETE", "/api/v1/namespaces", JSON, Value::Null).await;
    expect_status(code, &status, 405, "MethodNotAllowed", "");
    // Other namespaces still go; discovery no longer offers deletecollection on namespaces.
    let (code, _) = call(
        &c,
        "POST",
        "/api/v1/namespaces",
        JSON,
        json!({"metadata": {"name": "scratch"}}),
    )
    .await;
    assert_eq!(code, 201);
    let (code, _) = call(
        &c,
        "DELETE",
        "/api/v1/namespaces/scratch",
        JSON,
        Value::Null,
    )
    .await;
    assert_eq!(code, 200);
    let (_, v1) = call(&c, "GET", "/api/v1", JSON, Value::Null).await;
    let ns = v1["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "namespaces")
        .unwrap();
    assert!(
        !ns["verbs"]
            .as_array()
            .unwrap()
            .contains(&json!("deletecollection")),
        "{ns}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_a_future_resource_version_wait_then_time_out() {
    // Issue 16 item 8: GET with a future resourceVersion, and a paginated NotOlderThan list,
    // answered 200 with older data.
    let c = TestCluster::start().await;
    let obj = configmap(&c, "future", json!({"a": "1"})).await;
    let rv: i64 = obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let far = rv + 1000;
    for path in [
        format!("{CM}/future?resourceVersion={far}"),
        format!("{CM}?resourceVersion={far}&resourceVersionMatch=NotOlderThan&limit=1"),
        format!("{CM}?resourceVersion={far}&limit=1"),
    ] {
        let started = Instant::now();
        let (code, status) = call(&c, "GET", &path, JSON, Value::Null).await;
        expect_status(code, &status, 504, "Timeout", &path);
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .starts_with("Too large resource version"),
            "{status}"
        );
        assert_eq!(
            status["details"]["causes"][0]["reason"],
            "ResourceVersionTooLarge"
        );
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{path}: answered without waiting"
        );
    }
    // A revision reached while the read waits is served.
    let next = rv + 1;
    let get = format!("{CM}/future?resourceVersion={next}");
    let list = format!("{CM}?resourceVersion={next}&resourceVersionMatch=NotOlderThan&limit=5");
    let target = format!("{CM}/future");
    let ((code, got), (lcode, listed), (wcode, _)) = tokio::join!(
        call(&c, "GET", &get, JSON, Value::Null),
        call(&c, "GET", &list, JSON, Value::Null),
        call(&c, "PATCH", &target, MERGE, json!({"data": {"a": "2"}}))
    );
    assert_eq!((code, lcode, wcode), (200, 200, 200), "{got} {listed}");
    assert_eq!(got["data"]["a"], "2");
    assert_eq!(listed["items"][0]["data"]["a"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_and_secret_keys_must_be_config_keys() {
    // Issue 16 item 10: keys that cannot be file names ("", "a/b", ".", "..", spaces, over 253
    // characters) were stored.
    let c = TestCluster::start().await;
    let long = "k".repeat(254);
    for key in ["", "a/b", ".", "..", "..x", "a b", long.as_str()] {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad"}, "data": {key: "v"}});
        let (code, status) = call(&c, "POST", CM, JSON, cm).await;
        expect_status(code, &status, 422, "Invalid", &format!("{key:?}"));
        assert_eq!(
            status["details"]["causes"][0]["field"],
            format!("data[{key}]")
        );
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bad"}, "stringData": {key: "v"}});
        let (code, status) = call(&c, "POST", SECRETS, JSON, secret).await;
        assert_eq!(code, 422, "{key:?}: {status}");
    }
    // Nor can a patch or an apply add one.
    configmap(&c, "good", json!({"a.b_c-D": "1"})).await;
    let (code, _) = call(
        &c,
        "PATCH",
        &format!("{CM}/good"),
        MERGE,
        json!({"data": {"x/y": "2"}}),
    )
    .await;
    assert_eq!(code, 422);
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "good"}, "data": {"..": "2"}});
    let (code, _) = call(
        &c,
        "PATCH",
        &format!("{CM}/good?fieldManager=m"),
        APPLY,
        applied,
    )
    .await;
    assert_eq!(code, 422);
    let (_, live) = call(&c, "GET", &format!("{CM}/good"), JSON, Value::Null).await;
    assert_eq!(live["data"], json!({"a.b_c-D": "1"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_managers_and_managed_fields_are_checked() {
    // Issue 16 item 11: a fieldManager over 128 characters or with control characters, malformed
    // managedFields and `force` on a non-apply patch were all accepted.
    let c = TestCluster::start().await;
    configmap(&c, "mf", json!({"a": "1"})).await;
    let at = format!("{CM}/mf");
    let (_, before) = call(&c, "GET", &at, JSON, Value::Null).await;
    let long = "m".repeat(129);
    for (method, path, ct, body) in [
        (
            "PATCH",
            format!("{at}?fieldManager={long}"),
            MERGE,
            json!({"data": {"b": "2"}}),
        ),
        (
            "PATCH",
            format!("{at}?fieldManager=a%09b"),
            MERGE,
            json!({"data": {"b": "2"}}),
        ),
        (
            "PATCH",
            format!("{at}?fieldManager={long}"),
            APPLY,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"b": "2"}}),
        ),
        (
            "POST",
            format!("{CM}?fieldManager=x%00y"),
            JSON,
            json!({"metadata": {"name": "other"}}),
        ),
        (
            "PATCH",
            format!("{at}?force=true"),
            MERGE,
            json!({"data": {"b": "2"}}),
        ),
        (
            "PATCH",
            at.clone(),
            MERGE,
            json!({"metadata": {"managedFields": [{"manager": "m", "operation": "Frobnicate", "fieldsType": "FieldsV1", "fieldsV1": {}}]}}),
        ),
        (
            "PATCH",
            at.clone(),
            MERGE,
            json!({"metadata": {"managedFields": [{"manager": 5, "operation": "Update"}]}}),
        ),
        (
            "PATCH",
            at.clone(),
            MERGE,
            json!({"metadata": {"managedFields": "all of them"}}),
        ),
        (
            "PATCH",
            at.clone(),
            MERGE,
            json!({"metadata": {"managedFields": [{"manager": "m", "operation": "Update", "fieldsV1": "x"}]}}),
        ),
        (
            "POST",
            CM.to_string(),
            JSON,
            json!({"metadata": {"name": "other", "managedFields": [{"manager": "m", "operation": "Nope"}]}}),
        ),
    ] {
        let (code, status) = call(&c, method, &path, ct, body.clone()).await;
        expect_status(code, &status, 422, "Invalid", &format!("{path} {body}"));
    }
    let (_, after) = call(&c, "GET", &at, JSON, Value::Null).await;
    assert_eq!(before, after, "nothing changed");
    let (code, _) = call(&c, "GET", &format!("{CM}/other"), JSON, Value::Null).await;
    assert_eq!(code, 404);
    // An empty list leaves the history alone; `[{}]` strips it, as in Kubernetes.
    let (code, obj) = call(
        &c,
        "PATCH",
        &at,
        MERGE,
        json!({"metadata": {"managedFields": []}}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        obj["metadata"]["managedFields"],
        before["metadata"]["managedFields"]
    );
    let (code, obj) = call(
        &c,
        "PATCH",
        &at,
        MERGE,
        json!({"metadata": {"managedFields": [{}]}}),
    )
    .await;
    assert_eq!(code, 200);
    assert!(obj["metadata"].get("managedFields").is_none(), "{obj}");
    // A 128-character manager is fine.
    let (code, obj) = call(
        &c,
        "PATCH",
        &format!("{at}?fieldManager={}", "m".repeat(128)),
        MERGE,
        json!({"data": {"c": "3"}}),
    )
    .await;
    assert_eq!(code, 200, "{obj}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_fields_are_refused_under_strict_and_warned_under_warn() {
    // Issue 16 item 12: a body repeating a key was accepted under fieldValidation=Strict, the
    // last value silently winning.
    let c = TestCluster::start().await;
    let body = br#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dup"}, "data": {"x": "1", "x": "2"}}"#;
    let (code, _, status) = call_raw(
        &c,
        "POST",
        &format!("{CM}?fieldValidation=Strict"),
        JSON,
        body.to_vec(),
    )
    .await;
    expect_status(code, &status, 400, "BadRequest", "");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains(r#"strict decoding error: json: duplicate field "data.x""#),
        "{status}"
    );
    let (code, head, obj) = call_raw(
        &c,
        "POST",
        &format!("{CM}?fieldValidation=Warn"),
        JSON,
        body.to_vec(),
    )
    .await;
    assert_eq!(code, 201, "{obj}");
    assert!(
        head.iter().any(
            |h| h.to_ascii_lowercase().starts_with("warning:") && h.contains("duplicate field")
        ),
        "{head:?}"
    );
    // Patches and applies too; a refused one changes nothing.
    let at = format!("{CM}/dup");
    let patch = br#"{"data": {"y": "1", "y": "2"}}"#;
    let (code, _, status) = call_raw(
        &c,
        "PATCH",
        &format!("{at}?fieldValidation=Strict"),
        MERGE,
        patch.to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{status}");
    let applied = br#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dup"}, "data": {"z": "1", "z": "2"}}"#;
    let (code, _, status) = call_raw(
        &c,
        "PATCH",
        &format!("{at}?fieldValidation=Strict&fieldManager=m"),
        APPLY,
        applied.to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{status}");
    let (_, live) = call(&c, "GET", &at, JSON, Value::Null).await;
    assert_eq!(live["data"], json!({"x": "2"}));
    // Ignore keeps the last value, as Kubernetes does.
    let (code, _, obj) = call_raw(&c, "PATCH", &at, MERGE, patch.to_vec()).await;
    assert_eq!((code, obj["data"]["y"].as_str()), (200, Some("2")));
}
