//! The agent's main loop: registers the node and keeps it alive, watches only the pods bound
//! to it (fieldSelector spec.nodeName), gives each pod a worker, and runs the PLEG — a relist
//! of the runtime every second that wakes the worker of any pod whose sandboxes or containers
//! changed, and removes what belongs to no pod (pods deleted while the agent was down).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};

use crate::node::{self, NodeConfig};
use crate::pod::env::KubeApi;
use crate::pod::plan::Observed;
use crate::pod::worker::{Context, PodWorker, observe};
use crate::runtime::{Container, ContainerState, POD_UID, Runtime, Sandbox, SandboxState};
use crate::server::Metrics;

pub const PLEG_PERIOD: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("registering node {node}: {source}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
}

struct Handle {
    pod: watch::Sender<Option<Arc<Pod>>>,
    poke: Arc<Notify>,
    /// The fingerprint of the worker's last look at the runtime.
    seen: crate::pod::worker::Seen,
    task: tokio::task::JoinHandle<()>,
}

/// A node agent on runtime `R`.
pub struct Agent<R> {
    client: kube::Client,
    runtime: Arc<R>,
    node: NodeConfig,
    log_root: PathBuf,
    runtime_name: String,
    metrics: Metrics,
    listener: Option<tokio::net::TcpListener>,
    /// HTTPS with client certificates from this configuration's CA (and bearer tokens the
    /// API server vouches for); plain HTTP without one.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// How often resource use is sampled for `/stats/summary`.
    stats_interval: std::time::Duration,
}

impl<R> std::fmt::Debug for Agent<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.node.name)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Agent<R> {
    /// `runtime_name` is the containerID scheme (`process`, `containerd`); pod logs go under
    /// `log_root`.
    pub fn new(
        client: kube::Client,
        runtime: Arc<R>,
        node: NodeConfig,
        log_root: PathBuf,
        runtime_name: &str,
    ) -> Self {
        Agent {
            client,
            runtime,
            node,
            log_root,
            runtime_name: runtime_name.to_string(),
            metrics: Metrics::new().expect("the agent's metrics are well-formed"),
            listener: None,
            tls: None,
            stats_interval: crate::stats::DEFAULT_INTERVAL,
        }
    }

    /// Samples resource use every `interval` (the kubelet's housekeeping period, 10 s); zero
    /// turns sampling off (`/stats/summary` answers 503, metrics.k8s.io has nothing of this
    /// node).
    pub fn with_stats_interval(mut self, interval: std::time::Duration) -> Self {
        self.stats_interval = if interval.is_zero() {
            interval
        } else {
            interval.max(std::time::Duration::from_millis(100))
        };
        self
    }

    /// Reports through `metrics` (whose registry may hold other components' too: the
    /// proxy's, cluster DNS's) instead of its own.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Serves logs and metrics on `listener` (whose port the Node reports).
    pub fn serve(mut self, listener: tokio::net::TcpListener) -> Self {
        if let Ok(addr) = listener.local_addr() {
            self.node.port = addr.port();
        }
        self.listener = Some(listener);
        self
    }

