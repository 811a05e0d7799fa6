//! Resources served without a watch cache: Events, core and `events.k8s.io`, as
//! kube-apiserver's default `--watch-cache-sizes` leaves them. Every controller writes them
//! for every decision and few clients read them, yet a cache would keep each one twice (once
//! per group) with its history: 150 MiB of a 50,000-pod cluster's API server.
//!
//! Their GETs and LISTs read the store. Each client watch is a store watch of its own
//! ([`watch`]), its events shaped as a cache's so the watch handler serves both alike; its
//! initial state, when asked for, is a list from the store at one revision.

use std::sync::Arc;
use std::time::Duration;

use capstan_storage::{Event, ListOptions, Storage, WatchStream};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{CacheEvent, CacheWatcher, Cached, Kind, RecvError, Source, cached};
use crate::errors::{ApiError, ApiResult, from_storage};
use crate::object::ObjectExt;
use crate::registry::ResourceInfo;

/// Whether kube-apiserver's default serves `group`/`plural` from a watch cache: everything but
/// Events.
pub fn is_cached(group: &str, plural: &str) -> bool {
    !(plural == "events" && matches!(group, "" | "events.k8s.io"))
}

/// How long a read naming a revision the store has not reached waits for it (as the cache's
/// readers do).
const FUTURE_REVISION_WAIT: Duration = Duration::from_secs(3);

/// Waits until the store has reached `rv`; false after [`FUTURE_REVISION_WAIT`].
pub async fn wait_for_store(store: &Arc<dyn Storage>, rv: i64) -> ApiResult<bool> {
    let deadline = tokio::time::Instant::now() + FUTURE_REVISION_WAIT;
    loop {
        let current = store
            .current_revision()
            .await
            .map_err(|e| from_storage(e, "", "", ""))?;
        if current >= rv {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client watch of `info` straight from the store, as [`super::Cacher::watch_at_least`]
/// answers from a cache: from `from` (every event after it), or, with None, the current state
/// (at least `min_rv`) as ADDED events and then every change after it.
pub async fn watch(
    info: &Arc<ResourceInfo>,
    store: &Arc<dyn Storage>,
    from: Option<i64>,
    min_rv: i64,
) -> ApiResult<(Vec<Arc<CacheEvent>>, CacheWatcher, i64)> {
    let failed = |e| from_storage(e, &info.group, &info.plural, "");
    let target = min_rv.max(from.unwrap_or(0));
    if !wait_for_store(store, target).await? {
        let current = store.current_revision().await.map_err(failed)?;
        return Err(ApiError::timeout(format!(
            "Too large resource version: {target}, current: {current}"
        )));
    }
    let pointers = cached::index_pointers(info);
    let (initial, start) = match from {
        Some(r) => (Vec::new(), r),
        None => {
            let (objects, rev) = list_all(info, store, &pointers).await?;
            let added = objects
                .into_iter()
                .map(|object| {
                    Arc::new(CacheEvent {
                        kind: Kind::Added,
                        rv: rev,
                        object,
                        prev: None,
                    })
                })
                .collect();
            (added, rev)
        }
    };
    let stream = store.watch(&info.prefix(), start).await.map_err(failed)?;
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(forward(stream, info.clone(), pointers, tx));
    let live = CacheWatcher {
        source: Source::Store(StoreEvents { rx, task }),
    };
    Ok((initial, live, start))
}

/// Every object of `info` at one revision, page by page.
async fn list_all(
    info: &ResourceInfo,
    store: &Arc<dyn Storage>,
    pointers: &[String],
) -> ApiResult<(Vec<Arc<Cached>>, i64)> {
    let mut opts = ListOptions {
        limit: Some(500),
        ..Default::default()
    };
    let mut objects = Vec::new();
    loop {
        let page = store
            .list(&info.prefix(), opts.clone())
            .await
            .map_err(|e| from_storage(e, &info.group, &info.plural, ""))?;
        for kv in &page.items {
            if let Some(v) = info.decode(&kv.value, kv.mod_revision) {
                objects.push(Arc::new(Cached::new(&v, pointers)));
            }
        }
        if !page.more {
            return Ok((objects, page.revision));
        }
        opts.revision = Some(page.revision);
        opts.start_after = page.items.last().map(|kv| kv.key.clone());
    }
}

/// The live part of a store-backed client watch; dropping it ends the store watch.
pub(super) struct StoreEvents {
    rx: mpsc::Receiver<Result<Arc<CacheEvent>, RecvError>>,
    task: tokio::task::JoinHandle<()>,
}

impl StoreEvents {
    pub(super) async fn recv(&mut self) -> Result<Arc<CacheEvent>, RecvError> {
        self.rx.recv().await.unwrap_or(Err(RecvError::Closed))
    }
}

impl Drop for StoreEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Turns the store's events into a cache's: the object decoded for the resource's version,
/// with its index, and the version it replaced (for filtered watchers). A broken store watch
/// ends the client's, which re-watches from its last resourceVersion.
async fn forward(
    mut stream: WatchStream,
    info: Arc<ResourceInfo>,
    pointers: Vec<String>,
    tx: mpsc::Sender<Result<Arc<CacheEvent>, RecvError>>,
) {
    let cached = |v: &Value| Arc::new(Cached::new(v, &pointers));
    loop {
        let item = tokio::select! {
            _ = tx.closed() => return,
            item = stream.next() => item,
        };
        let event = match item {
            Some(Ok(Event::Progress { .. })) => continue,
            Some(Ok(Event::Put { kv, prev })) => {
                let Some(obj) = info.decode(&kv.value, kv.mod_revision) else {
                    continue;
                };
                let prev = prev
                    .and_then(|p| info.decode(&p.value, p.mod_revision))
                    .map(|p| cached(&p));
                let kind = if kv.create_revision == kv.mod_revision {
                    Kind::Added
                } else {
                    Kind::Modified
                };
                CacheEvent {
                    kind,
                    rv: kv.mod_revision,
                    object: cached(&obj),
                    prev,
                }
            }
            Some(Ok(Event::Delete { prev, revision })) => {
                let Some(mut gone) = info.decode(&prev.value, prev.mod_revision) else {
                    continue;
                };
                gone.set_meta("resourceVersion", Value::String(revision.to_string()));
                let gone = cached(&gone);
                CacheEvent {
                    kind: Kind::Deleted,
                    rv: revision,
                    object: gone.clone(),
                    prev: Some(gone),
                }
            }
            Some(Err(e)) => {
                tracing::debug!(resource = ?info, error = %e, "store watch of an uncached resource ended");
                let _ = tx.send(Err(RecvError::Closed)).await;
                return;
            }
            None => {
                let _ = tx.send(Err(RecvError::Closed)).await;
                return;
            }
        };
        if tx.send(Ok(Arc::new(event))).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_go_uncached() {
        assert!(!is_cached("", "events"));
        assert!(!is_cached("events.k8s.io", "events"));
        assert!(is_cached("", "pods"));
        assert!(
            is_cached("example.com", "events"),
            "a custom resource named events"
        );
    }
}
