//! One monitoring pass over every node (Kubernetes' monitorNodeHealth, handleDisruption,
//! doNoScheduleTaintingPass and doNoExecuteTaintingPass), as a pure function of the nodes, what
//! the controller has observed of them ([`Probes`]) and the time: it returns the writes to make.
//!
//! Per node:
//! 1. **Judge** — silent for longer than the grace period (`--node-monitor-grace-period`, or
//!    `--node-startup-grace-period` for a node that never posted Ready) → every condition
//!    Unknown. Otherwise its own Ready condition counts; an Unknown that *this controller* wrote
//!    and that a newer heartbeat contradicts counts as nothing yet (the agent will post).
//! 2. **NoSchedule taints** follow the conditions at once: not-ready, unreachable, memory-,
//!    disk-, pid-pressure, network-unavailable, and unschedulable for a cordoned node.
//! 3. **NoExecute taints** (`unreachable` for Unknown, `not-ready` for False) go on behind the
//!    zone's rate limiter ([`super::ratelimit`], [`super::zones`]); swapping one for the other,
//!    and removing both from a Ready node, happen at once. Pods on a node that stops being
//!    Ready are marked Ready=False at once, so endpoints drop them.
//!
//! **When every zone is fully disrupted, nothing is done**: no NoExecute taint (those present
//! are removed), no pod marked NotReady. Kubernetes applies that check to evictions only and
//! still marks every pod NotReady when the control plane is cut off from all nodes, emptying
//! every Service (kubernetes/kubernetes 77864, 105617). Capstan also closes the window in which
//! nodes cross their grace periods one after another: a node silent for more than half its
//! Lease duration (the agent renews every quarter) already counts as not Ready when zones are
//! judged, so when all agents stop at once the first node to time out finds every zone down.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::time::Instant;

use super::health::{self, Probe, Probes};
use super::ratelimit::ZoneTainter;
use super::zones::{self, Rates, ZoneCount, ZoneState};
use crate::taints::{self, NO_EXECUTE, NO_SCHEDULE};

/// The controller's timing and rate settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--node-monitor-grace-period` (50 s).
    pub grace: Duration,
    /// `--node-startup-grace-period` (60 s): for a node that never posted Ready.
    pub startup_grace: Duration,
    pub rates: Rates,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            grace: Duration::from_secs(50),
            startup_grace: Duration::from_secs(60),
            rates: Rates::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    True,
    False,
    Unknown,
}

/// A write the pass asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Set the node's conditions (Ready and the pressure ones Unknown); `was_ready`: it was
    /// Ready until now (a NodeNotReady event is due).
    MarkUnknown {
        node: String,
        conditions: Vec<NodeCondition>,
        was_ready: bool,
    },
    /// Replace the node's taints.
    SetTaints { node: String, taints: Vec<Taint> },
    /// Mark the node's pods Ready=False.
    MarkPodsNotReady { node: String },
}

/// What a pass decided.
#[derive(Debug, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// When a pass is next needed (a grace period ends, a zone's next token).
    pub next_wake: Option<Instant>,
    /// Every zone's state and counts, for metrics.
    pub zones: BTreeMap<String, (ZoneState, ZoneCount)>,
    /// The pass entered (Some(true)) or left (Some(false)) full disruption.
    pub full_disruption_changed: Option<bool>,
}

/// The controller's state between passes.
#[derive(Debug)]
pub struct Monitor {
    pub settings: Settings,
    pub probes: Probes,
    tainters: BTreeMap<String, ZoneTainter>,
    /// Nodes whose pods were marked NotReady for their current outage.
    marked: HashSet<String>,
    /// Every zone is fully disrupted: nothing is done.
    pub full_disruption: bool,
    /// Passes so far (marks the nodes each pass saw).
    passes: u64,
}

/// One node, judged.
#[derive(Debug)]
struct Judged<'a> {
    zone: &'a str,
    ready: Option<Ready>,
    /// Counts as not Ready when zones are judged.
    suspect: bool,
    /// The conditions to write, when it just went silent.
    unknown: Option<Vec<NodeCondition>>,
    /// When its grace period ends (None: it has).
    deadline: Option<Instant>,
}

fn conditions(node: &Node) -> &[NodeCondition] {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or(&[])
}

fn ready_of(conds: &[NodeCondition]) -> Option<&NodeCondition> {
    conds.iter().find(|c| c.type_ == "Ready")
}

fn parse(status: &str) -> Ready {
    match status {
        "True" => Ready::True,
        "False" => Ready::False,
        _ => Ready::Unknown,
    }
}

