//! Jobs, CronJobs and DaemonSets through unmodified kubectl, on `capstan up --runtime process`
//! (pods run as real processes) and on containerd (busybox containers). A Job of 5 completions
//! 2 at a time finishes (`kubectl wait --for=condition=complete`) and is deleted by its TTL
//! with its pods; a failing Job stops at its backoffLimit as Failed; each pod of an Indexed Job
//! prints its own JOB_COMPLETION_INDEX; `kubectl create cronjob` and `kubectl create job
//! --from=cronjob/...`. A DaemonSet runs its pod on the real node, is rolled to a new command
//! and back with `kubectl rollout undo`. (CronJob schedules firing over minutes are tested
//! against a fast clock in controllers/tests/jobs.rs; DaemonSets across many nodes on
//! simulated ones in controllers/tests/daemonsets.rs and e2e/tests/rollout.rs.)

mod cri_cluster;

use std::path::PathBuf;
use std::time::Duration;

use capstan_testkit::{CapstanUp, eventually, kubectl, kubectl_ok, temp_dir};
use serde_json::Value;

const NODE: &str = "jobs-e2e";

struct Cluster {
    up: Option<CapstanUp>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.up = None;
        // The containers outlive the agent by design: stop what the test started, by pid.
        capstan_testkit::kill_process_containers(&self.dir.path().join("agent"));
    }
}

/// kubectl against one cluster.
struct Kubectl<'a>(&'a std::path::Path);

impl Kubectl<'_> {
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        kubectl_ok(self.0, args, stdin)
    }

    fn gone(&self, args: &[&str]) -> bool {
        !kubectl(self.0, args, None).status.success()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a, None)).unwrap()
    }

    fn pods_of(&self, job: &str) -> Vec<Value> {
        self.json(&[
            "get",
            "pods",
            "-l",
            &format!("batch.kubernetes.io/job-name={job}"),
        ])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

const JOBS: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: five}
spec:
  completions: 5
  parallelism: 2
  ttlSecondsAfterFinished: 3
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - {name: work, image: busybox, command: [sh, -c, "echo working; sleep 0.3; echo done"]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: failing}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - {name: work, image: busybox, command: [sh, -c, "echo trying; exit 3"]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: indexed}
spec:
  completions: 3
  parallelism: 3
  completionMode: Indexed
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - {name: work, image: busybox, command: [sh, -c, "echo index=$JOB_COMPLETION_INDEX"]}
"#;

#[test]
fn jobs_cron_jobs_and_daemon_sets_on_real_processes() {
    let dir = temp_dir("capstan-jobs-").unwrap();
    let up = CapstanUp::process_runtime(dir.path(), NODE).unwrap();
    let cluster = Cluster {
        up: Some(up),
        kubeconfig: dir.path().join("kubeconfig"),
        dir,
    };
    let c = Kubectl(&cluster.kubeconfig);
    eventually(Duration::from_secs(30), "node Ready", || {
        !c.gone(&["get", "node", NODE])
    })
    .unwrap();
    scenario(&c, "busybox");
    daemon_set(&c, NODE, "busybox");
}

#[test]
fn jobs_cron_jobs_and_daemon_sets_on_containerd() {
    if !cri_cluster::runnable("jobs on containerd") {
        return;
    }
    let cluster = cri_cluster::Cluster::start();
    let c = Kubectl(&cluster.kubeconfig);
    scenario(&c, "localhost/busybox:1");
    let node = c.ok(
        &["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"],
        None,
    );
    daemon_set(&c, &node, "localhost/busybox:1");
}

