//! Unmodified kubectl sees Kubernetes 1.33's defaults on `capstan up`: the dry-run output of
//! `kubectl create` matches what a real API server prints, and because the server defaults what
//! it stores, `kubectl apply` (client- or server-side) twice changes nothing and `kubectl diff`
//! finds no drift.

use std::path::PathBuf;

use capstan_testkit::{CapstanUp, capstan_bin, kubectl, kubectl_ok, temp_dir};
use serde_json::{Value, json};

struct Cluster {
    _up: CapstanUp,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = temp_dir("capstan-defaults-").unwrap();
        let data_dir = dir.path().display().to_string();
        let up = CapstanUp::start(capstan_bin(), &["--data-dir", &data_dir]).unwrap();
        Cluster {
            _up: up,
            kubeconfig: dir.path().join("kubeconfig"),
            _dir: dir,
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        kubectl(&self.kubeconfig, args, stdin)
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        kubectl_ok(&self.kubeconfig, args, stdin)
    }

    fn yaml(&self, args: &[&str]) -> Value {
        serde_yaml::from_str(&self.ok(args, None)).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a, None)).unwrap()
    }
}

/// The spec Kubernetes 1.33 prints for `kubectl create deployment x --image=y -o yaml
/// --dry-run=server` (its Go types print a pod template's zero creationTimestamp as null until
/// 1.34).
const CREATE_DEPLOYMENT_SPEC: &str = "
progressDeadlineSeconds: 600
replicas: 1
revisionHistoryLimit: 10
selector:
  matchLabels:
    app: x
strategy:
  rollingUpdate:
    maxSurge: 25%
    maxUnavailable: 25%
  type: RollingUpdate
template:
  metadata:
    creationTimestamp: null
    labels:
      app: x
  spec:
    containers:
    - image: y
      imagePullPolicy: Always
      name: y
      resources: {}
      terminationMessagePath: /dev/termination-log
      terminationMessagePolicy: File
    dnsPolicy: ClusterFirst
    restartPolicy: Always
    schedulerName: default-scheduler
    securityContext: {}
    terminationGracePeriodSeconds: 30
";

/// The spec Kubernetes 1.33 prints for `kubectl create service clusterip s --tcp=80:8080 -o yaml
/// --dry-run=server`, but for clusterIP and clusterIPs (a dry run allocates no IP here).
const CREATE_SERVICE_SPEC: &str = "
internalTrafficPolicy: Cluster
ipFamilies:
- IPv4
ipFamilyPolicy: SingleStack
ports:
- name: 80-8080
  port: 80
  protocol: TCP
  targetPort: 8080
selector:
  app: s
sessionAffinity: None
type: ClusterIP
";

