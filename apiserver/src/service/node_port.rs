//! NodePort allocation from the node-port range (default 30000-32767, Kubernetes'
//! `--service-node-port-range`).
//!
//! Each allocated port is a claim `servicenodeports/<port>` ([`super::claims`]): unique across
//! API servers sharing a store, released when its Service lets go of it (deleted, a port
//! removed, the type changed to ClusterIP), repaired every minute. One Service may use one port
//! number for a TCP and a UDP port (DNS on 53 both ways): it holds one claim for both.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use capstan_storage::Storage;
use serde_json::Value;

use super::claims::Claims;
use crate::errors::{ApiError, ApiResult};

const PREFIX: &str = "servicenodeports/";

/// An inclusive port range, `30000-32767`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePortRange {
    pub first: u16,
    pub last: u16,
}

impl Default for NodePortRange {
    fn default() -> Self {
        NodePortRange {
            first: 30000,
            last: 32767,
        }
    }
}

impl std::str::FromStr for NodePortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a port range (first-last, e.g. 30000-32767)"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
        };
        let (first, last) = (port(a)?, port(b)?);
        if first > last {
            return Err(format!("{s:?}: the first port is above the last"));
        }
        Ok(NodePortRange { first, last })
    }
}

impl std::fmt::Display for NodePortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl NodePortRange {
    pub fn contains(&self, port: i64) -> bool {
        (i64::from(self.first)..=i64::from(self.last)).contains(&port)
    }
    fn size(&self) -> u32 {
        u32::from(self.last - self.first) + 1
    }
}

/// Whether a Service of this spec has node ports allocated for its ports: NodePort, and
/// LoadBalancer unless `allocateLoadBalancerNodePorts` is false.
pub fn wants_node_ports(spec: &Value) -> bool {
    match spec["type"].as_str() {
        Some("NodePort") => true,
        Some("LoadBalancer") => spec["allocateLoadBalancerNodePorts"] != false,
        _ => false,
    }
}

/// Whether a Service of this spec may carry node ports at all.
pub fn may_have_node_ports(spec: &Value) -> bool {
    matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"))
}

/// The node ports a Service's spec names (each number once).
pub fn node_ports_of(svc: &Value) -> BTreeSet<u16> {
    svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .collect()
}

fn invalid(index: usize, port: i64, message: String) -> ApiError {
    ApiError::invalid(
        "",
        "Service",
        "",
        vec![capstan_api::validation::FieldError {
            field: format!("spec.ports[{index}].nodePort"),
            value: port.to_string(),
            message,
        }],
    )
}

#[derive(Clone, Debug)]
pub struct NodePortAllocator {
    range: NodePortRange,
    claims: Claims,
}

impl NodePortAllocator {
    pub fn new(range: NodePortRange, store: Arc<dyn Storage>) -> NodePortAllocator {
        NodePortAllocator {
            range,
            claims: Claims::new(PREFIX, "NodePort", store),
        }
    }

    pub fn range(&self) -> NodePortRange {
        self.range
    }

    /// Gives every port of `svc` that needs one a node port, claiming each number `held` does
    /// not hold already (the live Service's, on an update); given numbers must be in range and
    /// free. Returns the numbers claimed by this call — on an error, every one is released
    /// again before returning. With `dry_run` nothing is claimed.
    pub async fn allocate(
        &self,
        svc: &mut Value,
        held: &BTreeSet<u16>,
        owner: &str,
        dry_run: bool,
    ) -> ApiResult<BTreeSet<u16>> {
        let mut claimed = BTreeSet::new();
        let result = self
            .allocate_inner(svc, held, owner, dry_run, &mut claimed)
            .await;
        if result.is_err() && !dry_run {
            for p in &claimed {
                self.release(*p).await;
            }
        }
        result.map(|_| claimed)
    }

