//! Pods across machines (issue 26), with real processes: three "machines" are network
//! namespaces of the test's own, each with a veth on one host bridge and an address of the
//! test's network slot (10.S.200.0/24; never any other address). Machine a runs the whole
//! control plane and a node: `capstan up --allocate-node-cidrs=true` with its managed
//! containerd, started in its namespace, so its own node's range is allocated like any other.
//! Machines b and c run `capstan agent` joined with a bootstrap token, each with a containerd of
//! its own (`--containerd-dir`: containerd runs the CNI plugins in its own network namespace,
//! so each machine needs its own; one shared containerd would put every pod on one machine).
//! Every machine runs its service proxy and cluster DNS in its namespace; host-gw pod routes
//! and the pod egress masquerade are on by default where the cluster allocates ranges.
//!
//! Checked: every Node gets a distinct /24 of the cluster CIDR and its pods' addresses come
//! from it; a pod on machine a fetches a page from a pod on machine b by pod IP, through the
//! Service's ClusterIP and through its DNS name, and the server sees the client pod's own
//! address; so does a pod on machine c; a pod leaving the cluster range (to a server of the
//! test's on the host bridge) arrives from its machine's address; each machine holds a route to
//! the others' ranges via their addresses.

mod cri_cluster;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use capstan_testkit::{
    CapstanUp, NetSlot, capstan_bin, eventually, kubectl, kubectl_json, kubectl_ok, temp_dir,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn ip_out(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One machine: a network namespace, its address, its agent (machine a's is `capstan up`'s).
struct Machine {
    name: String,
    netns: String,
    addr: String,
    root: PathBuf,
    log: PathBuf,
    agent: Option<Child>,
}

/// The machines, the control plane and the host bridge; on drop everything goes: the pods
/// (through the API while the agents live), the agents and `capstan up` by pid (each stops its
/// containerd), leftover shims and containerds by pid, the namespaces (their links, routes and
/// nftables tables with them), the bridge.
struct Machines {
    up: Option<CapstanUp>,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
    bridge: String,
    machines: Vec<Machine>,
    subnet: String,
    cluster_cidr: String,
    _slot: NetSlot,
}

impl Machines {
    fn start(names: &[&str]) -> Machines {
        let dir = temp_dir("capstan-mn-").unwrap();
        let images = dir.path().join("images");
        cri_cluster::build_images(&images);
        // The agents import busybox; the sandbox image is their own.
        let _ = std::fs::remove_file(images.join("pause.tar"));
        let slot = NetSlot::take();
        let octet = 100 + slot.index;
        let subnet = format!("10.{octet}.200");
        let mut m = Machines {
            up: None,
            kubeconfig: dir.path().join("data/kubeconfig"),
            bridge: slot.name("cmn"),
            machines: names
                .iter()
                .enumerate()
                .map(|(i, n)| Machine {
                    name: format!("mn-{n}"),
                    netns: format!("{}-{n}", slot.name("capst-mn")),
                    addr: format!("{subnet}.{}", 11 + i),
                    root: dir.path().join(n),
                    log: if i == 0 {
                        dir.path().join("data").join(capstan_testkit::UP_LOG)
                    } else {
                        dir.path().join(n).join("agent.log")
                    },
                    agent: None,
                })
                .collect(),
            subnet,
            // The first half of the slot's /16; the machines' addresses are in the other.
            cluster_cidr: format!("10.{octet}.0.0/17"),
            dir,
            _slot: slot,
        };
        m.remove_network();
        ip(&["link", "add", &m.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", m.subnet),
            "dev",
            &m.bridge,
        ]);
        ip(&["link", "set", &m.bridge, "up"]);
        for (i, mc) in m.machines.iter().enumerate() {
            let host_end = format!("{}v{i}", m.bridge);
            ip(&["netns", "add", &mc.netns]);
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns",
                &mc.netns,
            ]);
            ip(&["link", "set", &host_end, "master", &m.bridge, "up"]);
            ip(&[
                "-n",
                &mc.netns,
                "addr",
                "add",
                &format!("{}/24", mc.addr),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &mc.netns, "link", "set", "eth0", "up"]);
            ip(&["-n", &mc.netns, "link", "set", "lo", "up"]);
        }
        let data = m.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let data_s = data.display().to_string();
        let a = &m.machines[0];
        let listen = format!("{}:0", a.addr);
        let service_cidr = m._slot.service_cidr();
        let images_s = images.display().to_string();
        let up = CapstanUp::start_in(
            Some(&a.netns),
            capstan_bin(),
            &[
                "--data-dir",
                &data_s,
                "--listen",
                &listen,
                "--service-cidr",
                &service_cidr,
                "--allocate-node-cidrs=true",
                "--cluster-cidr",
                &m.cluster_cidr,
                "--runtime",
                "cri",
                "--node-name",
                &a.name,
                "--node-ip",
                &a.addr,
                "--image-dir",
                &images_s,
                "--proxy",
                "on",
                "--dns",
                "on",
                "--disable-ingress",
            ],
        )
        .unwrap();
        let server = format!("https://{}", up.addr);
        m.up = Some(up);
        let token = Command::new(capstan_bin())
            .arg("--kubeconfig")
            .arg(&m.kubeconfig)
            .args(["token", "create", "--ttl", "1h"])
            .output()
            .unwrap();
        assert!(
            token.status.success(),
            "{}",
            String::from_utf8_lossy(&token.stderr)
        );
        let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
        let ca = data.join("pki/ca.crt");
        for mc in m.machines.iter_mut().skip(1) {
            std::fs::create_dir_all(&mc.root).unwrap();
            let log = std::fs::File::create(&mc.log).unwrap();
            // nsenter switches only the network namespace (`ip netns exec` also remounts /sys,
            // hiding the cgroup mount runc needs).
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", mc.netns))
                .arg("--")
                .arg(capstan_bin())
                .args(["agent", "--server", &server, "--token", &token, "--ca-file"])
                .arg(&ca)
                .args(["--node-name", &mc.name, "--node-ip", &mc.addr, "--root-dir"])
                .arg(&mc.root)
                .arg("--containerd-dir")
                .arg(mc.root.join("containerd"))
                .arg("--image-dir")
                .arg(&images)
                .args(["--proxy", "on", "--dns", "on"])
                .args(["--cluster-cidr", &m.cluster_cidr])
                .args(["--eviction-hard", capstan_testkit::TEST_EVICTION_HARD])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            mc.agent = Some(child);
        }
        m
    }

