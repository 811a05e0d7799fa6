//! The Endpoints controller: the legacy v1 Endpoints (named like the Service) for every Service
//! with a selector (kubernetes/pkg/controller/endpoint). Deprecated in Kubernetes 1.33, but
//! kubectl and many clients still read it.
//! - [`subsets`]: pods → subsets, repacked by port set, truncated at 1000 addresses (pure);
//! - this module: a work queue of Service keys (pod changes batched as in
//!   [`crate::endpointslice`]), and the write — only when the subsets, labels or over-capacity
//!   annotation differ from what exists, with the resourceVersion read.
//!
//! A Service without a selector keeps the Endpoints its user writes; a Service that is gone has
//! its Endpoints deleted, and so, once at start, has any Endpoints left without a Service
//! (checkLeftoverEndpoints).

pub mod subsets;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::endpointslice::{
    ChangeMetrics, LABEL_HEADLESS, WORKERS, desired, queue_pod_services, queue_services, serve,
    split_key,
};
use crate::error::is_not_found;
use crate::runtime::{Backoffs, Change, Informer, Recorder, WorkQueue};
use crate::{Error, Manager, podutil};

pub const NAME: &str = "endpoints";

struct EndpointsController {
    client: kube::Client,
    services: Store<Service>,
    pods: Store<k8s_openapi::api::core::v1::Pod>,
    endpoints: Store<Endpoints>,
    recorder: Recorder,
    changes: ChangeMetrics,
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let (services, pods, endpoints) = (
        m.informers.services(),
        m.informers.pods(),
        m.informers.endpoints(),
    );
    services.wait_synced().await;
    pods.wait_synced().await;
    endpoints.wait_synced().await;
    let me = Arc::new(EndpointsController {
        client: m.client.clone(),
        services: services.store(),
        pods: pods.store(),
        endpoints: endpoints.store(),
        recorder: Recorder::new(m.client.clone(), "endpoint-controller"),
        changes: m.endpoint_changes.clone(),
    });
    let queue = WorkQueue::new(Backoffs::default());
    // Leftovers: every Endpoints object once, so those whose Service is gone are deleted.
    for e in endpoints.store().state() {
        queue.add(podutil::key(&e.metadata));
    }
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(queue_services(services.clone(), queue.clone()));
    tasks.spawn(queue_pod_services(
        pods,
        services.store(),
        queue.clone(),
        m.endpoint_updates_batch_period,
    ));
    tasks.spawn(queue_deleted_endpoints(endpoints, queue.clone()));
    tasks.spawn(serve(NAME, queue, WORKERS, m.metrics.clone(), move |key| {
        let me = me.clone();
        async move { me.sync(&key).await }
    }));
    while tasks.join_next().await.is_some() {}
}

/// An Endpoints object deleted behind the controller's back is written again.
async fn queue_deleted_endpoints(
    endpoints: Arc<Informer<Endpoints>>,
    queue: Arc<WorkQueue<String>>,
) {
    let mut changes = endpoints.subscribe().boxed();
    while let Some(change) = changes.next().await {
        if let Change::Deleted(e) = change {
            queue.add(podutil::key(&e.metadata));
        }
    }
}

/// The labels of a Service's Endpoints: the Service's, with the headless marker when it has no
/// ClusterIP.
pub fn endpoints_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    let cluster_ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
    if desired::is_headless(svc) || cluster_ip.is_none_or(str::is_empty) {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    } else {
        labels.remove(LABEL_HEADLESS);
    }
    labels
}

/// The annotations `current` should have: the same, with the over-capacity marker set exactly
/// when the addresses were truncated.
fn annotations(
    current: Option<&BTreeMap<String, String>>,
    truncated: bool,
) -> BTreeMap<String, String> {
    let mut a = current.cloned().unwrap_or_default();
    if truncated {
        a.insert(subsets::OVER_CAPACITY.into(), "truncated".into());
    } else {
        a.remove(subsets::OVER_CAPACITY);
    }
    a
}

impl EndpointsController {
    #[tracing::instrument(skip(self), fields(controller = NAME))]
    async fn sync(&self, key: &str) -> Result<(), Error> {
        let (ns, name) = split_key(key);
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
        let Some(svc) = self.services.get(&ObjectRef::new(name).within(ns)) else {
            // The Service is gone: so is its Endpoints object.
            return match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    self.changes.count(NAME, "delete");
                    Ok(())
                }
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(e.into()),
            };
        };
        if desired::selector(&svc).is_none() || desired::is_external_name(&svc) {
            return Ok(()); // its Endpoints, if any, are its user's
        }
        let pods = self
            .pods
            .state_filter(|p| p.metadata.namespace.as_deref() == Some(ns));
        let (subsets, truncated) = subsets::subsets(&svc, &pods);
        let labels = endpoints_labels(&svc);
        let current = self.endpoints.get(&ObjectRef::new(name).within(ns));
        let result = match &current {
            Some(cur) => {
                let annotations = annotations(cur.metadata.annotations.as_ref(), truncated);
                let same = subsets::canonical(cur.subsets.clone().unwrap_or_default()) == subsets
                    && cur.metadata.labels.clone().unwrap_or_default() == labels
                    && cur.metadata.annotations.clone().unwrap_or_default() == annotations;
                if same {
                    return Ok(());
                }
                let mut updated = (**cur).clone();
                updated.subsets = Some(subsets);
                updated.metadata.labels = Some(labels);
                updated.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
                let r = api.replace(name, &PostParams::default(), &updated).await;
                ("update", r)
            }
            None => {
                let annotations = annotations(None, truncated);
                let e = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: Some(ns.to_string()),
                        labels: Some(labels),
                        annotations: (!annotations.is_empty()).then_some(annotations),
                        ..Default::default()
                    },
                    subsets: Some(subsets),
                };
                ("create", api.create(&PostParams::default(), &e).await)
            }
        };
        match result {
            (op, Ok(_)) => {
                self.changes.count(NAME, op);
                Ok(())
            }
            (_, Err(e)) => {
                if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
                    self.recorder.warning(
                        &*svc,
                        "FailedToUpdateEndpoint",
                        format!("Failed to update endpoint {key}: {e}"),
                    );
                }
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;

    #[test]
    fn the_over_capacity_annotation_is_set_exactly_when_truncated() {
        let other: BTreeMap<String, String> = [("note".to_string(), "x".to_string())].into();
        let set = annotations(Some(&other), true);
        assert_eq!(
            set.get(subsets::OVER_CAPACITY).map(String::as_str),
            Some("truncated")
        );
        assert_eq!(set.get("note").map(String::as_str), Some("x"));
        assert_eq!(annotations(Some(&set), false), other);
    }

    #[test]
    fn endpoints_carry_the_service_labels_and_the_headless_marker() {
        let mut svc = Service {
            metadata: ObjectMeta {
                labels: Some(
                    [
                        ("team".to_string(), "a".to_string()),
                        (LABEL_HEADLESS.to_string(), String::new()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.5".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let labels = endpoints_labels(&svc);
        assert_eq!(labels.len(), 1, "{labels:?}");
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        assert_eq!(
            endpoints_labels(&svc)
                .get(LABEL_HEADLESS)
                .map(String::as_str),
            Some("")
        );
    }
}
