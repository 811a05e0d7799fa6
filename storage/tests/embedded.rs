//! The embedded backend: the conformance suite, plus what only a local store must prove —
//! durability across SIGKILL, reopening, clear errors for a locked or corrupt data dir,
//! automatic compaction and slow watchers.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use capstan_storage::conformance::next_event;
use capstan_storage::embedded::{DB_FILE, EmbeddedOptions, EmbeddedStore};
use capstan_storage::{CompactionPolicy, Event, ListOptions, Storage, StorageError};
use futures_util::StreamExt;

async fn open(dir: &std::path::Path) -> Arc<EmbeddedStore> {
    let mut opts = EmbeddedOptions::new(dir);
    opts.compaction = None;
    EmbeddedStore::open(opts).await.unwrap()
}

async fn fresh() -> (Arc<dyn Storage>, tempfile::TempDir) {
    let dir = capstan_testkit::temp_dir("capstan-store-").unwrap();
    let store: Arc<dyn Storage> = open(dir.path()).await;
    (store, dir)
}

capstan_storage::conformance_tests!(fresh());

const CHILD_ENV: &str = "CAPSTAN_SIGKILL_CHILD_DIR";

/// Kills a process that is writing with 8 concurrent tasks, mid-stream, with SIGKILL, then
/// reopens the store: every write the child saw acknowledged must be there, at the revision it
/// was acknowledged with, and the history must have no gaps.
#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = capstan_testkit::temp_dir("capstan-sigkill-").unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "sigkill_child_writer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked: Vec<(String, i64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < 400 {
        assert!(
            Instant::now() < deadline,
            "child acknowledged only {} writes",
            acked.len()
        );
        let line = lines.next().expect("child exited early").unwrap();
        if let Some(rest) = line.strip_prefix("ack ") {
            let (key, rev) = rest.split_once(' ').unwrap();
            acked.push((key.to_string(), rev.parse().unwrap()));
        }
    }
    child.kill().unwrap(); // SIGKILL, by pid, while the writers are mid-stream
    child.wait().unwrap();
    // Acks already printed before the kill still count.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("ack ") {
            let (key, rev) = rest.split_once(' ').unwrap();
            acked.push((key.to_string(), rev.parse().unwrap()));
        }
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = open(dir.path()).await;
        for (key, rev) in &acked {
            let kv = store
                .get(key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{key} lost"));
            assert_eq!(kv.mod_revision, *rev, "{key}");
            assert_eq!(kv.value, Bytes::from(format!("value of {key}")));
        }
        let current = store.current_revision().await.unwrap();
        let max_acked = acked.iter().map(|(_, r)| *r).max().unwrap();
        assert!(current >= max_acked);
        // The history replays from the start with no gap up to the current revision.
        let mut w = store.watch("", 1).await.unwrap();
        for rev in 2..=current {
            assert_eq!(next_event(&mut w).await.revision(), rev);
        }
        // And the store takes writes after recovery.
        let kv = store
            .create("after-crash", Bytes::from_static(b"ok"))
            .await
            .unwrap();
        assert_eq!(kv.mod_revision, current + 1);
    });
}

