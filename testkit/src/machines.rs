//! Several machines on one host, for the many-machines suite and `capstan bench multinode`:
//! each "machine" is a network namespace of the caller's network slot with a veth on one host
//! bridge and an address of 10.S.200.0/24 (never any other address). Machine 0 runs the whole
//! control plane and a node — `capstan up --allocate-node-cidrs=true` with its managed
//! containerd, started in its namespace, so its node's range is allocated like any other; the
//! others run `capstan agent`, joined with a bootstrap token, each with a containerd of its own
//! (`--containerd-dir`: containerd runs the CNI plugins in its own network namespace, so each
//! machine needs its own; one shared containerd would put every pod on one machine). Every
//! machine runs its service proxy and cluster DNS in its namespace; host-gw pod routes and the
//! pod egress masquerade are on by default where the cluster allocates ranges.
//!
//! Processes are started with `nsenter --net` (`ip netns exec` also remounts /sys, hiding the
//! cgroup mount runc needs). On drop everything goes: every pod of every namespace (through
//! the API while the agents live), the agents and `capstan up` by pid (each stops its
//! containerd), leftover shims and containerds by pid, mounts under the machines' directories,
//! the namespaces (their links, routes and nftables tables with them), the bridge.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{CapstanUp, NetSlot, UP_LOG, eventually, kubectl, kubectl_json, kubectl_ok};

/// One machine: a network namespace, its address, its agent (machine 0's is `capstan up`'s).
#[derive(Debug)]
pub struct Machine {
    /// Its Node's name.
    pub name: String,
    pub netns: String,
    pub addr: String,
    pub root: PathBuf,
    pub log: PathBuf,
    agent: Option<Child>,
}

/// The machines, the control plane and the host bridge.
#[derive(Debug)]
pub struct Machines {
    up: Option<CapstanUp>,
    pub kubeconfig: PathBuf,
    dir: tempfile::TempDir,
    bridge: String,
    pub machines: Vec<Machine>,
    /// The machines' /24 without its last octet (`10.S.200`); the host bridge is `.1`.
    pub subnet: String,
    pub cluster_cidr: String,
    _slot: NetSlot,
}

