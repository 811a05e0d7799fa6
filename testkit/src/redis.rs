//! A real Redis (Debian's `redis-server`) on a free loopback port, with no persistence, its
//! own directory, and an optional password; stopped by its pid on drop. Tests talk to it with
//! [`RedisProcess::command`] (the protocol over a plain socket).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

#[derive(Debug)]
pub struct RedisProcess {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
    password: Option<String>,
}

/// Whether `redis-server` is on PATH (`apt-get install redis-server`).
pub fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl RedisProcess {
    /// Starts it and waits (up to 10 s) until it answers PING.
    pub fn start(password: Option<&str>) -> Result<RedisProcess> {
        let dir = tempfile::tempdir()?;
        let port = crate::free_port()?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let r = RedisProcess {
            child,
            _dir: dir,
            port,
            password: password.map(str::to_string),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if r.command(&["PING"]).is_ok_and(|p| p == "PONG") {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!("redis-server on port {port} did not answer PING within 10s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs one command (after AUTH when it has a password); the reply as text: a status, an
    /// integer, a bulk string, or an array's elements joined by newlines.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut r = BufReader::new(s.try_clone()?);
        if let Some(p) = &self.password {
            send(&mut s, &["AUTH", p])?;
            reply(&mut r)?;
        }
        send(&mut s, args)?;
        reply(&mut r)
    }
}

fn send(s: &mut TcpStream, args: &[&str]) -> Result<()> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(out.as_bytes())?;
    Ok(())
}

fn reply(r: &mut BufReader<TcpStream>) -> Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => bail!("redis: {rest}"),
        "$" => {
            let n: i64 = rest.parse()?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let n: i64 = rest.parse()?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(reply(r)?);
            }
            Ok(items.join("\n"))
        }
        _ => bail!("redis: an unexpected reply {line:?}"),
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
