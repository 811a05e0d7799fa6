//! The Job controller: runs pods until `completions` of them succeed, retrying failures up to
//! `backoffLimit` (per index with `backoffLimitPerIndex`), within `activeDeadlineSeconds`, as
//! the `podFailurePolicy` says; completes an Indexed Job early when its `successPolicy` is
//! met; suspends and resumes; leaves Jobs whose `spec.managedBy` names another controller to
//! it. Decisions are in [`plan`] (pure,
//! table-tested); this module feeds it from the informers and applies it in Kubernetes'
//! order:
//! 1. adopt orphans the selector matches and release pods it no longer does;
//! 2. write the status (new outcomes recorded in `uncountedTerminatedPods`) with the Job's
//!    resourceVersion, so a stale cache cannot count a pod twice;
//! 3. remove the `batch.kubernetes.io/job-tracking` finalizer of those pods, then move them to
//!    `succeeded`/`failed` in a second status write;
//! 4. create (slow start, through [`Expectations`]) or delete pods; events for each.
//!
//! Pods of Indexed Jobs carry their index in the `batch.kubernetes.io/job-completion-index`
//! annotation and label, `JOB_COMPLETION_INDEX` in every container's environment (the
//! downward API), and the hostname `JOB-INDEX`. Pods left with the tracking finalizer by a Job
//! that is gone are released by a sweep of pod changes.

pub mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use futures_util::future::join_all;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use crate::claims;
use crate::error::is_not_found;
use crate::podutil::{self, controller_owner_ref, controller_ref};
use crate::runtime::{Change, Expectations, Reconcile, Recorder, drive};
use crate::{Error, Manager};
use plan::{
    INDEX_ANNOTATION, INDEX_FAILURE_COUNT, INDEX_IGNORED_FAILURE_COUNT, TRACKING_FINALIZER,
};

pub const NAME: &str = "job";
const BATCH_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

struct JobController {
    client: kube::Client,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
    settings: plan::Settings,
    /// Per Job, the resourceVersions its own status writes replaced: a cache still showing one
    /// of them is behind this controller, and the write's own event will bring the Job back.
    superseded: Mutex<HashMap<String, Vec<String>>>,
    /// Pods whose tracking finalizer this controller removed and the informer has not shown
    /// gone yet (Kubernetes' finalizer expectations): seen without it, so a stale cache never
    /// counts an outcome twice or removes the finalizer again.
    released: Arc<Mutex<HashSet<String>>>,
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let job_informer = m.informers.jobs();
    let pod_informer = m.informers.pods();
    let me = Arc::new(JobController {
        client: m.client.clone(),
        pods: pod_informer.store(),
        expectations: Arc::new(Expectations::default()),
        recorder: Recorder::new(m.client.clone(), "job-controller"),
        settings: m.job,
        superseded: Mutex::new(HashMap::new()),
        released: Arc::default(),
    });
    let (exp, released) = (me.expectations.clone(), me.released.clone());
    let pod_changes = pod_informer.subscribe().map(move |c| {
        crate::podcontrol::observe(&exp, &c, "Job");
        let pod = c.object();
        let gone = matches!(c, Change::Deleted(_))
            || !pod
                .metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == TRACKING_FINALIZER);
        if gone && let Some(uid) = &pod.metadata.uid {
            released
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(uid);
        }
        c.into_object()
    });
    let job_store = job_informer.store();
    let lookup = job_store.clone();
    // Pod changes come in bursts (Running, Ready, Succeeded in quick succession): a pass
    // waits a moment so one pass and one status write cover a burst (Kubernetes batches
    // for a second; 100 ms keeps short Jobs quick).
    let config = kube::runtime::controller::Config::default().debounce(BATCH_PERIOD);
    let controller = Controller::for_shared_stream(job_informer.objects(), job_store.clone())
        .with_config(config)
        .watches_shared_stream(pod_changes, move |pod| {
            claims::owners_of(&lookup, &pod.metadata, |j: &Job| {
                j.spec.as_ref().and_then(|s| s.selector.as_ref())
            })
        });
    pod_informer.wait_synced().await;
    job_informer.wait_synced().await;
    tokio::spawn(release_orphans(
        m.client.clone(),
        pod_informer.subscribe(),
        job_store,
    ));
    drive(NAME, controller, me, m.metrics.clone()).await;
}

