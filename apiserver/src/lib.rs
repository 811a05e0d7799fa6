//! Capstan's Kubernetes API server. Start at [`ApiServer`] (the server's state) and [`router`].
//!
//! One request's path: [`http`] routes it, [`http::resolve`] turns the path into a
//! [`request::Target`] (kube-apiserver's RequestInfo), [`http::dispatch`] picks the verb, reads
//! the [`body`] (YAML ones through [`yaml`]) and calls the REST storage layer, [`rest`] — one file
//! per verb (get, list, create, update, patch, apply, delete, watch, scale, binding, pods' log and
//! exec). Writes go through the resource's [`strategy`] (validation, defaulting,
//! [`strategy::StorageHooks`] such as [`service`]'s ClusterIP allocation) to the store; LIST,
//! WATCH and GET are served by one [`watch_cache::Cacher`] per resource. The patch engines are in
//! [`patch`], what a patch may cost in [`patch::budget`]. Resources come from the [`registry`];
//! CustomResourceDefinitions become served resources through [`crd`], whose controller runs
//! inside every server. Errors are [`errors::ApiError`] → metav1.Status.
//!
//! Also served: [`discovery`], [`openapi`] (v3 and v2), protobuf request bodies ([`protobuf`]),
//! Tables ([`table`]), events.k8s.io over core Events ([`events`]), request [`metrics`] and
//! metrics.k8s.io from the node agents' summaries ([`resource_metrics`]).

pub mod admission;
pub mod admission_policy;
pub mod aggregator;
pub mod apiservice;
pub mod audit;
pub mod auth;
pub mod batch;
pub mod body;
pub mod builtins;
pub mod cel;
pub mod certificates;
pub mod configdata;
pub mod controller_revision;
pub mod crd;
pub mod daemon_set;
pub mod default_toleration_seconds;
pub mod discovery;
pub mod ephemeral_containers;
pub mod errors;
pub mod events;
pub mod hpa;
pub mod http;
pub mod ingress;
pub mod metrics;
pub mod node;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod pod_disruption_budget;
pub mod priority;
pub mod protobuf;
pub mod quota;
pub mod registry;
pub mod request;
pub mod resource_metrics;
pub mod rest;
pub mod service;
pub mod service_account_admission;
pub mod stateful_set;
pub mod strategy;
pub mod table;
pub mod volumes;
pub mod watch_cache;
pub mod webhook;
pub mod yaml;

pub use http::router;
pub use http::serve::{ServeLimits, serve, serve_tls};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use capstan_storage::Storage;
use prometheus::Registry as Metrics;
use serde_json::json;

use errors::{ApiError, ApiResult};
use metrics::RequestMetrics;
use openapi::{OpenApiDocs, SwaggerDocs};
use registry::{Registry, ResourceInfo};
use request::{Params, Target};
use watch_cache::Cacher;

/// The API server's shared state.
pub struct ApiServer {
    pub registry: Registry,
    pub store: Arc<dyn Storage>,
    cachers: RwLock<HashMap<String, Arc<Cacher>>>,
    metrics: Option<RequestMetrics>,
    pub prometheus: Metrics,
    /// The /openapi/v3 root and documents, built on demand for one registry generation
    /// (CustomResourceDefinitions change the registry, which makes them stale).
    openapi: RwLock<Option<(u64, Arc<OpenApiDocs>)>>,
    /// /openapi/v2 as JSON and as gnostic protobuf, derived from the v3 documents.
    openapi_v2: RwLock<Option<(u64, Arc<SwaggerDocs>)>>,
    /// Service ClusterIPs.
    pub ips: service::cluster_ip::Allocator,
    /// Service NodePorts.
    pub node_ports: service::node_port::NodePortAllocator,
    /// What componentstatuses reports, and where it looks.
    components: RwLock<Vec<(String, http::component_status::Probe)>>,
    /// Who requests are and what they may do.
    pub auth: auth::Auth,
    /// The audit log, when configured.
    pub audit: Option<audit::AuditLog>,
    /// Seats of the in-flight limits.
    pub inflight: Arc<http::inflight::InFlight>,
    /// How the server reaches node agents' ports: TLS with its kubelet client certificate,
    /// verifying theirs (None: plain HTTP).
    pub kubelet_tls: Option<Arc<rustls::ClientConfig>>,
    /// ValidatingAdmissionPolicies, compiled.
    pub policies: admission_policy::Policies,
    /// Admission webhooks, compiled with their clients.
    pub webhooks: webhook::Webhooks,
    /// The extension API servers of remote APIServices.
    pub aggregator: aggregator::Aggregator,
    /// The ResourceQuota admission plugin, run on every create.
    pub quota: Arc<quota::admission::QuotaAdmission>,
    /// The server itself, for its watch caches' conversions.
    me: std::sync::Weak<ApiServer>,
    /// Milliseconds between watch bookmarks ([`rest::watch::BOOKMARK_INTERVAL`] unless changed).
    bookmark_ms: std::sync::atomic::AtomicU64,
    /// The node agents' resource summaries, briefly kept (metrics.k8s.io).
    summaries: resource_metrics::Summaries,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("store", &self.store)
            .finish()
    }
}

