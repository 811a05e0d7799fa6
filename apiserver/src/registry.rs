//! The one generic registry: every served resource is a [`ResourceInfo`] — its names, scope,
//! verbs, subresources and its [`Strategy`] (validation, defaulting, field selectors, table
//! columns). Built-ins are listed in [`builtins`]; the CRD controller ([`crate::crd`]) adds and
//! removes entries at run time through the same type, so every handler serves both alike.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use capstan_api::validation::FieldError;
use serde_json::Value;

use crate::object::{self, ObjectExt};
use crate::strategy::{self, StorageHooks, Strategy};

/// One served resource (a group/version/plural).
#[derive(Clone)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    /// Has a /status subresource: the main endpoint ignores status, /status ignores the rest.
    pub status: bool,
    /// Has a /scale subresource (autoscaling/v1 Scale), with where its fields live.
    pub scale: Option<ScalePaths>,
    /// Accepts strategic merge patches (built-ins; custom resources answer 415, as in Kubernetes).
    pub strategic_merge: bool,
    /// The version objects are stored at. Versions of one resource share one store prefix; with
    /// conversion strategy None only `apiVersion` differs between them.
    pub storage_version: String,
    /// A `Warning` header sent with every response of this version (deprecated CRD versions).
    pub deprecation: Option<String>,
    /// Where objects live in the store: `pods/` for built-ins, `GROUP/PLURAL/` for custom
    /// resources (kube-apiserver's etcd layout).
    pub store_prefix: String,
    /// The resource's CRD is being deleted: reads and deletes are served, creates are not.
    pub terminating: bool,
    /// `PodList`, `WidgetList`.
    pub list_kind: String,
    /// Field-level conversion between this view and the stored shape (events.k8s.io/v1 Events
    /// over core/v1 ones); None: only apiVersion differs.
    pub conversion: Option<Conversion>,
    pub strategy: Arc<dyn Strategy>,
    /// Work around the store write that this resource needs (a Service's ClusterIP); None for
    /// most resources.
    pub hooks: Option<Arc<dyn StorageHooks>>,
}

/// How a resource view maps to the stored shape of objects it shares with another resource.
#[derive(Clone, Copy, Debug)]
pub struct Conversion {
    pub to_storage: fn(&mut Value),
    pub from_storage: fn(&mut Value),
}

/// Where a /scale subresource reads and writes (JSON pointers into the object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    /// `/spec/replicas`: written by PUT/PATCH of the Scale.
    pub spec_replicas: String,
    /// `/status/replicas`.
    pub status_replicas: String,
    /// Where the label selector is. Built-ins hold a metav1.LabelSelector at `/spec/selector`;
    /// custom resources name a string field holding the serialized selector.
    pub selector: Option<SelectorAt>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectorAt {
    /// A metav1.LabelSelector object (built-in workloads).
    LabelSelector(String),
    /// A string already in selector syntax (CRDs' labelSelectorPath).
    String(String),
}

impl ScalePaths {
    /// The built-in workloads' layout: spec.replicas, status.replicas, spec.selector.
    pub fn workload() -> ScalePaths {
        ScalePaths {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            selector: Some(SelectorAt::LabelSelector("/spec/selector".into())),
        }
    }
}

impl std::fmt::Debug for ResourceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.group, self.version, self.plural)
    }
}

pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceInfo {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }

    /// The apiVersion objects are stored with.
    pub fn storage_api_version(&self) -> String {
        api_version(&self.group, &self.storage_version)
    }

    /// A stored object as this version serves it. Versions of a resource differ only in
    /// `apiVersion` (conversion strategy None), so that is all that changes.
    pub fn decode(&self, bytes: &[u8], rv: i64) -> Option<Value> {
        let mut obj = crate::watch_cache::decode(bytes, rv)?;
        if let Some(c) = &self.conversion {
            (c.from_storage)(&mut obj);
        }
        if obj.get("apiVersion").and_then(Value::as_str) != Some(&self.api_version()) {
            obj["apiVersion"] = Value::String(self.api_version());
        }
        self.strategy.canonicalize(&mut obj);
        Some(obj)
    }

    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }

    /// The store prefix of every object of this resource, as kube-apiserver lays out etcd:
    /// `pods/`, `deployments/`; custom resources add their group.
    pub fn prefix(&self) -> String {
        self.store_prefix.clone()
    }

    /// The store prefix for a list: one namespace, or every object.
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.prefix()),
            _ => format!("{}{name}", self.prefix()),
        }
    }

    /// The key of a stored object (its own namespace and name).
    pub fn key_of(&self, obj: &Value) -> String {
        self.key(obj.namespace(), obj.name().unwrap_or_default())
    }

    /// Validation common to every object (names, labels, annotations) plus the strategy's.
    pub fn validate(&self, obj: &Value) -> Vec<FieldError> {
        let mut errs = object::validate_meta(obj, self.namespaced, self.strategy.name_rule());
        errs.extend(self.strategy.validate(obj));
        errs
    }
}

