//! Pod routes across machines, host-gw style (flannel's host-gw backend, kube-router's routes):
//! for every other Node with a pod range (`spec.podCIDR`) and an InternalIP, a kernel route
//! `PODCIDR via NODEIP` in the main table, so a pod's packet to another node's pod leaves
//! through the host to the machine that holds it. The Nodes need a shared L2 segment (the
//! next hop must be directly reachable); where it is not, the route is refused by the kernel
//! and the refusal logged.
//!
//! Routes carry their own protocol number ([`PROTO`]), which is how they are found again: a
//! resync lists `ip route show proto 157`, replaces what differs and deletes what no Node
//! wants — never a route something else made. A resync runs on every Node change (after
//! 100 ms of quiet) and every 30 s (a route deleted by hand comes back). On stop the routes
//! stay, so pods keep reaching each other while the agent restarts.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::io::AsyncWriteExt;

/// The routes' protocol number (`proto 157`), Capstan's marker.
pub const PROTO: u8 = 157;

const RESYNC: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(100);

/// What the routes should be: pod range → next hop, for every Node but `me`.
pub fn desired(me: &str, nodes: &[Node]) -> BTreeMap<String, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(me) || n.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(spec) = &n.spec else { continue };
        let ranges = spec
            .pod_cidrs
            .iter()
            .flatten()
            .chain(spec.pod_cidr.as_ref())
            .filter(|c| is_v4_cidr(c));
        let hop = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(|a| a.address.parse::<Ipv4Addr>().ok());
        if let Some(hop) = hop {
            for r in ranges {
                out.insert(r.clone(), hop);
            }
        }
    }
    out
}

fn is_v4_cidr(s: &str) -> bool {
    s.split_once('/').is_some_and(|(ip, bits)| {
        ip.parse::<Ipv4Addr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 32)
    })
}

/// The `ip` commands that take the table from `current` to `want`: deletions first.
pub fn changes(
    current: &BTreeMap<String, Ipv4Addr>,
    want: &BTreeMap<String, Ipv4Addr>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (dst, via) in current {
        if !want.contains_key(dst) {
            out.push(format!("route del {dst} via {via} proto {PROTO}"));
        }
    }
    for (dst, via) in want {
        if current.get(dst) != Some(via) {
            out.push(format!("route replace {dst} via {via} proto {PROTO}"));
        }
    }
    out
}

/// The kernel side: `ip`, in the agent's network namespace or (tests) a named one.
#[derive(Debug, Clone, Default)]
pub struct Kernel {
    /// `ip -n NETNS`.
    pub netns: Option<String>,
}

