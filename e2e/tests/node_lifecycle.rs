//! Node lifecycle with real processes: one `capstan up --runtime none` (API server and
//! controllers) and three `capstan agent` processes on the process runtime, each its own node
//! (`--node-name`, `--root-dir`), with short settings (Lease 2 s → renewed every 0.5 s, grace
//! 3 s, default tolerations 2 s). A SIGKILLed agent's node goes Unknown and tainted, its pods
//! run again on the others, and when it restarts it is Ready, untainted, and has stopped the
//! containers of the pods deleted meanwhile. SIGSTOP of every agent (a partition) evicts
//! nothing and marks no pod NotReady. kubectl drain evicts through a PodDisruptionBudget one
//! pod at a time.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capstan_testkit::{
    CapstanUp, capstan_bin, eventually, free_port, kill_process_containers, kubectl, kubectl_json,
    kubectl_ok, pids_running, signal, temp_dir,
};
use serde_json::Value;

const GRACE_SECS: u64 = 3;
const TOLERATION_SECS: u64 = 2;
const WAIT: Duration = Duration::from_secs(60);
/// What the test pods run, `sleep` of this test process's own length: counted by argv to find
/// stale containers (nextest runs each test in a process of its own, concurrently).
fn sleep_arg() -> String {
    format!("36{:06}", std::process::id())
}

struct Agent {
    name: String,
    root: PathBuf,
    port: u16,
    child: Option<Child>,
}

struct Cluster {
    // Dropped in this order: agents, their containers, the control plane, the directory.
    agents: Vec<Agent>,
    up: Option<CapstanUp>,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            if let Some(mut c) = a.child.take() {
                signal(c.id(), "CONT");
                let _ = c.kill();
                let _ = c.wait();
            }
            kill_process_containers(&a.root);
        }
        self.up = None;
    }
}

fn condition(obj: &Value, ty: &str) -> Option<String> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

fn no_execute(node: &Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["effect"] == "NoExecute")
        .filter_map(|t| t["key"].as_str().map(str::to_string))
        .collect()
}

impl Cluster {
    fn start(agents: usize) -> Cluster {
        let dir = temp_dir("capstan-nodes-").unwrap();
        let data = dir.path().display().to_string();
        let (grace, toleration) = (format!("{GRACE_SECS}s"), TOLERATION_SECS.to_string());
        let up = CapstanUp::start(
            capstan_bin(),
            &[
                "--data-dir",
                &data,
                "--node-monitor-grace-period",
                &grace,
                "--node-monitor-period",
                "1s",
                "--default-unreachable-toleration-seconds",
                &toleration,
                "--default-not-ready-toleration-seconds",
                &toleration,
            ],
        )
        .unwrap();
        let mut c = Cluster {
            agents: Vec::new(),
            up: Some(up),
            kubeconfig: dir.path().join("kubeconfig"),
            dir,
        };
        for i in 0..agents {
            let name = format!("node-{i}");
            c.agents.push(Agent {
                root: c.dir.path().join(&name),
                name,
                port: free_port().unwrap(),
                child: None,
            });
            c.start_agent(i);
        }
        for i in 0..agents {
            c.wait_node(i, "Ready", |n| {
                condition(n, "Ready").as_deref() == Some("True")
            });
        }
        c
    }

