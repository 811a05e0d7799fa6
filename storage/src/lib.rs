//! Capstan's object store: one narrow [`Storage`] trait with etcd's data model, two backends, and
//! one conformance suite that both pass.
//!
//! Start with [`Storage`]: everything the API server needs from a store is there. Then read
//! [`embedded`] (the single-machine default, on redb) and [`etcd`] (a real etcd v3 cluster). The
//! suite in [`conformance`] (feature `conformance`) is the specification both are held to.
//!
//! # The model (etcd's)
//! - One cluster-wide **revision**, starting at 1 on an empty store; every successful write (create,
//!   update, delete) increments it by exactly one and stamps the key with it (`mod_revision`).
//!   `create_revision` is the revision that created the current incarnation of the key.
//! - Writes are guarded: `create` fails when the key exists, `update`/`delete` carry the
//!   `mod_revision` they expect (compare-and-swap) — the API server's optimistic concurrency.
//! - `list` reads one consistent snapshot: at the latest revision, or at a given past revision, which
//!   is how a paginated list keeps seeing one snapshot while writes go on (the continue token carries
//!   the revision of the first page).
//! - `watch(prefix, after)` streams every change to keys under `prefix` with a revision greater than
//!   `after`, in revision order, with the previous value, with no gaps and no duplicates.
//! - History older than the **compaction** point is gone: a list at, or a watch from, a revision
//!   before it fails with [`StorageError::Compacted`] (the API server's `410 Gone`).
//!
//! Keys are strings relative to the backend's prefix (`/registry/` by default for etcd): callers
//! write `pods/default/web-1`, never the prefix.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
pub mod encrypted;
pub mod etcd;
mod etcd_members;
mod metrics;

pub use metrics::StorageMetrics;

/// A store revision. Positive; 0 means "not given" where an `Option` would be noisy on the wire.
pub type Revision = i64;

/// Etcd's default request limit (`--max-request-bytes`, 1.5 MiB): the largest value a backend
/// accepts unless configured otherwise. Kubernetes' object limit is the same figure.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1536 * 1024;

/// One version of one key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, relative to the backend's prefix.
    pub key: String,
    pub value: Bytes,
    /// The revision that created this incarnation of the key.
    pub create_revision: Revision,
    /// The revision of the write that produced this version.
    pub mod_revision: Revision,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

/// What a watch delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A key was created or updated. `prev` is the version it replaced (None on create).
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A key was deleted at `revision`; `prev` is the version that was deleted.
    Delete { prev: KeyValue, revision: Revision },
    /// Nothing under the watched prefix changed up to `revision`: a watcher may advance its
    /// resume point (the API server's BOOKMARK). Backends send these when idle; never required.
    Progress { revision: Revision },
}

impl Event {
    /// The revision this event brings the watcher to.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
            Event::Progress { revision } => *revision,
        }
    }

    /// The key this event is about (None for progress notifications).
    pub fn key(&self) -> Option<&str> {
        match self {
            Event::Put { kv, .. } => Some(&kv.key),
            Event::Delete { prev, .. } => Some(&prev.key),
            Event::Progress { .. } => None,
        }
    }
}

/// A watch: ordered events, ending with an error item (then nothing) when the watch cannot go on —
/// [`StorageError::Compacted`] when the watcher fell behind the compaction point and must relist.
/// Dropping the stream cancels the watch.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event, StorageError>> + Send>>;

/// How to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Read the snapshot at this revision; None reads the latest.
    pub revision: Option<Revision>,
    /// At most this many items; None or 0 means all.
    pub limit: Option<usize>,
    /// Start strictly after this key (the previous page's last key); None starts at the prefix.
    pub start_after: Option<String>,
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    /// Keys in ascending byte order.
    pub items: Vec<KeyValue>,
    /// The revision of the snapshot the page was read from: pass it as `ListOptions::revision`
    /// (with `start_after` = the last item's key) to read the next page of the same snapshot.
    pub revision: Revision,
    /// True when more items follow under the prefix.
    pub more: bool,
}

