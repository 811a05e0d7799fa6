//! The client half of Kubernetes' remotecommand protocol over SPDY/3.1 (`v4.channel.k8s.io`),
//! as client-go speaks it to kubelet — what kube-apiserver's StreamTranslatorProxy does for
//! kubectl's WebSockets. CRI's Attach answers a URL on the runtime's streaming server
//! (containerd's owns the container's stdio); the agent upgrades a POST there to SPDY and opens
//! one stream per channel, each a SYN_STREAM whose `streamType` header names it — error, stdin,
//! stdout, stderr, resize — and turns them into an [`ExecSession`], the shape every exec and
//! attach has on the agent. Closing stdin is a FIN on its stream (with stdinOnce, the
//! container's stdin closes); resizes are JSON lines on the resize stream; the error stream
//! carries the final Status.

use std::io;
use std::time::Duration;

use axum::http::{Method, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

#[cfg(test)]
use super::exec::TermSize;
use super::exec::{ExecRequest, ExecSession, RuntimeEnds, session};
use crate::spdy::{self, Frame};

pub const PROTOCOL: &str = "v4.channel.k8s.io";

/// The streams of one session, by SPDY stream id (client streams are odd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ids {
    error: u32,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

impl Ids {
    /// In client-go's order: error, stdin, stdout, stderr, resize.
    fn for_request(req: &ExecRequest) -> Ids {
        let mut next = 1;
        let mut take = |on: bool| {
            on.then(|| {
                let id = next;
                next += 2;
                id
            })
        };
        let error = take(true).unwrap_or(1);
        Ids {
            error,
            stdin: take(req.stdin),
            stdout: take(req.stdout),
            stderr: take(req.stderr && !req.tty),
            resize: take(req.tty),
        }
    }

    fn named(&self) -> Vec<(u32, &'static str)> {
        [
            (Some(self.error), "error"),
            (self.stdin, "stdin"),
            (self.stdout, "stdout"),
            (self.stderr, "stderr"),
            (self.resize, "resize"),
        ]
        .into_iter()
        .filter_map(|(id, name)| id.map(|id| (id, name)))
        .collect()
    }
}

/// Opens a session on the streaming server at `url` (from CRI Attach or Exec).
pub async fn dial(url: &str, req: &ExecRequest) -> io::Result<ExecSession> {
    let uri: Uri = url
        .parse()
        .map_err(|e| other(format!("the streaming URL {url:?}: {e}")))?;
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .ok_or_else(|| other(format!("the streaming URL {url:?} has no host")))?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&authority),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"))??;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(other)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let upgrade = hyper::Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, &authority)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", PROTOCOL)
        .body(Empty::<Bytes>::new())
        .map_err(other)?;
    let mut resp = sender.send_request(upgrade).await.map_err(other)?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let code = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        return Err(other(format!(
            "the streaming server answered {code}: {}",
            String::from_utf8_lossy(&body.unwrap_or_default()).trim()
        )));
    }
    let io = TokioIo::new(hyper::upgrade::on(&mut resp).await.map_err(other)?);
    Ok(run(io, req))
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Runs the SPDY side of a session on `io` (already upgraded).
fn run<T>(io: T, req: &ExecRequest) -> ExecSession
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let ids = Ids::for_request(req);
    let (ours, ends): (ExecSession, RuntimeEnds) = session(req);
    let (stdin, stdout, stderr, exit) = (ends.stdin, ends.stdout, ends.stderr, ends.exit);
    let mut resize = ends.resize;
    let (rd, mut wr) = tokio::io::split(io);
    let (frames, mut outbox) = mpsc::channel::<Frame>(64);
    // One writer owns the header compressor: frames go out in the order they are queued.
    tokio::spawn(async move {
        let Ok(mut enc) = spdy::Writer::new() else {
            return;
        };
        let mut buf = Vec::new();
        while let Some(f) = outbox.recv().await {
            buf.clear();
            if enc.encode(&f, &mut buf).is_err() || wr.write_all(&buf).await.is_err() {
                break;
            }
            if matches!(f, Frame::GoAway) {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    for (id, name) in ids.named() {
        let _ = frames.try_send(Frame::SynStream {
            stream: id,
            fin: false,
            headers: vec![("streamtype".into(), name.into())],
        });
    }
    // On a terminal the end of the input is not passed on: the container's stdin stays open
    // anyway (a terminal has no half-close; kubernetes#29448) and containerd would detach the
    // output at once, losing what the input still makes the container print (`kubectl run
    // -it` with a script piped in). The session ends with the container, or the client.
    let pass_end = !req.tty;
    let input = stdin.zip(ids.stdin).map(|(mut rx, id)| {
        let frames = frames.clone();
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                for chunk in data.chunks(32 * 1024) {
                    let data = data.slice_ref(chunk);
                    if frames
                        .send(Frame::Data {
                            stream: id,
                            fin: false,
                            data,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            if pass_end {
                let _ = frames
                    .send(Frame::Data {
                        stream: id,
                        fin: true,
                        data: Bytes::new(),
                    })
                    .await;
            }
        })
    });
    let pings = frames.clone();
    let reader = tokio::spawn(async move {
        let mut rd = spdy::Reader::new(rd);
        let mut out = [(ids.stdout, stdout), (ids.stderr, stderr)];
        let mut status = Vec::new();
        let mut status_done = false;
        loop {
            match rd.next().await {
                Ok(Some(Frame::Data { stream, fin, data })) => {
                    if stream == ids.error {
                        status.extend_from_slice(&data);
                        status_done |= fin;
                        continue;
                    }
                    for (id, tx) in &mut out {
                        if *id == Some(stream) {
                            if let Some(t) = tx
                                && !data.is_empty()
                            {
                                // A reader gone away (the client left) only loses the output.
                                let _ = t.send(data.clone()).await;
                            }
                            if fin {
                                *tx = None;
                            }
                        }
                    }
                }
                Ok(Some(Frame::RstStream { stream, .. })) => {
                    for (id, tx) in &mut out {
                        if *id == Some(stream) {
                            *tx = None;
                        }
                    }
                }
                Ok(Some(Frame::Ping(id))) => {
                    let _ = pings.send(Frame::Ping(id)).await;
                }
                Ok(Some(Frame::GoAway)) | Ok(None) => break,
                Ok(Some(_)) => {}
                Err(e) => {
                    if !status_done {
                        let _ = exit.send(Err(format!("the streaming connection: {e}")));
                        return;
                    }
                    break;
                }
            }
        }
        drop(out);
        let _ = exit.send(outcome(&status));
    });
    // The session going away (its resize sender dropped) ends the connection: a detach.
    tokio::spawn(async move {
        while let Some(size) = resize.recv().await {
            let (Some(id), Ok(mut json)) = (ids.resize, serde_json::to_vec(&size)) else {
                continue;
            };
            json.push(b'\n');
            let _ = frames
                .send(Frame::Data {
                    stream: id,
                    fin: false,
                    data: json.into(),
                })
                .await;
        }
        if let Some(i) = input {
            i.abort();
        }
        reader.abort();
        let _ = frames.send(Frame::GoAway).await;
    });
    ours
}

/// The Status on the error stream as an exit: Success (or none: the server closed without
/// one) is 0, NonZeroExitCode its code, anything else its message.
fn outcome(status: &[u8]) -> Result<i32, String> {
    if status.iter().all(u8::is_ascii_whitespace) {
        return Ok(0);
    }
    let Ok(st) = serde_json::from_slice::<serde_json::Value>(status) else {
        return Err(String::from_utf8_lossy(status).trim().to_string());
    };
    if st["status"] == "Success" {
        return Ok(0);
    }
    if st["reason"] == "NonZeroExitCode"
        && let Some(code) = st["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str()?.parse().ok())
    {
        return Ok(code);
    }
    Err(st["message"].as_str().unwrap_or("failed").to_string())
}

/// The sizes sent on a resize stream, as the streaming server reads them.
#[cfg(test)]
fn sizes(data: &[u8]) -> Vec<TermSize> {
    serde_json::Deserializer::from_slice(data)
        .into_iter::<TermSize>()
        .filter_map(Result::ok)
        .collect()
}

#[cfg(test)]
#[path = "remotecommand_tests.rs"]
mod tests;
