//! The ingress proxy against a real in-process API server, over real sockets: Ingresses,
//! Services, EndpointSlices and Secrets written through the API; the endpoints are HTTP
//! servers on 127.0.0.1 that answer with their name and what they were sent; requests go
//! through the proxy's HTTP and HTTPS listeners (HTTP/1.1, HTTP/2 by ALPN, a WebSocket).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocketUpgrade};
use capstan_node_agent::ingress::{self, IngressConfig, IngressMetrics, IngressProxy};
use capstan_testkit::{TestCluster, until};
use futures_util::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "default";
const PUBLISHED: &str = "192.0.2.10";

/// An endpoint: answers every GET with `name path` and the forwarded headers it got; echoes
/// text on /ws as a WebSocket.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route(
            "/ws",
            axum::routing::get(move |ws: WebSocketUpgrade| async move {
                ws.on_upgrade(move |mut socket| async move {
                    while let Some(Ok(Message::Text(t))) = socket.recv().await {
                        let reply = format!("{name}: {}", t.as_str());
                        if socket.send(Message::Text(reply.into())).await.is_err() {
                            return;
                        }
                    }
                })
            }),
        )
        .fallback(move |req: axum::extract::Request| async move {
            let h = |k: &str| {
                req.headers()
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            format!(
                "{name} {} xff={} proto={} host={} fhost={}",
                req.uri().path(),
                h("x-forwarded-for"),
                h("x-forwarded-proto"),
                h("host"),
                h("x-forwarded-host")
            )
        });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

async fn service(c: &TestCluster, name: &str) {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(c.client.clone(), NS)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
}

/// The Service's one EndpointSlice: each endpoint's address and whether it is ready. All
/// endpoints of one slice share a port, so each backend gets a slice of its own port.
async fn slice(c: &TestCluster, name: &str, svc: &str, port: u16, ready: bool) {
    let s: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": svc,
            "endpointslice.kubernetes.io/managed-by": "test"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}}]
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(c.client.clone(), NS)
        .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&s))
        .await
        .unwrap();
}

async fn apply_ingress(c: &TestCluster, spec: Value) {
    let ing: Ingress = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web"}, "spec": spec
    }))
    .unwrap();
    Api::<Ingress>::namespaced(c.client.clone(), NS)
        .patch(
            "web",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&ing),
        )
        .await
        .unwrap();
}

fn rule(host: &str, path: &str, svc: &str) -> Value {
    json!({"host": host, "http": {"paths": [{"path": path, "pathType": "Prefix",
        "backend": {"service": {"name": svc, "port": {"number": 80}}}}]}})
}

async fn proxy(c: &TestCluster) -> (IngressProxy, prometheus::Registry) {
    let mut config = IngressConfig::new(
        Some("127.0.0.1:0".parse().unwrap()),
        Some("127.0.0.1:0".parse().unwrap()),
    );
    config.publish_addresses = vec![PUBLISHED.parse().unwrap()];
    config.connect_timeout = Duration::from_secs(1);
    let registry = prometheus::Registry::new();
    let metrics = IngressMetrics::register(&registry).unwrap();
    let p = ingress::start(c.client.clone(), config, metrics)
        .await
        .unwrap();
    (p, registry)
}

/// One HTTP/1.1 GET on a fresh connection: (status, body).
async fn get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
        .await
        .expect("a response within 10 s")
        .unwrap();
    parse(&all)
}

