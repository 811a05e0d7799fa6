//! A custom and external metrics adapter for tests: an extension API server serving
//! `custom.metrics.k8s.io/v1beta2` and `external.metrics.k8s.io/v1beta1` from values a test
//! sets, standing in for prometheus-adapter or KEDA's metrics server (neither can be
//! installed here). It behaves as they do towards the aggregator: HTTPS with a certificate of
//! its own CA (its `caBundle`), and only requests that carry a client certificate of the front
//! proxy's CA with the name `front-proxy-client`, whose `X-Remote-*` headers say who asked.
//!
//! Unlike a real adapter it does not filter pods by `labelSelector` (it answers every pod it
//! has a value for; the autoscaler keeps its own); external series are filtered by equality
//! selectors (`a=b,c=d`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use base64::Engine;
use http_body_util::Full;
use serde_json::{Value, json};

/// A request the adapter answered: its path and query, and who the front proxy said asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    pub user: String,
    pub groups: Vec<String>,
}

/// One external series: its labels and value.
type Series = (BTreeMap<String, String>, String);

#[derive(Debug, Default)]
struct Values {
    /// (namespace, pod) → metric → value.
    pods: BTreeMap<(String, String), BTreeMap<String, String>>,
    /// (namespace, resource as the path names it, name, metric) → value.
    objects: BTreeMap<(String, String, String, String), String>,
    /// (namespace, metric) → series (labels, value).
    external: BTreeMap<(String, String), Vec<Series>>,
}

#[derive(Debug, Default)]
struct State {
    values: Mutex<Values>,
    seen: Mutex<Vec<Seen>>,
}

/// A running adapter; stopped when dropped.
pub struct MetricsAdapter {
    pub addr: SocketAddr,
    /// Base64 of the PEM of the CA that signed its serving certificate.
    pub ca_bundle: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MetricsAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MetricsAdapter({})", self.addr)
    }
}

impl Drop for MetricsAdapter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn status(code: u16, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "message": message}),
    )
}

fn matches(labels: &BTreeMap<String, String>, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        match term.split_once("==").or_else(|| term.split_once('=')) {
            Some((k, v)) => labels.get(k) == Some(&v.to_string()),
            None => labels.contains_key(term),
        }
    })
}

fn query_param(query: &str, key: &str) -> String {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| {
            let v = v.replace('+', " ");
            let mut out = Vec::new();
            let b = v.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%'
                    && i + 2 < b.len()
                    && let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16)
                {
                    out.push(x);
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        })
        .unwrap_or_default()
}

