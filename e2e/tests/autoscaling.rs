//! The metrics pipeline and the HorizontalPodAutoscaler through unmodified kubectl, on `capstan
//! up --runtime process` (pods are real processes in cgroups) and on containerd (busybox
//! containers): the agent samples CPU and memory (every second here), `kubectl top pods` and
//! `kubectl top nodes` read metrics.k8s.io, a CPU-burning Deployment with a request drives
//! `kubectl autoscale` up to its maximum (TARGETS, conditions and a SuccessfulRescale event as
//! Kubernetes shows them), and once the pods idle it comes back to its minimum after the
//! (shortened) downscale stabilization window. Burners are capped by a CPU limit so the test
//! never takes the machine's cores from the tests beside it.
//!
//! An external metric through the aggregation layer, on the process runtime: a metrics adapter
//! (testkit's, an HTTPS extension API server standing in for KEDA's or prometheus-adapter,
//! which cannot be installed here) trusting the front proxy's CA that `capstan up` publishes,
//! registered with `kubectl apply`; `kubectl get apiservice` shows it Available, `kubectl get
//! --raw` reads its values, and an HPA on a queue length scales real processes to 4 (`kubectl
//! get hpa` shows `10/10 (avg)`).
//!
//! Capstan's ScalingPolicy on the same two runtimes: 50 messages in a real Redis list (its
//! password from a Secret) wake a Deployment of real pods from 0 to 5 at 10 per replica
//! (`kubectl get sp` shows it), and the drained list takes it back to 0 after the cooldown.

mod cri_cluster;

use std::path::{Path, PathBuf};
use std::time::Duration;

use capstan_testkit::{CapstanUp, capstan_bin, eventually, kubectl, kubectl_ok, temp_dir};
use serde_json::Value;

const NODE: &str = "autoscaling-e2e";

/// Fast sampling and autoscaling: a sample a second, a sync every 2 s, scale-down 6 s after the
/// last higher recommendation.
const FLAGS: &[&str] = &[
    "--stats-interval",
    "1s",
    "--horizontal-pod-autoscaler-sync-period",
    "2s",
    "--horizontal-pod-autoscaler-downscale-stabilization",
    "6s",
];

const BURN: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: burn}
spec:
  replicas: 1
  selector: {matchLabels: {app: burn}}
  template:
    metadata: {labels: {app: burn}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burn
        image: IMAGE
        command: [sh, -c, 'while :; do :; done']
        resources: {requests: {cpu: 50m}, limits: {cpu: 150m}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: idle}
spec:
  replicas: 1
  selector: {matchLabels: {app: idle}}
  template:
    metadata: {labels: {app: idle}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: idle
        image: IMAGE
        command: [sleep, "3600"]
        resources: {requests: {cpu: 50m}}
"#;

struct Kubectl<'a>(&'a Path);

impl Kubectl<'_> {
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        kubectl_ok(self.0, args, stdin)
    }

    fn try_ok(&self, args: &[&str]) -> Option<String> {
        let out = kubectl(self.0, args, None);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a, None)).unwrap()
    }

    fn replicas(&self, deploy: &str) -> i64 {
        self.json(&["get", "deploy", deploy])["spec"]["replicas"]
            .as_i64()
            .unwrap_or(-1)
    }
}

/// Millicores of a `kubectl top` CPU cell ("341m", "1").
fn millicores(cell: &str) -> Option<i64> {
    match cell.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => cell.parse::<i64>().ok().map(|c| c * 1000),
    }
}

/// `kubectl top pods` rows: pod name prefix → CPU millicores.
fn top_pods(c: &Kubectl) -> Option<Vec<(String, i64)>> {
    let out = c.try_ok(&["top", "pods", "--no-headers"])?;
    out.lines()
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            Some((cells.first()?.to_string(), millicores(cells.get(1)?)?))
        })
        .collect()
}

