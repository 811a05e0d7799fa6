//! The HorizontalPodAutoscaler controller (kubernetes/pkg/controller/podautoscaler,
//! `horizontal.go`): every `--horizontal-pod-autoscaler-sync-period` (15 s), and at once when an
//! autoscaler's spec changes, each autoscaler
//! 1. reads its target's scale subresource (any kind serving one: Deployments, ReplicaSets,
//!    StatefulSets, custom resources), found through discovery;
//! 2. asks each metric for a count ([`metrics`], [`replicas`]) and takes the highest;
//! 3. stabilizes and rate-limits it ([`behavior`]) within min and max;
//! 4. writes the scale when the count changes (Event SuccessfulRescale), then the status:
//!    current and desired replicas, current metrics, lastScaleTime and the AbleToScale,
//!    ScalingActive and ScalingLimited conditions with Kubernetes' reasons.
//!
//! A target at zero replicas with minReplicas above zero is left alone (ScalingDisabled). The
//! recommendations and scale events behind stabilization live in this process, as in
//! kube-controller-manager: a new leader starts them afresh.

pub mod behavior;
pub mod custom;
pub mod metrics;
pub mod replicas;
pub mod scale;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::endpointslice::{serve, split_key};
use crate::runtime::informer::queue_spec_changes;
use crate::runtime::{Backoffs, Clock, Discovery, Recorder, WorkQueue};
use crate::{Error, Manager};

use behavior::{Behavior, History, Reason};

pub const NAME: &str = "horizontalpodautoscaling";

