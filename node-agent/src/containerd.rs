//! A containerd that Capstan runs itself (`capstan up` on a machine with containerd installed
//! and none running): everything under one directory — config, root, state, socket, runc
//! state, CNI config and IPAM state — with the settings verified on these machines (see
//! ../shared/notes/containerd-cri.md): overlayfs, cgroupfs, `restrict_oom_score_adj`, a
//! bridge + host-local + portmap CNI chain on its own bridge and pod CIDR.
//!
//! Images come as OCI archives (e2e/images/build.sh makes busybox and pause; without one, the
//! agent makes its own pause image, [`crate::pause_image`]) imported into the `k8s.io`
//! namespace with containerd's own `ctr`: CRI has no import call.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerdError {
    let context = context.into();
    move |source| ContainerdError::Io { context, source }
}

/// How to run the managed containerd.
#[derive(Debug, Clone)]
pub struct Config {
    /// Everything lives under here.
    pub dir: PathBuf,
    /// The pods' IPv4 range (host-local IPAM), e.g. 10.88.0.0/16. Empty: the range is the
    /// Node's assigned one, and [`crate::cni_config`] writes the CNI config into
    /// [`Config::cni_conf_dir`] once the cluster assigns it.
    pub pod_cidr: String,
    /// The Linux bridge the pods attach to.
    pub bridge: String,
    /// The sandbox ("pause") image; it must be imported before the first pod (the agent makes
    /// and imports its own when it is missing).
    pub sandbox_image: String,
}

/// Where the CNI plugins are (Debian's containernetworking-plugins, or the upstream path).
pub fn cni_bin_dir() -> Option<PathBuf> {
    ["/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("bridge").exists())
}

/// Whether this machine can run the managed containerd: the binary, runc and CNI plugins.
pub fn available() -> bool {
    which("containerd").is_some() && which("runc").is_some() && cni_bin_dir().is_some()
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

impl Config {
    /// The socket: under the directory, unless that path is too long for a unix socket
    /// (108 bytes), then under /run/capstan named by a hash of the directory.
    pub fn socket(&self) -> PathBuf {
        let p = self.dir.join("containerd.sock");
        if p.as_os_str().len() < 100 {
            return p;
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.dir.hash(&mut h);
        PathBuf::from(format!("/run/capstan/containerd-{:016x}.sock", h.finish()))
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("containerd.pid")
    }

    /// containerd's config.toml (version 2, for containerd 1.6 and 1.7).
    pub fn toml(&self) -> String {
        let d = self.dir.display();
        let cni = cni_bin_dir().unwrap_or_else(|| PathBuf::from("/usr/lib/cni"));
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}"
    conf_dir = "{d}/net.d"
    max_conf_num = 1
"#,
            socket = self.socket().display(),
            sandbox = self.sandbox_image,
            cni = cni.display(),
        )
    }

    /// The CNI chain for this containerd's pods ([`conflist`]).
    pub fn conflist(&self) -> String {
        conflist(
            &self.bridge,
            &self.pod_cidr,
            &self.dir.join("cni-ipam"),
            true,
        )
    }

    /// containerd's CNI conf_dir.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    /// Writes the config and the CNI conflist (when the pod range is known).
    pub fn write(&self) -> Result<(), ContainerdError> {
        let net = self.cni_conf_dir();
        std::fs::create_dir_all(&net).map_err(io(format!("creating {}", net.display())))?;
        if let Some(parent) = self.socket().parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        let cfg = self.dir.join("config.toml");
        std::fs::write(&cfg, self.toml()).map_err(io(format!("writing {}", cfg.display())))?;
        if self.pod_cidr.is_empty() {
            return Ok(());
        }
        let conf = net.join("10-capstan.conflist");
        std::fs::write(&conf, self.conflist()).map_err(io(format!("writing {}", conf.display())))
    }
}

/// The CNI chain: bridge (gateway, hairpin) with host-local IPAM over `pod_cidr` (its leases in
/// `ipam_dir`), then portmap for hostPorts. containerd brings `lo` up itself. `ip_masq`: the
/// bridge masquerades whatever leaves `pod_cidr` — right for one machine; across machines it
/// would also rewrite pod-to-pod traffic to other nodes' ranges, so there the agent masquerades
/// instead ([`crate::pod_egress`], everything leaving the whole cluster range) and this is off.
pub fn conflist(bridge: &str, pod_cidr: &str, ipam_dir: &Path, ip_masq: bool) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "capstan",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": ip_masq,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

/// A running managed containerd (or one found running from an earlier start).
#[derive(Debug)]
pub struct Containerd {
    pub pid: i32,
    pub socket: PathBuf,
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split('\0')
            .next()
            .is_some_and(|a| a.ends_with("containerd"))
    })
}

