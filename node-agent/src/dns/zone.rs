//! The cluster zone: DNS records computed from Services and EndpointSlices, with no I/O — the
//! counterpart of CoreDNS's `kubernetes` plugin data model, following kubernetes/dns
//! `docs/specification.md` (schema version 1.1.0).
//!
//! Records, for a zone `cluster.local`:
//! - `svc.ns.svc.cluster.local` A/AAAA → each ClusterIP; for a headless Service (clusterIP None)
//!   one A/AAAA per ready endpoint address (every address when `publishNotReadyAddresses`).
//! - `host.svc.ns.svc.cluster.local` A/AAAA for each endpoint of a headless Service, `host` being
//!   the endpoint's hostname or, without one, its address with `.`/`:` replaced by `-` (as CoreDNS).
//! - `_port._proto.svc.ns.svc.cluster.local` SRV for each named port: to the Service name for a
//!   ClusterIP Service, to each endpoint's `host` name for a headless one.
//! - PTR for each ClusterIP (→ the Service name) and each headless endpoint address (→ its host name).
//! - ExternalName Services: CNAME → `spec.externalName`.
//! - `dns-version.cluster.local` TXT "1.1.0"; `ip.ns.pod.cluster.local` A (CoreDNS's `pods insecure`:
//!   the address is read from the name, not checked).
//!
//! Names with no records but records below them (`ns.svc.cluster.local`, `_tcp.svc.ns…`) exist:
//! they answer NODATA, never NXDOMAIN (RFC 8020).
//!
//! The index is updated per Service: a change to a Service or one of its slices recomputes that
//! Service's records only, so one update costs its own size, not the cluster's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The schema version `dns-version.<zone>` answers.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// A (namespace, name) pair.
type Key = (String, String);

/// What the zone says about one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// This server is authoritative for the name: answer with this.
    Answer(Answer),
    /// Outside the zone (or a reverse name it knows nothing of): forward upstream.
    NotAuthoritative,
}

/// An authoritative answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    /// NoError (with or without answers) or NXDomain.
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// The SOA for NXDOMAIN and NODATA (RFC 2308).
    pub authorities: Vec<Record>,
    /// A/AAAA records of SRV targets.
    pub additionals: Vec<Record>,
}

impl Answer {
    /// The last CNAME target of the answer when it ends in one (the server chases it).
    pub fn cname_target(&self) -> Option<&Name> {
        match self.answers.last().map(|r| &r.data) {
            Some(RData::CNAME(CNAME(target))) => Some(target),
            _ => None,
        }
    }
}

/// A named port of a Service or an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NamedPort {
    name: String,
    /// Lower-case: tcp, udp, sctp.
    protocol: String,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ServiceKind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(Name),
}

#[derive(Debug, Clone)]
struct ServiceInfo {
    kind: ServiceKind,
    ports: Vec<NamedPort>,
    publish_not_ready: bool,
}

#[derive(Debug, Clone)]
struct EndpointInfo {
    addresses: Vec<IpAddr>,
    hostname: Option<String>,
    ready: bool,
}

#[derive(Debug, Clone)]
struct SliceInfo {
    service: String,
    ports: Vec<NamedPort>,
    endpoints: Vec<EndpointInfo>,
}

/// The cluster zone.
#[derive(Debug)]
pub struct Zone {
    origin: Name,
    ttl: u32,
    serial: u32,
    services: HashMap<Key, ServiceInfo>,
    /// (namespace, slice name) → slice.
    slices: HashMap<Key, SliceInfo>,
    /// (namespace, service name) → its slices' names.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// The names each Service put in the index (with the empty ones above its records).
    contributed: HashMap<Key, Vec<Name>>,
    /// name → Service → records (empty for a name that only has records below it).
    index: HashMap<Name, BTreeMap<Key, Vec<Record>>>,
}

