//! Discovery: `/api`, `/apis`, `/api/v1`, `/apis/{group}` and `/apis/{group}/{version}` (legacy
//! APIVersions, APIGroupList, APIGroup and APIResourceList with every resource's subresources).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::ApiServer;
use crate::http::json_response;
use crate::registry;

pub async fn api_versions() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }),
    )
}

/// Kubernetes' version priority as a sort key (smaller first): GA before beta before alpha,
/// higher numbers first (v2, v1, v1beta2, v1beta1, v1alpha1), then anything else by name.
fn version_priority(v: &str) -> (u8, i64, i64, String) {
    let parsed = v.strip_prefix('v').and_then(|rest| {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: i64 = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Some((0, major, 0));
        }
        let (level, n) = if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (2, n)
        } else {
            return None;
        };
        Some((level, major, n.parse().ok()?))
    });
    match parsed {
        Some((level, major, minor)) => (level, -major, -minor, String::new()),
        None => (3, 0, 0, v.to_string()),
    }
}

fn group_entry(api: &ApiServer, group: &str) -> Value {
    let mut versions: Vec<String> = api
        .registry
        .all()
        .iter()
        .filter(|r| r.group == group)
        .map(|r| r.version.clone())
        .collect();
    versions.sort_by_key(|v| version_priority(v));
    versions.dedup();
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

pub async fn api_groups(State(api): State<Arc<ApiServer>>) -> Response {
    let mut groups: Vec<String> = api
        .registry
        .all()
        .iter()
        .map(|r| r.group.clone())
        .filter(|g| !g.is_empty())
        .collect();
    groups.sort();
    groups.dedup();
    let groups: Vec<Value> = groups.iter().map(|g| group_entry(&api, g)).collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

pub async fn group_info(State(api): State<Arc<ApiServer>>, Path(group): Path<String>) -> Response {
    if !api.registry.serves(&group, None) {
        return crate::errors::route_not_found().into_response();
    }
    let mut g = group_entry(&api, &group);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    json_response(StatusCode::OK, &g)
}

/// The APIResourceList of one group/version, with each resource's subresources.
fn resource_list(api: &ApiServer, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    let mut infos: Vec<_> = api
        .registry
        .all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if infos.is_empty() {
        return None;
    }
    infos.sort_by(|a, b| a.plural.cmp(&b.plural));
    for r in infos {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": registry::VERBS,
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        let sub = |name: &str, kind: &str, verbs: &[&str]| {
            json!({
                "name": format!("{}/{name}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs,
            })
        };
        if r.status {
            resources.push(sub("status", &r.kind, &["get", "patch", "update"]));
        }
        if r.scale.is_some() {
            let mut s = sub("scale", "Scale", &["get", "patch", "update"]);
            s["group"] = json!("autoscaling");
            s["version"] = json!("v1");
            resources.push(s);
        }
        if r.group.is_empty() && r.plural == "pods" {
            resources.push(sub("binding", "Binding", &["create"]));
            resources.push(sub("log", "Pod", &["get"]));
            resources.push(sub("exec", "PodExecOptions", &["create", "get"]));
        }
        if r.group.is_empty() && r.plural == "namespaces" {
            resources.push(sub("finalize", "Namespace", &["update"]));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

pub async fn core_resources(State(api): State<Arc<ApiServer>>) -> Response {
    match resource_list(&api, "", "v1") {
        Some(l) => json_response(StatusCode::OK, &l),
        None => crate::errors::route_not_found().into_response(),
    }
}

pub async fn group_resources(
    State(api): State<Arc<ApiServer>>,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    match resource_list(&api, &group, &version) {
        Some(l) => json_response(StatusCode::OK, &l),
        None => crate::errors::route_not_found().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_by_kubernetes_priority() {
        let mut v = vec![
            "v1alpha1", "v1beta1", "foo", "v2", "v1", "v1beta2", "v10", "v2alpha3", "bar",
        ];
        v.sort_by_key(|x| version_priority(x));
        assert_eq!(
            v,
            [
                "v10", "v2", "v1", "v1beta2", "v1beta1", "v2alpha3", "v1alpha1", "bar", "foo"
            ]
        );
    }
}
