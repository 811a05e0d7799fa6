//! Discovery: `/api`, `/apis`, `/api/v1`, `/apis/{group}` and `/apis/{group}/{version}`.
//!
//! Two forms of the same model ([`resources`]: each resource with its subresources):
//! - legacy: APIVersions, APIGroupList, APIGroup and APIResourceList (subresources as
//!   `plural/sub` entries);
//! - aggregated (KEP-3352): one `APIGroupDiscoveryList` for `/api` or `/apis` when the client's
//!   Accept header asks for `application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`
//!   (kubectl ≥ 1.30, current client-go) or `v=v2beta1` (kubectl 1.27–1.29), answered with that
//!   Content-Type; anything else gets the legacy documents.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::ApiServer;
use crate::http::json_response;
use crate::registry::ResourceInfo;

/// A subresource as discovery shows it.
#[derive(Debug, Clone)]
struct Subresource {
    name: &'static str,
    /// The (group, version, kind) it answers with.
    kind: (String, String, String),
    verbs: &'static [&'static str],
}

/// A resource as discovery shows it.
#[derive(Debug, Clone)]
struct Resource {
    plural: String,
    singular: String,
    kind: String,
    namespaced: bool,
    verbs: &'static [&'static str],
    short_names: Vec<String>,
    categories: Vec<String>,
    subresources: Vec<Subresource>,
}

const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];

/// A resource answered by code of its own, never stored.
struct Virtual {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    verbs: &'static [&'static str],
}

/// The reviews ([`crate::auth::reviews`], created only) and the resource metrics
/// ([`crate::resource_metrics`], only read).
fn virtual_resources() -> impl Iterator<Item = Virtual> {
    let reviews = crate::auth::reviews::RESOURCES.iter().map(
        |&(group, version, plural, kind, namespaced)| Virtual {
            group,
            version,
            plural,
            kind,
            namespaced,
            verbs: &["create"],
        },
    );
    let metrics = crate::resource_metrics::RESOURCES
        .iter()
        .map(|&(plural, kind, namespaced)| Virtual {
            group: crate::resource_metrics::GROUP,
            version: crate::resource_metrics::VERSION,
            plural,
            kind,
            namespaced,
            verbs: &["get", "list"],
        });
    reviews.chain(metrics)
}

fn subresources_of(r: &ResourceInfo) -> Vec<Subresource> {
    let own = |name: &'static str, kind: &str, verbs: &'static [&'static str]| Subresource {
        name,
        kind: (r.group.clone(), r.version.clone(), kind.to_string()),
        verbs,
    };
    let mut out = Vec::new();
    if r.status {
        out.push(own("status", &r.kind, GET_PATCH_UPDATE));
    }
    if r.scale.is_some() {
        out.push(Subresource {
            name: "scale",
            kind: ("autoscaling".into(), "v1".into(), "Scale".into()),
            verbs: GET_PATCH_UPDATE,
        });
    }
    if r.group.is_empty() && r.plural == "pods" {
        out.push(own("binding", "Binding", &["create"]));
        out.push(own("log", "Pod", &["get"]));
        out.push(own("exec", "PodExecOptions", &["create", "get"]));
        // kubectl drain evicts only when this entry names group policy and version v1.
        out.push(Subresource {
            name: "eviction",
            kind: ("policy".into(), "v1".into(), "Eviction".into()),
            verbs: &["create"],
        });
    }
    for (name, _) in r.strategy.subresource_fields() {
        out.push(own(name, &r.kind, GET_PATCH_UPDATE));
    }
    if r.group.is_empty() && r.plural == "namespaces" {
        out.push(own("finalize", "Namespace", &["update"]));
    }
    if r.group.is_empty() && r.plural == "serviceaccounts" {
        out.push(Subresource {
            name: "token",
            kind: (
                "authentication.k8s.io".into(),
                "v1".into(),
                "TokenRequest".into(),
            ),
            verbs: &["create"],
        });
    }
    out
}

/// The resources served at one group/version, by name (None: the group/version is not served).
fn resources(api: &ApiServer, group: &str, version: &str) -> Option<Vec<Resource>> {
    let mut infos: Vec<_> = api
        .registry
        .all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    let virtual_resources: Vec<Resource> = virtual_resources()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| Resource {
            plural: r.plural.to_string(),
            singular: r.kind.to_ascii_lowercase(),
            kind: r.kind.to_string(),
            namespaced: r.namespaced,
            verbs: r.verbs,
            short_names: Vec::new(),
            categories: Vec::new(),
            subresources: Vec::new(),
        })
        .collect();
    if infos.is_empty() && virtual_resources.is_empty() {
        return None;
    }
    infos.sort_by(|a, b| a.plural.cmp(&b.plural));
    let mut out: Vec<Resource> = infos
        .iter()
        .map(|r| Resource {
            plural: r.plural.clone(),
            singular: r.singular.clone(),
            kind: r.kind.clone(),
            namespaced: r.namespaced,
            verbs: r.verbs(),
            short_names: r.short_names.clone(),
            categories: r.categories.clone(),
            subresources: subresources_of(r),
        })
        .collect();
    if !virtual_resources.is_empty() {
        // Reviews and resource metrics: answered, never stored.
        out.extend(virtual_resources);
        out.sort_by(|a, b| a.plural.cmp(&b.plural));
    }
    if group.is_empty() && version == "v1" {
        // Computed on request, never stored (http::component_status).
        out.push(Resource {
            plural: "componentstatuses".into(),
            singular: "componentstatus".into(),
            kind: "ComponentStatus".into(),
            namespaced: false,
            verbs: &["get", "list"],
            short_names: vec!["cs".into()],
            categories: Vec::new(),
            subresources: Vec::new(),
        });
        out.sort_by(|a, b| a.plural.cmp(&b.plural));
    }
    Some(out)
}

