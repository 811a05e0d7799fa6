//! The embedded backend: etcd's revision model on one redb file in the data dir — the
//! single-machine default, as k3s defaults to SQLite through kine.
//!
//! # Tables
//! - `revs`: revision → [`record`] (kind, create_revision, prev_revision, key, value). One record
//!   per write; this is both the history that reads at a past revision use and the replay log that
//!   watches resume from.
//! - `index`: key → (create_revision, mod_revision) of its live version. Deleted keys leave it.
//! - `meta`: the current revision and the compaction point.
//!
//! # Where to look
//! - Writes: [`writer`] (one thread, group commit, CAS decided in the transaction).
//! - Reads: redb read transactions are MVCC snapshots, so a list sees one revision; a list at a past
//!   revision rolls the live index back with the records written since (see [`list_at`]).
//! - Watches: [`watch_task`] replays `revs` from the requested revision, then follows the in-process
//!   broadcast; a watcher that falls behind the broadcast goes back to replaying from disk, so a
//!   slow watcher never loses events.
//! - Compaction: [`writer`]'s `compact`, run by a periodic task following [`CompactionPolicy`].
//! - Giving freed space back to the file system: [`defrag`] (`capstan store defrag`, and
//!   automatically after compaction following [`ReclaimPolicy`]).

mod defrag;
mod record;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};

pub use defrag::ReclaimPolicy;

use crate::{
    CompactionPolicy, Defragmented, Event, KeyValue, ListOptions, ListResult, Result, Revision,
    Storage, StorageError, WatchStream, check_key, check_value,
};
use record::Kind;
use writer::Op;

pub(crate) const REVS: TableDefinition<i64, &[u8]> = TableDefinition::new("revs");
pub(crate) const INDEX: TableDefinition<&str, (i64, i64)> = TableDefinition::new("index");
pub(crate) const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
pub(crate) const META_CURRENT: &str = "current_revision";
pub(crate) const META_COMPACTED: &str = "compacted_revision";

/// The file inside the data dir.
pub const DB_FILE: &str = "store.redb";

/// Events buffered for live watchers before a slow one falls back to replaying from disk.
const BROADCAST_CAPACITY: usize = 4096;
/// Records a watch replays per read transaction.
const REPLAY_CHUNK: usize = 1024;
/// A watch whose prefix is quiet sends a Progress when it has caught up with writes elsewhere,
/// and at least this often when the store moved on.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// How to open an embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// The data dir; the store is `DATA_DIR/store.redb`. Created when missing.
    pub data_dir: PathBuf,
    pub max_value_bytes: usize,
    /// redb's page cache. Small by default: the API server keeps its own watch cache.
    pub cache_bytes: usize,
    /// Automatic compaction; None turns it off (tests, benchmarks).
    pub compaction: Option<CompactionPolicy>,
    /// Automatic defragmentation after compaction; None turns it off.
    pub reclaim: Option<ReclaimPolicy>,
}

impl EmbeddedOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            data_dir: data_dir.into(),
            max_value_bytes: crate::DEFAULT_MAX_VALUE_BYTES,
            cache_bytes: 32 * 1024 * 1024,
            compaction: Some(CompactionPolicy::default()),
            reclaim: Some(ReclaimPolicy::default()),
        }
    }
}

pub(crate) struct Inner {
    /// Every transaction is begun and ended under the read lock; [`defrag`] takes it for
    /// writing, as redb's `compact` needs the database with no transaction open.
    pub(crate) db: RwLock<Database>,
    pub(crate) path: PathBuf,
    pub(crate) current: AtomicI64,
    pub(crate) compacted: AtomicI64,
    pub(crate) events: broadcast::Sender<Arc<Event>>,
    pub(crate) reclaim: Option<ReclaimPolicy>,
    /// Bytes of records compaction deleted since the reclaim policy last looked.
    pub(crate) freed_since_check: AtomicU64,
}

impl Inner {
    /// The database, for one transaction: hold the guard until the transaction ends.
    pub(crate) fn db(&self) -> Result<RwLockReadGuard<'_, Database>> {
        self.db.read().map_err(|_| StorageError::Internal {
            message: "embedded store: database lock poisoned".into(),
            source: None,
        })
    }
}

