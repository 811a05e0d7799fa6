//! The StatefulSet controller (kubernetes/pkg/controller/statefulset): pods with stable names
//! (`SET-0`, `SET-1`, …), stable hostnames under the headless Service, and a claim per
//! ordinal and claim template that outlives the pod, so `SET-1` deleted comes back as `SET-1`
//! with the same storage. Decisions are pure and table-tested in [`plan`]; a pass here:
//! 1. claims pods and ControllerRevisions (adopt orphans the selector matches, release what
//!    stopped matching);
//! 2. makes sure the template has its revision ([`crate::history::sync`]) and finds the
//!    current one (`status.currentRevision`, while it exists);
//! 3. sets the claims' owner references from `persistentVolumeClaimRetentionPolicy`;
//! 4. creates claims then pods, deletes pods, as [`plan::plan`] says;
//! 5. deletes revisions beyond `revisionHistoryLimit` and writes the status when it changed.
//!
//! No expectations are needed: pod names are fixed, so a create the cache has not shown yet
//! fails with AlreadyExists, which is taken as done.

pub mod plan;
#[cfg(test)]
mod plan_tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use serde_json::json;

use crate::error::is_not_found;
use crate::podutil::{self, controller_owner_ref};
use crate::runtime::{Reconcile, Recorder, drive};
use crate::{Error, Manager, claims, history};

pub const NAME: &str = "statefulset";

struct StatefulSetController {
    client: kube::Client,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
    revisions: Store<ControllerRevision>,
    recorder: Recorder,
    clock: crate::runtime::Clock,
}

