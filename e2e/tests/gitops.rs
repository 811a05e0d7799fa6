//! GitOps through the real binary and unmodified kubectl: `capstan up` (TLS, every controller
//! under its own ServiceAccount) installs the GitSync CRD and runs the gitops controller; a
//! GitSync applied with kubectl syncs a real git repository (file://), `kubectl get gitsyncs`
//! shows repo, ref, commit, ready and message; a commit changing the image is rolled into the
//! Deployment, a `kubectl edit`-style change is reverted, and a broken commit leaves the last
//! good state with the file and line in the message. `capstan apply` and `capstan diff` share
//! the engine: a CRD and its custom resource in one file, a diff that names the changed field.

use std::time::Duration;

use capstan_testkit::git::GitRepo;
use capstan_testkit::{CapstanUp, capstan_bin, eventually, kubectl, kubectl_ok, temp_dir};

const WAIT: Duration = Duration::from_secs(60);

fn manifests(image: &str) -> String {
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{mode: fast}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - {{name: web, image: {image}}}
"
    )
}

fn jsonpath(kc: &std::path::Path, what: &[&str], path: &str) -> String {
    let arg = format!("jsonpath={path}");
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", &arg]);
    let out = kubectl(kc, &args, None);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `capstan up` without pods (no agent runtime) in a scratch data dir, stopped when dropped.
fn up(prefix: &str) -> (tempfile::TempDir, CapstanUp) {
    let dir = temp_dir(prefix).unwrap();
    let args = [
        std::ffi::OsStr::new("--data-dir"),
        dir.path().as_os_str(),
        std::ffi::OsStr::new("--runtime"),
        std::ffi::OsStr::new("none"),
    ];
    let up = CapstanUp::start(capstan_bin(), &args).unwrap();
    (dir, up)
}

#[test]
fn a_gitsync_keeps_a_cluster_equal_to_its_repository() {
    let (dir, _up) = up("capstan-gitops-e2e-");
    let kc = dir.path().join("kubeconfig");
    let repo = GitRepo::new().unwrap();
    repo.write("deploy/app.yaml", &manifests("nginx:1.0"))
        .unwrap();
    let first = repo.commit("first").unwrap();
    let sync = format!(
        "apiVersion: capstan.dev/v1alpha1
kind: GitSync
metadata: {{name: site}}
spec:
  repo: {}
  ref: {{branch: main}}
  path: deploy
  interval: 1s
  prune: true
",
        repo.url()
    );
    kubectl_ok(&kc, &["apply", "-f", "-"], Some(&sync));
    eventually(WAIT, "the first commit applied", || {
        jsonpath(&kc, &["gitsync", "site"], "{.status.lastAppliedCommit}") == first
    })
    .unwrap();
    let table = kubectl_ok(&kc, &["get", "gitsyncs"], None);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "REPO", "REF", "COMMIT", "READY", "MESSAGE", "AGE"],
        "{table}"
    );
    let row = lines.next().unwrap();
    assert!(
        row.contains("refs/heads/main")
            && row.contains(&first)
            && row.contains("True")
            && row.contains("Applied revision"),
        "{table}"
    );
    assert_eq!(jsonpath(&kc, &["cm", "settings"], "{.data.mode}"), "fast");
    assert_eq!(
        jsonpath(
            &kc,
            &["cm", "settings"],
            "{.metadata.labels.gitops\\.capstan\\.dev/name}"
        ),
        "site"
    );

    // A new image rolls in; a change by hand is reverted.
    repo.write("deploy/app.yaml", &manifests("nginx:1.1"))
        .unwrap();
    let second = repo.commit("1.1").unwrap();
    eventually(WAIT, "the new image", || {
        jsonpath(
            &kc,
            &["deploy", "web"],
            "{.spec.template.spec.containers[0].image}",
        ) == "nginx:1.1"
    })
    .unwrap();
    eventually(WAIT, "the second commit recorded", || {
        jsonpath(&kc, &["gitsync", "site"], "{.status.lastAppliedCommit}") == second
    })
    .unwrap();
    kubectl_ok(
        &kc,
        &["set", "image", "deployment/web", "web=by-hand:0"],
        None,
    );
    eventually(WAIT, "the manual change reverted", || {
        jsonpath(
            &kc,
            &["deploy", "web"],
            "{.spec.template.spec.containers[0].image}",
        ) == "nginx:1.1"
    })
    .unwrap();

    // A broken commit: nothing applied, the file and line said.
    repo.write(
        "deploy/app.yaml",
        &format!("{}    oops: [\n", manifests("nginx:9")),
    )
    .unwrap();
    repo.commit("broken").unwrap();
    eventually(WAIT, "BuildFailed", || {
        jsonpath(
            &kc,
            &["gitsync", "site"],
            "{.status.conditions[?(@.type==\"Ready\")].reason}",
        ) == "BuildFailed"
    })
    .unwrap();
    let message = jsonpath(
        &kc,
        &["gitsync", "site"],
        "{.status.conditions[?(@.type==\"Ready\")].message}",
    );
    assert!(message.contains("deploy/app.yaml:"), "{message}");
    assert_eq!(
        jsonpath(&kc, &["gitsync", "site"], "{.status.lastAppliedCommit}"),
        second
    );
    let events = kubectl_ok(
        &kc,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=BuildFailed",
            "-o",
            "name",
        ],
        None,
    );
    assert!(!events.trim().is_empty(), "no BuildFailed event");
}

