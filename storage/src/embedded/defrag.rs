//! Defragmentation: giving the space compaction freed back to the file system — `etcdctl defrag`
//! for the embedded store.
//!
//! Compaction deletes old records, but redb keeps the freed pages inside the file for later
//! writes: after a burst of large writes the file stays as large as the burst made it (2.26 GB
//! seen after one). [`defragment`] rewrites the file compactly with redb's `Database::compact`,
//! which needs the database to itself: it runs on the writer thread (writes wait behind it) and
//! takes the database's lock for writing (reads wait; none is in progress while it runs).
//!
//! # Automatic reclaim (the policy)
//! After each compaction that reached its target, the writer checks [`ReclaimPolicy`]: when the
//! file is at least `min_file_bytes` and at least `min_free_ratio` of it is free, it defragments
//! before answering the compaction. Finding out how much is free walks redb's live pages, so the
//! walk happens only once compaction has deleted records worth half that share of the file since
//! the last check (records undercount the pages they held: redb rounds a large value's pages up
//! to a power of two), and a store whose freed pages are reused by later writes does not walk
//! again until as much more is freed. Defaults: files of 64 MiB or more, at least half free.
//! The space is reused by later writes either way; reclaiming it only returns it to the disk.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Inner, redb_err};
use crate::{Defragmented, Result, StorageError};

/// When the embedded store defragments on its own, after a compaction.
#[derive(Clone, Debug, PartialEq)]
pub struct ReclaimPolicy {
    /// Smaller files are left alone: the space is not worth a pause.
    pub min_file_bytes: u64,
    /// The fraction of the file that must be free (0..1).
    pub min_free_ratio: f64,
}

impl Default for ReclaimPolicy {
    fn default() -> Self {
        ReclaimPolicy {
            min_file_bytes: 64 * 1024 * 1024,
            min_free_ratio: 0.5,
        }
    }
}

fn file_size(path: &Path) -> Result<u64> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| {
        StorageError::internal(format!("embedded store: size of {}", path.display()), e)
    })
}

/// Rewrites the store's file compactly. Must run on the writer thread (no write transaction may
/// be open); waits for the reads in progress to end and holds new ones until it is done.
pub(super) fn defragment(inner: &Inner) -> Result<Defragmented> {
    let size_before = file_size(&inner.path)?;
    let started = Instant::now();
    {
        let mut db = inner.db.write().map_err(|_| StorageError::Internal {
            message: "embedded store: database lock poisoned".into(),
            source: None,
        })?;
        db.compact().map_err(redb_err("defragment"))?;
    }
    inner.freed_since_check.store(0, Ordering::Relaxed);
    let size_after = file_size(&inner.path)?;
    tracing::info!(
        path = %inner.path.display(),
        size_before,
        size_after,
        elapsed = ?started.elapsed(),
        "defragmented embedded store"
    );
    Ok(Defragmented {
        target: inner.path.display().to_string(),
        size_before,
        size_after,
    })
}

/// Bytes of the file redb holds no live page in.
fn free_bytes(inner: &Inner, file: u64) -> Result<u64> {
    let db = inner.db()?;
    let txn = db.begin_write().map_err(redb_err("begin write"))?;
    let stats = txn.stats().map_err(redb_err("read stats"))?;
    txn.abort().map_err(redb_err("abort"))?;
    let used = stats.allocated_pages() * stats.page_size() as u64;
    Ok(file.saturating_sub(used))
}

/// Applies the [`ReclaimPolicy`] after a compaction (on the writer thread). Returns what a
/// defragmentation did, when one ran.
pub(super) fn maybe_reclaim(inner: &Inner, policy: &ReclaimPolicy) -> Result<Option<Defragmented>> {
    let file = file_size(&inner.path)?;
    let threshold = (file as f64 * policy.min_free_ratio) as u64;
    // Record bytes undercount the pages they held (redb rounds a large value's pages up to a
    // power of two): half the threshold in records is enough to look.
    let freed = inner.freed_since_check.load(Ordering::Relaxed);
    if file < policy.min_file_bytes || freed < threshold / 2 {
        return Ok(None);
    }
    inner.freed_since_check.store(0, Ordering::Relaxed);
    let free = free_bytes(inner, file)?;
    if free < threshold {
        tracing::debug!(
            file,
            free,
            "embedded store: not enough free space to defragment"
        );
        return Ok(None);
    }
    defragment(inner).map(Some)
}
