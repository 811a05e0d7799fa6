//! The CronJob controller: starts a Job at each time a CronJob's schedule names, in its time
//! zone, as its concurrencyPolicy allows, and keeps its history short. Decisions are in
//! [`plan`] (pure, table-tested); this module reads the CronJob and its Jobs from the
//! informers, checks Jobs its status lists but the cache does not show yet (a Job just
//! created), applies the plan — deletes, the create, then the status with the CronJob's
//! resourceVersion — and wakes again at the next schedule time. The clock is the manager's
//! ([`crate::runtime::Clock`]), so tests can run minutes in seconds.

pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::error::is_not_found;
use crate::podutil::controller_ref;
use crate::runtime::{Clock, Reconcile, Recorder, drive};
use crate::{Error, Manager};

pub const NAME: &str = "cronjob";

struct CronJobController {
    client: kube::Client,
    jobs: Store<Job>,
    recorder: Recorder,
    clock: Clock,
}

pub async fn run(m: Arc<Manager>) {
    let cron_informer = m.informers.cron_jobs();
    let job_informer = m.informers.jobs();
    let me = Arc::new(CronJobController {
        client: m.client.clone(),
        jobs: job_informer.store(),
        recorder: Recorder::new(m.client.clone(), "cronjob-controller"),
        clock: m.clock,
    });
    let controller = Controller::for_shared_stream(cron_informer.objects(), cron_informer.store())
        .watches_shared_stream(job_informer.objects(), |job: Arc<Job>| {
            let ns = job.metadata.namespace.clone().unwrap_or_default();
            controller_ref(&job.metadata)
                .filter(|r| r.kind == "CronJob")
                .map(|r| ObjectRef::new(&r.name).within(&ns))
        });
    job_informer.wait_synced().await;
    cron_informer.wait_synced().await;
    drive(NAME, controller, me, m.metrics.clone()).await;
}

impl Reconcile<CronJob> for CronJobController {
    async fn reconcile(&self, cj: Arc<CronJob>) -> Result<Action, Error> {
        let ns = cj.metadata.namespace.clone().unwrap_or_default();
        let name = cj.metadata.name.clone().unwrap_or_default();
        let job_api: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        let cron_api: Api<CronJob> = Api::namespaced(self.client.clone(), &ns);
        let mut jobs = self
            .jobs
            .state_filter(|j| j.metadata.namespace.as_deref() == Some(ns.as_str()));
        // A Job the status lists but the cache has not shown yet is asked for.
        for r in cj.status.iter().flat_map(|s| s.active.iter().flatten()) {
            if jobs.iter().any(|j| j.metadata.uid == r.uid) {
                continue;
            }
            if let Some(job_name) = &r.name
                && let Some(j) = job_api.get_opt(job_name).await?
                && j.metadata.uid == r.uid
            {
                jobs.push(Arc::new(j));
            }
        }
        let plan = plan::plan(&cj, &jobs, self.clock.now());
        for e in &plan.events {
            if e.warning {
                self.recorder.warning(&*cj, e.reason, e.message.clone());
            } else {
                self.recorder.normal(&*cj, e.reason, e.message.clone());
            }
        }
        for j in &plan.delete {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: j.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            let job_name = j.metadata.name.clone().unwrap_or_default();
            match job_api.delete(&job_name, &dp).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    self.recorder.warning(
                        &*cj,
                        "FailedDelete",
                        format!("Deleted job: {job_name}: {e}"),
                    );
                    return Err(e.into());
                }
            }
        }
        let mut status = plan.status.clone();
        if let Some(job) = &plan.create {
            let job_name = job.metadata.name.clone().unwrap_or_default();
            let created = match job_api.create(&PostParams::default(), job).await {
                Ok(j) => {
                    self.recorder.normal(
                        &*cj,
                        "SuccessfulCreate",
                        format!("Created job {job_name}"),
                    );
                    j
                }
                Err(e) if is_conflict(&e) => job_api.get(&job_name).await?,
                Err(e) => {
                    self.recorder
                        .warning(&*cj, "FailedCreate", format!("Error creating job: {e}"));
                    return Err(e.into());
                }
            };
            let s = status.get_or_insert_with(|| cj.status.clone().unwrap_or_default());
            let active = s.active.get_or_insert_with(Vec::new);
            if !active.iter().any(|r| r.uid == created.metadata.uid) {
                active.push(plan::job_ref(&created));
            }
        }
        if let Some(s) = status {
            let mut updated = (*cj).clone();
            updated.status = Some(s);
            cron_api
                .replace_status(&name, &PostParams::default(), &updated)
                .await?;
        }
        Ok(match plan.requeue {
            Some(d) => Action::requeue(self.clock.real(d) + Duration::from_millis(100)),
            None => Action::await_change(),
        })
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
