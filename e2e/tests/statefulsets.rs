//! StatefulSets with volumes through unmodified kubectl on containerd (busybox containers):
//! `capstan up` ships the default `local-path` StorageClass; a StatefulSet of 3 behind a
//! headless Service gets a claim per pod, provisioned as a directory on the node and mounted
//! into the container; each pod writes its identity to its volume; pod web-1 deleted comes
//! back as web-1 with the same claim and the data written before; its per-pod DNS name
//! answers; scale-down keeps the claims; a rolling update and `kubectl rollout undo` go
//! through ControllerRevisions; deleting the claims deletes their volumes and the node removes
//! their directories (reclaim Delete).
//! (The process runtime cannot mount volumes; ordering, scale-down and retention policies are
//! tested on simulated nodes in controllers/tests/statefulsets.rs.)

mod cri_cluster;

use std::time::Duration;

use capstan_testkit::{eventually, kubectl};
use serde_json::Value;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: IMAGE
        env: [{name: VERSION, value: "1"}]
        command: [sh, -c, 'test -f /data/id || echo "$(hostname)-$RANDOM$RANDOM" > /data/id; exec httpd -f -p 8080 -h /data']
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 64Mi}}
"#;

fn items(v: Option<Value>) -> Vec<Value> {
    v.and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn stateful_pods_keep_their_claims_and_data_on_containerd() {
    if !cri_cluster::runnable("statefulsets on containerd") {
        return;
    }
    let c = cri_cluster::Cluster::start();
    let classes = c.ok(&["get", "storageclass"], None);
    assert!(
        classes.contains("local-path (default)") && classes.contains("capstan.dev/local-path"),
        "{classes}"
    );
    c.ok(
        &["apply", "-f", "-"],
        Some(&MANIFEST.replace("IMAGE", "localhost/busybox:1")),
    );
    c.ok(&["rollout", "status", "sts/web", "--timeout=120s"], None);
    let claims = items(c.json(&["get", "pvc"]));
    let bound: Vec<(&str, &str)> = claims
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or(""),
                p["status"]["phase"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        bound,
        [
            ("data-web-0", "Bound"),
            ("data-web-1", "Bound"),
            ("data-web-2", "Bound")
        ]
    );
    let table = c.ok(&["get", "pvc", "data-web-1"], None);
    assert!(
        table.contains("RWO") && table.contains("local-path"),
        "{table}"
    );
    // The volume is a directory under the node's data dir, holding what the pod wrote.
    let pv_name = claims[1]["spec"]["volumeName"]
        .as_str()
        .unwrap()
        .to_string();
    let pv = c.json(&["get", "pv", &pv_name]).unwrap();
    let path = std::path::PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap());
    assert!(path.starts_with(c.dir.path()), "{path:?}");
    let id = c.ok(&["exec", "web-1", "--", "cat", "/data/id"], None);
    assert!(id.starts_with("web-1-"), "{id}");
    assert_eq!(std::fs::read_to_string(path.join("id")).unwrap(), id);

    // The headless Service names each pod. (busybox's resolver gives up after one lost
    // answer on a loaded machine: asked again within a deadline.)
    let url = "http://web-1.web.default.svc.cluster.local:8080/id";
    let mut last = String::new();
    let answered = eventually(Duration::from_secs(60), "web-1 answers by its name", || {
        let out = kubectl(
            &c.kubeconfig,
            &["exec", "web-0", "--", "wget", "-q", "-O-", url],
            None,
        );
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.status.success() && String::from_utf8_lossy(&out.stdout) == id
    });
    if answered.is_err() {
        panic!(
            "{url}: {last}\n{}",
            c.explain_lookup("web-0", "web-1.web.default.svc.cluster.local")
        );
    }

    // web-1 deleted comes back as web-1 with its claim and its data.
    let uid = c.pod("web-1")["metadata"]["uid"].clone();
    c.ok(&["delete", "pod", "web-1", "--wait=false"], None);
    c.wait_pod(
        "web-1",
        Duration::from_secs(90),
        "web-1 running again",
        |p| p["metadata"]["uid"] != uid && p["status"]["phase"] == "Running",
    );
    c.ok(&["rollout", "status", "sts/web", "--timeout=90s"], None);
    assert_eq!(c.ok(&["exec", "web-1", "--", "cat", "/data/id"], None), id);

    // Scale-down keeps the claims.
    c.ok(&["scale", "sts/web", "--replicas=2"], None);
    eventually(Duration::from_secs(60), "web-2 is gone", || {
        c.json(&["get", "pod", "web-2"]).is_none()
    })
    .unwrap();
    assert_eq!(items(c.json(&["get", "pvc"])).len(), 3);

    // A rolling update and its undo, through the revisions.
    c.ok(&["set", "env", "sts/web", "VERSION=2"], None);
    c.ok(&["rollout", "status", "sts/web", "--timeout=120s"], None);
    let env = |pod: &str| c.ok(&["exec", pod, "--", "sh", "-c", "echo $VERSION"], None);
    assert_eq!(env("web-0").trim(), "2");
    let history = c.ok(&["rollout", "history", "sts/web"], None);
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );
    c.ok(&["rollout", "undo", "sts/web"], None);
    c.ok(&["rollout", "status", "sts/web", "--timeout=120s"], None);
    assert_eq!(env("web-0").trim(), "1");
    assert_eq!(env("web-1").trim(), "1");
    assert_eq!(c.ok(&["exec", "web-1", "--", "cat", "/data/id"], None), id);

    // Deleting the set and its claims deletes the volumes (the class reclaims with Delete).
    c.ok(
        &["delete", "sts", "web", "--wait=true", "--timeout=60s"],
        None,
    );
    c.ok(
        &["delete", "pvc", "--all", "--wait=true", "--timeout=60s"],
        None,
    );
    let gone = eventually(
        Duration::from_secs(90),
        "the volumes and their data are gone",
        || items(c.json(&["get", "pv"])).is_empty() && !path.exists(),
    );
    if let Err(e) = gone {
        // What is left, for the failure to explain itself.
        let left: Vec<String> = items(c.json(&["get", "pv"]))
            .iter()
            .map(|pv| {
                format!(
                    "{} phase={} claim={} deleting={} finalizers={}",
                    pv["metadata"]["name"],
                    pv["status"]["phase"],
                    pv["spec"]["claimRef"]["name"],
                    pv["metadata"]["deletionTimestamp"],
                    pv["metadata"]["finalizers"]
                )
            })
            .collect();
        panic!(
            "{e}: volumes left {left:#?}, {} exists: {}",
            path.display(),
            path.exists()
        );
    }
}
