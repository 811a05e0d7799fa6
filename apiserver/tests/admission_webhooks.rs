//! Admission webhooks through the API, against a real HTTPS webhook server with its own CA
//! (testkit's WebhookServer): a mutating webhook adds a label the validating one then sees, a
//! validating one denies by name (create and delete), warnings reach the client, failurePolicy
//! Fail vs Ignore with the server stopped, timeouts, a webhook reached through a Service's
//! endpoints, selectors and match conditions, reinvocation, and invalid configurations.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use capstan_testkit::webhook::{self, WebhookServer};
use capstan_testkit::{TestCluster, http_exchange, until};
use serde_json::{Value, json};

const MUTATING: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
const VALIDATING: &str = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations";
const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

/// A raw request (off the runtime: the webhook server shares it): (code, headers, body).
async fn call(
    c: &TestCluster,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Vec<String>, String) {
    let (addr, method, path) = (c.addr.to_string(), method.to_string(), path.to_string());
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        http_exchange(
            &addr,
            &method,
            &path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .unwrap()
    })
    .await
    .unwrap()
}

fn warnings(headers: &[String]) -> Vec<String> {
    (headers.iter())
        .filter(|h| h.to_ascii_lowercase().starts_with("warning:"))
        .cloned()
        .collect()
}

