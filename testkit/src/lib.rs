//! Harnesses for Capstan's tests and benchmarks. Start with [`EtcdProcess`]: a real etcd on free
//! loopback ports with its own temporary data dir, stopped by its pid when dropped. [`sim`] runs
//! simulated nodes (kwok-like) against any API server. [`CapstanUp`] runs the binary that
//! [`capstan_bin`] finds (fresh, or the test fails saying how to rebuild). With feature
//! `cluster`, [`TestCluster`] runs an in-process API server for cluster tests (it pulls in
//! `capstan-apiserver`, so crates that need no API server leave it off).
//!
//! Nothing here is mocked: the tests that use it talk to the etcd binary Debian ships
//! (`apt-get install etcd-server`), found as `$CAPSTAN_ETCD_BIN`, else `etcd` on PATH.

mod binary;
#[cfg(feature = "cluster")]
mod cluster;
pub mod etcd_cluster;
pub mod git;
pub mod helm;
pub mod keepalive;
pub mod machines;
pub mod metrics_adapter;
pub mod net_slot;
pub mod pki;
pub mod portforward;
pub mod redis;
pub mod sim;
pub mod sim_stats;
pub mod webhook;

pub use binary::capstan_bin;
#[cfg(feature = "cluster")]
pub use cluster::TestCluster;
pub use net_slot::NetSlot;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A free TCP port on 127.0.0.1 (bound, then released for the caller to use).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The etcd binary to run.
pub fn etcd_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CAPSTAN_ETCD_BIN") {
        return Ok(PathBuf::from(p));
    }
    for dir in std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
    {
        let candidate = dir.join("etcd");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "etcd not found on PATH: install it (Debian: apt-get install etcd-server) or set CAPSTAN_ETCD_BIN"
    )
}

/// etcd as member `name` of `initial_cluster`, on loopback ports, logging warnings only.
pub(crate) fn etcd_command(
    bin: &Path,
    name: &str,
    data_dir: &Path,
    client_port: u16,
    peer_port: u16,
    initial_cluster: &str,
) -> Command {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut c = Command::new(bin);
    c.arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={initial_cluster}"))
        // Capstan stores objects up to 1.5 MiB; etcd's default request limit is exactly
        // that, leaving no room for the key and the transaction around the value.
        .arg("--max-request-bytes=2097152")
        .arg("--logger=zap")
        .arg("--log-level=warn")
        .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
    c
}

/// A single-member etcd cluster on loopback.
#[derive(Debug)]
pub struct EtcdProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

