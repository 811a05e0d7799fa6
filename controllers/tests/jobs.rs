//! The Job, CronJob and TTL-after-finished controllers against a real in-process API server,
//! with simulated nodes playing the kubelet (pods run for a while and exit with the code their
//! annotations ask for). The CronJob and TTL controllers read a clock running 60× faster than
//! real time, so "every minute" is every second.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use capstan_controllers::Manager;
use capstan_testkit::sim::{self, SimConfig, SimNodes};
use capstan_testkit::{TestCluster, until};
use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    /// Stopped first, before the cluster it talks to (fields drop in order).
    _manager: capstan_testkit::Background,
    c: TestCluster,
    _sim: SimNodes,
}

async fn cluster() -> Cluster {
    let c = TestCluster::start().await;
    let sim = SimNodes::start(c.client.clone(), SimConfig::default())
        .await
        .unwrap();
    let config = capstan_controllers::Config {
        job: capstan_controllers::job::plan::Settings {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        },
        clock: capstan_controllers::runtime::Clock::fast(jiff::Timestamp::now(), 60),
        ..Default::default()
    };
    let m = Manager::with_config(c.client.clone(), &prometheus::Registry::new(), config);
    let manager = common::run(
        m,
        &[
            "job",
            "cronjob",
            "ttlafterfinished",
            "scheduler",
            "garbagecollector",
        ],
    );
    Cluster {
        c,
        _sim: sim,
        _manager: manager,
    }
}

/// A Job whose pods run `run_ms` and exit with `code` (index `fail_indexes` exit 1).
fn job(name: &str, spec: Value, run_ms: u64, code: i32, fail_indexes: &str) -> Job {
    let mut s = spec;
    s["template"] = json!({
        "metadata": {"annotations": {
            sim::RUN_MS: run_ms.to_string(), sim::EXIT_CODE: code.to_string(),
            sim::FAIL_INDEXES: fail_indexes}},
        "spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox",
                "resources": {"requests": {"cpu": "10m"}}}]}});
    serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name}, "spec": s}))
    .unwrap()
}

fn condition(j: &Job, ty: &str) -> Option<String> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty && c.status == "True")
        .map(|c| c.reason.clone().unwrap_or_default())
}

async fn finished(api: &Api<Job>, name: &str) -> Job {
    until(WAIT, "the Job finished", || async {
        let j = api.get(name).await.unwrap();
        condition(&j, "Complete").is_some() || condition(&j, "Failed").is_some()
    })
    .await;
    api.get(name).await.unwrap()
}

async fn pods_of(c: &TestCluster, job: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    api.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .unwrap()
        .items
}

