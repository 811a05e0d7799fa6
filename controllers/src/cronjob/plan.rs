//! What the CronJob controller does with one CronJob and its Jobs: pure, with no I/O
//! (Kubernetes' pkg/controller/cronjob, cronjob_controllerv2.go's syncCronJob).
//!
//! 1. `status.active` keeps the Jobs it started that still run; a finished one is noted
//!    (SawCompletedJob, `lastSuccessfulTime`), one that vanished is dropped (MissingJob).
//! 2. The time to run is the most recent schedule time since the last one (or since
//!    creation) that has passed — only the most recent: after downtime there is at most one
//!    catch-up run, and more than 100 missed times say so in an event. With
//!    `startingDeadlineSeconds` it must not be older than that (MissSchedule otherwise).
//! 3. `concurrencyPolicy`: Allow runs alongside, Forbid waits until nothing is active,
//!    Replace deletes the active Jobs first.
//! 4. The Job is named `CRONJOB-<minutes since the epoch>`, so a time runs once even when two
//!    passes race; it carries the template's metadata and the scheduled time.
//! 5. Finished Jobs beyond `successfulJobsHistoryLimit`/`failedJobsHistoryLimit` are deleted,
//!    oldest first.

use std::sync::Arc;
use std::time::Duration;

use capstan_api::cron::Schedule;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::job::plan::Event;
use crate::podutil::{controller_owner_ref, controller_ref};

pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed times than this get a warning (Kubernetes' 100).
const TOO_MANY_MISSED: usize = 100;

#[derive(Debug, Default)]
pub struct Plan {
    pub status: Option<CronJobStatus>,
    /// A Job to create (then added to `active`).
    pub create: Option<Job>,
    /// Jobs to delete (Replace, and history beyond the limits), in the background.
    pub delete: Vec<Arc<Job>>,
    pub events: Vec<Event>,
    /// Look again after this long (the next schedule time), in the clock's time.
    pub requeue: Option<Duration>,
}

fn finished(job: &Job) -> Option<&'static str> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    for (ty, name) in [("Complete", "Complete"), ("Failed", "Failed")] {
        if conds.iter().any(|c| c.type_ == ty && c.status == "True") {
            return Some(name);
        }
    }
    None
}

pub fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The Job name for a scheduled time: the CronJob's name and the minutes since the epoch.
pub fn job_name(cron: &str, scheduled: Timestamp) -> String {
    format!("{cron}-{}", scheduled.as_second().div_euclid(60))
}

/// The time zone a CronJob's schedule runs in: its `timeZone`, else the controller's.
pub fn zone_of(cj: &CronJob) -> Result<TimeZone, String> {
    match cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()) {
        Some(name) => TimeZone::get(name).map_err(|e| format!("invalid timeZone: {name:?}: {e}")),
        None => Ok(TimeZone::try_system().unwrap_or(TimeZone::UTC)),
    }
}

/// The Job for `scheduled`: the template's metadata and spec, owned by the CronJob.
pub fn job_for(cj: &CronJob, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let meta = spec.job_template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_ANNOTATION.into(),
        scheduled
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(
                cj.metadata.name.as_deref().unwrap_or_default(),
                scheduled,
            )),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_owner_ref(cj)]),
            ..Default::default()
        },
        spec: spec.job_template.spec,
        status: None,
    }
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(now.duration_until(at)).unwrap_or_default()
}

fn event(warning: bool, reason: &'static str, message: String) -> Event {
    Event {
        warning,
        reason,
        message,
    }
}

