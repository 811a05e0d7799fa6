//! The single writer: every mutation of the embedded store goes through one thread that drains
//! the queue of pending operations, applies all of them in ONE redb write transaction, commits
//! (one fsync for the batch — group commit, as etcd batches its backend commits), and only then
//! answers each caller and publishes the events. So an acknowledged write is on disk, revisions are
//! assigned in commit order with no gaps, and watchers see events in revision order.
//!
//! Compare-and-swap failures are decided inside the batch's transaction, after the operations
//! queued before them: an op that fails its precondition writes nothing and takes no revision.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use redb::{ReadableTable, Table};
use tokio::sync::{mpsc, oneshot};

use super::record::{self, Kind};
use super::{INDEX, Inner, META, META_COMPACTED, META_CURRENT, REVS, defrag, read_kv, redb_err};
use crate::{Defragmented, Event, KeyValue, Result, Revision, StorageError};

/// At most this many operations, or this many bytes of values, go into one commit.
const MAX_BATCH_OPS: usize = 512;
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Compaction deletes at most this many records per transaction, so writes interleave.
const COMPACTION_CHUNK: usize = 4096;

pub(super) enum Op {
    Create {
        key: String,
        value: Bytes,
        reply: oneshot::Sender<Result<KeyValue>>,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
        reply: oneshot::Sender<Result<KeyValue>>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
        reply: oneshot::Sender<Result<(KeyValue, Revision)>>,
    },
    Compact {
        revision: Revision,
        reply: oneshot::Sender<Result<()>>,
    },
    Defragment {
        reply: oneshot::Sender<Result<Defragmented>>,
    },
}

impl Op {
    fn value_len(&self) -> usize {
        match self {
            Op::Create { value, .. } | Op::Update { value, .. } => value.len(),
            _ => 0,
        }
    }
}

/// The outcome of one write op inside a batch, held until the commit decides its fate.
enum Outcome {
    Kv(oneshot::Sender<Result<KeyValue>>, Result<KeyValue>),
    Deleted(
        oneshot::Sender<Result<(KeyValue, Revision)>>,
        Result<(KeyValue, Revision)>,
    ),
}

pub(super) fn run(inner: Arc<Inner>, mut ops: mpsc::Receiver<Op>) {
    // Compactions in progress, oldest first. Each pass of the loop applies the writes waiting
    // (one batch) and then one chunk of the oldest compaction, so a long compaction never holds
    // writes up for more than a chunk.
    let mut compactions: std::collections::VecDeque<(Revision, oneshot::Sender<Result<()>>)> =
        std::collections::VecDeque::new();
    // Defragmentations asked for since the last one: one run answers them all.
    let mut defrags: Vec<oneshot::Sender<Result<Defragmented>>> = Vec::new();
    loop {
        let first = if compactions.is_empty() {
            match ops.blocking_recv() {
                Some(op) => Some(op),
                None => break,
            }
        } else {
            ops.try_recv().ok()
        };
        if let Some(first) = first {
            let mut batch = Vec::with_capacity(16);
            let mut bytes = first.value_len();
            batch.push(first);
            while batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
                match ops.try_recv() {
                    Ok(op) => {
                        bytes += op.value_len();
                        batch.push(op);
                    }
                    Err(_) => break,
                }
            }
            let writes: Vec<Op> = batch
                .into_iter()
                .filter_map(|op| match op {
                    Op::Compact { revision, reply } => {
                        compactions.push_back((revision, reply));
                        None
                    }
                    Op::Defragment { reply } => {
                        defrags.push(reply);
                        None
                    }
                    other => Some(other),
                })
                .collect();
            if !writes.is_empty() {
                apply_batch(&inner, writes);
            }
        }
        if !defrags.is_empty() {
            let outcome = defrag::defragment(&inner);
            for reply in defrags.drain(..) {
                let _ = reply.send(match &outcome {
                    Ok(d) => Ok(d.clone()),
                    Err(e) => Err(StorageError::Internal {
                        message: e.to_string(),
                        source: None,
                    }),
                });
            }
        }
        if let Some((target, _)) = compactions.front() {
            let outcome = compact_chunk(&inner, *target);
            if !matches!(outcome, Ok(false))
                && let Some((_, reply)) = compactions.pop_front()
            {
                if matches!(outcome, Ok(true))
                    && let Some(policy) = &inner.reclaim
                    && let Err(e) = defrag::maybe_reclaim(&inner, policy)
                {
                    // The compaction itself succeeded; the space waits for the next one.
                    tracing::warn!(error = %e, "embedded store: automatic defragmentation failed");
                }
                let _ = reply.send(outcome.map(|_| ()));
            }
        }
    }
    tracing::debug!("embedded store writer stopped");
}

