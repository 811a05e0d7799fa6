//! The node agent on containerd, for real: `capstan up --runtime cri` starts its own
//! containerd (the verified config under the data dir, its own bridge and pod CIDR), makes and
//! imports its own pause image, is given busybox (built by e2e/images/build.sh) through
//! `capstan image import`, and runs pods through CRI, driven by kubectl. One cluster, one
//! test, in steps (pods take seconds, not milliseconds).
//!
//! Needs root, containerd, runc, the CNI plugins, umoci, skopeo and busybox-static (CI
//! installs them). Without them the test says so and passes, unless
//! CAPSTAN_REQUIRE_CONTAINERD=1 (CI sets it), where it fails.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use capstan_node_agent::runtime::Runtime as _;
use capstan_testkit::{eventually, http_get, kubectl};
use serde_json::Value;

mod cri_cluster;

use cri_cluster::{Cluster, cri, pids_of, ready, status_of};

const MANIFEST: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {GREETING: "hello from a configmap", page.html: "<h1>from a volume</h1>"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: httpd
        image: localhost/busybox:1
        command: ["sh", "-c", "mkdir -p /www && cp /cfg/page.html /www/index.html && echo $(hostname) >> /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
        resources: {limits: {cpu: 250m, memory: 32Mi}}
        volumeMounts: [{name: cfg, mountPath: /cfg}]
      volumes: [{name: cfg, configMap: {name: settings}}]
---
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: prepare
    image: localhost/busybox:1
    command: ["sh", "-c", "echo prepared-by-init > /shared/note; echo init-output"]
    volumeMounts: [{name: shared, mountPath: /shared}]
  containers:
  - name: app
    image: localhost/busybox:1
    command: ["sh", "-c", "cat /shared/note; echo \"$GREETING\"; echo to-stderr >&2; while true; do sleep 1; done"]
    env:
    - name: GREETING
      valueFrom: {configMapKeyRef: {name: settings, key: GREETING}}
    volumeMounts: [{name: shared, mountPath: /shared}]
  volumes: [{name: shared, emptyDir: {}}]
---
apiVersion: v1
kind: Pod
metadata: {name: flaky}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: localhost/busybox:1
    command: ["sh", "-c", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 3600"]
    livenessProbe: {exec: {command: ["test", "-f", "/tmp/healthy"]}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: localhost/busybox:1
    # containerd (1.6, cgroup v1) watches a task's OOM events only once the task has started:
    # a process killed in its first milliseconds reads back as Error, not OOMKilled (seen in
    # CI). The hog lets the watch settle first.
    command: ["sh", "-c", "sleep 1; exec dd if=/dev/zero of=/dev/null bs=64M count=1"]
    resources: {limits: {memory: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: ghost}
spec:
  containers:
  - {name: app, image: "localhost/not-imported:1"}
"#;

#[test]
fn pods_run_on_containerd_with_probes_limits_logs_and_clean_up() {
    if !cri_cluster::runnable("containerd") {
        return;
    }
    let mut c = Cluster::start();
    let t0 = Instant::now();
    // No pause archive was given: the agent made its own and imported it before the node
    // became Ready.
    let pause = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            cri(&c.socket())
                .await
                .image_status("localhost/pause:1")
                .await
        })
        .unwrap();
    assert!(pause.is_some(), "the agent imported its pause image");
    c.ok(&["apply", "-f", "-"], Some(MANIFEST));

    // A Deployment of httpd with a readiness probe: Running and Ready, with pod IPs in the
    // cluster's range, the page (from a configMap volume) fetched from the host by pod IP.
    let mut web: Vec<Value> = Vec::new();
    eventually(Duration::from_secs(90), "2 web pods Ready", || {
        web = c
            .json(&["get", "pods", "-l", "app=web"])
            .map(|l| l["items"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
        web.len() == 2 && web.iter().all(ready)
    })
    .unwrap();
    let prefix = c.cidr.split('.').take(2).collect::<Vec<_>>().join(".") + ".";
    for p in &web {
        let ip = p["status"]["podIP"].as_str().unwrap();
        assert!(ip.starts_with(&prefix), "pod IP {ip} in {}", c.cidr);
        let (code, body) = http_get(&format!("{ip}:8080"), "/").unwrap();
        assert_eq!(code, 200);
        assert!(body.contains("<h1>from a volume</h1>"), "{body}");
        assert!(
            body.contains(p["metadata"]["name"].as_str().unwrap()),
            "hostname is the pod name: {body}"
        );
        let st = status_of(p, "httpd");
        assert!(
            st["containerID"]
                .as_str()
                .unwrap()
                .starts_with("containerd://")
        );
        assert!(st["imageID"].as_str().unwrap().starts_with("sha256:"));
        assert_eq!(p["status"]["qosClass"], "Guaranteed");
    }
    eprintln!("web ready after {:?}", t0.elapsed());

    // kubectl exec runs inside the container (its hostname is the pod's name) through
    // containerd's tasks: exit codes, stdin to its end, a terminal, a client that goes away;
    // the FIFOs are gone afterwards.
    let second = web[1]["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(
        c.ok(&["exec", &second, "--", "hostname"], None).trim(),
        second
    );
    capstan_testkit::check_kubectl_exec(&c.kubeconfig, &second, "424243");
    let fifos = std::env::temp_dir().join("capstan-exec");
    eventually(Duration::from_secs(30), "exec FIFOs removed", || {
        std::fs::read_dir(&fifos).map_or(true, |d| d.count() == 0)
    })
    .unwrap();

    // The limits landed in the container's cgroup.
    let first = web[0]["metadata"]["name"].as_str().unwrap().to_string();
    let uid = web[0]["metadata"]["uid"].as_str().unwrap().to_string();
    let cid = status_of(&web[0], "httpd")["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("containerd://")
        .to_string();
    let cg = format!("/sys/fs/cgroup/memory/kubepods/pod{uid}/{cid}/memory.limit_in_bytes");
    if Path::new("/sys/fs/cgroup/memory/kubepods").exists() {
        assert_eq!(
            std::fs::read_to_string(&cg).unwrap().trim(),
            (32u64 << 20).to_string()
        );
        let quota = format!("/sys/fs/cgroup/cpu/kubepods/pod{uid}/{cid}/cpu.cfs_quota_us");
        assert_eq!(std::fs::read_to_string(quota).unwrap().trim(), "25000");
    }

    // Kill the container's process: restarted, restartCount 1, lastState 137.
    let pids = pids_of(&cid);
    assert!(
        !pids.is_empty(),
        "the container's processes are in its cgroup"
    );
    for p in &pids {
        capstan_testkit::signal(*p, "KILL");
    }
    let p = c.wait_pod(
        &first,
        Duration::from_secs(60),
        "restartCount 1 and Ready",
        |p| status_of(p, "httpd")["restartCount"] == 1 && ready(p),
    );
    assert_eq!(
        status_of(&p, "httpd")["lastState"]["terminated"]["exitCode"],
        137
    );

    // Init container first, env from a ConfigMap, stdout and stderr: through `kubectl logs`.
    c.wait_pod("talker", Duration::from_secs(60), "Running", |p| {
        p["status"]["phase"] == "Running"
    });
    eventually(
        Duration::from_secs(20),
        "talker's output in kubectl logs",
        || {
            // (stdout and stderr are separate pipes: their relative order is not fixed)
            let out = kubectl(&c.kubeconfig, &["logs", "talker"], None);
            let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(String::from)
                .collect();
            lines.sort();
            lines == ["hello from a configmap", "prepared-by-init", "to-stderr"]
        },
    )
    .unwrap();
    assert_eq!(
        c.ok(&["logs", "talker", "-c", "prepare"], None),
        "init-output\n"
    );
    // --tail is the end of the log file, whatever order the two pipes reached it in.
    let all = c.ok(&["logs", "talker", "--timestamps"], None);
    let ts = c.ok(&["logs", "talker", "--tail", "2", "--timestamps"], None);
    let lines: Vec<&str> = all.lines().collect();
    let last_two = &lines[lines.len().saturating_sub(2)..];
    assert_eq!(ts.lines().collect::<Vec<_>>(), last_two, "{all:?}");
    assert!(
        ts.lines().all(|l| l.starts_with("20") && l.contains("Z ")),
        "{ts:?}"
    );
    let err = kubectl(&c.kubeconfig, &["logs", "talker", "--previous"], None);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("previous terminated container"));

    // A liveness probe that starts failing: the container is restarted.
    let p = c.wait_pod(
        "flaky",
        Duration::from_secs(60),
        "restarted by its liveness probe",
        |p| status_of(p, "app")["restartCount"].as_i64().unwrap_or(0) >= 1,
    );
    assert!(status_of(&p, "app")["lastState"]["terminated"].is_object());
    // kubelet's Events on it, as `kubectl describe pod` shows them: the second liveness
    // restart waits out a back-off.
    eventually(Duration::from_secs(60), "flaky backs off", || {
        c.ok(&["describe", "pod", "flaky"], None)
            .contains("Back-off restarting failed container app in pod flaky_default(")
    })
    .unwrap();
    let describe = c.ok(&["describe", "pod", "flaky"], None);
    for want in [
        "Container image \"localhost/busybox:1\" already present on machine",
        "Created container: app",
        "Started container app",
        "Liveness probe failed:",
        "Container app failed liveness probe, will be restarted",
        "BackOff",
    ] {
        assert!(describe.contains(want), "{want}: {describe}");
    }
    let wide = c.ok(&["get", "nodes", "-o", "wide"], None);
    assert!(wide.contains("containerd://"), "{wide}");

    // A memory hog over its limit: OOMKilled.
    let p = c.wait_pod("hog", Duration::from_secs(60), "Failed", |p| {
        p["status"]["phase"] == "Failed"
    });
    let t = &status_of(&p, "app")["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{t}");
    assert_eq!(t["exitCode"], 137);

    // An image that was never imported: ErrImagePull / ImagePullBackOff, said clearly.
    let p = c.wait_pod(
        "ghost",
        Duration::from_secs(60),
        "waiting on its image",
        |p| {
            matches!(
                status_of(p, "app")["state"]["waiting"]["reason"].as_str(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        },
    );
    let msg = status_of(&p, "app")["state"]["waiting"]["message"].to_string();
    assert!(msg.contains("localhost/not-imported:1"), "{msg}");
    eventually(Duration::from_secs(30), "ghost's pull events", || {
        let events = c.ok(&["events", "--for", "pod/ghost"], None);
        events.contains("Pulling image \"localhost/not-imported:1\"")
            && events.contains("Failed to pull image \"localhost/not-imported:1\"")
            && events.contains("Error: ErrImagePull")
    })
    .unwrap();

    // kill -9 of all of `capstan up` (containerd lives on), then start it again: nothing
    // restarted, the same containers adopted.
    let before: Vec<(String, Value, Value)> =
        c.json(&["get", "pods", "-l", "app=web"]).unwrap()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_string(),
                    status_of(p, "httpd")["containerID"].clone(),
                    status_of(p, "httpd")["restartCount"].clone(),
                )
            })
            .collect();
    c.up = None;
    c.boot();
    // Give the agent a few PLEG periods to act, had it wanted to.
    eventually(Duration::from_secs(30), "web pods still Ready", || {
        before.iter().all(|(name, _, _)| ready(&c.pod(name)))
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    for (name, id, restarts) in &before {
        let p = c.pod(name);
        assert_eq!(
            &status_of(&p, "httpd")["containerID"],
            id,
            "{name} was not recreated"
        );
        assert_eq!(
            &status_of(&p, "httpd")["restartCount"],
            restarts,
            "{name} was not restarted"
        );
    }

    // Delete everything: containers, sandboxes, pod cgroups and log dirs go (checked through
    // CRI's listing and the filesystem).
    let uids: BTreeSet<String> = c.json(&["get", "pods"]).unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["uid"].as_str().unwrap().to_string())
        .collect();
    c.ok(&["delete", "deployment", "web"], None);
    c.ok(&["delete", "pods", "--all", "--wait=false"], None);
    eventually(Duration::from_secs(60), "no pods left", || {
        c.json(&["get", "pods"])
            .is_some_and(|l| l["items"].as_array().is_some_and(|a| a.is_empty()))
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = c.socket();
    rt.block_on(async {
        let cri = cri(&socket).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sbs = cri.list_sandboxes().await.unwrap();
            let cs = cri.list_containers().await.unwrap();
            if sbs.is_empty() && cs.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "left in containerd: {} sandboxes, {} containers",
                sbs.len(),
                cs.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // The agent confirms a pod's deletion once it has stopped, and removes its sandboxes, logs
    // and volumes right after: poll for the directories rather than racing that last step.
    let left_in = |dir: &Path| -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    for sub in ["agent/logs", "agent/pods"] {
        let dir = c.dir.path().join(sub);
        if eventually(Duration::from_secs(10), sub, || left_in(&dir).is_empty()).is_err() {
            panic!("{sub} left: {:?}", left_in(&dir));
        }
    }
    for uid in &uids {
        for ctl in ["memory", "cpu", "pids"] {
            for qos in ["", "burstable/", "besteffort/"] {
                let d = format!("/sys/fs/cgroup/{ctl}/kubepods/{qos}pod{uid}");
                assert!(!Path::new(&d).exists(), "{d} left behind");
            }
        }
    }
    eprintln!("done after {:?}", t0.elapsed());
}