/// The embedded store. Open with [`EmbeddedStore::open`]; share as `Arc<dyn Storage>`.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    ops: mpsc::Sender<Op>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    path: PathBuf,
    max_value_bytes: usize,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .field("revision", &self.inner.current.load(Ordering::Relaxed))
            .finish()
    }
}

/// Maps a redb error to a storage error saying what was being done.
pub(crate) fn redb_err<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> StorageError {
    move |e| StorageError::internal(format!("embedded store: {what}"), e)
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `opts.data_dir`. Errors name the path: a data dir another
    /// process holds, a file that is not a store, an unreadable directory.
    pub async fn open(opts: EmbeddedOptions) -> Result<Arc<EmbeddedStore>> {
        let dir = opts.data_dir.clone();
        let cache = opts.cache_bytes;
        let (db, current, compacted) = tokio::task::spawn_blocking(move || open_db(&dir, cache))
            .await
            .map_err(|e| StorageError::internal("embedded store: open task failed", e))??;
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let inner = Arc::new(Inner {
            db: RwLock::new(db),
            path: opts.data_dir.join(DB_FILE),
            current: AtomicI64::new(current),
            compacted: AtomicI64::new(compacted),
            events,
            reclaim: opts.reclaim.clone(),
            freed_since_check: AtomicU64::new(0),
        });
        let (ops, rx) = mpsc::channel(4096);
        let writer_inner = inner.clone();
        let writer = std::thread::Builder::new()
            .name("capstan-store-writer".into())
            .spawn(move || writer::run(writer_inner, rx))
            .map_err(|e| StorageError::internal("embedded store: start writer thread", e))?;
        let store = Arc::new(EmbeddedStore {
            inner,
            ops,
            writer: std::sync::Mutex::new(Some(writer)),
            path: opts.data_dir.join(DB_FILE),
            max_value_bytes: opts.max_value_bytes,
        });
        if let Some(policy) = opts.compaction {
            tokio::spawn(compactor(Arc::downgrade(&store), policy));
        }
        tracing::info!(path = %store.path.display(), revision = current, compacted, "opened embedded store");
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn submit<T>(&self, op: Op, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        self.ops
            .send(op)
            .await
            .map_err(|_| StorageError::unavailable("embedded store is shut down"))?;
        rx.await
            .map_err(|_| StorageError::unavailable("embedded store writer stopped"))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StorageError::internal("embedded store: read task failed", e))?
    }

    /// When this is the last handle: stops the writer after the writes already queued and waits
    /// for it. The database file is closed once the last watch on this store ends too. Dropping
    /// the store does the same without waiting.
    pub async fn close(self: Arc<Self>) {
        let Ok(store) = Arc::try_unwrap(self) else {
            return; // other handles keep the store open
        };
        let handle = store.writer.lock().ok().and_then(|mut w| w.take());
        drop(store);
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

fn open_db(dir: &Path, cache_bytes: usize) -> Result<(Database, Revision, Revision)> {
    let path = dir.join(DB_FILE);
    let named = |what: String| StorageError::Internal {
        message: what,
        source: None,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| named(format!("cannot create data dir {}: {e}", dir.display())))?;
    let db = redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(&path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => named(format!(
                "data dir {} is in use: {} is locked by another process",
                dir.display(),
                path.display()
            )),
            other => named(format!(
                "cannot open the embedded store {}: {other} (is it a Capstan store? move it away to start afresh)",
                path.display()
            )),
        })?;
    let txn = db.begin_write().map_err(redb_err("begin write"))?;
    let (current, compacted);
    {
        txn.open_table(REVS).map_err(redb_err("create revs"))?;
        txn.open_table(INDEX).map_err(redb_err("create index"))?;
        let mut meta = txn.open_table(META).map_err(redb_err("create meta"))?;
        let read = |meta: &redb::Table<&str, i64>, k| -> Result<Option<i64>> {
            Ok(meta
                .get(k)
                .map_err(redb_err("read meta"))?
                .map(|v| v.value()))
        };
        current = match read(&meta, META_CURRENT)? {
            Some(c) => c,
            None => {
                meta.insert(META_CURRENT, 1)
                    .map_err(redb_err("init meta"))?;
                1
            }
        };
        compacted = read(&meta, META_COMPACTED)?.unwrap_or(1);
    }
    txn.commit().map_err(redb_err("commit init"))?;
    Ok((db, current, compacted))
}

/// Reads the version written at `revision` as a KeyValue (it must be a put).
pub(crate) fn read_kv<T: ReadableTable<i64, &'static [u8]>>(
    revs: &T,
    revision: Revision,
) -> Result<KeyValue> {
    let bytes = revs
        .get(revision)
        .map_err(redb_err("read record"))?
        .ok_or_else(|| StorageError::Internal {
            message: format!("embedded store: record {revision} is missing (index points at it)"),
            source: None,
        })?;
    let rec = record::decode(revision, bytes.value())?;
    Ok(KeyValue {
        key: rec.key.to_string(),
        value: Bytes::copy_from_slice(rec.value),
        create_revision: rec.create_revision,
        mod_revision: revision,
    })
}

