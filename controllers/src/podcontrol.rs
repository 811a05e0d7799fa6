//! Deleting an owner's pods, as the workload controllers do (Kubernetes' PodControl): every
//! delete is expected before it is sent (so a watch slower than the controller never makes it
//! delete again), conditional on the pod's uid, and reported as an Event on the owner.

use std::sync::Arc;

use futures_util::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::{Api, DeleteParams, Preconditions};

use crate::error::is_not_found;
use crate::runtime::{Expectations, Recorder};

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
