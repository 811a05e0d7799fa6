//! `kubectl port-forward` on the agent: `/portForward/{namespace}/{pod}`, reached through the
//! API server's pods/portforward. Two ways in, one protocol: a WebSocket with the subprotocol
//! `SPDY/3.1+portforward.k8s.io` whose binary messages carry SPDY bytes (kubectl ≥ 1.31), or a
//! raw `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version: portforward.k8s.io` (older kubectl,
//! or `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`).
//!
//! kubelet's protocol (`portforward.k8s.io`): for every local connection the client opens two
//! streams with the headers `streamType` (`error` or `data`), `port` and `requestID`; once both
//! of one request are there the agent connects to the port inside the pod's network namespace
//! and copies the data stream both ways. A failed connect is written on the error stream as
//! kubelet words it; the error stream is closed (FIN) when the forward ends, which is what the
//! client waits for.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::runtime::{POD_NAME, POD_NAMESPACE, Runtime};
use crate::server::{Served, status};
use crate::spdy::{self, Frame};

/// The WebSocket subprotocol of SPDY tunnelled in a WebSocket (client-go's tunneling dialer).
pub const TUNNELING_V1: &str = "SPDY/3.1+portforward.k8s.io";
/// The SPDY stream protocol (kubelet's `portforward.k8s.io`).
pub const PORT_FORWARD_V1: &str = "portforward.k8s.io";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CHUNK: usize = 32 * 1024;

/// Where the pod's ports are: None is the host's loopback (the process runtime shares the
/// host's network), Some the pod's network namespace file.
pub type Netns = Option<PathBuf>;

type Dial =
    Arc<dyn Fn(u16) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>> + Send + Sync>;

/// Connects to 127.0.0.1:`port` in `netns`: a dedicated thread enters the namespace (it never
/// leaves it; the thread ends with the connect), creates the socket there, and hands it to tokio.
pub async fn connect(netns: &Netns, port: u16) -> io::Result<TcpStream> {
    let Some(path) = netns.clone() else {
        return tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("portforward-netns".into())
        .spawn(move || {
            let r = (|| -> io::Result<std::net::TcpStream> {
                let ns = std::fs::File::open(&path).map_err(|e| {
                    io::Error::new(e.kind(), format!("open {}: {e}", path.display()))
                })?;
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| io::Error::other(format!("setns {}: {e}", path.display())))?;
                let s = std::net::TcpStream::connect_timeout(
                    &(std::net::Ipv4Addr::LOCALHOST, port).into(),
                    CONNECT_TIMEOUT,
                )?;
                s.set_nonblocking(true)?;
                Ok(s)
            })();
            let _ = tx.send(r);
        })?;
    let s = rx
        .await
        .map_err(|_| io::Error::other("the namespace thread died"))??;
    TcpStream::from_std(s)
}

pub(crate) async fn port_forward<R: Runtime>(
    State(s): State<Arc<Served<R>>>,
    Path((namespace, pod)): Path<(String, String)>,
    req: Request,
) -> Response {
    let netns = match pod_netns(&*s.runtime, &namespace, &pod).await {
        Ok(n) => n,
        Err((code, reason, msg)) => return status(code, reason, msg),
    };
    let label = format!("{namespace}/{pod}");
    let dial: Dial = Arc::new(move |port| {
        let netns = netns.clone();
        Box::pin(async move { connect(&netns, port).await })
    });
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if upgrade == "websocket" {
        let (mut parts, _) = req.into_parts();
        let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws.protocols([TUNNELING_V1]),
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
        };
        if ws.selected_protocol().is_none() {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("port-forward over a WebSocket needs the subprotocol {TUNNELING_V1}"),
            );
        }
        return ws.on_upgrade(move |socket| async move {
            let (a, b) = tokio::io::duplex(256 * 1024);
            let (mut sink, mut stream) = socket.split();
            let (mut ar, mut aw) = tokio::io::split(a);
            let inbound = async {
                while let Some(Ok(m)) = stream.next().await {
                    match m {
                        Message::Binary(b) if aw.write_all(&b).await.is_err() => break,
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                let _ = aw.shutdown().await;
            };
            let outbound = async {
                let mut buf = vec![0u8; CHUNK + 64];
                loop {
                    match ar.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let b = Bytes::copy_from_slice(&buf[..n]);
                            if sink.send(Message::Binary(b)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = sink.send(Message::Close(None)).await;
            };
            let session = serve(b, dial, label);
            tokio::join!(inbound, outbound, session);
        });
    }
    if !upgrade.starts_with("spdy/3.1") {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Upgrade request required".into(),
        );
    }
    let offered = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PORT_FORWARD_V1);
    if !offered {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "unable to upgrade: the client offers no protocol this agent speaks ({PORT_FORWARD_V1})"
            ),
        );
    }
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => serve(TokioIo::new(io), dial, label).await,
            Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", PORT_FORWARD_V1)
        .body(Body::empty())
        .unwrap_or_else(|e| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })
}

