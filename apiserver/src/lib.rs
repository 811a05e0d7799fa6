//! Capstan's Kubernetes API server. Start at [`ApiServer`] and [`router`]: the router parses
//! each request into a [`handlers::Target`] (resource, namespace, name, subresource — like
//! kube-apiserver's RequestInfo) and hands it to the verb in [`handlers`]. Resources come from the
//! [`registry`]; LIST and WATCH are served by one [`cacher::Cacher`] per resource; errors are
//! [`errors::ApiError`] → metav1.Status. CustomResourceDefinitions become served resources
//! through [`crd`], whose controller runs inside every server.
//!
//! Not yet here (and refused by name, never ignored): protobuf request bodies.

pub mod cacher;
pub mod crd;
pub mod errors;
pub mod events;
pub mod handlers;
pub mod ipalloc;
pub mod object;
pub mod openapi;
pub mod openapi_v2;
pub mod podexec;
pub mod podlog;
pub mod protobuf;
pub mod registry;
pub mod smp;
pub mod ssa;
pub mod strategy;
pub mod table;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use capstan_storage::Storage;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry as Metrics};
use serde_json::{Value, json};

use cacher::Cacher;
use errors::{ApiError, ApiResult};
use handlers::{MAX_BODY_BYTES, Params, Target};
use registry::{Registry, ResourceInfo};

/// The API server's shared state.
pub struct ApiServer {
    pub registry: Registry,
    pub store: Arc<dyn Storage>,
    cachers: RwLock<HashMap<String, Arc<Cacher>>>,
    metrics: Option<RequestMetrics>,
    pub prometheus: Metrics,
    /// The /openapi/v3 root and documents, built on demand for one registry generation
    /// (CustomResourceDefinitions change the registry, which makes them stale).
    openapi: RwLock<Option<(u64, Arc<OpenApiDocs>)>>,
    /// /openapi/v2 as JSON and as gnostic protobuf, derived from the v3 documents.
    openapi_v2: RwLock<Option<(u64, Arc<SwaggerDocs>)>>,
    /// Service ClusterIPs.
    pub ips: ipalloc::Allocator,
    /// Milliseconds between watch bookmarks ([`handlers::BOOKMARK_INTERVAL`] unless changed).
    bookmark_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("store", &self.store)
            .finish()
    }
}

/// Dropping the server stops its watch caches (and with them their store watches).
impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Ok(map) = self.cachers.read() {
            for c in map.values() {
                c.stop();
            }
        }
    }
}

#[derive(Clone)]
struct RequestMetrics {
    total: IntCounterVec,
    duration: HistogramVec,
}

impl RequestMetrics {
    fn register(r: &Metrics) -> prometheus::Result<Self> {
        let total = IntCounterVec::new(
            Opts::new(
                "apiserver_request_total",
                "API requests by verb, resource and HTTP code.",
            ),
            &["verb", "group", "resource", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "apiserver_request_duration_seconds",
                "API request latency by verb and resource.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["verb", "group", "resource"],
        )?;
        r.register(Box::new(total.clone()))?;
        r.register(Box::new(duration.clone()))?;
        Ok(RequestMetrics { total, duration })
    }
}

/// The namespaces every cluster starts with.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

impl ApiServer {
    /// Builds the server over `store`: registers the built-ins, starts their watch caches,
    /// creates the system namespaces, and registers request metrics in `prometheus`.
    pub async fn new(store: Arc<dyn Storage>, prometheus: Metrics) -> ApiResult<Arc<ApiServer>> {
        Self::with_service_cidr(store, prometheus, ipalloc::ServiceCidr::default()).await
    }