/// Dropping the server stops its watch caches (and with them their store watches).
impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Ok(map) = self.cachers.read() {
            for c in map.values() {
                c.stop();
            }
        }
    }
}

/// How an API server allocates for Services.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// ClusterIPs come from here (`--service-cidr`).
    pub service_cidr: service::cluster_ip::ServiceCidr,
    /// NodePorts come from here (`--service-node-port-range`).
    pub node_ports: service::node_port::NodePortRange,
    /// The tolerations every new pod gets (`--default-*-toleration-seconds`).
    pub default_tolerations: default_toleration_seconds::DefaultTolerationSeconds,
    /// Authentication and authorization (`--token-auth-file`, `--anonymous-auth`,
    /// `--authorization-mode`).
    pub auth: auth::AuthConfig,
    /// The audit log (`--audit-log-path`, `--audit-policy-file`).
    pub audit: Option<audit::AuditConfig>,
    /// `--max-requests-inflight`, `--max-mutating-requests-inflight`.
    pub inflight: http::inflight::Limits,
    /// The ServiceAccount admission plugin on pods (on in `capstan apiserver` and `capstan up`
    /// unless `--disable-admission-plugins ServiceAccount`; off here, as API-server-only tests
    /// run no controller to make each namespace's `default` account).
    pub service_account_admission: bool,
    /// TLS to node agents (`--kubelet-certificate-authority`, `--kubelet-client-certificate`):
    /// `capstan up` and `capstan apiserver` make it from the cluster CA.
    pub kubelet_tls: Option<Arc<rustls::ClientConfig>>,
    /// The aggregation layer's client certificate (`--proxy-client-cert-file`) and the CAs
    /// extension servers are told to trust.
    pub front_proxy: Option<aggregator::FrontProxy>,
}

/// The namespaces every cluster starts with.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

impl ApiServer {
    /// Builds the server over `store`: registers the built-ins, starts their watch caches,
    /// creates the system namespaces, and registers request metrics in `prometheus`.
    pub async fn new(store: Arc<dyn Storage>, prometheus: Metrics) -> ApiResult<Arc<ApiServer>> {
        Self::with_service_cidr(
            store,
            prometheus,
            service::cluster_ip::ServiceCidr::default(),
        )
        .await
    }

    /// As [`ApiServer::new`], allocating Service ClusterIPs from `cidr`.
    pub async fn with_service_cidr(
        store: Arc<dyn Storage>,
        prometheus: Metrics,
        cidr: service::cluster_ip::ServiceCidr,
    ) -> ApiResult<Arc<ApiServer>> {
        let config = Config {
            service_cidr: cidr,
            ..Config::default()
        };
        Self::with_config(store, prometheus, config).await
    }