impl State {
    fn answer(&self, path: &str, query: &str) -> (u16, Value) {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let values = self.values.lock().unwrap();
        match parts.as_slice() {
            ["apis", "custom.metrics.k8s.io", "v1beta2"] => {
                let mut names: Vec<String> =
                    values
                        .pods
                        .values()
                        .flat_map(|m| m.keys().map(|k| format!("pods/{k}")))
                        .chain(values.objects.keys().map(|(_, r, _, m)| {
                            format!("{}/{m}", r.split('.').next().unwrap_or(r))
                        }))
                        .collect();
                names.sort();
                names.dedup();
                let resources: Vec<Value> = names
                    .iter()
                    .map(|n| json!({"name": n, "singularName": "", "namespaced": true, "kind": "MetricValueList", "verbs": ["get"]}))
                    .collect();
                (
                    200,
                    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "custom.metrics.k8s.io/v1beta2", "resources": resources}),
                )
            }
            ["apis", "external.metrics.k8s.io", "v1beta1"] => {
                let mut names: Vec<&String> = values.external.keys().map(|(_, m)| m).collect();
                names.sort();
                names.dedup();
                let resources: Vec<Value> = names
                    .iter()
                    .map(|n| json!({"name": n, "singularName": "", "namespaced": true, "kind": "ExternalMetricValueList", "verbs": ["get"]}))
                    .collect();
                (
                    200,
                    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "external.metrics.k8s.io/v1beta1", "resources": resources}),
                )
            }
            [
                "apis",
                "custom.metrics.k8s.io",
                "v1beta2",
                "namespaces",
                ns,
                "pods",
                "*",
                metric,
            ] => {
                let items: Vec<Value> = values
                    .pods
                    .iter()
                    .filter(|((n, _), _)| n == ns)
                    .filter_map(|((_, pod), m)| {
                        Some(json!({
                            "describedObject": {"kind": "Pod", "namespace": ns, "name": pod, "apiVersion": "/v1"},
                            "metric": {"name": metric},
                            "timestamp": now(), "windowSeconds": 60, "value": m.get(*metric)?,
                        }))
                    })
                    .collect();
                (
                    200,
                    json!({"kind": "MetricValueList", "apiVersion": "custom.metrics.k8s.io/v1beta2", "metadata": {}, "items": items}),
                )
            }
            [
                "apis",
                "custom.metrics.k8s.io",
                "v1beta2",
                "namespaces",
                ns,
                resource,
                name,
                metric,
            ] => {
                let key = (
                    ns.to_string(),
                    resource.to_string(),
                    name.to_string(),
                    metric.to_string(),
                );
                match values.objects.get(&key) {
                    Some(v) => (
                        200,
                        json!({"kind": "MetricValueList", "apiVersion": "custom.metrics.k8s.io/v1beta2", "metadata": {}, "items": [{
                            "describedObject": {"kind": resource, "namespace": ns, "name": name},
                            "metric": {"name": metric},
                            "timestamp": now(), "windowSeconds": 60, "value": v,
                        }]}),
                    ),
                    None => status(
                        404,
                        &format!(
                            "the server could not find the metric {metric} for {resource} {name}"
                        ),
                    ),
                }
            }
            [
                "apis",
                "external.metrics.k8s.io",
                "v1beta1",
                "namespaces",
                ns,
                metric,
            ] => {
                let selector = query_param(query, "labelSelector");
                let items: Vec<Value> = values
                    .external
                    .get(&(ns.to_string(), metric.to_string()))
                    .into_iter()
                    .flatten()
                    .filter(|(labels, _)| matches(labels, &selector))
                    .map(|(labels, v)| json!({"metricName": metric, "metricLabels": labels, "timestamp": now(), "value": v}))
                    .collect();
                (
                    200,
                    json!({"kind": "ExternalMetricValueList", "apiVersion": "external.metrics.k8s.io/v1beta1", "metadata": {}, "items": items}),
                )
            }
            _ => status(404, "the server could not find the requested resource"),
        }
    }
}

