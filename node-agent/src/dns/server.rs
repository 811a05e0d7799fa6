//! The DNS server: UDP and TCP listeners on one port, each query answered from the cluster zone
//! ([`super::zone`]) or forwarded upstream ([`super::forward`]) — what CoreDNS's server plus its
//! `kubernetes` and `forward` plugins do for a cluster.
//!
//! A query is handled in two steps: [`Shared::handle`] is synchronous and answers everything the
//! zone knows inline on the receiving task (no spawn, no allocation beyond the answer); only what
//! needs the network ([`Pending`]: a forward, or chasing an ExternalName's CNAME out of the zone)
//! goes to a task of its own, bounded by a semaphore.
//!
//! Malformed input never panics: fewer than 12 bytes or a message with QR set is dropped; a
//! header we can read with a body we cannot is answered FORMERR.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::forward::Forwarder;
use super::metrics::DnsMetrics;
use super::zone::{Lookup, Zone};

/// The UDP payload this server offers in EDNS (the DNS flag day 2020 figure).
const EDNS_PAYLOAD: u16 = 1232;
/// Forwards (and CNAME chases) in flight at once; past it a query is answered SERVFAIL.
const MAX_PENDING: usize = 1024;
/// TCP connections served at once; past it new ones are closed.
const MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP connection idle this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Transport a query came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    fn label(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }

    /// The largest answer the client takes: 512 bytes over UDP unless EDNS says more.
    fn limit(self, req: &Message) -> usize {
        match (self, &req.edns) {
            (Proto::Tcp, _) => u16::MAX as usize,
            (Proto::Udp, Some(edns)) => edns.max_payload().clamp(512, EDNS_PAYLOAD) as usize,
            (Proto::Udp, None) => 512,
        }
    }
}

/// State every listener task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub zone: RwLock<Zone>,
    /// False until the first lists of Services and EndpointSlices are in the zone: until then
    /// cluster names get SERVFAIL rather than a wrong NXDOMAIN.
    pub synced: AtomicBool,
    pub forwarder: Forwarder,
    pub metrics: DnsMetrics,
    pending: Arc<Semaphore>,
    /// A random name sent upstream once at start ([`Shared::probe_loop`]): receiving it means our
    /// upstream leads back to us (the host's resolv.conf naming the kube-dns ClusterIP, say) —
    /// CoreDNS's `loop` plugin. From then on nothing is forwarded.
    loop_probe: Name,
    looping: AtomicBool,
}

/// What to do with one query.
#[derive(Debug)]
pub(crate) enum Outcome {
    Reply(Vec<u8>),
    Drop,
    Forward(Box<Pending>),
}

/// A query that needs an upstream.
#[derive(Debug)]
pub(crate) struct Pending {
    raw: Vec<u8>,
    request: Message,
    limit: usize,
    /// Set when chasing an ExternalName: the answer so far (ending in a CNAME) and its target.
    chase: Option<(Message, Name)>,
}

impl Shared {
    pub(crate) fn new(
        zone: Zone,
        forwarder: Forwarder,
        metrics: DnsMetrics,
        synced: bool,
    ) -> Shared {
        Shared {
            zone: RwLock::new(zone),
            synced: AtomicBool::new(synced),
            forwarder,
            metrics,
            pending: Arc::new(Semaphore::new(MAX_PENDING)),
            loop_probe: Name::from_ascii(format!(
                "{:016x}.{:016x}.loop-check.capstan.invalid.",
                fastrand::u64(..),
                fastrand::u64(..)
            ))
            .unwrap_or_else(|_| Name::root()),
            looping: AtomicBool::new(false),
        }
    }