/// The network namespace of the pod's newest ready sandbox.
async fn pod_netns<R: Runtime>(
    rt: &R,
    namespace: &str,
    pod: &str,
) -> Result<Netns, (StatusCode, &'static str, String)> {
    let unavailable = |e: &dyn std::fmt::Display| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            e.to_string(),
        )
    };
    let sandboxes = rt.list_sandboxes().await.map_err(|e| unavailable(&e))?;
    let sb = sandboxes
        .iter()
        .filter(|sb| {
            sb.config.labels.get(POD_NAMESPACE).map(String::as_str) == Some(namespace)
                && sb.config.labels.get(POD_NAME).map(String::as_str) == Some(pod)
                && sb.state == crate::runtime::SandboxState::Ready
        })
        .max_by_key(|sb| (sb.config.attempt, sb.created_at))
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("pod {namespace}/{pod} has no running sandbox on this node"),
            )
        })?;
    rt.sandbox_netns(&sb.id).await.map_err(|e| unavailable(&e))
}

/// What the connection's writer task puts on the wire.
type Out = mpsc::Sender<Frame>;

/// The two streams of one forwarded connection, as they arrive.
#[derive(Default)]
struct Pair {
    port: u16,
    data: Option<(u32, mpsc::Receiver<Bytes>)>,
    error: Option<u32>,
}

