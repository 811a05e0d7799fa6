//! What the Job controller does with one Job and its pods: pure, with no I/O (Kubernetes'
//! pkg/controller/job, in the order its syncJob decides).
//!
//! **Tracking with finalizers.** Every pod is created with `batch.kubernetes.io/job-tracking`.
//! A pod that finishes is first recorded in `status.uncountedTerminatedPods` (the status is
//! written before anything else), then its finalizer is removed, and only once the finalizer
//! is gone is it moved to `succeeded`/`failed` (and `completedIndexes`). A crash between any
//! two steps repeats the step, never loses or double-counts an outcome; the Job's status is
//! written with its resourceVersion, so a stale cache cannot count twice either.
//!
//! **Outcomes.** Succeeded and Failed phases; a pod deleted before it finished counts as failed
//! (with `podReplacementPolicy: Failed` or a `podFailurePolicy`, only once it is terminal —
//! until then it is *terminating* and not replaced). A failure is matched against the
//! `podFailurePolicy` rules in order: `FailJob` fails the Job, `Ignore` is not counted,
//! `FailIndex` fails its index, `Count` (or no rule) counts toward `backoffLimit`.
//!
//! **Ending.** Success: `completions` pods succeeded (NonIndexed), every index succeeded
//! (Indexed), or for a work queue (no `completions`) one pod succeeded and none is active.
//! Failure: more failures than `backoffLimit` (restarts count with `restartPolicy:
//! OnFailure`), `activeDeadlineSeconds` passed, a FailJob rule, more failed indexes than
//! `maxFailedIndexes`, or every index finished with some failed. The interim condition
//! (SuccessCriteriaMet or FailureTarget) comes first and the remaining pods are deleted; the
//! final one (Complete with completionTime, or Failed) once no pod is left running or
//! uncounted.
//!
//! **Pods.** A replacement for failed pods waits 10 s × 2^(failures since the last success −1),
//! at most 10 min (per index with `backoffLimitPerIndex`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::podutil;

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
pub const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";

/// The controller's tunables.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The first delay before replacing a failed pod (Kubernetes: 10 s).
    pub backoff_base: Duration,
    /// The longest (Kubernetes: 10 min).
    pub backoff_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(600),
        }
    }
}

/// A pod to create: its index (Indexed Jobs) and the failures of that index so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPod {
    pub index: Option<i32>,
    pub failures: i32,
    pub ignored: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<NewPod>,
    pub delete: Vec<Arc<Pod>>,
    /// Pods whose outcome the status (as planned) records: their finalizer can go, after the
    /// status is written.
    pub remove_finalizers: Vec<Arc<Pod>>,
    /// The status to write when it differs from the Job's.
    pub status: Option<JobStatus>,
    pub events: Vec<Event>,
    /// Look again after this long (a backoff or a deadline ends).
    pub requeue: Option<Duration>,
}

/// What a failed pod means under the podFailurePolicy.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    Count,
    Ignore,
    FailIndex,
    FailJob(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Active,
    /// Being deleted, not yet terminal, and not replaced until it is.
    Terminating,
    Succeeded,
    Failed(Failure),
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .as_deref()
        .is_some_and(|f| f.iter().any(|x| x == TRACKING_FINALIZER))
}

pub fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(INDEX_ANNOTATION)?
        .parse()
        .ok()
        .filter(|i| *i >= 0)
}

