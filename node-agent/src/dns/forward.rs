//! Forwarding what the cluster zone does not answer to upstream resolvers — CoreDNS's `forward`
//! plugin, reduced: upstreams tried in order within one overall deadline, UDP first and TCP when
//! the UDP answer comes back truncated. The query goes out with a fresh random ID from a fresh
//! ephemeral port (so a spoofed answer must guess both), and the answer is relayed with the
//! client's ID restored.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

/// Why a query could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolvers configured")]
    NoUpstreams,
    #[error("query too short to forward")]
    Malformed,
    #[error("every upstream failed or timed out; last: {0}")]
    Failed(String),
}

impl ForwardError {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ForwardError::NoUpstreams => "no_upstreams",
            ForwardError::Malformed => "malformed",
            ForwardError::Failed(last) if last.contains("timed out") => "timeout",
            ForwardError::Failed(_) => "error",
        }
    }
}

/// The upstream resolvers and how long a query may take across all of them.
#[derive(Debug, Clone)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
}

impl Forwarder {
    /// Forwards to `upstreams`, leaving out any in `own` (the server's own addresses: forwarding to
    /// itself would loop).
    pub fn new(upstreams: &[SocketAddr], own: &[SocketAddr], timeout: Duration) -> Forwarder {
        let upstreams = upstreams
            .iter()
            .filter(|u| {
                let looped = own.iter().any(|o| {
                    o.port() == u.port()
                        && (o.ip() == u.ip() || (o.ip().is_unspecified() && is_local(u)))
                });
                if looped {
                    tracing::warn!(upstream = %u, "dns: upstream is this server itself, left out");
                }
                !looped
            })
            .copied()
            .collect();
        Forwarder { upstreams, timeout }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Sends the wire-format `query` upstream and returns the wire-format answer, carrying the
    /// query's own ID.
    pub async fn forward(&self, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
        if query.len() < 12 {
            return Err(ForwardError::Malformed);
        }
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let deadline = Instant::now() + self.timeout;
        let mut last = String::new();
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let left = self.upstreams.len() - i;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            // The deadline is shared out among the upstreams still to try.
            let budget = remaining / left as u32;
            match tokio::time::timeout(budget, exchange(query, *upstream)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => last = format!("{upstream}: {e}"),
                Err(_) => last = format!("{upstream}: timed out after {budget:?}"),
            }
            tracing::debug!(%upstream, error = %last, "dns: upstream failed");
        }
        Err(ForwardError::Failed(last))
    }
}

fn is_local(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback() || addr.ip().is_unspecified()
}

/// One query to one upstream: UDP, then TCP if the answer is truncated.
async fn exchange(query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let id = fastrand::u16(..);
    let mut out = query.to_vec();
    out[..2].copy_from_slice(&id.to_be_bytes());
    let client_id = [query[0], query[1]];
    let mut answer = exchange_udp(&out, upstream, id).await?;
    if answer[2] & 0x02 != 0 {
        answer = exchange_tcp(&out, upstream, id).await?;
    }
    answer[..2].copy_from_slice(&client_id);
    Ok(answer)
}

async fn exchange_udp(query: &[u8], upstream: SocketAddr, id: u16) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Only an answer to this query: right ID, QR set. Anything else is noise or a spoof.
        if n >= 12 && buf[..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn exchange_tcp(query: &[u8], upstream: SocketAddr, id: u16) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    if len < 12 || buf[..2] != id.to_be_bytes() {
        return Err(std::io::Error::other(
            "upstream answered over TCP with another ID",
        ));
    }
    Ok(buf)
}
