//! The few calls of containerd's own API (`containerd.services.*`, same socket as CRI) that
//! `kubectl exec` needs. CRI's Exec hands out a URL on containerd's streaming server, which
//! speaks SPDY or the v4 WebSocket protocol — neither can say "stdin ended", which v5 (kubectl
//! ≥ 1.30) can. Containerd's Tasks API can (CloseIO), and resizes terminals and reports the
//! exit code directly, so exec goes through it: the process spec is the container's own with
//! other args, as CRI's exec builds it; its stdio are FIFOs the shim opens. [`exec`] starts
//! one; its control ([`ExecProcess`]: ResizePty, CloseIO, Kill, Wait, DeleteProcess) is all
//! that is containerd's own in the session the agent runs ([`super::exec::start`]).
//!
//! The messages are declared here with their field numbers from containerd's
//! api/services/{tasks,containers}/v1 protos (only the fields used).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::Channel;

use super::cri::{CALL_TIMEOUT, rpc};
use super::exec::{ExecIo, ExecProcess, ExecRequest, ExecSession, TermSize};
use super::{Result, RuntimeError};

/// containerd's namespace for CRI's containers.
const NAMESPACE: &str = "k8s.io";

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerResponse {
    #[prost(message, optional, tag = "1")]
    pub container: Option<ContainerRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    /// The OCI runtime spec, JSON in an Any.
    #[prost(message, optional, tag = "5")]
    pub spec: Option<prost_types::Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecProcessRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub stdin: String,
    #[prost(string, tag = "3")]
    pub stdout: String,
    #[prost(string, tag = "4")]
    pub stderr: String,
    #[prost(bool, tag = "5")]
    pub terminal: bool,
    #[prost(message, optional, tag = "6")]
    pub spec: Option<prost_types::Any>,
    #[prost(string, tag = "7")]
    pub exec_id: String,
}

/// StartRequest, WaitRequest, DeleteProcessRequest and GetRequest share this shape.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessRef {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StartResponse {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WaitResponse {
    #[prost(uint32, tag = "1")]
    pub exit_status: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteResponse {
    #[prost(uint32, tag = "3")]
    pub exit_status: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KillRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(uint32, tag = "3")]
    pub signal: u32,
    #[prost(bool, tag = "4")]
    pub all: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResizePtyRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(uint32, tag = "3")]
    pub width: u32,
    #[prost(uint32, tag = "4")]
    pub height: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseIoRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(bool, tag = "3")]
    pub stdin: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

pub const GET_CONTAINER: &str = "/containerd.services.containers.v1.Containers/Get";
pub const EXEC: &str = "/containerd.services.tasks.v1.Tasks/Exec";
pub const START: &str = "/containerd.services.tasks.v1.Tasks/Start";
pub const WAIT: &str = "/containerd.services.tasks.v1.Tasks/Wait";
pub const DELETE_PROCESS: &str = "/containerd.services.tasks.v1.Tasks/DeleteProcess";
pub const KILL: &str = "/containerd.services.tasks.v1.Tasks/Kill";
pub const RESIZE_PTY: &str = "/containerd.services.tasks.v1.Tasks/ResizePty";
pub const CLOSE_IO: &str = "/containerd.services.tasks.v1.Tasks/CloseIO";

