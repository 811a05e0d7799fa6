//! Metrics for any backend, as a decorator: `StorageMetrics::register(&registry)?.wrap(store)`.
//! Names follow kube-apiserver's etcd metrics (`etcd_request_duration_seconds{operation,type}`),
//! under Capstan's namespace and labelled by backend.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::{
    Defragmented, KeyValue, ListOptions, ListResult, Result, Revision, Storage, StorageError,
    WatchStream,
};

/// The storage metrics of one process. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StorageMetrics {
    duration: HistogramVec,
    errors: IntCounterVec,
}

impl StorageMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "capstan_storage_request_duration_seconds",
                "Latency of storage requests by backend and operation.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
            &["backend", "operation"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "capstan_storage_request_errors_total",
                "Storage requests that failed, by backend, operation and error kind.",
            ),
            &["backend", "operation", "kind"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(StorageMetrics { duration, errors })
    }

    /// Wraps `store` so that every request is timed and every error counted.
    pub fn wrap(&self, store: Arc<dyn Storage>) -> Arc<dyn Storage> {
        Arc::new(Instrumented {
            inner: store,
            metrics: self.clone(),
        })
    }

    fn observe<T>(&self, backend: &str, op: &str, started: Instant, r: &Result<T>) {
        self.duration
            .with_label_values(&[backend, op])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = r {
            self.errors
                .with_label_values(&[backend, op, error_kind(e)])
                .inc();
        }
    }
}

fn error_kind(e: &StorageError) -> &'static str {
    match e {
        StorageError::NotFound { .. } => "not_found",
        StorageError::AlreadyExists { .. } => "already_exists",
        StorageError::Conflict { .. } => "conflict",
        StorageError::Compacted { .. } => "compacted",
        StorageError::FutureRevision { .. } => "future_revision",
        StorageError::TooLarge { .. } => "too_large",
        StorageError::InvalidKey { .. } => "invalid_key",
        StorageError::Unavailable { .. } => "unavailable",
        StorageError::Internal { .. } => "internal",
    }
}

#[derive(Debug)]
struct Instrumented {
    inner: Arc<dyn Storage>,
    metrics: StorageMetrics,
}

impl Instrumented {
    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let r = fut.await;
        self.metrics.observe(self.inner.backend(), op, started, &r);
        r
    }
}

#[async_trait]
impl Storage for Instrumented {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.timed("get", self.inner.get(key)).await
    }
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        self.timed("list", self.inner.list(prefix, opts)).await
    }
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        self.timed("create", self.inner.create(key, value)).await
    }
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        self.timed("update", self.inner.update(key, value, expected))
            .await
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        self.timed("delete", self.inner.delete(key, expected)).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        self.timed("watch", self.inner.watch(prefix, after)).await
    }
    async fn current_revision(&self) -> Result<Revision> {
        self.timed("current_revision", self.inner.current_revision())
            .await
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        self.timed("compact", self.inner.compact(revision)).await
    }
    async fn compacted_revision(&self) -> Result<Revision> {
        self.timed("compacted_revision", self.inner.compacted_revision())
            .await
    }
    async fn defragment(&self) -> Result<Vec<Defragmented>> {
        self.timed("defragment", self.inner.defragment()).await
    }
    fn revision_hint(&self) -> Option<Revision> {
        self.inner.revision_hint()
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