fn tracked(p: &Pod) -> bool {
    p.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == "batch.kubernetes.io/job-tracking")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_completions_two_at_a_time() {
    let k = cluster().await;
    let pods: Api<Pod> = Api::namespaced(k.c.client.clone(), "default");
    // The most pods running at once, from a watch.
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = most.clone();
    let watch = tokio::spawn(async move {
        let mut running = BTreeSet::new();
        let cfg = watcher::Config::default().labels("batch.kubernetes.io/job-name=five");
        let mut events = watcher(pods, cfg).boxed();
        while let Some(Ok(e)) = events.next().await {
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = e {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
                if p.metadata.deletion_timestamp.is_none()
                    && matches!(phase.as_str(), "Pending" | "Running" | "")
                {
                    running.insert(uid);
                } else {
                    running.remove(&uid);
                }
                seen.fetch_max(running.len(), std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let jobs: Api<Job> = Api::namespaced(k.c.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job(
            "five",
            json!({"completions": 5, "parallelism": 2}),
            150,
            0,
            "",
        ),
    )
    .await
    .unwrap();
    let j = finished(&jobs, "five").await;
    watch.abort();
    assert_eq!(
        condition(&j, "Complete").as_deref(),
        Some("CompletionsReached"),
        "{j:?}"
    );
    assert_eq!(
        condition(&j, "SuccessCriteriaMet").as_deref(),
        Some("CompletionsReached")
    );
    let st = j.status.clone().unwrap();
    assert_eq!(
        (st.succeeded, st.failed, st.active),
        (Some(5), Some(0), Some(0))
    );
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    assert_eq!(
        st.uncounted_terminated_pods.unwrap_or_default(),
        Default::default()
    );
    let pods = pods_of(&k.c, "five").await;
    assert_eq!(pods.len(), 5, "one pod per completion, no more");
    assert!(pods.iter().all(|p| !tracked(p)), "every finalizer released");
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&most),
        "at most parallelism pods at once: {most}"
    );
    // The Job's events say what happened.
    let events: Api<Event> = Api::namespaced(k.c.client.clone(), "default");
    until(WAIT, "the Completed event", || {
        let events = events.clone();
        async move {
            events
                .list(&ListParams::default().fields("involvedObject.name=five"))
                .await
                .unwrap()
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("Completed"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_stops_at_its_backoff_limit() {
    let k = cluster().await;
    let jobs: Api<Job> = Api::namespaced(k.c.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job("failing", json!({"backoffLimit": 2}), 50, 3, ""),
    )
    .await
    .unwrap();
    let j = finished(&jobs, "failing").await;
    assert_eq!(
        condition(&j, "Failed").as_deref(),
        Some("BackoffLimitExceeded")
    );
    let st = j.status.unwrap();
    assert_eq!((st.failed, st.succeeded), (Some(3), Some(0)));
    let pods = pods_of(&k.c, "failing").await;
    assert_eq!(
        pods.len(),
        3,
        "backoffLimit 2: the first try and two retries"
    );
    assert!(pods.iter().all(|p| !tracked(p)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexed_job_with_a_per_index_limit_fails_only_the_bad_index() {
    let k = cluster().await;
    let jobs: Api<Job> = Api::namespaced(k.c.client.clone(), "default");
    let spec = json!({"completions": 4, "parallelism": 4, "completionMode": "Indexed",
        "backoffLimitPerIndex": 1});
    jobs.create(&PostParams::default(), &job("indexed", spec, 50, 0, "2"))
        .await
        .unwrap();
    let j = finished(&jobs, "indexed").await;
    assert_eq!(
        condition(&j, "Failed").as_deref(),
        Some("FailedIndexes"),
        "{j:?}"
    );
    let st = j.status.unwrap();
    assert_eq!(st.completed_indexes.as_deref(), Some("0-1,3"));
    assert_eq!(st.failed_indexes.as_deref(), Some("2"));
    assert_eq!((st.succeeded, st.failed), (Some(3), Some(2)));
    let pods = pods_of(&k.c, "indexed").await;
    let index = |p: &Pod| {
        p.metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"].clone()
    };
    assert_eq!(
        pods.iter().filter(|p| index(p) == "2").count(),
        2,
        "index 2 tried twice"
    );
    for p in &pods {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(
            spec.hostname.as_deref(),
            Some(format!("indexed-{}", index(p)).as_str())
        );
        let env = spec.containers[0].env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX"));
        assert_eq!(
            p.metadata.labels.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"],
            index(p)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_resume_and_delete() {
    let k = cluster().await;
    let jobs: Api<Job> = Api::namespaced(k.c.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job(
            "long",
            json!({"completions": 2, "parallelism": 2}),
            600_000,
            0,
            "",
        ),
    )
    .await
    .unwrap();
    let running = |n: usize| {
        let c = k.c.client.clone();
        async move {
            let api: Api<Pod> = Api::namespaced(c, "default");
            let pods = api
                .list(&ListParams::default().labels("batch.kubernetes.io/job-name=long"))
                .await
                .unwrap()
                .items;
            pods.iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count()
                == n
                && pods.len() == n
        }
    };
    until(WAIT, "two pods", || running(2)).await;
    let suspend = |on: bool| {
        let jobs = jobs.clone();
        async move {
            jobs.patch(
                "long",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"suspend": on}})),
            )
            .await
            .unwrap();
        }
    };
    suspend(true).await;
    until(WAIT, "no pods while suspended", || running(0)).await;
    let j = jobs.get("long").await.unwrap();
    assert_eq!(condition(&j, "Suspended").as_deref(), Some("JobSuspended"));
    suspend(false).await;
    until(WAIT, "two pods again", || running(2)).await;
    jobs.delete("long", &DeleteParams::background())
        .await
        .unwrap();
    until(WAIT, "the Job and its pods gone", || async {
        jobs.get_opt("long").await.unwrap().is_none() && running(0).await
    })
    .await;
}

fn cron_job(name: &str, policy: &str, run_ms: u64, keep: i32) -> CronJob {
    let template = serde_json::to_value(job("x", json!({}), run_ms, 0, "")).unwrap();
    serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {"schedule": "* * * * *", "timeZone": "Etc/UTC", "concurrencyPolicy": policy,
            "successfulJobsHistoryLimit": keep,
            "jobTemplate": {"metadata": {"labels": {"cron": name}}, "spec": template["spec"]}}}))
    .unwrap()
}

/// What [`watch_jobs`] saw: every Job name, and the most unfinished at once.
type Seen = std::sync::Arc<std::sync::Mutex<(BTreeSet<String>, usize)>>;

/// Watches the CronJob's Jobs: how many were ever made, and the most unfinished at once.
fn watch_jobs(c: &TestCluster, cron: &str) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new((BTreeSet::new(), 0usize)));
    let out = seen.clone();
    let api: Api<Job> = Api::namespaced(c.client.clone(), "default");
    let cfg = watcher::Config::default().labels(&format!("cron={cron}"));
    let task = tokio::spawn(async move {
        let mut running = BTreeSet::new();
        let mut events = watcher(api, cfg).boxed();
        while let Some(Ok(e)) = events.next().await {
            let (watcher::Event::Apply(j) | watcher::Event::InitApply(j)) = e else {
                continue;
            };
            let name = j.metadata.name.clone().unwrap_or_default();
            let done = condition(&j, "Complete").is_some() || condition(&j, "Failed").is_some();
            if done || j.metadata.deletion_timestamp.is_some() {
                running.remove(&name);
            } else {
                running.insert(name.clone());
            }
            let mut s = out.lock().unwrap();
            s.0.insert(name);
            s.1 = s.1.max(running.len());
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_job_runs_every_minute_and_keeps_its_history_short() {
    let k = cluster().await;
    let crons: Api<CronJob> = Api::namespaced(k.c.client.clone(), "default");
    let (seen, watch) = watch_jobs(&k.c, "often");
    crons
        .create(&PostParams::default(), &cron_job("often", "Allow", 100, 2))
        .await
        .unwrap();
    until(WAIT, "three scheduled runs", || async {
        seen.lock().unwrap().0.len() >= 3
    })
    .await;
    until(WAIT, "a success recorded and old Jobs deleted", || async {
        let cj = crons.get("often").await.unwrap();
        let jobs: Api<Job> = Api::namespaced(k.c.client.clone(), "default");
        let left = jobs
            .list(&ListParams::default().labels("cron=often"))
            .await
            .unwrap()
            .items;
        let finished = left
            .iter()
            .filter(|j| {
                j.metadata.deletion_timestamp.is_none() && condition(j, "Complete").is_some()
            })
            .count();
        cj.status.and_then(|s| s.last_successful_time).is_some() && finished <= 2
    })
    .await;
    watch.abort();
    let jobs: Api<Job> = Api::namespaced(k.c.client.clone(), "default");
    for j in jobs
        .list(&ListParams::default().labels("cron=often"))
        .await
        .unwrap()
        .items
    {
        let name = j.metadata.name.clone().unwrap_or_default();
        let minutes: i64 = name.trim_start_matches("often-").parse().unwrap();
        let stamp = &j.metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/cronjob-scheduled-timestamp"];
        let scheduled: jiff::Timestamp = stamp.parse().unwrap();
        assert_eq!(scheduled.as_second(), minutes * 60, "{name} {stamp}");
        assert_eq!(j.metadata.owner_references.unwrap()[0].kind, "CronJob");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_never_runs_two_at_once() {
    let k = cluster().await;
    let crons: Api<CronJob> = Api::namespaced(k.c.client.clone(), "default");
    let (seen, watch) = watch_jobs(&k.c, "alone");
    // Each run takes 2.5 s: two and a half "minutes" at 60×.
    crons
        .create(
            &PostParams::default(),
            &cron_job("alone", "Forbid", 2_500, 3),
        )
        .await
        .unwrap();
    until(WAIT, "two runs, one after the other", || async {
        seen.lock().unwrap().0.len() >= 2
    })
    .await;
    watch.abort();
    assert_eq!(
        seen.lock().unwrap().1,
        1,
        "never two unfinished Jobs at once"
    );
    let events: Api<Event> = Api::namespaced(k.c.client.clone(), "default");
    let skipped = events
        .list(&ListParams::default().fields("involvedObject.name=alone"))
        .await
        .unwrap()
        .items
        .iter()
        .any(|e| e.reason.as_deref() == Some("JobAlreadyActive"));
    assert!(skipped, "a run was skipped while the previous one ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_goes_after_its_ttl() {
    let k = cluster().await;
    let jobs: Api<Job> = Api::namespaced(k.c.client.clone(), "default");
    // 60 s of TTL is one second at 60×.
    jobs.create(
        &PostParams::default(),
        &job("brief", json!({"ttlSecondsAfterFinished": 60}), 50, 0, ""),
    )
    .await
    .unwrap();
    let j = finished(&jobs, "brief").await;
    assert!(condition(&j, "Complete").is_some());
    until(WAIT, "the Job and its pods deleted", || async {
        jobs.get_opt("brief").await.unwrap().is_none() && pods_of(&k.c, "brief").await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_policy_completes_an_indexed_job_early() {
    let k = cluster().await;
    let jobs: Api<Job> = Api::namespaced(k.c.client.clone(), "default");
    // One index at a time; the Job needs only indexes 0 and 1.
    let spec = json!({"completions": 5, "parallelism": 1, "completionMode": "Indexed",
        "successPolicy": {"rules": [{"succeededIndexes": "0-1"}]}});
    jobs.create(&PostParams::default(), &job("leader", spec, 100, 0, ""))
        .await
        .unwrap();
    let j = finished(&jobs, "leader").await;
    assert_eq!(condition(&j, "Complete").as_deref(), Some("SuccessPolicy"));
    assert_eq!(
        condition(&j, "SuccessCriteriaMet").as_deref(),
        Some("SuccessPolicy")
    );
    let st = j.status.unwrap();
    assert_eq!(st.completed_indexes.as_deref(), Some("0-1"));
    let started: BTreeSet<String> = pods_of(&k.c, "leader")
        .await
        .iter()
        .map(|p| {
            p.metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"]
                .clone()
        })
        .collect();
    assert!(
        !started.contains("3") && !started.contains("4"),
        "indexes past the policy never ran: {started:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_managed_by_another_controller_is_left_alone() {
    let k = cluster().await;
    let jobs: Api<Job> = Api::namespaced(k.c.client.clone(), "default");
    let spec = json!({"completions": 1, "managedBy": "example.com/other-controller"});
    jobs.create(&PostParams::default(), &job("theirs", spec, 10, 0, ""))
        .await
        .unwrap();
    // A Job of ours made after it runs to completion; theirs never gets a pod or a status.
    jobs.create(
        &PostParams::default(),
        &job("ours", json!({"completions": 1}), 10, 0, ""),
    )
    .await
    .unwrap();
    finished(&jobs, "ours").await;
    assert!(pods_of(&k.c, "theirs").await.is_empty());
    let theirs = jobs.get("theirs").await.unwrap();
    assert!(
        theirs
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .is_none(),
        "{:?}",
        theirs.status
    );
}
