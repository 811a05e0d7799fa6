//! Lists served from the watch cache: the cached objects' JSON written as it is and streamed in
//! chunks must be the same document a list from the store makes (parsed objects serialized).

use capstan_testkit::TestCluster;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

async fn get(c: &TestCluster, path: &str) -> Value {
    let req = axum::http::Request::get(path).body(Vec::new()).unwrap();
    let text = c.client.request_text(req).await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not one JSON document: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_list_is_the_store_list_over_many_chunks() {
    let c = TestCluster::start().await;
    for ns in ["a", "b"] {
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client.clone());
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    }
    // 150 ConfigMaps of 1 KiB (with quotes and non-ASCII to escape) in a, 10 in b: the list is
    // about three 64 KiB chunks.
    for (ns, n) in [("a", 150), ("b", 10)] {
        let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), ns);
        for i in 0..n {
            let cm = json!({"metadata": {"name": format!("cm-{i:03}"),
                                         "labels": {"parity": if i % 2 == 0 { "even" } else { "odd" }}},
                            "data": {"v": format!("\"é\"{}", "x".repeat(1024))}});
            api.create(&PostParams::default(), &serde_json::from_value(cm).unwrap())
                .await
                .unwrap();
        }
    }
    let names = |l: &Value| -> Vec<String> {
        (l["items"].as_array().unwrap().iter())
            .map(|o| {
                format!(
                    "{}/{}",
                    o["metadata"]["namespace"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    for (path, want) in [
        ("/api/v1/namespaces/a/configmaps", 150),
        // 150 in a, 10 in b, and kube-system/extension-apiserver-authentication.
        ("/api/v1/configmaps", 161),
        ("/api/v1/configmaps?labelSelector=parity%3Dodd", 80),
        (
            "/api/v1/namespaces/b/configmaps?fieldSelector=metadata.name%3Dcm-003",
            1,
        ),
    ] {
        let cached = get(&c, path).await;
        // A limit reads the store, page by page (1,000 is more than there are).
        let sep = if path.contains('?') { '&' } else { '?' };
        let stored = get(&c, &format!("{path}{sep}limit=1000")).await;
        assert_eq!(names(&cached).len(), want, "{path}");
        assert_eq!(cached["items"], stored["items"], "{path}");
        assert_eq!(cached["kind"], "ConfigMapList");
        assert_eq!(cached["apiVersion"], "v1");
        assert!(
            cached["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap()
                > 0
        );
    }
    // An empty list is still a whole document.
    let empty = get(
        &c,
        "/api/v1/namespaces/default/configmaps?labelSelector=parity%3Dnone",
    )
    .await;
    assert_eq!(empty["items"], json!([]));
}
