//! metrics.k8s.io/v1beta1, the resource metrics API metrics-server serves in Kubernetes, built
//! in: NodeMetrics and PodMetrics (CPU in nanocores, memory as the working set) for `kubectl
//! top` and the HorizontalPodAutoscaler.
//!
//! Nothing is stored. A request lists the nodes or pods it asks for (label and field selectors
//! apply to them, from the watch cache), asks the agents of the nodes concerned for their
//! `/stats/summary` (the kubelet's Summary API, sampled by each agent every 10 s, which works
//! out the CPU rates) and answers from it. Summaries are kept [`FRESH`] per node so that a burst
//! of requests (many autoscalers syncing at once, `kubectl top pods -A`) costs each agent one
//! call; a node whose agent does not answer is left out, as metrics-server leaves it out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::http::json_response;
use crate::request::{Params, Target};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

/// The resources served, for discovery: (plural, kind, namespaced).
pub const RESOURCES: &[(&str, &str, bool)] = &[
    ("nodes", "NodeMetrics", false),
    ("pods", "PodMetrics", true),
];

/// How long a node's summary is reused.
pub const FRESH: Duration = Duration::from_secs(1);
/// How long one agent may take to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Agents asked at once.
const FAN_OUT: usize = 64;
/// The largest summary read from an agent.
const MAX_SUMMARY: usize = 64 << 20;

type Slot = Arc<tokio::sync::Mutex<Option<(Instant, Result<Arc<Value>, String>)>>>;

/// The agents' summaries, by node name, each fetched by one request at a time.
#[derive(Debug, Default)]
pub struct Summaries {
    nodes: Mutex<HashMap<String, Slot>>,
}

impl Summaries {
    fn slot(&self, node: &str) -> Slot {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.entry(node.to_string()).or_default().clone()
    }

    /// Forgets nodes that are gone.
    fn retain(&self, live: &[&str]) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if nodes.len() > live.len() {
            nodes.retain(|n, _| live.contains(&n.as_str()));
        }
    }
}

/// A node's agent address: (host for a URL, port).
pub(crate) fn agent_address(node: &Value) -> ApiResult<(String, u64)> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let st = &node["status"];
    let ip = st["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::bad_request(format!("node {name} reports no InternalIP")))?;
    let port = st["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "node {name} reports no kubelet endpoint: its agent does not serve logs, exec or metrics"
            ))
        })?;
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    Ok((host, port))
}