/// One unary call in containerd's k8s.io namespace; `timeout` None: as long as it takes
/// (Wait).
pub async fn call<Req, Resp>(
    channel: &Channel,
    path: &'static str,
    req: Req,
    timeout: Option<Duration>,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("containerd: {e}")))?;
    let mut r = tonic::Request::new(req);
    r.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(NAMESPACE),
    );
    if let Some(t) = timeout {
        r.set_timeout(t);
    }
    grpc.unary(
        r,
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The process spec for an exec in a container whose OCI spec is `spec` (JSON): the
/// container's process (user, env, cwd, capabilities, ...) with `args` and `terminal`.
pub fn exec_process(spec: &[u8], args: &[String], terminal: bool) -> Result<Vec<u8>, String> {
    let spec: serde_json::Value =
        serde_json::from_slice(spec).map_err(|e| format!("the container's spec: {e}"))?;
    let mut process = spec
        .get("process")
        .cloned()
        .filter(serde_json::Value::is_object)
        .ok_or("the container's spec has no process")?;
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(terminal);
    if let Some(p) = process.as_object_mut() {
        p.remove("consoleSize");
    }
    serde_json::to_vec(&process).map_err(|e| e.to_string())
}

/// Starts `req` in the container `id`'s task and runs it as a session: the process spec is the
/// container's own with other args ([`exec_process`]), its streams FIFOs made under
/// `exec_dir`.
pub async fn exec(
    channel: &Channel,
    exec_dir: &Path,
    id: &str,
    req: &ExecRequest,
) -> Result<ExecSession> {
    let record: GetContainerResponse = call(
        channel,
        GET_CONTAINER,
        GetContainerRequest { id: id.into() },
        Some(CALL_TIMEOUT),
    )
    .await
    .map_err(rpc("container"))?;
    let spec = record
        .container
        .and_then(|c| c.spec)
        .ok_or_else(|| RuntimeError::Rpc {
            op: "exec",
            message: format!("container {id} has no spec"),
        })?;
    let process =
        exec_process(&spec.value, &req.command, req.tty).map_err(|message| RuntimeError::Rpc {
            op: "exec",
            message,
        })?;
    let exec_id = uuid::Uuid::new_v4().simple().to_string();
    let dir = exec_dir.join(&exec_id);
    let fifos = Fifos::make(&dir, req).map_err(|e| RuntimeError::io("exec: making FIFOs", e))?;
    let this = ExecIds {
        channel: channel.clone(),
        container_id: id.to_string(),
        exec_id: exec_id.clone(),
    };
    let started = async {
        let _: Empty = call(
            channel,
            EXEC,
            ExecProcessRequest {
                container_id: id.into(),
                stdin: fifos.path("stdin"),
                stdout: fifos.path("stdout"),
                stderr: fifos.path("stderr"),
                terminal: req.tty,
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: process,
                }),
                exec_id: exec_id.clone(),
            },
            Some(CALL_TIMEOUT),
        )
        .await
        .map_err(rpc("exec"))?;
        let r: Result<StartResponse> = call(channel, START, this.process(), Some(CALL_TIMEOUT))
            .await
            .map_err(rpc("exec"));
        if r.is_err() {
            this.delete().await;
        }
        r
    }
    .await;
    if let Err(e) = started {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let drain = fifos.unwanted.map(|mut r| {
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 16 * 1024];
            while r.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        })
        .abort_handle()
    });
    let io = ExecIo {
        stdin: fifos.stdin.map(|w| Box::new(w) as _),
        stdout: fifos.stdout.map(|r| Box::new(r) as _),
        stderr: fifos.stderr.map(|r| Box::new(r) as _),
    };
    Ok(super::exec::start(
        req,
        io,
        TaskExec {
            ids: std::sync::Arc::new(this),
            waiting: None,
            dir,
            drain,
        },
    ))
}

/// An exec's identity in containerd.
struct ExecIds {
    channel: Channel,
    container_id: String,
    exec_id: String,
}

impl ExecIds {
    fn process(&self) -> ProcessRef {
        ProcessRef {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
        }
    }

    /// DeleteProcess: returns once the shim has copied all the output (or after 5 s).
    async fn delete(&self) {
        let r: std::result::Result<DeleteResponse, _> = call(
            &self.channel,
            DELETE_PROCESS,
            self.process(),
            Some(Duration::from_secs(5)),
        )
        .await;
        if let Err(e) = r {
            tracing::debug!(exec = %self.exec_id, error = %e.message(), "deleting the exec process");
        }
    }
}

/// The FIFOs of one exec, opened on our side before the shim opens its ends: read-write, so
/// neither side's open blocks and a reader sees no end of file before the shim connects.
struct Fifos {
    dir: PathBuf,
    stdin: Option<tokio::net::unix::pipe::Sender>,
    stdout: Option<tokio::net::unix::pipe::Receiver>,
    stderr: Option<tokio::net::unix::pipe::Receiver>,
    /// Without a terminal, containerd's shim opens both output paths when either is set (an
    /// empty one fails: `opening file ""`): the stream not asked for gets a FIFO too, read
    /// and dropped so that the command never blocks on it.
    unwanted: Option<tokio::net::unix::pipe::Receiver>,
}

impl Fifos {
    fn make(dir: &Path, req: &ExecRequest) -> std::io::Result<Fifos> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let fifo = |name: &str, on: bool| -> std::io::Result<Option<PathBuf>> {
            if !on {
                return Ok(None);
            }
            let p = dir.join(name);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &p,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )?;
            Ok(Some(p))
        };
        let mut opts = tokio::net::unix::pipe::OpenOptions::new();
        opts.read_write(true);
        let stdin = fifo("stdin", req.stdin)?
            .map(|p| opts.open_sender(p))
            .transpose()?;
        let stdout = fifo("stdout", req.stdout)?
            .map(|p| opts.open_receiver(p))
            .transpose()?;
        let stderr = fifo("stderr", req.stderr && !req.tty)?
            .map(|p| opts.open_receiver(p))
            .transpose()?;
        let unwanted = match (&stdout, &stderr) {
            (Some(_), None) if !req.tty => Some("stderr"),
            (None, Some(_)) => Some("stdout"),
            _ => None,
        };
        let unwanted = match unwanted {
            Some(name) => fifo(name, true)?
                .map(|p| opts.open_receiver(p))
                .transpose()?,
            None => None,
        };
        Ok(Fifos {
            dir: dir.to_path_buf(),
            stdin,
            stdout,
            stderr,
            unwanted,
        })
    }

    /// The FIFO's path for the shim, empty when there is none.
    fn path(&self, name: &str) -> String {
        let on = match name {
            "stdin" => self.stdin.is_some(),
            "stdout" => self.stdout.is_some() || self.unwanted.is_some() && self.stderr.is_some(),
            _ => self.stderr.is_some() || self.unwanted.is_some() && self.stdout.is_some(),
        };
        if on {
            self.dir.join(name).to_string_lossy().into_owned()
        } else {
            String::new()
        }
    }
}

