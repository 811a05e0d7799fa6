//! [`TestCluster`]: an in-process API server on a fresh embedded store at 127.0.0.1:0, with a
//! `kube::Client` — the harness every crate's cluster tests share (feature `cluster`). It serves
//! HTTPS with the harness's CA; the client is the test administrator ([`crate::pki`]).

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
        crate::pki::unregister(&self.addr.to_string());
    }
}

impl TestCluster {
    /// Creates a CustomResourceDefinition (as JSON) and waits, up to 2 s, for it to be
    /// Established; returns it as created.
    pub async fn create_crd(
        &self,
        crd: serde_json::Value,
    ) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition
    {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(self.client.clone());
        let crd = serde_json::from_value(crd).expect("a CustomResourceDefinition");
        let created = crds
            .create(&kube::api::PostParams::default(), &crd)
            .await
            .expect("creating the CRD");
        let name = created.metadata.name.clone().unwrap_or_default();
        crate::until(Duration::from_secs(2), "CRD established", || {
            let (crds, name) = (crds.clone(), name.clone());
            async move {
                crds.get(&name).await.is_ok_and(|c| {
                    c.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
            }
        })
        .await;
        created
    }

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
        let config = capstan_apiserver::Config {
            service_cidr: cidr.parse().unwrap(),
            ..Default::default()
        };
        Self::on_with_config(store, dir, config).await
    }

    /// A cluster on a fresh embedded store with `config` (another authorization mode, say).
    pub async fn with_config(config: capstan_apiserver::Config) -> TestCluster {
        let dir = crate::temp_dir("capstan-apiserver-").unwrap();
        let mut opts = EmbeddedOptions::new(dir.path());
        opts.compaction = None;
        let store: Arc<dyn Storage> = EmbeddedStore::open(opts).await.unwrap();
        Self::on_with_config(store, dir, config).await
    }

    async fn on_with_config(
        store: Arc<dyn Storage>,
        dir: tempfile::TempDir,
        mut config: capstan_apiserver::Config,
    ) -> TestCluster {
        if config.auth.service_accounts.is_none() {
            config.auth.service_accounts = Some(crate::pki::pki().service_accounts());
        }
        if config.front_proxy.is_none() {
            config.front_proxy = Some(crate::pki::pki().front_proxy());
        }
        let api = ApiServer::with_config(store.clone(), prometheus::Registry::new(), config)
            .await
            .unwrap();
        assert!(api.wait_ready(Duration::from_secs(10)).await);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = capstan_apiserver::router(api.clone());
        // The serving loop `capstan up` runs, with its default limits.
        let limits = capstan_apiserver::ServeLimits::default();
        // Over TLS with the harness's CA, as the test administrator (crate::pki).
        let pki = crate::pki::pki();
        let tls = pki.server_config();
        let server = tokio::spawn(async move {
            capstan_apiserver::serve_tls(listener, app, limits, tls, std::future::pending())
                .await
                .unwrap();
        });
        crate::pki::register(&addr.to_string());
        let client = pki.client(&format!("https://{addr}"), None).await.unwrap();
        TestCluster {
            client,
            addr,
            api,
            store,
            _dir: dir,
            server,
        }
    }

    /// `https://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// A client of this cluster as `user` in `groups` (a certificate from the test CA).
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> kube::Client {
        let pki = crate::pki::pki();
        let id = pki.user(user, groups);
        pki.client(&self.url(""), Some(&id)).await.unwrap()
    }
}
