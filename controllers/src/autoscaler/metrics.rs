//! What one metric of an autoscaler proposes (`computeReplicasForMetric`): the target's pods
//! and their samples from metrics.k8s.io, through [`super::replicas`], with the status entry and
//! the condition Kubernetes reports, for Resource and ContainerResource metrics. Pods, Object
//! and External metrics are read from the custom and external metrics APIs
//! ([`super::custom`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, MetricSpec, MetricStatus, MetricTarget, MetricValueStatus,
    ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};

use super::replicas::{self, Phase, PodInfo, Proposal, Sample, Settings, Target};

/// The failure of one metric: the condition's reason and the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

/// One metric's proposal, its status entry and what it is called in messages.
#[derive(Debug, Clone)]
pub struct Evaluated {
    pub proposal: Proposal,
    pub status: MetricStatus,
    pub name: String,
}

/// metrics.k8s.io's PodMetrics, as the autoscaler reads them.
fn pod_metrics_resource() -> ApiResource {
    ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    }
}

/// A quantity from milli-units, as `resource.NewMilliQuantity` prints it.
pub fn milli_quantity(v: i64) -> Quantity {
    Quantity(if v % 1000 == 0 {
        (v / 1000).to_string()
    } else {
        format!("{v}m")
    })
}

fn parse_window(s: &str) -> Duration {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().unwrap_or(0.0);
    let secs = match unit {
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => n,
    };
    Duration::from_secs_f64(secs.max(0.0))
}

/// One namespace's PodMetrics, listed at most once per `ttl` (1 s, as long as the API server
/// keeps a node's summary) and shared by every autoscaler of the namespace. Kubernetes lists
/// per autoscaler with its selector; with 1,000 autoscalers in a namespace that is ~70 lists a
/// second, most of the controller's CPU, for the same few summaries. Concurrent syncs of one
/// namespace wait for one list.
#[derive(Debug)]
pub struct PodMetricsCache {
    ttl: Duration,
    entries: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Listed>>>>>,
}

type Listed = (std::time::Instant, Arc<Vec<DynamicObject>>);

impl PodMetricsCache {
    pub fn new(ttl: Duration) -> PodMetricsCache {
        PodMetricsCache {
            ttl,
            entries: Default::default(),
        }
    }

    /// The namespace's PodMetrics, listed afresh when the last list is older than the ttl.
    pub async fn list(
        &self,
        client: &kube::Client,
        namespace: &str,
    ) -> Result<Arc<Vec<DynamicObject>>, String> {
        let slot = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            // Namespaces nobody asked about for a minute of ttls are dropped (a slot in use
            // is held by its users, and kept).
            let stale = self.ttl * 60;
            entries.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot.try_lock().is_ok_and(|listed| {
                        listed.as_ref().is_some_and(|(at, _)| at.elapsed() < stale)
                    })
            });
            entries.entry(namespace.to_string()).or_default().clone()
        };
        let mut listed = slot.lock().await;
        if let Some((at, items)) = listed.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(items.clone());
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &pod_metrics_resource());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("unable to fetch metrics from resource metrics API: {e}"))?;
        let items = Arc::new(list.items);
        *listed = Some((std::time::Instant::now(), items.clone()));
        Ok(items)
    }
}

/// Per-pod samples of `resource` (summed over containers, or the one named) for the pods
/// named: pods that lack the container or its usage are left out, as metrics-server's client
/// leaves them out.
pub async fn samples(
    source: &PodMetricsCache,
    client: &kube::Client,
    namespace: &str,
    pods: &[Arc<Pod>],
    resource: &str,
    container: Option<&str>,
) -> Result<BTreeMap<String, Sample>, String> {
    let names: std::collections::HashSet<&str> = pods
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    let all = source.list(client, namespace).await?;
    let items: Vec<&DynamicObject> = all
        .iter()
        .filter(|m| {
            m.metadata
                .name
                .as_deref()
                .is_some_and(|n| names.contains(n))
        })
        .collect();
    if items.is_empty() {
        return Err("no metrics returned from resource metrics API".into());
    }
    let scale = 1000.0;
    let mut out = BTreeMap::new();
    for item in items {
        let Some(name) = item.metadata.name.clone() else {
            continue;
        };
        let d = &item.data;
        let Some(timestamp) = d["timestamp"].as_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let window = parse_window(d["window"].as_str().unwrap_or("0s"));
        let mut total = 0i64;
        let mut found = false;
        let mut whole = true;
        for c in d["containers"].as_array().into_iter().flatten() {
            if container.is_some_and(|want| c["name"].as_str() != Some(want)) {
                continue;
            }
            match c["usage"][resource]
                .as_str()
                .and_then(|q| capstan_api::quantity::parse(q, scale))
            {
                Some(v) => {
                    total += v;
                    found = true;
                }
                None => whole = false,
            }
        }
        if found && whole {
            out.insert(
                name,
                Sample {
                    value: total,
                    timestamp,
                    window,
                },
            );
        }
    }
    Ok(out)
}