fn annotation_int(pod: &Pod, key: &str) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// When a pod finished: its last container's finish, else its last condition change, else
/// its deletion or creation.
fn finished_at(pod: &Pod) -> Timestamp {
    let st = pod.status.as_ref();
    let containers = st
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let finished = containers
        .iter()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    finished
        .or_else(|| {
            st.and_then(|s| s.conditions.as_deref())
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
                .max()
        })
        .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|t| t.0))
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The first podFailurePolicy rule a failed pod matches, as an action.
fn match_failure_policy(job: &Job, pod: &Pod) -> Failure {
    let spec = job.spec.as_ref();
    let Some(policy) = spec.and_then(|s| s.pod_failure_policy.as_ref()) else {
        return Failure::Count;
    };
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref();
    let terminated: Vec<(&str, i32)> = status
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .filter_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            (t.exit_code != 0).then_some((c.name.as_str(), t.exit_code))
        })
        .collect();
    for (i, rule) in policy.rules.iter().enumerate() {
        let matched = if let Some(codes) = &rule.on_exit_codes {
            terminated
                .iter()
                .filter(|(c, _)| codes.container_name.as_deref().is_none_or(|n| n == *c))
                .find(|(_, code)| {
                    let listed = codes.values.contains(code);
                    if codes.operator == "In" { listed } else { !listed }
                })
                .map(|(c, code)| {
                    format!(
                        "Container {c} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {i}",
                        rule.action
                    )
                })
        } else {
            rule.on_pod_conditions.iter().flatten().find_map(|p| {
                let want = if p.status.is_empty() {
                    "True"
                } else {
                    p.status.as_str()
                };
                podutil::condition(pod, &p.type_)
                    .filter(|c| c.status == want)
                    .map(|_| {
                        format!(
                            "Pod {ns}/{name} has condition {} matching {} rule at index {i}",
                            p.type_, rule.action
                        )
                    })
            })
        };
        if let Some(message) = matched {
            return match rule.action.as_str() {
                "FailJob" => Failure::FailJob(message),
                "Ignore" => Failure::Ignore,
                "FailIndex" => Failure::FailIndex,
                _ => Failure::Count,
            };
        }
    }
    Failure::Count
}

fn outcome(job: &Job, pod: &Pod) -> Outcome {
    match podutil::phase(pod) {
        "Succeeded" => Outcome::Succeeded,
        "Failed" => Outcome::Failed(match_failure_policy(job, pod)),
        _ if pod.metadata.deletion_timestamp.is_some() => {
            let spec = job.spec.as_ref();
            let wait = spec.is_some_and(|s| {
                s.pod_failure_policy.is_some()
                    || s.pod_replacement_policy.as_deref() == Some("Failed")
            });
            if wait {
                Outcome::Terminating
            } else {
                Outcome::Failed(Failure::Count)
            }
        }
        _ => Outcome::Active,
    }
}

/// `1,3-5,7` ⇄ a set of indexes (the form of completedIndexes and failedIndexes).
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(v) = part.parse() {
                    out.insert(v);
                }
            }
        }
    }
    out
}

pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

fn has_condition(status: &JobStatus, ty: &str) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == ty && c.status == "True")
}