impl EtcdProcess {
    /// Starts etcd and waits (up to 20 s) until it reports healthy.
    pub fn start() -> Result<EtcdProcess> {
        let dir = tempfile::Builder::new()
            .prefix("capstan-etcd-")
            .tempdir()
            .context("create etcd temp dir")?;
        let mut etcd = EtcdProcess {
            child: None,
            dir,
            client_port: 0,
            peer_port: 0,
            endpoint: String::new(),
        };
        // A port found free can be taken by another test before etcd binds it: then etcd
        // exits with "address already in use", and it is tried again on new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            etcd.client_port = free_port()?;
            etcd.peer_port = free_port()?;
            etcd.endpoint = format!("http://127.0.0.1:{}", etcd.client_port);
            match etcd.spawn() {
                Ok(()) => return Ok(etcd),
                Err(e) if attempt < 5 && etcd.lost_its_port() => {
                    tracing::debug!(error = %e, attempt, "etcd lost its port to another process; retrying");
                    let _ = etcd.stop();
                    let _ = std::fs::remove_dir_all(etcd.data_dir());
                    let _ = std::fs::remove_file(etcd.log_path());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether etcd's log says its port was taken.
    fn lost_its_port(&self) -> bool {
        std::fs::read_to_string(self.log_path()).is_ok_and(|l| l.contains("address already in use"))
    }

    /// The data dir etcd writes to (kept across [`EtcdProcess::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The etcd log (stdout and stderr), for a failing test to show.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The pid of the running etcd, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = etcd_binary()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("open etcd log")?;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = etcd_command(
            &bin,
            "capstan-test",
            &self.data_dir(),
            self.client_port,
            self.peer_port,
            &format!("capstan-test={peer}"),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(20))
    }

    fn wait_healthy(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "etcd exited with {status} during start-up; log:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            if health(self.client_port).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd on port {} not healthy within {within:?}; log:\n{}",
                    self.client_port,
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops etcd gracefully (SIGTERM to its pid, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait()?;
        Ok(())
    }

    /// Kills etcd with SIGKILL (a crash) and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts etcd again on the same ports and data dir.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Starts etcd again after [`EtcdProcess::stop`] or [`EtcdProcess::kill`].
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("etcd is already running");
        }
        self.spawn()
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends a signal to one pid with the system's `kill` (no libc binding needed).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops, by pid, every container the process runtime under `agent_root` (a data dir's
/// `agent/`) started — they outlive the agent by design — and removes their cgroups: what a
/// test that ran pods there leaves behind otherwise.
pub fn kill_process_containers(agent_root: &Path) {
    let Ok(entries) = std::fs::read_dir(agent_root.join("process/containers")) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path().join("pid.json")) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        // Only processes that are still the ones recorded (a pid may have been reused).
        let stat_ticks = |pid: i64| -> Option<u64> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(19)?
                .parse()
                .ok()
        };
        if let (Some(pid), Some(ticks)) = (v["pid"].as_i64(), v["start_ticks"].as_u64())
            && pid > 1
            && stat_ticks(pid) == Some(ticks)
        {
            // The group first (what it started), then the process.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
            signal(pid as u32, "KILL");
        }
        if let Some(shim) = v["shim_pid"].as_i64().filter(|p| *p > 1)
            && std::fs::read_to_string(format!("/proc/{shim}/cmdline"))
                .is_ok_and(|c| c.contains("capstan") && c.contains("shim"))
        {
            signal(shim as u32, "KILL");
        }
        // The container's cgroups and its pod's (only capstan-* dirs and their parents; rmdir
        // removes nothing that still holds a process).
        let cgroups = std::fs::read_to_string(e.path().join("container.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|c| c["cgroups"].as_array().cloned())
            .unwrap_or_default();
        for cg in cgroups
            .iter()
            .filter_map(serde_json::Value::as_str)
            .map(Path::new)
        {
            if cg
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("capstan-"))
            {
                for _ in 0..100 {
                    if std::fs::remove_dir(cg).is_ok() || !cg.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if let Some(pod) = cg.parent() {
                    let _ = std::fs::remove_dir(pod);
                }
            }
        }
    }
}

/// Stops the process runtime's containers under an agent root when dropped (see
/// [`kill_process_containers`]); made before `capstan up` so that it goes after it.
#[derive(Debug)]
pub struct ReapContainers(pub PathBuf);

impl Drop for ReapContainers {
    fn drop(&mut self) {
        kill_process_containers(&self.0);
    }
}

/// etcd's /health over plain HTTP/1.0.
pub(crate) fn health(port: u16) -> Result<bool> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"))
        .map(|ok| ok && body.contains("\"health\":\"true\""))
}

/// A scratch directory removed on drop.
/// A task that runs while this is held and is aborted when it is dropped (a controller
/// manager a test starts, stopped with its cluster).
#[derive(Debug)]
pub struct Background(tokio::task::JoinHandle<()>);

impl Background {
    pub fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) -> Background {
        Background(tokio::spawn(f))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Merges `b` into `a` as a JSON merge patch would without deletions: objects key by key,
/// anything else replaced (fixtures built as a base plus what a case changes).
pub fn merge_json(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge_json(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

pub fn temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("create temp dir")
}

/// Reads a file if it exists, for failure messages.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A stream the raw helpers read and write: TCP, or TLS over it.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// An HTTP/1.0 GET against `addr` (host:port; TLS as the test administrator when it is a
/// registered API server, [`pki::register`]): the status code and the body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    http_request(addr, "GET", path, &[], b"")
}

/// One HTTP/1.0 request (the server closes the connection after answering): status and body.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    http_exchange(addr, method, path, headers, body).map(|(status, _, body)| (status, body))
}

