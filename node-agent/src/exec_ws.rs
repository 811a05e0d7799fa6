//! `kubectl exec` on the agent: `/exec/{namespace}/{pod}/{container}?command=…&stdin=…`,
//! upgraded to a WebSocket by the API server's pods/exec proxy. Kubernetes' channel protocol:
//! every binary message starts with its stream — 0 stdin, 1 stdout, 2 stderr, 3 the final
//! Status, 4 terminal resizes (`{"Width":…,"Height":…}`) — and in `v5.channel.k8s.io` (kubectl
//! ≥ 1.30) a message `[255, n]` closes stream n, which is how stdin ends. `v4.channel.k8s.io`
//! is the same without the close (its stdin never ends).

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::runtime::exec::{TermSize, exit_status};
use crate::runtime::{
    CONTAINER_NAME, ContainerState, ExecRequest, ExecSession, POD_NAME, POD_NAMESPACE, Runtime,
};
use crate::server::{Served, status};

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The request's query as kubelet reads it: repeated `command`, boolean streams.
pub fn parse(query: &str) -> Result<ExecRequest, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| format!("the query: {e}"))?;
    let mut req = ExecRequest::default();
    for (k, v) in pairs {
        let on = matches!(v.as_str(), "true" | "1");
        match k.as_str() {
            "command" => req.command.push(v),
            "stdin" => req.stdin = on,
            "stdout" => req.stdout = on,
            "stderr" => req.stderr = on,
            "tty" => req.tty = on,
            _ => {}
        }
    }
    if req.command.is_empty() {
        return Err("you must specify at least one command for the container".into());
    }
    if !(req.stdin || req.stdout || req.stderr) {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    Ok(req)
}

/// The first protocol the client offers that we speak.
pub(crate) fn protocol(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| [V5, V4].into_iter().find(|ours| *ours == p))
}

pub(crate) async fn exec<R: Runtime>(
    State(s): State<Arc<Served<R>>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let req = match parse(query.as_deref().unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e),
    };
    let Ok(ws) = ws else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "exec needs a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io)".into(),
        );
    };
    let Some(proto) = protocol(&headers) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "no supported WebSocket subprotocol offered: this node speaks {V5} and {V4} (kubectl 1.30 or newer)"
            ),
        );
    };
    let id = match running_container(&*s.runtime, &namespace, &pod, &container).await {
        Ok(c) => c.id,
        Err((code, reason, msg)) => return status(code, reason, msg),
    };
    let rt = s.runtime.clone();
    ws.protocols([proto]).on_upgrade(move |socket| async move {
        let started = rt.exec(&id, &req).await;
        tracing::info!(%namespace, %pod, %container, command = ?req.command, tty = req.tty, ok = started.is_ok(), "exec");
        serve(socket, proto == V5, &req.command, started.map_err(|e| e.to_string())).await;
    })
}

/// The running instance of `container` in the pod's newest sandbox.
pub(crate) async fn running_container<R: Runtime>(
    rt: &R,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<crate::runtime::Container, (StatusCode, &'static str, String)> {
    let unavailable = |e: crate::runtime::RuntimeError| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            e.to_string(),
        )
    };
    let sandboxes = rt.list_sandboxes().await.map_err(unavailable)?;
    let sb = sandboxes
        .iter()
        .filter(|sb| {
            sb.config.labels.get(POD_NAMESPACE).map(String::as_str) == Some(namespace)
                && sb.config.labels.get(POD_NAME).map(String::as_str) == Some(pod)
        })
        .max_by_key(|sb| (sb.config.attempt, sb.created_at))
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("pod {namespace}/{pod} has no sandbox on this node"),
            )
        })?;
    rt.list_containers()
        .await
        .map_err(unavailable)?
        .into_iter()
        .filter(|c| {
            c.sandbox_id == sb.id
                && c.config.labels.get(CONTAINER_NAME).map(String::as_str) == Some(container)
        })
        .max_by_key(|c| (c.config.attempt, c.created_at))
        .filter(|c| c.state == ContainerState::Running)
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("container {container} is not running in pod {namespace}/{pod}"),
            )
        })
}

