//! Pods, Object and External metrics (kubernetes/pkg/controller/podautoscaler: the
//! `computeStatusFor{Pods,Object,External}Metric` arms and their replica calculators), read
//! through the custom and external metrics APIs — `custom.metrics.k8s.io` (v1beta2, else
//! v1beta1) and `external.metrics.k8s.io/v1beta1` — which an extension API server behind an
//! APIService answers (prometheus-adapter, KEDA's metrics server, ...).
//!
//! - **Pods** (AverageValue): each target pod's value, through the same calculator as resource
//!   metrics without CPU's readiness rules ([`super::replicas`]).
//! - **Object** with a Value target, and **External** with a Value target: the ratio of the value
//!   (External: the sum of the series) to the target, times the target's ready pods; from 0
//!   replicas, the ratio itself rounded up.
//! - **Object** and **External** with an AverageValue target: the value over the target per pod
//!   against the scale's current replicas (status); beyond the tolerance, the value over the
//!   target rounded up.

use std::sync::Arc;

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, ExternalMetricStatus, MetricIdentifier, MetricSpec, MetricStatus,
    MetricValueStatus, ObjectMetricStatus, PodsMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::metrics::{Evaluated, Failure, milli_quantity, pod_info};
use super::replicas::{self, Proposal, Sample, Settings, Target};
use crate::runtime::Discovery;

/// What a custom or external metric is evaluated against.
pub struct Context<'a> {
    pub client: &'a kube::Client,
    pub discovery: &'a Discovery,
    pub namespace: &'a str,
    /// The target's pods (its scale's selector).
    pub pods: &'a [Arc<Pod>],
    /// The scale's selector, as the scale subresource prints it.
    pub selector: &'a str,
    /// The scale's spec.replicas and status.replicas.
    pub spec_replicas: i32,
    pub status_replicas: i32,
    pub settings: &'a Settings,
    pub now: jiff::Timestamp,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "metrics of {}/{{{}}}", self.namespace, self.selector)
    }
}

/// `getUsageRatioReplicaCount`: the count a usage ratio calls for, from the ready pods.
pub fn usage_ratio_replicas(
    current: i32,
    usage_ratio: f64,
    ready_pods: Result<i64, String>,
    tolerance: f64,
) -> Result<i32, String> {
    if current == 0 {
        return Ok(usage_ratio.ceil() as i32);
    }
    if (1.0 - usage_ratio).abs() <= tolerance {
        return Ok(current);
    }
    let ready = ready_pods?;
    Ok((usage_ratio * ready as f64).ceil() as i32)
}

/// `Get{Object,External}PerPodMetricReplicas`: (replicas, usage per current replica).
pub fn per_pod_replicas(
    status_replicas: i32,
    usage: i64,
    target_per_pod: i64,
    tolerance: f64,
) -> (i32, i64) {
    let target = target_per_pod.max(1) as f64;
    let mut replicas = status_replicas;
    let ratio = usage as f64 / (target * f64::from(status_replicas));
    if !ratio.is_finite() || (1.0 - ratio).abs() > tolerance {
        replicas = (usage as f64 / target).ceil() as i32;
    }
    let per_replica = if status_replicas > 0 {
        (usage as f64 / f64::from(status_replicas)).ceil() as i64
    } else {
        usage
    };
    (replicas, per_replica)
}