/// `v1` or `apps/v1`.
pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// The served resources, looked up by group/version/plural (and by short name for clients).
#[derive(Debug, Default)]
pub struct Registry {
    by_gvr: RwLock<BTreeMap<(String, String, String), Arc<ResourceInfo>>>,
    /// Bumped by every add and remove: discovery and OpenAPI documents built at an older
    /// generation are stale.
    generation: AtomicU64,
    /// The generation, for tasks that follow changes (APIService registration).
    changes: tokio::sync::watch::Sender<u64>,
}

impl Registry {
    pub fn with_builtins() -> Registry {
        let r = Registry::default();
        for info in builtins() {
            r.add(info);
        }
        r
    }

    pub fn add(&self, info: ResourceInfo) -> Arc<ResourceInfo> {
        let info = Arc::new(info);
        if let Ok(mut map) = self.by_gvr.write() {
            map.insert(
                (
                    info.group.clone(),
                    info.version.clone(),
                    info.plural.clone(),
                ),
                info.clone(),
            );
        }
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.changes.send_replace(g);
        info
    }

    /// Gives a served resource its storage hooks (the server's allocators are made after the
    /// registry). False when the resource is not served.
    pub fn attach_hooks(
        &self,
        (group, version, plural): (&str, &str, &str),
        hooks: Arc<dyn StorageHooks>,
    ) -> bool {
        let Some(info) = self.get(group, version, plural) else {
            return false;
        };
        let mut with = (*info).clone();
        with.hooks = Some(hooks);
        self.add(with);
        true
    }

    /// Stops serving a resource; returns what was served.
    pub fn remove(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        let removed = self.by_gvr.write().ok()?.remove(&(
            group.to_string(),
            version.to_string(),
            plural.to_string(),
        ));
        if removed.is_some() {
            let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
            self.changes.send_replace(g);
        }
        removed
    }

    /// Follows the registry: the receiver sees every later add and remove.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Changes with every add and remove.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.by_gvr
            .read()
            .ok()?
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<ResourceInfo>> {
        self.by_gvr
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether any resource is served in this group (and version, when given).
    pub fn serves(&self, group: &str, version: Option<&str>) -> bool {
        self.all()
            .iter()
            .any(|r| r.group == group && version.is_none_or(|v| v == r.version))
    }
}

/// A built-in resource: (group, version, kind), plural, short names, scope, status subresource.
fn res(
    (group, version, kind): (&'static str, &'static str, &'static str),
    plural: &'static str,
    short_names: &'static [&'static str],
    namespaced: bool,
    status: bool,
    strategy: Arc<dyn Strategy>,
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_ascii_lowercase(),
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        namespaced,
        status,
        scale: None,
        strategic_merge: true,
        storage_version: version.into(),
        deprecation: None,
        store_prefix: format!("{plural}/"),
        terminating: false,
        list_kind: format!("{kind}List"),
        conversion: None,
        strategy,
        hooks: None,
    }
}

/// events.k8s.io/v1 Events: the core/v1 Events seen through kube-apiserver's field mapping
/// (one store prefix; see [`crate::events`]).
fn events_v1() -> ResourceInfo {
    use k8s_openapi::api::events::v1 as events;
    let mut info = res(
        ("events.k8s.io", "v1", "Event"),
        "events",
        &["ev"],
        true,
        false,
        strategy::Builtin::of::<events::Event>().arc(),
    );
    info.store_prefix = "events/".into();
    info.conversion = Some(Conversion {
        to_storage: crate::events::to_core,
        from_storage: crate::events::from_core,
    });
    info
}

