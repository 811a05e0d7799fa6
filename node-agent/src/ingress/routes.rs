//! The routing table of the ingress proxy, pure: the Ingresses of one class in, a table that
//! answers "which Service port serves this host and path" out — the Ingress specification's
//! matching rules (networking.k8s.io/v1 HTTPIngressPath):
//! - hosts: an exact host before a wildcard (`*.example.com` matches exactly one more label:
//!   `a.example.com`, not `example.com` nor `a.b.example.com`), before rules without a host;
//!   host names compare without case and without a port;
//! - paths: `Exact` matches the path as is (case-sensitive); `Prefix` matches by `/`-separated
//!   elements (`/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`; a trailing `/` in
//!   the rule is ignored); `ImplementationSpecific` is taken as `Prefix` here;
//! - several matches: the longest path wins, then `Exact` over `Prefix`, then the oldest
//!   Ingress (as ingress-nginx breaks ties);
//! - nothing matches within the chosen host: the `defaultBackend` of the oldest Ingress that
//!   has one, else no route (the proxy answers 404).
//!
//! Which Ingresses are the proxy's: `spec.ingressClassName` (or the older
//! `kubernetes.io/ingress.class` annotation) names its class; unclassed ones only when asked.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

/// A Service port an Ingress routes to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    pub port: PortRef,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathKind {
    Prefix,
    Exact,
}

/// What a request matched: the backend, and the route's name in metrics and logs.
#[derive(Clone, Debug, PartialEq)]
pub struct Matched {
    pub backend: Backend,
    /// `namespace/name` of the Ingress the route comes from.
    pub ingress: String,
    /// The rule's host (`*.example.com`, or empty for any host).
    pub host: String,
    /// The rule's path (empty for a default backend).
    pub path: String,
}

#[derive(Clone, Debug, PartialEq)]
struct Route {
    path: String,
    kind: PathKind,
    matched: Matched,
    /// The Ingress's age rank (0 = oldest): ties go to the older.
    age: usize,
}

/// One TLS section: the hosts it covers and the Secret (`namespace/name`) with the
/// certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub hosts: Vec<String>,
    pub secret: (String, String),
}

/// The routes of one class, ready to answer requests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    exact: BTreeMap<String, Vec<Route>>,
    /// Wildcards by the suffix after `*` (`.example.com`).
    wildcard: BTreeMap<String, Vec<Route>>,
    any: Vec<Route>,
    default: Option<Matched>,
    pub tls: Vec<Tls>,
}

/// Which Ingresses a proxy serves.
#[derive(Clone, Debug)]
pub struct ClassFilter {
    pub class: String,
    /// Also those that name no class at all.
    pub unclassed: bool,
}

impl ClassFilter {
    pub fn accepts(&self, ing: &Ingress) -> bool {
        let named = ing
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.clone())
            .or_else(|| {
                ing.metadata
                    .annotations
                    .as_ref()?
                    .get("kubernetes.io/ingress.class")
                    .cloned()
            });
        match named {
            Some(c) => c == self.class,
            None => self.unclassed,
        }
    }
}

fn backend_of(ns: &str, b: &IngressBackend) -> Option<Backend> {
    let svc = b.service.as_ref()?;
    let port = svc.port.as_ref()?;
    let port = match (&port.name, port.number) {
        (Some(n), _) if !n.is_empty() => PortRef::Name(n.clone()),
        (_, Some(n)) => PortRef::Number(n),
        _ => return None,
    };
    Some(Backend {
        namespace: ns.to_string(),
        service: svc.name.clone(),
        port,
    })
}

/// A host as requests name it: lower case, without a port.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim_end_matches('.');
    let h = match h.rsplit_once(':') {
        // Not an IPv6 literal's colons: `[::1]:80`, `example.com:8080`.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => h,
    };
    h.to_ascii_lowercase()
}

