//! The node-lifecycle controller (kubernetes/pkg/controller/nodelifecycle): notices nodes that
//! stopped renewing their Lease, marks them Unknown, taints them so that their pods move
//! (the eviction itself is [`crate::tainteviction`]'s), and keeps the condition taints
//! (NoSchedule) in step with node conditions and cordons.
//! - [`health`]: when each node was last seen alive, by this controller's clock;
//! - [`zones`]: zone disruption states and their tainting rates;
//! - [`ratelimit`]: the per-zone token bucket and queue;
//! - [`plan`]: one pass over every node → the writes (pure, table-tested);
//! - this module: the informers, the timing of passes, and the writes.
//!
//! A pass runs every `--node-monitor-period`, and also exactly when the next grace period
//! ends or a zone's next token comes, so detection does not wait for a period boundary; a
//! change of node conditions or cordon asks for a pass within 100 ms. Lease renewals and
//! heartbeats only update the probe times: 5,000 healthy nodes cost a map update each.
//! (Collecting them in batches every 250 ms instead of one wake-up each was measured: it cost
//! more CPU, ~1.5 s against ~1.0 s a minute at 5,000 nodes, so changes are taken as they come.)

pub mod health;
pub mod plan;
pub mod ratelimit;
pub mod zones;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus::{GaugeVec, IntCounterVec, IntGauge, Opts, Registry};
use tokio::time::Instant;

use crate::runtime::{Change, Recorder};
use crate::{Manager, podutil};
pub use plan::{Action, Monitor, Settings};

pub const NAME: &str = "nodelifecycle";

/// `--node-monitor-period`'s default.
pub const DEFAULT_MONITOR_PERIOD: Duration = Duration::from_secs(5);

/// The controller's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    /// `--node-monitor-period`: a pass at least this often.
    pub monitor_period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            settings: Settings::default(),
            monitor_period: DEFAULT_MONITOR_PERIOD,
        }
    }
}

/// The controller's metrics, named like kube-controller-manager's node_collector_*.
#[derive(Clone, Debug)]
struct LifecycleMetrics {
    zone_size: GaugeVec,
    unhealthy: GaugeVec,
    zone_health: GaugeVec,
    taints: IntCounterVec,
    full_disruption: IntGauge,
    passes: prometheus::IntCounter,
}

