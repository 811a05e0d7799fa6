//! `capstan apply | get | delete` against `capstan up`: kubectl's everyday verbs without kubectl.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use capstan_testkit::{CapstanUp, capstan_bin, temp_dir};

const MANIFEST: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: settings, labels: {app: web}}
data: {mode: fast}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: localhost/busybox:1}]}
";

fn capstan(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    capstan_testkit::client_command(capstan_bin(), kubeconfig, args, stdin)
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn apply_get_and_delete_without_kubectl() {
    let dir = temp_dir("capstan-client-").unwrap();
    let _up = CapstanUp::start(
        capstan_bin(),
        &[std::ffi::OsStr::new("--data-dir"), dir.path().as_os_str()],
    )
    .unwrap();
    let kc = dir.path().join("kubeconfig");
    let manifests = temp_dir("capstan-client-files-").unwrap();
    let file = manifests.path().join("app.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let f = file.to_str().unwrap();

    assert_eq!(
        ok(capstan(&kc, &["apply", "-f", f], None)),
        "configmap/settings created\ndeployment.apps/web created\n"
    );
    // Again, and from a directory: idempotent, and nothing is written (the dry run says so).
    assert_eq!(
        ok(capstan(
            &kc,
            &["apply", "-f", manifests.path().to_str().unwrap()],
            None
        )),
        "configmap/settings unchanged\ndeployment.apps/web unchanged\n"
    );

    let table = ok(capstan(&kc, &["get", "deploy"], None));
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert!(lines.next().unwrap().starts_with("web "), "{table}");
    let json: serde_json::Value = serde_json::from_str(&ok(capstan(
        &kc,
        &["get", "configmaps", "settings", "-o", "json"],
        None,
    )))
    .unwrap();
    assert_eq!(json["data"]["mode"], "fast");
    assert_eq!(json["metadata"]["managedFields"][0]["manager"], "capstan");
    assert_eq!(
        ok(capstan(
            &kc,
            &["get", "cm", "-l", "app=web", "-o", "name"],
            None
        )),
        "configmap/settings\n"
    );
    assert_eq!(
        ok(capstan(
            &kc,
            &["get", "deployments.apps", "-o", "name"],
            None
        )),
        "deployment.apps/web\n"
    );

    // Several types at once, and a category.
    assert_eq!(
        ok(capstan(&kc, &["get", "cm,deploy", "-o", "name"], None)),
        // kube-root-ca.crt: the cluster CA every namespace gets.
        "configmap/kube-root-ca.crt\nconfigmap/settings\ndeployment.apps/web\n"
    );
    let all = ok(capstan(&kc, &["get", "all"], None));
    assert!(all.contains("deployment.apps/web"), "{all}");
    assert!(
        !all.contains("configmap/"),
        "configmaps are not in `all`: {all}"
    );
    // One type lacking the name: the others are still shown, then the command fails.
    let out = capstan(&kc, &["get", "cm,deploy", "settings", "-o", "name"], None);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configmap/settings\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("deployment.apps"));
    let list: serde_json::Value =
        serde_json::from_str(&ok(capstan(&kc, &["get", "cm,deploy", "-o", "json"], None))).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][2]["kind"], "Deployment");

    // A changed manifest from stdin; a conflict with another manager's field.
    ok(capstan(
        &kc,
        &["apply", "-f", "-"],
        Some(&MANIFEST.replace("replicas: 2", "replicas: 3")),
    ));
    let out = capstan(
        &kc,
        &["apply", "--field-manager", "other", "-f", "-"],
        Some(&MANIFEST.replace("replicas: 2", "replicas: 9")),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("conflict with \"capstan\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_str(&ok(capstan(
        &kc,
        &["get", "deploy", "web", "-o", "json"],
        None,
    )))
    .unwrap();
    assert_eq!(d["spec"]["replicas"], 3);

    let err = capstan(&kc, &["get", "nosuchthing"], None);
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr)
            .contains("doesn't have a resource type \"nosuchthing\"")
    );

    assert_eq!(
        ok(capstan(&kc, &["delete", "-f", f], None)),
        "configmap \"settings\" deleted\ndeployment.apps \"web\" deleted\n"
    );
    // What is left: the namespace's CA, which the controllers keep.
    for (kind, left) in [("cm", "configmap/kube-root-ca.crt\n"), ("deploy", "")] {
        assert_eq!(
            ok(capstan(&kc, &["get", kind, "-o", "name"], None)),
            left,
            "{kind}"
        );
    }
}

/// `capstan apply/get/delete` find custom resources through discovery like built-ins.
#[test]
fn custom_resources_without_kubectl() {
    let dir = temp_dir("capstan-client-crd-").unwrap();
    let _up = CapstanUp::start(
        capstan_bin(),
        &[std::ffi::OsStr::new("--data-dir"), dir.path().as_os_str()],
    )
    .unwrap();
    let kc = dir.path().join("kubeconfig");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let crd = examples.join("widgets-crd.yaml");
    assert_eq!(
        ok(capstan(&kc, &["apply", "-f", crd.to_str().unwrap()], None)),
        "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created\n"
    );
    capstan_testkit::eventually(Duration::from_secs(5), "widgets served", || {
        capstan(&kc, &["get", "widgets"], None).status.success()
    })
    .unwrap();
    let crs = examples.join("widgets.yaml");
    assert_eq!(
        ok(capstan(&kc, &["apply", "-f", crs.to_str().unwrap()], None)),
        "widget.example.com/small created\nwidget.example.com/large created\n"
    );
    let table = ok(capstan(&kc, &["get", "wd"], None));
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "SIZE", "COLOR", "REPLICAS", "AGE"],
        "{table}"
    );
    assert_eq!(
        ok(capstan(
            &kc,
            &["get", "widgets.example.com", "-o", "name"],
            None
        )),
        "widget.example.com/large\nwidget.example.com/small\n"
    );
    assert_eq!(
        ok(capstan(&kc, &["delete", "-f", crs.to_str().unwrap()], None)),
        "widget.example.com \"small\" deleted\nwidget.example.com \"large\" deleted\n"
    );
}