async fn next(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// One exec over the WebSocket: input and resizes in, output out, then the Status and a
/// normal close. The two directions run side by side — input waiting on a busy command never
/// holds up its output — and the client going away drops the session, which kills the command.
pub async fn serve(
    ws: WebSocket,
    v5: bool,
    command: &[String],
    started: Result<ExecSession, String>,
) {
    let (mut sink, mut stream) = ws.split();
    let session = match started {
        Ok(s) => s,
        Err(e) => {
            let st = exit_status(command, &Err(e));
            let _ = sink.send(frame(ERROR, st.to_string().as_bytes())).await;
            let _ = sink.send(Message::Close(Some(normal()))).await;
            return;
        }
    };
    let ExecSession {
        stdin,
        mut stdout,
        mut stderr,
        resize,
        mut exit,
    } = session;
    // Client → command. Ends (dropping stdin and the resize channel) when the client closes.
    let input = async move {
        let mut stdin = stdin;
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Binary(b) = msg else {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
                continue;
            };
            match b.first() {
                Some(&STDIN) => {
                    if let Some(tx) = &stdin
                        && tx.send(b.slice(1..)).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(&RESIZE) => {
                    if let Ok(sz) = serde_json::from_slice::<TermSize>(&b[1..]) {
                        let _ = resize.try_send(sz);
                    }
                }
                Some(&CLOSE) if v5 && b.get(1) == Some(&STDIN) => stdin = None,
                _ => {}
            }
        }
    };
    // Command → client: output until both streams end and the exit is known, then the Status.
    let output = async {
        let mut result = None;
        while stdout.is_some() || stderr.is_some() || result.is_none() {
            let (channel, data) = tokio::select! {
                out = next(&mut stdout) => match out {
                    Some(b) => (STDOUT, b),
                    None => { stdout = None; continue }
                },
                err = next(&mut stderr) => match err {
                    Some(b) => (STDERR, b),
                    None => { stderr = None; continue }
                },
                r = &mut exit, if result.is_none() => {
                    result = Some(r.unwrap_or_else(|_| Err("the runtime lost the command".into())));
                    continue;
                }
            };
            if sink.send(frame(channel, &data)).await.is_err() {
                return false;
            }
        }
        let st = exit_status(command, &result.unwrap_or(Ok(0)));
        let _ = sink.send(frame(ERROR, st.to_string().as_bytes())).await;
        let _ = sink.send(Message::Close(Some(normal()))).await;
        true
    };
    tokio::pin!(input);
    tokio::select! {
        // The client went away first: returning drops the session.
        () = &mut input => {}
        // Done: wait (briefly) for the client's close to finish the handshake.
        finished = output => if finished {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), input).await;
        }
    }
}

