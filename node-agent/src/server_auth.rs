//! Who may use the agent's port, as kubelet decides it (`--authentication-token-webhook`,
//! `--authorization-mode Webhook`):
//!
//! - **Authentication**: a client certificate verified against the client CA (the cluster
//!   CA: the API server's `kube-apiserver-kubelet-client`), else a bearer token the API server
//!   vouches for (TokenReview — how a metrics scraper's ServiceAccount token gets in); neither
//!   is a 401. `/healthz` needs nothing.
//! - **Authorization**: a SubjectAccessReview to the API server for the node itself —
//!   resource `nodes`, the node's name, subresource `metrics` for /metrics and `proxy` for
//!   everything else (logs, exec, attach, port-forward), the verb from the method — a denial
//!   is a 403 worded as kubelet words it.
//!
//! Both answers are cached (tokens 2 minutes; decisions 5 minutes when allowed, 30 s when
//! not: kubelet's defaults), so a busy exec or scrape costs no API call per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use crate::server::status;
use crate::server_tls::Peer;

const TOKEN_TTL: Duration = Duration::from_secs(120);
const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);
/// Entries kept per cache; past this the cache starts over (a flood of distinct bad tokens
/// cannot grow it without bound).
const CACHE_LIMIT: usize = 4096;

/// A user as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

struct Cache<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    fn new() -> Self {
        Cache {
            entries: Mutex::new(HashMap::new()),
        }
    }
    fn get(&self, k: &K) -> Option<V> {
        let m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        m.get(k)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, v)| v.clone())
    }
    fn put(&self, k: K, v: V, ttl: Duration) {
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= CACHE_LIMIT {
            m.clear();
        }
        m.insert(k, (Instant::now() + ttl, v));
    }
}

/// The agent's authenticator and authorizer.
pub struct AgentAuth {
    client: kube::Client,
    node: String,
    tokens: Cache<String, User>,
    decisions: Cache<(User, String, String), bool>,
}

impl std::fmt::Debug for AgentAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentAuth")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// What a path on the agent is, as an attribute of its Node (kubelet's mapping).
pub fn subresource(path: &str) -> &'static str {
    if path == "/metrics" || path.starts_with("/metrics/") {
        "metrics"
    } else if path.starts_with("/stats") {
        "stats"
    } else {
        "proxy"
    }
}

/// The verb of a request method, as kubelet maps it.
pub fn verb(method: &Method) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl AgentAuth {
    pub fn new(client: kube::Client, node: &str) -> Arc<AgentAuth> {
        Arc::new(AgentAuth {
            client,
            node: node.to_string(),
            tokens: Cache::new(),
            decisions: Cache::new(),
        })
    }

    async fn token_user(&self, token: &str) -> Option<User> {
        if let Some(u) = self.tokens.get(&token.to_string()) {
            return Some(u);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| tracing::warn!(error = %e, "TokenReview failed"))
            .ok()?;
        let st = answer.status?;
        if st.authenticated != Some(true) {
            return None;
        }
        let info = st.user?;
        let user = User {
            name: info.username?,
            groups: info.groups.unwrap_or_default(),
        };
        self.tokens.put(token.to_string(), user.clone(), TOKEN_TTL);
        Some(user)
    }

    async fn allowed(&self, user: &User, verb: &str, sub: &str) -> bool {
        let key = (user.clone(), verb.to_string(), sub.to_string());
        if let Some(d) = self.decisions.get(&key) {
            return d;
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    resource: Some("nodes".into()),
                    subresource: Some(sub.into()),
                    name: Some(self.node.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let allowed = match Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
        {
            Ok(a) => a.status.is_some_and(|s| s.allowed),
            Err(e) => {
                // Not cached: the API server may answer next time.
                tracing::warn!(error = %e, "SubjectAccessReview failed");
                return false;
            }
        };
        let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
        self.decisions.put(key, allowed, ttl);
        allowed
    }
}

/// The middleware: authenticates and authorizes every request but /healthz.
pub async fn guard(
    State(auth): State<Arc<AgentAuth>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return next.run(req).await;
    }
    let user = match (&peer.certificate, bearer(req.headers())) {
        (Some(c), _) => Some(User {
            name: c.common_name.clone(),
            groups: c.organizations.clone(),
        }),
        (None, Some(token)) => auth.token_user(token).await,
        (None, None) => None,
    };
    let Some(user) = user else {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        );
    };
    let (verb, sub) = (verb(req.method()), subresource(&path));
    if !auth.allowed(&user, verb, sub).await {
        tracing::info!(user = %user.name, verb, subresource = sub, "refused on the agent's port");
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "Forbidden (user={}, verb={verb}, resource=nodes, subresource={sub})",
                user.name
            ),
        );
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_methods_map_as_kubelets_do() {
        assert_eq!(subresource("/metrics"), "metrics");
        assert_eq!(subresource("/metrics/cadvisor"), "metrics");
        assert_eq!(subresource("/stats/summary"), "stats");
        assert_eq!(subresource("/containerLogs/ns/p/c"), "proxy");
        assert_eq!(subresource("/exec/ns/p/c"), "proxy");
        assert_eq!(subresource("/metricsx"), "proxy");
        assert_eq!(verb(&Method::GET), "get");
        assert_eq!(verb(&Method::POST), "create");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn caches_expire_and_stay_bounded() {
        let c: Cache<u32, bool> = Cache::new();
        c.put(1, true, Duration::from_secs(60));
        c.put(2, true, Duration::ZERO);
        assert_eq!(c.get(&1), Some(true));
        assert_eq!(c.get(&2), None, "expired");
        for i in 0..(CACHE_LIMIT as u32 + 10) {
            c.put(i, false, Duration::from_secs(60));
        }
        assert!(c.entries.lock().unwrap().len() <= CACHE_LIMIT);
    }
}
