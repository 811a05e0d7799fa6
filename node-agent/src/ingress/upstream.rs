//! Connections to endpoints: HTTP/1.1, kept alive and reused per endpoint address.
//!
//! The proxy connects before it sends anything, so a refused or timed-out connection is retried
//! on the next endpoint without the request having left (safe for any method); once a request
//! is sent it is never sent again. A connection goes back to its endpoint's idle list once the
//! response it carried has been read to the end (`SendRequest::ready`), and is dropped when the
//! endpoint closes it or the list is full. Connections close with a reset (see `get`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// Idle connections kept per endpoint.
const IDLE_PER_ENDPOINT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("connecting to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<Incoming>>>>,
}

impl Pool {
    /// A connection to `addr` ready for a request: an idle one if it is still open, else a
    /// new one.
    pub async fn get(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<SendRequest<Incoming>, ConnectError> {
        loop {
            let idle = {
                let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                map.get_mut(&addr).and_then(Vec::pop)
            };
            match idle {
                Some(c) if c.is_ready() => return Ok(c),
                Some(_) => continue, // closed by the endpoint: dropped
                None => break,
            }
        }
        let tcp = match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
            .await
        {
            Err(_) => {
                return Err(ConnectError::Timeout {
                    addr,
                    after: connect_timeout,
                });
            }
            Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        // Closing with a reset rather than a FIN (SO_LINGER 0, HAProxy's `option nolinger`):
        // the proxy closes an endpoint's connection only once its response has been read (or
        // the client gave up), and a FIN would leave a TIME_WAIT socket per request on this
        // host; endpoints that close after every answer (busybox httpd) then fill the port
        // range, and every connect() searches it (a third of the proxy's CPU, measured).
        let _ = tcp.set_zero_linger();
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "ingress: upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Returns `sender` to the idle list once its response has been read (never, if the
    /// connection closes first or was upgraded).
    pub fn release(
        self: &std::sync::Arc<Self>,
        addr: SocketAddr,
        mut sender: SendRequest<Incoming>,
    ) {
        let pool = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let mut map = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            let list = map.entry(addr).or_default();
            list.retain(|c| !c.is_closed());
            if list.len() < IDLE_PER_ENDPOINT {
                list.push(sender);
            }
        });
    }

    /// Forgets endpoints no snapshot names any more.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|a, _| keep(a));
    }
}