/// `getReadyPodsCount`: Running and Ready pods of the target.
fn ready_pods(pods: &[Arc<Pod>]) -> Result<i64, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    Ok(pods
        .iter()
        .filter(|p| {
            let status = p.status.as_ref();
            status.and_then(|s| s.phase.as_deref()) == Some("Running")
                && status
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .count() as i64)
}

fn selector_string(s: Option<&LabelSelector>) -> Result<String, String> {
    match s {
        None => Ok(String::new()),
        Some(s) => capstan_api::Selector::from_label_selector(s)
            .map(|s| s.to_string())
            .map_err(|e| format!("invalid metric selector: {e}")),
    }
}

/// The selector as Kubernetes' messages print it (`%+v` of a *LabelSelector).
fn selector_text(s: Option<&LabelSelector>) -> String {
    let Some(s) = s else {
        return "nil".into();
    };
    let labels: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {v},"))
        .collect();
    let exprs: Vec<String> = s
        .match_expressions
        .iter()
        .flatten()
        .map(|e| {
            format!(
                "LabelSelectorRequirement{{Key:{},Operator:{},Values:[{}],}},",
                e.key,
                e.operator,
                e.values.clone().unwrap_or_default().join(" ")
            )
        })
        .collect();
    format!(
        "&LabelSelector{{MatchLabels:map[string]string{{{}}},MatchExpressions:[]LabelSelectorRequirement{{{}}},}}",
        labels.join(""),
        exprs.join("")
    )
}

fn query(pairs: &[(&str, &str)]) -> String {
    let kept: Vec<(&str, &str)> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .copied()
        .collect();
    match serde_urlencoded::to_string(&kept) {
        Ok(q) if !q.is_empty() => format!("?{q}"),
        _ => String::new(),
    }
}

/// One path segment, percent-encoded.
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~*".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn get_json(client: &kube::Client, path: &str) -> Result<Value, kube::Error> {
    let req = hyper::Request::get(path)
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    client.request::<Value>(req).await
}

/// An API error as client-go prints it: the server's message and what was asked.
fn api_error(e: kube::Error, what: &str) -> String {
    match e {
        kube::Error::Api(s) => format!("{} (get {what})", s.message),
        other => other.to_string(),
    }
}

/// GETs `rest` of the custom metrics API: v1beta2, else v1beta1 when v1beta2 is not served.
async fn custom_metrics(
    client: &kube::Client,
    rest: &str,
    what: &str,
) -> Result<Vec<Value>, String> {
    let mut last = String::new();
    for version in ["v1beta2", "v1beta1"] {
        let path = format!("/apis/custom.metrics.k8s.io/{version}/{rest}");
        match get_json(client, &path).await {
            Ok(list) => return Ok(list["items"].as_array().cloned().unwrap_or_default()),
            Err(kube::Error::Api(e)) if e.code == 404 && version == "v1beta2" => {
                last = format!("{} (get {what}.custom.metrics.k8s.io)", e.message);
            }
            Err(e) => return Err(api_error(e, &format!("{what}.custom.metrics.k8s.io"))),
        }
    }
    Err(last)
}

/// A series' value (milli-units), timestamp and window.
fn sample_of(item: &Value, now: jiff::Timestamp) -> Option<Sample> {
    let value = capstan_api::quantity::parse(item["value"].as_str()?, 1000.0)?;
    let timestamp = item["timestamp"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(now);
    let window = std::time::Duration::from_secs(item["windowSeconds"].as_u64().unwrap_or(60));
    Some(Sample {
        value,
        timestamp,
        window,
    })
}

fn target_value(
    q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
) -> Option<i64> {
    q.and_then(|q| capstan_api::quantity::parse(&q.0, 1000.0))
}

/// What an Object or External metric is held to.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// The whole value (`target.value`).
    Value(i64),
    /// A value per replica (`target.averageValue`).
    PerPod(i64),
}

/// The count `usage` calls for against `goal`, and the current value as the status shows it.
fn propose(cx: &Context<'_>, usage: i64, goal: Goal) -> Result<(i32, MetricValueStatus), String> {
    let tolerance = cx.settings.tolerance;
    Ok(match goal {
        Goal::Value(target) => {
            let ratio = usage as f64 / target.max(1) as f64;
            let r = usage_ratio_replicas(cx.spec_replicas, ratio, ready_pods(cx.pods), tolerance)?;
            let status = MetricValueStatus {
                value: Some(milli_quantity(usage)),
                ..Default::default()
            };
            (r, status)
        }
        Goal::PerPod(target) => {
            let (r, per) = per_pod_replicas(cx.status_replicas, usage, target, tolerance);
            let status = MetricValueStatus {
                average_value: Some(milli_quantity(per)),
                ..Default::default()
            };
            (r, status)
        }
    })
}

