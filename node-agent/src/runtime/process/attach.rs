//! `kubectl attach` on the process runtime: the shim keeps the container's stdio and serves it
//! on `attach.sock` in the container's directory — what containerd's CRI plugin does with the
//! container's FIFOs. One connection per stream; its first byte names it:
//!
//! - `0` stdin: bytes to the container's stdin. Its end closes the container's stdin when the
//!   spec says `stdinOnce` and there is no terminal (as containerd does); otherwise the stdin
//!   stays open for the next attach.
//! - `1` stdout, `2` stderr: the container's output from now on (on a terminal all of it is
//!   stdout), after one acknowledgement byte (`+`) written once the reader is registered; the
//!   client opens stdin only after reading it, so no reply to its input is lost. A reader that
//!   does not keep up within [`SLOW`] is let go, so that it cannot stall the container.
//! - `4` resizes: JSON lines `{"Width":…,"Height":…}`, applied to the terminal.
//! - `w` wait: nothing is written; it ends when the container does.
//!
//! Every connection ends when the shim does (it outlives the container by the output drain).

use std::io::{BufRead, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::exec::{ExecIo, ExecProcess, ExecRequest, ExecSession, TermSize};

pub(super) const SOCKET: &str = "attach.sock";
/// How long a write to an attached reader may block the container's output.
const SLOW: Duration = Duration::from_secs(1);
const STDIN: u8 = b'0';
const STDOUT: u8 = b'1';
const STDERR: u8 = b'2';
const RESIZE: u8 = b'4';
const WAIT: u8 = b'w';
/// What the shim writes on an output connection once it is registered.
const ACK: u8 = b'+';
/// How long a client waits for that acknowledgement (a shim from before it sends none).
const ACK_WAIT: Duration = Duration::from_secs(2);

/// The shim's side: the container's stdin (or terminal) and the attached readers.
pub(super) struct Server {
    stdin: Mutex<Option<Box<dyn Write + Send>>>,
    stdin_once: bool,
    terminal: Option<std::fs::File>,
    readers: [Mutex<Vec<UnixStream>>; 2],
}

impl Server {
    /// `stdin`: the container's input (a pipe, or the terminal's master), None when the spec
    /// has no stdin. `terminal`: the master, for resizes.
    pub(super) fn new(
        stdin: Option<Box<dyn Write + Send>>,
        stdin_once: bool,
        terminal: Option<std::fs::File>,
    ) -> Arc<Server> {
        Arc::new(Server {
            stdin: Mutex::new(stdin),
            stdin_once,
            terminal,
            readers: Default::default(),
        })
    }

    /// Listens on `dir/attach.sock`, serving each connection on a thread of its own.
    pub(super) fn listen(self: &Arc<Self>, dir: &Path) -> std::io::Result<()> {
        let path = dir.join(SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let me = self.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let me = me.clone();
                std::thread::spawn(move || me.serve(conn));
            }
        });
        Ok(())
    }

    fn serve(&self, mut conn: UnixStream) {
        let mut kind = [0u8];
        if conn.read_exact(&mut kind).is_err() {
            return;
        }
        match kind[0] {
            STDIN => self.feed(conn),
            STDOUT | STDERR => {
                let _ = conn.set_write_timeout(Some(SLOW));
                let i = usize::from(kind[0] == STDERR && self.terminal.is_none());
                if let Ok(mut r) = self.readers[i].lock() {
                    // The acknowledgement, under the readers' lock: it precedes any output,
                    // and once the client reads it, no output can miss this reader.
                    if conn.write_all(&[ACK]).is_ok() {
                        r.push(conn);
                    }
                }
            }
            RESIZE => {
                for line in std::io::BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    if let (Some(t), Ok(sz)) = (&self.terminal, serde_json::from_str(&line)) {
                        let sz: TermSize = sz;
                        let _ = rustix::termios::tcsetwinsize(
                            t,
                            rustix::termios::Winsize {
                                ws_row: sz.height,
                                ws_col: sz.width,
                                ws_xpixel: 0,
                                ws_ypixel: 0,
                            },
                        );
                    }
                }
            }
            // Held until the shim exits.
            WAIT => {
                let _ = conn.read(&mut [0u8; 1]);
            }
            _ => {}
        }
    }

    /// Copies one client's input into the container's stdin, then (stdinOnce) closes it.
    fn feed(&self, mut conn: UnixStream) {
        let mut buf = [0u8; 32 * 1024];
        loop {
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let Ok(mut stdin) = self.stdin.lock() else {
                return;
            };
            let Some(w) = stdin.as_mut() else { return };
            if w.write_all(&buf[..n]).and_then(|()| w.flush()).is_err() {
                *stdin = None;
                return;
            }
        }
        // On a terminal the input stays open whatever stdinOnce says, as containerd does
        // (kubernetes#29448): a terminal cannot be half-closed.
        if self.stdin_once
            && self.terminal.is_none()
            && let Ok(mut stdin) = self.stdin.lock()
        {
            *stdin = None;
        }
    }

    /// Output of stream `i` (0 stdout, 1 stderr) for the attached readers; a reader that
    /// fails or is too slow is dropped.
    pub(super) fn output(&self, i: usize, data: &[u8]) {
        if let Ok(mut readers) = self.readers[i].lock()
            && !readers.is_empty()
        {
            readers.retain_mut(|r| r.write_all(data).is_ok());
        }
    }
}