    /// As [`ApiServer::new`], with `config`.
    pub async fn with_config(
        store: Arc<dyn Storage>,
        prometheus: Metrics,
        config: Config,
    ) -> ApiResult<Arc<ApiServer>> {
        let metrics = RequestMetrics::register(&prometheus)
            .map_err(|e| ApiError::internal(format!("registering metrics: {e}")))?;
        let ips = service::cluster_ip::Allocator::new(config.service_cidr, store.clone());
        let node_ports =
            service::node_port::NodePortAllocator::new(config.node_ports, store.clone());
        let audit = match &config.audit {
            Some(a) => Some(
                audit::AuditLog::open(&a.path, a.policy.clone(), &prometheus)
                    .map_err(ApiError::internal)?,
            ),
            None => None,
        };
        let registry = Registry::with(crate::builtins::builtins());
        let sa_admission = Arc::new(service_account_admission::ServiceAccountAdmission::default());
        let mut pod_admission = admission::Chain::default();
        if config.service_account_admission {
            pod_admission.0.push(sa_admission.clone());
        }
        let limit_ranger = Arc::new(quota::limit_range::LimitRanger::default());
        pod_admission.0.insert(0, limit_ranger.clone());
        let quota = Arc::new(quota::admission::QuotaAdmission::default());
        let priority = Arc::new(priority::PriorityAdmission::default());
        pod_admission
            .0
            .push(Arc::new(priority::PodPriority(priority.clone())));
        pod_admission.0.push(Arc::new(config.default_tolerations));
        registry.attach_hooks(("", "v1", "pods"), Arc::new(pod_admission));
        let claims = Arc::new(volumes::claim::ClaimAdmission::default());
        registry.attach_hooks(
            ("", "v1", "persistentvolumeclaims"),
            Arc::new(admission::Chain(vec![
                Arc::new(volumes::claim::ClaimHooks(claims.clone())),
                Arc::new(quota::limit_range::ClaimLimits(limit_ranger.clone())),
            ])),
        );
        let ingress_class = Arc::new(ingress::DefaultClass::default());
        registry.attach_hooks((ingress::GROUP, "v1", "ingresses"), ingress_class.clone());
        registry.attach_hooks(
            (priority::GROUP, "v1", "priorityclasses"),
            Arc::new(priority::ClassDefault(priority.clone())),
        );
        registry.attach_hooks(
            ("", "v1", "services"),
            Arc::new(service::ServiceHooks::new(ips.clone(), node_ports.clone())),
        );
        let api = Arc::new_cyclic(|me| ApiServer {
            me: me.clone(),
            registry,
            cachers: RwLock::new(HashMap::new()),
            metrics: Some(metrics),
            prometheus,
            openapi: RwLock::new(None),
            openapi_v2: RwLock::new(None),
            bookmark_ms: std::sync::atomic::AtomicU64::new(
                rest::watch::BOOKMARK_INTERVAL.as_millis() as u64,
            ),
            summaries: Default::default(),
            ips,
            node_ports,
            components: RwLock::new(http::component_status::default_components()),
            auth: auth::Auth::new(config.auth),
            audit,
            inflight: http::inflight::InFlight::new(config.inflight),
            kubelet_tls: config.kubelet_tls,
            policies: Default::default(),
            webhooks: Default::default(),
            aggregator: aggregator::Aggregator::new(config.front_proxy),
            quota: quota.clone(),
            store,
        });
        limit_ranger.attach(Arc::downgrade(&api));
        quota.attach(Arc::downgrade(&api));
        sa_admission.attach(Arc::downgrade(&api));
        priority.attach(Arc::downgrade(&api));
        claims.attach(Arc::downgrade(&api));
        ingress_class.attach(Arc::downgrade(&api));
        for info in api.registry.all().into_iter().filter(|i| i.watch_cached()) {
            api.cacher(&info)?;
        }
        let ns_info = api
            .registry
            .get("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces are not registered"))?;
        let target = Target {
            info: ns_info,
            namespace: None,
            name: None,
            subresource: None,
        };
        for ns in SYSTEM_NAMESPACES {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match api.create(&target, obj, &Params::default()).await {
                Ok(_) => tracing::info!(namespace = ns, "created system namespace"),
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        auth::rbac::bootstrap::ensure(&api).await?;
        priority::ensure_system_classes(&api).await?;
        crd::controller::CrdController::start(&api).await?;
        admission_policy::type_checking::start(&api)?;
        apiservice::sync(&api).await?;
        apiservice::spawn(&api);
        aggregator::publish_authentication(&api).await?;
        aggregator::availability::spawn(&api);
        service::system::ensure_dns_service(&api).await?;
        api.ips.spawn_repair(Duration::from_secs(60));
        api.node_ports.spawn_repair(Duration::from_secs(60));
        Ok(api)
    }

    /// The watch cache of a resource (started on first use). Only the definition the registry
    /// serves now has one: a request that resolved a resource just before it was replaced (a
    /// CRD changed) is served by the current definition's cache, and one that resolved a
    /// resource since removed gets a 404 — never a cache nobody would stop, or one with an old
    /// schema.
    /// What every watch cache holds: (group, resource, memory), sorted.
    pub fn cache_memory(&self) -> Vec<(String, String, crate::watch_cache::CacheMemory)> {
        let caches: Vec<Arc<Cacher>> = self
            .cachers
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let mut out: Vec<_> = caches
            .iter()
            .map(|c| (c.info().group.clone(), c.info().plural.clone(), c.memory()))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    pub fn cacher(&self, info: &Arc<ResourceInfo>) -> ApiResult<Arc<Cacher>> {
        let key = format!("{}/{}", info.api_version(), info.plural);
        if let Some(c) = self.cachers.read().ok().and_then(|m| m.get(&key).cloned())
            && Arc::ptr_eq(c.info(), info)
        {
            return Ok(c);
        }
        let mut map = self
            .cachers
            .write()
            .map_err(|_| ApiError::internal("cachers lock poisoned"))?;
        // Checked under the cachers lock (lock order: cachers, then registry; the registry
        // never takes the cachers lock): the resource the registry serves now. A request that
        // resolved an older definition of it is served by the current one.
        let current = self
            .registry
            .get(&info.group, &info.version, &info.plural)
            .ok_or_else(errors::route_not_found)?;
        if let Some(c) = map.get(&key) {
            if Arc::ptr_eq(c.info(), &current) {
                return Ok(c.clone());
            }
            c.stop();
        }
        let c = Cacher::start_for(
            self.me.clone(),
            current,
            self.store.clone(),
            Default::default(),
        );
        map.insert(key, c.clone());
        Ok(c)
    }

    /// Stops and forgets the watch cache of a resource that is no longer served (its client
    /// watches end; clients re-watch and find the resource gone or changed). A cache already
    /// rebuilt for a newer definition is left alone.
    pub fn drop_cacher(&self, info: &Arc<ResourceInfo>) {
        let key = format!("{}/{}", info.api_version(), info.plural);
        if let Ok(mut m) = self.cachers.write()
            && m.get(&key).is_some_and(|c| Arc::ptr_eq(c.info(), info))
            && let Some(c) = m.remove(&key)
        {
            c.stop();
        }
    }

    /// Reports component `name` (in componentstatuses) through `probe`, replacing its default
    /// (`capstan up` registers its in-process controller manager and scheduler).
    pub fn set_component(&self, name: &str, probe: http::component_status::Probe) {
        if let Ok(mut c) = self.components.write() {
            match c.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 = probe,
                None => c.push((name.to_string(), probe)),
            }
            c.sort_by(|a, b| a.0.cmp(&b.0));
        }
    }

    /// The components componentstatuses reports, by name.
    pub fn components(&self) -> Vec<(String, http::component_status::Probe)> {
        self.components
            .read()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// How often watches that allow bookmarks get one.
    pub fn bookmark_interval(&self) -> Duration {
        Duration::from_millis(
            self.bookmark_ms
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(10),
        )
    }

    /// Changes the bookmark interval (tests use a short one).
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.bookmark_ms.store(
            every.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Counts a request refused before its handler (`unauthorized`, `forbidden`).
    pub fn count_auth(&self, reason: &str) {
        if let Some(m) = &self.metrics {
            m.denied.with_label_values(&[reason]).inc();
        }
    }

    /// Ready once every watch cache has listed.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        for info in self.registry.all().into_iter().filter(|i| i.watch_cached()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(cacher) = self.cacher(&info) else {
                continue; // removed meanwhile
            };
            if !cacher.wait_for(0, left).await {
                return false;
            }
        }
        true
    }
}