fn scenario(c: &Kubectl, node: &str, image: &str) {
    c.ok(&["apply", "-f", "-"], Some(&BURN.replace("IMAGE", image)));
    c.ok(&["rollout", "status", "deploy/burn", "--timeout=90s"], None);
    c.ok(&["rollout", "status", "deploy/idle", "--timeout=90s"], None);

    // kubectl top: the burner runs at its limit, the sleeper at nothing.
    eventually(
        Duration::from_secs(60),
        "kubectl top pods shows the burner busy and the sleeper idle",
        || {
            let rows = top_pods(c).unwrap_or_default();
            let cpu = |prefix: &str| {
                rows.iter()
                    .find(|(n, _)| n.starts_with(prefix))
                    .map(|(_, m)| *m)
            };
            matches!((cpu("burn-"), cpu("idle-")), (Some(b), Some(i)) if b >= 60 && i <= 20)
        },
    )
    .unwrap();
    let nodes = c.ok(&["top", "nodes", "--no-headers"], None);
    assert!(nodes.starts_with(node), "{nodes}");
    let raw = c.ok(
        &[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods",
        ],
        None,
    );
    let list: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(list["kind"], "PodMetricsList");
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["window"] == "1s" && p["containers"][0]["usage"]["memory"].is_string()),
        "{raw}"
    );

    // Up: 150m used of 50m requested is 300% against a 50% target.
    c.ok(
        &[
            "autoscale",
            "deploy/burn",
            "--cpu-percent=50",
            "--min=1",
            "--max=3",
        ],
        None,
    );
    eventually(Duration::from_secs(60), "the burner scaled to 3", || {
        c.replicas("burn") == 3
    })
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "kubectl get hpa shows the target",
        || {
            let row = c.ok(&["get", "hpa", "burn", "--no-headers"], None);
            let cells: Vec<&str> = row.split_whitespace().collect();
            // NAME REFERENCE TARGETS(cpu: N%/50%) MINPODS MAXPODS REPLICAS AGE
            cells.get(1) == Some(&"Deployment/burn")
                && cells.get(2) == Some(&"cpu:")
                && cells.get(3).is_some_and(|t| {
                    t.ends_with("%/50%")
                        && t.trim_end_matches("%/50%")
                            .parse::<i64>()
                            .is_ok_and(|p| p > 100)
                })
                && cells[4..6] == ["1", "3"]
        },
    )
    .unwrap();
    // Once the new pods' samples count, 300% on 3 pods asks for more than the maximum.
    eventually(
        Duration::from_secs(30),
        "conditions: ValidMetricFound, TooManyReplicas",
        || {
            let hpa = c.json(&["get", "hpa", "burn"]);
            let reason = |t: &str| {
                hpa["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == t)
                    .map(|c| c["reason"].clone())
                    .unwrap_or_default()
            };
            reason("ScalingActive") == "ValidMetricFound"
                && reason("ScalingLimited") == "TooManyReplicas"
                && reason("AbleToScale") == "ReadyForNewScale"
                && hpa["status"]["lastScaleTime"].is_string()
        },
    )
    .unwrap();
    let events = c.ok(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=HorizontalPodAutoscaler,reason=SuccessfulRescale",
        ],
        None,
    );
    assert!(events.contains("New size: "), "{events}");

    // Down: the same Deployment idling comes back to 1 once the window has passed.
    c.ok(
        &[
            "patch",
            "deploy/burn",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/template/spec/containers/0/command","value":["sleep","3600"]}]"#,
        ],
        None,
    );
    eventually(
        Duration::from_secs(90),
        "the idle Deployment scaled to 1",
        || c.replicas("burn") == 1,
    )
    .unwrap();
    let hpa = c.json(&["get", "hpa", "burn"]);
    assert_eq!(hpa["status"]["desiredReplicas"], 1, "{hpa}");
    c.ok(&["delete", "hpa", "burn"], None);
    c.ok(&["delete", "deploy", "burn", "idle"], None);
}

struct ProcessCluster {
    up: Option<CapstanUp>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        self.up = None;
        capstan_testkit::kill_process_containers(&self.dir.path().join("agent"));
    }
}

const WORKER: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: redis-auth}
stringData: {password: e2e-pass}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: worker}
spec:
  replicas: 0
  selector: {matchLabels: {app: worker}}
  template:
    metadata: {labels: {app: worker}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: worker
        image: IMAGE
        command: [sleep, "3600"]
---
apiVersion: capstan.dev/v1alpha1
kind: ScalingPolicy
metadata: {name: worker}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: worker}
  minReplicas: 0
  maxReplicas: 8
  pollingInterval: 1s
  cooldownPeriod: 5s
  triggers:
  - name: jobs
    type: queue
    queue:
      redis: {address: ADDRESS, list: jobs, passwordFrom: {secretKeyRef: {name: redis-auth, key: password}}}
      targetPerReplica: 10
"#;

/// Running pods of the Deployment `app`.
fn running(c: &Kubectl, app: &str) -> usize {
    let label = format!("app={app}");
    c.json(&["get", "pods", "-l", &label])["items"]
        .as_array()
        .map_or(0, |ps| {
            ps.iter()
                .filter(|p| {
                    p["status"]["phase"] == "Running"
                        && p["metadata"]["deletionTimestamp"].is_null()
                })
                .count()
        })
}