/// An exec in a container's task: each control is a call of containerd's Tasks API.
struct TaskExec {
    ids: std::sync::Arc<ExecIds>,
    /// The Wait call, once made (a task of its own, so that waiting is cancel-safe).
    waiting: Option<tokio::task::JoinHandle<std::result::Result<i32, String>>>,
    /// The FIFOs' directory.
    dir: PathBuf,
    /// The reader of the stream nobody asked for, stopped with the exec.
    drain: Option<tokio::task::AbortHandle>,
}

impl Drop for TaskExec {
    fn drop(&mut self) {
        if let Some(d) = &self.drain {
            d.abort();
        }
    }
}

impl TaskExec {
    /// A call about this exec whose answer does not matter beyond a debug line.
    async fn control<Req>(&self, path: &'static str, req: Req, what: &str)
    where
        Req: prost::Message + Send + Sync + 'static,
    {
        let r: std::result::Result<Empty, _> =
            call(&self.ids.channel, path, req, Some(CALL_TIMEOUT)).await;
        if let Err(e) = r {
            tracing::debug!(exec = %self.ids.exec_id, error = %e.message(), "{what}");
        }
    }
}

impl ExecProcess for TaskExec {
    async fn resize(&mut self, size: TermSize) {
        let req = ResizePtyRequest {
            container_id: self.ids.container_id.clone(),
            exec_id: self.ids.exec_id.clone(),
            width: size.width.into(),
            height: size.height.into(),
        };
        self.control(RESIZE_PTY, req, "resizing the exec's terminal")
            .await;
    }

    async fn close_stdin(&mut self) {
        let req = CloseIoRequest {
            container_id: self.ids.container_id.clone(),
            exec_id: self.ids.exec_id.clone(),
            stdin: true,
        };
        self.control(CLOSE_IO, req, "closing the exec's stdin")
            .await;
    }

    async fn kill(&mut self) {
        let req = KillRequest {
            container_id: self.ids.container_id.clone(),
            exec_id: self.ids.exec_id.clone(),
            signal: 9,
            all: false,
        };
        self.control(KILL, req, "killing the exec").await;
    }

    async fn wait(&mut self) -> std::result::Result<i32, String> {
        let ids = self.ids.clone();
        let waiting = self.waiting.get_or_insert_with(|| {
            tokio::spawn(async move {
                let r: std::result::Result<WaitResponse, _> =
                    call(&ids.channel, WAIT, ids.process(), None).await;
                r.map(|w| w.exit_status as i32)
                    .map_err(|e| format!("waiting for the command: {}", e.message()))
            })
        });
        waiting
            .await
            .unwrap_or_else(|e| Err(format!("waiting for the command: {e}")))
    }

    /// DeleteProcess returns once the shim has copied all the output into the FIFOs, which
    /// never end by themselves (we hold them open read-write).
    async fn exited(&mut self) -> bool {
        self.ids.delete().await;
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::debug!(dir = %self.dir.display(), error = %e, "removing the exec's FIFOs");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exec_process_is_the_containers_with_other_args() {
        let spec = br#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 1000, "gid": 1000},
            "args": ["httpd", "-f"], "env": ["PATH=/bin", "MODE=fast"], "cwd": "/www",
            "terminal": false, "consoleSize": {"height": 1, "width": 1},
            "capabilities": {"bounding": ["CAP_CHOWN"]}}, "root": {"path": "rootfs"}}"#;
        let p: serde_json::Value = serde_json::from_slice(
            &exec_process(spec, &["sh".into(), "-c".into(), "id".into()], true).unwrap(),
        )
        .unwrap();
        assert_eq!(p["args"], serde_json::json!(["sh", "-c", "id"]));
        assert_eq!(p["terminal"], true);
        assert_eq!(p["env"][1], "MODE=fast");
        assert_eq!(p["cwd"], "/www");
        assert_eq!(p["user"]["uid"], 1000);
        assert_eq!(p["capabilities"]["bounding"][0], "CAP_CHOWN");
        assert!(p.get("consoleSize").is_none());
        assert!(p.get("root").is_none(), "the process only");
        assert!(exec_process(b"{}", &["sh".into()], false).is_err());
        assert!(exec_process(b"not json", &["sh".into()], false).is_err());
    }

    #[test]
    fn messages_encode_with_containerds_field_numbers() {
        use prost::Message;
        let m = ExecProcessRequest {
            container_id: "c".into(),
            exec_id: "e".into(),
            terminal: true,
            ..Default::default()
        };
        // container_id (1, length-delimited), terminal (5, varint), exec_id (7).
        assert_eq!(m.encode_to_vec(), [0x0a, 1, b'c', 0x28, 1, 0x3a, 1, b'e']);
        let k = KillRequest {
            container_id: "c".into(),
            exec_id: "e".into(),
            signal: 9,
            all: false,
        };
        assert_eq!(k.encode_to_vec(), [0x0a, 1, b'c', 0x12, 1, b'e', 0x18, 9]);
    }
}
