//! `kubectl run -i --rm`, `kubectl run -it --rm` and `kubectl attach` with unmodified kubectl,
//! on containerd and on the process runtime. kubectl ≥ 1.30 attaches over a WebSocket
//! (`v5.channel.k8s.io`): the agent serves it from the runtime's attach session (containerd:
//! CRI Attach and the remotecommand protocol on its streaming server; the process runtime:
//! the shim's socket). With `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false` kubectl speaks SPDY,
//! which goes through to containerd's streaming server untouched.
//!
//! Each case feeds a script on stdin: its output comes back, the end of the input closes the
//! container's stdin (stdinOnce) so the shell ends, and `--rm` leaves no pod. `-it` with piped
//! input makes kubectl drop its terminal while the container has one (the terminal is the
//! container's, as kubelet decides); under `script` kubectl has a real terminal of 77x11,
//! whose size reaches the container's (`stty size`). `kubectl debug -it --target` starts an
//! ephemeral container that attaches the same way and, on containerd, sees the target's
//! processes; `kubectl debug node/x -it` sees the node's processes and files.

mod cri_cluster;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use capstan_testkit::{
    CapstanUp, eventually, kubectl, kubectl_bin, kubectl_ok, output_within, temp_dir,
};
use cri_cluster::Cluster;

/// How a case runs kubectl.
#[derive(Clone, Copy)]
enum How {
    /// `kubectl run -i` (no terminal anywhere).
    Stdin,
    /// `kubectl run -i` over SPDY.
    Spdy,
    /// `kubectl run -it` with piped input: the container has a terminal, kubectl does not.
    PipedTty,
    /// `kubectl run -it` under `script`: a terminal of 77 columns and 11 rows on both ends.
    Terminal,
}

/// `kubectl run … --rm <pod> -- sh` fed `script` on stdin; what it printed (stdout and
/// stderr). Asserts it succeeded and the pod is gone.
fn run_rm(kubeconfig: &Path, image: &str, how: How, pod: &str, script: &str) -> String {
    let kubectl_path = kubectl_bin().display().to_string();
    let flags = match how {
        How::Stdin | How::Spdy => "-i",
        How::PipedTty | How::Terminal => "-it",
    };
    let args = format!(
        "--kubeconfig {} run {flags} --rm --image={image} --restart=Never {pod} -- sh",
        kubeconfig.display()
    );
    let mut cmd = match how {
        How::Terminal => {
            let mut c = Command::new("script");
            c.args([
                "-qefc",
                &format!("stty cols 77 rows 11; exec {kubectl_path} {args}"),
                "/dev/null",
            ]);
            c
        }
        _ => {
            let mut c = Command::new(&kubectl_path);
            c.args(args.split(' '));
            c
        }
    };
    if matches!(how, How::Spdy) {
        cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
    }
    let out = output_within(cmd, script.as_bytes(), Duration::from_secs(120));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{pod}: {said}");
    eventually(Duration::from_secs(30), "the pod gone", || {
        let out = kubectl(kubeconfig, &["get", "pod", pod], None);
        String::from_utf8_lossy(&out.stderr).contains("NotFound")
    })
    .unwrap();
    said
}

/// The cases every runtime passes.
fn attach_cases(kubeconfig: &Path, image: &str) {
    let script = "echo attached-$((6*7))\necho second-$((1+1))\n";
    // Without a terminal the shell ends because its stdin does (no `exit`). On a terminal the
    // end of the input does not close the container's stdin (containerd's choice,
    // kubernetes#29448, followed by the shim): the script exits.
    for (how, pod, input) in [
        (How::Stdin, "plain", script.to_string()),
        (How::PipedTty, "piped-tty", format!("{script}exit\n")),
    ] {
        let said = run_rm(kubeconfig, image, how, pod, &input);
        assert!(
            said.contains("attached-42") && said.contains("second-2"),
            "{pod}: {said}"
        );
    }
    // The size is set as the attach starts, beside the input: asked until it shows.
    let said = run_rm(
        kubeconfig,
        image,
        How::Terminal,
        "terminal",
        "for i in 1 2 3 4 5 6 7 8 9 10; do [ \"$(stty size)\" = \"11 77\" ] && break; sleep 0.2; done; echo size=$(stty size); exit 0\n",
    );
    assert!(said.contains("size=11 77"), "the terminal's size: {said}");
}