fn selector(
    s: &StatefulSet,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector> {
    s.spec.as_ref().map(|s| &s.selector)
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let sets = m.informers.stateful_sets();
    let pods = m.informers.pods();
    let revisions = m.informers.controller_revisions();
    let claim_informer = m.informers.persistent_volume_claims();
    let me = Arc::new(StatefulSetController {
        client: m.client.clone(),
        pods: pods.store(),
        claims: claim_informer.store(),
        revisions: revisions.store(),
        recorder: Recorder::new(m.client.clone(), "statefulset-controller"),
        clock: m.clock,
    });
    let store = sets.store();
    let (for_pods, for_revisions) = (store.clone(), store.clone());
    let controller = Controller::for_shared_stream(sets.objects(), store.clone())
        .watches_shared_stream(pods.objects(), move |pod| {
            claims::owners_of(&for_pods, &pod.metadata, selector)
        })
        .watches_shared_stream(revisions.objects(), move |r| {
            claims::owners_of(&for_revisions, &r.metadata, selector)
        });
    pods.wait_synced().await;
    revisions.wait_synced().await;
    claim_informer.wait_synced().await;
    sets.wait_synced().await;
    drive(NAME, controller, me, m.metrics.clone()).await;
}

impl Reconcile<StatefulSet> for StatefulSetController {
    async fn reconcile(&self, set: Arc<StatefulSet>) -> Result<Action, Error> {
        if set.metadata.deletion_timestamp.is_some() {
            // The garbage collector removes its pods, revisions and owned claims.
            return Ok(Action::await_change());
        }
        let ns = set.metadata.namespace.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        let sel = selector(&set);
        let set_api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &ns);
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let rev_api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), &ns);

        let in_ns = |m: &kube::api::ObjectMeta| m.namespace.as_deref() == Some(ns.as_str());
        // Only pods named SET-N are the set's (`isMemberOf`).
        let pods = self.pods.state_filter(|p| {
            in_ns(&p.metadata)
                && plan::ordinal_of(&name, p.metadata.name.as_deref().unwrap_or("")).is_some()
        });
        let pod_claims = claims::claim(&set.metadata, sel, &pods);
        let revisions = self.revisions.state_filter(|r| in_ns(&r.metadata));
        let rev_claims = claims::claim(&set.metadata, sel, &revisions);
        if (!pod_claims.adopt.is_empty() || !rev_claims.adopt.is_empty())
            && claims::can_adopt(&set_api, &*set).await?
        {
            for p in &pod_claims.adopt {
                claims::adopt(&pod_api, p, controller_owner_ref(&*set)).await?;
            }
            for r in &rev_claims.adopt {
                claims::adopt(&rev_api, r, controller_owner_ref(&*set)).await?;
            }
        }
        let uid = set.metadata.uid.clone().unwrap_or_default();
        for p in &pod_claims.release {
            claims::release(&pod_api, p, &uid).await?;
        }
        for r in &rev_claims.release {
            claims::release(&rev_api, r, &uid).await?;
        }

        let (update, old) = history::sync(&self.client, &*set, &rev_claims.owned).await?;
        let update_name = update.metadata.name.clone().unwrap_or_default();
        let wanted_current = set.status.as_ref().and_then(|s| s.current_revision.clone());
        let current = old
            .iter()
            .find(|r| r.metadata.name.is_some() && r.metadata.name == wanted_current)
            .map(|r| (**r).clone())
            .unwrap_or_else(|| update.clone());
        let template = |r: &ControllerRevision| {
            history::template_of(r)
                .or_else(|| set.spec.as_ref().map(|s| s.template.clone()))
                .unwrap_or_default()
        };
        let revs = plan::Revisions {
            current: current.metadata.name.clone().unwrap_or_default(),
            current_template: template(&current),
            update: update_name.clone(),
            update_template: template(&update),
        };
        let now = self.clock.now();
        let owned = &pod_claims.owned;
        let decided = plan::plan(&set, owned, &revs, now);
        if let Some(w) = &decided.waiting {
            tracing::debug!(statefulset = %podutil::key(&set.metadata), "{w}");
        }

        self.sync_claim_owners(&set, owned, &decided.condemned)
            .await?;
        for c in &decided.create {
            let (rev, tpl) = if c.update {
                (&revs.update, &revs.update_template)
            } else {
                (&revs.current, &revs.current_template)
            };
            self.create_pod(
                &set,
                &pod_api,
                plan::new_pod(&set, tpl, rev, c.ordinal),
                c.ordinal,
            )
            .await?;
        }
        for pod_name in &decided.delete {
            self.delete_pod(&set, &pod_api, owned, pod_name).await?;
        }

        let limit = set
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        // Stateful pods carry their revision's name; `to_clean` keeps revisions by hash.
        let mut in_use: HashSet<&str> = owned.iter().filter_map(|p| plan::revision_of(p)).collect();
        in_use.insert(revs.current.as_str());
        let live: HashSet<String> = old
            .iter()
            .filter(|r| in_use.contains(r.metadata.name.as_deref().unwrap_or("")))
            .map(|r| history::hash_of(r))
            .collect();
        let old: Vec<_> = old
            .iter()
            .filter(|r| r.metadata.name.as_deref() != Some(revs.current.as_str()))
            .cloned()
            .collect();
        let doomed = history::to_clean(&old, limit, &live);
        history::clean(&self.client, &ns, &doomed).await?;

        if set.status.as_ref() != Some(&decided.status) {
            let patch = json!({"status": decided.status});
            set_api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        Ok(match plan::next_available(&set, owned, now) {
            Some(d) => Action::requeue(self.clock.real(d) + Duration::from_millis(50)),
            None => Action::await_change(),
        })
    }
}