#[test]
fn capstan_apply_orders_crds_first_and_diff_shows_what_would_change() {
    let (dir, _up) = up("capstan-apply-e2e-");
    let kc = dir.path().join("kubeconfig");
    let files = temp_dir("capstan-apply-files-").unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    // The custom resources first in the file: the engine applies the CRD, waits for it to be
    // Established, then the widgets.
    let both = format!(
        "{}\n---\n{}",
        std::fs::read_to_string(examples.join("widgets.yaml")).unwrap(),
        std::fs::read_to_string(examples.join("widgets-crd.yaml")).unwrap()
    );
    let file = files.path().join("all.yaml");
    std::fs::write(&file, &both).unwrap();
    let f = file.to_str().unwrap();
    let capstan = |args: &[&str]| {
        let out = std::process::Command::new(capstan_bin())
            .args(args)
            .env("KUBECONFIG", &kc)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = capstan(&["apply", "-f", f]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created\nwidget.example.com/small created\nwidget.example.com/large created\n"
    );
    // No difference: exit 0, nothing printed.
    let (code, out, err) = capstan(&["diff", "-f", f]);
    assert_eq!((code, out.as_str()), (Some(0), ""), "{err}");
    // One field changed: exit 1 (as kubectl diff), a unified diff naming it.
    std::fs::write(&file, both.replace("size: 2", "size: 7")).unwrap();
    let (code, out, err) = capstan(&["diff", "-f", f]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("-  size: 2") && out.contains("+  size: 7"),
        "{out}"
    );
    assert!(out.contains("widget.example.com/small (live)"), "{out}");
    assert!(!out.contains("widget.example.com/large"), "{out}");
    // Diff changed nothing.
    let size = kubectl_ok(
        &kc,
        &["get", "widget", "small", "-o", "jsonpath={.spec.size}"],
        None,
    );
    assert_eq!(size, "2");
    // A kind nobody serves: an error, exit 2.
    std::fs::write(
        &file,
        "apiVersion: example.com/v9\nkind: Gadget\nmetadata: {name: g}\n",
    )
    .unwrap();
    let (code, _, err) = capstan(&["diff", "-f", f]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no matches for kind \"Gadget\""), "{err}");

    // An inventory: what the files no longer hold is pruned, and only that.
    std::fs::write(&file, &both).unwrap();
    let (code, out, err) = capstan(&["apply", "-f", f, "--inventory", "widgets"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let without_large = both.replace(
        &std::fs::read_to_string(examples.join("widgets.yaml")).unwrap(),
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: small\nspec:\n  size: 2\n  ports:\n  - {name: http, port: 8080}\n",
    );
    std::fs::write(&file, &without_large).unwrap();
    let (code, out, err) = capstan(&["apply", "-f", f, "--prune", "--inventory", "widgets"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("widget.example.com/large pruned"), "{out}");
    assert!(!out.contains("small pruned"), "{out}");
    let left = kubectl_ok(&kc, &["get", "widgets", "-o", "name"], None);
    assert_eq!(left, "widget.example.com/small\n");
}