    async fn allocate_inner(
        &self,
        svc: &mut Value,
        held: &BTreeSet<u16>,
        owner: &str,
        dry_run: bool,
        claimed: &mut BTreeSet<u16>,
    ) -> ApiResult<()> {
        let wants = wants_node_ports(&svc["spec"]);
        let Some(ports) = svc
            .get_mut("spec")
            .and_then(|s| s.get_mut("ports"))
            .and_then(Value::as_array_mut)
        else {
            return Ok(());
        };
        for (i, port) in ports.iter_mut().enumerate() {
            match port["nodePort"].as_i64().filter(|p| *p != 0) {
                Some(n) => {
                    let Ok(n16) = u16::try_from(n) else {
                        return Err(invalid(i, n, "must be between 1 and 65535".into()));
                    };
                    if held.contains(&n16) || claimed.contains(&n16) {
                        continue;
                    }
                    if !self.range.contains(n) {
                        return Err(invalid(
                            i,
                            n,
                            format!(
                                "provided port is not in the valid range. The range of valid ports is {}",
                                self.range
                            ),
                        ));
                    }
                    let free = if dry_run {
                        !self.claims.is_claimed(&n.to_string()).await?
                    } else {
                        self.claims.claim(&n.to_string(), owner).await?
                    };
                    if !free {
                        return Err(invalid(i, n, "provided port is already allocated".into()));
                    }
                    claimed.insert(n16);
                }
                None if wants => {
                    let first = u32::from(self.range.first);
                    let found = self
                        .claims
                        .claim_any(
                            self.range.size(),
                            self.range.size(),
                            |k| (first + k).to_string(),
                            owner,
                            dry_run,
                        )
                        .await?;
                    let Some(n) = found.and_then(|n| n.parse::<u16>().ok()) else {
                        return Err(ApiError::internal(format!(
                            "no free NodePort found in {} (range full)",
                            self.range
                        )));
                    };
                    claimed.insert(n);
                    if let Some(o) = port.as_object_mut() {
                        o.insert("nodePort".into(), Value::from(n));
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Releases a port (idempotent).
    pub async fn release(&self, port: u16) {
        self.claims.release(&port.to_string()).await
    }

    /// One repair pass ([`Claims::repair`]).
    pub async fn repair(
        &self,
        previously_leaked: &HashMap<String, i64>,
    ) -> ApiResult<HashMap<String, i64>> {
        let range = self.range;
        self.claims
            .repair(previously_leaked, |svc| {
                node_ports_of(svc)
                    .into_iter()
                    .filter(|p| range.contains(i64::from(*p)))
                    .map(|p| p.to_string())
                    .collect()
            })
            .await
    }

    /// Runs [`NodePortAllocator::repair`] every `interval` until the store is dropped.
    pub fn spawn_repair(&self, interval: std::time::Duration) {
        let store = Arc::downgrade(self.claims.store());
        let range = self.range;
        tokio::spawn(async move {
            let mut leaked = HashMap::new();
            loop {
                tokio::time::sleep(interval).await;
                let Some(store) = store.upgrade() else { return };
                match NodePortAllocator::new(range, store).repair(&leaked).await {
                    Ok(now) => leaked = now,
                    Err(e) => tracing::warn!(error = %e.message, "NodePort repair failed"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ranges_parse_and_bound() {
        let r: NodePortRange = "30000-32767".parse().unwrap();
        assert_eq!(r, NodePortRange::default());
        assert!(r.contains(30000) && r.contains(32767));
        assert!(!r.contains(29999) && !r.contains(32768));
        assert_eq!(r.size(), 2768);
        for bad in ["30000", "2-1", "0-10", "a-b", "1-70000"] {
            assert!(bad.parse::<NodePortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn which_services_get_node_ports() {
        assert!(wants_node_ports(&json!({"type": "NodePort"})));
        assert!(wants_node_ports(&json!({"type": "LoadBalancer"})));
        assert!(!wants_node_ports(
            &json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false})
        ));
        assert!(!wants_node_ports(&json!({"type": "ClusterIP"})));
        assert_eq!(
            node_ports_of(&json!({"spec": {"ports": [
                {"port": 53, "protocol": "UDP", "nodePort": 30053},
                {"port": 53, "protocol": "TCP", "nodePort": 30053},
                {"port": 80}]}})),
            BTreeSet::from([30053])
        );
    }
}