/// `kubectl debug -it <pod> --target=<pod> -c debugger` fed `script`: what it printed; the
/// debugger's status is recorded as ephemeral containers' are.
fn debug(kubeconfig: &Path, pod: &str, image: &str, script: &str) -> String {
    let mut cmd = Command::new(kubectl_bin());
    cmd.arg("--kubeconfig").arg(kubeconfig).args([
        "debug",
        "-it",
        pod,
        &format!("--image={image}"),
        &format!("--target={pod}"),
        "-c",
        "debugger",
        "--",
        "sh",
    ]);
    let out = output_within(cmd, script.as_bytes(), Duration::from_secs(120));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubectl debug: {said}");
    let mut last = serde_json::Value::Null;
    eventually(
        Duration::from_secs(30),
        "the debugger's exit recorded",
        || {
            let out = kubectl(kubeconfig, &["get", "pod", pod, "-o", "json"], None);
            last = serde_json::from_slice(&out.stdout).unwrap_or_default();
            last["status"]["ephemeralContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
        },
    )
    .unwrap_or_else(|_| panic!("{}", last["status"]));
    said
}

/// `kubectl debug node/<node> -it`: a pod in the node's process, IPC and network
/// namespaces with the node's root at /host.
fn debug_node(c: &Cluster) {
    let marker = c.dir.path().join("debug-node-marker");
    std::fs::write(&marker, "seen-from-the-node\n").unwrap();
    let mut cmd = Command::new(kubectl_bin());
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args([
        "debug",
        "-it",
        &format!("node/{}", cri_cluster::NODE),
        "--image=localhost/busybox:1",
        "--",
        "sh",
    ]);
    let script = format!("cat /host{}\nps\nexit\n", marker.display());
    let out = output_within(cmd, script.as_bytes(), Duration::from_secs(120));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubectl debug node: {said}");
    assert!(
        said.contains("seen-from-the-node"),
        "the node's files: {said}"
    );
    assert!(said.contains("containerd"), "the node's processes: {said}");
    let pods = c.ok(&["get", "pods", "-o", "name"], None);
    let debugger = pods
        .lines()
        .find(|l| l.starts_with("pod/node-debugger-"))
        .unwrap_or_else(|| panic!("{pods}"));
    c.ok(&["delete", debugger, "--grace-period=1"], None);
}

/// An exec asking for stdout alone (or stderr alone), as clients other than kubectl do:
/// containerd's shim wants both output paths, so the agent gives it the other one too.
fn one_output_stream_execs(c: &Cluster) {
    use capstan_node_agent::runtime::{ContainerState, ExecRequest, POD_NAME, Runtime};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cri = cri_cluster::cri(&c.socket()).await;
        let id = cri
            .list_containers()
            .await
            .unwrap()
            .into_iter()
            .find(|k| {
                k.state == ContainerState::Running
                    && k.config.labels.get(POD_NAME).map(String::as_str) == Some("target")
                    && k.config.name == "target"
            })
            .unwrap()
            .id;
        for (stdout, stderr) in [(true, false), (false, true)] {
            let req = ExecRequest {
                command: ["sh", "-c", "echo out; echo err >&2"]
                    .map(String::from)
                    .to_vec(),
                stdin: false,
                stdout,
                stderr,
                tty: false,
            };
            let mut s = cri.exec(&id, &req).await.unwrap();
            let mut got = Vec::new();
            let rx = s.stdout.as_mut().or(s.stderr.as_mut()).unwrap();
            while let Some(b) = rx.recv().await {
                got.extend_from_slice(&b);
            }
            assert_eq!(s.exit.await.unwrap(), Ok(0), "{req:?}");
            let want: &[u8] = if stdout { b"out\n" } else { b"err\n" };
            assert_eq!(got, want, "{req:?}");
        }
    });
}

#[test]
fn attach_on_containerd_over_websockets_and_spdy() {
    if !cri_cluster::runnable("attach") {
        return;
    }
    let c = Cluster::start();
    attach_cases(&c.kubeconfig, "localhost/busybox:1");
    // `kubectl debug -it`: an ephemeral container in the target's process namespace.
    c.ok(
        &[
            "run",
            "target",
            "--image=localhost/busybox:1",
            "--restart=Never",
            "--",
            "sleep",
            "3600",
        ],
        None,
    );
    c.wait_pod("target", Duration::from_secs(60), "Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let said = debug(&c.kubeconfig, "target", "localhost/busybox:1", "ps\nexit\n");
    assert!(
        said.contains("sleep 3600"),
        "the target's processes: {said}"
    );
    one_output_stream_execs(&c);
    debug_node(&c);
    let said = run_rm(
        &c.kubeconfig,
        "localhost/busybox:1",
        How::Spdy,
        "spdy",
        "echo spdy-$((6*7))\nls /bin/busybox\n",
    );
    assert!(
        said.contains("spdy-42") && said.contains("/bin/busybox"),
        "{said}"
    );
}

#[test]
fn attach_on_the_process_runtime_through_the_shim() {
    let dir = temp_dir("capstan-attach-").unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    // Dropped after `up`: the containers outlive the agent by design.
    let _reap = capstan_testkit::ReapContainers(dir.path().join("agent"));
    let mut up = CapstanUp::process_runtime(dir.path(), "attach-e2e").unwrap();
    attach_cases(&kubeconfig, "busybox");
    // `kubectl debug -it` starts its ephemeral container here too (in the host's processes).
    kubectl_ok(
        &kubeconfig,
        &[
            "run",
            "target",
            "--image=busybox",
            "--restart=Never",
            "--",
            "sleep",
            "3600",
        ],
        None,
    );
    eventually(Duration::from_secs(30), "target running", || {
        kubectl_ok(
            &kubeconfig,
            &["get", "pod", "target", "-o", "jsonpath={.status.phase}"],
            None,
        ) == "Running"
    })
    .unwrap();
    let said = debug(
        &kubeconfig,
        "target",
        "busybox",
        "echo debug-$((6*7))\nexit\n",
    );
    assert!(said.contains("debug-42"), "{said}");
    assert!(up.stop(Duration::from_secs(30)));
}
