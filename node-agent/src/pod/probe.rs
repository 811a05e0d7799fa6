//! Probes (kubelet's prober): one task per running container with probes runs its startup,
//! liveness and readiness probes on their own periods and thresholds, records the outcome,
//! and wakes the pod's worker when it changes. Until a startup probe succeeds the other two do
//! not run; a readiness probe keeps the container unready until it succeeds; a liveness or
//! startup probe that fails `failureThreshold` times in a row asks the worker to restart the
//! container.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container as ContainerSpec, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::events::{EventType, Recorder, reason};
use crate::runtime::{Container, ContainerState, Runtime};

/// What the probes say about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub ready: bool,
    pub started: bool,
    /// Set when a liveness or startup probe failed for good: the container must be restarted.
    pub failed: Option<String>,
}

type Shared = Arc<Mutex<HashMap<String, Health>>>;

/// The probes of one pod's containers.
pub struct Prober<R> {
    runtime: Arc<R>,
    poke: Arc<Notify>,
    results: Shared,
    tasks: HashMap<String, tokio::task::JoinHandle<()>>,
    recorder: Recorder,
}

impl<R> std::fmt::Debug for Prober<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("containers", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl<R> Drop for Prober<R> {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

fn spec_of<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerSpec> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == name)
}

impl<R: Runtime> Prober<R> {
    pub fn new(runtime: Arc<R>, poke: Arc<Notify>) -> Self {
        Prober {
            runtime,
            poke,
            results: Arc::default(),
            tasks: HashMap::new(),
            recorder: Recorder::disabled(),
        }
    }

    /// Every failed probe is recorded as kubelet does: a Warning `Unhealthy` Event on the
    /// container ("Readiness probe failed: ...").
    pub fn with_recorder(mut self, recorder: Recorder) -> Self {
        self.recorder = recorder;
        self
    }

