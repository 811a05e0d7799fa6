//! The in-flight limits over HTTPS (issue 20): a request past its pool's limit gets 429 with
//! Retry-After; read-only and mutating pools are separate; watches, health checks and
//! system:masters are not counted; a seat comes back when its request ends.

use std::io::Write;
use std::time::Duration;

use capstan_apiserver::auth::{AuthConfig, token_file::TokenFile};
use capstan_apiserver::http::inflight::Limits;
use capstan_testkit::{TestCluster, pki, tls_exchange, until};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_limits_get_429_and_seats_come_back() {
    let c = TestCluster::with_config(capstan_apiserver::Config {
        auth: AuthConfig {
            tokens: TokenFile::parse("tok-a,alice,1\ntok-b,bob,2\n").unwrap(),
            ..Default::default()
        },
        inflight: Limits {
            readonly: 4,
            mutating: 1,
        },
        ..Default::default()
    })
    .await;
    let rbs: Api<RoleBinding> = Api::namespaced(c.client.clone(), "default");
    for user in ["alice", "bob"] {
        let b: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}],
        }))
        .unwrap();
        rbs.create(&PostParams::default(), &b).await.unwrap();
    }
    let addr = c.addr.to_string();
    let post = |token: &'static str, name: String| {
        let addr = addr.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let auth = format!("Bearer {token}");
                let body = format!(r#"{{"metadata":{{"name":"{name}"}}}}"#);
                tls_exchange(
                    &addr,
                    Some(pki::pki().anonymous_tls()),
                    "POST",
                    "/api/v1/namespaces/default/configmaps",
                    &[
                        ("Authorization", &auth),
                        ("Content-Type", "application/json"),
                    ],
                    body.as_bytes(),
                )
                .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let get = |token: &'static str, path: &'static str| {
        let addr = addr.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let auth = format!("Bearer {token}");
                tls_exchange(
                    &addr,
                    Some(pki::pki().anonymous_tls()),
                    "GET",
                    path,
                    &[("Authorization", &auth)],
                    b"",
                )
                .unwrap()
                .0
            })
            .await
            .unwrap()
        }
    };
    until(
        Duration::from_secs(5),
        "alice may create configmaps",
        || {
            let p = post("tok-a", format!("warm-{}", fastrand::u32(..)));
            async move { p.await.0 == 201 }
        },
    )
    .await;

    // alice's POST whose body never finishes holds the one mutating seat.
    let held_addr = addr.clone();
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (sent_tx, sent_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let tcp = std::net::TcpStream::connect(&held_addr).unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(pki::pki().anonymous_tls(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        write!(
            tls,
            "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-a\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"metadata\":"
        )
        .unwrap();
        tls.flush().unwrap();
        sent_tx.send(()).unwrap();
        let _ = held_rx.recv(); // until the test is done with the held seat
    });
    sent_rx.recv().unwrap();
    until(Duration::from_secs(5), "the seat is taken", || {
        let inflight = c.api.inflight.clone();
        async move { inflight.held().1 == 1 }
    })
    .await;

    let (code, head, body) = post("tok-a", "c2".into()).await;
    assert_eq!(code, 429, "{body}");
    assert!(
        head.iter()
            .any(|h| h.eq_ignore_ascii_case("retry-after: 1")),
        "{head:?}"
    );
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (s["reason"].as_str(), s["message"].as_str()),
        (
            Some("TooManyRequests"),
            Some("Too many requests, please try again later.")
        )
    );
    assert_eq!(
        post("tok-b", "c3".into()).await.0,
        429,
        "the pool is full for bob too"
    );
    // Reads have their own pool; watches, health and system:masters are not counted.
    assert_eq!(
        get("tok-a", "/api/v1/namespaces/default/configmaps").await,
        200
    );
    assert_eq!(
        get(
            "tok-b",
            "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1"
        )
        .await,
        200
    );
    assert_eq!(get("tok-b", "/readyz").await, 200);
    let (code, _, _) = tls_exchange(
        &addr,
        None,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        &[("Content-Type", "application/json")],
        br#"{"metadata":{"name":"by-admin"}}"#,
    )
    .unwrap();
    assert_eq!(code, 201);
    let (_, _, metrics) = tls_exchange(&addr, None, "GET", "/metrics", &[], b"").unwrap();
    assert!(
        metrics.contains("apiserver_request_denied_total{reason=\"too_many_requests\"} 2"),
        "{metrics}"
    );

    // The held request ends: its seat comes back.
    held_tx.send(()).unwrap();
    holder.join().unwrap();
    until(Duration::from_secs(5), "bob's POST goes through", || {
        let p = post("tok-b", "c4".into());
        async move { p.await.0 == 201 }
    })
    .await;
    assert_eq!(c.api.inflight.held(), (0, 0));
}
