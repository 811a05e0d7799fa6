//! The watch cache (kube-apiserver's cacher): one store watch per resource feeds an in-memory copy
//! of every object plus a bounded history of events, and every client LIST and WATCH of that
//! resource is served from it — a thousand watchers cost one store watch.
//!
//! Objects are held serialized, with a sparse index of what selectors read ([`Cached`]): a
//! plain JSON list or watch writes the bytes as they are, and only what must be read whole
//! (Tables, metadata views, admission's lookups) is parsed.
//!
//! # States
//! `Empty → Listing → Watching`; on a broken or compacted store watch it relists. A relist ends
//! every client watch (their stream closes), so clients re-watch from their last resourceVersion:
//! served from history when it is recent enough, else `410 Expired` and they relist too.
//!
//! # resourceVersion rules
//! - `rv` is the store revision the cache reflects. Store progress notifications advance it even
//!   when this resource did not change.
//! - A client watch from RV r needs every event after r: possible when `oldest <= r`, where
//!   `oldest` is the revision before the first event still in [`history`] (or the list's
//!   revision). Older → 410 Expired. Newer than `rv` → wait for the cache to catch up (3 s),
//!   else 504.
//!
//! # Fan-out
//! Client watches read the live stream from the history itself ([`CacheWatcher`] is a position
//! in it), so a slow watcher holds no events of its own: one that falls behind the history's
//! oldest event is closed, and re-watches (410 → relist). The history's bounds (count, bytes,
//! time; see [`history`]) are the cache's whole memory beyond its current objects.

mod cached;
pub mod derived;
mod history;
pub mod uncached;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use capstan_storage::{Event, ListOptions, Storage, StorageError};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::errors::{ApiError, ApiResult};
use crate::object::ObjectExt;
use crate::registry::ResourceInfo;
pub use cached::Cached;
use history::History;
pub use history::{HistoryLimits, approx_size};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Added,
    Modified,
    Deleted,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Added => "ADDED",
            Kind::Modified => "MODIFIED",
            Kind::Deleted => "DELETED",
        }
    }
}

/// One change, with the object as it is after it (for deletes: as it was, at the delete's RV).
#[derive(Debug)]
pub struct CacheEvent {
    pub kind: Kind,
    pub rv: i64,
    pub object: Arc<Cached>,
    pub prev: Option<Arc<Cached>>,
}

struct State {
    objects: BTreeMap<String, Arc<Cached>>,
    rv: i64,
    history: History,
    ready: bool,
    /// Bumped on every relist, which closes the client watches of the previous generation.
    generation: u64,
    /// Bumped on every relist and every object event ([`Cacher::changes`]).
    changes: u64,
    /// Set by [`Cacher::stop`]: every client watch ends.
    stopped: bool,
}

/// What the watch cache of one resource holds, for metrics and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheMemory {
    /// Current objects, and the bytes they hold ([`Cached::size`]).
    pub objects: usize,
    pub object_bytes: usize,
    /// Events in the history, and the bytes their objects hold ([`approx_size`]).
    pub events: usize,
    pub event_bytes: usize,
    /// Every event after this revision is in the history.
    pub oldest: i64,
}

pub struct Cacher {
    info: Arc<ResourceInfo>,
    /// What each object's index keeps ([`cached::index_pointers`]).
    pointers: Vec<String>,
    /// The server, for a resource whose objects its conversion webhook converts.
    api: std::sync::Weak<crate::ApiServer>,
    state: Arc<RwLock<State>>,
    /// The revision the cache reflects; also wakes client watches (on every event, relist and
    /// stop).
    rv_tx: watch::Sender<i64>,
    /// Set by [`Cacher::stop`]: the store watch ends and the task exits.
    stop_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Cacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cacher({:?})", self.info)
    }
}

impl Cacher {
    /// Creates the cache and starts filling it from `store`.
    pub fn start(info: Arc<ResourceInfo>, store: Arc<dyn Storage>) -> Arc<Cacher> {
        Self::start_with(info, store, HistoryLimits::default())
    }

    /// As [`Cacher::start`], keeping the history within `limits`.
    pub fn start_with(
        info: Arc<ResourceInfo>,
        store: Arc<dyn Storage>,
        limits: HistoryLimits,
    ) -> Arc<Cacher> {
        Self::start_for(std::sync::Weak::new(), info, store, limits)
    }