/// Sets a condition; its times move only when its status does.
fn set_condition(
    status: &mut JobStatus,
    ty: &str,
    on: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let value = if on { "True" } else { "False" };
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == ty) {
        if c.status != value {
            c.status = value.into();
            c.last_transition_time = Some(Time(now));
        }
        c.last_probe_time = Some(Time(now));
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        return;
    }
    conditions.push(JobCondition {
        type_: ty.into(),
        status: value.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
}

fn backoff(settings: &Settings, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let shift = (failures - 1).min(20);
    settings
        .backoff_base
        .saturating_mul(1u32 << shift)
        .min(settings.backoff_max)
}

/// How long until `last + backoff(failures)`; zero when it has passed.
fn wait_for(settings: &Settings, failures: u32, last: Timestamp, now: Timestamp) -> Duration {
    let until = Duration::try_from(last.duration_until(now)).unwrap_or_default();
    backoff(settings, failures).saturating_sub(until)
}

/// One pass over a Job and the pods it controls.
pub fn plan(job: &Job, pods: &[Arc<Pod>], now: Timestamp, settings: &Settings) -> Plan {
    let mut plan = Plan::default();
    let Some(spec) = job.spec.as_ref() else {
        return plan;
    };
    let old = job.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let per_index = indexed && spec.backoff_limit_per_index.is_some();
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let finished = has_condition(&old, "Complete") || has_condition(&old, "Failed");

    // --- 1. outcomes, and the uncounted → counted steps -----------------------------------
    // Recorded earlier and released since (finalizer gone, or the pod gone): count them.
    let by_uid: BTreeMap<&str, &Arc<Pod>> = pods
        .iter()
        .filter_map(|p| Some((p.metadata.uid.as_deref()?, p)))
        .collect();
    let recorded = old.uncounted_terminated_pods.clone().unwrap_or_default();
    let released_earlier: Vec<(String, Option<i32>)> = recorded
        .succeeded
        .iter()
        .chain(recorded.failed.iter())
        .flatten()
        .filter_map(|uid| match by_uid.get(uid.as_str()) {
            Some(p) if has_finalizer(p) => None,
            found => Some((uid.clone(), found.and_then(|p| index_of(p)))),
        })
        .collect();
    count_released(&mut status, &released_earlier, indexed);
    let counted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut unc_succeeded: BTreeSet<String> = counted.succeeded.into_iter().flatten().collect();
    let mut unc_failed: BTreeSet<String> = counted.failed.into_iter().flatten().collect();
    let succeeded = status.succeeded.unwrap_or(0);
    let failed = status.failed.unwrap_or(0);
    let completed = parse_indexes(status.completed_indexes.as_deref().unwrap_or_default());
    let mut failed_indexes = parse_indexes(old.failed_indexes.as_deref().unwrap_or_default());
    let mut active: Vec<&Arc<Pod>> = Vec::new();
    let mut terminating = 0;
    let mut fail_job: Option<String> = None;
    // Per index: failures (counted), the last failure time; success times for the backoff.
    let mut index_failures: BTreeMap<i32, (i32, i32, Timestamp)> = BTreeMap::new();
    let mut last_success: Option<Timestamp> = None;
    let mut failure_times: Vec<Timestamp> = Vec::new();
    for pod in pods {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let o = outcome(job, pod);
        match &o {
            Outcome::Active => active.push(pod),
            Outcome::Terminating => terminating += 1,
            Outcome::Succeeded => {
                let t = finished_at(pod);
                last_success = Some(last_success.map_or(t, |l| l.max(t)));
            }
            Outcome::Failed(f) => {
                let t = finished_at(pod);
                if *f != Failure::Ignore {
                    failure_times.push(t);
                }
                if let Some(i) = index_of(pod) {
                    let counted = annotation_int(pod, INDEX_FAILURE_COUNT);
                    let ignored = annotation_int(pod, INDEX_IGNORED_FAILURE_COUNT);
                    let (c, g) = match f {
                        Failure::Ignore => (counted, ignored + 1),
                        _ => (counted + 1, ignored),
                    };
                    let e = index_failures.entry(i).or_insert((0, 0, t));
                    if (c, g) > (e.0, e.1) {
                        *e = (c, g, t);
                    }
                    if per_index
                        && (*f == Failure::FailIndex
                            || spec.backoff_limit_per_index.is_some_and(|l| c > l))
                    {
                        failed_indexes.insert(i);
                    }
                }
                if let Failure::FailJob(m) = f {
                    fail_job.get_or_insert(m.clone());
                }
            }
        }
        if !has_finalizer(pod) {
            continue;
        }
        match o {
            Outcome::Succeeded => {
                if !unc_succeeded.contains(&uid) {
                    unc_succeeded.insert(uid);
                }
                plan.remove_finalizers.push(pod.clone());
            }
            Outcome::Failed(f) => {
                if f != Failure::Ignore && !unc_failed.contains(&uid) {
                    unc_failed.insert(uid);
                }
                plan.remove_finalizers.push(pod.clone());
            }
            Outcome::Active | Outcome::Terminating => {
                if finished {
                    // Nothing more is counted for a finished Job: let its pods go.
                    if pod.metadata.deletion_timestamp.is_some() {
                        plan.remove_finalizers.push(pod.clone());
                    }
                }
            }
        }
    }
    // Indexes that succeeded, counted or on their way.
    let mut succeeded_indexes = completed.clone();
    for pod in pods {
        if outcome(job, pod) == Outcome::Succeeded
            && let Some(i) = index_of(pod)
            && (has_finalizer(pod)
                || unc_succeeded.contains(pod.metadata.uid.as_deref().unwrap_or("")))
        {
            succeeded_indexes.insert(i);
        }
    }
    let succeeded_total = if indexed {
        succeeded_indexes.len() as i32
    } else {
        succeeded + unc_succeeded.len() as i32
    };
    let failed_total = failed + unc_failed.len() as i32;
    status.succeeded = Some(if indexed {
        completed.len() as i32
    } else {
        succeeded
    });
    status.failed = Some(failed);
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: (!unc_succeeded.is_empty()).then(|| unc_succeeded.iter().cloned().collect()),
        failed: (!unc_failed.is_empty()).then(|| unc_failed.iter().cloned().collect()),
    });
    if indexed {
        status.completed_indexes = Some(format_indexes(&completed));
    }
    if per_index {
        status.failed_indexes = Some(format_indexes(&failed_indexes));
    }

    // --- 2. suspension and start ------------------------------------------------------------
    let suspended = spec.suspend == Some(true);
    if !finished {
        let was = has_condition(&old, "Suspended");
        if suspended && !was {
            set_condition(
                &mut status,
                "Suspended",
                true,
                "JobSuspended",
                "Job suspended",
                now,
            );
            plan.events.push(Event {
                warning: false,
                reason: "Suspended",
                message: "Job suspended".into(),
            });
        } else if !suspended && was {
            set_condition(
                &mut status,
                "Suspended",
                false,
                "JobResumed",
                "Job resumed",
                now,
            );
            status.start_time = Some(Time(now));
            plan.events.push(Event {
                warning: false,
                reason: "Resumed",
                message: "Job resumed".into(),
            });
        }
        if !suspended && status.start_time.is_none() {
            status.start_time = Some(Time(now));
        }
    }

    // --- 3. has it ended? -------------------------------------------------------------------
    // With restartPolicy OnFailure the kubelet retries in place: restarts count as failures.
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let restarts: i32 = if on_failure {
        active.iter().map(|p| podutil::restarts(p)).sum()
    } else {
        0
    };
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let over_backoff = failed_total > backoff_limit
        || (on_failure
            && if backoff_limit == 0 {
                restarts > 0
            } else {
                restarts >= backoff_limit
            });
    let deadline = spec.active_deadline_seconds.and_then(|ads| {
        let start = status.start_time.as_ref()?.0;
        Some(start + jiff::SignedDuration::from_secs(ads))
    });
    let mut target: Option<(bool, &'static str, String)> = None; // (success, reason, message)
    if has_condition(&old, "FailureTarget") || has_condition(&old, "Failed") {
        let c =
            old.conditions.iter().flatten().find(|c| {
                (c.type_ == "FailureTarget" || c.type_ == "Failed") && c.status == "True"
            });
        let reason = c.and_then(|c| c.reason.clone()).unwrap_or_default();
        let message = c.and_then(|c| c.message.clone()).unwrap_or_default();
        target = Some((false, static_reason(&reason), message));
    } else if has_condition(&old, "SuccessCriteriaMet") || has_condition(&old, "Complete") {
        let c = old.conditions.iter().flatten().find(|c| {
            (c.type_ == "SuccessCriteriaMet" || c.type_ == "Complete") && c.status == "True"
        });
        let by_policy = c.and_then(|c| c.reason.as_deref()) == Some("SuccessPolicy");
        target = Some(if by_policy {
            (
                true,
                "SuccessPolicy",
                c.and_then(|c| c.message.clone()).unwrap_or_default(),
            )
        } else {
            (
                true,
                "CompletionsReached",
                "Reached expected number of succeeded pods".into(),
            )
        });
    } else if let Some(m) = fail_job {
        target = Some((false, "PodFailurePolicy", m));
    } else if over_backoff {
        target = Some((
            false,
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        ));
    } else if !suspended && deadline.is_some_and(|d| now >= d) {
        target = Some((
            false,
            "DeadlineExceeded",
            "Job was active longer than specified deadline".into(),
        ));
    } else if per_index
        && spec
            .max_failed_indexes
            .is_some_and(|m| failed_indexes.len() as i32 > m)
    {
        target = Some((
            false,
            "MaxFailedIndexesExceeded",
            "Job has exceeded the specified maximal number of failed indexes".into(),
        ));
    } else if let Some(rule) = indexed
        .then(|| success_rule(job, &succeeded_indexes))
        .flatten()
    {
        target = Some((
            true,
            "SuccessPolicy",
            format!("Matched rules at index {rule}"),
        ));
    } else if indexed {
        let total = completions.unwrap_or(0).max(0);
        let done =
            (0..total).all(|i| succeeded_indexes.contains(&i) || failed_indexes.contains(&i));
        if done && !failed_indexes.is_empty() {
            target = Some((false, "FailedIndexes", "Job has failed indexes".into()));
        } else if done {
            target = Some((
                true,
                "CompletionsReached",
                "Reached expected number of succeeded pods".into(),
            ));
        }
    } else if match completions {
        Some(c) => succeeded_total >= c,
        None => succeeded_total > 0 && active.is_empty(),
    } {
        target = Some((
            true,
            "CompletionsReached",
            "Reached expected number of succeeded pods".into(),
        ));
    }

    if let Some((success, reason, message)) = &target {
        let interim = if *success {
            "SuccessCriteriaMet"
        } else {
            "FailureTarget"
        };
        if !has_condition(&old, interim) && !finished {
            set_condition(&mut status, interim, true, reason, message, now);
        }
        // Whatever still runs is no longer wanted.
        plan.delete = active.iter().map(|p| (*p).clone()).collect();
        let settled = active.is_empty()
            && terminating == 0
            && unc_succeeded.is_empty()
            && unc_failed.is_empty()
            && plan.remove_finalizers.is_empty();
        if settled && !finished {
            if *success {
                set_condition(&mut status, "Complete", true, reason, message, now);
                status.completion_time = Some(Time(now));
                plan.events.push(Event {
                    warning: false,
                    reason: "Completed",
                    message: "Job completed".into(),
                });
            } else {
                set_condition(&mut status, "Failed", true, reason, message, now);
                plan.events.push(Event {
                    warning: true,
                    reason,
                    message: message.clone(),
                });
            }
        }
        status.active = Some(0);
    } else if suspended {
        plan.delete = active.iter().map(|p| (*p).clone()).collect();
        status.active = Some(0);
    } else {
        // --- 4. how many pods, and which ------------------------------------------------
        if let Some(d) = deadline {
            let left = Duration::try_from(now.duration_until(d)).unwrap_or_default();
            plan.requeue = Some(left);
        }
        let waiting = spec.pod_replacement_policy.as_deref() == Some("Failed")
            || spec.pod_failure_policy.is_some();
        let busy = active.len() as i32 + if waiting { terminating } else { 0 };
        if indexed {
            plan_indexed(
                &mut plan,
                &active,
                busy,
                parallelism,
                completions.unwrap_or(0),
                &succeeded_indexes,
                &failed_indexes,
                &index_failures,
                now,
                settings,
            );
        } else {
            let want = match completions {
                Some(c) => (c - succeeded_total).clamp(0, parallelism),
                None if succeeded_total > 0 => 0,
                None => parallelism,
            };
            if busy < want {
                let since_success = failure_times
                    .iter()
                    .filter(|t| last_success.is_none_or(|s| **t > s))
                    .count() as u32;
                let last = failure_times.iter().max().copied();
                let wait = last.map_or(Duration::ZERO, |l| {
                    wait_for(settings, since_success, l, now)
                });
                if wait.is_zero() {
                    plan.create = (0..want - busy)
                        .map(|_| NewPod {
                            index: None,
                            failures: 0,
                            ignored: 0,
                        })
                        .collect();
                } else {
                    plan.requeue = Some(plan.requeue.map_or(wait, |r| r.min(wait)));
                }
            } else if (active.len() as i32) > want {
                let mut extra: Vec<&Arc<Pod>> = active.clone();
                // Delete the least advanced first: not running, not ready, newest.
                extra.sort_by_key(|p| {
                    (
                        podutil::phase(p) == "Running",
                        podutil::is_ready(p),
                        std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
                    )
                });
                let n = active.len() - want.max(0) as usize;
                plan.delete = extra.into_iter().take(n).cloned().collect();
            }
        }
        status.active = Some(active.len() as i32);
    }
    status.ready = Some(active.iter().filter(|p| podutil::is_ready(p)).count() as i32);
    status.terminating = Some(terminating);
    if status != old {
        plan.status = Some(status);
    }
    plan
}