/// A Pods metric.
pub async fn pods(cx: &Context<'_>, spec: &MetricSpec) -> Result<Evaluated, Failure> {
    let fail = |message: String| Failure {
        reason: "FailedGetPodsMetric",
        message,
    };
    let source = spec
        .pods
        .as_ref()
        .ok_or_else(|| fail("a Pods metric without its pods source".into()))?;
    let name = &source.metric.name;
    let target = target_value(source.target.average_value.as_ref()).ok_or_else(|| {
        fail(format!(
            "invalid pods metric source: the target of {name} needs an averageValue"
        ))
    })?;
    let unable = |e: String| fail(format!("unable to get metric {name}: {e}"));
    let metric_selector = selector_string(source.metric.selector.as_ref()).map_err(unable)?;
    let rest = format!(
        "namespaces/{}/pods/*/{}{}",
        segment(cx.namespace),
        segment(name),
        query(&[
            ("labelSelector", cx.selector),
            ("metricLabelSelector", &metric_selector)
        ])
    );
    let items = custom_metrics(cx.client, &rest, "pods")
        .await
        .map_err(|e| {
            unable(format!(
                "unable to fetch metrics from custom metrics API: {e}"
            ))
        })?;
    if items.is_empty() {
        return Err(unable("no metrics returned from custom metrics API".into()));
    }
    let samples = items
        .iter()
        .filter(|i| {
            i["describedObject"]["kind"]
                .as_str()
                .is_none_or(|k| k == "Pod")
        })
        .filter_map(|i| {
            Some((
                i["describedObject"]["name"].as_str()?.to_string(),
                sample_of(i, cx.now)?,
            ))
        })
        .collect();
    let infos: Vec<_> = cx.pods.iter().map(|p| pod_info(p, "", None)).collect();
    let proposal = replicas::replicas(
        cx.spec_replicas,
        Target::AverageValue(target),
        false,
        &infos,
        &samples,
        cx.settings,
        cx.now,
    )
    .map_err(unable)?;
    let status = MetricStatus {
        type_: "Pods".into(),
        pods: Some(PodsMetricStatus {
            metric: source.metric.clone(),
            current: MetricValueStatus {
                average_value: Some(milli_quantity(proposal.average)),
                ..Default::default()
            },
        }),
        ..Default::default()
    };
    Ok(Evaluated {
        proposal,
        status,
        name: format!("pods metric {name}"),
    })
}

/// The custom metrics API's path for one object's metric.
async fn object_path(
    cx: &Context<'_>,
    object: &CrossVersionObjectReference,
    metric: &str,
    metric_selector: &str,
) -> Result<String, String> {
    let q = query(&[("metricLabelSelector", metric_selector)]);
    if object.kind == "Namespace" {
        return Ok(format!(
            "namespaces/{}/metrics/{}{q}",
            segment(&object.name),
            segment(metric)
        ));
    }
    let api_version = object.api_version.clone().unwrap_or_else(|| "v1".into());
    let mapping = cx
        .discovery
        .resolve(&api_version, &object.kind)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "no matches for kind {:?} in group version {api_version:?}",
                object.kind
            )
        })?;
    let resource = &mapping.resource;
    let plural = if resource.group.is_empty() {
        resource.plural.clone()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    };
    Ok(format!(
        "namespaces/{}/{}/{}/{}{q}",
        segment(cx.namespace),
        segment(&plural),
        segment(&object.name),
        segment(metric)
    ))
}

