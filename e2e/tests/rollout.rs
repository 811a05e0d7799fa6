//! Unmodified kubectl driving Deployments and DaemonSets on `capstan up` (which runs the
//! controllers), with `capstan sim` nodes playing the kubelets: rollout status / history / undo
//! / pause / resume / restart, scale, a blue/green Service flip, deletion in every cascade
//! mode, and a DaemonSet following a node that joins later.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use capstan_testkit::{CapstanUp, capstan_bin, eventually, kubectl, temp_dir};

struct Cluster {
    sim: Child,
    _up: CapstanUp,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.sim.kill();
        let _ = self.sim.wait();
    }
}

impl Cluster {
    fn start() -> Cluster {
        let dir = temp_dir("capstan-rollout-").unwrap();
        let bin = capstan_bin();
        let up = CapstanUp::start(bin, &["--data-dir", &dir.path().display().to_string()]).unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let sim = Command::new(bin)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["sim", "--nodes", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let c = Cluster {
            sim,
            _up: up,
            kubeconfig,
            _dir: dir,
        };
        eventually(Duration::from_secs(30), "3 sim nodes", || {
            let out = c.ok(&["get", "nodes", "-o", "name"]);
            out.lines().count() == 3
        })
        .unwrap();
        c
    }

    /// Runs kubectl and returns stdout; panics with stderr on failure.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_stdin(args, None)
    }

    fn ok_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = kubectl(&self.kubeconfig, args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn rollout_status(&self, name: &str) -> String {
        self.ok(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=60s",
        ])
    }
}

fn deployment(name: &str, labels: &str, replicas: u32, image: &str) -> String {
    format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"{name}"}},
"spec":{{"replicas":{replicas},"selector":{{"matchLabels":{labels}}},
"strategy":{{"rollingUpdate":{{"maxSurge":1,"maxUnavailable":0}}}},
"template":{{"metadata":{{"labels":{labels}}},"spec":{{"containers":[{{"name":"c","image":"{image}"}}]}}}}}}}}"#
    )
}

#[test]
fn kubectl_rollout_scale_undo_pause_and_restart_work() {
    let c = Cluster::start();
    c.ok_stdin(
        &["apply", "-f", "-"],
        Some(&deployment("web", r#"{"app":"web"}"#, 3, "busybox:1")),
    );
    let out = c.rollout_status("web");
    assert!(out.contains("successfully rolled out"), "{out}");
    let table = c.ok(&["get", "deployment", "web"]);
    assert!(table.contains("3/3"), "{table}");

    // A new image, annotated with a change cause.
    c.ok(&["set", "image", "deployment/web", "c=busybox:2"]);
    c.ok(&[
        "annotate",
        "deployment/web",
        "kubernetes.io/change-cause=image 2",
    ]);
    c.rollout_status("web");
    let history = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );
    let rev2 = c.ok(&["rollout", "history", "deployment/web", "--revision=2"]);
    assert!(rev2.contains("busybox:2"), "{rev2}");

    // Undo to revision 1: the template comes back (kubectl patches it from the old ReplicaSet).
    c.ok(&["rollout", "undo", "deployment/web", "--to-revision=1"]);
    c.rollout_status("web");
    let image = c.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "busybox:1");
    eventually(Duration::from_secs(30), "only busybox:1 pods", || {
        let pods = c.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={range .items[?(@.metadata.deletionTimestamp)]}x{end}{.items[*].spec.containers[0].image}"]);
        pods.split_whitespace().all(|i| i == "busybox:1") && pods.split_whitespace().count() == 3
    })
    .unwrap();

    // kubectl scale goes through the scale subresource.
    c.ok(&["scale", "deployment/web", "--replicas=5"]);
    c.rollout_status("web");
    let ready = c.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    assert_eq!(ready, "5");

    // Paused: a change waits; resumed: it rolls.
    c.ok(&["rollout", "pause", "deployment/web"]);
    c.ok(&["set", "image", "deployment/web", "c=busybox:3"]);
    eventually(Duration::from_secs(30), "paused change observed", || {
        let g = c.ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.metadata.generation} {.status.observedGeneration}",
        ]);
        let v: Vec<&str> = g.split_whitespace().collect();
        v.len() == 2 && v[0] == v[1]
    })
    .unwrap();
    let rs_count = || c.ok(&["get", "rs", "-o", "name"]).lines().count();
    assert_eq!(rs_count(), 2, "no new ReplicaSet while paused");
    c.ok(&["rollout", "resume", "deployment/web"]);
    c.rollout_status("web");
    assert_eq!(rs_count(), 3);

    // Restart: a new ReplicaSet with the restartedAt annotation.
    c.ok(&["rollout", "restart", "deployment/web"]);
    c.rollout_status("web");
    assert_eq!(rs_count(), 4);
    let history = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains("image 2"), "change-cause shown: {history}");
}