    /// Sends the loop probe upstream once; a loop shows as the probe arriving here.
    pub(crate) async fn probe_loop(&self) {
        if self.forwarder.upstreams().is_empty() {
            return;
        }
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(self.loop_probe.clone(), RecordType::HINFO));
        if let Ok(bytes) = query.to_vec() {
            let _ = self.forwarder.forward(&bytes).await;
        }
    }

    /// Whether a forwarding loop was detected.
    pub(crate) fn looping(&self) -> bool {
        self.looping.load(Ordering::Acquire)
    }

    /// Answers from the zone, or says what needs the network.
    pub(crate) fn handle(&self, raw: &[u8], proto: Proto) -> Outcome {
        // Too short for a header, or a response (answering responses invites reflection loops).
        if raw.len() < 12 || raw[2] & 0x80 != 0 {
            self.metrics.request(proto.label(), None);
            return Outcome::Drop;
        }
        let request = match Message::from_vec(raw) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "dns: malformed query");
                self.metrics.request(proto.label(), None);
                let id = u16::from_be_bytes([raw[0], raw[1]]);
                return self.reply(
                    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr),
                    512,
                );
            }
        };
        let qtype = request.queries.first().map(|q| q.query_type());
        self.metrics.request(proto.label(), qtype);
        let limit = proto.limit(&request);
        if request.metadata.message_type != MessageType::Query {
            return Outcome::Drop;
        }
        if request.metadata.op_code != OpCode::Query {
            return self.reply(response_to(&request, ResponseCode::NotImp), limit);
        }
        let [query] = request.queries.as_slice() else {
            return self.reply(response_to(&request, ResponseCode::FormErr), limit);
        };
        if *query.name() == self.loop_probe && !self.loop_probe.is_root() {
            if !self.looping.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    upstreams = ?self.forwarder.upstreams(),
                    "dns: forwarding loop detected (an upstream leads back to this server); \
                     no longer forwarding"
                );
            }
            return self.reply(response_to(&request, ResponseCode::ServFail), limit);
        }
        if query.query_class() != DNSClass::IN {
            return self.forward(raw, request, limit);
        }
        let (lookup, origin) = {
            let zone = self.zone.read().unwrap_or_else(|e| e.into_inner());
            (
                zone.lookup(query.name(), query.query_type()),
                zone.origin().clone(),
            )
        };
        let answer = match lookup {
            Lookup::NotAuthoritative => return self.forward(raw, request, limit),
            Lookup::Answer(_) if !self.synced.load(Ordering::Acquire) => {
                return self.reply(response_to(&request, ResponseCode::ServFail), limit);
            }
            Lookup::Answer(_)
                if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) =>
            {
                return self.reply(response_to(&request, ResponseCode::Refused), limit);
            }
            Lookup::Answer(answer) => answer,
        };
        let chase = answer
            .cname_target()
            .filter(|t| query.query_type() != RecordType::CNAME && !origin.zone_of(t))
            .cloned();
        let mut response = response_to(&request, answer.rcode);
        response.metadata.authoritative = true;
        // Echo the question's spelling (0x20 case randomization checks it).
        let answers = answer.answers.into_iter().map(|mut r| {
            if r.name == *query.name() {
                r.name = query.name().clone();
            }
            r
        });
        response.add_answers(answers);
        response.add_authorities(answer.authorities);
        response.add_additionals(answer.additionals);
        match chase {
            Some(target) => Outcome::Forward(Box::new(Pending {
                raw: Vec::new(),
                request,
                limit,
                chase: Some((response, target)),
            })),
            None => self.reply(response, limit),
        }
    }

    fn forward(&self, raw: &[u8], request: Message, limit: usize) -> Outcome {
        Outcome::Forward(Box::new(Pending {
            raw: raw.to_vec(),
            request,
            limit,
            chase: None,
        }))
    }

    fn reply(&self, response: Message, limit: usize) -> Outcome {
        Outcome::Reply(self.encode(response, limit))
    }

    /// The wire form of `response`, truncated (TC set, records dropped) past `limit`.
    fn encode(&self, response: Message, limit: usize) -> Vec<u8> {
        self.metrics.response(response.metadata.response_code);
        let bytes = match response.to_vec() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "dns: cannot encode an answer");
                let mut fail = response.truncate();
                fail.metadata.truncation = false;
                fail.metadata.response_code = ResponseCode::ServFail;
                return fail.to_vec().unwrap_or_default();
            }
        };
        if bytes.len() <= limit {
            return bytes;
        }
        response.truncate().to_vec().unwrap_or_default()
    }

    /// Resolves a query that needs the network; always yields an answer (SERVFAIL at worst).
    pub(crate) async fn resolve(&self, pending: Pending) -> Vec<u8> {
        let Pending {
            raw,
            request,
            limit,
            chase,
        } = pending;
        if self.looping() {
            self.metrics.forward_failed("loop");
            return self.encode(response_to(&request, ResponseCode::ServFail), limit);
        }
        let Some((mut response, target)) = chase else {
            self.metrics.forwarded();
            return match self.forwarder.forward(&raw).await {
                Ok(answer) if answer.len() <= limit => {
                    if let Ok(m) = Message::from_vec(&answer) {
                        self.metrics.response(m.metadata.response_code);
                    }
                    answer
                }
                Ok(answer) => match Message::from_vec(&answer) {
                    Ok(m) => self.encode(m, limit),
                    Err(_) => self.encode(response_to(&request, ResponseCode::ServFail), limit),
                },
                Err(e) => {
                    tracing::debug!(error = %e, "dns: forwarding failed");
                    self.metrics.forward_failed(e.reason());
                    self.encode(response_to(&request, ResponseCode::ServFail), limit)
                }
            };
        };
        // An ExternalName's target, asked upstream with the original type, its answer appended.
        let qtype = request
            .queries
            .first()
            .map_or(RecordType::A, |q| q.query_type());
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(target, qtype));
        self.metrics.forwarded();
        let upstream = match query.to_vec() {
            Ok(q) => self.forwarder.forward(&q).await.map_err(|e| e.reason()),
            Err(_) => Err("malformed"),
        };
        match upstream.map(|a| Message::from_vec(&a)) {
            Ok(Ok(mut answer)) => {
                response.metadata.response_code = answer.metadata.response_code;
                response.add_answers(answer.answers.drain(..));
            }
            Ok(Err(_)) => self.metrics.forward_failed("malformed"),
            Err(reason) => self.metrics.forward_failed(reason),
        }
        self.encode(response, limit)
    }
}

