//! The scheduler: binds pods that have no node to one, through pods/binding.
//!
//! One task owns the queue and the [`cache`]: it takes a pending pod, runs every [`filter`] on
//! every node, picks among the feasible ones with the profile's [`score`] strategy, *assumes*
//! the pod onto that node in the cache, and hands the binding to a pool of concurrent writers —
//! so decisions are sequential (no double booking) while the API writes overlap. A failed bind
//! forgets the assumption and retries the pod with backoff.
//!
//! Pods that fit nowhere get PodScheduled=False (reason Unschedulable, kube-scheduler's
//! "0/N nodes are available: ..." message) and a FailedScheduling event, and wait parked: they
//! are retried when the cluster changes (a node added or updated, a pod deleted or finished),
//! after a per-pod backoff of 1 s doubling to 10 s, and at the latest every minute — never in a
//! busy loop.
//!
//! Profiles: a pod's `spec.schedulerName` picks a profile (`default-scheduler` → spread,
//! `binpack-scheduler` → binpack, `random-scheduler` → random by default; configurable). Pods
//! naming another scheduler are left to it.
//!
//! Priorities: the queue hands out pods of higher `spec.priority` first (then in arrival
//! order). A pod that fits nowhere may [`preemption`]: lower-priority pods on the best node
//! are evicted (a DisruptionTarget condition, then a graceful delete, a Preempted event), the
//! pod's `status.nominatedNodeName` names the node, and the room is held for it in the cache
//! until it is scheduled, so no lesser pod takes it meanwhile.

pub mod cache;
pub mod filter;
pub mod preemption;
pub mod resources;
pub mod score;
pub mod soft;
pub mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts};
use serde_json::json;

use crate::Manager;
use crate::podutil;
use crate::runtime::{Change, Recorder};
use cache::Cache;
use filter::{PodFacts, fit_error};
pub use score::Strategy;

pub const NAME: &str = "scheduler";
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const FLUSH_UNSCHEDULABLE: Duration = Duration::from_secs(60);

/// The scheduler's configuration: profiles by schedulerName, and how many bindings may be in
/// flight at once.
#[derive(Debug, Clone)]
pub struct Config {
    pub profiles: BTreeMap<String, Strategy>,
    pub parallel_binds: usize,
    /// Stop filtering once this percentage of the nodes was found feasible (at least 100
    /// nodes), as kube-scheduler's percentageOfNodesToScore; None: its adaptive default
    /// (50% minus 1% per 125 nodes, at least 5%), 100: always look at every node.
    pub percentage_of_nodes_to_score: Option<u32>,
    metrics: Option<SchedulerMetrics>,
}

impl Default for Config {
    fn default() -> Self {
        let mut profiles = BTreeMap::new();
        profiles.insert(DEFAULT_SCHEDULER.to_string(), Strategy::Spread);
        profiles.insert("binpack-scheduler".to_string(), Strategy::Binpack);
        profiles.insert("random-scheduler".to_string(), Strategy::Random);
        Config {
            profiles,
            parallel_binds: 64,
            percentage_of_nodes_to_score: None,
            metrics: None,
        }
    }
}

impl Config {
    /// Sets (or adds) a profile.
    pub fn profile(mut self, scheduler_name: &str, strategy: Strategy) -> Self {
        self.profiles.insert(scheduler_name.to_string(), strategy);
        self
    }

    /// How many feasible nodes to find before scoring, out of `nodes`.
    pub fn nodes_to_find(&self, nodes: usize) -> usize {
        const MIN: usize = 100;
        let pct = match self.percentage_of_nodes_to_score {
            Some(p) if p > 0 => p.min(100) as usize,
            _ => 50usize.saturating_sub(nodes / 125).max(5),
        };
        if nodes < MIN || pct >= 100 {
            return nodes.max(1);
        }
        (nodes * pct / 100).max(MIN)
    }

    pub fn with_metrics(mut self, registry: &prometheus::Registry) -> Self {
        self.metrics = Some(SchedulerMetrics::register(registry));
        self
    }
}

