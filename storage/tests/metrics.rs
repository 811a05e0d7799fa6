//! The metrics wrapper (`StorageMetrics::wrap`) is a Storage itself and `capstan up` serves
//! through it, so it is held to the whole conformance suite (over the embedded store), and what
//! it records is checked against what passed through it.

use std::sync::Arc;

use bytes::Bytes;
use capstan_storage::embedded::{EmbeddedOptions, EmbeddedStore};
use capstan_storage::{Storage, StorageError, StorageMetrics};

async fn wrapped(registry: &prometheus::Registry) -> (Arc<dyn Storage>, tempfile::TempDir) {
    let dir = capstan_testkit::temp_dir("capstan-metrics-").unwrap();
    let mut opts = EmbeddedOptions::new(dir.path());
    opts.compaction = None;
    let store: Arc<dyn Storage> = EmbeddedStore::open(opts).await.unwrap();
    let metrics = StorageMetrics::register(registry).unwrap();
    (metrics.wrap(store), dir)
}

async fn fresh() -> (Arc<dyn Storage>, tempfile::TempDir) {
    wrapped(&prometheus::Registry::new()).await
}

capstan_storage::conformance_tests!(fresh());

/// The sample of `name` whose labels are exactly `labels`.
fn sample(
    registry: &prometheus::Registry,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<prometheus::proto::Metric> {
    let family = registry.gather().into_iter().find(|f| f.name() == name)?;
    family
        .get_metric()
        .iter()
        .find(|m| {
            let got: Vec<(&str, &str)> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            got.len() == labels.len() && labels.iter().all(|l| got.contains(l))
        })
        .cloned()
}

#[tokio::test]
async fn every_request_is_timed_and_every_error_counted_by_kind() {
    let registry = prometheus::Registry::new();
    let (store, _dir) = wrapped(&registry).await;
    let kv = store.create("k", Bytes::from_static(b"1")).await.unwrap();
    assert!(matches!(
        store.create("k", Bytes::from_static(b"2")).await,
        Err(StorageError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store
            .update("k", Bytes::from_static(b"3"), kv.mod_revision + 1)
            .await,
        Err(StorageError::Conflict { .. })
    ));
    store.get("k").await.unwrap();

    let timed = |op| {
        sample(
            &registry,
            "capstan_storage_request_duration_seconds",
            &[("backend", "embedded"), ("operation", op)],
        )
        .map(|m| m.get_histogram().get_sample_count())
    };
    assert_eq!(timed("create"), Some(2));
    assert_eq!(timed("update"), Some(1));
    assert_eq!(timed("get"), Some(1));
    let errors = |op, kind| {
        sample(
            &registry,
            "capstan_storage_request_errors_total",
            &[("backend", "embedded"), ("operation", op), ("kind", kind)],
        )
        .map(|m| m.get_counter().get_value())
    };
    assert_eq!(errors("create", "already_exists"), Some(1.0));
    assert_eq!(errors("update", "conflict"), Some(1.0));
    assert_eq!(
        errors("get", "not_found"),
        None,
        "a successful request counts no error"
    );
    assert_eq!(store.backend(), "embedded", "the wrapper names its backend");
}