/// An empty response to `req` with `rcode`, echoing its question and EDNS.
fn response_to(req: &Message, rcode: ResponseCode) -> Message {
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = req.metadata.checking_disabled;
    m.metadata.response_code = rcode;
    m.add_queries(req.queries.iter().cloned());
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        m.set_edns(edns);
    }
    m
}

/// Binds UDP and TCP on one port: `addr`'s, or (port 0) one free for both.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut tries = 0;
    loop {
        let udp = UdpSocket::bind(addr).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // A port free for UDP but taken for TCP: only worth another try when we chose it.
            Err(e) if addr.port() == 0 && tries < 20 => {
                tracing::debug!(port, error = %e, "dns: TCP port taken, trying another");
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Spawns the listener tasks: two UDP receivers on the socket and one TCP acceptor.
pub(crate) fn spawn(shared: Arc<Shared>, udp: UdpSocket, tcp: TcpListener) -> Vec<JoinHandle<()>> {
    let udp = Arc::new(udp);
    let mut tasks: Vec<JoinHandle<()>> = (0..2)
        .map(|_| tokio::spawn(serve_udp(shared.clone(), udp.clone())))
        .collect();
    tasks.push(tokio::spawn(serve_tcp(shared, tcp)));
    tasks
}

async fn serve_udp(shared: Arc<Shared>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "dns: UDP receive failed");
                tokio::task::yield_now().await;
                continue;
            }
        };
        match shared.handle(&buf[..n], Proto::Udp) {
            Outcome::Reply(bytes) => {
                let _ = sock.send_to(&bytes, peer).await;
            }
            Outcome::Drop => {}
            Outcome::Forward(pending) => {
                let Ok(permit) = shared.pending.clone().try_acquire_owned() else {
                    let fail = response_to(&pending.request, ResponseCode::ServFail);
                    let _ = sock
                        .send_to(&shared.encode(fail, pending.limit), peer)
                        .await;
                    continue;
                };
                let (shared, sock) = (shared.clone(), sock.clone());
                tokio::spawn(async move {
                    let bytes = shared.resolve(*pending).await;
                    let _ = sock.send_to(&bytes, peer).await;
                    drop(permit);
                });
            }
        }
    }
}