/// Serves one SPDY connection until the client closes it.
pub async fn serve<IO>(io: IO, dial: Dial, label: String)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, mut w) = tokio::io::split(io);
    let (out, mut frames) = mpsc::channel::<Frame>(256);
    let writer = tokio::spawn(async move {
        let Ok(mut enc) = spdy::Writer::new() else {
            return;
        };
        let mut buf = Vec::new();
        while let Some(f) = frames.recv().await {
            buf.clear();
            if enc.encode(&f, &mut buf).is_err() {
                break;
            }
            // Batch what is already queued into one write.
            while buf.len() < 256 * 1024 {
                match frames.try_recv() {
                    Ok(f) => {
                        if enc.encode(&f, &mut buf).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut reader = spdy::Reader::new(r);
    // Inbound data per data stream; pairs waiting for their other half; running forwards.
    let mut inbound: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let mut running: HashMap<u32, tokio::task::AbortHandle> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(pod = %label, error = %e, "port-forward connection");
                break;
            }
        };
        while tasks.try_join_next().is_some() {}
        match frame {
            Frame::SynStream {
                stream, headers, ..
            } => {
                let get = |k: &str| {
                    headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(k))
                        .map(|(_, v)| v.clone())
                };
                let (Some(kind), Some(port), Some(id)) =
                    (get("streamtype"), get("port"), get("requestid"))
                else {
                    let _ = out
                        .send(Frame::RstStream {
                            stream,
                            status: spdy::PROTOCOL_ERROR,
                        })
                        .await;
                    continue;
                };
                let Ok(port) = port.parse::<u16>() else {
                    let _ = out
                        .send(Frame::RstStream {
                            stream,
                            status: spdy::PROTOCOL_ERROR,
                        })
                        .await;
                    continue;
                };
                let _ = out
                    .send(Frame::SynReply {
                        stream,
                        headers: vec![],
                    })
                    .await;
                let pair = pending.entry(id.clone()).or_default();
                pair.port = port;
                match kind.as_str() {
                    "data" => {
                        let (tx, rx) = mpsc::channel(64);
                        inbound.insert(stream, tx);
                        pair.data = Some((stream, rx));
                    }
                    "error" => pair.error = Some(stream),
                    _ => {
                        let _ = out
                            .send(Frame::RstStream {
                                stream,
                                status: spdy::PROTOCOL_ERROR,
                            })
                            .await;
                        continue;
                    }
                }
                if pair.data.is_some() && pair.error.is_some() {
                    let Some(Pair {
                        port,
                        data: Some((data, rx)),
                        error: Some(error),
                    }) = pending.remove(&id)
                    else {
                        continue;
                    };
                    let h = tasks.spawn(forward(
                        dial.clone(),
                        port,
                        data,
                        error,
                        rx,
                        out.clone(),
                        label.clone(),
                    ));
                    running.insert(data, h.clone());
                    running.insert(error, h);
                }
            }
            Frame::Data { stream, fin, data } => {
                // Backpressure: a slow pod port slows this whole connection down, as a TCP
                // window would (there is no SPDY flow control).
                if let Some(tx) = inbound.get(&stream).filter(|_| !data.is_empty()) {
                    let _ = tx.send(data).await;
                }
                if fin {
                    inbound.remove(&stream);
                }
            }
            Frame::RstStream { stream, .. } => {
                inbound.remove(&stream);
                if let Some(h) = running.remove(&stream) {
                    h.abort();
                }
            }
            Frame::Ping(id) => {
                let _ = out.send(Frame::Ping(id)).await;
            }
            Frame::GoAway => break,
            Frame::SynReply { .. } | Frame::Ignored(_) => {}
        }
        running.retain(|_, h| !h.is_finished());
    }
    tasks.abort_all();
    drop(out);
    let _ = writer.await;
}

/// One forwarded connection: connect, then copy until the pod's side ends.
async fn forward(
    dial: Dial,
    port: u16,
    data: u32,
    error: u32,
    mut rx: mpsc::Receiver<Bytes>,
    out: Out,
    label: String,
) {
    let fin = |stream| Frame::Data {
        stream,
        fin: true,
        data: Bytes::new(),
    };
    let tcp = match dial(port).await {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {label}: {e}");
            tracing::debug!("{msg}");
            let _ = out
                .send(Frame::Data {
                    stream: error,
                    fin: true,
                    data: Bytes::from(msg),
                })
                .await;
            let _ = out.send(fin(data)).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut tr, mut tw) = tcp.into_split();
    let upstream = async move {
        while let Some(b) = rx.recv().await {
            if tw.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = tw.shutdown().await;
    };
    let out2 = out.clone();
    let downstream = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match tr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let f = Frame::Data {
                        stream: data,
                        fin: false,
                        data: Bytes::copy_from_slice(&buf[..n]),
                    };
                    if out2.send(f).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = out2.send(fin(data)).await;
        let _ = out2.send(fin(error)).await;
    };
    let up = tokio::spawn(upstream);
    downstream.await;
    // The client half-closes or resets the data stream when its side is done too.
    let _ = up.await;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn syn(stream: u32, kind: &str, port: u16, id: &str) -> Frame {
        Frame::SynStream {
            stream,
            fin: false,
            headers: vec![
                ("streamType".into(), kind.into()),
                ("port".into(), port.to_string()),
                ("requestID".into(), id.into()),
            ],
        }
    }

    /// A client end of the session: frames in, frames out.
    async fn client() -> (
        impl FnMut(Frame) -> Vec<u8>,
        spdy::Reader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
        tokio::io::WriteHalf<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (r, w) = tokio::io::split(ours);
        let mut enc = spdy::Writer::new().unwrap();
        let encode = move |f: Frame| {
            let mut b = Vec::new();
            enc.encode(&f, &mut b).unwrap();
            b
        };
        (encode, spdy::Reader::new(r), w, theirs)
    }

    fn loopback() -> Dial {
        Arc::new(|port| Box::pin(async move { connect(&None, port).await }))
    }

    #[tokio::test]
    async fn a_pair_of_streams_is_forwarded_and_both_end_with_fin() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"pong:").await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let (mut enc, mut frames, mut w, theirs) = client().await;
        tokio::spawn(serve(theirs, loopback(), "ns/pod".into()));
        w.write_all(&enc(syn(1, "error", port, "0"))).await.unwrap();
        w.write_all(&enc(syn(3, "data", port, "0"))).await.unwrap();
        w.write_all(&enc(Frame::Data {
            stream: 3,
            fin: false,
            data: Bytes::from_static(b"ping"),
        }))
        .await
        .unwrap();
        let (mut replies, mut data, mut fins) = (0, Vec::new(), BTreeSet::new());
        while fins.len() < 2 {
            match frames.next().await.unwrap().unwrap() {
                Frame::SynReply { .. } => replies += 1,
                Frame::Data {
                    stream,
                    fin,
                    data: d,
                } => {
                    if stream == 3 {
                        data.extend_from_slice(&d);
                    }
                    if fin {
                        fins.insert(stream);
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(replies, 2);
        assert_eq!(data, b"pong:ping");
    }

    #[tokio::test]
    async fn nothing_listening_is_reported_on_the_error_stream() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (mut enc, mut frames, mut w, theirs) = client().await;
        tokio::spawn(serve(theirs, loopback(), "ns/pod".into()));
        w.write_all(&enc(syn(1, "error", port, "7"))).await.unwrap();
        w.write_all(&enc(syn(3, "data", port, "7"))).await.unwrap();
        let mut error = Vec::new();
        loop {
            if let Frame::Data {
                stream: 1,
                fin,
                data,
            } = frames.next().await.unwrap().unwrap()
            {
                error.extend_from_slice(&data);
                if fin {
                    break;
                }
            }
        }
        let error = String::from_utf8(error).unwrap();
        assert!(
            error.starts_with(&format!("error forwarding port {port} to pod ns/pod: ")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn pings_are_answered() {
        let (mut enc, mut frames, mut w, theirs) = client().await;
        tokio::spawn(serve(theirs, loopback(), "ns/pod".into()));
        w.write_all(&enc(Frame::Ping(5))).await.unwrap();
        assert_eq!(frames.next().await.unwrap(), Some(Frame::Ping(5)));
    }
}
