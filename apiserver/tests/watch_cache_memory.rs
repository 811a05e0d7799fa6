//! What the watch cache holds under large writes (issue 16: 2,000 updates of a 1 MB ConfigMap
//! grew the API server to 2.48 GiB — 10,000 events kept per resource, whatever their size).
//! Memory is checked by the cache's own accounting (`Cacher::memory`), not by RSS.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use capstan_apiserver::registry::ResourceInfo;
use capstan_apiserver::watch_cache::{Cacher, HistoryLimits, RecvError};
use capstan_storage::Storage;
use capstan_storage::embedded::{EmbeddedOptions, EmbeddedStore};
use serde_json::json;

const KEY: &str = "configmaps/default/big";
const VALUE_BYTES: usize = 256 * 1024;
const UPDATES: usize = 100;

fn configmaps() -> Arc<ResourceInfo> {
    let info = capstan_apiserver::builtins::builtins()
        .into_iter()
        .find(|i| i.is("", "configmaps"))
        .expect("configmaps are built in");
    Arc::new(info)
}

fn configmap(i: usize) -> Bytes {
    let data = char::from(b'a' + (i % 26) as u8)
        .to_string()
        .repeat(VALUE_BYTES);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "big", "namespace": "default"}, "data": {"payload": data}});
    Bytes::from(serde_json::to_vec(&cm).unwrap())
}

struct Fixture {
    store: Arc<dyn Storage>,
    cacher: Arc<Cacher>,
    _dir: tempfile::TempDir,
}

async fn start(limits: HistoryLimits) -> Fixture {
    let dir = capstan_testkit::temp_dir("capstan-cache-memory-").unwrap();
    let mut opts = EmbeddedOptions::new(dir.path());
    opts.compaction = None;
    let store: Arc<dyn Storage> = EmbeddedStore::open(opts).await.unwrap();
    let cacher = Cacher::start_with(configmaps(), store.clone(), limits);
    assert!(cacher.wait_for(0, Duration::from_secs(10)).await);
    Fixture {
        store,
        cacher,
        _dir: dir,
    }
}

impl Fixture {
    /// Creates the ConfigMap and updates it `UPDATES - 1` times; returns the revisions written,
    /// once the cache reflects the last.
    async fn burst(&self) -> Vec<i64> {
        let mut revs: Vec<i64> = Vec::with_capacity(UPDATES);
        for i in 0..UPDATES {
            revs.push(self.write(i, revs.last().copied()).await);
        }
        let last = revs[UPDATES - 1];
        assert!(self.cacher.wait_for(last, Duration::from_secs(30)).await);
        revs
    }

    /// Writes version `i` of the ConfigMap over the one at `prev` (creates it when None).
    async fn write(&self, i: usize, prev: Option<i64>) -> i64 {
        let kv = match prev {
            None => self.store.create(KEY, configmap(i)).await,
            Some(rv) => self.store.update(KEY, configmap(i), rv).await,
        };
        kv.unwrap().mod_revision
    }
}

fn bounded(max_bytes: usize) -> HistoryLimits {
    HistoryLimits {
        max_bytes,
        ..HistoryLimits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_updates_keep_the_history_within_its_byte_bound() {
    let max_bytes = 4 * 1024 * 1024;
    let f = start(bounded(max_bytes)).await;

    let revs = f.burst().await;

    let held = f.cacher.memory();
    println!(
        "{UPDATES} updates of a {VALUE_BYTES}-byte ConfigMap, history bound {max_bytes}: {held:?}"
    );
    assert!(
        held.event_bytes <= max_bytes,
        "history holds {} bytes, over {max_bytes}",
        held.event_bytes
    );
    assert!(held.events >= 2 && held.events < UPDATES, "{held:?}");
    // Every event after `oldest` is served; anything older is 410 Expired.
    let (replayed, _, _) = f.cacher.watch(Some(held.oldest)).await.unwrap();
    assert_eq!(replayed.len(), held.events);
    assert_eq!(replayed.last().map(|e| e.rv), revs.last().copied());
    let err = f.cacher.watch(Some(revs[0])).await.unwrap_err();
    assert_eq!(err.code, 410, "{}", err.message);
    // The cache's object and its latest event share one value.
    let current = f.cacher.get(KEY).unwrap();
    assert!(Arc::ptr_eq(&current, &replayed.last().unwrap().object));
}

/// The same burst under a bound by count only (the cache before the fix kept 10,000 events):
/// every event is held. This is what the byte bound prevents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_byte_bound_every_large_event_would_be_held() {
    let f = start(bounded(usize::MAX)).await;
    f.burst().await;
    let held = f.cacher.memory();
    println!("count-bounded history after {UPDATES} updates: {held:?}");
    assert_eq!(held.events, UPDATES);
    assert!(held.event_bytes > UPDATES * VALUE_BYTES, "{held:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_reads_nothing_holds_no_events_and_is_closed_once_behind() {
    let f = start(bounded(4 * 1024 * 1024)).await;
    let (_, mut idle, _) = f.cacher.watch(None).await.unwrap();
    let (_, mut live, _) = f.cacher.watch(None).await.unwrap();

    // The live watcher keeps up event by event, while the idle one reads nothing.
    let mut rv = None;
    for i in 0..UPDATES {
        let written = f.write(i, rv).await;
        assert_eq!(live.recv().await.unwrap().rv, written);
        rv = Some(written);
    }

    assert!(f.cacher.memory().event_bytes <= 4 * 1024 * 1024);
    assert_eq!(idle.recv().await.unwrap_err(), RecvError::Lagged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_older_than_the_window_leave_the_history_beyond_the_newest_few() {
    let f = start(HistoryLimits {
        window: Duration::from_millis(200),
        min_events: 3,
        ..HistoryLimits::default()
    })
    .await;
    let revs = f.burst().await;
    // Time passes beyond the window; the next event (or store progress) applies it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = f
        .store
        .create("configmaps/default/other", configmap(0))
        .await
        .unwrap();
    assert!(
        f.cacher
            .wait_for(other.mod_revision, Duration::from_secs(10))
            .await
    );
    let held = f.cacher.memory();
    assert_eq!(held.events, 3, "{held:?}");
    assert_eq!(held.oldest, revs[UPDATES - 3], "{held:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_cache_closes_its_watchers() {
    let f = start(HistoryLimits::default()).await;
    let (_, mut w, _) = f.cacher.watch(None).await.unwrap();
    let waiting = tokio::spawn(async move { w.recv().await });
    f.cacher.stop();
    let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the watcher wakes")
        .unwrap();
    assert_eq!(ended.unwrap_err(), RecvError::Closed);
}