    /// As [`ApiServer::new`], allocating Service ClusterIPs from `cidr`.
    pub async fn with_service_cidr(
        store: Arc<dyn Storage>,
        prometheus: Metrics,
        cidr: ipalloc::ServiceCidr,
    ) -> ApiResult<Arc<ApiServer>> {
        let metrics = RequestMetrics::register(&prometheus)
            .map_err(|e| ApiError::internal(format!("registering metrics: {e}")))?;
        let api = Arc::new(ApiServer {
            registry: Registry::with_builtins(),
            cachers: RwLock::new(HashMap::new()),
            metrics: Some(metrics),
            prometheus,
            openapi: RwLock::new(None),
            openapi_v2: RwLock::new(None),
            bookmark_ms: std::sync::atomic::AtomicU64::new(
                handlers::BOOKMARK_INTERVAL.as_millis() as u64
            ),
            ips: ipalloc::Allocator::new(cidr, store.clone()),
            store,
        });
        for info in api.registry.all() {
            api.cacher(&info)?;
        }
        let ns_info = api
            .registry
            .get("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces are not registered"))?;
        let target = Target {
            info: ns_info,
            namespace: None,
            name: None,
            subresource: None,
        };
        for ns in SYSTEM_NAMESPACES {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match api.create(&target, obj, &Params::default()).await {
                Ok(_) => tracing::info!(namespace = ns, "created system namespace"),
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        crd::controller::CrdController::start(&api).await?;
        api.ips.spawn_repair(Duration::from_secs(60));
        Ok(api)
    }

    /// The watch cache of a resource (started on first use). Only the definition the registry
    /// serves now has one: a request that resolved a resource just before it was replaced (a
    /// CRD changed) is served by the current definition's cache, and one that resolved a
    /// resource since removed gets a 404 — never a cache nobody would stop, or one with an old
    /// schema.
    pub fn cacher(&self, info: &Arc<ResourceInfo>) -> ApiResult<Arc<Cacher>> {
        let key = format!("{}/{}", info.api_version(), info.plural);
        if let Some(c) = self.cachers.read().ok().and_then(|m| m.get(&key).cloned())
            && Arc::ptr_eq(c.info(), info)
        {
            return Ok(c);
        }
        let mut map = self
            .cachers
            .write()
            .map_err(|_| ApiError::internal("cachers lock poisoned"))?;
        // Checked under the cachers lock (lock order: cachers, then registry; the registry
        // never takes the cachers lock): the resource the registry serves now. A request that
        // resolved an older definition of it is served by the current one.
        let current = self
            .registry
            .get(&info.group, &info.version, &info.plural)
            .ok_or_else(not_found)?;
        if let Some(c) = map.get(&key) {
            if Arc::ptr_eq(c.info(), &current) {
                return Ok(c.clone());
            }
            c.stop();
        }
        let c = Cacher::start(current, self.store.clone());
        map.insert(key, c.clone());
        Ok(c)
    }

    /// Stops and forgets the watch cache of a resource that is no longer served (its client
    /// watches end; clients re-watch and find the resource gone or changed). A cache already
    /// rebuilt for a newer definition is left alone.
    pub fn drop_cacher(&self, info: &Arc<ResourceInfo>) {
        let key = format!("{}/{}", info.api_version(), info.plural);
        if let Ok(mut m) = self.cachers.write()
            && m.get(&key).is_some_and(|c| Arc::ptr_eq(c.info(), info))
            && let Some(c) = m.remove(&key)
        {
            c.stop();
        }
    }

    /// How often watches that allow bookmarks get one.
    pub fn bookmark_interval(&self) -> Duration {
        Duration::from_millis(
            self.bookmark_ms
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(10),
        )
    }

    /// Changes the bookmark interval (tests use a short one).
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.bookmark_ms.store(
            every.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Ready once every watch cache has listed.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        for info in self.registry.all() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(cacher) = self.cacher(&info) else {
                continue; // removed meanwhile
            };
            if !cacher.wait_for(0, left).await {
                return false;
            }
        }
        true
    }
}

/// The HTTP surface: discovery, every resource verb, and the operational endpoints.
pub fn router(api: Arc<ApiServer>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route("/apis", get(api_groups))
        .route("/api/v1", get(core_resources))
        .route("/apis/{group}", get(group_info))
        .route("/apis/{group}/{version}", get(group_resources))
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/exec",
            any(podexec::pod_exec),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/{sub}",
            any(pod_subresource),
        )
        .route("/api/v1/{*rest}", any(core_dispatch))
        .route("/apis/{group}/{version}/{*rest}", any(group_dispatch))
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_root))
        .route("/openapi/v3/{*gv}", get(openapi_document))
        .route("/healthz", get(readyz))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { not_found() })
        .with_state(api)
}

fn not_found() -> ApiError {
    ApiError {
        code: 404,
        reason: "NotFound",
        message: "the server could not find the requested resource".into(),
        details: None,
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "33",
            "gitVersion": format!("v1.33.0-capstan.{}", env!("CARGO_PKG_VERSION")),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "",
            "goVersion": "",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
        }),
    )
}

