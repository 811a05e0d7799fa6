//! Giving compacted space back: `defragment` on the embedded store, and its automatic reclaim
//! after compaction (issue 16: a 2.26 GB file never shrank after a burst was compacted).

use std::sync::Arc;

use bytes::Bytes;
use capstan_storage::conformance::next_event;
use capstan_storage::embedded::{EmbeddedOptions, EmbeddedStore, ReclaimPolicy};
use capstan_storage::{Event, Storage};

const VALUE_BYTES: usize = 256 * 1024;
/// The default policy, for files from 1 MiB rather than 64 MiB.
const RECLAIM_ABOVE_1_MIB: ReclaimPolicy = ReclaimPolicy {
    min_file_bytes: 1024 * 1024,
    min_free_ratio: 0.5,
};

async fn open(dir: &std::path::Path, reclaim: Option<ReclaimPolicy>) -> Arc<EmbeddedStore> {
    let mut opts = EmbeddedOptions::new(dir);
    opts.compaction = None;
    opts.reclaim = reclaim;
    EmbeddedStore::open(opts).await.unwrap()
}

fn file_size(store: &EmbeddedStore) -> u64 {
    std::fs::metadata(store.path()).unwrap().len()
}

/// Writes `n` versions of one large value under `key`, then one under `key/tail` (so what
/// compaction frees lies inside the file, not at its end); returns the revision of the last
/// version of `key`.
async fn burst(store: &EmbeddedStore, key: &str, n: usize) -> i64 {
    let value = |i: usize| Bytes::from(vec![b'a' + (i % 26) as u8; VALUE_BYTES]);
    let mut kv = store.create(key, value(0)).await.unwrap();
    for i in 1..n {
        kv = store.update(key, value(i), kv.mod_revision).await.unwrap();
    }
    store
        .create(&format!("{key}/tail"), value(n))
        .await
        .unwrap();
    kv.mod_revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragmenting_after_compaction_shrinks_the_file_and_keeps_data_and_watches() {
    let dir = capstan_testkit::temp_dir("capstan-defrag-").unwrap();
    let store = open(dir.path(), None).await;
    let last = burst(&store, "k", 120).await;
    store.compact(last).await.unwrap();
    let mut watch = store.watch("k", last + 1).await.unwrap();
    let before = file_size(&store);

    let done = store.defragment().await.unwrap();

    let after = file_size(&store);
    println!("embedded store file: {before} bytes before defragment, {after} after");
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].size_before, done[0].size_after), (before, after));
    assert!(
        before > 100 * VALUE_BYTES as u64,
        "the burst made the file large: {before}"
    );
    assert!(
        after < before / 4,
        "defragment gives the compacted space back: {before} → {after}"
    );
    let kv = store.get("k").await.unwrap().unwrap();
    assert_eq!((kv.mod_revision, kv.value.len()), (last, VALUE_BYTES));
    // A watch opened before the defragmentation carries on; writes carry on.
    let next = store
        .update("k", Bytes::from_static(b"small"), last)
        .await
        .unwrap();
    match next_event(&mut watch).await {
        Event::Put { kv, .. } => assert_eq!(kv.mod_revision, next.mod_revision),
        other => panic!("expected the update, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_reclaims_the_file_on_its_own_when_most_of_it_is_free() {
    let dir = capstan_testkit::temp_dir("capstan-reclaim-").unwrap();
    let store = open(dir.path(), Some(RECLAIM_ABOVE_1_MIB)).await;
    let last = burst(&store, "k", 120).await;
    let before = file_size(&store);

    // The reclaim runs before the compaction answers.
    store.compact(last).await.unwrap();

    let after = file_size(&store);
    println!(
        "embedded store file: {before} bytes before compaction, {after} after (automatic reclaim)"
    );
    assert!(
        after < before / 4,
        "compaction freed most of the file and gave it back: {before} → {after}"
    );
    assert_eq!(store.get("k").await.unwrap().unwrap().mod_revision, last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_leaves_a_file_with_little_free_space_alone() {
    let dir = capstan_testkit::temp_dir("capstan-reclaim-").unwrap();
    let store = open(dir.path(), Some(RECLAIM_ABOVE_1_MIB)).await;
    // Twenty live keys and one superseded version: little for compaction to free.
    burst(&store, "k0", 2).await;
    for i in 1..10 {
        burst(&store, &format!("k{i}"), 1).await;
    }
    let last = store.current_revision().await.unwrap();
    let before = file_size(&store);

    store.compact(last).await.unwrap();

    assert_eq!(file_size(&store), before, "nothing worth a defragmentation");
}
