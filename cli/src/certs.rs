//! The certificates `capstan up` and `capstan apiserver` serve and connect with, kept under
//! DATA_DIR/pki and reused on every start (k3s keeps its under server/tls): the cluster CA,
//! the API server's serving certificate (SANs for every address clients use, issued again
//! when they change), and client certificates — the administrator's (`system:admin` in
//! `system:masters`, in DATA_DIR/kubeconfig), the in-process controller manager's and node
//! agent's. Also the kubeconfig text and in-process clients built from them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use capstan_pki::{Ca, Issued};

/// The administrator `capstan up` writes a kubeconfig for.
pub const ADMIN: &str = "system:admin";

/// The cluster's CA and the API server's serving certificate.
pub struct ClusterCerts {
    pub dir: PathBuf,
    pub ca: Ca,
    pub serving: Issued,
}

impl std::fmt::Debug for ClusterCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCerts")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The names the serving certificate covers: loopback, the listen and advertised addresses,
/// this host's name, the `kubernetes` Service's names and ClusterIP, and `extra`.
pub fn serving_names(
    listen: SocketAddr,
    advertise: Option<std::net::Ipv4Addr>,
    service_ip: Option<std::net::Ipv4Addr>,
    extra: &[String],
) -> Vec<String> {
    let mut names: Vec<String> = vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    let host = crate::controllers_cmd::hostname();
    if !host.is_empty() && host.parse::<std::net::IpAddr>().is_err() {
        names.push(host);
    }
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    } else if let Ok(ip) = capstan_node_agent::node::host_ip().parse::<std::net::IpAddr>() {
        names.push(ip.to_string());
    }
    names.extend(advertise.map(|a| a.to_string()));
    names.extend(service_ip.map(|a| a.to_string()));
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

impl ClusterCerts {
    /// The CA in `dir` (made when missing) and a serving certificate for `names`.
    pub fn prepare(dir: &Path, names: &[String]) -> Result<ClusterCerts> {
        let ca = Ca::load_or_create(dir)
            .with_context(|| format!("the cluster CA in {}", dir.display()))?;
        let serving = ca
            .ensure_serving(dir, "apiserver", names)
            .context("the API server's serving certificate")?;
        Ok(ClusterCerts {
            dir: dir.to_path_buf(),
            ca,
            serving,
        })
    }

    /// The rustls configuration the API server serves with.
    pub fn server_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>> {
        Ok(std::sync::Arc::new(capstan_pki::tls::server_config(
            self.ca.cert_pem(),
            &self.serving,
        )?))
    }

    /// The client certificate `file` for `user` in `groups` (made or renewed when needed).
    pub fn client(&self, file: &str, user: &str, groups: &[&str]) -> Result<Issued> {
        self.ca
            .ensure_client(&self.dir, file, user, groups)
            .with_context(|| format!("the client certificate of {user}"))
    }
}

pub use capstan_pki::kubeconfig::{Credentials, kubeconfig};

/// Writes a kubeconfig (mode 0600: it holds a private key).
pub fn write_kubeconfig(path: &Path, text: &str) -> Result<()> {
    capstan_pki::write_file(path, text, 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// An in-process client from a kubeconfig's text.
pub async fn client_of(kubeconfig: &str) -> Result<kube::Client> {
    Ok(kube::Client::try_from(config_of(kubeconfig).await?)?)
}

/// The client configuration of a kubeconfig's text.
pub async fn config_of(kubeconfig: &str) -> Result<kube::Config> {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).context("kubeconfig")?;
    kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .context("client configuration")
}
