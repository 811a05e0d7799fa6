//! The ScalingPolicy controller (`scalingpolicy`): every policy's `pollingInterval` (30 s), and
//! at once when its spec changes, it
//! 1. refuses to act when an older HorizontalPodAutoscaler or ScalingPolicy drives the same
//!    target (condition Ready=False, AmbiguousAutoscaler, and an Event);
//! 2. reads the target's scale through its scale subresource;
//! 3. reads each trigger ([`schedule`], [`redis`] queues, [`source`] metrics, then
//!    [`forecast`]s of those): value, proposal, activity — a source that cannot be read
//!    keeps its last good proposal for `fallback.keepLastFor`, then proposes
//!    `fallback.replicas` or nothing (condition Fallback);
//! 4. decides ([`plan`]): wake from zero, behave (the HPA's stabilization and rate policies,
//!    shared with the HPA controller), or go to zero after the cooldown;
//! 5. writes the scale (Event SuccessfulRescale) and the status.
//!
//! Bad specs the CRD schema cannot catch (an unparseable schedule, an unknown zone, a missing
//! Secret) become a condition and a Warning Event; nothing panics on them.

pub mod forecast;
pub mod plan;
pub mod redis;
pub mod schedule;
pub mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_api::crds::ScalingPolicy;
use capstan_api::crds::scalingpolicy::{
    PredictiveMode, ScalingPolicySpec, ScalingPolicyStatus, SecretRef, Trigger, TriggerStatus,
    TriggerType,
};
use jiff::Timestamp;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::autoscaler::behavior::{Behavior, History};
use crate::autoscaler::scale::{self, Target};
use crate::endpointslice::split_key;
use crate::runtime::informer::run_periodic;
use crate::runtime::{Backoffs, Clock, Discovery, Recorder, WorkQueue, conditions};
use crate::{Error, Manager};

pub const NAME: &str = "scalingpolicy";

/// Defaults of the spec's durations (KEDA's).
pub const DEFAULT_POLLING: Duration = Duration::from_secs(30);
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(300);
const DEFAULT_KEEP_LAST: Duration = Duration::from_secs(300);
const DEFAULT_HISTORY: Duration = Duration::from_secs(7 * 86_400);
const DEFAULT_SEASON: Duration = Duration::from_secs(86_400);
const DEFAULT_LOOK_AHEAD: Duration = Duration::from_secs(600);
/// The longest any one source is waited on.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The controller's memory of one policy (a new leader starts afresh, as the HPA's does;
/// the predictive series live in status).
#[derive(Default)]
struct Memory {
    history: History,
    series: HashMap<String, forecast::Series>,
}

struct Controller {
    client: kube::Client,
    policies: Store<ScalingPolicy>,
    hpas: Store<HorizontalPodAutoscaler>,
    discovery: Arc<Discovery>,
    recorder: Recorder,
    queue: Arc<WorkQueue<String>>,
    clock: Clock,
    http: Option<source::HttpClient>,
    memory: Mutex<HashMap<String, Memory>>,
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    // The CRD may not be served (a Kubernetes running these controllers without Capstan's
    // CRDs applied): the controller waits for it, looking every 30 s, rather than watch a
    // resource that is not there.
    m.discovery
        .wait_served("capstan.dev/v1alpha1", "ScalingPolicy", || {
            tracing::info!(
                "scalingpolicies.capstan.dev is not served (kubectl apply -f manifests/crds/); waiting for it"
            )
        })
        .await;
    let (policies, hpas) = (
        m.informers.scaling_policies(),
        m.informers.horizontal_pod_autoscalers(),
    );
    policies.wait_synced().await;
    hpas.wait_synced().await;
    let queue = WorkQueue::new(Backoffs::default());
    let http = source::HttpClient::new()
        .map_err(|e| tracing::error!(error = %e, "metric triggers over HTTP cannot be read"))
        .ok();
    let me = Arc::new(Controller {
        client: m.client.clone(),
        policies: policies.store(),
        hpas: hpas.store(),
        discovery: m.discovery.clone(),
        recorder: Recorder::new(m.client.clone(), "scalingpolicy-controller"),
        queue: queue.clone(),
        clock: m.clock,
        http,
        memory: Mutex::new(HashMap::new()),
    });
    // New objects and spec changes sync at once (status writes do not).
    let forget = me.clone();
    run_periodic(
        NAME,
        policies,
        queue,
        4,
        m.metrics.clone(),
        move |key| {
            forget.lock().remove(key);
        },
        move |key| {
            let me = me.clone();
            async move { me.sync(&key).await }
        },
    )
    .await;
}

