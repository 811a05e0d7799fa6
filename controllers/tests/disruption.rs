//! PodDisruptionBudgets, the disruption controller and pods/eviction together, against a real
//! in-process API server with simulated nodes: evictions spend the budget one at a time and
//! are refused with 429 while it allows none; and the API's other refusals (a budget not yet
//! processed, several budgets, bad input), each a Kubernetes Status.

use std::time::Duration;

use capstan_controllers::Manager;
use capstan_testkit::sim::{SimConfig, SimNodes};
use capstan_testkit::{TestCluster, until};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// POST pods/NAME/eviction: status, header lines, body.
async fn evict(c: &TestCluster, pod: &str, query: &str) -> (u16, Vec<String>, Value) {
    let addr = c.addr.to_string();
    let path = format!("/api/v1/namespaces/default/pods/{pod}/eviction{query}");
    let body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": pod, "namespace": "default"}})
    .to_string();
    tokio::task::spawn_blocking(move || {
        let (status, headers, body) = capstan_testkit::http_exchange(
            &addr,
            "POST",
            &path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
        (
            status,
            headers,
            serde_json::from_str(&body).unwrap_or(Value::Null),
        )
    })
    .await
    .unwrap()
}

fn pdb(name: &str, spec: Value) -> PodDisruptionBudget {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_spend_the_budget_one_at_a_time() {
    let c = TestCluster::start().await;
    let _sim = SimNodes::start(
        c.client.clone(),
        SimConfig {
            nodes: 3,
            lease_every: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // The workload controllers run apart from the disruption controller, so they can be held
    // still while two evictions are made back to back: a replacement made Ready in between
    // would rightly restore the budget, and the second eviction would be allowed.
    let workloads = || {
        let m = Manager::new(c.client.clone(), &prometheus::Registry::new());
        let names = ["deployment", "replicaset", "scheduler"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        tokio::spawn(async move { m.run(&names).await.unwrap() })
    };
    let running = workloads();
    let m = Manager::new(c.client.clone(), &prometheus::Registry::new());
    let names = ["disruption".to_string()].into_iter().collect();
    let manager = tokio::spawn(async move { m.run(&names).await.unwrap() });
    let deps: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "localhost/busybox:1"}]}}}
    }))
    .unwrap();
    deps.create(&PostParams::default(), &d).await.unwrap();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.client.clone(), "default");
    let spec = json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}});
    pdbs.create(&PostParams::default(), &pdb("web", spec))
        .await
        .unwrap();
    let allows = |n: i32| {
        let pdbs = pdbs.clone();
        async move {
            let s = pdbs.get("web").await.unwrap().status.unwrap_or_default();
            s.observed_generation == Some(1)
                && s.expected_pods == 3
                && s.desired_healthy == 2
                && s.current_healthy == 3
                && s.disruptions_allowed == n
        }
    };
    until(WAIT, "the budget allows one disruption", || allows(1)).await;
    let status = pdbs.get("web").await.unwrap().status.unwrap();
    let cond = &status.conditions.unwrap()[0];
    assert_eq!(
        (
            cond.type_.as_str(),
            cond.status.as_str(),
            cond.reason.as_str()
        ),
        ("DisruptionAllowed", "True", "SufficientPods")
    );

    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    running.abort();
    let _ = running.await;
    let list = pods.list(&ListParams::default()).await.unwrap().items;
    let names: Vec<String> = list
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();

    // A dry run answers as the real thing would and changes nothing.
    let (code, _, _) = evict(&c, &names[0], "?dryRun=All").await;
    assert_eq!(code, 201);
    assert!(
        pods.get(&names[0])
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );
    assert_eq!(
        pdbs.get("web")
            .await
            .unwrap()
            .status
            .unwrap()
            .disruptions_allowed,
        1
    );

    let (code, _, body) = evict(&c, &names[0], "").await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"], "Success");
    // The budget is spent: no replacement can be made while the workload controllers are held.
    let (code, headers, body) = evict(&c, &names[1], "").await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(
        body["message"],
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert_eq!(
        body["details"]["causes"][0]["reason"], "DisruptionBudget",
        "{body}"
    );
    assert!(
        body["details"]["causes"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("The disruption budget web needs 2 healthy pods"),
        "{body}"
    );
    assert!(
        !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("retry-after")),
        "{headers:?}"
    );
    assert!(
        pods.get(&names[1])
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );

    // The evicted pod is replaced; once the replacement is Ready the budget allows one again.
    let running = workloads();
    until(
        WAIT,
        "a replacement Ready and the budget back to 1",
        || async {
            let live = pods.list(&ListParams::default()).await.unwrap().items;
            live.iter()
                .filter(|p| ready(p) && p.metadata.deletion_timestamp.is_none())
                .count()
                == 3
                && !live
                    .iter()
                    .any(|p| p.metadata.name.as_deref() == Some(&names[0]))
                && allows(1).await
        },
    )
    .await;
    let (code, _, body) = evict(&c, &names[1], "").await;
    assert_eq!(code, 201, "{body}");
    running.abort();
    manager.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_refusals_are_kubernetes_statuses() {
    let c = TestCluster::start().await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    for name in ["a", "pending"] {
        let p: Pod =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "db"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}))
            .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    pods.patch_status(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await
    .unwrap();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.client.clone(), "default");
    // No disruption controller runs: the budget's status never catches up with its generation.
    let spec = json!({"minAvailable": 0, "selector": {"matchLabels": {"app": "db"}}});
    pdbs.create(&PostParams::default(), &pdb("db", spec.clone()))
        .await
        .unwrap();
    let (code, headers, body) = evict(&c, "a", "").await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["details"]["retryAfterSeconds"], 10);
    assert!(
        headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("retry-after: 10")),
        "{headers:?}"
    );
    assert_eq!(
        body["details"]["causes"][0]["message"],
        "The disruption budget db is still being processed by the server."
    );
    // A pod not running needs no budget.
    let (code, _, body) = evict(&c, "pending", "").await;
    assert_eq!(code, 201, "{body}");
    assert!(
        pods.get("pending")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    // Two budgets: the eviction API cannot decide.
    pdbs.create(&PostParams::default(), &pdb("db2", spec))
        .await
        .unwrap();
    let (code, _, body) = evict(&c, "a", "").await;
    assert_eq!(code, 500, "{body}");
    assert_eq!(
        body["message"],
        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
    );
    assert!(
        pods.get("a")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );
    // Not there; and a body that is not an Eviction.
    let (code, _, body) = evict(&c, "nope", "").await;
    assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")));
    let addr = c.addr.to_string();
    let (code, _) = tokio::task::spawn_blocking(move || {
        capstan_testkit::http_request(
            &addr,
            "POST",
            "/api/v1/namespaces/default/pods/a/eviction",
            &[("Content-Type", "application/json")],
            br#"{"apiVersion":"v1","kind":"Pod"}"#,
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(code, 400);
    // A budget with both bounds is refused with the field named.
    let bad = pdb("bad", json!({"minAvailable": 1, "maxUnavailable": "150%"}));
    let e = pdbs.create(&PostParams::default(), &bad).await.unwrap_err();
    let (code, reason, message) = capstan_testkit::api_error(e);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        message.contains("minAvailable and maxUnavailable cannot be both set"),
        "{message}"
    );
    assert!(
        message.contains("must not be greater than 100%"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unready_pods_follow_the_unhealthy_pod_eviction_policy() {
    let c = TestCluster::start().await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.client.clone(), "default");
    // (pod app, policy, currentHealthy, desiredHealthy) → whether an unready pod may go.
    let cases = [
        ("a", None, 2, 1, true),  // IfHealthyBudget: the budget is met
        ("b", None, 0, 1, false), // IfHealthyBudget: it is not
        ("c", Some("IfHealthyBudget"), 0, 1, false),
        ("d", Some("AlwaysAllow"), 0, 1, true),
    ];
    for (app, policy, current, desired, allowed) in cases {
        let p: Pod =
            serde_json::from_value(json!({"metadata": {"name": app, "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}))
            .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
        pods.patch_status(
            app,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
            "phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}})),
        )
        .await
        .unwrap();
        let mut spec = json!({"minAvailable": desired, "selector": {"matchLabels": {"app": app}}});
        if let Some(policy) = policy {
            spec["unhealthyPodEvictionPolicy"] = json!(policy);
        }
        pdbs.create(&PostParams::default(), &pdb(app, spec))
            .await
            .unwrap();
        // The status a disruption controller would write: no disruption allowed.
        pdbs.patch_status(
            app,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
            "observedGeneration": 1, "currentHealthy": current, "desiredHealthy": desired,
            "expectedPods": 1, "disruptionsAllowed": 0}})),
        )
        .await
        .unwrap();
        let (code, _, body) = evict(&c, app, "").await;
        if allowed {
            assert_eq!(code, 201, "{app}: {body}");
            assert!(
                pods.get(app)
                    .await
                    .unwrap()
                    .metadata
                    .deletion_timestamp
                    .is_some(),
                "{app}"
            );
            let s = pdbs.get(app).await.unwrap().status.unwrap();
            assert_eq!(s.disruptions_allowed, 0, "{app}: not charged");
            assert!(s.disrupted_pods.is_none(), "{app}: not charged");
        } else {
            assert_eq!(code, 429, "{app}: {body}");
            assert!(
                pods.get(app)
                    .await
                    .unwrap()
                    .metadata
                    .deletion_timestamp
                    .is_none(),
                "{app}"
            );
        }
    }
}
