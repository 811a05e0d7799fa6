//! Simulated nodes (testkit::sim) against the real API server: nodes register Ready with their
//! capacity, labels and zones; their Leases are renewed; pods bound to them become Running and
//! Ready with an IP from the node's podCIDR; a deleted pod's deletion is confirmed; pods bound
//! elsewhere are left alone.

use std::time::Duration;

use capstan_testkit::sim::{SimConfig, SimNodes};
use capstan_testkit::{TestCluster, until};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "localhost/busybox:1"}]}}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_nodes_register_renew_and_run_their_pods() {
    let c = TestCluster::start().await;
    let cfg = SimConfig {
        nodes: 4,
        zones: 2,
        lease_every: Duration::from_millis(200),
        ..Default::default()
    };
    let sim = SimNodes::start(c.client.clone(), cfg).await.unwrap();
    assert_eq!(sim.names, ["sim-0", "sim-1", "sim-2", "sim-3"]);

    let nodes: Api<Node> = Api::all(c.client.clone());
    let listed = nodes
        .list(&ListParams::default().labels("capstan.dev/sim=true"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 4);
    let n1 = nodes.get("sim-1").await.unwrap();
    let labels = n1.metadata.labels.unwrap();
    assert_eq!(labels["topology.kubernetes.io/zone"], "zone-1");
    let status = n1.status.unwrap();
    assert_eq!(status.allocatable.unwrap()["pods"].0, "110");
    assert!(
        status
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // Leases exist and are renewed.
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    let renew = |l: Lease| l.spec.unwrap().renew_time.unwrap().0;
    until(Duration::from_secs(3), "the lease is created", || {
        let leases = leases.clone();
        async move { leases.get_opt("sim-2").await.unwrap().is_some() }
    })
    .await;
    let first = renew(leases.get("sim-2").await.unwrap());
    until(Duration::from_secs(3), "the lease is renewed", || {
        let leases = leases.clone();
        async move { renew(leases.get("sim-2").await.unwrap()) > first }
    })
    .await;

    // A pod bound to a simulated node runs; one bound elsewhere stays Pending.
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    pods.create(&PostParams::default(), &pod("on-sim", "sim-3"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("elsewhere", "real-node"))
        .await
        .unwrap();
    until(Duration::from_secs(3), "the pod runs", || {
        let pods = pods.clone();
        async move {
            pods.get("on-sim")
                .await
                .unwrap()
                .status
                .and_then(|s| s.phase)
                .as_deref()
                == Some("Running")
        }
    })
    .await;
    let running = pods.get("on-sim").await.unwrap().status.unwrap();
    let ip = running.pod_ip.unwrap();
    assert!(ip.starts_with("10.128.3."), "{ip} in sim-3's podCIDR");
    assert!(
        running
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    assert!(running.container_statuses.unwrap()[0].ready);
    let elsewhere = pods.get("elsewhere").await.unwrap();
    assert_eq!(
        elsewhere.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );

    // Deleting a running pod: graceful deletion, confirmed by the simulated kubelet.
    pods.delete("on-sim", &DeleteParams::default())
        .await
        .unwrap();
    until(Duration::from_secs(3), "the pod is gone", || {
        let pods = pods.clone();
        async move { pods.get_opt("on-sim").await.unwrap().is_none() }
    })
    .await;
    drop(sim);
}