async fn api_versions() -> Response {
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

async fn api_groups(State(api): State<Arc<ApiServer>>) -> Response {
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

async fn group_info(State(api): State<Arc<ApiServer>>, Path(group): Path<String>) -> Response {
    if !api.registry.serves(&group, None) {
        return not_found().into_response();
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

async fn core_resources(State(api): State<Arc<ApiServer>>) -> Response {
    match resource_list(&api, "", "v1") {
        Some(l) => json_response(StatusCode::OK, &l),
        None => not_found().into_response(),
    }
}

async fn group_resources(
    State(api): State<Arc<ApiServer>>,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    match resource_list(&api, &group, &version) {
        Some(l) => json_response(StatusCode::OK, &l),
        None => not_found().into_response(),
    }
}

/// The /openapi/v3 root and its per-group-version documents.
type OpenApiDocs = (Value, HashMap<String, Value>);
/// /openapi/v2: the Swagger JSON and its gnostic protobuf encoding.
type SwaggerDocs = (Value, Vec<u8>);

impl ApiServer {
    fn openapi(&self) -> Arc<OpenApiDocs> {
        let generation = self.registry.generation();
        if let Ok(cached) = self.openapi.read()
            && let Some((g, docs)) = cached.as_ref()
            && *g == generation
        {
            return docs.clone();
        }
        let (root, docs) = openapi::build(&self.registry);
        let built = Arc::new((root, docs));
        if let Ok(mut cached) = self.openapi.write() {
            *cached = Some((generation, built.clone()));
        }
        built
    }
}

impl ApiServer {
    fn openapi_v2(&self) -> Arc<SwaggerDocs> {
        let generation = self.registry.generation();
        if let Ok(cached) = self.openapi_v2.read()
            && let Some((g, doc)) = cached.as_ref()
            && *g == generation
        {
            return doc.clone();
        }
        let swagger = openapi_v2::swagger(&self.openapi().1);
        let proto = openapi_v2::to_protobuf(&swagger);
        let built = Arc::new((swagger, proto));
        if let Ok(mut cached) = self.openapi_v2.write() {
            *cached = Some((generation, built.clone()));
        }
        built
    }
}

/// GET /openapi/v2: protobuf when asked for (kubectl), else JSON.
async fn openapi_v2(State(api): State<Arc<ApiServer>>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let doc = api.openapi_v2();
    if accept.contains("protobuf") {
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            )],
            doc.1.clone(),
        )
            .into_response()
    } else {
        json_response(StatusCode::OK, &doc.0)
    }
}

async fn openapi_root(State(api): State<Arc<ApiServer>>) -> Response {
    json_response(StatusCode::OK, &api.openapi().0)
}

async fn openapi_document(State(api): State<Arc<ApiServer>>, Path(gv): Path<String>) -> Response {
    match api.openapi().1.get(gv.trim_matches('/')) {
        Some(doc) => json_response(StatusCode::OK, doc),
        None => not_found().into_response(),
    }
}

async fn readyz(State(api): State<Arc<ApiServer>>) -> Response {
    match tokio::time::timeout(Duration::from_secs(1), api.store.current_revision()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok").into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]store failed: {e}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "[-]store failed: no answer within 1s\n",
        )
            .into_response(),
    }
}

async fn metrics(State(api): State<Arc<ApiServer>>) -> Response {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    match enc.encode(&api.prometheus.gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, enc.format_type().to_string())],
            buf,
        )
            .into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

type Q = Query<HashMap<String, String>>;

