//! The agent's Events about its pods, as the kubelet writes them: core/v1 Events with source
//! `kubelet` on this node, kubelet's reasons and messages ([`reason`]), correlated the way
//! client-go's legacy recorder does it (tools/record events_cache.go, EventCorrelator):
//!
//! 1. **Aggregation.** Events alike but for their message (same source, object, type, reason)
//!    are counted per 10-minute interval; from the tenth distinct message on, they become one
//!    Event whose message starts "(combined from similar events): ".
//! 2. **Deduplication.** An Event identical to one already written (same source, object and
//!    fieldPath, type, reason, message) bumps that Event's `count` and `lastTimestamp` with a
//!    PATCH instead of creating another. client-go keeps its cache without an age limit; here
//!    an Event not seen again for 10 minutes starts over as a new Event, so a PATCH never aims
//!    at an Event the API server's TTL has probably removed.
//! 3. **Spam filter.** A token bucket per source and object (burst 25, one token per 5
//!    minutes) drops what exceeds it.
//!
//! The [`Correlator`] is pure (time is an argument); the [`Recorder`] handed to pod workers
//! queues records without blocking and one background task correlates and writes them through
//! an [`EventSink`] (the API server, or memory in tests). Writing never fails a pod sync.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// kubelet's event reasons (pkg/kubelet/events/event.go).
pub mod reason {
    pub const PULLING: &str = "Pulling";
    pub const PULLED: &str = "Pulled";
    pub const CREATED: &str = "Created";
    pub const STARTED: &str = "Started";
    pub const FAILED: &str = "Failed";
    pub const KILLING: &str = "Killing";
    pub const BACK_OFF: &str = "BackOff";
    pub const UNHEALTHY: &str = "Unhealthy";
    pub const PROBE_WARNING: &str = "ProbeWarning";
    pub const FAILED_MOUNT: &str = "FailedMount";
    pub const FAILED_CREATE_POD_SANDBOX: &str = "FailedCreatePodSandBox";
    pub const SANDBOX_CHANGED: &str = "SandboxChanged";
    pub const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";
    /// The kernel killed a process for memory (node-problem-detector's kernel monitor).
    pub const OOM_KILLING: &str = "OOMKilling";
    /// kubelet's: an OOM kill outside any memory cgroup's limit.
    pub const SYSTEM_OOM: &str = "SystemOOM";
}

/// The kubelet's source component.
pub const COMPONENT: &str = "kubelet";

/// How long similar and identical events are remembered (client-go's maxIntervalInSeconds).
pub const INTERVAL: Duration = Duration::from_secs(600);
/// Distinct messages per interval before similar events are combined (defaultAggregateMaxEvents).
pub const AGGREGATE_MAX: usize = 10;
/// The spam filter's bucket: burst 25, one token per 5 minutes (defaultSpamBurst, defaultSpamQPS).
pub const SPAM_BURST: f64 = 25.0;
pub const SPAM_REFILL: Duration = Duration::from_secs(300);
/// Entries kept per cache before the oldest are forgotten (client-go's LRU size).
const CACHE_MAX: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One thing the agent wants to say about an object.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub object: ObjectReference,
    pub type_: EventType,
    pub reason: String,
    pub message: String,
}

/// What to write for a record.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Create(Event),
    /// Bump an existing Event: the merge patch, and the whole Event to create should it be gone.
    Patch {
        namespace: String,
        name: String,
        patch: Value,
        event: Event,
    },
}

#[derive(Debug)]
struct Seen {
    event: Event,
    at: jiff::Timestamp,
}

#[derive(Debug)]
struct Similar {
    messages: HashSet<String>,
    at: jiff::Timestamp,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: jiff::Timestamp,
}

/// client-go's EventCorrelator for one source (this node's kubelet): pure, time as argument.
#[derive(Debug)]
pub struct Correlator {
    source: EventSource,
    similar: HashMap<String, Similar>,
    seen: HashMap<String, Seen>,
    buckets: HashMap<String, Bucket>,
    last_nanos: i128,
}

fn object_key(o: &ObjectReference) -> [&str; 5] {
    fn s(v: &Option<String>) -> &str {
        v.as_deref().unwrap_or_default()
    }
    [
        s(&o.kind),
        s(&o.namespace),
        s(&o.name),
        s(&o.uid),
        s(&o.api_version),
    ]
}

fn elapsed(since: jiff::Timestamp, now: jiff::Timestamp) -> Duration {
    now.duration_since(since).unsigned_abs()
}

