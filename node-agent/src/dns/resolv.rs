//! resolv.conf: parsing the host's, and computing a pod's from its `dnsPolicy` and `dnsConfig` —
//! the rules of the kubelet's `pkg/kubelet/network/dns/dns.go` (getPodDNSType, GetPodDNS,
//! appendDNSConfig, mergeDNSOptions, formDNSConfigFitsLimits).
//!
//! | dnsPolicy | hostNetwork | nameservers | searches | options |
//! |---|---|---|---|---|
//! | ClusterFirst (or unset) | false | cluster DNS | `ns.svc.D svc.D D` + host's | `ndots:5` |
//! | ClusterFirst | true | host's (as Default) | host's | host's |
//! | ClusterFirstWithHostNet | any | cluster DNS | as ClusterFirst | `ndots:5` |
//! | Default | any | host's | host's | host's |
//! | None | any | — | — | — |
//!
//! ClusterFirst with no cluster DNS address configured falls back to Default. Then `dnsConfig` is
//! appended: nameservers and searches added after the base ones without duplicates, options merged
//! by name (the pod's win). Last, the limits: at most 3 nameservers, 32 search domains and 2,048
//! characters of search list.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::PodDNSConfig;

/// At most this many nameservers (glibc's MAXNS; the API's validation limit).
pub const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains (the API's limit since Kubernetes 1.28).
pub const MAX_SEARCHES: usize = 32;
/// At most this many characters in the search line (the API's limit since Kubernetes 1.28).
pub const MAX_SEARCH_CHARS: usize = 2048;

/// A resolv.conf: nameservers, search domains and options, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// The host's resolv.conf (the same shape).
pub type HostResolv = ResolvConf;

impl ResolvConf {
    /// Parses resolv.conf text as the kubelet does: `nameserver` lines add up, the last
    /// `search` (or `domain`) line wins, `options` add up; `#`/`;` start comments; trailing dots
    /// of search domains are dropped and a lone `.` is no domain.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => conf.servers.extend(fields.next().map(str::to_string)),
                Some("search") | Some("domain") => {
                    conf.searches = fields
                        .filter(|s| *s != ".")
                        .map(|s| s.trim_end_matches('.').to_string())
                        .collect();
                }
                Some("options") => conf.options.extend(fields.map(str::to_string)),
                _ => {}
            }
        }
        conf
    }

    /// Reads and parses a file (usually /etc/resolv.conf).
    pub fn read(path: &std::path::Path) -> std::io::Result<ResolvConf> {
        Ok(ResolvConf::parse(&std::fs::read_to_string(path)?))
    }

    /// The file text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.servers {
            out.push_str(&format!("nameserver {s}\n"));
        }
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }

    /// The nameservers as port-53 socket addresses (a zone suffix `%eth0` is dropped; names that
    /// are not addresses are skipped).
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.servers
            .iter()
            .filter_map(|s| s.split('%').next()?.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect()
    }
}

/// A pod's resolv.conf, or `None` for a `dnsPolicy` Kubernetes does not know (the kubelet fails
/// the pod's sandbox then).
///
/// `cluster_dns` are the cluster DNS addresses (the kube-dns ClusterIP; empty when none is
/// configured), `domain` the cluster domain ("cluster.local"; empty for none).
pub fn pod_dns_config(
    dns_policy: Option<&str>,
    dns_config: Option<&PodDNSConfig>,
    host_network: bool,
    cluster_dns: &[String],
    domain: &str,
    namespace: &str,
    host: &HostResolv,
) -> Option<ResolvConf> {
    #[derive(PartialEq)]
    enum Kind {
        None,
        Cluster,
        Host,
    }
    let kind = match dns_policy.unwrap_or("ClusterFirst") {
        "None" => Kind::None,
        "ClusterFirstWithHostNet" => Kind::Cluster,
        "ClusterFirst" if !host_network => Kind::Cluster,
        "ClusterFirst" | "Default" => Kind::Host,
        _ => return None,
    };
    let mut conf = match kind {
        Kind::None => ResolvConf::default(),
        Kind::Cluster if !cluster_dns.is_empty() => {
            let mut searches = Vec::new();
            let domain = domain.trim_end_matches('.');
            if !domain.is_empty() {
                searches.push(format!("{namespace}.svc.{domain}"));
                searches.push(format!("svc.{domain}"));
                searches.push(domain.to_string());
            }
            searches.extend(host.searches.iter().cloned());
            ResolvConf {
                servers: cluster_dns.to_vec(),
                searches: dedup(searches),
                options: vec!["ndots:5".to_string()],
            }
        }
        // ClusterFirst without a cluster DNS address: the kubelet falls back to Default.
        Kind::Cluster | Kind::Host => host.clone(),
    };
    if let Some(extra) = dns_config {
        conf.servers
            .extend(extra.nameservers.iter().flatten().cloned());
        conf.servers = dedup(std::mem::take(&mut conf.servers));
        conf.searches
            .extend(extra.searches.iter().flatten().cloned());
        conf.searches = dedup(std::mem::take(&mut conf.searches));
        let mut merged: Vec<(String, Option<String>)> = conf
            .options
            .iter()
            .map(|o| match o.split_once(':') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (o.clone(), None),
            })
            .collect();
        for opt in extra.options.iter().flatten() {
            let Some(name) = opt.name.clone() else {
                continue;
            };
            let value = opt.value.clone().filter(|v| !v.is_empty());
            match merged.iter_mut().find(|(k, _)| *k == name) {
                Some(slot) => slot.1 = value,
                None => merged.push((name, value)),
            }
        }
        conf.options = merged
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}:{v}"),
                None => k,
            })
            .collect();
    }
    conf.servers.truncate(MAX_NAMESERVERS);
    conf.searches.truncate(MAX_SEARCHES);
    let mut chars = 0;
    conf.searches.retain(|s| {
        chars += s.len() + 1;
        chars <= MAX_SEARCH_CHARS + 1
    });
    Some(conf)
}

/// The kube-dns Service's ClusterIP for a service CIDR: its 10th address, as kubeadm picks it
/// (10.96.0.0/12 → 10.96.0.10; fd00:10:96::/112 → fd00:10:96::a). `None` for a CIDR that is not
/// one or too small.
pub fn kube_dns_ip(service_cidr: &str) -> Option<IpAddr> {
    let (ip, len) = service_cidr.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    match ip {
        IpAddr::V4(v4) if len <= 28 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            Some(IpAddr::V4((u32::from(v4) & mask).checked_add(10)?.into()))
        }
        IpAddr::V6(v6) if len <= 124 => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            Some(IpAddr::V6((u128::from(v6) & mask).checked_add(10)?.into()))
        }
        _ => None,
    }
}

/// Keeps each string's first occurrence, in order.
fn dedup(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
#[path = "resolv_tests.rs"]
mod tests;
