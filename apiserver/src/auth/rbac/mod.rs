//! Role-based access control, evaluated as Kubernetes does: a user may do what some
//! ClusterRoleBinding grants them anywhere, or some RoleBinding in the request's namespace
//! grants them there, through the rules of the Role or ClusterRole it names. Subjects are
//! users, groups and ServiceAccounts (`system:serviceaccount:NS:NAME`). ClusterRoles with an
//! aggregationRule hold the rules of every ClusterRole their selectors match.
//!
//! Decisions read an [`Index`] — grants by subject — built from the watch caches of the four
//! kinds and rebuilt only when one of them changed ([`crate::watch_cache::Cacher::changes`]),
//! so a decision costs a few hash lookups whatever the number of roles and bindings.
//! [`bootstrap`] writes the default roles and bindings; [`escalation`] refuses role and
//! binding writes that would grant more than their author holds.

pub mod bootstrap;
pub mod controller_roles;
pub mod escalation;
pub mod rules;
pub mod table;
pub mod validation;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use serde::Deserialize;

use super::Decision;
use super::UserInfo;
use super::attributes::Attributes;
use crate::ApiServer;
use crate::watch_cache::derived::Derived;

/// The API group of the RBAC kinds.
pub const GROUP: &str = "rbac.authorization.k8s.io";
/// The four RBAC resources the index is built from, in [`Rbac::index`]'s order.
const RESOURCES: &[(&str, &str, &str)] = &[
    (GROUP, "v1", "roles"),
    (GROUP, "v1", "clusterroles"),
    (GROUP, "v1", "rolebindings"),
    (GROUP, "v1", "clusterrolebindings"),
];

/// Who a binding names, as the index keys it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Group(String),
}

/// Grants in one scope (the cluster, or one namespace), by user and by group: looked up by
/// borrowed names, so a decision allocates nothing.
#[derive(Debug, Default)]
struct Grants {
    users: HashMap<String, Vec<Grant>>,
    groups: HashMap<String, Vec<Grant>>,
}

impl Grants {
    fn add(&mut self, key: Key, grant: Grant) {
        let (map, name) = match key {
            Key::User(n) => (&mut self.users, n),
            Key::Group(n) => (&mut self.groups, n),
        };
        map.entry(name).or_default().push(grant);
    }

    /// The user's own grants, then its groups'.
    fn of<'a>(&'a self, user: &'a UserInfo) -> impl Iterator<Item = &'a Grant> + 'a {
        let own = self.users.get(&user.username).into_iter().flatten();
        let groups = user
            .groups
            .iter()
            .filter_map(|g| self.groups.get(g))
            .flatten();
        own.chain(groups)
    }
}

/// What one binding grants: the role's rules, and names for the decision's reason.
#[derive(Debug, Clone)]
pub struct Grant {
    /// `ClusterRoleBinding "name"` or `RoleBinding "name/namespace"`.
    pub binding: String,
    /// `ClusterRole "name"` or `Role "name"`.
    pub role: String,
    pub rules: Arc<[PolicyRule]>,
}

/// Grants by subject: cluster-wide, and per namespace.
#[derive(Debug, Default)]
pub struct Index {
    /// Every ClusterRole's effective rules (aggregated ones included), by name.
    pub cluster_roles: HashMap<String, Arc<[PolicyRule]>>,
    /// Every Role's rules, by (namespace, name).
    pub roles: HashMap<(String, String), Arc<[PolicyRule]>>,
    cluster: Grants,
    namespaced: HashMap<String, Grants>,
}

fn parse<T: for<'de> Deserialize<'de>>(v: &serde_json::Value) -> Option<T> {
    T::deserialize(v).ok()
}

fn keys(subjects: &[Subject], binding_ns: &str) -> Vec<Key> {
    subjects
        .iter()
        .filter_map(|s| match s.kind.as_str() {
            "User" => Some(Key::User(s.name.clone())),
            "Group" => Some(Key::Group(s.name.clone())),
            "ServiceAccount" => {
                let ns = s
                    .namespace
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .unwrap_or(binding_ns);
                (!ns.is_empty())
                    .then(|| Key::User(format!("system:serviceaccount:{ns}:{}", s.name)))
            }
            _ => None,
        })
        .collect()
}