fn scenario(c: &Kubectl, image: &str) {
    let jobs = JOBS.replace("image: busybox", &format!("image: {image}"));
    c.ok(&["apply", "-f", "-"], Some(&jobs));

    // Five completions, two at a time.
    c.ok(
        &[
            "wait",
            "--for=condition=complete",
            "job/five",
            "--timeout=90s",
        ],
        None,
    );
    let five = c.json(&["get", "job", "five"]);
    assert_eq!(five["status"]["succeeded"], 5, "{five}");
    assert_eq!(five["status"]["failed"], 0, "{five}");
    let row = c.ok(&["get", "job", "five", "--no-headers"], None);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..3], ["five", "Complete", "5/5"], "{row}");
    let pods = c.pods_of("five");
    assert!(pods.len() >= 5, "{} pods", pods.len());
    assert!(pods.iter().all(|p| p["status"]["phase"] == "Succeeded"));
    // ttlSecondsAfterFinished: 3 — the Job and its pods go.
    eventually(
        Duration::from_secs(30),
        "job/five deleted by its TTL",
        || c.gone(&["get", "job", "five"]) && c.pods_of("five").is_empty(),
    )
    .unwrap();

    // backoffLimit 1: the first try and one retry (10 s later), then Failed.
    c.ok(
        &[
            "wait",
            "--for=condition=failed",
            "job/failing",
            "--timeout=90s",
        ],
        None,
    );
    let failing = c.json(&["get", "job", "failing"]);
    assert_eq!(failing["status"]["failed"], 2, "{failing}");
    let reason = failing["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"] == "Failed")
        .map(|x| x["reason"].clone());
    assert_eq!(reason, Some(Value::from("BackoffLimitExceeded")));
    let pods = c.pods_of("failing");
    assert_eq!(pods.len(), 2);
    for p in &pods {
        let code = &p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"];
        assert_eq!(code, 3, "{p}");
    }

    // Indexed: every pod sees its own index.
    c.ok(
        &[
            "wait",
            "--for=condition=complete",
            "job/indexed",
            "--timeout=90s",
        ],
        None,
    );
    let indexed = c.json(&["get", "job", "indexed"]);
    assert_eq!(indexed["status"]["completedIndexes"], "0-2", "{indexed}");
    let mut seen = Vec::new();
    for p in c.pods_of("indexed") {
        let name = p["metadata"]["name"].as_str().unwrap().to_string();
        let index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .unwrap()
            .to_string();
        let log = c.ok(&["logs", &name], None);
        assert_eq!(log.trim(), format!("index={index}"), "{name}");
        seen.push(index);
    }
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);

    // A CronJob made by kubectl, and a Job made from it by hand.
    c.ok(
        &[
            "create",
            "cronjob",
            "tick",
            &format!("--image={image}"),
            "--schedule=*/5 * * * *",
            "--",
            "sh",
            "-c",
            "echo tick",
        ],
        None,
    );
    let row = c.ok(&["get", "cronjob", "tick", "--no-headers"], None);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..7],
        ["tick", "*/5", "*", "*", "*", "*", "<none>"],
        "{row}"
    );
    c.ok(&["create", "job", "by-hand", "--from=cronjob/tick"], None);
    c.ok(
        &[
            "wait",
            "--for=condition=complete",
            "job/by-hand",
            "--timeout=90s",
        ],
        None,
    );
    let by_hand = c.json(&["get", "job", "by-hand"]);
    assert_eq!(
        by_hand["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(by_hand["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let pod = &c.pods_of("by-hand")[0];
    let log = c.ok(&["logs", pod["metadata"]["name"].as_str().unwrap()], None);
    assert_eq!(log.trim(), "tick");
}

/// A DaemonSet whose pod prints a version and sleeps: it runs on the node, rolls to a new
/// version, and `kubectl rollout undo` brings the first back.
fn daemon_set(c: &Kubectl, node: &str, image: &str) {
    let manifest = |version: u32| {
        format!(
            r#"{{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{{"name":"beacon"}},
"spec":{{"selector":{{"matchLabels":{{"app":"beacon"}}}},
"template":{{"metadata":{{"labels":{{"app":"beacon"}}}},"spec":{{"terminationGracePeriodSeconds":1,
"containers":[{{"name":"c","image":"{image}","command":["sh","-c","echo version={version}; exec sleep 600"]}}]}}}}}}}}"#
        )
    };
    let logs_say = |want: &str| {
        eventually(Duration::from_secs(60), want, || {
            let pods = c.json(&["get", "pods", "-l", "app=beacon"]);
            let live: Vec<&Value> = pods["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .collect();
            let [pod] = live.as_slice() else { return false };
            let name = pod["metadata"]["name"].as_str().unwrap();
            pod["spec"]["nodeName"] == node
                && pod["status"]["phase"] == "Running"
                && kubectl(c.0, &["logs", name], None).status.success()
                && c.ok(&["logs", name], None).trim() == want
        })
        .unwrap();
    };
    c.ok(&["apply", "-f", "-"], Some(&manifest(1)));
    c.ok(&["rollout", "status", "ds/beacon", "--timeout=90s"], None);
    logs_say("version=1");
    c.ok(&["apply", "-f", "-"], Some(&manifest(2)));
    c.ok(&["rollout", "status", "ds/beacon", "--timeout=90s"], None);
    logs_say("version=2");
    c.ok(&["rollout", "undo", "ds/beacon"], None);
    c.ok(&["rollout", "status", "ds/beacon", "--timeout=90s"], None);
    logs_say("version=1");
    c.ok(
        &["delete", "ds", "beacon", "--wait=true", "--timeout=60s"],
        None,
    );
    eventually(Duration::from_secs(60), "the daemon pod is gone", || {
        c.json(&["get", "pods", "-l", "app=beacon"])["items"]
            .as_array()
            .is_some_and(|i| i.is_empty())
    })
    .unwrap();
}