    /// Serves over TLS with `tls` (its client CA verifies client certificates), every request
    /// but /healthz authenticated and authorized ([`crate::server_auth`]).
    pub fn with_tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Registers the node, then runs until dropped.
    pub async fn run(mut self) -> Result<(), AgentError> {
        let stats = crate::stats::Latest::default();
        let _stop_stats = (!self.stats_interval.is_zero()).then(|| {
            AbortOnDrop(tokio::spawn(crate::stats::run(
                self.runtime.clone(),
                self.node.name.clone(),
                self.stats_interval,
                stats.clone(),
            )))
        });
        let _stop_server = self.listener.take().map(|l| {
            let app = crate::server::router(self.runtime.clone(), self.metrics.clone(), stats);
            let Some(tls) = self.tls.clone() else {
                tracing::warn!("the agent serves plain HTTP: logs, exec and metrics are open to anyone who reaches its port");
                return AbortOnDrop(tokio::spawn(async move {
                    // Streams (exec, attach, port-forward) write small frames: no Nagle delays.
                    let l = axum::serve::ListenerExt::tap_io(l, |tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    if let Err(e) = axum::serve(l, app).await {
                        tracing::error!(error = %e, "the agent's HTTP server failed");
                    }
                }));
            };
            let auth = crate::server_auth::AgentAuth::new(self.client.clone(), &self.node.name);
            let app = app.layer(axum::middleware::from_fn_with_state(
                auth,
                crate::server_auth::guard,
            ));
            AbortOnDrop(tokio::spawn(async move {
                let served = match crate::server_tls::TlsListener::new(l, tls) {
                    Ok(l) => {
                        let app =
                            app.into_make_service_with_connect_info::<crate::server_tls::Peer>();
                        axum::serve(l, app).await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = served {
                    tracing::error!(error = %e, "the agent's HTTPS server failed");
                }
            }))
        });
        let register_failed = |source| AgentError::Register {
            node: self.node.name.clone(),
            source,
        };
        node::register(&self.client, &self.node)
            .await
            .map_err(register_failed)?;
        // The status is posted once before pods are taken on, then kept by the heartbeat.
        let mut status =
            node::StatusPoster::new(self.client.clone(), self.node.clone(), self.runtime.clone());
        status.tick().await.map_err(register_failed)?;
        let heartbeat = tokio::spawn(node::heartbeat(status));
        let _stop_heartbeat = AbortOnDrop(heartbeat);
        let _stop_reclaimer = AbortOnDrop(tokio::spawn(crate::local_volumes::run(
            self.client.clone(),
            node::local_path_dir(&self.node.root_dir).into(),
        )));
        let ctx = Arc::new(Context {
            runtime: self.runtime.clone(),
            api: KubeApi {
                client: self.client.clone(),
            },
            node: self.node.clone(),
            log_root: self.log_root.clone(),
            runtime_name: self.runtime_name.clone(),
            metrics: Some(self.metrics.clone()),
            recorder: crate::events::Recorder::spawn(
                &self.node.name,
                crate::events::KubeSink(self.client.clone()),
                Arc::new(jiff::Timestamp::now),
            ),
            memory_capacity: {
                let info = rustix::system::sysinfo();
                (info.totalram as u128 * info.mem_unit as u128) as i64
            },
        });
        let _stop_oom_watcher =
            crate::oom::watch(ctx.recorder.clone(), self.node.name.clone()).map(AbortOnDrop);
        let pods: Api<Pod> = Api::all(self.client.clone());
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node.name));
        let mut events = watcher(pods, cfg).default_backoff().boxed();
        let mut workers: HashMap<String, Handle> = HashMap::new();
        let mut listed: Option<HashSet<String>> = None;
        let mut synced = false;
        let mut pleg = tokio::time::interval(PLEG_PERIOD);
        pleg.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_relist: HashMap<String, String> = HashMap::new();
        let mut cleaning: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(watcher::Event::Init)) => listed = Some(HashSet::new()),
                    Some(Ok(watcher::Event::InitApply(p))) => {
                        if let (Some(seen), Some(uid)) = (listed.as_mut(), p.metadata.uid.clone()) {
                            seen.insert(uid);
                        }
                        self.upsert(&ctx, &mut workers, p);
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        let seen = listed.take().unwrap_or_default();
                        for (uid, h) in &workers {
                            if !seen.contains(uid) {
                                h.pod.send_replace(None);
                            }
                        }
                        synced = true;
                    }
                    Some(Ok(watcher::Event::Apply(p))) => self.upsert(&ctx, &mut workers, p),
                    Some(Ok(watcher::Event::Delete(p))) => {
                        if let Some(h) = p.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                            h.pod.send_replace(None);
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch error"),
                    None => return Ok(()),
                },
                _ = pleg.tick() => {
                    workers.retain(|_, h| !h.task.is_finished());
                    let timer = self.metrics.relist.start_timer();
                    let relisted = self.relist().await;
                    timer.observe_duration();
                    let snapshot = match relisted {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "runtime relist failed");
                            continue;
                        }
                    };
                    // A change the worker has already seen (its own actions, looked at after
                    // acting) is no news to it.
                    for (uid, fingerprint) in &snapshot {
                        if last_relist.get(uid) != Some(fingerprint)
                            && let Some(h) = workers.get(uid)
                            && !h.seen.is(fingerprint)
                        {
                            h.poke.notify_one();
                        }
                    }
                    // Sandboxes of pods this node no longer has (deleted while we were down).
                    if synced {
                        for uid in snapshot.keys() {
                            if !workers.contains_key(uid) && cleaning.insert(uid.clone()) {
                                let (rt, uid) = (self.runtime.clone(), uid.clone());
                                let log_root = self.log_root.clone();
                                tokio::spawn(async move {
                                    remove_orphan(&*rt, &uid, &log_root).await;
                                });
                            }
                        }
                        cleaning.retain(|uid| snapshot.contains_key(uid));
                    }
                    last_relist = snapshot;
                }
            }
        }
    }

    fn upsert(
        &self,
        ctx: &Arc<Context<R, KubeApi>>,
        workers: &mut HashMap<String, Handle>,
        pod: Pod,
    ) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let pod = Arc::new(pod);
        if let Some(h) = workers.get(&uid)
            && !h.task.is_finished()
        {
            h.pod.send_replace(Some(pod));
            return;
        }
        let (tx, rx) = watch::channel(Some(pod));
        let poke = Arc::new(Notify::new());
        let worker = PodWorker::new(ctx.clone(), uid.clone());
        let seen = worker.seen();
        let task = tokio::spawn(worker.run(rx, poke.clone()));
        workers.insert(
            uid,
            Handle {
                pod: tx,
                poke,
                seen,
                task,
            },
        );
    }

    /// pod uid → a fingerprint of its sandboxes' and containers' states (and exit reasons: the
    /// runtime may amend one, such as a late OOMKilled).
    async fn relist(&self) -> Result<HashMap<String, String>, crate::runtime::RuntimeError> {
        let sandboxes = self.runtime.list_sandboxes().await?;
        let containers = self.runtime.list_containers().await?;
        self.metrics.pods.set(
            sandboxes
                .iter()
                .filter(|s| s.state == SandboxState::Ready)
                .count() as i64,
        );
        for state in [
            ContainerState::Created,
            ContainerState::Running,
            ContainerState::Exited,
            ContainerState::Unknown,
        ] {
            self.metrics
                .containers
                .with_label_values(&[&format!("{state:?}").to_lowercase()])
                .set(containers.iter().filter(|c| c.state == state).count() as i64);
        }
        Ok(fingerprints(sandboxes, containers))
    }
}

