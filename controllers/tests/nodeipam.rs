//! The node IPAM controller against a real in-process API server: Nodes get distinct pod ranges
//! from the cluster CIDR around one a Node already had, a Node that finds the range used up
//! waits with a CIDRNotAvailable Event and gets the range a deleted Node frees, a manager that
//! starts over (a failover) keeps every range where it is, and the API server refuses to move a
//! range once set.

use std::collections::BTreeSet;
use std::time::Duration;

use capstan_controllers::nodeipam;
use capstan_controllers::{Config, Manager};
use capstan_testkit::{TestCluster, events, until};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn manager(c: &TestCluster) -> tokio::task::JoinHandle<()> {
    let config = Config {
        node_ipam: nodeipam::Config {
            cluster_cidr: Some("10.250.0.0/22".parse().unwrap()),
            node_cidr_mask_size: 24,
        },
        ..Default::default()
    };
    let m = Manager::with_config(c.client.clone(), &prometheus::Registry::new(), config);
    let names = [nodeipam::NAME.to_string()].into_iter().collect();
    tokio::spawn(async move { m.run(&names).await.unwrap() })
}

async fn create(nodes: &Api<Node>, name: &str, spec: serde_json::Value) {
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("a node");
    nodes.create(&PostParams::default(), &node).await.unwrap();
}

async fn range_of(nodes: &Api<Node>, name: &str) -> Option<String> {
    let n = nodes.get_opt(name).await.unwrap()?;
    nodeipam::pod_cidr(&n).map(str::to_string)
}

async fn ranges(nodes: &Api<Node>, names: &[&str]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for n in names {
        out.push(range_of(nodes, n).await?);
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_ranges_wait_when_none_is_left_and_keep_them_across_failover() {
    let c = TestCluster::start().await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    // A node that came with a range of the cluster CIDR (given by hand) keeps it.
    create(&nodes, "pre", json!({"podCIDR": "10.250.1.0/24"})).await;
    let mut m = manager(&c);
    for n in ["a", "b", "c"] {
        create(&nodes, n, json!({})).await;
    }
    until(WAIT, "a, b and c given ranges", || async {
        ranges(&nodes, &["a", "b", "c"]).await.is_some()
    })
    .await;
    let got = ranges(&nodes, &["a", "b", "c"]).await.unwrap();
    let all: BTreeSet<&str> = got
        .iter()
        .map(String::as_str)
        .chain(["10.250.1.0/24"])
        .collect();
    assert_eq!(
        all,
        [
            "10.250.0.0/24",
            "10.250.1.0/24",
            "10.250.2.0/24",
            "10.250.3.0/24"
        ]
        .into_iter()
        .collect(),
        "{got:?}"
    );
    // podCIDRs agrees with podCIDR.
    let a = nodes.get("a").await.unwrap();
    let spec = a.spec.unwrap();
    assert_eq!(spec.pod_cidrs, Some(vec![spec.pod_cidr.clone().unwrap()]));

    // The cluster CIDR is used up: d waits, told why.
    create(&nodes, "d", json!({})).await;
    until(WAIT, "a CIDRNotAvailable event for d", || async {
        events(&c.client, "default").await.iter().any(|e| {
            e.reason.as_deref() == Some("CIDRNotAvailable")
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("d")
        })
    })
    .await;
    assert_eq!(range_of(&nodes, "d").await, None);

    // The range of a deleted node goes to the one waiting.
    let freed = got[0].clone();
    nodes.delete("a", &DeleteParams::default()).await.unwrap();
    until(WAIT, "d given a's range", || async {
        range_of(&nodes, "d").await.as_deref() == Some(freed.as_str())
    })
    .await;

    // A new manager (a failover) moves nothing and allocates around what the API holds.
    m.abort();
    let _ = (&mut m).await;
    let before = ranges(&nodes, &["pre", "b", "c", "d"]).await.unwrap();
    nodes.delete("b", &DeleteParams::default()).await.unwrap();
    let m = manager(&c);
    create(&nodes, "e", json!({})).await;
    until(WAIT, "e given b's range", || async {
        range_of(&nodes, "e").await.as_deref() == Some(before[1].as_str())
    })
    .await;
    assert_eq!(
        ranges(&nodes, &["pre", "c", "d"]).await.unwrap(),
        vec![before[0].clone(), before[2].clone(), before[3].clone()]
    );
    m.abort();

    // The API server refuses to move a set range, and a range that is not a CIDR.
    let moved = nodes
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"podCIDR": "10.250.9.0/24", "podCIDRs": ["10.250.9.0/24"]}}),
            ),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(s) = moved else {
        panic!("{moved}")
    };
    assert_eq!(s.code, 422, "{s:?}");
    assert!(
        s.message.contains("may not change podCIDR"),
        "{}",
        s.message
    );
    let node: Node = serde_json::from_value(
        json!({"metadata": {"name": "bad"}, "spec": {"podCIDR": "10.250.0.0/40"}}),
    )
    .unwrap();
    let bad = nodes
        .create(&PostParams::default(), &node)
        .await
        .unwrap_err();
    assert!(
        matches!(&bad, kube::Error::Api(s) if s.code == 422),
        "{bad}"
    );
    assert!(nodes.get_opt("bad").await.unwrap().is_none());
}
