//! The planner, pure: a [`State`] in, `nft -f` text out — kube-proxy's nftables `syncProxyRules`
//! (pkg/proxy/nftables/proxier.go) without the I/O.
//!
//! Layout of the table (one `ip` family table owned by Capstan, `ip capstan` by default):
//!
//! ```text
//! filter-prerouting  filter hook prerouting priority -110 (dstnat-10) ┐ ct state new
//! filter-output      filter hook output     priority -110             ┘ jump service-endpoints-check
//! service-endpoints-check: ip daddr . meta l4proto . th dport vmap @no-endpoint-services
//!                          <node address> meta l4proto . th dport vmap @no-endpoint-nodeports
//! nat-prerouting / nat-output (nat, priority -100 = dstnat): jump services
//! nat-postrouting (nat, priority 100 = srcnat): jump masquerading
//! services: ip daddr . meta l4proto . th dport vmap @service-ips
//!           <node address> meta l4proto . th dport vmap @service-nodeports
//! service-HASH-ns/svc/tcp/port   the ClusterIP policy: numgen random mod N vmap { i : goto endpoint-… }
//! local-HASH-ns/svc/tcp/port     the same over this node's endpoints (traffic policy Local)
//! external-HASH-ns/svc/tcp/port  NodePort traffic: mark for masquerade (policy Cluster), then goto
//! endpoint-HASH-ns/svc/tcp/port__IP/PORT: ip saddr IP jump mark-for-masquerade (hairpin); dnat to IP:PORT
//! ```
//!
//! `<node address>` is `ip daddr @nodeport-ips` when the node's addresses are configured, else
//! `fib daddr type local ip daddr != 127.0.0.0/8` (NodePorts never answer on loopback).
//!
//! A service port with no usable endpoint gets no chains, only an element in
//! `no-endpoint-services` (and `no-endpoint-nodeports`) that jumps to `reject-chain`, so clients
//! are refused at once instead of timing out. Traffic policy Local with no local endpoint drops
//! that traffic instead (as kube-proxy does), while the other kind of traffic still flows.
//!
//! ClientIP session affinity: one dynamic set per endpoint (`affinity-HASH-…`, timeout from the
//! Service) that the endpoint chain fills with `update @set { ip saddr }`; the policy chain first
//! sends a client found in an endpoint's set to that endpoint. (A dynamic *map* from client to
//! endpoint would be one set per port, but nft cannot write a verdict from the packet path.)
//! The timeout is part of the set's hash, so a changed timeout is a new set, never an in-place
//! redefinition.
//!
//! Chain names are `prefix-HASH-readable`, HASH being the first 8 base32 characters of the
//! SHA-256 of the readable part, as kube-proxy names them; nft identifiers may hold `/ - _ .`,
//! hence `__` and `/` in endpoint chain names.
//!
//! [`full`] rewrites the whole table in one transaction without deleting it: `add table` (a
//! no-op when it exists), `flush table` (every rule), flush every map, then everything again —
//! packets see the old ruleset or the new one, never an empty table. [`partial`] sends only
//! what changed between two states: new chains added, changed chains flushed and refilled, map
//! elements deleted and added, then removed chains and sets deleted, in that order within one
//! transaction (the kernel accepts deleting a chain whose references are flushed earlier in the
//! same transaction).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use sha2::{Digest, Sha256};

use super::model::{Endpoint, ServicePort, ServicePortName, State, TableConfig};

/// The packet mark bit meaning "masquerade me" (kube-proxy's 0x4000).
pub const MASQUERADE_MARK: &str = "0x4000";

const BASE_CHAINS: [(&str, &str); 10] = [
    (
        "filter-prerouting",
        "{ type filter hook prerouting priority -110; policy accept; }",
    ),
    (
        "filter-output",
        "{ type filter hook output priority -110; policy accept; }",
    ),
    (
        "nat-prerouting",
        "{ type nat hook prerouting priority -100; policy accept; }",
    ),
    (
        "nat-output",
        "{ type nat hook output priority -100; policy accept; }",
    ),
    (
        "nat-postrouting",
        "{ type nat hook postrouting priority 100; policy accept; }",
    ),
    ("service-endpoints-check", ""),
    ("services", ""),
    ("masquerading", ""),
    ("mark-for-masquerade", ""),
    ("reject-chain", ""),
];