/// The reasons a Job fails with, as `&'static str` for events.
/// The first `successPolicy` rule the succeeded indexes satisfy (`matchSuccessPolicy`): all
/// of its `succeededIndexes`, or `succeededCount` of them (of all indexes without a list).
pub fn success_rule(job: &Job, succeeded: &BTreeSet<i32>) -> Option<usize> {
    let rules = job.spec.as_ref()?.success_policy.as_ref()?.rules.as_slice();
    rules
        .iter()
        .position(|r| match r.succeeded_indexes.as_deref() {
            Some(list) => {
                let wanted = parse_indexes(list);
                let hits = wanted.intersection(succeeded).count();
                match r.succeeded_count {
                    Some(n) => hits as i32 >= n,
                    None => !wanted.is_empty() && hits == wanted.len(),
                }
            }
            None => r
                .succeeded_count
                .is_some_and(|n| succeeded.len() as i32 >= n),
        })
}

fn static_reason(r: &str) -> &'static str {
    match r {
        "BackoffLimitExceeded" => "BackoffLimitExceeded",
        "DeadlineExceeded" => "DeadlineExceeded",
        "PodFailurePolicy" => "PodFailurePolicy",
        "MaxFailedIndexesExceeded" => "MaxFailedIndexesExceeded",
        "FailedIndexes" => "FailedIndexes",
        _ => "Failed",
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_indexed(
    plan: &mut Plan,
    active: &[&Arc<Pod>],
    busy: i32,
    parallelism: i32,
    completions: i32,
    succeeded: &BTreeSet<i32>,
    failed: &BTreeSet<i32>,
    failures: &BTreeMap<i32, (i32, i32, Timestamp)>,
    now: Timestamp,
    settings: &Settings,
) {
    // One active pod per wanted index; the rest go.
    let mut running: BTreeSet<i32> = BTreeSet::new();
    for pod in active {
        match index_of(pod) {
            Some(i)
                if i < completions
                    && !succeeded.contains(&i)
                    && !failed.contains(&i)
                    && running.insert(i) => {}
            _ => plan.delete.push((*pod).clone()),
        }
    }
    let kept = active.len() as i32 - plan.delete.len() as i32;
    if kept > parallelism {
        // Highest indexes first.
        let mut by_index: Vec<&Arc<Pod>> = active
            .iter()
            .copied()
            .filter(|p| !plan.delete.iter().any(|d| Arc::ptr_eq(d, p)))
            .collect();
        by_index.sort_by_key(|p| std::cmp::Reverse(index_of(p)));
        let n = (kept - parallelism) as usize;
        plan.delete.extend(by_index.into_iter().take(n).cloned());
        return;
    }
    // Pods being deleted that are not replaced yet hold their place.
    let waiting = busy - active.len() as i32;
    let mut room = parallelism - kept - waiting;
    for i in 0..completions {
        if room <= 0 {
            break;
        }
        if succeeded.contains(&i) || failed.contains(&i) || running.contains(&i) {
            continue;
        }
        let (count, ignored, last) = failures.get(&i).copied().unwrap_or((0, 0, now));
        let wait = wait_for(settings, count.max(0) as u32, last, now);
        if !wait.is_zero() {
            plan.requeue = Some(plan.requeue.map_or(wait, |r| r.min(wait)));
            continue;
        }
        plan.create.push(NewPod {
            index: Some(i),
            failures: count,
            ignored,
        });
        room -= 1;
    }
}

/// A pod whose tracking finalizer is gone: its uid, and its completion index if known.
pub fn released(pod: &Pod) -> (String, Option<i32>) {
    (pod.metadata.uid.clone().unwrap_or_default(), index_of(pod))
}

/// After the finalizers of `released` pods (uid, index) were removed: their uids move from
/// `uncountedTerminatedPods` to `succeeded`/`failed` (and their indexes to
/// `completedIndexes`). Returns whether anything moved.
pub fn count_released(
    status: &mut JobStatus,
    released: &[(String, Option<i32>)],
    indexed: bool,
) -> bool {
    let Some(unc) = status.uncounted_terminated_pods.as_mut() else {
        return false;
    };
    let mut moved = false;
    let mut completed = parse_indexes(status.completed_indexes.as_deref().unwrap_or_default());
    for (uid, index) in released {
        if let Some(list) = unc.succeeded.as_mut()
            && let Some(at) = list.iter().position(|u| u == uid)
        {
            list.remove(at);
            moved = true;
            match *index {
                Some(i) if indexed => {
                    completed.insert(i);
                }
                _ if indexed => {}
                _ => status.succeeded = Some(status.succeeded.unwrap_or(0) + 1),
            }
        }
        if let Some(list) = unc.failed.as_mut()
            && let Some(at) = list.iter().position(|u| u == uid)
        {
            list.remove(at);
            moved = true;
            status.failed = Some(status.failed.unwrap_or(0) + 1);
        }
    }
    if unc.succeeded.as_ref().is_some_and(Vec::is_empty) {
        unc.succeeded = None;
    }
    if unc.failed.as_ref().is_some_and(Vec::is_empty) {
        unc.failed = None;
    }
    if indexed {
        status.succeeded = Some(completed.len() as i32);
        status.completed_indexes = Some(format_indexes(&completed));
    }
    moved
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
