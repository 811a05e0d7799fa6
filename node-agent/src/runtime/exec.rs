//! An interactive exec (`kubectl exec`): the runtime starts the command and hands back an
//! [`ExecSession`] of channels, whatever carries the bytes underneath (pipes or a pty for the
//! process runtime, FIFOs for containerd). The agent's endpoint speaks the WebSocket side.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// What `kubectl exec` asks for (pods/exec's query).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A terminal size, as kubectl sends it on the resize channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// A running exec. Closing `stdin` (dropping it) is end of input; `stdout`/`stderr` end when
/// the command's output does; `exit` tells its exit code (or why it could not run). Dropping
/// `resize` — the session going away — kills the command if it still runs.
#[derive(Debug)]
pub struct ExecSession {
    pub stdin: Option<mpsc::Sender<Bytes>>,
    pub stdout: Option<mpsc::Receiver<Bytes>>,
    pub stderr: Option<mpsc::Receiver<Bytes>>,
    pub resize: mpsc::Sender<TermSize>,
    pub exit: oneshot::Receiver<Result<i32, String>>,
}

/// The runtime's ends of a session.
#[derive(Debug)]
pub struct RuntimeEnds {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: mpsc::Receiver<TermSize>,
    pub exit: oneshot::Sender<Result<i32, String>>,
}

/// A session for `req` (stderr is folded into the terminal when there is one) and the
/// runtime's ends of it.
pub fn session(req: &ExecRequest) -> (ExecSession, RuntimeEnds) {
    fn pair(on: bool) -> (Option<mpsc::Sender<Bytes>>, Option<mpsc::Receiver<Bytes>>) {
        if !on {
            return (None, None);
        }
        let (tx, rx) = mpsc::channel(16);
        (Some(tx), Some(rx))
    }
    let (in_tx, in_rx) = pair(req.stdin);
    let (out_tx, out_rx) = pair(req.stdout);
    let (err_tx, err_rx) = pair(req.stderr && !req.tty);
    let (resize_tx, resize_rx) = mpsc::channel(4);
    let (exit_tx, exit_rx) = oneshot::channel();
    (
        ExecSession {
            stdin: in_tx,
            stdout: out_rx,
            stderr: err_rx,
            resize: resize_tx,
            exit: exit_rx,
        },
        RuntimeEnds {
            stdin: in_rx,
            stdout: out_tx,
            stderr: err_tx,
            resize: resize_rx,
            exit: exit_tx,
        },
    )
}

/// How long output may still arrive after the command exited (a background child can hold
/// the stream open forever; kubelet's CRI streaming has the same kind of bound).
pub const DRAIN: Duration = Duration::from_secs(2);

/// Copies `r` into `tx` until end of file, an error (a pty reports EIO once its last slave
/// closes: that is its end of file), or the receiver going away.
pub async fn pump(mut r: impl AsyncRead + Unpin, tx: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Copies `rx` into `w` until the sender closes (end of input) or `w` fails.
pub async fn feed(mut rx: mpsc::Receiver<Bytes>, mut w: impl AsyncWrite + Unpin) {
    while let Some(b) = rx.recv().await {
        if w.write_all(&b).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// The Status kubectl reads from the error channel: Success, or the exit code (kubectl exits
/// with it) — as kubelet's remotecommand writes it.
pub fn exit_status(command: &[String], result: &Result<i32, String>) -> serde_json::Value {
    use serde_json::json;
    match result {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                command.join(" ")
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!("error executing command {command:?}: {e}"),
            "reason": "InternalError", "code": 500,
            "details": {"causes": [{"message": e}]},
        }),
    }
}
