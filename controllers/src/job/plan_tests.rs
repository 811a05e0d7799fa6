//! The Job controller's decisions, case by case (after Kubernetes' job_controller_test.go).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodSpec, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::json;

use super::*;
use crate::podutil::fixtures::{at, pod};

fn job(spec: serde_json::Value) -> Job {
    let mut s: JobSpec = serde_json::from_value(spec).unwrap();
    s.template = PodTemplateSpec {
        metadata: None,
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            ..Default::default()
        }),
    };
    s.backoff_limit.get_or_insert(6);
    s.parallelism.get_or_insert(1);
    Job {
        metadata: ObjectMeta {
            name: Some("j".into()),
            namespace: Some("default".into()),
            uid: Some("uid-j".into()),
            ..Default::default()
        },
        spec: Some(s),
        status: None,
    }
}

fn with_status(mut j: Job, status: serde_json::Value) -> Job {
    j.status = Some(serde_json::from_value(status).unwrap());
    j
}

/// A pod of the Job: tracked, with an optional index.
fn tracked(name: &str, index: Option<i32>) -> crate::podutil::fixtures::PodBuilder {
    let mut b = pod(name).owned_by("Job", "j");
    b.0.metadata.finalizers = Some(vec![TRACKING_FINALIZER.into()]);
    if let Some(i) = index {
        b.0.metadata.annotations = Some([(INDEX_ANNOTATION.to_string(), i.to_string())].into());
    }
    b
}

fn exited(b: crate::podutil::fixtures::PodBuilder, code: i32, finished: i64) -> Arc<Pod> {
    let mut p = b.phase(if code == 0 { "Succeeded" } else { "Failed" }).0;
    p.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
        name: "main".into(),
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                finished_at: Some(Time(at(finished))),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    Arc::new(p)
}

fn settings() -> Settings {
    Settings {
        backoff_base: Duration::from_secs(10),
        backoff_max: Duration::from_secs(600),
    }
}