fn apply_batch(inner: &Inner, writes: Vec<Op>) {
    let started = std::time::Instant::now();
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut events = Vec::with_capacity(writes.len());
    let committed = (|| -> Result<Revision> {
        let db = inner.db()?;
        let txn = db.begin_write().map_err(redb_err("begin write"))?;
        let last;
        {
            let mut revs = txn.open_table(REVS).map_err(redb_err("open revs"))?;
            let mut index = txn.open_table(INDEX).map_err(redb_err("open index"))?;
            let mut meta = txn.open_table(META).map_err(redb_err("open meta"))?;
            let mut current = meta
                .get(META_CURRENT)
                .map_err(redb_err("read revision"))?
                .map(|v| v.value())
                .unwrap_or(1);
            for op in writes {
                let outcome = apply_one(&mut revs, &mut index, &mut current, op, &mut events)?;
                outcomes.push(outcome);
            }
            meta.insert(META_CURRENT, current)
                .map_err(redb_err("write revision"))?;
            last = current;
        }
        txn.commit().map_err(redb_err("commit"))?;
        Ok(last)
    })();

    match committed {
        Ok(revision) => {
            inner.current.store(revision, Ordering::Release);
            for outcome in outcomes {
                match outcome {
                    Outcome::Kv(reply, result) => {
                        let _ = reply.send(result);
                    }
                    Outcome::Deleted(reply, result) => {
                        let _ = reply.send(result);
                    }
                }
            }
            for event in events {
                // No receivers is fine: nobody is watching.
                let _ = inner.events.send(Arc::new(event));
            }
            tracing::trace!(elapsed = ?started.elapsed(), revision, "committed batch");
        }
        Err(err) => {
            // Nothing of the batch is on disk. Every caller gets the error — including those whose
            // precondition failed, since that verdict was taken against uncommitted state.
            tracing::error!(error = %err, "embedded store commit failed");
            let message = err.to_string();
            let fail = || StorageError::Internal {
                message: message.clone(),
                source: None,
            };
            for outcome in outcomes {
                match outcome {
                    Outcome::Kv(reply, _) => {
                        let _ = reply.send(Err(fail()));
                    }
                    Outcome::Deleted(reply, _) => {
                        let _ = reply.send(Err(fail()));
                    }
                }
            }
        }
    }
}

/// Applies one write op to the open transaction. Returns Err only for storage failures (which
/// abort the batch); precondition failures are part of the op's Outcome.
fn apply_one(
    revs: &mut Table<'_, i64, &'static [u8]>,
    index: &mut Table<'_, &'static str, (i64, i64)>,
    current: &mut Revision,
    op: Op,
    events: &mut Vec<Event>,
) -> Result<Outcome> {
    let existing = index
        .get(op_key(&op))
        .map_err(redb_err("read index"))?
        .map(|v| v.value());
    match op {
        Op::Create { key, value, reply } => {
            if existing.is_some() {
                return Ok(Outcome::Kv(reply, Err(StorageError::AlreadyExists { key })));
            }
            let revision = *current + 1;
            revs.insert(
                revision,
                record::encode(Kind::Put, revision, 0, &key, &value).as_slice(),
            )
            .map_err(redb_err("write record"))?;
            index
                .insert(key.as_str(), (revision, revision))
                .map_err(redb_err("write index"))?;
            *current = revision;
            let kv = KeyValue {
                key,
                value,
                create_revision: revision,
                mod_revision: revision,
            };
            events.push(Event::Put {
                kv: kv.clone(),
                prev: None,
            });
            Ok(Outcome::Kv(reply, Ok(kv)))
        }
        Op::Update {
            key,
            value,
            expected,
            reply,
        } => {
            let (create_revision, prev) = match precondition(revs, &key, existing, Some(expected))?
            {
                Ok(live) => live,
                Err(e) => return Ok(Outcome::Kv(reply, Err(e))),
            };
            let mod_revision = prev.mod_revision;
            let revision = *current + 1;
            revs.insert(
                revision,
                record::encode(Kind::Put, create_revision, mod_revision, &key, &value).as_slice(),
            )
            .map_err(redb_err("write record"))?;
            index
                .insert(key.as_str(), (create_revision, revision))
                .map_err(redb_err("write index"))?;
            *current = revision;
            let kv = KeyValue {
                key,
                value,
                create_revision,
                mod_revision: revision,
            };
            events.push(Event::Put {
                kv: kv.clone(),
                prev: Some(prev),
            });
            Ok(Outcome::Kv(reply, Ok(kv)))
        }
        Op::Delete {
            key,
            expected,
            reply,
        } => {
            let (create_revision, prev) = match precondition(revs, &key, existing, expected)? {
                Ok(live) => live,
                Err(e) => return Ok(Outcome::Deleted(reply, Err(e))),
            };
            let mod_revision = prev.mod_revision;
            let revision = *current + 1;
            revs.insert(
                revision,
                record::encode(Kind::Delete, create_revision, mod_revision, &key, &[]).as_slice(),
            )
            .map_err(redb_err("write record"))?;
            index
                .remove(key.as_str())
                .map_err(redb_err("write index"))?;
            *current = revision;
            events.push(Event::Delete {
                prev: prev.clone(),
                revision,
            });
            Ok(Outcome::Deleted(reply, Ok((prev, revision))))
        }
        Op::Compact { .. } | Op::Defragment { .. } => {
            unreachable!("compactions and defragmentations are split out of write batches")
        }
    }
}