/// A group's versions, preferred first.
fn versions_of(api: &ApiServer, group: &str) -> Vec<String> {
    let mut versions: Vec<String> = api
        .registry
        .all()
        .iter()
        .filter(|r| r.group == group)
        .map(|r| r.version.clone())
        .chain(
            virtual_resources()
                .filter(|r| r.group == group)
                .map(|r| r.version.to_string()),
        )
        .chain(api.aggregator.versions_of(api, group))
        .collect();
    versions.sort_by_key(|v| version_priority(v));
    versions.dedup();
    versions
}

/// The served API groups (not the core group), sorted.
fn groups(api: &ApiServer) -> Vec<String> {
    let mut groups: Vec<String> = api
        .registry
        .all()
        .iter()
        .map(|r| r.group.clone())
        .chain(virtual_resources().map(|r| r.group.to_string()))
        .chain(api.aggregator.all(api).iter().map(|r| r.group.clone()))
        .filter(|g| !g.is_empty())
        .collect();
    groups.sort();
    groups.dedup();
    groups
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

// ---- legacy discovery

fn group_entry(api: &ApiServer, group: &str) -> Value {
    let vs: Vec<Value> = versions_of(api, group)
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

/// The APIResourceList of one group/version: each resource, then its subresources as
/// `plural/sub` entries.
fn resource_list(api: &ApiServer, group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for r in resources(api, group, version)? {
        list.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for s in &r.subresources {
            let mut e = json!({
                "name": format!("{}/{}", r.plural, s.name), "singularName": "",
                "namespaced": r.namespaced, "kind": s.kind.2, "verbs": s.verbs,
            });
            if s.kind.0 != group || s.kind.1 != version {
                e["group"] = json!(s.kind.0);
                e["version"] = json!(s.kind.1);
            }
            list.push(e);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

// ---- aggregated discovery

/// Which aggregated discovery version the client asked for first, if any.
fn aggregated_version(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let mt = parts.next().unwrap_or_default();
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let param = |k: &str| params.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        if mt == "application/json"
            && param("g") == Some("apidiscovery.k8s.io")
            && param("as") == Some("APIGroupDiscoveryList")
        {
            match param("v") {
                Some("v2") => return Some("v2"),
                Some("v2beta1") => return Some("v2beta1"),
                _ => continue,
            }
        }
        if matches!(mt, "application/json" | "*/*" | "application/*") {
            return None; // the client prefers the legacy documents
        }
    }
    None
}

fn discovery_kind(g: &str, v: &str, k: &str) -> Value {
    json!({"group": g, "version": v, "kind": k})
}

/// One APIGroupDiscovery: the group's versions, preferred first, each with its resources.
fn group_discovery(api: &ApiServer, group: &str) -> Value {
    let versions: Vec<Value> = versions_of(api, group)
        .iter()
        .filter_map(|v| {
            if let Some(remote) = api.aggregator.remote(api, group, v) {
                return Some(remote_version(api, &remote));
            }
            let resources: Vec<Value> = resources(api, group, v)?
                .into_iter()
                .map(|r| {
                    let subs: Vec<Value> = r
                        .subresources
                        .iter()
                        .map(|s| {
                            json!({
                                "subresource": s.name,
                                "responseKind": discovery_kind(&s.kind.0, &s.kind.1, &s.kind.2),
                                "verbs": s.verbs,
                            })
                        })
                        .collect();
                    let mut e = json!({
                        "resource": r.plural,
                        "responseKind": discovery_kind(group, v, &r.kind),
                        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": r.singular,
                        "verbs": r.verbs,
                    });
                    if !r.short_names.is_empty() {
                        e["shortNames"] = json!(r.short_names);
                    }
                    if !r.categories.is_empty() {
                        e["categories"] = json!(r.categories);
                    }
                    if !subs.is_empty() {
                        e["subresources"] = json!(subs);
                    }
                    Some(e)
                })
                .collect::<Option<Vec<Value>>>()?;
            Some(json!({"version": v, "resources": resources, "freshness": "Current"}))
        })
        .collect();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
}

/// An extension server's version in aggregated discovery, from the discovery document it
/// last answered (`Stale` and empty until it has).
fn remote_version(api: &ApiServer, remote: &crate::aggregator::Remote) -> Value {
    let Some(doc) = api.aggregator.discovered(&remote.name) else {
        return json!({"version": remote.version, "resources": [], "freshness": "Stale"});
    };
    let (g, v) = (remote.group.as_str(), remote.version.as_str());
    let list = doc["resources"].as_array().cloned().unwrap_or_default();
    let mut resources: Vec<Value> = Vec::new();
    // A subresource whose resource is not listed (custom metrics adapters list only
    // `pods/METRIC`) gets a placeholder parent, as kube-apiserver's conversion gives it.
    let mut list = list;
    let parents: Vec<Value> = list
        .iter()
        .filter_map(|s| {
            let (parent, _) = s["name"].as_str()?.split_once('/')?;
            let listed = list.iter().any(|r| r["name"].as_str() == Some(parent));
            (!listed).then(
                || json!({"name": parent, "namespaced": s["namespaced"], "kind": "", "verbs": []}),
            )
        })
        .collect();
    for p in parents {
        if !list.iter().any(|r| r["name"] == p["name"]) {
            list.push(p);
        }
    }
    for r in &list {
        let Some(name) = r["name"].as_str() else {
            continue;
        };
        if name.contains('/') {
            continue;
        }
        let prefix = format!("{name}/");
        let subs: Vec<Value> = list
            .iter()
            .filter_map(|s| {
                let sub = s["name"].as_str()?.strip_prefix(&prefix)?;
                Some(json!({
                    "subresource": sub,
                    "responseKind": discovery_kind(
                        s["group"].as_str().unwrap_or(g),
                        s["version"].as_str().unwrap_or(v),
                        s["kind"].as_str().unwrap_or_default(),
                    ),
                    "verbs": s["verbs"],
                }))
            })
            .collect();
        let mut e = json!({
            "resource": name,
            "responseKind": match r["kind"].as_str().unwrap_or_default() {
                "" => json!({"group": "", "version": "", "kind": ""}),
                kind => discovery_kind(g, v, kind),
            },
            "scope": if r["namespaced"].as_bool() == Some(true) { "Namespaced" } else { "Cluster" },
            "singularResource": r["singularName"].as_str().unwrap_or_default(),
            "verbs": r["verbs"],
        });
        for key in ["shortNames", "categories"] {
            if r[key].as_array().is_some_and(|a| !a.is_empty()) {
                e[key] = r[key].clone();
            }
        }
        if !subs.is_empty() {
            e["subresources"] = json!(subs);
        }
        resources.push(e);
    }
    json!({"version": v, "resources": resources, "freshness": "Current"})
}

fn aggregated(version: &str, items: Vec<Value>) -> Response {
    let media =
        format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    let body = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    });
    let mut resp = json_response(StatusCode::OK, &body);
    if let Ok(v) = HeaderValue::from_str(&media) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    resp
}

// ---- handlers

/// GET /api
pub async fn api_versions(State(api): State<Arc<ApiServer>>, headers: HeaderMap) -> Response {
    if let Some(v) = aggregated_version(&headers) {
        return aggregated(v, vec![group_discovery(&api, "")]);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }),
    )
}