impl LifecycleMetrics {
    fn register(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = GaugeVec::new(Opts::new(name, help), &["zone"]).expect("valid metric");
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let taints = IntCounterVec::new(
            Opts::new(
                "node_collector_taint_writes_total",
                "Taint changes written on nodes, by NoExecute/NoSchedule",
            ),
            &["effect"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(taints.clone()));
        let full_disruption = IntGauge::new(
            "node_collector_full_disruption",
            "1 while every zone is fully disrupted (nothing is evicted)",
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(full_disruption.clone()));
        let passes = prometheus::IntCounter::new(
            "node_collector_monitor_passes_total",
            "Passes over every node",
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(passes.clone()));
        LifecycleMetrics {
            passes,
            zone_size: gauge("node_collector_zone_size", "Nodes per zone"),
            unhealthy: gauge(
                "node_collector_unhealthy_nodes_in_zone",
                "Nodes per zone judged not Ready",
            ),
            zone_health: gauge(
                "node_collector_zone_health",
                "Percentage of healthy nodes per zone",
            ),
            taints,
            full_disruption,
        }
    }

    fn record(&self, plan: &plan::Plan, full: bool) {
        for (zone, (_, c)) in &plan.zones {
            let total = (c.ready + c.not_ready) as f64;
            self.zone_size.with_label_values(&[zone]).set(total);
            self.unhealthy
                .with_label_values(&[zone])
                .set(c.not_ready as f64);
            let health = if total > 0.0 {
                100.0 * c.ready as f64 / total
            } else {
                100.0
            };
            self.zone_health.with_label_values(&[zone]).set(health);
        }
        self.full_disruption.set(full as i64);
        self.passes.inc();
    }
}

struct Writer {
    client: kube::Client,
    nodes: Store<Node>,
    pods: Store<Pod>,
    recorder: Recorder,
    metrics: LifecycleMetrics,
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let (nodes, leases, pods) = (
        m.informers.nodes(),
        m.informers.node_leases(),
        m.informers.pods(),
    );
    nodes.wait_synced().await;
    leases.wait_synced().await;
    pods.wait_synced().await;
    let config = m.node_lifecycle.clone();
    let writer = Writer {
        client: m.client.clone(),
        nodes: nodes.store(),
        pods: pods.store(),
        recorder: Recorder::new(m.client.clone(), "node-controller"),
        metrics: LifecycleMetrics::register(&m.registry),
    };
    let mut monitor = Monitor::new(config.settings.clone());
    let mut node_changes = nodes.subscribe().boxed();
    let mut lease_changes = leases.subscribe().boxed();
    let period = config.monitor_period.max(Duration::from_millis(100));
    let mut wake = Instant::now();
    loop {
        tokio::select! {
            Some(change) = lease_changes.next() => {
                if let Change::Added(l) | Change::Modified(l) = change {
                    monitor.probes.observe_lease(&l, Instant::now());
                }
            }
            Some(change) = node_changes.next() => {
                let now = Instant::now();
                let changed = match &change {
                    Change::Added(n) | Change::Modified(n) => monitor.probes.observe_node(n, now),
                    Change::Deleted(_) => true,
                };
                if changed {
                    wake = wake.min(now + Duration::from_millis(100));
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                let wall = Time(jiff::Timestamp::now());
                let plan = monitor.pass(&writer.nodes.state(), now, &wall);
                writer.metrics.record(&plan, monitor.full_disruption);
                match plan.full_disruption_changed {
                    Some(true) => tracing::warn!("every zone is fully disrupted: no node is tainted NoExecute and no pod marked NotReady until one is back"),
                    Some(false) => tracing::info!("a node is back: leaving full disruption; every node gets a fresh grace period"),
                    None => {}
                }
                let failed = writer.apply(plan.actions, &wall).await;
                for a in &failed {
                    if let Action::MarkPodsNotReady { node } = a {
                        monitor.unmark(node);
                    }
                }
                let failed = !failed.is_empty();
                let next = plan.next_wake.unwrap_or(now + period).min(now + period);
                // A failed write (a conflict with the agent) is retried soon, from fresh state.
                wake = if failed { next.min(now + Duration::from_secs(1)) } else { next }
                    .max(now + Duration::from_millis(10));
            }
        }
    }
}

/// `want` was computed from `before`; the node now has `now`: the same additions and removals
/// made to `now`.
fn rebase(
    before: &[k8s_openapi::api::core::v1::Taint],
    want: &[k8s_openapi::api::core::v1::Taint],
    now: &[k8s_openapi::api::core::v1::Taint],
) -> Vec<k8s_openapi::api::core::v1::Taint> {
    let same = |a: &k8s_openapi::api::core::v1::Taint, b: &k8s_openapi::api::core::v1::Taint| {
        a.key == b.key && a.effect == b.effect
    };
    let mut out: Vec<_> = now
        .iter()
        .filter(|t| !before.iter().any(|b| same(b, t)) || want.iter().any(|w| same(w, t)))
        .cloned()
        .collect();
    for w in want {
        if !before.iter().any(|b| same(b, w)) && !out.iter().any(|o| same(o, w)) {
            out.push(w.clone());
        }
    }
    out
}

impl Writer {
    /// Makes the plan's writes — one node's in order (its status, then its taints), nodes
    /// concurrently; returns those that failed.
    async fn apply(&self, actions: Vec<Action>, wall: &Time) -> Vec<Action> {
        let mut by_node: Vec<(String, Vec<Action>)> = Vec::new();
        for a in actions {
            let node = match &a {
                Action::MarkUnknown { node, .. }
                | Action::SetTaints { node, .. }
                | Action::MarkPodsNotReady { node } => node.clone(),
            };
            match by_node.iter_mut().find(|(n, _)| *n == node) {
                Some((_, list)) => list.push(a),
                None => by_node.push((node, vec![a])),
            }
        }
        futures_util::stream::iter(by_node)
            .map(|(_, list)| async move {
                let mut failed = Vec::new();
                for a in list {
                    if let Err(e) = self.apply_one(a.clone(), wall).await {
                        let what = format!("{a:?}");
                        tracing::warn!(controller = NAME, action = %what.chars().take(200).collect::<String>(), error = %e, "node-lifecycle write failed");
                        failed.push(a);
                    }
                }
                futures_util::stream::iter(failed)
            })
            .buffer_unordered(16)
            .flatten()
            .collect()
            .await
    }