/// Pods' subresources: attach and portforward are refused clearly (exec has its own route),
/// the rest go the common way.
async fn pod_subresource(
    State(api): State<Arc<ApiServer>>,
    method: Method,
    Path((namespace, name, sub)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if matches!(sub.as_str(), "attach" | "portforward" | "proxy") {
        return ApiError::bad_request(format!(
            "pods/{sub} is not supported by this API server; kubectl exec and kubectl logs are"
        ))
        .into_response();
    }
    let rest = format!("namespaces/{namespace}/pods/{name}/{sub}");
    dispatch(
        api,
        method,
        String::new(),
        "v1".into(),
        rest,
        q,
        headers,
        body,
    )
    .await
}

async fn core_dispatch(
    State(api): State<Arc<ApiServer>>,
    method: Method,
    Path(rest): Path<String>,
    Query(q): Q,
    headers: HeaderMap,
    body: Body,
) -> Response {
    dispatch(
        api,
        method,
        String::new(),
        "v1".into(),
        rest,
        q,
        headers,
        body,
    )
    .await
}

async fn group_dispatch(
    State(api): State<Arc<ApiServer>>,
    method: Method,
    Path((group, version, rest)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Body,
) -> Response {
    dispatch(api, method, group, version, rest, q, headers, body).await
}

/// Resolves the path below /api/v1 or /apis/G/V to a resource target (kube's RequestInfo rules:
/// `namespaces/NS/RESOURCE[/NAME[/SUB]]`, else `RESOURCE[/NAME[/SUB]]`; `namespaces/NAME/status`
/// and `/finalize` are the namespace's own subresources).
fn resolve(api: &ApiServer, group: &str, version: &str, rest: &str) -> ApiResult<Target> {
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let (namespace, parts) = match parts.as_slice() {
        ["namespaces", _, sub] if group.is_empty() && matches!(*sub, "status" | "finalize") => {
            (None, &parts[..])
        }
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, &parts[..]),
    };
    let (resource, name, sub) = match parts {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(n.to_string()), None),
        [r, n, s] => (*r, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(not_found()),
    };
    let info = api
        .registry
        .get(group, version, resource)
        .ok_or_else(not_found)?;
    if namespace.is_some() && !info.namespaced {
        return Err(not_found());
    }
    if let Some(s) = &sub {
        let known = match s.as_str() {
            "status" => info.status,
            "scale" => info.scale.is_some(),
            "binding" | "log" => info.group.is_empty() && info.plural == "pods",
            "finalize" => info.group.is_empty() && info.plural == "namespaces",
            _ => false,
        };
        if !known {
            return Err(not_found());
        }
    }
    Ok(Target {
        info,
        namespace,
        name,
        subresource: sub,
    })
}

/// How the client asked to see objects, from the first media type it accepts: a Table
/// (kubectl get's human output), PartialObjectMetadata (metadata-only informers, such as the
/// garbage collector's), or the objects themselves.
fn view(headers: &HeaderMap) -> handlers::View {
    let first = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split(',').next())
        .unwrap_or_default();
    let param = |k: &str| {
        first
            .split(';')
            .skip(1)
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.trim())
    };
    match param("as") {
        Some("Table") => handlers::View::Table,
        Some("PartialObjectMetadata" | "PartialObjectMetadataList")
            if param("g").is_none_or(|g| g == "meta.k8s.io") =>
        {
            handlers::View::Metadata
        }
        _ => handlers::View::Object,
    }
}

fn accepts_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    accept.split(',').any(|a| {
        let mt = a.split(';').next().unwrap_or_default().trim();
        matches!(mt, "application/json" | "*/*" | "application/*" | "")
    })
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    api: Arc<ApiServer>,
    method: Method,
    group: String,
    version: String,
    rest: String,
    q: HashMap<String, String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let target = match resolve(&api, &group, &version, &rest) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let agent_manager = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .map(|m| m.trim().chars().take(128).collect::<String>())
        .filter(|m| !m.is_empty());
    let p = Params(q, agent_manager);
    let watch = matches!(p.get("watch"), Some("true" | "1"));
    let verb = match (&method, target.name.is_some(), watch) {
        (&Method::GET, _, true) => "watch",
        (&Method::GET, true, _) => "get",
        (&Method::GET, false, _) => "list",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, true, _) => "delete",
        (&Method::DELETE, false, _) => "deletecollection",
        _ => "unknown",
    };
    let resource = match &target.subresource {
        Some(s) => format!("{}/{s}", target.info.plural),
        None => target.info.plural.to_string(),
    };
    let response = serve(&api, &method, &target, verb, &p, &headers, body).await;
    let mut response = match response {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if let Some(w) = &target.info.deprecation {
        response = with_warnings(response, std::slice::from_ref(w));
    }
    if let Some(m) = &api.metrics {
        m.total
            .with_label_values(&[
                verb,
                &target.info.group,
                &resource,
                response.status().as_str(),
            ])
            .inc();
        if verb != "watch" {
            m.duration
                .with_label_values(&[verb, &target.info.group, &resource])
                .observe(started.elapsed().as_secs_f64());
        }
    }
    tracing::debug!(verb, resource, code = response.status().as_u16(), elapsed = ?started.elapsed(), "request");
    response
}