impl Zone {
    /// An empty zone for `domain` (e.g. "cluster.local"), its records living `ttl` seconds.
    pub fn new(domain: &str, ttl: u32) -> Result<Zone, hickory_proto::ProtoError> {
        let mut origin = Name::from_ascii(domain.trim_end_matches('.'))?.to_lowercase();
        origin.set_fqdn(true);
        Ok(Zone {
            origin,
            ttl,
            serial: 1,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            contributed: HashMap::new(),
            index: HashMap::new(),
        })
    }

    /// The zone's apex, fully qualified and lower-case.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The SOA serial: bumped by every change.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Adds or replaces a Service.
    pub fn apply_service(&mut self, svc: &Service) {
        let Some(key) = key_of(&svc.metadata) else {
            return;
        };
        match service_info(svc) {
            Some(info) => {
                self.services.insert(key.clone(), info);
            }
            None => {
                self.services.remove(&key);
            }
        }
        self.rebuild(&key);
    }

    /// Removes a Service.
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        self.services.remove(&key);
        self.rebuild(&key);
    }

    /// Replaces every Service (after a relist).
    pub fn reset_services(&mut self, svcs: &[Service]) {
        let old: Vec<Key> = self.services.keys().cloned().collect();
        self.services.clear();
        for svc in svcs {
            if let (Some(key), Some(info)) = (key_of(&svc.metadata), service_info(svc)) {
                self.services.insert(key, info);
            }
        }
        let mut keys: BTreeSet<Key> = old.into_iter().collect();
        keys.extend(self.services.keys().cloned());
        for key in keys {
            self.rebuild(&key);
        }
    }

    /// Adds or replaces an EndpointSlice.
    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let Some(key) = key_of(&slice.metadata) else {
            return;
        };
        let before = self.remove_slice(&key);
        if let Some(info) = slice_info(slice) {
            let svc = (key.0.clone(), info.service.clone());
            self.slices_of
                .entry(svc.clone())
                .or_default()
                .insert(key.1.clone());
            self.slices.insert(key, info);
            if before.as_ref() != Some(&svc) {
                self.rebuild(&svc);
            }
        }
        if let Some(before) = before {
            self.rebuild(&before);
        }
    }

    /// Removes an EndpointSlice.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        if let Some(svc) = self.remove_slice(&key) {
            self.rebuild(&svc);
        }
    }

    /// Replaces every EndpointSlice (after a relist).
    pub fn reset_slices(&mut self, slices: &[EndpointSlice]) {
        let mut touched: BTreeSet<Key> = self.slices_of.keys().cloned().collect();
        self.slices.clear();
        self.slices_of.clear();
        for slice in slices {
            if let (Some(key), Some(info)) = (key_of(&slice.metadata), slice_info(slice)) {
                let svc = (key.0.clone(), info.service.clone());
                self.slices_of
                    .entry(svc.clone())
                    .or_default()
                    .insert(key.1.clone());
                self.slices.insert(key, info);
                touched.insert(svc);
            }
        }
        for key in touched {
            self.rebuild(&key);
        }
    }

    /// Forgets a slice; returns the Service it belonged to.
    fn remove_slice(&mut self, key: &Key) -> Option<Key> {
        let old = self.slices.remove(key)?;
        let svc = (key.0.clone(), old.service);
        if let Some(set) = self.slices_of.get_mut(&svc) {
            set.remove(&key.1);
            if set.is_empty() {
                self.slices_of.remove(&svc);
            }
        }
        Some(svc)
    }

    /// Answers one question. `qname` must be fully qualified.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        if self.origin.zone_of(qname) {
            return Lookup::Answer(self.lookup_in_zone(qname, qtype));
        }
        if is_reverse(qname)
            && let Some(records) = self.records(qname)
        {
            let answers = filter(&records, qtype);
            let authorities = Vec::new();
            return Lookup::Answer(Answer {
                rcode: ResponseCode::NoError,
                answers,
                authorities,
                additionals: Vec::new(),
            });
        }
        Lookup::NotAuthoritative
    }

    fn lookup_in_zone(&self, qname: &Name, qtype: RecordType) -> Answer {
        let mut answer = Answer::default();
        // A CNAME inside the zone is followed here (bounded: a Service's ExternalName may name
        // another Service).
        let mut name = qname.clone();
        for _ in 0..8 {
            let Some(records) = self.node(&name) else {
                // NXDOMAIN names the last name of a CNAME chain (RFC 6604).
                answer.rcode = ResponseCode::NXDomain;
                answer.authorities.push(self.soa());
                return answer;
            };
            let matched = filter(&records, qtype);
            let cname = match matched.as_slice() {
                [
                    Record {
                        data: RData::CNAME(CNAME(target)),
                        ..
                    },
                ] if qtype != RecordType::CNAME => Some(target.clone()),
                _ => None,
            };
            answer.answers.extend(matched);
            match cname {
                Some(target) if self.origin.zone_of(&target) => name = target,
                _ => break,
            }
        }
        if answer.answers.is_empty() {
            answer.authorities.push(self.soa());
        }
        for record in &answer.answers {
            if let RData::SRV(srv) = &record.data
                && let Some(targets) = self.records(&srv.target)
            {
                for t in targets {
                    if matches!(t.data, RData::A(_) | RData::AAAA(_))
                        && !answer.additionals.contains(&t)
                    {
                        answer.additionals.push(t);
                    }
                }
            }
        }
        answer
    }

    /// The records at a name inside the zone; `None` when the name does not exist.
    fn node(&self, name: &Name) -> Option<Vec<Record>> {
        if *name == self.origin {
            return Some(vec![self.soa()]);
        }
        let version = self.child("dns-version");
        if *name == version {
            let txt = TXT::new(vec![SCHEMA_VERSION.to_string()]);
            return Some(vec![Record::from_rdata(version, self.ttl, RData::TXT(txt))]);
        }
        if *name == self.child("svc") || *name == self.child("pod") {
            return Some(self.records(name).unwrap_or_default());
        }
        if let Some(record) = self.pod_record(name) {
            return Some(vec![record]);
        }
        self.records(name)
    }

    /// `1-2-3-4.ns.pod.<zone>` → A 1.2.3.4 (`2001-db8--1.ns.pod…` → AAAA).
    fn pod_record(&self, name: &Name) -> Option<Record> {
        if name.num_labels() != self.origin.num_labels() + 3 || !self.child("pod").zone_of(name) {
            return None;
        }
        let first = name.iter().next()?;
        let label = std::str::from_utf8(first).ok()?;
        let data = if let Ok(v4) = label.replace('-', ".").parse() {
            RData::A(A(v4))
        } else {
            RData::AAAA(AAAA(label.replace('-', ":").parse().ok()?))
        };
        Some(Record::from_rdata(name.clone(), self.ttl, data))
    }

    fn records(&self, name: &Name) -> Option<Vec<Record>> {
        let by_service = self.index.get(name)?;
        Some(by_service.values().flatten().cloned().collect())
    }

    fn child(&self, label: &str) -> Name {
        self.origin
            .prepend_label(label)
            .unwrap_or_else(|_| self.origin.clone())
    }

    /// The zone's SOA record (its minimum is the TTL, so negative answers live as long).
    pub fn soa(&self) -> Record {
        let soa = SOA::new(
            self.child("dns")
                .prepend_label("ns")
                .unwrap_or_else(|_| self.origin.clone()),
            self.child("hostmaster"),
            self.serial,
            7200,
            1800,
            86400,
            self.ttl,
        );
        Record::from_rdata(self.origin.clone(), self.ttl, RData::SOA(soa))
    }

    /// Recomputes one Service's records in the index.
    fn rebuild(&mut self, key: &Key) {
        for name in self.contributed.remove(key).unwrap_or_default() {
            if let Some(by_service) = self.index.get_mut(&name) {
                by_service.remove(key);
                if by_service.is_empty() {
                    self.index.remove(&name);
                }
            }
        }
        self.serial = self.serial.wrapping_add(1);
        let Some((svc_name, records)) = self.build(key) else {
            return;
        };
        let mut per_name: HashMap<Name, Vec<Record>> = HashMap::new();
        // The Service's name exists even with no records (a headless Service with no ready
        // endpoints answers NODATA), and so do the names above it.
        let ancestors =
            std::iter::once(svc_name.clone()).chain(records.iter().map(|r| r.name.clone()));
        for name in ancestors {
            if self.origin.zone_of(&name) {
                let mut parent = name.base_name();
                while parent.num_labels() > self.origin.num_labels() {
                    per_name.entry(parent.clone()).or_default();
                    parent = parent.base_name();
                }
            }
        }
        per_name.entry(svc_name).or_default();
        for record in records {
            let at = per_name.entry(record.name.clone()).or_default();
            if !at.contains(&record) {
                at.push(record);
            }
        }
        let mut names = Vec::with_capacity(per_name.len());
        for (name, records) in per_name {
            self.index
                .entry(name.clone())
                .or_default()
                .insert(key.clone(), records);
            names.push(name);
        }
        self.contributed.insert(key.clone(), names);
    }

    /// The Service's name and every record (forward and reverse) of it, from the Service and its
    /// slices; `None` when there is no such Service (or its name is no DNS name).
    fn build(&self, key: &Key) -> Option<(Name, Vec<Record>)> {
        let svc = self.services.get(key)?;
        let svc_name = Name::from_ascii(format!("{}.{}.svc.{}", key.1, key.0, self.origin)).ok()?;
        let svc_name = svc_name.to_lowercase();
        let ttl = self.ttl;
        let mut out = Vec::new();
        match &svc.kind {
            ServiceKind::ExternalName(target) => {
                out.push(Record::from_rdata(
                    svc_name.clone(),
                    ttl,
                    RData::CNAME(CNAME(target.clone())),
                ));
            }
            ServiceKind::ClusterIp(ips) => {
                for ip in ips {
                    out.push(Record::from_rdata(svc_name.clone(), ttl, address(*ip)));
                    if let Ok(reverse) = reverse_name(*ip) {
                        out.push(Record::from_rdata(
                            reverse,
                            ttl,
                            RData::PTR(PTR(svc_name.clone())),
                        ));
                    }
                }
                for port in &svc.ports {
                    if let Some(srv_name) = srv_name(port, &svc_name) {
                        let srv = SRV::new(0, 100, port.port, svc_name.clone());
                        out.push(Record::from_rdata(srv_name, ttl, RData::SRV(srv)));
                    }
                }
            }
            ServiceKind::Headless => {
                let mut srvs: Vec<(Name, u16, Name)> = Vec::new();
                let slices = self.slices_of.get(key).into_iter().flatten();
                for slice in slices.filter_map(|n| self.slices.get(&(key.0.clone(), n.clone()))) {
                    for ep in &slice.endpoints {
                        if !(ep.ready || svc.publish_not_ready) {
                            continue;
                        }
                        for ip in &ep.addresses {
                            let label = match &ep.hostname {
                                Some(h) => h.to_ascii_lowercase(),
                                None => dashed(*ip),
                            };
                            let Ok(host) = svc_name.prepend_label(label.as_str()) else {
                                continue;
                            };
                            out.push(Record::from_rdata(svc_name.clone(), ttl, address(*ip)));
                            out.push(Record::from_rdata(host.clone(), ttl, address(*ip)));
                            if let Ok(reverse) = reverse_name(*ip) {
                                out.push(Record::from_rdata(
                                    reverse,
                                    ttl,
                                    RData::PTR(PTR(host.clone())),
                                ));
                            }
                            for port in &slice.ports {
                                if let Some(srv_name) = srv_name(port, &svc_name) {
                                    srvs.push((srv_name, port.port, host.clone()));
                                }
                            }
                        }
                    }
                }
                srvs.sort();
                srvs.dedup();
                // Equal priority, the weight shared out (as CoreDNS: 100 / count).
                let mut count: HashMap<&Name, usize> = HashMap::new();
                for (name, _, _) in &srvs {
                    *count.entry(name).or_default() += 1;
                }
                for (name, port, host) in &srvs {
                    let weight = (100 / count[name].max(1)).max(1) as u16;
                    let srv = SRV::new(0, weight, *port, host.clone());
                    out.push(Record::from_rdata(name.clone(), ttl, RData::SRV(srv)));
                }
            }
        }
        Some((svc_name, out))
    }
}

