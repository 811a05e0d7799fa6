//! The Helm chart (charts/capstan, issue 27) with the real Helm 4 client
//! ([`capstan_testkit::helm`]) against Capstan itself, its controllers running as pods of the
//! capstan image (`capstan image build`) on containerd: machine a of
//! [`capstan_testkit::machines`] runs `capstan up` with every controller but the GitOps and
//! ScalingPolicy ones, which the chart brings.
//!
//! Checked: `helm lint --strict`; values the schema refuses; `helm template` accepted by
//! `kubectl apply --dry-run=server` and nothing written by it; `helm install` with the
//! defaults (the chart's CRDs in place of Capstan's built-in ones) → the manager
//! pod Ready, leading through the release's Lease, in-cluster (the `kubernetes` Service, the
//! projected token), as its own ServiceAccount; a GitSync served by `git daemon` on the host
//! applied (a ConfigMap and a Deployment), and a ScalingPolicy scaling that Deployment;
//! `helm upgrade` (two replicas, debug logs: one leads, one stands by); `helm rollback` (one
//! replica again, which still syncs a new commit); `helm uninstall` leaves no object of the
//! release (its CRDs included) and no pod.

mod cri_cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use capstan_testkit::git::{GitDaemon, GitRepo};
use capstan_testkit::machines::Machines;
use capstan_testkit::{capstan_bin, eventually, temp_dir};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);
const NS: &str = "capstan-system";
const RELEASE: &str = "capstan";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/capstan")
}

