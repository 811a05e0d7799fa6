//! Resource quantities and what a pod asks for (the scheduler's resource accounting).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodAffinityTerm};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// CPU in millicores, memory and ephemeral storage in bytes, and a pod count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_milli: i64,
    pub memory: i64,
    pub pods: i64,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.cpu_milli += o.cpu_milli;
        self.memory += o.memory;
        self.pods += o.pods;
    }
    pub fn sub(&mut self, o: &Resources) {
        self.cpu_milli -= o.cpu_milli;
        self.memory -= o.memory;
        self.pods -= o.pods;
    }
}

pub use capstan_api::quantity::parse;

fn of(map: Option<&BTreeMap<String, Quantity>>, zero_default: bool) -> Resources {
    let get = |k: &str, scale: f64| map.and_then(|m| m.get(k)).and_then(|q| parse(&q.0, scale));
    let cpu = get("cpu", 1000.0);
    let mem = get("memory", 1.0);
    Resources {
        // Kubernetes scores request-less containers as 100m / 200Mi so they still spread.
        cpu_milli: cpu.unwrap_or(if zero_default { 100 } else { 0 }),
        memory: mem.unwrap_or(if zero_default { 200 * 1024 * 1024 } else { 0 }),
        pods: 0,
    }
}

fn container(c: &Container, non_zero: bool) -> Resources {
    of(
        c.resources.as_ref().and_then(|r| r.requests.as_ref()),
        non_zero,
    )
}

/// What a pod requests: the larger of (sum of app containers) and (each init container), plus
/// overhead, and one pod. `non_zero` gives request-less containers the scoring defaults.
pub fn pod_requests(pod: &Pod, non_zero: bool) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources {
            pods: 1,
            ..Default::default()
        };
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container(c, non_zero));
    }
    for c in spec.init_containers.iter().flatten() {
        let r = container(c, false);
        sum.cpu_milli = sum.cpu_milli.max(r.cpu_milli);
        sum.memory = sum.memory.max(r.memory);
    }
    if let Some(o) = spec.overhead.as_ref() {
        sum.add(&of(Some(o), false));
    }
    sum.pods = 1;
    sum
}

/// The host ports a pod's containers ask for: (protocol, port, host IP), "0.0.0.0" for any.
pub fn host_ports(pod: &Pod) -> Vec<(String, i32, String)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let hp = p.host_port.filter(|hp| *hp > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                hp,
                p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
            ))
        })
        .collect()
}

/// A node's allocatable resources (capacity when allocatable is missing).
pub fn allocatable(node: &k8s_openapi::api::core::v1::Node) -> Resources {
    let st = node.status.as_ref();
    let map = st
        .and_then(|s| s.allocatable.as_ref())
        .or_else(|| st.and_then(|s| s.capacity.as_ref()));
    let get = |k: &str, scale: f64| map.and_then(|m| m.get(k)).and_then(|q| parse(&q.0, scale));
    Resources {
        cpu_milli: get("cpu", 1000.0).unwrap_or(0),
        memory: get("memory", 1.0).unwrap_or(0),
        pods: get("pods", 1.0).unwrap_or(0),
    }
}

/// A pod's required (hard) anti-affinity terms.
pub fn anti_affinity_terms(pod: &Pod) -> &[PodAffinityTerm] {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or(&[])
}