/// Errors every backend reports with the same meaning. The API server maps each to one
/// Kubernetes status (NotFound → 404, AlreadyExists and Conflict → 409, Compacted → 410,
/// TooLarge → 413, Unavailable → 503).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("key {key:?} not found")]
    NotFound { key: String },
    #[error("key {key:?} already exists")]
    AlreadyExists { key: String },
    /// A compare-and-swap lost: the key's mod_revision is no longer the expected one. `current` is
    /// the live version (None when the key was deleted meanwhile).
    #[error("conflict on key {key:?}: expected mod_revision {expected}, found {}", current.as_ref().map_or("none".to_string(), |kv| kv.mod_revision.to_string()))]
    Conflict {
        key: String,
        expected: Revision,
        current: Option<Box<KeyValue>>,
    },
    #[error("revision {requested} has been compacted (compaction point {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// A revision in the future (not yet written).
    #[error("revision {requested} is newer than the store's current revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("value for key {key:?} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// The backend cannot be reached or cannot serve now (etcd down, store shut down). Retrying
    /// later may succeed. For a write that timed out the outcome is unknown (it may have been
    /// applied): callers re-read before retrying a non-idempotent write, as the API server does.
    #[error("storage unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Anything else the backend reported (I/O errors, corruption). Not retryable as such.
    #[error("storage backend error: {message}")]
    Internal {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StorageError {
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        StorageError::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn internal(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StorageError::Internal {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. })
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The store the API server stands on. Implemented by [`embedded::EmbeddedStore`] and
/// [`etcd::EtcdStore`]; used as `Arc<dyn Storage>`.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// The latest version of `key`, or None.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Keys starting with `prefix`, in ascending order, read from one snapshot.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult>;

    /// Creates `key`; fails with `AlreadyExists` when it exists. Returns the new version.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;

    /// Replaces `key` if its mod_revision is still `expected`; otherwise `Conflict` (or `NotFound`
    /// when the key does not exist). Returns the new version.
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue>;

    /// Deletes `key`, if its mod_revision is `expected` when given. Returns the deleted version
    /// and the revision of the delete.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)>;

    /// Changes under `prefix` with revisions greater than `after`, in order. `after` older than
    /// the compaction point fails with `Compacted` (immediately, or as the stream's first item).
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// The store's current revision.
    async fn current_revision(&self) -> Result<Revision>;

    /// Discards history before `revision`: afterwards lists at, and watches from, revisions
    /// older than it fail with `Compacted`. The latest version of every key is kept.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The compaction point: the oldest revision that can still be read (1 when never compacted).
    async fn compacted_revision(&self) -> Result<Revision>;

    /// The current revision when the backend knows it without I/O (the embedded store keeps it
    /// in memory); None when finding out takes a round trip (etcd). Lets a cache decide cheaply
    /// whether it is current enough to answer a consistent read.
    fn revision_hint(&self) -> Option<Revision> {
        None
    }

    /// Gives the space that compaction freed back to the file system (etcd's defragment): the
    /// embedded store rewrites its file compactly, etcd defragments every endpoint. Writes wait
    /// while it runs. A backend that cannot says so with an error.
    async fn defragment(&self) -> Result<Vec<Defragmented>> {
        Err(StorageError::Internal {
            message: format!("the {} store cannot defragment", self.backend()),
            source: None,
        })
    }

    /// A short name for logs and metrics: "embedded" or "etcd".
    fn backend(&self) -> &'static str;
}

/// What one defragmentation did to one database file: the embedded store's, or one etcd
/// member's (etcd reports its backend's size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defragmented {
    /// The file's path, or the etcd endpoint.
    pub target: String,
    pub size_before: u64,
    pub size_after: u64,
}

/// Automatic compaction policy: keep at least `min_retention` of history and at least
/// `min_revisions` revisions; compact every `interval`. Kubernetes' apiserver compacts etcd every
/// 5 minutes; the defaults here keep the last 5 minutes and 10,000 revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionPolicy {
    pub interval: Duration,
    pub min_retention: Duration,
    pub min_revisions: Revision,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            interval: Duration::from_secs(60),
            min_retention: Duration::from_secs(300),
            min_revisions: 10_000,
        }
    }
}

/// Validates a key the way both backends need it: non-empty, no NUL (redb and etcd would take
/// it, but the API server never writes one and a NUL in a key is always a bug upstream).
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StorageError::InvalidKey {
            key: key.to_string(),
            reason: "empty",
        });
    }
    if key.contains('\0') {
        return Err(StorageError::InvalidKey {
            key: key.to_string(),
            reason: "contains NUL",
        });
    }
    Ok(())
}

pub(crate) fn check_value(key: &str, value: &Bytes, limit: usize) -> Result<()> {
    if value.len() > limit {
        return Err(StorageError::TooLarge {
            key: key.to_string(),
            size: value.len(),
            limit,
        });
    }
    Ok(())
}

/// The exclusive end of the key range holding every key that starts with `prefix` — etcd's
/// `range_end` for a prefix. None when every key ≥ prefix matches (prefix empty or all 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_that_can_be() {
        assert_eq!(prefix_end(b"pods/"), Some(b"pods0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn keys_must_be_non_empty_and_free_of_nul() {
        assert!(check_key("pods/default/a").is_ok());
        assert!(matches!(
            check_key(""),
            Err(StorageError::InvalidKey { .. })
        ));
        assert!(matches!(
            check_key("a\0b"),
            Err(StorageError::InvalidKey { .. })
        ));
    }
}