fn meta_value(meta: &redb::ReadOnlyTable<&str, i64>, key: &str) -> Result<i64> {
    Ok(meta
        .get(key)
        .map_err(redb_err("read meta"))?
        .map_or(1, |v| v.value()))
}

fn get(inner: &Inner, key: &str) -> Result<Option<KeyValue>> {
    let db = inner.db()?;
    let txn = db.begin_read().map_err(redb_err("begin read"))?;
    let index = txn.open_table(INDEX).map_err(redb_err("open index"))?;
    let Some((_, mod_revision)) = index
        .get(key)
        .map_err(redb_err("read index"))?
        .map(|v| v.value())
    else {
        return Ok(None);
    };
    let revs = txn.open_table(REVS).map_err(redb_err("open revs"))?;
    read_kv(&revs, mod_revision).map(Some)
}

fn list(inner: &Inner, prefix: &str, opts: &ListOptions) -> Result<ListResult> {
    let db = inner.db()?;
    let txn = db.begin_read().map_err(redb_err("begin read"))?;
    let meta = txn.open_table(META).map_err(redb_err("open meta"))?;
    let current = meta_value(&meta, META_CURRENT)?;
    let compacted = meta_value(&meta, META_COMPACTED)?;
    let at = opts.revision.unwrap_or(current);
    if at > current {
        return Err(StorageError::FutureRevision {
            requested: at,
            current,
        });
    }
    if at < compacted {
        return Err(StorageError::Compacted {
            requested: at,
            compacted,
        });
    }
    let index = txn.open_table(INDEX).map_err(redb_err("open index"))?;
    let revs = txn.open_table(REVS).map_err(redb_err("open revs"))?;
    let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let start = opts.start_after.as_deref();
    let range = match start {
        Some(after) if after >= prefix => {
            index.range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
        }
        _ => index.range::<&str>(prefix..),
    }
    .map_err(redb_err("scan index"))?;
    let live = range.map(|entry| {
        entry
            .map(|(k, v)| (k.value().to_string(), v.value().1))
            .map_err(redb_err("scan index"))
    });
    let live = live.take_while(|e| e.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)));

    let overrides = if at < current {
        list_at(&revs, prefix, start, at, current)?
    } else {
        BTreeMap::new()
    };
    let mut items = Vec::new();
    let mut more = false;
    for entry in merge(live, overrides) {
        let (_, version) = entry?;
        if version == 0 {
            continue;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(read_kv(&revs, version)?);
    }
    Ok(ListResult {
        items,
        revision: at,
        more,
    })
}

/// For a list at past revision `at`: the keys under `prefix` (after `start`) written since `at`,
/// each mapped to its version as of `at` (0 when it did not exist then). The first record after
/// `at` for a key names exactly that version in its `prev_revision`. Every other key in the live
/// index has not changed since `at`, so its live version is its version at `at`.
fn list_at<T: ReadableTable<i64, &'static [u8]>>(
    revs: &T,
    prefix: &str,
    start: Option<&str>,
    at: Revision,
    current: Revision,
) -> Result<BTreeMap<String, Revision>> {
    let mut overrides = BTreeMap::new();
    for entry in revs
        .range(at + 1..=current)
        .map_err(redb_err("scan revs"))?
    {
        let (rev, bytes) = entry.map_err(redb_err("scan revs"))?;
        let rec = record::decode(rev.value(), bytes.value())?;
        if !rec.key.starts_with(prefix) || start.is_some_and(|s| rec.key <= s) {
            continue;
        }
        overrides
            .entry(rec.key.to_string())
            .or_insert(rec.prev_revision);
    }
    Ok(overrides)
}