impl MetricsAdapter {
    /// Starts an adapter whose certificate names `names` (its Service's `NAME.NAMESPACE.svc`),
    /// accepting only the front proxy's certificates, signed by `front_proxy_ca_pem`.
    pub async fn start(names: &[&str], front_proxy_ca_pem: &str) -> Result<MetricsAdapter> {
        let ca = capstan_pki::Ca::generate()?;
        let mut all: Vec<String> = vec!["127.0.0.1".into()];
        all.extend(names.iter().map(|n| n.to_string()));
        let serving = ca.serving("metrics-adapter", &all)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in capstan_pki::tls::certs(front_proxy_ca_pem)? {
            roots.add(c)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()?;
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                capstan_pki::tls::certs(&serving.cert_pem)?,
                capstan_pki::tls::private_key(&serving.key_pem)?,
            )?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let state = Arc::new(State::default());
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    // requestheader-allowed-names: only the front proxy may say who asks.
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| capstan_pki::der::subject(c.as_ref()));
                    let trusted = peer.is_some_and(|p| p.common_name == "front-proxy-client");
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                let (code, body) = if !trusted {
                                    status(401, "Unauthorized")
                                } else {
                                    let header = |n: &str| -> Vec<String> {
                                        req.headers()
                                            .get_all(n)
                                            .iter()
                                            .filter_map(|v| v.to_str().ok().map(str::to_string))
                                            .collect()
                                    };
                                    let path = req.uri().path().to_string();
                                    let query = req.uri().query().unwrap_or_default().to_string();
                                    state.seen.lock().unwrap().push(Seen {
                                        path: req.uri().to_string(),
                                        user: header("x-remote-user").join(","),
                                        groups: header("x-remote-group"),
                                    });
                                    state.answer(&path, &query)
                                };
                                let response = hyper::Response::builder()
                                    .status(code)
                                    .header("content-type", "application/json")
                                    .body(Full::new(bytes::Bytes::from(body.to_string())))
                                    .expect("a response");
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(MetricsAdapter {
            addr,
            ca_bundle: base64::engine::general_purpose::STANDARD.encode(ca.cert_pem()),
            state,
            task,
        })
    }

    /// The EndpointSlice of its Service (`monitoring/metrics-adapter`): this server on 127.0.0.1.
    pub fn endpoint_slice(&self) -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "metrics-adapter-1", "namespace": "monitoring",
                "labels": {"kubernetes.io/service-name": "metrics-adapter"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": self.addr.port(), "protocol": "TCP"}],
        })
    }

    /// An APIService of `group/version` served by this adapter's Service.
    pub fn api_service(&self, group: &str, version: &str, priority: i64) -> Value {
        json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": format!("{version}.{group}")},
            "spec": {
                "group": group, "version": version,
                "groupPriorityMinimum": 100, "versionPriority": priority,
                "service": {"namespace": "monitoring", "name": "metrics-adapter", "port": 443},
                "caBundle": self.ca_bundle,
            },
        })
    }

    /// Registers the adapter with the cluster `client` reaches, as an adapter's chart does: the
    /// namespace `monitoring`, the Service `metrics-adapter` with this server as its endpoint,
    /// and the APIServices `v1beta2.custom.metrics.k8s.io` and
    /// `v1beta1.external.metrics.k8s.io`. (It does not wait for them to become Available.)
    pub async fn register(&self, client: &kube::Client) -> Result<()> {
        let port = self.addr.port();
        let objects = [
            (
                "/api/v1/namespaces",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring"}}),
            ),
            (
                "/api/v1/namespaces/monitoring/services",
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "metrics-adapter"},
                       "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}}),
            ),
            (
                "/apis/discovery.k8s.io/v1/namespaces/monitoring/endpointslices",
                self.endpoint_slice(),
            ),
            (
                "/apis/apiregistration.k8s.io/v1/apiservices",
                self.api_service("custom.metrics.k8s.io", "v1beta2", 200),
            ),
            (
                "/apis/apiregistration.k8s.io/v1/apiservices",
                self.api_service("external.metrics.k8s.io", "v1beta1", 100),
            ),
        ];
        for (path, obj) in objects {
            let req = hyper::Request::post(path)
                .header("content-type", "application/json")
                .body(obj.to_string().into_bytes())?;
            match client.request_text(req).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => anyhow::bail!("creating {path}: {e}"),
            }
        }
        Ok(())
    }

    /// Pod `pod`'s value of `metric` (a quantity: "30", "500m").
    pub fn set_pod(&self, namespace: &str, pod: &str, metric: &str, value: &str) {
        self.state
            .values
            .lock()
            .unwrap()
            .pods
            .entry((namespace.into(), pod.into()))
            .or_default()
            .insert(metric.into(), value.into());
    }

    /// An object's value of `metric`; `resource` as the path names it (`services`,
    /// `deployments.apps`).
    pub fn set_object(
        &self,
        namespace: &str,
        resource: &str,
        name: &str,
        metric: &str,
        value: &str,
    ) {
        self.state.values.lock().unwrap().objects.insert(
            (
                namespace.into(),
                resource.into(),
                name.into(),
                metric.into(),
            ),
            value.into(),
        );
    }

    /// The series of external metric `metric`: (labels, value) each.
    pub fn set_external(&self, namespace: &str, metric: &str, series: &[(&[(&str, &str)], &str)]) {
        let series = series
            .iter()
            .map(|(labels, v)| {
                (
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    v.to_string(),
                )
            })
            .collect();
        self.state
            .values
            .lock()
            .unwrap()
            .external
            .insert((namespace.into(), metric.into()), series);
    }

    /// The requests answered so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_series_are_filtered_by_equality_selectors() {
        let labels: BTreeMap<String, String> = [("queue".to_string(), "jobs".to_string())].into();
        assert!(matches(&labels, ""));
        assert!(matches(&labels, "queue=jobs"));
        assert!(matches(&labels, "queue==jobs"));
        assert!(!matches(&labels, "queue=other"));
        assert!(matches(&labels, "queue"));
        assert_eq!(
            query_param("a=1&labelSelector=queue%3Djobs", "labelSelector"),
            "queue=jobs"
        );
    }
}
