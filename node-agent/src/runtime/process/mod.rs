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
//!
//! This file is the runtime proper, the counterpart of containerd's CRI service
//! (pkg/cri/server: the sandbox and container lifecycle, exec); the files beside it hold its
//! parts: [`state`] (the JSON files), [`cgroups`] (limits and usage), [`shim`] (the per-container
//! process that runs, logs and records a container).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::exec::{ExecIo, ExecProcess, TermSize};
use super::{
    Container, ContainerConfig, ContainerState, ExecRequest, ExecResult, ExecSession, Result,
    Runtime, RuntimeError, Sandbox, SandboxConfig, SandboxState,
};

mod attach;
mod cgroups;
mod shim;
mod state;

pub use cgroups::cgroup_roots;
pub use shim::{log_record, shim_exec, shim_main};

use cgroups::{ensure_cgroup, remove_cgroup, write_limits};
use shim::{container_command, open_pty};
use state::{
    ContainerFile, ExitFile, PidFile, SandboxFile, alive, is_zombie, read_json, signal_group,
    start_ticks, write_json,
};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where pods find their ServiceAccount token (the ServiceAccount admission plugin mounts it).
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    root: PathBuf,
    /// The shim: a program and the arguments before the container directory.
    shim: Vec<String>,
    host_ip: String,
    /// The cgroup hierarchies limits go to ([`cgroup_roots`]; empty: they cannot, here).
    cgroup_roots: Vec<PathBuf>,
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
        cgroups::pod_cgroups(&self.cgroup_roots, parent)
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
                stdin: f.stdin,
                stdin_once: f.stdin_once,
                tty: f.tty,
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
        // The ServiceAccount token every pod gets is left on the host (its volume directory):
        // processes share the node's filesystem, so it cannot appear at its path.
        if let Some(m) = config
            .mounts
            .iter()
            .find(|m| m.container_path != SERVICE_ACCOUNT_MOUNT)
        {
            return Err(RuntimeError::Config(format!(
                "container {:?}: the process runtime cannot mount volumes ({:?} at {}); volumeMounts need --runtime cri",
                config.name,
                m.host_path.display(),
                m.container_path
            )));
        }
        if let Some(m) = config.mounts.first() {
            tracing::debug!(container = %config.name, token = %m.host_path.display(), "the process runtime does not mount the service account token");
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
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
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

    /// Read from each running container's cgroups (none without writable cgroups).
    async fn container_stats(&self) -> Result<Vec<super::ContainerStats>> {
        let running: Vec<(String, Vec<PathBuf>)> = self
            .ids("containers")
            .into_iter()
            .filter(|id| {
                self.load_container(id)
                    .is_some_and(|c| c.state == ContainerState::Running)
            })
            .filter_map(|id| {
                let f: ContainerFile = read_json(&self.container_dir(&id).join("container.json"))?;
                Some((id, f.cgroups))
            })
            .collect();
        Ok(running
            .into_iter()
            .map(|(id, dirs)| super::ContainerStats {
                id,
                cpu_usage_ns: cgroups::cpu_usage_ns(&dirs),
                memory_working_set_bytes: cgroups::memory_working_set(&dirs),
            })
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
            [program, sub, ..] if sub == "shim" => Some(PathBuf::from(program)),
            _ => None,
        };
        if req.tty && trampoline.is_none() {
            return Err(RuntimeError::Config(
                "exec: a terminal needs the capstan shim, which this runtime lacks".into(),
            ));
        }
        let mut c = tokio::process::Command::from(container_command(
            &f,
            trampoline.as_deref(),
            req.tty,
            &req.command,
        ));
        c.kill_on_drop(false);
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
        let io = match &master {
            // The terminal's master: output and input both, a copy each.
            Some(m) => {
                let reader = tokio::fs::File::from_std(m.try_clone().map_err(io_err)?);
                let writer = tokio::fs::File::from_std(m.try_clone().map_err(io_err)?);
                ExecIo {
                    stdin: Some(Box::new(writer)),
                    stdout: Some(Box::new(reader)),
                    stderr: None,
                }
            }
            None => ExecIo {
                stdin: child.stdin.take().map(|w| Box::new(w) as _),
                stdout: child.stdout.take().map(|r| Box::new(r) as _),
                stderr: child.stderr.take().map(|r| Box::new(r) as _),
            },
        };
        let pid = child.id().map(|p| p as i32);
        Ok(super::exec::start(req, io, HostExec { child, pid, master }))
    }

    /// `kubectl attach`: through the shim, which holds the container's stdio.
    async fn attach(&self, id: &str, req: &ExecRequest) -> Result<ExecSession> {
        if self.load_container(id).map(|c| c.state) != Some(ContainerState::Running) {
            return Err(RuntimeError::Rpc {
                op: "attach",
                message: format!("container {id} is not running"),
            });
        }
        attach::attach(&self.container_dir(id), req)
            .await
            .map_err(|e| RuntimeError::io(format!("attach to {id}"), e))
    }

    /// Runs `cmd` on the host with the container's environment and working directory.
    async fn exec_sync(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecResult> {
        let f: ContainerFile = read_json(&self.container_dir(id).join("container.json"))
            .ok_or_else(|| RuntimeError::NotFound {
                what: "container",
                id: id.into(),
            })?;
        let Some(program) = cmd.first() else {
            return Err(RuntimeError::Config("exec: empty command".into()));
        };
        let mut c = tokio::process::Command::from(container_command(&f, None, false, cmd));
        c.stdin(std::process::Stdio::null()).kill_on_drop(true);
        match tokio::time::timeout(timeout, c.output()).await {
            Ok(Ok(out)) => Ok(ExecResult {
                exit_code: exit_code(out.status),
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

/// A command's exit code as a shell reports it: 128 + the signal that killed it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or(128 + status.signal().unwrap_or(9))
}

/// An exec on the host (`kubectl exec` on the process runtime): the child, its process group,
/// and the terminal's master when it has one.
struct HostExec {
    child: tokio::process::Child,
    pid: Option<i32>,
    master: Option<std::fs::File>,
}

impl ExecProcess for HostExec {
    async fn resize(&mut self, size: TermSize) {
        if let Some(master) = &self.master {
            let _ = rustix::termios::tcsetwinsize(
                master,
                rustix::termios::Winsize {
                    ws_row: size.height,
                    ws_col: size.width,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                },
            );
        }
    }

    async fn kill(&mut self) {
        // Its process group too: what it started goes with it.
        if let Some(pid) = self.pid.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.start_kill();
    }

    async fn wait(&mut self) -> std::result::Result<i32, String> {
        self.child
            .wait()
            .await
            .map(exit_code)
            .map_err(|e| format!("waiting for the command: {e}"))
    }

    async fn exited(&mut self) -> bool {
        // The pipes and the terminal end by themselves (a terminal once its last slave closes).
        self.master = None;
        false
    }
}