fn judge<'a>(
    node: &Node,
    probe: &'a Probe,
    settings: &Settings,
    now: Instant,
    wall: &Time,
) -> Judged<'a> {
    let conds = conditions(node);
    let ready_cond = ready_of(conds);
    let never =
        ready_cond.is_none_or(|c| c.reason.as_deref() == Some(health::REASON_NEVER_UPDATED));
    let grace = if never {
        settings.startup_grace
    } else {
        settings.grace
    };
    let expired = now >= probe.at + grace;
    let ready = if expired {
        Some(Ready::Unknown)
    } else {
        match ready_cond {
            Some(c) if health::is_ours(c) => None,
            Some(c) => Some(parse(&c.status)),
            None => None,
        }
    };
    let window = probe.lease_duration.map_or(grace, |d| d / 2).min(grace);
    let silent = now.saturating_duration_since(probe.at);
    Judged {
        zone: &probe.zone,
        ready,
        suspect: ready != Some(Ready::True) || silent > window,
        unknown: if expired {
            health::unknown_conditions(node, wall)
        } else {
            None
        },
        deadline: (!expired).then_some(probe.at + grace),
    }
}

/// The NoSchedule taints `conditions` and `unschedulable` call for (TaintNodesByCondition).
fn no_schedule_keys(conds: &[NodeCondition], unschedulable: bool) -> Vec<&'static str> {
    let mut keys = Vec::new();
    for c in conds {
        let key = match (c.type_.as_str(), c.status.as_str()) {
            ("Ready", "False") => taints::NOT_READY,
            ("Ready", "Unknown") => taints::UNREACHABLE,
            ("MemoryPressure", "True") => taints::MEMORY_PRESSURE,
            ("DiskPressure", "True") => taints::DISK_PRESSURE,
            ("PIDPressure", "True") => taints::PID_PRESSURE,
            ("NetworkUnavailable", "True") => taints::NETWORK_UNAVAILABLE,
            _ => continue,
        };
        keys.push(key);
    }
    if unschedulable {
        keys.push(taints::UNSCHEDULABLE);
    }
    keys
}

/// The NoSchedule taints this controller manages.
const MANAGED_NO_SCHEDULE: &[&str] = &[
    taints::NOT_READY,
    taints::UNREACHABLE,
    taints::UNSCHEDULABLE,
    taints::MEMORY_PRESSURE,
    taints::DISK_PRESSURE,
    taints::PID_PRESSURE,
    taints::NETWORK_UNAVAILABLE,
];

/// `want` with exactly the managed NoSchedule taints of `keys`.
fn set_no_schedule(want: &mut Vec<Taint>, keys: &[&str]) {
    want.retain(|t| {
        t.effect != NO_SCHEDULE
            || !MANAGED_NO_SCHEDULE.contains(&t.key.as_str())
            || keys.contains(&t.key.as_str())
    });
    for k in keys {
        if !taints::has(want, k, NO_SCHEDULE) {
            want.push(taints::taint(k, NO_SCHEDULE));
        }
    }
}

fn remove_no_execute(want: &mut Vec<Taint>, key: &str) {
    want.retain(|t| !(t.key == key && t.effect == NO_EXECUTE));
}

fn no_execute(key: &str, wall: &Time) -> Taint {
    Taint {
        time_added: Some(wall.clone()),
        ..taints::taint(key, NO_EXECUTE)
    }
}

/// The NoExecute taint a node judged `ready` should carry, and the one it must not.
fn no_execute_keys(ready: Ready) -> Option<(&'static str, &'static str)> {
    match ready {
        Ready::False => Some((taints::NOT_READY, taints::UNREACHABLE)),
        Ready::Unknown => Some((taints::UNREACHABLE, taints::NOT_READY)),
        Ready::True => None,
    }
}

impl Monitor {
    pub fn new(settings: Settings) -> Monitor {
        Monitor {
            settings,
            probes: Probes::default(),
            tainters: BTreeMap::new(),
            marked: HashSet::new(),
            full_disruption: false,
            passes: 0,
        }
    }

    /// Forgets that a node's pods were marked NotReady (the write failed: the next pass tries
    /// again).
    pub fn unmark(&mut self, node: &str) {
        self.marked.remove(node);
    }

