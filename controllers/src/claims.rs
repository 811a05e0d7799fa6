//! Controller references (kubernetes/pkg/controller's ControllerRefManager), shared by every
//! controller that owns objects through a selector (ReplicaSet → pods, Deployment → ReplicaSets):
//! - [`claim`]: which objects an owner controls, which orphans it should adopt, and which of its
//!   objects stopped matching and must be released (pure);
//! - [`owners_of`]: which owners a change of an object concerns (its controller, or for an
//!   orphan every owner in its namespace selecting it);
//! - [`adopt`] / [`release`]: the ownerReferences patch, guarded by the object's
//!   resourceVersion so a stale cache cannot undo someone else's change.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::Error;
use crate::error::is_not_found;
use crate::podutil::{controller_ref, selects};

/// The outcome of claiming: what an owner controls (adopted ones included), the orphans to
/// adopt, and the objects it controls but no longer selects, to release.
#[derive(Debug)]
pub struct Claims<T> {
    pub owned: Vec<Arc<T>>,
    pub adopt: Vec<Arc<T>>,
    pub release: Vec<Arc<T>>,
}

/// Claims `objects` for the owner `owner` selecting with `selector`. An owner being deleted
/// keeps what it has but neither adopts nor releases.
pub fn claim<T: Resource>(
    owner: &ObjectMeta,
    selector: Option<&LabelSelector>,
    objects: &[Arc<T>],
) -> Claims<T> {
    let uid = owner.uid.as_deref().unwrap_or_default();
    let deleting = owner.deletion_timestamp.is_some();
    let mut claims = Claims {
        owned: Vec::new(),
        adopt: Vec::new(),
        release: Vec::new(),
    };
    for obj in objects {
        let meta = obj.meta();
        let matches = selects(selector, meta.labels.as_ref());
        match controller_ref(meta) {
            Some(r) if r.uid == uid => {
                if matches || deleting {
                    claims.owned.push(obj.clone());
                } else {
                    claims.release.push(obj.clone());
                }
            }
            Some(_) => {}
            None if matches && !deleting && meta.deletion_timestamp.is_none() => {
                claims.adopt.push(obj.clone());
                claims.owned.push(obj.clone());
            }
            None => {}
        }
    }
    claims
}

/// The owners (of kind `O`) a change of an object concerns: its controller when that is an
/// `O`, else (an orphan) every `O` of its namespace whose selector matches it.
pub fn owners_of<O>(
    owners: &Store<O>,
    meta: &ObjectMeta,
    selector_of: impl Fn(&O) -> Option<&LabelSelector>,
) -> Vec<ObjectRef<O>>
where
    O: Resource<DynamicType = ()> + kube::runtime::reflector::Lookup<DynamicType = ()> + Clone,
{
    let ns = meta.namespace.as_deref().unwrap_or("");
    let kind = <O as Resource>::kind(&());
    match controller_ref(meta) {
        Some(r) if r.kind == kind && r.api_version == <O as Resource>::api_version(&()) => {
            vec![ObjectRef::new(&r.name).within(ns)]
        }
        Some(_) => vec![],
        None => owners
            .state_filter(|o| {
                o.meta().namespace.as_deref() == Some(ns)
                    && selects(selector_of(o), meta.labels.as_ref())
            })
            .iter()
            .map(|o| ObjectRef::from_obj(&**o))
            .collect(),
    }
}

/// Adds `owner` to the object's ownerReferences.
pub async fn adopt<T>(api: &Api<T>, obj: &T, owner: OwnerReference) -> Result<(), Error>
where
    T: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut refs = obj.meta().owner_references.clone().unwrap_or_default();
    refs.push(owner);
    set_owner_refs(api, obj, refs).await
}

/// Drops the reference to the owner `owner_uid` from the object's ownerReferences.
pub async fn release<T>(api: &Api<T>, obj: &T, owner_uid: &str) -> Result<(), Error>
where
    T: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let refs: Vec<_> = obj
        .meta()
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.uid != owner_uid)
        .collect();
    set_owner_refs(api, obj, refs).await
}

async fn set_owner_refs<T>(api: &Api<T>, obj: &T, refs: Vec<OwnerReference>) -> Result<(), Error>
where
    T: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let meta = obj.meta();
    let patch = json!({"metadata": {
        "ownerReferences": if refs.is_empty() { serde_json::Value::Null } else { json!(refs) },
        "resourceVersion": meta.resource_version,
    }});
    merge_patch(api, obj, &patch).await
}

/// A JSON merge patch of `obj`; the object being gone already counts as done.
pub async fn merge_patch<T>(api: &Api<T>, obj: &T, body: &serde_json::Value) -> Result<(), Error>
where
    T: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.as_deref().unwrap_or("");
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(body))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `owner` may adopt: re-read from the API (never the cache), it still exists under the
/// same UID and is not being deleted (RecheckDeletionTimestamp).
pub async fn can_adopt<O>(api: &Api<O>, owner: &O) -> Result<bool, Error>
where
    O: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let meta = owner.meta();
    match api.get_opt(meta.name.as_deref().unwrap_or("")).await? {
        Some(fresh) => {
            Ok(fresh.meta().uid == meta.uid && fresh.meta().deletion_timestamp.is_none())
        }
        None => Ok(false),
    }
}