/// pod uid → [`Observed::fingerprint`] of what the runtime has of it. Sandboxes not made for a
/// pod (another client of the same runtime) are not ours.
fn fingerprints(sandboxes: Vec<Sandbox>, containers: Vec<Container>) -> HashMap<String, String> {
    let mut pods: HashMap<String, Observed> = HashMap::new();
    let mut uid_of: HashMap<String, String> = HashMap::new();
    for sb in sandboxes {
        let Some(uid) = sb.config.labels.get(POD_UID).cloned() else {
            continue;
        };
        uid_of.insert(sb.id.clone(), uid.clone());
        pods.entry(uid).or_default().sandboxes.push(sb);
    }
    for c in containers {
        if let Some(uid) = uid_of.get(&c.sandbox_id) {
            pods.entry(uid.clone()).or_default().containers.push(c);
        }
    }
    pods.into_iter()
        .map(|(uid, obs)| (uid, obs.fingerprint()))
        .collect()
}

/// Stops and removes everything of a pod the API no longer has.
async fn remove_orphan<R: Runtime>(rt: &R, uid: &str, log_root: &std::path::Path) {
    let Ok(obs) = observe(rt, uid).await else {
        return;
    };
    tracing::info!(pod = %uid, sandboxes = obs.sandboxes.len(), "removing the sandboxes of a pod this node no longer runs");
    for c in obs
        .containers
        .iter()
        .filter(|c| c.state == ContainerState::Running)
    {
        if let Err(e) = rt.stop_container(&c.id, Duration::from_secs(2)).await {
            tracing::warn!(pod = %uid, error = %e, "stopping an orphaned container failed");
        }
    }
    for sb in &obs.sandboxes {
        if sb.state == SandboxState::Ready {
            let _ = rt.stop_sandbox(&sb.id).await;
        }
        if let Err(e) = rt.remove_sandbox(&sb.id).await {
            tracing::warn!(pod = %uid, error = %e, "removing an orphaned sandbox failed");
        }
        let dir = sb.config.log_directory.clone();
        if dir.starts_with(log_root) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::{ContainerConfig, SandboxConfig};

    async fn pod(rt: &FakeRuntime, uid: &str, containers: &[&str]) -> Vec<String> {
        let sb = rt
            .run_sandbox(&SandboxConfig {
                name: uid.into(),
                uid: uid.into(),
                labels: [(POD_UID.to_string(), uid.to_string())].into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut ids = Vec::new();
        for name in containers {
            let c = rt
                .create_container(
                    &sb.id,
                    &ContainerConfig {
                        name: name.to_string(),
                        image: "busybox:1".into(),
                        command: vec!["sleep".into()],
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            rt.start_container(&c.id).await.unwrap();
            ids.push(c.id);
        }
        ids
    }

    /// The PLEG's fingerprint of a pod, from the node's lists, is the one its worker computes
    /// from its own look: so a worker is not poked for what it has seen, and is for the rest.
    #[tokio::test(start_paused = true)]
    async fn the_plegs_fingerprint_of_a_pod_is_its_workers() {
        let rt = FakeRuntime::new();
        pod(&rt, "a", &["app", "sidecar"]).await;
        let b = pod(&rt, "b", &["app"]).await;
        // Not a pod's: no fingerprint.
        rt.run_sandbox(&SandboxConfig::default()).await.unwrap();
        let relisted = || async {
            fingerprints(
                rt.list_sandboxes().await.unwrap(),
                rt.list_containers().await.unwrap(),
            )
        };
        let before = relisted().await;
        assert_eq!(before.len(), 2);
        for uid in ["a", "b"] {
            let own = observe(&rt, uid).await.unwrap().fingerprint();
            assert_eq!(before[uid], own, "pod {uid}");
        }

        rt.exit(&b[0], 1, false);
        let after = relisted().await;
        assert_eq!(after["a"], before["a"]);
        assert_ne!(
            after["b"], before["b"],
            "an exit changes the pod's fingerprint"
        );
        assert_eq!(after["b"], observe(&rt, "b").await.unwrap().fingerprint());
    }
}
