//! The ScalingPolicy controller against a real in-process API server and a real Redis
//! (`redis-server`, with a password the policy reads from a Secret):
//! - 50 messages in a list at 10 per replica wake a Deployment from 0 to 5; drained, it goes
//!   back to 0, never before the cooldown; Redis gone, the last good proposal stands in
//!   (condition Fallback);
//! - a schedule in Asia/Seoul on a clock running 3,600× opens at 09:00 and closes at 18:00;
//! - the schema refuses start = end; an unknown zone leaves Ready=False with an Event; an
//!   HPA made after a policy on the same target is refused, and so is a second policy.

mod common;

use std::time::{Duration, Instant};

use capstan_api::crds::ScalingPolicy;
use capstan_controllers::runtime::Clock;
use capstan_controllers::{Config, Manager, autoscaler, scalingpolicy};
use capstan_testkit::redis::RedisProcess;
use capstan_testkit::{TestCluster, until};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::core::CustomResourceExt;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// The cluster with Capstan's ScalingPolicy CRD served.
async fn cluster() -> TestCluster {
    let c = TestCluster::start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    crds.create(&PostParams::default(), &ScalingPolicy::crd())
        .await
        .unwrap();
    let policies: Api<ScalingPolicy> = Api::namespaced(c.client.clone(), "default");
    until(WAIT, "scalingpolicies served", || async {
        policies.list(&ListParams::default()).await.is_ok()
    })
    .await;
    c
}

async fn deployment(c: &TestCluster, name: &str, replicas: i32) {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}))
    .unwrap();
    Api::<Deployment>::namespaced(c.client.clone(), "default")
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
}

async fn replicas(c: &TestCluster, name: &str) -> i32 {
    common::deployment_replicas(c, name).await
}

async fn create(c: &TestCluster, policy: Value) -> Result<ScalingPolicy, kube::Error> {
    let p: ScalingPolicy = serde_json::from_value(policy).unwrap();
    Api::<ScalingPolicy>::namespaced(c.client.clone(), "default")
        .create(&PostParams::default(), &p)
        .await
}

async fn status(c: &TestCluster, name: &str) -> Value {
    let p = Api::<ScalingPolicy>::namespaced(c.client.clone(), "default")
        .get(name)
        .await
        .unwrap();
    serde_json::to_value(p.status.unwrap_or_default()).unwrap()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["type"] == type_))
        .unwrap_or(&Value::Null)
}

async fn event(c: &TestCluster, reason: &str, contains: &str) -> bool {
    common::has_event(c, reason, |m| m.contains(contains)).await
}

