//! The garbage collector: deletes objects whose owners are gone, in the three ways a user can
//! delete an owner (Kubernetes' semantics):
//! - **Background** (the default): the owner goes at once; its dependents, now dangling, are
//!   deleted after.
//! - **Foreground**: the API server marks the owner with the `foregroundDeletion` finalizer;
//!   the collector deletes its dependents (foreground too, when they have their own) and
//!   removes the finalizer once no dependent with `blockOwnerDeletion: true` is left.
//! - **Orphan**: the `orphan` finalizer; the collector removes the owner's references from
//!   its dependents, then the finalizer.
//!
//! How: one metadata-only watch per served resource (discovery, resynced every 30 s so custom
//! resources join as their CRDs come) feeds the dependency [`graph`]; workers take uids from
//! two work queues and decide from the live objects — every owner is re-read from the API
//! before a dependent is deleted, so neither a stale watch nor a restart can delete anything
//! with a live owner. Dependents whose owners vanished while the collector was down are found
//! on start-up: their owners become virtual nodes, checked and found absent.

pub mod graph;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::core::{DynamicObject, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde_json::json;

use crate::error::is_not_found;
use crate::runtime::discovery::{Discovery, Mapping};
use crate::runtime::{Backoffs, WorkQueue};
use crate::{Error, Manager, Result};
use graph::{FOREGROUND, Graph, Identity, ORPHAN, Work};

pub const NAME: &str = "garbagecollector";

/// Resources the collector never watches: Events are many, short-lived and never owners
/// (Kubernetes ignores them too); both groups serve the same objects here.
const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];

#[derive(Debug, Clone)]
pub struct Config {
    /// Concurrent attempt-to-delete workers (kube-controller-manager's default is 20).
    pub workers: usize,
    /// How often discovery is re-read for new or removed resources.
    pub resync: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: 20,
            resync: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug)]
struct GcMetrics {
    deletions: IntCounterVec,
    orphaned: IntCounterVec,
    nodes: IntGauge,
    monitors: IntGauge,
}

impl GcMetrics {
    fn register(registry: &Registry) -> GcMetrics {
        let deletions = IntCounterVec::new(
            Opts::new(
                "capstan_garbagecollector_deletions_total",
                "Objects the garbage collector deleted, by resource and propagation policy",
            ),
            &["resource", "policy"],
        )
        .expect("valid metric");
        let orphaned = IntCounterVec::new(
            Opts::new(
                "capstan_garbagecollector_orphaned_total",
                "Owner references removed from dependents (orphan deletions and dangling references)",
            ),
            &["resource"],
        )
        .expect("valid metric");
        let nodes = IntGauge::new(
            "capstan_garbagecollector_graph_nodes",
            "Objects in the dependency graph",
        )
        .expect("valid metric");
        let monitors = IntGauge::new(
            "capstan_garbagecollector_monitored_resources",
            "Resources the garbage collector watches",
        )
        .expect("valid metric");
        for m in [
            Box::new(deletions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(orphaned.clone()),
            Box::new(nodes.clone()),
            Box::new(monitors.clone()),
        ] {
            let _ = registry.register(m);
        }
        GcMetrics {
            deletions,
            orphaned,
            nodes,
            monitors,
        }
    }
}

/// Owners known to be gone (a bounded FIFO), sparing a re-read of a deleted owner for each of
/// its thousand dependents. Two kinds of keys, as Kubernetes' absentOwnerCache learned:
/// - a uid whose deletion was observed: every reference to it dangles (uids are never reused);
/// - a uid looked up at given coordinates (group, kind, namespace, name) and not found there:
///   only references with the same coordinates dangle — a wrong reference elsewhere (a copied
///   manifest in another namespace) must not condemn the dependents of a live owner.
#[derive(Debug, Default)]
struct Absent {
    set: HashSet<String>,
    order: VecDeque<String>,
}

/// The key of an owner looked up at these coordinates.
fn coordinates(
    uid: &str,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) -> String {
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    format!("{uid}|{group}|{kind}|{}|{name}", namespace.unwrap_or(""))
}

impl Absent {
    const CAP: usize = 10_000;

    fn insert(&mut self, key: String) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
            if self.order.len() > Self::CAP
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    /// A deletion of `uid` was observed.
    fn deleted(&mut self, uid: &str) {
        self.insert(uid.to_string());
    }

