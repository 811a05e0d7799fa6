//! The aggregation layer against a real HTTPS extension server (testkit's MetricsAdapter,
//! standing in for prometheus-adapter and KEDA, which cannot be installed here): APIServices
//! for custom.metrics.k8s.io and external.metrics.k8s.io behind a Service become Available,
//! their requests are proxied with the caller named in X-Remote-* headers and the front-proxy
//! certificate, RBAC decides before anything is proxied, discovery lists them, an APIService
//! without endpoints turns unavailable (503, at once), and bad APIServices are refused.

use std::time::Duration;

use capstan_testkit::metrics_adapter::MetricsAdapter;
use capstan_testkit::{TestCluster, http_exchange, pki, tls_exchange, until};
use serde_json::{Value, json};

/// A raw request as the administrator (off the runtime: the adapter shares it).
async fn call(c: &TestCluster, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let (addr, method, path) = (c.addr.to_string(), method.to_string(), path.to_string());
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        let (code, _, body) = http_exchange(
            &addr,
            &method,
            &path,
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/json"),
            ],
            body.as_bytes(),
        )
        .unwrap();
        (code, body)
    })
    .await
    .unwrap()
}

/// A GET as `user` in `groups` (a client certificate of the test CA).
async fn get_as(c: &TestCluster, user: &str, groups: &[&str], path: &str) -> (u16, String) {
    let pki = pki::pki();
    let id = pki.user(user, groups);
    let tls =
        std::sync::Arc::new(capstan_pki::tls::client_config(pki.ca.cert_pem(), Some(&id)).unwrap());
    let (addr, path) = (c.addr.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || {
        let (code, _, body) = tls_exchange(&addr, Some(tls), "GET", &path, &[], b"").unwrap();
        (code, body)
    })
    .await
    .unwrap()
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

async fn create(c: &TestCluster, path: &str, obj: Value) {
    let (code, body) = call(c, "POST", path, Some(&obj)).await;
    assert_eq!(code, 201, "{path}: {body}");
}

/// The Available condition of APIService `name`: (status, reason, message).
async fn availability(c: &TestCluster, name: &str) -> (String, String, String) {
    let (_, body) = call(
        c,
        "GET",
        &format!("/apis/apiregistration.k8s.io/v1/apiservices/{name}"),
        None,
    )
    .await;
    let obj = parse(&body);
    let cond = obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Available").cloned())
        .unwrap_or(Value::Null);
    let s = |k: &str| cond[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_servers_are_reached_through_their_apiservices() {
    let c = TestCluster::start().await;
    let pki = pki::pki();

    // What extension servers are told to trust.
    let (code, body) = call(
        &c,
        "GET",
        "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication",
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let cm = parse(&body);
    assert_eq!(
        cm["data"]["requestheader-client-ca-file"],
        pki.front_proxy_ca.cert_pem()
    );
    assert_eq!(cm["data"]["client-ca-file"], pki.ca.cert_pem());
    assert_eq!(
        cm["data"]["requestheader-allowed-names"],
        r#"["front-proxy-client"]"#
    );
    assert_eq!(
        cm["data"]["requestheader-username-headers"],
        r#"["X-Remote-User"]"#
    );

    let adapter = MetricsAdapter::start(
        &["metrics-adapter.monitoring.svc"],
        pki.front_proxy_ca.cert_pem(),
    )
    .await
    .unwrap();
    adapter.set_pod("default", "web-1", "requests_per_second", "30");
    adapter.set_pod("default", "web-2", "requests_per_second", "500m");
    adapter.set_external(
        "default",
        "queue_messages",
        &[(&[("queue", "jobs")], "50"), (&[("queue", "mail")], "7")],
    );
    adapter.register(&c.client).await.unwrap();
    let slice = adapter.endpoint_slice();
    let services = "/apis/apiregistration.k8s.io/v1/apiservices";
    for name in [
        "v1beta2.custom.metrics.k8s.io",
        "v1beta1.external.metrics.k8s.io",
    ] {
        until(
            Duration::from_secs(15),
            &format!("{name} Available"),
            || async { availability(&c, name).await.1 == "Passed" },
        )
        .await;
        assert_eq!(availability(&c, name).await.0, "True");
    }

    // Proxied, the caller named: an RBAC role lets jane read custom metrics.
    create(
        &c,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        json!({"metadata": {"name": "metrics-reader"},
               "rules": [{"apiGroups": ["custom.metrics.k8s.io", "external.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]}),
    )
    .await;
    create(
        &c,
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        json!({"metadata": {"name": "metrics-reader"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "metrics-reader"},
               "subjects": [{"kind": "User", "name": "jane", "apiGroup": "rbac.authorization.k8s.io"}]}),
    )
    .await;
    let pods = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/requests_per_second?labelSelector=app%3Dweb";
    let (code, body) = get_as(&c, "jane", &["dev"], pods).await;
    assert_eq!(code, 200, "{body}");
    let list = parse(&body);
    let values: Vec<(&str, &str)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["describedObject"]["name"].as_str().unwrap(),
                i["value"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(values, [("web-1", "30"), ("web-2", "500m")]);
    let seen = adapter.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.user, "jane");
    assert!(last.groups.contains(&"dev".to_string()), "{last:?}");
    assert!(
        last.groups.contains(&"system:authenticated".to_string()),
        "{last:?}"
    );
    assert!(last.path.ends_with("?labelSelector=app%3Dweb"), "{last:?}");
    let external = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_messages?labelSelector=queue%3Djobs";
    let (code, body) = get_as(&c, "jane", &[], external).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(parse(&body)["items"][0]["value"], "50");
    assert_eq!(parse(&body)["items"].as_array().unwrap().len(), 1);

    // A long request (a watch) goes over a connection of its own and streams back what the
    // adapter answers (this one answers a watch with its list).
    let (code, body) = get_as(&c, "jane", &[], &format!("{pods}&watch=true")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("web-2"), "{body}");
    assert!(adapter.seen().last().unwrap().path.contains("watch=true"));

    // RBAC decides first: bob is refused here, and the adapter never hears of it.
    let before = adapter.seen().len();
    let (code, body) = get_as(&c, "bob", &[], pods).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(adapter.seen().len(), before);

    // Discovery: the groups are listed, with the adapter's resources in aggregated discovery.
    let (_, body) = call(&c, "GET", "/apis", None).await;
    let groups = parse(&body);
    let custom = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "custom.metrics.k8s.io")
        .cloned()
        .unwrap_or_else(|| panic!("custom.metrics.k8s.io not in /apis: {body}"));
    assert_eq!(custom["preferredVersion"]["version"], "v1beta2");
    let (code, body) = call(&c, "GET", "/apis/custom.metrics.k8s.io", None).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = call(&c, "GET", "/apis/custom.metrics.k8s.io/v1beta2", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        parse(&body)["resources"][0]["name"],
        "pods/requests_per_second"
    );
    let (addr, v2) = (
        c.addr.to_string(),
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
    );
    let (_, _, body) = tokio::task::spawn_blocking(move || {
        http_exchange(&addr, "GET", "/apis", &[("Accept", v2)], b"").unwrap()
    })
    .await
    .unwrap();
    let aggregated = parse(&body);
    let group = aggregated["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "custom.metrics.k8s.io")
        .cloned()
        .unwrap();
    let pods_entry = &group["versions"][0]["resources"][0];
    assert_eq!(pods_entry["resource"], "pods", "{group}");
    assert_eq!(
        pods_entry["subresources"][0]["subresource"],
        "requests_per_second"
    );

    // Without a ready endpoint the APIService is unavailable and its requests are refused at
    // once with a 503, not left to time out.
    let (code, body) = call(
        &c,
        "DELETE",
        "/apis/discovery.k8s.io/v1/namespaces/monitoring/endpointslices/metrics-adapter-1",
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    until(Duration::from_secs(15), "MissingEndpoints", || async {
        availability(&c, "v1beta2.custom.metrics.k8s.io").await.1 == "MissingEndpoints"
    })
    .await;
    let started = std::time::Instant::now();
    let (code, body) = get_as(&c, "jane", &[], pods).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("v1beta2.custom.metrics.k8s.io"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Back: available again.
    create(
        &c,
        "/apis/discovery.k8s.io/v1/namespaces/monitoring/endpointslices",
        slice,
    )
    .await;
    until(Duration::from_secs(15), "Passed again", || async {
        availability(&c, "v1beta2.custom.metrics.k8s.io").await.1 == "Passed"
    })
    .await;
    let (code, _) = get_as(&c, "jane", &[], pods).await;
    assert_eq!(code, 200);

    // A Service that is not there.
    let mut missing = adapter.api_service("example.metrics.test", "v1", 100);
    missing["spec"]["service"]["name"] = json!("nowhere");
    create(&c, services, missing).await;
    until(Duration::from_secs(15), "ServiceNotFound", || async {
        availability(&c, "v1.example.metrics.test").await.1 == "ServiceNotFound"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_apiservices_are_refused_with_their_fields() {
    let c = TestCluster::start().await;
    let services = "/apis/apiregistration.k8s.io/v1/apiservices";
    let cases = [
        (json!({"caBundle": "Zm9v"}), "spec.caBundle"),
        (
            json!({"insecureSkipTLSVerify": true, "caBundle": "Zm9v"}),
            "spec.insecureSkipTLSVerify",
        ),
        (
            json!({"groupPriorityMinimum": 0}),
            "spec.groupPriorityMinimum",
        ),
        (json!({"versionPriority": 5000}), "spec.versionPriority"),
        (
            json!({"service": {"namespace": "monitoring", "name": "", "port": 70000}}),
            "spec.service.name",
        ),
    ];
    for (patch, field) in cases {
        let mut obj = json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1.bad.metrics.test"},
            "spec": {"group": "bad.metrics.test", "version": "v1",
                "groupPriorityMinimum": 100, "versionPriority": 100,
                "service": {"namespace": "monitoring", "name": "metrics-adapter", "port": 443}},
        });
        for (k, v) in patch.as_object().unwrap() {
            obj["spec"][k] = v.clone();
        }
        let (code, body) = call(&c, "POST", services, Some(&obj)).await;
        assert_eq!(code, 422, "{field}: {body}");
        let causes = parse(&body)["details"]["causes"].clone();
        assert!(
            causes
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["field"] == field),
            "{field} not among {causes}"
        );
    }
    // Nothing was written.
    let (code, _) = call(&c, "GET", &format!("{services}/v1.bad.metrics.test"), None).await;
    assert_eq!(code, 404);
}
