//! Day-two kubectl against `capstan up --runtime process`: the agent's kubelet Events read back
//! by `kubectl events --for`, `kubectl get events --field-selector` and `kubectl describe pod`,
//! and `-o wide` columns filled from what the agent reports (`kubectl get nodes -o wide`).

use std::path::PathBuf;
use std::time::Duration;

use capstan_testkit::{CapstanUp, eventually, kubectl, temp_dir};

const NODE: &str = "events-e2e";
const WAIT: Duration = Duration::from_secs(60);

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: crashy}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: app, image: busybox, command: [sh, -c, "exit 1"]}
---
apiVersion: v1
kind: Pod
metadata: {name: unready}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "exec sleep 3600"]
    readinessProbe: {exec: {command: ["false"]}, periodSeconds: 1}
"#;

/// Dropped in this order: capstan up, then the containers it left (they outlive the agent by
/// design), then the directory.
struct Cluster {
    _up: CapstanUp,
    _reap: capstan_testkit::ReapContainers,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = kubectl(&self.kubeconfig, args, None);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "kubectl {args:?}: {err}");
        out
    }
}

#[test]
fn kubectl_reads_the_agents_events_and_wide_columns() {
    let dir = temp_dir("capstan-events-").unwrap();
    let up = CapstanUp::process_runtime(dir.path(), NODE).unwrap();
    let c = Cluster {
        _up: up,
        _reap: capstan_testkit::ReapContainers(dir.path().join("agent")),
        kubeconfig: dir.path().join("kubeconfig"),
        _dir: dir,
    };
    // Registered, and its status posted (the Node is created first, its status follows).
    eventually(Duration::from_secs(30), "the node is Ready", || {
        let (_, out, _) = c.run(&[
            "get",
            "node",
            NODE,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        out == "True"
    })
    .unwrap();

    // Nodes: every wide column filled from the agent's addresses and nodeInfo.
    let wide = c.ok(&["get", "nodes", "-o", "wide"]);
    let mut lines = wide.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "ROLES",
            "AGE",
            "VERSION",
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME"
        ],
        "{wide}"
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with(NODE), "{wide}");
    assert!(!row.contains("<unknown>"), "node info filled: {wide}");
    let internal_ip = c.ok(&[
        "get",
        "node",
        NODE,
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    assert!(row.contains(&internal_ip), "{wide}");

    let out = kubectl(&c.kubeconfig, &["apply", "-f", "-"], Some(PODS));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A crash loop: BackOff from the kubelet, found by field selectors as kubectl sends them.
    eventually(WAIT, "crashy backs off", || {
        c.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=crashy,reason=BackOff",
        ])
        .contains("Back-off restarting failed container app in pod crashy_default(")
    })
    .unwrap();
    let events = c.ok(&["events", "--for", "pod/crashy"]);
    for want in ["Started container app", "Created container: app", "BackOff"] {
        assert!(events.contains(want), "{want}: {events}");
    }
    assert!(
        !events.contains("unready"),
        "only crashy's events: {events}"
    );
    let wide = c.ok(&[
        "get",
        "events",
        "-o",
        "wide",
        "--field-selector",
        "involvedObject.name=crashy,reason=Started",
    ]);
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "LAST",
            "SEEN",
            "TYPE",
            "REASON",
            "OBJECT",
            "SUBOBJECT",
            "SOURCE",
            "MESSAGE",
            "FIRST",
            "SEEN",
            "COUNT",
            "NAME"
        ],
        "{wide}"
    );
    assert!(
        wide.contains("spec.containers{app}") && wide.contains(&format!("kubelet, {NODE}")),
        "{wide}"
    );
    // Restarts bump one Started event's count rather than adding events.
    eventually(WAIT, "Started counted", || {
        let count = c.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=crashy,reason=Started",
            "-o",
            "jsonpath={range .items[*]}{.count}{\"\\n\"}{end}",
        ]);
        let counts: Vec<&str> = count.lines().collect();
        counts.len() == 1 && counts[0].parse::<i32>().unwrap_or(0) > 1
    })
    .unwrap();

    // A failing readiness probe: Unhealthy, shown by describe.
    eventually(WAIT, "unready is Unhealthy", || {
        c.ok(&["describe", "pod", "unready"])
            .contains("Readiness probe failed:")
    })
    .unwrap();
    let describe = c.ok(&["describe", "pod", "unready"]);
    for want in ["Pulled", "Created", "Started", "Unhealthy", "kubelet"] {
        assert!(describe.contains(want), "{want}: {describe}");
    }

    // Pods wide.
    let wide = c.ok(&["get", "pod", "unready", "-o", "wide"]);
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES"
        ],
        "{wide}"
    );
    assert!(wide.contains(NODE), "{wide}");

    // An unsupported field selector is Kubernetes' 400.
    let (ok, _, err) = c.run(&["get", "events", "--field-selector", "message=x"]);
    assert!(!ok);
    assert!(err.contains("field label not supported: message"), "{err}");
}
