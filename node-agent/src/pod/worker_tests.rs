//! The pod worker against the fake runtime and an in-memory API, on tokio's paused clock:
//! every back-off and probe period below passes without real waiting.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Pod, PodStatus, Secret};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::*;
use crate::pod::env::EnvError;
use crate::runtime::fake::FakeRuntime;

/// The API server as the worker sees it: ConfigMaps to read, statuses and deletions recorded.
#[derive(Default)]
struct Api {
    config_maps: Mutex<BTreeMap<String, ConfigMap>>,
    statuses: Mutex<Vec<PodStatus>>,
    /// Bumped on every write, for [`Api::until`].
    written: watch::Sender<usize>,
    deletions: Mutex<Vec<String>>,
    /// This many status writes fail first (a 500 or an unreachable API server).
    failing_writes: AtomicUsize,
}

impl Lookup for Arc<Api> {
    async fn config_map(&self, _: &str, name: &str) -> Result<Option<ConfigMap>, EnvError> {
        Ok(self.config_maps.lock().unwrap().get(name).cloned())
    }
    async fn secret(&self, _: &str, _: &str) -> Result<Option<Secret>, EnvError> {
        Ok(None)
    }
    async fn services(
        &self,
        _: &str,
    ) -> Result<Vec<k8s_openapi::api::core::v1::Service>, EnvError> {
        Ok(Vec::new())
    }
    async fn token(
        &self,
        _: &str,
        _: &str,
        _: crate::pod::env::TokenFor<'_>,
    ) -> Result<(String, std::time::SystemTime), EnvError> {
        Err(EnvError("no tokens here".into()))
    }
}

impl PodApi for Arc<Api> {
    async fn write_status(
        &self,
        _: &Pod,
        uid: &str,
        status: &PodStatus,
    ) -> Result<Option<String>, String> {
        assert_eq!(uid, "u1", "writes are guarded by the pod's uid");
        if self
            .failing_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("writing the pod status: 500 Internal Server Error".into());
        }
        let mut statuses = self.statuses.lock().unwrap();
        statuses.push(status.clone());
        let version = format!("written-{}", statuses.len());
        drop(statuses);
        self.written.send_modify(|n| *n += 1);
        Ok(Some(version))
    }
    async fn confirm_deletion(&self, pod: &Pod, uid: &str) -> Result<(), String> {
        self.deletions
            .lock()
            .unwrap()
            .push(format!("{}/{uid}", pod.metadata.name.as_deref().unwrap()));
        Ok(())
    }
}

impl Api {
    fn last(&self) -> PodStatus {
        self.statuses
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a status was written")
    }
    fn writes(&self) -> usize {
        self.statuses.lock().unwrap().len()
    }
    /// Waits (on the paused clock) until the last status written satisfies `pred`.
    async fn until(&self, pred: impl Fn(&PodStatus) -> bool) {
        let mut rx = self.written.subscribe();
        while !self.statuses.lock().unwrap().last().is_some_and(&pred) {
            rx.changed().await.unwrap();
        }
    }
}

/// The API server's Events as the recorder writes them: creates, and merge patches applied.
#[derive(Default)]
struct Events(Mutex<BTreeMap<String, k8s_openapi::api::core::v1::Event>>);

impl crate::events::EventSink for Arc<Events> {
    async fn create(&self, ev: &k8s_openapi::api::core::v1::Event) -> Result<(), String> {
        let name = ev.metadata.name.clone().unwrap();
        let mut m = self.0.lock().unwrap();
        assert!(!m.contains_key(&name), "event {name} created twice");
        m.insert(name, ev.clone());
        Ok(())
    }
    async fn patch(&self, _: &str, name: &str, patch: &Value) -> Result<bool, String> {
        let mut m = self.0.lock().unwrap();
        let Some(ev) = m.get_mut(name) else {
            return Ok(false);
        };
        let mut v = serde_json::to_value(&*ev).unwrap();
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        *ev = serde_json::from_value(v).unwrap();
        Ok(true)
    }
}

impl Events {
    /// (reason, message, count) of every Event, oldest first, once the recorder caught up.
    async fn all(&self) -> Vec<(String, String, i32)> {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let mut evs: Vec<_> = self.0.lock().unwrap().values().cloned().collect();
        evs.sort_by_key(|e| e.metadata.name.clone());
        evs.into_iter()
            .map(|e| {
                (
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default(),
                    e.count.unwrap_or_default(),
                )
            })
            .collect()
    }
}