fn conditions(s: &JobStatus) -> Vec<(String, String)> {
    s.conditions
        .iter()
        .flatten()
        .map(|c| (c.type_.clone(), c.reason.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn a_new_job_starts_parallelism_pods_and_its_clock() {
    let j = job(json!({"completions": 5, "parallelism": 2}));
    let p = plan(&j, &[], at(0), &settings());
    assert_eq!(p.create.len(), 2);
    let st = p.status.unwrap();
    assert_eq!(st.start_time, Some(Time(at(0))));
    assert_eq!(st.active, Some(0));
    // Near the end, no more than what is left.
    let j = with_status(
        job(json!({"completions": 5, "parallelism": 2})),
        json!({"succeeded": 4}),
    );
    assert_eq!(plan(&j, &[], at(0), &settings()).create.len(), 1);
}

#[test]
fn a_finished_pod_is_recorded_before_its_finalizer_goes_and_counted_after() {
    let j = job(json!({"completions": 2}));
    let done = exited(tracked("a", None), 0, 5);
    let p = plan(&j, std::slice::from_ref(&done), at(10), &settings());
    let st = p.status.clone().unwrap();
    assert_eq!(st.succeeded, Some(0));
    assert_eq!(
        st.uncounted_terminated_pods.as_ref().unwrap().succeeded,
        Some(vec!["uid-a".to_string()])
    );
    assert_eq!(p.remove_finalizers.len(), 1);
    // The second pod is created at once (one success of two).
    assert_eq!(p.create.len(), 1);
    // After the finalizer went: counted, once.
    let mut st2 = st.clone();
    assert!(count_released(&mut st2, &[released(&done)], false));
    assert_eq!(st2.succeeded, Some(1));
    assert_eq!(
        st2.uncounted_terminated_pods.as_ref().unwrap().succeeded,
        None
    );
    assert!(!count_released(&mut st2, &[released(&done)], false));
    assert_eq!(st2.succeeded, Some(1));
}

#[test]
fn after_a_crash_between_the_writes_released_pods_are_counted_from_the_status() {
    let j = with_status(
        job(json!({"completions": 1})),
        json!({"succeeded": 0, "startTime": "2023-11-14T22:13:20Z",
            "uncountedTerminatedPods": {"succeeded": ["uid-a"]}}),
    );
    // The pod's finalizer is gone (and so, here, is the pod).
    let p = plan(&j, &[], at(10), &settings());
    let st = p.status.unwrap();
    assert_eq!(st.succeeded, Some(1));
    assert!(
        st.uncounted_terminated_pods
            .as_ref()
            .unwrap()
            .succeeded
            .is_none()
    );
    // One success of one: the criteria are met, and with nothing left it completes.
    assert_eq!(
        conditions(&st),
        vec![
            ("SuccessCriteriaMet".into(), "CompletionsReached".into()),
            ("Complete".into(), "CompletionsReached".into())
        ]
    );
    assert!(st.completion_time.is_some());
    assert!(p.create.is_empty());
}

#[test]
fn completion_waits_until_every_outcome_is_counted() {
    let j = job(json!({"completions": 1}));
    let done = exited(tracked("a", None), 0, 5);
    let p = plan(&j, &[done], at(10), &settings());
    let st = p.status.unwrap();
    assert_eq!(
        conditions(&st),
        vec![("SuccessCriteriaMet".into(), "CompletionsReached".into())]
    );
    assert!(p.events.is_empty());
}

#[test]
fn failures_past_the_backoff_limit_fail_the_job_and_stop_the_rest() {
    let j = with_status(
        job(json!({"completions": 3, "parallelism": 2, "backoffLimit": 1})),
        json!({"failed": 1, "startTime": "2023-11-14T22:13:20Z"}),
    );
    let failed = exited(tracked("a", None), 1, 5);
    let running = tracked("b", None).running().build();
    let p = plan(&j, &[failed, running.clone()], at(10), &settings());
    let st = p.status.unwrap();
    assert_eq!(
        conditions(&st),
        vec![("FailureTarget".into(), "BackoffLimitExceeded".into())]
    );
    assert_eq!(p.delete.len(), 1);
    assert!(Arc::ptr_eq(&p.delete[0], &running));
    assert!(p.create.is_empty());
    // Once all is counted and nothing runs: Failed, with a warning event.
    let j = with_status(
        job(json!({"completions": 3, "parallelism": 2, "backoffLimit": 1})),
        json!({"failed": 2, "startTime": "2023-11-14T22:13:20Z",
            "conditions": [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit"}]}),
    );
    let p = plan(&j, &[], at(20), &settings());
    let st = p.status.unwrap();
    assert!(conditions(&st).contains(&("Failed".into(), "BackoffLimitExceeded".into())));
    assert_eq!(p.events[0].reason, "BackoffLimitExceeded");
    assert!(p.events[0].warning);
    assert!(st.completion_time.is_none());
}

#[test]
fn replacements_back_off_exponentially_from_the_last_failure() {
    let j = with_status(
        job(json!({"completions": 1, "backoffLimit": 6})),
        json!({"failed": 2, "startTime": "2023-11-14T22:13:20Z"}),
    );
    let pods = [
        exited(tracked("a", None), 1, 0),
        exited(tracked("b", None), 1, 30),
    ];
    // Two failures since the last success: 20 s after the last one (at 30).
    let p = plan(&j, &pods, at(40), &settings());
    assert!(p.create.is_empty());
    assert_eq!(p.requeue, Some(Duration::from_secs(10)));
    let p = plan(&j, &pods, at(50), &settings());
    assert_eq!(p.create.len(), 1);
}

#[test]
fn the_failure_policy_decides_what_a_failure_means() {
    let spec = json!({"completions": 1, "backoffLimit": 0, "podReplacementPolicy": "Failed",
    "podFailurePolicy": {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
    ]}});
    // Exit 42: the Job fails at once, naming the rule.
    let p = plan(
        &job(spec.clone()),
        &[exited(tracked("a", None), 42, 5)],
        at(10),
        &settings(),
    );
    let st = p.status.unwrap();
    let c = &st.conditions.as_ref().unwrap()[0];
    assert_eq!(c.type_, "FailureTarget");
    assert_eq!(c.reason.as_deref(), Some("PodFailurePolicy"));
    assert_eq!(
        c.message.as_deref(),
        Some(
            "Container main for pod default/a failed with exit code 42 matching FailJob rule at index 1"
        )
    );
    // A disruption is ignored: not counted, the finalizer released, a replacement made.
    let mut disrupted = exited(tracked("b", None), 137, 5);
    Arc::make_mut(&mut disrupted)
        .status
        .as_mut()
        .unwrap()
        .conditions = Some(vec![k8s_openapi::api::core::v1::PodCondition {
        type_: "DisruptionTarget".into(),
        status: "True".into(),
        ..Default::default()
    }]);
    let p = plan(&job(spec.clone()), &[disrupted], at(10), &settings());
    let st = p.status.unwrap();
    assert_eq!(
        st.uncounted_terminated_pods,
        Some(UncountedTerminatedPods::default())
    );
    assert_eq!(p.remove_finalizers.len(), 1);
    assert_eq!(p.create.len(), 1);
    assert!(conditions(&st).is_empty());
    // Exit 1 matches no rule: counted, and with backoffLimit 0 that fails the Job.
    let p = plan(
        &job(spec),
        &[exited(tracked("c", None), 1, 5)],
        at(10),
        &settings(),
    );
    assert!(
        conditions(&p.status.unwrap())
            .contains(&("FailureTarget".into(), "BackoffLimitExceeded".into()))
    );
}

#[test]
fn a_terminating_pod_is_replaced_only_when_the_policy_allows() {
    let deleting = tracked("a", None).running().deleting().build();
    // TerminatingOrFailed (the default): counted as failed, replaced now.
    let j = job(json!({"completions": 1, "podReplacementPolicy": "TerminatingOrFailed"}));
    let p = plan(&j, std::slice::from_ref(&deleting), at(10), &settings());
    assert_eq!(p.create.len(), 1);
    let st = p.status.unwrap();
    assert_eq!(
        st.uncounted_terminated_pods.unwrap().failed,
        Some(vec!["uid-a".to_string()])
    );
    // Failed: waits until it is terminal; status.terminating says so.
    let j = job(json!({"completions": 1, "podReplacementPolicy": "Failed"}));
    let p = plan(&j, &[deleting], at(10), &settings());
    assert!(p.create.is_empty());
    assert_eq!(p.status.unwrap().terminating, Some(1));
}

#[test]
fn indexed_jobs_run_each_missing_index_once() {
    let j = with_status(
        job(json!({"completions": 4, "parallelism": 3, "completionMode": "Indexed"})),
        json!({"completedIndexes": "0", "succeeded": 1, "startTime": "2023-11-14T22:13:20Z"}),
    );
    let pods = [
        tracked("one", Some(1)).running().build(),
        tracked("one-again", Some(1)).running().created(5).build(),
    ];
    let p = plan(&j, &pods, at(10), &settings());
    // Index 1 twice: one goes. Indexes 2 and 3 are started.
    assert_eq!(p.delete.len(), 1);
    let created: Vec<Option<i32>> = p.create.iter().map(|c| c.index).collect();
    assert_eq!(created, vec![Some(2), Some(3)]);
    // Every index done: complete.
    let j = with_status(
        job(json!({"completions": 2, "completionMode": "Indexed"})),
        json!({"completedIndexes": "0-1", "succeeded": 2, "startTime": "2023-11-14T22:13:20Z"}),
    );
    let st = plan(&j, &[], at(10), &settings()).status.unwrap();
    assert!(conditions(&st).contains(&("Complete".into(), "CompletionsReached".into())));
}

#[test]
fn an_index_fails_alone_with_a_per_index_limit() {
    let spec = json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed",
        "backoffLimitPerIndex": 1, "maxFailedIndexes": 1, "backoffLimit": 2147483647});
    let mut second = tracked("b", Some(1));
    second
        .0
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(INDEX_FAILURE_COUNT.into(), "1".into());
    let pods = [
        exited(tracked("a", Some(0)), 1, 5),
        exited(second, 1, 5),
        tracked("c", Some(2)).running().build(),
    ];
    let j = with_status(
        job(spec.clone()),
        json!({"startTime": "2023-11-14T22:13:20Z"}),
    );
    let p = plan(&j, &pods, at(100), &settings());
    let st = p.status.unwrap();
    // Index 1 failed twice (its limit is 1); index 0 once, so it is retried with its count.
    assert_eq!(st.failed_indexes.as_deref(), Some("1"));
    assert_eq!(
        p.create,
        vec![NewPod {
            index: Some(0),
            failures: 1,
            ignored: 0
        }]
    );
    assert!(conditions(&st).is_empty());
    // A second failed index is one more than maxFailedIndexes allows.
    let mut third = tracked("d", Some(0));
    third
        .0
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(INDEX_FAILURE_COUNT.into(), "1".into());
    let pods = [pods[1].clone(), exited(third, 1, 50), pods[2].clone()];
    let st = plan(&j, &pods, at(100), &settings()).status.unwrap();
    assert_eq!(st.failed_indexes.as_deref(), Some("0-1"));
    assert!(conditions(&st).contains(&("FailureTarget".into(), "MaxFailedIndexesExceeded".into())));
}

#[test]
fn a_deadline_fails_the_job_and_a_running_one_looks_again_then() {
    let j = with_status(
        job(json!({"completions": 1, "activeDeadlineSeconds": 60})),
        json!({"startTime": Time(at(0))}),
    );
    let running = [tracked("a", None).running().build()];
    let p = plan(&j, &running, at(30), &settings());
    assert_eq!(p.requeue, Some(Duration::from_secs(30)));
    let p = plan(&j, &running, at(61), &settings());
    let st = p.status.unwrap();
    assert!(conditions(&st).contains(&("FailureTarget".into(), "DeadlineExceeded".into())));
    assert_eq!(p.delete.len(), 1);
}

#[test]
fn suspending_deletes_the_pods_and_resuming_restarts_the_clock() {
    let j = with_status(
        job(json!({"completions": 2, "suspend": true})),
        json!({"startTime": Time(at(0))}),
    );
    let running = [tracked("a", None).running().build()];
    let p = plan(&j, &running, at(30), &settings());
    assert_eq!(p.delete.len(), 1);
    let st = p.status.unwrap();
    assert_eq!(
        conditions(&st),
        vec![("Suspended".into(), "JobSuspended".into())]
    );
    assert_eq!(p.events[0].reason, "Suspended");
    let j = with_status(
        job(json!({"completions": 2, "parallelism": 2, "suspend": false})),
        serde_json::to_value(&st).unwrap(),
    );
    let p = plan(&j, &[], at(90), &settings());
    let st = p.status.unwrap();
    assert_eq!(st.start_time, Some(Time(at(90))));
    assert_eq!(st.conditions.as_ref().unwrap()[0].status, "False");
    assert_eq!(p.create.len(), 2);
}

#[test]
fn a_work_queue_completes_when_one_succeeded_and_none_runs() {
    let j = job(json!({"parallelism": 2}));
    let pods = [
        exited(tracked("a", None), 0, 5),
        tracked("b", None).running().build(),
    ];
    let p = plan(&j, &pods, at(10), &settings());
    assert!(p.create.is_empty());
    assert!(conditions(&p.status.unwrap()).is_empty());
}

#[test]
fn restarts_count_against_the_limit_with_on_failure() {
    let mut j = job(json!({"completions": 1, "backoffLimit": 2}));
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = Some("OnFailure".into());
    let mut p = tracked("a", None).running().0;
    p.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
        name: "main".into(),
        restart_count: 2,
        ..Default::default()
    }]);
    let out = plan(&j, &[Arc::new(p)], at(10), &settings());
    assert!(
        conditions(&out.status.unwrap())
            .contains(&("FailureTarget".into(), "BackoffLimitExceeded".into()))
    );
}