impl ApiServer {
    /// Node `node`'s summary, fetched or reused.
    async fn summary(&self, node: &Value) -> Result<Arc<Value>, String> {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let slot = self.summaries.slot(name);
        let mut held = slot.lock().await;
        if let Some((at, got)) = &*held
            && at.elapsed() < FRESH
        {
            return got.clone();
        }
        let got = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_summary(node)).await {
            Ok(r) => r.map(Arc::new),
            Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
        };
        if let Err(e) = &got {
            tracing::debug!(node = name, error = %e, "no resource metrics from a node");
        }
        *held = Some((Instant::now(), got.clone()));
        got
    }

    async fn fetch_summary(&self, node: &Value) -> Result<Value, String> {
        let (host, port) = agent_address(node).map_err(|e| e.message)?;
        let mut sender =
            crate::rest::agent_conn::open(self.kubelet_tls.as_ref(), &host, port).await?;
        let req = axum::http::Request::get("/stats/summary")
            .header(axum::http::header::HOST, format!("{host}:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_SUMMARY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(512)])
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("the summary is not JSON: {e}"))
    }

    /// The summaries of `nodes` (by name) that could be had.
    async fn summaries_of(&self, nodes: &[Value]) -> HashMap<String, Arc<Value>> {
        let mut asks = Vec::with_capacity(nodes.len());
        for n in nodes {
            let name = n["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            asks.push(async move { self.summary(n).await.ok().map(|s| (name, s)) });
        }
        let got: Vec<Option<(String, Arc<Value>)>> = futures_util::stream::iter(asks)
            .buffer_unordered(FAN_OUT)
            .collect()
            .await;
        got.into_iter().flatten().collect()
    }

    fn target(&self, plural: &str, namespace: Option<String>) -> ApiResult<Target> {
        let info = self
            .registry
            .get("", "v1", plural)
            .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
        Ok(Target {
            info,
            namespace,
            name: None,
            subresource: None,
        })
    }

    /// The nodes or pods a metrics request selects: its label and field selectors, and the
    /// name asked for, applied to the objects themselves.
    async fn selected(
        &self,
        plural: &str,
        namespace: Option<String>,
        name: Option<&str>,
        query: &HashMap<String, String>,
    ) -> ApiResult<Vec<Value>> {
        let mut q: HashMap<String, String> = query
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "labelSelector" | "fieldSelector"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(name) = name {
            let by_name = format!("metadata.name={name}");
            q.entry("fieldSelector".into())
                .and_modify(|f| *f = format!("{f},{by_name}"))
                .or_insert(by_name);
        }
        q.insert("resourceVersion".into(), "0".into());
        let p = Params {
            query: q,
            user_agent_manager: None,
        };
        Ok(self.list(&self.target(plural, namespace)?, &p).await?.0)
    }

    /// NodeMetrics of the nodes asked for that have them.
    pub async fn node_metrics(
        &self,
        name: Option<&str>,
        query: &HashMap<String, String>,
    ) -> ApiResult<Vec<Value>> {
        let nodes = self.selected("nodes", None, name, query).await?;
        if name.is_none() && query.is_empty() {
            let live: Vec<&str> = nodes
                .iter()
                .filter_map(|n| n["metadata"]["name"].as_str())
                .collect();
            self.summaries.retain(&live);
        }
        let summaries = self.summaries_of(&nodes).await;
        Ok(nodes
            .iter()
            .filter_map(|n| {
                let name = n["metadata"]["name"].as_str()?;
                node_item(n, &summaries.get(name)?["node"])
            })
            .collect())
    }

    /// PodMetrics of the running pods asked for that have them.
    pub async fn pod_metrics(
        &self,
        namespace: Option<String>,
        name: Option<&str>,
        query: &HashMap<String, String>,
    ) -> ApiResult<Vec<Value>> {
        let pods: Vec<Value> = self
            .selected("pods", namespace, name, query)
            .await?
            .into_iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .collect();
        let mut wanted: Vec<&str> = pods
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let node_target = self.target("nodes", None)?;
        let cacher = self.cacher(&node_target.info)?;
        let nodes: Vec<Value> = wanted
            .iter()
            .filter_map(|n| cacher.get(&node_target.info.key(None, n)))
            .map(|n| n.value())
            .collect();
        let summaries = self.summaries_of(&nodes).await;
        // (namespace, name, uid) → the pod's entry in its node's summary.
        let mut by_pod: HashMap<(&str, &str, &str), &Value> = HashMap::new();
        for s in summaries.values() {
            for p in s["pods"].as_array().into_iter().flatten() {
                let r = &p["podRef"];
                if let (Some(ns), Some(n), Some(uid)) = (
                    r["namespace"].as_str(),
                    r["name"].as_str(),
                    r["uid"].as_str(),
                ) {
                    by_pod.insert((ns, n, uid), p);
                }
            }
        }
        Ok(pods
            .iter()
            .filter_map(|pod| {
                let m = &pod["metadata"];
                let key = (
                    m["namespace"].as_str()?,
                    m["name"].as_str()?,
                    m["uid"].as_str()?,
                );
                pod_item(pod, by_pod.get(&key)?)
            })
            .collect())
    }
}

/// CPU as a quantity in nanocores, as metrics-server writes it.
fn cpu_quantity(stats: &Value) -> Option<String> {
    Some(format!("{}n", stats["usageNanoCores"].as_u64()?))
}

/// Memory as a quantity in KiB, as metrics-server writes it.
fn memory_quantity(stats: &Value) -> Option<String> {
    Some(format!("{}Ki", stats["workingSetBytes"].as_u64()? / 1024))
}

/// `10s`-style window of a CPU sample (the agent's sampling interval).
fn window(cpu: &Value) -> String {
    let secs = cpu["windowSeconds"].as_f64().unwrap_or(10.0);
    if secs.fract() == 0.0 {
        format!("{}s", secs as u64)
    } else {
        format!("{}ms", (secs * 1000.0).round() as u64)
    }
}

fn metadata(obj: &Value, namespaced: bool) -> Value {
    let m = &obj["metadata"];
    let mut out = json!({
        "name": m["name"],
        "creationTimestamp": jiff::Timestamp::now().to_string(),
    });
    if namespaced {
        out["namespace"] = m["namespace"].clone();
    }
    if let Some(labels) = m.get("labels").filter(|l| l.is_object()) {
        out["labels"] = labels.clone();
    }
    out
}

fn node_item(node: &Value, stats: &Value) -> Option<Value> {
    let cpu = &stats["cpu"];
    Some(json!({
        "kind": "NodeMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata(node, false),
        "timestamp": cpu["time"],
        "window": window(cpu),
        "usage": {"cpu": cpu_quantity(cpu)?, "memory": memory_quantity(&stats["memory"])?},
    }))
}

fn pod_item(pod: &Value, stats: &Value) -> Option<Value> {
    let containers: Vec<Value> = stats["containers"]
        .as_array()?
        .iter()
        .filter_map(|c| {
            Some(json!({
                "name": c["name"],
                "usage": {"cpu": cpu_quantity(&c["cpu"])?, "memory": memory_quantity(&c["memory"])?},
            }))
        })
        .collect();
    let cpu = &stats["cpu"];
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata(pod, true),
        "timestamp": cpu["time"],
        "window": window(cpu),
        "containers": containers,
    }))
}

fn list(kind: &str, items: Vec<Value>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"kind": kind, "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items}),
    )
}

fn one(plural: &str, name: &str, mut items: Vec<Value>) -> Response {
    match items.pop() {
        Some(item) => json_response(StatusCode::OK, &item),
        None => ApiError::not_found(GROUP, plural, name).into_response(),
    }
}