impl Kernel {
    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        if let Some(ns) = &self.netns {
            c.args(["-n", ns]);
        }
        c.stdin(Stdio::null()).kill_on_drop(true);
        c
    }

    /// The routes this module made (protocol [`PROTO`]) in the main table.
    pub async fn current(&self) -> std::io::Result<BTreeMap<String, Ipv4Addr>> {
        let out = self
            .command()
            .args(["-j", "-4", "route", "show", "proto", &PROTO.to_string()])
            .output()
            .await?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "ip route show: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let routes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .map_err(|e| std::io::Error::other(format!("ip -j route show: {e}")))?;
        Ok(routes
            .iter()
            .filter_map(|r| {
                let dst = r["dst"].as_str()?;
                let via = r["gateway"].as_str()?.parse().ok()?;
                // `ip` prints a host route without its /32.
                let dst = if dst.contains('/') {
                    dst.to_string()
                } else {
                    format!("{dst}/32")
                };
                Some((dst, via))
            })
            .collect())
    }

    /// Runs `commands` in one `ip -force -batch -` (each is tried; the failures come back).
    pub async fn apply(&self, commands: &[String]) -> std::io::Result<Vec<String>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut child = self
            .command()
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(commands.join("\n").as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        Ok(String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Makes the routes `want`: what changed, and the kernel's refusals.
    pub async fn sync(
        &self,
        want: &BTreeMap<String, Ipv4Addr>,
    ) -> std::io::Result<(usize, Vec<String>)> {
        let current = self.current().await?;
        let commands = changes(&current, want);
        let refused = self.apply(&commands).await?;
        Ok((commands.len(), refused))
    }
}

/// Keeps the routes equal to the Nodes until dropped.
pub async fn run(client: kube::Client, me: String, kernel: Kernel) {
    let api: Api<Node> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut listing: BTreeMap<String, Node> = BTreeMap::new();
    let mut listed = false;
    let mut due: Option<tokio::time::Instant> = None;
    let mut resync = tokio::time::interval(RESYNC);
    let mut last_refused: Vec<String> = Vec::new();
    loop {
        let wake = due.unwrap_or_else(|| tokio::time::Instant::now() + RESYNC * 2);
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { return };
                match event {
                    Ok(watcher::Event::Init) => listing.clear(),
                    Ok(watcher::Event::InitApply(n)) => {
                        listing.insert(n.metadata.name.clone().unwrap_or_default(), n);
                    }
                    Ok(watcher::Event::InitDone) => {
                        nodes = std::mem::take(&mut listing);
                        listed = true;
                    }
                    Ok(watcher::Event::Apply(n)) => {
                        nodes.insert(n.metadata.name.clone().unwrap_or_default(), n);
                    }
                    Ok(watcher::Event::Delete(n)) => {
                        nodes.remove(n.metadata.name.as_deref().unwrap_or_default());
                    }
                    Err(e) => tracing::warn!(error = %e, "pod routes: watching Nodes failed"),
                }
                if listed {
                    due = Some(due.unwrap_or_else(|| tokio::time::Instant::now() + QUIET));
                }
            }
            _ = resync.tick(), if listed => due = Some(tokio::time::Instant::now()),
            _ = tokio::time::sleep_until(wake), if due.is_some() => {
                due = None;
                let all: Vec<Node> = nodes.values().cloned().collect();
                let want = desired(&me, &all);
                match kernel.sync(&want).await {
                    Ok((changed, refused)) => {
                        if changed > 0 {
                            tracing::info!(routes = want.len(), changed, "pod routes synced");
                        }
                        if !refused.is_empty() && refused != last_refused {
                            tracing::warn!(errors = ?refused, "pod routes: the kernel refused some (is every node's InternalIP on a shared segment?)");
                        }
                        last_refused = refused;
                    }
                    Err(e) => tracing::warn!(error = %e, "pod routes: sync failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        let mut n = json!({"metadata": {"name": name}, "spec": {}, "status": {}});
        if let Some(c) = cidr {
            n["spec"] = json!({"podCIDR": c, "podCIDRs": [c, "fd00:1::/64"]});
        }
        if let Some(ip) = ip {
            n["status"]["addresses"] = json!([
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": "fd00::1"},
                {"type": "InternalIP", "address": ip},
            ]);
        }
        serde_json::from_value(n).unwrap()
    }

    #[test]
    fn every_other_node_with_a_range_and_an_address_is_routed() {
        let nodes = [
            node("me", Some("10.244.0.0/24"), Some("192.0.2.1")),
            node("b", Some("10.244.1.0/24"), Some("192.0.2.2")),
            node("no-range", None, Some("192.0.2.3")),
            node("no-address", Some("10.244.3.0/24"), None),
            node("bad", Some("10.244.4.0/33"), Some("192.0.2.5")),
        ];
        let want = desired("me", &nodes);
        assert_eq!(
            want.into_iter().collect::<Vec<_>>(),
            vec![("10.244.1.0/24".to_string(), "192.0.2.2".parse().unwrap())]
        );
    }

    #[test]
    fn changes_delete_what_is_gone_and_replace_what_moved() {
        let m = |v: &[(&str, &str)]| -> BTreeMap<String, Ipv4Addr> {
            v.iter()
                .map(|(d, g)| (d.to_string(), g.parse().unwrap()))
                .collect()
        };
        let current = m(&[
            ("10.244.1.0/24", "192.0.2.2"),
            ("10.244.2.0/24", "192.0.2.3"),
        ]);
        let want = m(&[
            ("10.244.1.0/24", "192.0.2.9"),
            ("10.244.5.0/24", "192.0.2.5"),
        ]);
        assert_eq!(
            changes(&current, &want),
            vec![
                "route del 10.244.2.0/24 via 192.0.2.3 proto 157",
                "route replace 10.244.1.0/24 via 192.0.2.9 proto 157",
                "route replace 10.244.5.0/24 via 192.0.2.5 proto 157",
            ]
        );
        assert!(changes(&want, &want).is_empty());
    }
}