/// Starts containerd with `cfg` (or adopts the one a previous run started, when its pid is
/// still containerd) and waits until its socket answers.
pub async fn start(cfg: &Config) -> Result<Containerd, ContainerdError> {
    cfg.write()?;
    let socket = cfg.socket();
    if let Some(pid) = std::fs::read_to_string(cfg.pid_file())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|pid| alive(*pid))
        && tokio::net::UnixStream::connect(&socket).await.is_ok()
    {
        tracing::info!(pid, socket = %socket.display(), "using the containerd started earlier");
        return Ok(Containerd { pid, socket });
    }
    let bin = which("containerd")
        .ok_or_else(|| ContainerdError::Failed("containerd is not installed".into()))?;
    let log = cfg.dir.join("containerd.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io(format!("opening {}", log.display())))?;
    let err = out.try_clone().map_err(io("containerd log"))?;
    let _ = std::fs::remove_file(&socket);
    let child = std::process::Command::new(bin)
        .arg("--config")
        .arg(cfg.dir.join("config.toml"))
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own session: a Ctrl-C at the terminal does not reach it; `stop` does.
        .process_group(0)
        .spawn()
        .map_err(io("starting containerd"))?;
    let pid = child.id() as i32;
    // Reap it when it exits (it is stopped by pid).
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    std::fs::write(cfg.pid_file(), pid.to_string()).map_err(io("writing containerd.pid"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            tracing::info!(pid, socket = %socket.display(), log = %log.display(), "containerd started");
            return Ok(Containerd { pid, socket });
        }
        // (Right after the fork its cmdline is still ours: existence is what counts here.)
        let exists = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !exists || tokio::time::Instant::now() > deadline {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(ContainerdError::Failed(format!(
                "containerd did not come up on {} (log {}): {}",
                socket.display(),
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Containerd {
    /// SIGTERM, then waits up to 10 s (SIGKILL after). The pods' shims live on.
    pub fn stop(&self) {
        use rustix::process::{Pid, Signal, kill_process};
        let Some(pid) = Pid::from_raw(self.pid) else {
            return;
        };
        if !alive(self.pid) {
            return;
        }
        let _ = kill_process(pid, Signal::TERM);
        for _ in 0..500 {
            if !alive(self.pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill_process(pid, Signal::KILL);
    }
}

/// Imports OCI archives into containerd's `k8s.io` namespace (the one CRI sees) with `ctr`.
/// Returns the image names imported.
pub async fn import(socket: &Path, archives: &[PathBuf]) -> Result<Vec<String>, ContainerdError> {
    let ctr = which("ctr").ok_or_else(|| {
        ContainerdError::Failed("ctr (containerd's client) is not installed".into())
    })?;
    let mut names = Vec::new();
    for a in archives {
        let out = tokio::process::Command::new(&ctr)
            .arg("--address")
            .arg(socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(a)
            .output()
            .await
            .map_err(io(format!("running {}", ctr.display())))?;
        if !out.status.success() {
            return Err(ContainerdError::Failed(format!(
                "importing {}: {}",
                a.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // "unpacking localhost/busybox:1 (sha256:...)...done"
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("unpacking ")
                && let Some(name) = rest.split_whitespace().next()
            {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

/// The `*.tar` archives in `dir`, sorted (none when it does not exist).
pub fn archives_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "tar"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