const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
const NODEPORT_IPS: &str = "nodeport-ips";
const IP_KEY: &str = "{ type ipv4_addr . inet_proto . inet_service : verdict; }";
const PORT_KEY: &str = "{ type inet_proto . inet_service : verdict; }";
const MAPS: [(&str, &str); 4] = [
    (SERVICE_IPS, IP_KEY),
    (SERVICE_NODEPORTS, PORT_KEY),
    (NO_ENDPOINT_SERVICES, IP_KEY),
    (NO_ENDPOINT_NODEPORTS, PORT_KEY),
];

/// Names of the chains and sets (maps included) found in the kernel's table, for a full sync
/// that adopts a table it did not write (after a restart) and deletes what is stale.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// How many chains and rules a plan adds (a full plan) or changes by (a partial one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub chains: i64,
    pub rules: i64,
}

/// The whole table for `state`, not deleting anything stale (see [`full_adopting`]).
pub fn full(state: &State) -> String {
    full_adopting(state, &Existing::default()).0
}

/// The whole table for `state`, deleting the chains and sets in `existing` that `state` no
/// longer has; with the number of chains and rules the table then holds.
pub fn full_adopting(state: &State, existing: &Existing) -> (String, Counts) {
    let cfg = &state.config;
    let t = &cfg.table;
    let mut out = String::with_capacity(256 * (state.services.len() + 8));
    let _ = writeln!(out, "add table ip {t}");
    let _ = writeln!(out, "flush table ip {t}");
    let mut chains: BTreeSet<String> = BTreeSet::new();
    let mut sets: BTreeSet<String> = BTreeSet::new();
    for (name, spec) in BASE_CHAINS {
        let sep = if spec.is_empty() { "" } else { " " };
        let _ = writeln!(out, "add chain ip {t} {name}{sep}{spec}");
        chains.insert(name.to_string());
    }
    for (name, spec) in MAPS {
        let _ = writeln!(out, "add map ip {t} {name} {spec}");
        let _ = writeln!(out, "flush map ip {t} {name}");
        sets.insert(name.to_string());
    }
    if !cfg.node_ips.is_empty() {
        let _ = writeln!(out, "add set ip {t} {NODEPORT_IPS} {{ type ipv4_addr; }}");
        let _ = writeln!(out, "flush set ip {t} {NODEPORT_IPS}");
        sets.insert(NODEPORT_IPS.to_string());
    }
    let rendered: Vec<Rendered> = state
        .services
        .iter()
        .map(|(k, sp)| render(cfg, k, sp))
        .collect();
    let mut counts = Counts {
        chains: BASE_CHAINS.len() as i64,
        rules: 0,
    };
    for r in &rendered {
        for (name, _) in &r.chains {
            let _ = writeln!(out, "add chain ip {t} {name}");
            chains.insert(name.clone());
        }
        for (name, spec) in &r.sets {
            let _ = writeln!(out, "add set ip {t} {name} {spec}");
            sets.insert(name.clone());
        }
    }
    // Every rule referring to a stale chain or set was flushed above. Stale sets go first: a
    // stale verdict map may still point at a stale chain.
    for name in existing.sets.difference(&sets) {
        let _ = writeln!(out, "delete set ip {t} {name}");
    }
    for name in existing.chains.difference(&chains) {
        let _ = writeln!(out, "delete chain ip {t} {name}");
    }
    for (chain, rule) in base_rules(cfg) {
        let _ = writeln!(out, "add rule ip {t} {chain} {rule}");
        counts.rules += 1;
    }
    let mut elements: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in &rendered {
        counts.chains += r.chains.len() as i64;
        for (name, rules) in &r.chains {
            for rule in rules {
                let _ = writeln!(out, "add rule ip {t} {name} {rule}");
            }
            counts.rules += rules.len() as i64;
        }
        for (map, key, value) in &r.elements {
            elements
                .entry(map)
                .or_default()
                .push(format!("{key} : {value}"));
        }
    }
    if !cfg.node_ips.is_empty() {
        let ips: Vec<String> = cfg.node_ips.iter().map(|ip| ip.to_string()).collect();
        elements.insert(NODEPORT_IPS, ips);
    }
    for (map, elems) in elements {
        let _ = writeln!(out, "add element ip {t} {map} {{ {} }}", elems.join(", "));
    }
    (out, counts)
}