    fn contains(&self, uid: &str, coordinates: &str) -> bool {
        self.set.contains(uid) || self.set.contains(coordinates)
    }
}

struct Monitor {
    task: tokio::task::JoinHandle<()>,
    synced: tokio::sync::watch::Receiver<bool>,
}

pub struct GarbageCollector {
    client: kube::Client,
    discovery: Arc<Discovery>,
    graph: Mutex<Graph>,
    attempt_to_delete: Arc<WorkQueue<String>>,
    attempt_to_orphan: Arc<WorkQueue<String>>,
    absent: Mutex<Absent>,
    monitors: Mutex<HashMap<String, Monitor>>,
    /// Asks the run loop for a discovery resync before the next tick.
    resync_now: tokio::sync::Notify,
    metrics: GcMetrics,
    config: Config,
}

impl std::fmt::Debug for GarbageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GarbageCollector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for GarbageCollector {
    fn drop(&mut self) {
        for (_, m) in self
            .monitors
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default()
        {
            m.task.abort();
        }
    }
}

/// Runs the garbage collector of `m` until dropped.
pub async fn run(m: Arc<Manager>) {
    let gc = GarbageCollector::new(
        m.client.clone(),
        m.discovery.clone(),
        &m.registry,
        m.garbage_collector.clone(),
    );
    gc.run().await;
}

impl GarbageCollector {
    pub fn new(
        client: kube::Client,
        discovery: Arc<Discovery>,
        registry: &Registry,
        config: Config,
    ) -> Arc<Self> {
        Arc::new(GarbageCollector {
            client,
            discovery,
            graph: Mutex::new(Graph::default()),
            attempt_to_delete: WorkQueue::new(Backoffs::default()),
            attempt_to_orphan: WorkQueue::new(Backoffs::default()),
            absent: Mutex::new(Absent::default()),
            monitors: Mutex::new(HashMap::new()),
            resync_now: tokio::sync::Notify::new(),
            metrics: GcMetrics::register(registry),
            config,
        })
    }

    pub async fn run(self: Arc<Self>) {
        // Watch everything first, and act only once every watch has listed (or a minute has
        // passed): deciding from a half-built graph is safe (owners are re-read) but wasteful.
        let mut delay = Duration::from_millis(200);
        while let Err(e) = self.sync_monitors().await {
            tracing::warn!(error = %e, "garbage collector: discovery failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
        let waiting: Vec<_> = self
            .lock_monitors()
            .values()
            .map(|m| m.synced.clone())
            .collect();
        let all_synced = futures_util::future::join_all(
            waiting
                .into_iter()
                .map(|mut rx| async move { rx.wait_for(|s| *s).await.map(|_| ()) }),
        );
        if tokio::time::timeout(Duration::from_secs(60), all_synced)
            .await
            .is_err()
        {
            tracing::warn!(
                "garbage collector: not every resource listed within 60 s; starting anyway"
            );
        }
        tracing::info!(
            nodes = self.lock_graph().len(),
            "garbage collector: graph built"
        );

        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.config.workers.max(1) {
            workers.spawn(self.clone().delete_worker());
        }
        for _ in 0..(self.config.workers / 4).max(1) {
            workers.spawn(self.clone().orphan_worker());
        }
        let mut tick = tokio::time::interval(self.config.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.resync_now.notified() => {}
            }
            if let Err(e) = self.sync_monitors().await {
                tracing::warn!(error = %e, "garbage collector: discovery resync failed");
            }
        }
    }

    fn lock_graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_monitors(&self) -> std::sync::MutexGuard<'_, HashMap<String, Monitor>> {
        self.monitors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn absent(&self) -> std::sync::MutexGuard<'_, Absent> {
        self.absent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A CRD changed: re-read discovery once it is served (CRDs are served within a moment of
    /// being created, and discovery refreshes at most once a second), so its resources are
    /// watched without waiting for the periodic resync.
    fn resync_soon(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            if let Some(gc) = weak.upgrade() {
                gc.resync_now.notify_one();
            }
        });
    }

    fn enqueue(&self, work: Vec<Work>) {
        for w in work {
            match w {
                Work::AttemptToDelete(uid) => self.attempt_to_delete.add(uid),
                Work::AttemptToOrphan(uid) => self.attempt_to_orphan.add(uid),
            }
        }
    }

