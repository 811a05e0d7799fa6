//! kubelet's Events from the pod worker, through the recorder into a recording sink: what
//! `kubectl describe pod` shows (Pulled, Created, Started, BackOff, Unhealthy, Killing ...),
//! with repeats folded into one Event's count.

use super::*;

fn with_reason(evs: &[(String, String, i32)], reason: &str) -> Vec<(String, i32)> {
    evs.iter()
        .filter(|(r, _, _)| r == reason)
        .map(|(_, m, c)| (m.clone(), *c))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_started_container_records_pulled_created_and_started() {
    let h = harness();
    let p = app("Always");
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    w.sync(&p).await.unwrap();
    let evs = h.events.all().await;
    let reasons: Vec<&str> = evs.iter().map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(reasons, ["Pulled", "Created", "Started"], "{evs:?}");
    assert_eq!(
        evs[0].1,
        "Container image \"busybox:1\" already present on machine"
    );
    assert_eq!(evs[1].1, "Created container: app");
    assert_eq!(evs[2].1, "Started container app");
    let stored = h.events.0.lock().unwrap();
    let ev = stored.values().next().unwrap();
    assert_eq!(
        ev.involved_object.field_path.as_deref(),
        Some("spec.containers{app}")
    );
    assert_eq!(ev.involved_object.uid.as_deref(), Some("u1"));
    assert_eq!(ev.involved_object.kind.as_deref(), Some("Pod"));
    assert_eq!(ev.source.as_ref().unwrap().host.as_deref(), Some("n1"));
    assert_eq!(ev.reporting_component.as_deref(), Some("kubelet"));
}

#[tokio::test(start_paused = true)]
async fn a_crash_looping_container_records_one_back_off_event_with_a_count() {
    let h = harness();
    let p = app("Always");
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    w.sync(&p).await.unwrap();
    // The first exit restarts at once; the second backs off 10 s.
    h.rt.exit(&h.rt.container_named("app").unwrap(), 1, false);
    w.sync(&p).await.unwrap();
    h.rt.exit(&h.rt.container_named("app").unwrap(), 1, false);
    w.sync(&p).await.unwrap();
    // Woken again while still backing off: the same event, counted.
    tokio::time::advance(Duration::from_secs(4)).await;
    w.sync(&p).await.unwrap();
    tokio::time::advance(Duration::from_secs(4)).await;
    w.sync(&p).await.unwrap();
    let evs = h.events.all().await;
    assert_eq!(
        with_reason(&evs, "BackOff"),
        [(
            "Back-off restarting failed container app in pod p_default(u1)".to_string(),
            3
        )],
        "{evs:?}"
    );
    // Two restarts: the second Created/Started bump the first ones.
    assert_eq!(
        with_reason(&evs, "Started"),
        [("Started container app".to_string(), 2)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_readiness_probe_records_unhealthy_with_a_count() {
    let h = harness();
    h.rt.set_exec_exit("app", 1);
    let p = pod(json!({"containers": [{
        "name": "app", "image": "busybox:1",
        "readinessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 2},
    }]}));
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    w.prober = Some(
        Prober::new(h.rt.clone(), Arc::new(Notify::new())).with_recorder(h.ctx.recorder.clone()),
    );
    w.sync(&p).await.unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let evs = h.events.all().await;
    let unhealthy = with_reason(&evs, "Unhealthy");
    assert_eq!(unhealthy.len(), 1, "{evs:?}");
    assert!(
        unhealthy[0].0.starts_with("Readiness probe failed: "),
        "{unhealthy:?}"
    );
    assert!(unhealthy[0].1 >= 3, "probed at 0, 2, 4, 6 s: {unhealthy:?}");
    assert_eq!(condition(&h.api.last(), "Ready"), "False");
}

/// A probe redirected to another host succeeds with a warning: `ProbeWarning`, and ready.
#[tokio::test]
async fn a_redirect_to_another_host_records_probe_warning() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.read(&mut [0u8; 1024]).await;
            let _ = s
                .write_all(b"HTTP/1.1 302 Found\r\nLocation: http://login.example/\r\nContent-Length: 5\r\n\r\nmoved")
                .await;
        }
    });
    let h = harness();
    let p = pod(json!({"containers": [{
        "name": "app", "image": "busybox:1",
        "readinessProbe": {"httpGet": {"host": "127.0.0.1", "port": port, "path": "/"}, "periodSeconds": 1},
    }]}));
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    w.prober = Some(
        Prober::new(h.rt.clone(), Arc::new(Notify::new())).with_recorder(h.ctx.recorder.clone()),
    );
    w.sync(&p).await.unwrap();
    let mut warned = Vec::new();
    for _ in 0..100 {
        warned = with_reason(&h.events.all().await, "ProbeWarning");
        if !warned.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        warned.first().map(|w| w.0.as_str()),
        Some("Readiness probe warning: Probe terminated redirects, Response body: moved")
    );
    assert!(with_reason(&h.events.all().await, "Unhealthy").is_empty());
    w.sync(&p).await.unwrap();
    assert_eq!(condition(&h.api.last(), "Ready"), "True");
}

