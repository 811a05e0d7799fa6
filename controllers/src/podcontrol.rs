//! Deleting an owner's pods and following what the informer saw of its creates and deletes,
//! as the workload controllers do (Kubernetes' PodControl and expectations): every
//! delete is expected before it is sent (so a watch slower than the controller never makes it
//! delete again), conditional on the pod's uid, and reported as an Event on the owner.

use std::sync::Arc;

use futures_util::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::{Api, DeleteParams, Preconditions};

use crate::error::is_not_found;
use crate::podutil::controller_ref;
use crate::runtime::{Change, Expectations, Recorder};

/// Lowers the expectations of the pod's controller (of kind `kind`, keyed `NAMESPACE/NAME`)
/// from what the pod informer saw: an added pod is a creation, a deleted or terminating one
/// a deletion.
pub fn observe(exp: &Expectations, change: &Change<Pod>, kind: &str) {
    let pod = change.object();
    let Some(owner) = controller_ref(&pod.metadata).filter(|r| r.kind == kind) else {
        return;
    };
    let key = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        owner.name
    );
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    match change {
        Change::Added(_) => {
            exp.creation_observed(&key);
            if pod.metadata.deletion_timestamp.is_some() {
                exp.deletion_observed(&key, uid);
            }
        }
        Change::Modified(_) if pod.metadata.deletion_timestamp.is_some() => {
            exp.deletion_observed(&key, uid)
        }
        Change::Modified(_) => {}
        Change::Deleted(_) => exp.deletion_observed(&key, uid),
    }
}

/// Creates `pods` for `owner` in slow-start batches (1, 2, 4, ...), stopping at the first
/// batch with a failure, as Kubernetes' controllers do; every create is expected first, and
/// those never made are un-expected. Returns how many were made, and the first failure
/// (after a FailedCreate Event).
pub async fn create_pods<K: Resource<DynamicType = ()>>(
    owner: &K,
    key: &str,
    api: &Api<Pod>,
    pods: &[Pod],
    expectations: &Expectations,
    recorder: &Recorder,
) -> (usize, Option<kube::Error>) {
    expectations.expect_creations(key, pods.len());
    let (mut rest, mut batch, mut made) = (pods, 1usize, 0usize);
    let pp = kube::api::PostParams::default();
    while !rest.is_empty() {
        let (now, later) = rest.split_at(batch.min(rest.len()));
        rest = later;
        let results = join_all(now.iter().map(|p| api.create(&pp, p))).await;
        let mut first_error = None;
        for r in results {
            match r {
                Ok(p) => {
                    made += 1;
                    let name = p.metadata.name.unwrap_or_default();
                    recorder.normal(owner, "SuccessfulCreate", format!("Created pod: {name}"));
                }
                Err(e) => {
                    expectations.creation_observed(key);
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            for _ in 0..rest.len() {
                expectations.creation_observed(key);
            }
            recorder.warning(owner, "FailedCreate", format!("Error creating: {e}"));
            return (made, Some(e));
        }
        batch *= 2;
    }
    (made, None)
}

/// Deletes `pods` of `owner` (its expectations under `key`) at once; the first failure other
/// than NotFound, after a FailedDelete Event.
pub async fn delete_pods<K: Resource<DynamicType = ()>>(
    owner: &K,
    key: &str,
    api: &Api<Pod>,
    pods: &[Arc<Pod>],
    expectations: &Expectations,
    recorder: &Recorder,
) -> Option<kube::Error> {
    let uids: Vec<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    expectations.expect_deletions(key, uids);
    let results = join_all(pods.iter().map(|p| async move {
        let name = p.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: p.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        (p, name.clone(), api.delete(&name, &dp).await)
    }))
    .await;
    let mut first_error = None;
    for (p, name, r) in results {
        match r {
            Ok(_) => recorder.normal(owner, "SuccessfulDelete", format!("Deleted pod: {name}")),
            Err(e) => {
                expectations.deletion_observed(key, p.metadata.uid.as_deref().unwrap_or(""));
                if !is_not_found(&e) {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    if let Some(e) = &first_error {
        recorder.warning(owner, "FailedDelete", format!("Error deleting: {e}"));
    }
    first_error
}