/// The records of `records` that answer `qtype` (a CNAME answers every type).
fn filter(records: &[Record], qtype: RecordType) -> Vec<Record> {
    records
        .iter()
        .filter(|r| {
            let t = r.record_type();
            qtype == RecordType::ANY || t == qtype || t == RecordType::CNAME
        })
        .cloned()
        .collect()
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Key> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

fn service_info(svc: &Service) -> Option<ServiceInfo> {
    let spec = svc.spec.as_ref()?;
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec.external_name.as_deref()?.trim_end_matches('.');
        let mut name = Name::from_ascii(target).ok()?;
        name.set_fqdn(true);
        ServiceKind::ExternalName(name)
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        let mut ips: Vec<IpAddr> = Vec::new();
        let listed = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter());
        for ip in listed.filter_map(|s| s.parse().ok()) {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        if ips.is_empty() {
            return None;
        }
        ServiceKind::ClusterIp(ips)
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| named_port(p.name.as_deref(), p.protocol.as_deref(), Some(p.port)))
        .collect();
    Some(ServiceInfo {
        kind,
        ports,
        publish_not_ready: spec.publish_not_ready_addresses == Some(true),
    })
}

fn slice_info(slice: &EndpointSlice) -> Option<SliceInfo> {
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| named_port(p.name.as_deref(), p.protocol.as_deref(), p.port))
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .map(|ep| EndpointInfo {
            addresses: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            hostname: ep.hostname.clone().filter(|h| !h.is_empty()),
            // nil means ready (the EndpointSlice API's rule).
            ready: ep.conditions.as_ref().and_then(|c| c.ready) != Some(false),
        })
        .collect();
    Some(SliceInfo {
        service,
        ports,
        endpoints,
    })
}

