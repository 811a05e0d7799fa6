//! Connections from the API server to a node agent's port (logs, exec, attach,
//! port-forward): TLS when the server has a kubelet client configuration — the agent's serving
//! certificate verified against the cluster CA (`--kubelet-certificate-authority`) and the
//! server's own client certificate presented (`kube-apiserver-kubelet-client`) — plain TCP
//! otherwise (a cluster on `--insecure-http`).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How long connecting (and the TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to an agent, plain or TLS.
pub trait AgentIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AgentIo for T {}

/// The TLS name of `host` (an IP address, bracketed for IPv6, or a DNS name).
fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(rustls::pki_types::ServerName::IpAddress(ip.into())),
        Err(_) => rustls::pki_types::ServerName::try_from(bare.to_string())
            .map_err(|e| format!("{host} is not a name TLS can check: {e}")),
    }
}

/// Connects to `host:port`, over TLS with `tls` when given.
pub async fn connect(
    tls: Option<&Arc<rustls::ClientConfig>>,
    host: &str,
    port: u64,
) -> Result<Box<dyn AgentIo>, String> {
    let work = async {
        let tcp = TcpStream::connect(format!("{host}:{port}"))
            .await
            .map_err(|e| e.to_string())?;
        // Streams carry small frames both ways: no Nagle delays.
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(Box::new(tcp) as Box<dyn AgentIo>);
        };
        let name = server_name(host)?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        Ok(Box::new(stream) as Box<dyn AgentIo>)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, work)
        .await
        .map_err(|_| "connect timed out".to_string())?
}

/// An HTTP/1.1 connection to `host:port` (see [`connect`]) that lives as long as its
/// requests' responses and upgrades (a followed log, an exec stream).
pub async fn open(
    tls: Option<&Arc<rustls::ClientConfig>>,
    host: &str,
    port: u64,
) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>, String> {
    let stream = connect(tls, host, port).await?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "connection to an agent");
        }
    });
    Ok(sender)
}

/// The scheme requests to agents use.
pub fn scheme(tls: Option<&Arc<rustls::ClientConfig>>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_become_tls_names() {
        assert!(matches!(
            server_name("10.0.0.1").unwrap(),
            rustls::pki_types::ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[fd00::1]").unwrap(),
            rustls::pki_types::ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("node-1.example").unwrap(),
            rustls::pki_types::ServerName::DnsName(_)
        ));
        assert!(server_name("bad name!").is_err());
    }
}
