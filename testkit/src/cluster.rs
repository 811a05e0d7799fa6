//! [`TestCluster`]: an in-process API server on a fresh embedded store at 127.0.0.1:0, with a
//! `kube::Client` — the harness every crate's cluster tests share (feature `cluster`).

use std::sync::Arc;
use std::time::Duration;

use capstan_apiserver::ApiServer;
use capstan_storage::Storage;
use capstan_storage::embedded::{EmbeddedOptions, EmbeddedStore};

/// A running API server; its serving task is aborted on drop.
pub struct TestCluster {
    pub client: kube::Client,
    pub addr: std::net::SocketAddr,
    pub api: Arc<ApiServer>,
    pub store: Arc<dyn Storage>,
    _dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("addr", &self.addr)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestCluster {
    /// A cluster on a fresh embedded store (no automatic compaction).
    pub async fn start() -> TestCluster {
        Self::with_service_cidr("10.96.0.0/12").await
    }

    /// A cluster on `store`; `dir` (the store's data, or scratch) lives as long as it.
    pub async fn on(store: Arc<dyn Storage>, dir: tempfile::TempDir) -> TestCluster {
        Self::on_with_cidr(store, dir, "10.96.0.0/12").await
    }

    /// A second API server on another cluster's store (a replica).
    pub async fn on_store(store: Arc<dyn Storage>) -> TestCluster {
        let dir = crate::temp_dir("capstan-replica-").unwrap();
        Self::on(store, dir).await
    }

    /// A cluster whose Services get ClusterIPs from `cidr`.
    pub async fn with_service_cidr(cidr: &str) -> TestCluster {
        let dir = crate::temp_dir("capstan-apiserver-").unwrap();
        let mut opts = EmbeddedOptions::new(dir.path());
        opts.compaction = None;
        let store: Arc<dyn Storage> = EmbeddedStore::open(opts).await.unwrap();
        Self::on_with_cidr(store, dir, cidr).await
    }

    async fn on_with_cidr(
        store: Arc<dyn Storage>,
        dir: tempfile::TempDir,
        cidr: &str,
    ) -> TestCluster {
        let api = ApiServer::with_service_cidr(
            store.clone(),
            prometheus::Registry::new(),
            cidr.parse().unwrap(),
        )
        .await
        .unwrap();
        assert!(api.wait_ready(Duration::from_secs(10)).await);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = capstan_apiserver::router(api.clone());
        // The serving loop `capstan up` runs, with its default limits.
        let limits = capstan_apiserver::ServeLimits::default();
        let server = tokio::spawn(async move {
            capstan_apiserver::serve(listener, app, limits, std::future::pending())
                .await
                .unwrap();
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        TestCluster {
            client,
            addr,
            api,
            store,
            _dir: dir,
            server,
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}