impl StatefulSetController {
    /// Creates the ordinal's missing claims, then its pod (`CreateStatefulPod`).
    async fn create_pod(
        &self,
        set: &StatefulSet,
        pod_api: &Api<Pod>,
        pod: Pod,
        ordinal: i32,
    ) -> Result<(), Error> {
        let ns = set.metadata.namespace.as_deref().unwrap_or("");
        let set_name = set.metadata.name.as_deref().unwrap_or("");
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let claim_api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        for mut claim in plan::claims_for(set, ordinal) {
            let claim_name = claim.metadata.name.clone().unwrap_or_default();
            let live = self.claims.state().into_iter().find(|c| {
                c.metadata.namespace.as_deref() == Some(ns)
                    && c.metadata.name.as_deref() == Some(&claim_name)
            });
            if let Some(live) = live {
                if live.metadata.deletion_timestamp.is_some() {
                    return Err(Error::Other(format!(
                        "pod {pod_name}: its PersistentVolumeClaim {claim_name} is being deleted"
                    )));
                }
                continue;
            }
            let refs = plan::claim_owners(set, &claim, None);
            claim.metadata.owner_references = (!refs.is_empty()).then_some(refs);
            match claim_api.create(&PostParams::default(), &claim).await {
                Ok(_) => self.recorder.normal(
                    set,
                    "SuccessfulCreate",
                    format!(
                        "create Claim {claim_name} Pod {pod_name} in StatefulSet {set_name} success"
                    ),
                ),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    self.recorder.warning(
                        set,
                        "FailedCreate",
                        format!("create Claim {claim_name} for Pod {pod_name} in StatefulSet {set_name} failed error: {e}"),
                    );
                    return Err(e.into());
                }
            }
        }
        match pod_api.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                self.recorder.normal(
                    set,
                    "SuccessfulCreate",
                    format!("create Pod {pod_name} in StatefulSet {set_name} successful"),
                );
                Ok(())
            }
            // Made by an earlier pass the cache has not shown yet.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => {
                self.recorder.warning(
                    set,
                    "FailedCreate",
                    format!("create Pod {pod_name} in StatefulSet {set_name} failed error: {e}"),
                );
                Err(e.into())
            }
        }
    }

    /// Deletes a pod, conditional on its uid (`DeleteStatefulPod`).
    async fn delete_pod(
        &self,
        set: &StatefulSet,
        pod_api: &Api<Pod>,
        pods: &[Arc<Pod>],
        pod_name: &str,
    ) -> Result<(), Error> {
        let set_name = set.metadata.name.as_deref().unwrap_or("");
        let uid = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(pod_name))
            .and_then(|p| p.metadata.uid.clone());
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..Default::default()
        };
        match pod_api.delete(pod_name, &dp).await {
            Ok(_) => {
                self.recorder.normal(
                    set,
                    "SuccessfulDelete",
                    format!("delete Pod {pod_name} in StatefulSet {set_name} successful"),
                );
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => {
                self.recorder.warning(
                    set,
                    "FailedDelete",
                    format!("delete Pod {pod_name} in StatefulSet {set_name} failed error: {e}"),
                );
                Err(e.into())
            }
        }
    }

    /// Gives every existing claim of the set the owner references its retention policy asks
    /// for ([`plan::claim_owners`]).
    async fn sync_claim_owners(
        &self,
        set: &StatefulSet,
        pods: &[Arc<Pod>],
        condemned: &[i32],
    ) -> Result<(), Error> {
        let ns = set.metadata.namespace.as_deref().unwrap_or("");
        let set_name = set.metadata.name.as_deref().unwrap_or("");
        let claim_api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let live = self
            .claims
            .state_filter(|c| c.metadata.namespace.as_deref() == Some(ns));
        for p in pods {
            let Some(ord) = plan::ordinal_of(set_name, p.metadata.name.as_deref().unwrap_or(""))
            else {
                continue;
            };
            let doomed = condemned.contains(&ord).then_some(&**p);
            for want in plan::claims_for(set, ord) {
                let Some(claim) = live.iter().find(|c| c.metadata.name == want.metadata.name)
                else {
                    continue;
                };
                if claim.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let refs = plan::claim_owners(set, claim, doomed);
                if refs == claim.metadata.owner_references.clone().unwrap_or_default() {
                    continue;
                }
                let patch = json!({"metadata": {
                    "resourceVersion": claim.metadata.resource_version,
                    "ownerReferences": refs}});
                claim_api
                    .patch(
                        claim.metadata.name.as_deref().unwrap_or(""),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}
