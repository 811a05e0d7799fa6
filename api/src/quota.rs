//! What an object uses of a namespace's ResourceQuota (kubernetes/pkg/quota/v1/evaluator/core
//! and the generic object-count evaluator), shared by the API server's ResourceQuota admission
//! and the resource-quota controller. Amounts are in milli-units (`1` pod is 1000), so cpu
//! "100m" and memory "1Gi" share one type.
//!
//! - Every object counts as `count/RESOURCE` (`count/deployments.apps` for a group).
//! - Pods that are not finished count as `pods`, and their requests and limits as
//!   `requests.cpu` (also plain `cpu`), `requests.memory` (`memory`),
//!   `requests.ephemeral-storage`, `limits.cpu`, `limits.memory`, `limits.ephemeral-storage`:
//!   app containers summed, each init container alone, whichever is larger, plus overhead.
//! - Services count as `services`, `services.nodeports` (ports with a node port) and
//!   `services.loadbalancers`; ConfigMaps, Secrets, ResourceQuotas, ReplicationControllers
//!   and PersistentVolumeClaims (with `requests.storage`) by their legacy names; claims also
//!   per class (`CLASS.storageclass.storage.k8s.io/requests.storage` and
//!   `.../persistentvolumeclaims`).
//! - Quota scopes (Terminating, NotTerminating, BestEffort, NotBestEffort, PriorityClass,
//!   CrossNamespacePodAffinity) select pods only.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::quantity;

/// What follows a class's name in its per-class claim resources
/// (`CLASS.storageclass.storage.k8s.io/requests.storage`, `.../persistentvolumeclaims`).
pub const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

/// Resource name → amount in milli-units.
pub type Usage = BTreeMap<String, i64>;

const COMPUTE: &[(&str, &str)] = &[
    ("cpu", "cpu"),
    ("memory", "memory"),
    ("ephemeral-storage", "ephemeral-storage"),
];

/// The resource names a pod's quota can constrain that each container must then state
/// (`validationSet`).
const MUST_SPECIFY: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

fn milli(q: &Value) -> Option<i64> {
    match q {
        Value::String(s) => quantity::parse(s, 1000.0),
        Value::Number(n) => n.as_f64().map(|f| (f * 1000.0).ceil() as i64),
        _ => None,
    }
}

/// A resource list (`{"cpu": "100m"}`) as amounts; unparseable values are left out.
pub fn parse_list(list: &Value) -> Usage {
    list.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), milli(v)?)))
        .collect()
}

/// An amount as Kubernetes prints a quantity: `500m`, `3`, `2k`; memory and storage in
/// binary units when they divide evenly (`256Mi`).
pub fn format(resource: &str, amount: i64) -> String {
    if amount % 1000 != 0 {
        return format!("{amount}m");
    }
    let v = amount / 1000;
    if v == 0 {
        return "0".into();
    }
    let binary = resource.contains("memory") || resource.contains("storage");
    if binary {
        for (suffix, unit) in [
            ("Ei", 1i64 << 60),
            ("Pi", 1 << 50),
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if v % unit == 0 {
                return format!("{}{suffix}", v / unit);
            }
        }
        return v.to_string();
    }
    for (suffix, unit) in [
        ("E", 1_000_000_000_000_000_000i64),
        ("P", 1_000_000_000_000_000),
        ("T", 1_000_000_000_000),
        ("G", 1_000_000_000),
        ("M", 1_000_000),
        ("k", 1_000),
    ] {
        if v % unit == 0 {
            return format!("{}{suffix}", v / unit);
        }
    }
    v.to_string()
}

/// Whether a pod still counts: not Succeeded or Failed, and not past the end of its
/// deletion grace period at `now` (RFC 3339).
pub fn pod_counts(pod: &Value, now: jiff::Timestamp) -> bool {
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    if matches!(phase, "Succeeded" | "Failed") {
        return false;
    }
    let deleted = pod["metadata"]["deletionTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    match deleted {
        Some(at) => {
            let grace = pod["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0);
            now < at + jiff::SignedDuration::from_secs(grace)
        }
        None => true,
    }
}

fn container_amounts(containers: &Value, kind: &str) -> Vec<Usage> {
    containers
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| parse_list(&c["resources"][kind]))
        .collect()
}

