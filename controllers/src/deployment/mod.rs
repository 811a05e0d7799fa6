//! The Deployment controller: rolls a Deployment's pods from one template to the next through
//! ReplicaSets, the way Kubernetes' does, so `kubectl rollout status|history|undo|pause|resume|
//! restart` and `kubectl scale` work unmodified.
//!
//! Where things are: [`sync`] (one pass: claims, new ReplicaSet, revisions, history cleanup),
//! [`rolling`] and [`recreate`] (the strategies), [`scale`] (proportional scaling), [`progress`]
//! (status and conditions), [`util`] (maxSurge/maxUnavailable, pod-template-hash). All of them
//! are pure; this module feeds them from the informers and applies the plan, every write
//! carrying the resourceVersion it was computed from.

pub mod progress;
pub mod recreate;
pub mod rolling;
pub mod scale;
pub mod sync;
pub mod util;

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use crate::claims;
use crate::error::is_not_found;
use crate::podutil::{controller_owner_ref, controller_ref};
use crate::runtime::{Reconcile, Recorder, drive};
use crate::{Error, Manager};

pub const NAME: &str = "deployment";

struct DeploymentController {
    client: kube::Client,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
    recorder: Recorder,
}

pub async fn run(m: Arc<Manager>) {
    let d_inf = m.informers.deployments();
    let rs_inf = m.informers.replicasets();
    let pod_inf = m.informers.pods();
    let me = Arc::new(DeploymentController {
        client: m.client.clone(),
        replicasets: rs_inf.store(),
        pods: pod_inf.store(),
        recorder: Recorder::new(m.client.clone(), "deployment-controller"),
    });
    let d_store = d_inf.store();
    let (for_rs, for_pods) = (d_store.clone(), d_store.clone());
    let rs_lookup = rs_inf.store();
    let controller = Controller::for_shared_stream(d_inf.objects(), d_store.clone())
        .watches_shared_stream(rs_inf.objects(), move |rs| {
            claims::owners_of(&for_rs, &rs.metadata, |d: &Deployment| {
                d.spec.as_ref().map(|s| &s.selector)
            })
        })
        .watches_shared_stream(pod_inf.objects(), move |pod| {
            recreate_owner_of(&for_pods, &rs_lookup, &pod)
        })
        .with_config(
            kube::runtime::controller::Config::default().concurrency(m.concurrent_deployment_syncs),
        );
    d_inf.wait_synced().await;
    rs_inf.wait_synced().await;
    pod_inf.wait_synced().await;
    drive(NAME, controller, me, m.metrics.clone()).await;
}

/// A pod change matters to a Recreate Deployment (it waits for old pods to stop).
fn recreate_owner_of(
    d_store: &Store<Deployment>,
    rs_store: &Store<ReplicaSet>,
    pod: &Pod,
) -> Option<ObjectRef<Deployment>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let rs_ref = controller_ref(&pod.metadata).filter(|r| r.kind == "ReplicaSet")?;
    let rs = rs_store.get(&ObjectRef::new(&rs_ref.name).within(ns))?;
    let d_ref = controller_ref(&rs.metadata).filter(|r| r.kind == "Deployment")?;
    let key = ObjectRef::new(&d_ref.name).within(ns);
    let d = d_store.get(&key)?;
    util::is_recreate(&d).then_some(key)
}

impl Reconcile<Deployment> for DeploymentController {
    async fn reconcile(&self, d: Arc<Deployment>) -> Result<Action, Error> {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let name = d.metadata.name.clone().unwrap_or_default();
        let rss = self
            .replicasets
            .state_filter(|r| r.metadata.namespace.as_deref() == Some(ns.as_str()));
        let pods = if util::is_recreate(&d) {
            self.pods
                .state_filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        } else {
            vec![]
        };
        let plan = sync::plan(&d, &rss, &pods, Timestamp::now());
        let rs_api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
        let d_api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);

