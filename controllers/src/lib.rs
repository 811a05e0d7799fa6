//! Capstan's controllers: independent, level-triggered reconcilers built on kube-rs's runtime,
//! talking to the API server only through the API (so they run against any Kubernetes too).
//!
//! Start at [`Manager`]: it owns the client, one shared [`Informers`] set (one watch per resource
//! per process), the metrics, and runs the controllers chosen by name ([`ALL`]); with leader
//! election ([`runtime::leader`]) only one replica of a manager acts at a time.
//! - [`replicaset`]: keeps N pods per ReplicaSet (expectations, adoption, deletion ranking).
//! - [`deployment`]: rolls ReplicaSets (rolling update, recreate, revisions, progress).
//! - [`daemonset`]: one pod per eligible node, rolled (maxUnavailable / maxSurge) or replaced
//!   on delete, with ControllerRevisions for `kubectl rollout history/undo`.
//! - [`scheduler`]: binds pending pods to nodes (filters, spread/binpack/random scoring).
//! - [`garbagecollector`]: deletes dependents whose owners are gone (background, foreground,
//!   orphan propagation), for every resource discovery lists.
//! - [`namespace`]: empties a terminating namespace, then finalizes it.
//! - [`endpointslice`]: EndpointSlices for every Service with a selector (minimal rewrites,
//!   batched pod changes); [`endpoints`]: the legacy v1 Endpoints for the same Services;
//!   [`endpointslicemirroring`]: slices mirrored from user-written Endpoints of selectorless
//!   Services.
//! - [`job`]: runs Jobs' pods to completion (indexes, retries, failure policy, deadlines,
//!   suspension), tracking every outcome with a finalizer; [`ttlafterfinished`]: deletes
//!   finished Jobs past their `ttlSecondsAfterFinished`; [`cronjob`]: starts Jobs on
//!   schedules, in time zones, under a concurrency policy.
//! - [`resourcequota`]: keeps ResourceQuotas' `status.used` true as objects go (the API
//!   server's admission charges creates).
//! - [`podgc`]: force-deletes pods no agent will finish (orphans of deleted nodes,
//!   terminating pods on out-of-service nodes, terminated pods beyond a threshold).
//! - [`disruption`]: keeps PodDisruptionBudgets' status (what pods/eviction may spend).
//! - [`nodeipam`]: gives each Node a pod range from `--cluster-cidr`.
//! - [`nodelifecycle`]: notices silent nodes, marks them Unknown and taints them (per-zone rate
//!   limits; nothing at all when every zone is down); [`tainteviction`]: deletes pods from
//!   nodes with NoExecute taints they do not tolerate.
//! - [`autoscaler`]: HorizontalPodAutoscalers, from metrics.k8s.io through the targets' scale;
//!   [`scalingpolicy`]: Capstan's ScalingPolicies (schedule, queue, metric and predictive
//!   triggers, scale to zero).
//! - [`gitops`]: keeps the cluster equal to git repositories of manifests (GitSyncs),
//!   through the [`apply`] engine `capstan apply` shares.
//! - [`certificates`]: approves node certificate requests and signs approved ones with the
//!   cluster CA.
//! - [`serviceaccount`]: a `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap in
//!   every namespace.
//!
//! Each controller keeps its decisions in pure functions (`plan.rs`, `rolling.rs`, ...) that are
//! table-tested without I/O, and applies them in a thin async step.

pub mod apply;
pub mod autoscaler;
pub mod certificates;
pub mod claims;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod endpointslicemirroring;
mod error;
pub mod garbagecollector;
pub mod gitops;
pub mod history;
pub mod job;
pub mod namespace;
pub mod nodeaffinity;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podcontrol;
pub mod podgc;
pub mod podutil;
pub mod replicaset;
pub mod resourcequota;
pub mod runtime;
pub mod scalingpolicy;
pub mod scheduler;
pub mod serviceaccount;
pub mod statefulset;
pub mod tainteviction;
pub mod taints;
pub mod ttlafterfinished;
pub mod volume;

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use capstan_api::crds::{GitSync, ScalingPolicy};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Endpoints, Node, PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::Api;
use kube::runtime::watcher;

pub use error::{Error, Result};
use runtime::{Informer, Metrics};