fn parse(all: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(all);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_to_ready_endpoints_and_says_why_when_it_cannot() {
    let c = TestCluster::start().await;
    let (a1, a2, b) = (backend("a1").await, backend("a2").await, backend("b").await);
    for s in ["a", "b", "empty"] {
        service(&c, s).await;
    }
    slice(&c, "a-1", "a", a1.port(), true).await;
    slice(&c, "a-2", "a", a2.port(), true).await;
    slice(&c, "b-1", "b", b.port(), true).await;
    apply_ingress(
        &c,
        json!({"ingressClassName": "capstan",
            "tls": [{"hosts": ["c.example.test"], "secretName": "missing-tls"}],
            "rules": [
            rule("a.example.test", "/", "a"),
            rule("b.example.test", "/api", "b"),
            rule("c.example.test", "/", "empty")]}),
    )
    .await;
    let (p, metrics) = proxy(&c).await;
    let http = p.http.unwrap();
    until(Duration::from_secs(10), "a.example.test routed", || async {
        get(http, "a.example.test", "/").await.0 == 200
    })
    .await;

    // Both ready endpoints take turns; the endpoint sees who asked and how.
    let mut seen = BTreeMap::new();
    for _ in 0..10 {
        let (code, body) = get(http, "a.example.test", "/x?q=1").await;
        assert_eq!(code, 200, "{body}");
        *seen
            .entry(body.split(' ').next().unwrap().to_string())
            .or_insert(0) += 1;
        assert!(
            body.contains(
                " /x xff=203.0.113.9, 127.0.0.1 proto=http host=a.example.test fhost=a.example.test"
            ),
            "{body}"
        );
    }
    assert_eq!(seen.get("a1"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("a2"), Some(&5), "{seen:?}");
    // Longest path within the host; hosts without case or port.
    assert!(
        get(http, "B.example.test:80", "/api/v1")
            .await
            .1
            .starts_with("b /api/v1")
    );
    let (code, body) = get(http, "b.example.test", "/apis").await;
    assert_eq!(
        (code, body.as_str()),
        (
            404,
            "ingress: no Ingress rule matches host \"b.example.test\" and path \"/apis\""
        )
    );
    assert_eq!(get(http, "nowhere.test", "/").await.0, 404);
    let (code, body) = get(http, "c.example.test", "/").await;
    assert_eq!(
        (code, body.as_str()),
        (
            503,
            "ingress: service default/empty has no ready endpoints for port 80"
        )
    );

    // An endpoint failing readiness leaves the rotation.
    slice(&c, "a-2", "a", a2.port(), false).await;
    until(Duration::from_secs(5), "a2 out of the rotation", || async {
        let mut only_a1 = true;
        for _ in 0..4 {
            only_a1 &= get(http, "a.example.test", "/").await.1.starts_with("a1 ");
        }
        only_a1
    })
    .await;
    // A ready endpoint that refuses connections: every request goes on to the next one.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    slice(&c, "a-2", "a", closed, true).await;
    until(
        Duration::from_secs(5),
        "the dead endpoint in the rotation",
        || async {
            // Answered by a1 all the same: the refused connection is skipped.
            let answered = get(http, "a.example.test", "/").await;
            assert_eq!((answered.0, &answered.1[..3]), (200, "a1 "), "{answered:?}");
            metrics_text(&metrics).contains("reason=\"connect\"")
        },
    )
    .await;
    for _ in 0..6 {
        let (code, body) = get(http, "a.example.test", "/").await;
        assert_eq!((code, &body[..3]), (200, "a1 "), "{body}");
    }

    // The Ingress's status names the published address.
    let ings: Api<Ingress> = Api::namespaced(c.client.clone(), NS);
    until(Duration::from_secs(5), "status.loadBalancer", || async {
        let ing = ings.get("web").await.unwrap();
        let lb = ing.status.and_then(|s| s.load_balancer);
        lb.and_then(|l| l.ingress)
            .is_some_and(|l| l.len() == 1 && l[0].ip.as_deref() == Some(PUBLISHED))
    })
    .await;

    // A TLS section whose Secret does not exist: a Warning on the Ingress that says so.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.client.clone(), NS);
    until(Duration::from_secs(5), "the InvalidTLSSecret event", || async {
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("InvalidTLSSecret")
                    && e.type_.as_deref() == Some("Warning")
                    && e.involved_object.name.as_deref() == Some("web")
                    && e.involved_object.kind.as_deref() == Some("Ingress")
                    && e.message.as_deref()
                        == Some("TLS Secret default/missing-tls cannot serve (no such kubernetes.io/tls Secret); its hosts get the proxy's default certificate")
                    && e.source.as_ref().and_then(|s| s.component.as_deref())
                        == Some("capstan-ingress")
            })
    })
    .await;

    // Per-route series.
    let text = metrics_text(&metrics);
    for want in [
        r#"capstan_ingress_requests_total{code="200",host="a.example.test",ingress="default/web",path="/",service="default/a"}"#,
        r#"capstan_ingress_requests_total{code="503",host="c.example.test",ingress="default/web",path="/",service="default/empty"} 1"#,
        r#"capstan_ingress_requests_total{code="404",host="",ingress="",path="",service=""}"#,
        r#"capstan_ingress_request_duration_seconds_count{host="b.example.test",ingress="default/web",path="/api",service="default/b"} 1"#,
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
}

fn metrics_text(r: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&r.gather(), &mut buf)
        .unwrap();
    String::from_utf8(buf).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_apply_at_once_without_failing_a_request_and_websockets_pass_through() {
    let c = TestCluster::start().await;
    let (a, b) = (backend("a").await, backend("b").await);
    for s in ["a", "b"] {
        service(&c, s).await;
    }
    slice(&c, "a-1", "a", a.port(), true).await;
    slice(&c, "b-1", "b", b.port(), true).await;
    apply_ingress(
        &c,
        json!({"ingressClassName": "capstan", "rules": [rule("x.test", "/", "a")]}),
    )
    .await;
    let (p, _) = proxy(&c).await;
    let http = p.http.unwrap();
    until(Duration::from_secs(10), "x.test routed", || async {
        get(http, "x.test", "/").await.0 == 200
    })
    .await;

    // A request loop while the rule moves to b: no request fails, and b answers within a
    // second of the edit.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let looping = {
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                answers.push(get(http, "x.test", "/").await);
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            answers
        })
    };
    until(
        Duration::from_secs(5),
        "the loop answered before the edit",
        || async { sent.load(std::sync::atomic::Ordering::Relaxed) >= 3 },
    )
    .await;
    apply_ingress(
        &c,
        json!({"ingressClassName": "capstan", "rules": [rule("x.test", "/", "b")]}),
    )
    .await;
    let took = until(
        Duration::from_secs(1),
        "b answers after the edit",
        || async { get(http, "x.test", "/").await.1.starts_with("b ") },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = looping.await.unwrap();
    assert!(answers.len() > 5, "{} requests in the loop", answers.len());
    assert!(answers.iter().all(|(code, _)| *code == 200), "{answers:?}");
    assert!(took < Duration::from_secs(1));

    // A WebSocket through the proxy: the upgrade and the frames both ways.
    let stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://x.test/ws", stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
            "hello {i}"
        )))
        .await
        .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), format!("b: hello {i}"));
    }

    // An Ingress of another class is not served.
    let ings: Api<Ingress> = Api::namespaced(c.client.clone(), NS);
    let published = || async {
        let ing = ings.get("web").await.unwrap();
        let ips: Vec<String> = ing
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.ip)
            .collect();
        ips
    };
    until(Duration::from_secs(5), "the status published", || async {
        published().await == [PUBLISHED]
    })
    .await;
    apply_ingress(
        &c,
        json!({"ingressClassName": "nginx", "rules": [rule("x.test", "/", "b")]}),
    )
    .await;
    until(
        Duration::from_secs(2),
        "the other class dropped",
        || async { get(http, "x.test", "/").await.0 == 404 },
    )
    .await;
    // ... and the address this proxy published is taken back out of its status.
    until(Duration::from_secs(5), "the status cleared", || async {
        published().await.is_empty()
    })
    .await;
}