/// What the calculator reads of `pod`, with its request of `resource` (milli-units).
pub fn pod_info(pod: &Pod, resource: &str, container: Option<&str>) -> PodInfo {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Pending") => Phase::Pending,
        Some("Running") => Phase::Running,
        Some("Succeeded") => Phase::Succeeded,
        Some("Failed") => Phase::Failed,
        _ => Phase::Unknown,
    };
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| {
            let since = c
                .last_transition_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            (c.status == "True", since)
        });
    let mut request = Ok(0i64);
    if let Some(spec) = &pod.spec {
        // The pod's containers and its sidecars (init containers that keep running).
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        for c in spec.containers.iter().chain(sidecars) {
            if container.is_some_and(|want| want != c.name) {
                continue;
            }
            let value = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource))
                .and_then(|q| capstan_api::quantity::parse(&q.0, 1000.0));
            match value {
                Some(v) => {
                    if let Ok(sum) = &mut request {
                        *sum += v;
                    }
                }
                None => {
                    request = Err(format!(
                        "missing request for {resource} in container {} of Pod {name}",
                        c.name
                    ));
                    break;
                }
            }
        }
    }
    PodInfo {
        name,
        phase,
        deleting: pod.metadata.deletion_timestamp.is_some(),
        ready,
        start_time: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
        request,
    }
}

/// The target of a Resource or ContainerResource metric.
fn target_of(t: &MetricTarget) -> Result<Target, String> {
    match t.type_.as_str() {
        "Utilization" => t
            .average_utilization
            .map(Target::Utilization)
            .ok_or_else(|| "invalid resource metric source: neither a utilization target nor a value target was set".into()),
        "AverageValue" => t
            .average_value
            .as_ref()
            .and_then(|q| capstan_api::quantity::parse(&q.0, 1000.0))
            .map(Target::AverageValue)
            .ok_or_else(|| "invalid resource metric source: the average value target is not a quantity".into()),
        other => Err(format!(
            "invalid resource metric source: a target of type {other} is not supported for resource metrics"
        )),
    }
}

