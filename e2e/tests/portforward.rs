//! `kubectl port-forward` with unmodified kubectl, through the API server's pods/portforward
//! and the agent: on containerd (into the pod's network namespace: a port the pod binds on its
//! own 127.0.0.1 is reached, which the host cannot do) and on the process runtime (the host's
//! loopback). Several ports at once, 20 concurrent connections, the WebSocket tunnel (kubectl's
//! default) and plain SPDY (`KUBECTL_PORT_FORWARD_WEBSOCKETS=false`), and a port nothing
//! listens on reported as kubelet does. The containerd test also prints the port-forward
//! benchmark (20 connections, through port-forward and straight to the pod's IP).

mod cri_cluster;

use std::collections::BTreeSet;
use std::time::Duration;

use capstan_testkit::portforward::{PortForward, compare, get};
use capstan_testkit::{CapstanUp, eventually, free_port, kubectl, temp_dir};
use cri_cluster::{Cluster, ready};

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: localhost/busybox:1
    command: ["sh", "-c", "mkdir -p /www /lo && hostname > /www/index.html && dd if=/dev/zero of=/www/big bs=1024 count=256 2>/dev/null && echo loopback-only > /lo/index.html && httpd -p 127.0.0.1:9090 -h /lo && touch /tmp/ready && exec httpd -f -p 8080 -h /www"]
    readinessProbe: {exec: {command: ["test", "-f", "/tmp/ready"]}, periodSeconds: 1}
"#;

fn body(addr: &str, path: &str) -> Result<String, String> {
    get(addr, path)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .map_err(|e| format!("{e:#}"))
}

/// 20 GETs at once, spread over `addrs`: every answer.
fn twenty_at_once(addrs: &[String]) -> Vec<Result<String, String>> {
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let addr = addrs[i % addrs.len()].clone();
            std::thread::spawn(move || body(&addr, "/"))
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|_| Err("panicked".into())))
        .collect()
}

/// A port-forward to a port nothing listens on: the connection closes without an answer and
/// kubectl prints kubelet's message (and, as kubectl ≥ 1.31 does, gives up on the pod).
fn refused_port_is_reported(kubeconfig: &std::path::Path, port: u16) {
    let local = free_port().unwrap();
    let pf = PortForward::start(kubeconfig, "pod/web", &[&format!("{local}:{port}")], &[]).unwrap();
    assert!(body(&format!("127.0.0.1:{local}"), "/").is_err());
    let mut said = Vec::new();
    eventually(Duration::from_secs(10), "kubectl reports the error", || {
        said.extend(pf.output());
        said.iter()
            .any(|l| l.contains(&format!("error forwarding port {port} to pod default/web")))
    })
    .unwrap_or_else(|_| panic!("kubectl said: {said:?}"));
}

#[test]
fn port_forward_on_containerd_reaches_the_pods_own_loopback() {
    if !cri_cluster::runnable("port-forward") {
        return;
    }
    let c = Cluster::start();
    c.ok(&["apply", "-f", "-"], Some(POD));
    let pod = c.wait_pod("web", Duration::from_secs(90), "Ready", ready);
    let hostname = "web";
    let pod_ip = pod["status"]["podIP"].as_str().unwrap().to_string();

    // Two local ports onto 8080, one onto 9090 (bound to the pod's 127.0.0.1 only).
    let ports: Vec<u16> = (0..3).map(|_| free_port().unwrap()).collect();
    let specs = [
        format!("{}:8080", ports[0]),
        format!("{}:8080", ports[1]),
        format!("{}:9090", ports[2]),
    ];
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let mut pf = PortForward::start(&c.kubeconfig, "pod/web", &specs, &[]).unwrap();
    let addrs: Vec<String> = ports[..2]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let answers = twenty_at_once(&addrs);
    assert!(
        answers.iter().all(|a| a.as_deref() == Ok(hostname)),
        "{answers:?}"
    );
    assert_eq!(
        body(&format!("127.0.0.1:{}", ports[2]), "/").as_deref(),
        Ok("loopback-only")
    );
    assert!(
        body(&format!("{pod_ip}:9090"), "/").is_err(),
        "the pod's loopback port is not reachable from the host"
    );

    // The benchmark's numbers, in the same run: 20 connections, 256 KiB per GET.
    let (direct, forwarded) = compare(&format!("{pod_ip}:8080"), &addrs[0], "/big", 20, 5);
    eprintln!("BENCH port-forward direct to the pod IP: {direct}");
    eprintln!("BENCH port-forward through kubectl:      {forwarded}");
    assert!(direct.errors.is_empty(), "{:?}", direct.errors);
    assert!(forwarded.errors.is_empty(), "{:?}", forwarded.errors);
    assert_eq!(forwarded.bytes, 100 * 256 * 1024);
    assert!(pf.running());
    drop(pf);

    // Plain SPDY, as older kubectl (and this one told so) speaks it.
    let local = free_port().unwrap();
    let _spdy = PortForward::start(
        &c.kubeconfig,
        "pod/web",
        &[&format!("{local}:8080")],
        &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")],
    )
    .unwrap();
    let answers = twenty_at_once(&[format!("127.0.0.1:{local}")]);
    assert!(
        answers.iter().all(|a| a.as_deref() == Ok(hostname)),
        "{answers:?}"
    );

    refused_port_is_reported(&c.kubeconfig, 9999);
}

#[test]
fn port_forward_on_the_process_runtime_reaches_the_hosts_loopback() {
    let dir = temp_dir("capstan-pf-").unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    // Dropped after `up`: the containers outlive the agent by design.
    let _reap = capstan_testkit::ReapContainers(dir.path().join("agent"));
    let _up = CapstanUp::process_runtime(dir.path(), "pf-e2e").unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "process-pod\n").unwrap();
    let port = free_port().unwrap();
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: busybox
    command: [busybox, httpd, -f, -p, "127.0.0.1:{port}", -h, "{}"]
"#,
        www.display()
    );
    // The pod's processes outlive `capstan up` by design: it goes first, also on a failure.
    let _delete = DeleteOnDrop(kubeconfig.clone());
    eventually(Duration::from_secs(30), "the pod applied", || {
        kubectl(&kubeconfig, &["apply", "-f", "-"], Some(&manifest))
            .status
            .success()
    })
    .unwrap();
    // The pod shares the host's network: it is up once it answers here.
    eventually(Duration::from_secs(60), "the pod serving", || {
        body(&format!("127.0.0.1:{port}"), "/").is_ok()
    })
    .unwrap_or_else(|_| {
        let out = kubectl(&kubeconfig, &["get", "pod", "web", "-o", "yaml"], None);
        panic!("{}", String::from_utf8_lossy(&out.stdout))
    });
    let (l1, l2) = (free_port().unwrap(), free_port().unwrap());
    let pf = PortForward::start(
        &kubeconfig,
        "pod/web",
        &[&format!("{l1}:{port}"), &format!("{l2}:{port}")],
        &[],
    )
    .unwrap();
    let answers = twenty_at_once(&[format!("127.0.0.1:{l1}"), format!("127.0.0.1:{l2}")]);
    let got: BTreeSet<_> = answers.iter().cloned().collect();
    assert_eq!(got, BTreeSet::from([Ok("process-pod".to_string())]));
    drop(pf);
    refused_port_is_reported(&kubeconfig, free_port().unwrap());
}

struct DeleteOnDrop(std::path::PathBuf);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        kubectl(
            &self.0,
            &["delete", "pod", "web", "--grace-period=1", "--wait=true"],
            None,
        );
    }
}
