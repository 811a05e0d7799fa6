//! ServiceAccount tokens end to end (issue 20) on `capstan up --runtime process` with
//! unmodified kubectl: the ServiceAccount controller makes `default` (again when deleted) and
//! publishes `kube-root-ca.crt` in every namespace; the admission plugin mounts a projected
//! token into each pod and refuses pods of a missing account; the agent writes the pod's
//! token (TokenRequest, bound to the pod), the CA and the namespace; that token reads what its
//! account may and nothing else, and stops working when its pod is deleted; `kubectl create
//! token` issues tokens with Kubernetes' limits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use capstan_testkit::{CapstanUp, eventually, kubectl, temp_dir};

const NODE: &str = "sa-e2e";
const WAIT: Duration = Duration::from_secs(60);

struct Cluster {
    _up: CapstanUp,
    _reap: capstan_testkit::ReapContainers,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    /// The kubeconfig without the administrator's certificate (for `--token`).
    bare: PathBuf,
}

impl Cluster {
    /// `capstan up` on the process runtime, with a kubeconfig for `--token` users too.
    fn start(prefix: &str) -> Cluster {
        let dir = temp_dir(prefix).unwrap();
        let up = CapstanUp::process_runtime(dir.path(), NODE).unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let bare = dir.path().join("bare.kubeconfig");
        capstan_testkit::kubeconfig_without_certificate(&kubeconfig, &bare);
        Cluster {
            _up: up,
            _reap: capstan_testkit::ReapContainers(dir.path().join("agent")),
            kubeconfig,
            bare,
            dir,
        }
    }

