//! A webhook server for tests and benchmarks: HTTPS on 127.0.0.1 with a certificate from its
//! own CA (its `caBundle`), answering each POSTed JSON body with what its handler returns —
//! AdmissionReviews and ConversionReviews alike — and counting the calls. [`allow`], [`deny`]
//! and [`patch`] build admission answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// What the server answers: (request path, request body) → response body.
pub type Handler = Arc<dyn Fn(&str, Value) -> Value + Send + Sync>;

/// A running webhook server; stopped when dropped.
pub struct WebhookServer {
    pub addr: SocketAddr,
    /// Base64 of the PEM of the CA that signed the server's certificate.
    pub ca_bundle: String,
    calls: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for WebhookServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookServer({})", self.addr)
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebhookServer {
    /// Starts a server whose certificate names 127.0.0.1, localhost and `names` (a Service's
    /// `NAME.NAMESPACE.svc`).
    pub async fn start(names: &[&str], handler: Handler) -> Result<WebhookServer> {
        let ca = capstan_pki::Ca::generate()?;
        let mut all: Vec<String> = vec!["127.0.0.1".into(), "localhost".into()];
        all.extend(names.iter().map(|n| n.to_string()));
        let serving = ca.serving("webhook", &all)?;
        let tls = capstan_pki::tls::server_config(ca.cert_pem(), &serving)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let (c, d) = (calls.clone(), delay_ms.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, handler, calls, delay) =
                    (acceptor.clone(), handler.clone(), c.clone(), d.clone());
                // Small answers both ways: no Nagle delays waiting on delayed ACKs.
                let _ = tcp.set_nodelay(true);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (handler, calls, delay) =
                                (handler.clone(), calls.clone(), delay.clone());
                            async move {
                                let path = req.uri().path().to_string();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                calls.fetch_add(1, Ordering::SeqCst);
                                let wait = delay.load(Ordering::SeqCst);
                                if wait > 0 {
                                    tokio::time::sleep(Duration::from_millis(wait)).await;
                                }
                                let request: Value =
                                    serde_json::from_slice(&body).unwrap_or(Value::Null);
                                let answer = handler(&path, request);
                                let response = hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(bytes::Bytes::from(answer.to_string())))
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
        Ok(WebhookServer {
            addr,
            ca_bundle: base64::engine::general_purpose::STANDARD.encode(ca.cert_pem()),
            calls,
            delay_ms,
            task,
        })
    }

    /// `https://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// A `clientConfig` for `path` on this server by URL.
    pub fn client_config(&self, path: &str) -> Value {
        json!({"url": self.url(path), "caBundle": self.ca_bundle})
    }

    /// Requests answered so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Every answer from now on waits this long first (to test timeouts).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

fn response(review: &Value, response: Value) -> Value {
    let mut r = response;
    r["uid"] = review["request"]["uid"].clone();
    json!({"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": r})
}

/// An AdmissionReview answer allowing the request, with `warnings`.
pub fn allow(review: &Value, warnings: &[&str]) -> Value {
    let mut r = json!({"allowed": true});
    if !warnings.is_empty() {
        r["warnings"] = json!(warnings);
    }
    response(review, r)
}

/// An AdmissionReview answer refusing the request with `code` and `message`.
pub fn deny(review: &Value, code: u16, message: &str) -> Value {
    response(
        review,
        json!({"allowed": false, "status": {"code": code, "message": message}}),
    )
}

/// An AdmissionReview answer allowing the request with a JSON patch.
pub fn patch(review: &Value, operations: Value) -> Value {
    let encoded = base64::engine::general_purpose::STANDARD.encode(operations.to_string());
    response(
        review,
        json!({"allowed": true, "patchType": "JSONPatch", "patch": encoded}),
    )
}
