//! Real traffic through the prerouting path: a "pod" network namespace reaches a Service whose
//! endpoint is a server in a second namespace, both wired to the host by veth pairs, the host
//! routing between them (forwarding enabled only on the test's own host-side interfaces; the
//! global `ip_forward` is left alone). Checks ClusterIP and NodePort traffic, who the endpoint
//! sees as the client (masquerade), and fast refusal without endpoints. Needs root, `nft`,
//! `ip` and `python3` (skips otherwise); namespaces, links and the table go in guards.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use super::kernel_tests::{Table, nft_out, require_kernel, skip_reason};
use super::model::{Endpoint, Protocol, ServicePort, ServicePortName, State, TableConfig};
use super::nft::Nft;
use super::sync::{Metrics, Syncer};

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// A network namespace joined to the host by a veth pair: `host_addr` on the host side,
/// `ns_addr` inside with a default route through the host. Deleted on drop.
struct Netns {
    name: String,
    host_if: String,
}

impl Netns {
    fn create(name: String, host_addr: Ipv4Addr, ns_addr: Ipv4Addr) -> Netns {
        let host_if = format!("{name}h");
        let ns_if = format!("{name}n");
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_if]);
        let n = Netns { name, host_if };
        let host_cidr = format!("{host_addr}/24");
        let ns_cidr = format!("{ns_addr}/24");
        let host = host_addr.to_string();
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &n.name],
            vec![
                "link", "add", &n.host_if, "type", "veth", "peer", "name", &ns_if,
            ],
            vec!["link", "set", &ns_if, "netns", &n.name],
            vec!["addr", "add", &host_cidr, "dev", &n.host_if],
            vec!["link", "set", &n.host_if, "up"],
            vec!["-n", &n.name, "addr", "add", &ns_cidr, "dev", &ns_if],
            vec!["-n", &n.name, "link", "set", &ns_if, "up"],
            vec!["-n", &n.name, "link", "set", "lo", "up"],
            vec!["-n", &n.name, "route", "add", "default", "via", &host],
        ];
        for step in steps {
            ip(&step).unwrap();
        }
        // Route between the test's namespaces: forwarding for packets entering these links only.
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/forwarding", n.host_if),
            "1",
        )
        .unwrap();
        n
    }

    fn command(&self, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c.kill_on_drop(true);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

const SERVER: &str = r#"
import socket, sys
port = int(sys.argv[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(16)
while True:
    c, a = s.accept()
    c.sendall((a[0] if port == 8080 else "%d %s" % (port, a[0])).encode())
    c.close()
"#;

const CLIENT: &str = r#"
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print("OK " + s.recv(100).decode())
except ConnectionRefusedError:
    print("REFUSED")
except OSError as e:
    print("ERR " + repr(e))
"#;

/// Connects from `ns` to `addr:port`: `OK <client address the server saw>`, `REFUSED`, `ERR …`.
async fn connect_from(ns: &Netns, addr: Ipv4Addr, port: u16) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        ns.command("python3")
            .args(["-c", CLIENT, &addr.to_string(), &port.to_string()])
            .output(),
    )
    .await
    .expect("client finished")
    .expect("client ran");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_traffic_reaches_cluster_ips_and_node_ports_through_prerouting() {
    require_kernel!();
    for tool in ["ip", "python3"] {
        if Command::new(tool).arg("-V").output().is_err() {
            eprintln!("skipping: {tool} missing");
            return;
        }
    }
    let octet = (std::process::id() % 200 + 20) as u8;
    let pid = std::process::id() % 100_000;
    let t = Table::scratch();
    let node_ip = Ipv4Addr::new(10, 254, octet, 1);
    let pod_ip = Ipv4Addr::new(10, 254, octet, 2);
    let server_gw = Ipv4Addr::new(10, 251, octet, 1);
    let server_ip = Ipv4Addr::new(10, 251, octet, 2);
    let cluster_ip = Ipv4Addr::new(10, 250, octet, 10);
    let node_port = 30000 + u16::from(octet);
    let client = Netns::create(format!("capc{pid}"), node_ip, pod_ip);
    let server_ns = Netns::create(format!("caps{pid}"), server_gw, server_ip);
    // two servers: 8080 answers with the client's address, 8081 with "8081 <address>"
    let mut servers = Vec::new();
    for port in ["8080", "8081"] {
        servers.push(
            server_ns
                .command("python3")
                .args(["-c", SERVER, port])
                .spawn()
                .unwrap(),
        );
    }
    // the servers are up when the host reaches them directly
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for port in [8080, 8081] {
        while tokio::net::TcpStream::connect((server_ip, port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let key = ServicePortName {
        namespace: "ns".into(),
        name: "web".into(),
        port: "http".into(),
        protocol: Protocol::Tcp,
    };
    let mut cfg = TableConfig::new(&t.0);
    cfg.node_ips = vec![node_ip];
    let mut state = State::new(cfg);
    let mut sp = ServicePort::cluster_ip(cluster_ip, 80, vec![Endpoint::ready(server_ip, 8080)]);
    sp.node_port = Some(node_port);
    state.services.insert(key.clone(), sp);
    let mut syncer = Syncer::new(Nft::new("nft"), Metrics::new());
    syncer.sync(state.clone()).await.unwrap();

    // ClusterIP from the pod: DNATed in prerouting, the endpoint sees the pod
    assert_eq!(
        connect_from(&client, cluster_ip, 80).await,
        format!("OK {pod_ip}")
    );
    // NodePort on the node's address: policy Cluster masquerades, the endpoint sees the node
    assert_eq!(
        connect_from(&client, node_ip, node_port).await,
        format!("OK {server_gw}")
    );
    // the host itself reaches the ClusterIP (nat output) without masquerade: the endpoint sees
    // the address the host connected from
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((node_ip, 0).into()).unwrap();
    let mut conn = socket.connect((cluster_ip, 80).into()).await.unwrap();
    let mut seen = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut seen)
        .await
        .unwrap();
    assert_eq!(seen, node_ip.to_string());

    // pod CIDR masquerade (the bridge without br_netfilter case): the endpoint sees the node
    state.config.masquerade_cidr = Some(format!("10.254.{octet}.0/24"));
    syncer.sync(state.clone()).await.unwrap();
    assert_eq!(
        connect_from(&client, cluster_ip, 80).await,
        format!("OK {server_gw}")
    );

    // ClientIP affinity over two endpoints: the pod keeps landing on the same one
    let sp = state.services.get_mut(&key).unwrap();
    sp.endpoints.push(Endpoint::ready(server_ip, 8081));
    sp.affinity_timeout = Some(600);
    syncer.sync(state.clone()).await.unwrap();
    let first = connect_from(&client, cluster_ip, 80).await;
    assert!(first.starts_with("OK "), "{first}");
    for _ in 0..5 {
        assert_eq!(connect_from(&client, cluster_ip, 80).await, first);
    }
    let table = nft_out(&["list", "table", "ip", &t.0]);
    assert!(
        table.contains(&format!("elements = {{ {pod_ip} expires")),
        "the client is in an affinity set:\n{table}"
    );

    // no endpoints: refused at once from the pod, for the ClusterIP and the NodePort
    state.services.get_mut(&key).unwrap().endpoints.clear();
    syncer.sync(state).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(connect_from(&client, cluster_ip, 80).await, "REFUSED");
    assert_eq!(connect_from(&client, node_ip, node_port).await, "REFUSED");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refusals were not immediate"
    );

    for mut server in servers {
        let _ = server.kill().await;
    }
    drop(server_ns);
    drop(client);
}
