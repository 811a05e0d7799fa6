//! Scoring strategies, chosen per profile:
//! - `spread`: least allocated (cpu and memory free after placing the pod) plus spreading a
//!   workload's replicas — fewer pods of the same controller on the node, and in its zone
//!   (topology.kubernetes.io/zone), score higher;
//! - `binpack`: most allocated — fill the fullest node that fits, nodes in name order on ties;
//! - `random`: any feasible node.
//!
//! Spread and binpack add the pod's soft constraints ([`super::soft`]) to their own score.

use std::collections::HashMap;

use super::cache::NodeInfo;
use super::resources::Resources;

pub const ZONE: &str = "topology.kubernetes.io/zone";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Spread,
    Binpack,
    Random,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spread" => Ok(Strategy::Spread),
            "binpack" => Ok(Strategy::Binpack),
            "random" => Ok(Strategy::Random),
            other => Err(format!(
                "unknown scoring strategy {other:?}: expected spread, binpack or random"
            )),
        }
    }
}

/// Fraction (0..=100) of a resource in use once the pod is placed.
fn used_percent(alloc: i64, used: i64, add: i64) -> f64 {
    if alloc <= 0 {
        return 100.0;
    }
    (((used + add) as f64 / alloc as f64) * 100.0).clamp(0.0, 100.0)
}

fn allocated(node: &NodeInfo, pod: &Resources) -> f64 {
    let cpu = used_percent(
        node.allocatable.cpu_milli,
        node.scoring.cpu_milli,
        pod.cpu_milli,
    );
    let mem = used_percent(node.allocatable.memory, node.scoring.memory, pod.memory);
    (cpu + mem) / 2.0
}

/// Picks the best of `feasible` (non-empty) for a pod with scoring requests `pod` and controller
/// `owner`; `soft` adds each node's soft-constraint score ([`super::soft`]) to the strategy's.
pub fn pick<'a>(
    strategy: Strategy,
    feasible: &[&'a NodeInfo],
    pod: &Resources,
    owner: Option<&str>,
    soft: Option<&[f64]>,
) -> &'a NodeInfo {
    let extra = |i: usize| soft.and_then(|s| s.get(i)).copied().unwrap_or(0.0);
    match strategy {
        Strategy::Random => feasible[fastrand::usize(..feasible.len())],
        Strategy::Binpack => {
            let mut best = feasible[0];
            let mut best_score = allocated(best, pod) + extra(0);
            for (i, n) in feasible.iter().enumerate().skip(1) {
                let s = allocated(n, pod) + extra(i);
                if s > best_score + 1e-9 {
                    best = n;
                    best_score = s;
                }
            }
            best
        }
        Strategy::Spread => {
            let count = |n: &NodeInfo| -> i64 {
                owner.map_or(0, |o| n.owners.get(o).copied().unwrap_or(0))
            };
            let counts: Vec<i64> = feasible.iter().map(|n| count(n)).collect();
            let max = counts.iter().copied().max().unwrap_or(0);
            let mut zones: HashMap<&str, i64> = HashMap::new();
            for (n, c) in feasible.iter().zip(&counts) {
                if let Some(z) = n.labels().and_then(|l| l.get(ZONE)) {
                    *zones.entry(z.as_str()).or_default() += c;
                }
            }
            let zone_max = zones.values().copied().max().unwrap_or(0);
            let mut best = 0;
            let mut best_score = f64::MIN;
            for (i, n) in feasible.iter().enumerate() {
                let least = 100.0 - allocated(n, pod);
                let node_spread = if max > 0 {
                    100.0 * (max - counts[i]) as f64 / max as f64
                } else {
                    100.0
                };
                let spread = match n.labels().and_then(|l| l.get(ZONE)) {
                    Some(z) if zone_max > 0 => {
                        let zone_spread =
                            100.0 * (zone_max - zones[z.as_str()]) as f64 / zone_max as f64;
                        node_spread / 3.0 + zone_spread * 2.0 / 3.0
                    }
                    _ => node_spread,
                };
                let score = least + spread + extra(i);
                if score > best_score + 1e-9 {
                    best = i;
                    best_score = score;
                }
            }
            feasible[best]
        }
    }
}
