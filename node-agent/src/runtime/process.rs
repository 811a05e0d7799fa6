//! The process runtime: for machines without containerd and for non-container workloads
//! (Nomad's raw_exec, Marathon's commands). A "sandbox" is a directory; a container is a
//! process group started by a shim (`capstan shim DIR`, [`shim_main`]) that
//! - runs the command in its own process group (so stopping kills all it started),
//! - writes its stdout/stderr to the CRI log file in CRI's format
//!   (`<RFC3339Nano> <stdout|stderr> <F|P> <line>`), so `kubectl logs` reads both runtimes alike,
//! - records the exit (code, signal, time) in `exit.json`,
//!
//! and outlives the agent: everything the runtime knows is in files under its root
//! (`sandboxes/ID/sandbox.json`, `containers/ID/{container,pid,exit}.json`), so a restarted
//! agent lists and adopts what is running. Pods share the host's network (the pod IP is the
//! host's). Resource limits are not applied yet (cgroups come with the CRI half of issue 6).

use std::io::{BufRead, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Container, ContainerConfig, ContainerState, ExecResult, Result, Runtime, RuntimeError, Sandbox,
    SandboxConfig, SandboxState,
};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Lines longer than this are split into partial (P) records, as containerd does.
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    root: PathBuf,
    /// The shim: a program and the arguments before the container directory.
    shim: Vec<String>,
    host_ip: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct SandboxFile {
    name: String,
    namespace: String,
    uid: String,
    attempt: u32,
    labels: std::collections::BTreeMap<String, String>,
    host_network: bool,
    log_directory: PathBuf,
    state: SandboxState,
    created_at: jiff::Timestamp,
}

#[derive(Debug, Serialize, Deserialize)]
struct ContainerFile {
    sandbox_id: String,
    name: String,
    attempt: u32,
    image: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    working_dir: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
    log_path: String,
    /// Where the shim writes the log (the sandbox's log directory joined with log_path).
    log_file: PathBuf,
    created_at: jiff::Timestamp,
}

/// Written by the shim once the process runs.
#[derive(Debug, Serialize, Deserialize)]
struct PidFile {
    pid: i32,
    /// /proc/PID/stat's starttime, so a reused pid is not mistaken for the process.
    start_ticks: u64,
    shim_pid: i32,
    started_at: jiff::Timestamp,
}