    fn start_agent(&mut self, i: usize) {
        let a = &mut self.agents[i];
        let child = Command::new(capstan_bin())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["agent", "--runtime", "process", "--node-name", &a.name])
            .arg("--root-dir")
            .arg(&a.root)
            .args(["--node-ip", "127.0.0.1", "--port", &a.port.to_string()])
            .args([
                "--proxy",
                "off",
                "--dns",
                "off",
                "--node-lease-duration-seconds",
                "2",
            ])
            .args(["--eviction-hard", capstan_testkit::TEST_EVICTION_HARD])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        a.child = Some(child);
    }

    fn pid(&self, i: usize) -> u32 {
        self.agents[i].child.as_ref().unwrap().id()
    }

    fn kill_agent(&mut self, i: usize) {
        let mut c = self.agents[i].child.take().unwrap();
        signal(c.id(), "KILL");
        let _ = c.wait();
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        kubectl_ok(&self.kubeconfig, args, stdin)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a, None)).unwrap()
    }

    fn node(&self, i: usize) -> Value {
        self.json(&["get", "node", &self.agents[i].name])
    }

    fn wait_node(&self, i: usize, what: &str, f: impl Fn(&Value) -> bool) -> Duration {
        let started = Instant::now();
        eventually(WAIT, &format!("{} {what}", self.agents[i].name), || {
            // A node its agent has not registered yet is "not yet", not a failure.
            kubectl_json(&self.kubeconfig, &["get", "node", &self.agents[i].name])
                .is_some_and(|n| f(&n))
        })
        .unwrap();
        started.elapsed()
    }

    fn pods(&self) -> Vec<Value> {
        self.json(&["get", "pods", "-l", "app=web"])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Pods Running and Ready, not being deleted: (name, node).
    fn serving(&self) -> Vec<(String, String)> {
        self.pods()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| condition(p, "Ready").as_deref() == Some("True"))
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_string(),
                    p["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    fn deploy(&self, replicas: usize) {
        let manifest = format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: app, image: busybox, command: [sleep, "{sleep}"]}}
"#,
            sleep = sleep_arg()
        );
        self.ok(&["apply", "-f", "-"], Some(&manifest));
        eventually(WAIT, "every replica serving", || {
            self.serving().len() == replicas
        })
        .unwrap();
    }
}

#[test]
fn a_killed_agents_pods_move_and_it_comes_back_clean() {
    let mut c = Cluster::start(3);
    c.deploy(3);
    let pods = c.pods();
    let tols = &pods[0]["spec"]["tolerations"];
    assert!(
        tols.as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable"
                && t["tolerationSeconds"] == TOLERATION_SECS),
        "DefaultTolerationSeconds from the flag: {tols}"
    );
    let victim_node = pods[0]["spec"]["nodeName"].as_str().unwrap().to_string();
    let victim = c.agents.iter().position(|a| a.name == victim_node).unwrap();
    let doomed: Vec<String> = pods
        .iter()
        .filter(|p| p["spec"]["nodeName"] == victim_node.as_str())
        .map(|p| p["metadata"]["uid"].as_str().unwrap().to_string())
        .collect();

    let killed = Instant::now();
    c.kill_agent(victim);
    c.wait_node(victim, "Unknown and tainted unreachable", |n| {
        condition(n, "Ready").as_deref() == Some("Unknown")
            && no_execute(n) == ["node.kubernetes.io/unreachable"]
    });
    let detected = killed.elapsed();
    // Grace + one renewal of slack + the 1 s monitor period, and kubectl's own time.
    assert!(
        detected < Duration::from_secs(GRACE_SECS + 3),
        "{detected:?}"
    );
    eventually(WAIT, "3 pods serving on the live nodes", || {
        let s = c.serving();
        s.len() == 3 && s.iter().all(|(_, node)| *node != victim_node)
    })
    .unwrap();
    let moved = killed.elapsed();
    assert!(
        moved < Duration::from_secs(GRACE_SECS + TOLERATION_SECS + 8),
        "{moved:?}"
    );
    // The dead node's containers still run: nobody was there to stop them.
    assert_eq!(
        pids_running(&["sleep", &sleep_arg()]).len(),
        3 + doomed.len()
    );

    c.start_agent(victim);
    c.wait_node(victim, "back Ready and untainted", |n| {
        condition(n, "Ready").as_deref() == Some("True") && no_execute(n).is_empty()
    });
    eventually(
        WAIT,
        "the evicted pods gone and their containers stopped",
        || {
            let uids: Vec<String> = c
                .pods()
                .iter()
                .map(|p| p["metadata"]["uid"].as_str().unwrap().to_string())
                .collect();
            !uids.iter().any(|u| doomed.contains(u))
                && pids_running(&["sleep", &sleep_arg()]).len() == 3
        },
    )
    .unwrap();
    let events = c.ok(&["get", "events", "-A"], None);
    assert!(events.contains("TaintManagerEviction"), "{events}");
    assert!(events.contains("NodeNotReady"), "{events}");
}

