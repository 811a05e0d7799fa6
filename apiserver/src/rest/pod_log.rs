//! pods/log: the API server finds the pod's node and proxies the request to that node agent's
//! `/containerLogs/{namespace}/{pod}/{container}` (kube-apiserver's LogREST), streaming the
//! answer back — so `kubectl logs` (-f, --tail, --since, --timestamps, -c, --previous) works.
//! Plain HTTP to the node's InternalIP and kubeletEndpoint port, unauthenticated until the
//! security issue.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::request::{Params, Target};

pub(crate) fn client() -> &'static Client<HttpConnector, Empty<Bytes>> {
    static C: OnceLock<Client<HttpConnector, Empty<Bytes>>> = OnceLock::new();
    C.get_or_init(|| {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        Client::builder(TokioExecutor::new()).build(http)
    })
}

/// The query parameters passed on, checked as kube-apiserver checks PodLogOptions.
const PASSED: &[&str] = &[
    "follow",
    "previous",
    "timestamps",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
];

fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// The container a pods/log, exec or attach request means: the one named (a container, an
/// init or an ephemeral one; it must exist), else the pod's only container.
pub(crate) fn choose_container(pod: &Value, asked: Option<&str>) -> ApiResult<String> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let containers = names(pod["spec"].get("containers"));
    let inits = names(pod["spec"].get("initContainers"));
    let ephemeral = names(pod["spec"].get("ephemeralContainers"));
    match asked {
        Some(c)
            if containers
                .iter()
                .chain(&inits)
                .chain(&ephemeral)
                .any(|n| n == c) =>
        {
            Ok(c.to_string())
        }
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

impl ApiServer {
    /// Where the agent of the pod's node listens: (host for a URL, port, node name).
    pub(crate) async fn node_endpoint(&self, pod: &Value) -> ApiResult<(String, u64, String)> {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let Some(node_name) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
            return Err(ApiError::bad_request(format!(
                "pod {name} does not have a host assigned"
            )));
        };
        let nodes = self
            .registry
            .get("", "v1", "nodes")
            .ok_or_else(|| ApiError::internal("nodes are not served"))?;
        let node = self
            .get(&Target {
                info: nodes,
                namespace: None,
                name: Some(node_name.to_string()),
                subresource: None,
            })
            .await?;
        let (host, port) = crate::resource_metrics::agent_address(&node)?;
        Ok((host, port, node_name.to_string()))
    }

    pub async fn pod_log(&self, t: &Target, p: &Params) -> ApiResult<Response> {
        let pod_target = Target {
            subresource: None,
            ..t.clone()
        };
        let pod = self.get(&pod_target).await?;
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let container = choose_container(&pod, p.get("container"))?;
        for k in ["tailLines", "sinceSeconds", "limitBytes"] {
            if let Some(v) = p.get(k)
                && v.parse::<i64>().is_err()
            {
                return Err(ApiError::bad_request(format!(
                    "{k}: {v:?} is not an integer"
                )));
            }
        }
        if p.get("sinceSeconds").is_some() && p.get("sinceTime").is_some() {
            return Err(ApiError::bad_request(
                "at most one of sinceTime or sinceSeconds may be specified",
            ));
        }
        let (host, port, node_name) = self.node_endpoint(&pod).await?;
        let mut query = String::new();
        for k in PASSED {
            if let Some(v) = p.get(k) {
                query.push(if query.is_empty() { '?' } else { '&' });
                query.push_str(k);
                query.push('=');
                query.push_str(&percent(v));
            }
        }
        let path = format!(
            "/containerLogs/{}/{}/{}{query}",
            percent(namespace),
            percent(name),
            percent(&container)
        );
        let unavailable = |e: &dyn std::fmt::Display| {
            ApiError::unavailable(format!(
                "the node agent of {node_name} ({host}:{port}) does not answer: {e}"
            ))
        };
        let mut sender = super::agent_conn::open(self.kubelet_tls.as_ref(), &host, port)
            .await
            .map_err(|e| unavailable(&e))?;
        let req = axum::http::Request::get(&path)
            .header(header::HOST, format!("{host}:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| ApiError::internal(format!("{path}: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unavailable(&e))?;
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| header::HeaderValue::from_static("text/plain"));
        Response::builder()
            .status(if status.is_success() {
                StatusCode::OK
            } else {
                status
            })
            .header(header::CONTENT_TYPE, ct)
            .body(Body::new(resp.into_body()))
            .map_err(|e| ApiError::internal(e.to_string()))
    }
}

/// Percent-encodes everything but unreserved characters.
pub(crate) fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_init_and_ephemeral_ones_can_be_named() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "app"}],
            "initContainers": [{"name": "init"}],
            "ephemeralContainers": [{"name": "debugger"}],
        }});
        for c in ["app", "init", "debugger"] {
            assert_eq!(choose_container(&pod, Some(c)).unwrap(), c);
        }
        assert_eq!(choose_container(&pod, None).unwrap(), "app");
        let e = choose_container(&pod, Some("nope")).unwrap_err();
        assert!(format!("{e:?}").contains("container nope is not valid for pod p"));
    }
}
