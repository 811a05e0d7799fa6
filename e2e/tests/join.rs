//! Agents joining with bootstrap tokens (issue 20) against a real `capstan up`: `capstan
//! token create`, `capstan agent --server --token --ca-file` asking for its client and
//! serving certificates through CertificateSigningRequests that the controller manager
//! approves and signs; the joined node's credentials are a node's (node restriction applies);
//! `kubectl logs` reaches it over verified TLS; a restart reuses the certificates; a bad
//! token joins nothing; other requests wait for `kubectl certificate approve`, which needs
//! `approve` on the signer.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use capstan_testkit::{CapstanUp, capstan_bin, eventually, free_port, kubectl, temp_dir};

const WAIT: Duration = Duration::from_secs(60);

fn run(kc: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let out = kubectl(kc, args, stdin);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ok(kc: &Path, args: &[&str]) -> String {
    let (good, out) = run(kc, args, None);
    assert!(good, "kubectl {args:?}: {out}");
    out
}

fn capstan(kc: &Path, args: &[&str]) -> String {
    let out = Command::new(capstan_bin())
        .arg("--kubeconfig")
        .arg(kc)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "capstan {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(server: &str, token: &str, ca: &Path, root: &Path, port: u16) -> Command {
    let mut c = Command::new(capstan_bin());
    c.args(["agent", "--server", server, "--token", token, "--ca-file"])
        .arg(ca)
        .args([
            "--runtime",
            "process",
            "--node-name",
            "joined",
            "--root-dir",
        ])
        .arg(root)
        .args(["--node-ip", "127.0.0.1", "--port", &port.to_string()])
        .args(["--proxy", "off", "--dns", "off"])
        .args(["--eviction-hard", capstan_testkit::TEST_EVICTION_HARD]);
    c
}

fn ready(kc: &Path) -> bool {
    run(
        kc,
        &[
            "get",
            "node",
            "joined",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        None,
    )
    .1 == "True"
}

#[test]
fn an_agent_joins_with_a_token_and_keeps_its_certificates() {
    let dir = temp_dir("capstan-join-").unwrap();
    let data = dir.path().join("data");
    let up = CapstanUp::start(
        capstan_bin(),
        &["--data-dir".to_string(), data.display().to_string()],
    )
    .unwrap();
    let kc = data.join("kubeconfig");
    let ca = data.join("pki/ca.crt");
    let server = format!("https://{}", up.addr);
    let root = dir.path().join("agent");
    let _reap = capstan_testkit::ReapContainers(root.clone());
    let port = free_port().unwrap();

    // A token that matches nothing joins nothing.
    let out = agent(&server, "abcdef.0123456789abcdef", &ca, &root, port)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unauthorized") || err.contains("401"), "{err}");

    let token = capstan(
        &kc,
        &["token", "create", "--ttl", "1h", "--description", "e2e"],
    );
    let token = token.trim().to_string();
    let id = token.split('.').next().unwrap().to_string();
    assert!(capstan(&kc, &["token", "list"]).contains(&format!("{id} ")));

    let mut a = Agent(
        agent(&server, &token, &ca, &root, port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually(WAIT, "the joined node is Ready", || ready(&kc)).unwrap();

    // Two requests, both approved by the controller manager and issued: the client
    // certificate asked with the token, the serving one asked by the node.
    let csrs: serde_json::Value =
        serde_json::from_str(&ok(&kc, &["get", "csr", "-o", "json"])).unwrap();
    let items = csrs["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{csrs}");
    let by = |signer: &str| {
        items
            .iter()
            .find(|c| c["spec"]["signerName"] == signer)
            .unwrap()
            .clone()
    };
    let client = by("kubernetes.io/kube-apiserver-client-kubelet");
    assert_eq!(client["spec"]["username"], format!("system:bootstrap:{id}"));
    assert_eq!(
        by("kubernetes.io/kubelet-serving")["spec"]["username"],
        "system:node:joined"
    );
    for c in items {
        assert_eq!(c["status"]["conditions"][0]["type"], "Approved", "{c}");
        assert!(
            c["status"]["certificate"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
    }
    let table = ok(&kc, &["get", "csr"]);
    assert!(
        table.lines().next().unwrap().contains("SIGNERNAME"),
        "{table}"
    );
    assert!(table.contains("Approved,Issued"), "{table}");

    // Its own kubeconfig is the node's: who it is, and what node restriction leaves it.
    let node_kc = root.join("kubeconfig");
    assert_eq!(
        ok(
            &node_kc,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username} {.status.userInfo.groups}"
            ]
        ),
        "system:node:joined [\"system:nodes\",\"system:authenticated\"]"
    );
    let (good, out) = run(&node_kc, &["get", "secrets", "-n", "kube-system"], None);
    assert!(!good && out.contains("forbidden"), "{out}");

    // kubectl logs reaches a pod on it (the API server checks the agent's certificate).
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"hello"},"spec":{"nodeName":"joined",
        "terminationGracePeriodSeconds":1,"containers":[{"name":"c","image":"busybox",
        "command":["sh","-c","echo hello-from-joined; exec sleep 3600"]}]}}"#;
    let (good, out) = run(&kc, &["apply", "-f", "-"], Some(pod));
    assert!(good, "{out}");
    eventually(WAIT, "kubectl logs through the joined agent", || {
        run(&kc, &["logs", "hello"], None)
            .1
            .contains("hello-from-joined")
    })
    .unwrap();
    ok(
        &kc,
        &["delete", "pod", "hello", "--wait=true", "--timeout=60s"],
    );

    // Restarted after the token is revoked: it comes back on the certificates it keeps.
    drop(a);
    capstan(&kc, &["token", "delete", &token]);
    a = Agent(
        agent(&server, &token, &ca, &root, port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lease_before = ok(
        &kc,
        &[
            "get",
            "lease",
            "joined",
            "-n",
            "kube-node-lease",
            "-o",
            "jsonpath={.spec.renewTime}",
        ],
    );
    eventually(WAIT, "the rejoined agent renews its Lease", || {
        run(
            &kc,
            &[
                "get",
                "lease",
                "joined",
                "-n",
                "kube-node-lease",
                "-o",
                "jsonpath={.spec.renewTime}",
            ],
            None,
        )
        .1 != lease_before
    })
    .unwrap();
    assert!(ready(&kc));
    assert_eq!(
        ok(&kc, &["get", "csr", "-o", "name"]).lines().count(),
        2,
        "no new requests"
    );
    drop(a);
}

#[test]
fn other_requests_wait_for_an_approver_allowed_to_approve_their_signer() {
    let dir = temp_dir("capstan-csr-").unwrap();
    let data = dir.path().join("data");
    let _up = CapstanUp::start(
        capstan_bin(),
        &["--data-dir".to_string(), data.display().to_string()],
    )
    .unwrap();
    let kc = data.join("kubeconfig");
    let (pem, key) = capstan_pki::csr::make("jane", Some("devs"), &[], &[]).unwrap();
    let csr = serde_json::json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "jane"}, "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(&pem),
            "signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"],
            "expirationSeconds": 3600,
            "username": "someone-else"}});
    let (good, out) = run(&kc, &["create", "-f", "-"], Some(&csr.to_string()));
    assert!(good, "{out}");
    // The requester is who sent it, whatever the body said.
    assert_eq!(
        ok(
            &kc,
            &["get", "csr", "jane", "-o", "jsonpath={.spec.username}"]
        ),
        "system:admin"
    );

    // May update approvals but not approve for this signer: refused, in Kubernetes' words.
    ok(
        &kc,
        &[
            "create",
            "clusterrole",
            "approvals",
            "--verb=update",
            "--resource=certificatesigningrequests/approval",
        ],
    );
    ok(
        &kc,
        &[
            "create",
            "clusterrolebinding",
            "approvals",
            "--clusterrole=approvals",
            "--user=jane",
        ],
    );
    ok(
        &kc,
        &[
            "create",
            "clusterrole",
            "csr-reader",
            "--verb=get,list",
            "--resource=certificatesigningrequests",
        ],
    );
    ok(
        &kc,
        &[
            "create",
            "clusterrolebinding",
            "csr-reader",
            "--clusterrole=csr-reader",
            "--user=jane",
        ],
    );
    let (good, out) = run(
        &kc,
        &["certificate", "approve", "jane", "--as", "jane"],
        None,
    );
    assert!(!good && out.contains("user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\""), "{out}");
    // Not the controller manager's to approve: still pending after all that.
    assert!(ok(&kc, &["get", "csr", "jane"]).contains("Pending"));

    // The administrator approves: signed for the hour asked, usable as jane in devs.
    ok(&kc, &["certificate", "approve", "jane"]);
    eventually(WAIT, "jane's certificate is issued", || {
        !run(
            &kc,
            &["get", "csr", "jane", "-o", "jsonpath={.status.certificate}"],
            None,
        )
        .1
        .is_empty()
    })
    .unwrap();
    let cert = ok(
        &kc,
        &["get", "csr", "jane", "-o", "jsonpath={.status.certificate}"],
    );
    let cert = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(cert.trim())
            .unwrap(),
    )
    .unwrap();
    let der = capstan_pki::tls::certs(&cert).unwrap().remove(0);
    let left = capstan_pki::der::not_after(&der)
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left <= Duration::from_secs(3600) && left > Duration::from_secs(3000),
        "{left:?}"
    );
    let jane_kc: PathBuf = dir.path().join("jane.kubeconfig");
    let server = std::fs::read_to_string(&kc).unwrap();
    let server = server
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_string();
    let ca_pem = std::fs::read_to_string(data.join("pki/ca.crt")).unwrap();
    std::fs::write(
        &jane_kc,
        capstan_pki::kubeconfig::kubeconfig(
            &server,
            Some(&ca_pem),
            capstan_pki::kubeconfig::Credentials::Cert(&capstan_pki::Issued {
                cert_pem: cert,
                key_pem: key,
            }),
        ),
    )
    .unwrap();
    assert_eq!(
        ok(
            &jane_kc,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username} {.status.userInfo.groups}"
            ]
        ),
        "jane [\"devs\",\"system:authenticated\"]"
    );
    // Denying afterwards is refused by the API server (not only by kubectl): a decision stays.
    let mut obj: serde_json::Value =
        serde_json::from_str(&ok(&kc, &["get", "csr", "jane", "-o", "json"])).unwrap();
    obj["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "Denied", "status": "True", "reason": "Changed", "message": "mind"}));
    let (good, out) = run(
        &kc,
        &[
            "replace",
            "--raw",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/jane/approval",
            "-f",
            "-",
        ],
        Some(&obj.to_string()),
    );
    assert!(!good && out.contains("mutually exclusive"), "{out}");
}
