//! From a container's requests and limits to the Linux resources CRI applies (kubelet's
//! conversions), and the pod's cgroup under `/kubepods` by QoS class.

use capstan_api::quantity::parse;
use k8s_openapi::api::core::v1::{Container, Pod};

use super::status::qos_class;
use crate::runtime::Resources;

/// CFS period (100 ms) and the smallest quota the kernel accepts (1 ms).
const CPU_PERIOD: i64 = 100_000;
const MIN_QUOTA: i64 = 1_000;
/// cpu.shares bounds.
const MIN_SHARES: i64 = 2;
const SHARES_PER_CPU: i64 = 1024;

fn quantity(c: &Container, which: &str, resource: &str, scale: f64) -> Option<i64> {
    let r = c.resources.as_ref()?;
    let map = if which == "limits" {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    }?;
    parse(&map.get(resource)?.0, scale)
}

/// The container's cgroup settings. A request missing where a limit is set is the limit (the
/// API's defaulting); `memory_capacity` (bytes) scales a Burstable container's oom_score_adj.
pub fn container_resources(pod: &Pod, c: &Container, memory_capacity: i64) -> Resources {
    let cpu_limit = quantity(c, "limits", "cpu", 1000.0);
    let cpu_request = quantity(c, "requests", "cpu", 1000.0).or(cpu_limit);
    let mem_limit = quantity(c, "limits", "memory", 1.0);
    let mem_request = quantity(c, "requests", "memory", 1.0).or(mem_limit);
    let cpu_shares = match cpu_request {
        Some(m) => (m * SHARES_PER_CPU / 1000).max(MIN_SHARES),
        None => MIN_SHARES,
    };
    let (cpu_quota, cpu_period) = match cpu_limit {
        Some(m) if m > 0 => ((m * CPU_PERIOD / 1000).max(MIN_QUOTA), CPU_PERIOD),
        _ => (0, 0),
    };
    let oom_score_adj = match qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let req = mem_request.unwrap_or(0);
            let adj = if memory_capacity > 0 {
                1000 - 1000 * req / memory_capacity
            } else {
                999
            };
            adj.clamp(2, 999)
        }
    };
    Resources {
        cpu_shares,
        cpu_quota,
        cpu_period,
        memory_limit_in_bytes: mem_limit.unwrap_or(0),
        oom_score_adj,
    }
}

/// The pod's cgroup (cgroupfs layout): `/kubepods/pod<uid>` for Guaranteed pods,
/// `/kubepods/burstable/pod<uid>` and `/kubepods/besteffort/pod<uid>` for the others.
pub fn cgroup_parent(pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    match qos_class(pod) {
        "Guaranteed" => format!("/kubepods/pod{uid}"),
        "Burstable" => format!("/kubepods/burstable/pod{uid}"),
        _ => format!("/kubepods/besteffort/pod{uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(resources: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": resources}]}
        }))
        .unwrap()
    }

    #[test]
    fn requests_and_limits_become_shares_quota_memory_and_oom_scores() {
        let p = pod(json!({"limits": {"cpu": "500m", "memory": "64Mi"}}));
        let r = container_resources(&p, &p.spec.as_ref().unwrap().containers[0], 1 << 30);
        assert_eq!(
            r,
            Resources {
                cpu_shares: 512,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: -997,
            }
        );
        assert_eq!(cgroup_parent(&p), "/kubepods/podu1");

        let p = pod(json!({"requests": {"cpu": "1m", "memory": "256Mi"}}));
        let r = container_resources(&p, &p.spec.as_ref().unwrap().containers[0], 1 << 30);
        assert_eq!(
            (r.cpu_shares, r.cpu_quota, r.memory_limit_in_bytes),
            (2, 0, 0)
        );
        assert_eq!(r.oom_score_adj, 750, "a quarter of the memory requested");
        assert_eq!(cgroup_parent(&p), "/kubepods/burstable/podu1");

        let p = pod(json!({}));
        let r = container_resources(&p, &p.spec.as_ref().unwrap().containers[0], 1 << 30);
        assert_eq!((r.cpu_shares, r.oom_score_adj), (2, 1000));
        assert_eq!(cgroup_parent(&p), "/kubepods/besteffort/podu1");
    }
}
