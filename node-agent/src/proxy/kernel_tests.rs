//! Tests against the kernel: need root and `nft` (each skips with a printed reason otherwise).
//! Every test works in its own table, `capstan-test-<pid>-<n>`, deleted by a guard even when
//! the test fails; the traffic test's dummy interface is removed the same way.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::model::{Endpoint, Protocol, ServicePort, ServicePortName, State, TableConfig};
use super::nft::Nft;
use super::sync::{Metrics, SyncKind, Syncer};

/// Why kernel tests cannot run here, if they cannot.
pub(crate) fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".into());
    }
    match Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("nft is not installed".into()),
    }
}

macro_rules! require_kernel {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("skipping kernel test: {reason}");
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_kernel;

/// A scratch table name, deleted on drop.
pub(crate) struct Table(pub String);

impl Table {
    pub(crate) fn scratch() -> Table {
        static N: AtomicU32 = AtomicU32::new(0);
        Table(format!(
            "capstan-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.0])
            .output();
    }
}

pub(crate) fn nft_out(args: &[&str]) -> String {
    let o = Command::new("nft").args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

pub(crate) fn table_text(table: &str) -> String {
    nft_out(&["list", "table", "ip", table])
}

fn key(name: &str) -> ServicePortName {
    ServicePortName {
        namespace: "ns".into(),
        name: name.into(),
        port: "http".into(),
        protocol: Protocol::Tcp,
    }
}

fn ready(ip: &str, port: u16) -> Endpoint {
    Endpoint::ready(ip.parse().unwrap(), port)
}

fn two_services(table: &str) -> State {
    let mut s = State::new(TableConfig::new(table));
    let mut web = ServicePort::cluster_ip(
        "10.97.0.10".parse().unwrap(),
        80,
        vec![ready("10.98.0.5", 8080), ready("10.98.0.6", 8080)],
    );
    web.affinity_timeout = Some(600);
    web.node_port = Some(30080);
    s.services.insert(key("web"), web);
    s.services.insert(
        key("api"),
        ServicePort::cluster_ip(
            "10.97.0.20".parse().unwrap(),
            443,
            vec![ready("10.98.0.7", 8443)],
        ),
    );
    s.services.insert(
        key("empty"),
        ServicePort::cluster_ip("10.97.0.30".parse().unwrap(), 80, vec![]),
    );
    s
}

fn syncer() -> Syncer {
    Syncer::new(Nft::new("nft"), Metrics::new())
}

/// `nft -a list chain` of the chain named `prefix-HASH-…needle…`: its rules with handles.
fn chain_with_handles(table: &str, prefix: &str, needle: &str) -> String {
    let text = table_text(table);
    let name = text
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("chain ")
                .and_then(|r| r.strip_suffix(" {"))
                .filter(|n| n.starts_with(prefix) && n.contains(needle))
        })
        .unwrap_or_else(|| panic!("no chain with {needle} in {text}"))
        .to_string();
    nft_out(&["-a", "list", "chain", "ip", table, &name])
}

#[tokio::test]
async fn a_state_is_programmed_into_the_kernel_and_reads_back() {
    require_kernel!();
    let t = Table::scratch();
    let mut s = syncer();
    assert_eq!(s.sync(two_services(&t.0)).await.unwrap(), SyncKind::Full);
    let text = table_text(&t.0);
    for want in [
        "10.97.0.10 . tcp . 80 : goto service-",
        "10.97.0.20 . tcp . 443 : goto service-",
        "10.97.0.30 . tcp . 80 : goto reject-chain",
        "tcp . 30080 : goto external-",
        "dnat to 10.98.0.7:8443",
        "flags dynamic,timeout",
        "timeout 10m",
        "numgen random mod 2 vmap",
        "type filter hook prerouting priority dstnat - 10",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let json = nft_out(&["-j", "list", "table", "ip", &t.0]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let chains = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o.get("chain").is_some())
        .count();
    // 10 base chains; web: service, external, 2 endpoints; api: service, 1 endpoint
    assert_eq!(chains, 16, "{text}");
}

#[tokio::test]
async fn a_partial_sync_rewrites_only_the_changed_service() {
    require_kernel!();
    let t = Table::scratch();
    let mut s = syncer();
    let old = two_services(&t.0);
    s.sync(old.clone()).await.unwrap();
    let api_before = chain_with_handles(&t.0, "service-", "ns/api/");
    let api_before_ep = chain_with_handles(&t.0, "endpoint-", "ns/api/tcp/http__10.98.0.7");
    let web_before = chain_with_handles(&t.0, "service-", "ns/web/");
    let mut new = old.clone();
    let web = new.services.get_mut(&key("web")).unwrap();
    web.port = 81;
    web.endpoints
        .retain(|e| e.ip != "10.98.0.6".parse::<Ipv4Addr>().unwrap());
    assert_eq!(s.sync(new).await.unwrap(), SyncKind::Partial);
    let text = table_text(&t.0);
    assert!(
        text.contains("10.97.0.10 . tcp . 81 : goto service-"),
        "{text}"
    );
    assert!(!text.contains("10.97.0.10 . tcp . 80"), "{text}");
    assert!(
        !text.contains("10.98.0.6"),
        "the removed endpoint's chain and set are gone: {text}"
    );
    assert!(text.contains("numgen random mod 1 vmap"), "{text}");
    // api's chains kept their rules: same handles, never re-added
    assert_eq!(
        chain_with_handles(&t.0, "endpoint-", "ns/api/tcp/http__10.98.0.7"),
        api_before_ep
    );
    assert_eq!(chain_with_handles(&t.0, "service-", "ns/api/"), api_before);
    assert_ne!(chain_with_handles(&t.0, "service-", "ns/web/"), web_before);
}

#[tokio::test]
async fn deleting_the_table_removes_every_rule() {
    require_kernel!();
    let t = Table::scratch();
    let mut s = syncer();
    s.sync(two_services(&t.0)).await.unwrap();
    let nft = Nft::new("nft");
    assert!(nft.table_exists(&t.0).await.unwrap());
    nft.delete_table(&t.0).await.unwrap();
    assert!(!nft.table_exists(&t.0).await.unwrap());
    nft.delete_table(&t.0).await.unwrap();
}

#[tokio::test]
async fn a_new_syncer_adopts_the_table_with_rules_in_place_throughout() {
    require_kernel!();
    let t = Table::scratch();
    let mut first = syncer();
    let mut state = two_services(&t.0);
    first.sync(state.clone()).await.unwrap();
    // a stale chain and set from an older incarnation
    let stale = format!(
        "add chain ip {0} service-STALE000-ns/gone/tcp/http\nadd rule ip {0} service-STALE000-ns/gone/tcp/http accept\nadd set ip {0} affinity-STALE000-ns/gone {{ type ipv4_addr; }}\nadd map ip {0} stale-map {{ type inet_service : verdict; }}\nadd element ip {0} stale-map {{ 80 : goto service-STALE000-ns/gone/tcp/http }}\n",
        t.0
    );
    Nft::new("nft").apply(&stale).await.unwrap();
    drop(first); // "the agent restarts": the table stays

    // Watch the api service's element from another thread while the new syncer takes over.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (done, table) = (done.clone(), t.0.clone());
        std::thread::spawn(move || {
            let mut checks = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let map = nft_out(&["list", "map", "ip", &table, "service-ips"]);
                assert!(
                    map.contains("10.97.0.20 . tcp . 443"),
                    "rules missing during adoption: {map}"
                );
                checks += 1;
                if finished {
                    return checks;
                }
            }
        })
    };
    let mut second = syncer();
    state.services.remove(&key("empty"));
    assert_eq!(second.sync(state).await.unwrap(), SyncKind::Full);
    done.store(true, Ordering::SeqCst);
    let checks = watcher.join().expect("rules stayed in place");
    assert!(checks >= 1);
    let text = table_text(&t.0);
    assert!(
        !text.contains("STALE000"),
        "stale chain and set deleted: {text}"
    );
    assert!(!text.contains("10.97.0.30"), "{text}");
    assert!(
        text.contains("10.97.0.10 . tcp . 80 : goto service-"),
        "{text}"
    );
    // and a full resync over our own table (existing dynamic sets) succeeds too
    second.force_full();
    let again = second.last().unwrap().clone();
    assert_eq!(second.sync(again).await.unwrap(), SyncKind::Full);
}

#[tokio::test]
async fn a_failed_sync_is_followed_by_a_full_one() {
    require_kernel!();
    let t = Table::scratch();
    let mut s = syncer();
    s.sync(two_services(&t.0)).await.unwrap();
    // someone deletes the table behind the proxy's back: the partial sync fails...
    Nft::new("nft").delete_table(&t.0).await.unwrap();
    let mut changed = two_services(&t.0);
    changed.services.get_mut(&key("api")).unwrap().port = 444;
    assert!(s.sync(changed.clone()).await.is_err());
    // ...and the next one rebuilds everything
    assert_eq!(s.sync(changed).await.unwrap(), SyncKind::Full);
    assert!(table_text(&t.0).contains("10.97.0.20 . tcp . 444"));
}

/// A veth pair in the host's namespace, one end holding an endpoint address (this kernel has
/// no dummy interfaces); removed on drop.
struct Veth(String);

impl Veth {
    fn create(addr: &str) -> Veth {
        let name = format!("capv{}", std::process::id() % 100_000);
        let peer = format!("{name}p");
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        let d = Veth(name);
        for args in [
            vec!["link", "add", &d.0, "type", "veth", "peer", "name", &peer],
            vec!["addr", "add", addr, "dev", &d.0],
            vec!["link", "set", &peer, "up"],
            vec!["link", "set", &d.0, "up"],
        ] {
            let o = Command::new("ip").args(&args).output().unwrap();
            assert!(
                o.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        d
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

#[tokio::test]
async fn host_traffic_to_a_cluster_ip_reaches_the_endpoint_and_is_refused_without_one() {
    require_kernel!();
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipping: iproute2 missing");
        return;
    }
    let t = Table::scratch();
    let octet = (std::process::id() % 200 + 20) as u8;
    let ep_ip = Ipv4Addr::new(10, 252, octet, 2);
    let cluster_ip = Ipv4Addr::new(10, 253, octet, 10);
    let _veth = Veth::create(&format!("{ep_ip}/32"));
    let listener = tokio::net::TcpListener::bind((ep_ip, 0)).await.unwrap();
    let ep_port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let _ = conn.write_all(b"hello from the endpoint").await;
        }
    });

    let mut state = State::new(TableConfig::new(&t.0));
    let sk = key("web");
    state.services.insert(
        sk.clone(),
        ServicePort::cluster_ip(cluster_ip, 80, vec![Endpoint::ready(ep_ip, ep_port)]),
    );
    let mut s = syncer();
    s.sync(state.clone()).await.unwrap();

    let connect = || {
        tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect((cluster_ip, 80)),
        )
    };
    let mut conn = connect()
        .await
        .expect("connect did not hang")
        .expect("connected through the ClusterIP");
    let mut buf = String::new();
    use tokio::io::AsyncReadExt;
    conn.read_to_string(&mut buf).await.unwrap();
    assert_eq!(buf, "hello from the endpoint");

    // no endpoints: refused at once, not left to time out
    state.services.get_mut(&sk).unwrap().endpoints.clear();
    assert_eq!(s.sync(state).await.unwrap(), SyncKind::Partial);
    let started = std::time::Instant::now();
    let err = connect()
        .await
        .expect("connect did not hang")
        .expect_err("no endpoint");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    server.abort();
}