/// Merges the live index (key → live version) with the overrides (key → version at the list's
/// revision) in key order; an override wins over the live version of the same key.
fn merge(
    live: impl Iterator<Item = Result<(String, Revision)>>,
    overrides: BTreeMap<String, Revision>,
) -> impl Iterator<Item = Result<(String, Revision)>> {
    let mut live = live.peekable();
    let mut over = overrides.into_iter().peekable();
    std::iter::from_fn(move || {
        let take_live = match (live.peek(), over.peek()) {
            (None, None) => return None,
            (Some(Err(_)), _) => return live.next(),
            (Some(Ok(_)), None) => true,
            (None, Some(_)) => false,
            (Some(Ok((lk, _))), Some((ok, _))) => {
                if lk == ok {
                    live.next();
                    false
                } else {
                    lk < ok
                }
            }
        };
        if take_live {
            live.next()
        } else {
            over.next().map(Ok)
        }
    })
}

/// Reads up to `max` records after `after` and returns the events under `prefix` among them and
/// the revision the replay reached (the store's current revision when it read everything).
fn replay(
    inner: &Inner,
    prefix: &str,
    after: Revision,
    max: usize,
) -> Result<(Vec<Event>, Revision)> {
    let db = inner.db()?;
    let txn = db.begin_read().map_err(redb_err("begin read"))?;
    let meta = txn.open_table(META).map_err(redb_err("open meta"))?;
    let compacted = meta_value(&meta, META_COMPACTED)?;
    let current = meta_value(&meta, META_CURRENT)?;
    if after + 1 < compacted {
        return Err(StorageError::Compacted {
            requested: after,
            compacted,
        });
    }
    let revs = txn.open_table(REVS).map_err(redb_err("open revs"))?;
    let mut events = Vec::new();
    let mut reached = current;
    let mut scanned = 0;
    for entry in revs.range(after + 1..).map_err(redb_err("scan revs"))? {
        let (rev, bytes) = entry.map_err(redb_err("scan revs"))?;
        let rev = rev.value();
        scanned += 1;
        let rec = record::decode(rev, bytes.value())?;
        if rec.key.starts_with(prefix) {
            let prev = match rec.prev_revision {
                0 => None,
                p => Some(read_kv(&revs, p)?),
            };
            events.push(match rec.kind {
                Kind::Put => Event::Put {
                    kv: KeyValue {
                        key: rec.key.to_string(),
                        value: Bytes::copy_from_slice(rec.value),
                        create_revision: rec.create_revision,
                        mod_revision: rev,
                    },
                    prev,
                },
                Kind::Delete => Event::Delete {
                    prev: prev.ok_or_else(|| StorageError::Internal {
                        message: format!("embedded store: delete record {rev} has no prev"),
                        source: None,
                    })?,
                    revision: rev,
                },
            });
        }
        if scanned == max {
            reached = rev;
            break;
        }
    }
    Ok((events, reached))
}

