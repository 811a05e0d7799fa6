//! Cluster DNS against a real in-process API server, over real sockets: Services and
//! EndpointSlices written through the API, queries sent over UDP and TCP with hickory's wire
//! format, a fake upstream resolver on 127.0.0.1 for forwarding.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use capstan_node_agent::dns::{self, DnsConfig, DnsMetrics, DnsServer, Zone};
use capstan_testkit::{TestCluster, until};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, PTR, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

async fn udp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    let q = query(name, qtype);
    sock.send(&q).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, u16::from_be_bytes([q[0], q[1]]));
    m
}

async fn tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let q = query(name, qtype);
    stream.write_u16(q.len() as u16).await.unwrap();
    stream.write_all(&q).await.unwrap();
    let len = stream.read_u16().await.unwrap() as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn n(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn ips(m: &Message) -> Vec<Ipv4Addr> {
    a_records(&m.answers)
}

fn a_records(records: &[Record]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = records
        .iter()
        .filter_map(|r| match r.data {
            RData::A(A(ip)) => Some(ip),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// A resolver on 127.0.0.1 that answers `example.com.` A with 192.0.2.1 and everything else
/// NXDOMAIN, counting the queries it gets.
async fn fake_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, peer) = sock.recv_from(&mut buf).await.unwrap();
            seen.fetch_add(1, Ordering::SeqCst);
            let q = Message::from_vec(&buf[..len]).unwrap();
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.add_queries(q.queries.clone());
            let question = &q.queries[0];
            if question.name() == &n("example.com.") && question.query_type() == RecordType::A {
                r.add_answer(Record::from_rdata(
                    n("example.com."),
                    300,
                    RData::A(A::new(192, 0, 2, 1)),
                ));
            } else {
                r.metadata.response_code = ResponseCode::NXDomain;
            }
            sock.send_to(&r.to_vec().unwrap(), peer).await.unwrap();
        }
    });
    (addr, count)
}

