//! The API server on a socket through `capstan_apiserver::serve` (issue 16): connections that
//! never finish their headers are closed, kept-alive connections time out when idle but never
//! mid-request, connections over the cap get a 503 Status, and `/readyz` keeps answering. Also
//! the HTTP checks done there (Host) and a malformed chunked body. Loopback only; a handful of
//! connections each.

use std::net::SocketAddr;
use std::time::Duration;

use capstan_apiserver::ServeLimits;
use capstan_testkit::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const READYZ: &[u8] = b"GET /readyz HTTP/1.1\r\nHost: capstan\r\nConnection: close\r\n\r\n";

struct Server {
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
    _cluster: TestCluster,
}

/// The API server of a TestCluster, served again over plain HTTP on a socket of its own within
/// `limits`. Every request is allowed (these tests are about connections; auth has its own).
async fn start(limits: ServeLimits) -> Server {
    let cluster = TestCluster::with_config(capstan_apiserver::Config {
        auth: capstan_apiserver::auth::AuthConfig {
            mode: capstan_apiserver::auth::Mode::AlwaysAllow,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let api = cluster.api.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = capstan_apiserver::router(api);
    tokio::spawn(capstan_apiserver::serve(listener, router, limits, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        _stop: stop,
        _cluster: cluster,
    }
}

fn limits(header: u64, idle: u64, max_connections: usize) -> ServeLimits {
    ServeLimits {
        header_read_timeout: Duration::from_millis(header),
        idle_timeout: Duration::from_millis(idle),
        max_connections,
        ..ServeLimits::default()
    }
}

/// Sends `raw` on a new connection and reads until the server closes it (within 5 s).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    String::from_utf8_lossy(&read_to_close(&mut s, Duration::from_secs(5)).await).into_owned()
}

/// Reads until the peer closes; panics after `within`.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection in time");
    out
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

/// Polls /readyz on fresh connections until it answers 200 (within `within`).
async fn ready_within(addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = exchange(addr, READYZ).await;
        if status_line(&r) == "HTTP/1.1 200 OK" {
            return;
        }
        assert!(Instant::now() < deadline, "readyz: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_headers_are_closed_and_readyz_keeps_answering() {
    let s = start(limits(1000, 10_000, 16)).await;
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(s.addr).await.unwrap());
    }
    let mut slow = TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /readyz HTTP/1.1\r\nHo").await.unwrap();

    assert_eq!(
        status_line(&exchange(s.addr, READYZ).await),
        "HTTP/1.1 200 OK"
    );

    for mut c in silent.into_iter().chain([slow]) {
        let got = read_to_close(&mut c, Duration::from_secs(5)).await;
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}, header timeout 1 s"
    );
    assert_eq!(
        status_line(&exchange(s.addr, READYZ).await),
        "HTTP/1.1 200 OK"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_503_status_until_room_frees() {
    let s = start(limits(1000, 10_000, 4)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(s.addr).await.unwrap());
    }
    // Let the server accept them all before the fifth.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let refused = exchange(s.addr, READYZ).await;

    assert_eq!(status_line(&refused), "HTTP/1.1 503 Service Unavailable");
    assert!(refused.contains("retry-after: 1"), "{refused}");
    assert!(
        refused.contains(r#""reason":"ServiceUnavailable""#),
        "{refused}"
    );
    assert!(refused.contains("limit of 4 open connections"), "{refused}");
    // The held connections time out; then there is room again.
    for mut c in held {
        read_to_close(&mut c, Duration::from_secs(5)).await;
    }
    ready_within(s.addr, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_closes_when_idle_but_never_mid_request() {
    let s = start(limits(300, 1500, 16)).await;
    // Idle after a response: closed after the idle timeout, not the header timeout.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /livez HTTP/1.1\r\nHost: capstan\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    let answered = Instant::now();
    read_to_close(&mut c, Duration::from_secs(5)).await;
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(1300) && idle < Duration::from_secs(4),
        "closed after {idle:?} idle, idle timeout 1.5 s"
    );

    // A watch in progress is not idle: it outlives the idle timeout and still delivers.
    let mut w = TcpStream::connect(s.addr).await.unwrap();
    w.write_all(
        b"GET /api/v1/namespaces/default/configmaps?watch=1 HTTP/1.1\r\nHost: capstan\r\n\r\n",
    )
    .await
    .unwrap();
    let n = w.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let cm = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"late"}}"#;
    let post = format!(
        "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: capstan\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        cm.len(),
        String::from_utf8_lossy(cm)
    );
    assert_eq!(
        status_line(&exchange(s.addr, post.as_bytes()).await),
        "HTTP/1.1 201 Created"
    );
    let n = tokio::time::timeout(Duration::from_secs(5), w.read(&mut buf))
        .await
        .expect("the watch delivers")
        .unwrap();
    let event = String::from_utf8_lossy(&buf[..n]);
    assert!(event.contains(r#""type":"ADDED""#), "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_requests_without_exactly_one_host_get_400() {
    let s = start(ServeLimits::default()).await;
    let none = exchange(s.addr, b"GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_line(&none), "HTTP/1.1 400 Bad Request", "{none}");
    assert!(none.contains("missing required Host header"), "{none}");
    assert!(none.contains(r#""kind":"Status""#), "{none}");
    let two = exchange(
        s.addr,
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&two), "HTTP/1.1 400 Bad Request", "{two}");
    assert!(two.contains("too many Host headers"), "{two}");
    // HTTP/1.0 may leave it out.
    let old = exchange(s.addr, b"GET /readyz HTTP/1.0\r\n\r\n").await;
    assert!(old.starts_with("HTTP/1.0 200 OK"), "{old}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunk_size_is_a_bad_request() {
    let s = start(ServeLimits::default()).await;
    let r = exchange(
        s.addr,
        b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: capstan\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&r), "HTTP/1.1 400 Bad Request", "{r}");
    assert!(r.contains("the request body could not be read"), "{r}");
}