/// One watch: replay from disk, then follow the broadcast; back to replay on lag.
async fn watch_task(
    inner: Arc<Inner>,
    prefix: String,
    after: Revision,
    mut live: broadcast::Receiver<Arc<Event>>,
    tx: mpsc::Sender<Result<Event>>,
) {
    let mut last = after; // every revision ≤ last has been seen (sent or filtered out)
    let mut last_sent = after;
    'replay: loop {
        loop {
            let (inner2, prefix2) = (inner.clone(), prefix.clone());
            let read =
                tokio::task::spawn_blocking(move || replay(&inner2, &prefix2, last, REPLAY_CHUNK))
                    .await
                    .unwrap_or_else(|e| {
                        Err(StorageError::internal(
                            "embedded store: replay task failed",
                            e,
                        ))
                    });
            let (events, reached) = match read {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            for event in events {
                last_sent = event.revision();
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            let caught_up = reached >= inner.current.load(Ordering::Acquire);
            // A watch from a future revision waits for it: `last` never moves back.
            last = last.max(reached);
            if caught_up {
                break;
            }
        }
        let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
        progress.reset();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                received = live.recv() => match received {
                    Ok(event) => {
                        let rev = event.revision();
                        if rev <= last {
                            continue; // already replayed
                        }
                        if rev != last + 1 {
                            continue 'replay; // a gap: fill it from disk
                        }
                        last = rev;
                        if event.key().is_some_and(|k| k.starts_with(prefix.as_str())) {
                            last_sent = rev;
                            if tx.send(Ok((*event).clone())).await.is_err() {
                                return;
                            }
                        } else if live.is_empty() && last > last_sent {
                            // Caught up with writes elsewhere: say so now, so a watch cache
                            // knows it is current without waiting (a burst sends one).
                            last_sent = last;
                            if tx.send(Ok(Event::Progress { revision: last })).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue 'replay,
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = tx.send(Err(StorageError::unavailable("embedded store closed"))).await;
                        return;
                    }
                },
                _ = progress.tick() => {
                    if last > last_sent {
                        last_sent = last;
                        if tx.send(Ok(Event::Progress { revision: last })).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Compacts on `policy`: keeps at least `min_retention` of history (by revisions sampled each
/// interval) and at least `min_revisions` revisions.
async fn compactor(store: Weak<EmbeddedStore>, policy: CompactionPolicy) {
    let mut samples: VecDeque<(Instant, Revision)> = VecDeque::new();
    let mut tick = tokio::time::interval(policy.interval);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        let now = Instant::now();
        let current = store.inner.current.load(Ordering::Acquire);
        samples.push_back((now, current));
        // Keep only the newest sample that is old enough, and everything younger.
        while samples.len() > 1 && now.duration_since(samples[1].0) >= policy.min_retention {
            samples.pop_front();
        }
        let Some(&(at, old_rev)) = samples.front() else {
            continue;
        };
        if now.duration_since(at) < policy.min_retention {
            continue;
        }
        let target = old_rev.min(current - policy.min_revisions);
        if target <= store.inner.compacted.load(Ordering::Acquire) {
            continue;
        }
        match store.compact(target).await {
            Ok(()) => tracing::debug!(target, "compacted embedded store"),
            Err(e) => tracing::warn!(error = %e, target, "compaction failed"),
        }
    }
}

#[async_trait]
impl Storage for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(key)?;
        let key = key.to_string();
        self.read(move |inner| get(inner, &key)).await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let prefix = prefix.to_string();
        self.read(move |inner| list(inner, &prefix, &opts)).await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        check_key(key)?;
        check_value(key, &value, self.max_value_bytes)?;
        let (reply, rx) = oneshot::channel();
        let op = Op::Create {
            key: key.to_string(),
            value,
            reply,
        };
        self.submit(op, rx).await
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        check_key(key)?;
        check_value(key, &value, self.max_value_bytes)?;
        let (reply, rx) = oneshot::channel();
        let op = Op::Update {
            key: key.to_string(),
            value,
            expected,
            reply,
        };
        self.submit(op, rx).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        check_key(key)?;
        let (reply, rx) = oneshot::channel();
        let op = Op::Delete {
            key: key.to_string(),
            expected,
            reply,
        };
        self.submit(op, rx).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let compacted = self.inner.compacted.load(Ordering::Acquire);
        if after + 1 < compacted {
            return Err(StorageError::Compacted {
                requested: after,
                compacted,
            });
        }
        // Subscribe before replaying, so nothing committed during the replay is missed.
        let live = self.inner.events.subscribe();
        let (tx, mut rx) = mpsc::channel(256);
        tokio::spawn(watch_task(
            self.inner.clone(),
            prefix.to_string(),
            after,
            live,
            tx,
        ));
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.inner.current.load(Ordering::Acquire))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.submit(Op::Compact { revision, reply }, rx).await
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.inner.compacted.load(Ordering::Acquire))
    }

    async fn defragment(&self) -> Result<Vec<Defragmented>> {
        let (reply, rx) = oneshot::channel();
        self.submit(Op::Defragment { reply }, rx)
            .await
            .map(|d| vec![d])
    }

    fn revision_hint(&self) -> Option<Revision> {
        Some(self.inner.current.load(Ordering::Acquire))
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}
