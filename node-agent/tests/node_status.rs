//! The Node's status as the agent posts it, against a real in-process API server: its
//! conditions judged from the machine and the runtime, posted when one changes (and only then,
//! within the minute), with lastTransitionTime moved only by a change of status.

use std::sync::Arc;

use capstan_node_agent::node::{self, NodeConfig, StatusPoster};
use capstan_node_agent::runtime::fake::FakeRuntime;
use capstan_testkit::TestCluster;
use k8s_openapi::api::core::v1::Node;
use kube::Api;

fn condition(n: &Node, ty: &str) -> (String, String, String, String) {
    let c = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == ty))
        .unwrap_or_else(|| panic!("no {ty} condition"));
    (
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
        c.last_transition_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_follow_the_runtime_and_are_posted_on_change() {
    let c = TestCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        name: "n1".into(),
        host_ip: "127.0.0.1".into(),
        labels: Default::default(),
        max_pods: 110,
        runtime_version: "fake://0.1".into(),
        root_dir: dir.path().to_path_buf(),
        port: 10250,
        cluster_dns: vec![],
        cluster_domain: "cluster.local".into(),
        lease_duration_seconds: capstan_node_agent::node::LEASE_DURATION_SECONDS,
        // A build machine's disk is often over 90% full: "healthy" here means the test
        // harness's thresholds (the defaults are judged in conditions.rs's unit tests).
        eviction_hard: capstan_node_agent::conditions::Thresholds::parse(
            capstan_testkit::TEST_EVICTION_HARD,
        )
        .unwrap(),
    };
    node::register(&c.client, &cfg).await.unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let mut poster = StatusPoster::new(c.client.clone(), cfg, rt.clone());
    let nodes: Api<Node> = Api::all(c.client.clone());

    assert!(poster.tick().await.unwrap(), "the first status is posted");
    let n = nodes.get("n1").await.unwrap();
    let ready = condition(&n, "Ready");
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("True", "KubeletReady")
    );
    let memory_since = condition(&n, "MemoryPressure").3;
    for ty in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert_eq!(condition(&n, ty).0, "False", "{ty} on a healthy machine");
    }
    assert!(
        !poster.tick().await.unwrap(),
        "nothing changed, not due: no post"
    );

    rt.set_unhealthy(Some(
        "container runtime network not ready: NetworkReady=false",
    ));
    assert!(poster.tick().await.unwrap(), "a change is posted at once");
    let n = nodes.get("n1").await.unwrap();
    let not_ready = condition(&n, "Ready");
    assert_eq!(
        (
            not_ready.0.as_str(),
            not_ready.1.as_str(),
            not_ready.2.as_str()
        ),
        (
            "False",
            "KubeletNotReady",
            "container runtime network not ready: NetworkReady=false"
        )
    );
    assert!(not_ready.3 >= ready.3);
    assert_eq!(
        condition(&n, "MemoryPressure").3,
        memory_since,
        "an unchanged condition keeps its lastTransitionTime"
    );

    rt.set_unhealthy(None);
    assert!(poster.tick().await.unwrap());
    assert_eq!(
        condition(&nodes.get("n1").await.unwrap(), "Ready").0,
        "True"
    );
}