/// What changed from `old` (what the kernel holds) to `new`; empty when nothing did. A changed
/// table configuration makes it a full plan that deletes `old`'s leftovers.
pub fn partial(old: &State, new: &State) -> String {
    partial_counted(old, new).0
}

/// [`partial`] with how the chain and rule counts change.
pub fn partial_counted(old: &State, new: &State) -> (String, Counts) {
    if old.config != new.config {
        let (text, counts) = full_adopting(new, &existing_of(old));
        let before = full_adopting(old, &Existing::default()).1;
        let delta = Counts {
            chains: counts.chains - before.chains,
            rules: counts.rules - before.rules,
        };
        return (text, delta);
    }
    let cfg = &new.config;
    let mut was = Rendered::default();
    let mut now = Rendered::default();
    let keys: BTreeSet<&ServicePortName> = old.services.keys().chain(new.services.keys()).collect();
    for key in keys {
        let (a, b) = (old.services.get(key), new.services.get(key));
        if a == b {
            continue;
        }
        if let Some(a) = a {
            was.extend(render(cfg, key, a));
        }
        if let Some(b) = b {
            now.extend(render(cfg, key, b));
        }
    }
    diff(&cfg.table, was, now)
}

/// The chain and set names a full plan of `state` creates.
pub fn existing_of(state: &State) -> Existing {
    let mut e = Existing::default();
    e.chains
        .extend(BASE_CHAINS.iter().map(|(n, _)| n.to_string()));
    e.sets.extend(MAPS.iter().map(|(n, _)| n.to_string()));
    if !state.config.node_ips.is_empty() {
        e.sets.insert(NODEPORT_IPS.to_string());
    }
    for (k, sp) in &state.services {
        let r = render(&state.config, k, sp);
        e.chains.extend(r.chains.into_iter().map(|(n, _)| n));
        e.sets.extend(r.sets.into_iter().map(|(n, _)| n));
    }
    e
}

fn diff(t: &str, was: Rendered, now: Rendered) -> (String, Counts) {
    let old_chains: BTreeMap<String, Vec<String>> = was.chains.into_iter().collect();
    let new_chains: BTreeMap<String, Vec<String>> = now.chains.into_iter().collect();
    let old_sets: BTreeMap<String, String> = was.sets.into_iter().collect();
    let new_sets: BTreeMap<String, String> = now.sets.into_iter().collect();
    let old_elems: BTreeMap<(&str, String), String> = was
        .elements
        .into_iter()
        .map(|(m, k, v)| ((m, k), v))
        .collect();
    let new_elems: BTreeMap<(&str, String), String> = now
        .elements
        .into_iter()
        .map(|(m, k, v)| ((m, k), v))
        .collect();
    let mut out = String::new();
    let mut counts = Counts::default();
    // 1. New chains and sets exist before anything refers to them.
    for name in new_chains.keys().filter(|n| !old_chains.contains_key(*n)) {
        let _ = writeln!(out, "add chain ip {t} {name}");
        counts.chains += 1;
    }
    for (name, spec) in new_sets.iter().filter(|(n, _)| !old_sets.contains_key(*n)) {
        let _ = writeln!(out, "add set ip {t} {name} {spec}");
    }
    // 2. New and changed chains get their rules.
    for (name, rules) in &new_chains {
        let before = old_chains.get(name);
        if before == Some(rules) {
            continue;
        }
        if let Some(before) = before {
            let _ = writeln!(out, "flush chain ip {t} {name}");
            counts.rules -= before.len() as i64;
        }
        for rule in rules {
            let _ = writeln!(out, "add rule ip {t} {name} {rule}");
        }
        counts.rules += rules.len() as i64;
    }
    // 3. Map elements: deletions first, so a changed verdict is a delete and an add.
    let mut deletes: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for ((map, key), value) in &old_elems {
        if new_elems.get(&(*map, key.clone())) != Some(value) {
            deletes.entry(map).or_default().push(key);
        }
    }
    for (map, keys) in deletes {
        let _ = writeln!(out, "delete element ip {t} {map} {{ {} }}", keys.join(", "));
    }
    let mut adds: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((map, key), value) in &new_elems {
        if old_elems.get(&(*map, key.clone())) != Some(value) {
            adds.entry(map)
                .or_default()
                .push(format!("{key} : {value}"));
        }
    }
    for (map, elems) in adds {
        let _ = writeln!(out, "add element ip {t} {map} {{ {} }}", elems.join(", "));
    }
    // 4. Removed chains: flush all (they may refer to each other), then delete; then their sets.
    let removed: Vec<(&String, &Vec<String>)> = old_chains
        .iter()
        .filter(|(n, _)| !new_chains.contains_key(*n))
        .collect();
    for (name, rules) in &removed {
        let _ = writeln!(out, "flush chain ip {t} {name}");
        counts.rules -= rules.len() as i64;
    }
    for (name, _) in &removed {
        let _ = writeln!(out, "delete chain ip {t} {name}");
        counts.chains -= 1;
    }
    for name in old_sets.keys().filter(|n| !new_sets.contains_key(*n)) {
        let _ = writeln!(out, "delete set ip {t} {name}");
    }
    (out, counts)
}

