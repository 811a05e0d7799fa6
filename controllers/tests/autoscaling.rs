//! The HorizontalPodAutoscaler controller against a real in-process API server, whose
//! metrics.k8s.io reads the `/stats/summary` of simulated nodes (one CPU figure for every
//! container, turned by the test): a Deployment at 300% of its target is scaled up within the
//! default rate (1 → 3), back down once usage falls and the (shortened) stabilization window
//! has passed, with the SuccessfulRescale event; a target that does not exist and a metric no
//! API serves leave conditions that say why, and scale nothing.

mod common;

use std::time::Duration;

use capstan_controllers::{Config, Manager, autoscaler};
use capstan_testkit::sim::{SimConfig, SimNodes};
use capstan_testkit::sim_stats::Usage;
use capstan_testkit::{TestCluster, until};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn hpa(name: &str, target: Value, metrics: Value) -> HorizontalPodAutoscaler {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"scaleTargetRef": target, "minReplicas": 1, "maxReplicas": 5, "metrics": metrics},
    }))
    .unwrap()
}

fn cpu_at(pct: i32) -> Value {
    json!([{"type": "Resource", "resource": {"name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": pct}}}])
}

async fn replicas(c: &TestCluster, name: &str) -> i32 {
    common::deployment_replicas(c, name).await
}

async fn condition(c: &TestCluster, name: &str, type_: &str) -> Option<(String, String, String)> {
    let h = Api::<HorizontalPodAutoscaler>::namespaced(c.client.clone(), "default")
        .get(name)
        .await
        .ok()?;
    h.status?
        .conditions?
        .into_iter()
        .find(|x| x.type_ == type_)
        .map(|x| {
            (
                x.status,
                x.reason.unwrap_or_default(),
                x.message.unwrap_or_default(),
            )
        })
}

/// The scheduler, the Deployment and ReplicaSet controllers and the autoscaler, syncing every
/// 500 ms with a 2 s downscale stabilization window.
fn fast_autoscaler(c: &TestCluster) -> capstan_testkit::Background {
    let config = Config {
        autoscaler: autoscaler::Config {
            sync_period: Duration::from_millis(500),
            downscale_stabilization: Duration::from_secs(2),
            ..Default::default()
        },
        ..Default::default()
    };
    let m = Manager::with_config(c.client.clone(), &prometheus::Registry::new(), config);
    common::run(
        m,
        &["scheduler", "deployment", "replicaset", autoscaler::NAME],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_follow_their_pods_cpu_up_and_back_down() {
    let c = TestCluster::start().await;
    let usage = Usage::new(150);
    let _sim = SimNodes::start(
        c.client.clone(),
        SimConfig {
            nodes: 2,
            stats: Some(usage.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let _manager = fast_autoscaler(&c);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                    "resources": {"requests": {"cpu": "100m"}}}]}}}}))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(c.client.clone(), "default");
    let target = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"});
    hpas.create(&PostParams::default(), &hpa("web", target, cpu_at(50)))
        .await
        .unwrap();

    // 150m of 100m requested against 50%: 3 × 1 pod.
    until(WAIT, "scaled to 3", || async {
        replicas(&c, "web").await >= 3
    })
    .await;
    until(WAIT, "the rescale event", || async {
        common::has_event(&c, "SuccessfulRescale", |m| {
            m.starts_with("New size: ")
                && m.ends_with(
                    "; reason: cpu resource utilization (percentage of request) above target",
                )
        })
        .await
    })
    .await;
    // 3 pods at 150% ask for 9, more than the maximum of 5: the rate allows it (3 + 4).
    until(WAIT, "capped at the maximum", || async {
        let current = hpas
            .get("web")
            .await
            .ok()
            .and_then(|h| h.status?.current_replicas);
        current == Some(5)
            && condition(&c, "web", "ScalingLimited")
                .await
                .is_some_and(|x| x.1 == "TooManyReplicas")
    })
    .await;
    let st = hpas.get("web").await.unwrap().status.unwrap();
    assert_eq!(
        (st.current_replicas, st.desired_replicas),
        (Some(5), 5),
        "{st:?}"
    );
    assert!(st.last_scale_time.is_some());
    let current = st.current_metrics.unwrap()[0]
        .resource
        .clone()
        .unwrap()
        .current;
    assert_eq!(current.average_utilization, Some(150), "{current:?}");
    assert_eq!(current.average_value.unwrap().0, "150m");

    // Idle: 10m is 10% — one pod would do, once no higher recommendation is within 2 s.
    usage.set_cpu_millicores(10);
    let took = until(WAIT, "scaled back to 1", || async {
        replicas(&c, "web").await == 1
    })
    .await;
    assert!(
        took >= Duration::from_millis(1500),
        "scaled down before the window: {took:?}"
    );
    let (status, reason, _) = condition(&c, "web", "ScalingActive").await.unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ValidMetricFound")
    );

    // A second autoscaler of the same pods: both refuse (AmbiguousSelector) until it goes.
    let target = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"});
    hpas.create(&PostParams::default(), &hpa("twin", target, cpu_at(50)))
        .await
        .unwrap();
    for name in ["web", "twin"] {
        until(WAIT, "AmbiguousSelector", || async {
            condition(&c, name, "ScalingActive").await.is_some_and(|x| {
                x.0 == "False"
                    && x.1 == "AmbiguousSelector"
                    && x.2
                        .contains("are controlled by multiple HPAs: [default/twin default/web]")
            })
        })
        .await;
    }
    hpas.delete("twin", &Default::default()).await.unwrap();
    until(WAIT, "web valid again", || async {
        condition(&c, "web", "ScalingActive")
            .await
            .is_some_and(|x| x.0 == "True")
    })
    .await;

    // A target that is not there: AbleToScale False, nothing scaled.
    let missing = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "nowhere"});
    hpas.create(&PostParams::default(), &hpa("lost", missing, cpu_at(50)))
        .await
        .unwrap();
    until(WAIT, "FailedGetScale", || async {
        condition(&c, "lost", "AbleToScale")
            .await
            .is_some_and(|x| x.0 == "False" && x.1 == "FailedGetScale")
    })
    .await;
    // A metric from an API that is not served: ScalingActive False, the count kept.
    let target = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"});
    let external = json!([{"type": "External", "external": {"metric": {"name": "queue"},
        "target": {"type": "Value", "value": "10"}}}]);
    hpas.delete("web", &Default::default()).await.unwrap();
    hpas.create(&PostParams::default(), &hpa("ext", target, external))
        .await
        .unwrap();
    until(WAIT, "FailedGetExternalMetric", || async {
        condition(&c, "ext", "ScalingActive")
            .await
            .is_some_and(|x| {
                x.0 == "False"
                    && x.1 == "FailedGetExternalMetric"
                    && x.2.contains("external.metrics.k8s.io")
            })
    })
    .await;
    assert_eq!(replicas(&c, "web").await, 1);
}