/// The agent's side: a session on the shim's socket in `dir` with the streams `req` names
/// (its `tty` is the container's).
pub(super) async fn attach(dir: &Path, req: &ExecRequest) -> std::io::Result<ExecSession> {
    let path = dir.join(SOCKET);
    let open = |kind: u8| {
        let path = path.clone();
        async move {
            let mut s = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("the shim's attach socket {}: {e}", path.display()),
                )
            })?;
            tokio::io::AsyncWriteExt::write_all(&mut s, &[kind]).await?;
            Ok::<_, std::io::Error>(s)
        }
    };
    // An output connection, once the shim says it is registered: what the container writes
    // after that reaches it.
    let output = |kind: u8| {
        let opened = open(kind);
        async move {
            let mut s = opened.await?;
            let mut ack = [0u8];
            match tokio::time::timeout(
                ACK_WAIT,
                tokio::io::AsyncReadExt::read_exact(&mut s, &mut ack),
            )
            .await
            {
                Ok(Ok(_)) if ack[0] == ACK => {}
                Ok(Ok(_)) => {
                    return Err(std::io::Error::other(
                        "the shim's attach socket answered out of protocol",
                    ));
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {} // a shim from before acknowledgements: go on
            }
            Ok::<_, std::io::Error>(s)
        }
    };
    // The wait connection first: the container may not be running any more. Then the outputs,
    // and the input last: a reply to the first input is never written before its reader is
    // there.
    let wait = open(WAIT).await?;
    let mut io = ExecIo::default();
    if req.stdout {
        io.stdout = Some(Box::new(output(STDOUT).await?));
    }
    if req.stderr && !req.tty {
        io.stderr = Some(Box::new(output(STDERR).await?));
    }
    if req.stdin {
        io.stdin = Some(Box::new(open(STDIN).await?));
    }
    let resize = if req.tty {
        Some(open(RESIZE).await?)
    } else {
        None
    };
    Ok(crate::runtime::exec::start(
        req,
        io,
        Attached {
            wait: Some(wait),
            resize,
        },
    ))
}

/// An attached session's control: resizes go to the shim; the end is the container's (or the
/// client's: detaching leaves the container running).
struct Attached {
    wait: Option<tokio::net::UnixStream>,
    resize: Option<tokio::net::UnixStream>,
}

impl ExecProcess for Attached {
    async fn resize(&mut self, size: TermSize) {
        if let (Some(r), Ok(mut line)) = (&mut self.resize, serde_json::to_vec(&size)) {
            line.push(b'\n');
            let _ = tokio::io::AsyncWriteExt::write_all(r, &line).await;
        }
    }

    async fn kill(&mut self) {
        // A detach: the container goes on.
        self.wait = None;
    }

    async fn wait(&mut self) -> Result<i32, String> {
        if let Some(w) = &mut self.wait {
            let _ = tokio::io::AsyncReadExt::read(w, &mut [0u8; 1]).await;
        }
        self.wait = None;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shim's server over a pipe for stdin, on a temporary directory.
    fn shim(stdin_once: bool) -> (tempfile::TempDir, Arc<Server>, std::io::PipeReader) {
        let dir = tempfile::tempdir().unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let s = Server::new(Some(Box::new(w)), stdin_once, None);
        s.listen(dir.path()).unwrap();
        (dir, s, r)
    }

    fn request(stdin: bool) -> ExecRequest {
        ExecRequest {
            command: vec![],
            stdin,
            stdout: true,
            stderr: true,
            tty: false,
        }
    }

    #[tokio::test]
    async fn output_reaches_attached_readers_and_stdin_once_closes_the_containers_input() {
        let (dir, server, mut container_stdin) = shim(true);
        let mut s = attach(dir.path(), &request(true)).await.unwrap();
        // The shim acknowledged both readers before attach returned: output from now on
        // reaches them, with no wait (the reply to a first input is never lost).
        assert!(server.readers.iter().all(|r| r.lock().unwrap().len() == 1));
        server.output(0, b"out\n");
        server.output(1, b"err\n");
        assert_eq!(
            &s.stdout.as_mut().unwrap().recv().await.unwrap()[..],
            b"out\n"
        );
        assert_eq!(
            &s.stderr.as_mut().unwrap().recv().await.unwrap()[..],
            b"err\n"
        );
        let tx = s.stdin.take().unwrap();
        tx.send("echo hi\n".into()).await.unwrap();
        drop(tx);
        let got = tokio::task::spawn_blocking(move || {
            let mut got = String::new();
            container_stdin.read_to_string(&mut got).unwrap();
            got
        })
        .await
        .unwrap();
        assert_eq!(got, "echo hi\n", "stdin ends after the input (stdinOnce)");
        drop(server);
    }

    #[tokio::test]
    async fn without_stdin_once_the_input_stays_open_for_the_next_attach() {
        let (dir, _server, mut container_stdin) = shim(false);
        let mut s = attach(dir.path(), &request(true)).await.unwrap();
        s.stdin.take().unwrap().send("a".into()).await.unwrap();
        drop(s);
        // The first session's input arrives (its connection is pumped on its own: only what
        // reached the container is ordered before the next session's).
        let (first, mut container_stdin) = tokio::task::spawn_blocking(move || {
            let mut got = [0u8; 1];
            container_stdin.read_exact(&mut got).unwrap();
            (got, container_stdin)
        })
        .await
        .unwrap();
        assert_eq!(&first, b"a");
        let mut s = attach(dir.path(), &request(true)).await.unwrap();
        s.stdin.take().unwrap().send("b".into()).await.unwrap();
        let got = tokio::task::spawn_blocking(move || {
            let mut got = [0u8; 1];
            container_stdin.read_exact(&mut got).unwrap();
            got
        })
        .await
        .unwrap();
        assert_eq!(&got, b"b", "the input stayed open for the next attach");
    }
}
