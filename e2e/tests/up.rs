//! Drives the real `capstan` binary: `up` on each store backend, its endpoints and shutdown,
//! start-up errors, and `capstan store` reading what was written.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::Bytes;
use capstan_storage::Storage;
use capstan_storage::embedded::{EmbeddedOptions, EmbeddedStore};
use capstan_testkit::{
    CapstanUp, EtcdProcess, capstan_bin, eventually, http_get, http_request, signal, temp_dir,
};

fn capstan() -> Command {
    Command::new(capstan_bin())
}

fn up(args: &[&str]) -> CapstanUp {
    CapstanUp::start(capstan_bin(), args).unwrap()
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn store_cmd(data_dir: &Path, args: &[&str]) -> std::process::Output {
    capstan()
        .arg("store")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn up_on_the_embedded_store_serves_health_and_metrics_then_stops_on_sigterm() {
    let dir = temp_dir("capstan-up-").unwrap();
    let data = dir.path().to_str().unwrap();
    // No controllers: their leader-election Lease would add writes to the revision checked below.
    let mut up = up(&["--data-dir", data, "--controllers", "none"]);
    assert_eq!(
        http_get(&up.addr, "/readyz").unwrap(),
        (200, "ok".to_string())
    );
    assert_eq!(http_get(&up.addr, "/livez").unwrap().0, 200);
    let (code, metrics) = http_get(&up.addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"capstan_storage_request_duration_seconds_count{backend="embedded",operation="current_revision"}"#),
        "{metrics}"
    );
    signal(up.child.id(), "TERM");
    assert!(wait_exit(&mut up.child, Duration::from_secs(10)).success());

    // The store it made is there, and readable by `capstan store`.
    let out = store_cmd(dir.path(), &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What up writes at start: the four system namespaces, an APIService per served
    // group/version, the default RBAC roles and bindings, the kubernetes and kube-dns
    // Services with their ClusterIP claims, the kubernetes Endpoints and EndpointSlice, the
    // default `local-path` StorageClass, the front proxy's ConfigMap and its reader Role — and
    // nothing else (its API server lease went with the clean stop).
    let apiservices = store_cmd(dir.path(), &["list", "apiservices/"]);
    assert!(
        String::from_utf8_lossy(&apiservices.stdout).contains("apiservices/v1.apps\n"),
        "{}",
        String::from_utf8_lossy(&apiservices.stdout)
    );
    let all = store_cmd(dir.path(), &["list", ""]);
    let others: Vec<String> = String::from_utf8_lossy(&all.stdout)
        .lines()
        .filter(|k| !k.starts_with("apiservices/") && !k.starts_with("namespaces/"))
        .filter(|k| !k.starts_with("clusterroles/") && !k.starts_with("clusterrolebindings/"))
        .map(str::to_string)
        .collect();
    let rbac = String::from_utf8_lossy(&all.stdout);
    for default in [
        "clusterroles/cluster-admin",
        "clusterroles/view",
        "clusterroles/system:node",
        "clusterrolebindings/cluster-admin",
        "clusterrolebindings/system:kube-controller-manager",
        "clusterrolebindings/system:capstan:ingress",
    ] {
        assert!(
            rbac.lines().any(|l| l == default),
            "{default} missing: {rbac}"
        );
    }
    assert_eq!(
        others,
        [
            // What extension API servers trust (the aggregation layer's front proxy).
            "configmaps/kube-system/extension-apiserver-authentication",
            // Capstan's own CRDs, installed at start.
            "customresourcedefinitions/gitsyncs.capstan.dev",
            "customresourcedefinitions/scalingpolicies.capstan.dev",
            "endpoints/default/kubernetes",
            "endpointslices/default/kubernetes",
            // The default class, served by the in-process ingress proxy.
            "ingressclasses/capstan",
            "priorityclasses/system-cluster-critical",
            "priorityclasses/system-node-critical",
            // Who may read that ConfigMap.
            "roles/kube-system/extension-apiserver-authentication-reader",
            "serviceips/10.96.0.1",
            "serviceips/10.96.0.10",
            "services/default/kubernetes",
            "services/kube-system/kube-dns",
            "storageclasses/local-path",
        ]
    );
    let keys = String::from_utf8_lossy(&all.stdout).lines().count();
    let status = String::from_utf8_lossy(&out.stdout);
    let revision: usize = status
        .trim()
        .strip_prefix("backend=embedded revision=")
        .and_then(|r| r.strip_suffix(" compacted=1"))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{status}"));
    assert!(revision > keys, "{status}");
    let out = store_cmd(dir.path(), &["list", "namespaces/"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "namespaces/default\nnamespaces/kube-node-lease\nnamespaces/kube-public\nnamespaces/kube-system\n"
    );
}

#[test]
fn a_second_up_on_the_same_data_dir_fails_and_names_it() {
    let dir = temp_dir("capstan-up-locked-").unwrap();
    let data = dir.path().to_str().unwrap();
    let _first = up(&["--data-dir", data]);
    let out = capstan()
        .args([
            "up",
            "--runtime",
            "none",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use") && err.contains(data), "{err}");
}

#[test]
fn up_refuses_an_unknown_controller_before_starting() {
    let dir = temp_dir("capstan-up-").unwrap();
    let out = capstan()
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            "none",
            "--data-dir",
        ])
        .arg(dir.path())
        .args(["--controllers", "deployment,nosuch"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"unknown controller "nosuch""#),
        "{stderr}"
    );
}

#[test]
fn up_refuses_contradictory_store_flags() {
    let out = capstan()
        .args(["up", "--store", "etcd", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--etcd-endpoints"));
    let out = capstan()
        .args([
            "up",
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--store etcd"));
}

#[test]
fn up_refuses_a_containerd_socket_where_none_answers() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing.sock");
    let out = capstan()
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            "cri",
            "--cri-socket",
        ])
        .arg(&sock)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no containerd answers there"), "{err}");
    assert!(!dir.path().join("kubeconfig").exists(), "nothing started");
}

#[test]
fn up_on_an_unreachable_etcd_fails_fast_and_says_where() {
    let port = capstan_testkit::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let out = capstan()
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "etcd",
            "--etcd-endpoints",
            &url,
            "--etcd-startup-timeout",
            "0s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&url));
}

/// A cluster whose etcd is not answering yet (members still starting, no leader): `capstan
/// up` waits for it with back-off, saying so, and is ready once etcd is.
#[test]
fn up_waits_for_an_etcd_that_starts_after_it() {
    let mut etcd = EtcdProcess::start().unwrap();
    etcd.stop().unwrap();
    let endpoint = etcd.endpoint.clone();
    let dir = temp_dir("capstan-up-etcd-late-").unwrap();
    let log = dir.path().join(capstan_testkit::UP_LOG);
    // etcd comes back once capstan has said it is waiting for it.
    let starter = std::thread::spawn(move || {
        eventually(Duration::from_secs(20), "capstan waiting for etcd", || {
            capstan_testkit::read_lossy(&log).contains("waiting for etcd")
        })
        .unwrap();
        etcd.start_again().unwrap();
        etcd
    });
    let up = up(&[
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoint,
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let _etcd = starter.join().unwrap();
    let (code, body) = http_get(&up.addr, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
}

/// etcd going away makes /readyz fail with the reason; etcd coming back makes it pass again,
/// with no restart of capstan.
#[test]
fn up_on_etcd_turns_unready_while_etcd_is_down_and_recovers() {
    let mut etcd = EtcdProcess::start().unwrap();
    let dir = temp_dir("capstan-up-etcd-").unwrap();
    let up = up(&[
        "--store",
        "etcd",
        "--etcd-endpoints",
        &etcd.endpoint,
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(http_get(&up.addr, "/readyz").unwrap().0, 200);
    etcd.stop().unwrap();
    eventually(Duration::from_secs(10), "readyz 503", || {
        matches!(http_get(&up.addr, "/readyz"), Ok((503, body)) if body.contains("store failed"))
    })
    .unwrap();
    // API requests get a 503 Status while the store is away, and write nothing.
    let (code, body) = http_get(&up.addr, "/api/v1/namespaces/default/configmaps/x").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"reason\":\"ServiceUnavailable\""), "{body}");
    let cm = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"during"}}"#;
    let path = "/api/v1/namespaces/default/configmaps";
    let ct = [("Content-Type", "application/json")];
    let (code, body) = http_request(&up.addr, "POST", path, &ct, cm).unwrap();
    assert_eq!(code, 503, "{body}");
    etcd.start_again().unwrap();
    eventually(Duration::from_secs(20), "readyz 200 again", || {
        matches!(http_get(&up.addr, "/readyz"), Ok((200, _)))
    })
    .unwrap();
    let (code, body) = http_get(&up.addr, &format!("{path}/during")).unwrap();
    assert_eq!(code, 404, "{body}");
    let (code, body) = http_request(&up.addr, "POST", path, &ct, cm).unwrap();
    assert_eq!(code, 201, "{body}");
}

#[test]
fn store_subcommands_read_lists_at_revisions_and_compact() {
    let dir = temp_dir("capstan-storecmd-").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let first = rt.block_on(async {
        let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("store")))
            .await
            .unwrap();
        let a = store
            .create("pods/default/a", Bytes::from_static(b"{\"a\":1}"))
            .await
            .unwrap();
        store
            .update(
                "pods/default/a",
                Bytes::from_static(b"{\"a\":2}"),
                a.mod_revision,
            )
            .await
            .unwrap();
        store
            .create("pods/default/b", Bytes::from_static(b"{\"b\":1}"))
            .await
            .unwrap();
        store.close().await;
        a.mod_revision
    });
    let text = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(
        text(store_cmd(dir.path(), &["list", "pods/", "--values"])),
        "pods/default/a {\"a\":2}\npods/default/b {\"b\":1}\n"
    );
    let rev = first.to_string();
    assert_eq!(
        text(store_cmd(
            dir.path(),
            &["list", "pods/", "--values", "--revision", &rev]
        )),
        "pods/default/a {\"a\":1}\n"
    );
    assert!(text(store_cmd(dir.path(), &["get", "pods/default/b"])).contains("{\"b\":1}"));
    let missing = store_cmd(dir.path(), &["get", "pods/default/zzz"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    assert_eq!(
        text(store_cmd(dir.path(), &["compact", "4"])),
        "compacted to 4\n"
    );
    let old = store_cmd(dir.path(), &["list", "pods/", "--revision", &rev]);
    assert!(!old.status.success());
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("compacted"),
        "{old:?}"
    );
}

/// `capstan store defrag` gives the space a compaction freed back: the file shrinks and the
/// data stays.
#[test]
fn store_defrag_shrinks_the_compacted_embedded_store() {
    let dir = temp_dir("capstan-storedefrag-").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (last, path) = rt.block_on(async {
        let mut opts = EmbeddedOptions::new(dir.path().join("store"));
        opts.compaction = None;
        let store = EmbeddedStore::open(opts).await.unwrap();
        let value = |i: usize| Bytes::from(vec![b'a' + (i % 26) as u8; 256 * 1024]);
        let mut kv = store
            .create("configmaps/default/big", value(0))
            .await
            .unwrap();
        // About 40 MB: under the size at which the store reclaims on its own when compacted.
        for i in 1..60 {
            kv = store
                .update("configmaps/default/big", value(i), kv.mod_revision)
                .await
                .unwrap();
        }
        // A live value after the burst: the space compaction frees is inside the file, not at
        // its end (redb trims a free tail on its own).
        store
            .create("configmaps/default/tail", value(0))
            .await
            .unwrap();
        let path = store.path().to_path_buf();
        store.close().await;
        (kv.mod_revision, path)
    });
    let run = |args: &[&str]| {
        let out = store_cmd(dir.path(), args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["compact", &last.to_string()]);
    let before = std::fs::metadata(&path).unwrap().len();

    let said = run(&["defrag"]);

    let after = std::fs::metadata(&path).unwrap().len();
    assert_eq!(
        said.trim(),
        format!("defragmented {}: {before} → {after} bytes", path.display())
    );
    assert!(after < before / 4, "{before} → {after}");
    let got = run(&["get", "configmaps/default/big"]);
    assert!(got.contains(&format!("mod_revision={last}")), "{got}");
}

/// `capstan up` serves within its connection limits: connections that never send their headers
/// are closed after --header-read-timeout-seconds, one over --max-connections is answered with
/// a 503 Status, and /readyz answers again once the silent ones are gone.
#[test]
fn up_closes_silent_connections_and_refuses_those_over_the_cap() {
    use std::io::Read;
    let dir = temp_dir("capstan-up-limits-").unwrap();
    let up = up(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--controllers",
        "none",
        // No in-process client holding connections of the three: the ingress proxy's watches
        // would.
        "--disable-ingress",
        "--header-read-timeout-seconds",
        "1",
        "--max-connections",
        "3",
    ]);
    let opened = Instant::now();
    let mut silent: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(&up.addr).unwrap())
        .collect();
    // The server may not have taken the last one off its backlog yet: poll for the refusal.
    let mut refused = String::new();
    eventually(
        Duration::from_secs(5),
        "a 503 over the cap",
        || match http_get(&up.addr, "/readyz") {
            Ok((503, body)) => {
                refused = body;
                true
            }
            _ => false,
        },
    )
    .unwrap();
    assert!(
        refused.contains(r#""reason":"ServiceUnavailable""#),
        "{refused}"
    );
    assert!(refused.contains("limit of 3 open connections"), "{refused}");
    for c in &mut silent {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(c.read(&mut buf).unwrap(), 0, "closed without an answer");
    }
    assert!(
        opened.elapsed() < Duration::from_secs(4),
        "{:?}",
        opened.elapsed()
    );
    eventually(Duration::from_secs(5), "readyz 200 again", || {
        matches!(http_get(&up.addr, "/readyz"), Ok((200, _)))
    })
    .unwrap();
}

/// Creates a Deployment of two replicas and returns how long until its two pods exist.
fn pods_created_after(addr: &str, name: &str) -> Duration {
    let body = format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"{name}"}},
        "spec":{{"replicas":2,"selector":{{"matchLabels":{{"app":"{name}"}}}},
        "template":{{"metadata":{{"labels":{{"app":"{name}"}}}},
        "spec":{{"containers":[{{"name":"c","image":"localhost/busybox:1"}}]}}}}}}}}"#
    );
    let started = Instant::now();
    let (code, text) = http_request(
        addr,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 201, "{text}");
    let path = format!("/api/v1/namespaces/default/pods?labelSelector=app%3D{name}");
    eventually(Duration::from_secs(20), "the pods are created", || {
        http_get(addr, &path)
            .map(|(_, body)| body.matches(r#""kind":"Pod""#).count() >= 2)
            .unwrap_or(false)
    })
    .unwrap();
    started.elapsed()
}

#[test]
fn up_restarted_on_the_same_data_dir_acts_at_once_after_its_ready_line() {
    let dir = temp_dir("capstan-up-restart-").unwrap();
    let data = dir.path().to_str().unwrap();
    let mut first = up(&["--data-dir", data]);
    // Led at the ready line already: the controllers act at once.
    assert!(pods_created_after(&first.addr, "web-1") < Duration::from_secs(2));
    assert!(first.stop(Duration::from_secs(15)), "a clean stop");
    // A clean stop released the Lease (no holder, 1 s), as client-go's ReleaseOnCancel does.
    let lease = store_cmd(
        dir.path(),
        &["get", "leases/kube-system/capstan-controller-manager"],
    );
    let lease = String::from_utf8_lossy(&lease.stdout);
    assert!(
        lease.contains(r#""leaseDurationSeconds":1,"#) && !lease.contains("holderIdentity"),
        "{lease}"
    );

    // After a clean stop the Lease was released; after a crash it is still held, by the same
    // identity (same machine, same data dir), which the next start takes back at once.
    let mut second = up(&["--data-dir", data]);
    let took = pods_created_after(&second.addr, "web-2");
    assert!(took < Duration::from_secs(2), "after SIGTERM: {took:?}");
    signal(second.child.id(), "KILL");
    let _ = second.child.wait();

    let third = up(&["--data-dir", data]);
    let took = pods_created_after(&third.addr, "web-3");
    assert!(took < Duration::from_secs(2), "after SIGKILL: {took:?}");
    let (_, lease) = http_get(
        &third.addr,
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/capstan-controller-manager",
    )
    .unwrap();
    assert!(lease.contains(r#""leaseTransitions":"#), "{lease}");
}

#[test]
fn store_reads_a_running_cluster_through_snapshots_and_refuses_to_change_it() {
    let dir = temp_dir("capstan-up-store-").unwrap();
    let data = dir.path().to_str().unwrap();
    let up = up(&["--data-dir", data, "--controllers", "none"]);
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            stderr.contains("in use by a running server") && stderr.contains("snapshot"),
            "{stderr}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = ok(&store_cmd(dir.path(), &["status"]));
    assert!(status.starts_with("backend=embedded revision="), "{status}");
    let list = ok(&store_cmd(dir.path(), &["list", "namespaces/"]));
    assert!(list.contains("namespaces/default\n"), "{list}");
    let get = ok(&store_cmd(dir.path(), &["get", "namespaces/kube-system"]));
    assert!(get.contains(r#""name":"kube-system""#), "{get}");

    // watch follows the running store.
    let mut watch = capstan()
        .args(["store", "--data-dir", data, "watch", "namespaces/"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = capstan_testkit::line_channel(watch.stdout.take().unwrap());
    let notes = capstan_testkit::line_channel(watch.stderr.take().unwrap());
    // Its first snapshot is taken once it says so.
    loop {
        let note = notes.recv_timeout(Duration::from_secs(10)).expect("a note");
        if note.contains("following it through read-only snapshots") {
            break;
        }
    }
    let (code, body) = http_request(
        &up.addr,
        "POST",
        "/api/v1/namespaces",
        &[("Content-Type", "application/json")],
        br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"watched"}}"#,
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    let line = lines.recv_timeout(Duration::from_secs(10));
    let _ = watch.kill();
    let _ = watch.wait();
    let line = line.expect("a watch event within 10s");
    assert!(line.contains("PUT namespaces/watched (created)"), "{line}");

    // Changing the store waits for the server to stop.
    let out = store_cmd(dir.path(), &["compact", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stop the server first"), "{stderr}");
}
