//! An in-memory runtime for the pod workers' tests: containers "run" until the test makes them
//! exit ([`FakeRuntime::exit`]); every call is recorded ([`FakeRuntime::calls`]). Its clock
//! is tokio's, anchored to the wall clock when it was made, so tests pause and advance time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::exec::{ExecIo, ExecProcess, TermSize};
use super::{
    Container, ContainerConfig, ContainerState, ExecRequest, ExecResult, ExecSession, Result,
    Runtime, RuntimeError, Sandbox, SandboxConfig, SandboxState,
};

#[derive(Debug, Default)]
struct State {
    next: u64,
    sandboxes: BTreeMap<String, Sandbox>,
    containers: BTreeMap<String, Container>,
    calls: Vec<String>,
    /// Images that are not present (and cannot be pulled).
    missing: std::collections::BTreeSet<String>,
    /// Exit codes of exec probes, by container name (0 when unset).
    exec_exit: BTreeMap<String, i32>,
    /// Why the runtime is not ready, when it is not.
    unhealthy: Option<String>,
    /// (cumulative CPU ns, working set bytes) of containers, by id.
    usage: BTreeMap<String, (u64, u64)>,
}

#[derive(Debug)]
pub struct FakeRuntime {
    state: Mutex<State>,
    /// The clock's anchor: this wall time was tokio's `Instant` then.
    anchor: (jiff::Timestamp, tokio::time::Instant),
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime {
            state: Mutex::default(),
            anchor: (jiff::Timestamp::now(), tokio::time::Instant::now()),
        }
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The calls made so far, as "verb target" strings.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Makes a running container exit with `code` (137 with reason OOMKilled when `oom`).
    pub fn exit(&self, id: &str, code: i32, oom: bool) {
        let now = self.now();
        let mut s = self.lock();
        if let Some(c) = s.containers.get_mut(id) {
            c.state = ContainerState::Exited;
            c.exit_code = Some(code);
            c.finished_at = Some(now);
            c.reason = Some(
                if oom {
                    "OOMKilled"
                } else if code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .into(),
            );
        }
    }

    /// Makes `image` absent: ImageStatus says so and PullImage fails.
    pub fn remove_image(&self, image: &str) {
        self.lock().missing.insert(image.to_string());
    }

    /// Makes execs in containers named `name` exit with `code`.
    /// Makes the runtime report itself not ready (`Some(why)`) or ready again.
    pub fn set_unhealthy(&self, why: Option<&str>) {
        self.lock().unhealthy = why.map(str::to_string);
    }

    pub fn set_exec_exit(&self, name: &str, code: i32) {
        self.lock().exec_exit.insert(name.to_string(), code);
    }

    /// Sets what ContainerStats reports for container `id`: its CPU time so far and its
    /// working set.
    pub fn set_usage(&self, id: &str, cpu_ns: u64, working_set: u64) {
        self.lock()
            .usage
            .insert(id.to_string(), (cpu_ns, working_set));
    }

    /// The id of the newest container named `name`.
    pub fn container_named(&self, name: &str) -> Option<String> {
        self.lock()
            .containers
            .values()
            .filter(|c| c.config.name == name)
            .max_by_key(|c| (c.config.attempt, c.created_at))
            .map(|c| c.id.clone())
    }
}

impl Runtime for FakeRuntime {
    fn version(&self) -> String {
        "fake://0.1".into()
    }

    async fn health(&self) -> std::result::Result<(), String> {
        self.lock().unhealthy.clone().map_or(Ok(()), Err)
    }