async fn create<K>(api: &Api<K>, obj: serde_json::Value) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    api.create(
        &PostParams::default(),
        &serde_json::from_value(obj).unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dns_answers_services_endpoints_and_forwards_the_rest() {
    let c = TestCluster::start().await;
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    let web = create(
        &services,
        serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                               {"name": "metrics", "port": 9090, "protocol": "UDP"}]},
        }),
    )
    .await;
    let web_ip: Ipv4Addr = web.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    create(
        &services,
        serde_json::json!({
            "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]},
        }),
    )
    .await;
    create(
        &slices,
        serde_json::json!({
            "metadata": {"name": "db-1", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.1.0.2"]},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": false}},
            ],
        }),
    )
    .await;
    create(
        &services,
        serde_json::json!({
            "metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.com"},
        }),
    )
    .await;

    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.client.clone());
    let node = create(&nodes, serde_json::json!({"metadata": {"name": "node-1"}})).await;

    let (upstream, upstream_queries) = fake_upstream().await;
    let mut cfg = DnsConfig::new("127.0.0.1:0".parse().unwrap(), "node-1");
    cfg.upstreams = vec![upstream];
    cfg.publish_resync = Duration::from_millis(100);
    let registry = prometheus::Registry::new();
    let server = dns::start(c.client.clone(), cfg, &registry).await.unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    assert!(
        server.wait_synced(Duration::from_secs(10)).await,
        "initial lists loaded"
    );

    // A ClusterIP Service: its ClusterIP, TTL 5, authoritative, over UDP and TCP alike.
    for m in [
        udp(addr, "web.default.svc.cluster.local.", RecordType::A).await,
        tcp(addr, "web.default.svc.cluster.local.", RecordType::A).await,
    ] {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(ips(&m), vec![web_ip]);
        assert_eq!(m.answers[0].ttl, 5);
    }
    // AAAA of a v4-only name: NODATA with the SOA.
    let m = udp(addr, "web.default.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    // Unknown: NXDOMAIN with the SOA.
    let m = udp(addr, "nope.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    // SRV for named ports, with the target's A in additionals.
    let m = udp(
        addr,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    let RData::SRV(srv) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(
        (srv.port, srv.target.clone()),
        (80, n("web.default.svc.cluster.local."))
    );
    assert_eq!(a_records(&m.additionals), vec![web_ip]);
    let m = udp(
        addr,
        "_metrics._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(m.answers.len(), 1);
    // PTR of the ClusterIP.
    let o = web_ip.octets();
    let reverse = format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0]);
    let m = udp(addr, &reverse, RecordType::PTR).await;
    assert_eq!(
        m.answers[0].data,
        RData::PTR(PTR(n("web.default.svc.cluster.local.")))
    );

    // Headless: one A per ready endpoint, hostname records, SRV per endpoint, PTR.
    let m = tcp(addr, "db.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(
        ips(&m),
        vec![Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2)]
    );
    let m = udp(addr, "db-0.db.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(ips(&m), vec![Ipv4Addr::new(10, 1, 0, 1)]);
    let m = udp(
        addr,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(m.answers.len(), 2);
    assert_eq!(m.additionals.len(), 2);
    let m = udp(addr, "1.0.1.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(
        m.answers[0].data,
        RData::PTR(PTR(n("db-0.db.default.svc.cluster.local.")))
    );

    // ExternalName: a CNAME, and for an A query its target resolved upstream.
    let m = udp(addr, "ext.default.svc.cluster.local.", RecordType::CNAME).await;
    assert_eq!(m.answers[0].data, RData::CNAME(CNAME(n("example.com."))));
    let m = udp(addr, "ext.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.answers.len(), 2, "{m:?}");
    assert_eq!(ips(&m), vec![Ipv4Addr::new(192, 0, 2, 1)]);

    let m = udp(addr, "dns-version.cluster.local.", RecordType::TXT).await;
    assert_eq!(
        m.answers[0].data,
        RData::TXT(TXT::new(vec!["1.1.0".into()]))
    );

    // Everything else goes upstream, and comes back with our client's ID.
    let before = upstream_queries.load(Ordering::SeqCst);
    let m = udp(addr, "example.com.", RecordType::A).await;
    assert_eq!(ips(&m), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    let m = tcp(addr, "missing.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(upstream_queries.load(Ordering::SeqCst), before + 2);

    // Changes are seen within a deadline.
    create(
        &services,
        serde_json::json!({"metadata": {"name": "late"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .await;
    until(
        Duration::from_secs(10),
        "a new Service resolves",
        || async {
            udp(addr, "late.default.svc.cluster.local.", RecordType::A)
                .await
                .answers
                .len()
                == 1
        },
    )
    .await;
    slices
        .delete("db-1", &DeleteParams::default())
        .await
        .unwrap();
    until(
        Duration::from_secs(10),
        "a deleted slice's endpoints go",
        || async {
            udp(addr, "db.default.svc.cluster.local.", RecordType::A)
                .await
                .answers
                .is_empty()
        },
    )
    .await;

    // Published as an endpoint of kube-system/kube-dns with the actual port.
    let system: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "kube-system");
    until(
        Duration::from_secs(10),
        "the kube-dns EndpointSlice is published",
        || async { system.get_opt("kube-dns-node-1").await.unwrap().is_some() },
    )
    .await;
    let published = system.get("kube-dns-node-1").await.unwrap();
    let labels = published.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/service-name").map(String::as_str),
        Some("kube-dns")
    );
    assert_eq!(
        labels
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("capstan-agent")
    );
    let ports: Vec<(String, String, i32)> = published
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap(),
                p.protocol.clone().unwrap(),
                p.port.unwrap(),
            )
        })
        .collect();
    let port = addr.port() as i32;
    assert_eq!(
        ports,
        vec![
            ("dns".into(), "UDP".into(), port),
            ("dns-tcp".into(), "TCP".into(), port)
        ]
    );
    assert_eq!(
        published.endpoints[0].addresses,
        vec!["127.0.0.1".to_string()]
    );
    assert_eq!(published.endpoints[0].node_name.as_deref(), Some("node-1"));
    let owners = published
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    assert_eq!(
        owners.len(),
        1,
        "owned by its Node, for the garbage collector"
    );
    assert_eq!(
        (owners[0].kind.as_str(), &owners[0].uid),
        ("Node", node.metadata.uid.as_ref().unwrap())
    );

    // Level-triggered: a deleted slice is written again.
    let uid = published.metadata.uid.clone();
    system
        .delete("kube-dns-node-1", &DeleteParams::default())
        .await
        .unwrap();
    until(
        Duration::from_secs(10),
        "the deleted kube-dns EndpointSlice is written again",
        || async {
            system
                .get_opt("kube-dns-node-1")
                .await
                .unwrap()
                .is_some_and(|s| s.metadata.uid != uid)
        },
    )
    .await;

    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        metrics.contains("capstan_agent_dns_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("capstan_agent_dns_forward_requests_total"),
        "{metrics}"
    );

    // A clean shutdown removes it.
    server.shutdown().await.unwrap();
    assert!(system.get_opt("kube-dns-node-1").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_servfail_within_the_timeout() {
    // One upstream that never answers (bound, silent) and one with nothing listening.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let closed = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = DnsConfig::new("127.0.0.1:0".parse().unwrap(), "node-1");
    cfg.publish = false;
    cfg.upstreams = vec![closed, silent.local_addr().unwrap()];
    cfg.forward_timeout = Duration::from_millis(500);
    let zone = Zone::new("cluster.local", 5).unwrap();
    let server = DnsServer::serve(zone, &cfg, DnsMetrics::unregistered(), true)
        .await
        .unwrap();
    let started = Instant::now();
    let m = udp(server.local_addr(), "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let m = tcp(server.local_addr(), "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    // The cluster zone still answers.
    let m = udp(
        server.local_addr(),
        "dns-version.cluster.local.",
        RecordType::TXT,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_never_forwards_to_itself() {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut cfg = DnsConfig::new(listen, "node-1");
    cfg.publish = false;
    cfg.forward_timeout = Duration::from_millis(300);
    // Bind first to learn a port, then configure that very port as the upstream.
    let zone = Zone::new("cluster.local", 5).unwrap();
    let probe = DnsServer::serve(zone, &cfg, DnsMetrics::unregistered(), true)
        .await
        .unwrap();
    let addr = probe.local_addr();
    drop(probe);
    cfg.listen = addr;
    cfg.upstreams = vec![addr];
    let zone = Zone::new("cluster.local", 5).unwrap();
    let server = until_bound(&cfg, zone).await;
    let m = udp(server.local_addr(), "example.com.", RecordType::A).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::ServFail,
        "no upstream left, no loop"
    );
}

/// The port of a just-dropped server can take a moment to be free again.
async fn until_bound(cfg: &DnsConfig, zone: Zone) -> DnsServer {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut zone = Some(zone);
    loop {
        let z = zone
            .take()
            .unwrap_or_else(|| Zone::new("cluster.local", 5).unwrap());
        match DnsServer::serve(z, cfg, DnsMetrics::unregistered(), true).await {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let mut cfg = DnsConfig::new("127.0.0.1:0".parse().unwrap(), "node-1");
    cfg.publish = false;
    cfg.upstreams = vec!["127.0.0.1:9".parse().unwrap()];
    let mut zone = Zone::new("cluster.local", 5).unwrap();
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "big", "namespace": "default"},
        "spec": {"clusterIP": "None"},
    }))
    .unwrap();
    zone.apply_service(&svc);
    let endpoints: Vec<serde_json::Value> = (1..=60)
        .map(|i| serde_json::json!({"addresses": [format!("10.2.0.{i}")]}))
        .collect();
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "big-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "big"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
    }))
    .unwrap();
    zone.apply_slice(&slice);
    let server = DnsServer::serve(zone, &cfg, DnsMetrics::unregistered(), true)
        .await
        .unwrap();
    let m = udp(
        server.local_addr(),
        "big.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert!(
        m.metadata.truncation,
        "60 A records do not fit in 512 bytes"
    );
    assert!(m.answers.is_empty());
    let m = tcp(
        server.local_addr(),
        "big.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_upstream_answer_is_asked_again_over_tcp() {
    // The upstream says "truncated" over UDP and answers in full over TCP, on one port.
    // The UDP port the kernel picks may be taken for TCP by another test: try a few.
    let mut pair = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            pair = Some((udp, tcp));
            break;
        }
    }
    let (udp_sock, tcp_listener) = pair.expect("a port free for both UDP and TCP");
    let upstream = udp_sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, peer) = udp_sock.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..len]).unwrap();
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.add_queries(q.queries.clone());
            r.metadata.truncation = true;
            udp_sock.send_to(&r.to_vec().unwrap(), peer).await.unwrap();
        }
    });
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tcp_listener.accept().await.unwrap();
            let len = stream.read_u16().await.unwrap() as usize;
            let mut buf = vec![0u8; len];
            stream.read_exact(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf).unwrap();
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.add_queries(q.queries.clone());
            r.add_answer(Record::from_rdata(
                n("big.example."),
                60,
                RData::A(A::new(192, 0, 2, 7)),
            ));
            let bytes = r.to_vec().unwrap();
            stream.write_u16(bytes.len() as u16).await.unwrap();
            stream.write_all(&bytes).await.unwrap();
        }
    });
    let mut cfg = DnsConfig::new("127.0.0.1:0".parse().unwrap(), "node-1");
    cfg.publish = false;
    cfg.upstreams = vec![upstream];
    let server = DnsServer::serve(
        Zone::new("cluster.local", 5).unwrap(),
        &cfg,
        DnsMetrics::unregistered(),
        true,
    )
    .await
    .unwrap();
    let m = udp(server.local_addr(), "big.example.", RecordType::A).await;
    assert!(!m.metadata.truncation);
    assert_eq!(ips(&m), vec![Ipv4Addr::new(192, 0, 2, 7)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_through_another_address_is_detected_and_stops_forwarding() {
    // A relay standing for the kube-dns ClusterIP: what it gets goes to the server, and back.
    let relay = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let relay_addr = relay.local_addr().unwrap();
    let target: Arc<std::sync::OnceLock<SocketAddr>> = Arc::default();
    {
        let (relay, target) = (relay.clone(), target.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let (len, peer) = relay.recv_from(&mut buf).await.unwrap();
                let bytes = buf[..len].to_vec();
                let (relay, target) = (relay.clone(), target.clone());
                tokio::spawn(async move {
                    // The server's address is known once it is bound.
                    let server = loop {
                        match target.get() {
                            Some(a) => break *a,
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    };
                    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    sock.send_to(&bytes, server).await.unwrap();
                    let mut buf = vec![0u8; 65535];
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await
                    {
                        let _ = relay.send_to(&buf[..n], peer).await;
                    }
                });
            }
        });
    }
    let mut cfg = DnsConfig::new("127.0.0.1:0".parse().unwrap(), "node-1");
    cfg.publish = false;
    cfg.upstreams = vec![relay_addr];
    cfg.forward_timeout = Duration::from_secs(1);
    let zone = Zone::new("cluster.local", 5).unwrap();
    let server = DnsServer::serve(zone, &cfg, DnsMetrics::unregistered(), true)
        .await
        .unwrap();
    target.set(server.local_addr()).unwrap();
    until(
        Duration::from_secs(5),
        "the start-up probe comes back: a loop",
        || async { server.forwarding_loop_detected() },
    )
    .await;
    // From then on nothing is forwarded: SERVFAIL at once, not after a trip round the loop.
    let started = Instant::now();
    let m = udp(server.local_addr(), "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}