/// An Object metric.
pub async fn object(cx: &Context<'_>, spec: &MetricSpec) -> Result<Evaluated, Failure> {
    let fail = |message: String| Failure {
        reason: "FailedGetObjectMetric",
        message,
    };
    let source = spec
        .object
        .as_ref()
        .ok_or_else(|| fail("an Object metric without its object source".into()))?;
    let (name, obj) = (&source.metric.name, &source.described_object);
    let unable = |e: String| {
        fail(format!(
            "unable to get metric {name} on {} {}/{}: {e}",
            obj.kind, cx.namespace, obj.name
        ))
    };
    let t = &source.target;
    let goal = match t.type_.as_str() {
        "Value" => target_value(t.value.as_ref()).map(Goal::Value),
        "AverageValue" => target_value(t.average_value.as_ref()).map(Goal::PerPod),
        _ => None,
    }
    .ok_or_else(|| {
        fail("invalid object metric source: neither a value target nor an average value target was set".into())
    })?;
    let metric_selector = selector_string(source.metric.selector.as_ref()).map_err(unable)?;
    let rest = object_path(cx, obj, name, &metric_selector)
        .await
        .map_err(unable)?;
    let items = custom_metrics(cx.client, &rest, &obj.kind.to_ascii_lowercase())
        .await
        .map_err(|e| {
            unable(format!(
                "unable to fetch metrics from custom metrics API: {e}"
            ))
        })?;
    let [item] = items.as_slice() else {
        return Err(unable(format!(
            "expected exactly one metric value for {} {}, got {}",
            obj.kind,
            obj.name,
            items.len()
        )));
    };
    let sample = sample_of(item, cx.now)
        .ok_or_else(|| unable("the metric's value is not a quantity".into()))?;
    let (replicas, current) = propose(cx, sample.value, goal).map_err(unable)?;
    let label = if let Goal::Value(_) = goal {
        format!("{} metric {name}", obj.kind)
    } else {
        format!(
            "external metric {name}({})",
            selector_text(source.metric.selector.as_ref())
        )
    };
    Ok(Evaluated {
        proposal: Proposal {
            replicas,
            utilization: None,
            average: sample.value,
            timestamp: Some(sample.timestamp),
        },
        status: MetricStatus {
            type_: "Object".into(),
            object: Some(ObjectMetricStatus {
                described_object: obj.clone(),
                metric: source.metric.clone(),
                current,
            }),
            ..Default::default()
        },
        name: label,
    })
}

