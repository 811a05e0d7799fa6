//! The one generic registry: every served resource is a [`ResourceInfo`] — its names, scope,
//! verbs, subresources and its [`Strategy`] (validation, defaulting, field selectors, table
//! columns). Built-ins are listed in [`builtins`]; CustomResourceDefinitions will add entries at
//! run time through the same type, so every handler serves both alike.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use capstan_api::validation::FieldError;
use serde_json::Value;

use crate::object::{self, ObjectExt};
use crate::strategy::{self, Strategy};

/// One served resource (a group/version/plural).
#[derive(Clone)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub namespaced: bool,
    /// Has a /status subresource: the main endpoint ignores status, /status ignores the rest.
    pub status: bool,
    /// Has a /scale subresource (autoscaling/v1 Scale over spec.replicas).
    pub scale: bool,
    /// Accepts strategic merge patches (built-ins; custom resources answer 415, as in Kubernetes).
    pub strategic_merge: bool,
    pub strategy: Arc<dyn Strategy>,
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
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store prefix of every object of this resource, as kube-apiserver lays out etcd:
    /// `pods/`, `deployments/`; custom resources add their group.
    pub fn prefix(&self) -> String {
        format!("{}/", self.plural)
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

/// The served resources, looked up by group/version/plural (and by short name for clients).
#[derive(Debug, Default)]
pub struct Registry {
    by_gvr: RwLock<BTreeMap<(String, String, String), Arc<ResourceInfo>>>,
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
                    info.group.to_string(),
                    info.version.to_string(),
                    info.plural.to_string(),
                ),
                info.clone(),
            );
        }
        info
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
        group,
        version,
        kind,
        plural,
        singular: Box::leak(kind.to_ascii_lowercase().into_boxed_str()),
        short_names,
        categories: &[],
        namespaced,
        status,
        scale: false,
        strategic_merge: true,
        strategy,
    }
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

    let all = &["all"];
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
            .on_create(strategy::pod_on_create)
            .table(crate::table::pods)
            .arc(),
    );
    pods.categories = all;
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
    services.categories = all;
    let mut deployments = res(
        ("apps", "v1", "Deployment"),
        "deployments",
        &["deploy"],
        true,
        true,
        Builtin::of::<apps::Deployment>()
            .validate_with(strategy::validate_workload)
            .table(crate::table::deployments)
            .reset_status_on_create()
            .arc(),
    );
    deployments.categories = all;
    deployments.scale = true;
    let mut replicasets = res(
        ("apps", "v1", "ReplicaSet"),
        "replicasets",
        &["rs"],
        true,
        true,
        Builtin::of::<apps::ReplicaSet>()
            .validate_with(strategy::validate_workload)
            .table(crate::table::replicasets)
            .reset_status_on_create()
            .arc(),
    );
    replicasets.categories = all;
    replicasets.scale = true;
    let mut hpa = res(
        ("autoscaling", "v2", "HorizontalPodAutoscaler"),
        "horizontalpodautoscalers",
        &["hpa"],
        true,
        true,
        Builtin::of::<autoscaling::HorizontalPodAutoscaler>()
            .table(crate::table::hpas)
            .reset_status_on_create()
            .arc(),
    );
    hpa.categories = all;

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
            ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
            &["crd", "crds"],
            false,
            true,
            Builtin::of::<apiext::CustomResourceDefinition>()
                .table(crate::table::crds)
                .arc(),
        ),
    ]
}