/// Every controller, by the name `--controllers` takes.
pub const ALL: &[&str] = &[
    autoscaler::NAME,
    certificates::NAME,
    cronjob::NAME,
    daemonset::NAME,
    deployment::NAME,
    disruption::NAME,
    endpoints::NAME,
    endpointslice::NAME,
    endpointslicemirroring::NAME,
    garbagecollector::NAME,
    gitops::NAME,
    job::NAME,
    namespace::NAME,
    nodeipam::NAME,
    nodelifecycle::NAME,
    podgc::NAME,
    replicaset::NAME,
    resourcequota::NAME,
    scalingpolicy::NAME,
    serviceaccount::ROOT_CA_NAME,
    scheduler::NAME,
    serviceaccount::NAME,
    statefulset::NAME,
    tainteviction::NAME,
    ttlafterfinished::NAME,
    volume::NAME,
];

/// The shared informers of one process: created (and started) on first use, then handed to
/// every controller that asks.
pub struct Informers {
    client: kube::Client,
    pods: OnceLock<Arc<Informer<Pod>>>,
    replicasets: OnceLock<Arc<Informer<ReplicaSet>>>,
    deployments: OnceLock<Arc<Informer<Deployment>>>,
    daemon_sets: OnceLock<Arc<Informer<DaemonSet>>>,
    controller_revisions: OnceLock<Arc<Informer<ControllerRevision>>>,
    stateful_sets: OnceLock<Arc<Informer<StatefulSet>>>,
    claims: OnceLock<Arc<Informer<PersistentVolumeClaim>>>,
    volumes: OnceLock<Arc<Informer<PersistentVolume>>>,
    storage_classes: OnceLock<Arc<Informer<StorageClass>>>,
    jobs: OnceLock<Arc<Informer<Job>>>,
    cron_jobs: OnceLock<Arc<Informer<CronJob>>>,
    nodes: OnceLock<Arc<Informer<Node>>>,
    services: OnceLock<Arc<Informer<Service>>>,
    endpointslices: OnceLock<Arc<Informer<EndpointSlice>>>,
    endpoints: OnceLock<Arc<Informer<Endpoints>>>,
    node_leases: OnceLock<Arc<Informer<Lease>>>,
    pod_disruption_budgets: OnceLock<Arc<Informer<PodDisruptionBudget>>>,
    resource_quotas: OnceLock<Arc<Informer<ResourceQuota>>>,
    horizontal_pod_autoscalers: OnceLock<Arc<Informer<HorizontalPodAutoscaler>>>,
    scaling_policies: OnceLock<Arc<Informer<ScalingPolicy>>>,
    git_syncs: OnceLock<Arc<Informer<GitSync>>>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Informers {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().map(std::mem::take).unwrap_or_default() {
            t.abort();
        }
    }
}