/// The target a policy scales (apps/v1 Deployment unless it says otherwise).
pub fn target_of(spec: &ScalingPolicySpec) -> Target {
    let r = &spec.scale_target_ref;
    Target {
        api_version: r.api_version.clone().unwrap_or_else(|| "apps/v1".into()),
        kind: r.kind.clone().unwrap_or_else(|| "Deployment".into()),
        name: r.name.clone(),
    }
}

/// Sets condition `type_` (Ready, Active, Fallback, in that order).
fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let c = conditions::Set {
        type_,
        status,
        reason,
        message,
    };
    conditions::set(conds, c, generation, now, &["Ready", "Active", "Fallback"]);
}

/// Whether `a` was made before `b` (names break ties): the older autoscaler keeps a target.
fn older(a: &kube::api::ObjectMeta, b: &kube::api::ObjectMeta) -> bool {
    let t = |m: &kube::api::ObjectMeta| m.creation_timestamp.as_ref().map(|t| t.0);
    (t(a), &a.name) < (t(b), &b.name)
}

/// The oldest autoscaler (an HPA or another policy) made before this policy on the same
/// target — the one that drives it — if any.
pub fn rival(
    policy: &ScalingPolicy,
    hpas: &[Arc<HorizontalPodAutoscaler>],
    policies: &[Arc<ScalingPolicy>],
) -> Option<String> {
    let ns = policy.metadata.namespace.as_deref();
    let mine = target_of(&policy.spec);
    let hpas = hpas.iter().filter_map(|h| {
        let spec = h.spec.as_ref()?;
        Target::from_hpa(&spec.scale_target_ref)
            .same_object(&mine)
            .then_some((&h.metadata, "HorizontalPodAutoscaler"))
    });
    let others = policies.iter().filter_map(|p| {
        (p.metadata.name != policy.metadata.name && target_of(&p.spec).same_object(&mine))
            .then_some((&p.metadata, "ScalingPolicy"))
    });
    hpas.chain(others)
        .filter(|(m, _)| m.namespace.as_deref() == ns && older(m, &policy.metadata))
        .min_by(|(a, _), (b, _)| {
            if older(a, b) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        })
        .map(|(m, kind)| format!("{kind} {}", m.name.as_deref().unwrap_or_default()))
}

/// One trigger's reading this sync.
struct Reading {
    status: TriggerStatus,
    /// A spec error (not a source error): the policy is not Ready.
    invalid: Option<String>,
    /// A source error with what was done about it.
    fallback: Option<String>,
}

