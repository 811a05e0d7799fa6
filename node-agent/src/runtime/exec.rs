//! An interactive exec (`kubectl exec`), the part every runtime shares — what kubelet's
//! remotecommand server and containerd's CRI streaming (pkg/cri/streaming, cio) do between a
//! client's streams and a process: the runtime starts the command and describes it once, as
//! its byte streams ([`ExecIo`]: pipes or a pty for the process runtime, FIFOs for containerd,
//! in-memory pipes for the fake) and its control ([`ExecProcess`]: resize, close stdin, kill,
//! wait); [`start`] turns that into an [`ExecSession`] of channels and runs it — the pumps,
//! the input, the resizes, the kill when the session goes away, the exit once its output is
//! out. The agent's endpoint (exec_ws) speaks the WebSocket side.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// A started command's byte streams, from the runtime's side: what to write its input to and
/// read its output from. A stream the request did not ask for is ignored (and with a
/// terminal, stderr is part of stdout).
#[derive(Default)]
pub struct ExecIo {
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
}

impl std::fmt::Debug for ExecIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .finish()
    }
}

/// How a runtime controls one started command. One task owns it (see [`start`]): the kill
/// therefore always comes before the exit has been collected (a process runtime's pid cannot
/// have been reused yet).
pub trait ExecProcess: Send + 'static {
    /// The client's terminal changed size.
    fn resize(&mut self, size: TermSize) -> impl Future<Output = ()> + Send;
    /// Everything the client sent is written (its stdin ended). Nothing to do where dropping
    /// the writer closes the command's input.
    fn close_stdin(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// The session went away while the command runs: kill it.
    fn kill(&mut self) -> impl Future<Output = ()> + Send;
    /// The command's exit code, or why it cannot be known. Cancel-safe: a resize or the end of
    /// input interrupts it, and it is called again.
    fn wait(&mut self) -> impl Future<Output = Result<i32, String>> + Send;
    /// After the exit, before its last output is drained. True when all of its output is in
    /// the streams by now (containerd's FIFOs, which never end on their own: what is left to
    /// read is read without waiting); false where the streams end by themselves (pipes, a
    /// pty), which are read until then, within [`DRAIN`].
    fn exited(&mut self) -> impl Future<Output = bool> + Send {
        async { false }
    }
}

/// Runs `process`, started for `req` with `io`, as a session: its input fed from the
/// session's stdin, its output pumped into the session's stdout and stderr, resizes passed on,
/// the command killed if the session goes away first, then the exit code once its output is
/// out (within [`DRAIN`]).
pub fn start(req: &ExecRequest, io: ExecIo, mut process: impl ExecProcess) -> ExecSession {
    let (session, ends) = session(req);
    let RuntimeEnds {
        stdin,
        stdout,
        stderr,
        mut resize,
        exit,
    } = ends;
    let (done_tx, done) = watch::channel(false);
    let mut pumps = tokio::task::JoinSet::new();
    for (r, tx) in [(io.stdout, stdout), (io.stderr, stderr)] {
        if let (Some(r), Some(tx)) = (r, tx) {
            pumps.spawn(pump(r, tx, done.clone()));
        }
    }
    let mut fed = match (io.stdin, stdin) {
        (Some(w), Some(rx)) => Some(tokio::spawn(feed(rx, w))),
        _ => None,
    };
    tokio::spawn(async move {
        let mut gone = false;
        let code = loop {
            tokio::select! {
                code = process.wait() => break code,
                () = finished(&mut fed), if fed.is_some() => {
                    fed = None;
                    process.close_stdin().await;
                }
                sz = resize.recv(), if !gone => match sz {
                    Some(sz) => process.resize(sz).await,
                    None => {
                        gone = true;
                        process.kill().await;
                    }
                },
            }
        };
        if process.exited().await {
            let _ = done_tx.send(true);
        }
        // What it wrote before exiting still goes out, within a bound.
        let _ =
            tokio::time::timeout(DRAIN, async { while pumps.join_next().await.is_some() {} }).await;
        pumps.abort_all();
        let _ = exit.send(code);
    });
    session
}

/// Waits for the input task, if there is one (else forever).
async fn finished(task: &mut Option<tokio::task::JoinHandle<()>>) {
    match task {
        Some(t) => {
            let _ = t.await;
        }
        None => std::future::pending().await,
    }
}

/// The runtime's ends of a session.
pub(crate) struct RuntimeEnds {
    pub(crate) stdin: Option<mpsc::Receiver<Bytes>>,
    pub(crate) stdout: Option<mpsc::Sender<Bytes>>,
    pub(crate) stderr: Option<mpsc::Sender<Bytes>>,
    pub(crate) resize: mpsc::Receiver<TermSize>,
    pub(crate) exit: oneshot::Sender<Result<i32, String>>,
}

