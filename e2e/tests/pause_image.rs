//! `capstan pause`, the process of Capstan's own sandbox image (node-agent's pause_image, which
//! containerd.rs's cluster runs every pod on): as pid 1 of a PID namespace it reaps the orphans
//! that land on it, and SIGTERM or SIGINT stop it with exit code 0, as Kubernetes' pause does.
//!
//! Needs root, unshare and nsenter (util-linux). Without them the test says so and passes.

use std::process::{Child, Command};
use std::time::Duration;

use capstan_testkit::{capstan_bin, eventually};

/// The pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // "pid (comm) state ppid ...": the command may hold spaces, so read after its ')'.
        let ppid = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
            });
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// `unshare --pid --fork --kill-child capstan pause`, killed (with its child) on drop.
struct Namespace(Child);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn capstan_pause_reaps_orphans_as_pid_1_and_stops_with_0_on_sigterm_and_sigint() {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root");
    }
    for tool in ["unshare", "nsenter"] {
        if capstan_node_agent::containerd::which(tool).is_none() {
            missing.push(tool);
        }
    }
    if !missing.is_empty() {
        eprintln!("SKIPPED: capstan pause's test needs {}", missing.join(", "));
        return;
    }
    for sig in ["TERM", "INT"] {
        let mut ns = Namespace(
            Command::new("unshare")
                .args(["--pid", "--fork", "--kill-child"])
                .arg(capstan_bin())
                .arg("pause")
                .spawn()
                .unwrap(),
        );
        let mut pause = 0;
        eventually(Duration::from_secs(10), "capstan pause started", || {
            pause = children_of(ns.0.id()).first().copied().unwrap_or(0);
            pause != 0
                && std::fs::read(format!("/proc/{pause}/cmdline"))
                    .is_ok_and(|c| c.ends_with(b"pause\0"))
        })
        .unwrap();

        // An orphan: the shell nsenter starts in the namespace leaves a sleep behind, whose
        // parent becomes the namespace's pid 1; once it exits, nothing of it may remain (a
        // zombie is still a child).
        let st = Command::new("nsenter")
            .args(["--target", &pause.to_string(), "--pid", "--"])
            .args(["sh", "-c", "sleep 2 & exit 0"])
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            children_of(pause).len(),
            1,
            "the orphaned sleep is capstan pause's child"
        );
        eventually(Duration::from_secs(10), "the orphan reaped", || {
            children_of(pause).is_empty()
        })
        .unwrap();

        capstan_testkit::signal(pause, sig);
        let mut status = None;
        eventually(Duration::from_secs(10), "capstan pause stopped", || {
            status = ns.0.try_wait().unwrap();
            status.is_some()
        })
        .unwrap();
        // unshare --fork exits with its child's status.
        assert_eq!(status.and_then(|s| s.code()), Some(0), "SIG{sig}");
    }
}
