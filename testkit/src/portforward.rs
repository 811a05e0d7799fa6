//! `kubectl port-forward` for tests and benchmarks: [`PortForward`] runs the real kubectl and
//! waits until it listens; [`load`] drives HTTP GETs over many concurrent connections and
//! measures them, and [`compare`] puts port-forward next to the pod's IP in one run (the
//! engine behind a `capstan bench port-forward`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::keepalive::KeepAlive;
use crate::kubectl_bin;

/// A running `kubectl port-forward`; killed (by its pid) on drop.
#[derive(Debug)]
pub struct PortForward {
    child: Child,
    /// What kubectl printed after its "Forwarding from" lines, read on demand.
    stderr: mpsc::Receiver<String>,
}

impl PortForward {
    /// `kubectl port-forward <target> <ports…>` with `env` set, once it prints a "Forwarding
    /// from 127.0.0.1:…" line for every port.
    pub fn start(
        kubeconfig: &Path,
        target: &str,
        ports: &[&str],
        env: &[(&str, &str)],
    ) -> Result<PortForward> {
        let mut cmd = Command::new(kubectl_bin());
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["port-forward", "--address", "127.0.0.1", target])
            .args(ports)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawn kubectl port-forward")?;
        let (tx, rx) = mpsc::channel();
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut listening = 0;
        let mut seen = Vec::new();
        while listening < ports.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if line.starts_with("Forwarding from 127.0.0.1:") {
                        listening += 1;
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("kubectl port-forward did not listen: {}", seen.join("\n"));
                }
            }
        }
        Ok(PortForward { child, stderr: rx })
    }

    /// The lines kubectl printed since it started listening.
    pub fn output(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// Whether kubectl still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 GET of `path` on a fresh connection: the body, which must come with a 200.
pub fn get(addr: &str, path: &str) -> Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_nodelay(true)?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)
        .with_context(|| format!("read {addr}"))?;
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| {
            format!(
                "no HTTP head from {addr}: {:?}",
                String::from_utf8_lossy(&all)
            )
        })?;
    let head = String::from_utf8_lossy(&all[..end]);
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("{addr}{path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(all[end + 4..].to_vec())
}

/// What [`load`] measured.
#[derive(Debug, Clone)]
pub struct Load {
    pub requests: usize,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Per-request latencies, sorted.
    pub latencies: Vec<Duration>,
    /// Requests that failed, with why (the first few).
    pub errors: Vec<String>,
    /// TCP connections the clients opened.
    pub connects: usize,
}

impl Load {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    pub fn mib_per_second(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64()
    }
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1]
    }
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.2}s: {:.0} req/s, {:.1} MiB/s, p50 {:.1} ms, p99 {:.1} ms, {} errors",
            self.requests,
            self.elapsed.as_secs_f64(),
            self.requests_per_second(),
            self.mib_per_second(),
            self.quantile(0.5).as_secs_f64() * 1e3,
            self.quantile(0.99).as_secs_f64() * 1e3,
            self.errors.len()
        )
    }
}

/// How a load's clients use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// An HTTP/1.0 GET on a new TCP connection every time.
    PerRequest,
    /// HTTP/1.1, the connection kept while the server keeps it ([`KeepAlive`]), as wrk and
    /// browsers do.
    KeepAlive,
}

/// `connections` threads, each doing `per_connection` GETs of `path` one after another (each
/// on its own TCP connection, as busybox httpd closes after answering: through port-forward
/// every one is a new data/error stream pair).
pub fn load(addr: &str, path: &str, connections: usize, per_connection: usize) -> Load {
    load_with(addr, path, connections, per_connection, Reuse::PerRequest)
}

/// [`load`] with the clients' connection use chosen.
pub fn load_with(
    addr: &str,
    path: &str,
    connections: usize,
    per_connection: usize,
    reuse: Reuse,
) -> Load {
    let start = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (addr, path) = (addr.to_string(), path.to_string());
            std::thread::spawn(move || {
                let mut done = Vec::new();
                let mut client = KeepAlive::new(&addr);
                for _ in 0..per_connection {
                    let t = Instant::now();
                    let body = match reuse {
                        Reuse::PerRequest => get(&addr, &path),
                        Reuse::KeepAlive => client.get(&path),
                    };
                    done.push(body.map(|b| (b.len() as u64, t.elapsed())));
                }
                let connects = match reuse {
                    Reuse::PerRequest => per_connection,
                    Reuse::KeepAlive => client.connects,
                };
                (done, connects)
            })
        })
        .collect();
    let mut l = Load {
        requests: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        errors: Vec::new(),
        connects: 0,
    };
    for t in threads {
        let (done, connects) = t.join().unwrap_or_default();
        l.connects += connects;
        for r in done {
            match r {
                Ok((n, d)) => {
                    l.requests += 1;
                    l.bytes += n;
                    l.latencies.push(d);
                }
                Err(e) => l.errors.push(format!("{e:#}")),
            }
        }
    }
    l.elapsed = start.elapsed();
    l.latencies.sort();
    l
}

/// The same load straight to the pod (`direct`, its IP and port) and through port-forward
/// (`forwarded`, kubectl's local address), one after the other in one run.
pub fn compare(
    direct: &str,
    forwarded: &str,
    path: &str,
    connections: usize,
    per_connection: usize,
) -> (Load, Load) {
    let d = load(direct, path, connections, per_connection);
    let f = load(forwarded, path, connections, per_connection);
    (d, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_sample_at_or_above_the_rank() {
        let l = Load {
            requests: 100,
            bytes: 0,
            elapsed: Duration::from_secs(1),
            latencies: (1..=100).map(Duration::from_millis).collect(),
            errors: vec![],
            connects: 100,
        };
        assert_eq!(l.quantile(0.99), Duration::from_millis(99));
        assert_eq!(l.quantile(0.5), Duration::from_millis(50));
        assert_eq!(l.quantile(1.0), Duration::from_millis(100));
    }
}
