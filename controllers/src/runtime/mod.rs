//! What every controller shares: shared informers, expectations, per-object backoff, leader
//! election, each controller's own identity, the event recorder, metrics, and [`drive`], which runs a kube-rs `Controller` with
//! that error policy and those metrics.

pub mod backoff;
pub mod clock;
pub mod conditions;
pub mod discovery;
pub mod events;
pub mod expectations;
pub mod identities;
pub mod informer;
pub mod leader;
pub mod metrics;
pub mod queue;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use kube::Resource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use serde::de::DeserializeOwned;

pub use backoff::Backoffs;
pub use clock::Clock;
pub use discovery::Discovery;
pub use events::Recorder;
pub use expectations::Expectations;
pub use informer::{Change, Informer, Watchable};
pub use metrics::Metrics;
pub use queue::WorkQueue;

use crate::Error;

/// A reconciler: brings one object's world to what it declares. Level-triggered: it is given
/// the object, never the reason it was queued.
pub trait Reconcile<K>: Send + Sync + 'static {
    fn reconcile(&self, obj: Arc<K>) -> impl Future<Output = Result<Action, Error>> + Send;
}

struct Driver<R, K: Resource<DynamicType = ()>> {
    name: &'static str,
    reconciler: Arc<R>,
    backoffs: Backoffs<ObjectRef<K>>,
    metrics: Metrics,
}

/// Runs `controller` with `reconciler` until dropped: per-object exponential backoff on errors
/// (reset on success), a conflict retried at once from the next cache state, and reconcile
/// counts and durations in `metrics`.
pub async fn drive<K, R>(
    name: &'static str,
    controller: Controller<K>,
    reconciler: Arc<R>,
    metrics: Metrics,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    R: Reconcile<K>,
{
    let driver = Arc::new(Driver {
        name,
        reconciler,
        backoffs: Backoffs::default(),
        metrics,
    });
    controller
        .run(
            |obj: Arc<K>, d: Arc<Driver<R, K>>| async move {
                let key = ObjectRef::from_obj(&*obj);
                let started = Instant::now();
                let result = d.reconciler.reconcile(obj).await;
                d.metrics
                    .duration
                    .with_label_values(&[d.name])
                    .observe(started.elapsed().as_secs_f64());
                let label = if result.is_ok() { "success" } else { "error" };
                d.metrics
                    .reconciles
                    .with_label_values(&[d.name, label])
                    .inc();
                if result.is_ok() {
                    d.backoffs.succeeded(&key);
                }
                result
            },
            |obj: Arc<K>, err: &Error, d: Arc<Driver<R, K>>| {
                let key = ObjectRef::from_obj(&*obj);
                let delay = d.backoffs.failed(&key);
                if err.is_conflict() {
                    tracing::debug!(controller = d.name, object = %key, error = %err, "conflict; retrying");
                } else {
                    tracing::warn!(controller = d.name, object = %key, error = %err, retry_in = ?delay, "reconcile failed");
                }
                Action::requeue(delay)
            },
            driver.clone(),
        )
        .for_each(|_| async {})
        .await;
}
