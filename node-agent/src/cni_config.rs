//! The CNI config of an agent whose pod range the cluster assigns (the node IPAM controller's
//! `spec.podCIDR`), as flannel writes its own: once this Node has a range, the bridge chain
//! over it ([`crate::containerd::conflist`]) is written to `DIR/10-capstan.conflist`, which
//! containerd's CRI plugin picks up (until then pods wait for a network, as a kubelet's do
//! with NetworkReady false). The file is rewritten only when its content would change, by
//! rename, so containerd never reads half of it.

use std::path::PathBuf;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

/// Where the conflist goes and what it says besides the range.
#[derive(Debug, Clone)]
pub struct CniConfig {
    /// containerd's CNI conf_dir.
    pub dir: PathBuf,
    /// The Linux bridge the pods attach to.
    pub bridge: String,
    /// Where host-local IPAM keeps its leases.
    pub ipam_dir: PathBuf,
    /// The bridge plugin masquerades traffic leaving the node's range (false when the agent's
    /// [`crate::pod_egress`] masquerades what leaves the cluster's range instead).
    pub ip_masq: bool,
}

pub const FILE: &str = "10-capstan.conflist";

impl CniConfig {
    /// Writes the conflist for `pod_cidr` unless it already says that; true when written.
    pub fn write(&self, pod_cidr: &str) -> std::io::Result<bool> {
        let text =
            crate::containerd::conflist(&self.bridge, pod_cidr, &self.ipam_dir, self.ip_masq);
        let path = self.dir.join(FILE);
        if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{FILE}.tmp"));
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(true)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }
}

/// The node's first IPv4 pod range.
fn pod_cidr(node: &Node) -> Option<String> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.as_ref())
        .find(|c| {
            c.split_once('/')
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv4Addr>().is_ok())
        })
        .cloned()
}

/// Watches Node `name` and keeps the conflist equal to its range, until dropped.
pub async fn run(client: kube::Client, name: String, cfg: CniConfig) {
    let api: Api<Node> = Api::all(client);
    let wc = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, wc).default_backoff().boxed();
    let mut waiting_logged = false;
    while let Some(event) = events.next().await {
        let node = match event {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => n,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "CNI config: watching the Node failed");
                continue;
            }
        };
        match pod_cidr(&node) {
            Some(range) => match cfg.write(&range) {
                Ok(true) => {
                    tracing::info!(pod_cidr = %range, path = %cfg.path().display(), "CNI config written for the node's pod range")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(path = %cfg.path().display(), error = %e, "writing the CNI config failed")
                }
            },
            None if !waiting_logged => {
                waiting_logged = true;
                tracing::info!(node = %name, "waiting for the node's pod range (spec.podCIDR) before pods get a network");
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_range_once_and_again_only_when_it_changes() {
        let d = tempfile::tempdir().unwrap();
        let cfg = CniConfig {
            dir: d.path().join("net.d"),
            bridge: "cbr9".into(),
            ipam_dir: d.path().join("ipam"),
            ip_masq: false,
        };
        assert!(cfg.write("10.244.3.0/24").unwrap());
        assert!(!cfg.write("10.244.3.0/24").unwrap());
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(cfg.path()).unwrap()).unwrap();
        assert_eq!(v["plugins"][0]["bridge"], "cbr9");
        assert_eq!(v["plugins"][0]["ipMasq"], false);
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.3.0/24"
        );
        assert!(cfg.write("10.244.4.0/24").unwrap());
        assert_eq!(
            std::fs::read_dir(&cfg.dir).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn the_ipv4_range_is_chosen() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "spec": {"podCIDR": "fd00::/64", "podCIDRs": ["fd00::/64", "10.1.2.0/24"]},
        }))
        .unwrap();
        assert_eq!(pod_cidr(&n).as_deref(), Some("10.1.2.0/24"));
    }
}
