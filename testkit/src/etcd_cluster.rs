//! A real etcd cluster of several members on loopback, for the control plane's HA tests: each
//! member its own process, ports and data dir; a member can be killed (-9) and the rest keep
//! quorum. Members are stopped by pid on drop.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{etcd_binary, etcd_command, free_port, health};

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `n` members together and waits (up to 30 s) until every one is healthy (which
    /// needs an elected leader).
    pub fn start(n: usize) -> Result<EtcdCluster> {
        let dir = tempfile::Builder::new()
            .prefix("capstan-etcd-cluster-")
            .tempdir()
            .context("create etcd temp dir")?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                child: None,
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("capstan-{}-{}", std::process::id(), members[0].client_port);
        let bin = etcd_binary()?;
        let mut c = EtcdCluster { dir, members };
        for i in 0..c.members.len() {
            let log = std::fs::File::create(c.log_path(i))?;
            let m = &c.members[i];
            let child = etcd_command(
                &bin,
                &m.name,
                &c.dir.path().join(&m.name),
                m.client_port,
                m.peer_port,
                &initial,
            )
            .arg(format!("--initial-cluster-token={token}"))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
            c.members[i].child = Some(child);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..c.members.len() {
            while !health(c.members[i].client_port).unwrap_or(false) {
                if Instant::now() > deadline {
                    bail!(
                        "etcd member {} not healthy within 30 s; log:\n{}",
                        c.members[i].name,
                        std::fs::read_to_string(c.log_path(i)).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(c)
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{i}.log"))
    }

    /// Every member's client URL, comma-separated (what `--etcd-endpoints` takes).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills member `i` with SIGKILL (a crashed machine) and waits for it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether member `i` answers /health (it does only with a leader).
    pub fn healthy(&self, i: usize) -> bool {
        health(self.members[i].client_port).unwrap_or(false)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