/// As [`http_request`], also returning the response's header lines (`name: value`).
pub fn http_exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<String>, String)> {
    // The harness's API servers speak TLS: as the test administrator, trusting the test CA.
    let tls = pki::is_tls(addr).then(|| pki::pki().client_tls());
    exchange(addr, tls, method, path, headers, body)
}

/// One HTTP/1.0 request over TLS to `addr` with `tls` (the test administrator's configuration
/// when None): status, header lines and body. A failed handshake is an error.
pub fn tls_exchange(
    addr: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<String>, String)> {
    let tls = tls.unwrap_or_else(|| pki::pki().client_tls());
    exchange(addr, Some(tls), method, path, headers, body)
}

fn exchange(
    addr: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<String>, String)> {
    let tcp = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut stream: Box<dyn ReadWrite> = match tls {
        Some(config) => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .with_context(|| format!("server name {host}"))?;
            let conn = rustls::ClientConnection::new(config, name)?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
        None => Box::new(tcp),
    };
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    // The server may answer (413) before reading the whole body; a broken pipe is fine then.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        // A TLS peer that closes without close_notify after answering: the answer stands.
        if e.kind() != std::io::ErrorKind::UnexpectedEof || raw.is_empty() {
            return Err(e.into());
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed HTTP response from {addr}{path}: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let header_lines = head.lines().skip(1).map(str::to_string).collect();
    Ok((status, header_lines, body.to_string()))
}

/// [`http_exchange`] from async code (on a blocking thread): the status, the response's header
/// lines and the body as JSON (Null when it is not JSON). Panics when the exchange fails.
pub async fn http_json(
    addr: std::net::SocketAddr,
    method: &'static str,
    path: &str,
    headers: &[(&'static str, &'static str)],
    body: Vec<u8>,
) -> (u16, Vec<String>, serde_json::Value) {
    let (addr, path, headers) = (addr.to_string(), path.to_string(), headers.to_vec());
    tokio::task::spawn_blocking(move || {
        let (code, head, text) = http_exchange(&addr, method, &path, &headers, &body).unwrap();
        (
            code,
            head,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    })
    .await
    .unwrap()
}

/// Polls `check` every 20 ms until it returns true or `within` passes.
pub fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            bail!("{what}: not true within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The events.k8s.io/v1 Events in `namespace` now (for checks that an Event was emitted).
pub async fn events(
    client: &kube::Client,
    namespace: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    kube::Api::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Who holds the controller managers' Lease (kube-system/capstan-controller-manager) now, as
/// `leases` (an Api of kube-system) reads it; None when nobody does or it cannot be read.
pub async fn manager_lease_holder(
    leases: &kube::Api<k8s_openapi::api::coordination::v1::Lease>,
) -> Option<String> {
    leases
        .get_opt("capstan-controller-manager")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

/// Polls the async `check` (every 10 ms) until it is true; panics naming `what` after
/// `within`. Returns how long it took.
pub async fn until<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// The (code, reason, message) of an API error; panics on any other error.
pub fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason, s.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The lines a child prints, as a channel (so a test can wait for one with a timeout).
pub fn line_channel(out: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The pressure thresholds test agents run with: disk pressure only below 0.2% free (a build
/// machine's disk is often over 99% full with build trees: at 1% its pods stayed Pending on
/// the disk-pressure taint, and a suite failed for a full disk rather than a bug).
pub const TEST_EVICTION_HARD: &str = "nodefs.available<0.2%,nodefs.inodesFree<0.2%";

/// The file under `--data-dir` that [`CapstanUp`] writes the binary's log (stderr) to.
pub const UP_LOG: &str = "capstan-up.log";

/// A running `capstan up` on 127.0.0.1:0, ready (it printed its ready line); killed by pid on
/// drop. `bin` is the capstan binary ([`capstan_bin`] in the end-to-end suites).
#[derive(Debug)]
pub struct CapstanUp {
    pub child: Child,
    /// host:port it serves on.
    pub addr: String,
    /// The rest of its stdout.
    pub stdout: std::sync::mpsc::Receiver<String>,
}

impl CapstanUp {
    pub fn start<S: AsRef<std::ffi::OsStr>>(bin: &Path, args: &[S]) -> Result<CapstanUp> {
        CapstanUp::start_in(None, bin, args)
    }

    /// [`CapstanUp::start`] in network namespace `netns` (`nsenter --net`, which execs: the
    /// child's pid is capstan's; `ip netns exec` would also remount /sys and hide the cgroup
    /// mount runc needs).
    pub fn start_in<S: AsRef<std::ffi::OsStr>>(
        netns: Option<&str>,
        bin: &Path,
        args: &[S],
    ) -> Result<CapstanUp> {
        // No node agent unless the test asks for one (`--runtime process`); an agent without
        // the service proxy (it would share the default nftables table with every other
        // cluster of the run) and DNS (port 53) unless the test names its own table / port.
        let has = |flag: &str| args.iter().any(|a| a.as_ref() == flag);
        let mut defaults: Vec<&str> = Vec::new();
        if !has("--runtime") {
            defaults.extend(["--runtime", "none"]);
        }
        if !has("--proxy-table") && !has("--proxy") {
            defaults.extend(["--proxy", "off"]);
        }
        if !has("--dns-port") && !has("--dns") {
            defaults.extend(["--dns", "off"]);
        }
        // A test machine's disk is often more than 90% full (build trees): at the kubelet's
        // default threshold its node would report DiskPressure and be tainted NoSchedule.
        // The pressure conditions themselves are tested with thresholds of their own.
        if !has("--eviction-hard") {
            defaults.extend(["--eviction-hard", TEST_EVICTION_HARD]);
        }
        // The test CA, so the harness's clients trust it and are trusted.
        let data_dir = args
            .iter()
            .position(|a| a.as_ref() == "--data-dir")
            .and_then(|i| args.get(i + 1));
        if let Some(dir) = data_dir {
            pki::seed(Path::new(dir.as_ref()))?;
        }
        // Its log goes to the data dir's `capstan-up.log`, for a failing test to show.
        let stderr = match data_dir {
            Some(dir) => std::fs::File::create(Path::new(dir.as_ref()).join(UP_LOG))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
            None => Stdio::null(),
        };
        if !has("--listen") {
            defaults.extend(["--listen", "127.0.0.1:0"]);
        }
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = command
            .arg("up")
            .args(&defaults)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = line_channel(child.stdout.take().context("no stdout")?);
        let line = match stdout.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("capstan up printed no ready line within 30s");
            }
        };
        let (tls, rest) = match (line.split_once("https://"), line.split_once("http://")) {
            (Some((_, rest)), _) => (true, rest),
            (None, Some((_, rest))) => (false, rest),
            _ => bail!("no address in {line:?}"),
        };
        let addr = rest
            .split('/')
            .next()
            .with_context(|| format!("no address in {line:?}"))?
            .to_string();
        if tls {
            pki::register(&addr);
        }
        Ok(CapstanUp {
            child,
            addr,
            stdout,
        })
    }
}

impl CapstanUp {
    /// `capstan up` (the binary under test) on the process runtime, its data in `data_dir`,
    /// its node named `node`.
    pub fn process_runtime(data_dir: &Path, node: &str) -> Result<CapstanUp> {
        let data = data_dir.display().to_string();
        CapstanUp::start(
            capstan_bin(),
            &[
                "--data-dir",
                &data,
                "--runtime",
                "process",
                "--node-name",
                node,
            ],
        )
    }

    /// Stops it as a user would (SIGTERM) and waits up to `within` for it to exit; kills it
    /// (-9) past that. True when it exited by itself, successfully.
    pub fn stop(&mut self, within: Duration) -> bool {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for CapstanUp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        pki::unregister(&self.addr);
    }
}

/// Writes `kubeconfig` to `out` without its client certificate (for a user of `--token`).
pub fn kubeconfig_without_certificate(kubeconfig: &Path, out: &Path) {
    let text = std::fs::read_to_string(kubeconfig).expect("the kubeconfig");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("client-certificate-data") && !l.contains("client-key-data"))
        .map(|l| if l.trim() == "user:" { "  user: {}" } else { l })
        .collect();
    std::fs::write(out, kept.join("\n") + "\n").expect("writing the kubeconfig");
}

/// The kubectl the tests drive: `$CAPSTAN_KUBECTL`, else `kubectl` on PATH.
pub fn kubectl_bin() -> PathBuf {
    std::env::var_os("CAPSTAN_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// Runs kubectl against `kubeconfig` with `args`, feeding `stdin` when given.
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    client_command(&kubectl_bin(), kubeconfig, args, stdin)
}

/// As [`kubectl`], asserting success (stdout and stderr in the message); returns stdout.
pub fn kubectl_ok(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(kubeconfig, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl ARGS -o json`, parsed; None when kubectl fails or prints no JSON.
pub fn kubectl_json(kubeconfig: &Path, args: &[&str]) -> Option<serde_json::Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = kubectl(kubeconfig, &a, None);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Runs a kubeconfig-taking client (kubectl, `capstan get`...) to completion, feeding `stdin`
/// when given.
pub fn client_command(
    program: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    let mut child = Command::new(program)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); for kubectl install it or set CAPSTAN_KUBECTL",
                program.display()
            )
        });
    if let Some(text) = stdin
        && let Some(mut input) = child.stdin.take()
    {
        input.write_all(text.as_bytes()).expect("writing stdin");
    }
    child.wait_with_output().expect("waiting for the client")
}

/// Runs `cmd` with `input` on its stdin, killing it if it has not finished within `within`
/// (an exec whose stdin never ends would hang a test forever).
pub fn output_within(mut cmd: Command, input: &[u8], within: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the client");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(within).is_err() {
            signal(pid, "KILL");
            return true;
        }
        false
    });
    let out = child.wait_with_output().expect("waiting for the client");
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap_or(false);
    let _ = writer.join();
    assert!(!killed, "{cmd:?} did not finish within {within:?}");
    out
}

/// Pids of the processes whose command line is exactly `argv`.
pub fn pids_running(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// `kubectl exec` against `pod` (running, with `sh`): the exit code comes back, stdout and
/// stderr stay apart, stdin reaches its end (`-i`), `-t` gets a terminal (through script(1)
/// when installed), a wrong container is refused, and a client that goes away takes its
/// command with it. `marker` must be unique to the caller (a `sleep` argument).
pub fn check_kubectl_exec(kubeconfig: &Path, pod: &str, marker: &str) {
    let exec = |args: &[&str]| {
        let mut c = Command::new(kubectl_bin());
        c.arg("--kubeconfig").arg(kubeconfig).arg("exec").args(args);
        c
    };
    let within = Duration::from_secs(60);
    let out = output_within(
        exec(&[
            pod,
            "--",
            "sh",
            "-c",
            "echo out-$((6*7)); echo err >&2; exit 3",
        ]),
        b"",
        within,
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(3), "exit code: {stdout} / {stderr}");
    assert_eq!(stdout, "out-42\n");
    assert!(stderr.lines().any(|l| l == "err"), "{stderr}");
    assert!(
        stderr.contains("command terminated with exit code 3"),
        "{stderr}"
    );

    // stdin to its end: wc only answers once it sees end of input.
    let input = "0123456789\n".repeat(10_000);
    let out = output_within(
        exec(&["-i", pod, "--", "wc", "-c"]),
        input.as_bytes(),
        within,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "110000");

    if Path::new("/usr/bin/script").exists() {
        let line = format!(
            "{} --kubeconfig {} exec -it {pod} -- sh -c 'tty; echo tty-ok'",
            kubectl_bin().display(),
            kubeconfig.display()
        );
        let mut c = Command::new("script");
        c.args(["-qec", &line, "/dev/null"]);
        let out = output_within(c, b"", within);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("/dev/pts/") && text.contains("tty-ok"),
            "{text}"
        );
    }

    let out = output_within(exec(&[pod, "-c", "no-such", "--", "true"]), b"", within);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("container no-such is not valid"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The client is killed mid-command: the command goes too.
    let mut client = exec(&[pod, "--", "sleep", marker])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl exec");
    let running = eventually(within, "the exec'd sleep runs", || {
        !pids_running(&["sleep", marker]).is_empty()
    });
    let _ = client.kill();
    let _ = client.wait();
    running.unwrap();
    eventually(within, "the exec'd sleep is gone with its client", || {
        pids_running(&["sleep", marker]).is_empty()
    })
    .unwrap();
}
