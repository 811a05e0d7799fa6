//! An in-process API server on a fresh embedded store at 127.0.0.1:0, with a kube::Client.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use capstan_apiserver::ApiServer;
use capstan_storage::Storage;
use capstan_storage::embedded::{EmbeddedOptions, EmbeddedStore};

pub struct TestCluster {
    pub client: kube::Client,
    pub addr: std::net::SocketAddr,
    pub api: Arc<ApiServer>,
    pub store: Arc<dyn Storage>,
    _dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestCluster {
    pub async fn start() -> TestCluster {
        let dir = capstan_testkit::temp_dir("capstan-apiserver-").unwrap();
        let mut opts = EmbeddedOptions::new(dir.path());
        opts.compaction = None;
        let store: Arc<dyn Storage> = EmbeddedStore::open(opts).await.unwrap();
        Self::on(store, dir).await
    }

    pub async fn on(store: Arc<dyn Storage>, dir: tempfile::TempDir) -> TestCluster {
        Self::on_with_cidr(store, dir, "10.96.0.0/12").await
    }

    /// A second API server on another cluster's store (a replica).
    pub async fn on_store(store: Arc<dyn Storage>) -> TestCluster {
        let dir = capstan_testkit::temp_dir("capstan-replica-").unwrap();
        Self::on(store, dir).await
    }

    /// A cluster whose Services get ClusterIPs from `cidr`.
    pub async fn with_service_cidr(cidr: &str) -> TestCluster {
        let dir = capstan_testkit::temp_dir("capstan-apiserver-").unwrap();
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
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
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

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// The (code, reason, message) of an API error; panics on any other error.
pub fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason, s.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Polls `check` (every 10 ms) until it is true; panics naming `what` after `within`. Returns
/// how long it took.
pub async fn until<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}