#[test]
fn a_service_flips_from_blue_to_green_with_no_unavailable_pods() {
    let c = Cluster::start();
    c.ok_stdin(
        &["apply", "-f", "-"],
        Some(&deployment(
            "web-blue",
            r#"{"app":"web","color":"blue"}"#,
            2,
            "busybox:1",
        )),
    );
    c.ok_stdin(
        &["apply", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},"spec":{"selector":{"app":"web","color":"blue"},"ports":[{"port":80}]}}"#),
    );
    c.rollout_status("web-blue");
    // Green comes up beside blue; the Service still points at blue.
    c.ok_stdin(
        &["apply", "-f", "-"],
        Some(&deployment(
            "web-green",
            r#"{"app":"web","color":"green"}"#,
            2,
            "busybox:2",
        )),
    );
    c.rollout_status("web-green");
    // Flip only once green is fully available; blue stays up until the flip is done.
    let avail = c.ok(&[
        "get",
        "deployment",
        "web-green",
        "-o",
        "jsonpath={.status.availableReplicas}/{.status.unavailableReplicas}",
    ]);
    assert_eq!(avail, "2/0");
    c.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"selector":{"app":"web","color":"green"}}}"#,
    ]);
    let selected = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=web,color=green",
        "-o",
        "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(selected, "True True");
    let blue = c.ok(&[
        "get",
        "deployment",
        "web-blue",
        "-o",
        "jsonpath={.status.availableReplicas}",
    ]);
    assert_eq!(blue, "2", "blue still serving during the flip");
    // Retire blue.
    c.ok(&["scale", "deployment/web-blue", "--replicas=0"]);
    c.rollout_status("web-blue");
}

