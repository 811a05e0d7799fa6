//! The node agent with the process runtime, inside `capstan up --runtime process`, driven by
//! kubectl: pods run as real processes, restart with their policy, report exit codes, run init
//! containers first, read env from ConfigMaps, write CRI-format logs, are removed completely
//! on delete, and survive the agent being killed and restarted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use capstan_testkit::{CapstanUp, eventually, kubectl, temp_dir};
use serde_json::Value;

const NODE: &str = "agent-e2e";

struct Cluster {
    up: Option<CapstanUp>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = temp_dir("capstan-agent-").unwrap();
        let mut c = Cluster {
            up: None,
            kubeconfig: dir.path().join("kubeconfig"),
            dir,
        };
        c.boot();
        c
    }

    fn boot(&mut self) {
        self.up = Some(CapstanUp::process_runtime(self.dir.path(), NODE).unwrap());
        eventually(Duration::from_secs(30), "node Ready", || {
            self.json(&["get", "node", NODE])
                .is_some_and(|n| condition(&n, "Ready") == Some("True".into()))
        })
        .unwrap();
    }

    /// kill -9 of the whole `capstan up` (API server, controllers and agent).
    fn kill(&mut self) {
        self.up = None;
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = kubectl(&self.kubeconfig, args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Option<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = kubectl(&self.kubeconfig, &a, None);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn pod(&self, name: &str) -> Option<Value> {
        self.json(&["get", "pod", name])
    }

    /// The log of `container` of pod `name`, attempt `attempt` (the CRI log file).
    fn log(&self, pod: &Value, container: &str, attempt: u32) -> String {
        let m = &pod["metadata"];
        let dir = self.root().join("logs").join(format!(
            "{}_{}_{}",
            m["namespace"].as_str().unwrap(),
            m["name"].as_str().unwrap(),
            m["uid"].as_str().unwrap()
        ));
        std::fs::read_to_string(dir.join(container).join(format!("{attempt}.log")))
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.up = None;
        // The containers outlive the agent by design: stop what the test started, by pid.
        capstan_testkit::kill_process_containers(&self.root());
    }
}

fn condition(obj: &Value, ty: &str) -> Option<String> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

fn container_status(pod: &Value, name: &str) -> Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

fn pid_of(root: &Path, container_id: &str) -> Option<i32> {
    let id = container_id.strip_prefix("process://")?;
    let text =
        std::fs::read_to_string(root.join("process/containers").join(id).join("pid.json")).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["pid"]
        .as_i64()
        .map(|p| p as i32)
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn pods_run_as_processes_restart_report_and_clean_up() {
    let mut c = Cluster::start();
    c.ok(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello-from-configmap}
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 5
  initContainers:
  - name: init
    image: busybox
    command: [sh, -c, "echo init-was-here > marker; echo init done"]
  containers:
  - name: app
    image: busybox
    command: [sh, -c]
    args: ["cat marker; echo $(GREETING) $POD_NAME; echo to-stderr >&2; exec sleep 3600"]
    env:
    - name: GREETING
      valueFrom: {configMapKeyRef: {name: settings, key: greeting}}
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    readinessProbe: {exec: {command: [test, -f, marker]}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: flaky}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "touch healthy; sleep 2; rm healthy; exec sleep 3600"]
    livenessProbe: {exec: {command: [test, -f, healthy]}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: fails}
spec:
  restartPolicy: Never
  containers:
  - {name: c, image: busybox, command: [sh, -c, "echo bye; exit 3"]}
"#,
        ),
    );

    // Running and Ready, with the host's IP, after its init container.
    eventually(WAIT, "web Running and Ready", || {
        c.pod("web").is_some_and(|p| {
            p["status"]["phase"] == "Running" && condition(&p, "Ready") == Some("True".into())
        })
    })
    .unwrap();
    let web = c.pod("web").unwrap();
    assert!(
        web["status"]["podIP"]
            .as_str()
            .is_some_and(|ip| !ip.is_empty())
    );
    assert_eq!(web["status"]["hostIP"], web["status"]["podIP"]);
    assert_eq!(web["status"]["qosClass"], "BestEffort");
    assert_eq!(
        web["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    assert_eq!(condition(&web, "Initialized"), Some("True".into()));
    eventually(WAIT, "app output in its CRI log", || {
        let log = c.log(&web, "app", 0);
        log.contains(" stdout F init-was-here")
            && log.contains(" stdout F hello-from-configmap web")
            && log.contains(" stderr F to-stderr")
    })
    .unwrap();
    assert!(c.log(&web, "init", 0).contains(" stdout F init done"));
    // The same through the API server's pods/log and the agent's endpoint.
    // (stdout and stderr are separate pipes: their relative order is not fixed)
    let mut lines: Vec<String> = c
        .ok(&["logs", "web"], None)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["hello-from-configmap web", "init-was-here", "to-stderr"]
    );

    // kubectl exec through pods/exec and the agent: the container's working directory and
    // environment, exit codes, stdin to its end, a terminal, a client that goes away.
    assert_eq!(
        c.ok(
            &[
                "exec",
                "web",
                "--",
                "sh",
                "-c",
                "cat marker; echo $GREETING"
            ],
            None
        ),
        "init-was-here\nhello-from-configmap\n"
    );
    capstan_testkit::check_kubectl_exec(&c.kubeconfig, "web", "424242");
    assert_eq!(c.ok(&["logs", "web", "-c", "init"], None), "init done\n");

    // A liveness probe that starts failing: the container is restarted.
    eventually(WAIT, "flaky restarted by its liveness probe", || {
        c.pod("flaky").is_some_and(|p| {
            container_status(&p, "app")["restartCount"]
                .as_i64()
                .is_some_and(|n| n >= 1)
        })
    })
    .unwrap();

    // A restartPolicy Never pod that exits 3: Failed, with the exit code.
    eventually(WAIT, "fails Failed", || {
        c.pod("fails")
            .is_some_and(|p| p["status"]["phase"] == "Failed")
    })
    .unwrap();
    let fails = c.pod("fails").unwrap();
    let t = &container_status(&fails, "c")["state"]["terminated"];
    assert_eq!(t["exitCode"], 3);
    assert_eq!(t["reason"], "Error");

    // Kill the app's process: restarted (Always), restartCount 1, lastState says how it died.
    let first_id = container_status(&web, "app")["containerID"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = pid_of(&c.root(), &first_id).unwrap();
    assert!(alive(pid));
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    eventually(WAIT, "app restarted", || {
        c.pod("web").is_some_and(|p| {
            let s = container_status(&p, "app");
            s["restartCount"] == 1 && s["state"]["running"].is_object()
        })
    })
    .unwrap();
    let web = c.pod("web").unwrap();
    let s = container_status(&web, "app");
    assert_eq!(s["lastState"]["terminated"]["exitCode"], 137);
    let second_id = s["containerID"].as_str().unwrap().to_string();
    assert_ne!(second_id, first_id);
    let second_pid = pid_of(&c.root(), &second_id).unwrap();
    // The first attempt's output is the previous log.
    assert!(
        c.ok(&["logs", "web", "--previous"], None)
            .contains("hello-from-configmap web\n")
    );

    // kill -9 the whole of capstan up, start it again: the running pod is adopted, not restarted.
    c.kill();
    assert!(alive(second_pid), "containers outlive the agent");
    c.boot();
    // Give the restarted agent a few PLEG periods to (wrongly) act, then check nothing moved.
    eventually(WAIT, "status rewritten by the new agent", || {
        c.pod("web")
            .is_some_and(|p| condition(&p, "Ready") == Some("True".into()))
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let web = c.pod("web").unwrap();
    let s = container_status(&web, "app");
    assert_eq!(s["restartCount"], 1, "{s}");
    assert_eq!(s["containerID"].as_str(), Some(second_id.as_str()));
    assert!(alive(second_pid));

    // Delete: graceful stop, then the pod, its processes, sandbox and logs are all gone.
    let uid = web["metadata"]["uid"].as_str().unwrap().to_string();
    c.ok(&["delete", "pod", "web", "--timeout=60s"], None);
    assert!(!alive(second_pid));
    // The agent confirms the deletion once the containers are stopped, and removes the sandbox
    // and logs right after: they go within moments of kubectl returning, not before it.
    let sandbox_records = || {
        std::fs::read_dir(c.root().join("process/sandboxes"))
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("sandbox.json"))
                    .is_ok_and(|s| s.contains(&uid))
            })
            .count()
    };
    eventually(WAIT, "the sandbox is removed", || sandbox_records() == 0).unwrap();
    let logs = c.root().join("logs").join(format!("default_web_{uid}"));
    eventually(WAIT, "the log directory is removed", || !logs.exists()).unwrap();
    c.ok(&["delete", "pod", "fails", "flaky", "--timeout=60s"], None);
    let containers = || -> Vec<_> {
        std::fs::read_dir(c.root().join("process/containers"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    eventually(WAIT, "no container records left", || {
        containers().is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", containers()));
}

/// Limits through cgroups (v2, or v1's cpu and memory hierarchies; root — CI requires it): the
/// process runs in its own cgroup under the pod's, with the limits written; a memory hog is
/// OOMKilled; delete removes the cgroups.
#[test]
fn process_pods_get_their_limits_through_cgroups() {
    let cgroups = Path::new("/sys/fs/cgroup");
    let v2 = cgroups.join("cgroup.controllers").exists();
    let usable = rustix::process::geteuid().is_root()
        && if v2 {
            std::fs::read_to_string(cgroups.join("cgroup.controllers"))
                .is_ok_and(|c| c.contains("memory") && c.contains("cpu"))
        } else {
            cgroups.join("cpu/cpu.shares").exists()
                && cgroups.join("memory/memory.limit_in_bytes").exists()
        };
    if !usable {
        assert!(
            std::env::var_os("CAPSTAN_REQUIRE_CONTAINERD").is_none(),
            "CI must run this suite as root with cgroups"
        );
        eprintln!("skipped: needs root and cgroups with cpu and memory");
        return;
    }
    let c = Cluster::start();
    c.ok(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: limited}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox
    command: [sleep, "3600"]
    resources:
      limits: {cpu: 500m, memory: 64Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "dd if=/dev/zero of=/dev/null bs=64M count=1"]
    resources:
      limits: {memory: 16Mi}
"#,
        ),
    );
    eventually(WAIT, "limited Running", || {
        c.pod("limited")
            .is_some_and(|p| p["status"]["phase"] == "Running")
    })
    .unwrap();
    let limited = c.pod("limited").unwrap();
    assert_eq!(limited["status"]["qosClass"], "Guaranteed");
    let uid = limited["metadata"]["uid"].as_str().unwrap().to_string();
    let id = container_status(&limited, "app")["containerID"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = pid_of(&c.root(), &id).unwrap();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    // The process's path in a hierarchy: "0::/..." on v2, "N:memory:/..." on v1.
    let path_in = |controller: &str| {
        own.lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                (names.split(',').any(|n| n == controller)
                    || (controller.is_empty() && names.is_empty()))
                .then(|| path.to_string())
            })
            .unwrap_or_else(|| panic!("no {controller:?} line in {own}"))
    };
    let expected = format!(
        "/kubepods/pod{uid}/capstan-{}",
        id.strip_prefix("process://").unwrap()
    );
    let read = |dir: PathBuf, f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    if v2 {
        assert_eq!(path_in(""), expected);
        let cg = cgroups.join(expected.trim_start_matches('/'));
        assert_eq!(read(cg.clone(), "cpu.max"), "50000 100000");
        assert_eq!(read(cg, "memory.max"), (64u64 << 20).to_string());
    } else {
        assert_eq!(path_in("memory"), expected);
        assert_eq!(path_in("cpu"), expected);
        let rel = expected.trim_start_matches('/');
        assert_eq!(
            read(cgroups.join("cpu").join(rel), "cpu.cfs_quota_us"),
            "50000"
        );
        assert_eq!(
            read(cgroups.join("memory").join(rel), "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
    }
    // Guaranteed: the kernel is asked to spare it (-997), where lowering a score is allowed
    // (CAP_SYS_RESOURCE; some sandboxes refuse it even to root: then the score is inherited).
    let may_lower = std::fs::write("/proc/self/oom_score_adj", "-1").is_ok();
    let _ = std::fs::write("/proc/self/oom_score_adj", "0");
    let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(adj.trim(), if may_lower { "-997" } else { "0" });

    eventually(WAIT, "hog OOMKilled", || {
        c.pod("hog")
            .is_some_and(|p| p["status"]["phase"] == "Failed")
    })
    .unwrap();
    let hog = c.pod("hog").unwrap();
    let t = &container_status(&hog, "app")["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{t}");
    assert_eq!(t["exitCode"], 137);
    let hog_uid = hog["metadata"]["uid"].as_str().unwrap().to_string();
    // The kernel's kill, read from its log by the agent: an OOMKilling Event on the Node.
    let mut said = String::new();
    eventually(WAIT, "an OOMKilling event", || {
        said = c.ok(
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.kind=Node,reason=OOMKilling",
                "-o",
                "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
            ],
            None,
        );
        said.contains("Killed process") && said.contains("(dd)")
    })
    .unwrap_or_else(|_| panic!("OOMKilling events: {said}"));

    c.ok(&["delete", "pod", "limited", "hog", "--timeout=60s"], None);
    assert!(!alive(pid));
    let hierarchies: Vec<PathBuf> = if v2 {
        vec![cgroups.to_path_buf()]
    } else {
        vec![cgroups.join("cpu"), cgroups.join("memory")]
    };
    eventually(Duration::from_secs(20), "pod cgroups removed", || {
        hierarchies.iter().all(|h| {
            !h.join(format!("kubepods/pod{uid}")).exists()
                && !h.join(format!("kubepods/burstable/pod{hog_uid}")).exists()
        })
    })
    .unwrap();
}