fn queue_scenario(c: &Kubectl, image: &str) {
    let redis = capstan_testkit::redis::RedisProcess::start(Some("e2e-pass")).unwrap();
    c.ok(
        &["apply", "-f", "-"],
        Some(
            &WORKER
                .replace("IMAGE", image)
                .replace("ADDRESS", &redis.address()),
        ),
    );
    eventually(
        Duration::from_secs(30),
        "the policy ready on an empty queue",
        || {
            let s = c.json(&["get", "sp", "worker"]);
            s["status"]["triggers"][0]["value"] == 0.0
                && s["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|x| x["type"] == "Ready" && x["status"] == "True")
                })
        },
    )
    .unwrap();
    assert_eq!(c.replicas("worker"), 0);

    let items: Vec<String> = (0..50).map(|i| format!("job-{i}")).collect();
    let mut push = vec!["RPUSH", "jobs"];
    push.extend(items.iter().map(String::as_str));
    assert_eq!(redis.command(&push).unwrap(), "50");
    let woke = eventually(Duration::from_secs(90), "5 worker pods running", || {
        c.replicas("worker") == 5 && running(c, "worker") == 5
    });
    if let Err(e) = woke {
        panic!(
            "{e}\n{}\n{}",
            c.ok(&["get", "deploy,rs,pods,sp", "-o", "wide"], None),
            c.ok(&["get", "events"], None)
        );
    }
    // NAME TARGET MIN MAX CURRENT DESIRED ACTIVE READY AGE (the status follows the scale).
    let mut table = String::new();
    let shown = eventually(Duration::from_secs(30), "kubectl get sp at 5", || {
        table = c.ok(&["get", "sp", "worker"], None);
        let row: Vec<&str> = table
            .lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        row.get(1..8) == Some(&["worker", "0", "8", "5", "5", "jobs", "True"][..])
    });
    assert!(shown.is_ok(), "{table}");

    redis.command(&["DEL", "jobs"]).unwrap();
    let drained = std::time::Instant::now();
    eventually(Duration::from_secs(90), "back to 0 pods", || {
        c.replicas("worker") == 0 && running(c, "worker") == 0
    })
    .unwrap();
    assert!(
        drained.elapsed() >= Duration::from_secs(4),
        "at zero {:?} after the drain, inside the 5 s cooldown",
        drained.elapsed()
    );
    let events = c.ok(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=worker,involvedObject.kind=ScalingPolicy",
        ],
        None,
    );
    assert!(
        events.contains("New size: 5; reason: a trigger became active")
            && events
                .contains("New size: 0; reason: no trigger active for the cooldown period (5s)"),
        "{events}"
    );
}

const CONSUMER: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: consumer}
spec:
  replicas: 1
  selector: {matchLabels: {app: consumer}}
  template:
    metadata: {labels: {app: consumer}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: c, image: busybox, command: [sleep, "3600"]}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: consumer}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: consumer}
  minReplicas: 1
  maxReplicas: 6
  metrics:
  - type: External
    external:
      metric: {name: queue_messages, selector: {matchLabels: {queue: jobs}}}
      target: {type: AverageValue, averageValue: "10"}
"#;

