//! The ReplicaSet controller: keeps `spec.replicas` pods matching the template running.
//! Decisions are in [`plan`] (pure, table-tested); this module feeds it from the informers and
//! applies it through the API:
//! - claims: orphans matching the selector are adopted (after re-reading the ReplicaSet, so a
//!   ReplicaSet being deleted never adopts), pods that stop matching are released;
//! - creates and deletes go through [`Expectations`]: before creating N pods it expects N
//!   additions and does nothing more for that ReplicaSet until the informer has shown them, so a
//!   slow watch never causes over-creation; creates go in slow-start batches (1, 2, 4, ...) and
//!   stop at the first failure, as Kubernetes' do;
//! - status (replicas, fullyLabeled, ready, available after minReadySeconds, observedGeneration,
//!   ReplicaFailure) is written through /status with the resourceVersion read.

pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;

use crate::claims;
use crate::podutil::{self, controller_owner_ref, controller_ref};
use crate::runtime::{Expectations, Reconcile, Recorder, drive};
use crate::{Error, Manager};

pub const NAME: &str = "replicaset";

struct ReplicaSetController {
    client: kube::Client,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
    /// The last create/delete failure per ReplicaSet (shown as ReplicaFailure).
    failures: Mutex<HashMap<String, String>>,
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let rs_informer = m.informers.replicasets();
    let pod_informer = m.informers.pods();
    let me = Arc::new(ReplicaSetController {
        client: m.client.clone(),
        pods: pod_informer.store(),
        expectations: Arc::new(Expectations::default()),
        recorder: Recorder::new(m.client.clone(), "replicaset-controller"),
        failures: Mutex::new(HashMap::new()),
    });
    let exp = me.expectations.clone();
    let pod_changes = pod_informer.subscribe().map(move |c| {
        crate::podcontrol::observe(&exp, &c, "ReplicaSet");
        c.into_object()
    });
    let rs_store = rs_informer.store();
    let lookup = rs_store.clone();
    let controller = Controller::for_shared_stream(rs_informer.objects(), rs_store.clone())
        .watches_shared_stream(pod_changes, move |pod| {
            claims::owners_of(&lookup, &pod.metadata, |rs: &ReplicaSet| {
                rs.spec.as_ref().map(|s| &s.selector)
            })
        })
        .with_config(
            kube::runtime::controller::Config::default().concurrency(m.concurrent_replicaset_syncs),
        );
    // Never act on a partial picture of the pods.
    pod_informer.wait_synced().await;
    rs_informer.wait_synced().await;
    drive(NAME, controller, me, m.metrics.clone()).await;
}

impl Reconcile<ReplicaSet> for ReplicaSetController {
    async fn reconcile(&self, rs: Arc<ReplicaSet>) -> Result<Action, Error> {
        let key = podutil::key(&rs.metadata);
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        let name = rs.metadata.name.clone().unwrap_or_default();
        let may_manage = self.expectations.satisfied(&key);
        if may_manage {
            // Satisfied or expired: start counting afresh.
            self.expectations.forget(&key);
        }
        let pods = self
            .pods
            .state_filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()));
        let failure = self.failure(&key);
        let now = Timestamp::now();
        let plan = plan::plan(&rs, &pods, may_manage, failure.as_deref(), now);
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);

        let rs_api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
        if !plan.adopt.is_empty() && claims::can_adopt(&rs_api, &*rs).await? {
            for pod in &plan.adopt {
                claims::adopt(&pod_api, pod, controller_owner_ref(&*rs)).await?;
            }
        }
        for pod in &plan.release {
            let uid = rs.metadata.uid.as_deref().unwrap_or("");
            claims::release(&pod_api, pod, uid).await?;
        }
        let mut manage_error: Option<String> = None;
        if plan.create > 0 {
            if let Err(e) = self.create_pods(&rs, &key, &pod_api, plan.create).await {
                manage_error = Some(e);
            }
        } else if !plan.delete.is_empty()
            && let Err(e) = self.delete_pods(&rs, &key, &pod_api, &plan.delete).await
        {
            manage_error = Some(e);
        }
        let changed_failure = if may_manage {
            self.set_failure(&key, manage_error.clone())
        } else {
            false
        };
        if let Some(mut status) = plan.status {
            if changed_failure {
                // Recompute the condition with the outcome of this pass.
                let active: Vec<_> = plan::claim(&rs, &pods)
                    .owned
                    .into_iter()
                    .filter(|p| podutil::is_active(p))
                    .collect();
                status = plan::status(&rs, &active, manage_error.as_deref(), now);
            }
            let mut updated = (*rs).clone();
            updated.status = Some(status);
            rs_api
                .replace_status(&name, &PostParams::default(), &updated)
                .await?;
        }
        if let Some(e) = manage_error {
            return Err(Error::Other(e));
        }
        // A ready pod becomes available after minReadySeconds: look again then.
        let min_ready = rs
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        if min_ready > 0 {
            let soonest = pods
                .iter()
                .filter(|p| {
                    controller_ref(&p.metadata)
                        .is_some_and(|r| Some(&r.uid) == rs.metadata.uid.as_ref())
                })
                .filter_map(|p| podutil::available_in(p, min_ready, now))
                .min();
            if let Some(d) = soonest {
                let d = std::time::Duration::try_from(d).unwrap_or_default();
                return Ok(Action::requeue(d + std::time::Duration::from_millis(50)));
            }
        }
        Ok(Action::await_change())
    }
}

impl ReplicaSetController {
    fn failure(&self, key: &str) -> Option<String> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Records the outcome of a manage pass; true when it changed.
    fn set_failure(&self, key: &str, error: Option<String>) -> bool {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(e) => m.insert(key.to_string(), e.clone()).as_ref() != Some(&e),
            None => m.remove(key).is_some(),
        }
    }

    async fn create_pods(
        &self,
        rs: &ReplicaSet,
        key: &str,
        pod_api: &Api<Pod>,
        n: usize,
    ) -> Result<(), String> {
        let pods = vec![pod_from_template(rs); n];
        let (_, failed) = crate::podcontrol::create_pods(
            rs,
            key,
            pod_api,
            &pods,
            &self.expectations,
            &self.recorder,
        )
        .await;
        failed.map_or(Ok(()), |e| Err(format!("creating pods failed: {e}")))
    }

    async fn delete_pods(
        &self,
        rs: &ReplicaSet,
        key: &str,
        pod_api: &Api<Pod>,
        pods: &[Arc<Pod>],
    ) -> Result<(), String> {
        let failed = crate::podcontrol::delete_pods(
            rs,
            key,
            pod_api,
            pods,
            &self.expectations,
            &self.recorder,
        )
        .await;
        failed.map_or(Ok(()), |e| Err(format!("deleting pods failed: {e}")))
    }
}

/// A pod for `rs`: the template's labels, annotations, finalizers and spec, named
/// `{rs}-{random}` by the API server, controlled by the ReplicaSet.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tm = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.metadata.name.as_deref().unwrap_or(""))),
            namespace: rs.metadata.namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![controller_owner_ref(rs)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}