fn manager(c: &TestCluster, clock: Clock) -> capstan_testkit::Background {
    let config = Config {
        clock,
        autoscaler: autoscaler::Config {
            sync_period: Duration::from_millis(500),
            ..Default::default()
        },
        ..Default::default()
    };
    let m = Manager::with_config(c.client.clone(), &prometheus::Registry::new(), config);
    common::run(m, &[scalingpolicy::NAME, autoscaler::NAME])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_queue_wakes_a_deployment_from_zero_and_lets_it_go_back_after_the_cooldown() {
    if !capstan_testkit::redis::available() {
        panic!("redis-server is missing: apt-get install redis-server");
    }
    let redis = RedisProcess::start(Some("s3cret")).unwrap();
    let c = cluster().await;
    let _manager = manager(&c, Clock::system());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "redis-auth"}, "stringData": {"password": "s3cret"}}))
    .unwrap();
    Api::<Secret>::namespaced(c.client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    deployment(&c, "worker", 0).await;
    create(
        &c,
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "ScalingPolicy",
            "metadata": {"name": "worker"},
            "spec": {"scaleTargetRef": {"name": "worker"}, "minReplicas": 0, "maxReplicas": 20,
                "pollingInterval": "1s", "cooldownPeriod": "3s",
                "triggers": [{"name": "jobs", "type": "queue", "queue": {
                    "redis": {"address": redis.address(), "list": "jobs",
                        "passwordFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}},
                    "targetPerReplica": 10}}]}}),
    )
    .await
    .unwrap();
    until(WAIT, "the policy reads an empty queue", || async {
        let s = status(&c, "worker").await;
        s["triggers"][0]["value"] == 0.0 && condition(&s, "Ready")["status"] == "True"
    })
    .await;
    assert_eq!(replicas(&c, "worker").await, 0);

    // 50 messages at 10 per replica: 0 → 5 at once.
    let items: Vec<String> = (0..50).map(|i| format!("job-{i}")).collect();
    let mut push = vec!["RPUSH", "jobs"];
    push.extend(items.iter().map(String::as_str));
    assert_eq!(redis.command(&push).unwrap(), "50");
    until(WAIT, "woken to 5", || async {
        replicas(&c, "worker").await == 5
    })
    .await;
    // (The status is written after the scale.)
    until(WAIT, "the status of the wake-up", || async {
        let s = status(&c, "worker").await;
        s["triggers"][0]["value"] == 50.0
            && s["triggers"][0]["proposal"] == 5
            && s["activeTriggers"] == "jobs"
            && s["desiredReplicas"] == 5
            && condition(&s, "Active")["status"] == "True"
    })
    .await;
    until(WAIT, "the rescale event", || async {
        event(
            &c,
            "SuccessfulRescale",
            "New size: 5; reason: a trigger became active",
        )
        .await
    })
    .await;

    // Drained: back to zero, never before the 3 s cooldown.
    redis.command(&["DEL", "jobs"]).unwrap();
    let drained = Instant::now();
    until(WAIT, "back to zero", || async {
        replicas(&c, "worker").await == 0
    })
    .await;
    assert!(
        drained.elapsed() >= Duration::from_secs(2),
        "scaled to zero {:?} after the queue drained",
        drained.elapsed()
    );
    until(WAIT, "inactive in status", || async {
        let s = status(&c, "worker").await;
        condition(&s, "Active")["status"] == "False"
            && s["desiredReplicas"] == 0
            && s.get("activeTriggers").is_none()
    })
    .await;

    // 30 messages: 0 → 3; then Redis goes away and the last good proposal stands in.
    let mut push = vec!["RPUSH", "jobs"];
    push.extend(items[..30].iter().map(String::as_str));
    redis.command(&push).unwrap();
    until(WAIT, "woken to 3", || async {
        replicas(&c, "worker").await == 3
    })
    .await;
    drop(redis);
    until(WAIT, "the fallback condition", || async {
        let s = status(&c, "worker").await;
        let f = condition(&s, "Fallback");
        f["status"] == "True"
            && f["message"]
                .as_str()
                .is_some_and(|m| m.contains("keeping its last good proposal (3)"))
    })
    .await;
    let s = status(&c, "worker").await;
    assert!(s["triggers"][0]["error"].as_str().is_some(), "{s}");
    assert_eq!(replicas(&c, "worker").await, 3);
    assert!(event(&c, "TriggerError", "jobs").await);

    // An HPA made after the policy on the same Deployment is refused; so is a second policy.
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "worker"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
            "minReplicas": 1, "maxReplicas": 5}}))
    .unwrap();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(c.client.clone(), "default");
    hpas.create(&PostParams::default(), &hpa).await.unwrap();
    until(WAIT, "the HPA refused", || async {
        hpas.get("worker")
            .await
            .ok()
            .and_then(|h| h.status?.conditions)
            .is_some_and(|cs| {
                cs.iter().any(|x| {
                    x.type_ == "ScalingActive"
                        && x.status == "False"
                        && x.reason.as_deref() == Some("AmbiguousAutoscaler")
                })
            })
    })
    .await;
    // (Creation times have a second's resolution: the second policy is made a second later.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create(
        &c,
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "ScalingPolicy",
            "metadata": {"name": "second"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
                "maxReplicas": 2, "pollingInterval": "1s",
                "triggers": [{"type": "schedule", "schedule": {"start": "0 9 * * *", "end": "0 18 * * *", "replicas": 2}}]}}),
    )
    .await
    .unwrap();
    until(WAIT, "the second policy refused", || async {
        let s = status(&c, "second").await;
        let r = condition(&s, "Ready");
        r["status"] == "False"
            && r["reason"] == "AmbiguousAutoscaler"
            && r["message"]
                .as_str()
                .is_some_and(|m| m.contains("ScalingPolicy worker"))
    })
    .await;
    assert_eq!(replicas(&c, "worker").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_in_seoul_opens_at_nine_and_closes_at_six_on_a_fast_clock() {
    let c = cluster().await;
    // Monday 2026-12-07 08:59:00 in Seoul (UTC+9), an hour passing each real second.
    let start: jiff::Timestamp = "2026-12-06T23:59:00Z".parse().unwrap();
    let clock = Clock::fast(start, 3600);
    let _manager = manager(&c, clock);
    deployment(&c, "shop", 0).await;
    create(
        &c,
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "ScalingPolicy",
            "metadata": {"name": "shop"},
            "spec": {"scaleTargetRef": {"name": "shop"}, "maxReplicas": 10,
                "pollingInterval": "1s", "cooldownPeriod": "60s",
                "triggers": [{"name": "hours", "type": "schedule", "schedule": {
                    "timezone": "Asia/Seoul", "start": "0 9 * * 1-5", "end": "0 18 * * 1-5",
                    "replicas": 4}}]}}),
    )
    .await
    .unwrap();
    let seoul = jiff::tz::TimeZone::get("Asia/Seoul").unwrap();
    until(WAIT, "open at 09:00", || async {
        replicas(&c, "shop").await == 4
    })
    .await;
    let opened = clock.now().to_zoned(seoul.clone());
    assert!(
        opened.hour() >= 9 && opened.hour() < 18,
        "opened at {opened}"
    );
    until(WAIT, "closed at 18:00", || async {
        replicas(&c, "shop").await == 0
    })
    .await;
    let closed = clock.now().to_zoned(seoul);
    assert!(closed.hour() >= 18, "closed at {closed}");
    until(WAIT, "the closed window in status", || async {
        status(&c, "shop").await["triggers"][0]["active"] == false
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_by_the_schema_or_reported_never_acted_on() {
    let c = cluster().await;
    let _manager = manager(&c, Clock::system());
    deployment(&c, "api", 2).await;
    let spec = |schedule: Value| {
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "ScalingPolicy",
            "metadata": {"name": "api"},
            "spec": {"scaleTargetRef": {"name": "api"}, "minReplicas": 1, "maxReplicas": 4,
                "pollingInterval": "1s",
                "triggers": [{"type": "schedule", "schedule": schedule}]}})
    };
    // start = end: the CRD's validation rule refuses it.
    let err = create(
        &c,
        spec(json!({"start": "0 9 * * *", "end": "0 9 * * *", "replicas": 3})),
    )
    .await
    .unwrap_err();
    let kube::Error::Api(refused) = err else {
        panic!("{err:?}")
    };
    assert_eq!(refused.code, 422, "{refused:?}");
    assert!(
        refused.message.contains("start and end must differ"),
        "{refused:?}"
    );
    // A trigger whose type names another field, and min above max.
    let mut wrong = spec(json!({"start": "0 9 * * *", "end": "0 18 * * *", "replicas": 3}));
    wrong["spec"]["triggers"][0]["type"] = json!("queue");
    wrong["spec"]["minReplicas"] = json!(9);
    let kube::Error::Api(refused) = create(&c, wrong).await.unwrap_err() else {
        panic!()
    };
    assert!(
        refused
            .message
            .contains("exactly the field named by type is set")
            && refused
                .message
                .contains("minReplicas must not exceed maxReplicas"),
        "{refused:?}"
    );
    // An unknown zone passes the schema; the controller says so and scales nothing.
    create(
        &c,
        spec(json!({"timezone": "Mars/Olympus", "start": "0 9 * * *", "end": "0 18 * * *", "replicas": 3})),
    )
    .await
    .unwrap();
    until(WAIT, "Ready=False InvalidSpec", || async {
        let s = status(&c, "api").await;
        let r = condition(&s, "Ready");
        r["status"] == "False"
            && r["reason"] == "InvalidSpec"
            && r["message"]
                .as_str()
                .is_some_and(|m| m.contains("Mars/Olympus"))
    })
    .await;
    until(WAIT, "the InvalidSpec event", || async {
        event(&c, "InvalidSpec", "Mars/Olympus").await
    })
    .await;
    assert_eq!(replicas(&c, "api").await, 2);
}