/// GET /apis
pub async fn api_groups(State(api): State<Arc<ApiServer>>, headers: HeaderMap) -> Response {
    if let Some(v) = aggregated_version(&headers) {
        let items = groups(&api)
            .iter()
            .map(|g| group_discovery(&api, g))
            .collect();
        return aggregated(v, items);
    }
    let groups: Vec<Value> = groups(&api).iter().map(|g| group_entry(&api, g)).collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

/// GET /apis/{group}
pub async fn group_info(State(api): State<Arc<ApiServer>>, Path(group): Path<String>) -> Response {
    let answered = virtual_resources().any(|r| r.group == group)
        || !api.aggregator.versions_of(&api, &group).is_empty();
    if !answered && !api.registry.serves(&group, None) {
        return crate::errors::route_not_found().into_response();
    }
    let mut g = group_entry(&api, &group);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    json_response(StatusCode::OK, &g)
}

/// GET /api/v1
pub async fn core_resources(State(api): State<Arc<ApiServer>>) -> Response {
    match resource_list(&api, "", "v1") {
        Some(l) => json_response(StatusCode::OK, &l),
        None => crate::errors::route_not_found().into_response(),
    }
}

/// GET /apis/{group}/{version}
pub async fn group_resources(
    State(api): State<Arc<ApiServer>>,
    Path((group, version)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Response {
    if let Some(remote) = api.aggregator.remote(&api, &group, &version) {
        return crate::aggregator::proxy::forward(api, remote, req).await;
    }
    match resource_list(&api, &group, &version) {
        Some(l) => json_response(StatusCode::OK, &l),
        None => crate::errors::route_not_found().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn aggregated_discovery_is_chosen_only_when_asked_for_first() {
        let kubectl_133 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(&accept(kubectl_133)), Some("v2"));
        let kubectl_128 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(&accept(kubectl_128)), Some("v2beta1"));
        assert_eq!(aggregated_version(&accept("application/json")), None);
        assert_eq!(aggregated_version(&HeaderMap::new()), None);
        let legacy_first = "application/json, application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
        assert_eq!(aggregated_version(&accept(legacy_first)), None);
        let unknown_version =
            "application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(&accept(unknown_version)), None);
    }

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