/// An External metric.
pub async fn external(cx: &Context<'_>, spec: &MetricSpec) -> Result<Evaluated, Failure> {
    let fail = |message: String| Failure {
        reason: "FailedGetExternalMetric",
        message,
    };
    let source = spec
        .external
        .as_ref()
        .ok_or_else(|| fail("an External metric without its external source".into()))?;
    let name = &source.metric.name;
    let shown = selector_text(source.metric.selector.as_ref());
    let unable = |e: String| {
        fail(format!(
            "failed to get {name} external metric: unable to get external metric {}/{name}/{shown}: {e}",
            cx.namespace
        ))
    };
    // A per-pod target wins when both are set, as in Kubernetes.
    let goal = target_value(source.target.average_value.as_ref())
        .map(Goal::PerPod)
        .or_else(|| target_value(source.target.value.as_ref()).map(Goal::Value))
        .ok_or_else(|| {
            fail("invalid external metric source: neither a value target nor an average value target was set".into())
        })?;
    let selector = selector_string(source.metric.selector.as_ref()).map_err(unable)?;
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/{}{}",
        segment(cx.namespace),
        segment(name),
        query(&[("labelSelector", &selector)])
    );
    let list = get_json(cx.client, &path).await.map_err(|e| {
        let e = api_error(e, &format!("{name}.external.metrics.k8s.io"));
        unable(format!(
            "unable to fetch metrics from external metrics API: {e}"
        ))
    })?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return Err(unable(
            "no metrics returned from external metrics API".into(),
        ));
    }
    let samples: Vec<Sample> = items.iter().filter_map(|i| sample_of(i, cx.now)).collect();
    let usage: i64 = samples.iter().map(|s| s.value).sum();
    let timestamp = samples.iter().map(|s| s.timestamp).min();
    let (replicas, current) = propose(cx, usage, goal).map_err(unable)?;
    Ok(Evaluated {
        proposal: Proposal {
            replicas,
            utilization: None,
            average: usage,
            timestamp,
        },
        status: MetricStatus {
            type_: "External".into(),
            external: Some(ExternalMetricStatus {
                metric: MetricIdentifier {
                    name: name.clone(),
                    selector: source.metric.selector.clone(),
                },
                current,
            }),
            ..Default::default()
        },
        name: format!("external metric {name}({shown})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kubernetes' replica_calculator_test.go cases for Object and External metrics with a
    /// Value target: (name, current replicas, ready pods, usage, target, expected).
    #[test]
    fn value_targets_match_kubernetes_table_cases() {
        let cases: &[(&str, i32, i64, i64, i64, i32)] = &[
            ("TestReplicaCalcScaleUpCMObject", 3, 3, 20000, 15000, 4),
            (
                "TestReplicaCalcScaleUpCMObjectIgnoresUnreadyPods",
                3,
                1,
                50000,
                10000,
                5,
            ),
            (
                "TestReplicaCalcScaleUpCMExternalIgnoresUnreadyPods",
                3,
                1,
                8600,
                4400,
                2,
            ),
            ("TestReplicaCalcScaleDownCMObject", 5, 5, 12000, 20000, 3),
            ("TestReplicaCalcScaleDownCMExternal", 5, 5, 8600, 14334, 3),
            ("TestReplicaCalcToleranceCMObject", 3, 3, 20666, 20000, 3),
            ("TestReplicaCalcToleranceCMExternal", 3, 3, 8600, 8888, 3),
            (
                "TestReplicaCalcScaleUpOverflow",
                3,
                3,
                i64::MAX,
                1,
                i32::MAX,
            ),
        ];
        for &(name, current, ready, usage, target, want) in cases {
            let ratio = usage as f64 / target as f64;
            assert_eq!(
                usage_ratio_replicas(current, ratio, Ok(ready), 0.1),
                Ok(want),
                "{name}"
            );
        }
        // From zero replicas the ratio alone decides; no pods are needed.
        assert_eq!(
            usage_ratio_replicas(0, 2.5, Err("no pods".into()), 0.1),
            Ok(3)
        );
        // Scaled out without any pod is an error.
        assert!(usage_ratio_replicas(3, 2.0, Err("no pods".into()), 0.1).is_err());
    }

    /// The same file's per-pod (AverageValue) cases: (name, current replicas, usage, target per
    /// pod, expected replicas, expected usage per replica).
    #[test]
    fn average_value_targets_match_kubernetes_table_cases() {
        let cases: &[(&str, i32, i64, i64, i32, i64)] = &[
            (
                "TestReplicaCalcScaleUpCMPerPodObject",
                3,
                20000,
                5000,
                4,
                6667,
            ),
            (
                "TestReplicaCalcScaleUpPerPodCMExternal",
                3,
                8600,
                2150,
                4,
                2867,
            ),
            (
                "TestReplicaCalcScaleDownPerPodCMObject",
                5,
                6000,
                2000,
                3,
                1200,
            ),
            (
                "TestReplicaCalcScaleDownPerPodCMExternal",
                5,
                8600,
                2867,
                3,
                1720,
            ),
            (
                "TestReplicaCalcTolerancePerPodCMObject",
                4,
                20166,
                5000,
                4,
                5042,
            ),
            (
                "TestReplicaCalcTolerancePerPodCMExternal",
                3,
                8600,
                2900,
                3,
                2867,
            ),
            (
                "TestExternalPerPodMetricReplicaOverflow",
                1,
                i64::MAX,
                1,
                i32::MAX,
                i64::MAX,
            ),
            (
                "TestExternalPerPodMetricUsageOverflow",
                1,
                i64::MAX,
                i64::MAX,
                1,
                i64::MAX,
            ),
        ];
        for &(name, current, usage, target, want, per) in cases {
            assert_eq!(
                per_pod_replicas(current, usage, target, 0.1),
                (want, per),
                "{name}"
            );
        }
        // From zero replicas: the usage over the target, rounded up.
        assert_eq!(per_pod_replicas(0, 4_500, 1_000, 0.1), (5, 4_500));
    }

    #[test]
    fn selectors_print_as_kubernetes_messages_print_them() {
        assert_eq!(selector_text(None), "nil");
        let s = LabelSelector {
            match_labels: Some([("queue".to_string(), "jobs".to_string())].into()),
            match_expressions: None,
        };
        assert_eq!(
            selector_text(Some(&s)),
            "&LabelSelector{MatchLabels:map[string]string{queue: jobs,},MatchExpressions:[]LabelSelectorRequirement{},}"
        );
        assert_eq!(
            query(&[
                ("labelSelector", "app=web,tier in (a,b)"),
                ("metricLabelSelector", "")
            ]),
            "?labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29"
        );
        assert_eq!(segment("requests per second"), "requests%20per%20second");
    }
}