    /// Every node judged, in the order of `nodes`.
    fn judge_all<'a>(
        probes: &'a Probes,
        settings: &Settings,
        nodes: &[&Node],
        now: Instant,
        wall: &Time,
    ) -> Vec<Judged<'a>> {
        nodes
            .iter()
            .filter_map(|n| {
                let probe = probes.get(n.metadata.name.as_deref()?)?;
                Some(judge(n, probe, settings, now, wall))
            })
            .collect()
    }

    /// One pass over every node at `now` (`wall`: the same instant as written on objects).
    pub fn pass(&mut self, nodes: &[Arc<Node>], now: Instant, wall: &Time) -> Plan {
        // References, not clones: 5,000 reference-count updates a pass are not free.
        let nodes: Vec<&Node> = nodes
            .iter()
            .map(|n| &**n)
            .filter(|n| n.metadata.name.is_some())
            .collect();
        self.passes += 1;
        for n in &nodes {
            self.probes.ensure(n, now, self.passes);
        }
        for n in self.probes.sweep(self.passes) {
            self.marked.remove(&n);
            for t in self.tainters.values_mut() {
                t.remove(&n);
            }
        }
        let mut plan = Plan::default();
        let rates = self.settings.rates;
        let count = |judged: &[Judged<'_>]| {
            let mut counts: BTreeMap<String, ZoneCount> = BTreeMap::new();
            for j in judged {
                let c = match counts.get_mut(j.zone) {
                    Some(c) => c,
                    None => counts.entry(j.zone.to_string()).or_default(),
                };
                if j.suspect {
                    c.not_ready += 1;
                } else {
                    c.ready += 1;
                }
            }
            counts
        };
        let mut judged = Self::judge_all(&self.probes, &self.settings, &nodes, now, wall);
        let mut counts = count(&judged);
        let (mut states, all_full) = zones::states(&rates, &counts);
        if all_full != self.full_disruption {
            self.full_disruption = all_full;
            plan.full_disruption_changed = Some(all_full);
            if all_full {
                for t in self.tainters.values_mut() {
                    t.clear();
                }
            } else {
                // Back from full disruption: every node gets a fresh grace period before it
                // is judged silent (the control plane, not the nodes, was likely cut off).
                drop(judged);
                self.probes.reset_all(now);
                judged = Self::judge_all(&self.probes, &self.settings, &nodes, now, wall);
                counts = count(&judged);
                states = zones::states(&rates, &counts).0;
            }
        }
        for (zone, state) in &states {
            let size = counts.get(zone).map_or(0, |c| c.ready + c.not_ready);
            let rate = rates.rate(*state, size);
            self.tainters
                .entry(zone.clone())
                .or_insert_with(|| ZoneTainter::new(rate, now))
                .set_rate(rate, now);
        }
        self.tainters.retain(|z, _| states.contains_key(z));

        let mut working: Vec<(usize, Vec<Taint>)> = Vec::with_capacity(nodes.len());
        for (i, (node, j)) in nodes.iter().zip(&judged).enumerate() {
            let name = node.metadata.name.as_deref().unwrap_or_default();
            let current = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            let mut want = current.clone();
            let conds = match &j.unknown {
                Some(c) => {
                    let was_ready = ready_of(conditions(node)).is_some_and(|c| c.status == "True");
                    plan.actions.push(Action::MarkUnknown {
                        node: name.to_string(),
                        conditions: c.clone(),
                        was_ready,
                    });
                    c.as_slice()
                }
                None => conditions(node),
            };
            let unschedulable = node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false);
            set_no_schedule(&mut want, &no_schedule_keys(conds, unschedulable));
            let tainter = self.tainters.get_mut(j.zone);
            if self.full_disruption {
                remove_no_execute(&mut want, taints::UNREACHABLE);
                remove_no_execute(&mut want, taints::NOT_READY);
            } else {
                match j.ready.map(|r| (r, no_execute_keys(r))) {
                    Some((_, Some((key, other)))) => {
                        if taints::has(&want, other, NO_EXECUTE) {
                            // A swap is not an eviction decision: at once.
                            remove_no_execute(&mut want, other);
                            want.push(no_execute(key, wall));
                        } else if !taints::has(&want, key, NO_EXECUTE)
                            && let Some(t) = tainter
                        {
                            t.add(name);
                        }
                        if self.marked.insert(name.to_string()) {
                            plan.actions.push(Action::MarkPodsNotReady {
                                node: name.to_string(),
                            });
                        }
                    }
                    Some((_, None)) => {
                        remove_no_execute(&mut want, taints::UNREACHABLE);
                        remove_no_execute(&mut want, taints::NOT_READY);
                        if !self.marked.is_empty() {
                            self.marked.remove(name);
                        }
                        if let Some(t) = tainter.filter(|t| !t.is_empty()) {
                            t.remove(name);
                        }
                    }
                    None => {
                        if let Some(t) = tainter.filter(|t| !t.is_empty()) {
                            t.remove(name);
                        }
                    }
                }
            }
            working.push((i, want));
        }
        if !self.full_disruption {
            for tainter in self.tainters.values_mut() {
                for name in tainter.take_ready(now) {
                    // Few nodes get their turn in a pass: a search costs less than an index.
                    let Some((i, want)) = working
                        .iter_mut()
                        .find(|(i, _)| nodes[*i].metadata.name.as_deref() == Some(name.as_str()))
                    else {
                        continue;
                    };
                    let key = judged[*i].ready.and_then(no_execute_keys).map(|k| k.0);
                    if let Some(key) = key
                        && !taints::has(want, key, NO_EXECUTE)
                    {
                        want.push(no_execute(key, wall));
                    }
                }
            }
        }
        for (i, want) in working {
            let node = &nodes[i];
            let current = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_deref())
                .unwrap_or(&[]);
            if want.as_slice() != current {
                plan.actions.push(Action::SetTaints {
                    node: node.metadata.name.clone().unwrap_or_default(),
                    taints: want,
                });
            }
        }
        plan.next_wake = judged
            .iter()
            .filter_map(|j| j.deadline)
            .chain(self.tainters.values().filter_map(|t| t.next_turn(now)))
            .min();
        plan.zones = states
            .into_iter()
            .map(|(z, s)| {
                let c = counts.get(&z).copied().unwrap_or_default();
                (z, (s, c))
            })
            .collect();
        plan
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