    /// Starts a watch for every deletable resource discovery lists, and stops the watches of
    /// resources no longer served.
    async fn sync_monitors(self: &Arc<Self>) -> Result<()> {
        let mapper = self.discovery.refresh().await?;
        let wanted: HashMap<String, Arc<Mapping>> = mapper
            .preferred_with(&["list", "watch", "delete"])
            .into_iter()
            .filter(|m| !IGNORED.contains(&(m.resource.group.as_str(), m.resource.plural.as_str())))
            .map(|m| (m.key(), m))
            .collect();
        let mut monitors = self.lock_monitors();
        let mut stopped = Vec::new();
        monitors.retain(|key, m| {
            // A group version whose discovery failed this time is unknown, not gone.
            let unknown = mapper
                .failed
                .iter()
                .any(|gv| key.starts_with(&format!("{}/", gv)) || key.starts_with(&format!("/{gv}/")));
            let keep = wanted.contains_key(key) || unknown;
            if !keep {
                tracing::info!(resource = %key, "garbage collector: resource no longer served; stopping its watch");
                m.task.abort();
                stopped.push(key.clone());
            }
            keep
        });
        // What a stopped watch delivered is gone with its resource (a deleted CRD's objects
        // were deleted first): the graph forgets it, waking owners waiting on it.
        for key in stopped {
            let mut graph = self.lock_graph();
            let work: Vec<Work> = graph
                .observed_from(&key)
                .into_iter()
                .flat_map(|uid| graph.remove(&uid))
                .collect();
            drop(graph);
            self.enqueue(work);
        }
        for (key, mapping) in wanted {
            if monitors.contains_key(&key) {
                continue;
            }
            let (tx, rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(Self::monitor(
                Arc::downgrade(self),
                self.client.clone(),
                mapping,
                tx,
            ));
            tracing::debug!(resource = %key, "garbage collector: watching");
            monitors.insert(key, Monitor { task, synced: rx });
        }
        self.metrics.monitors.set(monitors.len() as i64);
        Ok(())
    }

    /// One resource's metadata watch, feeding the graph.
    /// Holds the collector weakly: when the collector goes (leadership lost), its `Drop`
    /// aborts the monitors instead of the monitors keeping it alive.
    async fn monitor(
        gc: std::sync::Weak<Self>,
        client: kube::Client,
        mapping: Arc<Mapping>,
        synced: tokio::sync::watch::Sender<bool>,
    ) {
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &mapping.resource);
        let source: Arc<str> = Arc::from(mapping.key());
        let (api_version, kind) = (&mapping.resource.api_version, &mapping.resource.kind);
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut listed: Option<HashSet<String>> = None;
        let is_crd = mapping.resource.group == "apiextensions.k8s.io"
            && mapping.resource.plural == "customresourcedefinitions";
        while let Some(ev) = events.next().await {
            let Some(this) = gc.upgrade() else {
                return;
            };
            let work = match ev {
                Ok(watcher::Event::Init) => {
                    listed = Some(HashSet::new());
                    Vec::new()
                }
                Ok(watcher::Event::InitApply(o)) => {
                    if is_crd {
                        this.resync_soon(); // a CRD newer than the discovery we started with
                    }
                    if let (Some(seen), Some(uid)) = (listed.as_mut(), &o.metadata.uid) {
                        seen.insert(uid.clone());
                    }
                    this.lock_graph()
                        .observe(api_version, kind, &o.metadata, &source)
                }
                Ok(watcher::Event::InitDone) => {
                    // What the list no longer returned was deleted while the watch was down.
                    let seen = listed.take().unwrap_or_default();
                    let mut graph = this.lock_graph();
                    let gone: Vec<String> = graph
                        .observed_from(&source)
                        .into_iter()
                        .filter(|uid| !seen.contains(uid))
                        .collect();
                    let mut absent = this.absent();
                    let mut work = Vec::new();
                    for uid in gone {
                        absent.deleted(&uid);
                        work.extend(graph.remove(&uid));
                    }
                    synced.send_replace(true);
                    work
                }
                Ok(watcher::Event::Apply(o)) => {
                    if is_crd {
                        this.resync_soon();
                    }
                    this.lock_graph()
                        .observe(api_version, kind, &o.metadata, &source)
                }
                Ok(watcher::Event::Delete(o)) => match &o.metadata.uid {
                    Some(uid) => {
                        this.absent().deleted(uid);
                        this.lock_graph().remove(uid)
                    }
                    None => Vec::new(),
                },
                Err(e) => {
                    tracing::debug!(resource = %source, error = %e, "garbage collector watch error");
                    Vec::new()
                }
            };
            this.metrics.nodes.set(this.lock_graph().len() as i64);
            this.enqueue(work);
        }
    }