#[test]
#[ignore = "the child process of acknowledged_writes_survive_sigkill, which runs it"]
fn sigkill_child_writer() {
    let dir = std::env::var(CHILD_ENV).expect("run by acknowledged_writes_survive_sigkill");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = open(std::path::Path::new(&dir)).await;
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for t in 0..8 {
            let (store, out) = (store.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("w{t}/{i:06}");
                    let kv = store
                        .create(&key, Bytes::from(format!("value of {key}")))
                        .await
                        .unwrap();
                    let mut out = out.lock().unwrap();
                    writeln!(out, "ack {key} {}", kv.mod_revision).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_revisions_history_and_the_compaction_point() {
    let dir = capstan_testkit::temp_dir("capstan-reopen-").unwrap();
    let store = open(dir.path()).await;
    let a = store.create("a", Bytes::from_static(b"1")).await.unwrap();
    let a2 = store
        .update("a", Bytes::from_static(b"2"), a.mod_revision)
        .await
        .unwrap();
    store.create("b", Bytes::from_static(b"x")).await.unwrap();
    store.delete("b", None).await.unwrap();
    store.compact(a.mod_revision).await.unwrap();
    let rev = store.current_revision().await.unwrap();
    store.close().await;

    let store = open(dir.path()).await;
    assert_eq!(store.current_revision().await.unwrap(), rev);
    assert_eq!(store.compacted_revision().await.unwrap(), a.mod_revision);
    assert_eq!(store.get("a").await.unwrap().unwrap(), a2);
    assert_eq!(store.get("b").await.unwrap(), None);
    let past = store
        .list(
            "",
            ListOptions {
                revision: Some(a.mod_revision),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(past.items, vec![a.clone()]);
    let mut w = store.watch("", a.mod_revision).await.unwrap();
    assert_eq!(
        next_event(&mut w).await,
        Event::Put {
            kv: a2,
            prev: Some(a)
        }
    );
}

#[tokio::test]
async fn a_data_dir_in_use_is_a_clear_error_naming_it() {
    let dir = capstan_testkit::temp_dir("capstan-locked-").unwrap();
    let _first = open(dir.path()).await;
    let err = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("in use") && msg.contains(&dir.path().display().to_string()),
        "{msg}"
    );
}

#[tokio::test]
async fn a_corrupt_store_file_is_a_clear_error_naming_it() {
    let dir = capstan_testkit::temp_dir("capstan-corrupt-").unwrap();
    std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 64 * 1024]).unwrap();
    let err = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.path().join(DB_FILE).display().to_string()),
        "{msg}"
    );
}

#[tokio::test]
async fn an_unwritable_data_dir_is_a_clear_error_naming_it() {
    let dir = capstan_testkit::temp_dir("capstan-notadir-").unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = EmbeddedStore::open(EmbeddedOptions::new(file.join("data")))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_compaction_keeps_the_configured_number_of_revisions() {
    let dir = capstan_testkit::temp_dir("capstan-autocompact-").unwrap();
    let mut opts = EmbeddedOptions::new(dir.path());
    opts.compaction = Some(CompactionPolicy {
        interval: Duration::from_millis(20),
        min_retention: Duration::ZERO,
        min_revisions: 10,
    });
    let store = EmbeddedStore::open(opts).await.unwrap();
    let mut kv = store.create("k", Bytes::from_static(b"0")).await.unwrap();
    for i in 1..50 {
        kv = store
            .update("k", Bytes::from(i.to_string()), kv.mod_revision)
            .await
            .unwrap();
    }
    let current = store.current_revision().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.compacted_revision().await.unwrap() != current - 10 {
        assert!(
            Instant::now() < deadline,
            "not compacted to {}",
            current - 10
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(
        store
            .list(
                "",
                ListOptions {
                    revision: Some(current - 11),
                    ..Default::default()
                }
            )
            .await,
        Err(StorageError::Compacted { .. })
    ));
    assert_eq!(store.get("k").await.unwrap().unwrap(), kv);
}

/// A watcher that reads nothing while thousands of writes land overflows the in-process
/// broadcast; it must fall back to replaying from disk and still see every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_loses_nothing() {
    let (store, _dir) = fresh().await;
    let start = store.current_revision().await.unwrap();
    let mut w = store.watch("s/", start).await.unwrap();
    const WRITERS: usize = 32;
    const EACH: usize = 160; // 5,120 writes > the 4,096-event broadcast buffer
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                store
                    .create(&format!("s/{t}/{i}"), Bytes::from_static(b"v"))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = store.current_revision().await.unwrap();
    assert_eq!(end, start + (WRITERS * EACH) as i64);
    let mut expect = start + 1;
    while expect <= end {
        match w.next().await.unwrap().unwrap() {
            Event::Progress { .. } => continue,
            e => {
                assert_eq!(e.revision(), expect);
                expect += 1;
            }
        }
    }
}