/// The rules of the table's fixed chains.
fn base_rules(cfg: &TableConfig) -> Vec<(&'static str, String)> {
    let node = node_address_match(cfg);
    vec![
        (
            "filter-prerouting",
            "ct state new jump service-endpoints-check".into(),
        ),
        (
            "filter-output",
            "ct state new jump service-endpoints-check".into(),
        ),
        (
            "service-endpoints-check",
            format!("ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"),
        ),
        (
            "service-endpoints-check",
            format!("{node} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"),
        ),
        ("nat-prerouting", "jump services".into()),
        ("nat-output", "jump services".into()),
        ("nat-postrouting", "jump masquerading".into()),
        (
            "masquerading",
            format!("meta mark & {MASQUERADE_MARK} == 0 return"),
        ),
        (
            "masquerading",
            format!("meta mark set meta mark ^ {MASQUERADE_MARK}"),
        ),
        ("masquerading", "masquerade fully-random".into()),
        (
            "mark-for-masquerade",
            format!("meta mark set meta mark | {MASQUERADE_MARK}"),
        ),
        ("reject-chain", "reject".into()),
        (
            "services",
            format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
        ),
        (
            "services",
            format!("{node} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"),
        ),
    ]
}

fn node_address_match(cfg: &TableConfig) -> String {
    if cfg.node_ips.is_empty() {
        "fib daddr type local ip daddr != 127.0.0.0/8".to_string()
    } else {
        format!("ip daddr @{NODEPORT_IPS}")
    }
}

