//! Pods across machines (issue 26), with real processes: three "machines" of
//! [`capstan_testkit::machines`] — network namespaces of the test's own on one host bridge;
//! machine a runs `capstan up --allocate-node-cidrs=true` with its managed containerd, b and c
//! run `capstan agent` joined with a bootstrap token, each with a containerd of its own (read
//! that module for why one per machine, and for what is cleaned up).
//!
//! Checked: every Node gets a distinct /24 of the cluster CIDR and its pods' addresses come
//! from it; a pod on machine a fetches a page from a pod on machine b by pod IP, through the
//! Service's ClusterIP and through its DNS name, and the server sees the client pod's own
//! address; so does a pod on machine c; a pod leaving the cluster range (to a server of the
//! test's on the host bridge) arrives from its machine's address; each machine holds a route to
//! the others' ranges via their addresses.

mod cri_cluster;

use std::process::Command;
use std::time::Duration;

use capstan_testkit::machines::Machines;
use capstan_testkit::{capstan_bin, eventually, temp_dir};

const WAIT: Duration = Duration::from_secs(120);

fn ip_out(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
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
    let images = temp_dir("capstan-mn-images-").unwrap();
    cri_cluster::build_images(images.path());
    // The agents import busybox; the sandbox image is their own.
    let _ = std::fs::remove_file(images.path().join("pause.tar"));
    let m = Machines::start(capstan_bin(), &["a", "b", "c"], images.path()).unwrap();
    let names: Vec<String> = m.machines.iter().map(|mc| mc.name.clone()).collect();
    let ranges = m.ready_ranges(WAIT).unwrap();
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
