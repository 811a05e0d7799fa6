//! What the API server serves, from its discovery documents (`/api`, `/apis`, and each group
//! version): a REST mapper from an ownerReference's apiVersion + kind to the resource to GET,
//! and the list of resources to watch. Built-ins and custom resources alike, so the garbage
//! collector and the namespace controller follow CRDs as they come and go.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::core::ApiResource;

use crate::Result;

/// One served resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub verbs: Vec<String>,
    /// Whether this is the group's preferred version (list each resource once, at it).
    pub preferred: bool,
}

impl Mapping {
    pub fn supports(&self, verbs: &[&str]) -> bool {
        verbs
            .iter()
            .all(|v| self.verbs.iter().any(|have| have == v))
    }

    /// `group/version/plural`, a stable key for the resource.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.resource.group, self.resource.version, self.resource.plural
        )
    }
}

/// A snapshot of discovery.
#[derive(Debug, Default)]
pub struct RestMapper {
    /// (apiVersion, kind) → mapping.
    exact: HashMap<(String, String), Arc<Mapping>>,
    /// (group, kind) → the preferred version's mapping (when an ownerReference names a
    /// version that is no longer served, the object is still reachable at another).
    by_group_kind: HashMap<(String, String), Arc<Mapping>>,
    all: Vec<Arc<Mapping>>,
    /// Each resource once: at its group's preferred version when served there, else at the
    /// first version that serves it (client-go's ServerPreferredResources).
    preferred: Vec<Arc<Mapping>>,
    /// Group versions whose discovery failed (their resources are unknown, not absent).
    pub failed: Vec<String>,
}

impl RestMapper {
    /// Reads discovery from the API server. A group version that fails is skipped (and named
    /// in the returned list), like client-go's partial discovery errors.
    pub async fn discover(client: &kube::Client) -> Result<(RestMapper, Vec<String>)> {
        let mut lists = Vec::new();
        let mut failed = Vec::new();
        let core = client.list_core_api_versions().await?;
        for (i, v) in core.versions.iter().enumerate() {
            match client.list_core_api_resources(v).await {
                Ok(l) => lists.push((l, i == 0)),
                Err(e) => failed.push(format!("{v}: {e}")),
            }
        }
        for g in client.list_api_groups().await?.groups {
            let preferred = g
                .preferred_version
                .as_ref()
                .map(|p| p.group_version.clone());
            for v in &g.versions {
                match client.list_api_group_resources(&v.group_version).await {
                    Ok(l) => {
                        let is_preferred = preferred.as_deref() == Some(&v.group_version)
                            || (preferred.is_none() && std::ptr::eq(v, &g.versions[0]));
                        lists.push((l, is_preferred))
                    }
                    Err(e) => failed.push(format!("{}: {e}", v.group_version)),
                }
            }
        }
        let mut mapper = RestMapper::from_lists(&lists);
        mapper.failed = failed
            .iter()
            .filter_map(|f| f.split_once(':').map(|(gv, _)| gv.to_string()))
            .collect();
        Ok((mapper, failed))
    }

    /// Builds the mapper from discovery lists (each with whether it is its group's preferred
    /// version). Subresources are left out.
    pub fn from_lists(lists: &[(APIResourceList, bool)]) -> RestMapper {
        let mut m = RestMapper::default();
        for (list, preferred) in lists {
            let (group, version) = match list.group_version.split_once('/') {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (String::new(), list.group_version.clone()),
            };
            for r in &list.resources {
                if r.name.contains('/') {
                    continue;
                }
                let mapping = Arc::new(Mapping {
                    resource: ApiResource {
                        group: group.clone(),
                        version: version.clone(),
                        api_version: list.group_version.clone(),
                        kind: r.kind.clone(),
                        plural: r.name.clone(),
                    },
                    namespaced: r.namespaced,
                    verbs: r.verbs.clone(),
                    preferred: *preferred,
                });
                m.exact.insert(
                    (list.group_version.clone(), r.kind.clone()),
                    mapping.clone(),
                );
                let gk = (group.clone(), r.kind.clone());
                if *preferred || !m.by_group_kind.contains_key(&gk) {
                    m.by_group_kind.insert(gk, mapping.clone());
                }
                m.all.push(mapping);
            }
        }
        let mut chosen: HashMap<(String, String), Arc<Mapping>> = HashMap::new();
        for mapping in &m.all {
            let key = (
                mapping.resource.group.clone(),
                mapping.resource.plural.clone(),
            );
            match chosen.get(&key) {
                Some(have) if have.preferred || !mapping.preferred => {}
                _ => {
                    chosen.insert(key, mapping.clone());
                }
            }
        }
        m.preferred = m
            .all
            .iter()
            .filter(|x| {
                chosen
                    .get(&(x.resource.group.clone(), x.resource.plural.clone()))
                    .is_some_and(|c| Arc::ptr_eq(c, x))
            })
            .cloned()
            .collect();
        m
    }