/// Removes the tracking finalizer from a pod: a strategic merge patch deleting just that
/// entry (as Kubernetes' job controller does), so other finalizers are never touched.
async fn remove_finalizer(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let tracked = pod
        .metadata
        .finalizers
        .as_deref()
        .is_some_and(|f| f.iter().any(|x| x == TRACKING_FINALIZER));
    if !tracked {
        return Ok(());
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let patch = json!({"metadata": {
        "$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER],
        "uid": pod.metadata.uid,
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        Err(e) if is_not_found(&e) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// A pod as it is once its tracking finalizer is removed.
fn without_finalizer(pod: &Pod) -> Pod {
    let mut p = pod.clone();
    if let Some(f) = p.metadata.finalizers.as_mut() {
        f.retain(|x| x != TRACKING_FINALIZER);
    }
    p
}

/// Pods with the tracking finalizer whose Job is gone (or never was): released, so they can
/// be deleted.
async fn release_orphans(
    client: kube::Client,
    changes: impl futures_util::Stream<Item = Change<Pod>> + Send + 'static,
    jobs: Store<Job>,
) {
    let mut changes = Box::pin(changes);
    while let Some(change) = changes.next().await {
        let pod = change.object();
        let tracked = pod
            .metadata
            .finalizers
            .as_deref()
            .is_some_and(|f| f.iter().any(|x| x == TRACKING_FINALIZER));
        if !tracked || matches!(change, Change::Deleted(_)) {
            continue;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let owner = controller_ref(&pod.metadata).filter(|r| r.kind == "Job");
        let orphan = match owner {
            None => true,
            Some(r) => jobs
                .get(&ObjectRef::new(&r.name).within(&ns))
                .is_none_or(|j| j.metadata.uid.as_deref() != Some(r.uid.as_str())),
        };
        if orphan {
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if let Err(e) = remove_finalizer(&api, pod).await {
                tracing::warn!(pod = ?pod.metadata.name, error = %e, "releasing an orphaned job pod failed");
            }
        }
    }
}

impl Reconcile<Job> for JobController {
    async fn reconcile(&self, job: Arc<Job>) -> Result<Action, Error> {
        if !managed_here(&job) {
            // Another controller (`spec.managedBy`) runs this Job and writes its status.
            return Ok(Action::await_change());
        }
        let key = podutil::key(&job.metadata);
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let job_api: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        let all = self
            .pods
            .state_filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()));
        let selector = job.spec.as_ref().and_then(|s| s.selector.as_ref());
        let claimed = claims::claim(&job.metadata, selector, &all);
        if !claimed.adopt.is_empty() && claims::can_adopt(&job_api, &*job).await? {
            for pod in &claimed.adopt {
                claims::adopt(&pod_api, pod, controller_owner_ref(&*job)).await?;
            }
        }
        for pod in &claimed.release {
            claims::release(&pod_api, pod, job.metadata.uid.as_deref().unwrap_or("")).await?;
        }
        // Pods whose finalizer went are seen without it even if the cache lags.
        let pods: Vec<Arc<Pod>> = {
            let released = self.released.lock().unwrap_or_else(|p| p.into_inner());
            claimed
                .owned
                .into_iter()
                .map(|p| match &p.metadata.uid {
                    Some(uid) if released.contains(uid) => Arc::new(without_finalizer(&p)),
                    _ => p,
                })
                .collect()
        };

        if job.metadata.deletion_timestamp.is_some() {
            // Going away: its pods are no longer counted; let them go with it.
            for pod in &pods {
                remove_finalizer(&pod_api, pod).await?;
            }
            return Ok(Action::await_change());
        }
        if self.is_stale(&key, &job) {
            return Ok(Action::await_change());
        }
        let may_manage = self.expectations.satisfied(&key);
        if may_manage {
            self.expectations.forget(&key);
        }
        let now = Timestamp::now();
        let plan = plan::plan(&job, &pods, now, &self.settings);
        let indexed =
            job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed");

        let mut extra_events = Vec::new();
        // Pods first, so that the status write below carries their count too.
        let mut created = 0;
        if may_manage {
            if !plan.delete.is_empty() {
                self.delete_pods(&job, &key, &pod_api, &plan.delete).await?;
            }
            if !plan.create.is_empty() {
                created = self.create_pods(&job, &key, &pod_api, &plan.create).await?;
            }
        }
        let mut status = plan.status.clone();
        if created > 0 {
            let s = status.get_or_insert_with(|| job.status.clone().unwrap_or_default());
            s.active = Some(s.active.unwrap_or(0) + created);
        }
        // Outcomes recorded before finalizers go.
        let mut current = (*job).clone();
        if let Some(status) = status {
            current.status = Some(status);
            let base = current.metadata.resource_version.clone();
            current = job_api
                .replace_status(&name, &PostParams::default(), &current)
                .await?;
            self.supersede(&key, base);
        }
        if !plan.remove_finalizers.is_empty() {
            let uids: Vec<String> = plan
                .remove_finalizers
                .iter()
                .filter_map(|p| p.metadata.uid.clone())
                .collect();
            self.released
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(uids);
            let results = join_all(
                plan.remove_finalizers
                    .iter()
                    .map(|p| remove_finalizer(&pod_api, p)),
            )
            .await;
            {
                let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
                for (p, r) in plan.remove_finalizers.iter().zip(&results) {
                    if r.is_err()
                        && let Some(uid) = &p.metadata.uid
                    {
                        released.remove(uid);
                    }
                }
            }
            let released: Vec<Arc<Pod>> = plan
                .remove_finalizers
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .map(|(p, _)| p.clone())
                .collect();
            let mut status = current.status.clone().unwrap_or_default();
            let counted: Vec<(String, Option<i32>)> =
                released.iter().map(|p| plan::released(p)).collect();
            if plan::count_released(&mut status, &counted, indexed) {
                current.status = Some(status);
                if plan.create.is_empty() && plan.delete.is_empty() {
                    // Nothing else to do this pass: whatever the counts now settle (Complete,
                    // Failed) goes into the same write rather than a pass of its own.
                    let after: Vec<Arc<Pod>> = pods
                        .iter()
                        .map(|p| match released.iter().find(|r| Arc::ptr_eq(r, p)) {
                            Some(r) => Arc::new(without_finalizer(r)),
                            None => p.clone(),
                        })
                        .collect();
                    let settled = plan::plan(&current, &after, now, &self.settings);
                    if let Some(s) = settled.status {
                        current.status = Some(s);
                    }
                    extra_events = settled.events;
                }
                let base = current.metadata.resource_version.clone();
                job_api
                    .replace_status(&name, &PostParams::default(), &current)
                    .await?;
                self.supersede(&key, base);
            }
            if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
                return Err(e.into());
            }
        }
        for e in plan.events.iter().chain(&extra_events) {
            if e.warning {
                self.recorder.warning(&*job, e.reason, e.message.clone());
            } else {
                self.recorder.normal(&*job, e.reason, e.message.clone());
            }
        }
        Ok(match plan.requeue {
            Some(d) => Action::requeue(d + std::time::Duration::from_millis(50)),
            None => Action::await_change(),
        })
    }
}

impl JobController {
    /// Whether the cached Job is one this controller has already written over.
    fn is_stale(&self, key: &str, job: &Job) -> bool {
        let mut m = self.superseded.lock().unwrap_or_else(|p| p.into_inner());
        let rv = job.metadata.resource_version.clone().unwrap_or_default();
        match m.get(key) {
            Some(old) if old.contains(&rv) => true,
            Some(_) => {
                m.remove(key);
                false
            }
            None => false,
        }
    }

    fn supersede(&self, key: &str, rv: Option<String>) {
        let mut m = self.superseded.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key.to_string()).or_default().extend(rv);
    }

    async fn create_pods(
        &self,
        job: &Job,
        key: &str,
        pod_api: &Api<Pod>,
        wanted: &[plan::NewPod],
    ) -> Result<i32, Error> {
        let pods: Vec<Pod> = wanted.iter().map(|w| pod_for(job, w)).collect();
        let (made, failed) = crate::podcontrol::create_pods(
            job,
            key,
            pod_api,
            &pods,
            &self.expectations,
            &self.recorder,
        )
        .await;
        failed.map_or(Ok(made as i32), |e| Err(e.into()))
    }

    async fn delete_pods(
        &self,
        job: &Job,
        key: &str,
        pod_api: &Api<Pod>,
        pods: &[Arc<Pod>],
    ) -> Result<(), Error> {
        let failed = crate::podcontrol::delete_pods(
            job,
            key,
            pod_api,
            pods,
            &self.expectations,
            &self.recorder,
        )
        .await;
        failed.map_or(Ok(()), |e| Err(e.into()))
    }
}

/// A pod for `job`: the template, the tracking finalizer, the controller reference, and for
/// an Indexed Job its index (annotation, label, environment, hostname) and that index's
/// failures so far.
pub fn pod_for(job: &Job, wanted: &plan::NewPod) -> Pod {
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let tm = template.metadata.unwrap_or_default();
    let mut labels = tm.labels.unwrap_or_default();
    let mut annotations = tm.annotations.unwrap_or_default();
    let mut finalizers = tm.finalizers.unwrap_or_default();
    finalizers.push(TRACKING_FINALIZER.into());
    let mut spec = template.spec.unwrap_or_default();
    let mut generate_name = format!("{job_name}-");
    if let Some(i) = wanted.index {
        let index = i.to_string();
        annotations.insert(INDEX_ANNOTATION.into(), index.clone());
        labels.insert(INDEX_ANNOTATION.into(), index.clone());
        if wanted.failures > 0 {
            annotations.insert(INDEX_FAILURE_COUNT.into(), wanted.failures.to_string());
        }
        if wanted.ignored > 0 {
            annotations.insert(
                INDEX_IGNORED_FAILURE_COUNT.into(),
                wanted.ignored.to_string(),
            );
        }
        generate_name = format!("{job_name}-{i}-");
        let host = format!("{job_name}-{i}");
        if host.len() <= 63 {
            spec.hostname = Some(host);
        }
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{INDEX_ANNOTATION}']"),
                }),
                ..Default::default()
            }),
        };
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            let list = c.env.get_or_insert_with(Vec::new);
            if !list.iter().any(|e| e.name == env.name) {
                list.push(env.clone());
            }
        }
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![controller_owner_ref(job)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The value of `spec.managedBy` that names this controller (unset means the same).
pub const JOB_CONTROLLER: &str = "kubernetes.io/job-controller";

/// Whether this controller runs the Job (`spec.managedBy` unset or [`JOB_CONTROLLER`]).
pub fn managed_here(job: &Job) -> bool {
    job.spec
        .as_ref()
        .and_then(|s| s.managed_by.as_deref())
        .is_none_or(|m| m == JOB_CONTROLLER)
}
