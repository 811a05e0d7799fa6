//! The ingress proxy: HTTP(S) from outside the cluster into Services, routed by the
//! networking.k8s.io/v1 Ingresses of one class — what Traefik is to k3s and ingress-nginx to
//! many Kubernetes clusters, built in.
//!
//! Start at [`start`]: it binds the HTTP and HTTPS listeners, watches Ingresses, Services,
//! EndpointSlices and TLS Secrets ([`watch`]) into immutable snapshots ([`state`]: the
//! [`routes`] table, each backend's ready endpoints, the certificates), answers each request
//! from the snapshot current when it arrived ([`proxy`], over kept-alive [`upstream`]
//! connections), picks certificates by SNI ([`tls`]), publishes its addresses in the
//! Ingresses' status ([`status`]) and counts per route ([`metrics`]). A new snapshot replaces
//! the old without closing a listener or a connection, so configuration changes drop nothing
//! in flight.

pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod state;
pub mod status;
mod tls;
mod upstream;
mod watch;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

pub use metrics::IngressMetrics;
use proxy::Scheme;
use routes::ClassFilter;
use state::{Objects, Resolved, Snapshot};

/// The class `capstan up` creates (the default class) and the proxy serves unless told
/// otherwise.
pub const DEFAULT_CLASS: &str = "capstan";
/// The `spec.controller` of the IngressClasses this proxy implements.
pub const CONTROLLER: &str = "capstan.dev/ingress";

/// The source component of the proxy's Events.
pub const EVENT_SOURCE: &str = "capstan-ingress";

/// How long a client has to send a request's headers, and to finish a TLS handshake.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// The plain HTTP listener (None: none).
    pub http: Option<SocketAddr>,
    /// The HTTPS listener (None: none).
    pub https: Option<SocketAddr>,
    /// The IngressClass whose Ingresses are served.
    pub class: String,
    /// Also serve Ingresses that name no class.
    pub without_class: bool,
    /// The addresses written into the Ingresses' `status.loadBalancer` (empty: none written).
    pub publish_addresses: Vec<IpAddr>,
    /// How long connecting to an endpoint may take before the next is tried.
    pub connect_timeout: Duration,
    /// How long an endpoint may take to send a response's headers (504 after).
    pub response_timeout: Duration,
    /// How often the Ingresses' status is checked again (and written if it differs).
    pub status_resync: Duration,
    /// Threads serving connections, each a single-threaded runtime of its own (nginx's
    /// worker processes).
    pub workers: usize,
}

impl IngressConfig {
    /// ingress-nginx's defaults: connect 5 s, read 60 s, a worker per core; the `capstan`
    /// class.
    pub fn new(http: Option<SocketAddr>, https: Option<SocketAddr>) -> IngressConfig {
        IngressConfig {
            http,
            https,
            class: DEFAULT_CLASS.to_string(),
            without_class: false,
            publish_addresses: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            status_resync: Duration::from_secs(30),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("listening on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTPS listener's TLS configuration: {0}")]
    Tls(String),
}

/// What requests share: the configuration, the current snapshot, the connection pool.
#[derive(Debug)]
pub struct Shared {
    config: IngressConfig,
    filter: ClassFilter,
    snapshot: RwLock<Arc<Snapshot>>,
    synced: AtomicBool,
    metrics: IngressMetrics,
    pool: Arc<upstream::Pool>,
    events: crate::events::Recorder,
}

impl Shared {
    fn new(
        config: IngressConfig,
        metrics: IngressMetrics,
        events: crate::events::Recorder,
    ) -> Shared {
        let filter = ClassFilter {
            class: config.class.clone(),
            unclassed: config.without_class,
        };
        Shared {
            config,
            filter,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            synced: AtomicBool::new(false),
            metrics,
            pool: Arc::default(),
            events,
        }
    }

    /// The snapshot a request starts with.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Builds a snapshot of `objs` and makes it the current one.
    fn rebuild(&self, objs: &Objects) {
        let next = Arc::new(Snapshot::build(objs, &self.filter));
        let prev = self.snapshot();
        for (secret, why) in &next.cert_errors {
            if prev.cert_errors.get(secret) != Some(why) {
                tracing::warn!(secret = %format!("{}/{}", secret.0, secret.1), %why, "ingress: a TLS section's Secret cannot serve; its hosts get the default certificate");
                self.tls_warning(objs, secret, why);
            }
        }
        let live: HashSet<SocketAddr> = next
            .table
            .backends()
            .filter_map(|b| match next.resolve(b) {
                Resolved::Ready(u) => Some(u.addrs.clone()),
                Resolved::Unavailable(_) => None,
            })
            .flatten()
            .collect();
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = next;
        self.pool.retain(|a| live.contains(a));
        self.metrics.reloads.inc();
        if !self.synced.swap(true, Ordering::AcqRel) {
            tracing::info!(class = %self.config.class, "ingress: synced; serving");
        }
    }
}

impl Shared {
    /// A Warning Event on each Ingress of the class whose TLS section names `secret`.
    fn tls_warning(&self, objs: &Objects, secret: &state::Key, why: &str) {
        let naming = objs.ingresses.iter().filter(|((ns, _), ing)| {
            *ns == secret.0
                && self.filter.accepts(ing)
                && ing
                    .spec
                    .iter()
                    .flat_map(|s| s.tls.iter().flatten())
                    .any(|t| t.secret_name.as_deref() == Some(secret.1.as_str()))
        });
        for ((ns, name), ing) in naming {
            let object = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some("Ingress".into()),
                namespace: Some(ns.clone()),
                name: Some(name.clone()),
                uid: ing.metadata.uid.clone(),
                resource_version: ing.metadata.resource_version.clone(),
                field_path: None,
            };
            self.events.object_event(
                object,
                crate::events::EventType::Warning,
                "InvalidTLSSecret",
                format!(
                    "TLS Secret {ns}/{} cannot serve ({why}); its hosts get the proxy's default certificate",
                    secret.1
                ),
            );
        }
    }
}

