//! ResourceQuotas and LimitRanges through unmodified kubectl on `capstan up` (kubectl's
//! generators send protobuf): `kubectl create quota`, `kubectl get quota` and `kubectl get
//! limits` as kubectl prints them, `kubectl describe quota`, a fourth `kubectl run` refused
//! with Kubernetes' message, and a LimitRange's defaults on a pod.

use std::time::Duration;

use capstan_testkit::{CapstanUp, capstan_bin, eventually, kubectl, kubectl_ok, temp_dir};

const LIMITS: &str = r#"
apiVersion: v1
kind: LimitRange
metadata: {name: defaults, namespace: team}
spec:
  limits:
  - type: Container
    default: {memory: 128Mi}
    defaultRequest: {memory: 64Mi}
"#;

#[test]
fn quotas_and_limit_ranges_through_kubectl() {
    let dir = temp_dir("capstan-quota-").unwrap();
    let data = dir.path().display().to_string();
    let _up = CapstanUp::start(capstan_bin(), &["--data-dir", &data]).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let ok = |args: &[&str]| kubectl_ok(&kubeconfig, args, None);
    ok(&["create", "namespace", "team"]);
    ok(&[
        "create",
        "quota",
        "budget",
        "-n",
        "team",
        "--hard=pods=3,requests.memory=1Gi,limits.memory=2Gi",
    ]);
    // The controller computes the status; the columns show used/hard.
    eventually(Duration::from_secs(30), "the quota's status", || {
        let row = ok(&["get", "quota", "budget", "-n", "team", "--no-headers"]);
        row.contains("pods: 0/3")
    })
    .unwrap();
    let table = ok(&["get", "quota", "-n", "team"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "AGE", "REQUEST", "LIMIT"], "{table}");
    assert!(
        table.contains("pods: 0/3, requests.memory: 0/1Gi"),
        "{table}"
    );
    assert!(table.contains("limits.memory: 0/2Gi"), "{table}");

    kubectl_ok(&kubeconfig, &["apply", "-f", "-"], Some(LIMITS));
    let limits = ok(&["get", "limits", "-n", "team"]);
    assert!(
        limits.lines().next().unwrap().contains("CREATED AT"),
        "{limits}"
    );
    assert!(limits.contains("defaults"), "{limits}");

    for i in 0..3 {
        ok(&["run", &format!("p{i}"), "-n", "team", "--image=busybox"]);
    }
    let resources = ok(&[
        "get",
        "pod",
        "p0",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.containers[0].resources}",
    ]);
    assert_eq!(
        resources,
        r#"{"limits":{"memory":"128Mi"},"requests":{"memory":"64Mi"}}"#
    );
    let out = kubectl(
        &kubeconfig,
        &["run", "p3", "-n", "team", "--image=busybox"],
        None,
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("Error from server (Forbidden): pods \"p3\" is forbidden: exceeded quota: budget, requested: pods=1, used: pods=3, limited: pods=3"),
        "{said}"
    );
    let described = ok(&["describe", "quota", "budget", "-n", "team"]);
    let line = described
        .lines()
        .find(|l| l.starts_with("requests.memory"))
        .unwrap_or_default();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells, ["requests.memory", "192Mi", "1Gi"], "{described}");

    // A pod deleted gives its share back.
    ok(&["delete", "pod", "p0", "-n", "team", "--wait=false"]);
    eventually(Duration::from_secs(30), "the quota has room again", || {
        kubectl(
            &kubeconfig,
            &["run", "p3", "-n", "team", "--image=busybox"],
            None,
        )
        .status
        .success()
    })
    .unwrap();
}