/// Adds `Warning: 299 - "…"` headers (fieldValidation=Warn), as kube-apiserver sends them.
fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    // At most 50 distinct warnings of at most 256 characters, like kube-apiserver's limits.
    let mut seen = std::collections::HashSet::new();
    for w in warnings.iter().filter(|w| seen.insert(*w)).take(50) {
        let w: String = w.chars().take(256).collect();
        let text = format!("299 - \"{}\"", w.replace('"', "'"));
        if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

async fn read_body(body: Body) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::too_large(format!(
                "the request body is larger than the limit of {MAX_BODY_BYTES} bytes"
            ))
        })
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string()
}

/// A write's body as JSON. Protobuf bodies (client-go's typed clients) are decoded to the JSON a
/// Go client would have sent; `api_version`/`kind` are what the endpoint takes, for envelopes
/// that leave their TypeMeta empty.
fn json_body(headers: &HeaderMap, body: &Bytes, api_version: &str, kind: &str) -> ApiResult<Value> {
    let ct = content_type(headers);
    let mt = ct.split(';').next().unwrap_or_default().trim();
    match mt {
        "application/json" | "" => handlers::parse_body(body),
        protobuf::MEDIA_TYPE => protobuf::to_json(body, api_version, kind),
        _ => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format ({mt}) - accepted media types include: application/json, {}",
            protobuf::MEDIA_TYPE
        ))),
    }
}

/// A body handed on as bytes (DeleteOptions, Scale): protobuf ones become JSON first.
fn json_bytes(headers: &HeaderMap, body: Bytes, api_version: &str, kind: &str) -> ApiResult<Bytes> {
    if protobuf::is_protobuf(&content_type(headers)) {
        let value = protobuf::to_json(&body, api_version, kind)?;
        return Ok(Bytes::from(serde_json::to_vec(&value).unwrap_or_default()));
    }
    Ok(body)
}