#[test]
fn kubectl_delete_cascades_foreground_background_and_orphan_and_empties_namespaces() {
    let c = Cluster::start();
    let names = |what: &str, app: &str| -> usize {
        c.ok(&["get", what, "-l", &format!("app={app}"), "-o", "name"])
            .lines()
            .count()
    };
    for app in ["fg", "bg", "orph"] {
        c.ok_stdin(
            &["apply", "-f", "-"],
            Some(&deployment(
                app,
                &format!(r#"{{"app":"{app}"}}"#),
                2,
                "busybox:1",
            )),
        );
    }
    for app in ["fg", "bg", "orph"] {
        c.rollout_status(app);
    }

    // Foreground: kubectl waits for the deployment, which goes only after its dependents.
    c.ok(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    assert_eq!(names("rs", "fg"), 0);
    assert_eq!(names("pods", "fg"), 0);

    // Background (kubectl's default): the deployment goes first, the collector follows.
    c.ok(&["delete", "deployment", "bg", "--timeout=60s"]);
    eventually(
        Duration::from_secs(30),
        "bg's replicasets and pods collected",
        || names("rs", "bg") == 0 && names("pods", "bg") == 0,
    )
    .unwrap();

    // Orphan: the ReplicaSet and its pods stay, the ReplicaSet without an owner.
    c.ok(&[
        "delete",
        "deployment",
        "orph",
        "--cascade=orphan",
        "--timeout=60s",
    ]);
    assert_eq!(names("rs", "orph"), 1);
    assert_eq!(names("pods", "orph"), 2);
    let owners = c.ok(&[
        "get",
        "rs",
        "-l",
        "app=orph",
        "-o",
        "jsonpath={.items[*].metadata.ownerReferences}",
    ]);
    assert_eq!(
        owners.trim(),
        "",
        "orphaned ReplicaSet keeps no owner reference"
    );

    // A namespace: kubectl delete waits until everything in it, then it, is gone.
    c.ok_stdin(
        &["apply", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"scratch"}}"#),
    );
    c.ok_stdin(
        &["apply", "-n", "scratch", "-f", "-"],
        Some(&deployment("tmp", r#"{"app":"tmp"}"#, 2, "busybox:1")),
    );
    c.ok(&[
        "rollout",
        "status",
        "-n",
        "scratch",
        "deployment/tmp",
        "--timeout=60s",
    ]);
    c.ok(&["delete", "namespace", "scratch", "--timeout=60s"]);
    let out = kubectl(&c.kubeconfig, &["get", "namespace", "scratch"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = c.ok(&["get", "pods,rs,deployments", "-n", "scratch", "-o", "name"]);
    assert_eq!(left.trim(), "");
}

#[test]
fn kubectl_rolls_daemon_sets_forward_and_back_through_controller_revisions() {
    let c = Cluster::start();
    c.ok_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"logs"},
"spec":{"selector":{"matchLabels":{"app":"logs"}},
"template":{"metadata":{"labels":{"app":"logs"}},"spec":{"containers":[{"name":"c","image":"busybox:1"}]}}}}"#,
        ),
    );
    let status = |c: &Cluster| c.ok(&["rollout", "status", "daemonset/logs", "--timeout=60s"]);
    let out = status(&c);
    assert!(
        out.contains("daemon set \"logs\" successfully rolled out"),
        "{out}"
    );
    let table = c.ok(&["get", "ds", "logs"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE",
            "SELECTOR",
            "AGE"
        ]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..7],
        ["logs", "3", "3", "3", "3", "3", "<none>"],
        "{table}"
    );

    c.ok(&["set", "image", "daemonset/logs", "c=busybox:2"]);
    status(&c);
    let history = c.ok(&["rollout", "history", "daemonset/logs"]);
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    let rev1 = c.ok(&["rollout", "history", "daemonset/logs", "--revision=1"]);
    assert!(rev1.contains("busybox:1"), "{rev1}");
    let revs = c.ok(&["get", "controllerrevisions"]);
    assert!(revs.contains("daemonset.apps/logs"), "{revs}");

    // Undo: kubectl patches the template back from revision 1.
    let out = c.ok(&["rollout", "undo", "daemonset/logs"]);
    assert!(out.contains("rolled back"), "{out}");
    status(&c);
    let images = || {
        c.ok(&[
            "get",
            "pods",
            "-l",
            "app=logs",
            "-o",
            "jsonpath={range .items[?(@.metadata.deletionTimestamp)]}x{end}{.items[*].spec.containers[0].image}",
        ])
    };
    eventually(Duration::from_secs(30), "only busybox:1 pods", || {
        let pods = images();
        pods.split_whitespace().all(|i| i == "busybox:1") && pods.split_whitespace().count() == 3
    })
    .unwrap();
    let history = c.ok(&["rollout", "history", "daemonset/logs"]);
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(
        revisions,
        ["2", "3"],
        "revision 1 came back as 3: {history}"
    );

    // A node that joins later gets its pod.
    let mut late = Command::new(capstan_bin())
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["sim", "--nodes", "1", "--prefix", "late-"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let joined = eventually(Duration::from_secs(30), "a pod on late-0", || {
        let nodes = c.ok(&[
            "get",
            "pods",
            "-l",
            "app=logs",
            "-o",
            "jsonpath={.items[*].spec.nodeName}",
        ]);
        nodes.split_whitespace().any(|n| n == "late-0")
    });
    let _ = late.kill();
    let _ = late.wait();
    joined.unwrap();
}
