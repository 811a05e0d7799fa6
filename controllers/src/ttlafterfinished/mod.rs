//! The TTL-after-finished controller (pkg/controller/ttlafterfinished): a finished Job with
//! `ttlSecondsAfterFinished` is deleted that long after it finished (the time its Complete or
//! Failed condition turned True), in the foreground so its pods go first. Before deleting, the
//! Job is read again from the API server, and the delete is conditional on that
//! resourceVersion: a Job whose TTL was just raised is not lost to a stale cache.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};

use crate::error::is_not_found;
use crate::runtime::{Clock, Reconcile, drive};
use crate::{Error, Manager};

pub const NAME: &str = "ttlafterfinished";

/// When a Job may be deleted: its finish time plus its TTL; None while it runs or has no TTL.
pub fn expires_at(job: &Job) -> Option<Timestamp> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let finished = job
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .filter(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
        .max()?;
    finished
        .checked_add(SignedDuration::from_secs(i64::from(ttl)))
        .ok()
}

struct Ttl {
    client: kube::Client,
    clock: Clock,
}

pub async fn run(m: Arc<Manager>) {
    let jobs = m.informers.jobs();
    let me = Arc::new(Ttl {
        client: m.client.clone(),
        clock: m.clock,
    });
    let controller = Controller::for_shared_stream(jobs.objects(), jobs.store());
    jobs.wait_synced().await;
    drive(NAME, controller, me, m.metrics.clone()).await;
}

impl Reconcile<Job> for Ttl {
    async fn reconcile(&self, job: Arc<Job>) -> Result<Action, Error> {
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let Some(at) = expires_at(&job) else {
            return Ok(Action::await_change());
        };
        let now = self.clock.now();
        if now < at {
            let left = Duration::try_from(now.duration_until(at)).unwrap_or_default();
            return Ok(Action::requeue(
                self.clock.real(left) + Duration::from_millis(50),
            ));
        }
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let api: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        let Some(fresh) = api.get_opt(&name).await? else {
            return Ok(Action::await_change());
        };
        if fresh.metadata.uid != job.metadata.uid
            || expires_at(&fresh).is_none_or(|t| t > self.clock.now())
        {
            return Ok(Action::await_change());
        }
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            preconditions: Some(Preconditions {
                uid: fresh.metadata.uid.clone(),
                resource_version: fresh.metadata.resource_version.clone(),
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {
                tracing::info!(job = %name, namespace = %ns, "deleted a finished Job past its TTL");
                Ok(Action::await_change())
            }
            Err(e) if is_not_found(&e) => Ok(Action::await_change()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(ttl: Option<i32>, conditions: serde_json::Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j"},
            "spec": {"ttlSecondsAfterFinished": ttl, "template": {}},
            "status": {"conditions": conditions}}))
        .unwrap()
    }

    #[test]
    fn a_job_expires_its_ttl_after_it_finished() {
        let done = json!([{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z"}]);
        assert_eq!(
            expires_at(&job(Some(100), done.clone())).map(|t| t.to_string()),
            Some("2026-01-01T00:01:45Z".into())
        );
        assert_eq!(expires_at(&job(None, done)), None);
        let failed = json!([{"type": "Failed", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        assert!(expires_at(&job(Some(0), failed)).is_some());
        let running = json!([{"type": "Suspended", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        assert_eq!(expires_at(&job(Some(0), running)), None);
    }
}
