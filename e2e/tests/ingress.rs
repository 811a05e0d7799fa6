//! Ingress and IngressClass through unmodified kubectl on `capstan up`: the `capstan` class
//! `capstan up` creates as the default, `kubectl create ingress` (kubectl builds the object from
//! `--rule` flags, Prefix paths from `/*`, TLS from `tls=`), `kubectl get ingress` columns,
//! the default class filled in, and a bad rule refused with kubectl's error. Then the proxy on
//! containerd: busybox httpd pods behind two Services, reached with curl --resolve by host and
//! path over HTTP and HTTPS (a Secret the test made), readiness, a live edit under a request
//! loop, a WebSocket echo, the status address, and a 503 with no endpoints.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod cri_cluster;

use capstan_testkit::{CapstanUp, capstan_bin, eventually, kubectl, kubectl_ok, temp_dir};

#[test]
fn kubectl_creates_and_lists_ingresses() {
    let dir = temp_dir("capstan-ingress-e2e-").unwrap();
    let args = [
        std::ffi::OsStr::new("--data-dir"),
        dir.path().as_os_str(),
        std::ffi::OsStr::new("--runtime"),
        std::ffi::OsStr::new("none"),
    ];
    let _up = CapstanUp::start(capstan_bin(), &args).unwrap();
    let kc = dir.path().join("kubeconfig");
    // `capstan up` made its class the cluster's default.
    let class = kubectl_ok(
        &kc,
        &[
            "get",
            "ingressclass",
            "capstan",
            "-o",
            "jsonpath={.spec.controller} {.metadata.annotations.ingressclass\\.kubernetes\\.io/is-default-class}",
        ],
        None,
    );
    assert_eq!(class, "capstan.dev/ingress true");
    kubectl_ok(
        &kc,
        &[
            "create",
            "ingress",
            "web",
            "--rule=a.example.test/=a:80",
            "--rule=b.example.test/api*=b:8080,tls=b-tls",
        ],
        None,
    );
    let class = kubectl_ok(
        &kc,
        &[
            "get",
            "ingress",
            "web",
            "-o",
            "jsonpath={.spec.ingressClassName} {.spec.rules[1].http.paths[0].pathType} {.spec.tls[0].secretName}",
        ],
        None,
    );
    assert_eq!(class, "capstan Prefix b-tls");
    let table = kubectl_ok(&kc, &["get", "ingress"], None);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..3],
        ["web", "capstan", "a.example.test,b.example.test"],
        "{table}"
    );
    assert!(table.contains("80, 443"), "{table}");
    let classes = kubectl_ok(&kc, &["get", "ingressclass"], None);
    assert!(
        classes.starts_with("NAME") && classes.contains("capstan.dev/ingress"),
        "{classes}"
    );

    // A rule kubectl accepts but the server does not: an IP as host.
    let out = kubectl(
        &kc,
        &["create", "ingress", "ip", "--rule=10.0.0.1/=a:80"],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("must be a DNS name, not an IP address"),
        "{err}"
    );
}

/// Busybox httpd pods answering `<deployment>-<hostname>` at `/` and `/api/`, Ready while
/// /tmp/ready exists, behind a Service of the same name.
fn web(name: &str, replicas: u32) -> String {
    let page = format!("mkdir -p /www/api && echo {name}-$(hostname) | tee /www/api/index.html");
    let probe = "{exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1, failureThreshold: 1}";
    cri_cluster::httpd(name, replicas, &page, probe)
        + &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n"
        )
}

/// A WebSocket echo server (`capstan bench httpd --ws-port`, from the pause image, which is
/// the capstan binary) behind the Service `echo`.
const ECHO: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: echo, labels: {app: echo}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: localhost/pause:1
    imagePullPolicy: Never
    command: ["/capstan", "bench", "httpd", "--port", "8080", "--ws-port", "8081"]
    readinessProbe: {tcpSocket: {port: 8081}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8081}]
"#;

fn ingress(a_backend: &str) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web}}
spec:
  tls: [{{hosts: [a.example.test], secretName: a-tls}}]
  rules:
  - host: a.example.test
    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {a_backend}, port: {{number: 80}}}}}}}}]}}
  - host: b.example.test
    http: {{paths: [{{path: /api, pathType: Prefix, backend: {{service: {{name: b, port: {{name: http}}}}}}}}]}}
  - host: ws.example.test
    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: echo, port: {{number: 80}}}}}}}}]}}
"#
    )
}

