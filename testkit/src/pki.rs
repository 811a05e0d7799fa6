//! The test harness's credentials: one CA per test process, the serving certificate of every
//! in-process API server ([`TestCluster`](crate::TestCluster)) and the administrator's client
//! certificate (`test-admin` in `system:masters`). `capstan up` processes started by
//! [`CapstanUp`](crate::CapstanUp) are given the same CA ([`seed`]: written into their data
//! dir's `pki/`, which `up` reuses), so one client configuration reaches every server a test
//! starts, and the raw HTTP helpers ([`crate::http_exchange`]) speak TLS with it to the
//! addresses registered as API servers ([`register`]).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result};
use capstan_pki::{Ca, Issued};

/// The administrator the harness acts as.
pub const ADMIN: &str = "test-admin";

/// The process's test credentials.
pub struct TestPki {
    pub ca: Ca,
    pub admin: Issued,
    pub serving: Issued,
    /// The key in-process API servers sign ServiceAccount tokens with (PKCS#8 PEM).
    pub service_account_key: String,
    /// The front proxy's own CA and the `front-proxy-client` certificate in-process API
    /// servers present to extension API servers.
    pub front_proxy_ca: Ca,
    pub front_proxy_client: Issued,
    client_tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

/// The process's test credentials, made on first use.
pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = Ca::generate().expect("a test CA");
        let admin = ca
            .client(ADMIN, &["system:masters"])
            .expect("the test administrator's certificate");
        let serving = ca
            .serving("test-apiserver", &["localhost".into(), "127.0.0.1".into()])
            .expect("a serving certificate");
        let client_tls = Arc::new(
            capstan_pki::tls::client_config(ca.cert_pem(), Some(&admin))
                .expect("the administrator's TLS configuration"),
        );
        let service_account_key =
            capstan_pki::jwt::SigningKey::generate_pem().expect("a service-account key");
        let front_proxy_ca = Ca::generate().expect("a front-proxy CA");
        let front_proxy_client = front_proxy_ca
            .client("front-proxy-client", &[])
            .expect("the front-proxy certificate");
        TestPki {
            ca,
            admin,
            serving,
            service_account_key,
            front_proxy_ca,
            front_proxy_client,
            client_tls,
        }
    })
}

impl TestPki {
    /// ServiceAccount tokens signed with the harness's key.
    #[cfg(feature = "cluster")]
    pub fn service_accounts(
        &self,
    ) -> capstan_apiserver::auth::service_account::ServiceAccountTokens {
        capstan_apiserver::auth::service_account::ServiceAccountTokens::new(
            capstan_pki::jwt::SigningKey::from_pem(&self.service_account_key)
                .expect("the harness's service-account key"),
        )
    }

    /// What in-process API servers present to extension API servers, and publish.
    #[cfg(feature = "cluster")]
    pub fn front_proxy(&self) -> capstan_apiserver::aggregator::FrontProxy {
        capstan_apiserver::aggregator::FrontProxy {
            identity: self.front_proxy_client.clone(),
            ca_pem: self.front_proxy_ca.cert_pem().to_string(),
            client_ca_pem: Some(self.ca.cert_pem().to_string()),
        }
    }

    /// The TLS configuration in-process API servers serve with.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::new(
            capstan_pki::tls::server_config(self.ca.cert_pem(), &self.serving)
                .expect("a server TLS configuration"),
        )
    }

    /// The administrator's TLS client configuration.
    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        self.client_tls.clone()
    }

    /// A TLS client configuration that trusts the test CA and presents no certificate
    /// (anonymous, or a bearer token).
    pub fn anonymous_tls(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(
            capstan_pki::tls::client_config(self.ca.cert_pem(), None).expect("a TLS configuration"),
        )
    }

    /// A client certificate for `user` in `groups`, signed by the test CA.
    pub fn user(&self, user: &str, groups: &[&str]) -> Issued {
        self.ca.client(user, groups).expect("a client certificate")
    }

    /// A kubeconfig for `server` (an `https://` URL) as `identity` (the administrator when
    /// None).
    pub fn kubeconfig(&self, server: &str, identity: Option<&Issued>) -> String {
        capstan_pki::kubeconfig::kubeconfig(
            server,
            Some(self.ca.cert_pem()),
            capstan_pki::kubeconfig::Credentials::Cert(identity.unwrap_or(&self.admin)),
        )
    }

    /// A client of `server` as `identity` (the administrator when None).
    pub async fn client(&self, server: &str, identity: Option<&Issued>) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig(server, identity))
            .context("kubeconfig")?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }
}

/// Gives a `capstan up` about to start on `data_dir` the test CA (its `pki/ca.{crt,key}`).
pub fn seed(data_dir: &Path) -> Result<()> {
    pki()
        .ca
        .files()
        .write(&data_dir.join("pki"), "ca")
        .context("seeding the test CA")
}

fn registry() -> &'static Mutex<HashSet<String>> {
    static TLS: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    TLS.get_or_init(Default::default)
}

/// Marks `addr` (host:port) as an API server serving TLS with the test CA.
pub fn register(addr: &str) {
    if let Ok(mut r) = registry().lock() {
        r.insert(addr.to_string());
    }
}

/// Forgets `addr` (its server stopped; the port may serve something else next).
pub fn unregister(addr: &str) {
    if let Ok(mut r) = registry().lock() {
        r.remove(addr);
    }
}

/// Whether `addr` is a registered TLS API server.
pub fn is_tls(addr: &str) -> bool {
    registry().lock().is_ok_and(|r| r.contains(addr))
}
