//! The watch cache held to the storage conformance suite, as kube-apiserver runs its storage
//! tests against etcd3 and against the cacher.
//!
//! The cacher is not a `Storage`: it serves one resource's LIST, GET and WATCH from memory, fed
//! by one store watch. [`CachedStore`] makes it one the way the API server uses it — writes go
//! to the store; `get` and `list` are consistent reads from the cache (wait until the cache
//! reflects the store's current revision, then read it; the API server falls back to the store
//! after 50 ms, this adapter fails instead, so a cache that cannot catch up is caught); `watch`
//! is a cache watch from a resourceVersion. The cache holds one resource whose store prefix is
//! empty, so every key the suite writes belongs to it; values travel as JSON objects
//! (`{"metadata": {"name": KEY}, "value": TEXT}`), and keys come back through the registry's
//! `key_of`, as the watch handler computes them.
//!
//! One field does not come from the cache: `create_revision`. Kubernetes objects carry only a
//! resourceVersion, so the cache keeps no create revision; the adapter reads it from the store
//! for the version the cache returned (the key at its mod_revision). Everything else compared —
//! values, mod_revisions, presence, order, previous values, event kinds, list revisions — is the
//! cache's.
//!
//! The cases that apply run against the cache over both backends. Those that do not:
//! - `pagination_sees_one_snapshot_while_writes_continue`,
//!   `list_at_a_past_revision_rolls_back_every_kind_of_change`: the cache holds only its current
//!   state; the API server reads a past revision (a continue token, resourceVersionMatch=Exact)
//!   from the store. The adapter refuses a list at any revision but the cache's own.
//! - `watch_from_a_future_revision_waits_for_it`: the cache waits 3 s for a future
//!   resourceVersion, then refuses it (504 "Too large resource version", as Kubernetes); a store
//!   waits for ever.
//! - `compaction_makes_older_revisions_unreadable`: the cache keeps its own window of history
//!   (bounded by count, bytes and age: `HistoryLimits`), independent of the store's compaction
//!   point, as Kubernetes' cacher does;
//!   a watch the store could no longer serve may still be served, correctly, from memory.
//! - `values_up_to_the_limit_round_trip_and_larger_ones_are_refused`: the size limit is the
//!   store's and applies to the stored JSON object, which the adapter's envelope makes larger
//!   than the suite's value (and the suite's big values are not UTF-8).
//! - `invalid_keys_are_rejected`: keys are the store's to validate; the cache is read with keys
//!   the registry built from validated names.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use capstan_apiserver::object::ObjectExt;
use capstan_apiserver::registry::ResourceInfo;
use capstan_apiserver::watch_cache::{CacheEvent, Cacher, Kind, RecvError};
use capstan_storage::{
    Event, KeyValue, ListOptions, ListResult, Result, Revision, Storage, StorageError, WatchStream,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// How long a consistent read waits for the cache to reflect the store's current revision.
const CATCH_UP: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct CachedStore {
    store: Arc<dyn Storage>,
    cacher: Arc<Cacher>,
    view: View,
}

/// Turns what the cache holds back into the store's terms.
#[derive(Clone, Debug)]
struct View {
    store: Arc<dyn Storage>,
    info: Arc<ResourceInfo>,
}

impl CachedStore {
    async fn start(store: Arc<dyn Storage>) -> CachedStore {
        let mut info = capstan_apiserver::builtins::builtins()
            .into_iter()
            .find(|i| i.is("", "configmaps"))
            .expect("configmaps are built in");
        info.store_prefix = String::new();
        info.namespaced = false;
        let info = Arc::new(info);
        let cacher = Cacher::start(info.clone(), store.clone());
        assert!(
            cacher.wait_for(0, CATCH_UP).await,
            "the cache did not list the store"
        );
        CachedStore {
            view: View {
                store: store.clone(),
                info,
            },
            store,
            cacher,
        }
    }

    /// Waits until the cache reflects at least the store's current revision (or `at`).
    async fn caught_up(&self, at: Option<Revision>) -> Result<()> {
        let current = self.store.current_revision().await?.max(at.unwrap_or(0));
        if self.cacher.wait_for(current, CATCH_UP).await {
            Ok(())
        } else {
            Err(StorageError::Unavailable {
                message: format!(
                    "the watch cache did not reach revision {current} within {CATCH_UP:?} (it is at {})",
                    self.cacher.revision()
                ),
                source: None,
            })
        }
    }
}

impl Drop for CachedStore {
    fn drop(&mut self) {
        self.cacher.stop();
    }
}

impl View {
    fn encode(key: &str, value: &Bytes) -> Result<Bytes> {
        let text = std::str::from_utf8(value).map_err(|_| StorageError::Internal {
            message: format!("the cache adapter stores UTF-8 values only ({key:?})"),
            source: None,
        })?;
        let obj = json!({"metadata": {"name": key}, "value": text});
        Ok(Bytes::from(serde_json::to_vec(&obj).expect("a JSON value")))
    }

    /// A version the store returned (a deleted one, a conflict's live one), its value taken
    /// out of the envelope.
    fn unwrap_stored(kv: KeyValue) -> KeyValue {
        let value = serde_json::from_slice::<Value>(&kv.value)
            .ok()
            .and_then(|v| v["value"].as_str().map(|s| Bytes::from(s.to_string())))
            .unwrap_or_default();
        KeyValue { value, ..kv }
    }

    /// A store write's error, with a conflict's live version out of the envelope.
    fn unwrap_error(e: StorageError) -> StorageError {
        match e {
            StorageError::Conflict {
                key,
                expected,
                current,
            } => StorageError::Conflict {
                key,
                expected,
                current: current.map(|kv| Box::new(View::unwrap_stored(*kv))),
            },
            other => other,
        }
    }

    /// A cached object as a KeyValue: its key, value and mod_revision from the cache, its
    /// create_revision from the store (the version of the key at that mod_revision).
    async fn key_value(&self, obj: &Value) -> Result<KeyValue> {
        let key = self.info.key_of(obj);
        let broken = |what: &str| StorageError::Internal {
            message: format!("cached object {key:?} has no {what}: {obj}"),
            source: None,
        };
        let value = obj["value"].as_str().ok_or_else(|| broken("value"))?;
        let mod_revision: Revision = obj
            .meta_str("resourceVersion")
            .and_then(|rv| rv.parse().ok())
            .ok_or_else(|| broken("resourceVersion"))?;
        let create_revision = self.create_revision(&key, mod_revision).await?;
        Ok(KeyValue {
            value: Bytes::copy_from_slice(value.as_bytes()),
            key,
            create_revision,
            mod_revision,
        })
    }

    async fn create_revision(&self, key: &str, mod_revision: Revision) -> Result<Revision> {
        if let Some(kv) = self.store.get(key).await?
            && kv.mod_revision == mod_revision
        {
            return Ok(kv.create_revision);
        }
        let at = ListOptions {
            revision: Some(mod_revision),
            ..Default::default()
        };
        self.store
            .list(key, at)
            .await?
            .items
            .into_iter()
            .find(|kv| kv.key == key && kv.mod_revision == mod_revision)
            .map(|kv| kv.create_revision)
            .ok_or_else(|| StorageError::Internal {
                message: format!("the cache has {key:?} at {mod_revision}; the store never had"),
                source: None,
            })
    }

    async fn event(&self, e: &CacheEvent) -> Result<Event> {
        let prev = match &e.prev {
            Some(p) => Some(self.key_value(&p.value()).await?),
            None => None,
        };
        Ok(match e.kind {
            Kind::Added | Kind::Modified => Event::Put {
                kv: self.key_value(&e.object.value()).await?,
                prev,
            },
            Kind::Deleted => Event::Delete {
                prev: prev.ok_or_else(|| StorageError::Internal {
                    message: format!("a DELETED event at {} without the deleted object", e.rv),
                    source: None,
                })?,
                revision: e.rv,
            },
        })
    }
}

#[async_trait]
impl Storage for CachedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.caught_up(None).await?;
        match self.cacher.get(key) {
            Some(obj) => Ok(Some(self.view.key_value(&obj.value()).await?)),
            None => Ok(None),
        }
    }

    /// The cache's current list under `prefix`; `limit` and `start_after` page through it.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        self.caught_up(opts.revision).await?;
        let (objects, revision) = self.cacher.list(prefix);
        if let Some(asked) = opts.revision
            && asked != revision
        {
            return Err(StorageError::Internal {
                message: format!(
                    "the watch cache serves its current revision ({revision}) only, not {asked}: the API server reads past revisions from the store"
                ),
                source: None,
            });
        }
        let mut items = Vec::new();
        for obj in &objects {
            let kv = self.view.key_value(&obj.value()).await?;
            if opts
                .start_after
                .as_ref()
                .is_none_or(|after| &kv.key > after)
            {
                items.push(kv);
            }
        }
        let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let more = items.len() > limit;
        items.truncate(limit);
        Ok(ListResult {
            items,
            revision,
            more,
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let kv = self.store.create(key, View::encode(key, &value)?).await?;
        Ok(KeyValue { value, ..kv })
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        let stored = View::encode(key, &value)?;
        let kv = self
            .store
            .update(key, stored, expected)
            .await
            .map_err(View::unwrap_error)?;
        Ok(KeyValue { value, ..kv })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        let (kv, revision) = self
            .store
            .delete(key, expected)
            .await
            .map_err(View::unwrap_error)?;
        Ok((View::unwrap_stored(kv), revision))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let (initial, live, _) =
            self.cacher
                .watch(Some(after))
                .await
                .map_err(|e| match e.code {
                    // The cache names its oldest revision only in the message; it is at
                    // least after + 1.
                    410 => StorageError::Compacted {
                        requested: after,
                        compacted: after + 1,
                    },
                    _ => StorageError::Unavailable {
                        message: e.message,
                        source: None,
                    },
                })?;
        // The live stream ends when the cache closes it (a relist, or a watcher so slow that the
        // history dropped events it had not read): the API server ends the client's watch then,
        // and so does this.
        let live = futures_util::stream::unfold(Some(live), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(e) => Some((Ok(e), Some(rx))),
                Err(RecvError::Closed) => None,
                Err(RecvError::Lagged) => Some((
                    Err(StorageError::Unavailable {
                        message: "the watch fell behind the cache's history".into(),
                        source: None,
                    }),
                    None,
                )),
            }
        });
        let view = self.view.clone();
        let prefix = prefix.to_string();
        let events = futures_util::stream::iter(initial.into_iter().map(Ok))
            .chain(live)
            .filter_map(move |item| {
                let (view, prefix) = (view.clone(), prefix.clone());
                async move {
                    match item {
                        Ok(e) if !view.info.key_of(&e.object.index()).starts_with(&prefix) => None,
                        Ok(e) => Some(view.event(&e).await),
                        Err(err) => Some(Err(err)),
                    }
                }
            });
        Ok(Box::pin(events))
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.store.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.store.compact(revision).await
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        self.store.compacted_revision().await
    }

    fn backend(&self) -> &'static str {
        "watch-cache"
    }
}