/// Helm with its own config, cache and data directories (nothing of the user's touched).
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_DATA_HOME", self.home.path().join("data"));
        if let Some(k) = &self.kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        capstan_testkit::output_within(cmd, stdin.unwrap_or("").as_bytes(), WAIT)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None);
        assert!(
            out.status.success(),
            "helm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The manager pods of the release: (name, ready), the terminating ones left out.
fn manager_pods(m: &Machines) -> Vec<(String, bool)> {
    let label = format!("app.kubernetes.io/instance={RELEASE}");
    let pods = m
        .json(&["-n", NS, "get", "pods", "-l", &label])
        .unwrap_or(Value::Null);
    pods["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .map(|p| {
                    let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    });
                    (
                        p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                        ready,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The holder of the release's Lease.
fn leader(m: &Machines) -> Option<String> {
    m.json(&["-n", NS, "get", "lease", RELEASE])?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

/// Whether the release's Deployment has rolled out its current template to `n` replicas,
/// every one available.
fn rolled_out(m: &Machines, n: usize) -> bool {
    let Some(d) = m.json(&["-n", NS, "get", "deployment", RELEASE]) else {
        return false;
    };
    let s = &d["status"];
    s["observedGeneration"] == d["metadata"]["generation"]
        && [
            &s["replicas"],
            &s["updatedReplicas"],
            &s["availableReplicas"],
        ]
        .iter()
        .all(|v| v.as_u64() == Some(n as u64))
}

/// The Deployment rolled out to `n` manager pods, all Ready, one of them holding the Lease
/// (its identity starts with the pod's name, its hostname).
fn wait_for_managers(m: &Machines, n: usize, what: &str) -> Vec<String> {
    let mut pods = Vec::new();
    let ready = eventually(WAIT, what, || {
        pods = manager_pods(m);
        rolled_out(m, n)
            && pods.len() == n
            && pods.iter().all(|(_, ready)| *ready)
            && leader(m).is_some_and(|l| pods.iter().any(|(p, _)| l.starts_with(&format!("{p}_"))))
    });
    assert!(
        ready.is_ok(),
        "{what}: pods {pods:?}, leader {:?}\n{}\n{}",
        leader(m),
        m.ok(&["-n", NS, "describe", "pods"], None),
        m.logs()
    );
    pods.into_iter().map(|(p, _)| p).collect()
}

fn manager_logs(m: &Machines) -> String {
    let label = format!("app.kubernetes.io/instance={RELEASE}");
    let out = capstan_testkit::kubectl(
        &m.kubeconfig,
        &["-n", NS, "logs", "-l", &label, "--tail", "60", "--prefix"],
        None,
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

const APP_CONFIG: &str = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: site-config}
data: {greeting: hello}
"#;

/// No `replicas`: the ScalingPolicy owns the count, as Flux users leave it out for an HPA.
const WORKER: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: worker}
spec:
  selector: {matchLabels: {app: worker}}
  template:
    metadata: {labels: {app: worker}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: localhost/busybox:1
        command: ["sh", "-c", "exec sleep 3600"]
"#;

#[test]
fn the_chart_installs_capstans_controllers_as_pods_on_capstan() {
    if !cri_cluster::runnable("chart") {
        return;
    }
    let mut helm = Helm {
        bin: capstan_testkit::helm::binary().unwrap(),
        home: temp_dir("capstan-helm-").unwrap(),
        kubeconfig: None,
    };
    let chart = chart();
    let chart_s = chart.display().to_string();

    // Offline: lint, and values the schema refuses.
    helm.ok(&["lint", "--strict", &chart_s]);
    for (bad, why) in [
        ("controllers={gitsync}", "controllers"),
        ("extraArgs={verbose}", "extraArgs"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
    ] {
        let out = helm.run(&["template", "x", &chart_s, "--set", bad], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {bad} was taken");
        assert!(
            err.contains("schema") && err.contains(why),
            "--set {bad}: {err}"
        );
    }

    // The capstan image beside busybox (the sandbox image is the agent's own).
    let images = temp_dir("capstan-chart-images-").unwrap();
    cri_cluster::build_images(images.path());
    let _ = std::fs::remove_file(images.path().join("pause.tar"));
    let built = Command::new(capstan_bin())
        .args(["image", "build", "-o"])
        .arg(images.path().join("capstan.tar"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "capstan image build: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    let m = Machines::start_with(
        capstan_bin(),
        &["a"],
        images.path(),
        &["--controllers=all,-gitops,-scalingpolicy"],
    )
    .unwrap();
    m.ready_ranges(WAIT).unwrap();
    helm.kubeconfig = Some(m.kubeconfig.clone());
    m.ok(&["create", "namespace", NS], None);

    // The whole chart, CRDs included, accepted by the server's dry run; nothing written.
    let rendered = helm.ok(&[
        "template",
        RELEASE,
        &chart_s,
        "-n",
        NS,
        "--set",
        "crds.install=true",
    ]);
    assert!(rendered.contains("kind: CustomResourceDefinition"));
    let dry = m.ok(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
    assert!(
        dry.contains("deployment.apps/capstan created (server dry run)"),
        "{dry}"
    );
    assert!(
        m.json(&["-n", NS, "get", "deployment", RELEASE]).is_none(),
        "the dry run wrote the Deployment"
    );

    // Install with the defaults, as into any Kubernetes: the CRDs come from the chart. Capstan
    // installs its own at start, so those go first (the alternative, `crds.install=false`,
    // is the README's).
    m.ok(
        &[
            "delete",
            "crd",
            "gitsyncs.capstan.dev",
            "scalingpolicies.capstan.dev",
        ],
        None,
    );
    helm.ok(&["install", RELEASE, &chart_s, "-n", NS]);
    let first = wait_for_managers(&m, 1, "the manager pod Ready and leading");
    for crd in ["gitsyncs.capstan.dev", "scalingpolicies.capstan.dev"] {
        let crd = m.json(&["get", "crd", crd]).unwrap();
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/instance"], RELEASE,
            "{crd}"
        );
    }

    // The repository, served on the host bridge, and a GitSync of it.
    let repo = GitRepo::new().unwrap();
    repo.write("app/config.yaml", APP_CONFIG).unwrap();
    repo.write("app/worker.yaml", WORKER).unwrap();
    repo.commit("the site").unwrap();
    let served = temp_dir("capstan-chart-repos-").unwrap();
    let bare = repo.bare_clone(served.path(), "site").unwrap();
    let daemon = GitDaemon::start_on(served.path(), &format!("{}.1", m.subnet)).unwrap();
    let gitsync = format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: GitSync\nmetadata: {{name: site, namespace: default}}\n\
         spec: {{repo: \"{}\", ref: {{branch: main}}, path: app, interval: 5s, prune: true}}\n",
        daemon.url("site")
    );
    m.ok(&["apply", "-f", "-"], Some(&gitsync));
    let head = repo.head().unwrap();
    let synced = |commit: &str| {
        m.json(&["get", "gitsync", "site"])
            .is_some_and(|g| g["status"]["lastAppliedCommit"] == commit)
    };
    let applied = eventually(WAIT, "the GitSync applied by the chart's manager", || {
        synced(&head)
            && m.json(&["get", "configmap", "site-config"]).is_some()
            && m.json(&["get", "deployment", "worker"]).is_some()
    });
    assert!(
        applied.is_ok(),
        "{:?}\n{}",
        m.json(&["get", "gitsync", "site"]),
        manager_logs(&m)
    );

    // A ScalingPolicy whose schedule is always open scales the synced Deployment.
    let policy = "apiVersion: capstan.dev/v1alpha1\nkind: ScalingPolicy\nmetadata: {name: worker, namespace: default}\n\
        spec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: worker}\n  minReplicas: 1\n  maxReplicas: 5\n  pollingInterval: 1s\n\
        \x20 triggers:\n  - name: always\n    type: schedule\n    schedule: {start: \"0 0 * * *\", end: \"59 23 * * *\", replicas: 3}\n";
    // Between 23:59 and midnight the window is shut: wait for it to open.
    let scaled = eventually(WAIT, "the ScalingPolicy scaling worker to 3", || {
        if m.json(&["get", "scalingpolicy", "worker"]).is_none() {
            m.ok(&["apply", "-f", "-"], Some(policy));
        }
        m.json(&["get", "deployment", "worker"])
            .is_some_and(|d| d["spec"]["replicas"] == 3)
    });
    assert!(
        scaled.is_ok(),
        "{:?}\n{}",
        m.json(&["get", "scalingpolicy", "worker"]),
        manager_logs(&m)
    );
    // The manager runs in-cluster as the release's ServiceAccount (Capstan's own manager runs
    // neither controller: the Event and the sync are the pod's).
    let pod = m.json(&["-n", NS, "get", "pod", &first[0]]).unwrap();
    assert_eq!(pod["spec"]["serviceAccountName"], RELEASE);
    let events = m.ok(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=ScalingPolicy",
            "-o",
            "json",
        ],
        None,
    );
    assert!(events.contains("New size: 3"), "{events}");
    let logs = manager_logs(&m);
    assert!(
        logs.contains("using the in-cluster configuration"),
        "{logs}"
    );
    assert!(logs.contains("became the leader"), "{logs}");

    // Upgrade: two replicas, debug logs. One leads, the other stands by.
    helm.ok(&[
        "upgrade",
        RELEASE,
        &chart_s,
        "-n",
        NS,
        "--reuse-values",
        "--set",
        "replicaCount=2",
        "--set",
        "logLevel=debug",
    ]);
    let two = wait_for_managers(&m, 2, "two manager pods after the upgrade, one leading");
    assert!(
        two.iter().all(|p| !first.contains(p)),
        "the pods were not replaced: {two:?}"
    );
    let deployment = m.json(&["-n", NS, "get", "deployment", RELEASE]).unwrap();
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("\"debug\""), "{env}");

    // Rollback to the first revision: one replica, info logs; it still syncs new commits.
    helm.ok(&["rollback", RELEASE, "1", "-n", NS]);
    wait_for_managers(&m, 1, "one manager pod after the rollback");
    let deployment = m.json(&["-n", NS, "get", "deployment", RELEASE]).unwrap();
    assert_eq!(deployment["spec"]["replicas"], 1);
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("\"info\""), "{env}");
    let history = helm.ok(&["history", RELEASE, "-n", NS, "-o", "json"]);
    let history: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history.as_array().map(Vec::len), Some(3), "{history}");
    repo.write(
        "app/second.yaml",
        &APP_CONFIG.replace("site-config", "second"),
    )
    .unwrap();
    let second = repo.commit("a second ConfigMap").unwrap();
    repo.push_to(&bare).unwrap();
    let resynced = eventually(WAIT, "the new commit synced after the rollback", || {
        synced(&second) && m.json(&["get", "configmap", "second"]).is_some()
    });
    assert!(
        resynced.is_ok(),
        "{:?}\n{}\n{}",
        m.json(&["get", "gitsync", "site"])
            .map(|g| g["status"].clone()),
        m.ok(&["get", "events", "-A"], None),
        manager_logs(&m)
    );

    // The policy and the GitSync go, then what the GitSync applied (a GitSync's deletion
    // leaves its objects, unlike Flux's Kustomization with prune: see the README), then the
    // release.
    m.ok(&["delete", "scalingpolicy", "worker"], None);
    m.ok(&["delete", "gitsync", "site"], None);
    m.ok(
        &[
            "delete",
            "deployments,configmaps",
            "-l",
            "gitops.capstan.dev/name=site",
            "--cascade=foreground",
        ],
        None,
    );
    helm.ok(&["uninstall", RELEASE, "-n", NS, "--wait"]);
    let label = format!("app.kubernetes.io/instance={RELEASE}");
    let gone =
        eventually(WAIT, "nothing of the release left", || {
            let left = m.ok(
            &[
                "-n", NS, "get",
                "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,leases",
                "-l", &label, "-o", "name",
            ],
            None,
        );
            let cluster = m.ok(
                &[
                    "get",
                    "clusterroles,clusterrolebindings,customresourcedefinitions",
                    "-l",
                    &label,
                    "-o",
                    "name",
                ],
                None,
            );
            left.trim().is_empty() && cluster.trim().is_empty() && manager_pods(&m).is_empty()
        });
    assert!(
        gone.is_ok(),
        "{}",
        m.ok(&["-n", NS, "get", "all,leases,sa,roles,rolebindings"], None)
    );
    drop(daemon);
    // Nothing of the release's left running on the host once the machines are gone.
    drop(m);
    let mark = format!("--leader-elect-resource-namespace={NS}");
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("/capstan controllers") && c.contains(&mark))
        .collect();
    assert!(left.is_empty(), "manager processes left: {left:?}");
}