/// A session for `req` (stderr is folded into the terminal when there is one) and the
/// runtime's ends of it.
pub(crate) fn session(req: &ExecRequest) -> (ExecSession, RuntimeEnds) {
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
/// closes: that is its end of file), or the receiver going away — or until `done` says all
/// the output is in `r`, then what can be read without waiting.
async fn pump(
    mut r: impl AsyncRead + Unpin,
    tx: mpsc::Sender<Bytes>,
    mut done: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut may_be_done = true;
    loop {
        tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                },
            },
            changed = done.changed(), if may_be_done => match changed {
                Ok(()) => break,
                // Never said: read to the end.
                Err(_) => may_be_done = false,
            },
        }
    }
    while let Some(Ok(n)) = r.read(&mut buf).now_or_never() {
        if n == 0 || tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
            return;
        }
    }
}

/// Copies `rx` into `w` until the sender closes (end of input) or `w` fails.
async fn feed(mut rx: mpsc::Receiver<Bytes>, mut w: impl AsyncWrite + Unpin) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A command that exits when told to (`exit`), and tells what it was asked to do.
    struct Scripted {
        exit: Option<oneshot::Receiver<i32>>,
        said: mpsc::UnboundedSender<String>,
        all_output_in: bool,
    }

    impl ExecProcess for Scripted {
        async fn resize(&mut self, size: TermSize) {
            let _ = self
                .said
                .send(format!("resize {}x{}", size.width, size.height));
        }
        async fn close_stdin(&mut self) {
            let _ = self.said.send("close stdin".into());
        }
        async fn kill(&mut self) {
            let _ = self.said.send("kill".into());
            self.exit = None;
        }
        async fn wait(&mut self) -> Result<i32, String> {
            match self.exit.as_mut() {
                Some(rx) => rx.await.map_err(|_| "gone".to_string()),
                None => Ok(137),
            }
        }
        async fn exited(&mut self) -> bool {
            self.all_output_in
        }
    }

    fn scripted(
        all_output_in: bool,
    ) -> (
        Scripted,
        oneshot::Sender<i32>,
        mpsc::UnboundedReceiver<String>,
    ) {
        let (exit_tx, exit_rx) = oneshot::channel();
        let (said_tx, said) = mpsc::unbounded_channel();
        let p = Scripted {
            exit: Some(exit_rx),
            said: said_tx,
            all_output_in,
        };
        (p, exit_tx, said)
    }

    fn request(stdin: bool, tty: bool) -> ExecRequest {
        ExecRequest {
            command: vec!["sh".into()],
            stdin,
            stdout: true,
            stderr: true,
            tty,
        }
    }

    #[tokio::test]
    async fn input_resizes_and_the_end_of_input_reach_the_command() {
        let (p, exit, mut said) = scripted(false);
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let io = ExecIo {
            stdin: Some(Box::new(ours)),
            ..Default::default()
        };
        let mut s = start(&request(true, true), io, p);
        assert!(s.stderr.is_none(), "a terminal has no separate stderr");
        s.stdin.as_ref().unwrap().send("hi".into()).await.unwrap();
        s.stdin = None;
        let mut got = String::new();
        theirs.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hi");
        assert_eq!(said.recv().await.unwrap(), "close stdin");
        s.resize
            .send(TermSize {
                width: 80,
                height: 24,
            })
            .await
            .unwrap();
        assert_eq!(said.recv().await.unwrap(), "resize 80x24");
        exit.send(4).unwrap();
        assert_eq!(s.exit.await.unwrap(), Ok(4));
    }

    #[tokio::test]
    async fn a_session_that_goes_away_kills_the_command() {
        let (p, _exit, mut said) = scripted(false);
        let s = start(&request(false, false), ExecIo::default(), p);
        drop(s);
        assert_eq!(said.recv().await.unwrap(), "kill");
    }

    #[tokio::test]
    async fn output_in_streams_that_never_end_is_read_once_the_runtime_says_it_is_all_in() {
        let (p, exit, _said) = scripted(true);
        // Held open, like containerd's FIFOs: no end of file ever comes.
        let (mut writer, reader) = tokio::io::duplex(1024);
        let io = ExecIo {
            stdout: Some(Box::new(reader)),
            ..Default::default()
        };
        let mut s = start(&request(false, false), io, p);
        writer.write_all(b"last words").await.unwrap();
        let mut stdout = s.stdout.take().unwrap();
        assert_eq!(&stdout.recv().await.unwrap()[..], b"last words");
        exit.send(0).unwrap();
        let t = tokio::time::Instant::now();
        assert_eq!(s.exit.await.unwrap(), Ok(0));
        assert!(t.elapsed() < DRAIN, "not held up until the drain bound");
        assert!(stdout.recv().await.is_none(), "stdout ends");
        drop(writer);
    }
}