/// An HTTP endpoint whose body is the number the test last set (a business metric).
struct MetricServer {
    value: std::sync::Arc<std::sync::Mutex<f64>>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl MetricServer {
    async fn start(value: f64) -> MetricServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/orders", listener.local_addr().unwrap());
        let value = std::sync::Arc::new(std::sync::Mutex::new(value));
        let v = value.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let body = format!("{}", *v.lock().unwrap());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        MetricServer { value, url, task }
    }
}

impl Drop for MetricServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A day of 96 steps: quiet night, a morning bump, an evening peak at step 76 (19:00).
fn day_shape(step: usize) -> f64 {
    let hour = (step % 96) as f64 / 4.0;
    20.0 + 60.0 * (-((hour - 11.0) / 3.0).powi(2)).exp()
        + 90.0 * (-((hour - 19.0) / 2.0).powi(2)).exp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forecast_scales_up_before_the_peak_and_forecast_only_just_shows_it() {
    let c = cluster().await;
    // A "day" of 96 one-second steps; two days and 17 "hours" recorded: now is 17:00 on day
    // three, the value about half the 19:00 peak the history shows every day.
    let recorded = 2 * 96 + 68;
    let values: Vec<f64> = (0..recorded).map(day_shape).collect();
    let now_value = day_shape(recorded);
    let peak = day_shape(76);
    assert!(now_value < 0.55 * peak, "{now_value} {peak}");
    let server = MetricServer::start(now_value).await;
    let per_replica = 15.0;
    let policy = |name: &str, mode: &str| {
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "ScalingPolicy",
            "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"name": name}, "minReplicas": 1, "maxReplicas": 10,
                "pollingInterval": "1s",
                "triggers": [
                    {"name": "orders", "type": "metric",
                     "metric": {"http": {"url": server.url}, "targetPerReplica": per_replica}},
                    {"name": "ahead", "type": "predictive",
                     "predictive": {"trigger": "orders", "seasonality": "96s", "lookAhead": "10s",
                        "mode": mode}}]}})
    };
    let now_replicas = (now_value / per_replica).ceil() as i32;
    let peak_replicas = (peak / per_replica).ceil() as i32;
    // Made (with their recorded history) before the controller starts, as after a restart.
    let start = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(recorded as i64);
    for (name, mode) in [("shop", "ForecastAndScale"), ("watch", "ForecastOnly")] {
        deployment(&c, name, now_replicas).await;
        create(&c, policy(name, mode)).await.unwrap();
        let history = json!({"status": {"triggers": [
            {"name": "orders", "type": "metric"},
            {"name": "ahead", "type": "predictive",
             "history": {"start": start.to_string(), "stepSeconds": 1, "values": values}}]}});
        Api::<ScalingPolicy>::namespaced(c.client.clone(), "default")
            .patch_status(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&history),
            )
            .await
            .unwrap();
    }
    let _manager = manager(&c, Clock::system());

    // The measured value asks for `now_replicas`; the forecast sees the peak coming within
    // lookAhead and scales for it while the value is still where it was.
    until(WAIT, "scaled ahead of the peak", || async {
        replicas(&c, "shop").await >= peak_replicas - 1
    })
    .await;
    assert_eq!(*server.value.lock().unwrap(), now_value);
    // (The status is written after the scale.)
    until(WAIT, "the forecast and its proposal in status", || async {
        let s = status(&c, "shop").await;
        let ahead = &s["triggers"][1];
        ahead["forecast"].as_f64().is_some_and(|f| f >= 0.85 * peak)
            && ahead["proposal"]
                .as_i64()
                .is_some_and(|p| p >= i64::from(peak_replicas) - 1)
            && s["triggers"][0]["proposal"] == now_replicas
    })
    .await;
    // ForecastOnly shows the same forecast and leaves the count to the measured value.
    until(WAIT, "the forecast shown", || async {
        let s = status(&c, "watch").await;
        s["triggers"][1]["forecast"]
            .as_f64()
            .is_some_and(|f| f >= 0.85 * peak)
            && s["triggers"][1]["proposal"].is_null()
    })
    .await;
    assert_eq!(replicas(&c, "watch").await, now_replicas);
    // Steps pass and the forecasts made for them are scored.
    until(WAIT, "the forecast error", || async {
        status(&c, "shop").await["triggers"][1]["forecastError"]
            .as_f64()
            .is_some_and(|e| e >= 0.0)
    })
    .await;
}