/// `curl` to `host` resolved to the proxy's loopback port: (status, body), or curl's error.
fn curl(
    scheme: &str,
    host: &str,
    port: u16,
    path: &str,
    cacert: Option<&std::path::Path>,
) -> Result<(u16, String), String> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--resolve",
    ])
    .arg(format!("{host}:{port}:127.0.0.1"))
    .arg(format!("{scheme}://{host}:{port}{path}"));
    if let Some(ca) = cacert {
        cmd.arg("--cacert").arg(ca);
    }
    let out = cmd.output().map_err(|e| format!("curl: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), body.trim().to_string()))
}

#[test]
fn an_ingress_routes_real_pods_by_host_and_path_over_http_and_https() {
    if !cri_cluster::runnable("ingress") {
        return;
    }
    let (http, https) = (
        capstan_testkit::free_port().unwrap(),
        capstan_testkit::free_port().unwrap(),
    );
    let (http_flag, https_flag) = (format!("127.0.0.1:{http}"), format!("127.0.0.1:{https}"));
    let c = cri_cluster::Cluster::start_with(&[
        "--ingress-http-address",
        &http_flag,
        "--ingress-https-address",
        &https_flag,
    ]);
    // The certificate the TLS section names, from a CA of the test's own.
    let ca = capstan_pki::Ca::generate().unwrap();
    let cert = ca.serving("a", &["a.example.test".to_string()]).unwrap();
    let files = c.dir.path();
    std::fs::write(files.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(files.join("a.crt"), &cert.cert_pem).unwrap();
    std::fs::write(files.join("a.key"), &cert.key_pem).unwrap();
    c.ok(
        &[
            "create",
            "secret",
            "tls",
            "a-tls",
            "--cert",
            &files.join("a.crt").display().to_string(),
            "--key",
            &files.join("a.key").display().to_string(),
        ],
        None,
    );
    let all = [web("a", 2), web("b", 1), ECHO.to_string(), ingress("a")].join("---");
    c.ok(&["apply", "-f", "-"], Some(&all));
    let pods = |app: &str| -> Vec<serde_json::Value> {
        c.json(&["get", "pods", "-l", &format!("app={app}")])
            .and_then(|l| l["items"].as_array().cloned())
            .unwrap_or_default()
    };
    eventually(
        Duration::from_secs(90),
        "3 web pods and the echo pod Ready",
        || {
            let (a, b, e) = (pods("a"), pods("b"), pods("echo"));
            a.len() == 2
                && b.len() == 1
                && e.len() == 1
                && a.iter().chain(&b).chain(&e).all(cri_cluster::ready)
        },
    )
    .unwrap_or_else(|e| {
        let describe = kubectl(&c.kubeconfig, &["describe", "pods"], None);
        panic!("{e:#}\n{}", String::from_utf8_lossy(&describe.stdout))
    });
    let names = |app: &str| -> BTreeSet<String> {
        pods(app)
            .iter()
            .map(|p| format!("{app}-{}", p["metadata"]["name"].as_str().unwrap()))
            .collect()
    };
    let seen = |scheme: &str,
                host: &str,
                port: u16,
                path: &str,
                n: usize,
                ca: Option<&std::path::Path>|
     -> BTreeSet<String> {
        (0..n)
            .filter_map(|_| match curl(scheme, host, port, path, ca) {
                Ok((200, body)) => Some(body),
                _ => None,
            })
            .collect()
    };

    // Each host and path reaches its own pods; both of a's take turns.
    eventually(
        Duration::from_secs(20),
        "a.example.test/ reaches both a pods",
        || seen("http", "a.example.test", http, "/", 8, None) == names("a"),
    )
    .unwrap();
    assert_eq!(
        seen("http", "b.example.test", http, "/api/", 3, None),
        names("b")
    );
    let (code, body) = curl("http", "b.example.test", http, "/", None).unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no Ingress rule matches"), "{body}");

    // HTTPS: the Secret's certificate, verified against the test's CA.
    let ca_file = files.join("ca.pem");
    assert_eq!(
        seen("https", "a.example.test", https, "/", 8, Some(&ca_file)),
        names("a")
    );

    // A WebSocket through the proxy: the upgrade, then messages both ways.
    let tcp = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::tungstenite::client("ws://ws.example.test/", tcp).unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        let msg = format!("hello {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone()))
            .unwrap();
        assert_eq!(ws.read().unwrap().into_text().unwrap().as_str(), msg);
    }
    let _ = ws.close(None);

    // The Ingress's status names the node's address.
    let node_ip =
        c.json(&["get", "node", cri_cluster::NODE]).unwrap()["status"]["addresses"][0]["address"]
            .as_str()
            .unwrap()
            .to_string();
    eventually(Duration::from_secs(20), "status.loadBalancer", || {
        c.ok(
            &[
                "get",
                "ingress",
                "web",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[*].ip}",
            ],
            None,
        ) == node_ip
    })
    .unwrap();

    // A pod failing readiness leaves the rotation.
    let a_pods = pods("a");
    let leaving = a_pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    let staying = format!("a-{}", a_pods[1]["metadata"]["name"].as_str().unwrap());
    c.ok(&["exec", &leaving, "--", "rm", "/tmp/ready"], None);
    eventually(
        Duration::from_secs(20),
        "the unready pod out of the rotation",
        || seen("http", "a.example.test", http, "/", 6, None) == BTreeSet::from([staying.clone()]),
    )
    .unwrap();

    // An edit moves a.example.test to b under a request loop: no request fails, and b answers
    // within a second.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let looping = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match curl("http", "a.example.test", http, "/", None) {
                    Ok((200, _)) => {}
                    other => failures.push(format!("{other:?}")),
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            failures
        })
    };
    eventually(
        Duration::from_secs(10),
        "the loop answered before the edit",
        || sent.load(Ordering::Relaxed) >= 3,
    )
    .unwrap();
    c.ok(&["apply", "-f", "-"], Some(&ingress("b")));
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(5),
        "b answers for a.example.test",
        || seen("http", "a.example.test", http, "/", 1, None) == names("b"),
    )
    .unwrap();
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let failures = looping.join().unwrap();
    let n = sent.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed: {failures:?}",
        failures.len()
    );
    assert!(took < Duration::from_secs(1), "the edit took {took:?}");

    // No endpoint left: a 503 that says so.
    c.ok(&["scale", "deployment", "b", "--replicas=0"], None);
    eventually(Duration::from_secs(30), "503 without endpoints", || {
        curl("http", "b.example.test", http, "/api/", None).is_ok_and(|(code, body)| {
            code == 503 && body == "ingress: service default/b has no ready endpoints for port 80"
        })
    })
    .unwrap();
}