    async fn delete_worker(self: Arc<Self>) {
        let q = self.attempt_to_delete.clone();
        while let Some(uid) = q.get().await {
            match self.attempt_to_delete(&uid).await {
                Ok(()) => q.forget(&uid),
                Err(e) => {
                    if e.is_conflict() {
                        tracing::debug!(%uid, error = %e, "garbage collector: conflict; retrying");
                    } else {
                        tracing::warn!(%uid, error = %e, "garbage collector: attempt to delete failed; retrying");
                    }
                    q.retry(uid.clone());
                }
            }
            q.done(&uid);
        }
    }

    async fn orphan_worker(self: Arc<Self>) {
        let q = self.attempt_to_orphan.clone();
        while let Some(uid) = q.get().await {
            match self.attempt_to_orphan(&uid).await {
                Ok(()) => q.forget(&uid),
                Err(e) => {
                    tracing::warn!(%uid, error = %e, "garbage collector: orphaning failed; retrying");
                    q.retry(uid.clone());
                }
            }
            q.done(&uid);
        }
    }

    async fn mapping(&self, api_version: &str, kind: &str) -> Result<Arc<Mapping>> {
        self.discovery
            .resolve(api_version, kind)
            .await?
            .ok_or_else(|| {
                Error::Other(format!(
                    "the server serves no {kind} in {api_version} (yet?)"
                ))
            })
    }

    fn api(&self, mapping: &Mapping, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace.filter(|_| mapping.namespaced) {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &mapping.resource),
            None => Api::all_with(self.client.clone(), &mapping.resource),
        }
    }

    /// The live metadata of `name`, if it exists with `uid`.
    async fn live(
        &self,
        mapping: &Mapping,
        namespace: Option<&str>,
        name: &str,
        uid: &str,
    ) -> Result<Option<ObjectMeta>> {
        let found = self.api(mapping, namespace).get_metadata_opt(name).await?;
        Ok(found
            .map(|o| o.metadata)
            .filter(|m| m.uid.as_deref() == Some(uid)))
    }