    async fn apply_one(&self, action: Action, wall: &Time) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        match action {
            Action::MarkUnknown {
                node,
                conditions,
                was_ready,
            } => {
                let Some(cur) = self.nodes.get(&ObjectRef::new(&node)) else {
                    return Ok(());
                };
                let mut updated = (*cur).clone();
                updated
                    .status
                    .get_or_insert_with(Default::default)
                    .conditions = Some(conditions);
                api.replace_status(&node, &PostParams::default(), &updated)
                    .await?;
                if was_ready {
                    self.recorder.normal(
                        &*cur,
                        "NodeNotReady",
                        format!("Node {node} status is now: NodeNotReady"),
                    );
                }
                tracing::warn!(node = %node, "node stopped posting status: Ready=Unknown");
            }
            Action::SetTaints { node, taints } => {
                let Some(cur) = self.nodes.get(&ObjectRef::new(&node)) else {
                    return Ok(());
                };
                let before = cur
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.clone())
                    .unwrap_or_default();
                for effect in [crate::taints::NO_EXECUTE, crate::taints::NO_SCHEDULE] {
                    let pick = |ts: &[k8s_openapi::api::core::v1::Taint]| {
                        ts.iter()
                            .filter(|t| t.effect == effect)
                            .map(|t| t.key.clone())
                            .collect::<Vec<_>>()
                    };
                    if pick(&before) != pick(&taints) {
                        self.metrics.taints.with_label_values(&[effect]).inc();
                        tracing::info!(node = %node, effect, before = ?pick(&before), after = ?pick(&taints), "node taints");
                    }
                }
                // The cache may trail this controller's own status write: on a conflict, the
                // same change is made to the node as it is now.
                let mut base = (*cur).clone();
                let mut want = taints;
                for attempt in 0..5 {
                    let mut updated = base.clone();
                    updated.spec.get_or_insert_with(Default::default).taints =
                        (!want.is_empty()).then(|| want.clone());
                    match api.replace(&node, &PostParams::default(), &updated).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(s)) if s.code == 409 && attempt < 4 => {
                            let fresh = api.get(&node).await?;
                            let now = fresh
                                .spec
                                .as_ref()
                                .and_then(|s| s.taints.clone())
                                .unwrap_or_default();
                            want = rebase(&before, &want, &now);
                            base = fresh;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Action::MarkPodsNotReady { node } => {
                let pods = self.pods.state_filter(|p| {
                    podutil::node_name(p) == Some(node.as_str()) && podutil::is_ready(p)
                });
                let results = futures_util::stream::iter(pods)
                    .map(|p| self.mark_not_ready(p, wall))
                    .buffer_unordered(16)
                    .collect::<Vec<_>>()
                    .await;
                results.into_iter().collect::<Result<Vec<()>, _>>()?;
            }
        }
        Ok(())
    }

    /// MarkPodsNotReady for one pod: Ready=False (reason and message kept), through /status
    /// with the resourceVersion read; a Warning NodeNotReady event.
    async fn mark_not_ready(&self, pod: Arc<Pod>, wall: &Time) -> Result<(), kube::Error> {
        let (ns, name) = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let mut updated = (*pod).clone();
        let Some(conds) = updated.status.as_mut().and_then(|s| s.conditions.as_mut()) else {
            return Ok(());
        };
        let Some(ready) = conds.iter_mut().find(|c| c.type_ == "Ready") else {
            return Ok(());
        };
        *ready = PodCondition {
            status: "False".into(),
            last_transition_time: Some(wall.clone()),
            ..ready.clone()
        };
        match api
            .replace_status(&name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
        self.recorder
            .warning(&*pod, "NodeNotReady", "Node is not ready".into());
        Ok(())
    }
}
