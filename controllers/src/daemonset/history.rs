//! A DaemonSet's ControllerRevisions (kubernetes/pkg/controller/daemon/update.go
//! `constructHistory` / `cleanupHistory`, pkg/controller/history): one immutable snapshot per
//! template the DaemonSet has had, named `NAME-HASH`, its `data` the strategic merge patch
//! that puts that template back (`{"spec":{"template":{...,"$patch":"replace"}}}`, what
//! `kubectl rollout undo` sends), its `revision` a number that grows with each change.
//!
//! - The current revision is the one whose data is the DaemonSet's template. When none is, a
//!   new one is made with the next number; when an older one is (after an undo), it gets the
//!   next number back. A name taken by a different template is a hash collision: the
//!   DaemonSet's `status.collisionCount` grows, which changes the hash.
//! - Old revisions beyond `revisionHistoryLimit` (10) are deleted, oldest first, except those
//!   a live pod still carries.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};

use super::plan::REVISION_HASH;
use crate::Error;
use crate::error::is_not_found;
use crate::podutil::{controller_owner_ref, controller_ref};

/// The patch that restores the DaemonSet's template: a revision's `data`.
pub fn patch_of(ds: &DaemonSet) -> Value {
    let mut template = ds
        .spec
        .as_ref()
        .and_then(|s| serde_json::to_value(&s.template).ok())
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
pub fn split(
    ds: &DaemonSet,
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

/// A new revision of the DaemonSet's template, numbered `revision`.
pub fn new_revision(ds: &DaemonSet, hash: &str, revision: i64) -> ControllerRevision {
    let mut labels: BTreeMap<String, String> = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}-{hash}",
                ds.metadata.name.as_deref().unwrap_or("")
            )),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: ds.metadata.annotations.clone(),
            owner_references: Some(vec![controller_owner_ref(ds)]),
            ..Default::default()
        },
        data: Some(RawExtension(patch_of(ds))),
        revision,
    }
}

/// Makes sure the DaemonSet's template has the current revision (see the module docs);
/// returns its hash and the old revisions. A hash collision raises the collision count and
/// returns an error, so the next pass tries the new hash.
pub async fn sync(
    client: &kube::Client,
    ds: &DaemonSet,
    revisions: &[Arc<ControllerRevision>],
) -> Result<(String, Vec<Arc<ControllerRevision>>), Error> {
    let ns = ds.metadata.namespace.as_deref().unwrap_or("");
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let (cur, old, next) = split(ds, revisions);
    if let Some(cur) = cur {
        if cur.revision < next {
            let name = cur.metadata.name.clone().unwrap_or_default();
            let patch = json!({"metadata": {"resourceVersion": cur.metadata.resource_version},
                "revision": next});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        return Ok((hash_of(&cur), old));
    }
    let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let hash = crate::deployment::util::template_hash(&template, collisions);
    let revision = new_revision(ds, &hash, next);
    match api.create(&PostParams::default(), &revision).await {
        Ok(_) => Ok((hash, old)),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let name = revision.metadata.name.clone().unwrap_or_default();
            let existing = api.get(&name).await?;
            let ours = controller_ref(&existing.metadata)
                .is_some_and(|r| Some(&r.uid) == ds.metadata.uid.as_ref());
            if ours && data(&existing) == data(&revision) {
                // Made by an earlier pass the cache has not shown yet.
                return Ok((hash, old));
            }
            let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
            let patch = json!({"metadata": {"resourceVersion": ds.metadata.resource_version},
                "status": {"collisionCount": collisions.unwrap_or(0) + 1}});
            ds_api
                .patch_status(
                    ds.metadata.name.as_deref().unwrap_or(""),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?;
            Err(Error::Other(format!(
                "found a hash collision for DaemonSet {} (revision {name}): raised collisionCount",
                ds.metadata.name.as_deref().unwrap_or("")
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
