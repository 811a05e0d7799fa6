//! Shared informers: one watch per resource per process, an in-memory store (kube's reflector
//! store) and a fan-out of changes to every subscriber.
//!
//! Why not kube's shared store alone: its broadcast carries no deletions and does not say
//! whether an object is new. Controllers need both — the ReplicaSet controller must hear that a
//! pod vanished (to replace it) and count pods it sees *added* (expectations) — so the informer
//! tells each subscriber what happened, like client-go's OnAdd / OnUpdate / OnDelete:
//! - [`Change::Added`]: the object was not in the store before;
//! - [`Change::Modified`]: it was;
//! - [`Change::Deleted`]: it left the store (a watch DELETED, or missing from a relist — client-go's
//!   DeletedFinalStateUnknown — carrying the last state seen).
//!
//! The store is updated *before* subscribers hear of a change, so a reconcile triggered by a
//! change always reads a store that already holds it. Subscribers get unbounded queues (as
//! client-go's processorListener has): a slow controller delays only itself. Subscribing after the
//! informer started first replays the current store as `Added`, atomically with later changes.
//!
//! What the store keeps is trimmed as it arrives (client-go's `SetTransform`): never an object's
//! `managedFields`, which no controller reads and which are most of a small object's memory, and
//! for pods also what only the node agent reads (see [`compact_pod`]).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, reflector::Lookup};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// What an informer can watch: a typed, cloneable, deserializable Kubernetes resource.
pub trait Watchable:
    Resource<DynamicType = ()>
    + Lookup<DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watchable for K where
    K: Resource<DynamicType = ()>
        + Lookup<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// What happened to one object.
#[derive(Debug, Clone)]
pub enum Change<K> {
    Added(Arc<K>),
    Modified(Arc<K>),
    Deleted(Arc<K>),
}

impl<K> Change<K> {
    pub fn object(&self) -> &Arc<K> {
        match self {
            Change::Added(o) | Change::Modified(o) | Change::Deleted(o) => o,
        }
    }
    pub fn into_object(self) -> Arc<K> {
        match self {
            Change::Added(o) | Change::Modified(o) | Change::Deleted(o) => o,
        }
    }
}

/// One watch on a resource, its store and its subscribers.
pub struct Informer<K>
where
    K: Resource<DynamicType = ()> + Lookup<DynamicType = ()> + Clone + 'static,
{
    api: Api<K>,
    config: watcher::Config,
    writer: Mutex<Option<Writer<K>>>,
    store: Store<K>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Change<K>>>>,
    synced: tokio::sync::watch::Sender<bool>,
    trim: fn(&mut K),
}

impl<K> Debug for Informer<K>
where
    K: Resource<DynamicType = ()> + Lookup<DynamicType = ()> + Clone + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("kind", &<K as Resource>::kind(&()))
            .field("objects", &self.store.len())
            .finish()
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()>
        + Lookup<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    /// An informer whose store keeps objects without their `managedFields`.
    pub fn new(api: Api<K>, config: watcher::Config) -> Arc<Self> {
        Self::trimmed(api, config, strip_managed_fields::<K>)
    }

    /// An informer whose store keeps each object as `trim` leaves it. Controllers write back
    /// what they read from a store (a status update of a cached object), so a trim may drop
    /// only what the server keeps when a write leaves it out (`managedFields`) or what no
    /// controller ever writes back.
    pub fn trimmed(api: Api<K>, config: watcher::Config, trim: fn(&mut K)) -> Arc<Self> {
        let writer = Writer::new(());
        let store = writer.as_reader();
        Arc::new(Informer {
            api,
            config,
            writer: Mutex::new(Some(writer)),
            store,
            subscribers: Mutex::new(Vec::new()),
            synced: tokio::sync::watch::channel(false).0,
            trim,
        })
    }

    /// Resolves once the first list is in the store. (Use this rather than kube's
    /// `Store::wait_until_ready`, which wakes only one of several concurrent waiters.)
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Whether the first list is in the store.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// The informer's store (a cheap handle). Wait for [`Informer::wait_synced`] before
    /// trusting it to be complete.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every change from now on; if the informer already holds objects, they come first as
    /// `Added`.
    pub fn subscribe(&self) -> impl Stream<Item = Change<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        for obj in self.store.state() {
            let _ = tx.send(Change::Added(obj));
        }
        subs.push(tx);
        drop(subs);
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
    }

    /// Subscribe, keeping only the objects (for kube's `*_shared_stream` controller inputs).
    pub fn objects(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.subscribe().map(Change::into_object)
    }

    /// Drives the watch until the returned future is dropped. Call once.
    pub async fn run(self: Arc<Self>) {
        let Some(mut writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            tracing::error!(kind = %<K as Resource>::kind(&()), "informer started twice");
            return;
        };
        let mut events = watcher(self.api.clone(), self.config.clone())
            .default_backoff()
            .modify(self.trim)
            .boxed();
        // Objects of a relist in progress (watcher Init .. InitDone).
        let mut relist: Option<HashMap<ObjectRef<K>, ()>> = None;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(kind = %<K as Resource>::kind(&()), error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            };
            let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            match &event {
                watcher::Event::Apply(obj) => {
                    let key = ObjectRef::from_obj(obj);
                    let existed = self.store.get(&key).is_some();
                    writer.apply_watcher_event(&event);
                    if let Some(o) = self.store.get(&key) {
                        let change = if existed {
                            Change::Modified(o)
                        } else {
                            Change::Added(o)
                        };
                        send(&mut subs, change);
                    }
                }
                watcher::Event::Delete(obj) => {
                    writer.apply_watcher_event(&event);
                    send(&mut subs, Change::Deleted(Arc::new(obj.clone())));
                }
                watcher::Event::Init => {
                    writer.apply_watcher_event(&event);
                    relist = Some(HashMap::new());
                }
                watcher::Event::InitApply(obj) => {
                    writer.apply_watcher_event(&event);
                    if let Some(r) = relist.as_mut() {
                        r.insert(ObjectRef::from_obj(obj), ());
                    }
                }
                watcher::Event::InitDone => {
                    tracing::debug!(kind = %<K as Resource>::kind(&()), "informer synced");
                    let before: HashMap<ObjectRef<K>, Arc<K>> = self
                        .store
                        .state()
                        .into_iter()
                        .map(|o| (ObjectRef::from_obj(&*o), o))
                        .collect();
                    writer.apply_watcher_event(&event);
                    self.synced.send_replace(true);
                    let listed = relist.take().unwrap_or_default();
                    for (key, old) in &before {
                        if !listed.contains_key(key) {
                            send(&mut subs, Change::Deleted(old.clone()));
                        }
                    }
                    for obj in self.store.state() {
                        let key = ObjectRef::from_obj(&*obj);
                        match before.get(&key) {
                            Some(old) if same_version(&**old, &*obj) => {}
                            Some(_) => send(&mut subs, Change::Modified(obj)),
                            None => send(&mut subs, Change::Added(obj)),
                        }
                    }
                }
            }
        }
    }
}