fn normal() -> CloseFrame {
    CloseFrame {
        code: close_code::NORMAL,
        reason: "".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::{ContainerConfig, SandboxConfig};
    use futures_util::{SinkExt, StreamExt};
    use std::collections::BTreeMap;
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

    type Client = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

    /// The agent's endpoint on a loopback port, over the fake runtime with pod default/p's
    /// container `app` running.
    async fn agent() -> (std::net::SocketAddr, Arc<FakeRuntime>) {
        let rt = Arc::new(FakeRuntime::new());
        let labels = |c: Option<&str>| {
            let mut l = std::collections::BTreeMap::new();
            l.insert(POD_NAMESPACE.to_string(), "default".to_string());
            l.insert(POD_NAME.to_string(), "p".to_string());
            if let Some(c) = c {
                l.insert(CONTAINER_NAME.to_string(), c.to_string());
            }
            l
        };
        let sb = rt
            .run_sandbox(&SandboxConfig {
                labels: labels(None),
                ..Default::default()
            })
            .await
            .unwrap();
        for name in ["app", "stopped"] {
            let c = rt
                .create_container(
                    &sb.id,
                    &ContainerConfig {
                        name: name.into(),
                        labels: labels(Some(name)),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            rt.start_container(&c.id).await.unwrap();
            if name == "stopped" {
                rt.exit(&c.id, 0, false);
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = crate::server::router(
            rt.clone(),
            crate::server::Metrics::new().unwrap(),
            Default::default(),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, rt)
    }

    async fn connect(
        addr: std::net::SocketAddr,
        query: &str,
        protocols: &str,
    ) -> Result<(Client, String), tungstenite::Error> {
        connect_to(addr, "p/app", query, protocols).await
    }

    /// A session with `pod/container` of namespace default; the protocol the agent chose.
    async fn connect_to(
        addr: std::net::SocketAddr,
        target: &str,
        query: &str,
        protocols: &str,
    ) -> Result<(Client, String), tungstenite::Error> {
        open(addr, &format!("exec/default/{target}?{query}"), protocols).await
    }

    async fn open(
        addr: std::net::SocketAddr,
        path: &str,
        protocols: &str,
    ) -> Result<(Client, String), tungstenite::Error> {
        let mut req = format!("ws://{addr}/{path}").into_client_request().unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (ws, resp) = tokio_tungstenite::client_async(req, stream).await?;
        let proto = resp.headers()["sec-websocket-protocol"]
            .to_str()
            .unwrap()
            .to_string();
        Ok((ws, proto))
    }

    /// Everything the server sends until it closes, by channel.
    async fn drain(ws: &mut Client) -> BTreeMap<u8, Vec<u8>> {
        let mut got: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        while let Some(m) = ws.next().await {
            match m.unwrap() {
                tungstenite::Message::Binary(b) => {
                    got.entry(b[0]).or_default().extend_from_slice(&b[1..])
                }
                tungstenite::Message::Close(f) => {
                    assert_eq!(f.map(|f| u16::from(f.code)), Some(1000));
                    break;
                }
                _ => {}
            }
        }
        got
    }

    fn binary(channel: u8, data: &[u8]) -> tungstenite::Message {
        tungstenite::Message::Binary([&[channel], data].concat().into())
    }

    #[tokio::test]
    async fn v5_closes_stdin_and_reports_success() {
        let (addr, _rt) = agent().await;
        let (mut ws, proto) = connect(
            addr,
            "command=cat&stdin=true&stdout=true",
            &format!("{V5}, {V4}"),
        )
        .await
        .unwrap();
        assert_eq!(proto, V5);
        ws.send(binary(STDIN, b"hello ")).await.unwrap();
        ws.send(binary(STDIN, b"world")).await.unwrap();
        ws.send(binary(CLOSE, &[STDIN])).await.unwrap();
        let got = drain(&mut ws).await;
        assert_eq!(got[&STDOUT], b"hello world");
        let st: serde_json::Value = serde_json::from_slice(&got[&ERROR]).unwrap();
        assert_eq!(st["status"], "Success");
    }

    /// Input and output flow at once: a command that echoes more than any buffer holds while
    /// input keeps arriving must not wedge the session.
    #[tokio::test]
    async fn input_and_output_flow_at_once() {
        let (addr, _rt) = agent().await;
        let (ws, _) = connect(addr, "command=cat&stdin=true&stdout=true", V5)
            .await
            .unwrap();
        let (mut tx, mut rx) = ws.split();
        let chunk = vec![b'x'; 16 * 1024];
        let send = async move {
            for _ in 0..256 {
                tx.send(binary(STDIN, &chunk)).await.unwrap();
            }
            tx.send(binary(CLOSE, &[STDIN])).await.unwrap();
            tx
        };
        let recv = async move {
            let mut n = 0;
            let mut status = None;
            while let Some(m) = rx.next().await {
                match m.unwrap() {
                    tungstenite::Message::Binary(b) if b[0] == STDOUT => n += b.len() - 1,
                    tungstenite::Message::Binary(b) if b[0] == ERROR => {
                        status = Some(serde_json::from_slice::<serde_json::Value>(&b[1..]).unwrap())
                    }
                    tungstenite::Message::Close(_) => break,
                    _ => {}
                }
            }
            (n, status)
        };
        let (_, (n, status)) = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            futures_util::future::join(send, recv),
        )
        .await
        .expect("the session does not wedge");
        assert_eq!(n, 256 * 16 * 1024);
        assert_eq!(status.unwrap()["status"], "Success");
    }

    #[tokio::test]
    async fn v4_streams_resizes_and_exit_codes() {
        let (addr, rt) = agent().await;
        rt.set_exec_exit("app", 7);
        let q = "command=sh&command=-c&command=exit%207&stdout=true&stderr=true";
        let (mut ws, proto) = connect(addr, q, V4).await.unwrap();
        assert_eq!(proto, V4);
        let got = drain(&mut ws).await;
        assert_eq!(got[&STDOUT], b"sh -c exit 7\n");
        assert_eq!(got[&STDERR], b"err\n");
        let st: serde_json::Value = serde_json::from_slice(&got[&ERROR]).unwrap();
        assert_eq!(st["details"]["causes"][0]["message"], "7");

        // A terminal: the size the client sends reaches the runtime.
        let (mut ws, _) = connect(addr, "command=sh&stdout=true&tty=true", V4)
            .await
            .unwrap();
        ws.send(binary(RESIZE, br#"{"Width":120,"Height":40}"#))
            .await
            .unwrap();
        let got = drain(&mut ws).await;
        assert_eq!(got[&STDOUT], b"sh\nsize 120x40\n");
        assert!(
            !got.contains_key(&STDERR),
            "a terminal has no separate stderr"
        );
    }

    /// Attach is the same channel protocol on the container's own stdio (the fake's echoes).
    #[tokio::test]
    async fn attach_over_a_websocket_talks_to_the_containers_stdio() {
        let (addr, _rt) = agent().await;
        let q = "attach/default/p/app?stdin=true&stdout=true&stderr=true";
        let (mut ws, proto) = open(addr, q, V5).await.unwrap();
        assert_eq!(proto, V5);
        ws.send(binary(STDIN, b"echo hi\n")).await.unwrap();
        ws.send(binary(CLOSE, &[STDIN])).await.unwrap();
        let got = drain(&mut ws).await;
        assert_eq!(got[&STDOUT], b"echo hi\n");
        let st: serde_json::Value = serde_json::from_slice(&got[&ERROR]).unwrap();
        assert_eq!(st["status"], "Success");
        let refused = |r: Result<(Client, String), tungstenite::Error>| match r {
            Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            _ => panic!("expected a refusal"),
        };
        // SPDY goes to the runtime's streaming server, which the fake (like the process
        // runtime) has not: a clear refusal.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = "POST /attach/default/p/app?stdout=true HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
            .await
            .unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut answer)
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains("streaming server"),
            "{answer}"
        );
        assert_eq!(
            refused(open(addr, "attach/default/p/stopped?stdout=true", V5).await),
            400
        );
        assert_eq!(
            refused(
                open(
                    addr,
                    "attach/default/p/app?stdout=true",
                    "base64.channel.k8s.io"
                )
                .await
            ),
            400
        );
    }

    #[tokio::test]
    async fn refusals_come_before_the_upgrade() {
        let (addr, _rt) = agent().await;
        let status_of = |r: Result<(Client, String), tungstenite::Error>| match r {
            Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            other => panic!("expected an HTTP refusal, got {:?}", other.map(|(_, p)| p)),
        };
        assert_eq!(
            status_of(connect(addr, "command=ls&stdout=true", "channel.k8s.io").await),
            400
        );
        assert_eq!(status_of(connect(addr, "stdout=true", V5).await), 400);
        let q = "command=ls&stdout=true";
        assert_eq!(
            status_of(connect_to(addr, "p/stopped", q, V5).await),
            400,
            "not running"
        );
        assert_eq!(
            status_of(connect_to(addr, "other/app", q, V5).await),
            404,
            "no such pod"
        );
    }

    #[test]
    fn the_query_is_read_as_kubelet_reads_it() {
        let r = parse("command=sh&command=-c&command=echo%20hi%3B+exit%203&container=app&stdin=true&stdout=true&stderr=false&tty=1").unwrap();
        assert_eq!(r.command, ["sh", "-c", "echo hi; exit 3"]);
        assert!(r.stdin && r.stdout && !r.stderr && r.tty);
        assert!(
            parse("stdout=true")
                .unwrap_err()
                .contains("at least one command")
        );
        assert!(
            parse("command=ls")
                .unwrap_err()
                .contains("at least 1 of stdin")
        );
    }

    #[test]
    fn the_protocol_is_the_clients_first_one_we_speak() {
        let mut h = HeaderMap::new();
        h.append(
            "sec-websocket-protocol",
            "v6.channel.k8s.io, v4.channel.k8s.io".parse().unwrap(),
        );
        h.append("sec-websocket-protocol", V5.parse().unwrap());
        assert_eq!(protocol(&h), Some(V4));
        let mut h = HeaderMap::new();
        h.append(
            "sec-websocket-protocol",
            "SPDY/3.1+portforward.k8s.io, channel.k8s.io"
                .parse()
                .unwrap(),
        );
        assert_eq!(protocol(&h), None);
    }

    #[test]
    fn exit_codes_become_the_status_kubectl_reads() {
        let cmd = ["sh".to_string(), "-c".into(), "exit 3".into()];
        assert_eq!(exit_status(&cmd, &Ok(0))["status"], "Success");
        let st = exit_status(&cmd, &Ok(3));
        assert_eq!(st["reason"], "NonZeroExitCode");
        assert_eq!(st["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(st["details"]["causes"][0]["message"], "3");
        let st = exit_status(&cmd, &Err("executable file not found".into()));
        assert_eq!(
            (st["reason"].as_str(), st["code"].as_i64()),
            (Some("InternalError"), Some(500))
        );
    }
}
