//! The proxy against an in-process API server (testkit's TestCluster) and the real kernel:
//! Services and EndpointSlices created through the API become rules, and the rules follow
//! changes and deletions. Needs root and `nft` (skips otherwise).

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::kernel_tests::{Table, require_kernel, skip_reason, table_text};
use super::{ProxyConfig, start};

/// Polls the table until `check` holds, failing after a deadline with the table's text.
async fn wait_for_table(table: &str, what: &str, check: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = table_text(table);
        if check(&text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_slices_from_the_api_become_rules_that_follow_changes() {
    require_kernel!();
    let cluster = capstan_testkit::TestCluster::start().await;
    let t = Table::scratch();
    let client = cluster.client.clone();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": "web"}}
    }))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let cip = svc.spec.unwrap().cluster_ip.unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.98.1.5"], "conditions": {"ready": true}, "nodeName": "node-a"}]
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();

    let mut cfg = ProxyConfig::new("node-a");
    cfg.table = t.0.clone();
    cfg.masquerade_pod_traffic = Some(false);
    let registry = prometheus::Registry::new();
    let proxy = start(client.clone(), cfg, &registry).await.unwrap();
    let mut synced = proxy.synced();

    wait_for_table(&t.0, "the service's rules", |text| {
        text.contains(&format!("{cip} . tcp . 80 : goto service-"))
            && text.contains("dnat to 10.98.1.5:8080")
    })
    .await;
    tokio::time::timeout(
        Duration::from_secs(5),
        synced.wait_for(|s| s.generation >= 1),
    )
    .await
    .expect("a sync was reported")
    .unwrap();

    // the agent restarts: the old proxy goes away without cleaning up, a new one adopts the
    // table — the rules are there before its first sync and after it
    drop(proxy);
    let mut cfg = ProxyConfig::new("node-a");
    cfg.table = t.0.clone();
    cfg.masquerade_pod_traffic = Some(false);
    let registry = prometheus::Registry::new();
    let proxy = start(client.clone(), cfg, &registry).await.unwrap();
    assert!(table_text(&t.0).contains(&format!("{cip} . tcp . 80 : goto service-")));
    let mut synced = proxy.synced();
    tokio::time::timeout(
        Duration::from_secs(10),
        synced.wait_for(|s| s.generation >= 1),
    )
    .await
    .expect("the new proxy synced")
    .unwrap();
    assert!(table_text(&t.0).contains(&format!("{cip} . tcp . 80 : goto service-")));

    // the Service's port changes: the map element follows
    let ports = json!({"spec": {"ports": [{"name": "http", "port": 81, "targetPort": 8080}]}});
    services
        .patch("web", &PatchParams::default(), &Patch::Merge(&ports))
        .await
        .unwrap();
    wait_for_table(&t.0, "port 81", |text| {
        text.contains(&format!("{cip} . tcp . 81 : goto service-"))
            && !text.contains(&format!("{cip} . tcp . 80 "))
    })
    .await;

    // the endpoints go: clients are rejected
    slices
        .delete("web-abc", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_table(&t.0, "the reject element", |text| {
        text.contains(&format!("{cip} . tcp . 81 : goto reject-chain"))
            && !text.contains("10.98.1.5")
    })
    .await;

    // the Service goes: nothing of it is left
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_table(&t.0, "the service's removal", |text| {
        !text.contains(&cip) && text.contains("chain services")
    })
    .await;

    let families: Vec<String> = registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    for m in [
        "capstan_proxy_sync_proxy_rules_duration_seconds",
        "capstan_proxy_nftables_chains",
        "capstan_proxy_sync_proxy_rules_last_timestamp_seconds",
    ] {
        assert!(
            families.iter().any(|f| f == m),
            "{m} missing from {families:?}"
        );
    }

    proxy.shutdown().await.unwrap();
    assert!(
        table_text(&t.0).contains("No such file or directory"),
        "shutdown deletes the table"
    );
}