/// Reads the target's pods and samples for one metric and proposes a count.
#[allow(clippy::too_many_arguments)]
pub async fn evaluate(
    source: &PodMetricsCache,
    client: &kube::Client,
    spec: &MetricSpec,
    namespace: &str,
    pods: &[std::sync::Arc<Pod>],
    current: i32,
    settings: &Settings,
    now: jiff::Timestamp,
) -> Result<Evaluated, Failure> {
    let (resource, container, target, reason) = match spec.type_.as_str() {
        "Resource" => {
            let r = spec.resource.as_ref().ok_or_else(|| Failure {
                reason: "FailedGetResourceMetric",
                message: "a Resource metric without its resource".into(),
            })?;
            (&r.name, None, &r.target, "FailedGetResourceMetric")
        }
        "ContainerResource" => {
            let r = spec.container_resource.as_ref().ok_or_else(|| Failure {
                reason: "FailedGetContainerResourceMetric",
                message: "a ContainerResource metric without its resource".into(),
            })?;
            (
                &r.name,
                Some(r.container.as_str()),
                &r.target,
                "FailedGetContainerResourceMetric",
            )
        }
        other => {
            return Err(Failure {
                reason: "InvalidMetricSourceType",
                message: format!("unknown metric source type {other:?}"),
            });
        }
    };
    let fail = |what: String| Failure {
        reason,
        message: match container {
            Some(c) => format!("failed to get {resource} utilization of container {c}: {what}"),
            None => format!("failed to get {resource} utilization: {what}"),
        },
    };
    let target = target_of(target).map_err(fail)?;
    let samples = samples(source, client, namespace, pods, resource, container)
        .await
        .map_err(|e| {
            fail(format!(
                "unable to get metrics for resource {resource}: {e}"
            ))
        })?;
    let infos: Vec<PodInfo> = pods
        .iter()
        .map(|p| pod_info(p, resource, container))
        .collect();
    let proposal = replicas::replicas(
        current,
        target,
        resource == "cpu",
        &infos,
        &samples,
        settings,
        now,
    )
    .map_err(fail)?;
    let current_value = MetricValueStatus {
        average_utilization: proposal.utilization,
        average_value: Some(milli_quantity(proposal.average)),
        value: None,
    };
    let (status, name) = match container {
        None => (
            MetricStatus {
                type_: "Resource".into(),
                resource: Some(ResourceMetricStatus {
                    name: resource.clone(),
                    current: current_value,
                }),
                ..Default::default()
            },
            match target {
                Target::Utilization(_) => {
                    format!("{resource} resource utilization (percentage of request)")
                }
                Target::AverageValue(_) => format!("{resource} resource"),
            },
        ),
        Some(c) => (
            MetricStatus {
                type_: "ContainerResource".into(),
                container_resource: Some(ContainerResourceMetricStatus {
                    name: resource.clone(),
                    container: c.to_string(),
                    current: current_value,
                }),
                ..Default::default()
            },
            match target {
                Target::Utilization(_) => {
                    format!("{resource} container resource utilization (percentage of request)")
                }
                Target::AverageValue(_) => format!("{resource} container resource"),
            },
        ),
    };
    Ok(Evaluated {
        proposal,
        status,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_and_windows_read_and_print_as_kubernetes_does() {
        assert_eq!(milli_quantity(250).0, "250m");
        assert_eq!(milli_quantity(2000).0, "2");
        assert_eq!(parse_window("10s"), Duration::from_secs(10));
        assert_eq!(parse_window("1500ms"), Duration::from_millis(1500));
        assert_eq!(parse_window("1m"), Duration::from_secs(60));
        assert_eq!(parse_window("junk"), Duration::ZERO);
    }

    #[test]
    fn a_pods_request_sums_its_containers_and_sidecars_and_names_what_is_missing() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1"},
            "spec": {
                "initContainers": [
                    {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
                    {"name": "init", "resources": {}},
                ],
                "containers": [
                    {"name": "app", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                    {"name": "log", "resources": {"requests": {"cpu": "0.1"}}},
                ],
            },
            "status": {"phase": "Running", "startTime": "2026-12-04T10:00:00Z",
                       "conditions": [{"type": "Ready", "status": "True",
                                       "lastTransitionTime": "2026-12-04T10:00:05Z"}]},
        }))
        .unwrap();
        let info = pod_info(&pod, "cpu", None);
        assert_eq!(info.request, Ok(400));
        assert_eq!(info.phase, Phase::Running);
        assert_eq!(
            info.ready,
            Some((true, "2026-12-04T10:00:05Z".parse().unwrap()))
        );
        assert_eq!(pod_info(&pod, "cpu", Some("log")).request, Ok(100));
        assert_eq!(
            pod_info(&pod, "memory", None).request,
            Err("missing request for memory in container log of Pod web-1".into())
        );
    }

    #[test]
    fn targets_must_be_complete() {
        let t = |v: serde_json::Value| target_of(&serde_json::from_value(v).unwrap());
        assert_eq!(
            t(json!({"type": "Utilization", "averageUtilization": 60})),
            Ok(Target::Utilization(60))
        );
        assert_eq!(
            t(json!({"type": "AverageValue", "averageValue": "100Mi"})),
            Ok(Target::AverageValue(104_857_600_000))
        );
        assert!(t(json!({"type": "Utilization"})).is_err());
        assert!(t(json!({"type": "Value", "value": "1"})).is_err());
    }
}