/// A pod's requests or limits (`kind`): app containers summed, each init container alone,
/// the larger of the two per resource, plus overhead (`PodRequests` / `PodLimits`).
fn pod_amounts(spec: &Value, kind: &str) -> Usage {
    let mut sum = Usage::new();
    for c in container_amounts(&spec["containers"], kind) {
        for (k, v) in c {
            *sum.entry(k).or_default() += v;
        }
    }
    for c in container_amounts(&spec["initContainers"], kind) {
        for (k, v) in c {
            let e = sum.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    // Overhead adds to every request, and to the limits a pod has (an unlimited resource
    // stays unlimited).
    for (k, v) in parse_list(&spec["overhead"]) {
        if kind == "requests" || sum.contains_key(&k) {
            *sum.entry(k).or_default() += v;
        }
    }
    sum
}

/// What a pod uses.
pub fn pod_usage(pod: &Value) -> Usage {
    let mut u = Usage::new();
    u.insert("pods".into(), 1000);
    u.insert("count/pods".into(), 1000);
    let spec = &pod["spec"];
    let requests = pod_amounts(spec, "requests");
    let limits = pod_amounts(spec, "limits");
    for (name, key) in COMPUTE {
        if let Some(v) = requests.get(*key) {
            u.insert(format!("requests.{name}"), *v);
            u.insert((*name).into(), *v);
        }
        if let Some(v) = limits.get(*key) {
            u.insert(format!("limits.{name}"), *v);
        }
    }
    u
}

/// What an object of `plural` in `group` uses, at `now`.
pub fn usage(group: &str, plural: &str, obj: &Value, now: jiff::Timestamp) -> Usage {
    if group.is_empty() && plural == "pods" {
        if !pod_counts(obj, now) {
            return Usage::new();
        }
        return pod_usage(obj);
    }
    let mut u = Usage::new();
    let count = if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    };
    u.insert(count, 1000);
    if !group.is_empty() {
        return u;
    }
    match plural {
        "services" => {
            u.insert("services".into(), 1000);
            let ty = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
            if matches!(ty, "NodePort" | "LoadBalancer") {
                let ports = obj["spec"]["ports"].as_array().map_or(0, Vec::len) as i64;
                u.insert("services.nodeports".into(), ports * 1000);
            }
            if ty == "LoadBalancer" {
                u.insert("services.loadbalancers".into(), 1000);
            }
        }
        "persistentvolumeclaims" => {
            u.insert("persistentvolumeclaims".into(), 1000);
            let class = obj["spec"]["storageClassName"]
                .as_str()
                .filter(|c| !c.is_empty());
            if let Some(c) = class {
                u.insert(
                    format!("{c}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"),
                    1000,
                );
            }
            if let Some(s) = milli(&obj["spec"]["resources"]["requests"]["storage"]) {
                u.insert("requests.storage".into(), s);
                if let Some(c) = class {
                    u.insert(format!("{c}{STORAGE_CLASS_SUFFIX}requests.storage"), s);
                }
            }
        }
        "configmaps" | "secrets" | "resourcequotas" | "replicationcontrollers" => {
            u.insert(plural.into(), 1000);
        }
        _ => {}
    }
    u
}

/// Whether a quota has scopes (and so limits pods only).
pub fn is_scoped(quota: &Value) -> bool {
    quota["spec"]["scopes"]
        .as_array()
        .is_some_and(|s| !s.is_empty())
        || quota["spec"]["scopeSelector"]["matchExpressions"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
}

/// Whether a quota's scopes select the object (scoped quotas select pods only).
pub fn matches_scopes(quota: &Value, group: &str, plural: &str, obj: &Value) -> bool {
    let scopes: Vec<&str> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let selectors: Vec<&Value> = quota["spec"]["scopeSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if scopes.is_empty() && selectors.is_empty() {
        return true;
    }
    if !(group.is_empty() && plural == "pods") {
        return false;
    }
    let spec = &obj["spec"];
    let terminating = spec["activeDeadlineSeconds"].as_i64().is_some();
    let best_effort = is_best_effort(spec);
    let cross_namespace = cross_namespace_affinity(spec);
    let scope = |s: &str| match s {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => best_effort,
        "NotBestEffort" => !best_effort,
        "CrossNamespacePodAffinity" => cross_namespace,
        _ => false,
    };
    let class = spec["priorityClassName"].as_str().filter(|c| !c.is_empty());
    let selector = |e: &Value| {
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match e["scopeName"].as_str().unwrap_or("") {
            "PriorityClass" => match e["operator"].as_str().unwrap_or("") {
                "In" => class.is_some_and(|c| values.contains(&c)),
                "NotIn" => class.is_none_or(|c| !values.contains(&c)),
                "Exists" => class.is_some(),
                "DoesNotExist" => class.is_none(),
                _ => false,
            },
            other => {
                let holds = scope(other);
                match e["operator"].as_str().unwrap_or("Exists") {
                    "DoesNotExist" => !holds,
                    _ => holds,
                }
            }
        }
    };
    scopes.iter().all(|s| scope(s)) && selectors.iter().all(|e| selector(e))
}

/// No container requests or limits cpu or memory.
/// Whether a pod has a pod (anti-)affinity term reaching other namespaces: one naming
/// `namespaces` or with a `namespaceSelector` (the CrossNamespacePodAffinity scope).
fn cross_namespace_affinity(spec: &Value) -> bool {
    let affinity = &spec["affinity"];
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let a = &affinity[*kind];
        let required = a["requiredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten();
        let preferred = a["preferredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| &w["podAffinityTerm"]);
        required.chain(preferred).any(|t| {
            t["namespaces"].as_array().is_some_and(|n| !n.is_empty())
                || !t["namespaceSelector"].is_null()
        })
    })
}

fn is_best_effort(spec: &Value) -> bool {
    ["containers", "initContainers"].iter().all(|list| {
        spec[*list].as_array().into_iter().flatten().all(|c| {
            ["requests", "limits"].iter().all(|kind| {
                let r = &c["resources"][*kind];
                r["cpu"].is_null() && r["memory"].is_null()
            })
        })
    })
}

/// A pod under a quota constraining cpu or memory must state them in every container
/// (`podEvaluator.Constraints`): `must specify limits.cpu for: a,b; requests.memory for: a`.
pub fn pod_constraints(hard: &Usage, pod: &Value) -> Result<(), String> {
    let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let spec = &pod["spec"];
    for list in ["containers", "initContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or("").to_string();
            for required in MUST_SPECIFY.iter().filter(|r| hard.contains_key(**r)) {
                let (kind, res) = match required.split_once('.') {
                    Some((k, r)) => (k, r),
                    None => ("requests", *required),
                };
                if c["resources"][kind][res].is_null() {
                    missing.entry(required).or_default().push(name.clone());
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .into_iter()
        .map(|(r, mut names)| {
            names.sort();
            names.dedup();
            format!("{r} for: {}", names.join(","))
        })
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// `k=v,k=v` of `usage` restricted to `names` (Kubernetes' prettyPrint of a masked list).
pub fn pretty(usage: &Usage, names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n}={}", format(n, usage.get(n).copied().unwrap_or(0))))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> jiff::Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_pod_uses_its_containers_requests_and_limits() {
        let pod = json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                    "limits": {"cpu": "1"}}},
                {"name": "b", "resources": {"requests": {"cpu": "200m"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "500m"}}}],
            "overhead": {"memory": "1Mi"}}});
        let u = usage("", "pods", &pod, now());
        assert_eq!(u["pods"], 1000);
        assert_eq!(u["requests.cpu"], 500, "the init container is larger");
        assert_eq!(u["cpu"], 500);
        assert_eq!(u["requests.memory"], 65 * 1024 * 1024 * 1000);
        assert_eq!(u["limits.cpu"], 1000);
        assert!(!u.contains_key("limits.memory"));
        assert_eq!(format("requests.memory", u["requests.memory"]), "65Mi");
        assert_eq!(format("requests.cpu", 500), "500m");
        assert_eq!(format("pods", 3000), "3");
        assert_eq!(format("count/secrets", 2_000_000), "2k");
    }

    #[test]
    fn finished_and_departed_pods_use_nothing() {
        let done = json!({"status": {"phase": "Succeeded"}});
        assert!(usage("", "pods", &done, now()).is_empty());
        let leaving = json!({"metadata": {"deletionTimestamp": "2025-12-31T23:59:50Z",
            "deletionGracePeriodSeconds": 30}});
        assert!(
            !usage("", "pods", &leaving, now()).is_empty(),
            "still in its grace period"
        );
        let gone = json!({"metadata": {"deletionTimestamp": "2025-12-31T23:59:00Z",
            "deletionGracePeriodSeconds": 30}});
        assert!(usage("", "pods", &gone, now()).is_empty());
    }

    #[test]
    fn other_objects_count_by_name() {
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 1}, {"port": 2}]}});
        let u = usage("", "services", &svc, now());
        assert_eq!(
            u,
            Usage::from([
                ("count/services".into(), 1000),
                ("services".into(), 1000),
                ("services.nodeports".into(), 2000)
            ])
        );
        let d = usage("apps", "deployments", &json!({}), now());
        assert_eq!(d, Usage::from([("count/deployments.apps".into(), 1000)]));
        let claim = json!({"spec": {"storageClassName": "fast",
            "resources": {"requests": {"storage": "1Gi"}}}});
        let u = usage("", "persistentvolumeclaims", &claim, now());
        let gib = 1000 * (1 << 30);
        assert_eq!(
            u,
            Usage::from([
                ("count/persistentvolumeclaims".into(), 1000),
                ("persistentvolumeclaims".into(), 1000),
                ("requests.storage".into(), gib),
                (
                    "fast.storageclass.storage.k8s.io/persistentvolumeclaims".into(),
                    1000
                ),
                (
                    "fast.storageclass.storage.k8s.io/requests.storage".into(),
                    gib
                ),
            ])
        );
        assert_eq!(format("requests.storage", gib), "1Gi");
    }

    #[test]
    fn scopes_select_pods_by_deadline_qos_and_priority_class() {
        let q =
            |scopes: Value, sel: Value| json!({"spec": {"scopes": scopes, "scopeSelector": sel}});
        let best = json!({"spec": {"containers": [{"name": "a"}]}});
        let burst = json!({"spec": {"activeDeadlineSeconds": 5, "priorityClassName": "high",
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}});
        let be = q(json!(["BestEffort"]), json!(null));
        assert!(matches_scopes(&be, "", "pods", &best));
        assert!(!matches_scopes(&be, "", "pods", &burst));
        assert!(!matches_scopes(&be, "", "services", &json!({})));
        let term = q(json!(["Terminating", "NotBestEffort"]), json!(null));
        assert!(matches_scopes(&term, "", "pods", &burst));
        let high = q(
            json!(null),
            json!({"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}),
        );
        assert!(matches_scopes(&high, "", "pods", &burst));
        assert!(!matches_scopes(&high, "", "pods", &best));
        assert!(matches_scopes(
            &q(json!(null), json!(null)),
            "",
            "secrets",
            &json!({})
        ));
        let cross = q(json!(["CrossNamespacePodAffinity"]), json!(null));
        let term = |t: Value| {
            json!({"spec": {"containers": [{"name": "a"}], "affinity": {"podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "podAffinityTerm": t}]}}}})
        };
        let local = term(json!({"topologyKey": "zone", "labelSelector": {}}));
        let named = term(json!({"topologyKey": "zone", "namespaces": ["other"]}));
        let selected = term(json!({"topologyKey": "zone", "namespaceSelector": {}}));
        assert!(!matches_scopes(&cross, "", "pods", &local));
        assert!(matches_scopes(&cross, "", "pods", &named));
        assert!(matches_scopes(&cross, "", "pods", &selected));
        assert!(!matches_scopes(&cross, "", "pods", &best));
    }

    #[test]
    fn a_cpu_quota_needs_every_container_to_state_cpu() {
        let hard = parse_list(&json!({"limits.cpu": "2", "requests.memory": "1Gi", "pods": "3"}));
        let pod = json!({"spec": {"containers": [
            {"name": "b", "resources": {"limits": {"cpu": "1"}}},
            {"name": "a"}]}});
        assert_eq!(
            pod_constraints(&hard, &pod).unwrap_err(),
            "must specify limits.cpu for: a; requests.memory for: a,b"
        );
        let pods_only = parse_list(&json!({"pods": "3"}));
        assert!(pod_constraints(&pods_only, &pod).is_ok());
    }
}