/// Only reads; no watch.
fn refuse(method: &Method, query: &HashMap<String, String>) -> Option<Response> {
    if method != Method::GET {
        return Some(
            ApiError::method_not_allowed(format!(
                "{method} is not supported: resource metrics are only read"
            ))
            .into_response(),
        );
    }
    matches!(query.get("watch").map(String::as_str), Some("true" | "1")).then(|| {
        ApiError::method_not_allowed("watch is not supported by the resource metrics API")
            .into_response()
    })
}

type Q = Query<HashMap<String, String>>;

/// GET /apis/metrics.k8s.io/v1beta1/nodes
pub async fn list_nodes(
    State(api): State<Arc<ApiServer>>,
    method: Method,
    Query(q): Q,
) -> Response {
    if let Some(r) = refuse(&method, &q) {
        return r;
    }
    match api.node_metrics(None, &q).await {
        Ok(items) => list("NodeMetricsList", items),
        Err(e) => e.into_response(),
    }
}

/// GET /apis/metrics.k8s.io/v1beta1/nodes/{name}
pub async fn get_node(
    State(api): State<Arc<ApiServer>>,
    method: Method,
    Path(name): Path<String>,
    Query(q): Q,
) -> Response {
    if let Some(r) = refuse(&method, &q) {
        return r;
    }
    match api.node_metrics(Some(&name), &HashMap::new()).await {
        Ok(items) => one("nodes", &name, items),
        Err(e) => e.into_response(),
    }
}

/// GET /apis/metrics.k8s.io/v1beta1/pods
pub async fn list_all_pods(
    State(api): State<Arc<ApiServer>>,
    method: Method,
    Query(q): Q,
) -> Response {
    if let Some(r) = refuse(&method, &q) {
        return r;
    }
    match api.pod_metrics(None, None, &q).await {
        Ok(items) => list("PodMetricsList", items),
        Err(e) => e.into_response(),
    }
}

/// GET /apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods
pub async fn list_pods(
    State(api): State<Arc<ApiServer>>,
    method: Method,
    Path(namespace): Path<String>,
    Query(q): Q,
) -> Response {
    if let Some(r) = refuse(&method, &q) {
        return r;
    }
    match api.pod_metrics(Some(namespace), None, &q).await {
        Ok(items) => list("PodMetricsList", items),
        Err(e) => e.into_response(),
    }
}

/// GET /apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{name}
pub async fn get_pod(
    State(api): State<Arc<ApiServer>>,
    method: Method,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Q,
) -> Response {
    if let Some(r) = refuse(&method, &q) {
        return r;
    }
    match api
        .pod_metrics(Some(namespace), Some(&name), &HashMap::new())
        .await
    {
        Ok(items) => one("pods", &name, items),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_carry_metrics_servers_units_and_the_agents_window() {
        let node = json!({"metadata": {"name": "n1", "labels": {"a": "b"}}});
        let stats = json!({"cpu": {"time": "2026-12-04T10:00:00Z", "usageNanoCores": 250_000_000u64,
                                   "windowSeconds": 10.0},
                           "memory": {"workingSetBytes": 10_485_760u64}});
        let item = node_item(&node, &stats).unwrap();
        assert_eq!(
            item["usage"],
            json!({"cpu": "250000000n", "memory": "10240Ki"})
        );
        assert_eq!(item["window"], "10s");
        assert_eq!(item["metadata"]["labels"], json!({"a": "b"}));
        assert_eq!(item["timestamp"], "2026-12-04T10:00:00Z");
        // A node without a CPU rate yet (one sample) has no metrics.
        assert!(node_item(&node, &json!({"memory": {"workingSetBytes": 1}})).is_none());

        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}});
        let stats = json!({"cpu": {"time": "t", "usageNanoCores": 3, "windowSeconds": 1.5},
        "containers": [
            {"name": "app", "cpu": {"usageNanoCores": 3}, "memory": {"workingSetBytes": 4096}},
            {"name": "half", "memory": {"workingSetBytes": 1}},
        ]});
        let item = pod_item(&pod, &stats).unwrap();
        assert_eq!(item["window"], "1500ms");
        assert_eq!(item["metadata"]["namespace"], "ns");
        assert_eq!(
            item["containers"],
            json!([{"name": "app", "usage": {"cpu": "3n", "memory": "4Ki"}}])
        );
    }

    #[test]
    fn an_agent_address_needs_an_internal_ip_and_a_port() {
        let node = |addresses: Value, port: Value| {
            json!({"metadata": {"name": "n"}, "status": {"addresses": addresses,
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}})
        };
        let ok = node(
            json!([{"type": "InternalIP", "address": "10.0.0.1"}]),
            json!(10250),
        );
        assert_eq!(agent_address(&ok).unwrap(), ("10.0.0.1".into(), 10250));
        let v6 = node(
            json!([{"type": "InternalIP", "address": "fd00::1"}]),
            json!(1),
        );
        assert_eq!(agent_address(&v6).unwrap().0, "[fd00::1]");
        assert!(agent_address(&node(json!([]), json!(1))).is_err());
        let no_port = node(
            json!([{"type": "InternalIP", "address": "10.0.0.1"}]),
            json!(0),
        );
        assert!(agent_address(&no_port).is_err());
    }
}
