//! The process runtime's state, all in files so that it outlives the agent — what containerd
//! keeps in its metadata store and runc in its `state.json`: `sandboxes/ID/sandbox.json`,
//! `containers/ID/container.json` (the spec the shim runs), `pid.json` (written by the shim
//! once the process runs) and `exit.json` (written by the shim when it is gone, like
//! containerd-shim's and conmon's exit files); and whether a recorded pid is still the
//! process it was.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runtime::{Resources, SandboxState};

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SandboxFile {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) uid: String,
    pub(super) attempt: u32,
    pub(super) labels: std::collections::BTreeMap<String, String>,
    pub(super) host_network: bool,
    pub(super) log_directory: PathBuf,
    pub(super) state: SandboxState,
    pub(super) created_at: jiff::Timestamp,
    #[serde(default)]
    pub(super) cgroup_parent: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ContainerFile {
    pub(super) sandbox_id: String,
    pub(super) name: String,
    pub(super) attempt: u32,
    pub(super) image: String,
    pub(super) argv: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) working_dir: Option<String>,
    pub(super) labels: std::collections::BTreeMap<String, String>,
    pub(super) log_path: String,
    /// Where the shim writes the log (the sandbox's log directory joined with log_path).
    pub(super) log_file: PathBuf,
    pub(super) created_at: jiff::Timestamp,
    #[serde(default)]
    pub(super) resources: Resources,
    /// The container's own cgroup directories (one per hierarchy), when limits apply here.
    #[serde(default)]
    pub(super) cgroups: Vec<PathBuf>,
    /// The pod spec's stdin, stdinOnce and tty: what `kubectl attach` finds.
    #[serde(default)]
    pub(super) stdin: bool,
    #[serde(default)]
    pub(super) stdin_once: bool,
    #[serde(default)]
    pub(super) tty: bool,
}

/// Written by the shim once the process runs.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PidFile {
    pub(super) pid: i32,
    /// /proc/PID/stat's starttime, so a reused pid is not mistaken for the process.
    pub(super) start_ticks: u64,
    pub(super) shim_pid: i32,
    pub(super) started_at: jiff::Timestamp,
}

/// Written by the shim when the process is gone.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ExitFile {
    pub(super) exit_code: i32,
    pub(super) signal: Option<i32>,
    pub(super) finished_at: jiff::Timestamp,
    pub(super) reason: String,
    pub(super) message: Option<String>,
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `value` to `path` atomically (a temp file renamed over it).
pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(value).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// The start time of process `pid` in clock ticks since boot, if it exists.
pub(super) fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    // Fields after the command name start at field 3; starttime is field 22.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

pub(super) fn alive(pid: i32, ticks: u64) -> bool {
    start_ticks(pid) == Some(ticks) && !is_zombie(pid)
}

pub(super) fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

pub(super) fn signal_group(pid: i32, sig: rustix::process::Signal) {
    // Never pid 1 or below: kill(-1) would signal every process we may signal.
    if pid > 1
        && let Some(p) = rustix::process::Pid::from_raw(pid)
    {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}