fn ip(args: &[&str]) -> Result<()> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !o.status.success() {
        bail!("ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

impl Machines {
    /// Starts machines named `names` (Nodes `mn-NAME`) running the capstan binary `bin`,
    /// importing the OCI archives in `images` (busybox.tar; the sandbox image is the agents'
    /// own). Blocking.
    pub fn start(bin: &Path, names: &[&str], images: &Path) -> Result<Machines> {
        Self::start_with(bin, names, images, &[])
    }

    /// As [`Machines::start`], with more flags for machine 0's `capstan up` (its
    /// `--controllers`, say).
    pub fn start_with(
        bin: &Path,
        names: &[&str],
        images: &Path,
        up_args: &[&str],
    ) -> Result<Machines> {
        let dir = crate::temp_dir("capstan-mn-")?;
        let slot = NetSlot::take();
        let octet = 100 + slot.index;
        let subnet = format!("10.{octet}.200");
        let mut m = Machines {
            up: None,
            kubeconfig: dir.path().join("data/kubeconfig"),
            bridge: slot.name("cmn"),
            machines: names
                .iter()
                .enumerate()
                .map(|(i, n)| Machine {
                    name: format!("mn-{n}"),
                    netns: format!("{}-{n}", slot.name("capst-mn")),
                    addr: format!("{subnet}.{}", 11 + i),
                    root: dir.path().join(n),
                    log: if i == 0 {
                        dir.path().join("data").join(UP_LOG)
                    } else {
                        dir.path().join(n).join("agent.log")
                    },
                    agent: None,
                })
                .collect(),
            subnet,
            // The first half of the slot's /16; the machines' addresses are in the other.
            cluster_cidr: format!("10.{octet}.0.0/17"),
            dir,
            _slot: slot,
        };
        m.remove_network();
        m.network()?;
        let data = m.dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let data_s = data.display().to_string();
        let a = &m.machines[0];
        let listen = format!("{}:0", a.addr);
        let service_cidr = m._slot.service_cidr();
        let images_s = images.display().to_string();
        let mut args = vec![
            "--data-dir",
            &data_s,
            "--listen",
            &listen,
            "--service-cidr",
            &service_cidr,
            "--allocate-node-cidrs=true",
            "--cluster-cidr",
            &m.cluster_cidr,
            "--runtime",
            "cri",
            "--node-name",
            &a.name,
            "--node-ip",
            &a.addr,
            "--image-dir",
            &images_s,
            "--proxy",
            "on",
            "--dns",
            "on",
            "--disable-ingress",
        ];
        args.extend_from_slice(up_args);
        let up = CapstanUp::start_in(Some(&a.netns), bin, &args)?;
        let server = format!("https://{}", up.addr);
        m.up = Some(up);
        let token = Command::new(bin)
            .arg("--kubeconfig")
            .arg(&m.kubeconfig)
            .args(["token", "create", "--ttl", "1h"])
            .output()?;
        if !token.status.success() {
            bail!(
                "capstan token create: {}",
                String::from_utf8_lossy(&token.stderr)
            );
        }
        let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
        let ca = data.join("pki/ca.crt");
        for mc in m.machines.iter_mut().skip(1) {
            std::fs::create_dir_all(&mc.root)?;
            let log = std::fs::File::create(&mc.log)?;
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", mc.netns))
                .arg("--")
                .arg(bin)
                .args(["agent", "--server", &server, "--token", &token, "--ca-file"])
                .arg(&ca)
                .args(["--node-name", &mc.name, "--node-ip", &mc.addr, "--root-dir"])
                .arg(&mc.root)
                .arg("--containerd-dir")
                .arg(mc.root.join("containerd"))
                .arg("--image-dir")
                .arg(images)
                .args(["--proxy", "on", "--dns", "on"])
                .args(["--cluster-cidr", &m.cluster_cidr])
                .args(["--eviction-hard", crate::TEST_EVICTION_HARD])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            mc.agent = Some(child);
        }
        Ok(m)
    }

    /// The host bridge, and each machine's namespace with a veth on it.
    fn network(&self) -> Result<()> {
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", self.subnet),
            "dev",
            &self.bridge,
        ])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        for (i, mc) in self.machines.iter().enumerate() {
            let host_end = self.host_end(i);
            ip(&["netns", "add", &mc.netns])?;
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns",
                &mc.netns,
            ])?;
            ip(&["link", "set", &host_end, "master", &self.bridge, "up"])?;
            let addr = format!("{}/24", mc.addr);
            ip(&["-n", &mc.netns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &mc.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &mc.netns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Machine `i`'s veth end on the host bridge.
    pub fn host_end(&self, i: usize) -> String {
        format!("{}v{i}", self.bridge)
    }

    /// Waits until every machine's Node is Ready with a pod range; the ranges, in order.
    pub fn ready_ranges(&self, within: Duration) -> Result<Vec<String>> {
        let mut ranges = Vec::new();
        let ready = eventually(within, "every Node Ready with a pod range", || {
            ranges = self
                .machines
                .iter()
                .filter_map(|mc| {
                    let node = self.json(&["get", "node", &mc.name])?;
                    let ready = node["status"]["conditions"]
                        .as_array()?
                        .iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True");
                    let range = node["spec"]["podCIDR"].as_str()?.to_string();
                    ready.then_some(range)
                })
                .collect();
            ranges.len() == self.machines.len()
        });
        if let Err(e) = ready {
            bail!("{e}\n{}", self.logs());
        }
        Ok(ranges)
    }

    pub fn json(&self, args: &[&str]) -> Option<Value> {
        kubectl_json(&self.kubeconfig, args)
    }

    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        kubectl_ok(&self.kubeconfig, args, stdin)
    }

    /// Every machine's log tail, for a failure to show.
    pub fn logs(&self) -> String {
        self.machines
            .iter()
            .map(|mc| {
                let log = std::fs::read_to_string(&mc.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "--- {} log (last 25):\n{}",
                    mc.name,
                    lines[lines.len().saturating_sub(25)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `kubectl exec POD -- ARGS`: stdout, or stderr when it failed.
    pub fn exec(&self, pod: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["exec", pod, "--"];
        all.extend(args);
        let out = kubectl(&self.kubeconfig, &all, None);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `wget -q -O- URL` in `pod` (bounded by busybox's `timeout`: Debian's busybox-static
    /// wget crashes on its own -T): the page, or what went wrong.
    pub fn fetch(&self, pod: &str, url: &str) -> Result<String, String> {
        self.exec(pod, &["timeout", "5", "wget", "-q", "-O-", url])
    }

    fn remove_network(&self) {
        for mc in &self.machines {
            let _ = Command::new("ip")
                .args(["netns", "del", &mc.netns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        if self.up.is_some() {
            let _ = kubectl(
                &self.kubeconfig,
                &[
                    "delete",
                    "pods",
                    "--all",
                    "--all-namespaces",
                    "--grace-period=1",
                    "--timeout=60s",
                ],
                None,
            );
        }
        for mc in &mut self.machines {
            if let Some(mut a) = mc.agent.take() {
                // SIGTERM: the agent stops its containerd; -9 after 15 s.
                crate::signal(a.id(), "TERM");
                let _ = eventually(Duration::from_secs(15), "agent gone", || {
                    a.try_wait().ok().flatten().is_some()
                });
                let _ = a.kill();
                let _ = a.wait();
            }
        }
        // `capstan up` stops its containerd and removes its tables on SIGTERM.
        if let Some(mut up) = self.up.take() {
            up.stop(Duration::from_secs(15));
        }
        // Shims and containerds left behind, found by the machines' directories, by pid.
        let root = self.dir.path().display().to_string();
        kill_matching("containerd", &root);
        let data = self.dir.path().join("data");
        for root in self.machines.iter().map(|mc| &mc.root).chain([&data]) {
            if let Some(pid) = std::fs::read_to_string(root.join("containerd/containerd.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
            {
                crate::signal(pid, "KILL");
            }
        }
        // Whatever is still mounted under the machines' directories, innermost first.
        unmount_under(&root);
        self.remove_network();
    }
}

/// Kills (-9) every process whose command line holds both `program` and `mark`.
pub fn kill_matching(program: &str, mark: &str) {
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains(program) && cmdline.contains(mark) {
            crate::signal(pid, "KILL");
        }
    }
}

/// Unmounts (lazily) whatever is mounted under `dir`, innermost first.
pub fn unmount_under(dir: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut under: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(dir))
        .collect();
    under.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in under {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
}
