//! Kubernetes Events for what users must see (events.k8s.io/v1, which `kubectl get events` and
//! `kubectl describe` read).
//!
//! Like client-go's event broadcaster, publishing never blocks or fails a reconcile: events go
//! into a bounded queue (1,000) drained by one background writer with a few requests in flight,
//! and are dropped — counted, logged at debug — when the queue is full, so a burst of ten
//! thousand "Scheduled" events cannot slow the work they describe.
//!
//! An event repeating one written less than [`SERIES_WINDOW`] ago (same object, type, reason
//! and note — an autoscaler failing every sync) is not written again: the first one's `series`
//! is counted up instead, as client-go's events library does, so `kubectl describe` says
//! `(x12 over 3m)` and the store holds one object.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;

const QUEUE: usize = 1000;
const IN_FLIGHT: usize = 8;
/// How long a repeated event counts into the first one's series (client-go: 6 minutes).
pub const SERIES_WINDOW: std::time::Duration = std::time::Duration::from_secs(360);
/// Series remembered at most (older ones are forgotten first).
const SERIES_KEPT: usize = 4096;

/// What makes two events the same: the object, type, reason and note.
type SeriesKey = (String, String, String, String, String);

/// A written event that later repeats count into.
struct Series {
    namespace: String,
    name: String,
    count: i32,
    first: std::time::Instant,
}

fn series_key(ev: &Event) -> SeriesKey {
    let r = ev.regarding.clone().unwrap_or_default();
    (
        format!(
            "{}/{}/{}/{}",
            r.kind.unwrap_or_default(),
            r.namespace.unwrap_or_default(),
            r.name.unwrap_or_default(),
            r.uid.unwrap_or_default()
        ),
        ev.type_.clone().unwrap_or_default(),
        ev.reason.clone().unwrap_or_default(),
        ev.note.clone().unwrap_or_default(),
        ev.reporting_controller.clone().unwrap_or_default(),
    )
}

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
            let mut series: std::collections::HashMap<SeriesKey, Series> =
                std::collections::HashMap::new();
            while let Some(ev) = rx.recv().await {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let ns = ev
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let key = series_key(&ev);
                let repeat = series
                    .get_mut(&key)
                    .filter(|s| s.first.elapsed() < SERIES_WINDOW && s.namespace == ns)
                    .map(|s| {
                        s.count += 1;
                        (s.name.clone(), s.count)
                    });
                if repeat.is_none() {
                    if series.len() >= SERIES_KEPT {
                        series.retain(|_, s| s.first.elapsed() < SERIES_WINDOW);
                    }
                    if series.len() < SERIES_KEPT {
                        series.insert(
                            key,
                            Series {
                                namespace: ns.clone(),
                                name: ev.metadata.name.clone().unwrap_or_default(),
                                count: 1,
                                first: std::time::Instant::now(),
                            },
                        );
                    }
                }
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                tokio::spawn(async move {
                    let written = match repeat {
                        Some((name, count)) => {
                            let seen = ev.event_time.clone().map(|t| t.0);
                            let patch = serde_json::json!({"series": {
                                "count": count,
                                "lastObservedTime": seen.unwrap_or_else(jiff::Timestamp::now),
                            }});
                            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                                .await
                                .map(|_| ())
                        }
                        None => api.create(&PostParams::default(), &ev).await.map(|_| ()),
                    };
                    if let Err(e) = written {
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
