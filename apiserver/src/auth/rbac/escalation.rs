//! RBAC's escalation prevention: a Role or ClusterRole may be written only by someone who
//! holds every permission it grants (or may `escalate` roles), and a RoleBinding or
//! ClusterRoleBinding only by someone who holds every permission of the role it binds (or may
//! `bind` it). Checked where writes are validated ([`check`]), with the user of the request
//! being served ([`REQUEST_USER`]); writes from inside the server (bootstrap) have none and
//! pass.

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::Value;

use super::{GROUP, rules};
use crate::ApiServer;
use crate::auth::attributes::Attributes;
use crate::auth::{MASTERS, Mode, UserInfo};
use crate::errors::{ApiError, ApiResult};
use crate::registry::ResourceInfo;

tokio::task_local! {
    /// The user of the request this task serves (set by [`crate::http::guard`] around the
    /// handler: the request's context, as Kubernetes carries it in a Go context).
    pub static REQUEST_USER: Arc<UserInfo>;
}

/// The user of the request being served, if a request is being served.
pub fn request_user() -> Option<Arc<UserInfo>> {
    REQUEST_USER.try_with(|u| u.clone()).ok()
}

fn may(
    api: &ApiServer,
    user: &Arc<UserInfo>,
    verb: &str,
    plural: &str,
    name: &str,
    ns: &str,
) -> bool {
    let a = Attributes::resource(user.clone(), verb, GROUP, ns, plural, "", name);
    api.auth.authorize(api, &a).allowed
}

fn rules_of(v: &Value) -> Vec<PolicyRule> {
    v.get("rules")
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default()
}

fn describe(r: &PolicyRule) -> String {
    let list = |l: &Option<Vec<String>>| {
        l.as_ref()
            .map(|v| {
                v.iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let mut parts = Vec::new();
    if r.api_groups.as_ref().is_some_and(|g| !g.is_empty()) {
        parts.push(format!("APIGroups:[{}]", list(&r.api_groups)));
    }
    if r.resources.as_ref().is_some_and(|g| !g.is_empty()) {
        parts.push(format!("Resources:[{}]", list(&r.resources)));
    }
    if r.resource_names.as_ref().is_some_and(|g| !g.is_empty()) {
        parts.push(format!("ResourceNames:[{}]", list(&r.resource_names)));
    }
    if r.non_resource_urls.as_ref().is_some_and(|g| !g.is_empty()) {
        parts.push(format!("NonResourceURLs:[{}]", list(&r.non_resource_urls)));
    }
    parts.push(format!("Verbs:[{}]", list(&Some(r.verbs.clone()))));
    format!("{{{}}}", parts.join(", "))
}

/// Refuses (403) a write of `new` (replacing `live`) to an RBAC kind that would grant more
/// than the requesting user holds.
pub fn check(
    api: &ApiServer,
    info: &ResourceInfo,
    new: &Value,
    live: Option<&Value>,
) -> ApiResult<()> {
    if info.group != GROUP {
        return Ok(());
    }
    let Some(user) = request_user() else {
        return Ok(());
    };
    if user.in_group(MASTERS) || api.auth.config.mode == Mode::AlwaysAllow {
        return Ok(());
    }
    let meta = &new["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let ns = meta["namespace"].as_str().unwrap_or_default();
    let plural = info.plural.as_str();
    let index = api.auth.rbac.index(api);
    let held = || -> Vec<PolicyRule> {
        let mut own: Vec<PolicyRule> = Vec::new();
        for g in index.grants(&user, ns) {
            own.extend(g.rules.iter().cloned());
        }
        own
    };
    let refuse = |missing: Vec<&PolicyRule>| {
        let list: Vec<String> = missing.iter().map(|r| describe(r)).collect();
        ApiError::forbidden(
            GROUP,
            plural,
            name,
            &format!(
                "user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
                user.username,
                user.groups,
                list.join("\n")
            ),
        )
    };
    match plural {
        "roles" | "clusterroles" => {
            let asked = rules_of(new);
            let aggregation = new.get("aggregationRule").filter(|a| !a.is_null());
            if let Some(live) = live
                && rules_of(live) == asked
                && live.get("aggregationRule").filter(|a| !a.is_null()) == aggregation
            {
                return Ok(());
            }
            if may(api, &user, "escalate", plural, name, ns) {
                return Ok(());
            }
            if aggregation.is_some() {
                return Err(ApiError::forbidden(
                    GROUP,
                    plural,
                    name,
                    &format!(
                        "user {:?} (groups={:?}) must have cluster-admin privileges (or escalate on clusterroles) to use the aggregationRule",
                        user.username, user.groups
                    ),
                ));
            }
            let own = held();
            let refs: Vec<&PolicyRule> = own.iter().collect();
            let missing: Vec<&PolicyRule> =
                asked.iter().filter(|r| !rules::covers(&refs, r)).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(refuse(missing))
            }
        }
        "rolebindings" | "clusterrolebindings" => {
            let kind = new["roleRef"]["kind"].as_str().unwrap_or_default();
            let role = new["roleRef"]["name"].as_str().unwrap_or_default();
            if let Some(live) = live
                && live.get("roleRef") == new.get("roleRef")
                && live.get("subjects") == new.get("subjects")
            {
                return Ok(());
            }
            let role_plural = if kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if may(api, &user, "bind", role_plural, role, ns) {
                return Ok(());
            }
            let rules = match kind {
                "Role" => index.roles.get(&(ns.to_string(), role.to_string())),
                _ => index.cluster_roles.get(role),
            };
            let Some(rules) = rules else {
                return Err(ApiError::not_found(GROUP, role_plural, role));
            };
            let own = held();
            let refs: Vec<&PolicyRule> = own.iter().collect();
            let missing: Vec<&PolicyRule> =
                rules.iter().filter(|r| !rules::covers(&refs, r)).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(refuse(missing))
            }
        }
        _ => Ok(()),
    }
}