        if !plan.adopt.is_empty() && claims::can_adopt(&d_api, &*d).await? {
            for rs in &plan.adopt {
                claims::adopt(&rs_api, rs, controller_owner_ref(&*d)).await?;
            }
        }
        for rs in &plan.release {
            let uid = d.metadata.uid.as_deref().unwrap_or("");
            claims::release(&rs_api, rs, uid).await?;
        }
        if let Some(rs) = &plan.create {
            self.create_replicaset(&d, &d_api, &rs_api, rs).await?;
        }
        if let Some((rs_name, annotations)) = &plan.annotate
            && let Some(rs) = rss
                .iter()
                .find(|r| r.metadata.name.as_ref() == Some(rs_name))
        {
            claims::merge_patch(
                &rs_api,
                rs,
                &json!({"metadata": {"annotations": annotations,
                    "resourceVersion": rs.metadata.resource_version}}),
            )
            .await?;
        }
        for s in &plan.scale {
            // A ReplicaSet created in this pass is created at its size already.
            let Some(rs) = rss
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(s.name.as_str()))
            else {
                continue;
            };
            let (surge, _) = util::surge_and_unavailable(&d);
            let want = util::replicas(&d);
            let mut ann = BTreeMap::new();
            ann.insert(util::DESIRED_REPLICAS, want.to_string());
            ann.insert(util::MAX_REPLICAS, (want + surge).to_string());
            let rv = if plan.annotate.as_ref().is_some_and(|(n, _)| n == &s.name) {
                None // annotated just now: the cached version is stale by our own write
            } else {
                rs.metadata.resource_version.clone()
            };
            claims::merge_patch(
                &rs_api,
                rs,
                &json!({"metadata": {"annotations": ann, "resourceVersion": rv},
                       "spec": {"replicas": s.to}}),
            )
            .await?;
        }
        for rs in &plan.delete {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: rs.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match rs_api
                .delete(rs.metadata.name.as_deref().unwrap_or(""), &dp)
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for (reason, message) in &plan.events {
            self.recorder.normal(&*d, reason, message.clone());
        }
        if let Some(status) = &plan.status {
            let mut updated = (*d).clone();
            updated.status = Some(status.clone());
            d_api
                .replace_status(&name, &PostParams::default(), &updated)
                .await?;
            if status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
                && !d
                    .status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            {
                self.recorder.warning(
                    &*d,
                    "ProgressDeadlineExceeded",
                    format!("Deployment {name:?} has timed out progressing."),
                );
            }
        }
        if let Some(rev) = &plan.deployment_revision {
            d_api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {util::REVISION: rev}}})),
                )
                .await?;
        }
        Ok(match plan.requeue_after {
            Some(d) => Action::requeue(d),
            None => Action::await_change(),
        })
    }
}

impl DeploymentController {
    /// Creates the new ReplicaSet. If the name is taken by a ReplicaSet of ours with the same
    /// template, an earlier pass made it; by anything else, it is a hash collision: bump
    /// status.collisionCount so the next pass hashes differently.
    async fn create_replicaset(
        &self,
        d: &Deployment,
        d_api: &Api<Deployment>,
        rs_api: &Api<ReplicaSet>,
        rs: &ReplicaSet,
    ) -> Result<(), Error> {
        match rs_api.create(&PostParams::default(), rs).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let name = rs.metadata.name.as_deref().unwrap_or("");
                let existing = rs_api.get(name).await?;
                let ours = controller_ref(&existing.metadata)
                    .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
                if ours && util::same_template(d, &existing) {
                    return Ok(());
                }
                let mut updated = d.clone();
                let status = updated.status.get_or_insert_with(Default::default);
                let count = status.collision_count.unwrap_or(0) + 1;
                status.collision_count = Some(count);
                d_api
                    .replace_status(
                        d.metadata.name.as_deref().unwrap_or(""),
                        &PostParams::default(),
                        &updated,
                    )
                    .await?;
                Err(Error::Other(format!(
                    "replica set {name} exists with another template (hash collision); retrying with collisionCount {}",
                    count
                )))
            }
            Err(e) => Err(e.into()),
        }
    }
}
