//! What independent clients' own integration tests expect of a Kubernetes API server, over raw
//! HTTP: server-side apply without a name in the body, zero-valued field selectors, aggregated
//! discovery, APIServices, pods/ephemeralcontainers, componentstatuses, and ConfigMap/Secret
//! size limits and stringData.

use std::time::Duration;

use capstan_testkit::{TestCluster, http_json, until};
use serde_json::{Value, json};

/// One request: (code, response headers, body as JSON or Null).
async fn call(
    c: &TestCluster,
    method: &'static str,
    path: &str,
    headers: &[(&'static str, &'static str)],
    body: Value,
) -> (u16, Vec<String>, Value) {
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    http_json(c.addr, method, path, headers, body).await
}

/// A GET's body.
async fn get(c: &TestCluster, path: &str) -> Value {
    call(c, "GET", path, &[], Value::Null).await.2
}

/// Waits until GET `path` answers `code`.
async fn until_code(c: &TestCluster, path: &str, code: u16, within: Duration) {
    until(
        within,
        &format!("GET {path} answers {code}"),
        || async move { call(c, "GET", path, &[], Value::Null).await.0 == code },
    )
    .await;
}

/// The names of a list's items.
fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    i["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];
const APPLY: &[(&str, &str)] = &[("Content-Type", "application/apply-patch+yaml")];
const SMP: &[(&str, &str)] = &[("Content-Type", "application/strategic-merge-patch+json")];

fn header<'a>(head: &'a [String], name: &str) -> Vec<&'a str> {
    head.iter()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_takes_name_and_namespace_from_the_url() {
    let c = TestCluster::start().await;
    let path = "/api/v1/namespaces/default/configmaps/settings?fieldManager=tool";
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1"}});
    let (code, _, obj) = call(&c, "PATCH", path, APPLY, body.clone()).await;
    assert_eq!(code, 201, "{obj}");
    assert_eq!(obj["metadata"]["name"], "settings");
    assert_eq!(obj["metadata"]["namespace"], "default");
    // Applied again: the same object, no conflict.
    let (code, _, again) = call(&c, "PATCH", path, APPLY, body).await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(
        again["metadata"]["resourceVersion"],
        obj["metadata"]["resourceVersion"]
    );
    // A body naming another object is still refused.
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}});
    let (code, _, status) = call(&c, "PATCH", path, APPLY, other).await;
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));
    let elsewhere =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "kube-system"}});
    let (code, _, _) = call(&c, "PATCH", path, APPLY, elsewhere).await;
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_selectors_read_unset_fields_as_their_zero_value() {
    let c = TestCluster::start().await;
    for (name, spec) in [
        ("plain", json!({})),
        ("cordoned", json!({"unschedulable": true})),
    ] {
        let node =
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec});
        let (code, _, body) = call(&c, "POST", "/api/v1/nodes", JSON, node).await;
        assert_eq!(code, 201, "{body}");
    }
    let schedulable = get(
        &c,
        "/api/v1/nodes?fieldSelector=spec.unschedulable%3D%3Dfalse",
    )
    .await;
    assert_eq!(names(&schedulable), ["plain"]);
    let not_true = get(&c, "/api/v1/nodes?fieldSelector=spec.unschedulable!%3Dtrue").await;
    assert_eq!(names(&not_true), ["plain"]);
    // The paginated path (from the store) reads them the same way.
    let paged = get(
        &c,
        "/api/v1/nodes?fieldSelector=spec.unschedulable%3D%3Dfalse&limit=10",
    )
    .await;
    assert_eq!(names(&paged), ["plain"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_discovery_is_served_when_the_client_asks_for_it() {
    let c = TestCluster::start().await;
    let v2 =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let (code, head, apis) = call(&c, "GET", "/apis", &[("Accept", v2)], Value::Null).await;
    assert_eq!(code, 200);
    assert_eq!(
        header(&head, "content-type"),
        ["application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"]
    );
    assert_eq!(apis["kind"], "APIGroupDiscoveryList");
    assert_eq!(apis["apiVersion"], "apidiscovery.k8s.io/v2");
    let apps = apis["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "apps")
        .expect("apps is listed");
    let v1 = &apps["versions"][0];
    assert_eq!(v1["version"], "v1");
    let deployments = v1["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "deployments")
        .expect("deployments are listed");
    assert_eq!(deployments["scope"], "Namespaced");
    assert_eq!(
        deployments["responseKind"],
        json!({"group": "apps", "version": "v1", "kind": "Deployment"})
    );
    assert_eq!(deployments["shortNames"], json!(["deploy"]));
    let scale = deployments["subresources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subresource"] == "scale")
        .expect("deployments/scale");
    assert_eq!(
        scale["responseKind"],
        json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
    );

    // The core group on /api, v2beta1 for kubectl 1.27–1.29.
    let v2beta1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
    let (_, head, core) = call(&c, "GET", "/api", &[("Accept", v2beta1)], Value::Null).await;
    assert_eq!(
        header(&head, "content-type"),
        ["application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"]
    );
    assert_eq!(core["apiVersion"], "apidiscovery.k8s.io/v2beta1");
    assert_eq!(core["items"][0]["metadata"]["name"], "");
    let pods = core["items"][0]["versions"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "pods")
        .unwrap()
        .clone();
    let subs: Vec<&str> = pods["subresources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subresource"].as_str().unwrap())
        .collect();
    assert!(
        subs.contains(&"ephemeralcontainers") && subs.contains(&"exec"),
        "{subs:?}"
    );

    // Without the media type: the legacy documents.
    let (_, head, legacy) = call(&c, "GET", "/apis", &[], Value::Null).await;
    assert_eq!(legacy["kind"], "APIGroupList");
    assert_eq!(header(&head, "content-type"), ["application/json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_group_version_has_an_apiservice_and_crds_come_and_go() {
    let c = TestCluster::start().await;
    let list = "/apis/apiregistration.k8s.io/v1/apiservices";
    let (code, _, services) = call(&c, "GET", list, &[], Value::Null).await;
    assert_eq!(code, 200, "{services}");
    let have = names(&services);
    for want in [
        "v1.",
        "v1.apps",
        "v2.autoscaling",
        "v1.apiregistration.k8s.io",
        "v1.apiextensions.k8s.io",
    ] {
        assert!(
            have.contains(&want.to_string()),
            "{want} missing from {have:?}"
        );
    }
    let apps = get(&c, &format!("{list}/v1.apps")).await;
    assert_eq!(apps["spec"]["group"], "apps");
    assert_eq!(apps["spec"]["service"], Value::Null);
    assert_eq!(apps["status"]["conditions"][0]["type"], "Available");
    assert_eq!(apps["status"]["conditions"][0]["status"], "True");

    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    });
    let (code, _, body) = call(
        &c,
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        JSON,
        crd,
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let one = format!("{list}/v1.example.com");
    until_code(&c, &one, 200, Duration::from_secs(5)).await;
    let gadgets = get(&c, &one).await;
    assert_eq!(
        gadgets["metadata"]["labels"]["kube-aggregator.kubernetes.io/automanaged"],
        "true"
    );

    let (code, _, _) = call(
        &c,
        "DELETE",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gadgets.example.com",
        &[],
        Value::Null,
    )
    .await;
    assert_eq!(code, 200);
    until_code(&c, &one, 404, Duration::from_secs(10)).await;
    // Built-in groups stay.
    assert_eq!(
        call(&c, "GET", &format!("{list}/v1.apps"), &[], Value::Null)
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_containers_are_added_only_through_their_subresource() {
    let c = TestCluster::start().await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]}});
    let (code, _, created) = call(&c, "POST", "/api/v1/namespaces/default/pods", JSON, pod).await;
    assert_eq!(code, 201, "{created}");
    let sub = "/api/v1/namespaces/default/pods/app/ephemeralcontainers";
    let (code, _, got) = call(&c, "GET", sub, &[], Value::Null).await;
    assert_eq!((code, got["kind"].as_str()), (200, Some("Pod")));

    // What kubectl debug sends: a strategic merge patch of the Pod.
    let debug = json!({"spec": {"ephemeralContainers": [{"name": "debugger", "image": "busybox",
        "targetContainerName": "app", "stdin": true, "tty": true}]}});
    let (code, _, patched) = call(&c, "PATCH", sub, SMP, debug).await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(
        patched["spec"]["ephemeralContainers"][0]["name"],
        "debugger"
    );
    // The subresource changes nothing else.
    let sneaky = json!({"metadata": {"labels": {"x": "y"}}, "spec": {"ephemeralContainers": [
        {"name": "debugger", "image": "busybox", "targetContainerName": "app", "stdin": true, "tty": true},
        {"name": "second", "image": "busybox"}]}});
    let (code, _, patched) = call(&c, "PATCH", sub, SMP, sneaky).await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(
        patched["spec"]["ephemeralContainers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(patched["metadata"]["labels"], Value::Null);

    // Invalid ones are refused with every cause, and change nothing.
    let bad = json!({"spec": {"ephemeralContainers": [{"name": "third", "image": "busybox",
        "ports": [{"containerPort": 80}], "readinessProbe": {"exec": {"command": ["true"]}}}]}});
    let (code, _, status) = call(&c, "PATCH", sub, SMP, bad).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (422, Some("Invalid")),
        "{status}"
    );
    let causes: Vec<&str> = status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert!(
        causes.contains(&"spec.ephemeralContainers[2].ports"),
        "{causes:?}"
    );
    assert!(
        causes.contains(&"spec.ephemeralContainers[2].readinessProbe"),
        "{causes:?}"
    );
    // Removing one is refused too.
    let remove = json!([{"op": "remove", "path": "/spec/ephemeralContainers/0"}]);
    let (code, _, _) = call(
        &c,
        "PATCH",
        sub,
        &[("Content-Type", "application/json-patch+json")],
        remove,
    )
    .await;
    assert_eq!(code, 422);

    // The pod's own endpoint keeps them whatever it is sent.
    let mut pod = call(
        &c,
        "GET",
        "/api/v1/namespaces/default/pods/app",
        &[],
        Value::Null,
    )
    .await
    .2;
    pod["spec"]["ephemeralContainers"] = json!([]);
    pod["metadata"]["labels"] = json!({"edited": "yes"});
    let (code, _, updated) =
        call(&c, "PUT", "/api/v1/namespaces/default/pods/app", JSON, pod).await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["metadata"]["labels"]["edited"], "yes");
    assert_eq!(
        updated["spec"]["ephemeralContainers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn componentstatuses_are_computed_and_read_only() {
    let c = TestCluster::start().await;
    let (code, head, list) = call(&c, "GET", "/api/v1/componentstatuses", &[], Value::Null).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["kind"], "ComponentStatusList");
    assert!(
        header(&head, "warning")
            .iter()
            .any(|w| w.contains("ComponentStatus is deprecated")),
        "{head:?}"
    );
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["controller-manager", "etcd-0", "scheduler"]);
    let (code, _, etcd) = call(
        &c,
        "GET",
        "/api/v1/componentstatuses/etcd-0",
        &[],
        Value::Null,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        etcd["conditions"][0],
        json!({"type": "Healthy", "status": "True", "message": "ok"})
    );
    // An in-process component (capstan up's controller manager) reports whether it runs.
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    c.api.set_component(
        "controller-manager",
        capstan_apiserver::http::component_status::Probe::InProcess(running.clone()),
    );
    let manager = get(&c, "/api/v1/componentstatuses/controller-manager").await;
    assert_eq!(manager["conditions"][0]["status"], "True", "{manager}");
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let manager = get(&c, "/api/v1/componentstatuses/controller-manager").await;
    assert_eq!(manager["conditions"][0]["status"], "False", "{manager}");
    assert_eq!(manager["conditions"][0]["error"], "stopped");
    // kubectl get cs: a Table.
    let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let (_, _, t) = call(
        &c,
        "GET",
        "/api/v1/componentstatuses",
        &[("Accept", table)],
        Value::Null,
    )
    .await;
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["rows"].as_array().unwrap().len(), 3);
    assert_eq!(
        call(
            &c,
            "GET",
            "/api/v1/componentstatuses/nope",
            &[],
            Value::Null
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(&c, "POST", "/api/v1/componentstatuses", JSON, json!({}))
            .await
            .0,
        405
    );
    // Discovery lists it.
    let core = get(&c, "/api/v1").await;
    assert!(
        core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "componentstatuses" && r["shortNames"] == json!(["cs"]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_and_secret_data_over_one_mebibyte_is_refused_and_string_data_is_merged() {
    let c = TestCluster::start().await;
    let big = "x".repeat(1024 * 1024 + 1);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"k": big}});
    let (code, _, status) = call(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        JSON,
        cm,
    )
    .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (422, Some("Invalid")),
        "{status}"
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("must have at most 1048576 bytes")
    );
    assert_eq!(
        call(
            &c,
            "GET",
            "/api/v1/namespaces/default/configmaps/big",
            &[],
            Value::Null
        )
        .await
        .0,
        404
    );

    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "big"}, "stringData": {"k": big}});
    let (code, _, _) = call(
        &c,
        "POST",
        "/api/v1/namespaces/default/secrets",
        JSON,
        secret,
    )
    .await;
    assert_eq!(code, 422);

    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "login"},
        "data": {"user": "YWRtaW4="}, "stringData": {"password": "hunter2"}});
    let (code, _, created) = call(
        &c,
        "POST",
        "/api/v1/namespaces/default/secrets",
        JSON,
        secret,
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        created["data"],
        json!({"user": "YWRtaW4=", "password": "aHVudGVyMg=="})
    );
    assert_eq!(created["stringData"], Value::Null);
    // On update too: stringData wins over data of the same key, and is never stored.
    let patch = json!({"stringData": {"user": "root"}});
    let (code, _, patched) = call(
        &c,
        "PATCH",
        "/api/v1/namespaces/default/secrets/login",
        &[("Content-Type", "application/merge-patch+json")],
        patch,
    )
    .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["data"]["user"], "cm9vdA==");
    assert_eq!(patched["stringData"], Value::Null);
}
