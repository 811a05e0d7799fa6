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
    /// Reports one probe's outcome as kubelet does: a failure as `Unhealthy`, a success with a
    /// warning (a redirect not followed) as `ProbeWarning`. (success, why it failed).
    fn report(&self, probe: &str, outcome: Result<Option<String>, String>) -> (bool, String) {
        match outcome {
            Ok(None) => (true, String::new()),
            Ok(Some(warning)) => {
                self.recorder.pod_event(
                    &self.pod,
                    Some(self.field_path.clone()),
                    EventType::Warning,
                    reason::PROBE_WARNING,
                    format!("{probe} probe warning: {warning}"),
                );
                (true, String::new())
            }
            Err(why) => {
                self.failed(probe, &why);
                (false, why)
            }
        }
    }

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
            let (ok, why) = events.report(
                "Startup",
                check(&*runtime, &s.probe, &target, s.timeout).await,
            );
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
            let (ok, why) = events.report(
                "Liveness",
                check(&*runtime, &l.probe, &target, l.timeout).await,
            );
            if l.record(ok) == Some(false) {
                let msg = format!("Liveness probe failed: {why}");
                update(&|h| h.failed = Some(msg.clone()));
                return;
            }
        }
        if let Some(r) = readiness.as_mut().filter(|t| t.due <= now) {
            let (ok, _) = events.report(
                "Readiness",
                check(&*runtime, &r.probe, &target, r.timeout).await,
            );
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

/// Runs one probe: success (with a warning, for an HTTP redirect not followed), or why it
/// failed.
async fn check<R: Runtime>(
    rt: &R,
    p: &Probe,
    target: &Target,
    timeout: Duration,
) -> Result<Option<String>, String> {
    if let Some(e) = &p.exec {
        let cmd = e.command.clone().unwrap_or_default();
        match rt.exec_sync(&target.container_id, &cmd, timeout).await {
            Ok(r) if r.exit_code == 0 => Ok(None),
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
                    Ok(Ok(_)) => Ok(None),
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
    }
}

/// Redirects an HTTP probe follows (Go's http.Client, which kubelet's prober uses).
const MAX_REDIRECTS: usize = 10;
/// How much of a response body a probe keeps (kubelet's maxRespBodyLength).
const MAX_BODY: usize = 10 * 1024;

/// An HTTP/1.1 GET, as kubelet's prober does it: 200–299 is success; a redirect on the same
/// host is followed (up to 10), one to another host is not, and a 3xx answer is a success
/// with a warning ("Probe terminated redirects"); anything else fails.
async fn http_get(
    h: &k8s_openapi::api::core::v1::HTTPGetAction,
    target: &Target,
    timeout: Duration,
) -> Result<Option<String>, String> {
    if h.scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
    {
        return Err("HTTPS probes are not supported by Capstan's node agent".into());
    }
    let mut port = port_of(&h.port, target)?;
    let host = h.host.clone().unwrap_or_else(|| target.pod_ip.clone());
    let mut path = h
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    let first = format!("http://{host}:{port}{path}");
    let attempt = async {
        for _ in 0..=MAX_REDIRECTS {
            let url = format!("http://{host}:{port}{path}");
            let r = fetch(&host, port, &path, h)
                .await
                .map_err(|e| format!("Get {url:?}: {e}"))?;
            match r.code {
                200..=299 => return Ok(None),
                300..=399 => match r
                    .location
                    .as_deref()
                    .and_then(|l| same_host(l, &host, port))
                {
                    Some((p, next)) => {
                        (port, path) = (p, next);
                        continue;
                    }
                    None => {
                        return Ok(Some(format!(
                            "Probe terminated redirects, Response body: {}",
                            r.body
                        )));
                    }
                },
                code => return Err(format!("HTTP probe failed with statuscode: {code}")),
            }
        }
        Err(format!(
            "Get {first:?}: stopped after {MAX_REDIRECTS} redirects"
        ))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Get {first:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// One HTTP answer, as much as a probe reads of it.
#[derive(Debug, PartialEq)]
struct Answer {
    code: u16,
    location: Option<String>,
    body: String,
}

async fn fetch(
    host: &str,
    port: u16,
    path: &str,
    h: &k8s_openapi::api::core::v1::HTTPGetAction,
) -> Result<Answer, String> {
    let mut s = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for hd in h.http_headers.iter().flatten() {
        req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // The head, then the body up to MAX_BODY (the connection closes after it).
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 || buf.len() > 64 * 1024 {
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    while buf.len() < head_end + 4 + MAX_BODY {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    parse_answer(&buf, head_end).ok_or_else(|| "malformed HTTP response".to_string())
}

fn parse_answer(buf: &[u8], head_end: usize) -> Option<Answer> {
    let head = String::from_utf8_lossy(&buf[..head_end.min(buf.len())]);
    let mut lines = head.split("\r\n");
    let code = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let location = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.trim().to_string());
    let body = buf.get(head_end + 4..).unwrap_or_default();
    let body = String::from_utf8_lossy(&body[..body.len().min(MAX_BODY)]).into_owned();
    Some(Answer {
        code,
        location,
        body,
    })
}

/// Where a redirect to `location` goes when it stays on `host` (kubelet's prober follows only
/// those): (port, path).
fn same_host(location: &str, host: &str, port: u16) -> Option<(u16, String)> {
    if location.starts_with('/') {
        return Some((port, location.to_string()));
    }
    let rest = location.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (name, p) = match authority.rsplit_once(':') {
        Some((n, p)) => (n, p.parse().ok()?),
        None => (authority, 80),
    };
    (name == host).then(|| {
        (
            p,
            if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
        )
    })
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
    if let Err(why) = check(rt, &probe, &target, timeout.max(Duration::from_secs(1))).await {
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

    /// A server answering by path: /ok 200, /same a redirect to /ok, /other one to another
    /// host, /loop to itself, anything else 500.
    async fn redirecting_server() -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = vec![0u8; 2048];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let answer = match path.as_str() {
                    "/ok" => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string(),
                    "/same" => format!("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/ok\r\nContent-Length: 0\r\n\r\n"),
                    "/other" => "HTTP/1.1 302 Found\r\nLocation: http://elsewhere.example/\r\nContent-Length: 5\r\n\r\nmoved".to_string(),
                    "/loop" => "HTTP/1.1 301 Moved\r\nLocation: /loop\r\n\r\n".to_string(),
                    _ => "HTTP/1.1 500 Oops\r\n\r\n".to_string(),
                };
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probes_follow_same_host_redirects_and_warn_on_others() {
        let port = redirecting_server().await;
        let target = Target {
            container_id: "c".into(),
            pod_ip: "127.0.0.1".into(),
            ports: Default::default(),
        };
        let get = |path: &str| {
            let h: k8s_openapi::api::core::v1::HTTPGetAction =
                serde_json::from_value(json!({"path": path, "port": port})).unwrap();
            let target = &target;
            async move { http_get(&h, target, Duration::from_secs(5)).await }
        };
        assert_eq!(get("/ok").await, Ok(None));
        assert_eq!(get("/same").await, Ok(None), "followed to /ok");
        assert_eq!(
            get("/other").await,
            Ok(Some(
                "Probe terminated redirects, Response body: moved".into()
            ))
        );
        assert_eq!(
            get("/nope").await,
            Err("HTTP probe failed with statuscode: 500".into())
        );
        let looped = get("/loop").await.unwrap_err();
        assert!(looped.contains("stopped after 10 redirects"), "{looped}");
    }

    #[test]
    fn redirects_stay_on_the_probed_host() {
        assert_eq!(same_host("/a", "10.0.0.1", 80), Some((80, "/a".into())));
        assert_eq!(
            same_host("http://10.0.0.1:8080/b", "10.0.0.1", 80),
            Some((8080, "/b".into()))
        );
        assert_eq!(same_host("http://10.0.0.2/", "10.0.0.1", 80), None);
        assert_eq!(same_host("https://10.0.0.1/", "10.0.0.1", 80), None);
    }
}