    /// As [`Cacher::start_with`], for `api`: objects of a resource with a conversion webhook
    /// are converted to the cache's version as they arrive, once for every reader.
    pub fn start_for(
        api: std::sync::Weak<crate::ApiServer>,
        info: Arc<ResourceInfo>,
        store: Arc<dyn Storage>,
        limits: HistoryLimits,
    ) -> Arc<Cacher> {
        let (rv_tx, _) = watch::channel(0);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let state = State {
            objects: BTreeMap::new(),
            rv: 0,
            history: History::new(limits),
            ready: false,
            generation: 0,
            changes: 0,
            stopped: false,
        };
        let cacher = Arc::new(Cacher {
            pointers: cached::index_pointers(&info),
            info,
            api,
            state: Arc::new(RwLock::new(state)),
            rv_tx,
            stop_tx,
        });
        let weak = Arc::downgrade(&cacher);
        // The task holds a strong reference while it syncs: a cacher ends through `stop()`
        // (ApiServer's Drop calls it), not by being dropped. Removing a resource at run time
        // (CRDs) must call stop().
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let Some(c) = weak.upgrade() else { return };
                let synced = tokio::select! {
                    r = c.sync(&store) => r,
                    _ = stop_rx.wait_for(|stop| *stop) => return,
                };
                match synced {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        tracing::warn!(resource = ?c.info, error = %e, "watch cache lost its store watch; relisting");
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                drop(c);
                tokio::time::sleep(backoff).await;
            }
        });
        cacher
    }

    /// One Listing → Watching cycle; returns when the store watch ends.
    async fn sync(&self, store: &Arc<dyn Storage>) -> Result<(), StorageError> {
        let prefix = self.info.prefix();
        let mut objects: BTreeMap<String, Value> = BTreeMap::new();
        let mut opts = ListOptions {
            limit: Some(500),
            ..Default::default()
        };
        let revision = loop {
            let page = store.list(&prefix, opts.clone()).await?;
            for kv in &page.items {
                match self.info.decode(&kv.value, kv.mod_revision) {
                    Some(v) => {
                        objects.insert(kv.key.clone(), v);
                    }
                    None => {
                        tracing::error!(key = %kv.key, "stored object is not a JSON object; skipped")
                    }
                }
            }
            if !page.more {
                break page.revision;
            }
            opts.revision = Some(page.revision);
            opts.start_after = page.items.last().map(|kv| kv.key.clone());
        };
        if self.info.conversion_webhook.is_some() {
            let (keys, values): (Vec<String>, Vec<Value>) = objects.into_iter().unzip();
            objects = keys
                .into_iter()
                .zip(self.converted(values).await?)
                .collect();
        }
        let objects: BTreeMap<String, Arc<Cached>> = objects
            .into_iter()
            .map(|(k, v)| (k, Arc::new(Cached::new(&v, &self.pointers))))
            .collect();
        let mut stream = store.watch(&prefix, revision).await?;
        {
            // A new generation: old client watches end, new ones see the fresh state.
            let mut st = self.state.write().expect("cache lock");
            st.objects = objects;
            st.rv = revision;
            st.history.reset(revision);
            st.generation += 1;
            st.changes += 1;
            st.ready = true;
        }
        self.rv_tx.send_replace(revision);
        tracing::debug!(resource = ?self.info, revision, "watch cache synced");
        while let Some(item) = stream.next().await {
            match item? {
                Event::Progress { revision } => self.advance(revision),
                Event::Put { kv, prev } => {
                    let Some(mut obj) = self.info.decode(&kv.value, kv.mod_revision) else {
                        tracing::error!(key = %kv.key, "stored object is not a JSON object; skipped");
                        self.advance(kv.mod_revision);
                        continue;
                    };
                    if self.info.conversion_webhook.is_some() {
                        obj = self.converted(vec![obj]).await?.remove(0);
                    }
                    let kind = if prev.is_some() {
                        Kind::Modified
                    } else {
                        Kind::Added
                    };
                    self.apply(kv.key, kind, kv.mod_revision, Some(obj));
                }
                Event::Delete { prev, revision } => {
                    self.apply(prev.key, Kind::Deleted, revision, None);
                }
            }
        }
        Err(StorageError::Unavailable {
            message: "store watch ended".into(),
            source: None,
        })
    }

    /// Objects converted to the cache's version by the resource's conversion webhook; a
    /// failure ends this sync (the cache lists again after a back-off).
    async fn converted(&self, objects: Vec<Value>) -> Result<Vec<Value>, StorageError> {
        let unavailable = |message: String| StorageError::Unavailable {
            message,
            source: None,
        };
        let api = self
            .api
            .upgrade()
            .ok_or_else(|| unavailable("the API server is gone".into()))?;
        crate::crd::conversion::convert_all(&api, &self.info, objects)
            .await
            .map_err(|e| unavailable(e.message))
    }

    /// Ends the store watch; client watches end with it.
    pub fn stop(&self) {
        self.stop_tx.send_replace(true);
        if let Ok(mut st) = self.state.write() {
            st.stopped = true;
        }
        self.rv_tx.send_modify(|_| {});
    }

    fn advance(&self, revision: i64) {
        let mut st = self.state.write().expect("cache lock");
        st.history.trim(Instant::now());
        if revision > st.rv {
            st.rv = revision;
            drop(st);
            self.rv_tx.send_replace(revision);
        }
    }

    /// Applies one change. The object is serialized before the lock is taken: only this
    /// cache's own sync task changes its objects, so what is read first is still current.
    fn apply(&self, key: String, kind: Kind, rv: i64, obj: Option<Value>) {
        let object = match (kind, obj) {
            (Kind::Deleted, _) => {
                let prev = self
                    .state
                    .read()
                    .expect("cache lock")
                    .objects
                    .get(&key)
                    .cloned();
                prev.map(|prev| {
                    let mut gone = prev.value();
                    gone.set_meta("resourceVersion", Value::String(rv.to_string()));
                    Arc::new(Cached::new(&gone, &self.pointers))
                })
            }
            (_, Some(obj)) => Some(Arc::new(Cached::new(&obj, &self.pointers))),
            (_, None) => return,
        };
        let mut st = self.state.write().expect("cache lock");
        if let Some(object) = object {
            let prev = if kind == Kind::Deleted {
                st.objects.remove(&key)
            } else {
                st.objects.insert(key, object.clone())
            };
            let kind = match (kind, &prev) {
                (Kind::Deleted, _) => Kind::Deleted,
                (_, Some(_)) => Kind::Modified,
                (_, None) => Kind::Added,
            };
            let event = CacheEvent {
                kind,
                rv,
                object,
                prev,
            };
            st.history.push(Arc::new(event), Instant::now());
            st.changes += 1;
        }
        st.rv = rv;
        drop(st);
        // Client watches read the event from the history; this wakes them.
        self.rv_tx.send_replace(rv);
    }

    /// Waits until the cache reflects at least revision `rv`.
    pub async fn wait_for(&self, rv: i64, within: Duration) -> bool {
        let mut rx = self.rv_tx.subscribe();
        let ready = || self.state.read().map(|s| s.ready).unwrap_or(false);
        tokio::time::timeout(within, async {
            loop {
                if *rx.borrow_and_update() >= rv && ready() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    /// The resource this cache serves.
    pub fn info(&self) -> &Arc<ResourceInfo> {
        &self.info
    }

    /// A receiver that changes whenever the cache's revision moves (for in-process consumers
    /// such as the CRD controller).
    pub fn subscribe_revision(&self) -> watch::Receiver<i64> {
        self.rv_tx.subscribe()
    }

    /// Whether the first list has completed.
    pub fn is_ready(&self) -> bool {
        self.state.read().map(|s| s.ready).unwrap_or(false)
    }

    /// How many times the cached objects changed (a relist counts once): unlike the revision,
    /// store progress notifications leave it alone, so an in-process consumer that derives
    /// something from the objects (the RBAC authorizer's index) rebuilds only when they change.
    pub fn changes(&self) -> u64 {
        self.state.read().map(|s| s.changes).unwrap_or(0)
    }

    /// The revision the cache reflects (0 until the first list).
    pub fn revision(&self) -> i64 {
        self.state
            .read()
            .map(|s| if s.ready { s.rv } else { 0 })
            .unwrap_or(0)
    }

    /// Objects under `prefix` (a namespace's, or all) and the revision they reflect.
    pub fn list(&self, prefix: &str) -> (Vec<Arc<Cached>>, i64) {
        let st = self.state.read().expect("cache lock");
        let items = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.rv)
    }

    /// One object from the cache.
    pub fn get(&self, key: &str) -> Option<Arc<Cached>> {
        self.state.read().ok()?.objects.get(key).cloned()
    }

    /// [`Cacher::list`], each object parsed: for the small resources admission and
    /// authorization read whole (classes, quotas, policies).
    pub fn values(&self, prefix: &str) -> (Vec<Arc<Value>>, i64) {
        let (items, rv) = self.list(prefix);
        (items.iter().map(|o| Arc::new(o.value())).collect(), rv)
    }

    /// [`Cacher::get`], parsed.
    pub fn get_value(&self, key: &str) -> Option<Arc<Value>> {
        self.get(key).map(|o| Arc::new(o.value()))
    }

    /// What the cache holds now.
    pub fn memory(&self) -> CacheMemory {
        let st = self.state.read().expect("cache lock");
        CacheMemory {
            objects: st.objects.len(),
            object_bytes: st.objects.values().map(|o| o.size()).sum(),
            events: st.history.len(),
            event_bytes: st.history.bytes(),
            oldest: st.history.oldest(),
        }
    }

    /// Starts a client watch: the events to send first, and the live stream after them.
    /// `from` None sends the current objects as ADDED (watch with RV unset or "0").
    pub async fn watch(
        &self,
        from: Option<i64>,
    ) -> ApiResult<(Vec<Arc<CacheEvent>>, CacheWatcher, i64)> {
        self.watch_at_least(from, from.unwrap_or(0)).await
    }

    /// As [`Cacher::watch`], waiting first until the cache reflects at least `min_rv`
    /// (a streaming list's consistency point).
    pub async fn watch_at_least(
        &self,
        from: Option<i64>,
        min_rv: i64,
    ) -> ApiResult<(Vec<Arc<CacheEvent>>, CacheWatcher, i64)> {
        let target = min_rv.max(from.unwrap_or(0));
        if !self.wait_for(target, Duration::from_secs(3)).await {
            return Err(ApiError::timeout(format!(
                "Too large resource version: {target}, current: {}",
                self.revision()
            )));
        }
        // Subscribed before reading the state: an event applied after the read wakes it.
        let changes = self.rv_tx.subscribe();
        let st = self.state.read().expect("cache lock");
        let initial = match from {
            None => st
                .objects
                .values()
                .map(|o| {
                    Arc::new(CacheEvent {
                        kind: Kind::Added,
                        rv: st.rv,
                        object: o.clone(),
                        prev: None,
                    })
                })
                .collect(),
            Some(r) if r < st.history.oldest() => {
                return Err(ApiError::gone(format!(
                    "too old resource version: {r} ({})",
                    st.history.oldest()
                )));
            }
            Some(r) => st.history.after(r).cloned().collect(),
        };
        let live = CacheWatcher {
            source: Source::History(HistoryCursor {
                state: self.state.clone(),
                generation: st.generation,
                position: st.rv,
                changes,
            }),
        };
        Ok((initial, live, st.rv))
    }
}

/// Why a client watch's live stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// The history dropped events this watcher had not read yet: it was too slow.
    Lagged,
    /// The cache relisted or stopped.
    Closed,
}

/// A client watch's live stream: its position in the cache's history, or, for a resource
/// served without a cache, a store watch of its own ([`uncached`]).
pub struct CacheWatcher {
    source: Source,
}

enum Source {
    History(HistoryCursor),
    Store(uncached::StoreEvents),
}

struct HistoryCursor {
    state: Arc<RwLock<State>>,
    generation: u64,
    /// The revision of the last event delivered (or the revision the watch started at).
    position: i64,
    changes: watch::Receiver<i64>,
}

impl std::fmt::Debug for CacheWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::History(c) => f
                .debug_struct("CacheWatcher")
                .field("generation", &c.generation)
                .field("position", &c.position)
                .finish_non_exhaustive(),
            Source::Store(_) => f.write_str("CacheWatcher(store watch)"),
        }
    }
}

impl CacheWatcher {
    /// The next event after the last one delivered; waits for it. Cancel-safe: dropping the
    /// future loses nothing.
    pub async fn recv(&mut self) -> Result<Arc<CacheEvent>, RecvError> {
        match &mut self.source {
            Source::History(c) => c.recv().await,
            Source::Store(s) => s.recv().await,
        }
    }
}

impl HistoryCursor {
    async fn recv(&mut self) -> Result<Arc<CacheEvent>, RecvError> {
        loop {
            // Marked seen before the state is read: a change after the read wakes the wait.
            self.changes.borrow_and_update();
            if let Some(next) = self.next()? {
                self.position = next.rv;
                return Ok(next);
            }
            if self.changes.changed().await.is_err() {
                return Err(RecvError::Closed);
            }
        }
    }

    fn next(&self) -> Result<Option<Arc<CacheEvent>>, RecvError> {
        let st = self.state.read().map_err(|_| RecvError::Closed)?;
        if st.stopped || st.generation != self.generation {
            return Err(RecvError::Closed);
        }
        if self.position < st.history.oldest() {
            return Err(RecvError::Lagged);
        }
        Ok(st.history.next_after(self.position).cloned())
    }
}