const MANIFEST: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: localhost/busybox:1
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {port: 8080}}
      volumes: [{name: scratch}, {name: config, configMap: {name: web}}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
";

#[test]
fn kubectl_create_dry_run_prints_kubernetes_defaults() {
    let c = Cluster::start();
    let d = c.yaml(&[
        "create",
        "deployment",
        "x",
        "--image=y",
        "-o",
        "yaml",
        "--dry-run=server",
    ]);
    let want: Value = serde_yaml::from_str(CREATE_DEPLOYMENT_SPEC).unwrap();
    assert_eq!(d["spec"], want, "{}", serde_yaml::to_string(&d).unwrap());
    let mut s = c.yaml(&[
        "create",
        "service",
        "clusterip",
        "s",
        "--tcp=80:8080",
        "-o",
        "yaml",
        "--dry-run=server",
    ]);
    for allocated in ["clusterIP", "clusterIPs"] {
        s["spec"].as_object_mut().unwrap().remove(allocated);
    }
    let want: Value = serde_yaml::from_str(CREATE_SERVICE_SPEC).unwrap();
    assert_eq!(s["spec"], want, "{}", serde_yaml::to_string(&s).unwrap());
    // Nothing was stored.
    let out = c.run(&["get", "deployment", "x"], None);
    assert!(!out.status.success());
}

#[test]
fn applying_a_manifest_again_changes_nothing_and_diff_finds_no_drift() {
    let c = Cluster::start();
    let scratch = temp_dir("capstan-defaults-manifest-").unwrap();
    let manifest = scratch.path().join("web.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let file = manifest.to_str().unwrap();
    c.ok(&["apply", "--server-side", "-f", file], None);
    let deployment = c.json(&["get", "deployment", "web"]);
    let service = c.json(&["get", "service", "web"]);
    // Stored with the defaults.
    let spec = &deployment["spec"];
    assert_eq!(spec["revisionHistoryLimit"], 10);
    let container = &spec["template"]["spec"]["containers"][0];
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(container["ports"][0]["protocol"], "TCP");
    assert_eq!(container["readinessProbe"]["periodSeconds"], 10);
    assert_eq!(
        spec["template"]["spec"]["volumes"],
        json!([{"name": "scratch", "emptyDir": {}},
            {"name": "config", "configMap": {"name": "web", "defaultMode": 420}}])
    );
    assert_eq!(service["spec"]["sessionAffinity"], "None");

    // Server-side apply again: no change (the controllers write the Deployment's status, so
    // its spec is compared through generation; nobody else writes the Service).
    c.ok(&["apply", "--server-side", "-f", file], None);
    let again = c.json(&["get", "deployment", "web"]);
    assert_eq!(again["metadata"]["generation"], 1);
    assert_eq!(again["spec"], deployment["spec"]);
    assert_eq!(
        c.json(&["get", "service", "web"])["metadata"]["resourceVersion"],
        service["metadata"]["resourceVersion"]
    );
    let out = c.run(&["diff", "--server-side", "-f", file], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "kubectl diff --server-side found drift: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A changed re-apply by the same manager does not conflict, also on a defaulted field
    // (the defaults are nobody's), and what it stops applying goes back to the default.
    let changed = MANIFEST.replace(
        "  selector: {matchLabels: {app: web}}\n",
        "  selector: {matchLabels: {app: web}}\n  replicas: 3\n  revisionHistoryLimit: 2\n",
    );
    c.ok(&["apply", "--server-side", "-f", "-"], Some(&changed));
    let changed_spec = c.json(&["get", "deployment", "web"])["spec"].clone();
    assert_eq!(
        (
            &changed_spec["replicas"],
            &changed_spec["revisionHistoryLimit"]
        ),
        (&json!(3), &json!(2))
    );
    c.ok(&["apply", "--server-side", "-f", file], None);
    let back = c.json(&["get", "deployment", "web"]);
    assert_eq!(back["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(back["spec"]["replicas"], 1);

    // Client-side apply twice: no change, and `kubectl diff` finds no drift. (kubectl still
    // patches the bare volume with `$retainKeys: [name]`, the live one having its emptyDir, so
    // it says "configured" for the Deployment; the server defaults the emptyDir back.)
    let client_side = MANIFEST.replace("web", "cs");
    c.ok(&["apply", "-f", "-"], Some(&client_side));
    let first = c.json(&["get", "deployment", "cs"]);
    let out = c.ok(&["apply", "-f", "-"], Some(&client_side));
    assert!(out.contains("service/cs unchanged"), "{out}");
    let second = c.json(&["get", "deployment", "cs"]);
    assert_eq!(second["metadata"]["generation"], 1);
    assert_eq!(second["spec"], first["spec"]);
    let out = c.run(&["diff", "-f", "-"], Some(&client_side));
    assert_eq!(
        out.status.code(),
        Some(0),
        "kubectl diff found drift: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `kubectl debug` reads fields only a defaulted pod has (it panicked on Capstan before), then
/// adds its container through pods/ephemeralcontainers; the server refuses a second container
/// of the same name (merged by name, it would change the existing one).
#[test]
fn kubectl_debug_adds_an_ephemeral_container() {
    let c = Cluster::start();
    c.ok(
        &[
            "run",
            "app",
            "--image=localhost/busybox:1",
            "--restart=Never",
            "--",
            "sleep",
            "1000",
        ],
        None,
    );
    let debug = [
        "debug",
        "app",
        "--image=localhost/busybox:1",
        "-c",
        "debugger",
        "--target=app",
        "--profile=general",
    ];
    let out = c.run(&debug, None);
    assert!(
        out.status.success(),
        "kubectl debug: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod = c.json(&["get", "pod", "app"]);
    let added = &pod["spec"]["ephemeralContainers"][0];
    assert_eq!(added["name"], "debugger");
    assert_eq!(added["targetContainerName"], "app");
    assert_eq!(
        added["securityContext"]["capabilities"]["add"],
        json!(["SYS_PTRACE"])
    );
    let again = c.run(&debug, None);
    assert!(
        !again.status.success(),
        "a second container named debugger is refused"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains("existing ephemeral containers may not be changed"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