struct Harness {
    rt: Arc<FakeRuntime>,
    api: Arc<Api>,
    events: Arc<Events>,
    ctx: Arc<Context<FakeRuntime, Arc<Api>>>,
    dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let rt = Arc::new(FakeRuntime::new());
    let api = Arc::new(Api::default());
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(Events::default());
    let clock = rt.clone();
    let recorder =
        crate::events::Recorder::spawn("n1", events.clone(), Arc::new(move || clock.now()));
    let ctx = Arc::new(Context {
        recorder,
        runtime: rt.clone(),
        api: api.clone(),
        node: NodeConfig {
            name: "n1".into(),
            host_ip: "192.0.2.10".into(),
            labels: BTreeMap::new(),
            max_pods: 110,
            runtime_version: rt.version(),
            root_dir: dir.path().join("root"),
            port: 10250,
            cluster_dns: vec!["10.96.0.10".into()],
            cluster_domain: "cluster.local".into(),
            lease_duration_seconds: crate::node::LEASE_DURATION_SECONDS,
            eviction_hard: Default::default(),
        },
        log_root: dir.path().join("logs"),
        runtime_name: "fake".into(),
        memory_capacity: 8 << 30,
        metrics: None,
    });
    Harness {
        rt,
        api,
        events,
        ctx,
        dir,
    }
}

fn pod(spec: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "u1",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
    }))
    .unwrap()
}

fn app(restart: &str) -> Pod {
    pod(json!({"restartPolicy": restart, "containers": [{"name": "app", "image": "busybox:1"}]}))
}

/// The pod as the API server would hand it back after our status write.
fn with_status(mut p: Pod, status: PodStatus) -> Pod {
    p.status = Some(status);
    p
}

fn container<'a>(s: &'a PodStatus, name: &str) -> &'a ContainerStatus {
    s.container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no status of {name} in {s:?}"))
}

fn condition(s: &PodStatus, kind: &str) -> String {
    s.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

fn waiting_reason(c: &ContainerStatus) -> Option<String> {
    c.state.as_ref()?.waiting.as_ref()?.reason.clone()
}

fn created(rt: &FakeRuntime) -> Vec<String> {
    rt.calls()
        .into_iter()
        .filter(|c| c.starts_with("create_container"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_first_then_the_pod_runs_and_is_ready() {
    let h = harness();
    let p = pod(json!({
        "initContainers": [{"name": "init", "image": "busybox:1"}],
        "containers": [{"name": "app", "image": "busybox:1"}],
    }));
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());

    assert_eq!(w.sync(&p).await, Ok(Outcome::Again(None)));
    assert_eq!(created(&h.rt), ["create_container init 0"], "init alone");
    let s = h.api.last();
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(condition(&s, "Initialized"), "False");
    assert!(
        container(&s, "init")
            .state
            .as_ref()
            .unwrap()
            .running
            .is_some()
    );
    assert_eq!(
        waiting_reason(container(&s, "app")).as_deref(),
        Some("PodInitializing")
    );

    // The init container is done: the app starts and the pod is Running and Ready.
    h.rt.exit(&h.rt.container_named("init").unwrap(), 0, false);
    w.sync(&with_status(p.clone(), s)).await.unwrap();
    assert_eq!(
        created(&h.rt),
        ["create_container init 0", "create_container app 0"]
    );
    let s = h.api.last();
    assert_eq!(s.phase.as_deref(), Some("Running"));
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&s, kind), "True", "{kind} in {s:?}");
    }
    assert_eq!(s.host_ip.as_deref(), Some("192.0.2.10"));
    let ip = s.pod_ip.clone().expect("a pod IP");
    assert!(ip.starts_with("10.88.0."), "{ip}");
    assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
    let a = container(&s, "app");
    assert!(
        a.ready && a.started == Some(true) && a.restart_count == 0,
        "{a:?}"
    );
    let id = h.rt.container_named("app").unwrap();
    assert_eq!(
        a.container_id.as_deref(),
        Some(format!("fake://{id}").as_str())
    );
    let init = container(&s, "init");
    let done = init.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (done.exit_code, done.reason.as_deref()),
        (0, Some("Completed"))
    );

    // Nothing changed: nothing is created and no status is written again.
    let writes = h.api.writes();
    w.sync(&with_status(p, s)).await.unwrap();
    assert_eq!(created(&h.rt).len(), 2);
    assert_eq!(h.api.writes(), writes, "an unchanged status is not written");
}