fn named_port(name: Option<&str>, protocol: Option<&str>, port: Option<i32>) -> Option<NamedPort> {
    let name = name.filter(|n| !n.is_empty())?;
    Some(NamedPort {
        name: name.to_ascii_lowercase(),
        protocol: protocol.unwrap_or("TCP").to_ascii_lowercase(),
        port: u16::try_from(port?).ok()?,
    })
}

/// `_name._proto.<svc>`.
fn srv_name(port: &NamedPort, svc_name: &Name) -> Option<Name> {
    svc_name
        .prepend_label(format!("_{}", port.protocol).as_str())
        .and_then(|n| n.prepend_label(format!("_{}", port.name).as_str()))
        .ok()
}

fn address(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// 10.0.0.1 → "10-0-0-1"; 2001:db8::1 → "2001-db8--1".
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// 10.0.0.1 → 1.0.0.10.in-addr.arpa.; IPv6 by nibbles under ip6.arpa.
pub fn reverse_name(ip: IpAddr) -> Result<Name, hickory_proto::ProtoError> {
    let text = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    };
    Name::from_ascii(text)
}

/// Whether `name` is under in-addr.arpa or ip6.arpa.
pub fn is_reverse(name: &Name) -> bool {
    let mut labels = name.iter().rev();
    let (Some(last), Some(second)) = (labels.next(), labels.next()) else {
        return false;
    };
    last.eq_ignore_ascii_case(b"arpa")
        && (second.eq_ignore_ascii_case(b"in-addr") || second.eq_ignore_ascii_case(b"ip6"))
}

#[cfg(test)]
#[path = "zone_tests.rs"]
mod tests;
