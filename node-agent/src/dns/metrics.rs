//! The DNS server's Prometheus counters, named after CoreDNS's (`coredns_dns_requests_total`,
//! `coredns_dns_responses_total`, `coredns_forward_requests_total`) under the agent's prefix.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Counters of the DNS server; cheap to clone (the vectors are shared handles).
#[derive(Debug, Clone)]
pub struct DnsMetrics {
    requests: IntCounterVec,
    responses: IntCounterVec,
    forwarded: IntCounter,
    forward_failures: IntCounterVec,
}

impl DnsMetrics {
    /// Counters not registered anywhere (benchmarks, tests).
    pub fn unregistered() -> DnsMetrics {
        DnsMetrics {
            requests: IntCounterVec::new(
                Opts::new("capstan_agent_dns_requests_total", "DNS queries received, by transport and type."),
                &["proto", "type"],
            )
            .expect("valid metric"),
            responses: IntCounterVec::new(
                Opts::new("capstan_agent_dns_responses_total", "DNS responses sent, by response code."),
                &["rcode"],
            )
            .expect("valid metric"),
            forwarded: IntCounter::new(
                "capstan_agent_dns_forward_requests_total",
                "DNS queries forwarded to an upstream resolver.",
            )
            .expect("valid metric"),
            forward_failures: IntCounterVec::new(
                Opts::new(
                    "capstan_agent_dns_forward_failures_total",
                    "Forwarded DNS queries that no upstream answered (answered SERVFAIL), by reason.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        }
    }

    /// Counters registered in `registry`.
    pub fn register(registry: &Registry) -> Result<DnsMetrics, prometheus::Error> {
        let m = DnsMetrics::unregistered();
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.responses.clone()))?;
        registry.register(Box::new(m.forwarded.clone()))?;
        registry.register(Box::new(m.forward_failures.clone()))?;
        Ok(m)
    }

    pub(crate) fn request(&self, proto: &str, qtype: Option<RecordType>) {
        self.requests
            .with_label_values(&[proto, type_label(qtype)])
            .inc();
    }

    pub(crate) fn response(&self, rcode: ResponseCode) {
        self.responses
            .with_label_values(&[rcode_label(rcode)])
            .inc();
    }

    pub(crate) fn forwarded(&self) {
        self.forwarded.inc();
    }

    pub(crate) fn forward_failed(&self, reason: &str) {
        self.forward_failures.with_label_values(&[reason]).inc();
    }
}

/// A bounded label: a client can send any of 65,536 types.
fn type_label(qtype: Option<RecordType>) -> &'static str {
    use RecordType::*;
    match qtype {
        Some(A) => "A",
        Some(AAAA) => "AAAA",
        Some(SRV) => "SRV",
        Some(PTR) => "PTR",
        Some(CNAME) => "CNAME",
        Some(TXT) => "TXT",
        Some(SOA) => "SOA",
        Some(NS) => "NS",
        Some(MX) => "MX",
        Some(ANY) => "ANY",
        Some(_) => "other",
        None => "none",
    }
}

fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        _ => "other",
    }
}
