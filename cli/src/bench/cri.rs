//! The containerd cluster a benchmark runs on: `capstan up --runtime cri` of this binary, with
//! its own containerd, bridge, pod range and data directory, busybox imported; its pods,
//! `capstan up` and the bridge go on drop.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use capstan_node_agent::containerd;
use capstan_testkit::{CapstanUp, kubectl};

pub struct CriCluster {
    up: Option<CapstanUp>,
    pub kubeconfig: PathBuf,
    pub data: PathBuf,
    bridge: String,
}

impl Drop for CriCluster {
    fn drop(&mut self) {
        // The pods first (they outlive the agent by design), then capstan up (which stops
        // its containerd), then the bridge.
        kubectl(
            &self.kubeconfig,
            &["delete", "pods", "--all", "--grace-period=1", "--wait=true"],
            None,
        );
        if let Some(mut up) = self.up.take() {
            up.stop(Duration::from_secs(30));
        }
        super::delete_link(&self.bridge);
    }
}

impl CriCluster {
    /// Starts the cluster under `scratch` (node `node`, pods in `pod_cidr` on `bridge`, more
    /// `capstan up` flags in `extra`) and imports busybox from `images`. Blocking.
    pub fn start(
        what: &str,
        scratch: &Path,
        images: &Path,
        node: &str,
        pod_cidr: &str,
        bridge: &str,
        extra: &[&str],
    ) -> Result<CriCluster> {
        if !rustix::process::geteuid().is_root() || !containerd::available() {
            bail!("bench {what} needs root, containerd, runc and the CNI plugins");
        }
        let me = std::env::current_exe()?;
        let data = scratch.join("data");
        let mut args: Vec<&OsStr> = vec![
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--runtime".as_ref(),
            "cri".as_ref(),
            "--node-name".as_ref(),
            node.as_ref(),
            "--pod-cidr".as_ref(),
            pod_cidr.as_ref(),
            "--cni-bridge".as_ref(),
            bridge.as_ref(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let up = CapstanUp::start(&me, &args)?;
        let cluster = CriCluster {
            up: Some(up),
            kubeconfig: data.join("kubeconfig"),
            data,
            bridge: bridge.to_string(),
        };
        let import = std::process::Command::new(&me)
            .args(["image", "import", "--cri-socket"])
            .arg(cluster.socket())
            .arg(images.join("busybox.tar"))
            .output()?;
        if !import.status.success() {
            bail!(
                "capstan image import: {}",
                String::from_utf8_lossy(&import.stderr)
            );
        }
        Ok(cluster)
    }

    /// The cluster's containerd socket.
    pub fn socket(&self) -> PathBuf {
        self.data.join("containerd/containerd.sock")
    }

    /// `kubectl apply -f -` of `manifest`.
    pub fn apply(&self, manifest: &str) -> Result<()> {
        let out = kubectl(&self.kubeconfig, &["apply", "-f", "-"], Some(manifest));
        if !out.status.success() {
            bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}
