//! The containerd cluster the CRI suites share: `capstan up --runtime cri` with its own
//! containerd, and a bridge, pod CIDR, service CIDR and nftables table from a network slot
//! no other running suite holds (so suites running at once never meet), busybox imported; on
//! drop everything it started goes.
#![allow(dead_code)] // each suite uses its part

use std::path::{Path, PathBuf};
use std::time::Duration;

use capstan_node_agent::runtime::Runtime as _;
use capstan_node_agent::runtime::cri::CriRuntime;
use capstan_testkit::{CapstanUp, NetSlot, capstan_bin, eventually, kubectl, temp_dir};
use serde_json::Value;

pub const NODE: &str = "cri-e2e";

pub fn missing_prerequisites() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root");
    }
    if !capstan_node_agent::containerd::available() {
        missing.push("containerd, runc and the CNI plugins");
    }
    for tool in ["umoci", "skopeo", "ctr"] {
        if capstan_node_agent::containerd::which(tool).is_none() {
            missing.push(tool);
        }
    }
    missing
}

/// Whether `suite` can run here; if not, says what is missing (and fails where CI requires
/// containerd: `CAPSTAN_REQUIRE_CONTAINERD=1`).
pub fn runnable(suite: &str) -> bool {
    let missing = missing_prerequisites();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{suite} e2e needs: {}", missing.join(", "));
    if std::env::var_os("CAPSTAN_REQUIRE_CONTAINERD").is_some_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// The cluster; on drop (also on a failed assertion) everything it started goes: `capstan up`
/// by pid, every pod through CRI, containerd by its pid, leftover mounts under the data dir,
/// the bridge.
pub struct Cluster {
    pub up: Option<CapstanUp>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub bridge: String,
    pub cidr: String,
    /// The Services' range and the agent's nftables table: this cluster's own.
    pub service_cidr: String,
    pub table: String,
    /// Flags `capstan up` gets beyond the cluster's own.
    pub extra: Vec<String>,
    /// Held while the cluster lives (declared last: released after the drop's clean-up).
    pub slot: NetSlot,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// The cluster with more `capstan up` flags.
    pub fn start_with(extra: &[&str]) -> Cluster {
        let dir = temp_dir("capstan-cri-").unwrap();
        // Not the data dir's images/, which `capstan up` imports at start: busybox alone is
        // given, once the cluster is up; the sandbox image is the agent's own.
        let images = dir.path().join("archives");
        build_images(&images);
        let slot = NetSlot::take();
        let mut c = Cluster {
            up: None,
            kubeconfig: dir.path().join("kubeconfig"),
            dir,
            bridge: slot.name("capt"),
            cidr: slot.pod_cidr(),
            service_cidr: slot.service_cidr(),
            table: slot.name("capstan-e2e-"),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            slot,
        };
        c.remove_network();
        c.boot();
        let import = std::process::Command::new(capstan_bin())
            .args(["image", "import", "--cri-socket"])
            .arg(c.socket())
            .arg(images.join("busybox.tar"))
            .output()
            .unwrap();
        assert!(
            import.status.success(),
            "capstan image import: {}",
            String::from_utf8_lossy(&import.stderr)
        );
        c
    }

    pub fn boot(&mut self) {
        let data = self.dir.path().display().to_string();
        let mut args: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        args.extend([
            "--data-dir",
            &data,
            "--runtime",
            "cri",
            "--node-name",
            NODE,
            "--pod-cidr",
            &self.cidr,
            "--cni-bridge",
            &self.bridge,
            "--service-cidr",
            &self.service_cidr,
            "--proxy-table",
            &self.table,
            "--dns-port",
            "0",
        ]);
        let up = CapstanUp::start(capstan_bin(), &args).unwrap();
        self.up = Some(up);
        eventually(Duration::from_secs(60), "node Ready", || {
            self.json(&["get", "node", NODE]).is_some_and(|n| {
                n["status"]["nodeInfo"]["containerRuntimeVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("containerd://"))
                    && n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
                        .as_u64()
                        .is_some_and(|p| p > 0)
            })
        })
        .unwrap();
    }

    /// What a failed name lookup from `pod` needs explained: the pod's resolv.conf, an
    /// nslookup of `name`, the kube-dns and Service slices, the agent's DNS and proxy log.
    pub fn explain_lookup(&self, pod: &str, name: &str) -> String {
        let run = |args: &[&str]| {
            let out = kubectl(&self.kubeconfig, args, None);
            format!(
                "$ kubectl {}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let log = std::fs::read_to_string(self.dir.path().join(capstan_testkit::UP_LOG))
            .unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("dns") || l.contains("proxy") || l.contains("WARN"))
            .collect();
        [
            run(&["exec", pod, "--", "cat", "/etc/resolv.conf"]),
            run(&["exec", pod, "--", "nslookup", name]),
            run(&["get", "endpointslices", "-A", "-o", "wide"]),
            format!(
                "capstan up's log (dns, proxy, warnings; last 40):\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            ),
        ]
        .join("\n")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd/containerd.sock")
    }

    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = kubectl(&self.kubeconfig, args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Option<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = kubectl(&self.kubeconfig, &a, None);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    pub fn pod(&self, name: &str) -> Value {
        self.json(&["get", "pod", name]).unwrap_or(Value::Null)
    }

    pub fn wait_pod(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let ok = eventually(within, what, || {
            last = self.pod(name);
            f(&last)
        });
        if ok.is_err() {
            let log = std::fs::read_to_string(self.dir.path().join("containerd/containerd.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            panic!(
                "pod {name}: {what} not seen within {within:?}; last status:\n{}\ncontainerd log (newest first):\n{}",
                serde_json::to_string_pretty(&last["status"]).unwrap_or_default(),
                tail.join("\n")
            );
        }
        last
    }
}

pub use capstan_testkit::machines::{kill_matching, unmount_under};

/// busybox.tar and pause.tar built into `dir` by e2e/images/build.sh.
pub fn build_images(dir: &Path) {
    let build = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build.sh"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "e2e/images/build.sh: {}",
        String::from_utf8_lossy(&build.stderr)
    );
}

pub async fn cri(socket: &Path) -> CriRuntime {
    CriRuntime::connect(socket, Path::new("/sys/fs/cgroup"))
        .await
        .unwrap()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.up = None; // kill -9 of capstan up
        let socket = self.socket();
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(async {
                if let Ok(Ok(c)) = tokio::time::timeout(
                    Duration::from_secs(10),
                    CriRuntime::connect(&socket, Path::new("/sys/fs/cgroup")),
                )
                .await
                {
                    for sb in c.list_sandboxes().await.unwrap_or_default() {
                        let _ = c.stop_sandbox(&sb.id).await;
                        let _ = c.remove_sandbox(&sb.id).await;
                    }
                }
            });
        }
        // Last resort for pods CRI could not remove (containerd already stopped by a clean
        // stop of `capstan up`): their shims, found by this cluster's socket, by pid.
        kill_matching("containerd-shim", &socket.display().to_string());
        let pid_file = self.dir.path().join("containerd/containerd.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            capstan_testkit::signal(pid, "KILL");
            let _ = eventually(Duration::from_secs(5), "containerd gone", || {
                !Path::new(&format!("/proc/{pid}")).exists()
                    || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .is_ok_and(|s| s.contains(") Z "))
            });
        }
        // Whatever is still mounted under the data dir (nothing, when the pods went through
        // CRI), innermost first.
        unmount_under(&self.dir.path().display().to_string());
        self.remove_network();
    }
}

impl Cluster {
    /// The slot's nftables table and bridge. The proxy's rules outlive a kill -9 (a restarted
    /// agent adopts them); so do a killed test's: removed before a slot is used, too.
    fn remove_network(&self) {
        self.slot.remove_cni_masquerade();
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Pids whose cgroup names the container.
pub fn pids_of(container_id: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains(container_id))
        {
            out.push(pid);
        }
    }
    out.sort();
    out
}

pub fn status_of<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or(&Value::Null)
}

pub fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// A Deployment of busybox httpd pods serving `page` (a shell expression) on port 8080, named
/// `http`, Ready by `probe`.
pub fn httpd(name: &str, replicas: u32, page: &str, probe: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: localhost/busybox:1
        command: ["sh", "-c", "mkdir -p /www && {page} > /www/index.html && touch /tmp/ready && exec httpd -f -p 8080 -h /www"]
        ports: [{{containerPort: 8080, name: http}}]
        readinessProbe: {probe}
"#
    )
}