impl Controller {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Memory>> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[tracing::instrument(skip(self), fields(controller = NAME))]
    async fn sync(&self, key: &str) -> Result<(), Error> {
        let (ns, name) = split_key(key);
        let Some(policy) = self.policies.get(&ObjectRef::new(name).within(ns)) else {
            self.lock().remove(key);
            return Ok(());
        };
        let polling = capstan_api::duration::parse_or(
            policy.spec.polling_interval.as_deref(),
            DEFAULT_POLLING,
        )
        .unwrap_or(DEFAULT_POLLING)
        .max(Duration::from_secs(1));
        self.queue.add_after(key.to_string(), polling);
        let old = policy.status.clone().unwrap_or_default();
        let status = self.reconcile(key, ns, &policy, &old, polling).await;
        if status != old {
            // A merge patch keeps keys it does not name: a field the new status drops
            // (activeTriggers once nothing is active) is written as null to remove it.
            let mut body = serde_json::to_value(&status).unwrap_or_default();
            if let (Some(new), Ok(serde_json::Value::Object(before))) =
                (body.as_object_mut(), serde_json::to_value(&old))
            {
                for k in before.keys() {
                    new.entry(k.clone()).or_insert(serde_json::Value::Null);
                }
            }
            let api: Api<ScalingPolicy> = Api::namespaced(self.client.clone(), ns);
            api.patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": body })),
            )
            .await?;
        }
        Ok(())
    }

    async fn reconcile(
        &self,
        key: &str,
        ns: &str,
        policy: &ScalingPolicy,
        old: &ScalingPolicyStatus,
        polling: Duration,
    ) -> ScalingPolicyStatus {
        let now = self.clock.now();
        let generation = policy.metadata.generation;
        let spec = &policy.spec;
        let mut status = ScalingPolicyStatus {
            observed_generation: generation,
            ..old.clone()
        };
        let mut conds = std::mem::take(&mut status.conditions);
        let fail = |status: &mut ScalingPolicyStatus,
                    conds: &mut Vec<Condition>,
                    reason: &str,
                    message: String| {
            self.recorder.warning(policy, reason, message.clone());
            set_condition(conds, "Ready", false, reason, message, generation, now);
            status.conditions = std::mem::take(conds);
        };
        // 1. One autoscaler per target.
        if let Some(r) = rival(policy, &self.hpas.state(), &self.policies.state()) {
            let target = target_of(spec);
            fail(
                &mut status,
                &mut conds,
                "AmbiguousAutoscaler",
                format!("{r} already scales {target}; this policy does nothing while it does"),
            );
            return status;
        }
        // The spec's own durations (the schema checks their shape; this, their range).
        let cooldown =
            capstan_api::duration::parse_or(spec.cooldown_period.as_deref(), DEFAULT_COOLDOWN);
        let keep_last = capstan_api::duration::parse_or(
            spec.fallback
                .as_ref()
                .and_then(|f| f.keep_last_for.as_deref()),
            DEFAULT_KEEP_LAST,
        );
        let (cooldown, keep_last) = match (cooldown, keep_last) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                fail(&mut status, &mut conds, "InvalidSpec", e);
                return status;
            }
        };
        // 2. The target's scale.
        let target = target_of(spec);
        let current = match scale::get(&self.client, &self.discovery, ns, &target).await {
            Ok(s) => s.replicas,
            Err(e) => {
                fail(
                    &mut status,
                    &mut conds,
                    "FailedGetScale",
                    format!("reading the scale of {target}: {e}"),
                );
                return status;
            }
        };
        status.current_replicas = Some(current);
        // 3. The triggers.
        let mut readings = Vec::with_capacity(spec.triggers.len());
        for (i, t) in spec.triggers.iter().enumerate() {
            let before = old.triggers.iter().find(|s| s.name == t.name_at(i));
            let r = self.read(ns, policy, t, i, before, keep_last, now).await;
            readings.push(r);
        }
        self.forecasts(key, spec, &mut readings, old, polling, now);
        if let Some(bad) = readings.iter().find_map(|r| r.invalid.clone()) {
            status.triggers = readings.into_iter().map(|r| r.status).collect();
            fail(&mut status, &mut conds, "InvalidSpec", bad);
            return status;
        }
        let fallbacks: Vec<String> = readings.iter().filter_map(|r| r.fallback.clone()).collect();
        for f in &fallbacks {
            self.recorder.warning(policy, "TriggerError", f.clone());
        }
        let active: Vec<String> = readings
            .iter()
            .filter(|r| r.status.active)
            .map(|r| r.status.name.clone())
            .collect();
        if !active.is_empty() {
            status.last_active_time = Some(now.to_string());
        }
        let last_active = status
            .last_active_time
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .or(policy.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now);
        status.active_triggers = (!active.is_empty()).then(|| active.join(","));
        set_condition(
            &mut conds,
            "Active",
            !active.is_empty(),
            if active.is_empty() {
                "ScalerNotActive"
            } else {
                "ScalerActive"
            },
            if active.is_empty() {
                "no trigger is active".into()
            } else {
                format!("active: {}", active.join(", "))
            },
            generation,
            now,
        );
        set_condition(
            &mut conds,
            "Fallback",
            !fallbacks.is_empty(),
            if fallbacks.is_empty() {
                "NoFallbackFound"
            } else {
                "FallbackExists"
            },
            if fallbacks.is_empty() {
                "every trigger's source was read".into()
            } else {
                fallbacks.join("; ")
            },
            generation,
            now,
        );
        // 4. The decision.
        let proposals: Vec<Option<i32>> = readings.iter().map(|r| r.status.proposal).collect();
        status.triggers = readings.into_iter().map(|r| r.status).collect();
        let decision = plan::decide(&plan::Inputs {
            current,
            min: spec.min_replicas,
            max: spec.max_replicas,
            proposals: &proposals,
            active: !active.is_empty(),
            last_active,
            cooldown,
            now,
        });
        let behavior =
            Behavior::from_api(&spec.behavior.clone().unwrap_or_default(), DEFAULT_COOLDOWN);
        let (desired, reason) = match decision {
            plan::Decision::Stay => (current, None),
            plan::Decision::Direct { replicas, reason } => (replicas, Some(reason)),
            plan::Decision::Behave { replicas, reason } => {
                let floor = spec.min_replicas.max(1);
                let mut memory = self.lock();
                let history = &mut memory.entry(key.to_string()).or_default().history;
                history.record_initial(current, now);
                let n = history.normalize(
                    Some(&behavior),
                    DEFAULT_COOLDOWN,
                    current,
                    replicas,
                    floor,
                    spec.max_replicas.max(floor),
                    now,
                );
                (n.replicas, Some(reason))
            }
        };
        status.desired_replicas = Some(desired);
        // 5. The scale.
        if desired != current {
            if let Err(e) = scale::set(&self.client, &self.discovery, ns, &target, desired).await {
                fail(
                    &mut status,
                    &mut conds,
                    "FailedUpdateScale",
                    format!("setting the scale of {target} to {desired}: {e}"),
                );
                return status;
            }
            let why = reason.unwrap_or_default();
            self.recorder.normal(
                policy,
                "SuccessfulRescale",
                format!("New size: {desired}; reason: {why}"),
            );
            tracing::info!(policy = %key, %target, from = current, to = desired, reason = %why, "rescaled");
            self.lock()
                .entry(key.to_string())
                .or_default()
                .history
                .record_scale(Some(&behavior), current, desired, now);
            status.last_scale_time = Some(now.to_string());
        }
        set_condition(
            &mut conds,
            "Ready",
            true,
            "ScalingPolicyReady",
            format!("scaling {target}"),
            generation,
            now,
        );
        status.conditions = conds;
        status
    }

    async fn secret(&self, ns: &str, r: &SecretRef) -> Result<String, String> {
        let k = &r.secret_key_ref;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let secret = api
            .get_opt(&k.name)
            .await
            .map_err(|e| format!("reading Secret {}: {e}", k.name))?
            .ok_or_else(|| format!("Secret {} not found", k.name))?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&k.key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&k.key))
                    .map(|s| s.clone().into_bytes())
            })
            .ok_or_else(|| format!("Secret {} has no key {}", k.name, k.key))?;
        String::from_utf8(bytes).map_err(|_| format!("Secret {} key {} is not text", k.name, k.key))
    }

    async fn secret_opt(&self, ns: &str, r: Option<&SecretRef>) -> Result<Option<String>, String> {
        match r {
            Some(r) => self.secret(ns, r).await.map(Some),
            None => Ok(None),
        }
    }

    /// Reads one trigger (predictive ones are filled in by [`Controller::forecasts`]).
    #[allow(clippy::too_many_arguments)]
    async fn read(
        &self,
        ns: &str,
        policy: &ScalingPolicy,
        t: &Trigger,
        index: usize,
        before: Option<&TriggerStatus>,
        keep_last: Duration,
        now: Timestamp,
    ) -> Reading {
        let mut status = TriggerStatus {
            name: t.name_at(index),
            type_: t.type_,
            ..Default::default()
        };
        let invalid = |status: TriggerStatus, e: String| Reading {
            invalid: Some(format!("trigger {}: {e}", status.name)),
            status,
            fallback: None,
        };
        // (value, proposal, active) or the source's error.
        let read: Result<(f64, Option<i32>, bool), String> = match t.type_ {
            TriggerType::Schedule => {
                let Some(s) = &t.schedule else {
                    return invalid(status, "schedule is not set".into());
                };
                match schedule::Window::parse(s) {
                    Ok(w) => {
                        let open = w.is_open(now);
                        Ok((
                            if open { f64::from(w.replicas) } else { 0.0 },
                            open.then_some(w.replicas),
                            open,
                        ))
                    }
                    Err(e) => return invalid(status, e),
                }
            }
            TriggerType::Queue => {
                let Some(q) = &t.queue else {
                    return invalid(status, "queue is not set".into());
                };
                let creds = async {
                    let user = self.secret_opt(ns, q.redis.username_from.as_ref()).await?;
                    let pass = self.secret_opt(ns, q.redis.password_from.as_ref()).await?;
                    Ok::<_, String>((user, pass))
                };
                match creds.await {
                    Ok((user, pass)) => redis::queue_length(
                        &q.redis,
                        user.as_deref(),
                        pass.as_deref(),
                        READ_TIMEOUT,
                    )
                    .await
                    .map(|n| {
                        let n = n as f64;
                        (
                            n,
                            Some(plan::per_replica(n, q.target_per_replica as f64)),
                            n > q.activation as f64,
                        )
                    }),
                    Err(e) => Err(e),
                }
            }
            TriggerType::Metric => {
                let Some(m) = &t.metric else {
                    return invalid(status, "metric is not set".into());
                };
                let token = m
                    .prometheus
                    .as_ref()
                    .and_then(|p| p.bearer_token_from.as_ref())
                    .or(m.http.as_ref().and_then(|h| h.bearer_token_from.as_ref()));
                match (self.secret_opt(ns, token).await, &self.http) {
                    (Err(e), _) => Err(e),
                    (_, None) => Err("no HTTP client (see the controller's log)".into()),
                    (Ok(token), Some(http)) => {
                        source::read(http, m, token.as_deref(), READ_TIMEOUT)
                            .await
                            .map(|v| {
                                (
                                    v,
                                    Some(plan::per_replica(v, m.target_per_replica)),
                                    v > m.activation,
                                )
                            })
                    }
                }
            }
            TriggerType::Predictive => {
                if t.predictive.is_none() {
                    return invalid(status, "predictive is not set".into());
                }
                Ok((0.0, None, false))
            }
        };
        match read {
            Ok((value, proposal, active)) => {
                status.value = Some(value);
                status.proposal = proposal;
                status.active = active;
                status.last_read_time = Some(now.to_string());
                Reading {
                    status,
                    invalid: None,
                    fallback: None,
                }
            }
            Err(e) => {
                let _ = policy;
                let last_good = before.and_then(|b| {
                    let at = b.last_read_time.as_deref()?.parse::<Timestamp>().ok()?;
                    let age = now.duration_since(at);
                    (age <= jiff::SignedDuration::try_from(keep_last).ok()?).then_some(b)
                });
                let fallback_replicas = policy.spec.fallback.as_ref().and_then(|f| f.replicas);
                let what = match (last_good, fallback_replicas) {
                    (Some(b), _) => {
                        status.value = b.value;
                        status.proposal = b.proposal;
                        status.active = b.active;
                        status.last_read_time = b.last_read_time.clone();
                        format!(
                            "keeping its last good proposal ({}) for up to {}s",
                            b.proposal.unwrap_or(0),
                            keep_last.as_secs()
                        )
                    }
                    (None, Some(r)) => {
                        status.proposal = Some(r);
                        status.active = r > 0;
                        status.last_read_time = before.and_then(|b| b.last_read_time.clone());
                        format!("proposing fallback.replicas ({r})")
                    }
                    (None, None) => {
                        status.last_read_time = before.and_then(|b| b.last_read_time.clone());
                        "proposing nothing (no fallback.replicas)".to_string()
                    }
                };
                let message = format!("trigger {}: {e}; {what}", status.name);
                status.error = Some(e);
                Reading {
                    status,
                    invalid: None,
                    fallback: Some(message),
                }
            }
        }
    }

    /// Fills in the predictive triggers: records the value of the trigger each forecasts,
    /// forecasts it, and turns the highest forecast within lookAhead into a proposal.
    fn forecasts(
        &self,
        key: &str,
        spec: &ScalingPolicySpec,
        readings: &mut [Reading],
        old: &ScalingPolicyStatus,
        polling: Duration,
        now: Timestamp,
    ) {
        let mut memory = self.lock();
        let series = &mut memory.entry(key.to_string()).or_default().series;
        for (i, t) in spec.triggers.iter().enumerate() {
            let Some(p) = &t.predictive else { continue };
            let name = t.name_at(i);
            let source =
                spec.triggers.iter().enumerate().find(|(j, s)| {
                    s.name_at(*j) == p.trigger && s.type_ != TriggerType::Predictive
                });
            let Some((j, source)) = source else {
                readings[i].invalid = Some(format!(
                    "trigger {name}: no queue or metric trigger named {:?}",
                    p.trigger
                ));
                continue;
            };
            let (per, activation) = match (&source.queue, &source.metric) {
                (Some(q), _) => (q.target_per_replica as f64, q.activation as f64),
                (_, Some(m)) => (m.target_per_replica, m.activation),
                _ => {
                    readings[i].invalid = Some(format!(
                        "trigger {name}: {:?} is not a queue or metric trigger",
                        p.trigger
                    ));
                    continue;
                }
            };
            let durations = (
                capstan_api::duration::parse_or(p.history.as_deref(), DEFAULT_HISTORY),
                capstan_api::duration::parse_or(p.seasonality.as_deref(), DEFAULT_SEASON),
                capstan_api::duration::parse_or(p.look_ahead.as_deref(), DEFAULT_LOOK_AHEAD),
            );
            let (history, season, look_ahead) = match durations {
                (Ok(h), Ok(s), Ok(l)) if s.as_secs() >= 2 => (h, s, l),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    readings[i].invalid = Some(format!("trigger {name}: {e}"));
                    continue;
                }
                _ => {
                    readings[i].invalid =
                        Some(format!("trigger {name}: seasonality must be at least 2s"));
                    continue;
                }
            };
            let step = forecast::step_for(season, polling);
            let period = (season.as_secs() / step).max(2) as usize;
            let capacity = (history.min(season * forecast::MAX_SEASONS as u32).as_secs() / step)
                .max(2 * period as u64) as usize;
            let before = old.triggers.iter().find(|s| s.name == name);
            let s = series.entry(name.clone()).or_insert_with(|| {
                forecast::Series::resume(
                    before.and_then(|b| b.history.as_ref()),
                    before.and_then(|b| b.forecast_error),
                    step,
                    capacity,
                    now,
                )
            });
            if s.step != step || s.capacity != capacity {
                *s = forecast::Series::resume(None, None, step, capacity, now);
            }
            // Only a value read now is history (not a fallback's stand-in).
            let src = &readings[j].status;
            if src.error.is_none()
                && let Some(v) = src.value
            {
                s.record(now, v, period);
            }
            let horizon = look_ahead.as_secs().div_ceil(step).max(1) as usize;
            let predicted = s.forecast_max(period, horizon);
            let r = &mut readings[i].status;
            r.history = Some(s.to_status());
            r.forecast_error = s.error.map(|e| (e * 1000.0).round() / 1000.0);
            r.last_read_time = Some(now.to_string());
            match predicted {
                Some(f) => {
                    r.forecast = Some((f * 1000.0).round() / 1000.0);
                    r.value = r.forecast;
                    if p.mode == PredictiveMode::ForecastAndScale {
                        r.proposal = Some(plan::per_replica(f, per));
                        r.active = f > activation;
                    }
                }
                None => {
                    r.error = Some(format!(
                        "learning: {} of the {} steps (two seasons) a forecast needs",
                        s.values.len(),
                        2 * period
                    ));
                }
            }
        }
    }
}
