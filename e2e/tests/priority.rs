//! PriorityClasses through unmodified kubectl on `capstan up` (kubectl's generators send
//! protobuf): `kubectl create priorityclass`, `kubectl get pc` as kubectl prints it, and a pod
//! created by `kubectl run` taking its priority from the class.

use std::time::Duration;

use capstan_testkit::{CapstanUp, capstan_bin, eventually, kubectl, kubectl_ok, temp_dir};

#[test]
fn priority_classes_through_kubectl() {
    let dir = temp_dir("capstan-priority-").unwrap();
    let data = dir.path().display().to_string();
    let _up = CapstanUp::start(capstan_bin(), &["--data-dir", &data]).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    eventually(Duration::from_secs(30), "the API server", || {
        kubectl(&kubeconfig, &["get", "pc"], None).status.success()
    })
    .unwrap();
    let ok = |args: &[&str]| kubectl_ok(&kubeconfig, args, None);

    // The system classes are there from the start.
    let listed = ok(&[
        "get",
        "pc",
        "--no-headers",
        "-o",
        "custom-columns=N:.metadata.name,V:.value",
    ]);
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.contains(&vec!["system-node-critical", "2000001000"]),
        "{listed}"
    );
    assert!(
        rows.contains(&vec!["system-cluster-critical", "2000000000"]),
        "{listed}"
    );

    ok(&[
        "create",
        "priorityclass",
        "high",
        "--value=1000",
        "--description=important",
        "--preemption-policy=Never",
    ]);
    let row = ok(&["get", "pc", "high", "--no-headers"]);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..3], ["high", "1000", "false"], "{row}");
    assert_eq!(cells.last(), Some(&"Never"), "{row}");

    // A second global default is refused, in Kubernetes' words.
    ok(&[
        "create",
        "priorityclass",
        "normal",
        "--value=10",
        "--global-default",
    ]);
    let out = kubectl(
        &kubeconfig,
        &[
            "create",
            "priorityclass",
            "other",
            "--value=20",
            "--global-default",
        ],
        None,
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(
            "PriorityClass normal is already marked as default. Only one default can exist"
        ),
        "{said}"
    );

    // Pods: from their class, or from the global default.
    ok(&[
        "run",
        "urgent",
        "--image=busybox",
        "--overrides={\"spec\":{\"priorityClassName\":\"high\"}}",
    ]);
    ok(&["run", "plain", "--image=busybox"]);
    let priority = |pod: &str| {
        ok(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.spec.priorityClassName}/{.spec.priority}/{.spec.preemptionPolicy}",
        ])
    };
    assert_eq!(priority("urgent"), "high/1000/Never");
    assert_eq!(priority("plain"), "normal/10/PreemptLowerPriority");
    let out = kubectl(
        &kubeconfig,
        &[
            "run",
            "lost",
            "--image=busybox",
            "--overrides={\"spec\":{\"priorityClassName\":\"nope\"}}",
        ],
        None,
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("pods \"lost\" is forbidden: no PriorityClass with name nope was found"),
        "{said}"
    );
}
