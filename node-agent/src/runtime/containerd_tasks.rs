//! The few calls of containerd's own API (`containerd.services.*`, same socket as CRI) that
//! `kubectl exec` needs. CRI's Exec hands out a URL on containerd's streaming server, which
//! speaks SPDY or the v4 WebSocket protocol — neither can say "stdin ended", which v5 (kubectl
//! ≥ 1.30) can. Containerd's Tasks API can (CloseIO), and resizes terminals and reports the
//! exit code directly, so exec goes through it: the process spec is the container's own with
//! other args, as CRI's exec builds it; its stdio are FIFOs the shim opens.
//!
//! The messages are declared here with their field numbers from containerd's
//! api/services/{tasks,containers}/v1 protos (only the fields used).

use std::time::Duration;

use tonic::transport::Channel;

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