    fn json(&self, args: &[&str]) -> Option<Value> {
        kubectl_json(&self.kubeconfig, args)
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        kubectl_ok(&self.kubeconfig, args, stdin)
    }

    /// Every machine's log tail, for a failure to show.
    fn logs(&self) -> String {
        self.machines
            .iter()
            .map(|mc| {
                let log = std::fs::read_to_string(&mc.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "--- {} log (last 25):\n{}",
                    mc.name,
                    lines[lines.len().saturating_sub(25)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `wget -q -O- URL` in `pod` (bounded by busybox's `timeout`: Debian's busybox-static
    /// wget crashes on its own -T): the page, or what went wrong.
    fn fetch(&self, pod: &str, url: &str) -> Result<String, String> {
        let out = kubectl(
            &self.kubeconfig,
            &["exec", pod, "--", "timeout", "5", "wget", "-q", "-O-", url],
            None,
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn remove_network(&self) {
        for mc in &self.machines {
            let _ = Command::new("ip")
                .args(["netns", "del", &mc.netns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        if self.up.is_some() {
            let _ = kubectl(
                &self.kubeconfig,
                &[
                    "delete",
                    "pods",
                    "--all",
                    "--grace-period=1",
                    "--timeout=30s",
                ],
                None,
            );
        }
        for mc in &mut self.machines {
            if let Some(mut a) = mc.agent.take() {
                // SIGTERM: the agent stops its containerd; -9 after 15 s.
                capstan_testkit::signal(a.id(), "TERM");
                let _ = eventually(Duration::from_secs(15), "agent gone", || {
                    a.try_wait().ok().flatten().is_some()
                });
                let _ = a.kill();
                let _ = a.wait();
            }
        }
        // `capstan up` stops its containerd and removes its tables on SIGTERM.
        if let Some(mut up) = self.up.take() {
            up.stop(Duration::from_secs(15));
        }
        // Shims and containerds left behind, found by the machines' directories, by pid.
        let root = self.dir.path().display().to_string();
        cri_cluster::kill_matching("containerd", &root);
        let data = self.dir.path().join("data");
        for root in self.machines.iter().map(|mc| &mc.root).chain([&data]) {
            if let Some(pid) = std::fs::read_to_string(root.join("containerd/containerd.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
            {
                capstan_testkit::signal(pid, "KILL");
            }
        }
        // Whatever is still mounted under the machines' directories, innermost first.
        cri_cluster::unmount_under(&root);
        self.remove_network();
    }
}

fn pod(name: &str, node: &str, command: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/busybox:1
    command: ["sh", "-c", "{command}"]
"#
    )
}

/// The web server on b: a page, and a CGI that says where a request came from.
const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeName: NODE
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/busybox:1
    command: ["sh", "-c"]
    args:
    - |
      mkdir -p /www/cgi-bin
      echo hello from $(hostname) > /www/index.html
      printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho from $REMOTE_ADDR\n' > /www/cgi-bin/ip
      chmod +x /www/cgi-bin/ip
      exec httpd -f -p 8080 -h /www
"#;

/// A server of the test's on `addr` (outside the cluster range) answering every request
/// with the address it came from, until the test ends.
fn where_from_server(addr: &str) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(format!("{addr}:0")).unwrap();
    let local = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let from = conn
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfrom {from}\n"
            );
        }
    });
    local
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, bits) = cidr.split_once('/').unwrap();
    let (ip, net): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
        (ip.parse().unwrap(), net.parse().unwrap());
    let mask = u32::MAX << (32 - bits.parse::<u32>().unwrap());
    u32::from(ip) & mask == u32::from(net) & mask
}

#[test]
fn pods_reach_pods_on_other_machines_by_ip_service_and_name() {
    if !cri_cluster::runnable("multinode") {
        return;
    }
    let m = Machines::start(&["a", "b", "c"]);
    let names: Vec<String> = m.machines.iter().map(|mc| mc.name.clone()).collect();
    let mut ranges = Vec::new();
    let ready = eventually(WAIT, "three Ready nodes with pod ranges", || {
        ranges = names
            .iter()
            .filter_map(|n| {
                let node = m.json(&["get", "node", n])?;
                let ready = node["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let range = node["spec"]["podCIDR"].as_str()?.to_string();
                ready.then_some(range)
            })
            .collect();
        ranges.len() == names.len()
    });
    assert!(ready.is_ok(), "{ready:?}\n{}", m.logs());
    let mut distinct = ranges.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ranges:?}");
    for r in &ranges {
        assert!(
            r.ends_with("/24") && in_cidr(r.split('/').next().unwrap(), &m.cluster_cidr),
            "{r}"
        );
    }

    // A web server on b (its CGI answers with the address a request came from), clients on
    // a and c.
    m.ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "{WEB}---{}---{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: 8080}}]\n",
            pod("client-a", &names[0], "exec sleep 3600"),
            pod("client-c", &names[2], "exec sleep 3600"),
        )
        .replace("NODE", &names[1])),
    );
    let mut ips = Vec::new();
    let running = eventually(WAIT, "the three pods Running with IPs", || {
        ips = ["web", "client-a", "client-c"]
            .iter()
            .filter_map(|p| {
                let pod = m.json(&["get", "pod", p])?;
                (pod["status"]["phase"] == "Running")
                    .then(|| pod["status"]["podIP"].as_str().map(str::to_string))
                    .flatten()
            })
            .collect();
        ips.len() == 3
    });
    assert!(running.is_ok(), "{running:?}\n{}", m.logs());
    // Each pod's address is from its node's range.
    for (ip, range) in ips.iter().zip([&ranges[1], &ranges[0], &ranges[2]]) {
        assert!(in_cidr(ip, range), "{ip} not in {range}");
    }
    // Every machine routes the others' ranges via their addresses, and not its own.
    for (i, mc) in m.machines.iter().enumerate() {
        let routes = ip_out(&["-n", &mc.netns, "route", "show", "proto", "157"]);
        for (j, other) in m.machines.iter().enumerate() {
            let want = format!("{} via {}", ranges[j], other.addr);
            assert_eq!(routes.contains(&want), i != j, "{}: {routes}", mc.name);
        }
    }

    let web_ip = &ips[0];
    let outside = where_from_server(&format!("{}.1", m.subnet));
    for (client, client_ip, machine) in [
        ("client-a", &ips[1], &m.machines[0]),
        ("client-c", &ips[2], &m.machines[2]),
    ] {
        let mut last = Err(String::new());
        let by_ip = eventually(Duration::from_secs(30), "the page by pod IP", || {
            last = m.fetch(client, &format!("http://{web_ip}:8080/"));
            last.as_ref().is_ok_and(|p| p.contains("hello from web"))
        });
        assert!(by_ip.is_ok(), "{client} → {web_ip}: {last:?}\n{}", m.logs());
        let cluster_ip = m.ok(
            &["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"],
            None,
        );
        let by_service = eventually(Duration::from_secs(30), "the page by ClusterIP", || {
            last = m.fetch(client, &format!("http://{cluster_ip}/"));
            last.as_ref().is_ok_and(|p| p.contains("hello from web"))
        });
        assert!(
            by_service.is_ok(),
            "{client} → {cluster_ip}: {last:?}\n{}",
            m.logs()
        );
        let by_name = eventually(Duration::from_secs(30), "the page by DNS name", || {
            last = m.fetch(client, "http://web.default.svc.cluster.local/");
            last.as_ref().is_ok_and(|p| p.contains("hello from web"))
        });
        assert!(
            by_name.is_ok(),
            "{client} → web.default.svc: {last:?}\n{}",
            m.logs()
        );
        // Pod to pod keeps the client's address (no SNAT between machines; busybox's httpd
        // listens on IPv6 and writes an IPv4 peer as [::ffff:a.b.c.d]) ...
        let seen = m
            .fetch(client, &format!("http://{web_ip}:8080/cgi-bin/ip"))
            .map(|s| s.replace("[::ffff:", "").replace(']', ""));
        assert_eq!(
            seen.as_deref().map(str::trim),
            Ok(format!("from {client_ip}").as_str()),
            "{client} → {web_ip}: the server must see the pod's own address\n{}",
            m.logs()
        );
        // ... and what leaves the cluster range leaves as the machine.
        let seen = m.fetch(client, &format!("http://{outside}/"));
        assert_eq!(
            seen.as_deref().map(str::trim),
            Ok(format!("from {}", machine.addr).as_str()),
            "{client} → {outside}: masqueraded to its machine's address\n{}",
            m.logs()
        );
    }
}
