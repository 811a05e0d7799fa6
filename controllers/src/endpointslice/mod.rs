//! The EndpointSlice controller: for every Service with a selector, discovery.k8s.io/v1
//! EndpointSlices listing the pods it selects (kubernetes/pkg/controller/endpointslice).
//! - [`desired`]: pods → endpoints grouped by port set (pure);
//! - [`reconcile`]: desired endpoints + existing slices → create/update/delete, minimal (pure,
//!   shared with [`crate::endpointslicemirroring`]);
//! - [`tracker`]: refuses to act on a cache that has not seen this controller's own writes;
//! - this module: a work queue of Service keys fed by the informers, workers that sync one
//!   Service at a time and write the plan.
//!
//! Batching (`endpoint_updates_batch_period`, Kubernetes' --endpoint-updates-batch-period): a pod
//! change queues its Services after the period, and the queue keeps one waiting entry per
//! Service, so a burst of pod changes costs one sync (and one write per changed slice) per
//! period rather than one per change. Service changes are queued at once; changes to the
//! controller's own slices after max(1 s, period), as Kubernetes does.
//!
//! A Service that is gone has its managed slices deleted directly (the garbage collector would
//! too, through the ownerReference); a Service without a selector, or of type ExternalName, is
//! left alone (its slices come from elsewhere, e.g. [`crate::endpointslicemirroring`]).

pub mod desired;
pub mod reconcile;
pub mod tracker;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus::{IntCounterVec, Opts, Registry};

use crate::error::is_not_found;
use crate::podutil;
use crate::runtime::{Backoffs, Change, Informer, Metrics, Recorder, WorkQueue};
use crate::{Error, Manager};
use reconcile::{Plan, Template};
use tracker::Tracker;

pub const NAME: &str = "endpointslice";
/// The value of [`LABEL_MANAGED_BY`] on this controller's slices.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Kubernetes' default --max-endpoints-per-slice.
pub const DEFAULT_MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Kubernetes' --concurrent-service-endpoint-syncs.
pub const WORKERS: usize = 5;
/// Changes to a controller's own slices are looked at no sooner than this
/// (endpointSliceChangeMinSyncDelay).
pub const SLICE_CHANGE_MIN_DELAY: Duration = Duration::from_secs(1);

/// Writes by the endpoint controllers, like Kubernetes' endpoint_slice_controller_changes.
#[derive(Clone, Debug)]
pub struct ChangeMetrics {
    /// capstan_endpoint_controller_changes_total{controller, operation="create|update|delete"}
    pub changes: IntCounterVec,
}

