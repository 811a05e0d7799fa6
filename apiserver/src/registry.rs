//! The one generic registry: every served resource is a [`ResourceInfo`] — its names, scope,
//! verbs, subresources and its [`Strategy`] (validation, defaulting, field selectors, table
//! columns). Built-ins are listed in [`crate::builtins`]; the CRD controller ([`crate::crd`]) adds and
//! removes entries at run time through the same type, so every handler serves both alike.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use capstan_api::validation::FieldError;
use serde_json::Value;

use crate::object::{self, ObjectExt};
use crate::strategy::{StorageHooks, Strategy};

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
    /// A custom resource's conversion webhook (`conversion.strategy: Webhook`), shared by its
    /// versions: objects are converted between versions by it, never by rewriting apiVersion.
    pub conversion_webhook: Option<Arc<crate::crd::conversion::ConversionWebhook>>,
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

/// [`VERBS`] without deletecollection (namespaces).
pub const VERBS_BUT_DELETECOLLECTION: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

impl ResourceInfo {
    /// The verbs discovery lists for the resource.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.strategy.deletes_collections() {
            VERBS
        } else {
            VERBS_BUT_DELETECOLLECTION
        }
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }

    /// The apiVersion objects are stored with.
    pub fn storage_api_version(&self) -> String {
        api_version(&self.group, &self.storage_version)
    }

    /// A stored object as this version serves it. Versions of a resource differ only in
    /// `apiVersion` (conversion strategy None), so that is all that changes — unless the
    /// resource has a conversion webhook: then the object keeps the version it is stored at,
    /// for [`crate::crd::conversion::convert_all`] to convert.
    pub fn decode(&self, bytes: &[u8], rv: i64) -> Option<Value> {
        let mut obj = object::decode(bytes, rv)?;
        if let Some(c) = &self.conversion {
            (c.from_storage)(&mut obj);
        }
        if self.conversion_webhook.is_some()
            && obj.get("apiVersion").and_then(Value::as_str) != Some(&self.api_version())
        {
            return Some(obj); // canonicalized once converted (its schema is another's)
        }
        if obj.get("apiVersion").and_then(Value::as_str) != Some(&self.api_version()) {
            obj["apiVersion"] = Value::String(self.api_version());
        }
        self.strategy.canonicalize(&mut obj);
        Some(obj)
    }

    /// Whether reads are served from a watch cache (all but Events: see
    /// [`crate::watch_cache::uncached`]).
    pub fn watch_cached(&self) -> bool {
        crate::watch_cache::uncached::is_cached(&self.group, &self.plural)
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

    /// [`validate`](Self::validate) for an update, given the live object.
    pub fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        let mut errs = object::validate_meta(new, self.namespaced, self.strategy.name_rule());
        errs.extend(self.strategy.validate_on_update(new, old));
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
    /// A registry serving `infos` (the server starts with [`crate::builtins::builtins`]).
    pub fn with(infos: Vec<ResourceInfo>) -> Registry {
        let r = Registry::default();
        for info in infos {
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