/// The cases that apply to the cache (see the module docs for the others and why).
macro_rules! cacher_conformance {
    ($make:expr) => {
        capstan_storage::conformance_tests!(@cases $make;
            crud_round_trip,
            writes_with_unmet_preconditions_change_nothing,
            concurrent_cas_increments_are_never_lost,
            list_is_sorted_limited_and_bounded_by_prefix,
            watch_delivers_puts_and_deletes_with_previous_values,
            watch_has_no_gaps_and_no_duplicates_under_concurrent_writers,
            watch_resumes_from_any_past_revision,
            watch_only_sees_its_prefix,
            lists_larger_than_grpcs_default_message_limit_come_back_whole,
        );
    };
}

mod over_embedded {
    use super::*;
    use capstan_storage::embedded::{EmbeddedOptions, EmbeddedStore};

    async fn fresh() -> (Arc<dyn Storage>, tempfile::TempDir) {
        let dir = capstan_testkit::temp_dir("capstan-cacher-").unwrap();
        let mut opts = EmbeddedOptions::new(dir.path());
        opts.compaction = None;
        let store: Arc<dyn Storage> = EmbeddedStore::open(opts).await.unwrap();
        let cached: Arc<dyn Storage> = Arc::new(CachedStore::start(store).await);
        (cached, dir)
    }

    cacher_conformance!(fresh());
}

mod over_etcd {
    use super::*;
    use capstan_storage::etcd::{EtcdOptions, EtcdStore};
    use capstan_testkit::EtcdProcess;

    async fn fresh() -> (Arc<dyn Storage>, EtcdProcess) {
        let etcd = tokio::task::spawn_blocking(EtcdProcess::start)
            .await
            .unwrap()
            .expect("start etcd");
        let store = EtcdStore::connect(EtcdOptions::new(vec![etcd.endpoint.clone()]))
            .await
            .unwrap();
        let cached: Arc<dyn Storage> = Arc::new(CachedStore::start(Arc::new(store)).await);
        (cached, etcd)
    }

    cacher_conformance!(fresh());
}