impl ChangeMetrics {
    pub fn register(registry: &Registry) -> ChangeMetrics {
        let changes = IntCounterVec::new(
            Opts::new(
                "capstan_endpoint_controller_changes_total",
                "Writes of EndpointSlices and Endpoints by the endpoint controllers",
            ),
            &["controller", "operation"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(changes.clone()));
        ChangeMetrics { changes }
    }

    pub fn count(&self, controller: &str, operation: &str) {
        self.changes
            .with_label_values(&[controller, operation])
            .inc();
    }
}

/// `namespace/name`.
pub fn key_of(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// (namespace, name) of a key.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// The Service a slice belongs to, if `managed_by` manages it.
pub fn owner_key(slice: &EndpointSlice, managed_by: &str) -> Option<String> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(managed_by) {
        return None;
    }
    let svc = labels.get(LABEL_SERVICE_NAME)?;
    Some(key_of(slice.metadata.namespace.as_deref()?, svc))
}

/// The slices `managed_by` manages for `key`, from the cache.
pub fn managed_slices(
    slices: &Store<EndpointSlice>,
    key: &str,
    managed_by: &str,
) -> Vec<Arc<EndpointSlice>> {
    slices.state_filter(|s| owner_key(s, managed_by).as_deref() == Some(key))
}

/// Runs `workers` workers on `queue` until it shuts down: each sync is timed and counted under
/// `name` in the manager's metrics; a failed key comes back after its backoff.
pub async fn serve<F, Fut>(
    name: &'static str,
    queue: Arc<WorkQueue<String>>,
    workers: usize,
    metrics: Metrics,
    sync: F,
) where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    let sync = Arc::new(sync);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (queue, metrics, sync) = (queue.clone(), metrics.clone(), sync.clone());
        set.spawn(async move {
            while let Some(key) = queue.get().await {
                let started = Instant::now();
                let result = sync(key.clone()).await;
                metrics
                    .duration
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
                let label = if result.is_ok() { "success" } else { "error" };
                metrics.reconciles.with_label_values(&[name, label]).inc();
                match result {
                    Ok(()) => queue.forget(&key),
                    Err(e) => {
                        if e.is_transient() {
                            tracing::debug!(controller = name, service = %key, error = %e, "retrying");
                        } else {
                            tracing::warn!(controller = name, service = %key, error = %e, "sync failed; retrying with backoff");
                        }
                        queue.retry(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Queues, after `delay`, the Services that select each changed pod — before and after the
/// change (a pod whose labels moved it from one Service to another concerns both).
pub async fn queue_pod_services(
    pods: Arc<Informer<Pod>>,
    services: Store<Service>,
    queue: Arc<WorkQueue<String>>,
    delay: Duration,
) {
    // The Services each pod was last seen to belong to.
    let mut last: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut changes = pods.subscribe().boxed();
    while let Some(change) = changes.next().await {
        let pod = change.object();
        let pod_key = podutil::key(&pod.metadata);
        let matching: BTreeSet<String> = services
            .state_filter(|s| desired::selects(s, pod))
            .iter()
            .map(|s| podutil::key(&s.metadata))
            .collect();
        let before = last.remove(&pod_key).unwrap_or_default();
        for svc in matching.union(&before) {
            queue.add_after(svc.clone(), delay);
        }
        let now = match &change {
            Change::Deleted(_) => BTreeSet::new(),
            _ => matching,
        };
        if !now.is_empty() {
            last.insert(pod_key, now);
        }
    }
}

/// Writes slice plans and records them (shared with the mirroring controller).
pub struct SliceWriter {
    pub client: kube::Client,
    pub controller: &'static str,
    pub tracker: Tracker,
    pub changes: ChangeMetrics,
}

impl std::fmt::Debug for SliceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SliceWriter")
            .field("controller", &self.controller)
            .finish_non_exhaustive()
    }
}

impl SliceWriter {
    /// Creates, then updates (each with the resourceVersion it was read at), then deletes.
    pub async fn apply(&self, key: &str, ns: &str, plan: Plan) -> Result<(), kube::Error> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let pp = PostParams::default();
        for s in plan.create {
            let made = api.create(&pp, &s).await?;
            self.tracker.wrote(key, &made);
            self.changes.count(self.controller, "create");
        }
        for s in plan.update {
            let name = s.metadata.name.clone().unwrap_or_default();
            let made = api.replace(&name, &pp, &s).await?;
            self.tracker.wrote(key, &made);
            self.changes.count(self.controller, "update");
        }
        for s in plan.delete {
            self.delete(key, &api, &s).await?;
        }
        Ok(())
    }

    /// Deletes one slice (by uid precondition); one already gone is fine.
    pub async fn delete(
        &self,
        key: &str,
        api: &Api<EndpointSlice>,
        s: &EndpointSlice,
    ) -> Result<(), kube::Error> {
        let name = s.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: s.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {
                self.tracker.deleted(key, &name);
                self.changes.count(self.controller, "delete");
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether the cache is behind this writer's writes for `key`.
    pub fn stale(&self, key: &str, slices: &Store<EndpointSlice>) -> bool {
        let (ns, _) = split_key(key);
        self.tracker.stale(key, |name| {
            slices
                .get(&ObjectRef::new(name).within(ns))
                .map(|s| tracker::cached_revision(&s))
        })
    }
}

/// Follows the controller's own slices: a change queues their owner after `delay`; a deletion
/// also settles the tracker.
pub async fn queue_slice_owners(
    slices: Arc<Informer<EndpointSlice>>,
    managed_by: &'static str,
    writer: Arc<SliceWriter>,
    queue: Arc<WorkQueue<String>>,
    delay: Duration,
) {
    let mut changes = slices.subscribe().boxed();
    while let Some(change) = changes.next().await {
        let Some(key) = owner_key(change.object(), managed_by) else {
            continue;
        };
        if let Change::Deleted(s) = &change {
            let name = s.metadata.name.as_deref().unwrap_or("");
            writer.tracker.observed_deletion(&key, name);
        }
        queue.add_after(key, delay);
    }
}

struct EndpointSliceController {
    services: Store<Service>,
    pods: Store<Pod>,
    nodes: Store<k8s_openapi::api::core::v1::Node>,
    slices: Store<EndpointSlice>,
    writer: Arc<SliceWriter>,
    recorder: Recorder,
    max_endpoints_per_slice: usize,
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let (services, pods, nodes, slices) = (
        m.informers.services(),
        m.informers.pods(),
        m.informers.nodes(),
        m.informers.endpointslices(),
    );
    services.wait_synced().await;
    pods.wait_synced().await;
    nodes.wait_synced().await;
    slices.wait_synced().await;
    let writer = Arc::new(SliceWriter {
        client: m.client.clone(),
        controller: NAME,
        tracker: Tracker::default(),
        changes: m.endpoint_changes.clone(),
    });
    let me = Arc::new(EndpointSliceController {
        services: services.store(),
        pods: pods.store(),
        nodes: nodes.store(),
        slices: slices.store(),
        writer: writer.clone(),
        recorder: Recorder::new(m.client.clone(), "endpointslice-controller"),
        max_endpoints_per_slice: m.max_endpoints_per_slice.max(1),
    });
    let queue = WorkQueue::new(Backoffs::default());
    let batch = m.endpoint_updates_batch_period;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(queue_services(services.clone(), queue.clone()));
    tasks.spawn(queue_pod_services(
        pods,
        services.store(),
        queue.clone(),
        batch,
    ));
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

/// Queues every changed (or deleted) Service at once.
pub async fn queue_services(services: Arc<Informer<Service>>, queue: Arc<WorkQueue<String>>) {
    let mut changes = services.subscribe().boxed();
    while let Some(change) = changes.next().await {
        queue.add(podutil::key(&change.object().metadata));
    }
}

/// The labels of a Service's slices: its own labels (but the reserved ones), the headless
/// marker when it has no ClusterIP, the service name and the manager (setEndpointSliceLabels).
pub fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != LABEL_SERVICE_NAME && k.as_str() != LABEL_MANAGED_BY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if desired::is_headless(svc) {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    } else {
        labels.remove(LABEL_HEADLESS);
    }
    labels.insert(
        LABEL_SERVICE_NAME.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    labels
}

impl EndpointSliceController {
    #[tracing::instrument(skip(self), fields(controller = NAME))]
    async fn sync(&self, key: &str) -> Result<(), Error> {
        let (ns, name) = split_key(key);
        let managed = managed_slices(&self.slices, key, MANAGED_BY);
        let Some(svc) = self.services.get(&ObjectRef::new(name).within(ns)) else {
            // The Service is gone: so are its slices.
            let api: Api<EndpointSlice> = Api::namespaced(self.writer.client.clone(), ns);
            for s in &managed {
                self.writer.delete(key, &api, s).await?;
            }
            self.writer.tracker.forget(key);
            return Ok(());
        };
        if desired::selector(&svc).is_none() || desired::is_external_name(&svc) {
            return Ok(());
        }
        if self.writer.stale(key, &self.slices) {
            return Err(Error::Stale(format!(
                "the EndpointSlices of {key} in the cache are behind this controller's writes"
            )));
        }
        let pods = self
            .pods
            .state_filter(|p| p.metadata.namespace.as_deref() == Some(ns));
        let (groups, missing_nodes) =
            desired::desired(&svc, &pods, |n| self.nodes.get(&ObjectRef::new(n)));
        let template = Template {
            namespace: ns.to_string(),
            generate_name: format!("{name}-"),
            labels: slice_labels(&svc),
            annotations: None,
            owner: podutil::controller_owner_ref(&*svc),
        };
        let plan = reconcile::reconcile(
            &template,
            groups,
            &managed,
            self.max_endpoints_per_slice,
            true,
        );
        if !plan.is_empty() {
            tracing::debug!(
                create = plan.create.len(),
                update = plan.update.len(),
                delete = plan.delete.len(),
                "writing EndpointSlices"
            );
        }
        if let Err(e) = self.writer.apply(key, ns, plan).await {
            if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
                self.recorder.warning(
                    &*svc,
                    "FailedToUpdateEndpointSlices",
                    format!("Error updating Endpoint Slices for Service {key}: {e}"),
                );
            }
            return Err(e.into());
        }
        if !missing_nodes.is_empty() {
            return Err(Error::Other(format!(
                "pods on nodes not (yet) known were left out: {}",
                missing_nodes.join(", ")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn slice_labels_copy_the_service_labels_but_the_reserved_ones() {
        let svc = Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                labels: Some(
                    [
                        ("team".to_string(), "a".to_string()),
                        (LABEL_MANAGED_BY.to_string(), "someone".to_string()),
                        (LABEL_SERVICE_NAME.to_string(), "other".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let labels = slice_labels(&svc);
        let want: BTreeMap<String, String> = [
            ("team", "a"),
            (LABEL_MANAGED_BY, MANAGED_BY),
            (LABEL_SERVICE_NAME, "web"),
            (LABEL_HEADLESS, ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(labels, want);
    }

    #[test]
    fn only_slices_of_the_given_manager_have_an_owner_key() {
        let slice = |manager: &str| EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                labels: Some(
                    [
                        (LABEL_SERVICE_NAME.to_string(), "web".to_string()),
                        (LABEL_MANAGED_BY.to_string(), manager.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            owner_key(&slice(MANAGED_BY), MANAGED_BY).as_deref(),
            Some("default/web")
        );
        assert_eq!(owner_key(&slice("capstan-agent"), MANAGED_BY), None);
    }
}