async fn serve_tcp(shared: Arc<Shared>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "dns: TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(&shared, stream).await {
                tracing::debug!(error = %e, "dns: TCP connection ended");
            }
            drop(permit);
        });
    }
}

/// Length-prefixed queries on one connection, answered in order, until EOF or idle.
async fn serve_connection(shared: &Shared, mut stream: TcpStream) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => len as usize,
            _ => return Ok(()),
        };
        let mut buf = vec![0u8; len];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("idle mid-message"))??;
        let reply = match shared.handle(&buf, Proto::Tcp) {
            Outcome::Reply(bytes) => bytes,
            Outcome::Drop => return Ok(()),
            Outcome::Forward(pending) => shared.resolve(*pending).await,
        };
        let len = u16::try_from(reply.len()).map_err(std::io::Error::other)?;
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        let zone = Zone::new("cluster.local", 5).unwrap();
        let fwd = Forwarder::new(&[], &[], Duration::from_millis(100));
        Shared::new(zone, fwd, DnsMetrics::unregistered(), true)
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    fn reply(o: Outcome) -> Message {
        match o {
            Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_dropped_or_answered_formerr_never_a_panic() {
        let s = shared();
        assert!(matches!(s.handle(&[1, 2, 3], Proto::Udp), Outcome::Drop));
        let mut junk = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        junk.extend_from_slice(&[0x3f, b'x', b'y']);
        let r = reply(s.handle(&junk, Proto::Udp));
        assert_eq!(r.metadata.id, 0xabcd);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8 & 0x7f).collect();
            let _ = s.handle(&bytes, Proto::Udp);
            let _ = s.handle(&bytes, Proto::Tcp);
        }
    }

    #[test]
    fn mutated_queries_never_panic() {
        let s = shared();
        let base = query("web.default.svc.cluster.local.", RecordType::SRV);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut bytes = base.clone();
            for _ in 0..rng.usize(1..6) {
                let i = rng.usize(..bytes.len());
                bytes[i] = rng.u8(..);
            }
            bytes.truncate(rng.usize(..=bytes.len()));
            for proto in [Proto::Udp, Proto::Tcp] {
                if let Outcome::Reply(r) = s.handle(&bytes, proto) {
                    assert!(r.len() >= 12);
                }
            }
        }
    }

    #[test]
    fn an_edns_query_gets_an_opt_record_back_and_case_is_echoed() {
        let s = shared();
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("DNS-Version.Cluster.Local.").unwrap(),
            RecordType::TXT,
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        m.set_edns(edns);
        let r = reply(s.handle(&m.to_vec().unwrap(), Proto::Udp));
        assert_eq!(r.edns.as_ref().map(|e| e.max_payload()), Some(EDNS_PAYLOAD));
        assert_eq!(r.answers[0].name.to_ascii(), "DNS-Version.Cluster.Local.");
        assert!(r.metadata.recursion_available);
    }

    #[test]
    fn a_response_is_never_answered() {
        let s = shared();
        let mut q = query("x.cluster.local.", RecordType::A);
        q[2] |= 0x80;
        assert!(matches!(s.handle(&q, Proto::Udp), Outcome::Drop));
    }

    #[test]
    fn cluster_names_are_servfail_until_synced() {
        let s = shared();
        s.synced.store(false, Ordering::Release);
        let r = reply(s.handle(&query("x.cluster.local.", RecordType::A), Proto::Udp));
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        s.synced.store(true, Ordering::Release);
        let r = reply(s.handle(&query("x.cluster.local.", RecordType::A), Proto::Udp));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.metadata.authoritative);
    }

    #[test]
    fn other_opcodes_are_not_implemented_and_outside_names_are_forwarded() {
        let s = shared();
        let mut m = Message::query();
        m.metadata.op_code = OpCode::Status;
        let r = reply(s.handle(&m.to_vec().unwrap(), Proto::Udp));
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
        assert!(matches!(
            s.handle(&query("example.com.", RecordType::A), Proto::Udp),
            Outcome::Forward(_)
        ));
    }
}