#[tokio::test(start_paused = true)]
async fn a_failing_liveness_probe_records_unhealthy_and_killing() {
    let h = harness();
    h.rt.set_exec_exit("app", 1);
    let p = pod(json!({"containers": [{
        "name": "app", "image": "busybox:1",
        "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 2, "failureThreshold": 2},
    }]}));
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    let poke = Arc::new(Notify::new());
    w.prober = Some(Prober::new(h.rt.clone(), poke.clone()).with_recorder(h.ctx.recorder.clone()));
    w.sync(&p).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), poke.notified())
        .await
        .expect("the prober reports the failure");
    w.sync(&p).await.unwrap();
    let evs = h.events.all().await;
    let unhealthy = with_reason(&evs, "Unhealthy");
    assert!(
        unhealthy.len() == 1
            && unhealthy[0].0.starts_with("Liveness probe failed: ")
            && unhealthy[0].1 >= 2,
        "{evs:?}"
    );
    assert_eq!(
        with_reason(&evs, "Killing"),
        [(
            "Container app failed liveness probe, will be restarted".to_string(),
            1
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn image_failures_record_kubelets_pull_events() {
    let h = harness();
    h.rt.remove_image("ghost:1");
    h.rt.remove_image("local:1");
    let p = pod(json!({"containers": [
        {"name": "app", "image": "ghost:1"},
        {"name": "never", "image": "local:1", "imagePullPolicy": "Never"},
    ]}));
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    w.sync(&p).await.unwrap();
    w.sync(&p).await.unwrap(); // within the pull back-off
    let evs = h.events.all().await;
    assert_eq!(
        with_reason(&evs, "Pulling"),
        [("Pulling image \"ghost:1\"".to_string(), 1)]
    );
    assert_eq!(
        with_reason(&evs, "BackOff"),
        [("Back-off pulling image \"ghost:1\"".to_string(), 1)]
    );
    assert_eq!(
        with_reason(&evs, "ErrImageNeverPull"),
        [(
            "Container image \"local:1\" is not present with pull policy of Never".to_string(),
            2
        )]
    );
    let failed = with_reason(&evs, "Failed");
    let messages: Vec<&str> = failed.iter().map(|(m, _)| m.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("Failed to pull image \"ghost:1\": ")),
        "{failed:?}"
    );
    for m in [
        "Error: ErrImagePull",
        "Error: ImagePullBackOff",
        "Error: ErrImageNeverPull",
    ] {
        assert!(messages.contains(&m), "{m}: {failed:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn stopping_a_deleted_pod_records_killing_per_container() {
    let h = harness();
    let p = app("Always");
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    w.sync(&p).await.unwrap();
    let mut deleted = p.clone();
    deleted.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    deleted.metadata.deletion_grace_period_seconds = Some(0);
    w.sync(&deleted).await.unwrap();
    let evs = h.events.all().await;
    assert_eq!(
        with_reason(&evs, "Killing"),
        [("Stopping container app".to_string(), 1)],
        "{evs:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_volume_that_cannot_be_set_up_records_failed_mount_on_the_pod() {
    let h = harness();
    let p = pod(json!({
        "containers": [{"name": "app", "image": "busybox:1",
                        "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
        "volumes": [{"name": "cfg", "configMap": {"name": "missing"}}],
    }));
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    w.sync(&p).await.unwrap();
    let evs = h.events.all().await;
    assert_eq!(
        with_reason(&evs, "FailedMount"),
        [(
            "MountVolume.SetUp failed for volume \"cfg\" : configmap \"missing\" not found"
                .to_string(),
            1
        )],
        "{evs:?}"
    );
    let stored = h.events.0.lock().unwrap();
    let mount = stored
        .values()
        .find(|e| e.reason.as_deref() == Some("FailedMount"))
        .unwrap();
    assert_eq!(mount.involved_object.field_path, None, "about the pod");
    assert_eq!(mount.type_.as_deref(), Some("Warning"));
}
