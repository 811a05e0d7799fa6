//! Services on containerd, for real: the endpoint controllers, the agent's nftables proxy and
//! its cluster DNS, driven by kubectl. Two busybox httpd pods behind a NodePort Service are
//! reached from the host by ClusterIP and NodePort and from a third pod by name; readiness,
//! port changes, a blue/green selector flip and scaling to zero take effect at once; the agent
//! killed and restarted under traffic keeps serving; a clean stop removes the rules.
//!
//! Needs what the containerd suite needs plus `nft` (CI installs nftables); skipped the same
//! way (failing under CAPSTAN_REQUIRE_CONTAINERD=1).

mod cri_cluster;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use capstan_testkit::{eventually, http_get, kubectl};
use cri_cluster::{Cluster, httpd, missing_prerequisites, ready};
use serde_json::{Value, json};

/// Two web pods (Ready while /tmp/ready exists), a NodePort Service over them, a client pod.
fn manifest() -> String {
    httpd(
        "web",
        2,
        "hostname",
        "{exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1, failureThreshold: 1}",
    ) + r#"---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: localhost/busybox:1, command: ["sleep", "3600"]}
"#
}

/// The page at `addr`, or why not.
fn fetch(addr: &str) -> Result<String, String> {
    match http_get(addr, "/") {
        Ok((200, body)) => Ok(body.trim().to_string()),
        Ok((code, body)) => Err(format!("{code}: {body}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// The pages `n` requests to `addr` got.
fn answers(addr: &str, n: usize) -> BTreeSet<String> {
    (0..n).filter_map(|_| fetch(addr).ok()).collect()
}

/// Polls until `check` holds, returning how long it took.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    eventually(limit, what, &mut check).unwrap();
    t0.elapsed()
}

fn slice_endpoints(c: &Cluster) -> Vec<Value> {
    c.json(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
    ])
    .map(|l| {
        l["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .collect()
    })
    .unwrap_or_default()
}

/// Whether a connection to `addr` is refused (a TCP reset) within 200 ms.
fn refused_at_once(addr: &str) -> bool {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    matches!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

fn table_exists(table: &str) -> bool {
    std::process::Command::new("nft")
        .args(["list", "table", "ip", table])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn services_reach_pods_by_cluster_ip_node_port_and_name() {
    let mut missing = missing_prerequisites();
    if capstan_node_agent::containerd::which("nft").is_none() {
        missing.push("nft (nftables)");
    }
    if !missing.is_empty() {
        let msg = format!("services e2e needs: {}", missing.join(", "));
        if std::env::var_os("CAPSTAN_REQUIRE_CONTAINERD").is_some_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let mut c = Cluster::start();
    c.ok(&["apply", "-f", "-"], Some(&manifest()));
    let mut web: Vec<Value> = Vec::new();
    eventually(
        Duration::from_secs(90),
        "2 web pods and the client Ready",
        || {
            web = c
                .json(&["get", "pods", "-l", "app=web"])
                .map(|l| l["items"].as_array().cloned().unwrap_or_default())
                .unwrap_or_default();
            web.len() == 2 && web.iter().all(ready) && ready(&c.pod("client"))
        },
    )
    .unwrap();
    let names: BTreeSet<String> = web
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let ips: BTreeSet<String> = web
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
        .collect();

    // EndpointSlices and Endpoints list both pods, ready, with the named port resolved.
    eventually(Duration::from_secs(20), "both pods in the slice", || {
        let eps = slice_endpoints(&c);
        eps.len() == 2
            && eps.iter().all(|e| e["conditions"]["ready"] == true)
            && eps
                .iter()
                .map(|e| e["addresses"][0].as_str().unwrap_or_default().to_string())
                .collect::<BTreeSet<_>>()
                == ips
    })
    .unwrap();
    let slices = c
        .json(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ])
        .unwrap();
    let slice = &slices["items"][0];
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice["ports"][0]["port"], 8080);
    assert_eq!(slice["endpoints"][0]["targetRef"]["kind"], "Pod");
    let endpoints = c.json(&["get", "endpoints", "web"]).unwrap();
    let listed: BTreeSet<String> = endpoints["subsets"][0]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ips);

    // From the host: the ClusterIP and the NodePort reach both pods.
    let svc = c.json(&["get", "service", "web"]).unwrap();
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&node_port), "{node_port}");
    let node = c.json(&["get", "node", cri_cluster::NODE]).unwrap();
    let node_ip = node["status"]["addresses"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let via_ip = format!("{cluster_ip}:80");
    let via_node_port = format!("{node_ip}:{node_port}");
    assert_eq!(answers(&via_ip, 40), names, "ClusterIP spreads over both");
    assert_eq!(
        answers(&via_node_port, 40),
        names,
        "NodePort spreads over both"
    );

    // From a pod: by name through the search path, DNS, the Service variables, resolv.conf.
    // (busybox's static wget crashes with -T; it is left out.)
    // busybox's resolver gives up after one lost UDP answer (a loaded CI machine): asked
    // again within a deadline, the name must resolve and the page come back.
    // The deadline is a loaded machine's (every e2e suite at once), not the resolver's.
    let (mut page, mut said) = (String::new(), String::new());
    let by_name = eventually(Duration::from_secs(60), "http://web/ from a pod", || {
        let out = kubectl(
            &c.kubeconfig,
            &["exec", "client", "--", "wget", "-q", "-O-", "http://web/"],
            None,
        );
        page = String::from_utf8_lossy(&out.stdout).into_owned();
        said = String::from_utf8_lossy(&out.stderr).into_owned();
        out.status.success()
    });
    assert!(
        by_name.is_ok() && names.contains(page.trim()),
        "page {page:?}, last error {said:?}"
    );
    let kube_dns = c
        .json(&["get", "service", "kube-dns", "-n", "kube-system"])
        .unwrap()["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let resolv = c.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"], None);
    assert!(
        resolv.contains(&format!("nameserver {kube_dns}")),
        "{resolv}"
    );
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("ndots:5"), "{resolv}");
    let looked_up = c.ok(
        &[
            "exec",
            "client",
            "--",
            "nslookup",
            "web.default.svc.cluster.local",
        ],
        None,
    );
    assert!(looked_up.contains(&cluster_ip), "{looked_up}");
    let srv = c.ok(
        &[
            "exec",
            "client",
            "--",
            "nslookup",
            "-type=srv",
            "_http._tcp.web.default.svc.cluster.local",
        ],
        None,
    );
    assert!(srv.contains("80 web.default.svc.cluster.local"), "{srv}");
    let env = c.ok(&["exec", "client", "--", "env"], None);
    assert!(
        env.contains(&format!("WEB_SERVICE_HOST={cluster_ip}")),
        "{env}"
    );
    assert!(env.contains("KUBERNETES_SERVICE_HOST="), "{env}");

    // A pod failing readiness leaves the slice's ready set and stops getting traffic.
    let (first, second) = {
        let mut it = names.iter();
        (it.next().unwrap().clone(), it.next().unwrap().clone())
    };
    c.ok(&["exec", &first, "--", "rm", "/tmp/ready"], None);
    let took = within(
        Duration::from_secs(20),
        "unready pod leaves traffic",
        || {
            slice_endpoints(&c).iter().any(|e| {
                e["targetRef"]["name"] == first.as_str() && e["conditions"]["ready"] == false
            }) && answers(&via_ip, 10) == BTreeSet::from([second.clone()])
        },
    );
    eprintln!("readiness loss → out of rotation in {took:?}");
    assert_eq!(answers(&via_ip, 30), BTreeSet::from([second.clone()]));
    c.ok(&["exec", &first, "--", "touch", "/tmp/ready"], None);
    within(Duration::from_secs(20), "ready again", || {
        answers(&via_ip, 30) == names
    });

    // A port change takes effect within a second.
    c.ok(
        &[
            "patch",
            "service",
            "web",
            "--type=json",
            "-p",
            r#"[{"op": "replace", "path": "/spec/ports/0/port", "value": 8081}]"#,
        ],
        None,
    );
    let new_port = format!("{cluster_ip}:8081");
    let took = within(Duration::from_secs(10), "new port served", || {
        fetch(&new_port).is_ok()
    });
    eprintln!("port change live in {took:?}");
    // A tripwire for a lost or slow sync, not a measurement: under the whole suite's load on
    // 2 cores this took 3.1 s once (alone: well under a second). `capstan bench services`
    // measures propagation.
    assert!(took < Duration::from_secs(5), "port change took {took:?}");
    assert!(fetch(&via_ip).is_err(), "the old port is gone");

    // Blue/green: the selector flips to the green pods, within a second of it being ready.
    let green = httpd(
        "green",
        1,
        "echo green-$(hostname)",
        "{tcpSocket: {port: http}, periodSeconds: 1}",
    );
    c.ok(&["apply", "-f", "-"], Some(&green));
    eventually(Duration::from_secs(60), "green Ready", || {
        c.json(&["get", "pods", "-l", "app=green"])
            .and_then(|l| l["items"].as_array().cloned())
            .is_some_and(|items| items.len() == 1 && ready(&items[0]))
    })
    .unwrap();
    c.ok(
        &[
            "patch",
            "service",
            "web",
            "-p",
            &json!({"spec": {"selector": {"app": "green"}}}).to_string(),
        ],
        None,
    );
    let took = within(Duration::from_secs(10), "green serves", || {
        fetch(&new_port).is_ok_and(|p| p.starts_with("green-"))
    });
    eprintln!("selector flip live in {took:?}");
    assert!(took < Duration::from_secs(5), "selector flip took {took:?}");
    let all = answers(&new_port, 20);
    assert!(all.iter().all(|p| p.starts_with("green-")), "{all:?}");

    // Back to web, then the agent killed (-9) and restarted under traffic: no request fails.
    c.ok(
        &[
            "patch",
            "service",
            "web",
            "-p",
            r#"{"spec": {"selector": {"app": "web"}}}"#,
        ],
        None,
    );
    within(Duration::from_secs(10), "web again", || {
        answers(&new_port, 20) == names
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let hammer = {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), new_port.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match fetch(&addr) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    c.up = None;
    assert!(table_exists(&c.table), "rules stay while the agent is down");
    c.boot();
    eventually(
        Duration::from_secs(30),
        "web still served after restart",
        || answers(&new_port, 10) == names,
    )
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    hammer.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("through the restart: {ok} requests answered, {failed} failed");
    assert!(ok >= 20, "{ok} answered");
    assert_eq!(failed, 0, "requests failed while the agent restarted");

    // Scaled to zero: connections are refused at once, not left hanging.
    c.ok(&["scale", "deployment", "web", "--replicas=0"], None);
    eventually(Duration::from_secs(30), "no endpoints left", || {
        slice_endpoints(&c).is_empty()
    })
    .unwrap();
    // (The pods' addresses may still be in the rules for one sync period after the slice
    // empties: a connection then waits for a SYN retransmit. Once the rules follow, every
    // attempt is refused at once.)
    let refused = within(Duration::from_secs(10), "connections refused", || {
        refused_at_once(&new_port)
    });
    eprintln!("no endpoints → refused at once after {refused:?}");
    for _ in 0..10 {
        assert!(
            refused_at_once(&new_port),
            "a later attempt was not refused at once"
        );
    }

    // A clean stop removes the rules. (The pods go first: a clean stop also stops containerd,
    // and they would outlive it.)
    c.ok(&["delete", "deployment", "--all", "--wait=false"], None);
    c.ok(&["delete", "pod", "client", "--wait=false"], None);
    let socket = c.socket();
    eventually(Duration::from_secs(60), "every sandbox removed", || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                use capstan_node_agent::runtime::Runtime as _;
                cri_cluster::cri(&socket)
                    .await
                    .list_sandboxes()
                    .await
                    .is_ok_and(|s| s.is_empty())
            })
    })
    .unwrap();
    let mut up = c.up.take().unwrap();
    assert!(
        up.stop(Duration::from_secs(30)),
        "capstan up stopped cleanly"
    );
    assert!(!table_exists(&c.table), "the proxy's table is gone");
}