fn external_metric_scenario(c: &Kubectl) {
    use capstan_testkit::metrics_adapter::MetricsAdapter;
    // The adapter trusts what `capstan up` publishes, as a real one reads it.
    let ca = c.ok(
        &[
            "get",
            "configmap",
            "-n",
            "kube-system",
            "extension-apiserver-authentication",
            "-o",
            "jsonpath={.data.requestheader-client-ca-file}",
        ],
        None,
    );
    assert!(ca.contains("BEGIN CERTIFICATE"), "{ca}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let adapter = rt
        .block_on(MetricsAdapter::start(
            &["metrics-adapter.monitoring.svc"],
            &ca,
        ))
        .unwrap();
    adapter.set_external(
        "default",
        "queue_messages",
        &[(&[("queue", "jobs")], "40"), (&[("queue", "mail")], "900")],
    );
    let objects = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "metrics-adapter", "namespace": "monitoring"},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": adapter.addr.port()}]}},
        adapter.endpoint_slice(),
        adapter.api_service("external.metrics.k8s.io", "v1beta1", 100),
    ]});
    c.ok(&["apply", "-f", "-"], Some(&objects.to_string()));
    let mut shown = String::new();
    let available = eventually(Duration::from_secs(30), "the APIService Available", || {
        shown = c.ok(
            &["get", "apiservice", "v1beta1.external.metrics.k8s.io"],
            None,
        );
        let row: Vec<&str> = shown
            .lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        row.get(..3)
            == Some(
                &[
                    "v1beta1.external.metrics.k8s.io",
                    "monitoring/metrics-adapter",
                    "True",
                ][..],
            )
    });
    assert!(available.is_ok(), "{shown}");
    let raw: Value = serde_json::from_str(&c.ok(
        &[
            "get",
            "--raw",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_messages?labelSelector=queue%3Djobs",
        ],
        None,
    ))
    .unwrap();
    assert_eq!(raw["kind"], "ExternalMetricValueList", "{raw}");
    assert_eq!(raw["items"][0]["value"], "40", "{raw}");
    assert_eq!(raw["items"].as_array().map(Vec::len), Some(1), "{raw}");

    // 40 messages at 10 per replica: 4 real processes.
    c.ok(&["apply", "-f", "-"], Some(CONSUMER));
    let scaled = eventually(Duration::from_secs(60), "4 consumers running", || {
        c.replicas("consumer") == 4 && running(c, "consumer") == 4
    });
    if let Err(e) = scaled {
        panic!(
            "{e}\n{}\n{}",
            c.ok(&["get", "deploy,pods,hpa", "-o", "wide"], None),
            c.ok(&["describe", "hpa", "consumer"], None)
        );
    }
    let mut table = String::new();
    let settled = eventually(
        Duration::from_secs(30),
        "kubectl get hpa at 10/10 (avg)",
        || {
            table = c.ok(&["get", "hpa", "consumer"], None);
            table.contains("10/10 (avg)")
        },
    );
    assert!(settled.is_ok(), "{table}");
    let events = c.ok(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=consumer,reason=SuccessfulRescale",
        ],
        None,
    );
    assert!(
        events.contains("New size: 4; reason: external metric queue_messages("),
        "{events}"
    );
    assert!(
        adapter
            .seen()
            .iter()
            .any(|s| s.path.contains("queue_messages"))
    );
    drop(adapter);
    drop(rt);
}

/// `capstan up` on the process runtime, its agent sampling every second.
fn process_cluster(dir_prefix: &str) -> ProcessCluster {
    let dir = temp_dir(dir_prefix).unwrap();
    let data = dir.path().display().to_string();
    let mut args = vec![
        "--data-dir",
        &data,
        "--runtime",
        "process",
        "--node-name",
        NODE,
    ];
    args.extend(FLAGS);
    let up = CapstanUp::start(capstan_bin(), &args).unwrap();
    let cluster = ProcessCluster {
        up: Some(up),
        kubeconfig: dir.path().join("kubeconfig"),
        dir,
    };
    let c = Kubectl(&cluster.kubeconfig);
    eventually(Duration::from_secs(30), "node registered", || {
        c.try_ok(&["get", "node", NODE]).is_some()
    })
    .unwrap();
    cluster
}

#[test]
fn cpu_burners_scale_up_and_idle_ones_down_on_real_processes() {
    let cluster = process_cluster("capstan-hpa-");
    scenario(&Kubectl(&cluster.kubeconfig), NODE, "busybox");
}

#[test]
fn a_redis_queue_scales_real_processes_from_zero_and_back() {
    let cluster = process_cluster("capstan-sp-");
    queue_scenario(&Kubectl(&cluster.kubeconfig), "busybox");
}

#[test]
fn an_external_metric_scales_real_processes_through_an_adapter() {
    let cluster = process_cluster("capstan-ext-");
    external_metric_scenario(&Kubectl(&cluster.kubeconfig));
}

#[test]
fn cpu_burners_scale_up_and_idle_ones_down_on_containerd() {
    if !cri_cluster::runnable("autoscaling on containerd") {
        return;
    }
    let cluster = cri_cluster::Cluster::start_with(FLAGS);
    let c = Kubectl(&cluster.kubeconfig);
    scenario(&c, cri_cluster::NODE, "localhost/busybox:1");
}

#[test]
fn a_redis_queue_scales_containers_from_zero_and_back() {
    if !cri_cluster::runnable("scaling policies on containerd") {
        return;
    }
    let cluster = cri_cluster::Cluster::start_with(FLAGS);
    queue_scenario(&Kubectl(&cluster.kubeconfig), "localhost/busybox:1");
}
