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
//! host's).
//!
//! Limits go through cgroups where they are writable (root), v2 or v1's cpu and memory
//! hierarchies: each container gets `<pod cgroup>/capstan-<id>` under the same `/kubepods/...`
//! parents the CRI runtime uses, with runc's conversions (`cpu.weight`/`cpu.max`/`memory.max`,
//! or `cpu.shares`/`cpu.cfs_quota_us`/`memory.limit_in_bytes`; swap capped); the process enters
//! them before it execs (the shim starts it through `capstan shim-exec`, which joins the
//! cgroups and sets oom_score_adj, then execs the command), so nothing it allocates escapes the
//! limit. An OOM kill reads back as `OOMKilled`; stopping kills the whole cgroup on v2. Without
//! writable cgroups (non-root) containers run unlimited, and the agent says so at start-up.

use std::io::{BufRead, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Container, ContainerConfig, ContainerState, ExecRequest, ExecResult, ExecSession, Result,
    Runtime, RuntimeError, Sandbox, SandboxConfig, SandboxState,
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
    /// The cgroup hierarchies limits go to ([`cgroup_roots`]; empty: they cannot, here).
    cgroup_roots: Vec<PathBuf>,
}

/// The cgroup hierarchies limits are written to: `/sys/fs/cgroup` when it is a cgroup v2 tree
/// offering cpu and memory, else the v1 `cpu` and `memory` hierarchies under it — if this
/// process may write to them (root). Empty: limits cannot be applied here.
pub fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let writable = |p: &Path| rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok();
    if let Ok(controllers) = std::fs::read_to_string(base.join("cgroup.controllers")) {
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        return if has("cpu") && has("memory") && writable(base) {
            vec![base.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let (cpu, memory) = (base.join("cpu"), base.join("memory"));
    if cpu.join("cpu.shares").exists()
        && memory.join("memory.limit_in_bytes").exists()
        && writable(&cpu)
        && writable(&memory)
    {
        vec![cpu, memory]
    } else {
        Vec::new()
    }
}

/// Creates `dir` and its missing parents under the hierarchy `root`. On cgroup v2 the cpu and
/// memory controllers are enabled for the children of every level (a cgroup only gets what its
/// parent enables); v1 hierarchies need nothing more than the directories.
fn ensure_cgroup(root: &Path, dir: &Path) -> std::io::Result<()> {
    let v2 = root.join("cgroup.controllers").exists();
    let rel = dir.strip_prefix(root).map_err(std::io::Error::other)?;
    let mut at = root.to_path_buf();
    for part in rel.components() {
        if v2 {
            let control = at.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            for c in ["cpu", "memory"] {
                if !enabled.split_whitespace().any(|x| x == c) {
                    std::fs::write(&control, format!("+{c}"))?;
                }
            }
        }
        at.push(part);
        match std::fs::create_dir(&at) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Writes a container's limits into one of its cgroup directories, in whichever interface the
/// directory offers (runc's conversions): v2 `cpu.weight`/`cpu.max`/`memory.max`, v1
/// `cpu.shares`/`cpu.cfs_quota_us`/`memory.limit_in_bytes`. Swap is capped so that going over
/// the memory limit is an OOM kill, as under the kubelet (which runs without swap).
fn write_limits(dir: &Path, r: &super::Resources) -> std::io::Result<()> {
    let has = |f: &str| dir.join(f).exists();
    let write = |f: &str, v: String| std::fs::write(dir.join(f), v);
    let period = if r.cpu_period > 0 {
        r.cpu_period
    } else {
        100_000
    };
    if has("cpu.max") {
        if r.cpu_shares > 0 {
            // cpu.shares 2..262144 onto cpu.weight 1..10000.
            let shares = r.cpu_shares.clamp(2, 262_144);
            write(
                "cpu.weight",
                (1 + ((shares - 2) * 9999) / 262_142).to_string(),
            )?;
        }
        let quota = if r.cpu_quota > 0 {
            r.cpu_quota.to_string()
        } else {
            "max".to_string()
        };
        write("cpu.max", format!("{quota} {period}"))?;
    }
    if has("cpu.shares") {
        if r.cpu_shares > 0 {
            write("cpu.shares", r.cpu_shares.clamp(2, 262_144).to_string())?;
        }
        write("cpu.cfs_period_us", period.to_string())?;
        let quota = if r.cpu_quota > 0 { r.cpu_quota } else { -1 };
        write("cpu.cfs_quota_us", quota.to_string())?;
    }
    if r.memory_limit_in_bytes > 0 {
        let limit = r.memory_limit_in_bytes.to_string();
        if has("memory.max") {
            write("memory.max", limit.clone())?;
            if has("memory.swap.max") {
                write("memory.swap.max", "0".into())?;
            }
        }
        if has("memory.limit_in_bytes") {
            write("memory.limit_in_bytes", limit.clone())?;
            if has("memory.memsw.limit_in_bytes") {
                write("memory.memsw.limit_in_bytes", limit)?;
            }
        }
    }
    Ok(())
}

/// How many times the kernel OOM-killed in this cgroup (v2 `memory.events`, v1
/// `memory.oom_control`; 0 for a directory of another controller).
fn oom_kills(dir: &Path) -> u64 {
    ["memory.events", "memory.oom_control"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Removes an empty cgroup (its processes gone); a busy one is retried briefly, since the
/// kernel releases a cgroup a moment after its last process is reaped.
fn remove_cgroup(dir: &Path) {
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    tracing::warn!(dir = %dir.display(), "a container cgroup could not be removed");
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
    #[serde(default)]
    cgroup_parent: String,
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
    #[serde(default)]
    resources: super::Resources,
    /// The container's own cgroup directories (one per hierarchy), when limits apply here.
    #[serde(default)]
    cgroups: Vec<PathBuf>,
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
            cgroup_roots: cgroup_roots(),
        })
    }

    /// Whether containers get their resource limits here (cgroup v2, writable).
    pub fn applies_limits(&self) -> bool {
        !self.cgroup_roots.is_empty()
    }

    /// The pod's cgroup directories (one per hierarchy), if limits apply and the sandbox has a
    /// parent.
    fn pod_cgroups(&self, parent: &str) -> Vec<PathBuf> {
        let rel = parent.trim_start_matches('/');
        if rel.is_empty()
            || rel
                .split('/')
                .any(|p| p == ".." || p == "." || p.is_empty())
        {
            return Vec::new();
        }
        self.cgroup_roots
            .iter()
            .map(|root| root.join(rel))
            .collect()
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
                cgroup_parent: f.cgroup_parent,
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
            cgroup_parent: config.cgroup_parent.clone(),
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
        if let Some(sb) = self.load_sandbox(id) {
            let cgroups = self.pod_cgroups(&sb.config.cgroup_parent);
            let _ = tokio::task::spawn_blocking(move || {
                cgroups.iter().for_each(|cg| remove_cgroup(cg))
            })
            .await;
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
            resources: config.resources,
            cgroups: self
                .pod_cgroups(&sb.config.cgroup_parent)
                .into_iter()
                .map(|pod| pod.join(format!("capstan-{id}")))
                .collect(),
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
        let f: Option<ContainerFile> = read_json(&dir.join("container.json"));
        if let Some(f) = &f {
            for (root, cg) in self.cgroup_roots.iter().zip(&f.cgroups) {
                ensure_cgroup(root, cg)
                    .and_then(|()| write_limits(cg, &f.resources))
                    .map_err(|e| {
                        RuntimeError::io(format!("setting up the cgroup {}", cg.display()), e)
                    })?;
            }
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
        let cgroups = read_json::<ContainerFile>(&dir.join("container.json"))
            .map(|f| f.cgroups)
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !exited(&dir) {
            if alive(pid.pid, pid.start_ticks) {
                signal_group(pid.pid, Signal::KILL);
                // Whatever left the process group is still in the cgroup (v2 can kill it all).
                for cg in &cgroups {
                    if cg.join("cgroup.kill").exists() {
                        let _ = std::fs::write(cg.join("cgroup.kill"), "1");
                    }
                }
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
        if let Some(f) = read_json::<ContainerFile>(&dir.join("container.json")) {
            let _ = tokio::task::spawn_blocking(move || {
                f.cgroups.iter().for_each(|cg| remove_cgroup(cg))
            })
            .await;
        }
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

    /// `kubectl exec`: the command runs on the host like the container's own process — its
    /// environment, working directory and cgroups (through `capstan shim-exec`) — in a
    /// process group of its own, with pipes or, for `-t`, a pseudo-terminal.
    async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecSession> {
        let f: ContainerFile = read_json(&self.container_dir(id).join("container.json"))
            .ok_or_else(|| RuntimeError::NotFound {
                what: "container",
                id: id.into(),
            })?;
        if self.load_container(id).map(|c| c.state) != Some(ContainerState::Running) {
            return Err(RuntimeError::Rpc {
                op: "exec",
                message: format!("container {id} is not running"),
            });
        }
        if req.command.is_empty() {
            return Err(RuntimeError::Config("exec: empty command".into()));
        }
        let trampoline = match self.shim.as_slice() {
            [program, sub, ..] if sub == "shim" => Some(program.clone()),
            _ => None,
        };
        let mut c = match &trampoline {
            Some(program) if req.tty || !f.cgroups.is_empty() => {
                let mut c = tokio::process::Command::new(program);
                c.arg("shim-exec");
                for cg in &f.cgroups {
                    c.arg("--cgroup").arg(cg);
                }
                if req.tty {
                    c.arg("--tty");
                }
                c.arg("--oom-score-adj")
                    .arg(f.resources.oom_score_adj.to_string())
                    .arg("--")
                    .args(&req.command);
                c
            }
            _ if req.tty => {
                return Err(RuntimeError::Config(
                    "exec: a terminal needs the capstan shim, which this runtime lacks".into(),
                ));
            }
            _ => {
                let mut c = tokio::process::Command::new(&req.command[0]);
                c.args(&req.command[1..]);
                c
            }
        };
        c.env_clear()
            .envs(f.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(false);
        if let Some(dir) = &f.working_dir {
            c.current_dir(dir);
        }
        let (session, ends) = super::exec::session(req);
        let io_err = |e| RuntimeError::io("exec: opening a pseudo-terminal", e);
        // A terminal: the command gets the slave on all three streams and makes it its
        // controlling terminal (shim-exec --tty); we keep the master.
        let master = if req.tty {
            let (master, slave) = open_pty().map_err(io_err)?;
            let slave = std::fs::File::from(slave);
            c.stdin(slave.try_clone().map_err(io_err)?)
                .stdout(slave.try_clone().map_err(io_err)?)
                .stderr(slave);
            Some(std::fs::File::from(master))
        } else {
            let piped = |on: bool| {
                if on {
                    std::process::Stdio::piped()
                } else {
                    std::process::Stdio::null()
                }
            };
            c.stdin(piped(req.stdin))
                .stdout(piped(req.stdout))
                .stderr(piped(req.stderr))
                .process_group(0);
            None
        };
        let mut child = c.spawn().map_err(|e| RuntimeError::Rpc {
            op: "exec",
            message: format!("starting {:?}: {e}", req.command[0]),
        })?;
        // The slave's copies in `c` must close, or the terminal never reports its end.
        drop(c);
        let pid = child.id().map(|p| p as i32);
        let super::exec::RuntimeEnds {
            stdin,
            stdout,
            stderr,
            mut resize,
            exit,
        } = ends;
        let mut pumps = tokio::task::JoinSet::new();
        // The terminal's master stays here for resizes.
        let mut size = None;
        if let Some(m) = master {
            let reader = m.try_clone().map_err(io_err)?;
            let writer = m.try_clone().map_err(io_err)?;
            if let Some(tx) = stdout {
                pumps.spawn(super::exec::pump(tokio::fs::File::from_std(reader), tx));
            }
            if let Some(rx) = stdin {
                tokio::spawn(super::exec::feed(rx, tokio::fs::File::from_std(writer)));
            }
            size = Some(m);
        } else {
            if let (Some(tx), Some(out)) = (stdout, child.stdout.take()) {
                pumps.spawn(super::exec::pump(out, tx));
            }
            if let (Some(tx), Some(err)) = (stderr, child.stderr.take()) {
                pumps.spawn(super::exec::pump(err, tx));
            }
            if let (Some(rx), Some(w)) = (stdin, child.stdin.take()) {
                tokio::spawn(super::exec::feed(rx, w));
            }
        }
        // One task owns the child: resizes, the kill when the session goes away (before the
        // child is reaped, so its pid and process group cannot have been reused), the exit.
        tokio::spawn(async move {
            let mut gone = false;
            let status = loop {
                tokio::select! {
                    st = child.wait() => break st,
                    sz = resize.recv(), if !gone => match (sz, &size) {
                        (Some(sz), Some(master)) => {
                            let _ = rustix::termios::tcsetwinsize(
                                master,
                                rustix::termios::Winsize {
                                    ws_row: sz.height,
                                    ws_col: sz.width,
                                    ws_xpixel: 0,
                                    ws_ypixel: 0,
                                },
                            );
                        }
                        (Some(_), None) => {}
                        (None, _) => {
                            gone = true;
                            if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
                                let _ = rustix::process::kill_process_group(
                                    pid,
                                    rustix::process::Signal::KILL,
                                );
                            }
                            let _ = child.start_kill();
                        }
                    },
                }
            };
            let code = match status {
                Ok(st) => Ok(st.code().unwrap_or(128 + st.signal().unwrap_or(9))),
                Err(e) => Err(format!("waiting for the command: {e}")),
            };
            drop(size);
            // What it wrote before exiting still goes out, within a bound.
            let _ = tokio::time::timeout(super::exec::DRAIN, async {
                while pumps.join_next().await.is_some() {}
            })
            .await;
            pumps.abort_all();
            let _ = exit.send(code);
        });
        Ok(session)
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
    // With a cgroup, the command starts through `capstan shim-exec`, which joins the cgroup
    // (and sets oom_score_adj) and then execs it: limited from its first instruction.
    let mut cmd = match std::env::current_exe() {
        Ok(exe) if !f.cgroups.is_empty() => {
            let mut c = std::process::Command::new(exe);
            c.arg("shim-exec");
            for cg in &f.cgroups {
                c.arg("--cgroup").arg(cg);
            }
            c.arg("--oom-score-adj")
                .arg(f.resources.oom_score_adj.to_string())
                .arg("--")
                .args(&f.argv);
            c
        }
        _ => {
            let mut c = std::process::Command::new(&f.argv[0]);
            c.args(&f.argv[1..]);
            c
        }
    };
    cmd.env_clear()
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
    // An OOM kill anywhere in the container's cgroup (its command, or a child whose death a
    // shell turned into exit code 137) makes it OOMKilled, as containerd reports it.
    let oom = code != 0 && f.cgroups.iter().any(|cg| oom_kills(cg) > 0);
    record_exit(
        code,
        signal,
        match (code, oom) {
            (_, true) => "OOMKilled",
            (0, _) => "Completed",
            _ => "Error",
        },
        None,
    );
    code
}

/// `capstan shim-exec --cgroup DIR... --oom-score-adj N -- ARGV...`: joins the cgroups (one
/// per hierarchy), sets the OOM score adjustment and execs ARGV (same pid, environment,
/// directory and process group). Returns only if that fails, with the exit code to use (the
/// message goes to stderr, which is the container's log).
/// A pseudo-terminal: (master, slave).
fn open_pty() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use rustix::pty::OpenptFlags;
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok((master, slave))
}

pub fn shim_exec(cgroups: &[PathBuf], oom_score_adj: i64, tty: bool, argv: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    // `kubectl exec -t`: a session of its own whose controlling terminal is the pty on stdin.
    if tty {
        if let Err(e) = rustix::process::setsid() {
            eprintln!("capstan: setsid: {e}");
            return 128;
        }
        if let Err(e) = rustix::process::ioctl_tiocsctty(std::io::stdin()) {
            eprintln!("capstan: cannot take the terminal: {e}");
            return 128;
        }
    }
    for cg in cgroups {
        // "0" is the writing process itself.
        if let Err(e) = std::fs::write(cg.join("cgroup.procs"), "0") {
            eprintln!("capstan: cannot join the cgroup {}: {e}", cg.display());
            return 128;
        }
    }
    // Lowering the score needs CAP_SYS_RESOURCE; without it the inherited score stays, as
    // containerd's restrict_oom_score_adj does (raising is always allowed).
    if oom_score_adj != 0 {
        let _ = std::fs::write("/proc/self/oom_score_adj", oom_score_adj.to_string());
    }
    let Some((program, args)) = argv.split_first() else {
        eprintln!("capstan: shim-exec: no command");
        return 128;
    };
    let err = std::process::Command::new(program).args(args).exec();
    // The shim reported a start failure of its own command as 128 with the error; the same here.
    eprintln!("failed to start {program:?}: {err}");
    128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_written_as_runc_converts_them_for_cgroup_v2() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["cpu.max", "memory.max", "memory.swap.max"] {
            std::fs::write(dir.path().join(f), "max").unwrap();
        }
        let r = crate::runtime::Resources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: -997,
        };
        write_limits(dir.path(), &r).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("cpu.weight"), "20"); // 1 + (510 * 9999) / 262142
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        // No limits: an unlimited quota, nothing else written.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.max"), "x").unwrap();
        write_limits(dir.path(), &crate::runtime::Resources::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cpu.max")).unwrap(),
            "max 100000"
        );
        assert!(!dir.path().join("memory.max").exists());
        assert!(!dir.path().join("cpu.weight").exists());
    }

    #[test]
    fn limits_are_written_to_cgroup_v1_hierarchies() {
        let r = crate::runtime::Resources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 0,
        };
        let cpu = tempfile::tempdir().unwrap();
        for f in ["cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"] {
            std::fs::write(cpu.path().join(f), "0").unwrap();
        }
        write_limits(cpu.path(), &r).unwrap();
        let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(read(cpu.path(), "cpu.shares"), "512");
        assert_eq!(read(cpu.path(), "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(cpu.path(), "cpu.cfs_period_us"), "100000");
        assert!(!cpu.path().join("memory.limit_in_bytes").exists());
        let memory = tempfile::tempdir().unwrap();
        for f in ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] {
            std::fs::write(memory.path().join(f), "0").unwrap();
        }
        write_limits(memory.path(), &r).unwrap();
        assert_eq!(
            read(memory.path(), "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            read(memory.path(), "memory.memsw.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert!(!memory.path().join("cpu.shares").exists());
    }

    #[test]
    fn pod_cgroups_stay_under_the_root() {
        let rt = ProcessRuntime {
            root: PathBuf::from("/nonexistent"),
            shim: vec![],
            host_ip: "127.0.0.1".into(),
            cgroup_roots: vec![
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/memory"),
            ],
        };
        assert_eq!(
            rt.pod_cgroups("/kubepods/burstable/podu1"),
            [
                PathBuf::from("/sys/fs/cgroup/cpu/kubepods/burstable/podu1"),
                PathBuf::from("/sys/fs/cgroup/memory/kubepods/burstable/podu1"),
            ]
        );
        assert!(rt.pod_cgroups("").is_empty());
        assert!(rt.pod_cgroups("/kubepods/../../etc").is_empty());
        assert!(rt.pod_cgroups("/kubepods//x").is_empty());
        let without = ProcessRuntime {
            cgroup_roots: Vec::new(),
            ..rt
        };
        assert!(without.pod_cgroups("/kubepods/podu1").is_empty());
    }

    #[test]
    fn oom_kills_are_read_from_memory_events() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(oom_kills(dir.path()), 0);
        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(dir.path()), 1);
        let v1 = tempfile::tempdir().unwrap();
        std::fs::write(
            v1.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(oom_kills(v1.path()), 2);
    }
}