/// Forgets the oldest entries of a cache that outgrew its size.
fn trim<V>(m: &mut HashMap<String, V>, at: impl Fn(&V) -> jiff::Timestamp) {
    if m.len() <= CACHE_MAX {
        return;
    }
    let mut times: Vec<jiff::Timestamp> = m.values().map(&at).collect();
    times.sort();
    let cut = times[m.len() - CACHE_MAX];
    m.retain(|_, v| at(v) >= cut);
}

impl Correlator {
    /// The kubelet's correlator on `node`.
    pub fn new(node: &str) -> Self {
        Correlator::for_source(COMPONENT, node)
    }

    /// A correlator for another component's Events (`host` empty: none).
    pub fn for_source(component: &str, host: &str) -> Self {
        Correlator {
            source: EventSource {
                component: Some(component.into()),
                host: (!host.is_empty()).then(|| host.into()),
            },
            similar: HashMap::new(),
            seen: HashMap::new(),
            buckets: HashMap::new(),
            last_nanos: 0,
        }
    }

    fn source_key(&self) -> [&str; 2] {
        [
            self.source.component.as_deref().unwrap_or_default(),
            self.source.host.as_deref().unwrap_or_default(),
        ]
    }

    /// What to write for `r` at `now`; None when the spam filter drops it.
    pub fn observe(&mut self, r: &Record, now: jiff::Timestamp) -> Option<Write> {
        let mut base: Vec<&str> = self.source_key().to_vec();
        base.extend(object_key(&r.object));
        let spam_key = base.join("\u{0}");
        base.extend([r.type_.as_str(), r.reason.as_str()]);
        let aggregate_key = base.join("\u{0}");
        let field_path = r.object.field_path.as_deref().unwrap_or_default();
        let event_key = [aggregate_key.as_str(), field_path, r.message.as_str()].join("\u{0}");

        // 1. Aggregation by reason.
        let similar = self
            .similar
            .entry(aggregate_key.clone())
            .or_insert_with(|| Similar {
                messages: HashSet::new(),
                at: now,
            });
        if elapsed(similar.at, now) > INTERVAL {
            similar.messages.clear();
        }
        similar.at = now;
        similar.messages.insert(r.message.clone());
        let (message, key, field_path) = if similar.messages.len() < AGGREGATE_MAX {
            (r.message.clone(), event_key, r.object.field_path.clone())
        } else {
            // Do not grow: the set stays at the threshold while similar events keep coming.
            similar.messages.remove(&r.message);
            (
                format!("(combined from similar events): {}", r.message),
                aggregate_key,
                None,
            )
        };
        trim(&mut self.similar, |s| s.at);

        // 2. Deduplication.
        let write = match self.seen.get_mut(&key) {
            Some(seen) if elapsed(seen.at, now) <= INTERVAL => {
                let ev = &mut seen.event;
                ev.count = Some(ev.count.unwrap_or(1) + 1);
                ev.last_timestamp = Some(Time(now));
                ev.message = Some(message.clone());
                seen.at = now;
                Write::Patch {
                    namespace: ev.metadata.namespace.clone().unwrap_or_default(),
                    name: ev.metadata.name.clone().unwrap_or_default(),
                    patch: json!({"count": ev.count, "lastTimestamp": Time(now), "message": message}),
                    event: ev.clone(),
                }
            }
            _ => {
                let mut object = r.object.clone();
                object.field_path = field_path;
                let ev = self.new_event(object, r, message, now);
                self.seen.insert(
                    key,
                    Seen {
                        event: ev.clone(),
                        at: now,
                    },
                );
                trim(&mut self.seen, |s| s.at);
                Write::Create(ev)
            }
        };

        // 3. Spam filter per source and object.
        let bucket = self.buckets.entry(spam_key).or_insert(Bucket {
            tokens: SPAM_BURST,
            at: now,
        });
        let refill = elapsed(bucket.at, now).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(SPAM_BURST);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return None;
        }
        bucket.tokens -= 1.0;
        trim(&mut self.buckets, |b| b.at);
        Some(write)
    }

    fn new_event(
        &mut self,
        object: ObjectReference,
        r: &Record,
        message: String,
        now: jiff::Timestamp,
    ) -> Event {
        // kubelet names events `<object>.<unix nanos in hex>`; never twice the same.
        let nanos = now.as_nanosecond().max(self.last_nanos + 1);
        self.last_nanos = nanos;
        Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{nanos:x}",
                    object.name.as_deref().unwrap_or_default()
                )),
                namespace: Some(object.namespace.clone().unwrap_or_else(|| "default".into())),
                ..Default::default()
            },
            involved_object: object,
            reason: Some(r.reason.clone()),
            message: Some(message),
            type_: Some(r.type_.as_str().into()),
            source: Some(self.source.clone()),
            reporting_component: self.source.component.clone(),
            reporting_instance: self.source.host.clone(),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Default::default()
        }
    }
}