#[test]
fn index_ranges_round_trip() {
    let set = parse_indexes("0-2,5,7-8");
    assert_eq!(
        set.iter().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 5, 7, 8]
    );
    assert_eq!(format_indexes(&set), "0-2,5,7-8");
    assert_eq!(format_indexes(&parse_indexes("")), "");
}

#[test]
fn a_success_policy_completes_an_indexed_job_early_and_stops_the_rest() {
    let spec = json!({"completions": 5, "parallelism": 5, "completionMode": "Indexed",
        "successPolicy": {"rules": [{"succeededIndexes": "0", "succeededCount": 1},
            {"succeededCount": 3}]}});
    let running = |name: &str, i: i32| tracked(name, Some(i)).running().build();
    // Index 1 and 2 done: neither rule holds yet.
    let j = with_status(
        job(spec.clone()),
        json!({"completedIndexes": "1-2", "succeeded": 2, "startTime": "2023-11-14T22:13:20Z"}),
    );
    let pods = [running("a", 0), running("b", 3), running("c", 4)];
    let p = plan(&j, &pods, at(10), &settings());
    assert!(p.delete.is_empty());
    assert!(
        !conditions(p.status.as_ref().unwrap())
            .iter()
            .any(|c| c.0 == "SuccessCriteriaMet")
    );
    // Index 0 done: the first rule holds; the rest are stopped, then the Job completes.
    let j = with_status(
        job(spec.clone()),
        json!({"completedIndexes": "0-2", "succeeded": 3, "startTime": "2023-11-14T22:13:20Z"}),
    );
    let p = plan(&j, &pods[1..], at(10), &settings());
    assert_eq!(
        p.delete.len(),
        2,
        "the running indexes are no longer wanted"
    );
    let st = p.status.unwrap();
    let met = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "SuccessCriteriaMet")
        .unwrap();
    assert_eq!(met.reason.as_deref(), Some("SuccessPolicy"));
    assert_eq!(met.message.as_deref(), Some("Matched rules at index 0"));
    let settled = with_status(job(spec), serde_json::to_value(&st).unwrap());
    let st = plan(&settled, &[], at(11), &settings()).status.unwrap();
    assert!(conditions(&st).contains(&("Complete".into(), "SuccessPolicy".into())));
    // The count rule alone: any three indexes.
    let count_only = job(json!({"completions": 5, "completionMode": "Indexed",
        "successPolicy": {"rules": [{"succeededCount": 3}]}}));
    assert_eq!(success_rule(&count_only, &[1, 3].into()), None);
    assert_eq!(success_rule(&count_only, &[1, 3, 4].into()), Some(0));
}
