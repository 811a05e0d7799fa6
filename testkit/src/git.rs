//! Real git repositories for the GitOps tests: a working repository in a temporary directory
//! (its `file://` URL is the remote), `git daemon` serving it over git://, and a smart-HTTP
//! server with basic authentication that runs git's own `git http-backend` (CGI) for each
//! request — a private repository without a hosting service. Every process is stopped by its
//! pid when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;

/// A working repository on branch `main`.
#[derive(Debug)]
pub struct GitRepo {
    dir: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl GitRepo {
    pub fn new() -> Result<GitRepo> {
        let dir = crate::temp_dir("capstan-git-")?;
        git(dir.path(), &["init", "--quiet", "--initial-branch", "main"])?;
        git(dir.path(), &["config", "user.name", "Capstan Test"])?;
        git(
            dir.path(),
            &["config", "user.email", "test@capstan.invalid"],
        )?;
        Ok(GitRepo { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    /// Writes a file (directories made as needed).
    pub fn write(&self, path: &str, text: &str) -> Result<()> {
        let p = self.dir.path().join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, text)?;
        Ok(())
    }

    pub fn remove(&self, path: &str) -> Result<()> {
        git(self.dir.path(), &["rm", "--quiet", "-r", path]).map(drop)
    }

    /// Commits everything; returns the commit's SHA.
    pub fn commit(&self, message: &str) -> Result<String> {
        git(self.dir.path(), &["add", "--all"])?;
        git(
            self.dir.path(),
            &["commit", "--quiet", "--allow-empty", "-m", message],
        )?;
        self.head()
    }

    pub fn head(&self) -> Result<String> {
        git(self.dir.path(), &["rev-parse", "HEAD"])
    }

    pub fn tag(&self, name: &str) -> Result<()> {
        git(self.dir.path(), &["tag", name]).map(drop)
    }

    /// Moves `main` back to `commit`, dropping what came after (a force-push's effect).
    pub fn reset_hard(&self, commit: &str) -> Result<()> {
        git(self.dir.path(), &["reset", "--quiet", "--hard", commit]).map(drop)
    }

    /// A bare clone in `parent` named `name.git` (what the servers below serve), kept in sync
    /// by [`GitRepo::push_to`].
    pub fn bare_clone(&self, parent: &Path, name: &str) -> Result<PathBuf> {
        let target = parent.join(format!("{name}.git"));
        let out = Command::new("git")
            .args(["clone", "--quiet", "--bare"])
            .arg(self.dir.path())
            .arg(&target)
            .output()?;
        if !out.status.success() {
            bail!("git clone --bare: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(target)
    }

    /// Pushes every branch and tag to a bare repository, forced.
    pub fn push_to(&self, bare: &Path) -> Result<()> {
        let url = bare.display().to_string();
        git(
            self.dir.path(),
            &[
                "push",
                "--quiet",
                "--force",
                &url,
                "refs/heads/*:refs/heads/*",
            ],
        )?;
        git(
            self.dir.path(),
            &[
                "push",
                "--quiet",
                "--force",
                &url,
                "refs/tags/*:refs/tags/*",
            ],
        )
        .map(drop)
    }
}

/// `git daemon` serving every repository under a directory, read-only, on a free port.
#[derive(Debug)]
pub struct GitDaemon {
    child: Child,
    pub port: u16,
    addr: String,
}

impl GitDaemon {
    pub fn start(base: &Path) -> Result<GitDaemon> {
        Self::start_on(base, "127.0.0.1")
    }

    /// As [`GitDaemon::start`], listening on `addr` (an address of the test's own, for
    /// clients in pods).
    pub fn start_on(base: &Path, addr: &str) -> Result<GitDaemon> {
        let port = crate::free_port()?;
        // `git daemon` runs git-daemon as a child of its own, which a kill of `git` would
        // leave behind: the dashed program is started directly, so its pid is the server's.
        let exec_path = Command::new("git")
            .arg("--exec-path")
            .output()
            .context("git --exec-path")?;
        let exec_path = String::from_utf8_lossy(&exec_path.stdout)
            .trim()
            .to_string();
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args(["--reuseaddr", "--export-all"])
            .arg(format!("--listen={addr}"))
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting git daemon")?;
        let d = GitDaemon {
            child,
            port,
            addr: addr.to_string(),
        };
        crate::eventually(Duration::from_secs(10), "git daemon listening", || {
            TcpStream::connect((addr, port)).is_ok()
        })?;
        Ok(d)
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://{}:{}/{name}.git", self.addr, self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        crate::signal(self.child.id(), "KILL");
        let _ = self.child.wait();
    }
}

/// Smart HTTP with basic authentication in front of `git http-backend`.
#[derive(Debug)]
pub struct GitHttp {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GitHttp {
    /// Serves the repositories under `base` to `user`:`password` (basic authentication), or to
    /// `Bearer password` (the password as a token), only.
    pub fn start(base: &Path, user: &str, password: &str) -> Result<GitHttp> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let expected = [
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            format!("Bearer {password}"),
        ];
        let (base, stopping) = (base.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (base, expected) = (base.clone(), expected.clone());
                        std::thread::spawn(move || {
                            let _ = serve(s, &base, &expected);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(GitHttp {
            port,
            stop,
            thread: Some(thread),
        })
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}.git", self.port)
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request: checked, handed to `git http-backend`, its CGI answer relayed.
fn serve(stream: TcpStream, base: &Path, expected: &[String; 2]) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end().to_string();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if !header("authorization").is_some_and(|a| expected.contains(&a)) {
        out.write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    let length: usize = header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cgi = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", base)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", &method)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", length.to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            header("content-encoding").unwrap_or_default(),
        )
        .env("GIT_PROTOCOL", header("git-protocol").unwrap_or_default())
        .env("REMOTE_USER", "test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = cgi.stdin.take().context("stdin")?;
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut answer = Vec::new();
    cgi.stdout
        .take()
        .context("stdout")?
        .read_to_end(&mut answer)?;
    let _ = feeder.join();
    cgi.wait()?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| answer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .context("CGI answer without headers")?;
    let head = String::from_utf8_lossy(&answer[..split.0]).to_string();
    let content = &answer[split.0 + split.1..];
    let mut status = "200 OK".to_string();
    let mut response = Vec::new();
    for h in head.lines() {
        match h.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some(_) => response.push(h.to_string()),
            None => {}
        }
    }
    write!(out, "HTTP/1.1 {status}\r\n")?;
    for h in response {
        write!(out, "{h}\r\n")?;
    }
    write!(
        out,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    )?;
    out.write_all(content)?;
    Ok(())
}

/// `sshd` (Debian's openssh-server) on a free loopback port, letting in the current user with
/// a key of its own: git over ssh:// with an identity and known_hosts, as a hosting service
/// would serve it. Host and user keys are made for each server.
#[derive(Debug)]
pub struct GitSsh {
    child: Child,
    pub port: u16,
    user: String,
    /// The private key a client authenticates with (OpenSSH format).
    pub identity: String,
    /// A known_hosts line for this server's host key.
    pub known_hosts: String,
    /// /run/sshd, when this server had to make it (removed again on drop).
    made_run_dir: bool,
    _dir: tempfile::TempDir,
}

const SSHD: &str = "/usr/sbin/sshd";

impl GitSsh {
    /// Whether sshd and ssh-keygen are installed.
    pub fn available() -> bool {
        Path::new(SSHD).exists() && Command::new("ssh-keygen").arg("-?").output().is_ok()
    }

    pub fn start() -> Result<GitSsh> {
        let dir = crate::temp_dir("capstan-sshd-")?;
        let d = dir.path();
        for key in ["host_key", "client_key"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "capstan-test", "-f"])
                .arg(d.join(key))
                .output()?;
            if !out.status.success() {
                bail!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))?;
        let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
            .trim()
            .to_string();
        let port = crate::free_port()?;
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\nPidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {dir}/authorized_keys\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nAllowUsers {user}\n\
                 LogLevel ERROR\n",
                dir = d.display()
            ),
        )?;
        let run_dir = Path::new("/run/sshd");
        let made_run_dir = !run_dir.exists() && std::fs::create_dir(run_dir).is_ok();
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(d.join("sshd.log"))?))
            .spawn()
            .context("starting sshd")?;
        let host = std::fs::read_to_string(d.join("host_key.pub"))?;
        let host: Vec<&str> = host.split_whitespace().take(2).collect();
        let server = GitSsh {
            child,
            port,
            user,
            identity: std::fs::read_to_string(d.join("client_key"))?,
            known_hosts: format!("[127.0.0.1]:{port} {}", host.join(" ")),
            made_run_dir,
            _dir: dir,
        };
        crate::eventually(Duration::from_secs(10), "sshd listening", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .with_context(|| crate::read_lossy(&server._dir.path().join("sshd.log")))?;
        Ok(server)
    }

    /// The ssh:// URL of a repository on this machine.
    pub fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.display()
        )
    }
}

impl Drop for GitSsh {
    fn drop(&mut self) {
        crate::signal(self.child.id(), "KILL");
        let _ = self.child.wait();
        if self.made_run_dir {
            let _ = std::fs::remove_dir(Path::new("/run/sshd"));
        }
    }
}