/// Drops `metadata.managedFields`: the server keeps an object's entries when a write leaves
/// them out, so an object written back from a store loses nothing.
pub fn strip_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// A pod as the controllers' store keeps it: without `managedFields`, and without what only
/// the node agent reads —
/// - from its containers: environment, command and arguments, probes, lifecycle hooks,
///   security context, mounts and working directory;
/// - its volumes other than claims (`persistentVolumeClaim`, `ephemeral`): the service
///   account's token, ConfigMaps, Secrets, emptyDirs. A `Volume` is 3 KB in memory however
///   little it holds.
///
/// What any controller decides on stays: names, images, ports, resources, restart policies,
/// the claims, every scheduling field and the whole status. Controllers patch pods and never
/// write one back whole, so nothing dropped here can be lost on the server.
pub fn compact_pod(pod: &mut k8s_openapi::api::core::v1::Pod) {
    strip_managed_fields(pod);
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    if let Some(volumes) = spec.volumes.as_mut() {
        volumes.retain(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some());
        volumes.shrink_to_fit();
    }
    let containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten());
    for c in containers {
        c.env = None;
        c.env_from = None;
        c.command = None;
        c.args = None;
        c.liveness_probe = None;
        c.readiness_probe = None;
        c.startup_probe = None;
        c.lifecycle = None;
        c.security_context = None;
        c.volume_mounts = None;
        c.volume_devices = None;
        c.working_dir = None;
        c.termination_message_path = None;
    }
    for c in spec.ephemeral_containers.iter_mut().flatten() {
        c.env = None;
        c.env_from = None;
        c.command = None;
        c.args = None;
        c.volume_mounts = None;
    }
}

fn same_version<K: Resource>(a: &K, b: &K) -> bool {
    a.meta().resource_version.is_some() && a.meta().resource_version == b.meta().resource_version
}

fn send<K>(subs: &mut Vec<mpsc::UnboundedSender<Change<K>>>, change: Change<K>) {
    subs.retain(|tx| !tx.is_closed());
    if let Some((last, rest)) = subs.split_last() {
        for tx in rest {
            let _ = tx.send(clone_change(&change));
        }
        let _ = last.send(change);
    }
}

fn clone_change<K>(c: &Change<K>) -> Change<K> {
    match c {
        Change::Added(o) => Change::Added(o.clone()),
        Change::Modified(o) => Change::Modified(o.clone()),
        Change::Deleted(o) => Change::Deleted(o.clone()),
    }
}

/// Queues an object's key (`namespace/name`) when it appears and whenever its generation
/// changes — its spec, not status writes (a controller's own status write would otherwise
/// start another sync); calls `gone` with the key of each object deleted. For controllers
/// that otherwise look at their objects on a period (the autoscalers). Runs until the
/// informer's stream ends.
pub async fn queue_spec_changes<K>(
    informer: Arc<Informer<K>>,
    queue: Arc<crate::runtime::WorkQueue<String>>,
    gone: impl Fn(&str),
) where
    K: Watchable,
{
    let store = informer.store();
    let mut generations: HashMap<String, Option<i64>> = HashMap::new();
    let mut changes = informer.subscribe().boxed();
    while let Some(c) = changes.next().await {
        let obj = c.object();
        let key = crate::podutil::key(obj.meta());
        if store.get(&ObjectRef::from_obj(&**obj)).is_none() {
            generations.remove(&key);
            gone(&key);
            continue;
        }
        let generation = obj.meta().generation;
        if generations.insert(key.clone(), generation) != Some(generation) {
            queue.add(key);
        }
    }
}

/// Runs a controller that looks at its objects on a period of its own (the autoscalers, the
/// GitOps controller): each object is synced when it appears and when its spec changes
/// ([`queue_spec_changes`]; `gone` forgets a deleted one), and by `workers` at a time from
/// `queue` — where `sync` puts it back for its next period.
pub async fn run_periodic<K, F, Fut>(
    name: &'static str,
    informer: Arc<Informer<K>>,
    queue: Arc<crate::runtime::WorkQueue<String>>,
    workers: usize,
    metrics: crate::runtime::Metrics,
    gone: impl Fn(&str) + Send + 'static,
    sync: F,
) where
    K: Watchable,
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), crate::Error>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(queue_spec_changes(informer, queue.clone(), gone));
    tasks.spawn(crate::endpointslice::serve(
        name, queue, workers, metrics, sync,
    ));
    while tasks.join_next().await.is_some() {}
}