#[tokio::test(start_paused = true)]
async fn a_crashing_container_backs_off_doubling_then_forgets_after_ten_minutes() {
    let h = harness();
    let p = app("Always");
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    w.sync(&p).await.unwrap();

    // The first exit restarts at once (kubelet's back-off starts with the second).
    h.rt.exit(&h.rt.container_named("app").unwrap(), 1, false);
    assert_eq!(w.sync(&p).await, Ok(Outcome::Again(None)));
    assert_eq!(created(&h.rt).last().unwrap(), "create_container app 1");

    // Then 10 s, 20 s: the worker asks to be woken when the back-off ends.
    for (attempt, backoff) in [(2u32, 10u64), (3, 20)] {
        h.rt.exit(&h.rt.container_named("app").unwrap(), 1, false);
        assert_eq!(
            w.sync(&p).await,
            Ok(Outcome::Again(Some(Duration::from_secs(backoff))))
        );
        let s = h.api.last();
        assert_eq!(s.phase.as_deref(), Some("Running"), "Always: still Running");
        assert_eq!(condition(&s, "Ready"), "False");
        let c = container(&s, "app");
        assert_eq!(waiting_reason(c).as_deref(), Some("CrashLoopBackOff"));
        let msg = c
            .state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap()
            .message
            .clone();
        assert!(msg.unwrap().starts_with(&format!(
            "back-off {backoff}s restarting failed container=app"
        )),);
        assert_eq!(c.restart_count, attempt as i32 - 1);
        let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));

        // One second short of the back-off: still waiting; then it restarts.
        tokio::time::advance(Duration::from_secs(backoff - 1)).await;
        assert_eq!(
            w.sync(&p).await,
            Ok(Outcome::Again(Some(Duration::from_secs(1))))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        w.sync(&p).await.unwrap();
        assert_eq!(
            created(&h.rt).last().unwrap(),
            &format!("create_container app {attempt}")
        );
        assert_eq!(
            container(&h.api.last(), "app").restart_count,
            attempt as i32
        );
    }

    // It runs for ten minutes: the back-off is forgotten. That crash restarts at once, the
    // next one backs off 10 s again (not 40 s).
    tokio::time::advance(Duration::from_secs(600)).await;
    h.rt.exit(&h.rt.container_named("app").unwrap(), 1, false);
    assert_eq!(w.sync(&p).await, Ok(Outcome::Again(None)));
    assert_eq!(created(&h.rt).last().unwrap(), "create_container app 4");
    h.rt.exit(&h.rt.container_named("app").unwrap(), 1, false);
    assert_eq!(
        w.sync(&p).await,
        Ok(Outcome::Again(Some(Duration::from_secs(10))))
    );
}

#[tokio::test(start_paused = true)]
async fn restart_policies_decide_the_phase() {
    // Never: a failed container stays failed, the pod fails and its sandbox is stopped.
    let h = harness();
    let p = app("Never");
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    w.sync(&p).await.unwrap();
    h.rt.exit(&h.rt.container_named("app").unwrap(), 3, false);
    w.sync(&p).await.unwrap();
    let s = h.api.last();
    assert_eq!(s.phase.as_deref(), Some("Failed"));
    let t = container(&s, "app")
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    assert_eq!(created(&h.rt).len(), 1, "Never restarts nothing");
    assert!(h.rt.calls().iter().any(|c| c.starts_with("stop_sandbox")));
    w.sync(&with_status(p, s)).await.unwrap();
    assert_eq!(created(&h.rt).len(), 1, "a finished pod stays finished");

    // OnFailure: a failure restarts, success ends the pod as Succeeded.
    let h = harness();
    let p = app("OnFailure");
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    w.sync(&p).await.unwrap();
    h.rt.exit(&h.rt.container_named("app").unwrap(), 1, false);
    w.sync(&p).await.unwrap();
    assert_eq!(created(&h.rt).last().unwrap(), "create_container app 1");
    h.rt.exit(&h.rt.container_named("app").unwrap(), 0, false);
    w.sync(&p).await.unwrap();
    let s = h.api.last();
    assert_eq!(s.phase.as_deref(), Some("Succeeded"));
    assert_eq!(container(&s, "app").restart_count, 1);
    assert_eq!(created(&h.rt).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_oom_kill_is_reported_in_last_state() {
    let h = harness();
    let p = app("Always");
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    w.sync(&p).await.unwrap();
    h.rt.exit(&h.rt.container_named("app").unwrap(), 137, true);
    w.sync(&p).await.unwrap();
    let c = container(&h.api.last(), "app").clone();
    assert_eq!(c.restart_count, 1);
    let t = c.last_state.unwrap().terminated.unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));
}