/// Where Events go.
pub trait EventSink: Send + Sync + 'static {
    fn create(&self, event: &Event) -> impl Future<Output = Result<(), String>> + Send;
    /// Ok(false) when the Event is gone.
    fn patch(
        &self,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> impl Future<Output = Result<bool, String>> + Send;
}

/// The API server's core/v1 Events.
#[derive(Clone)]
pub struct KubeSink(pub kube::Client);

impl std::fmt::Debug for KubeSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeSink")
    }
}

impl EventSink for KubeSink {
    async fn create(&self, event: &Event) -> Result<(), String> {
        let ns = event.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<Event> = Api::namespaced(self.0.clone(), ns);
        match api.create(&PostParams::default(), event).await {
            Ok(_) => Ok(()),
            // The namespace is being deleted: nothing to tell anyone.
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn patch(&self, namespace: &str, name: &str, patch: &Value) -> Result<bool, String> {
        let api: Api<Event> = Api::namespaced(self.0.clone(), namespace);
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Records Events without blocking; cheap to clone. A full queue drops the record (logged),
/// as client-go's broadcaster does, rather than slowing a pod worker.
#[derive(Clone, Default)]
pub struct Recorder {
    tx: Option<mpsc::Sender<Record>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("enabled", &self.tx.is_some())
            .finish()
    }
}

const QUEUE: usize = 1000;

impl Recorder {
    /// A recorder that drops everything.
    pub fn disabled() -> Recorder {
        Recorder { tx: None }
    }

    /// A recorder for `node` writing through `sink`, with `clock` for timestamps; the writer
    /// task ends when every clone of the recorder is gone.
    pub fn spawn<S: EventSink>(
        node: &str,
        sink: S,
        clock: Arc<dyn Fn() -> jiff::Timestamp + Send + Sync>,
    ) -> Recorder {
        Recorder::spawn_as(COMPONENT, node, sink, clock)
    }

    /// A recorder for `component`'s Events (on `host`, or none when empty).
    pub fn spawn_as<S: EventSink>(
        component: &str,
        host: &str,
        sink: S,
        clock: Arc<dyn Fn() -> jiff::Timestamp + Send + Sync>,
    ) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<Record>(QUEUE);
        let mut correlator = Correlator::for_source(component, host);
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let Some(write) = correlator.observe(&r, clock()) else {
                    tracing::debug!(reason = %r.reason, "event dropped by the spam filter");
                    continue;
                };
                let result = match write {
                    Write::Create(ev) => sink.create(&ev).await,
                    Write::Patch {
                        namespace,
                        name,
                        patch,
                        event,
                    } => match sink.patch(&namespace, &name, &patch).await {
                        Ok(true) => Ok(()),
                        Ok(false) => sink.create(&event).await,
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = result {
                    tracing::warn!(reason = %r.reason, error = %e, "writing an event failed");
                }
            }
        });
        Recorder { tx: Some(tx) }
    }

    /// Records an event about `pod`, or one of its containers (`field_path`
    /// `spec.containers{NAME}`).
    pub fn pod_event(
        &self,
        pod: &Pod,
        field_path: Option<String>,
        type_: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.record(
            ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                field_path,
            },
            type_,
            reason,
            message.into(),
        );
    }

    /// Records an event about the Node `node` (kubelet's reference: the name as the uid).
    pub fn node_event(
        &self,
        node: &str,
        type_: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.record(
            ObjectReference {
                kind: Some("Node".into()),
                name: Some(node.into()),
                uid: Some(node.into()),
                ..Default::default()
            },
            type_,
            reason,
            message.into(),
        );
    }

    /// Records an event about any object.
    pub fn object_event(
        &self,
        object: ObjectReference,
        type_: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.record(object, type_, reason, message.into());
    }

    /// Queues a record for the writer; a full queue drops it (a worker never waits on Events).
    fn record(&self, object: ObjectReference, type_: EventType, reason: &str, message: String) {
        let Some(tx) = &self.tx else { return };
        let record = Record {
            object,
            type_,
            reason: reason.into(),
            message,
        };
        if tx.try_send(record).is_err() {
            tracing::debug!(%reason, "event queue full or closed; event dropped");
        }
    }
}

/// A container's fieldPath, as kubelet's reference to it: `spec.containers{NAME}` or
/// `spec.initContainers{NAME}`.
pub fn container_path(pod: &Pod, name: &str) -> String {
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.name == name));
    if init {
        format!("spec.initContainers{{{name}}}")
    } else {
        format!("spec.containers{{{name}}}")
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