#[tokio::test]
async fn redis_lists_streams_and_consumer_groups_are_measured_on_a_real_redis() {
    use capstan_api::crds::scalingpolicy::RedisQueue;
    use capstan_controllers::scalingpolicy::redis::queue_length;
    let redis = RedisProcess::start(Some("pw")).unwrap();
    let t = Duration::from_secs(5);
    let q = |list: Option<&str>, stream: Option<&str>, group: Option<&str>| RedisQueue {
        address: redis.address(),
        list: list.map(str::to_string),
        stream: stream.map(str::to_string),
        consumer_group: group.map(str::to_string),
        database: 0,
        ..Default::default()
    };
    redis.command(&["RPUSH", "l", "a", "b", "c"]).unwrap();
    assert_eq!(
        queue_length(&q(Some("l"), None, None), None, Some("pw"), t).await,
        Ok(3)
    );
    // A missing list is empty; a wrong password is an error that says so.
    assert_eq!(
        queue_length(&q(Some("none"), None, None), None, Some("pw"), t).await,
        Ok(0)
    );
    let err = queue_length(&q(Some("l"), None, None), None, Some("nope"), t)
        .await
        .unwrap_err();
    assert!(err.contains("AUTH") && err.contains("WRONGPASS"), "{err}");
    // A stream of 5; a group that has read 3 and acknowledged 1 has 2 pending and 2 unread.
    for i in 0..5 {
        redis
            .command(&["XADD", "s", "*", "n", &i.to_string()])
            .unwrap();
    }
    assert_eq!(
        queue_length(&q(None, Some("s"), None), None, Some("pw"), t).await,
        Ok(5)
    );
    redis
        .command(&["XGROUP", "CREATE", "s", "workers", "0"])
        .unwrap();
    let read = redis
        .command(&[
            "XREADGROUP",
            "GROUP",
            "workers",
            "w1",
            "COUNT",
            "3",
            "STREAMS",
            "s",
            ">",
        ])
        .unwrap();
    let first_id = read.lines().nth(1).unwrap().to_string();
    assert_eq!(
        redis.command(&["XACK", "s", "workers", &first_id]).unwrap(),
        "1"
    );
    assert_eq!(
        queue_length(&q(None, Some("s"), Some("workers")), None, Some("pw"), t).await,
        Ok(4)
    );
    assert!(
        queue_length(&q(None, Some("s"), Some("other")), None, Some("pw"), t)
            .await
            .unwrap_err()
            .contains("no consumer group")
    );
    // Nobody listening: an error within the deadline, not a hang.
    let port = redis.port;
    drop(redis);
    let gone = RedisQueue {
        address: format!("127.0.0.1:{port}"),
        list: Some("l".into()),
        ..Default::default()
    };
    assert!(queue_length(&gone, None, None, t).await.is_err());
}