/// One service port's share of the table.
#[derive(Debug, Default)]
struct Rendered {
    chains: Vec<(String, Vec<String>)>,
    sets: Vec<(String, String)>,
    elements: Vec<(&'static str, String, String)>,
}

impl Rendered {
    fn extend(&mut self, other: Rendered) {
        self.chains.extend(other.chains);
        self.sets.extend(other.sets);
        self.elements.extend(other.elements);
    }
}

/// `prefix-HASH-readable`.
fn chain_name(prefix: &str, readable: &str) -> String {
    format!("{prefix}-{}-{readable}", hash8(readable))
}

/// The first 8 characters of the base32 (RFC 4648) SHA-256 of `s`: 40 bits.
fn hash8(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(s.as_bytes());
    let bits = digest[..5]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    (0..8)
        .map(|i| ALPHABET[((bits >> (35 - 5 * i)) & 31) as usize] as char)
        .collect()
}

fn render(cfg: &TableConfig, key: &ServicePortName, sp: &ServicePort) -> Rendered {
    let id = key.to_string();
    let proto = key.protocol.nft();
    let mut r = Rendered::default();
    let ip_key = format!("{} . {proto} . {}", sp.cluster_ip, sp.port);
    let np_key = sp.node_port.map(|np| format!("{proto} . {np}"));
    let cluster = sp.cluster_endpoints();
    if cluster.is_empty() {
        let reject = "goto reject-chain".to_string();
        r.elements
            .push((NO_ENDPOINT_SERVICES, ip_key, reject.clone()));
        if let Some(np_key) = np_key {
            r.elements.push((NO_ENDPOINT_NODEPORTS, np_key, reject));
        }
        return r;
    }
    let local = sp.local_endpoints();
    let uses_local = sp.internal_local || (np_key.is_some() && sp.external_local);
    let service_chain = chain_name("service", &id);
    let local_chain = chain_name("local", &id);
    // The cluster-wide chain serves ClusterIP traffic (policy Cluster) and NodePort traffic
    // (either policy: Local still sends pods' and the node's own NodePort traffic cluster-wide).
    let needs_cluster_chain = !sp.internal_local || np_key.is_some();
    let needs_local_chain = uses_local && !local.is_empty();

    // ClusterIP traffic.
    if !sp.internal_local {
        r.elements
            .push((SERVICE_IPS, ip_key, format!("goto {service_chain}")));
    } else if needs_local_chain {
        r.elements
            .push((SERVICE_IPS, ip_key, format!("goto {local_chain}")));
    } else {
        r.elements
            .push((NO_ENDPOINT_SERVICES, ip_key, "drop".into()));
    }
    // NodePort traffic.
    if let Some(np_key) = np_key {
        if sp.external_local && local.is_empty() {
            r.elements
                .push((NO_ENDPOINT_NODEPORTS, np_key, "drop".into()));
        } else {
            let external = chain_name("external", &id);
            let mut rules = Vec::new();
            if sp.external_local {
                if let Some(cidr) = &cfg.masquerade_cidr {
                    rules.push(format!("ip saddr {cidr} goto {service_chain}"));
                }
                rules.push("fib saddr type local jump mark-for-masquerade".to_string());
                rules.push(format!("fib saddr type local goto {service_chain}"));
                rules.push(format!("goto {local_chain}"));
            } else {
                rules.push("jump mark-for-masquerade".to_string());
                rules.push(format!("goto {service_chain}"));
            }
            r.elements
                .push((SERVICE_NODEPORTS, np_key, format!("goto {external}")));
            r.chains.push((external, rules));
        }
    }

    let mut used: BTreeSet<&Endpoint> = BTreeSet::new();
    if needs_cluster_chain {
        r.chains
            .push((service_chain, policy_rules(cfg, &id, sp, &cluster)));
        used.extend(cluster.iter().copied());
    }
    if needs_local_chain {
        r.chains
            .push((local_chain, policy_rules(cfg, &id, sp, &local)));
        used.extend(local.iter().copied());
    }
    for ep in used {
        let (chain, affinity) = endpoint_names(&id, sp, ep);
        let mut rules = vec![format!("ip saddr {} jump mark-for-masquerade", ep.ip)];
        if let Some((set, timeout)) = affinity {
            r.sets.push((
                set.clone(),
                format!("{{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"),
            ));
            rules.push(format!("update @{set} {{ ip saddr }}"));
        }
        rules.push(format!(
            "meta l4proto {proto} dnat to {}:{}",
            ep.ip, ep.port
        ));
        r.chains.push((chain, rules));
    }
    r
}

/// The endpoint's chain, and its affinity set with the timeout when the port has affinity.
fn endpoint_names(id: &str, sp: &ServicePort, ep: &Endpoint) -> (String, Option<(String, u32)>) {
    let readable = format!("{id}__{}/{}", ep.ip, ep.port);
    let chain = chain_name("endpoint", &readable);
    let affinity = sp.affinity_timeout.map(|timeout| {
        let set = format!(
            "affinity-{}-{readable}",
            hash8(&format!("{readable}/{timeout}"))
        );
        (set, timeout)
    });
    (chain, affinity)
}

/// A policy chain: masquerade pod traffic when asked, stick to an endpoint by affinity, else
/// pick one at random.
fn policy_rules(cfg: &TableConfig, id: &str, sp: &ServicePort, eps: &[&Endpoint]) -> Vec<String> {
    let mut rules = Vec::with_capacity(eps.len() + 2);
    if let Some(cidr) = &cfg.masquerade_cidr {
        rules.push(format!("ip saddr {cidr} jump mark-for-masquerade"));
    }
    let mut vmap = String::new();
    for (i, ep) in eps.iter().enumerate() {
        let (chain, affinity) = endpoint_names(id, sp, ep);
        if let Some((set, _)) = affinity {
            rules.push(format!("ip saddr @{set} goto {chain}"));
        }
        if i > 0 {
            vmap.push_str(", ");
        }
        let _ = write!(vmap, "{i} : goto {chain}");
    }
    rules.push(format!("numgen random mod {} vmap {{ {vmap} }}", eps.len()));
    rules
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
