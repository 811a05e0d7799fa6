//! Host-gw pod routes against a real in-process API server and the real kernel, in a network
//! namespace of the test's own (a veth pair, 198.51.100.1/24 on one end: TEST-NET-2): Nodes written
//! through the API become `proto 157` routes via their InternalIPs, a Node's deletion removes
//! its route, a route deleted by hand comes back at the resync, a next hop off every segment
//! is refused (and logged) without stopping the others, and routes of other origins are never
//! touched; the node's own range becomes its CNI config. Needs root and iproute2; skipped (with a line saying so) otherwise.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use capstan_node_agent::cni_config;
use capstan_node_agent::pod_routes::{self, Kernel};
use capstan_testkit::{TestCluster, until};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

struct Netns(String);

impl Netns {
    fn new() -> Option<Netns> {
        if !rustix::process::geteuid().is_root() || Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipped: needs root and iproute2");
            return None;
        }
        let ns = Netns(format!("capst-rt-{}", std::process::id()));
        let _ = Command::new("ip").args(["netns", "del", &ns.0]).output();
        for args in [
            vec!["netns", "add", &ns.0],
            vec![
                "-n", &ns.0, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
            ],
            vec!["-n", &ns.0, "addr", "add", "198.51.100.1/24", "dev", "d0"],
            vec!["-n", &ns.0, "link", "set", "d1", "up"],
            vec!["-n", &ns.0, "link", "set", "d0", "up"],
            // Another origin's route in the same range of addresses: never ours to touch.
            vec![
                "-n",
                &ns.0,
                "route",
                "add",
                "10.244.7.0/24",
                "via",
                "198.51.100.7",
            ],
        ] {
            let o = Command::new("ip").args(&args).output().unwrap();
            assert!(
                o.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Some(ns)
    }

    fn routes(&self) -> String {
        let o = Command::new("ip")
            .args(["-n", &self.0, "-4", "route", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

async fn node(nodes: &Api<Node>, name: &str, cidr: &str, ip: &str) {
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name}, "spec": {"podCIDR": cidr},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &n).await.unwrap();
    let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": ip}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_become_routes_and_only_ours_are_changed() {
    let Some(ns) = Netns::new() else { return };
    let kernel = Kernel {
        netns: Some(ns.0.clone()),
    };
    // The kernel side alone: a refused next hop does not stop the others.
    let want: BTreeMap<String, std::net::Ipv4Addr> = [
        ("10.244.1.0/24".to_string(), "198.51.100.2".parse().unwrap()),
        ("10.244.9.0/24".to_string(), "203.0.113.1".parse().unwrap()),
    ]
    .into();
    let (changed, refused) = kernel.sync(&want).await.unwrap();
    assert_eq!(changed, 2);
    assert!(
        refused.iter().any(|l| l.contains("invalid gateway")),
        "{refused:?}"
    );
    let current = kernel.current().await.unwrap();
    assert_eq!(current.len(), 1, "{current:?}");
    assert_eq!(current["10.244.1.0/24"].to_string(), "198.51.100.2");
    assert!(kernel.sync(&BTreeMap::new()).await.unwrap().0 == 1);
    assert!(kernel.current().await.unwrap().is_empty());

    // Driven by the Nodes.
    let c = TestCluster::start().await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    node(&nodes, "me", "10.244.0.0/24", "198.51.100.1").await;
    node(&nodes, "b", "10.244.1.0/24", "198.51.100.2").await;
    let task = tokio::spawn(pod_routes::run(
        c.client.clone(),
        "me".into(),
        kernel.clone(),
    ));
    // The node's own range becomes its CNI config (the bridge over 10.244.0.0/24).
    let dir = tempfile::tempdir().unwrap();
    let cni = cni_config::CniConfig {
        dir: dir.path().join("net.d"),
        bridge: "cbr7".into(),
        ipam_dir: dir.path().join("ipam"),
        ip_masq: false,
    };
    let cni_task = tokio::spawn(cni_config::run(c.client.clone(), "me".into(), cni.clone()));
    until(WAIT, "me's CNI config written", || async {
        std::fs::read_to_string(cni.path()).is_ok_and(|t| t.contains("\"10.244.0.0/24\""))
    })
    .await;
    cni_task.abort();
    until(WAIT, "b's range routed via b", || async {
        ns.routes()
            .contains("10.244.1.0/24 via 198.51.100.2 dev d0 proto 157")
    })
    .await;
    assert!(
        !ns.routes().contains("10.244.0.0/24 via"),
        "{}",
        ns.routes()
    );
    node(&nodes, "c", "10.244.2.0/24", "198.51.100.3").await;
    until(WAIT, "c's range routed", || async {
        ns.routes().contains("10.244.2.0/24 via 198.51.100.3")
    })
    .await;
    nodes.delete("b", &DeleteParams::default()).await.unwrap();
    until(WAIT, "b's route removed", || async {
        !ns.routes().contains("10.244.1.0/24")
    })
    .await;
    // A route deleted by hand is back by the next resync (every 30 s) or Node change.
    let o = Command::new("ip")
        .args(["-n", &ns.0, "route", "del", "10.244.2.0/24"])
        .output()
        .unwrap();
    assert!(o.status.success());
    nodes
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    until(WAIT, "c's route back", || async {
        ns.routes().contains("10.244.2.0/24 via 198.51.100.3")
    })
    .await;
    task.abort();
    assert!(
        ns.routes().contains("10.244.7.0/24 via 198.51.100.7"),
        "{}",
        ns.routes()
    );
}
