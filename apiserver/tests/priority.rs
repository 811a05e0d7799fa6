//! PriorityClasses and the Priority admission plugin through the API: the system classes exist
//! from the start, pods take their priority from their class or the global default, a missing
//! class or a mismatched priority is refused with Kubernetes' 403, and invalid classes with
//! its 422s.

use capstan_testkit::{TestCluster, http_exchange};
use serde_json::{Value, json};

fn send(c: &TestCluster, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let (code, _, text) = http_exchange(
        &c.addr.to_string(),
        method,
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

const CLASSES: &str = "/apis/scheduling.k8s.io/v1/priorityclasses";
const PODS: &str = "/api/v1/namespaces/default/pods";

fn pod(name: &str, spec_extra: Value) -> Value {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
    for (k, v) in spec_extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"metadata": {"name": name}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_take_their_priority_from_their_class() {
    let c = TestCluster::start().await;
    let (code, critical) = send(
        &c,
        "GET",
        &format!("{CLASSES}/system-node-critical"),
        &Value::Null,
    );
    assert_eq!(code, 200, "{critical}");
    assert_eq!(critical["value"], 2_000_001_000);
    assert_eq!(critical["preemptionPolicy"], "PreemptLowerPriority");

    let (code, body) = send(
        &c,
        "POST",
        CLASSES,
        &json!({"metadata": {"name": "high"}, "value": 1000, "preemptionPolicy": "Never"}),
    );
    assert_eq!(code, 201, "{body}");
    let (code, p) = send(
        &c,
        "POST",
        PODS,
        &pod("a", json!({"priorityClassName": "high"})),
    );
    assert_eq!(code, 201, "{p}");
    assert_eq!(p["spec"]["priority"], 1000);
    assert_eq!(p["spec"]["preemptionPolicy"], "Never");

    // No class and no default: 0.
    let (_, p) = send(&c, "POST", PODS, &pod("b", json!({})));
    assert_eq!(p["spec"]["priority"], 0);

    // A missing class, or a priority the class does not give: 403 in Kubernetes' words.
    let (code, s) = send(
        &c,
        "POST",
        PODS,
        &pod("c", json!({"priorityClassName": "nope"})),
    );
    assert_eq!(code, 403, "{s}");
    assert_eq!(
        s["message"],
        "pods \"c\" is forbidden: no PriorityClass with name nope was found"
    );
    let (code, s) = send(
        &c,
        "POST",
        PODS,
        &pod("d", json!({"priorityClassName": "high", "priority": 5})),
    );
    assert_eq!(code, 403, "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("the integer value of priority (5) must not be provided in pod spec; priority admission controller computed 1000"),
        "{s}"
    );

    // A global default names itself on pods without a class; a second one is refused.
    let (code, body) = send(
        &c,
        "POST",
        CLASSES,
        &json!({"metadata": {"name": "normal"}, "value": 10, "globalDefault": true}),
    );
    assert_eq!(code, 201, "{body}");
    // The admission reads classes from its cache, which follows the store a moment behind
    // (as Kubernetes' listers do): dry runs until it has the new default, then the pod.
    let dry = format!("{PODS}?dryRun=All");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while send(&c, "POST", &dry, &pod("e", json!({}))).1["spec"]["priority"] != 10
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (_, p) = send(&c, "POST", PODS, &pod("e", json!({})));
    assert_eq!(
        (
            p["spec"]["priority"].clone(),
            p["spec"]["priorityClassName"].clone()
        ),
        (json!(10), json!("normal"))
    );
    let (code, s) = send(
        &c,
        "POST",
        CLASSES,
        &json!({"metadata": {"name": "other"}, "value": 20, "globalDefault": true}),
    );
    assert_eq!(code, 403, "{s}");
    assert!(
        s["message"].as_str().unwrap().contains(
            "PriorityClass normal is already marked as default. Only one default can exist"
        ),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_classes_are_refused() {
    let c = TestCluster::start().await;
    for (body, expected) in [
        (
            json!({"metadata": {"name": "huge"}, "value": 1_000_000_001i64}),
            "maximum allowed value of a user defined priority is 1000000000",
        ),
        (
            json!({"metadata": {"name": "system-mine"}, "value": 5}),
            "priority class names with 'system-' prefix are reserved",
        ),
    ] {
        let (code, s) = send(&c, "POST", CLASSES, &body);
        assert_eq!(code, 422, "{s}");
        assert!(s["message"].as_str().unwrap().contains(expected), "{s}");
    }
    let (code, _) = send(
        &c,
        "POST",
        CLASSES,
        &json!({"metadata": {"name": "mid"}, "value": 5}),
    );
    assert_eq!(code, 201);
    let (code, s) = send(&c, "PATCH", &format!("{CLASSES}/mid"), &json!({"value": 6}));
    assert_eq!(code, 415, "merge patch needs its content type: {s}");
    let (code, _, text) = http_exchange(
        &c.addr.to_string(),
        "PATCH",
        &format!("{CLASSES}/mid"),
        &[("Content-Type", "application/merge-patch+json")],
        br#"{"value": 6}"#,
    )
    .unwrap();
    assert_eq!(code, 422, "{text}");
    assert!(
        text.contains("value: Invalid value: 6: field is immutable"),
        "{text}"
    );
}
