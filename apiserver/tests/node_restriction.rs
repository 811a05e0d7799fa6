//! Node restriction (issue 20): a node agent's credentials (`system:node:NAME` in
//! `system:nodes`) reach only what its own pods use and change only its own Node, Lease and
//! pods — another node's pods, Secrets and accounts are refused with the node authorizer's
//! reason.

use capstan_testkit::{TestCluster, api_error};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_only_what_its_own_pods_use() {
    let c = TestCluster::start().await;
    let pp = PostParams::default();
    let admin_secrets = Api::<Secret>::namespaced(c.client.clone(), "default");
    for name in ["used", "unused"] {
        admin_secrets
            .create(
                &pp,
                &obj(json!({"metadata": {"name": name}, "stringData": {"k": "v"}})),
            )
            .await
            .unwrap();
    }
    Api::<ConfigMap>::namespaced(c.client.clone(), "default")
        .create(
            &pp,
            &obj(json!({"metadata": {"name": "env"}, "data": {"k": "v"}})),
        )
        .await
        .unwrap();
    for sa in ["default", "builder"] {
        Api::<ServiceAccount>::namespaced(c.client.clone(), "default")
            .create(&pp, &obj(json!({"metadata": {"name": sa}})))
            .await
            .unwrap();
    }
    let pods = Api::<Pod>::namespaced(c.client.clone(), "default");
    pods.create(
        &pp,
        &obj(
            json!({"metadata": {"name": "mine"}, "spec": {"nodeName": "n1",
            "volumes": [{"name": "s", "secret": {"secretName": "used"}}],
            "containers": [{"name": "c", "image": "busybox", "env": [
                {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "env", "key": "k"}}}]}]}}),
        ),
    )
    .await
    .unwrap();
    pods.create(
        &pp,
        &obj(
            json!({"metadata": {"name": "theirs"}, "spec": {"nodeName": "n2",
            "serviceAccountName": "builder", "containers": [{"name": "c", "image": "busybox"}]}}),
        ),
    )
    .await
    .unwrap();

    let n1 = c.client_as("system:node:n1", &["system:nodes"]).await;
    let secrets = Api::<Secret>::namespaced(n1.clone(), "default");
    let n1_pods = Api::<Pod>::namespaced(n1.clone(), "default");

    // Reads: what its pod uses, nothing else, never a list.
    secrets.get("used").await.unwrap();
    Api::<ConfigMap>::namespaced(n1.clone(), "default")
        .get("env")
        .await
        .unwrap();
    let e = api_error(secrets.get("unused").await.unwrap_err());
    assert_eq!(e.0, 403);
    assert!(
        e.2.contains("User \"system:node:n1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": node 'n1' has no relationship with secrets 'default/unused'"),
        "{e:?}"
    );
    assert_eq!(
        api_error(secrets.list(&ListParams::default()).await.unwrap_err()).0,
        403
    );
    // The other node cannot read what n1's pod uses.
    let n2 = c.client_as("system:node:n2", &["system:nodes"]).await;
    assert_eq!(
        api_error(
            Api::<Secret>::namespaced(n2, "default")
                .get("used")
                .await
                .unwrap_err()
        )
        .0,
        403
    );
    // A certificate that names a node but is not in system:nodes is no node (plain RBAC).
    let pretender = c.client_as("system:node:n1", &[]).await;
    assert_eq!(
        api_error(
            Api::<Secret>::namespaced(pretender, "default")
                .get("used")
                .await
                .unwrap_err()
        )
        .0,
        403
    );

    // Writes: its pods' status, not another node's pods.
    let status = Patch::Merge(json!({"status": {"message": "seen"}}));
    n1_pods
        .patch_status("mine", &PatchParams::default(), &status)
        .await
        .unwrap();
    let e = api_error(
        n1_pods
            .patch_status("theirs", &PatchParams::default(), &status)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, 403);
    assert!(e.2.contains("it is bound to another node"), "{e:?}");
    assert_eq!(
        api_error(
            n1_pods
                .delete("theirs", &DeleteParams::default())
                .await
                .unwrap_err()
        )
        .0,
        403
    );
    let e = api_error(
        n1_pods
            .create(
                &pp,
                &obj(
                    json!({"metadata": {"name": "sneaky"}, "spec": {"nodeName": "n1",
                "containers": [{"name": "c", "image": "busybox"}]}}),
                ),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, 403, "{e:?}");

    // Its own Node and Lease only.
    let nodes = Api::<Node>::all(n1.clone());
    nodes
        .create(&pp, &obj(json!({"metadata": {"name": "n1"}})))
        .await
        .unwrap();
    let e = api_error(
        nodes
            .create(&pp, &obj(json!({"metadata": {"name": "n2"}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, 403);
    assert!(e.2.contains("node 'n1' may not create node 'n2'"), "{e:?}");
    Api::<Node>::all(c.client.clone())
        .create(&pp, &obj(json!({"metadata": {"name": "n2"}})))
        .await
        .unwrap();
    let labels = Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}));
    nodes
        .patch("n1", &PatchParams::default(), &labels)
        .await
        .unwrap();
    assert_eq!(
        api_error(
            nodes
                .patch("n2", &PatchParams::default(), &labels)
                .await
                .unwrap_err()
        )
        .0,
        403
    );
    let leases = Api::<Lease>::namespaced(n1.clone(), "kube-node-lease");
    leases
        .create(&pp, &obj(json!({"metadata": {"name": "n1"}})))
        .await
        .unwrap();
    assert_eq!(
        api_error(
            leases
                .create(&pp, &obj(json!({"metadata": {"name": "n2"}})))
                .await
                .unwrap_err()
        )
        .0,
        403
    );

    // Tokens: for the account its pod runs as, not for another node's pod's account.
    let sas = Api::<ServiceAccount>::namespaced(n1, "default");
    sas.create_token_request("default", &pp, &TokenRequest::default())
        .await
        .unwrap();
    let e = api_error(
        sas.create_token_request("builder", &pp, &TokenRequest::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, 403);
    assert!(
        e.2.contains("has no pod running as serviceaccount 'default/builder'"),
        "{e:?}"
    );
}