fn tls_secret(name: &str, issued: &capstan_pki::Issued) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": issued.cert_pem, "tls.key": issued.key_pem}
    }))
    .unwrap()
}

/// A TLS connection to the proxy naming `sni`, trusting only `ca`.
async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    ca: &capstan_pki::Ca,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

async fn https_get(
    addr: SocketAddr,
    host: &str,
    ca: &capstan_pki::Ca,
) -> std::io::Result<(u16, String)> {
    let mut s = tls_connect(addr, host, ca, &[b"http/1.1"]).await?;
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all).await; // a close without close_notify is not our concern
    Ok(parse(&all))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_come_from_secrets_by_sni_are_reloaded_and_http2_is_spoken() {
    let c = TestCluster::start().await;
    let a = backend("a").await;
    service(&c, "a").await;
    slice(&c, "a-1", "a", a.port(), true).await;
    let (ca1, ca2) = (
        capstan_pki::Ca::generate().unwrap(),
        capstan_pki::Ca::generate().unwrap(),
    );
    let name = "secure.example.test".to_string();
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), NS);
    secrets
        .create(
            &PostParams::default(),
            &tls_secret(
                "secure-tls",
                &ca1.serving("s", std::slice::from_ref(&name)).unwrap(),
            ),
        )
        .await
        .unwrap();
    apply_ingress(
        &c,
        json!({"ingressClassName": "capstan",
            "tls": [{"hosts": [name], "secretName": "secure-tls"}],
            "rules": [rule(&name, "/", "a")]}),
    )
    .await;
    let (p, _) = proxy(&c).await;
    let https = p.https.unwrap();
    until(
        Duration::from_secs(10),
        "the Secret's certificate served",
        || async {
            https_get(https, &name, &ca1)
                .await
                .is_ok_and(|(code, _)| code == 200)
        },
    )
    .await;
    let (_, body) = https_get(https, &name, &ca1).await.unwrap();
    assert!(body.contains(" proto=https "), "{body}");
    // A name no TLS section covers gets the proxy's own certificate, which ca1 did not sign.
    assert!(https_get(https, "other.example.test", &ca1).await.is_err());

    // HTTP/2 by ALPN.
    let tls = tls_connect(https, &name, &ca1, &[b"h2"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("https://{name}/h2"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.starts_with("a /h2 ") && body.contains(&format!("host={name}")),
        "{body}"
    );

    // A new certificate in the Secret serves from the next handshake on.
    let renewed = tls_secret(
        "secure-tls",
        &ca2.serving("s", std::slice::from_ref(&name)).unwrap(),
    );
    secrets
        .replace("secure-tls", &PostParams::default(), &renewed)
        .await
        .unwrap();
    until(
        Duration::from_secs(5),
        "the renewed certificate served",
        || async { https_get(https, &name, &ca2).await.is_ok() },
    )
    .await;
    assert!(https_get(https, &name, &ca1).await.is_err());
}