    /// attemptToDeleteItem: decides, from the live object and its live owners, whether `uid`
    /// goes, loses references, or stays.
    async fn attempt_to_delete(&self, uid: &str) -> Result<()> {
        let Some(node) = self.lock_graph().get(uid).cloned() else {
            return Ok(());
        };
        let id = &node.identity;
        let mapping = self.mapping(&id.api_version, &id.kind).await?;
        if mapping.namespaced && id.namespace.is_none() {
            // A cluster-scoped dependent naming a namespaced owner: such an owner cannot be.
            if !node.observed {
                let work = self.lock_graph().remove_virtual(uid);
                self.enqueue(work);
            }
            return Ok(());
        }
        let ns = id.namespace.as_deref().filter(|_| mapping.namespaced);
        let latest = self.live(&mapping, ns, &id.name, uid).await?;
        let Some(latest) = latest else {
            if !node.observed {
                // A virtual owner not found where its first dependent said: those dependents
                // are re-examined, each against its own reference.
                self.absent()
                    .insert(coordinates(uid, &id.api_version, &id.kind, ns, &id.name));
                let work = self.lock_graph().remove_virtual(uid);
                self.enqueue(work);
            }
            return Ok(()); // an observed object's watch reports its deletion
        };
        if !node.observed {
            if node.dependents.is_empty() {
                return Ok(());
            }
            // It exists; its watch has not delivered it yet, or its resource is not watched
            // yet (a custom resource newer than the last discovery resync): resync now.
            if !self.lock_monitors().contains_key(&mapping.key()) {
                self.resync_now.notify_one();
            }
            return Err(Error::Other(format!("{id} exists but is not observed yet")));
        }
        if latest.deletion_timestamp.is_some() {
            if has_finalizer(&latest, FOREGROUND) {
                return self
                    .process_deleting_dependents(&node.identity, &mapping, &latest)
                    .await;
            }
            // Already going (gracefully, or orphaning its dependents): nothing to decide.
            return Ok(());
        }
        let owners = latest.owner_references.clone().unwrap_or_default();
        if owners.is_empty() {
            return Ok(());
        }
        let (solid, dangling, waiting) = self.classify(&latest, &owners).await?;
        tracing::debug!(object = %id, solid = solid.len(), dangling = dangling.len(), waiting = waiting.len(), "classified owners");
        if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(());
            }
            // Solid owners keep it; references to owners gone or going are dropped.
            let drop: HashSet<&str> = dangling
                .iter()
                .chain(&waiting)
                .map(|o| o.uid.as_str())
                .collect();
            let kept: Vec<&OwnerReference> = owners
                .iter()
                .filter(|o| !drop.contains(o.uid.as_str()))
                .collect();
            self.patch_meta(&mapping, &latest, json!({"ownerReferences": kept}))
                .await?;
            self.metrics
                .orphaned
                .with_label_values(&[&mapping.resource.plural])
                .inc();
            return Ok(());
        }
        if !waiting.is_empty() && !node.dependents.is_empty() {
            // An owner waits for us and we have dependents: go in the foreground too. If one
            // of our dependents waits on its own dependents, a cycle could block everyone:
            // stop blocking our owners first (Kubernetes' cycle breaker).
            let cycle = {
                let graph = self.lock_graph();
                node.dependents
                    .iter()
                    .any(|d| graph.get(d).is_some_and(|d| d.deleting_dependents))
            };
            if cycle {
                let waiting_uids: HashSet<&str> = waiting.iter().map(|o| o.uid.as_str()).collect();
                let unblocked: Vec<OwnerReference> = owners
                    .iter()
                    .map(|o| {
                        let mut o = o.clone();
                        if waiting_uids.contains(o.uid.as_str()) {
                            o.block_owner_deletion = Some(false);
                        }
                        o
                    })
                    .collect();
                self.patch_meta(&mapping, &latest, json!({"ownerReferences": unblocked}))
                    .await?;
            }
            return self
                .delete(&mapping, id, &latest, PropagationPolicy::Foreground)
                .await;
        }
        let policy = if has_finalizer(&latest, ORPHAN) {
            PropagationPolicy::Orphan
        } else if has_finalizer(&latest, FOREGROUND) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        self.delete(&mapping, id, &latest, policy).await
    }

    /// Splits `owners` into solid (alive), dangling (gone, or a different object by now) and
    /// waiting (being deleted in the foreground), reading each from the API.
    async fn classify<'a>(
        &self,
        dependent: &ObjectMeta,
        owners: &'a [OwnerReference],
    ) -> Result<(
        Vec<&'a OwnerReference>,
        Vec<&'a OwnerReference>,
        Vec<&'a OwnerReference>,
    )> {
        let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for o in owners {
            let mapping = self.mapping(&o.api_version, &o.kind).await?;
            let ns = dependent
                .namespace
                .as_deref()
                .filter(|_| mapping.namespaced);
            let key = coordinates(&o.uid, &o.api_version, &o.kind, ns, &o.name);
            if self.absent().contains(&o.uid, &key) {
                dangling.push(o);
                continue;
            }
            if mapping.namespaced && dependent.namespace.is_none() {
                tracing::warn!(owner = %o.name, kind = %o.kind, dependent = ?dependent.name,
                    "a cluster-scoped object names a namespaced owner; the reference is invalid");
                dangling.push(o);
                continue;
            }
            match self
                .live(&mapping, dependent.namespace.as_deref(), &o.name, &o.uid)
                .await?
            {
                None => {
                    self.absent().insert(key);
                    dangling.push(o);
                }
                Some(m) if m.deletion_timestamp.is_some() && has_finalizer(&m, FOREGROUND) => {
                    waiting.push(o)
                }
                Some(_) => solid.push(o),
            }
        }
        Ok((solid, dangling, waiting))
    }

    /// An owner being deleted in the foreground: done once no dependent blocks it, else its
    /// blocking dependents are sent to be deleted (they wake it as they go).
    async fn process_deleting_dependents(
        &self,
        id: &Identity,
        mapping: &Mapping,
        latest: &ObjectMeta,
    ) -> Result<()> {
        let pending: Vec<(String, bool)> = self
            .lock_graph()
            .blocking_dependents(&id.uid)
            .iter()
            .map(|d| (d.identity.uid.clone(), d.being_deleted))
            .collect();
        if pending.is_empty() {
            tracing::debug!(object = %id, "no blocking dependents left; removing the foregroundDeletion finalizer");
            return self.remove_finalizer(mapping, latest, FOREGROUND).await;
        }
        for (dep, being_deleted) in pending {
            if !being_deleted {
                self.attempt_to_delete.add(dep);
            }
        }
        Ok(())
    }

    /// attemptToOrphan: removes references to `uid` from its dependents, then the `orphan`
    /// finalizer from it.
    async fn attempt_to_orphan(&self, uid: &str) -> Result<()> {
        let (node, dependents) = {
            let graph = self.lock_graph();
            let Some(node) = graph.get(uid).cloned() else {
                return Ok(());
            };
            let deps: Vec<Identity> = node
                .dependents
                .iter()
                .filter_map(|d| graph.get(d).map(|n| n.identity.clone()))
                .collect();
            (node, deps)
        };
        for dep in dependents {
            let mapping = self.mapping(&dep.api_version, &dep.kind).await?;
            let Some(latest) = self
                .live(&mapping, dep.namespace.as_deref(), &dep.name, &dep.uid)
                .await?
            else {
                continue;
            };
            let owners = latest.owner_references.clone().unwrap_or_default();
            if !owners.iter().any(|o| o.uid == uid) {
                continue;
            }
            let kept: Vec<&OwnerReference> = owners.iter().filter(|o| o.uid != uid).collect();
            self.patch_meta(&mapping, &latest, json!({"ownerReferences": kept}))
                .await?;
            self.metrics
                .orphaned
                .with_label_values(&[&mapping.resource.plural])
                .inc();
        }
        let id = &node.identity;
        let mapping = self.mapping(&id.api_version, &id.kind).await?;
        if let Some(latest) = self
            .live(&mapping, id.namespace.as_deref(), &id.name, uid)
            .await?
            && has_finalizer(&latest, ORPHAN)
        {
            self.remove_finalizer(&mapping, &latest, ORPHAN).await?;
        }
        Ok(())
    }

    /// Deletes `id` as it was when the decision was made (`latest`'s resourceVersion): if it
    /// changed since — a controller adopted it — the 409 sends it back to be decided again.
    async fn delete(
        &self,
        mapping: &Mapping,
        id: &Identity,
        latest: &ObjectMeta,
        policy: PropagationPolicy,
    ) -> Result<()> {
        let label = format!("{policy:?}");
        let params = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(id.uid.clone()),
                resource_version: latest.resource_version.clone(),
            }),
            ..Default::default()
        };
        match self
            .api(mapping, id.namespace.as_deref())
            .delete(&id.name, &params)
            .await
        {
            Ok(_) => {
                tracing::debug!(object = %id, policy = %label, "garbage collector deleted");
                self.metrics
                    .deletions
                    .with_label_values(&[&mapping.resource.plural, &label])
                    .inc();
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A merge patch of `latest`'s metadata, guarded by its resourceVersion.
    async fn patch_meta(
        &self,
        mapping: &Mapping,
        latest: &ObjectMeta,
        mut meta: serde_json::Value,
    ) -> Result<()> {
        // An emptied list is removed, as Kubernetes' omitempty would.
        if let Some(m) = meta.as_object_mut() {
            for v in m.values_mut() {
                if v.as_array().is_some_and(|a| a.is_empty()) {
                    *v = serde_json::Value::Null;
                }
            }
        }
        meta["resourceVersion"] = json!(latest.resource_version);
        let name = latest.name.as_deref().unwrap_or_default();
        match self
            .api(mapping, latest.namespace.as_deref())
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": meta})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_finalizer(
        &self,
        mapping: &Mapping,
        latest: &ObjectMeta,
        f: &str,
    ) -> Result<()> {
        let kept: Vec<&String> = latest
            .finalizers
            .iter()
            .flatten()
            .filter(|x| x.as_str() != f)
            .collect();
        self.patch_meta(mapping, latest, json!({"finalizers": kept}))
            .await
    }
}

fn has_finalizer(meta: &ObjectMeta, f: &str) -> bool {
    meta.finalizers
        .as_ref()
        .is_some_and(|fs| fs.iter().any(|x| x == f))
}