/// kube-controller-manager's `--horizontal-pod-autoscaler-*` flags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// `--horizontal-pod-autoscaler-sync-period` (15 s).
    pub sync_period: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization` (5 min).
    pub downscale_stabilization: Duration,
    /// Tolerance, CPU initialization period, initial readiness delay.
    pub calculator: replicas::Settings,
    /// `--concurrent-horizontal-pod-autoscaler-syncs` (5): autoscalers synced at once.
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sync_period: Duration::from_secs(15),
            downscale_stabilization: Duration::from_secs(300),
            calculator: replicas::Settings::default(),
            workers: 5,
        }
    }
}

struct Autoscaler {
    client: kube::Client,
    hpas: Store<HorizontalPodAutoscaler>,
    pods: Store<Pod>,
    /// Capstan's ScalingPolicies, once the API serves them: an older one on the same target
    /// keeps it.
    policies: Arc<std::sync::OnceLock<Store<capstan_api::crds::ScalingPolicy>>>,
    discovery: Arc<Discovery>,
    recorder: Recorder,
    queue: Arc<WorkQueue<String>>,
    config: Config,
    clock: Clock,
    histories: Mutex<HashMap<String, History>>,
    /// Each autoscaler's target selector as last read: two whose selectors pick the same pod
    /// are both refused (AmbiguousSelector), as Kubernetes refuses them.
    selectors: Mutex<HashMap<String, capstan_api::Selector>>,
    /// PodMetrics per namespace, shared by its autoscalers.
    pod_metrics: metrics::PodMetricsCache,
    /// Deployments' and ReplicaSets' scales from the shared informers.
    local: scale::Local,
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let (hpas, pods) = (m.informers.horizontal_pod_autoscalers(), m.informers.pods());
    hpas.wait_synced().await;
    pods.wait_synced().await;
    let queue = WorkQueue::new(Backoffs::default());
    let me = Arc::new(Autoscaler {
        client: m.client.clone(),
        hpas: hpas.store(),
        pods: pods.store(),
        policies: Arc::new(std::sync::OnceLock::new()),
        discovery: m.discovery.clone(),
        recorder: Recorder::new(m.client.clone(), "horizontal-pod-autoscaler"),
        queue: queue.clone(),
        config: m.autoscaler,
        clock: m.clock,
        histories: Mutex::new(HashMap::new()),
        selectors: Mutex::new(HashMap::new()),
        local: scale::Local::new(m.informers.clone()),
        pod_metrics: metrics::PodMetricsCache::new(
            m.autoscaler.sync_period.min(Duration::from_secs(1)),
        ),
    });
    let mut tasks = tokio::task::JoinSet::new();
    // ScalingPolicies are watched once their CRD is served (`capstan up` installs it; a
    // Kubernetes running these controllers may not have it).
    {
        let (policies, m) = (me.policies.clone(), m.clone());
        tasks.spawn(async move {
            m.discovery
                .wait_served("capstan.dev/v1alpha1", "ScalingPolicy", || {})
                .await;
            let _ = policies.set(m.informers.scaling_policies().store());
        });
    }
    {
        // New autoscalers and spec changes are synced at once (status writes are not).
        let me = me.clone();
        tasks.spawn(queue_spec_changes(hpas, queue.clone(), move |key| {
            me.forget(key);
        }));
    }
    let workers = m.autoscaler.workers.max(1);
    tasks.spawn(serve(NAME, queue, workers, m.metrics.clone(), move |key| {
        let me = me.clone();
        async move { me.sync(&key).await }
    }));
    while tasks.join_next().await.is_some() {}
}

/// Sets condition `type_` on `conds`, keeping its transition time when its status holds.
fn set_condition(
    conds: &mut Vec<HorizontalPodAutoscalerCondition>,
    type_: &str,
    r: &Reason,
    now: jiff::Timestamp,
) {
    let status = if r.status { "True" } else { "False" };
    let since = conds
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conds.retain(|c| c.type_ != type_);
    conds.push(HorizontalPodAutoscalerCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(r.reason.into()),
        message: Some(r.message.clone()),
        last_transition_time: Some(since),
    });
    // Kubernetes' order: AbleToScale, ScalingActive, ScalingLimited.
    let rank = |t: &str| match t {
        "AbleToScale" => 0,
        "ScalingActive" => 1,
        "ScalingLimited" => 2,
        _ => 3,
    };
    conds.sort_by_key(|c| rank(&c.type_));
}

fn reason(status: bool, reason: &'static str, message: String) -> Reason {
    Reason {
        status,
        reason,
        message,
    }
}

/// What one sync decided: the status to write and whether it failed.
struct Outcome {
    status: HorizontalPodAutoscalerStatus,
    error: Option<String>,
}

impl Autoscaler {
    fn lock_histories(&self) -> std::sync::MutexGuard<'_, HashMap<String, History>> {
        self.histories.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops what is kept of a deleted autoscaler.
    fn forget(&self, key: &str) {
        self.lock_histories().remove(key);
        self.selectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// The other autoscalers of `ns` whose last read selector picks one of `pods`; records
    /// `key`'s own selector.
    fn sharing_pods(
        &self,
        key: &str,
        ns: &str,
        selector: &capstan_api::Selector,
        pods: &[std::sync::Arc<Pod>],
    ) -> Vec<String> {
        let mut selectors = self.selectors.lock().unwrap_or_else(|p| p.into_inner());
        selectors.insert(key.to_string(), selector.clone());
        let empty = std::collections::BTreeMap::new();
        let mut others: Vec<String> = selectors
            .iter()
            .filter(|(k, _)| k.as_str() != key && split_key(k).0 == ns)
            .filter(|(_, s)| {
                pods.iter()
                    .any(|p| s.matches_map(p.metadata.labels.as_ref().unwrap_or(&empty)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        others.sort();
        others
    }

    #[tracing::instrument(skip(self), fields(controller = NAME))]
    async fn sync(&self, key: &str) -> Result<(), Error> {
        let (ns, name) = split_key(key);
        let Some(hpa) = self.hpas.get(&ObjectRef::new(name).within(ns)) else {
            self.forget(key);
            return Ok(());
        };
        // Every autoscaler is looked at again one sync period from now, whatever happens.
        self.queue
            .add_after(key.to_string(), self.config.sync_period);
        let old = hpa.status.clone().unwrap_or_default();
        let started = std::time::Instant::now();
        let outcome = self.reconcile(key, ns, &hpa, &old).await;
        let reconciled = started.elapsed();
        let write = outcome.status != old;
        if write {
            let mut updated = (*hpa).clone();
            updated.status = Some(outcome.status);
            let api: Api<HorizontalPodAutoscaler> = Api::namespaced(self.client.clone(), ns);
            api.replace_status(name, &PostParams::default(), &updated)
                .await?;
        }
        if let Some(e) = outcome.error {
            tracing::debug!(hpa = %key, error = %e, "autoscaler not synced");
        }
        tracing::debug!(hpa = %key, ?reconciled, total = ?started.elapsed(), status_written = write, "synced");
        Ok(())
    }

    async fn reconcile(
        &self,
        key: &str,
        ns: &str,
        hpa: &HorizontalPodAutoscaler,
        old: &HorizontalPodAutoscalerStatus,
    ) -> Outcome {
        let now = self.clock.now();
        let spec = hpa.spec.clone().unwrap_or_default();
        let mut status = HorizontalPodAutoscalerStatus {
            observed_generation: hpa.metadata.generation,
            conditions: old.conditions.clone(),
            ..old.clone()
        };
        let mut conds = status.conditions.take().unwrap_or_default();
        let target = &spec.scale_target_ref;
        let reference = format!("{}/{}", target.kind, target.name);
        let fail = |conds: &mut Vec<_>,
                    type_: &str,
                    r: Reason,
                    status: &mut HorizontalPodAutoscalerStatus| {
            self.recorder.warning(hpa, r.reason, r.message.clone());
            let error = r.message.clone();
            set_condition(conds, type_, &r, now);
            status.conditions = Some(std::mem::take(conds));
            error
        };
        // 0. One autoscaler per target: an older ScalingPolicy on it keeps it.
        let mine = scale::Target::from_hpa(target);
        let policies = self.policies.get().map(Store::state).unwrap_or_default();
        let rival = policies.into_iter().find(|p| {
            p.metadata.namespace.as_deref() == Some(ns)
                && crate::scalingpolicy::target_of(&p.spec).same_object(&mine)
                && (
                    p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    &p.metadata.name,
                ) < (
                    hpa.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    &hpa.metadata.name,
                )
        });
        if let Some(p) = rival {
            let r = reason(
                false,
                "AmbiguousAutoscaler",
                format!(
                    "ScalingPolicy {} already scales {mine}; this autoscaler does nothing while it does",
                    p.metadata.name.as_deref().unwrap_or_default()
                ),
            );
            let error = fail(&mut conds, "ScalingActive", r, &mut status);
            return Outcome {
                status,
                error: Some(error),
            };
        }
        // 1. The target's scale.
        let t0 = std::time::Instant::now();
        let got_scale =
            scale::get_local_first(&self.local, &self.client, &self.discovery, ns, &mine).await;
        tracing::debug!(hpa = %key, elapsed = ?t0.elapsed(), "get scale");
        let scale = match got_scale {
            Ok(s) => s,
            Err(e) => {
                let r = reason(
                    false,
                    "FailedGetScale",
                    format!("the HPA controller was unable to get the target's current scale: {e}"),
                );
                let error = fail(&mut conds, "AbleToScale", r, &mut status);
                return Outcome {
                    status,
                    error: Some(error),
                };
            }
        };
        set_condition(
            &mut conds,
            "AbleToScale",
            &reason(
                true,
                "SucceededGetScale",
                "the HPA controller was able to get the target's current scale".into(),
            ),
            now,
        );
        let current = scale.replicas;
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        self.lock_histories()
            .entry(key.to_string())
            .or_default()
            .record_initial(current, now);
        let behavior = spec
            .behavior
            .as_ref()
            .map(|b| Behavior::from_api(b, self.config.downscale_stabilization));
        let mut statuses: Vec<MetricStatus> = Vec::new();
        let (desired, rescale_reason) = if current == 0 && min != 0 {
            set_condition(
                &mut conds,
                "ScalingActive",
                &reason(
                    false,
                    "ScalingDisabled",
                    "scaling is disabled since the replica count of the target is zero".into(),
                ),
                now,
            );
            (0, None)
        } else if current > max {
            (
                max,
                Some("Current number of replicas above Spec.MaxReplicas".to_string()),
            )
        } else if current < min {
            (
                min,
                Some("Current number of replicas below Spec.MinReplicas".to_string()),
            )
        } else {
            // 2. The metrics' proposals.
            let t1 = std::time::Instant::now();
            let proposed = self.propose(ns, hpa, &scale, now, &mut statuses).await;
            tracing::debug!(hpa = %key, elapsed = ?t1.elapsed(), "metrics");
            let (proposal, metric) = match proposed {
                Ok(p) => p,
                Err((type_, r, summary)) => {
                    status.current_replicas = Some(current);
                    status.current_metrics = (!statuses.is_empty()).then_some(statuses);
                    set_condition(&mut conds, type_, &r, now);
                    self.recorder
                        .warning(hpa, "FailedComputeMetricsReplicas", summary.clone());
                    status.conditions = Some(conds);
                    return Outcome {
                        status,
                        error: Some(summary),
                    };
                }
            };
            set_condition(
                &mut conds,
                "ScalingActive",
                &reason(
                    true,
                    "ValidMetricFound",
                    format!(
                        "the HPA was able to successfully calculate a replica count from {metric}"
                    ),
                ),
                now,
            );
            let why = if proposal > current {
                Some(format!("{metric} above target"))
            } else if proposal < current {
                Some("All metrics below target".to_string())
            } else {
                None
            };
            // 3. Stabilization, rates, bounds.
            let n = self
                .lock_histories()
                .entry(key.to_string())
                .or_default()
                .normalize(
                    behavior.as_ref(),
                    self.config.downscale_stabilization,
                    current,
                    proposal,
                    min,
                    max,
                    now,
                );
            set_condition(&mut conds, "AbleToScale", &n.able, now);
            set_condition(&mut conds, "ScalingLimited", &n.limited, now);
            (n.replicas, why)
        };
        // 4. The scale.
        let rescale = desired != current && !(current == 0 && min != 0);
        if rescale {
            if let Err(e) = scale::set(&self.client, &self.discovery, ns, &mine, desired).await {
                let r = reason(
                    false,
                    "FailedUpdateScale",
                    format!("the HPA controller was unable to update the target scale: {e}"),
                );
                self.recorder.warning(
                    hpa,
                    "FailedRescale",
                    format!(
                        "New size: {desired}; reason: {}; error: {e}",
                        rescale_reason.clone().unwrap_or_default()
                    ),
                );
                set_condition(&mut conds, "AbleToScale", &r, now);
                status.current_replicas = Some(current);
                status.current_metrics = (!statuses.is_empty()).then_some(statuses);
                status.conditions = Some(conds);
                return Outcome {
                    status,
                    error: Some(r.message),
                };
            }
            set_condition(
                &mut conds,
                "AbleToScale",
                &reason(
                    true,
                    "SucceededRescale",
                    format!("the HPA controller was able to update the target scale to {desired}"),
                ),
                now,
            );
            self.recorder.normal(
                hpa,
                "SuccessfulRescale",
                format!(
                    "New size: {desired}; reason: {}",
                    rescale_reason.unwrap_or_default()
                ),
            );
            self.lock_histories()
                .entry(key.to_string())
                .or_default()
                .record_scale(behavior.as_ref(), current, desired, now);
            tracing::info!(hpa = %key, target = %reference, from = current, to = desired, "rescaled");
            status.last_scale_time = Some(Time(now));
        }
        status.current_replicas = Some(current);
        status.desired_replicas = if rescale { desired } else { current };
        status.current_metrics = (!statuses.is_empty()).then_some(statuses);
        status.conditions = Some(conds);
        Outcome {
            status,
            error: None,
        }
    }

    /// The highest count the metrics propose, with the metric that proposed it; or the
    /// condition to set and the error. Kubernetes' rule: fail when every metric failed, or when
    /// some failed and the rest would scale down.
    async fn propose(
        &self,
        ns: &str,
        hpa: &HorizontalPodAutoscaler,
        scale: &scale::TargetScale,
        now: jiff::Timestamp,
        statuses: &mut Vec<MetricStatus>,
    ) -> Result<(i32, String), (&'static str, Reason, String)> {
        let (selector, current) = (scale.selector.as_str(), scale.replicas);
        let spec = hpa.spec.clone().unwrap_or_default();
        let specs = spec.metrics.clone().unwrap_or_default();
        if selector.is_empty() {
            let r = reason(
                false,
                "InvalidSelector",
                "the HPA target's scale is missing a selector".into(),
            );
            self.recorder
                .warning(hpa, "SelectorRequired", "selector is required".into());
            return Err(("ScalingActive", r, "selector is required".into()));
        }
        let parsed = match capstan_api::Selector::parse_labels(selector) {
            Ok(s) => s,
            Err(e) => {
                let r = reason(
                    false,
                    "InvalidSelector",
                    "the HPA target's scale has an invalid selector".into(),
                );
                let msg = format!(
                    "couldn't convert selector into a corresponding internal selector object: {e}"
                );
                self.recorder.warning(hpa, "InvalidSelector", msg.clone());
                return Err(("ScalingActive", r, msg));
            }
        };
        let empty = std::collections::BTreeMap::new();
        let pods = self.pods.state_filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns)
                && parsed.matches_map(p.metadata.labels.as_ref().unwrap_or(&empty))
        });
        let key = crate::podutil::key(&hpa.metadata);
        let others = self.sharing_pods(&key, ns, &parsed, &pods);
        if !others.is_empty() {
            let mut all = others;
            all.push(key);
            all.sort();
            let msg = format!(
                "pods by selector {selector} are controlled by multiple HPAs: [{}]",
                all.join(" ")
            );
            self.recorder.warning(hpa, "AmbiguousSelector", msg.clone());
            let r = reason(false, "AmbiguousSelector", msg.clone());
            return Err(("ScalingActive", r, msg));
        }
        let mut best: Option<(i32, String)> = None;
        let mut invalid = 0;
        let mut first_error: Option<metrics::Failure> = None;
        let cx = custom::Context {
            client: &self.client,
            discovery: &self.discovery,
            namespace: ns,
            pods: &pods,
            selector,
            spec_replicas: current,
            status_replicas: scale.status_replicas,
            settings: &self.config.calculator,
            now,
        };
        for m in &specs {
            let evaluated = match m.type_.as_str() {
                "Pods" => custom::pods(&cx, m).await,
                "Object" => custom::object(&cx, m).await,
                "External" => custom::external(&cx, m).await,
                _ => {
                    metrics::evaluate(
                        &self.pod_metrics,
                        &self.client,
                        m,
                        ns,
                        &pods,
                        current,
                        &self.config.calculator,
                        now,
                    )
                    .await
                }
            };
            match evaluated {
                Ok(e) => {
                    statuses.push(e.status);
                    if best.as_ref().is_none_or(|(r, _)| e.proposal.replicas > *r) {
                        best = Some((e.proposal.replicas, e.name));
                    }
                }
                Err(f) => {
                    invalid += 1;
                    self.recorder.warning(hpa, f.reason, f.message.clone());
                    // Kubernetes keeps an empty entry of the metric's type.
                    statuses.push(MetricStatus {
                        type_: m.type_.clone(),
                        ..Default::default()
                    });
                    first_error.get_or_insert(f);
                }
            }
        }
        match (best, first_error) {
            (Some((replicas, name)), None) => Ok((replicas, name)),
            (Some((replicas, name)), Some(_)) if replicas >= current => Ok((replicas, name)),
            (_, first) => {
                let f = first.unwrap_or(metrics::Failure {
                    reason: "InvalidMetricSourceType",
                    message: "no metrics to scale on".into(),
                });
                let r = reason(
                    false,
                    f.reason,
                    format!(
                        "the HPA was unable to compute the replica count: {}",
                        f.message
                    ),
                );
                let summary = format!(
                    "invalid metrics ({invalid} invalid out of {}), first error is: {}",
                    specs.len(),
                    f.message
                );
                Err(("ScalingActive", r, summary))
            }
        }
    }
}
