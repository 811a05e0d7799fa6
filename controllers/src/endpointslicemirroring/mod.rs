//! The EndpointSlice mirroring controller: for Services without a selector, whose Endpoints
//! their users write, EndpointSlices mirroring those Endpoints
//! (kubernetes/pkg/controller/endpointslicemirroring), so that everything reading slices (the
//! node agent's proxy, DNS) sees them too.
//! - [`mirror`]: Endpoints → desired endpoints per (address type, port set), and the slices'
//!   labels and annotations (pure);
//! - the slices are planned by the same pure [`crate::endpointslice::reconcile`] and written by
//!   the same [`SliceWriter`], labelled managed-by `endpointslicemirroring-controller.k8s.io` and
//!   controlled by the Endpoints object.
//!
//! Nothing is mirrored — and mirrored slices are deleted — when the Service is gone or has a
//! selector (the EndpointSlice controller serves it), when the Endpoints are gone, or when they
//! are labelled `endpointslice.kubernetes.io/skip-mirror: "true"` (as the API server does for the
//! `kubernetes` Service, whose slice it writes itself). Slices with another manager are never
//! touched.

pub mod mirror;

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::endpointslice::reconcile::{self, Template};
use crate::endpointslice::tracker::Tracker;
use crate::endpointslice::{
    SLICE_CHANGE_MIN_DELAY, SliceWriter, WORKERS, desired, managed_slices, queue_services,
    queue_slice_owners, serve, split_key,
};
use crate::runtime::{Backoffs, Informer, Recorder, WorkQueue};
use crate::{Error, Manager, podutil};

pub const NAME: &str = "endpointslicemirroring";
/// The value of the managed-by label on mirrored slices.
pub const MANAGED_BY: &str = "endpointslicemirroring-controller.k8s.io";
/// Endpoints carrying this label with value "true" are not mirrored.
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Kubernetes' --mirroring-max-endpoints-per-subset.
pub const MAX_ENDPOINTS_PER_SUBSET: usize = 1000;

struct MirroringController {
    services: Store<Service>,
    endpoints: Store<Endpoints>,
    slices: Store<EndpointSlice>,
    writer: Arc<SliceWriter>,
    recorder: Recorder,
    max_endpoints_per_slice: usize,
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let (services, endpoints, slices) = (
        m.informers.services(),
        m.informers.endpoints(),
        m.informers.endpointslices(),
    );
    services.wait_synced().await;
    endpoints.wait_synced().await;
    slices.wait_synced().await;
    let writer = Arc::new(SliceWriter {
        client: m.client.clone(),
        controller: NAME,
        tracker: Tracker::default(),
        changes: m.endpoint_changes.clone(),
    });
    let me = Arc::new(MirroringController {
        services: services.store(),
        endpoints: endpoints.store(),
        slices: slices.store(),
        writer: writer.clone(),
        recorder: Recorder::new(m.client.clone(), "endpointslicemirroring-controller"),
        max_endpoints_per_slice: m.max_endpoints_per_slice.max(1),
    });
    let queue = WorkQueue::new(Backoffs::default());
    let batch = m.endpoint_updates_batch_period;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(queue_services(services, queue.clone()));
    tasks.spawn(queue_endpoints(endpoints, queue.clone(), batch));
    tasks.spawn(queue_slice_owners(
        slices,
        MANAGED_BY,
        writer,
        queue.clone(),
        batch.max(SLICE_CHANGE_MIN_DELAY),
    ));
    tasks.spawn(serve(NAME, queue, WORKERS, m.metrics.clone(), move |key| {
        let me = me.clone();
        async move { me.sync(&key).await }
    }));
    while tasks.join_next().await.is_some() {}
}

async fn queue_endpoints(
    endpoints: Arc<Informer<Endpoints>>,
    queue: Arc<WorkQueue<String>>,
    delay: std::time::Duration,
) {
    let mut changes = endpoints.subscribe().boxed();
    while let Some(change) = changes.next().await {
        queue.add_after(podutil::key(&change.object().metadata), delay);
    }
}

/// Whether the Endpoints `e` of `svc` are to be mirrored.
pub fn should_mirror(svc: &Service, e: &Endpoints) -> bool {
    let skip = e
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SKIP_MIRROR))
        .is_some_and(|v| v == "true");
    desired::selector(svc).is_none() && !skip
}

impl MirroringController {
    #[tracing::instrument(skip(self), fields(controller = NAME))]
    async fn sync(&self, key: &str) -> Result<(), Error> {
        let (ns, name) = split_key(key);
        let managed = managed_slices(&self.slices, key, MANAGED_BY);
        let svc = self.services.get(&ObjectRef::new(name).within(ns));
        let endpoints = self.endpoints.get(&ObjectRef::new(name).within(ns));
        let pair = svc.zip(endpoints).filter(|(s, e)| should_mirror(s, e));
        let Some((svc, endpoints)) = pair else {
            let api: Api<EndpointSlice> = Api::namespaced(self.writer.client.clone(), ns);
            for s in &managed {
                self.writer.delete(key, &api, s).await?;
            }
            self.writer.tracker.forget(key);
            return Ok(());
        };
        if self.writer.stale(key, &self.slices) {
            return Err(Error::Stale(format!(
                "the EndpointSlices of {key} in the cache are behind this controller's writes"
            )));
        }
        let (groups, dropped) = mirror::groups(&endpoints, MAX_ENDPOINTS_PER_SUBSET);
        if dropped > 0 {
            self.recorder.warning(
                &*endpoints,
                "EndpointsOverCapacity",
                format!("{dropped} addresses over {MAX_ENDPOINTS_PER_SUBSET} per subset were not mirrored"),
            );
        }
        let template = Template {
            namespace: ns.to_string(),
            generate_name: format!("{name}-"),
            labels: mirror::labels(&endpoints),
            annotations: Some(mirror::annotations(&endpoints)),
            owner: podutil::controller_owner_ref(&*endpoints),
        };
        let plan = reconcile::reconcile(
            &template,
            groups,
            &managed,
            self.max_endpoints_per_slice,
            false,
        );
        if let Err(e) = self.writer.apply(key, ns, plan).await {
            if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
                self.recorder.warning(
                    &*svc,
                    "FailedToUpdateEndpointSlices",
                    format!("Error mirroring Endpoints {key} to EndpointSlices: {e}"),
                );
            }
            return Err(e.into());
        }
        Ok(())
    }
}