/// Whether `rule` (a `Prefix` path) matches `path` element by element.
fn prefix_matches(rule: &str, path: &str) -> bool {
    let rule = rule.trim_end_matches('/');
    if rule.is_empty() {
        return true;
    }
    path.strip_prefix(rule)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl Table {
    /// The table of the Ingresses `filter` accepts.
    pub fn build(ingresses: &[Ingress], filter: &ClassFilter) -> Table {
        let mut mine: Vec<&Ingress> = ingresses.iter().filter(|i| filter.accepts(i)).collect();
        mine.sort_by(|a, b| {
            let key = |i: &Ingress| {
                (
                    i.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    i.metadata.namespace.clone(),
                    i.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        let mut t = Table::default();
        for (age, ing) in mine.iter().enumerate() {
            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
            let ingress = format!("{ns}/{}", ing.metadata.name.as_deref().unwrap_or_default());
            let Some(spec) = &ing.spec else { continue };
            if t.default.is_none()
                && let Some(b) = spec
                    .default_backend
                    .as_ref()
                    .and_then(|b| backend_of(ns, b))
            {
                t.default = Some(Matched {
                    backend: b,
                    ingress: ingress.clone(),
                    host: String::new(),
                    path: String::new(),
                });
            }
            for rule in spec.rules.iter().flatten() {
                let host = rule.host.clone().unwrap_or_default();
                let routes: Vec<Route> = rule
                    .http
                    .iter()
                    .flat_map(|h| &h.paths)
                    .filter_map(|p| {
                        let path = p.path.clone().unwrap_or_else(|| "/".into());
                        Some(Route {
                            path: path.clone(),
                            kind: if p.path_type == "Exact" {
                                PathKind::Exact
                            } else {
                                PathKind::Prefix
                            },
                            matched: Matched {
                                backend: backend_of(ns, &p.backend)?,
                                ingress: ingress.clone(),
                                host: host.clone(),
                                path,
                            },
                            age,
                        })
                    })
                    .collect();
                let bucket = match rule.host.as_deref().filter(|h| !h.is_empty()) {
                    None => &mut t.any,
                    Some(h) => match h.strip_prefix('*') {
                        Some(suffix) => t.wildcard.entry(suffix.to_ascii_lowercase()).or_default(),
                        None => t.exact.entry(h.to_ascii_lowercase()).or_default(),
                    },
                };
                bucket.extend(routes);
            }
            for tls in spec.tls.iter().flatten() {
                if let Some(secret) = tls.secret_name.clone().filter(|s| !s.is_empty()) {
                    t.tls.push(Tls {
                        hosts: tls.hosts.clone().unwrap_or_default(),
                        secret: (ns.to_string(), secret),
                    });
                }
            }
        }
        t
    }

    /// Every backend a route or default names (with repeats).
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .flatten()
            .chain(&self.any)
            .map(|r| &r.matched.backend)
            .chain(self.default.iter().map(|m| &m.backend))
    }

    /// The routes of the most specific host entry `host` has.
    fn host_routes(&self, host: &str) -> &[Route] {
        let host = normalize_host(host);
        if let Some(r) = self.exact.get(&host) {
            return r;
        }
        if let Some((_, rest)) = host.split_once('.') {
            let suffix = format!(".{rest}");
            if let Some(r) = self.wildcard.get(&suffix) {
                return r;
            }
        }
        &self.any
    }

    /// The route for a request to `host` and `path` (the path without its query).
    pub fn route(&self, host: &str, path: &str) -> Option<&Matched> {
        self.host_routes(host)
            .iter()
            .filter(|r| match r.kind {
                PathKind::Exact => r.path == path,
                PathKind::Prefix => prefix_matches(&r.path, path),
            })
            .max_by(|a, b| {
                (
                    a.path.trim_end_matches('/').len(),
                    a.kind,
                    std::cmp::Reverse(a.age),
                )
                    .cmp(&(
                        b.path.trim_end_matches('/').len(),
                        b.kind,
                        std::cmp::Reverse(b.age),
                    ))
            })
            .map(|r| &r.matched)
            .or(self.default.as_ref())
    }

    /// The Secret whose certificate serves `host` (SNI), if a TLS section covers it: an exact
    /// name before a wildcard, the oldest Ingress first.
    pub fn certificate_for(&self, host: &str) -> Option<&(String, String)> {
        let host = normalize_host(host);
        let covers = |pattern: &str, host: &str| match pattern.strip_prefix('*') {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(_, rest)| format!(".{rest}") == suffix.to_ascii_lowercase()),
            None => pattern.eq_ignore_ascii_case(host),
        };
        self.tls
            .iter()
            .find(|t| {
                t.hosts
                    .iter()
                    .any(|h| !h.starts_with('*') && covers(h, &host))
            })
            .or_else(|| {
                self.tls
                    .iter()
                    .find(|t| t.hosts.iter().any(|h| covers(h, &host)))
            })
            .map(|t| &t.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(name: &str, created: &str, spec: serde_json::Value) -> Ingress {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "web",
            "creationTimestamp": created, "annotations": {}}, "spec": spec}))
        .unwrap()
    }

    fn path(p: &str, kind: &str, svc: &str) -> serde_json::Value {
        json!({"path": p, "pathType": kind, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
    }

    fn svc(t: &Table, host: &str, p: &str) -> Option<String> {
        t.route(host, p).map(|m| m.backend.service.clone())
    }

    fn capstan() -> ClassFilter {
        ClassFilter {
            class: "capstan".into(),
            unclassed: false,
        }
    }

    #[test]
    fn paths_match_as_the_ingress_specification_says() {
        let t = Table::build(
            &[ingress(
                "a",
                "2026-01-01T00:00:00Z",
                json!({"ingressClassName": "capstan", "rules": [{"host": "a.example.test", "http": {"paths": [
                    path("/", "Prefix", "root"),
                    path("/foo", "Prefix", "foo"),
                    path("/foo/bar/", "Prefix", "bar"),
                    path("/foo", "Exact", "exact-foo"),
                    path("/aaa/bb", "ImplementationSpecific", "impl"),
                ]}}]}),
            )],
            &capstan(),
        );
        // The table of the Ingress docs' examples.
        assert_eq!(
            svc(&t, "a.example.test", "/foo").as_deref(),
            Some("exact-foo")
        );
        assert_eq!(svc(&t, "a.example.test", "/foo/").as_deref(), Some("foo"));
        assert_eq!(svc(&t, "a.example.test", "/foo/x").as_deref(), Some("foo"));
        assert_eq!(
            svc(&t, "a.example.test", "/foobar").as_deref(),
            Some("root")
        );
        assert_eq!(
            svc(&t, "a.example.test", "/foo/bar").as_deref(),
            Some("bar")
        );
        assert_eq!(
            svc(&t, "a.example.test", "/foo/bar/baz").as_deref(),
            Some("bar")
        );
        assert_eq!(
            svc(&t, "a.example.test", "/aaa/bbb").as_deref(),
            Some("root")
        );
        assert_eq!(
            svc(&t, "a.example.test", "/aaa/bb/c").as_deref(),
            Some("impl")
        );
        // Hosts without case or port.
        assert_eq!(
            svc(&t, "A.Example.Test:8080", "/foo/x").as_deref(),
            Some("foo")
        );
        assert_eq!(svc(&t, "b.example.test", "/"), None);
    }

    #[test]
    fn exact_hosts_before_wildcards_before_hostless_rules_and_the_oldest_wins_ties() {
        let t = Table::build(
            &[
                ingress(
                    "newer",
                    "2026-02-01T00:00:00Z",
                    json!({"ingressClassName": "capstan", "rules": [
                        {"host": "a.example.test", "http": {"paths": [path("/", "Prefix", "newer")]}}]}),
                ),
                ingress(
                    "older",
                    "2026-01-01T00:00:00Z",
                    json!({"ingressClassName": "capstan",
                        "defaultBackend": {"service": {"name": "fallback", "port": {"name": "http"}}},
                        "rules": [
                            {"host": "a.example.test", "http": {"paths": [path("/", "Prefix", "older")]}},
                            {"host": "*.example.test", "http": {"paths": [path("/", "Prefix", "wild")]}},
                            {"http": {"paths": [path("/api", "Prefix", "anyhost")]}}],
                        "tls": [{"hosts": ["*.example.test"], "secretName": "wild-tls"},
                                {"hosts": ["a.example.test"], "secretName": "a-tls"}]}),
                ),
                ingress(
                    "other-class",
                    "2025-01-01T00:00:00Z",
                    json!({"ingressClassName": "nginx", "rules": [
                        {"host": "a.example.test", "http": {"paths": [path("/", "Prefix", "nginx")]}}]}),
                ),
                ingress(
                    "unclassed",
                    "2025-01-01T00:00:00Z",
                    json!({"rules": [
                    {"host": "u.test", "http": {"paths": [path("/", "Prefix", "u")]}}]}),
                ),
            ],
            &capstan(),
        );
        assert_eq!(svc(&t, "a.example.test", "/x").as_deref(), Some("older"));
        assert_eq!(svc(&t, "b.example.test", "/").as_deref(), Some("wild"));
        assert_eq!(
            svc(&t, "b.c.example.test", "/api").as_deref(),
            Some("anyhost")
        );
        assert_eq!(svc(&t, "example.test", "/api").as_deref(), Some("anyhost"));
        // Nothing matches in the chosen host: the default backend.
        let d = t.route("elsewhere.test", "/nothing").unwrap();
        assert_eq!(
            (d.backend.service.as_str(), &d.backend.port),
            ("fallback", &PortRef::Name("http".into()))
        );
        assert_eq!((d.host.as_str(), d.path.as_str()), ("", ""));
        let m = t.route("b.example.test", "/x").unwrap();
        assert_eq!(
            (m.ingress.as_str(), m.host.as_str(), m.path.as_str()),
            ("web/older", "*.example.test", "/")
        );
        assert_eq!(
            svc(&t, "u.test", "/"),
            Some("fallback".into()),
            "unclassed is not ours"
        );
        // SNI: the exact name's Secret before the wildcard's.
        assert_eq!(
            t.certificate_for("a.example.test").map(|s| s.1.as_str()),
            Some("a-tls")
        );
        assert_eq!(
            t.certificate_for("b.example.test").map(|s| s.1.as_str()),
            Some("wild-tls")
        );
        assert_eq!(t.certificate_for("other.test"), None);
        let all = ClassFilter {
            class: "capstan".into(),
            unclassed: true,
        };
        let t = Table::build(
            &[ingress(
                "unclassed",
                "2025-01-01T00:00:00Z",
                json!({"rules": [
                {"host": "u.test", "http": {"paths": [path("/", "Prefix", "u")]}}]}),
            )],
            &all,
        );
        assert_eq!(svc(&t, "u.test", "/").as_deref(), Some("u"));
    }
}
