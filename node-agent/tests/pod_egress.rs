//! Pod egress masquerade against the real kernel, in network namespaces of the test's own
//! (TEST-NET-2 and 10.244.0.0/16 inside them, never the host's): a "node" namespace forwards
//! between a "pod" (10.244.1.2), a pod of another node's range behind it (10.244.2.2) and the
//! "outside" (198.51.100.2, which has no route back to the pods). With the table applied in the
//! node, a connection from the pod to the outside arrives from the node's address, and one to
//! the other pod arrives from the pod's own address; without it, the outside cannot answer.
//! Needs root, iproute2 and nft; skipped (with a line saying so) otherwise.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use capstan_node_agent::pod_egress::{PodEgress, TABLE};
use capstan_node_agent::proxy::nft::Nft;

struct World {
    prefix: String,
}

impl World {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn new() -> Option<World> {
        let tools = ["ip", "nft"].iter().all(|t| {
            Command::new(t)
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !rustix::process::geteuid().is_root() || !tools {
            eprintln!("skipped: needs root, iproute2 and nft");
            return None;
        }
        let w = World {
            prefix: format!("capst-eg{}", std::process::id()),
        };
        w.remove();
        let (node, pod, peer, out) = (w.ns("node"), w.ns("pod"), w.ns("peer"), w.ns("out"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &node],
            vec!["netns", "add", &pod],
            vec!["netns", "add", &peer],
            vec!["netns", "add", &out],
            vec![
                "-n", &node, "link", "add", "n0", "type", "veth", "peer", "name", "p0", "netns",
                &pod,
            ],
            vec![
                "-n", &node, "link", "add", "n1", "type", "veth", "peer", "name", "q0", "netns",
                &peer,
            ],
            vec![
                "-n", &node, "link", "add", "n2", "type", "veth", "peer", "name", "o0", "netns",
                &out,
            ],
            vec!["-n", &node, "addr", "add", "10.244.1.1/24", "dev", "n0"],
            vec!["-n", &node, "addr", "add", "10.244.2.1/24", "dev", "n1"],
            vec!["-n", &node, "addr", "add", "198.51.100.1/24", "dev", "n2"],
            vec!["-n", &pod, "addr", "add", "10.244.1.2/24", "dev", "p0"],
            vec!["-n", &peer, "addr", "add", "10.244.2.2/24", "dev", "q0"],
            vec!["-n", &out, "addr", "add", "198.51.100.2/24", "dev", "o0"],
        ];
        for args in &steps {
            ip(args);
        }
        for (ns, dev) in [
            (&node, "n0"),
            (&node, "n1"),
            (&node, "n2"),
            (&pod, "p0"),
            (&peer, "q0"),
            (&out, "o0"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&["-n", &pod, "route", "add", "default", "via", "10.244.1.1"]);
        ip(&["-n", &peer, "route", "add", "default", "via", "10.244.2.1"]);
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Some(w)
    }

    fn remove(&self) {
        for role in ["node", "pod", "peer", "out"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .output();
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.remove();
    }
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs `f` on a thread moved into network namespace `ns` (its sockets live there).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        f()
    })
}

/// Listens on `addr` in `server_ns`, connects from `client_ns`: the address the server saw
/// the connection come from, or None when it could not be made within 2 s.
fn seen_from(server_ns: &str, addr: &str, client_ns: &str) -> Option<SocketAddr> {
    let listener = in_netns(server_ns, {
        let addr = addr.to_string();
        move || TcpListener::bind(format!("{addr}:0")).unwrap()
    })
    .join()
    .unwrap();
    let target = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let client = in_netns(client_ns, move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut peer = None;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((_, from)) => {
                peer = Some(from);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    let connected = client.join().unwrap().is_some();
    peer.filter(|_| connected)
}

fn ip_of(a: Option<SocketAddr>) -> Option<String> {
    a.map(|a| a.ip().to_string())
}

#[test]
fn pods_keep_their_address_inside_the_cluster_and_leave_as_the_node() {
    let Some(w) = World::new() else { return };
    let (node, pod, peer, out) = (w.ns("node"), w.ns("pod"), w.ns("peer"), w.ns("out"));
    // Without the table the outside has no way back to a pod address.
    assert_eq!(ip_of(seen_from(&out, "198.51.100.2", &pod)), None);
    assert_eq!(
        ip_of(seen_from(&peer, "10.244.2.2", &pod)).as_deref(),
        Some("10.244.1.2")
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let egress = PodEgress::new(Nft::in_netns(&node), TABLE, "10.244.0.0/16").unwrap();
    rt.block_on(egress.apply()).unwrap();
    // Applying again adopts the table: the same three rules, not six.
    rt.block_on(egress.apply()).unwrap();
    let listed = Command::new("ip")
        .args(["netns", "exec", &node, "nft", "list", "table", "ip", TABLE])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.matches("saddr 10.244.0.0/16").count(), 3, "{listed}");

    let to_out = seen_from(&out, "198.51.100.2", &pod);
    let to_peer = seen_from(&peer, "10.244.2.2", &pod);
    assert_eq!(
        ip_of(to_out).as_deref(),
        Some("198.51.100.1"),
        "out of the cluster: the node's address"
    );
    assert_eq!(
        ip_of(to_peer).as_deref(),
        Some("10.244.1.2"),
        "pod to pod: the pod's own"
    );

    rt.block_on(egress.remove()).unwrap();
    let gone = Command::new("ip")
        .args(["netns", "exec", &node, "nft", "list", "table", "ip", TABLE])
        .output()
        .unwrap();
    assert!(
        !gone.status.success(),
        "the table is deleted on a clean stop"
    );
    rt.block_on(egress.remove()).unwrap();
}