/// Checks an update's or delete's precondition against the live version: Ok((create_revision,
/// live version)) when the key exists at `expected` (at any version when None), the op's error
/// otherwise. The outer Result is for storage failures only.
fn precondition(
    revs: &Table<'_, i64, &'static [u8]>,
    key: &str,
    existing: Option<(Revision, Revision)>,
    expected: Option<Revision>,
) -> Result<Result<(Revision, KeyValue), StorageError>> {
    let Some((create_revision, mod_revision)) = existing else {
        return Ok(Err(StorageError::NotFound {
            key: key.to_string(),
        }));
    };
    let live = read_kv(revs, mod_revision)?;
    match expected {
        Some(expected) if expected != mod_revision => Ok(Err(StorageError::Conflict {
            key: key.to_string(),
            expected,
            current: Some(Box::new(live)),
        })),
        _ => Ok(Ok((create_revision, live))),
    }
}

fn op_key(op: &Op) -> &str {
    match op {
        Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
        Op::Compact { .. } | Op::Defragment { .. } => "",
    }
}

/// Compacts history before `target`, etcd's way: every version superseded by a write older than
/// `target` is deleted, and so is every tombstone older than `target`. Each record names the
/// version it superseded (`prev_revision`), so compaction walks only the records in
/// `[previous compaction point, target)`, never the whole store.
///
/// Worked example — key `a` written at 2, 5, 9 and deleted at 12; compact(10):
/// records 2..10 are walked; record 5 supersedes 2 (deleted), record 9 supersedes 5 (deleted);
/// 9 survives (it is `a` as of 10), 12 is ≥ 10 so the tombstone and its prev (9) stay for watchers
/// resuming at 10. A later compact(13) walks 10..13: record 12 supersedes 9 (deleted) and is a
/// tombstone (deleted).
/// One chunk (one transaction, at most COMPACTION_CHUNK records) of a compaction to `target`;
/// Ok(true) once the compaction point has reached it.
fn compact_chunk(inner: &Inner, target: Revision) -> Result<bool> {
    let db = inner.db()?;
    let txn = db.begin_write().map_err(redb_err("begin write"))?;
    let (done, point);
    let mut freed = 0u64;
    {
        let mut revs = txn.open_table(REVS).map_err(redb_err("open revs"))?;
        let mut meta = txn.open_table(META).map_err(redb_err("open meta"))?;
        let compacted = meta
            .get(META_COMPACTED)
            .map_err(redb_err("read compaction point"))?
            .map_or(1, |v| v.value());
        let current = meta
            .get(META_CURRENT)
            .map_err(redb_err("read revision"))?
            .map_or(1, |v| v.value());
        if target > current {
            return Err(StorageError::FutureRevision {
                requested: target,
                current,
            });
        }
        if target <= compacted {
            return Ok(true);
        }
        let mut walked = Vec::with_capacity(COMPACTION_CHUNK.min(1024));
        for entry in revs
            .range(compacted..target)
            .map_err(redb_err("scan revs"))?
            .take(COMPACTION_CHUNK)
        {
            let (rev, bytes) = entry.map_err(redb_err("scan revs"))?;
            let rev = rev.value();
            let rec = record::decode(rev, bytes.value())?;
            walked.push((rev, rec.kind, rec.prev_revision));
        }
        let next_point = if walked.len() == COMPACTION_CHUNK {
            walked.last().map_or(target, |(rev, _, _)| rev + 1)
        } else {
            target
        };
        let mut remove = |rev: Revision| -> Result<()> {
            if let Some(old) = revs.remove(rev).map_err(redb_err("delete record"))? {
                freed += old.value().len() as u64;
            }
            Ok(())
        };
        for (rev, kind, prev) in &walked {
            if *prev != 0 {
                remove(*prev)?;
            }
            if *kind == Kind::Delete {
                remove(*rev)?;
            }
        }
        meta.insert(META_COMPACTED, next_point)
            .map_err(redb_err("write compaction point"))?;
        done = next_point == target;
        point = next_point;
    }
    txn.commit().map_err(redb_err("commit compaction"))?;
    inner.compacted.store(point, Ordering::Release);
    inner.freed_since_check.fetch_add(freed, Ordering::Relaxed);
    Ok(done)
}
