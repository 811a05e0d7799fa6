//! Resource use of the node, its pods and their containers, served as the kubelet's Summary
//! API (`GET /stats/summary`), from which the API server answers metrics.k8s.io (`kubectl
//! top`, the HorizontalPodAutoscaler).
//!
//! Every `interval` (10 s, the kubelet's housekeeping period) the agent reads the runtime's
//! ContainerStats (CRI ListContainerStats on containerd, the cgroup files on the process
//! runtime) and the node's /proc/stat and /proc/meminfo. CPU rates (`usageNanoCores`) are
//! worked out here from two cumulative readings: containerd's own rate is computed between
//! calls of any client and reads 0 when two clients poll. A container seen once has no rate
//! yet, and is left out of its pod until it has one; the summary is serialized once per
//! sample, so serving it costs a copy.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::runtime::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID, Runtime, SandboxState};

/// The kubelet's housekeeping period, the default sampling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The newest summary, serialized (empty until the first sample).
#[derive(Debug, Clone, Default)]
pub struct Latest(Arc<RwLock<Bytes>>);

impl Latest {
    pub fn get(&self) -> Bytes {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, b: Bytes) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = b;
    }
}

/// A cumulative CPU reading: nanoseconds of CPU time at an instant.
#[derive(Debug, Clone, Copy)]
struct Reading {
    cpu_ns: u64,
    at: Instant,
}

impl Reading {
    /// The rate since `before` in nanocores (CPU ns per second); None when the counter went
    /// back (a restarted container under the same id) or no time passed.
    fn rate_since(&self, before: &Reading) -> Option<u64> {
        let dt = self.at.checked_duration_since(before.at)?.as_nanos();
        let used = self.cpu_ns.checked_sub(before.cpu_ns)? as u128;
        (dt > 0).then(|| (used * 1_000_000_000 / dt) as u64)
    }
}

/// The node's CPU time from /proc/stat's first line: every state but idle and iowait, in ns.
fn node_cpu_ns(proc_stat: &str) -> Option<u64> {
    let fields: Vec<u64> = proc_stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some(busy.saturating_mul(1_000_000_000 / hz))
}

/// A /proc/meminfo field in bytes (`MemTotal:  16318548 kB`).
pub(crate) fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The node's memory working set: what is in use less what the kernel could reclaim at once
/// (MemTotal − MemAvailable).
fn node_working_set(meminfo: &str) -> Option<u64> {
    Some(
        meminfo_bytes(meminfo, "MemTotal")?.saturating_sub(meminfo_bytes(meminfo, "MemAvailable")?),
    )
}

/// Takes samples and keeps the readings rates are computed from.
#[derive(Debug, Default)]
pub struct Sampler {
    node_name: String,
    node: Option<Reading>,
    containers: HashMap<String, Reading>,
}

/// One container's use, ready for the summary.
struct Usage {
    name: String,
    nano_cores: u64,
    cpu_ns: u64,
    working_set: u64,
}

impl Sampler {
    pub fn new(node_name: &str) -> Self {
        Sampler {
            node_name: node_name.to_string(),
            ..Default::default()
        }
    }