/// The effective rules of every ClusterRole: its own, or for an aggregated one the rules of
/// every ClusterRole its selectors match (their own or, one level down, aggregated).
fn cluster_role_rules(roles: &[ClusterRole]) -> HashMap<String, Arc<[PolicyRule]>> {
    let own = |r: &ClusterRole| r.rules.clone().unwrap_or_default();
    let matching =
        |selectors: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector],
         name: &str,
         rules_of: &dyn Fn(&ClusterRole) -> Vec<PolicyRule>| {
            let mut out = Vec::new();
            let sels: Vec<_> = selectors
                .iter()
                .filter_map(|s| capstan_api::selectors::Selector::from_label_selector(s).ok())
                .filter(|s| !s.is_empty())
                .collect();
            for r in roles {
                let rname = r.metadata.name.as_deref().unwrap_or_default();
                if rname == name {
                    continue;
                }
                let labels = r.metadata.labels.clone().unwrap_or_default();
                if sels.iter().any(|s| s.matches_map(&labels)) {
                    for rule in rules_of(r) {
                        if !out.contains(&rule) {
                            out.push(rule);
                        }
                    }
                }
            }
            out
        };
    // First pass: aggregated roles over their members' own rules; second: over those.
    let mut first: HashMap<String, Vec<PolicyRule>> = HashMap::new();
    for r in roles {
        let name = r.metadata.name.clone().unwrap_or_default();
        let rules = match r
            .aggregation_rule
            .as_ref()
            .and_then(|a| a.cluster_role_selectors.as_deref())
        {
            Some(sels) => matching(sels, &name, &own),
            None => own(r),
        };
        first.insert(name, rules);
    }
    let by_first = |r: &ClusterRole| {
        first
            .get(r.metadata.name.as_deref().unwrap_or_default())
            .cloned()
            .unwrap_or_default()
    };
    roles
        .iter()
        .map(|r| {
            let name = r.metadata.name.clone().unwrap_or_default();
            let rules = match r
                .aggregation_rule
                .as_ref()
                .and_then(|a| a.cluster_role_selectors.as_deref())
            {
                Some(sels) => matching(sels, &name, &by_first),
                None => own(r),
            };
            (name, Arc::from(rules))
        })
        .collect()
}

impl Index {
    /// The index of these objects.
    pub fn build(
        roles: &[Role],
        cluster_roles: &[ClusterRole],
        bindings: &[RoleBinding],
        cluster_bindings: &[ClusterRoleBinding],
    ) -> Index {
        let cr_rules = cluster_role_rules(cluster_roles);
        let role_rules: HashMap<(String, String), Arc<[PolicyRule]>> = roles
            .iter()
            .map(|r| {
                (
                    (
                        r.metadata.namespace.clone().unwrap_or_default(),
                        r.metadata.name.clone().unwrap_or_default(),
                    ),
                    Arc::from(r.rules.clone().unwrap_or_default()),
                )
            })
            .collect();
        let mut index = Index::default();
        for b in cluster_bindings {
            if b.role_ref.kind != "ClusterRole" {
                continue;
            }
            let Some(rules) = cr_rules.get(&b.role_ref.name) else {
                continue;
            };
            let grant = Grant {
                binding: format!(
                    "ClusterRoleBinding \"{}\"",
                    b.metadata.name.as_deref().unwrap_or_default()
                ),
                role: format!("ClusterRole \"{}\"", b.role_ref.name),
                rules: rules.clone(),
            };
            for k in keys(b.subjects.as_deref().unwrap_or_default(), "") {
                index.cluster.add(k, grant.clone());
            }
        }
        for b in bindings {
            let ns = b.metadata.namespace.clone().unwrap_or_default();
            let (rules, role) = match b.role_ref.kind.as_str() {
                "ClusterRole" => (
                    cr_rules.get(&b.role_ref.name),
                    format!("ClusterRole \"{}\"", b.role_ref.name),
                ),
                "Role" => (
                    role_rules.get(&(ns.clone(), b.role_ref.name.clone())),
                    format!("Role \"{}\"", b.role_ref.name),
                ),
                _ => (None, String::new()),
            };
            let Some(rules) = rules else { continue };
            let grant = Grant {
                binding: format!(
                    "RoleBinding \"{}/{ns}\"",
                    b.metadata.name.as_deref().unwrap_or_default()
                ),
                role,
                rules: rules.clone(),
            };
            for k in keys(b.subjects.as_deref().unwrap_or_default(), &ns) {
                index
                    .namespaced
                    .entry(ns.clone())
                    .or_default()
                    .add(k, grant.clone());
            }
        }
        index.cluster_roles = cr_rules;
        index.roles = role_rules;
        index
    }