    fn run(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let out = kubectl(kubeconfig, args, stdin);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = kubectl(&self.kubeconfig, args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl with a bearer token and no certificate.
    fn with_token(&self, token: &str, args: &[&str]) -> (bool, String) {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        self.run(&self.bare, &all, None)
    }
}

const READER_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: reader, namespace: team}
spec:
  serviceAccountName: reader
  terminationGracePeriodSeconds: 1
  containers:
  - {name: app, image: busybox, command: [sh, -c, "exec sleep 3600"]}
"#;

#[test]
fn a_pods_token_reads_only_what_its_account_may_until_the_pod_goes() {
    let c = Cluster::start("capstan-sa-");
    let ca = std::fs::read_to_string(c.dir.path().join("pki/ca.crt")).unwrap();

    // A new namespace gets `default` and the cluster CA.
    c.ok(&["create", "namespace", "team"]);
    eventually(WAIT, "default and kube-root-ca.crt in team", || {
        let (ok, _) = c.run(
            &c.kubeconfig,
            &["get", "serviceaccount", "default", "-n", "team"],
            None,
        );
        let (_, data) = c.run(
            &c.kubeconfig,
            &[
                "get",
                "configmap",
                "kube-root-ca.crt",
                "-n",
                "team",
                "-o",
                "jsonpath={.data.ca\\.crt}",
            ],
            None,
        );
        ok && data == ca
    })
    .unwrap();
    // Deleted, it comes back (another UID).
    let uid = c.ok(&[
        "get",
        "sa",
        "default",
        "-n",
        "team",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    c.ok(&["delete", "sa", "default", "-n", "team"]);
    eventually(WAIT, "default is made again", || {
        let (ok, out) = c.run(
            &c.kubeconfig,
            &[
                "get",
                "sa",
                "default",
                "-n",
                "team",
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            None,
        );
        ok && !out.is_empty() && out != uid
    })
    .unwrap();

    // A pod of an account that does not exist is refused, as Kubernetes words it.
    let (ok, out) = c.run(&c.kubeconfig, &["apply", "-f", "-"], Some(READER_POD));
    assert!(!ok);
    assert!(
        out.contains(
            "error looking up service account team/reader: serviceaccount \"reader\" not found"
        ),
        "{out}"
    );

    // reader may read ConfigMaps in team, nothing more.
    c.ok(&["create", "serviceaccount", "reader", "-n", "team"]);
    c.ok(&[
        "create",
        "role",
        "cm-reader",
        "--verb=get,list",
        "--resource=configmaps",
        "-n",
        "team",
    ]);
    c.ok(&[
        "create",
        "rolebinding",
        "reader-cm",
        "--role=cm-reader",
        "--serviceaccount=team:reader",
        "-n",
        "team",
    ]);
    let (ok, out) = c.run(&c.kubeconfig, &["apply", "-f", "-"], Some(READER_POD));
    assert!(ok, "{out}");
    let volume = c.ok(&[
        "get",
        "pod",
        "reader",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.volumes[0].name}",
    ]);
    assert!(volume.starts_with("kube-api-access-"), "{volume}");
    let mount = c.ok(&[
        "get",
        "pod",
        "reader",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.containers[0].volumeMounts[0].mountPath}",
    ]);
    assert_eq!(mount, "/var/run/secrets/kubernetes.io/serviceaccount");
    eventually(WAIT, "the reader pod runs", || {
        c.run(
            &c.kubeconfig,
            &[
                "get",
                "pod",
                "reader",
                "-n",
                "team",
                "-o",
                "jsonpath={.status.phase}",
            ],
            None,
        )
        .1 == "Running"
    })
    .unwrap();

    // The agent wrote the token, the CA and the namespace into the pod's volume.
    let pod_uid = c.ok(&[
        "get",
        "pod",
        "reader",
        "-n",
        "team",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let files = c
        .dir
        .path()
        .join("agent/pods")
        .join(&pod_uid)
        .join("volumes/kubernetes.io~projected")
        .join(&volume);
    assert_eq!(std::fs::read_to_string(files.join("ca.crt")).unwrap(), ca);
    assert_eq!(
        std::fs::read_to_string(files.join("namespace")).unwrap(),
        "team"
    );
    let token = std::fs::read_to_string(files.join("token")).unwrap();

    let (ok, out) = c.with_token(&token, &["get", "configmaps", "-n", "team"]);
    assert!(ok && out.contains("kube-root-ca.crt"), "{out}");
    let (ok, out) = c.with_token(&token, &["get", "secrets", "-n", "team"]);
    assert!(!ok);
    assert!(
        out.contains("User \"system:serviceaccount:team:reader\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team\""),
        "{out}"
    );
    let (ok, out) = c.with_token(&token, &["get", "configmaps", "-n", "default"]);
    assert!(!ok && out.contains("forbidden"), "{out}");
    let (ok, out) = c.with_token(
        &token,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.extra.authentication\\.kubernetes\\.io/pod-name}"],
    );
    assert!(ok, "{out}");
    assert_eq!(out, "system:serviceaccount:team:reader [\"reader\"]");

    // kubectl create token: Kubernetes' shortest is 10 minutes.
    let (ok, out) = c.run(
        &c.kubeconfig,
        &[
            "create",
            "token",
            "reader",
            "-n",
            "team",
            "--duration",
            "5m",
        ],
        None,
    );
    assert!(
        !ok && out.contains("may not specify a duration less than 10 minutes"),
        "{out}"
    );
    let issued = c.ok(&[
        "create",
        "token",
        "reader",
        "-n",
        "team",
        "--duration",
        "10m",
    ]);
    let issued = issued.trim();
    let (ok, out) = c.with_token(issued, &["get", "configmaps", "-n", "team"]);
    assert!(ok, "{out}");
    // Bound to a pod that does not exist: refused.
    let (ok, out) = c.run(
        &c.kubeconfig,
        &[
            "create",
            "token",
            "reader",
            "-n",
            "team",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "nosuch",
        ],
        None,
    );
    assert!(!ok && out.contains("not found"), "{out}");

    // The pod goes: its token stops working; the unbound one does not.
    c.ok(&[
        "delete",
        "pod",
        "reader",
        "-n",
        "team",
        "--wait=true",
        "--timeout=60s",
    ]);
    eventually(WAIT, "the deleted pod's token is refused", || {
        let (ok, out) = c.with_token(&token, &["get", "configmaps", "-n", "team"]);
        !ok && (out.contains("Unauthorized") || out.contains("must be logged in"))
    })
    .unwrap();
    let (ok, out) = c.with_token(issued, &["get", "configmaps", "-n", "team"]);
    assert!(ok, "{out}");
    // The account goes: every token of it is refused.
    c.ok(&["delete", "sa", "reader", "-n", "team"]);
    eventually(WAIT, "the deleted account's token is refused", || {
        !c.with_token(issued, &["get", "configmaps", "-n", "team"]).0
    })
    .unwrap();

    // automountServiceAccountToken: false means no volume.
    let quiet = READER_POD
        .replace("name: reader, namespace", "name: quiet, namespace")
        .replace(
            "serviceAccountName: reader",
            "automountServiceAccountToken: false",
        );
    let (ok, out) = c.run(&c.kubeconfig, &["apply", "-f", "-"], Some(&quiet));
    assert!(ok, "{out}");
    assert_eq!(
        c.ok(&[
            "get",
            "pod",
            "quiet",
            "-n",
            "team",
            "-o",
            "jsonpath={.spec.volumes}"
        ]),
        ""
    );
    assert_eq!(
        c.ok(&[
            "get",
            "pod",
            "quiet",
            "-n",
            "team",
            "-o",
            "jsonpath={.spec.serviceAccountName}"
        ]),
        "default"
    );
    c.ok(&[
        "delete",
        "pod",
        "quiet",
        "-n",
        "team",
        "--wait=true",
        "--timeout=60s",
    ]);
}

/// The node's agent port (InternalIP:kubeletEndpoint) from its Node.
fn agent_addr(c: &Cluster) -> String {
    let ip = c.ok(&[
        "get",
        "node",
        NODE,
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    let port = c.ok(&[
        "get",
        "node",
        NODE,
        "-o",
        "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
    ]);
    format!("{ip}:{port}")
}

#[test]
fn the_agent_port_takes_the_api_servers_certificate_and_authorized_tokens_only() {
    use capstan_testkit::{pki::pki, tls_exchange};
    let c = Cluster::start("capstan-agent-port-");
    eventually(WAIT, "the node reports its agent port", || {
        c.run(
            &c.kubeconfig,
            &[
                "get",
                "node",
                NODE,
                "-o",
                "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
            ],
            None,
        )
        .1
        .parse::<u16>()
        .is_ok_and(|p| p > 0)
    })
    .unwrap();
    let addr = agent_addr(&c);
    let ca = pki().ca.cert_pem().to_string();
    let get = |tls: std::sync::Arc<rustls::ClientConfig>, path: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        tls_exchange(&addr, Some(tls), "GET", path, &headers, b"")
    };

    // Plain HTTP gets nothing useful: the port speaks TLS only.
    assert!(capstan_testkit::http_get(&addr, "/metrics").map_or(true, |(code, _)| code != 200));
    // The agent's certificate is the cluster CA's (verified here), /healthz is open.
    let anonymous = pki().anonymous_tls();
    assert_eq!(get(anonymous.clone(), "/healthz", None).unwrap().0, 200);
    // No credentials: 401; a token the API server does not know: 401.
    assert_eq!(get(anonymous.clone(), "/metrics", None).unwrap().0, 401);
    assert_eq!(
        get(anonymous.clone(), "/metrics", Some("nope")).unwrap().0,
        401
    );
    // A certificate from another CA: the handshake is refused.
    let other = capstan_pki::Ca::generate().unwrap();
    let stranger = other.client("kube-apiserver-kubelet-client", &[]).unwrap();
    let tls = std::sync::Arc::new(capstan_pki::tls::client_config(&ca, Some(&stranger)).unwrap());
    assert!(
        get(tls, "/metrics", None).is_err(),
        "a foreign certificate got in"
    );
    // The cluster CA's certificate of a user RBAC gives nothing: 403, in kubelet's words.
    let mallory = pki().user("mallory", &[]);
    let tls = std::sync::Arc::new(capstan_pki::tls::client_config(&ca, Some(&mallory)).unwrap());
    let (code, _, body) = get(tls, "/containerLogs/default/x/y", None).unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("Forbidden (user=mallory, verb=get, resource=nodes, subresource=proxy)"),
        "{body}"
    );
    // The API server's own client certificate may (kubectl logs and exec go through it).
    let pki_dir = c.dir.path().join("pki");
    let apiserver = capstan_pki::Issued::read(&pki_dir, "apiserver-kubelet-client")
        .unwrap()
        .unwrap();
    let tls = std::sync::Arc::new(capstan_pki::tls::client_config(&ca, Some(&apiserver)).unwrap());
    let (code, _, body) = get(tls, "/metrics", None).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("capstan_agent_running_pods"), "{body}");

    // ServiceAccount tokens: a scraper RBAC lets read nodes/metrics gets /metrics (and still
    // not logs); another account gets 403. (Distinct accounts: the agent remembers a denial
    // for 30 s, as kubelet does.)
    c.ok(&[
        "create",
        "clusterrole",
        "scrape",
        "--verb=get",
        "--resource=nodes/metrics",
    ]);
    for sa in ["scraper", "nosy"] {
        c.ok(&["create", "serviceaccount", sa, "-n", "default"]);
    }
    c.ok(&[
        "create",
        "clusterrolebinding",
        "scrape",
        "--clusterrole=scrape",
        "--serviceaccount=default:scraper",
    ]);
    let nosy = c.ok(&["create", "token", "nosy", "-n", "default"]);
    let (code, _, body) = get(anonymous.clone(), "/metrics", Some(nosy.trim())).unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(
            "user=system:serviceaccount:default:nosy, verb=get, resource=nodes, subresource=metrics"
        ),
        "{body}"
    );
    let token = c.ok(&["create", "token", "scraper", "-n", "default"]);
    let token = token.trim();
    let (code, _, body) = get(anonymous.clone(), "/metrics", Some(token)).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("capstan_agent_running_pods"), "{body}");
    assert_eq!(
        get(anonymous.clone(), "/containerLogs/default/x/y", Some(token))
            .unwrap()
            .0,
        403
    );
}