#[derive(Debug, Clone)]
struct SchedulerMetrics {
    attempts: IntCounterVec,
    preemptions: prometheus::IntCounter,
    e2e: Histogram,
    pending: IntGaugeVec,
}

impl SchedulerMetrics {
    fn register(r: &prometheus::Registry) -> Self {
        let attempts = IntCounterVec::new(
            Opts::new(
                "scheduler_schedule_attempts_total",
                "Scheduling attempts by result and profile",
            ),
            &["result", "profile"],
        )
        .expect("valid metric");
        let e2e = Histogram::with_opts(
            HistogramOpts::new(
                "scheduler_pod_scheduling_duration_seconds",
                "From pod creation to a successful binding",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).unwrap_or_default()),
        )
        .expect("valid metric");
        let pending = IntGaugeVec::new(
            Opts::new("scheduler_pending_pods", "Pods waiting, by queue"),
            &["queue"],
        )
        .expect("valid metric");
        let preemptions = prometheus::IntCounter::new(
            "scheduler_preemption_attempts_total",
            "Preemptions the scheduler started",
        )
        .expect("valid metric");
        let _ = r.register(Box::new(preemptions.clone()));
        let _ = r.register(Box::new(attempts.clone()));
        let _ = r.register(Box::new(e2e.clone()));
        let _ = r.register(Box::new(pending.clone()));
        SchedulerMetrics {
            attempts,
            preemptions,
            e2e,
            pending,
        }
    }
}

#[derive(Debug)]
struct Parked {
    key: ObjectRef<Pod>,
    attempts: u32,
    not_before: Instant,
    parked_at: Instant,
    /// The cluster changed since it was parked.
    woken: bool,
    /// What of the pod itself decides where it fits (spec, labels), when it was parked: an
    /// update that changes it (a toleration added, labels changed) retries the pod.
    fingerprint: u64,
}

/// A hash of what scheduling reads from the pod; status changes (our own PodScheduled=False
/// included) leave it alone.
fn fingerprint(pod: &Pod) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&pod.spec)
        .unwrap_or_default()
        .hash(&mut h);
    pod.metadata.labels.hash(&mut h);
    h.finish()
}

/// `spec.priority` (0 when unset).
fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// The pods ready to be tried: higher priority first, then in arrival order (kube-scheduler's
/// activeQ ordering).
#[derive(Debug, Default)]
struct ActiveQueue {
    pods: BTreeMap<(std::cmp::Reverse<i32>, u64), (ObjectRef<Pod>, String)>,
    seq: u64,
}

impl ActiveQueue {
    fn push(&mut self, priority: i32, key: ObjectRef<Pod>, uid: String) {
        self.seq += 1;
        self.pods
            .insert((std::cmp::Reverse(priority), self.seq), (key, uid));
    }
    fn pop(&mut self) -> Option<(ObjectRef<Pod>, String)> {
        self.pods.pop_first().map(|(_, v)| v)
    }
    fn len(&self) -> usize {
        self.pods.len()
    }
}

struct BindOutcome {
    uid: String,
    key: ObjectRef<Pod>,
    result: Result<(), kube::Error>,
}

struct Scheduler {
    client: kube::Client,
    config: Config,
    pods: Store<Pod>,
    cache: Cache,
    queue: ActiveQueue,
    /// Pods that preempted, and the node whose room is held for them.
    nominated: HashMap<String, String>,
    budgets: Store<k8s_openapi::api::policy::v1::PodDisruptionBudget>,
    volumes: volumes::Stores,
    queued: HashSet<String>,
    parked: HashMap<String, Parked>,
    attempts: HashMap<String, u32>,
    in_flight: HashSet<String>,
    /// Where the next search for feasible nodes starts (kube-scheduler's nextStartNodeIndex).
    next_start: usize,
    recorder: Recorder,
    binds: Arc<tokio::sync::Semaphore>,
    outcomes: tokio::sync::mpsc::UnboundedSender<BindOutcome>,
}

