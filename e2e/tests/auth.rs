//! Security as a user meets it (issue 20), with unmodified kubectl against `capstan up`: HTTPS
//! by default with a kubeconfig holding the CA and the administrator's certificate (the same
//! CA reused on restart); `kubectl auth whoami`, `auth can-i` (and `--list`, `--as`); a token
//! user from `--token-auth-file` refused what RBAC does not grant and allowed once bound; bad
//! tokens and anonymous requests refused; plain HTTP only with `--insecure-http`, only on
//! loopback.

use std::path::Path;
use std::time::Duration;

use capstan_testkit::pki::pki;
use capstan_testkit::{
    CapstanUp, capstan_bin, eventually, kubectl, kubectl_ok, temp_dir, tls_exchange,
};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn kubectl_meets_https_tokens_and_rbac() {
    let dir = temp_dir("capstan-auth-").unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "t0k-jane,jane,1001,\"devs\"\n").unwrap();
    let data = dir.path().join("data");
    let args = [
        "--data-dir".to_string(),
        data.display().to_string(),
        "--token-auth-file".into(),
        tokens.display().to_string(),
    ];
    let up = CapstanUp::start(capstan_bin(), &args).unwrap();
    let kc = data.join("kubeconfig");
    let kubeconfig = std::fs::read_to_string(&kc).unwrap();
    assert!(kubeconfig.contains("server: https://"), "{kubeconfig}");
    assert!(kubeconfig.contains("certificate-authority-data"));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kc).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the kubeconfig holds a key: {mode:o}");

    let whoami = kubectl_ok(
        &kc,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
        None,
    );
    assert_eq!(
        whoami,
        "system:admin [\"system:masters\",\"system:authenticated\"]"
    );
    assert_eq!(
        kubectl_ok(&kc, &["auth", "can-i", "create", "pods"], None).trim(),
        "yes"
    );
    let out = kubectl(
        &kc,
        &["auth", "can-i", "create", "pods", "--as", "jane"],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no",
        "{}",
        text(&out)
    );
    assert_eq!(out.status.code(), Some(1));

    // jane by token: refused, then bound to edit in her namespace, allowed there only.
    let jane = dir.path().join("jane.kubeconfig");
    capstan_testkit::kubeconfig_without_certificate(&kc, &jane);
    let as_jane = |args: &[&str]| {
        let mut all = vec!["--token", "t0k-jane"];
        all.extend_from_slice(args);
        kubectl(&jane, &all, None)
    };
    let out = as_jane(&["get", "pods", "-n", "default"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
        "{}",
        text(&out)
    );
    kubectl_ok(&kc, &["create", "namespace", "dev"], None);
    kubectl_ok(
        &kc,
        &[
            "create",
            "rolebinding",
            "jane-edit",
            "--clusterrole=edit",
            "--user=jane",
            "-n",
            "dev",
        ],
        None,
    );
    eventually(
        Duration::from_secs(10),
        "jane may create configmaps in dev",
        || {
            as_jane(&["auth", "can-i", "create", "configmaps", "-n", "dev"])
                .status
                .success()
        },
    )
    .unwrap();
    let out = as_jane(&[
        "create",
        "configmap",
        "c1",
        "--from-literal=k=v",
        "-n",
        "dev",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = text(&as_jane(&["auth", "can-i", "--list", "-n", "dev"]));
    assert!(listed.contains("configmaps"), "{listed}");
    // edit does not write roles: no way up.
    let out = as_jane(&[
        "create",
        "role",
        "r",
        "--verb=*",
        "--resource=pods",
        "-n",
        "dev",
    ]);
    assert!(text(&out).contains("Forbidden"), "{}", text(&out));
    let out = as_jane(&["get", "secrets", "-A"]);
    assert!(
        text(&out).contains("at the cluster scope"),
        "{}",
        text(&out)
    );
    let whoami = text(&as_jane(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}/{.status.userInfo.uid}",
    ]));
    assert_eq!(whoami, "jane/1001");

    // A wrong token is a 401, whatever the verb.
    for verb in [
        &["get", "pods"][..],
        &["delete", "pod", "x"],
        &["create", "ns", "x"],
    ] {
        let mut args = vec!["--token", "wrong"];
        args.extend_from_slice(verb);
        let out = kubectl(&jane, &args, None);
        assert!(
            text(&out).contains("Unauthorized"),
            "{verb:?}: {}",
            text(&out)
        );
    }

    // Anonymous (no certificate, no token): health only.
    let anon = Some(pki().anonymous_tls());
    let (code, _, body) = tls_exchange(&up.addr, anon.clone(), "GET", "/readyz", &[], b"").unwrap();
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, _, body) = tls_exchange(&up.addr, anon, "GET", "/api/v1/secrets", &[], b"").unwrap();
    assert_eq!(code, 403, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("User \"system:anonymous\" cannot list resource \"secrets\""),
        "{body}"
    );

    // A restart keeps the CA (a client that trusted it still does) and jane's access.
    let ca_line = |k: &str| {
        k.lines()
            .find(|l| l.contains("certificate-authority-data"))
            .unwrap()
            .to_string()
    };
    let ca = std::fs::read(data.join("pki/ca.crt")).unwrap();
    let serving = std::fs::read(data.join("pki/apiserver.crt")).unwrap();
    drop(up);
    let _up = CapstanUp::start(capstan_bin(), &args).unwrap();
    assert_eq!(std::fs::read(data.join("pki/ca.crt")).unwrap(), ca);
    assert_eq!(
        std::fs::read(data.join("pki/apiserver.crt")).unwrap(),
        serving,
        "the serving certificate is reused when its names are unchanged"
    );
    let again = std::fs::read_to_string(&kc).unwrap();
    assert_eq!(ca_line(&again), ca_line(&kubeconfig));
    capstan_testkit::kubeconfig_without_certificate(&kc, &jane); // the new port
    let out = kubectl(
        &jane,
        &["--token", "t0k-jane", "get", "configmap", "c1", "-n", "dev"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn plain_http_only_when_asked_and_only_on_loopback() {
    let dir = temp_dir("capstan-insecure-").unwrap();
    let data = dir.path().display().to_string();
    let out = std::process::Command::new(capstan_bin())
        .args([
            "up",
            "--data-dir",
            &data,
            "--listen",
            "0.0.0.0:0",
            "--insecure-http",
            "--runtime",
            "none",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--insecure-http serves credentials and data in the clear"),
        "{}",
        text(&out)
    );

    let up = CapstanUp::start(capstan_bin(), &["--data-dir", &data, "--insecure-http"]).unwrap();
    let kc = dir.path().join("kubeconfig");
    let kubeconfig = std::fs::read_to_string(&kc).unwrap();
    assert!(
        kubeconfig.contains("server: http://127.0.0.1:"),
        "{kubeconfig}"
    );
    // kubectl sends no credentials over plain HTTP: it is system:unsecured, an administrator.
    let whoami = kubectl_ok(
        &kc,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
        None,
    );
    assert_eq!(whoami, "system:unsecured");
    kubectl_ok(&kc, &["get", "ns", "kube-system"], None);
    // Clients that send the kubeconfig's token are the administrator it names.
    let token = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token, made for this run");
    let auth = format!("Bearer {token}");
    let (code, _, body) = capstan_testkit::http_exchange(
        &up.addr,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    assert!(body.contains("\"username\":\"system:admin\""), "{body}");
}

fn encryption_config(path: &Path, keys: &[(&str, &str)]) {
    let keys: String = keys
        .iter()
        .map(|(n, s)| format!("      - name: {n}\n        secret: {s}\n"))
        .collect();
    std::fs::write(
        path,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n{keys}  - identity: {{}}\n"
        ),
    )
    .unwrap();
}

const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes
const KEY2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="; // 32 bytes

#[test]
fn secrets_are_ciphertext_in_both_stores_and_keys_rotate() {
    let dir = temp_dir("capstan-encrypt-").unwrap();
    let enc = dir.path().join("encryption.yaml");
    encryption_config(&enc, &[("key1", KEY1)]);
    let etcd = capstan_testkit::EtcdProcess::start().unwrap();
    for store in ["embedded", "etcd"] {
        let data = dir.path().join(store);
        let mut args = vec![
            "--data-dir".to_string(),
            data.display().to_string(),
            "--encryption-provider-config".into(),
            enc.display().to_string(),
        ];
        if store == "etcd" {
            args.extend([
                "--store".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                etcd.endpoint.clone(),
            ]);
        }
        // What the store holds for the Secret, read past the API server.
        let raw = || -> Vec<u8> {
            let out = if store == "etcd" {
                std::process::Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args([
                        "--endpoints",
                        &etcd.endpoint,
                        "get",
                        "--print-value-only",
                        "/registry/secrets/default/s1",
                    ])
                    .output()
                    .expect("etcdctl (apt-get install etcd-client)")
            } else {
                std::process::Command::new(capstan_bin())
                    .args([
                        "store",
                        "--data-dir",
                        &data.display().to_string(),
                        "get",
                        "secrets/default/s1",
                    ])
                    .output()
                    .unwrap()
            };
            assert!(out.status.success(), "{}", text(&out));
            out.stdout
        };
        let up = CapstanUp::start(capstan_bin(), &args).unwrap();
        let kc = data.join("kubeconfig");
        kubectl_ok(
            &kc,
            &[
                "create",
                "secret",
                "generic",
                "s1",
                "--from-literal=password=hunter2",
            ],
            None,
        );
        let stored = raw();
        assert!(
            stored.windows(22).any(|w| w == b"k8s:enc:aesgcm:v1:key1"),
            "{store}: {}",
            String::from_utf8_lossy(&stored)
        );
        assert!(
            !stored.windows(7).any(|w| w == b"hunter2")
                && !stored.windows(12).any(|w| w == b"aHVudGVyMg==")
        );
        let read = kubectl_ok(
            &kc,
            &["get", "secret", "s1", "-o", "jsonpath={.data.password}"],
            None,
        );
        assert_eq!(read, "aHVudGVyMg==", "the API decrypts");
        // ConfigMaps are not listed: stored as they are.
        kubectl_ok(
            &kc,
            &["create", "configmap", "c1", "--from-literal=k=visible"],
            None,
        );
        drop(up);

        // Rotation: key2 first, restart (re-encrypts), then key1 can go.
        let enc2 = dir.path().join(format!("encryption-{store}.yaml"));
        encryption_config(&enc2, &[("key2", KEY2), ("key1", KEY1)]);
        let mut rotated = args.clone();
        rotated[3] = enc2.display().to_string();
        let up = CapstanUp::start(capstan_bin(), &rotated).unwrap();
        assert!(
            raw().windows(22).any(|w| w == b"k8s:enc:aesgcm:v1:key2"),
            "{store}: re-encrypted under key2"
        );
        drop(up);
        encryption_config(&enc2, &[("key2", KEY2)]);
        let _up = CapstanUp::start(capstan_bin(), &rotated).unwrap();
        let read = kubectl_ok(
            &kc,
            &["get", "secret", "s1", "-o", "jsonpath={.data.password}"],
            None,
        );
        assert_eq!(read, "aHVudGVyMg==");
    }
}
