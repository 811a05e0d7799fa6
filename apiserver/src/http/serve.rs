//! Serving the [`router`](super::router) on a socket: HTTP/1.1 connections with the limits a
//! server facing any client needs — kube-apiserver's `http.Server` settings (ReadHeaderTimeout
//! 32 s, IdleTimeout 90 s) and a cap on open connections, which Go's server lacks but a process
//! with a file-descriptor limit needs: 20,000 connections that never finish their headers used
//! to take every descriptor and leave `/readyz` unanswered.
//!
//! # Per connection
//! - **Header read timeout**: a new connection must deliver a request's headers within
//!   [`ServeLimits::header_read_timeout`] of being accepted; on a kept-alive connection, within
//!   that time of the request's first byte.
//! - **Idle timeout**: a kept-alive connection with no request in progress is closed after
//!   [`ServeLimits::idle_timeout`] without a byte of a new one. A request in progress (a watch
//!   streaming for an hour, an upgraded exec stream) is never idle.
//! - **Host**: an HTTP/1.1 request without a Host header, or with several, gets 400 (as Go's
//!   server answers), before any handler sees it.
//!
//! # Above the cap
//! At [`ServeLimits::max_connections`] open connections a new one is accepted, answered with a
//! 503 Status (`Retry-After: 1`, `Connection: close`) and closed — a clear refusal rather than a
//! connection left in the kernel's backlog. At most [`REFUSING`] refusals are written at once;
//! beyond that a connection is closed without an answer.
//!
//! # TLS
//! [`serve_tls`] serves HTTPS: the handshake must finish within the header read timeout, and a
//! client certificate the configuration verified rides on every request of the connection as
//! [`PeerCertificate`] (the authenticator reads it). Refusals over the cap are answered after
//! a handshake, so clients read them.
//!
//! # Shutdown
//! When `shutdown` resolves the listener closes, idle connections close, requests in progress
//! finish, and [`serve`] returns once every connection has ended or
//! [`ServeLimits::shutdown_timeout`] has passed.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::http::{Request, Version, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::audit::PeerAddr;
use crate::auth::PeerCertificate;
use crate::errors::ApiError;

/// kube-apiserver's ReadHeaderTimeout.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(32);
/// kube-apiserver's IdleTimeout (that of Go's http.DefaultTransport's idle connections).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Open connections at most. Every HTTP/1.1 watch holds one, so this bounds concurrent watches
/// too (the fan-out benchmark opens 1,000).
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
/// How long a shutdown waits for requests in progress (kube-apiserver's ShutdownTimeout).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Refusals (503 over the cap) written at once.
pub const REFUSING: usize = 64;
/// How long one refusal may take to write and close.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// After an accept error other than a dropped connection (EMFILE: out of descriptors), accepting
/// pauses this long, as hyper's and axum's servers do, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The limits of [`serve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// Serves `router` over plain HTTP on `listener` within `limits` until `shutdown` resolves
/// (see the module documentation). Errors only when the listener itself fails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, router, limits, None, shutdown).await
}

/// As [`serve`], over TLS with `tls`.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(
        listener,
        router,
        limits,
        Some(TlsAcceptor::from(tls)),
        shutdown,
    )
    .await
}

async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match open.clone().try_acquire_owned() {
            Ok(permit) => {
                let conn = Connection {
                    router: router.clone(),
                    limits: limits.clone(),
                    stop: stop_rx.clone(),
                    _permit: permit,
                };
                tokio::spawn(conn.run(stream, tls.clone()));
            }
            Err(_) => match refusing.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (cap, tls) = (limits.max_connections, tls.clone());
                    tokio::spawn(async move {
                        match tls {
                            None => refuse(stream, cap, permit).await,
                            Some(acceptor) => {
                                let accepted =
                                    tokio::time::timeout(REFUSAL_TIMEOUT, acceptor.accept(stream))
                                        .await;
                                if let Ok(Ok(stream)) = accepted {
                                    refuse(stream, cap, permit).await;
                                }
                            }
                        }
                    });
                }
                Err(_) => drop(stream),
            },
        }
    }
    drop(listener);
    stop_tx.send_replace(true);
    // Every connection holds a permit: all of them back means all connections ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_timeout, open.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            open = limits.max_connections - open.available_permits(),
            "connections still open after the shutdown timeout; leaving them"
        );
    }
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection over the cap with a 503 Status and closes it.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    cap: usize,
    _permit: OwnedSemaphorePermit,
) {
    let status = ApiError::unavailable(format!(
        "the server has reached its limit of {cap} open connections; retry later"
    ))
    .status();
    let body = serde_json::to_vec(&status).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes, so the close is orderly and the client
        // reads the answer (closing with unread data would reset the connection).
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// One accepted connection.
struct Connection {
    router: Router,
    limits: Arc<ServeLimits>,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let addr = stream.peer_addr().ok().map(PeerAddr);
        let activity = Arc::new(Activity::new());
        let tracked = Tracked {
            inner: stream,
            activity: activity.clone(),
        };
        let Some(acceptor) = tls else {
            return self.serve(tracked, activity, addr, None).await;
        };
        let handshake =
            tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(tracked)).await;
        let stream = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake did not finish within the header read timeout");
                return;
            }
        };
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| capstan_pki::der::subject(c))
            .and_then(|s| PeerCertificate::of(&s));
        self.serve(stream, activity, addr, peer).await
    }

    async fn serve<S>(
        mut self,
        stream: S,
        activity: Arc<Activity>,
        addr: Option<PeerAddr>,
        peer: Option<PeerCertificate>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(stream);
        let (router, seen) = (self.router.clone(), activity.clone());
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let guard = seen.begin();
            let router = router.clone();
            if let Some(p) = &peer {
                req.extensions_mut().insert(p.clone());
            }
            if let Some(a) = addr {
                req.extensions_mut().insert(a);
            }
            async move {
                let response = match host_problem(&req) {
                    Some(problem) => ApiError::bad_request(problem).into_response(),
                    None => match router.oneshot(req.map(Body::new)).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    },
                };
                Ok::<_, Infallible>(response.map(|body| Holding { body, held: guard }))
            }
        });
        let conn = http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        let mut stopping = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = activity.expired(&self.limits) => {
                    tracing::debug!("closing a connection past its header-read or idle timeout");
                    return;
                }
                _ = self.stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Why an HTTP/1.1 request cannot be served, as Go's server words it.
fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    if req.version() != Version::HTTP_11 {
        return None; // HTTP/1.0 may leave Host out
    }
    match req.headers().get_all(header::HOST).iter().count() {
        0 => Some("missing required Host header"),
        1 => None,
        _ => Some("too many Host headers"),
    }
}

/// What a connection is doing, for its timeouts.
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

struct ActivityState {
    /// Requests whose response has not been fully sent.
    in_flight: usize,
    /// Whether a request has begun on this connection.
    served: bool,
    /// When the connection was accepted, or last had no request in progress.
    idle_since: Instant,
    /// When the first byte arrived while no request was in progress.
    first_byte: Option<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                served: false,
                idle_since: Instant::now(),
                first_byte: None,
            }),
            changed: Notify::new(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut ActivityState) -> bool) {
        let notify = match self.state.lock() {
            Ok(mut st) => f(&mut st),
            Err(_) => false,
        };
        if notify {
            self.changed.notify_one();
        }
    }

    fn bytes_read(&self) {
        self.update(|st| {
            let first = st.in_flight == 0 && st.first_byte.is_none();
            if first {
                st.first_byte = Some(Instant::now());
            }
            first
        });
    }

    /// A request begins; it ends when the returned guard drops (with its response body).
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.update(|st| {
            st.in_flight += 1;
            st.served = true;
            st.first_byte = None;
            true
        });
        RequestGuard(self.clone())
    }

    /// When the connection times out as things stand; None while a request is in progress.
    fn deadline(&self, limits: &ServeLimits) -> Option<Instant> {
        let st = self.state.lock().ok()?;
        if st.in_flight > 0 {
            return None;
        }
        Some(match (st.served, st.first_byte) {
            (false, _) => st.idle_since + limits.header_read_timeout,
            (true, Some(first)) => first + limits.header_read_timeout,
            (true, None) => st.idle_since + limits.idle_timeout,
        })
    }

    /// Resolves once the connection is past its deadline.
    async fn expired(&self, limits: &ServeLimits) {
        loop {
            let changed = self.changed.notified();
            match self.deadline(limits) {
                Some(at) if at <= Instant::now() => return,
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.update(|st| {
            st.in_flight = st.in_flight.saturating_sub(1);
            if st.in_flight == 0 {
                st.idle_since = Instant::now();
                st.first_byte = None;
            }
            true
        });
    }
}

/// A response body that holds something — its request's [`RequestGuard`], an in-flight seat
/// ([`super::inflight`]) — until it is sent or dropped.
pub struct Holding<T> {
    pub body: Body,
    pub held: T,
}

impl<T> std::fmt::Debug for Holding<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holding").finish_non_exhaustive()
    }
}

impl<T: Send + Unpin + 'static> HttpBody for Holding<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, noting when bytes arrive.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn request(version: Version, hosts: &[&str]) -> Request<()> {
        let mut req = Request::builder().version(version).uri("/readyz");
        for h in hosts {
            req = req.header(header::HOST, HeaderValue::from_str(h).unwrap());
        }
        req.body(()).unwrap()
    }

    #[test]
    fn http11_requests_need_exactly_one_host() {
        let v = Version::HTTP_11;
        assert_eq!(host_problem(&request(v, &["a"])), None);
        assert_eq!(
            host_problem(&request(v, &[])),
            Some("missing required Host header")
        );
        assert_eq!(
            host_problem(&request(v, &["a", "b"])),
            Some("too many Host headers")
        );
        assert_eq!(host_problem(&request(Version::HTTP_10, &[])), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_times_out_by_its_state() {
        let limits = ServeLimits {
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            ..ServeLimits::default()
        };
        let a = Arc::new(Activity::new());
        let t0 = Instant::now();
        // Fresh: the headers are due from accept, bytes or not.
        assert_eq!(a.deadline(&limits), Some(t0 + Duration::from_secs(2)));
        a.bytes_read();
        assert_eq!(a.deadline(&limits), Some(t0 + Duration::from_secs(2)));
        // A request in progress never times out.
        let guard = a.begin();
        assert_eq!(a.deadline(&limits), None);
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(guard);
        // Kept alive: idle until a byte of the next request, then the headers are due.
        let t1 = Instant::now();
        assert_eq!(a.deadline(&limits), Some(t1 + Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(3)).await;
        a.bytes_read();
        assert_eq!(
            a.deadline(&limits),
            Some(t1 + Duration::from_secs(3) + Duration::from_secs(2))
        );
        tokio::time::timeout(Duration::from_secs(3), a.expired(&limits))
            .await
            .expect("past its header deadline");
    }
}