/// Written by the shim when the process is gone.
#[derive(Debug, Serialize, Deserialize)]
struct ExitFile {
    exit_code: i32,
    signal: Option<i32>,
    finished_at: jiff::Timestamp,
    reason: String,
    message: Option<String>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `value` to `path` atomically (a temp file renamed over it).
fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(value).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// The start time of process `pid` in clock ticks since boot, if it exists.
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    // Fields after the command name start at field 3; starttime is field 22.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

fn alive(pid: i32, ticks: u64) -> bool {
    start_ticks(pid) == Some(ticks) && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn signal_group(pid: i32, sig: rustix::process::Signal) {
    // Never pid 1 or below: kill(-1) would signal every process we may signal.
    if pid > 1
        && let Some(p) = rustix::process::Pid::from_raw(pid)
    {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

impl ProcessRuntime {
    /// A runtime keeping its state under `root`, starting containers through `shim` (e.g.
    /// `["/usr/bin/capstan", "shim"]`); pods get `host_ip`.
    pub fn new(root: impl Into<PathBuf>, shim: Vec<String>, host_ip: &str) -> Result<Self> {
        let root = root.into();
        for d in ["sandboxes", "containers"] {
            std::fs::create_dir_all(root.join(d))
                .map_err(|e| RuntimeError::io(format!("creating {}", root.join(d).display()), e))?;
        }
        Ok(ProcessRuntime {
            root,
            shim,
            host_ip: host_ip.to_string(),
        })
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.root.join("sandboxes").join(id)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    fn load_sandbox(&self, id: &str) -> Option<Sandbox> {
        let f: SandboxFile = read_json(&self.sandbox_dir(id).join("sandbox.json"))?;
        Some(Sandbox {
            id: id.to_string(),
            config: SandboxConfig {
                name: f.name,
                namespace: f.namespace,
                uid: f.uid,
                attempt: f.attempt,
                labels: f.labels,
                host_network: f.host_network,
                log_directory: f.log_directory,
                ..Default::default()
            },
            state: f.state,
            created_at: f.created_at,
            ip: Some(self.host_ip.clone()),
        })
    }

    fn load_container(&self, id: &str) -> Option<Container> {
        let dir = self.container_dir(id);
        let f: ContainerFile = read_json(&dir.join("container.json"))?;
        let pid: Option<PidFile> = read_json(&dir.join("pid.json"));
        let exit: Option<ExitFile> = read_json(&dir.join("exit.json"));
        let mut c = Container {
            id: id.to_string(),
            sandbox_id: f.sandbox_id,
            config: ContainerConfig {
                name: f.name,
                attempt: f.attempt,
                image: f.image.clone(),
                command: f.argv,
                env: f.env,
                working_dir: f.working_dir,
                labels: f.labels,
                log_path: f.log_path,
                ..Default::default()
            },
            state: ContainerState::Created,
            created_at: f.created_at,
            started_at: pid.as_ref().map(|p| p.started_at),
            finished_at: None,
            exit_code: None,
            reason: None,
            message: None,
            image_ref: f.image,
        };
        match (exit, pid) {
            (Some(e), _) => {
                c.state = ContainerState::Exited;
                c.exit_code = Some(e.exit_code);
                c.finished_at = Some(e.finished_at);
                c.reason = Some(e.reason);
                c.message = e.message;
            }
            (None, Some(p)) => {
                if alive(p.pid, p.start_ticks)
                    || start_ticks(p.shim_pid).is_some_and(|_| !is_zombie(p.shim_pid))
                {
                    c.state = ContainerState::Running;
                } else {
                    // The process and its shim are gone without a record (killed -9, or the
                    // machine rebooted): Kubernetes' ContainerStatusUnknown.
                    c.state = ContainerState::Exited;
                    c.exit_code = Some(137);
                    c.reason = Some("ContainerStatusUnknown".into());
                    c.message = Some(
                        "The container could not be located when the pod was terminated".into(),
                    );
                }
            }
            (None, None) => {}
        }
        Some(c)
    }

    fn ids(&self, kind: &str) -> Vec<String> {
        std::fs::read_dir(self.root.join(kind))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| !n.ends_with(".tmp"))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set_sandbox_state(&self, id: &str, state: SandboxState) -> Result<()> {
        let path = self.sandbox_dir(id).join("sandbox.json");
        let Some(mut f) = read_json::<SandboxFile>(&path) else {
            return Ok(());
        };
        f.state = state;
        write_json(&path, &f)
            .map_err(|e| RuntimeError::io(format!("writing {}", path.display()), e))
    }
}

impl Runtime for ProcessRuntime {
    fn version(&self) -> String {
        format!("capstan-process://{}", env!("CARGO_PKG_VERSION"))
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<Sandbox> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.sandbox_dir(&id);
        std::fs::create_dir_all(dir.join("work"))
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        std::fs::create_dir_all(&config.log_directory).map_err(|e| {
            RuntimeError::io(format!("creating {}", config.log_directory.display()), e)
        })?;
        let f = SandboxFile {
            name: config.name.clone(),
            namespace: config.namespace.clone(),
            uid: config.uid.clone(),
            attempt: config.attempt,
            labels: config.labels.clone(),
            host_network: config.host_network,
            log_directory: config.log_directory.clone(),
            state: SandboxState::Ready,
            created_at: jiff::Timestamp::now(),
        };
        write_json(&dir.join("sandbox.json"), &f)
            .map_err(|e| RuntimeError::io("writing sandbox.json", e))?;
        self.load_sandbox(&id).ok_or(RuntimeError::NotFound {
            what: "sandbox",
            id,
        })
    }

    async fn stop_sandbox(&self, id: &str) -> Result<()> {
        for c in self.list_containers().await? {
            if c.sandbox_id == id && c.state == ContainerState::Running {
                self.stop_container(&c.id, Duration::ZERO).await?;
            }
        }
        self.set_sandbox_state(id, SandboxState::NotReady)
    }

    async fn remove_sandbox(&self, id: &str) -> Result<()> {
        self.stop_sandbox(id).await?;
        for c in self.list_containers().await? {
            if c.sandbox_id == id {
                self.remove_container(&c.id).await?;
            }
        }
        let dir = self.sandbox_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RuntimeError::io(format!("removing {}", dir.display()), e))
            }
            _ => Ok(()),
        }
    }

    async fn list_sandboxes(&self) -> Result<Vec<Sandbox>> {
        let mut out: Vec<Sandbox> = self
            .ids("sandboxes")
            .iter()
            .filter_map(|id| self.load_sandbox(id))
            .collect();
        out.sort_by_key(|s| (s.created_at, s.config.attempt));
        Ok(out)
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<Container> {
        let sb = self
            .load_sandbox(sandbox_id)
            .ok_or_else(|| RuntimeError::NotFound {
                what: "sandbox",
                id: sandbox_id.into(),
            })?;
        let argv: Vec<String> = config.command.iter().chain(&config.args).cloned().collect();
        if argv.is_empty() {
            return Err(RuntimeError::Config(format!(
                "container {:?}: the process runtime runs `command` (and `args`); none is set and there is no image entrypoint to fall back on",
                config.name
            )));
        }
        if let Some(m) = config.mounts.first() {
            return Err(RuntimeError::Config(format!(
                "container {:?}: the process runtime cannot mount volumes ({:?} at {}); volumeMounts need --runtime cri",
                config.name,
                m.host_path.display(),
                m.container_path
            )));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.container_dir(&id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOSTNAME".into(), sb.config.name.clone()),
        ];
        for (k, v) in &config.env {
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v.clone()));
        }
        let f = ContainerFile {
            sandbox_id: sandbox_id.into(),
            name: config.name.clone(),
            attempt: config.attempt,
            image: config.image.clone(),
            argv,
            env,
            working_dir: Some(config.working_dir.clone().unwrap_or_else(|| {
                self.sandbox_dir(sandbox_id)
                    .join("work")
                    .display()
                    .to_string()
            })),
            labels: config.labels.clone(),
            log_path: config.log_path.clone(),
            log_file: sb.config.log_directory.join(&config.log_path),
            created_at: jiff::Timestamp::now(),
        };
        write_json(&dir.join("container.json"), &f)
            .map_err(|e| RuntimeError::io("writing container.json", e))?;
        self.load_container(&id).ok_or(RuntimeError::NotFound {
            what: "container",
            id,
        })
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let dir = self.container_dir(id);
        if !dir.join("container.json").exists() {
            return Err(RuntimeError::NotFound {
                what: "container",
                id: id.into(),
            });
        }
        let (program, args) = self
            .shim
            .split_first()
            .ok_or_else(|| RuntimeError::Config("no shim configured".into()))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0);
        // Dropped, not awaited: tokio reaps it when it exits; it outlives the agent otherwise.
        let _child = cmd
            .spawn()
            .map_err(|e| RuntimeError::io(format!("starting the shim {program}"), e))?;
        // Started means running (or already exited, e.g. a missing executable).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !dir.join("pid.json").exists() && !dir.join("exit.json").exists() {
            if tokio::time::Instant::now() > deadline {
                return Err(RuntimeError::io(
                    format!("container {id}: the shim did not start it within 10 s"),
                    std::io::Error::from(std::io::ErrorKind::TimedOut),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let dir = self.container_dir(id);
        let Some(pid) = read_json::<PidFile>(&dir.join("pid.json")) else {
            return Ok(()); // never started
        };
        let exited = |dir: &Path| {
            dir.join("exit.json").exists()
                || !alive(pid.pid, pid.start_ticks)
                    && start_ticks(pid.shim_pid).is_none_or(|_| is_zombie(pid.shim_pid))
        };
        if exited(&dir) {
            return Ok(());
        }
        use rustix::process::Signal;
        if !grace.is_zero() && alive(pid.pid, pid.start_ticks) {
            signal_group(pid.pid, Signal::TERM);
            let deadline = tokio::time::Instant::now() + grace;
            while !exited(&dir) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !exited(&dir) {
            if alive(pid.pid, pid.start_ticks) {
                signal_group(pid.pid, Signal::KILL);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(RuntimeError::io(
                    format!("container {id} did not stop"),
                    std::io::Error::from(std::io::ErrorKind::TimedOut),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.stop_container(id, Duration::ZERO).await?;
        let dir = self.container_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RuntimeError::io(format!("removing {}", dir.display()), e))
            }
            _ => Ok(()),
        }
    }

    async fn list_containers(&self) -> Result<Vec<Container>> {
        Ok(self
            .ids("containers")
            .iter()
            .filter_map(|id| self.load_container(id))
            .collect())
    }

    /// Runs `cmd` on the host with the container's environment and working directory.
    async fn exec_sync(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecResult> {
        let f: ContainerFile = read_json(&self.container_dir(id).join("container.json"))
            .ok_or_else(|| RuntimeError::NotFound {
                what: "container",
                id: id.into(),
            })?;
        let (program, args) = cmd
            .split_first()
            .ok_or_else(|| RuntimeError::Config("exec: empty command".into()))?;
        let mut c = tokio::process::Command::new(program);
        c.args(args)
            .env_clear()
            .envs(f.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(dir) = &f.working_dir {
            c.current_dir(dir);
        }
        match tokio::time::timeout(timeout, c.output()).await {
            Ok(Ok(out)) => Ok(ExecResult {
                exit_code: out
                    .status
                    .code()
                    .unwrap_or(128 + out.status.signal().unwrap_or(9)),
                stdout: out.stdout,
                stderr: out.stderr,
            }),
            Ok(Err(e)) => Err(RuntimeError::Rpc {
                op: "exec",
                message: format!("starting {program:?}: {e}"),
            }),
            Err(_) => Err(RuntimeError::Rpc {
                op: "exec",
                message: format!("command {cmd:?} timed out after {timeout:?}"),
            }),
        }
    }

    /// Processes have no images: every image "is present".
    async fn image_status(&self, image: &str) -> Result<Option<String>> {
        Ok(Some(image.to_string()))
    }

    async fn pull_image(&self, image: &str) -> Result<String> {
        Ok(image.to_string())
    }
}

/// One CRI log record: `<RFC3339Nano> <stream> <F|P> <msg>\n`.
pub fn log_record(stream: &str, partial: bool, msg: &[u8]) -> Vec<u8> {
    let ts = jiff::Timestamp::now();
    let mut line = format!(
        "{} {stream} {} ",
        ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        if partial { "P" } else { "F" }
    )
    .into_bytes();
    line.extend_from_slice(msg);
    line.push(b'\n');
    line
}

fn pump(
    reader: impl std::io::Read,
    stream: &'static str,
    log: std::sync::Arc<std::sync::Mutex<std::fs::File>>,
) {
    let mut reader = std::io::BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let full = buf.ends_with(b"\n");
        let msg = if full { &buf[..n - 1] } else { &buf[..] };
        // A line cut at MAX_LINE is partial; a last line without a newline at EOF is full.
        let partial = !full && n == MAX_LINE;
        let record = log_record(stream, partial, msg);
        if let Ok(mut f) = log.lock() {
            let _ = f.write_all(&record);
        }
    }
}

use std::io::Read as _;

/// The shim's main (`capstan shim DIR`): runs the container described in DIR/container.json
/// and records it. Returns the process's exit code.
pub fn shim_main(dir: &Path) -> i32 {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let Some(f) = read_json::<ContainerFile>(&dir.join("container.json")) else {
        eprintln!("shim: no container.json in {}", dir.display());
        return 2;
    };
    let record_exit = |code: i32, signal: Option<i32>, reason: &str, message: Option<String>| {
        let _ = write_json(
            &dir.join("exit.json"),
            &ExitFile {
                exit_code: code,
                signal,
                finished_at: jiff::Timestamp::now(),
                reason: reason.to_string(),
                message,
            },
        );
    };
    if let Some(parent) = f.log_file.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&f.log_file)
    {
        Ok(l) => std::sync::Arc::new(std::sync::Mutex::new(l)),
        Err(e) => {
            record_exit(
                128,
                None,
                "StartError",
                Some(format!("opening the log {}: {e}", f.log_file.display())),
            );
            return 128;
        }
    };
    let mut cmd = std::process::Command::new(&f.argv[0]);
    cmd.args(&f.argv[1..])
        .env_clear()
        .envs(f.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    if let Some(wd) = &f.working_dir {
        cmd.current_dir(wd);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let message = format!("failed to start {:?}: {e}", f.argv[0]);
            let _ = log
                .lock()
                .map(|mut l| l.write_all(&log_record("stderr", false, message.as_bytes())));
            record_exit(128, None, "StartError", Some(message));
            return 128;
        }
    };
    let pid = child.id() as i32;
    let _ = write_json(
        &dir.join("pid.json"),
        &PidFile {
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
            shim_pid: std::process::id() as i32,
            started_at: jiff::Timestamp::now(),
        },
    );
    let out = child.stdout.take().map(|o| {
        let log = log.clone();
        std::thread::spawn(move || pump(o, "stdout", log))
    });
    let err = child.stderr.take().map(|e| {
        let log = log.clone();
        std::thread::spawn(move || pump(e, "stderr", log))
    });
    let status = child.wait();
    // Like a container whose first process exits: whatever it left running goes too (and
    // releases the output pipes).
    signal_group(pid, rustix::process::Signal::KILL);
    for t in [out, err].into_iter().flatten() {
        let _ = t.join();
    }
    let (code, signal) = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => (c, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            _ => (137, None),
        },
        Err(_) => (137, None),
    };
    record_exit(
        code,
        signal,
        if code == 0 { "Completed" } else { "Error" },
        None,
    );
    code
}