    fn now(&self) -> jiff::Timestamp {
        let (wall, mono) = self.anchor;
        let since = jiff::SignedDuration::try_from(mono.elapsed()).unwrap_or_default();
        wall.checked_add(since).unwrap_or(wall)
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<Sandbox> {
        let now = self.now();
        let mut s = self.lock();
        s.next += 1;
        let id = format!("sandbox-{}", s.next);
        s.calls.push(format!("run_sandbox {}", config.name));
        let sb = Sandbox {
            id: id.clone(),
            config: config.clone(),
            state: SandboxState::Ready,
            created_at: now,
            ip: Some(format!("10.88.0.{}", s.next % 250 + 2)),
        };
        s.sandboxes.insert(id, sb.clone());
        Ok(sb)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<()> {
        let now = self.now();
        let mut s = self.lock();
        s.calls.push(format!("stop_sandbox {id}"));
        for c in s.containers.values_mut().filter(|c| c.sandbox_id == id) {
            if c.state == ContainerState::Running {
                c.state = ContainerState::Exited;
                c.exit_code = Some(137);
                c.reason = Some("Error".into());
                c.finished_at = Some(now);
            }
        }
        if let Some(sb) = s.sandboxes.get_mut(id) {
            sb.state = SandboxState::NotReady;
        }
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(format!("remove_sandbox {id}"));
        s.containers.retain(|_, c| c.sandbox_id != id);
        s.sandboxes.remove(id);
        Ok(())
    }

    async fn list_sandboxes(&self) -> Result<Vec<Sandbox>> {
        Ok(self.lock().sandboxes.values().cloned().collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<Container> {
        let now = self.now();
        let mut s = self.lock();
        if !s.sandboxes.contains_key(sandbox_id) {
            return Err(RuntimeError::NotFound {
                what: "sandbox",
                id: sandbox_id.into(),
            });
        }
        if config.command.first().is_some_and(|a| a == "fail-create") {
            return Err(RuntimeError::Config("cannot create: fail-create".into()));
        }
        s.next += 1;
        let id = format!("container-{}", s.next);
        s.calls.push(format!(
            "create_container {} {}",
            config.name, config.attempt
        ));
        let c = Container {
            id: id.clone(),
            sandbox_id: sandbox_id.into(),
            config: config.clone(),
            state: ContainerState::Created,
            created_at: now,
            started_at: None,
            finished_at: None,
            exit_code: None,
            reason: None,
            message: None,
            image_ref: format!("sha256:{}", config.image),
        };
        s.containers.insert(id, c.clone());
        Ok(c)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let now = self.now();
        let mut s = self.lock();
        s.calls.push(format!("start_container {id}"));
        let c = s
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound {
                what: "container",
                id: id.into(),
            })?;
        c.state = ContainerState::Running;
        c.started_at = Some(now);
        Ok(())
    }

    async fn stop_container(&self, id: &str, _grace: Duration) -> Result<()> {
        let now = self.now();
        let mut s = self.lock();
        s.calls.push(format!("stop_container {id}"));
        if let Some(c) = s.containers.get_mut(id)
            && c.state == ContainerState::Running
        {
            c.state = ContainerState::Exited;
            c.exit_code = Some(143);
            c.reason = Some("Error".into());
            c.finished_at = Some(now);
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(format!("remove_container {id}"));
        s.containers.remove(id);
        Ok(())
    }

    async fn list_containers(&self) -> Result<Vec<Container>> {
        Ok(self.lock().containers.values().cloned().collect())
    }

    async fn pod_state(&self, uid: &str) -> Result<(Vec<Sandbox>, Vec<Container>)> {
        let mut s = self.lock();
        s.calls.push(format!("pod_state {uid}"));
        let sandboxes: Vec<Sandbox> = s
            .sandboxes
            .values()
            .filter(|sb| sb.config.labels.get(super::POD_UID).map(String::as_str) == Some(uid))
            .cloned()
            .collect();
        let containers = s
            .containers
            .values()
            .filter(|c| sandboxes.iter().any(|sb| sb.id == c.sandbox_id))
            .cloned()
            .collect();
        Ok((sandboxes, containers))
    }

    async fn container_stats(&self) -> Result<Vec<super::ContainerStats>> {
        let s = self.lock();
        Ok(s.containers
            .values()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| {
                let usage = s.usage.get(&c.id);
                super::ContainerStats {
                    id: c.id.clone(),
                    cpu_usage_ns: usage.map(|u| u.0),
                    memory_working_set_bytes: usage.map(|u| u.1),
                }
            })
            .collect())
    }

    async fn exec_sync(&self, id: &str, cmd: &[String], _timeout: Duration) -> Result<ExecResult> {
        let mut s = self.lock();
        s.calls.push(format!("exec_sync {id} {}", cmd.join(" ")));
        let c = s.containers.get(id).ok_or_else(|| RuntimeError::NotFound {
            what: "container",
            id: id.into(),
        })?;
        if c.state != ContainerState::Running {
            return Err(RuntimeError::Rpc {
                op: "exec",
                message: format!("container {id} is not running"),
            });
        }
        let exit_code = s.exec_exit.get(&c.config.name).copied().unwrap_or(0);
        Ok(ExecResult {
            exit_code,
            ..Default::default()
        })
    }

    /// Attach: a container that echoes its stdin (a `cat`).
    async fn attach(&self, id: &str, req: &ExecRequest) -> Result<ExecSession> {
        let cat = ExecRequest {
            command: vec!["cat".into()],
            ..req.clone()
        };
        self.exec(id, &cat).await
    }

    /// `cat` copies stdin to stdout; anything else prints its command line on stdout, then
    /// `err` on stderr — or, with a terminal, the first size it is sent — and exits like the
    /// container's exec probes.
    async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecSession> {
        let code = {
            let mut s = self.lock();
            s.calls.push(format!("exec {id} {}", req.command.join(" ")));
            let c = s.containers.get(id).ok_or_else(|| RuntimeError::NotFound {
                what: "container",
                id: id.into(),
            })?;
            if c.state != ContainerState::Running {
                return Err(RuntimeError::Rpc {
                    op: "exec",
                    message: format!("container {id} is not running"),
                });
            }
            s.exec_exit.get(&c.config.name).copied().unwrap_or(0)
        };
        use tokio::io::AsyncWriteExt as _;
        // The command's streams are in-memory pipes: (our end, its end).
        let (stdin, mut input) = tokio::io::duplex(64 * 1024);
        let (stdout, mut out) = tokio::io::duplex(64 * 1024);
        let (stderr, mut err) = tokio::io::duplex(64 * 1024);
        let (sizes_tx, mut sizes) = tokio::sync::mpsc::channel::<TermSize>(4);
        let (cmd, tty) = (req.command.clone(), req.tty);
        // Writes to a stream nobody reads (stderr with a terminal) fail, as they may.
        let command = tokio::spawn(async move {
            if cmd == ["cat"] {
                let _ = tokio::io::copy(&mut input, &mut out).await;
            } else {
                let _ = out
                    .write_all(format!("{}\n", cmd.join(" ")).as_bytes())
                    .await;
                let _ = err.write_all(b"err\n").await;
                if tty && let Some(sz) = sizes.recv().await {
                    let size = format!("size {}x{}\n", sz.width, sz.height);
                    let _ = out.write_all(size.as_bytes()).await;
                }
            }
        });
        let io = ExecIo {
            stdin: Some(Box::new(stdin)),
            stdout: Some(Box::new(stdout)),
            stderr: Some(Box::new(stderr)),
        };
        Ok(super::exec::start(
            req,
            io,
            FakeExec {
                command,
                code,
                sizes: sizes_tx,
            },
        ))
    }

    async fn image_status(&self, image: &str) -> Result<Option<String>> {
        let mut s = self.lock();
        s.calls.push(format!("image_status {image}"));
        Ok((!s.missing.contains(image)).then(|| format!("sha256:{image}")))
    }

    async fn pull_image(&self, image: &str) -> Result<String> {
        let mut s = self.lock();
        s.calls.push(format!("pull_image {image}"));
        if s.missing.contains(image) {
            return Err(RuntimeError::Rpc {
                op: "pull image",
                message: format!("failed to resolve reference {image:?}: no registry reachable"),
            });
        }
        Ok(format!("sha256:{image}"))
    }
}

/// An exec in the fake runtime: a task playing the command.
struct FakeExec {
    command: tokio::task::JoinHandle<()>,
    code: i32,
    sizes: tokio::sync::mpsc::Sender<TermSize>,
}

impl ExecProcess for FakeExec {
    async fn resize(&mut self, size: TermSize) {
        let _ = self.sizes.try_send(size);
    }

    async fn kill(&mut self) {
        self.command.abort();
    }

    async fn wait(&mut self) -> std::result::Result<i32, String> {
        match (&mut self.command).await {
            Ok(()) => Ok(self.code),
            Err(e) if e.is_cancelled() => Ok(137),
            Err(e) => Err(e.to_string()),
        }
    }
}