#[test]
fn each_controller_acts_as_its_own_least_privileged_account() {
    let dir = temp_dir("capstan-controller-ids-").unwrap();
    let data = dir.path().join("data");
    let audit = dir.path().join("audit.log");
    let _up = CapstanUp::start(
        capstan_testkit::capstan_bin(),
        &[
            "--data-dir".to_string(),
            data.display().to_string(),
            "--audit-log-path".into(),
            audit.display().to_string(),
        ],
    )
    .unwrap();
    let kc = data.join("kubeconfig");
    let ok = |args: &[&str]| {
        let out = kubectl(&kc, args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=1",
    ]);
    eventually(WAIT, "the deployment's pod exists", || {
        !ok(&["get", "pods", "-l", "app=web", "-o", "name"]).is_empty()
    })
    .unwrap();
    // Who wrote what, from the audit log: the ReplicaSet by the deployment controller's
    // account, the pod by the replicaset controller's (no node here: nothing is bound).
    let writer = |resource: &str, sub: &str| {
        std::fs::read_to_string(&audit)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| {
                e["verb"] == "create"
                    && e["objectRef"]["resource"] == resource
                    && e["objectRef"]["subresource"].as_str().unwrap_or("") == sub
                    && e["responseStatus"]["code"] == 201
            })
            .map(|e| {
                e["user"]["username"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
    };
    eventually(WAIT, "the writes are in the audit log", || {
        writer("pods", "").is_some()
    })
    .unwrap();
    assert_eq!(
        writer("replicasets", "").unwrap(),
        "system:serviceaccount:kube-system:deployment-controller"
    );
    assert_eq!(
        writer("pods", "").unwrap(),
        "system:serviceaccount:kube-system:replicaset-controller"
    );
    // Each may do its own work and nothing else.
    let can = |who: &str, what: &[&str]| {
        let account = format!("system:serviceaccount:kube-system:{who}-controller");
        let mut args = vec!["auth", "can-i"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["--as", &account]);
        String::from_utf8_lossy(&kubectl(&kc, &args, None).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(can("deployment", &["create", "replicasets.apps"]), "yes");
    assert_eq!(can("deployment", &["create", "pods"]), "no");
    assert_eq!(can("replicaset", &["create", "pods"]), "yes");
    assert_eq!(can("replicaset", &["get", "secrets"]), "no");
    assert_eq!(
        can("scheduler", &["create", "pods", "--subresource=binding"]),
        "yes"
    );
    // It deletes pods only to preempt them, as kube-scheduler's role allows; it makes none.
    assert_eq!(can("scheduler", &["delete", "pods"]), "yes");
    assert_eq!(can("scheduler", &["create", "pods"]), "no");
    assert_eq!(can("scheduler", &["update", "deployments.apps"]), "no");
    assert_eq!(can("serviceaccount", &["create", "serviceaccounts"]), "yes");
    assert_eq!(
        can(
            "serviceaccount",
            &["create", "clusterrolebindings.rbac.authorization.k8s.io"]
        ),
        "no"
    );
}
