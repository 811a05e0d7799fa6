//! Client-side failover between API servers, as k3s's agent load balancer: a `capstan`
//! component given `--failover-servers` talks to a TCP front of its own on 127.0.0.1, which
//! connects each new connection to the server that answered last, and to the next one when
//! that one does not (1 s to connect). Connections to a server that dies are reset, the
//! client reconnects, and the front picks a live server: watches resume from their
//! resourceVersion and requests are retried as after any dropped connection. TLS stays end to
//! end: the client checks each server's certificate for the kubeconfig's host name
//! (`tls_server_name`), so every server's certificate must carry that name (`--tls-san`;
//! `capstan up` puts loopback and its addresses in).
//!
//! Besides the servers named, the front learns the live API servers from the `kubernetes`
//! Service's Endpoints (kept by the API servers' lease reconciler) every 30 s, so servers
//! added later are found too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DISCOVER_EVERY: Duration = Duration::from_secs(30);

/// The servers (host:port) a front connects to, in order of preference.
#[derive(Debug)]
pub struct Front {
    named: Vec<String>,
    servers: RwLock<Vec<String>>,
    /// Index of the server that answered last.
    current: AtomicUsize,
    pub local: SocketAddr,
}

/// `host:port` of a server given as `https://host:port`, `host:port` or `host` (port 443).
pub fn host_port(s: &str) -> Result<String> {
    let rest = s
        .trim()
        .strip_prefix("https://")
        .unwrap_or(s.trim())
        .trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        anyhow::bail!("{s:?} is not an API server address (https://HOST:PORT or HOST:PORT)");
    }
    let has_port = match rest.rsplit_once(':') {
        Some((h, p)) => !h.ends_with(':') && p.parse::<u16>().is_ok(),
        None => false,
    };
    Ok(if has_port {
        rest.to_string()
    } else {
        format!("{rest}:443")
    })
}

impl Front {
    /// Listens on 127.0.0.1 and serves until the process ends.
    pub async fn start(servers: Vec<String>) -> Result<Arc<Front>> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("the API failover front's port")?;
        let front = Arc::new(Front {
            named: servers.clone(),
            servers: RwLock::new(servers),
            current: AtomicUsize::new(0),
            local: listener.local_addr()?,
        });
        let f = front.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let f = f.clone();
                tokio::spawn(async move { f.serve(conn).await });
            }
        });
        Ok(front)
    }

    pub fn servers(&self) -> Vec<String> {
        self.servers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Connects `conn` to the first server that answers, from the current one on.
    async fn serve(&self, mut conn: TcpStream) {
        let servers = self.servers();
        let start = self.current.load(Ordering::Relaxed);
        for k in 0..servers.len() {
            let i = (start + k) % servers.len();
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&servers[i])).await {
                Ok(Ok(mut upstream)) => {
                    if i != start {
                        self.current.store(i, Ordering::Relaxed);
                        tracing::warn!(from = %servers[start % servers.len()], to = %servers[i], "API server failover");
                    }
                    let _ = upstream.set_nodelay(true);
                    let _ = conn.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(server = %servers[i], error = %e, "API server not answering")
                }
                Err(_) => tracing::debug!(server = %servers[i], "API server connect timed out"),
            }
        }
        tracing::warn!(servers = ?servers, "no API server answers");
    }

    /// The named servers plus `live` (from the `kubernetes` Endpoints), the current one kept
    /// current.
    fn learn(&self, live: Vec<String>) {
        let mut all = self.named.clone();
        for s in live {
            if !all.contains(&s) {
                all.push(s);
            }
        }
        let mut servers = self.servers.write().unwrap_or_else(|e| e.into_inner());
        let current = servers.get(self.current.load(Ordering::Relaxed)).cloned();
        if *servers != all {
            tracing::info!(servers = ?all, "API servers");
            let i = current
                .and_then(|c| all.iter().position(|s| *s == c))
                .unwrap_or(0);
            *servers = all;
            self.current.store(i, Ordering::Relaxed);
        }
    }
}

/// `config` talking through a failover front over its own server and `others`; the front
/// learns the live servers from the `kubernetes` Endpoints as it goes.
pub async fn config(mut config: kube::Config, others: &[String]) -> Result<kube::Config> {
    let url = config.cluster_url.clone();
    let host = url
        .host()
        .context("the kubeconfig's server has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let own = host_port(&url.to_string())?;
    let mut servers = vec![own];
    for o in others {
        let o = host_port(o)?;
        if !servers.contains(&o) {
            servers.push(o);
        }
    }
    let front = Front::start(servers).await?;
    config.tls_server_name.get_or_insert(host);
    config.cluster_url = format!("https://{}", front.local)
        .parse()
        .context("the front's URL")?;
    let client = kube::Client::try_from(config.clone())?;
    tokio::spawn(async move {
        let api: kube::Api<k8s_openapi::api::core::v1::Endpoints> =
            kube::Api::namespaced(client, "default");
        loop {
            if let Ok(Some(ep)) = api.get_opt("kubernetes").await {
                front.learn(live_servers(&ep));
            }
            tokio::time::sleep(DISCOVER_EVERY).await;
        }
    });
    Ok(config)
}

/// host:port of every ready address of the `kubernetes` Endpoints' https port.
fn live_servers(ep: &k8s_openapi::api::core::v1::Endpoints) -> Vec<String> {
    let mut out = Vec::new();
    for subset in ep.subsets.iter().flatten() {
        let Some(port) = subset
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().is_none_or(|n| n == "https"))
        else {
            continue;
        };
        for a in subset.addresses.iter().flatten() {
            let host = if a.ip.contains(':') {
                format!("[{}]", a.ip)
            } else {
                a.ip.clone()
            };
            out.push(format!("{host}:{}", port.port));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn server_addresses_take_the_shapes_kubeconfigs_have() {
        assert_eq!(host_port("https://10.0.0.1:6443").unwrap(), "10.0.0.1:6443");
        assert_eq!(
            host_port("https://10.0.0.1:6443/").unwrap(),
            "10.0.0.1:6443"
        );
        assert_eq!(host_port("10.0.0.2:6443").unwrap(), "10.0.0.2:6443");
        assert_eq!(host_port("api.example").unwrap(), "api.example:443");
        assert_eq!(
            host_port("https://[fd00::1]:6443").unwrap(),
            "[fd00::1]:6443"
        );
        assert!(host_port("https://a/b").is_err());
        assert!(host_port("").is_err());
    }

    /// A server that answers each connection with its name.
    async fn named(name: &'static str) -> (String, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let _ = c.write_all(name.as_bytes()).await;
            }
        });
        (addr, task)
    }

    async fn ask(front: &Front) -> String {
        let mut c = TcpStream::connect(front.local).await.unwrap();
        let mut s = String::new();
        let _ = c.read_to_string(&mut s).await;
        s
    }

    #[tokio::test]
    async fn connections_go_to_the_server_that_answers_and_stay_there() {
        let (a, a_task) = named("a").await;
        let (b, _b_task) = named("b").await;
        let front = Front::start(vec![a.clone(), b.clone()]).await.unwrap();
        assert_eq!(ask(&front).await, "a");
        a_task.abort();
        let _ = a_task.await;
        assert_eq!(ask(&front).await, "b");
        // b stays preferred while it answers; a learned server is added, the current kept.
        front.learn(vec!["127.0.0.1:9".into(), b.clone()]);
        assert_eq!(front.servers(), vec![a, b, "127.0.0.1:9".into()]);
        assert_eq!(ask(&front).await, "b");
    }
}