/// The `default` pods of `app`.
async fn pod_names(c: &TestCluster, app: &str) -> Vec<String> {
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

/// The first of the autoscaler's current metrics, once it has one.
async fn first_metric(
    hpas: &Api<HorizontalPodAutoscaler>,
    name: &str,
) -> k8s_openapi::api::autoscaling::v2::MetricStatus {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = hpas
            .get(name)
            .await
            .ok()
            .and_then(|h| h.status?.current_metrics?.first().cloned());
        if let Some(m) = found.filter(|m| m.type_ != "Resource") {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: no current metric within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until the autoscaler's first current metric satisfies `check`.
async fn metric_until(
    hpas: &Api<HorizontalPodAutoscaler>,
    name: &str,
    check: impl Fn(&k8s_openapi::api::autoscaling::v2::MetricStatus) -> bool,
) -> k8s_openapi::api::autoscaling::v2::MetricStatus {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let m = first_metric(hpas, name).await;
        if check(&m) {
            return m;
        }
        assert!(std::time::Instant::now() < deadline, "{name}: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rescaled_with(c: &TestCluster, reason: &str) -> bool {
    common::has_event(c, "SuccessfulRescale", |m| m.ends_with(reason)).await
}

/// Pods, External and Object metrics, read through the aggregation layer from a real HTTPS
/// metrics adapter (testkit's, standing in for prometheus-adapter and KEDA): each scales the
/// Deployment by Kubernetes' formula, with the value in the autoscaler's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_and_external_metrics_come_through_the_aggregation_layer() {
    let c = TestCluster::start().await;
    let _sim = SimNodes::start(
        c.client.clone(),
        SimConfig {
            nodes: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let pki = capstan_testkit::pki::pki();
    let adapter = capstan_testkit::metrics_adapter::MetricsAdapter::start(
        &["metrics-adapter.monitoring.svc"],
        pki.front_proxy_ca.cert_pem(),
    )
    .await
    .unwrap();
    adapter.register(&c.client).await.unwrap();
    let _manager = fast_autoscaler(&c);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    until(WAIT, "2 pods", || async {
        pod_names(&c, "web").await.len() == 2
    })
    .await;
    for pod in pod_names(&c, "web").await {
        adapter.set_pod("default", &pod, "requests_per_second", "20");
    }
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(c.client.clone(), "default");
    let target = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"});
    let limits = |mut h: HorizontalPodAutoscaler| {
        if let Some(spec) = h.spec.as_mut() {
            spec.max_replicas = 10;
        }
        h
    };

    // Pods: 2 pods at 20 against 10 each → 4. The 2 new pods have no value: they count as 0
    // on the way up, so 4 stays (40 / 4 = 10).
    let pods_metric = json!([{"type": "Pods", "pods": {"metric": {"name": "requests_per_second"},
        "target": {"type": "AverageValue", "averageValue": "10"}}}]);
    hpas.create(
        &PostParams::default(),
        &limits(hpa("web", target.clone(), pods_metric)),
    )
    .await
    .unwrap();
    until(WAIT, "scaled to 4 on the pods metric", || async {
        replicas(&c, "web").await == 4
    })
    .await;
    until(WAIT, "the pods metric's status", || async {
        hpas.get("web").await.ok().and_then(|h| {
            let m = h.status?.current_metrics?.first()?.pods.clone()?;
            Some(m.current.average_value?.0)
        }) == Some("20".to_string())
    })
    .await;
    until(WAIT, "the rescale event", || async {
        rescaled_with(&c, "reason: pods metric requests_per_second above target").await
    })
    .await;
    let asked = adapter.seen();
    let by_hpa = asked
        .iter()
        .find(|s| s.path.contains("/pods/*/requests_per_second"))
        .expect("the autoscaler asked the adapter");
    assert!(
        by_hpa.path.contains("labelSelector=app%3Dweb"),
        "{by_hpa:?}"
    );
    assert_eq!(by_hpa.user, capstan_testkit::pki::ADMIN);
    hpas.delete("web", &Default::default()).await.unwrap();

    // External, per pod: the jobs series (30) over 5 per pod → 6. The mail series is left out
    // by the selector.
    adapter.set_external(
        "default",
        "queue_messages",
        &[(&[("queue", "jobs")], "30"), (&[("queue", "mail")], "100")],
    );
    let external = json!([{"type": "External", "external": {
        "metric": {"name": "queue_messages", "selector": {"matchLabels": {"queue": "jobs"}}},
        "target": {"type": "AverageValue", "averageValue": "5"}}}]);
    hpas.create(
        &PostParams::default(),
        &limits(hpa("queue", target.clone(), external)),
    )
    .await
    .unwrap();
    until(WAIT, "scaled to 6 on the external metric", || async {
        replicas(&c, "web").await == 6
    })
    .await;
    // The status follows the scale write.
    // Settled at 6 replicas: 30 over 6 is the target, 5.
    let average = |m: &k8s_openapi::api::autoscaling::v2::MetricStatus| {
        let current = match (&m.external, &m.object) {
            (Some(e), _) => &e.current,
            (_, Some(o)) => &o.current,
            _ => return String::new(),
        };
        current
            .average_value
            .clone()
            .map(|q| q.0)
            .unwrap_or_default()
    };
    let m = metric_until(&hpas, "queue", |m| average(m) == "5").await;
    assert_eq!(m.external.unwrap().metric.name, "queue_messages");
    assert_eq!(replicas(&c, "web").await, 6);
    hpas.delete("queue", &Default::default()).await.unwrap();

    // Object, per pod: 12 requests on the Service over 4 per pod → 3, once the 2 s
    // stabilization window has passed.
    adapter.set_object("default", "services", "web", "requests", "12");
    let object = json!([{"type": "Object", "object": {
        "describedObject": {"apiVersion": "v1", "kind": "Service", "name": "web"},
        "metric": {"name": "requests"},
        "target": {"type": "AverageValue", "averageValue": "4"}}}]);
    hpas.create(
        &PostParams::default(),
        &limits(hpa("object", target.clone(), object)),
    )
    .await
    .unwrap();
    until(WAIT, "scaled to 3 on the object metric", || async {
        replicas(&c, "web").await == 3
    })
    .await;
    // Settled at 3: 12 over 3 is the target, 4.
    let m = metric_until(&hpas, "object", |m| average(m) == "4").await;
    assert_eq!(m.object.unwrap().described_object.kind, "Service");
    assert_eq!(replicas(&c, "web").await, 3);
    let (status, reason, _) = condition(&c, "object", "ScalingActive").await.unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ValidMetricFound")
    );

    // A metric the adapter does not have: ScalingActive False with Kubernetes' reason.
    hpas.delete("object", &Default::default()).await.unwrap();
    let unknown = json!([{"type": "Object", "object": {
        "describedObject": {"apiVersion": "v1", "kind": "Service", "name": "web"},
        "metric": {"name": "nothing"},
        "target": {"type": "Value", "value": "1"}}}]);
    hpas.create(
        &PostParams::default(),
        &limits(hpa("unknown", target, unknown)),
    )
    .await
    .unwrap();
    until(WAIT, "FailedGetObjectMetric", || async {
        condition(&c, "unknown", "ScalingActive")
            .await
            .is_some_and(|x| {
                x.0 == "False" && x.1 == "FailedGetObjectMetric" && x.2.contains("nothing")
            })
    })
    .await;
    assert_eq!(replicas(&c, "web").await, 3);
}