    /// Every grant that applies to `user` in `namespace` (cluster-wide ones first).
    pub fn grants<'a>(
        &'a self,
        user: &'a UserInfo,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Grant> + 'a {
        let local = (!namespace.is_empty())
            .then(|| self.namespaced.get(namespace))
            .flatten();
        self.cluster
            .of(user)
            .chain(local.into_iter().flat_map(|g| g.of(user)))
    }

    /// Whether some grant allows `a`, and which.
    pub fn decide(&self, a: &Attributes) -> Decision {
        let ns = if a.resource_request {
            a.namespace.as_str()
        } else {
            ""
        };
        match self
            .grants(&a.user, ns)
            .find(|g| g.rules.iter().any(|r| rules::allows(r, a)))
        {
            Some(g) => Decision {
                allowed: true,
                reason: format!(
                    "RBAC: allowed by {} of {} to User \"{}\"",
                    g.binding, g.role, a.user.username
                ),
            },
            None => Decision {
                allowed: false,
                reason: String::new(),
            },
        }
    }
}

/// The RBAC authorizer: the current [`Index`], rebuilt when the RBAC objects change.
#[derive(Debug)]
pub struct Rbac(Derived<Index>);

impl Default for Rbac {
    fn default() -> Self {
        Rbac(Derived::new(RESOURCES))
    }
}

impl Rbac {
    /// The index as of the watch caches now.
    pub fn index(&self, api: &ApiServer) -> Arc<Index> {
        self.0.get(api, |lists| {
            let roles: Vec<Role> = lists[0].iter().filter_map(|v| parse(v)).collect();
            let cluster_roles: Vec<ClusterRole> =
                lists[1].iter().filter_map(|v| parse(v)).collect();
            let bindings: Vec<RoleBinding> = lists[2].iter().filter_map(|v| parse(v)).collect();
            let cluster_bindings: Vec<ClusterRoleBinding> =
                lists[3].iter().filter_map(|v| parse(v)).collect();
            tracing::debug!(
                roles = roles.len(),
                cluster_roles = cluster_roles.len(),
                bindings = bindings.len(),
                cluster_bindings = cluster_bindings.len(),
                "RBAC index rebuilt"
            );
            Index::build(&roles, &cluster_roles, &bindings, &cluster_bindings)
        })
    }

    /// Whether RBAC allows `a`.
    pub fn authorize(&self, api: &ApiServer, a: &Attributes) -> Decision {
        self.index(api).decide(a)
    }

    /// The rules that apply to `user` in `namespace` (SelfSubjectRulesReview): resource rules
    /// and non-resource rules, each list without repeats.
    pub fn rules_for(
        &self,
        api: &ApiServer,
        user: &UserInfo,
        namespace: &str,
    ) -> (Vec<PolicyRule>, Vec<PolicyRule>) {
        let index = self.index(api);
        let mut resource = Vec::new();
        let mut non_resource = Vec::new();
        let mut seen = BTreeMap::new();
        for g in index.grants(user, namespace) {
            for r in g.rules.iter() {
                let key = serde_json::to_string(r).unwrap_or_default();
                if seen.insert(key, ()).is_some() {
                    continue;
                }
                if r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
                    non_resource.push(r.clone());
                }
                if r.resources.as_ref().is_some_and(|u| !u.is_empty()) {
                    resource.push(r.clone());
                }
            }
        }
        (resource, non_resource)
    }
}
