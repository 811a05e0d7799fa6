//! `kubectl run -i --rm` on containerd with unmodified kubectl: the pod is created with stdin
//! (stdinOnce), kubectl attaches through pods/attach (falling back from the WebSocket to SPDY,
//! which goes through the agent to containerd's streaming server), the script fed on stdin
//! runs, its output comes back, the end of the input closes the container's stdin so the shell
//! ends, and `--rm` leaves no pod.
//!
//! Not covered because it does not work yet: `-it` with a script piped in. kubectl drops its
//! tty for the attach (its input is not a terminal) but the pod's container has one; the
//! input never reaches the shell, which exits 1, and kubectl waits on.

mod cri_cluster;

use std::process::Command;
use std::time::Duration;

use capstan_testkit::{eventually, kubectl, kubectl_bin, output_within};
use cri_cluster::{Cluster, missing_prerequisites};

#[test]
fn kubectl_run_i_rm_runs_a_script_from_stdin_and_leaves_no_pod() {
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let msg = format!("attach e2e needs: {}", missing.join(", "));
        if std::env::var_os("CAPSTAN_REQUIRE_CONTAINERD").is_some_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let c = Cluster::start();
    run_rm(&c, "-i", "x");
}

/// `kubectl run <flags> --rm … <pod> -- sh` with a script on stdin: its output, then no pod.
fn run_rm(c: &Cluster, flags: &str, pod: &str) {
    let mut cmd = Command::new(kubectl_bin());
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args([
        "run",
        flags,
        "--rm",
        "--image=localhost/busybox:1",
        "--restart=Never",
        pod,
        "--",
        "sh",
    ]);
    // No `exit`: the shell ends because its stdin does.
    let script = "echo attached-$((6*7))\nls /bin/busybox\n";
    let out = output_within(cmd, script.as_bytes(), Duration::from_secs(120));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{flags}: {stdout}\n{stderr}");
    assert!(
        stdout.contains("attached-42"),
        "{flags}: {stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("/bin/busybox"),
        "{flags}: {stdout}\n{stderr}"
    );
    eventually(Duration::from_secs(30), "the pod gone", || {
        let out = kubectl(&c.kubeconfig, &["get", "pod", pod], None);
        String::from_utf8_lossy(&out.stderr).contains("NotFound")
    })
    .unwrap();
}
