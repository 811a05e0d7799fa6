//! Zones and their disruption states (Kubernetes' ComputeZoneState and setLimiterInZone): how
//! fast unhealthy nodes of a zone may be tainted NoExecute, and when nothing may be done at all.
//!
//! - **Normal**: the primary rate (`--node-eviction-rate`, 0.1 nodes/s).
//! - **PartialDisruption**: more than 2 nodes not Ready and at least `--unhealthy-zone-threshold`
//!   (0.55) of the zone — the secondary rate (0.01/s) in a zone of more than
//!   `--large-cluster-size-threshold` (50) nodes, none at all in a smaller one.
//! - **FullDisruption**: no node of the zone Ready — the primary rate again (the zone itself
//!   likely failed, so its pods should go), unless *every* zone is fully disrupted: then the
//!   control plane is the likely one cut off, and nothing is done (see [`super::plan`]).
//!
//! Example: zone a has 10 nodes and 6 go silent. 6 > 2 and 6/10 ≥ 0.55, so zone a is partially
//! disrupted; as it has ≤ 50 nodes its rate is 0 and none of the 6 is tainted. Zone b, healthy,
//! keeps 0.1/s.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";

/// The zone a node belongs to: region and zone labels together (utilnode.GetZoneKey); "" when
/// the node has neither.
pub fn zone_of(node: &Node) -> String {
    let labels = node.metadata.labels.as_ref();
    let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    match (get(LABEL_REGION), get(LABEL_ZONE)) {
        (None, None) => String::new(),
        (r, z) => format!("{}:\u{0}:{}", r.unwrap_or(""), z.unwrap_or("")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneState {
    Normal,
    PartialDisruption,
    FullDisruption,
}

impl ZoneState {
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneState::Normal => "Normal",
            ZoneState::PartialDisruption => "PartialDisruption",
            ZoneState::FullDisruption => "FullDisruption",
        }
    }
}

/// The disruption settings (flags of `capstan controllers` and `capstan up`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// `--node-eviction-rate`: nodes per second tainted in a healthy zone.
    pub primary: f64,
    /// `--secondary-node-eviction-rate`: in a partially disrupted large zone.
    pub secondary: f64,
    /// `--unhealthy-zone-threshold`: the share of not-Ready nodes that disrupts a zone.
    pub unhealthy_zone_threshold: f64,
    /// `--large-cluster-size-threshold`: zones of at most this many nodes get rate 0 when
    /// partially disrupted.
    pub large_cluster_threshold: usize,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            primary: 0.1,
            secondary: 0.01,
            unhealthy_zone_threshold: 0.55,
            large_cluster_threshold: 50,
        }
    }
}

/// Counts of one zone's nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZoneCount {
    pub ready: usize,
    pub not_ready: usize,
}

impl Rates {
    /// ComputeZoneState.
    pub fn state(&self, c: ZoneCount) -> ZoneState {
        let total = c.ready + c.not_ready;
        if c.ready == 0 && c.not_ready > 0 {
            ZoneState::FullDisruption
        } else if c.not_ready > 2
            && total > 0
            && c.not_ready as f64 / total as f64 >= self.unhealthy_zone_threshold
        {
            ZoneState::PartialDisruption
        } else {
            ZoneState::Normal
        }
    }

    /// setLimiterInZone: the tainting rate of a zone of `size` nodes in `state`.
    pub fn rate(&self, state: ZoneState, size: usize) -> f64 {
        match state {
            ZoneState::Normal | ZoneState::FullDisruption => self.primary,
            ZoneState::PartialDisruption if size > self.large_cluster_threshold => self.secondary,
            ZoneState::PartialDisruption => 0.0,
        }
    }
}

/// Every zone's state; and whether all of them are fully disrupted (nothing may be done).
pub fn states<K: Ord + Clone>(
    rates: &Rates,
    counts: &BTreeMap<K, ZoneCount>,
) -> (BTreeMap<K, ZoneState>, bool) {
    let states: BTreeMap<K, ZoneState> = counts
        .iter()
        .map(|(z, c)| (z.clone(), rates.state(*c)))
        .collect();
    let all_full = !states.is_empty() && states.values().all(|s| *s == ZoneState::FullDisruption);
    (states, all_full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ready: usize, not_ready: usize) -> ZoneCount {
        ZoneCount { ready, not_ready }
    }

    #[test]
    fn zone_states_follow_kubernetes_thresholds() {
        let r = Rates::default();
        let cases = [
            (c(3, 0), ZoneState::Normal),
            (c(1, 2), ZoneState::Normal), // 2 not ready is never a disruption
            (c(2, 3), ZoneState::PartialDisruption), // 3/5 = 0.6 ≥ 0.55
            (c(3, 3), ZoneState::Normal), // 0.5 < 0.55
            (c(0, 1), ZoneState::FullDisruption),
            (c(0, 0), ZoneState::Normal),
        ];
        for (count, want) in cases {
            assert_eq!(r.state(count), want, "{count:?}");
        }
    }

    #[test]
    fn partial_disruption_stops_small_zones_and_slows_large_ones() {
        let r = Rates::default();
        assert_eq!(r.rate(ZoneState::Normal, 10), 0.1);
        assert_eq!(r.rate(ZoneState::PartialDisruption, 50), 0.0);
        assert_eq!(r.rate(ZoneState::PartialDisruption, 51), 0.01);
        assert_eq!(r.rate(ZoneState::FullDisruption, 3), 0.1);
    }

    #[test]
    fn only_every_zone_down_counts_as_full_disruption() {
        let r = Rates::default();
        let mut counts = BTreeMap::from([("a".to_string(), c(0, 3)), ("b".to_string(), c(1, 2))]);
        let (s, all) = states(&r, &counts);
        assert_eq!(s["a"], ZoneState::FullDisruption);
        assert!(!all);
        counts.insert("b".into(), c(0, 3));
        assert!(states(&r, &counts).1);
        assert!(!states(&r, &BTreeMap::<String, ZoneCount>::new()).1);
    }

    #[test]
    fn zone_keys_join_region_and_zone() {
        let mut n = Node::default();
        assert_eq!(zone_of(&n), "");
        n.metadata.labels = Some(BTreeMap::from([(LABEL_ZONE.to_string(), "z1".to_string())]));
        assert_eq!(zone_of(&n), ":\u{0}:z1");
    }
}