/// One pass over a CronJob and the Jobs (of its namespace) it controls.
pub fn plan(cj: &CronJob, jobs: &[Arc<Job>], now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    let Some(spec) = cj.spec.as_ref() else {
        return plan;
    };
    let uid = cj.metadata.uid.as_deref().unwrap_or_default();
    let owned: Vec<&Arc<Job>> = jobs
        .iter()
        .filter(|j| controller_ref(&j.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let old = cj.status.clone().unwrap_or_default();
    let mut status = old.clone();

    // --- 1. the active list -------------------------------------------------------------
    let mut active: Vec<ObjectReference> = Vec::new();
    for r in old.active.iter().flatten() {
        match owned.iter().find(|j| j.metadata.uid == r.uid) {
            None => plan.events.push(event(
                false,
                "MissingJob",
                format!(
                    "Active job went missing: {}",
                    r.name.as_deref().unwrap_or_default()
                ),
            )),
            Some(j) => match finished(j) {
                Some(how) => {
                    let name = j.metadata.name.clone().unwrap_or_default();
                    plan.events.push(event(
                        false,
                        "SawCompletedJob",
                        format!("Saw completed job: {name}, status: {how}"),
                    ));
                }
                None => active.push(r.clone()),
            },
        }
    }
    for j in &owned {
        if finished(j).is_none() && !active.iter().any(|r| r.uid == j.metadata.uid) {
            active.push(job_ref(j));
        }
        if finished(j) == Some("Complete")
            && let Some(done) = j.status.as_ref().and_then(|s| s.completion_time.clone())
            && status
                .last_successful_time
                .as_ref()
                .is_none_or(|t| t.0 < done.0)
        {
            status.last_successful_time = Some(done);
        }
    }

    // --- 5. history -----------------------------------------------------------------------
    let started = |j: &Job| {
        j.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref().map(|t| t.0))
            .or(j.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    for (how, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&Arc<Job>> = owned
            .iter()
            .copied()
            .filter(|j| finished(j) == Some(how) && j.metadata.deletion_timestamp.is_none())
            .collect();
        done.sort_by_key(|j| started(j));
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        for j in done.into_iter().take(extra) {
            plan.events.push(event(
                false,
                "SuccessfulDelete",
                format!(
                    "Deleted job {}",
                    j.metadata.name.as_deref().unwrap_or_default()
                ),
            ));
            plan.delete.push(j.clone());
        }
    }

    // --- 2.–4. schedule -----------------------------------------------------------------
    let suspended = spec.suspend == Some(true) || cj.metadata.deletion_timestamp.is_some();
    let tz = match zone_of(cj) {
        Ok(tz) => Some(tz),
        Err(e) => {
            plan.events.push(event(true, "UnknownTimeZone", e));
            None
        }
    };
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => Some(s),
        Err(e) => {
            plan.events.push(event(
                true,
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            ));
            None
        }
    };
    if let (false, Some(tz), Some(schedule)) = (suspended, tz, schedule) {
        let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
        let mut earliest = old.last_schedule_time.as_ref().map_or(created, |t| t.0);
        if let Some(sds) = spec.starting_deadline_seconds {
            let floor = now - jiff::SignedDuration::from_secs(sds);
            if floor > earliest {
                earliest = floor;
            }
        }
        let mut missed = 0usize;
        let mut latest = None;
        let mut t = earliest;
        while let Some(next) = schedule.next_after(t, &tz) {
            if next > now || missed > 500_000 {
                break;
            }
            missed += 1;
            latest = Some(next);
            t = next;
        }
        if missed > TOO_MANY_MISSED {
            plan.events.push(event(
                true,
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
            ));
        }
        plan.requeue = schedule.next_after(now, &tz).map(|n| until(now, n));
        if let Some(scheduled) = latest {
            let too_late = spec
                .starting_deadline_seconds
                .is_some_and(|s| scheduled + jiff::SignedDuration::from_secs(s) < now);
            let name = job_name(cj.metadata.name.as_deref().unwrap_or_default(), scheduled);
            let exists = jobs
                .iter()
                .any(|j| j.metadata.name.as_deref() == Some(&name))
                || active.iter().any(|r| r.name.as_deref() == Some(&name))
                || old
                    .last_schedule_time
                    .as_ref()
                    .is_some_and(|t| t.0 == scheduled);
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            if too_late {
                plan.events.push(event(
                    true,
                    "MissSchedule",
                    format!(
                        "Missed scheduled time to start a job: {}",
                        scheduled
                            .to_zoned(tz.clone())
                            .strftime("%a, %d %b %Y %H:%M:%S %z")
                    ),
                ));
            } else if exists {
            } else if policy == "Forbid" && !active.is_empty() {
                plan.events.push(event(
                    false,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
                ));
            } else {
                if policy == "Replace" {
                    for r in active.drain(..) {
                        if let Some(j) = owned.iter().find(|j| j.metadata.uid == r.uid) {
                            plan.events.push(event(
                                false,
                                "SuccessfulDelete",
                                format!("Deleted job {}", r.name.clone().unwrap_or_default()),
                            ));
                            plan.delete.push((*j).clone());
                        }
                    }
                }
                plan.create = Some(job_for(cj, scheduled, &tz));
                status.last_schedule_time = Some(Time(scheduled));
            }
        }
    }
    status.active = (!active.is_empty()).then_some(active);
    if status != old {
        plan.status = Some(status);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cron(spec: serde_json::Value, status: serde_json::Value) -> CronJob {
        let mut s = spec;
        s["jobTemplate"] = json!({"metadata": {"labels": {"team": "a"}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": []}}}});
        s["timeZone"] = json!("UTC");
        serde_json::from_value(
            json!({"metadata": {"name": "c", "namespace": "default", "uid": "uid-c",
            "creationTimestamp": "2026-12-04T09:59:30Z"}, "spec": s, "status": status}),
        )
        .unwrap()
    }

    fn job(name: &str, done: Option<&str>, start: &str) -> Arc<Job> {
        let conditions = done.map_or(json!([]), |d| json!([{"type": d, "status": "True"}]));
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default",
                "uid": format!("uid-{name}"), "ownerReferences": [{"apiVersion": "batch/v1",
                "kind": "CronJob", "name": "c", "uid": "uid-c", "controller": true}]},
                "status": {"startTime": start, "conditions": conditions,
                    "completionTime": if done == Some("Complete") { json!(start) } else { json!(null) }}}))
            .unwrap(),
        )
    }

    #[test]
    fn a_due_time_creates_its_job_once() {
        let cj = cron(json!({"schedule": "* * * * *"}), json!({}));
        let p = plan(&cj, &[], at("2026-12-04T10:00:10Z"));
        let j = p.create.expect("a job");
        let minutes = at("2026-12-04T10:00:00Z").as_second() / 60;
        assert_eq!(
            j.metadata.name.as_deref(),
            Some(format!("c-{minutes}").as_str())
        );
        assert_eq!(
            j.metadata.annotations.unwrap()[SCHEDULED_ANNOTATION],
            "2026-12-04T10:00:00+00:00"
        );
        assert_eq!(j.metadata.labels.unwrap()["team"], "a");
        assert_eq!(
            p.status.unwrap().last_schedule_time,
            Some(Time(at("2026-12-04T10:00:00Z")))
        );
        assert_eq!(p.requeue, Some(Duration::from_secs(50)));
        // Recorded: nothing more until the next minute.
        let cj = cron(
            json!({"schedule": "* * * * *"}),
            json!({"lastScheduleTime": "2026-12-04T10:00:00Z"}),
        );
        assert!(plan(&cj, &[], at("2026-12-04T10:00:40Z")).create.is_none());
    }

    #[test]
    fn after_downtime_only_the_latest_missed_time_runs() {
        let cj = cron(
            json!({"schedule": "* * * * *"}),
            json!({"lastScheduleTime": "2026-12-04T07:00:00Z"}),
        );
        let p = plan(&cj, &[], at("2026-12-04T10:00:30Z"));
        let j = p.create.unwrap();
        let minutes = at("2026-12-04T10:00:00Z").as_second() / 60;
        assert_eq!(j.metadata.name.unwrap(), format!("c-{minutes}"));
        assert!(p.events.iter().any(|e| e.reason == "TooManyMissedTimes"));
        // Past its starting deadline: missed, not run.
        let cj = cron(
            json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 10}),
            json!({"lastScheduleTime": "2026-12-04T09:00:00Z"}),
        );
        let p = plan(&cj, &[], at("2026-12-04T10:00:30Z"));
        assert!(p.create.is_none());
    }

    #[test]
    fn concurrency_policies() {
        let running = job("c-1", None, "2026-12-04T09:59:00Z");
        let status = json!({"active": [{"kind": "Job", "name": "c-1", "uid": "uid-c-1"}],
            "lastScheduleTime": "2026-12-04T09:59:00Z"});
        let now = at("2026-12-04T10:00:05Z");
        let allow = plan(
            &cron(json!({"schedule": "* * * * *"}), status.clone()),
            std::slice::from_ref(&running),
            now,
        );
        assert!(allow.create.is_some() && allow.delete.is_empty());
        assert_eq!(
            allow.status.unwrap().active.unwrap().len(),
            1,
            "the new one is added once created"
        );
        let forbid = plan(
            &cron(
                json!({"schedule": "* * * * *", "concurrencyPolicy": "Forbid"}),
                status.clone(),
            ),
            std::slice::from_ref(&running),
            now,
        );
        assert!(forbid.create.is_none());
        assert!(forbid.events.iter().any(|e| e.reason == "JobAlreadyActive"));
        let replace = plan(
            &cron(
                json!({"schedule": "* * * * *", "concurrencyPolicy": "Replace"}),
                status,
            ),
            std::slice::from_ref(&running),
            now,
        );
        assert!(replace.create.is_some());
        assert!(Arc::ptr_eq(&replace.delete[0], &running));
        assert_eq!(replace.status.unwrap().active, None);
    }

    #[test]
    fn finished_jobs_leave_active_and_old_ones_go() {
        let jobs = [
            job("c-1", Some("Complete"), "2026-12-04T09:50:00Z"),
            job("c-2", Some("Complete"), "2026-12-04T09:51:00Z"),
            job("c-3", Some("Failed"), "2026-12-04T09:52:00Z"),
            job("c-4", Some("Failed"), "2026-12-04T09:53:00Z"),
            job("c-5", Some("Complete"), "2026-12-04T09:54:00Z"),
        ];
        let cj = cron(
            json!({"schedule": "0 0 1 1 *", "successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 1}),
            json!({"active": [{"kind": "Job", "name": "c-5", "uid": "uid-c-5"}]}),
        );
        let p = plan(&cj, &jobs, at("2026-12-04T10:00:00Z"));
        let deleted: Vec<&str> = p
            .delete
            .iter()
            .map(|j| j.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(deleted, ["c-1", "c-3"]);
        let st = p.status.unwrap();
        assert_eq!(st.active, None);
        assert_eq!(
            st.last_successful_time,
            Some(Time(at("2026-12-04T09:54:00Z")))
        );
        assert!(p.events.iter().any(|e| e.reason == "SawCompletedJob"
            && e.message == "Saw completed job: c-5, status: Complete"));
    }

    #[test]
    fn suspended_or_broken_cron_jobs_start_nothing() {
        let suspended = cron(json!({"schedule": "* * * * *", "suspend": true}), json!({}));
        assert!(
            plan(&suspended, &[], at("2026-12-04T10:05:00Z"))
                .create
                .is_none()
        );
        let mut zone = cron(json!({"schedule": "* * * * *"}), json!({}));
        zone.spec.as_mut().unwrap().time_zone = Some("Mars/Olympus".into());
        let p = plan(&zone, &[], at("2026-12-04T10:05:00Z"));
        assert!(p.create.is_none());
        assert!(
            p.events
                .iter()
                .any(|e| e.reason == "UnknownTimeZone" && e.warning)
        );
    }
}