#[test]
fn a_partition_of_every_agent_evicts_nothing() {
    let c = Cluster::start(3);
    c.deploy(3);
    let before: Vec<String> = c.serving().into_iter().map(|(n, _)| n).collect();
    for i in 0..3 {
        signal(c.pid(i), "STOP");
    }
    for i in 0..3 {
        c.wait_node(i, "Unknown", |n| {
            condition(n, "Ready").as_deref() == Some("Unknown")
        });
    }
    // Well past grace + tolerationSeconds: nothing tainted NoExecute, every pod still serving.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(GRACE_SECS + TOLERATION_SECS + 2) {
        for i in 0..3 {
            assert!(no_execute(&c.node(i)).is_empty(), "{}", c.node(i));
        }
        let mut serving: Vec<String> = c.serving().into_iter().map(|(n, _)| n).collect();
        serving.sort();
        let mut want = before.clone();
        want.sort();
        assert_eq!(serving, want, "every pod still Ready and kept");
        std::thread::sleep(Duration::from_millis(300));
    }
    for i in 0..3 {
        signal(c.pid(i), "CONT");
    }
    for i in 0..3 {
        c.wait_node(i, "Ready again", |n| {
            condition(n, "Ready").as_deref() == Some("True") && no_execute(n).is_empty()
        });
    }
    assert_eq!(c.serving().len(), 3);
}

#[test]
fn drain_evicts_through_the_budget_one_pod_at_a_time() {
    let c = Cluster::start(2);
    // Two pods per node (spread), a budget of N-1: draining a node must go one pod at a time.
    c.deploy(4);
    c.ok(
        &["apply", "-f", "-"],
        Some("apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web}\nspec:\n  minAvailable: 3\n  selector: {matchLabels: {app: web}}\n"),
    );
    eventually(WAIT, "the budget allows one disruption", || {
        c.json(&["get", "pdb", "web"])["status"]["disruptionsAllowed"] == 1
    })
    .unwrap();
    let table = c.ok(&["get", "pdb", "web"], None);
    assert!(
        table.contains("MIN AVAILABLE") && table.contains("ALLOWED DISRUPTIONS"),
        "{table}"
    );
    let node = c.agents[0].name.clone();
    let on_node = c.serving().iter().filter(|(_, n)| *n == node).count();
    assert!(
        on_node >= 2,
        "spread puts two pods on {node}: {:?}",
        c.serving()
    );

    // While kubectl drains, never fewer than 3 pods serve.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kubeconfig = c.kubeconfig.clone();
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut least = usize::MAX;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = kubectl(
                    &kubeconfig,
                    &["get", "pods", "-l", "app=web", "-o", "json"],
                    None,
                );
                if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
                    let serving = v["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                        .filter(|p| condition(p, "Ready").as_deref() == Some("True"))
                        .count();
                    least = least.min(serving);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            least
        })
    };
    let out = kubectl(
        &c.kubeconfig,
        &["drain", &node, "--ignore-daemonsets", "--timeout=90s"],
        None,
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let least = watcher.join().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("node/{node} cordoned")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("node/{node} drained")), "{stdout}");
    assert!(
        stderr.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "the second eviction waited for the budget: {stderr}"
    );
    assert!(least >= 3, "only {least} pods served during the drain");
    assert!(c.serving().iter().all(|(_, n)| *n != node));
    assert_eq!(c.node(0)["spec"]["unschedulable"], true);
    c.ok(&["uncordon", &node], None);
    assert!(c.node(0)["spec"]["unschedulable"].is_null());
}