pub async fn run(m: Arc<Manager>) {
    let pod_inf = m.informers.pods();
    let node_inf = m.informers.nodes();
    let mut pod_changes = pod_inf.subscribe().boxed();
    let mut node_changes = node_inf.subscribe().boxed();
    let pdb_inf = m.informers.pod_disruption_budgets();
    let claim_inf = m.informers.persistent_volume_claims();
    let pv_inf = m.informers.persistent_volumes();
    let class_inf = m.informers.storage_classes();
    let mut claim_changes = claim_inf.subscribe().boxed();
    pod_inf.wait_synced().await;
    node_inf.wait_synced().await;
    pdb_inf.wait_synced().await;
    claim_inf.wait_synced().await;
    pv_inf.wait_synced().await;
    class_inf.wait_synced().await;
    tracing::info!(
        nodes = node_inf.store().len(),
        pods = pod_inf.store().len(),
        "scheduler caches synced"
    );
    let (tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let mut s = Scheduler {
        client: m.client.clone(),
        config: m.scheduler.clone(),
        pods: pod_inf.store(),
        cache: Cache::default(),
        queue: ActiveQueue::default(),
        nominated: HashMap::new(),
        budgets: pdb_inf.store(),
        volumes: volumes::Stores {
            claims: claim_inf.store(),
            volumes: pv_inf.store(),
            classes: class_inf.store(),
        },
        queued: HashSet::new(),
        parked: HashMap::new(),
        attempts: HashMap::new(),
        in_flight: HashSet::new(),
        next_start: 0,
        recorder: Recorder::new(m.client.clone(), "default-scheduler"),
        binds: Arc::new(tokio::sync::Semaphore::new(
            m.scheduler.parallel_binds.max(1),
        )),
        outcomes: tx,
    };
    loop {
        // Take in everything that already happened, so decisions see a current cache.
        let mut progressed = true;
        while progressed {
            progressed = false;
            while let Some(Some(c)) = node_changes.next().now_or_never() {
                s.on_node(c);
                progressed = true;
            }
            while let Some(Some(c)) = pod_changes.next().now_or_never() {
                s.on_pod(c);
                progressed = true;
            }
            while let Ok(o) = outcomes.try_recv() {
                s.on_bind(o);
                progressed = true;
            }
            // A claim bound or created may let a parked pod in.
            let mut claims_changed = false;
            while let Some(Some(_)) = claim_changes.next().now_or_never() {
                claims_changed = true;
            }
            if claims_changed {
                s.wake_parked();
                progressed = true;
            }
        }
        s.report();
        if let Some((key, uid)) = s.queue.pop() {
            s.queued.remove(&uid);
            s.schedule_one(key, uid).await;
            continue;
        }
        let wake = s.next_retry();
        tokio::select! {
            c = pod_changes.next() => match c {
                Some(c) => s.on_pod(c),
                None => return,
            },
            c = node_changes.next() => match c {
                Some(c) => s.on_node(c),
                None => return,
            },
            Some(o) = outcomes.recv() => s.on_bind(o),
            Some(_) = claim_changes.next() => s.wake_parked(),
            _ = sleep_until(wake) => s.retry_due(),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

impl Scheduler {
    fn ours(&self, pod: &Pod) -> Option<Strategy> {
        let name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(DEFAULT_SCHEDULER);
        self.config.profiles.get(name).copied()
    }

    fn on_node(&mut self, change: Change<k8s_openapi::api::core::v1::Node>) {
        match change {
            Change::Deleted(n) => self
                .cache
                .remove_node(n.metadata.name.as_deref().unwrap_or("")),
            Change::Added(n) | Change::Modified(n) => self.cache.set_node(n),
        }
        self.wake_parked();
    }

    fn on_pod(&mut self, change: Change<Pod>) {
        let deleted = matches!(change, Change::Deleted(_));
        let pod = change.into_object();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let node = podutil::node_name(&pod).map(str::to_string);
        if deleted {
            let freed = self.cache.is_placed(&uid);
            self.cache.remove_pod(&uid);
            self.forget_pending(&uid);
            if freed {
                self.wake_parked();
            }
            return;
        }
        match node {
            Some(node) => {
                self.forget_pending(&uid);
                let finished = matches!(podutil::phase(&pod), "Succeeded" | "Failed");
                if finished {
                    if self.cache.is_placed(&uid) {
                        self.cache.remove_pod(&uid);
                        self.wake_parked();
                    }
                } else if !self.in_flight.contains(&uid) && !self.cache.is_current(&pod, &node) {
                    self.cache.add_pod(&pod, &node, false);
                }
            }
            None => {
                if pod.metadata.deletion_timestamp.is_some() || self.ours(&pod).is_none() {
                    return;
                }
                if let Some(p) = self.parked.get_mut(&uid) {
                    if p.fingerprint != fingerprint(&pod) {
                        tracing::debug!(pod = %p.key, "parked pod changed; retrying it");
                        p.woken = true;
                        self.retry_due();
                    }
                    return;
                }
                if self.queued.contains(&uid) || self.in_flight.contains(&uid) {
                    return;
                }
                self.queued.insert(uid.clone());
                self.queue
                    .push(priority(&pod), ObjectRef::from_obj(&*pod), uid);
            }
        }
    }

    fn forget_pending(&mut self, uid: &str) {
        self.nominated.remove(uid);
        self.queued.remove(uid);
        self.parked.remove(uid);
        self.attempts.remove(uid);
    }

    fn wake_parked(&mut self) {
        for p in self.parked.values_mut() {
            p.woken = true;
        }
        self.retry_due();
    }

    /// Moves parked pods whose backoff is over and that were woken (or waited a minute).
    fn retry_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .parked
            .iter()
            .filter(|(_, p)| {
                (p.woken && p.not_before <= now) || p.parked_at + FLUSH_UNSCHEDULABLE <= now
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in due {
            if let Some(p) = self.parked.remove(&uid) {
                self.attempts.insert(uid.clone(), p.attempts);
                self.queued.insert(uid.clone());
                let prio = self.pods.get(&p.key).map_or(0, |pod| priority(&pod));
                self.queue.push(prio, p.key, uid);
            }
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.parked
            .values()
            .map(|p| {
                let flush = p.parked_at + FLUSH_UNSCHEDULABLE;
                if p.woken {
                    p.not_before.min(flush)
                } else {
                    flush
                }
            })
            .min()
    }

    fn park(&mut self, key: ObjectRef<Pod>, uid: String, woken: bool) {
        let fingerprint = self.pods.get(&key).map_or(0, |p| fingerprint(&p));
        let attempts = self.attempts.remove(&uid).unwrap_or(0) + 1;
        let backoff = BACKOFF_INITIAL
            .saturating_mul(1 << (attempts - 1).min(8))
            .min(BACKOFF_MAX);
        let now = Instant::now();
        self.parked.insert(
            uid,
            Parked {
                key,
                attempts,
                not_before: now + backoff,
                parked_at: now,
                woken,
                fingerprint,
            },
        );
    }

    async fn schedule_one(&mut self, key: ObjectRef<Pod>, uid: String) {
        // Always decide on the latest state of the pod.
        let Some(pod) = self.pods.get(&key) else {
            return;
        };
        if pod.metadata.uid.as_deref() != Some(uid.as_str())
            || podutil::node_name(&pod).is_some()
            || pod.metadata.deletion_timestamp.is_some()
            || self.in_flight.contains(&uid)
        {
            return;
        }
        let Some(strategy) = self.ours(&pod) else {
            return;
        };
        tracing::debug!(pod = %key, "scheduling");
        // The room held for a pod that preempted is its own to take now.
        let held = self.nominated.get(&uid).cloned();
        if held.is_some() {
            self.cache.remove_pod(&uid);
        }
        let profile = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.clone())
            .unwrap_or_else(|| DEFAULT_SCHEDULER.into());
        let vol = match volumes::facts(&pod, &self.volumes) {
            Ok(v) => v,
            Err(reason) => {
                // A PreFilter failure: no node is looked at, so none is counted.
                let total = self.cache.candidates().count();
                let message = format!("0/{total} nodes are available: {reason}.");
                tracing::debug!(pod = %key, %message, "unschedulable");
                self.report_unschedulable(&pod, message);
                self.park(key, uid, false);
                return;
            }
        };
        let facts = PodFacts::new(&pod, &self.cache);
        let mut reasons: HashMap<String, usize> = HashMap::new();
        let mut feasible = Vec::new();
        let candidates: Vec<&cache::NodeInfo> = self.cache.candidates().collect();
        let total = candidates.len();
        let want = self.config.nodes_to_find(total);
        // Binpack always starts from the first node (it fills nodes in order, so the fullest
        // that still fit come first); the others rotate the start so every node gets its turn.
        let start = match strategy {
            Strategy::Binpack => 0,
            _ => self.next_start % total.max(1),
        };
        let mut looked = 0;
        for i in 0..total {
            let n = candidates[(start + i) % total];
            looked += 1;
            let mut r = filter::filter(&facts, n);
            if r.is_empty() && !volumes::fits(&vol, n.labels(), &n.name) {
                r.push("node(s) had volume node affinity conflict".into());
            }
            if r.is_empty() {
                feasible.push(n);
                if feasible.len() >= want {
                    break;
                }
            } else {
                for x in r {
                    *reasons.entry(x).or_default() += 1;
                }
            }
        }
        if strategy != Strategy::Binpack {
            self.next_start = (start + looked) % total.max(1);
        }
        if feasible.is_empty() {
            let message = fit_error(total, &reasons);
            if let Some(m) = &self.config.metrics {
                m.attempts
                    .with_label_values(&["unschedulable", &profile])
                    .inc();
            }
            tracing::debug!(pod = %key, %message, "unschedulable");
            self.report_unschedulable(&pod, message);
            let outcome = self.preempt_for(&pod, &facts, held.as_deref());
            drop(facts);
            match outcome {
                Preemption::Started(node) | Preemption::Waiting(node) => {
                    self.cache.add_pod(&pod, &node, true);
                    self.nominated.insert(uid.clone(), node);
                }
                Preemption::Impossible => {
                    self.nominated.remove(&uid);
                    self.clear_nomination(&pod);
                }
            }
            self.park(key, uid, false);
            return;
        }
        self.nominated.remove(&uid);
        let scoring = resources::pod_requests(&pod, true);
        let owner = podutil::controller_ref(&pod.metadata).map(|r| r.uid.clone());
        let soft = soft::Soft::new(&pod, &self.cache).map(|s| s.scores(&feasible));
        let node = score::pick(
            strategy,
            &feasible,
            &scoring,
            owner.as_deref(),
            soft.as_deref(),
        )
        .name
        .clone();
        drop(facts);
        self.cache.add_pod(&pod, &node, true);
        self.in_flight.insert(uid.clone());
        if let Some(m) = &self.config.metrics {
            m.attempts.with_label_values(&["scheduled", &profile]).inc();
        }
        let Ok(permit) = self.binds.clone().acquire_owned().await else {
            return;
        };
        let (client, tx, recorder, metrics) = (
            self.client.clone(),
            self.outcomes.clone(),
            self.recorder.clone(),
            self.config.metrics.clone(),
        );
        let to_select = vol.to_select;
        tokio::spawn(async move {
            let result = match volumes::select_node(&client, &pod, &to_select, &node).await {
                Ok(()) => bind(&client, &pod, &node).await,
                Err(e) => Err(e),
            };
            drop(permit);
            if result.is_ok() {
                if let (Some(m), Some(created)) =
                    (metrics, pod.metadata.creation_timestamp.as_ref())
                {
                    let secs = jiff::Timestamp::now()
                        .duration_since(created.0)
                        .as_secs_f64();
                    m.e2e.observe(secs.max(0.0));
                }
                recorder.normal(
                    &*pod,
                    "Scheduled",
                    format!(
                        "Successfully assigned {}/{} to {node}",
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        pod.metadata.name.as_deref().unwrap_or("")
                    ),
                );
            }
            let _ = tx.send(BindOutcome { uid, key, result });
        });
    }

    fn on_bind(&mut self, o: BindOutcome) {
        self.in_flight.remove(&o.uid);
        match o.result {
            Ok(()) => {
                self.attempts.remove(&o.uid);
            }
            Err(e) => {
                self.cache.remove_pod(&o.uid);
                let gone = matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409);
                if gone {
                    // Deleted, or bound by someone else: the watch tells the rest.
                    tracing::debug!(pod = %o.key, error = %e, "binding not needed any more");
                } else {
                    tracing::warn!(pod = %o.key, error = %e, "binding failed; retrying with backoff");
                    if let Some(m) = &self.config.metrics {
                        m.attempts.with_label_values(&["error", ""]).inc();
                    }
                    self.park(o.key, o.uid, true);
                }
            }
        }
    }

    /// Whether a PodDisruptionBudget forbids evicting `p` now (none of its matching budgets
    /// allows a disruption).
    fn budget_forbids(&self, p: &cache::PlacedPod) -> bool {
        self.budgets.state().iter().any(|b| {
            b.metadata.namespace.as_deref() == Some(p.namespace.as_str())
                && podutil::selects(
                    b.spec.as_ref().and_then(|s| s.selector.as_ref()),
                    Some(&p.labels),
                )
                && b.status.as_ref().map_or(0, |s| s.disruptions_allowed) <= 0
        })
    }

    /// Preemption for a pod that fits nowhere (see [`preemption`]): victims evicted and the
    /// node nominated, or waiting for the victims of an earlier preemption, or nothing to do.
    fn preempt_for(&self, pod: &Arc<Pod>, facts: &PodFacts<'_>, held: Option<&str>) -> Preemption {
        let spec = pod.spec.as_ref();
        if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
            return Preemption::Impossible;
        }
        let prio = priority(pod);
        // Victims of an earlier preemption still leaving: wait for them (PodEligibleToPreemptOthers).
        if let Some(node) = held
            && self
                .cache
                .nodes
                .get(node)
                .is_some_and(|n| n.pods.values().any(|p| p.terminating && p.priority < prio))
        {
            return Preemption::Waiting(node.to_string());
        }
        let started = |p: &cache::PlacedPod| {
            let pod = self
                .pods
                .get(&ObjectRef::new(&p.name).within(&p.namespace))?;
            pod.status.as_ref()?.start_time.as_ref().map(|t| t.0)
        };
        let look = preemption::Lookups {
            protected: &|p| self.budget_forbids(p),
            started: &started,
        };
        let Some(c) = preemption::find(facts, &self.cache, prio, &look) else {
            return Preemption::Impossible;
        };
        tracing::info!(
            pod = %pod.metadata.name.as_deref().unwrap_or(""),
            node = %c.node,
            victims = c.victims.len(),
            "preempting"
        );
        if let Some(m) = &self.config.metrics {
            m.preemptions.inc();
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let preemptor_uid = pod.metadata.uid.clone().unwrap_or_default();
        let victims: Vec<Arc<Pod>> = c
            .victims
            .iter()
            .filter_map(|v| {
                self.pods
                    .get(&ObjectRef::new(&v.pod.name).within(&v.pod.namespace))
                    .filter(|p| p.metadata.uid.as_deref() == Some(v.pod.uid.as_str()))
            })
            .collect();
        let (client, recorder, node) = (self.client.clone(), self.recorder.clone(), c.node.clone());
        tokio::spawn(async move {
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let nominate = json!({"status": {"nominatedNodeName": node}});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&nominate))
                .await
            {
                tracing::debug!(pod = %name, error = %e, "writing nominatedNodeName failed");
            }
            for v in victims {
                evict(&client, &recorder, &v, &preemptor_uid, &node).await;
            }
        });
        Preemption::Started(c.node)
    }

    /// A pod that can no longer preempt gives up its nominated node (kube-scheduler clears
    /// `status.nominatedNodeName` when PostFilter finds nothing).
    fn clear_nomination(&self, pod: &Arc<Pod>) {
        let nominated = pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        if nominated {
            let patch = Patch::Merge(json!({"status": {"nominatedNodeName": null}}));
            self.patch_status(pod, patch, "clearing nominatedNodeName");
        }
    }

    /// Writes a pod's status in the background (a failure is retried by the next attempt).
    fn patch_status(&self, pod: &Pod, patch: Patch<serde_json::Value>, what: &'static str) {
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or(""),
        );
        let name = pod.metadata.name.clone().unwrap_or_default();
        tokio::spawn(async move {
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &patch)
                .await
            {
                tracing::debug!(pod = %name, error = %e, "{what} failed");
            }
        });
    }

    /// PodScheduled=False with the reasons (written only when the message changes) and a
    /// FailedScheduling event.
    fn report_unschedulable(&self, pod: &Arc<Pod>, message: String) {
        let current = podutil::condition(pod, "PodScheduled");
        let unchanged = current
            .is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(message.as_str()));
        self.recorder
            .warning(&**pod, "FailedScheduling", message.clone());
        if unchanged {
            return;
        }
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let patch = json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastTransitionTime": now, "lastProbeTime": null,
        }]}});
        self.patch_status(pod, Patch::Strategic(patch), "writing PodScheduled=False");
    }

    fn report(&self) {
        if let Some(m) = &self.config.metrics {
            m.pending
                .with_label_values(&["active"])
                .set(self.queue.len() as i64);
            m.pending
                .with_label_values(&["unschedulable"])
                .set(self.parked.len() as i64);
        }
    }
}