/// The running proxy; dropping it stops it.
#[derive(Debug)]
pub struct IngressProxy {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    _tasks: Vec<crate::agent::AbortOnDrop>,
    /// Dropping these stops the workers (each drops its runtime, and with it its connections).
    _workers: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl IngressProxy {
    /// Whether the first lists are in (before that every request gets a 503).
    pub fn synced(&self) -> bool {
        self.shared.is_synced()
    }
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, IngressError> {
    let l = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| IngressError::Bind { addr, source })?;
    Ok(l)
}

/// Binds the listeners and starts watching and serving.
pub async fn start(
    client: kube::Client,
    config: IngressConfig,
    metrics: IngressMetrics,
) -> Result<IngressProxy, IngressError> {
    let http = config.http.map(bind).transpose()?;
    let https = config.https.map(bind).transpose()?;
    let local = |l: &Option<std::net::TcpListener>, asked: Option<SocketAddr>| {
        l.as_ref()
            .map(|l| {
                l.local_addr().map_err(|source| IngressError::Bind {
                    addr: asked.unwrap_or(([0, 0, 0, 0], 0).into()),
                    source,
                })
            })
            .transpose()
    };
    let (http_addr, https_addr) = (local(&http, config.http)?, local(&https, config.https)?);
    let events = crate::events::Recorder::spawn_as(
        EVENT_SOURCE,
        "",
        crate::events::KubeSink(client.clone()),
        Arc::new(jiff::Timestamp::now),
    );
    let shared = Arc::new(Shared::new(config, metrics, events));
    let tasks = vec![crate::agent::AbortOnDrop(tokio::spawn(watch::run(
        client,
        shared.clone(),
    )))];
    let acceptor = match https {
        Some(_) => {
            let tls = tls::server_config(shared.clone()).map_err(IngressError::Tls)?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
        }
        None => None,
    };
    let mut workers = Vec::new();
    for i in 0..shared.config.workers.max(1) {
        let clone = |l: &Option<std::net::TcpListener>, addr: Option<SocketAddr>| {
            l.as_ref()
                .map(|l| {
                    l.try_clone().map_err(|source| IngressError::Bind {
                        addr: addr.unwrap_or(([0, 0, 0, 0], 0).into()),
                        source,
                    })
                })
                .transpose()
        };
        let listeners = (clone(&http, http_addr)?, clone(&https, https_addr)?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (shared, acceptor) = (shared.clone(), acceptor.clone());
        std::thread::Builder::new()
            .name(format!("ingress-{i}"))
            .spawn(move || worker(listeners, shared, acceptor, stopped))
            .map_err(|source| IngressError::Bind {
                addr: http_addr.or(https_addr).unwrap_or(([0, 0, 0, 0], 0).into()),
                source,
            })?;
        workers.push(stop);
    }
    tracing::info!(http = ?http_addr, https = ?https_addr, class = %shared.config.class, workers = workers.len(), "ingress: listening");
    Ok(IngressProxy {
        http: http_addr,
        https: https_addr,
        shared,
        _tasks: tasks,
        _workers: workers,
    })
}

/// One worker: a single-threaded runtime accepting on both listeners and serving each of its
/// connections to the end, upstream connection included — no task of a request ever waits
/// on another thread (as nginx's worker processes), until `stopped`.
fn worker(
    (http, https): (Option<std::net::TcpListener>, Option<std::net::TcpListener>),
    shared: Arc<Shared>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "ingress: a worker's runtime did not start");
            return;
        }
    };
    rt.block_on(async move {
        let listen = |l: Option<std::net::TcpListener>| l.map(TcpListener::from_std).transpose();
        let (http, https) = match (listen(http), listen(https)) {
            (Ok(h), Ok(s)) => (h, s),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "ingress: a worker could not register its listeners");
                return;
            }
        };
        let plain = async {
            match http {
                Some(l) => accept(l, shared.clone(), None).await,
                None => std::future::pending().await,
            }
        };
        let secure = async {
            match (https, acceptor) {
                (Some(l), Some(a)) => accept(l, shared.clone(), Some(a)).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = plain => {}
            _ = secure => {}
            _ = stopped => {}
        }
    });
}

/// Accepts connections until aborted; each is served in its own task (TLS handshakes too).
async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "ingress: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Ok(local) = tcp.local_addr() else {
            continue;
        };
        let (shared, tls) = (shared.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => serve(TokioIo::new(tcp), shared, peer, local, Scheme::Http).await,
                Some(acceptor) => {
                    match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve(TokioIo::new(stream), shared, peer, local, Scheme::Https).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "ingress: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "ingress: TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves one connection: HTTP/1.1 (with upgrades) or HTTP/2, whichever the client speaks.
async fn serve<I>(io: I, shared: Arc<Shared>, peer: SocketAddr, local: SocketAddr, scheme: Scheme)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(proxy::handle(shared, req, peer, local, scheme).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT);
    if let Err(e) = builder.serve_connection_with_upgrades(io, svc).await {
        tracing::debug!(%peer, error = %e, "ingress: connection ended with an error");
    }
}
