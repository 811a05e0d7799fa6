//! The refusals the streaming subresources (pods/exec, attach, portforward) give before any
//! agent is reached: a method other than GET/POST, a finished pod, a request that is no
//! upgrade — each a Status with Kubernetes' words.

use capstan_testkit::{TestCluster, http_request};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_subresources_refuse_what_no_agent_could_serve() {
    let c = TestCluster::start().await;
    let addr = c.addr.to_string();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ask = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let (code, body) = http_request(&addr, method, path, headers, b"").unwrap();
        let s: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
        (code, s["message"].as_str().unwrap_or_default().to_string())
    };
    let base = "/api/v1/namespaces/default/pods/p";
    let exec = format!("{base}/exec?command=ls&stdout=true");
    let attach = format!("{base}/attach?stdout=true");
    let forward = format!("{base}/portforward?ports=80");
    for (path, sub) in [
        (&exec, "exec"),
        (&attach, "attach"),
        (&forward, "portforward"),
    ] {
        assert_eq!(
            ask("PUT", path, &[]),
            (405, format!("PUT is not supported on pods/{sub}"))
        );
        assert_eq!(
            ask("GET", path, &[]),
            (400, "Upgrade request required".into())
        );
    }
    let spdy = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
    let (code, msg) = ask("POST", &exec, &spdy);
    assert_eq!(code, 400);
    assert!(msg.starts_with("SPDY is not supported"), "{msg}");

    pods.patch_status(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .unwrap();
    for (path, words) in [
        (&exec, "cannot exec into a container in a completed pod"),
        (&attach, "cannot attach to a container in a completed pod"),
        (&forward, "cannot port-forward to a completed pod"),
    ] {
        assert_eq!(
            ask("POST", path, &spdy),
            (400, format!("{words}; current phase is Succeeded"))
        );
    }
}