    /// The resource an `apiVersion` + `kind` (an ownerReference's) lives at.
    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<Arc<Mapping>> {
        if let Some(m) = self.exact.get(&(api_version.to_string(), kind.to_string())) {
            return Some(m.clone());
        }
        let group = api_version
            .split_once('/')
            .map(|(g, _)| g)
            .unwrap_or_default();
        self.by_group_kind
            .get(&(group.to_string(), kind.to_string()))
            .cloned()
    }

    /// Every resource, once (at its preferred version), that supports all of `verbs`.
    pub fn preferred_with(&self, verbs: &[&str]) -> Vec<Arc<Mapping>> {
        self.preferred
            .iter()
            .filter(|m| m.supports(verbs))
            .cloned()
            .collect()
    }
}

/// The current discovery of one process, shared by its controllers and refreshed on demand
/// (a kind nobody knows, a periodic resync) at most once a second.
pub struct Discovery {
    client: kube::Client,
    current: RwLock<Arc<RestMapper>>,
    refreshed: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

const MIN_REFRESH: Duration = Duration::from_secs(1);

impl Discovery {
    pub fn new(client: kube::Client) -> Self {
        Discovery {
            client,
            current: RwLock::new(Arc::new(RestMapper::default())),
            refreshed: tokio::sync::Mutex::new(None),
        }
    }

    pub fn current(&self) -> Arc<RestMapper> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads discovery unless that was done less than a second ago (concurrent callers
    /// share one refresh).
    pub async fn refresh(&self) -> Result<Arc<RestMapper>> {
        {
            let last = self.refreshed.lock().await;
            if last.is_some_and(|t| t.elapsed() < MIN_REFRESH) {
                return Ok(self.current());
            }
        }
        self.refresh_now().await
    }

    /// Re-reads discovery now, however recently it was read (after this process changed what
    /// is served: a CRD it just applied).
    pub async fn refresh_now(&self) -> Result<Arc<RestMapper>> {
        let mut last = self.refreshed.lock().await;
        let (mapper, failed) = RestMapper::discover(&self.client).await?;
        if !failed.is_empty() {
            tracing::warn!(?failed, "discovery failed for some group versions");
        }
        let mapper = Arc::new(mapper);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = mapper.clone();
        *last = Some(Instant::now());
        Ok(mapper)
    }

    /// Where `api_version` + `kind` is served, refreshing discovery once if it is unknown.
    /// Returns once the API serves `kind` of `api_version` (a CRD that may be installed later):
    /// looked for every 2 s for the first minute, then every 30 s; `missing` is called once,
    /// on the first miss.
    pub async fn wait_served(&self, api_version: &str, kind: &str, missing: impl FnOnce()) {
        let mut missing = Some(missing);
        for attempt in 0u32.. {
            if let Ok(Some(_)) = self.resolve(api_version, kind).await {
                return;
            }
            if let Some(say) = missing.take() {
                say();
            }
            let wait = if attempt < 30 { 2 } else { 30 };
            tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
        }
    }

    pub async fn resolve(&self, api_version: &str, kind: &str) -> Result<Option<Arc<Mapping>>> {
        if let Some(m) = self.current().resolve(api_version, kind) {
            return Ok(Some(m));
        }
        Ok(self.refresh().await?.resolve(api_version, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(gv: &str, resources: serde_json::Value) -> APIResourceList {
        serde_json::from_value(json!({"groupVersion": gv, "resources": resources})).unwrap()
    }

    #[test]
    fn maps_kinds_to_resources_and_falls_back_to_the_preferred_version() {
        let r = |name: &str, kind: &str, ns: bool| {
            json!({"name": name, "singularName": "", "kind": kind, "namespaced": ns,
                   "verbs": ["get", "list", "watch", "delete"]})
        };
        let m = RestMapper::from_lists(&[
            (
                list(
                    "v1",
                    json!([
                        r("pods", "Pod", true),
                        r("pods/status", "Pod", true),
                        r("nodes", "Node", false)
                    ]),
                ),
                true,
            ),
            (
                list("example.com/v2", json!([r("widgets", "Widget", true)])),
                true,
            ),
            (
                list(
                    "example.com/v1",
                    json!([r("widgets", "Widget", true), r("gadgets", "Gadget", true)]),
                ),
                false,
            ),
        ]);
        let pod = m.resolve("v1", "Pod").unwrap();
        assert_eq!(pod.resource.plural, "pods");
        assert!(pod.namespaced);
        assert!(!m.resolve("v1", "Node").unwrap().namespaced);
        assert_eq!(
            m.resolve("example.com/v1", "Widget")
                .unwrap()
                .resource
                .version,
            "v1"
        );
        // A version no longer served maps to the preferred one.
        assert_eq!(
            m.resolve("example.com/v9", "Widget")
                .unwrap()
                .resource
                .version,
            "v2"
        );
        assert!(m.resolve("v1", "Widget").is_none());
        // Watch each resource once, subresources never.
        let keys: Vec<_> = m
            .preferred_with(&["list", "watch"])
            .iter()
            .map(|m| m.key())
            .collect();
        // A resource only served at a non-preferred version is still watched, there.
        assert_eq!(
            keys,
            [
                "/v1/pods",
                "/v1/nodes",
                "example.com/v2/widgets",
                "example.com/v1/gadgets"
            ]
        );
    }
}