impl Informers {
    pub fn new(client: kube::Client) -> Self {
        Informers {
            client,
            pods: OnceLock::new(),
            replicasets: OnceLock::new(),
            deployments: OnceLock::new(),
            daemon_sets: OnceLock::new(),
            controller_revisions: OnceLock::new(),
            stateful_sets: OnceLock::new(),
            claims: OnceLock::new(),
            volumes: OnceLock::new(),
            storage_classes: OnceLock::new(),
            jobs: OnceLock::new(),
            cron_jobs: OnceLock::new(),
            nodes: OnceLock::new(),
            services: OnceLock::new(),
            endpointslices: OnceLock::new(),
            endpoints: OnceLock::new(),
            node_leases: OnceLock::new(),
            pod_disruption_budgets: OnceLock::new(),
            resource_quotas: OnceLock::new(),
            horizontal_pod_autoscalers: OnceLock::new(),
            scaling_policies: OnceLock::new(),
            git_syncs: OnceLock::new(),
            tasks: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn start<K: runtime::Watchable>(&self, api: Api<K>) -> Arc<Informer<K>> {
        self.spawn(Informer::new(api, watcher::Config::default()))
    }

    fn spawn<K: runtime::Watchable>(&self, inf: Arc<Informer<K>>) -> Arc<Informer<K>> {
        let task = tokio::spawn(inf.clone().run());
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
        inf
    }

    /// Pods as [`runtime::informer::compact_pod`] keeps them: what controllers decide on,
    /// not what only the node agent reads. Patch pods; never write one from here back whole.
    pub fn pods(&self) -> Arc<Informer<Pod>> {
        self.pods
            .get_or_init(|| {
                let api = Api::all(self.client.clone());
                self.spawn(Informer::trimmed(
                    api,
                    watcher::Config::default(),
                    runtime::informer::compact_pod,
                ))
            })
            .clone()
    }
    pub fn replicasets(&self) -> Arc<Informer<ReplicaSet>> {
        self.replicasets
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn deployments(&self) -> Arc<Informer<Deployment>> {
        self.deployments
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn daemon_sets(&self) -> Arc<Informer<DaemonSet>> {
        self.daemon_sets
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn controller_revisions(&self) -> Arc<Informer<ControllerRevision>> {
        self.controller_revisions
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn stateful_sets(&self) -> Arc<Informer<StatefulSet>> {
        self.stateful_sets
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn persistent_volume_claims(&self) -> Arc<Informer<PersistentVolumeClaim>> {
        self.claims
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn persistent_volumes(&self) -> Arc<Informer<PersistentVolume>> {
        self.volumes
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn storage_classes(&self) -> Arc<Informer<StorageClass>> {
        self.storage_classes
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn jobs(&self) -> Arc<Informer<Job>> {
        self.jobs
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn cron_jobs(&self) -> Arc<Informer<CronJob>> {
        self.cron_jobs
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn nodes(&self) -> Arc<Informer<Node>> {
        self.nodes
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn services(&self) -> Arc<Informer<Service>> {
        self.services
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn endpointslices(&self) -> Arc<Informer<EndpointSlice>> {
        self.endpointslices
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn endpoints(&self) -> Arc<Informer<Endpoints>> {
        self.endpoints
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn pod_disruption_budgets(&self) -> Arc<Informer<PodDisruptionBudget>> {
        self.pod_disruption_budgets
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn resource_quotas(&self) -> Arc<Informer<ResourceQuota>> {
        self.resource_quotas
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    pub fn horizontal_pod_autoscalers(&self) -> Arc<Informer<HorizontalPodAutoscaler>> {
        self.horizontal_pod_autoscalers
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    /// Capstan's ScalingPolicies (their CRD must be installed: `capstan up` does).
    pub fn scaling_policies(&self) -> Arc<Informer<ScalingPolicy>> {
        self.scaling_policies
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    /// Capstan's GitSyncs (their CRD must be installed: `capstan up` does).
    pub fn git_syncs(&self) -> Arc<Informer<GitSync>> {
        self.git_syncs
            .get_or_init(|| self.start(Api::all(self.client.clone())))
            .clone()
    }
    /// The nodes' heartbeats: Leases in kube-node-lease.
    pub fn node_leases(&self) -> Arc<Informer<Lease>> {
        self.node_leases
            .get_or_init(|| self.start(Api::namespaced(self.client.clone(), "kube-node-lease")))
            .clone()
    }
}

impl std::fmt::Debug for Informers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informers").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("scheduler", &self.scheduler)
            .finish_non_exhaustive()
    }
}

/// One controller manager: a client, its informers, its metrics, and which controllers to run.
pub struct Manager {
    /// The controller's client (its own identity with --use-service-account-credentials),
    /// or the manager's.
    pub client: kube::Client,
    /// Shared by every controller of the manager, watching with the manager's identity.
    pub informers: Arc<Informers>,
    /// What the API server serves, shared by the controllers that follow every resource.
    pub discovery: Arc<runtime::Discovery>,
    pub metrics: Metrics,
    /// Where controllers register their own metrics.
    pub registry: prometheus::Registry,
    pub scheduler: scheduler::Config,
    pub garbage_collector: garbagecollector::Config,
    /// How long pod changes for one Service are collected before the endpoint controllers sync
    /// it (zero: at once).
    pub endpoint_updates_batch_period: Duration,
    /// The most endpoints one EndpointSlice holds.
    pub max_endpoints_per_slice: usize,
    /// Writes by the endpoint controllers.
    pub endpoint_changes: endpointslice::ChangeMetrics,
    pub node_lifecycle: nodelifecycle::Config,
    /// The node IPAM controller's cluster CIDR and node mask.
    pub node_ipam: nodeipam::Config,
    pub pod_gc: podgc::Config,
    /// The Job controller's pod failure backoff.
    pub job: job::plan::Settings,
    /// The HorizontalPodAutoscaler controller's flags.
    pub autoscaler: autoscaler::Config,
    /// Where the GitOps controller caches repositories.
    pub gitops: gitops::Config,
    /// ReplicaSets and Deployments reconciled at once.
    pub concurrent_replicaset_syncs: u16,
    pub concurrent_deployment_syncs: u16,
    /// The time the time-driven controllers (CronJobs, TTLs) read.
    pub clock: runtime::Clock,
    /// The cluster CA (PEM) the root-CA publisher puts in every namespace (`--root-ca-file`).
    pub root_ca: Option<String>,
    /// The CA the certificate signer issues with (`--cluster-signing-cert-file`).
    pub cluster_signing: Option<Arc<capstan_pki::Ca>>,
    /// The longest certificate it issues (`--cluster-signing-duration`, a year).
    pub cluster_signing_duration: Duration,
    /// Each controller's own client, when they run under their own identities.
    pub identities: Option<Arc<runtime::identities::Identities>>,
}

/// The settings of a manager's controllers.
#[derive(Debug, Clone)]
pub struct Config {
    pub scheduler: scheduler::Config,
    pub garbage_collector: garbagecollector::Config,
    /// Kubernetes' --endpoint-updates-batch-period (Kubernetes defaults to 0; Capstan to
    /// 100 ms, so a rollout of many pods costs a few slice writes, not one per pod change).
    pub endpoint_updates_batch_period: Duration,
    /// Kubernetes' --max-endpoints-per-slice (1–1000, default 100).
    pub max_endpoints_per_slice: usize,
    pub node_lifecycle: nodelifecycle::Config,
    /// The node IPAM controller's cluster CIDR and node mask.
    pub node_ipam: nodeipam::Config,
    pub pod_gc: podgc::Config,
    pub job: job::plan::Settings,
    pub autoscaler: autoscaler::Config,
    pub gitops: gitops::Config,
    /// `--concurrent-replicaset-syncs` and `--concurrent-deployment-syncs` (Kubernetes' 5
    /// each): ReplicaSets and Deployments reconciled at once. Unbounded, 500 ReplicaSets
    /// scaling up together had thousands of pod creates in flight (a connection each).
    pub concurrent_replicaset_syncs: u16,
    pub concurrent_deployment_syncs: u16,
    pub clock: runtime::Clock,
    pub root_ca: Option<String>,
    pub cluster_signing: Option<Arc<capstan_pki::Ca>>,
    pub cluster_signing_duration: Duration,
    /// Run each controller as its own ServiceAccount (`--use-service-account-credentials`).
    pub identities: Option<Arc<runtime::identities::Identities>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scheduler: scheduler::Config::default(),
            garbage_collector: garbagecollector::Config::default(),
            endpoint_updates_batch_period: Duration::from_millis(100),
            max_endpoints_per_slice: endpointslice::DEFAULT_MAX_ENDPOINTS_PER_SLICE,
            node_lifecycle: nodelifecycle::Config::default(),
            node_ipam: nodeipam::Config::default(),
            pod_gc: podgc::Config::default(),
            job: job::plan::Settings::default(),
            autoscaler: autoscaler::Config::default(),
            gitops: gitops::Config::default(),
            concurrent_replicaset_syncs: 5,
            concurrent_deployment_syncs: 5,
            clock: runtime::Clock::system(),
            root_ca: None,
            cluster_signing: None,
            cluster_signing_duration: Duration::from_secs(365 * 24 * 3600),
            identities: None,
        }
    }
}

impl Manager {
    pub fn new(client: kube::Client, registry: &prometheus::Registry) -> Arc<Manager> {
        Self::with_config(client, registry, Config::default())
    }

    pub fn with_config(
        client: kube::Client,
        registry: &prometheus::Registry,
        config: Config,
    ) -> Arc<Manager> {
        let metrics = Metrics::register(registry);
        Arc::new(Manager {
            informers: Arc::new(Informers::new(client.clone())),
            discovery: Arc::new(runtime::Discovery::new(client.clone())),
            client,
            metrics,
            registry: registry.clone(),
            scheduler: config.scheduler.with_metrics(registry),
            garbage_collector: config.garbage_collector,
            endpoint_updates_batch_period: config.endpoint_updates_batch_period,
            max_endpoints_per_slice: config.max_endpoints_per_slice.clamp(1, 1000),
            endpoint_changes: endpointslice::ChangeMetrics::register(registry),
            node_lifecycle: config.node_lifecycle,
            node_ipam: config.node_ipam,
            pod_gc: config.pod_gc,
            job: config.job,
            autoscaler: config.autoscaler,
            gitops: config.gitops,
            concurrent_replicaset_syncs: config.concurrent_replicaset_syncs.max(1),
            concurrent_deployment_syncs: config.concurrent_deployment_syncs.max(1),
            clock: config.clock,
            root_ca: config.root_ca,
            cluster_signing: config.cluster_signing,
            cluster_signing_duration: config.cluster_signing_duration,
            identities: config.identities,
        })
    }

    /// This manager as one controller sees it: its own client, everything else shared.
    fn as_controller(&self, client: kube::Client) -> Arc<Manager> {
        Arc::new(Manager {
            client,
            informers: self.informers.clone(),
            discovery: self.discovery.clone(),
            metrics: self.metrics.clone(),
            registry: self.registry.clone(),
            scheduler: self.scheduler.clone(),
            garbage_collector: self.garbage_collector.clone(),
            endpoint_updates_batch_period: self.endpoint_updates_batch_period,
            max_endpoints_per_slice: self.max_endpoints_per_slice,
            endpoint_changes: self.endpoint_changes.clone(),
            node_lifecycle: self.node_lifecycle.clone(),
            node_ipam: self.node_ipam.clone(),
            pod_gc: self.pod_gc.clone(),
            job: self.job,
            autoscaler: self.autoscaler,
            gitops: self.gitops.clone(),
            concurrent_replicaset_syncs: self.concurrent_replicaset_syncs,
            concurrent_deployment_syncs: self.concurrent_deployment_syncs,
            clock: self.clock,
            root_ca: self.root_ca.clone(),
            cluster_signing: self.cluster_signing.clone(),
            cluster_signing_duration: self.cluster_signing_duration,
            identities: None,
        })
    }

    /// The manager controller `name` runs with: its own identity when configured (retried
    /// until the API server gives it a token), else this one.
    async fn for_controller(self: &Arc<Self>, name: &str) -> Arc<Manager> {
        let Some(ids) = &self.identities else {
            return self.clone();
        };
        loop {
            match ids.client(name).await {
                Ok(client) => return self.as_controller(client),
                Err(e) => {
                    tracing::warn!(controller = %name, error = %e, "no identity for the controller yet; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    /// Runs the named controllers until dropped. Unknown names are an error, by name.
    pub async fn run(self: Arc<Self>, names: &BTreeSet<String>) -> Result<()> {
        if let Some(bad) = names.iter().find(|n| !ALL.contains(&n.as_str())) {
            return Err(Error::invalid(
                "--controllers",
                format!("unknown controller {bad:?}; known: {}", ALL.join(", ")),
            ));
        }
        let mut set = tokio::task::JoinSet::new();
        for name in names {
            let (me, name) = (self.clone(), name.clone());
            set.spawn(async move {
                let m = me.for_controller(&name).await;
                tracing::info!(controller = %name, "started");
                match name.as_str() {
                    autoscaler::NAME => autoscaler::run(m).await,
                    scalingpolicy::NAME => scalingpolicy::run(m).await,
                    gitops::NAME => gitops::run(m).await,
                    replicaset::NAME => replicaset::run(m).await,
                    resourcequota::NAME => resourcequota::run(m).await,
                    job::NAME => job::run(m).await,
                    cronjob::NAME => cronjob::run(m).await,
                    ttlafterfinished::NAME => ttlafterfinished::run(m).await,
                    deployment::NAME => deployment::run(m).await,
                    daemonset::NAME => daemonset::run(m).await,
                    statefulset::NAME => statefulset::run(m).await,
                    volume::NAME => volume::run(m).await,
                    disruption::NAME => disruption::run(m).await,
                    scheduler::NAME => scheduler::run(m).await,
                    garbagecollector::NAME => garbagecollector::run(m).await,
                    namespace::NAME => namespace::run(m).await,
                    endpointslice::NAME => endpointslice::run(m).await,
                    endpoints::NAME => endpoints::run(m).await,
                    endpointslicemirroring::NAME => endpointslicemirroring::run(m).await,
                    nodeipam::NAME => nodeipam::run(m).await,
                    nodelifecycle::NAME => nodelifecycle::run(m).await,
                    tainteviction::NAME => tainteviction::run(m).await,
                    podgc::NAME => podgc::run(m).await,
                    certificates::NAME => certificates::run(m).await,
                    serviceaccount::NAME => serviceaccount::run(m).await,
                    serviceaccount::ROOT_CA_NAME => serviceaccount::run_root_ca(m).await,
                    _ => {}
                }
            });
        }
        while let Some(r) = set.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "a controller task ended");
            }
        }
        Ok(())
    }
}

/// All controllers, as a set for [`Manager::run`].
pub fn all() -> BTreeSet<String> {
    ALL.iter().map(|s| s.to_string()).collect()
}