async fn serve(
    api: &Arc<ApiServer>,
    method: &Method,
    t: &Target,
    verb: &str,
    p: &Params,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    if t.subresource.as_deref() == Some("log") {
        if verb != "get" {
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on pods/log"
            )));
        }
        return api.pod_log(t, p).await;
    }
    let view = view(headers);
    if !accepts_json(headers) && view != handlers::View::Table {
        return Err(ApiError::not_acceptable(
            "only application/json is served (and Tables for kubectl get)",
        ));
    }
    let table = view == handlers::View::Table;
    let include = p.get("includeObject");
    let sub = t.subresource.as_deref();
    if matches!(verb, "update" | "patch") && t.name.is_none() {
        return Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on a collection of {}: name the object",
            &t.info.plural
        )));
    }
    let ok = |v: Value| -> ApiResult<Response> {
        let is_object = v.get("kind").and_then(Value::as_str) == Some(&t.info.kind);
        let v = match view {
            handlers::View::Table if is_object => crate::table::render(
                &t.info.strategy.table(),
                std::slice::from_ref(&v),
                include,
                v["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default(),
                None,
            ),
            handlers::View::Metadata if is_object => handlers::partial_metadata(&v),
            _ => v,
        };
        Ok(json_response(StatusCode::OK, &v))
    };
    match (verb, sub) {
        ("watch", None) => {
            let stream = match api.watch(t, p, view).await {
                Ok(s) => s,
                // An expired resourceVersion is 200, then one ERROR event carrying the 410
                // Status: what client-go's reflector and kube-rs's watcher expect.
                Err(e) if e.code == 410 => {
                    let mut line =
                        serde_json::to_vec(&json!({"type": "ERROR", "object": e.status()}))
                            .unwrap_or_default();
                    line.push(b'\n');
                    return Ok((
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/json")],
                        line,
                    )
                        .into_response());
                }
                Err(e) => return Err(e),
            };
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::TRANSFER_ENCODING, "chunked")
                .body(Body::from_stream(stream))
                .map_err(|e| ApiError::internal(e.to_string()))?)
        }
        ("get", None | Some("status")) => ok(api.get(t).await?),
        ("get", Some("scale")) => ok(api.get_scale(t).await?),
        ("list", None) => {
            let (items, rv, cont) = api.list(t, p).await?;
            if table {
                return Ok(json_response(
                    StatusCode::OK,
                    &crate::table::render(
                        &t.info.strategy.table(),
                        &items,
                        include,
                        &rv.to_string(),
                        cont.as_deref(),
                    ),
                ));
            }
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if let Some(c) = cont {
                meta["continue"] = json!(c);
            }
            if view == handlers::View::Metadata {
                let items: Vec<Value> = items.iter().map(handlers::partial_metadata).collect();
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "kind": "PartialObjectMetadataList",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": meta,
                        "items": items,
                    }),
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": t.info.list_kind,
                    "apiVersion": t.info.api_version(),
                    "metadata": meta,
                    "items": items,
                }),
            ))
        }
        ("create", None) if t.name.is_none() => {
            let body = read_body(body).await?;
            let obj = json_body(headers, &body, &t.info.api_version(), &t.info.kind)?;
            let warnings = handlers::unknown_field_warnings(t, p, &obj)?;
            let created = api.create(t, obj, p).await?;
            Ok(with_warnings(
                json_response(StatusCode::CREATED, &created),
                &warnings,
            ))
        }
        ("create", Some("binding")) => {
            let body = read_body(body).await?;
            let status = api
                .bind(t, json_body(headers, &body, "v1", "Binding")?, p)
                .await?;
            Ok(json_response(StatusCode::CREATED, &status))
        }
        ("update", None | Some("status") | Some("finalize")) => {
            let body = read_body(body).await?;
            let mut obj = json_body(headers, &body, &t.info.api_version(), &t.info.kind)?;
            if sub == Some("finalize") {
                // /finalize changes spec.finalizers only (the namespace controller's last step),
                // guarded by the resourceVersion sent, as any update.
                let finalizers = obj["spec"]["finalizers"].clone();
                let precondition = match obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                {
                    Some(rv) => Some(rv.parse::<i64>().map_err(|_| {
                        ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                    })?),
                    None => None,
                };
                let updated = api
                    .guaranteed_update(t, precondition, p.dry_run()?, Some(p.manager()), |live| {
                        let mut new = live.clone();
                        let finalizers = if finalizers.is_null() {
                            json!([])
                        } else {
                            finalizers.clone()
                        };
                        object::set_path(&mut new, &["spec", "finalizers"], finalizers);
                        Ok(new)
                    })
                    .await?;
                return ok(updated);
            }
            if obj.get("metadata").is_none() {
                obj["metadata"] = json!({});
            }
            let warnings = handlers::unknown_field_warnings(t, p, &obj)?;
            Ok(with_warnings(ok(api.update(t, obj, p).await?)?, &warnings))
        }
        ("update", Some("scale")) => {
            let body = json_bytes(headers, read_body(body).await?, "autoscaling/v1", "Scale")?;
            ok(api.update_scale(t, None, body, p).await?)
        }
        ("patch", None) if handlers::is_apply(&content_type(headers)) => {
            let body = read_body(body).await?;
            let (created, obj, warnings) = api.server_side_apply(t, &body, p).await?;
            let resp = if created {
                json_response(StatusCode::CREATED, &obj)
            } else {
                ok(obj)?
            };
            Ok(with_warnings(resp, &warnings))
        }
        ("patch", None | Some("status")) => {
            let body = read_body(body).await?;
            let (patched, warnings) = api
                .patch_with_warnings(t, &content_type(headers), body, p)
                .await?;
            Ok(with_warnings(ok(patched)?, &warnings))
        }
        ("patch", Some("scale")) => {
            let body = read_body(body).await?;
            ok(api
                .update_scale(t, Some(&content_type(headers)), body, p)
                .await?)
        }
        ("delete", None) => {
            let body = json_bytes(headers, read_body(body).await?, "v1", "DeleteOptions")?;
            ok(api.delete(t, &body, p).await?)
        }
        ("deletecollection", None) => {
            let body = json_bytes(headers, read_body(body).await?, "v1", "DeleteOptions")?;
            ok(api.delete_collection(t, &body, p).await?)
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {}{}{}",
            &t.info.plural,
            if t.name.is_some() { "/NAME" } else { "" },
            sub.map(|s| format!("/{s}")).unwrap_or_default()
        ))),
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
