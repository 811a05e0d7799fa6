//! The ControllerRevisions of a DaemonSet or StatefulSet (kubernetes/pkg/controller/history,
//! daemon/update.go `constructHistory` / `cleanupHistory`, statefulset's `getStatefulSetRevisions`):
//! one immutable snapshot per template the workload has had, named `NAME-HASH`, its `data` the strategic merge patch
//! that puts that template back (`{"spec":{"template":{...,"$patch":"replace"}}}`, what
//! `kubectl rollout undo` sends), its `revision` a number that grows with each change.
//!
//! - The current revision is the one whose data is the workload's template. When none is, a
//!   new one is made with the next number; when an older one is (after an undo), it gets the
//!   next number back. A name taken by a different template is a hash collision: the
//!   workload's `status.collisionCount` grows, which changes the hash.
//! - Old revisions beyond `revisionHistoryLimit` (10) are deleted, oldest first, except those
//!   a live pod still carries.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};

use crate::Error;
use crate::error::is_not_found;
use crate::podutil::{controller_owner_ref, controller_ref};

/// The label naming a pod's (and a revision's) template hash.
pub const REVISION_HASH: &str = "controller-revision-hash";

/// A workload whose templates are kept as ControllerRevisions.
pub trait Revisioned:
    kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + serde::Serialize
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    const KIND: &'static str;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn collision_count(&self) -> Option<i32>;
}

impl Revisioned for DaemonSet {
    const KIND: &'static str = "DaemonSet";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn collision_count(&self) -> Option<i32> {
        self.status.as_ref().and_then(|s| s.collision_count)
    }
}

impl Revisioned for StatefulSet {
    const KIND: &'static str = "StatefulSet";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn collision_count(&self) -> Option<i32> {
        self.status.as_ref().and_then(|s| s.collision_count)
    }
}

/// The template a revision holds (its data without the `$patch` directive).
pub fn template_of(r: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = data(r)?.pointer("/spec/template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// The patch that restores the workload's template: a revision's `data`.
pub fn patch_of<W: Revisioned>(w: &W) -> Value {
    let mut template = w
        .template()
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or_else(|| json!({}));
    if let Some(m) = template.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

fn data(r: &ControllerRevision) -> Option<&Value> {
    r.data.as_ref().map(|d| &d.0)
}

/// The revision's hash: its label, else the end of its name.
pub fn hash_of(r: &ControllerRevision) -> String {
    if let Some(h) = r
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_HASH))
    {
        return h.clone();
    }
    let name = r.metadata.name.as_deref().unwrap_or("");
    name.rsplit('-').next().unwrap_or(name).to_string()
}

/// The revisions split into the current one (the newest of those holding the template) and
/// the others, and the number the current one should carry (one more than any other).
pub fn split<W: Revisioned>(
    ds: &W,
    revisions: &[Arc<ControllerRevision>],
) -> (
    Option<Arc<ControllerRevision>>,
    Vec<Arc<ControllerRevision>>,
    i64,
) {
    let want = patch_of(ds);
    let (mut current, mut old): (Vec<_>, Vec<_>) = revisions
        .iter()
        .cloned()
        .partition(|r| data(r) == Some(&want));
    current.sort_by_key(|r| r.revision);
    let cur = current.pop();
    // Duplicates of the current template (never made by this controller) age out as old ones.
    old.extend(current);
    let next = old.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
    (cur, old, next)
}

/// Old revisions to delete: beyond `limit`, oldest first, none a live pod carries.
pub fn to_clean(
    old: &[Arc<ControllerRevision>],
    limit: usize,
    live_hashes: &HashSet<String>,
) -> Vec<Arc<ControllerRevision>> {
    if old.len() <= limit {
        return Vec::new();
    }
    let mut sorted: Vec<_> = old.to_vec();
    sorted.sort_by_key(|r| r.revision);
    let excess = old.len() - limit;
    sorted
        .into_iter()
        .filter(|r| !live_hashes.contains(&hash_of(r)))
        .take(excess)
        .collect()
}

/// A new revision of the workload's template, numbered `revision`.
pub fn new_revision<W: Revisioned>(ds: &W, hash: &str, revision: i64) -> ControllerRevision {
    let mut labels: BTreeMap<String, String> = ds
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}-{hash}",
                ds.meta().name.as_deref().unwrap_or("")
            )),
            namespace: ds.meta().namespace.clone(),
            labels: Some(labels),
            annotations: ds.meta().annotations.clone(),
            owner_references: Some(vec![controller_owner_ref(ds)]),
            ..Default::default()
        },
        data: Some(RawExtension(patch_of(ds))),
        revision,
    }
}

/// Makes sure the workload's template has the current revision (see the module docs);
/// returns it and the old revisions. A hash collision raises the collision count and
/// returns an error, so the next pass tries the new hash.
pub async fn sync<W: Revisioned>(
    client: &kube::Client,
    ds: &W,
    revisions: &[Arc<ControllerRevision>],
) -> Result<(ControllerRevision, Vec<Arc<ControllerRevision>>), Error> {
    let ns = ds.meta().namespace.as_deref().unwrap_or("");
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let (cur, old, next) = split(ds, revisions);
    if let Some(cur) = cur {
        if cur.revision < next {
            let name = cur.metadata.name.clone().unwrap_or_default();
            let patch = json!({"metadata": {"resourceVersion": cur.metadata.resource_version},
                "revision": next});
            let patched = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
            return Ok((patched, old));
        }
        return Ok(((*cur).clone(), old));
    }
    let collisions = ds.collision_count();
    let template = ds.template().cloned().unwrap_or_default();
    let hash = crate::deployment::util::template_hash(&template, collisions);
    let revision = new_revision(ds, &hash, next);
    match api.create(&PostParams::default(), &revision).await {
        Ok(made) => Ok((made, old)),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let name = revision.metadata.name.clone().unwrap_or_default();
            let existing = api.get(&name).await?;
            let ours = controller_ref(&existing.metadata)
                .is_some_and(|r| Some(&r.uid) == ds.meta().uid.as_ref());
            if ours && data(&existing) == data(&revision) {
                // Made by an earlier pass the cache has not shown yet.
                return Ok((existing, old));
            }
            let ds_api: Api<W> = Api::namespaced(client.clone(), ns);
            let patch = json!({"metadata": {"resourceVersion": ds.meta().resource_version},
                "status": {"collisionCount": collisions.unwrap_or(0) + 1}});
            ds_api
                .patch_status(
                    ds.meta().name.as_deref().unwrap_or(""),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?;
            Err(Error::Other(format!(
                "found a hash collision for {} {} (revision {name}): raised collisionCount",
                W::KIND,
                ds.meta().name.as_deref().unwrap_or("")
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes what [`to_clean`] chose, each conditional on its uid.
pub async fn clean(
    client: &kube::Client,
    ns: &str,
    doomed: &[Arc<ControllerRevision>],
) -> Result<(), Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    for r in doomed {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: r.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api
            .delete(r.metadata.name.as_deref().unwrap_or(""), &dp)
            .await
        {
            Err(e) if is_not_found(&e) => {}
            other => {
                other?;
            }
        }
    }
    Ok(())
}