fn status(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn hook(name: &str, client_config: Value, operations: &[&str], extra: Value) -> Value {
    let mut w = json!({
        "name": name,
        "clientConfig": client_config,
        "rules": [{"operations": operations, "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    });
    if let (Some(w), Some(extra)) = (w.as_object_mut(), extra.as_object()) {
        w.extend(extra.clone());
    }
    w
}

fn configuration(kind: &str, name: &str, hooks: Vec<Value>) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
           "metadata": {"name": name}, "webhooks": hooks})
}

fn configmap(name: &str) -> Value {
    json!({"metadata": {"name": name}, "data": {"k": "v"}})
}

/// Creates a configuration and waits until a probe configmap shows it in force.
async fn install(
    c: &TestCluster,
    path: &str,
    config: &Value,
    in_force: impl Fn(u16, &str) -> bool,
) {
    let (code, _, body) = call(c, "POST", path, Some(config)).await;
    assert_eq!(code, 201, "{body}");
    until(
        Duration::from_secs(5),
        "the webhook configuration in force",
        || async {
            let name = format!("probe-{}", fastrand::u32(..));
            let (code, _, body) = call(c, "POST", CONFIGMAPS, Some(&configmap(&name))).await;
            call(c, "DELETE", &format!("{CONFIGMAPS}/{name}"), None).await;
            in_force(code, &body)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutating_webhook_labels_and_a_validating_one_denies_by_name() {
    let c = TestCluster::start().await;
    let seen_label = Arc::new(AtomicUsize::new(0));
    let seen = seen_label.clone();
    let server = WebhookServer::start(
        &[],
        Arc::new(move |path, review| {
            let req = &review["request"];
            let name = req["name"].as_str().unwrap_or_default().to_string();
            match path {
                "/mutate" if req["operation"] == "CREATE" => webhook::patch(
                    &review,
                    json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}]),
                ),
                "/validate" => {
                    if req["object"]["metadata"]["labels"]["mutated"] == "yes" {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    if req["operation"] == "DELETE" && name == "protected" {
                        return webhook::deny(&review, 403, "protected configmaps stay");
                    }
                    if name.starts_with("forbidden") {
                        return webhook::deny(&review, 400, &format!("name {name} is not allowed"));
                    }
                    webhook::allow(&review, &["configmaps are watched by a webhook"])
                }
                _ => webhook::allow(&review, &[]),
            }
        }),
    )
    .await
    .unwrap();
    let mutating = configuration(
        "MutatingWebhookConfiguration",
        "labeller",
        vec![hook(
            "label.example.test",
            server.client_config("/mutate"),
            &["CREATE"],
            json!({}),
        )],
    );
    install(&c, MUTATING, &mutating, |code, body| {
        code == 201 && status(body)["metadata"]["labels"]["mutated"] == "yes"
    })
    .await;
    let validating = configuration(
        "ValidatingWebhookConfiguration",
        "names",
        vec![hook(
            "deny.example.test",
            server.client_config("/validate"),
            &["CREATE", "DELETE"],
            json!({}),
        )],
    );
    install(&c, VALIDATING, &validating, |_, _| {
        seen_label.load(Ordering::SeqCst) > 0
    })
    .await;

    // Admitted: mutated before validation (the validating webhook saw the label), with the
    // validating webhook's warning.
    let before = seen_label.load(Ordering::SeqCst);
    let (code, headers, body) = call(&c, "POST", CONFIGMAPS, Some(&configmap("protected"))).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(status(&body)["metadata"]["labels"]["mutated"], "yes");
    assert!(seen_label.load(Ordering::SeqCst) > before);
    assert!(
        warnings(&headers)
            .iter()
            .any(|w| w.contains("configmaps are watched by a webhook")),
        "{headers:?}"
    );
    // Denied by name, with the webhook's code and message.
    let (code, _, body) = call(&c, "POST", CONFIGMAPS, Some(&configmap("forbidden-1"))).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        status(&body)["message"],
        "admission webhook \"deny.example.test\" denied the request: name forbidden-1 is not allowed"
    );
    let (code, _, _) = call(&c, "GET", &format!("{CONFIGMAPS}/forbidden-1"), None).await;
    assert_eq!(code, 404, "a denied create stores nothing");
    // Deletes are admitted too.
    let (code, _, body) = call(&c, "DELETE", &format!("{CONFIGMAPS}/protected"), None).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(status(&body)["reason"], "Forbidden");
    assert!(body.contains("protected configmaps stay"), "{body}");
    // A dry run calls webhooks without side effects (v1 allows no others) and stores nothing.
    let (code, _, body) = call(
        &c,
        "POST",
        &format!("{CONFIGMAPS}?dryRun=All"),
        Some(&configmap("dry")),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(status(&body)["metadata"]["labels"]["mutated"], "yes");
    assert_eq!(
        call(&c, "GET", &format!("{CONFIGMAPS}/dry"), None).await.0,
        404
    );
    // The webhook configurations themselves are never sent to webhooks, and their table lists
    // the number of webhooks.
    let (code, _, body) = call(&c, "DELETE", &format!("{VALIDATING}/names"), None).await;
    assert_eq!(code, 200, "{body}");
    let addr = c.addr.to_string();
    let (code, _, table) = tokio::task::spawn_blocking(move || {
        http_exchange(
            &addr,
            "GET",
            &format!("{MUTATING}/labeller"),
            &[("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")],
            b"",
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(code, 200, "{table}");
    let table: Value = serde_json::from_str(&table).unwrap();
    assert_eq!(table["columnDefinitions"][1]["name"], "Webhooks");
    assert_eq!(table["rows"][0]["cells"][1], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policy_decides_when_the_webhook_is_down_or_slow() {
    let c = TestCluster::start().await;
    let server = WebhookServer::start(&[], Arc::new(|_, review| webhook::allow(&review, &[])))
        .await
        .unwrap();
    let config = |failure: &str, timeout: i64| {
        configuration(
            "ValidatingWebhookConfiguration",
            "guard",
            vec![hook(
                "guard.example.test",
                server.client_config("/"),
                &["CREATE"],
                json!({"failurePolicy": failure, "timeoutSeconds": timeout}),
            )],
        )
    };
    install(&c, VALIDATING, &config("Fail", 1), |code, _| code == 201).await;
    assert!(server.calls() > 0);

    // Slow: the 1 s timeout refuses the write under Fail, well before the webhook answers.
    server.set_delay(Duration::from_secs(4));
    let started = Instant::now();
    let (code, _, body) = call(&c, "POST", CONFIGMAPS, Some(&configmap("slow"))).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code, 500, "{body}");
    let message = status(&body)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.starts_with("Internal error occurred: failed calling webhook \"guard.example.test\": failed to call webhook: ")
            && message.contains("context deadline exceeded"),
        "{message}"
    );
    server.set_delay(Duration::ZERO);

    // Down: Fail refuses, saying why...
    let url = server.url("/");
    drop(server);
    let (code, _, body) = call(&c, "POST", CONFIGMAPS, Some(&configmap("down"))).await;
    assert_eq!(code, 500, "{body}");
    assert!(
        body.contains("failed calling webhook") && body.contains(&url),
        "{body}"
    );
    assert_eq!(
        call(&c, "GET", &format!("{CONFIGMAPS}/down"), None).await.0,
        404
    );
    // ...Ignore lets the write through and says so in a warning.
    let (code, _, live) = call(&c, "GET", &format!("{VALIDATING}/guard"), None).await;
    assert_eq!(code, 200);
    let mut ignore: Value = serde_json::from_str(&live).unwrap();
    ignore["webhooks"][0]["failurePolicy"] = json!("Ignore");
    let (code, _, body) = call(&c, "PUT", &format!("{VALIDATING}/guard"), Some(&ignore)).await;
    assert_eq!(code, 200, "{body}");
    until(Duration::from_secs(5), "Ignore in force", || async {
        let name = format!("through-{}", fastrand::u32(..));
        let (code, headers, _) = call(&c, "POST", CONFIGMAPS, Some(&configmap(&name))).await;
        code == 201
            && warnings(&headers).iter().any(|w| {
                w.contains("failed calling webhook")
                    && w.contains("guard.example.test")
                    && w.contains("failurePolicy: Ignore")
            })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_behind_a_service_is_reached_at_a_ready_endpoint() {
    let c = TestCluster::start().await;
    let server = WebhookServer::start(
        &["hook.default.svc"],
        Arc::new(|_, review| webhook::deny(&review, 422, "reached through the service")),
    )
    .await
    .unwrap();
    let port = i64::from(server.addr.port());
    let (code, _, body) = call(
        &c,
        "POST",
        "/api/v1/namespaces/default/services",
        Some(&json!({"metadata": {"name": "hook"}, "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}})),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, _, body) = call(
        &c,
        "POST",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        Some(&json!({
            "metadata": {"name": "hook-1", "labels": {"kubernetes.io/service-name": "hook"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        })),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let by_service = json!({"service": {"namespace": "default", "name": "hook", "path": "/check"}, "caBundle": server.ca_bundle});
    let config = configuration(
        "ValidatingWebhookConfiguration",
        "by-service",
        vec![hook("svc.example.test", by_service, &["CREATE"], json!({}))],
    );
    install(&c, VALIDATING, &config, |code, body| {
        code == 422 && body.contains("reached through the service")
    })
    .await;
    assert!(server.calls() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_conditions_and_reinvocation_decide_who_is_called() {
    let c = TestCluster::start().await;
    let first_calls = Arc::new(AtomicUsize::new(0));
    let counted = first_calls.clone();
    let server = WebhookServer::start(
        &[],
        Arc::new(move |path, review| {
            let labels = review["request"]["object"]["metadata"]["labels"].clone();
            match path {
                // "a-first" adds an annotation counting its calls; "b-second" then adds a label.
                "/first" => {
                    let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                    let mut ops = vec![];
                    if review["request"]["object"]["metadata"]["annotations"].is_null() {
                        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
                    }
                    ops.push(json!({"op": "add", "path": "/metadata/annotations/first-calls", "value": n.to_string()}));
                    webhook::patch(&review, json!(ops))
                }
                "/second" if labels.get("second").is_none() => {
                    let mut ops = vec![];
                    if labels.is_null() {
                        ops.push(json!({"op": "add", "path": "/metadata/labels", "value": {}}));
                    }
                    ops.push(json!({"op": "add", "path": "/metadata/labels/second", "value": "done"}));
                    webhook::patch(&review, json!(ops))
                }
                _ => webhook::allow(&review, &[]),
            }
        }),
    )
    .await
    .unwrap();
    let config = configuration(
        "MutatingWebhookConfiguration",
        "chain",
        vec![
            hook(
                "a-first.example.test",
                server.client_config("/first"),
                &["CREATE"],
                json!({
                    "reinvocationPolicy": "IfNeeded",
                    "objectSelector": {"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]},
                    "matchConditions": [{"name": "not-system", "expression": "!object.metadata.name.startsWith('system-')"}],
                }),
            ),
            hook(
                "b-second.example.test",
                server.client_config("/second"),
                &["CREATE"],
                json!({}),
            ),
        ],
    );
    install(&c, MUTATING, &config, |code, body| {
        code == 201 && status(body)["metadata"]["labels"]["second"] == "done"
    })
    .await;
    // Reinvoked once after the second changed the object: called twice for one create.
    let before = first_calls.load(Ordering::SeqCst);
    let (code, _, body) = call(&c, "POST", CONFIGMAPS, Some(&configmap("chained"))).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(first_calls.load(Ordering::SeqCst) - before, 2);
    let obj = status(&body);
    assert_eq!(obj["metadata"]["labels"]["second"], "done");
    assert_eq!(
        obj["metadata"]["annotations"]["first-calls"],
        (before + 2).to_string()
    );
    // The object selector and the match condition leave the first webhook out.
    let mut skipped = configmap("skipped");
    skipped["metadata"]["labels"] = json!({"skip": "yes"});
    for obj in [skipped, configmap("system-x")] {
        let before = first_calls.load(Ordering::SeqCst);
        let (code, _, body) = call(&c, "POST", CONFIGMAPS, Some(&obj)).await;
        assert_eq!(code, 201, "{body}");
        assert_eq!(first_calls.load(Ordering::SeqCst), before, "{body}");
        assert!(status(&body)["metadata"]["annotations"]["first-calls"].is_null());
    }
    // A namespace selector leaves other namespaces out.
    let (code, _, live) = call(&c, "GET", &format!("{MUTATING}/chain"), None).await;
    assert_eq!(code, 200);
    let mut scoped: Value = serde_json::from_str(&live).unwrap();
    scoped["webhooks"][1]["namespaceSelector"] = json!({"matchLabels": {"hooked": "yes"}});
    assert_eq!(
        call(&c, "PUT", &format!("{MUTATING}/chain"), Some(&scoped))
            .await
            .0,
        200
    );
    until(
        Duration::from_secs(5),
        "the namespace selector in force",
        || async {
            let name = format!("unlabelled-{}", fastrand::u32(..));
            let (code, _, body) = call(&c, "POST", CONFIGMAPS, Some(&configmap(&name))).await;
            code == 201 && status(&body)["metadata"]["labels"]["second"].is_null()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_webhook_configurations_are_refused_field_by_field() {
    let c = TestCluster::start().await;
    let bad = configuration(
        "ValidatingWebhookConfiguration",
        "bad",
        vec![json!({
            "name": "nodots",
            "clientConfig": {"url": "http://insecure.example/"},
            "rules": [{"operations": ["SMASH"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 60,
        })],
    );
    let (code, _, body) = call(&c, "POST", VALIDATING, Some(&bad)).await;
    assert_eq!(code, 422, "{body}");
    let causes: Vec<String> = status(&body)["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap_or_default().to_string())
        .collect();
    for field in [
        "webhooks[0].name",
        "webhooks[0].rules[0].operations",
        "webhooks[0].sideEffects",
        "webhooks[0].timeoutSeconds",
        "webhooks[0].clientConfig.url",
    ] {
        assert!(
            causes.iter().any(|c| c == field),
            "{field} not in {causes:?}"
        );
    }
    assert_eq!(
        call(&c, "GET", &format!("{VALIDATING}/bad"), None).await.0,
        404
    );
}