/// What preemption did for a pod that fits nowhere.
enum Preemption {
    /// Victims are being evicted from this node.
    Started(String),
    /// An earlier preemption's victims are still leaving this node.
    Waiting(String),
    Impossible,
}

/// Evicts a preemption victim: the DisruptionTarget condition (reason PreemptionByScheduler),
/// a graceful delete conditional on its uid, and a Preempted event.
async fn evict(client: &kube::Client, recorder: &Recorder, victim: &Pod, by: &str, node: &str) {
    let ns = victim.metadata.namespace.as_deref().unwrap_or("");
    let name = victim.metadata.name.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let condition = json!({"status": {"conditions": [{
        "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
        "message": format!("default-scheduler: preempting to accommodate a higher priority pod"),
        "lastTransitionTime": now}]}});
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&condition))
        .await
    {
        tracing::debug!(pod = %name, error = %e, "writing DisruptionTarget failed");
    }
    let dp = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: victim.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => recorder.normal(
            victim,
            "Preempted",
            format!("Preempted by pod {by} on node {node}"),
        ),
        Err(e) => tracing::warn!(pod = %name, error = %e, "deleting a preemption victim failed"),
    }
}

/// POST pods/NAME/binding.
async fn bind(client: &kube::Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    let _: serde_json::Value = api
        .create_subresource("binding", name, &PostParams::default(), &binding)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_serves_higher_priorities_first_then_arrival_order() {
        let mut q = ActiveQueue::default();
        for (name, prio) in [("a", 0), ("b", 100), ("c", 0), ("d", 100), ("e", -5)] {
            q.push(
                prio,
                ObjectRef::new(name).within("default"),
                name.to_string(),
            );
        }
        let order: Vec<String> = std::iter::from_fn(|| q.pop().map(|(_, uid)| uid)).collect();
        assert_eq!(order, ["b", "d", "a", "c", "e"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn nodes_to_find_follows_kube_schedulers_adaptive_percentage() {
        let c = Config::default();
        assert_eq!(c.nodes_to_find(0), 1);
        assert_eq!(c.nodes_to_find(50), 50, "small clusters: every node");
        assert_eq!(c.nodes_to_find(150), 100, "never fewer than 100");
        assert_eq!(c.nodes_to_find(1000), 420, "42% of 1,000");
        assert_eq!(c.nodes_to_find(5000), 5000 * 10 / 100);
        assert_eq!(c.nodes_to_find(10_000), 500, "5% floor");
        let all = Config {
            percentage_of_nodes_to_score: Some(100),
            ..Config::default()
        };
        assert_eq!(all.nodes_to_find(1000), 1000);
        let ten = Config {
            percentage_of_nodes_to_score: Some(10),
            ..Config::default()
        };
        assert_eq!(ten.nodes_to_find(2000), 200);
    }
}
