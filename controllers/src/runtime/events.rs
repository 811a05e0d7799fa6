//! Kubernetes Events for what users must see (events.k8s.io/v1, which `kubectl get events` and
//! `kubectl describe` read).
//!
//! Like client-go's event broadcaster, publishing never blocks or fails a reconcile: events go
//! into a bounded queue (1,000) drained by one background writer with a few requests in flight,
//! and are dropped — counted, logged at debug — when the queue is full, so a burst of ten
//! thousand "Scheduled" events cannot slow the work they describe.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Resource;
use kube::api::{Api, PostParams};
use tokio::sync::mpsc;

const QUEUE: usize = 1000;
const IN_FLIGHT: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

#[derive(Clone)]
pub struct Recorder {
    controller: Arc<str>,
    tx: mpsc::Sender<Event>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("controller", &self.controller)
            .finish()
    }
}

impl Recorder {
    /// Events reported by `controller` (e.g. "deployment-controller"); starts the writer task.
    pub fn new(client: kube::Client, controller: &str) -> Self {
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
        tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
            while let Some(ev) = rx.recv().await {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let ns = ev
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                tokio::spawn(async move {
                    if let Err(e) = api.create(&PostParams::default(), &ev).await {
                        tracing::debug!(reason = ?ev.reason, error = %e, "writing an event failed");
                    }
                    drop(permit);
                });
            }
        });
        Recorder {
            controller: controller.into(),
            tx,
        }
    }

    pub fn normal<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: &str, note: String) {
        self.publish(obj.object_ref(&()), EventType::Normal, reason, note);
    }

    pub fn warning<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: &str, note: String) {
        self.publish(obj.object_ref(&()), EventType::Warning, reason, note);
    }

    pub fn publish(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let now = jiff::Timestamp::now();
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or("event"),
                    now.as_nanosecond()
                )),
                namespace: Some(
                    regarding
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(reason.to_string()),
            reason: Some(reason.to_string()),
            note: Some(note),
            type_: Some(match type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            regarding: Some(regarding),
            reporting_controller: Some(format!("capstan.dev/{}", self.controller)),
            reporting_instance: Some(self.controller.to_string()),
            ..Default::default()
        };
        if self.tx.try_send(ev).is_err() {
            tracing::debug!(%reason, "event queue full; event dropped");
        }
    }
}