#[tokio::test(start_paused = true)]
async fn a_missing_configmap_holds_the_container_until_it_exists() {
    let h = harness();
    let p = pod(json!({"containers": [{
        "name": "app", "image": "busybox:1",
        "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}}],
    }]}));
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    assert_eq!(
        w.sync(&p).await,
        Ok(Outcome::Again(Some(START_RETRY))),
        "retried without waiting for a change"
    );
    let c = container(&h.api.last(), "app").clone();
    assert_eq!(
        waiting_reason(&c).as_deref(),
        Some("CreateContainerConfigError")
    );
    assert!(created(&h.rt).is_empty());

    h.api.config_maps.lock().unwrap().insert(
        "cfg".into(),
        serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"mode": "fast"}}))
            .unwrap(),
    );
    tokio::time::advance(START_RETRY).await;
    w.sync(&p).await.unwrap();
    let id = h.rt.container_named("app").unwrap();
    let env = h.rt.list_containers().await.unwrap();
    let env = &env.iter().find(|c| c.id == id).unwrap().config.env;
    assert!(
        env.contains(&("MODE".to_string(), "fast".to_string())),
        "{env:?}"
    );
    assert_eq!(h.api.last().phase.as_deref(), Some("Running"));
}

#[tokio::test(start_paused = true)]
async fn a_missing_image_is_err_image_pull_then_backs_off() {
    let h = harness();
    h.rt.remove_image("ghost:1");
    let p = pod(json!({"containers": [{"name": "app", "image": "ghost:1"}]}));
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    let pulls = |rt: &FakeRuntime| {
        rt.calls()
            .iter()
            .filter(|c| c.starts_with("pull_image"))
            .count()
    };

    w.sync(&p).await.unwrap();
    let c = container(&h.api.last(), "app").clone();
    assert_eq!(waiting_reason(&c).as_deref(), Some("ErrImagePull"));
    assert!(
        c.state
            .unwrap()
            .waiting
            .unwrap()
            .message
            .unwrap()
            .contains("ghost:1")
    );
    assert_eq!(pulls(&h.rt), 1);

    w.sync(&p).await.unwrap();
    let c = container(&h.api.last(), "app").clone();
    assert_eq!(waiting_reason(&c).as_deref(), Some("ImagePullBackOff"));
    assert_eq!(pulls(&h.rt), 1, "no pull during the back-off");

    tokio::time::advance(Duration::from_secs(10)).await;
    w.sync(&p).await.unwrap();
    assert_eq!(pulls(&h.rt), 2, "pulled again after 10 s");
    assert!(created(&h.rt).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_status_write_is_retried_until_it_lands() {
    let h = harness();
    h.api.failing_writes.store(2, Ordering::SeqCst);
    let p = app("Always");
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    assert!(w.sync(&p).await.unwrap_err().contains("500"));
    assert!(w.sync(&p).await.is_err());
    assert_eq!(h.api.writes(), 0);
    w.sync(&p).await.unwrap();
    assert_eq!(h.api.last().phase.as_deref(), Some("Running"));
    assert_eq!(created(&h.rt).len(), 1, "retries did not start it twice");
}

#[tokio::test(start_paused = true)]
async fn a_failing_liveness_probe_restarts_the_container() {
    let h = harness();
    h.rt.set_exec_exit("app", 1);
    let p = pod(json!({"containers": [{
        "name": "app", "image": "busybox:1",
        "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 2, "failureThreshold": 2},
    }]}));
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    let poke = Arc::new(Notify::new());
    w.prober = Some(Prober::new(h.rt.clone(), poke.clone()));
    w.sync(&p).await.unwrap();
    let first = h.rt.container_named("app").unwrap();

    // Two failures two seconds apart: the prober pokes the worker, which restarts it.
    tokio::time::timeout(Duration::from_secs(10), poke.notified())
        .await
        .expect("the prober reports the failure");
    w.sync(&p).await.unwrap();
    assert!(h.rt.calls().contains(&format!("stop_container {first}")));
    assert_eq!(created(&h.rt).last().unwrap(), "create_container app 1");
    let execs =
        h.rt.calls()
            .iter()
            .filter(|c| c.starts_with(&format!("exec_sync {first}")))
            .count();
    assert_eq!(execs, 2, "failureThreshold 2");
}

#[tokio::test(start_paused = true)]
async fn a_deleted_pod_is_stopped_confirmed_and_cleaned_up() {
    let h = harness();
    let p = app("Always");
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    w.sync(&p).await.unwrap();
    let logs = log_dir(&h.ctx.log_root, &p);
    std::fs::create_dir_all(logs.join("app")).unwrap();

    let mut deleting = p.clone();
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(h.rt.now()),
    );
    deleting.metadata.deletion_grace_period_seconds = Some(30);
    assert_eq!(w.sync(&deleting).await, Ok(Outcome::Done));
    let calls = h.rt.calls();
    let id = calls
        .iter()
        .position(|c| c.starts_with("stop_container"))
        .unwrap();
    let sb = calls
        .iter()
        .position(|c| c.starts_with("stop_sandbox"))
        .unwrap();
    let rm = calls
        .iter()
        .position(|c| c.starts_with("remove_sandbox"))
        .unwrap();
    assert!(
        id < sb && sb < rm,
        "containers, then the sandbox, then removal: {calls:?}"
    );
    assert_eq!(*h.api.deletions.lock().unwrap(), ["p/u1"]);
    assert!(h.rt.list_sandboxes().await.unwrap().is_empty());
    assert!(h.rt.list_containers().await.unwrap().is_empty());
    assert!(!logs.exists(), "the pod's log directory is removed");
    drop(h.dir);
}

/// The loop itself: woken by pod versions, by pokes and by its own back-off timer; it ends
/// when the pod is gone, having removed everything.
#[tokio::test(start_paused = true)]
async fn the_worker_loop_sleeps_through_back_offs_and_ends_when_the_pod_is_gone() {
    let h = harness();
    let (tx, rx) = watch::channel(Some(Arc::new(app("Always"))));
    let poke = Arc::new(Notify::new());
    let worker = tokio::spawn(PodWorker::new(h.ctx.clone(), "u1".into()).run(rx, poke.clone()));
    let restarts = |s: &PodStatus| {
        s.container_statuses
            .iter()
            .flatten()
            .next()
            .map_or(-1, |c| c.restart_count)
    };
    h.api.until(|s| s.phase.as_deref() == Some("Running")).await;

    // Two crashes: the second waits out a 10 s back-off on the (paused) clock.
    let t0 = tokio::time::Instant::now();
    for n in 1..=2 {
        h.rt.exit(&h.rt.container_named("app").unwrap(), 1, false);
        poke.notify_one();
        h.api
            .until(|s| restarts(s) == n && waiting_reason(container(s, "app")).is_none())
            .await;
    }
    let waited = t0.elapsed();
    assert!(
        (Duration::from_secs(10)..Duration::from_secs(11)).contains(&waited),
        "slept the back-off, {waited:?}"
    );
    assert!(
        h.api.statuses.lock().unwrap().iter().any(|s| {
            waiting_reason(container(s, "app")).as_deref() == Some("CrashLoopBackOff")
        }),
        "CrashLoopBackOff was reported while it waited"
    );

    // Deleted from the API (a forced delete): stopped, removed, and the worker ends.
    tx.send(None).unwrap();
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker ends")
        .unwrap();
    assert!(h.rt.list_sandboxes().await.unwrap().is_empty());
    assert!(h.rt.list_containers().await.unwrap().is_empty());
}

/// The echo of the worker's own status write (the resourceVersion that write made, nothing
/// else changed) does not send the worker back to the runtime; any other version does. What
/// it last saw of the runtime is what the PLEG compares with.
#[tokio::test(start_paused = true)]
async fn the_echo_of_its_own_status_write_is_not_synced_again() {
    let h = harness();
    let p = app("Always");
    let (tx, rx) = watch::channel(Some(Arc::new(p.clone())));
    let poke = Arc::new(Notify::new());
    let w = PodWorker::new(h.ctx.clone(), "u1".into());
    let worker_seen = w.seen();
    let worker = tokio::spawn(w.run(rx, poke.clone()));
    h.api.until(|s| s.phase.as_deref() == Some("Running")).await;
    // On the paused clock a sleep returns once every task is idle: the worker is waiting.
    let idle = || tokio::time::sleep(Duration::from_millis(1));
    let looks = || {
        h.rt.calls()
            .iter()
            .filter(|c| c.starts_with("pod_state"))
            .count()
    };
    idle().await;
    let before = looks();
    assert!(before >= 2, "a sync looks before and after acting");

    let mut echo = with_status(p.clone(), h.api.last());
    echo.metadata.resource_version = Some(format!("written-{}", h.api.writes()));
    echo.metadata.managed_fields = Some(Vec::new());
    tx.send(Some(Arc::new(echo.clone()))).unwrap();
    idle().await;
    assert_eq!(looks(), before, "its own write's echo is not synced");

    // The same status under another resourceVersion: someone else wrote; synced.
    let mut other = echo.clone();
    other.metadata.resource_version = Some("someone-else".into());
    tx.send(Some(Arc::new(other.clone()))).unwrap();
    idle().await;
    let after_other = looks();
    assert!(after_other > before, "another writer's version is synced");

    // Its own write's resourceVersion but a label changed meanwhile: synced.
    let mut labelled = echo.clone();
    labelled.metadata.labels = Some(BTreeMap::from([("tier".into(), "web".into())]));
    tx.send(Some(Arc::new(labelled))).unwrap();
    idle().await;
    assert!(looks() > after_other, "a changed pod is synced");

    // What the PLEG would find is what the worker last saw; a crash is news to it.
    let now = observe(&*h.rt, "u1").await.unwrap().fingerprint();
    assert!(worker_seen.is(&now), "the worker saw the runtime as it is");
    let app_id = h.rt.container_named("app").unwrap();
    h.rt.exit(&app_id, 1, false);
    let crashed = observe(&*h.rt, "u1").await.unwrap().fingerprint();
    assert!(!worker_seen.is(&crashed));

    // The runtime's changes still come through pokes, and timers still fire: the crash is
    // restarted.
    poke.notify_one();
    h.api
        .until(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .any(|c| c.restart_count == 1)
        })
        .await;
    tx.send(None).unwrap();
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker ends")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_sandbox_gets_the_pods_resolv_conf() {
    let h = harness();
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    w.sync(&app("Always")).await.unwrap();
    let sandboxes = h.rt.list_sandboxes().await.unwrap();
    let dns = sandboxes[0].config.dns.clone().expect("a resolv.conf");
    assert_eq!(dns.servers, ["10.96.0.10"], "ClusterFirst: cluster DNS");
    assert_eq!(
        dns.searches[..3],
        [
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local"
        ]
    );
    assert_eq!(dns.options, ["ndots:5"]);

    // dnsPolicy None: only what dnsConfig says.
    let h = harness();
    let mut w = PodWorker::new(h.ctx.clone(), "u1".into());
    let p = pod(json!({"dnsPolicy": "None",
        "dnsConfig": {"nameservers": ["192.0.2.53"], "searches": ["corp.example"],
                      "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]},
        "containers": [{"name": "app", "image": "busybox:1"}]}));
    w.sync(&p).await.unwrap();
    let dns = h.rt.list_sandboxes().await.unwrap()[0]
        .config
        .dns
        .clone()
        .unwrap();
    assert_eq!(dns.servers, ["192.0.2.53"]);
    assert_eq!(dns.searches, ["corp.example"]);
    assert_eq!(dns.options, ["ndots:2", "edns0"]);
}

#[path = "worker_events_tests.rs"]
mod events;