/// `cargo nextest run -p capstan-node-agent proxy::kernel_tests::bench --run-ignored only
/// --no-capture`: the engine of `capstan bench services` at a small size by default
/// (CAPSTAN_BENCH_SERVICES overrides).
#[tokio::test]
#[ignore = "a benchmark; run on demand"]
async fn bench_services_report() {
    require_kernel!();
    let services = std::env::var("CAPSTAN_BENCH_SERVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let guard = Table::scratch();
    let opts = super::bench::BenchOptions {
        services,
        table: guard.0.clone(),
        ..Default::default()
    };
    let report = super::bench::run(&opts).await.unwrap();
    println!("{report}");
    drop(guard);
}

#[tokio::test]
async fn the_kernel_accepts_every_feature_together() {
    require_kernel!();
    let t = Table::scratch();
    let mut cfg = TableConfig::new(&t.0);
    cfg.masquerade_cidr = Some("10.88.0.0/16".into());
    cfg.node_ips = vec!["10.99.0.1".parse().unwrap()];
    let mut s = State::new(cfg);
    let local = |ip: &str| Endpoint {
        local: true,
        ..ready(ip, 8080)
    };
    let mut n = 0u8;
    for (external_local, internal_local, affinity, with_local) in [
        (true, false, None, true),
        (true, false, Some(30), false),
        (false, true, Some(10800), true),
        (false, true, None, false),
        (true, true, None, true),
    ] {
        for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            n += 1;
            let mut eps = vec![ready(&format!("10.98.{n}.1"), 8080)];
            if with_local {
                eps.push(local(&format!("10.98.{n}.2")));
            }
            let mut sp = ServicePort::cluster_ip(format!("10.97.1.{n}").parse().unwrap(), 80, eps);
            sp.node_port = Some(31000 + u16::from(n));
            sp.external_local = external_local;
            sp.internal_local = internal_local;
            sp.affinity_timeout = affinity;
            s.services.insert(
                ServicePortName {
                    namespace: "ns".into(),
                    name: format!("svc-{n}"),
                    port: "p".into(),
                    protocol,
                },
                sp,
            );
        }
    }
    let mut syncer = syncer();
    assert_eq!(syncer.sync(s.clone()).await.unwrap(), SyncKind::Full);
    let text = table_text(&t.0);
    for want in [
        ": drop",
        "goto local-",
        "goto external-",
        "fib saddr type local",
        "meta l4proto sctp dnat to",
        "ip daddr @nodeport-ips",
    ] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
    // and everything flips to the other policies in one partial sync
    for sp in s.services.values_mut() {
        sp.external_local = !sp.external_local;
        sp.internal_local = !sp.internal_local;
        sp.affinity_timeout = sp.affinity_timeout.map_or(Some(60), |_| None);
    }
    assert_eq!(syncer.sync(s).await.unwrap(), SyncKind::Partial);
}
