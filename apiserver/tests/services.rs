//! What the API server does for Services beyond storing them: NodePorts allocated, kept and
//! released with the same care as ClusterIPs (unique across API servers, repaired), dry runs
//! that claim nothing, and the Services it keeps itself (`kube-system/kube-dns`,
//! `default/kubernetes` with the live API servers as endpoints).

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::time::Duration;

use capstan_apiserver::service::system::EndpointReconciler;
use capstan_testkit::{TestCluster, api_error, until};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn svc(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn node_ports(s: &Service) -> Vec<i32> {
    s.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.node_port)
        .collect()
}

async fn claimed(c: &TestCluster, port: i32) -> bool {
    c.store
        .get(&format!("servicenodeports/{port}"))
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_are_allocated_kept_and_released() {
    let c = TestCluster::start().await;
    let api: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let pp = PostParams::default();
    // Allocated in range, one per port; TCP and UDP of one number share one claim.
    let web = api
        .create(
            &pp,
            &svc(
                "web",
                json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}, {"name": "alt", "port": 8080}]}),
            ),
        )
        .await
        .unwrap();
    let ports = node_ports(&web);
    assert_eq!(ports.len(), 2);
    assert!(
        ports.iter().all(|p| (30000..=32767).contains(p)),
        "{ports:?}"
    );
    assert_ne!(ports[0], ports[1]);
    for p in &ports {
        assert!(claimed(&c, *p).await, "{p} claimed");
    }
    let dns = api
        .create(
            &pp,
            &svc(
                "dns",
                json!({"type": "NodePort", "ports": [
                    {"name": "u", "port": 53, "protocol": "UDP", "nodePort": 30053},
                    {"name": "t", "port": 53, "protocol": "TCP", "nodePort": 30053}]}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(node_ports(&dns), [30053, 30053]);
    // A taken port, one out of range, a duplicate and one on a ClusterIP Service: 422, nothing stored.
    for (name, spec, says) in [
        (
            "taken",
            json!({"type": "NodePort", "ports": [{"port": 1, "nodePort": ports[0]}]}),
            "already allocated",
        ),
        (
            "far",
            json!({"type": "NodePort", "ports": [{"port": 1, "nodePort": 80}]}),
            "not in the valid range",
        ),
        (
            "twice",
            json!({"type": "NodePort", "ports": [{"name": "a", "port": 1, "nodePort": 31001}, {"name": "b", "port": 2, "nodePort": 31001}]}),
            "Duplicate value",
        ),
        (
            "plain",
            json!({"type": "ClusterIP", "ports": [{"port": 1, "nodePort": 31002}]}),
            "may not be used when `type` is 'ClusterIP'",
        ),
    ] {
        let (code, _, msg) = api_error(api.create(&pp, &svc(name, spec)).await.unwrap_err());
        assert_eq!(code, 422, "{name}: {msg}");
        assert!(msg.contains(says), "{name}: {msg}");
        assert!(api.get_opt(name).await.unwrap().is_none(), "{name}");
    }
    assert!(
        !claimed(&c, 31001).await,
        "a refused create leaves no claim"
    );
    // An update leaving the node ports out keeps them (kubectl apply of the same manifest).
    let replaced = api
        .patch(
            "web",
            &PatchParams::apply("me").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80}, {"name": "alt", "port": 8080}]}})),
        )
        .await
        .unwrap();
    assert_eq!(node_ports(&replaced), ports);
    // Dropping a port releases its node port; NodePort → ClusterIP releases them all.
    let one = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "remove", "path": "/spec/ports/1"}])).unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(node_ports(&one), [ports[0]]);
    assert!(!claimed(&c, ports[1]).await, "released with its port");
    let plain = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .unwrap();
    assert!(node_ports(&plain).is_empty(), "{plain:?}");
    assert!(!claimed(&c, ports[0]).await);
    // ClusterIP → NodePort allocates; delete releases.
    let back = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "NodePort"}})),
        )
        .await
        .unwrap();
    let again = node_ports(&back);
    assert_eq!(again.len(), 1);
    assert!(claimed(&c, again[0]).await);
    // A refused update (a taken port) releases what it claimed on the way.
    let (code, _, _) = api_error(
        api.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": [
                {"name": "http", "port": 80, "nodePort": again[0]},
                {"name": "x", "port": 81, "nodePort": 31500},
                {"name": "y", "port": 82, "nodePort": 30053}]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(!claimed(&c, 31500).await, "claimed then released");
    api.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(!claimed(&c, again[0]).await, "released on delete");
    // ClusterIP → ExternalName releases the IP; back to ClusterIP takes one again.
    let named = api
        .create(&pp, &svc("named", json!({"ports": [{"port": 80}]})))
        .await
        .unwrap();
    let ip = named.spec.unwrap().cluster_ip.unwrap();
    let ext = api
        .patch(
            "named",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"type": "ExternalName", "externalName": "db.example.com"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(ext.spec.unwrap().cluster_ip, None);
    let ip_key = format!("serviceips/{ip}");
    assert!(c.store.get(&ip_key).await.unwrap().is_none(), "released");
    let back = api
        .patch(
            "named",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP", "externalName": null}})),
        )
        .await
        .unwrap();
    let again_ip = back.spec.unwrap().cluster_ip.unwrap();
    assert!(
        c.store
            .get(&format!("serviceips/{again_ip}"))
            .await
            .unwrap()
            .is_some()
    );
    // The released port is free for another Service.
    let reused = api
        .create(
            &pp,
            &svc(
                "reuse",
                json!({"type": "NodePort", "ports": [{"port": 1, "nodePort": again[0]}]}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(node_ports(&reused), [again[0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_show_allocations_and_claim_nothing() {
    let c = TestCluster::start().await;
    let api: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let shown = api
        .create(
            &dry,
            &svc("d", json!({"type": "NodePort", "ports": [{"port": 80}]})),
        )
        .await
        .unwrap();
    let spec = shown.spec.clone().unwrap();
    let ip = spec
        .cluster_ip
        .clone()
        .expect("a dry run shows a ClusterIP");
    let port = node_ports(&shown)[0];
    assert!(api.get_opt("d").await.unwrap().is_none());
    assert!(
        c.store
            .get(&format!("serviceips/{ip}"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(!claimed(&c, port).await);
    // A dry-run update to NodePort claims nothing either.
    api.create(
        &PostParams::default(),
        &svc("u", json!({"ports": [{"port": 80}]})),
    )
    .await
    .unwrap();
    let shown = api
        .patch(
            "u",
            &PatchParams {
                dry_run: true,
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"type": "NodePort"}})),
        )
        .await
        .unwrap();
    let port = node_ports(&shown)[0];
    assert!(!claimed(&c, port).await);
    assert!(node_ports(&api.get("u").await.unwrap()).is_empty());
}

/// Two API servers on one store never hand out one node port twice, and the repair pass
/// releases a leaked claim only after two passes and re-claims a lost one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_are_unique_across_api_servers_and_repaired() {
    let a = TestCluster::start().await;
    let b = TestCluster::on_store(a.store.clone()).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let client = if i % 2 == 0 {
            a.client.clone()
        } else {
            b.client.clone()
        };
        tasks.push(tokio::spawn(async move {
            let api: Api<Service> = Api::namespaced(client, "default");
            let s = svc(
                &format!("s{i}"),
                json!({"type": "NodePort", "ports": [{"port": 80}]}),
            );
            node_ports(&api.create(&PostParams::default(), &s).await.unwrap())[0]
        }));
    }
    let mut seen = BTreeSet::new();
    for t in tasks {
        let p = t.await.unwrap();
        assert!(seen.insert(p), "{p} handed out twice");
    }
    // A leaked claim (a crash between claim and store) is released on the second pass.
    a.store
        .create(
            "servicenodeports/32000",
            bytes::Bytes::from("default/ghost"),
        )
        .await
        .unwrap();
    let first = a.api.node_ports.repair(&Default::default()).await.unwrap();
    assert!(first.contains_key("32000"));
    assert!(claimed(&a, 32000).await, "kept after one pass");
    a.api.node_ports.repair(&first).await.unwrap();
    assert!(!claimed(&a, 32000).await, "released after two");
    // A lost claim is taken back.
    let one = *seen.iter().next().unwrap();
    a.store
        .delete(&format!("servicenodeports/{one}"), None)
        .await
        .unwrap();
    a.api.node_ports.repair(&Default::default()).await.unwrap();
    assert!(claimed(&a, one).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_dns_and_kubernetes_services_are_kept_by_the_api_server() {
    let c = TestCluster::start().await;
    let dns = Api::<Service>::namespaced(c.client.clone(), "kube-system")
        .get("kube-dns")
        .await
        .unwrap();
    let spec = dns.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    let ports: Vec<_> = spec
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port, p.protocol.unwrap()))
        .collect();
    assert_eq!(
        ports,
        [
            ("dns".to_string(), 53, "UDP".to_string()),
            ("dns-tcp".to_string(), 53, "TCP".to_string())
        ]
    );

    // Two API servers (one store): both in the endpoints; one stopping leaves at once.
    let first: SocketAddrV4 = "192.0.2.10:6443".parse().unwrap();
    let second: SocketAddrV4 = "192.0.2.11:6443".parse().unwrap();
    let interval = Duration::from_millis(200);
    let r1 = EndpointReconciler::start(c.api.clone(), first, interval)
        .await
        .unwrap();
    let other = TestCluster::on_store(c.store.clone()).await;
    let r2 = EndpointReconciler::start(other.api.clone(), second, interval)
        .await
        .unwrap();
    let svc = Api::<Service>::namespaced(c.client.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.1"));
    assert_eq!(spec.ports.unwrap()[0].port, 443);
    let eps: Api<Endpoints> = Api::namespaced(c.client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    let addresses = |e: &Endpoints| -> Vec<String> {
        e.subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten().map(|a| a.ip.clone()))
            .collect()
    };
    until(
        Duration::from_secs(10),
        "both servers in the Endpoints",
        || async {
            let e = eps.get("kubernetes").await.unwrap();
            addresses(&e) == ["192.0.2.10", "192.0.2.11"]
        },
    )
    .await;
    let e = eps.get("kubernetes").await.unwrap();
    assert_eq!(
        e.metadata.labels.unwrap()["endpointslice.kubernetes.io/skip-mirror"],
        "true"
    );
    let slice = slices.get("kubernetes").await.unwrap();
    assert_eq!(slice.endpoints.len(), 2);
    assert_eq!(slice.ports.unwrap()[0].port, Some(6443));
    // The second stops cleanly: gone from both at once.
    r2.stop().await;
    let e = eps.get("kubernetes").await.unwrap();
    assert_eq!(addresses(&e), ["192.0.2.10"]);
    let slice = slices.get("kubernetes").await.unwrap();
    assert_eq!(slice.endpoints.len(), 1);
    assert_eq!(slice.endpoints[0].addresses, ["192.0.2.10"]);
    // One that dies (no clean stop: its lease stops moving) drops out after three intervals.
    c.store
        .create("masterleases/192.0.2.12:6443", bytes::Bytes::from("{}"))
        .await
        .unwrap();
    until(
        Duration::from_secs(10),
        "a new lease is taken as live",
        || async {
            let e = eps.get("kubernetes").await.unwrap();
            addresses(&e) == ["192.0.2.10", "192.0.2.12"]
        },
    )
    .await;
    until(
        Duration::from_secs(10),
        "a lease that stopped moving expires",
        || async {
            let e = eps.get("kubernetes").await.unwrap();
            addresses(&e) == ["192.0.2.10"]
        },
    )
    .await;
    assert!(
        c.store
            .get("masterleases/192.0.2.12:6443")
            .await
            .unwrap()
            .is_none(),
        "and is removed"
    );
    r1.stop().await;
}
