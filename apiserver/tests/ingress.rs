//! networking.k8s.io/v1 Ingress and IngressClass through the API: served and discovered, valid
//! objects stored, invalid ones refused with Kubernetes' 422 and field causes, the
//! DefaultIngressClass plugin filling in the newest default class, the old class annotation
//! refused beside the class field on create, a class's controller immutable, and the Table
//! columns kubectl prints (NAME CLASS HOSTS ADDRESS PORTS AGE; NAME CONTROLLER PARAMETERS AGE).

use capstan_testkit::{TestCluster, http_exchange};
use serde_json::{Value, json};

fn send(c: &TestCluster, method: &str, path: &str, body: &Value, accept: &str) -> (u16, Value) {
    let (code, _, text) = http_exchange(
        &c.addr.to_string(),
        method,
        path,
        &[("Content-Type", "application/json"), ("Accept", accept)],
        body.to_string().as_bytes(),
    )
    .unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn json_send(c: &TestCluster, method: &str, path: &str, body: &Value) -> (u16, Value) {
    send(c, method, path, body, "application/json")
}

const CLASSES: &str = "/apis/networking.k8s.io/v1/ingressclasses";
const INGRESSES: &str = "/apis/networking.k8s.io/v1/namespaces/default/ingresses";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

fn class(name: &str, default: bool) -> Value {
    json!({"metadata": {"name": name, "annotations": {"ingressclass.kubernetes.io/is-default-class": default.to_string()}},
        "spec": {"controller": "capstan.dev/ingress"}})
}

fn ingress(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": spec})
}

fn rule(host: &str, path: &str, service: &str) -> Value {
    json!({"host": host, "http": {"paths": [{"path": path, "pathType": "Prefix",
        "backend": {"service": {"name": service, "port": {"number": 80}}}}]}})
}

/// A Table's column names.
fn columns(table: &Value) -> Vec<&str> {
    table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

/// The Table row whose first cell is `name`.
fn row_named<'a>(table: &'a Value, name: &str) -> &'a Value {
    table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cells"][0] == name)
        .unwrap()
}

fn causes(body: &Value) -> Vec<String> {
    body["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["field"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingresses_are_validated_defaulted_and_printed_as_kubernetes_does() {
    let c = TestCluster::start().await;
    let (code, group) = json_send(&c, "GET", "/apis/networking.k8s.io/v1", &Value::Null);
    assert_eq!(code, 200);
    let names: Vec<&str> = group["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        names.contains(&"ingresses")
            && names.contains(&"ingresses/status")
            && names.contains(&"ingressclasses"),
        "{names:?}"
    );

    // Without a default class an Ingress keeps none.
    let (code, plain) = json_send(
        &c,
        "POST",
        INGRESSES,
        &ingress(
            "plain",
            json!({"rules": [rule("a.example.test", "/", "a")]}),
        ),
    );
    assert_eq!(code, 201, "{plain}");
    assert!(plain["spec"]["ingressClassName"].is_null());
    // Two defaults: the newer wins.
    assert_eq!(json_send(&c, "POST", CLASSES, &class("older", true)).0, 201);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        json_send(&c, "POST", CLASSES, &class("capstan", true)).0,
        201
    );
    assert_eq!(
        json_send(&c, "POST", CLASSES, &class("other", false)).0,
        201
    );
    let spec = json!({"rules": [rule("a.example.test", "/", "a"), rule("*.b.example.test", "/api", "b")],
        "tls": [{"hosts": ["a.example.test"], "secretName": "a-tls"}]});
    let (code, web) = json_send(&c, "POST", INGRESSES, &ingress("web", spec.clone()));
    assert_eq!(code, 201, "{web}");
    assert_eq!(web["spec"]["ingressClassName"], "capstan");
    assert_eq!(web["metadata"]["generation"], 1);
    // An explicit class, or the old annotation, is kept.
    let mut annotated = ingress("annotated", spec.clone());
    annotated["metadata"]["annotations"] = json!({"kubernetes.io/ingress.class": "nginx"});
    let (code, annotated) = json_send(&c, "POST", INGRESSES, &annotated);
    assert_eq!(code, 201, "{annotated}");
    assert!(annotated["spec"]["ingressClassName"].is_null());
    // Both: refused on create.
    let mut both = ingress("both", spec.clone());
    both["metadata"]["annotations"] = json!({"kubernetes.io/ingress.class": "nginx"});
    both["spec"]["ingressClassName"] = json!("other");
    let (code, body) = json_send(&c, "POST", INGRESSES, &both);
    assert_eq!(code, 422, "{body}");
    assert_eq!(causes(&body), ["annotations.kubernetes.io/ingress.class"]);

    // Invalid: every problem listed, nothing stored.
    let bad = ingress(
        "bad",
        json!({"rules": [{"host": "10.1.2.3", "http": {"paths": [
            {"path": "api", "pathType": "Prefix", "backend": {"service": {"name": "a", "port": {"number": 70000}}}},
            {"path": "/", "backend": {"service": {"name": "a", "port": {"number": 80}}}}]}}]}),
    );
    let (code, body) = json_send(&c, "POST", INGRESSES, &bad);
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["reason"], "Invalid");
    assert_eq!(
        causes(&body),
        [
            "spec.rules[0].host",
            "spec.rules[0].http.paths[0].path",
            "spec.rules[0].http.paths[0].backend.service.port.number",
            "spec.rules[0].http.paths[1].pathType",
        ]
    );
    assert_eq!(
        json_send(&c, "GET", &format!("{INGRESSES}/bad"), &Value::Null).0,
        404
    );
    let (code, body) = json_send(&c, "POST", INGRESSES, &ingress("empty", json!({})));
    assert_eq!(code, 422);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("either `defaultBackend` or `rules` must be specified"),
        "{body}"
    );

    // A class's controller never changes.
    let (code, _, text) = http_exchange(
        &c.addr.to_string(),
        "PATCH",
        &format!("{CLASSES}/other"),
        &[("Content-Type", "application/merge-patch+json")],
        json!({"spec": {"controller": "example.com/another"}})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("field is immutable"),
        "{body}"
    );

    // kubectl's columns.
    let (code, table) = send(&c, "GET", INGRESSES, &Value::Null, TABLE);
    assert_eq!(code, 200);
    let cols = columns(&table);
    assert_eq!(cols, ["Name", "Class", "Hosts", "Address", "Ports", "Age"]);
    let row = row_named(&table, "web");
    assert_eq!(row["cells"][1], "capstan");
    assert_eq!(row["cells"][2], "a.example.test,*.b.example.test");
    assert_eq!(row["cells"][4], "80, 443");
    let row = row_named(&table, "plain");
    assert_eq!(
        (row["cells"][1].as_str(), row["cells"][4].as_str()),
        (Some("<none>"), Some("80"))
    );
    let (_, table) = send(&c, "GET", CLASSES, &Value::Null, TABLE);
    let cols = columns(&table);
    assert_eq!(cols, ["Name", "Controller", "Parameters", "Age"]);
    assert_eq!(table["rows"][0]["cells"][1], "capstan.dev/ingress");
    assert_eq!(table["rows"][0]["cells"][2], "<none>");
}