    /// Starts probing running app containers that have probes, stops probing the ones that
    /// are no longer running, and returns every running container's health by id.
    pub fn sync(
        &mut self,
        pod: &Pod,
        running: &[&Container],
        pod_ip: &str,
    ) -> HashMap<String, Health> {
        let live: std::collections::HashSet<&str> = running.iter().map(|c| c.id.as_str()).collect();
        self.tasks.retain(|id, t| {
            let keep = live.contains(id.as_str());
            if !keep {
                t.abort();
            }
            keep
        });
        self.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live.contains(id.as_str()));
        let mut out = HashMap::new();
        for c in running {
            let Some(spec) = spec_of(pod, &c.config.name) else {
                // Init containers have no probes.
                out.insert(
                    c.id.clone(),
                    Health {
                        ready: true,
                        started: true,
                        failed: None,
                    },
                );
                continue;
            };
            let probes = Probes {
                startup: spec.startup_probe.clone(),
                liveness: spec.liveness_probe.clone(),
                readiness: spec.readiness_probe.clone(),
            };
            if probes.startup.is_none() && probes.liveness.is_none() && probes.readiness.is_none() {
                out.insert(
                    c.id.clone(),
                    Health {
                        ready: true,
                        started: true,
                        failed: None,
                    },
                );
                continue;
            }
            let health = {
                let mut r = self.results.lock().unwrap_or_else(|p| p.into_inner());
                r.entry(c.id.clone())
                    .or_insert_with(|| Health {
                        ready: probes.readiness.is_none() && probes.startup.is_none(),
                        started: probes.startup.is_none(),
                        failed: None,
                    })
                    .clone()
            };
            out.insert(c.id.clone(), health);
            if !self.tasks.contains_key(&c.id) {
                let target = Target {
                    container_id: c.id.clone(),
                    pod_ip: pod_ip.to_string(),
                    ports: spec
                        .ports
                        .iter()
                        .flatten()
                        .filter_map(|p| Some((p.name.clone()?, p.container_port)))
                        .collect(),
                };
                let started_at = c.started_at.unwrap_or_else(|| self.runtime.now());
                let events = Unhealthy {
                    recorder: self.recorder.clone(),
                    pod: pod.clone(),
                    field_path: crate::events::container_path(pod, &c.config.name),
                };
                let task = tokio::spawn(run(
                    self.runtime.clone(),
                    probes,
                    target,
                    started_at,
                    self.results.clone(),
                    self.poke.clone(),
                    events,
                ));
                self.tasks.insert(c.id.clone(), task);
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
struct Probes {
    startup: Option<Probe>,
    liveness: Option<Probe>,
    readiness: Option<Probe>,
}

#[derive(Debug, Clone)]
struct Target {
    container_id: String,
    pod_ip: String,
    ports: HashMap<String, i32>,
}

/// Kubernetes' defaults: period 10 s, timeout 1 s, failureThreshold 3, successThreshold 1.
fn timing(p: &Probe) -> (Duration, Duration, Duration, u32, u32) {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    (
        secs(p.initial_delay_seconds, 0),
        secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        p.failure_threshold.unwrap_or(3).max(1) as u32,
        p.success_threshold.unwrap_or(1).max(1) as u32,
    )
}

struct Tracker {
    probe: Probe,
    due: tokio::time::Instant,
    period: Duration,
    timeout: Duration,
    failure_threshold: u32,
    success_threshold: u32,
    successes: u32,
    failures: u32,
}

impl Tracker {
    fn new(probe: Probe, started: tokio::time::Instant) -> Self {
        let (delay, period, timeout, failure_threshold, success_threshold) = timing(&probe);
        Tracker {
            probe,
            // A container adopted long after its start is probed from now on, not once per
            // period it has been running.
            due: (started + delay).max(tokio::time::Instant::now()),
            period,
            timeout,
            failure_threshold,
            success_threshold,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one result: Some(true) when the success threshold was just reached, Some(false)
    /// when the failure threshold was, None otherwise.
    fn record(&mut self, ok: bool) -> Option<bool> {
        self.due += self.period;
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= self.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= self.failure_threshold).then_some(false)
        }
    }
}

/// Where a container's failed probes are reported.
struct Unhealthy {
    recorder: Recorder,
    pod: Pod,
    field_path: String,
}

impl Unhealthy {
    fn failed(&self, probe: &str, why: &str) {
        self.recorder.pod_event(
            &self.pod,
            Some(self.field_path.clone()),
            EventType::Warning,
            reason::UNHEALTHY,
            format!("{probe} probe failed: {why}"),
        );
    }
}

async fn run<R: Runtime>(
    runtime: Arc<R>,
    probes: Probes,
    target: Target,
    started_at: jiff::Timestamp,
    results: Shared,
    poke: Arc<Notify>,
    events: Unhealthy,
) {
    // Delays count from the container's start (which may be before the agent restarted).
    let since_start = runtime.now().duration_since(started_at).unsigned_abs();
    let t0 = tokio::time::Instant::now()
        .checked_sub(since_start)
        .unwrap_or_else(tokio::time::Instant::now);
    let mut startup = probes.startup.map(|p| Tracker::new(p, t0));
    let mut liveness = probes.liveness.map(|p| Tracker::new(p, t0));
    let mut readiness = probes.readiness.map(|p| Tracker::new(p, t0));
    let update = |f: &dyn Fn(&mut Health)| {
        let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = r.get_mut(&target.container_id) {
            let before = h.clone();
            f(h);
            if *h != before {
                poke.notify_one();
            }
        }
    };
    loop {
        let phase_startup = startup.is_some();
        let trackers: Vec<&mut Tracker> = if phase_startup {
            startup.iter_mut().collect()
        } else {
            liveness.iter_mut().chain(readiness.iter_mut()).collect()
        };
        let Some(next) = trackers.iter().map(|t| t.due).min() else {
            return; // only a startup probe, and it succeeded
        };
        tokio::time::sleep_until(next).await;
        let now = tokio::time::Instant::now();
        if let Some(s) = startup.as_mut().filter(|t| t.due <= now) {
            let (ok, why) = check(&*runtime, &s.probe, &target, s.timeout).await;
            if !ok {
                events.failed("Startup", &why);
            }
            match s.record(ok) {
                Some(true) => {
                    startup = None;
                    // Liveness and readiness start after the startup probe succeeded.
                    let now = tokio::time::Instant::now();
                    for t in liveness.iter_mut().chain(readiness.iter_mut()) {
                        t.due = t.due.max(now);
                    }
                    let ready_without_probe = readiness.is_none();
                    update(&|h| {
                        h.started = true;
                        if ready_without_probe {
                            h.ready = true;
                        }
                    });
                }
                Some(false) => {
                    let msg = format!("Startup probe failed: {why}");
                    update(&|h| h.failed = Some(msg.clone()));
                    return;
                }
                None => {}
            }
            continue;
        }
        if let Some(l) = liveness.as_mut().filter(|t| t.due <= now) {
            let (ok, why) = check(&*runtime, &l.probe, &target, l.timeout).await;
            if !ok {
                events.failed("Liveness", &why);
            }
            if l.record(ok) == Some(false) {
                let msg = format!("Liveness probe failed: {why}");
                update(&|h| h.failed = Some(msg.clone()));
                return;
            }
        }
        if let Some(r) = readiness.as_mut().filter(|t| t.due <= now) {
            let (ok, why) = check(&*runtime, &r.probe, &target, r.timeout).await;
            if !ok {
                events.failed("Readiness", &why);
            }
            if let Some(v) = r.record(ok) {
                update(&|h| h.ready = v);
            }
        }
    }
}

fn port_of(p: &IntOrString, target: &Target) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(s) => match s.parse::<u16>() {
            Ok(n) => Ok(n),
            Err(_) => target
                .ports
                .get(s)
                .and_then(|n| u16::try_from(*n).ok())
                .ok_or_else(|| format!("no container port named {s:?}")),
        },
    }
}

/// Runs one probe: (success, why it failed).
async fn check<R: Runtime>(
    rt: &R,
    p: &Probe,
    target: &Target,
    timeout: Duration,
) -> (bool, String) {
    let r = if let Some(e) = &p.exec {
        let cmd = e.command.clone().unwrap_or_default();
        match rt.exec_sync(&target.container_id, &cmd, timeout).await {
            Ok(r) if r.exit_code == 0 => Ok(()),
            Ok(r) => Err(format!(
                "command {cmd:?} exited with {}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout).trim()
            )),
            Err(e) => Err(e.to_string()),
        }
    } else if let Some(h) = &p.http_get {
        http_get(h, target, timeout).await
    } else if let Some(t) = &p.tcp_socket {
        match port_of(&t.port, target) {
            Ok(port) => {
                let host = t.host.clone().unwrap_or_else(|| target.pod_ip.clone());
                match tokio::time::timeout(
                    timeout,
                    tokio::net::TcpStream::connect((host.as_str(), port)),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
                    Err(_) => Err(format!(
                        "dial tcp {host}:{port}: timed out after {timeout:?}"
                    )),
                }
            }
            Err(e) => Err(e),
        }
    } else if p.grpc.is_some() {
        Err("grpc probes are not supported by Capstan's node agent".into())
    } else {
        Err("the probe names no handler (exec, httpGet or tcpSocket)".into())
    };
    match r {
        Ok(()) => (true, String::new()),
        Err(why) => (false, why),
    }
}

/// An HTTP/1.1 GET; 200–399 is success (kubelet's rule).
async fn http_get(
    h: &k8s_openapi::api::core::v1::HTTPGetAction,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    if h.scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
    {
        return Err("HTTPS probes are not supported by Capstan's node agent".into());
    }
    let port = port_of(&h.port, target)?;
    let host = h.host.clone().unwrap_or_else(|| target.pod_ip.clone());
    let path = h
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    let url = format!("http://{host}:{port}{path}");
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("Get {url:?}: {e}"))?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for hd in h.http_headers.iter().flatten() {
            req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("Get {url:?}: {e}"))?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("Get {url:?}: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("Get {url:?}: malformed HTTP response"))?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// Runs the container's preStop hook (exec or httpGet), at most `timeout`; a failure is
/// logged, not fatal (kubelet goes on to stop the container either way).
pub async fn pre_stop<R: Runtime>(
    rt: &R,
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
    timeout: Duration,
) {
    let Some(handler) = spec_of(pod, &c.config.name)
        .and_then(|s| s.lifecycle.as_ref())
        .and_then(|l| l.pre_stop.clone())
    else {
        return;
    };
    let probe = Probe {
        exec: handler.exec,
        http_get: handler.http_get,
        tcp_socket: handler.tcp_socket,
        ..Default::default()
    };
    let target = Target {
        container_id: c.id.clone(),
        pod_ip: pod_ip.to_string(),
        ports: spec_of(pod, &c.config.name)
            .into_iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter_map(|p| Some((p.name.clone()?, p.container_port)))
            .collect(),
    };
    let (ok, why) = check(rt, &probe, &target, timeout.max(Duration::from_secs(1))).await;
    if !ok {
        tracing::warn!(container = %c.config.name, %why, "preStop hook failed");
    }
}

/// Whether a container is running (probes only look at those).
pub fn is_running(c: &Container) -> bool {
    c.state == ContainerState::Running
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::{ContainerConfig, SandboxConfig};
    use serde_json::json;

    fn pod(container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [container]}
        }))
        .unwrap()
    }

    async fn running(rt: &FakeRuntime) -> Container {
        let sb = rt.run_sandbox(&SandboxConfig::default()).await.unwrap();
        let cfg = ContainerConfig {
            name: "app".into(),
            ..Default::default()
        };
        let c = rt.create_container(&sb.id, &cfg).await.unwrap();
        rt.start_container(&c.id).await.unwrap();
        rt.list_containers()
            .await
            .unwrap()
            .into_iter()
            .find(|x| x.id == c.id)
            .unwrap()
    }

    /// Lets the probe tasks run until the clock reaches `t` (time is paused: no real waiting).
    async fn at(t: Duration) {
        tokio::time::sleep(t).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_follows_its_thresholds() {
        let rt = Arc::new(FakeRuntime::new());
        let c = running(&rt).await;
        let p = pod(json!({"name": "app", "image": "i", "readinessProbe": {
            "exec": {"command": ["check"]}, "initialDelaySeconds": 5, "periodSeconds": 2,
            "failureThreshold": 2, "successThreshold": 2}}));
        let poke = Arc::new(Notify::new());
        let mut prober = Prober::new(rt.clone(), poke.clone());
        let h = prober.sync(&p, &[&c], "10.0.0.2");
        assert!(!h[&c.id].ready, "unready until the probe succeeds");
        assert!(h[&c.id].started, "no startup probe: started");
        at(Duration::from_secs(5)).await; // first success (delay 5 s)
        assert!(
            !prober.sync(&p, &[&c], "")[&c.id].ready,
            "one success of two"
        );
        at(Duration::from_secs(2)).await; // second success
        assert!(prober.sync(&p, &[&c], "")[&c.id].ready);
        rt.set_exec_exit("app", 1);
        at(Duration::from_secs(2)).await;
        assert!(
            prober.sync(&p, &[&c], "")[&c.id].ready,
            "one failure of two"
        );
        at(Duration::from_secs(2)).await;
        let h = prober.sync(&p, &[&c], "");
        assert!(!h[&c.id].ready, "two failures: unready");
        assert_eq!(
            h[&c.id].failed, None,
            "readiness never restarts a container"
        );
        let execs = rt
            .calls()
            .iter()
            .filter(|c| c.starts_with("exec_sync"))
            .count();
        assert_eq!(execs, 4, "one exec per period after the initial delay");
    }

    #[tokio::test(start_paused = true)]
    async fn startup_gates_liveness_and_a_failing_liveness_asks_for_a_restart() {
        let rt = Arc::new(FakeRuntime::new());
        let c = running(&rt).await;
        let p = pod(json!({"name": "app", "image": "i",
            "startupProbe": {"exec": {"command": ["up"]}, "periodSeconds": 1, "failureThreshold": 30},
            "livenessProbe": {"exec": {"command": ["alive"]}, "periodSeconds": 3, "failureThreshold": 2}}));
        let poke = Arc::new(Notify::new());
        let mut prober = Prober::new(rt.clone(), poke.clone());
        let h = prober.sync(&p, &[&c], "");
        assert!(
            !h[&c.id].started && !h[&c.id].ready,
            "not started before the startup probe"
        );
        at(Duration::from_millis(10)).await;
        let h = prober.sync(&p, &[&c], "");
        assert!(
            h[&c.id].started && h[&c.id].ready,
            "started (and ready: no readiness probe)"
        );
        let calls = rt.calls();
        let first_up = calls.iter().position(|c| c.ends_with(" up"));
        let first_alive = calls.iter().position(|c| c.ends_with(" alive"));
        assert!(
            first_up.is_some() && first_alive.is_none_or(|a| Some(a) > first_up),
            "liveness waits for the startup probe: {calls:?}"
        );
        rt.set_exec_exit("app", 1);
        at(Duration::from_secs(3)).await;
        assert_eq!(
            prober.sync(&p, &[&c], "")[&c.id].failed,
            None,
            "one failure of two"
        );
        at(Duration::from_secs(3)).await;
        let failed = prober.sync(&p, &[&c], "")[&c.id].failed.clone();
        assert!(
            failed
                .as_deref()
                .is_some_and(|m| m.starts_with("Liveness probe failed")),
            "{failed:?}"
        );
        // A container that stops running is no longer probed.
        prober.sync(&p, &[], "");
        let before = rt.calls().len();
        at(Duration::from_secs(30)).await;
        assert_eq!(rt.calls().len(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_startup_probe_that_never_succeeds_fails_the_container() {
        let rt = Arc::new(FakeRuntime::new());
        rt.set_exec_exit("app", 3);
        let c = running(&rt).await;
        let p = pod(json!({"name": "app", "image": "i",
            "startupProbe": {"exec": {"command": ["up"]}, "periodSeconds": 1, "failureThreshold": 3}}));
        let mut prober = Prober::new(rt.clone(), Arc::new(Notify::new()));
        prober.sync(&p, &[&c], "");
        at(Duration::from_millis(2500)).await;
        let h = prober.sync(&p, &[&c], "");
        assert!(
            h[&c.id]
                .failed
                .as_deref()
                .is_some_and(|m| m.starts_with("Startup probe failed")),
            "{h:?}"
        );
        assert!(!h[&c.id].started);
    }
}