/// The built-in resources Capstan serves, typed with k8s-openapi.
pub fn builtins() -> Vec<ResourceInfo> {
    use k8s_openapi::api::apps::v1 as apps;
    use k8s_openapi::api::autoscaling::v2 as autoscaling;
    use k8s_openapi::api::coordination::v1 as coordination;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::discovery::v1 as discovery;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    use strategy::{Builtin, NameRule};

    let all = vec!["all".to_string()];
    let mut pods = res(
        ("", "v1", "Pod"),
        "pods",
        &["po"],
        true,
        true,
        Builtin::of::<core::Pod>()
            .fields(&[
                ("spec.nodeName", "/spec/nodeName"),
                ("status.phase", "/status/phase"),
                ("spec.restartPolicy", "/spec/restartPolicy"),
                ("spec.schedulerName", "/spec/schedulerName"),
                ("spec.serviceAccountName", "/spec/serviceAccountName"),
                ("status.podIP", "/status/podIP"),
                ("status.nominatedNodeName", "/status/nominatedNodeName"),
            ])
            .validate_with(strategy::validate_pod)
            .validate_update_with(crate::ephemeral_containers::validate_update)
            .subresource_fields(&[("ephemeralcontainers", crate::ephemeral_containers::PATH)])
            .on_create(strategy::pod_on_create)
            .table(crate::table::pods)
            .arc(),
    );
    pods.categories = all.clone();
    let mut services = res(
        ("", "v1", "Service"),
        "services",
        &["svc"],
        true,
        true,
        Builtin::of::<core::Service>()
            .names(NameRule::Label)
            .on_create(strategy::service_on_create)
            .table(crate::table::services)
            .reset_status_on_create()
            .arc(),
    );
    services.categories = all.clone();
    let mut deployments = res(
        ("apps", "v1", "Deployment"),
        "deployments",
        &["deploy"],
        true,
        true,
        Builtin::of::<apps::Deployment>()
            .validate_with(strategy::validate_workload)
            .table(crate::table::deployments)
            .generation()
            .reset_status_on_create()
            .arc(),
    );
    deployments.categories = all.clone();
    deployments.scale = Some(ScalePaths::workload());
    let mut replicasets = res(
        ("apps", "v1", "ReplicaSet"),
        "replicasets",
        &["rs"],
        true,
        true,
        Builtin::of::<apps::ReplicaSet>()
            .validate_with(strategy::validate_workload)
            .table(crate::table::replicasets)
            .generation()
            .reset_status_on_create()
            .arc(),
    );
    replicasets.categories = all.clone();
    replicasets.scale = Some(ScalePaths::workload());
    let mut hpa = res(
        ("autoscaling", "v2", "HorizontalPodAutoscaler"),
        "horizontalpodautoscalers",
        &["hpa"],
        true,
        true,
        Builtin::of::<autoscaling::HorizontalPodAutoscaler>()
            .table(crate::table::hpas)
            .generation()
            .reset_status_on_create()
            .arc(),
    );
    hpa.categories = all.clone();

    vec![
        res(
            ("", "v1", "Namespace"),
            "namespaces",
            &["ns"],
            false,
            true,
            Builtin::of::<core::Namespace>()
                .names(NameRule::Label)
                .fields(&[("status.phase", "/status/phase")])
                .on_create(strategy::namespace_on_create)
                .table(crate::table::namespaces)
                .arc(),
        ),
        pods,
        services,
        res(
            ("", "v1", "Endpoints"),
            "endpoints",
            &["ep"],
            true,
            false,
            Builtin::of::<core::Endpoints>()
                .table(crate::table::endpoints)
                .arc(),
        ),
        res(
            ("", "v1", "Node"),
            "nodes",
            &["no"],
            false,
            true,
            Builtin::of::<core::Node>()
                .fields(&[("spec.unschedulable", "/spec/unschedulable")])
                .table(crate::table::nodes)
                .arc(),
        ),
        res(
            ("", "v1", "ConfigMap"),
            "configmaps",
            &["cm"],
            true,
            false,
            Builtin::of::<core::ConfigMap>()
                .validate_with(crate::configdata::validate_configmap)
                .table(crate::table::configmaps)
                .arc(),
        ),
        res(
            ("", "v1", "Secret"),
            "secrets",
            &[],
            true,
            false,
            Builtin::of::<core::Secret>()
                .fields(&[("type", "/type")])
                .validate_with(crate::configdata::validate_secret)
                .on_update(crate::configdata::merge_string_data)
                .table(crate::table::secrets)
                .arc(),
        ),
        res(
            ("", "v1", "Event"),
            "events",
            &["ev"],
            true,
            false,
            Builtin::of::<core::Event>()
                .fields(&[
                    ("involvedObject.kind", "/involvedObject/kind"),
                    ("involvedObject.name", "/involvedObject/name"),
                    ("involvedObject.namespace", "/involvedObject/namespace"),
                    ("involvedObject.uid", "/involvedObject/uid"),
                    ("reason", "/reason"),
                    ("type", "/type"),
                    ("source", "/source/component"),
                ])
                .table(crate::table::events)
                .arc(),
        ),
        res(
            ("", "v1", "ServiceAccount"),
            "serviceaccounts",
            &["sa"],
            true,
            false,
            Builtin::of::<core::ServiceAccount>()
                .table(crate::table::serviceaccounts)
                .arc(),
        ),
        deployments,
        replicasets,
        hpa,
        events_v1(),
        res(
            ("coordination.k8s.io", "v1", "Lease"),
            "leases",
            &[],
            true,
            false,
            Builtin::of::<coordination::Lease>()
                .table(crate::table::leases)
                .arc(),
        ),
        res(
            ("discovery.k8s.io", "v1", "EndpointSlice"),
            "endpointslices",
            &[],
            true,
            false,
            Builtin::of::<discovery::EndpointSlice>()
                .table(crate::table::endpointslices)
                .arc(),
        ),
        res(
            ("apiregistration.k8s.io", "v1", "APIService"),
            "apiservices",
            &[],
            false,
            true,
            Builtin::of::<k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService>()
                .names(NameRule::VersionDotGroup)
                .validate_with(crate::apiservice::validate)
                .table(crate::table::apiservices)
                .arc(),
        ),
        res(
            ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
            &["crd", "crds"],
            false,
            true,
            Builtin::of::<apiext::CustomResourceDefinition>()
                .validate_with(crate::crd::definition::validate)
                .generation()
                .validate_update_with(crate::crd::definition::validate_update)
                .on_create(crate::crd::definition::on_create)
                .on_update(crate::crd::definition::default_spec)
                .reset_status_on_create()
                .table(crate::table::crds)
                .arc(),
        ),
    ]
}