    /// Reads the runtime and the node and returns the summary (kubelet's `Summary` JSON).
    pub async fn sample<R: Runtime>(
        &mut self,
        runtime: &R,
        window: Duration,
    ) -> Result<Value, crate::runtime::RuntimeError> {
        let sandboxes = runtime.list_sandboxes().await?;
        let containers = runtime.list_containers().await?;
        let stats = runtime.container_stats().await?;
        let (at, now) = (Instant::now(), runtime.now());
        let time = now.to_string();
        let node_reading = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| node_cpu_ns(&s))
            .map(|cpu_ns| Reading { cpu_ns, at });
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        self.sample_from(
            &sandboxes,
            &containers,
            &stats,
            node_reading,
            node_working_set(&meminfo),
            at,
            &time,
            window,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn sample_from(
        &mut self,
        sandboxes: &[crate::runtime::Sandbox],
        containers: &[crate::runtime::Container],
        stats: &[crate::runtime::ContainerStats],
        node_reading: Option<Reading>,
        node_memory: Option<u64>,
        at: Instant,
        time: &str,
        window: Duration,
    ) -> Result<Value, crate::runtime::RuntimeError> {
        let ready: HashMap<&str, &crate::runtime::Sandbox> = sandboxes
            .iter()
            .filter(|s| s.state == SandboxState::Ready && s.config.labels.contains_key(POD_UID))
            .map(|s| (s.id.as_str(), s))
            .collect();
        let by_id: HashMap<&str, &crate::runtime::Container> =
            containers.iter().map(|c| (c.id.as_str(), c)).collect();
        let mut readings = HashMap::with_capacity(stats.len());
        let mut pods: HashMap<&str, Vec<Usage>> = HashMap::new();
        for s in stats {
            let Some(c) = by_id.get(s.id.as_str()) else {
                continue;
            };
            let Some(sb) = ready.get(c.sandbox_id.as_str()) else {
                continue;
            };
            let Some(cpu_ns) = s.cpu_usage_ns else {
                continue;
            };
            let now = Reading { cpu_ns, at };
            let rate = self
                .containers
                .get(&s.id)
                .and_then(|before| now.rate_since(before));
            readings.insert(s.id.clone(), now);
            let Some(nano_cores) = rate else { continue };
            let name = c
                .config
                .labels
                .get(CONTAINER_NAME)
                .cloned()
                .unwrap_or_else(|| c.config.name.clone());
            pods.entry(sb.id.as_str()).or_default().push(Usage {
                name,
                nano_cores,
                cpu_ns,
                working_set: s.memory_working_set_bytes.unwrap_or(0),
            });
        }
        self.containers = readings;
        let window_seconds = window.as_secs_f64();
        let cpu = |nano_cores: u64, cpu_ns: u64| {
            json!({"time": time, "usageNanoCores": nano_cores, "usageCoreNanoSeconds": cpu_ns,
                   "windowSeconds": window_seconds})
        };
        let memory = |ws: u64| json!({"time": time, "workingSetBytes": ws});
        let mut pod_items: Vec<Value> = pods
            .into_iter()
            .filter_map(|(sandbox, mut usage)| {
                let sb = ready.get(sandbox)?;
                usage.sort_by(|a, b| a.name.cmp(&b.name));
                let label = |k: &str| sb.config.labels.get(k).cloned().unwrap_or_default();
                let (cores, ns, ws) = usage.iter().fold((0, 0, 0), |(c, n, w), u| {
                    (c + u.nano_cores, n + u.cpu_ns, w + u.working_set)
                });
                Some(json!({
                    "podRef": {"name": label(POD_NAME), "namespace": label(POD_NAMESPACE),
                               "uid": label(POD_UID)},
                    "startTime": sb.created_at.to_string(),
                    "containers": usage.iter().map(|u| json!({
                        "name": u.name,
                        "cpu": cpu(u.nano_cores, u.cpu_ns),
                        "memory": memory(u.working_set),
                    })).collect::<Vec<_>>(),
                    "cpu": cpu(cores, ns),
                    "memory": memory(ws),
                }))
            })
            .collect();
        pod_items.sort_by(|a, b| {
            let key = |v: &Value| {
                (
                    v["podRef"]["namespace"].as_str().unwrap_or("").to_string(),
                    v["podRef"]["name"].as_str().unwrap_or("").to_string(),
                )
            };
            key(a).cmp(&key(b))
        });
        let mut node = json!({"nodeName": self.node_name});
        if let Some(now) = node_reading {
            if let Some(rate) = self.node.and_then(|before| now.rate_since(&before)) {
                node["cpu"] = cpu(rate, now.cpu_ns);
            }
            self.node = Some(now);
        }
        if let Some(ws) = node_memory {
            node["memory"] = memory(ws);
        }
        Ok(json!({"node": node, "pods": pod_items}))
    }
}

/// Samples every `interval` into `latest`, until dropped.
pub async fn run<R: Runtime>(
    runtime: Arc<R>,
    node_name: String,
    interval: Duration,
    latest: Latest,
) {
    let mut sampler = Sampler::new(&node_name);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sampler.sample(&*runtime, interval).await {
            Ok(summary) => latest.set(Bytes::from(summary.to_string())),
            Err(e) => tracing::warn!(error = %e, "reading resource usage failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{
        Container, ContainerConfig, ContainerState, ContainerStats, Sandbox, SandboxConfig,
    };

    #[test]
    fn node_cpu_counts_every_state_but_idle_and_iowait() {
        let stat = "cpu  100 20 30 5000 70 1 2 3 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let hz = rustix::param::clock_ticks_per_second();
        assert_eq!(node_cpu_ns(stat), Some(156 * (1_000_000_000 / hz)));
        assert_eq!(node_cpu_ns("intr 1 2\n"), None);
        assert_eq!(node_cpu_ns("cpu  1 x 3\n"), None);
        assert_eq!(node_cpu_ns(""), None);
    }

    #[test]
    fn node_memory_is_total_less_available() {
        let m = "MemTotal:       16000 kB\nMemFree:  100 kB\nMemAvailable:    6000 kB\n";
        assert_eq!(meminfo_bytes(m, "MemTotal"), Some(16000 * 1024));
        assert_eq!(meminfo_bytes(m, "Mem"), None, "a whole key, not a prefix");
        assert_eq!(node_working_set(m), Some(10000 * 1024));
        assert_eq!(node_working_set("MemTotal: 5 kB\n"), None);
    }

    fn pod(uid: &str, sandbox: &str) -> Sandbox {
        let labels = [(POD_UID, uid), (POD_NAME, "web"), (POD_NAMESPACE, "ns")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Sandbox {
            id: sandbox.into(),
            config: SandboxConfig {
                labels,
                ..Default::default()
            },
            state: SandboxState::Ready,
            created_at: jiff::Timestamp::UNIX_EPOCH,
            ip: None,
        }
    }

    fn container(id: &str, sandbox: &str, name: &str) -> Container {
        Container {
            id: id.into(),
            sandbox_id: sandbox.into(),
            config: ContainerConfig {
                name: name.into(),
                labels: [(CONTAINER_NAME.to_string(), name.to_string())].into(),
                ..Default::default()
            },
            state: ContainerState::Running,
            created_at: jiff::Timestamp::UNIX_EPOCH,
            started_at: None,
            finished_at: None,
            exit_code: None,
            reason: None,
            message: None,
            image_ref: String::new(),
        }
    }

    fn stats(id: &str, cpu_ns: u64, ws: u64) -> ContainerStats {
        ContainerStats {
            id: id.into(),
            cpu_usage_ns: Some(cpu_ns),
            memory_working_set_bytes: Some(ws),
        }
    }

    #[test]
    fn rates_come_from_two_readings_and_pods_sum_their_containers() {
        let mut s = Sampler::new("n1");
        let sandboxes = [pod("u1", "sb1")];
        let containers = [
            container("c1", "sb1", "app"),
            container("c2", "sb1", "side"),
        ];
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let node0 = Reading {
            cpu_ns: 1_000,
            at: t0,
        };
        let first = s
            .sample_from(
                &sandboxes,
                &containers,
                &[stats("c1", 1_000, 10), stats("c2", 0, 5)],
                Some(node0),
                Some(77),
                t0,
                "t0",
                w,
            )
            .unwrap();
        assert_eq!(first["pods"], json!([]), "no rate from one reading");
        assert_eq!(first["node"]["memory"]["workingSetBytes"], 77);
        assert!(first["node"].get("cpu").is_none());

        let t1 = t0 + Duration::from_secs(2);
        let node1 = Reading {
            cpu_ns: 2_000_001_000,
            at: t1,
        };
        // c1 used 1 s of CPU in 2 s (500m); c2 0.2 s (100m); an unknown container is skipped.
        let second = s
            .sample_from(
                &sandboxes,
                &containers,
                &[
                    stats("c1", 1_000_001_000, 100),
                    stats("c2", 200_000_000, 50),
                    stats("ghost", 9, 9),
                ],
                Some(node1),
                Some(88),
                t1,
                "t1",
                w,
            )
            .unwrap();
        assert_eq!(second["node"]["cpu"]["usageNanoCores"], 1_000_000_000);
        let p = &second["pods"][0];
        assert_eq!(
            p["podRef"],
            json!({"name": "web", "namespace": "ns", "uid": "u1"})
        );
        assert_eq!(p["containers"][0]["name"], "app");
        assert_eq!(p["containers"][0]["cpu"]["usageNanoCores"], 500_000_000);
        assert_eq!(p["containers"][1]["cpu"]["usageNanoCores"], 100_000_000);
        assert_eq!(p["cpu"]["usageNanoCores"], 600_000_000);
        assert_eq!(p["memory"]["workingSetBytes"], 150);
        assert_eq!(p["cpu"]["windowSeconds"], 10.0);

        // A counter that went back (the container restarted under the same id) gives no rate.
        let t2 = t1 + Duration::from_secs(2);
        let third = s
            .sample_from(
                &sandboxes,
                &containers,
                &[stats("c1", 5, 1), stats("c2", 400_000_000, 50)],
                None,
                None,
                t2,
                "t2",
                w,
            )
            .unwrap();
        let p = &third["pods"][0];
        assert_eq!(p["containers"].as_array().unwrap().len(), 1);
        assert_eq!(p["containers"][0]["name"], "side");
        assert_eq!(p["cpu"]["usageNanoCores"], 100_000_000);
    }

    #[test]
    fn containers_of_stopped_sandboxes_are_left_out() {
        let mut s = Sampler::new("n1");
        let mut sb = pod("u1", "sb1");
        sb.state = SandboxState::NotReady;
        let containers = [container("c1", "sb1", "app")];
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        for dt in [0, 1] {
            let at = t0 + Duration::from_secs(dt);
            let out = s
                .sample_from(
                    std::slice::from_ref(&sb),
                    &containers,
                    &[stats("c1", dt * 1000, 1)],
                    None,
                    None,
                    at,
                    "t",
                    w,
                )
                .unwrap();
            assert_eq!(out["pods"], json!([]));
        }
    }
}
