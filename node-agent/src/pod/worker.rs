//! One pod's worker (kubelet's podWorkers + SyncPod): woken by a new version of the pod, by the
//! PLEG seeing its containers change, or by a back-off expiring, it asks [`plan`] what to do,
//! does it through the runtime, and writes the pod's status. When the pod is deleted it stops
//! everything (graceful, then killed), confirms the deletion to the API server, and removes
//! the sandbox, the containers and the pod's log directory.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use tokio::sync::{Notify, watch};

use super::env::{self, Lookup};
use super::plan::{self, Action, Backoffs, Kind, Observed};
use super::probe::{Health, Prober};
use super::status::{self, Waiting};
use super::{resources, volumes};
use crate::events::{EventType, Recorder, container_path, reason};
use crate::node::NodeConfig;
use crate::runtime::{
    CONTAINER_NAME, ContainerConfig, ContainerState, POD_NAME, POD_NAMESPACE, POD_UID, PidSharing,
    PortMapping, Runtime, RuntimeError, SandboxConfig, SandboxState,
};

/// What the worker reads from and writes to the API server: kube's client in the agent
/// ([`env::KubeApi`]), memory in the worker's tests.
pub trait PodApi: Lookup {
    /// Merge-patches the pod's status, guarded by its uid; a pod already gone is no error.
    /// The pod's resourceVersion after the write (None when it was gone).
    fn write_status(
        &self,
        pod: &Pod,
        uid: &str,
        status: &PodStatus,
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;
    /// Tells the API server the pod is stopped: delete with grace 0 for this uid only; a pod
    /// already gone (or replaced by another uid) is no error.
    fn confirm_deletion(
        &self,
        pod: &Pod,
        uid: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

impl PodApi for env::KubeApi {
    async fn write_status(
        &self,
        pod: &Pod,
        uid: &str,
        status: &PodStatus,
    ) -> Result<Option<String>, String> {
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        match api
            .patch_status(
                pod.metadata.name.as_deref().unwrap_or_default(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"uid": uid}, "status": status})),
            )
            .await
        {
            Ok(written) => Ok(written.metadata.resource_version),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(format!("writing the pod status: {e}")),
        }
    }

    async fn confirm_deletion(&self, pod: &Pod, uid: &str) -> Result<(), String> {
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api
            .delete(pod.metadata.name.as_deref().unwrap_or_default(), &dp)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(format!("confirming the deletion: {e}")),
        }
    }
}

/// What the worker needs of the agent.
pub struct Context<R, A> {
    pub runtime: Arc<R>,
    pub api: A,
    pub node: NodeConfig,
    /// Pod log directories live under here (`<namespace>_<name>_<uid>/`).
    pub log_root: PathBuf,
    /// The containerID scheme (`process://`, `containerd://`).
    pub runtime_name: String,
    /// The machine's memory in bytes (Burstable containers' oom_score_adj).
    pub memory_capacity: i64,
    pub metrics: Option<crate::server::Metrics>,
    /// kubelet's Events about the pod (Pulling, Created, Started, BackOff, Unhealthy ...).
    pub recorder: Recorder,
}

impl<R, A> std::fmt::Debug for Context<R, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("node", &self.node.name)
            .finish_non_exhaustive()
    }
}

/// Grace for a pod whose API object vanished before we stopped it (a forced delete).
const FORCED_GRACE: Duration = Duration::from_secs(2);
/// How soon a container whose start failed is tried again.
const START_RETRY: Duration = Duration::from_secs(5);

pub fn log_dir(root: &std::path::Path, pod: &Pod) -> PathBuf {
    root.join(format!(
        "{}_{}_{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    ))
}

/// What the runtime has for the pod with `uid`.
pub async fn observe<R: Runtime>(runtime: &R, uid: &str) -> Result<Observed, RuntimeError> {
    let (mut sandboxes, containers) = runtime.pod_state(uid).await?;
    // Only this pod's, whatever the runtime matched on.
    sandboxes.retain(|s| s.config.labels.get(POD_UID).map(String::as_str) == Some(uid));
    sandboxes.sort_by_key(|s| (s.config.attempt, s.created_at));
    let containers = containers
        .into_iter()
        .filter(|c| sandboxes.iter().any(|s| s.id == c.sandbox_id))
        .collect();
    Ok(Observed {
        sandboxes,
        containers,
    })
}

/// The fingerprint ([`Observed::fingerprint`]) of a worker's last look at the runtime, which
/// the PLEG reads: it pokes a worker only for what the worker has not seen.
#[derive(Debug, Clone, Default)]
pub struct Seen(Arc<std::sync::Mutex<Option<String>>>);

impl Seen {
    fn set(&self, fingerprint: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(fingerprint);
    }

    /// Whether the worker's last look found the runtime as `fingerprint` says.
    pub fn is(&self, fingerprint: &str) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).as_deref() == Some(fingerprint)
    }
}

pub struct PodWorker<R, A> {
    ctx: Arc<Context<R, A>>,
    seen: Seen,
    uid: String,
    backoffs: Backoffs,
    waiting: Waiting,
    written: Option<PodStatus>,
    /// The pod's resourceVersion that the last status write made.
    written_version: Option<String>,
    last: Option<Arc<Pod>>,
    prober: Option<Prober<R>>,
    /// Image pull back-off: failures so far and when the next pull may be tried.
    pulls: HashMap<String, (u32, tokio::time::Instant)>,
    /// When the pod's projected ServiceAccount tokens are next written again.
    token_refresh: Option<std::time::SystemTime>,
}

impl<R, A> std::fmt::Debug for PodWorker<R, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodWorker")
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

/// Why a sync ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Call again on the next change, or after this long at the latest.
    Again(Option<Duration>),
    /// The pod is gone and everything of it removed: the worker ends.
    Done,
}

impl<R: Runtime, A: PodApi> PodWorker<R, A> {
    pub fn new(ctx: Arc<Context<R, A>>, uid: String) -> Self {
        PodWorker {
            ctx,
            seen: Seen::default(),
            uid,
            backoffs: Backoffs::new(),
            waiting: Waiting::new(),
            written: None,
            written_version: None,
            last: None,
            prober: None,
            pulls: HashMap::new(),
            token_refresh: None,
        }
    }

    /// What this worker last saw of the runtime, for the PLEG.
    pub fn seen(&self) -> Seen {
        self.seen.clone()
    }

    /// Runs until the pod is gone and cleaned up. `pod` carries the latest version (None once
    /// it is gone from the API); `poke` wakes it when the PLEG sees a change.
    pub async fn run(mut self, mut pod: watch::Receiver<Option<Arc<Pod>>>, poke: Arc<Notify>) {
        self.prober = Some(
            Prober::new(self.ctx.runtime.clone(), poke.clone())
                .with_recorder(self.ctx.recorder.clone()),
        );
        // When the last sync asked to be woken; and whether only a new pod version woke it.
        let mut deadline = tokio::time::Instant::now();
        let mut woken_by_pod = false;
        loop {
            let current = pod.borrow_and_update().clone();
            let outcome = match current {
                // The echo of the worker's own status write: nothing it acts on changed, and
                // the runtime's changes come through `poke`. A sync here would only look at
                // the runtime again (each starting pod used to, once more, in a burst).
                Some(p) if woken_by_pod && self.is_own_echo(&p) => {
                    self.last = Some(p);
                    None
                }
                Some(p) => {
                    self.last = Some(p.clone());
                    Some(self.sync(&p).await)
                }
                None => Some(self.gone().await),
            };
            if let Some(outcome) = outcome {
                if let Some(m) = &self.ctx.metrics {
                    let result = if outcome.is_ok() { "ok" } else { "error" };
                    m.syncs.with_label_values(&[result]).inc();
                }
                let wake = match outcome {
                    Ok(Outcome::Done) => return,
                    Ok(Outcome::Again(wake)) => wake,
                    Err(e) => {
                        tracing::warn!(pod = %self.uid, error = %e, "pod sync failed; retrying");
                        Some(Duration::from_secs(1))
                    }
                };
                deadline = tokio::time::Instant::now() + wake.unwrap_or(Duration::from_secs(3600));
            }
            woken_by_pod = false;
            tokio::select! {
                r = pod.changed() => {
                    if r.is_err() {
                        return;
                    }
                    woken_by_pod = true;
                }
                _ = poke.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Whether `pod` is the version this worker's last status write made, and that write
    /// changed nothing but the status since the version last synced (the resourceVersion and
    /// managedFields aside).
    fn is_own_echo(&self, pod: &Pod) -> bool {
        let Some(last) = &self.last else {
            return false;
        };
        let bookkeeping = |m: &ObjectMeta| ObjectMeta {
            resource_version: None,
            managed_fields: None,
            ..m.clone()
        };
        pod.metadata.resource_version.is_some()
            && pod.metadata.resource_version == self.written_version
            && pod.spec == last.spec
            && bookkeeping(&pod.metadata) == bookkeeping(&last.metadata)
    }

    /// One SyncPod: plan, act, report.
    pub async fn sync(&mut self, pod: &Pod) -> Result<Outcome, String> {
        let rt = self.ctx.runtime.clone();
        let mut obs = observe(&*rt, &self.uid).await.map_err(|e| e.to_string())?;
        // Containers whose liveness or startup probe failed are stopped; the plan then
        // restarts them by the pod's restart policy.
        if pod.metadata.deletion_timestamp.is_none() {
            let health = self.probe(pod, &obs);
            let mut killed = false;
            for c in obs
                .containers
                .iter()
                .filter(|c| c.state == ContainerState::Running)
            {
                if let Some(why) = health.get(&c.id).and_then(|h| h.failed.as_ref()) {
                    tracing::info!(pod = %self.uid, container = %c.config.name, %why, "container failed its probe, will be restarted");
                    let probe = if why.starts_with("Startup") {
                        "startup"
                    } else {
                        "liveness"
                    };
                    self.event(
                        pod,
                        Some(container_path(pod, &c.config.name)),
                        EventType::Normal,
                        reason::KILLING,
                        format!(
                            "Container {} failed {probe} probe, will be restarted",
                            c.config.name
                        ),
                    );
                    rt.stop_container(&c.id, grace_of_container(pod))
                        .await
                        .map_err(|e| e.to_string())?;
                    killed = true;
                }
            }
            if killed {
                obs = observe(&*rt, &self.uid).await.map_err(|e| e.to_string())?;
            }
        }
        let now = rt.now();
        let actions = plan::plan(pod, &obs, &self.backoffs, now);
        self.waiting.clear();
        let mut wake: Option<Duration> = None;
        let mut soonest = |d: Duration| wake = Some(wake.map_or(d, |w: Duration| w.min(d)));
        let mut sandbox = obs
            .sandbox()
            .filter(|s| s.state == SandboxState::Ready)
            .cloned();
        for action in actions {
            tracing::debug!(pod = %self.uid, ?action, "acting");
            match action {
                Action::KillPod => self.kill(pod, &obs, grace_of(pod)).await?,
                Action::CreateSandbox { attempt } => {
                    let cfg = SandboxConfig {
                        name: pod.metadata.name.clone().unwrap_or_default(),
                        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                        uid: self.uid.clone(),
                        attempt,
                        labels: identity(pod, None),
                        host_network: pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.host_network)
                            .unwrap_or(false),
                        pids: match pod.spec.as_ref() {
                            Some(s) if s.host_pid == Some(true) => PidSharing::Node,
                            Some(s) if s.share_process_namespace == Some(true) => PidSharing::Pod,
                            _ => PidSharing::Container,
                        },
                        host_ipc: pod.spec.as_ref().and_then(|s| s.host_ipc).unwrap_or(false),
                        log_directory: log_dir(&self.ctx.log_root, pod),
                        hostname: hostname(pod),
                        port_mappings: port_mappings(pod),
                        cgroup_parent: resources::cgroup_parent(pod),
                        dns: crate::dns::pod_resolv(pod, &self.ctx.node),
                    };
                    if attempt > 0 {
                        self.event(
                            pod,
                            None,
                            EventType::Normal,
                            reason::SANDBOX_CHANGED,
                            "Pod sandbox changed, it will be killed and re-created.",
                        );
                    }
                    match rt.run_sandbox(&cfg).await {
                        Ok(sb) => sandbox = Some(sb),
                        Err(e) => {
                            self.event(
                                pod,
                                None,
                                EventType::Warning,
                                reason::FAILED_CREATE_POD_SANDBOX,
                                format!("Failed to create pod sandbox: {e}"),
                            );
                            return Err(e.to_string());
                        }
                    }
                }
                Action::Start {
                    kind,
                    name,
                    attempt,
                } => {
                    let Some(sb) = sandbox.as_ref() else {
                        return Err("no ready sandbox to start containers in".into());
                    };
                    if attempt > 0
                        && let Some(old) = obs.latest(&name)
                    {
                        plan::record_restart(&mut self.backoffs, old);
                    }
                    let pod_ip = sb.ip.clone().unwrap_or_default();
                    let target = (kind == Kind::Ephemeral)
                        .then(|| ephemeral_target(pod, &name, &obs))
                        .flatten();
                    if let Err((reason, message)) = self
                        .start(pod, &sb.id, &pod_ip, (&kind, target), &name, attempt)
                        .await
                    {
                        tracing::info!(pod = %self.uid, container = %name, %reason, %message, "container did not start");
                        self.waiting.insert(name, (reason.into(), message));
                        soonest(START_RETRY);
                        if kind == Kind::Init {
                            break;
                        }
                    }
                }
                Action::BackOff { name, remaining } => {
                    let message = format!(
                        "back-off {}s restarting failed container={name} pod={}_{}({})",
                        plan::backoff_for(self.backoffs.get(&name).copied().unwrap_or(0)).as_secs(),
                        pod.metadata.name.as_deref().unwrap_or_default(),
                        pod.metadata.namespace.as_deref().unwrap_or_default(),
                        self.uid
                    );
                    self.event(
                        pod,
                        Some(container_path(pod, &name)),
                        EventType::Warning,
                        reason::BACK_OFF,
                        format!(
                            "Back-off restarting failed container {name} in pod {}_{}({})",
                            pod.metadata.name.as_deref().unwrap_or_default(),
                            pod.metadata.namespace.as_deref().unwrap_or_default(),
                            self.uid
                        ),
                    );
                    self.waiting
                        .insert(name, ("CrashLoopBackOff".into(), message));
                    soonest(remaining);
                }
                Action::Remove { id } => {
                    rt.remove_container(&id).await.map_err(|e| e.to_string())?
                }
                Action::RemoveSandbox { id } => {
                    rt.remove_sandbox(&id).await.map_err(|e| e.to_string())?
                }
            }
        }
        if let Some(left) = self.refresh_tokens(pod).await {
            soonest(left);
        }
        let obs = observe(&*rt, &self.uid).await.map_err(|e| e.to_string())?;
        // Seen once the status written below reflects it (a failed write is retried).
        let seen = obs.fingerprint();
        if pod.metadata.deletion_timestamp.is_some() {
            let stopped = obs
                .containers
                .iter()
                .all(|c| c.state != ContainerState::Running)
                && obs
                    .sandboxes
                    .iter()
                    .all(|s| s.state == SandboxState::NotReady);
            if stopped {
                self.confirm_deletion(pod).await?;
                self.cleanup(pod, &obs).await?;
                return Ok(Outcome::Done);
            }
            return Ok(Outcome::Again(Some(Duration::from_millis(200))));
        }
        let health = self.probe(pod, &obs);
        let status = status::pod_status(
            pod,
            &obs,
            &self.waiting,
            &health,
            &self.ctx.node.host_ip,
            &self.ctx.runtime_name,
            now,
        );
        let running_now = status.phase.as_deref() == Some("Running");
        let was_running = self
            .written
            .as_ref()
            .or(pod.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some("Running");
        self.write_status(pod, status).await?;
        self.seen.set(seen);
        if running_now
            && !was_running
            && let (Some(m), Some(created)) = (&self.ctx.metrics, &pod.metadata.creation_timestamp)
        {
            let secs = jiff::Timestamp::now()
                .duration_since(created.0)
                .as_secs_f64();
            m.pod_start.observe(secs.max(0.0));
        }
        Ok(Outcome::Again(wake))
    }

    /// Writes the projected ServiceAccount tokens again when due (kubelet refreshes at 80% of
    /// their life); how long until the next refresh. A failed refresh is retried in 10 s with
    /// a FailedMount Warning: the old token stays until it expires.
    async fn refresh_tokens(&mut self, pod: &Pod) -> Option<Duration> {
        let at = self.token_refresh?;
        let now = std::time::SystemTime::now();
        if at <= now {
            match volumes::refresh_tokens(pod, &self.ctx.node.root_dir, &self.ctx.api).await {
                Ok(next) => {
                    tracing::debug!(pod = %self.uid, "refreshed the projected service account tokens");
                    self.token_refresh = next;
                }
                Err(e) => {
                    self.event(
                        pod,
                        None,
                        EventType::Warning,
                        "FailedMount",
                        format!("refreshing the service account token failed: {e}"),
                    );
                    self.token_refresh = Some(now + Duration::from_secs(10));
                }
            }
        }
        self.token_refresh
            .map(|t| t.duration_since(now).unwrap_or_default())
    }

    /// Records an Event about the pod (or one of its containers, by `field_path`).
    fn event(
        &self,
        pod: &Pod,
        field_path: Option<String>,
        type_: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.ctx
            .recorder
            .pod_event(pod, field_path, type_, reason, message);
    }

    /// Creates and starts one container, recording kubelet's Events on the way: Created and
    /// Started, or Failed ("Error: ...") / FailedMount when a step fails.
    async fn start(
        &mut self,
        pod: &Pod,
        sandbox_id: &str,
        pod_ip: &str,
        kind: (&Kind, Option<String>),
        name: &str,
        attempt: u32,
    ) -> Result<(), (&'static str, String)> {
        let path = Some(container_path(pod, name));
        let result = self
            .create_and_start(pod, sandbox_id, pod_ip, kind, name, attempt)
            .await;
        match &result {
            Ok(()) => self.event(
                pod,
                path,
                EventType::Normal,
                reason::STARTED,
                format!("Started container {name}"),
            ),
            // The image steps record their own events; the rest is kubelet's "Error: ...".
            Err(("ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull", _)) => {}
            Err(("FailedMount", message)) => self.event(
                pod,
                None,
                EventType::Warning,
                reason::FAILED_MOUNT,
                mount_failed(message),
            ),
            Err((_, message)) => self.event(
                pod,
                path,
                EventType::Warning,
                reason::FAILED,
                format!("Error: {message}"),
            ),
        }
        result.map_err(|(r, m)| match r {
            "FailedMount" => ("CreateContainerConfigError", m),
            r => (r, m),
        })
    }

    /// `kind` with, for an ephemeral container, the runtime id of its target.
    async fn create_and_start(
        &mut self,
        pod: &Pod,
        sandbox_id: &str,
        pod_ip: &str,
        (kind, pid_target): (&Kind, Option<String>),
        name: &str,
        attempt: u32,
    ) -> Result<(), (&'static str, String)> {
        let spec = pod.spec.clone().unwrap_or_default();
        let list = match kind {
            Kind::Init => spec.init_containers.unwrap_or_default(),
            Kind::App => spec.containers,
            Kind::Ephemeral => spec
                .ephemeral_containers
                .iter()
                .flatten()
                .filter_map(super::as_container)
                .collect(),
        };
        let Some(c) = list.into_iter().find(|c| c.name == name) else {
            return Err((
                "CreateContainerConfigError",
                format!("no container {name:?} in the pod"),
            ));
        };
        let image = c.image.clone().unwrap_or_default();
        self.ensure_image(pod, name, &image, c.image_pull_policy.as_deref())
            .await?;
        let env = env::environment(pod, &c, &self.ctx.node.host_ip, pod_ip, &self.ctx.api)
            .await
            .map_err(|e| ("CreateContainerConfigError", e.0))?;
        let vols = volumes::prepare(
            pod,
            &self.ctx.node.root_dir,
            &self.ctx.node.host_ip,
            pod_ip,
            &self.ctx.api,
        )
        .await
        .map_err(|e| ("FailedMount", e))?;
        if let Some(at) = vols.token_refresh {
            self.token_refresh = Some(self.token_refresh.map_or(at, |t| t.min(at)));
        }
        let mounts =
            volumes::mounts(pod, &c, &vols.paths).map_err(|e| ("CreateContainerConfigError", e))?;
        let vars: BTreeMap<String, String> = env.iter().cloned().collect();
        let cfg = ContainerConfig {
            name: name.to_string(),
            attempt,
            image,
            command: c
                .command
                .iter()
                .flatten()
                .map(|a| env::expand(a, &vars))
                .collect(),
            args: c
                .args
                .iter()
                .flatten()
                .map(|a| env::expand(a, &vars))
                .collect(),
            env,
            working_dir: c.working_dir.clone(),
            labels: identity(pod, Some(name)),
            log_path: format!("{name}/{attempt}.log"),
            mounts,
            resources: resources::container_resources(pod, &c, self.ctx.memory_capacity),
            stdin: c.stdin.unwrap_or(false),
            stdin_once: c.stdin_once.unwrap_or(false),
            tty: c.tty.unwrap_or(false),
            pid_target,
        };
        let rt = &self.ctx.runtime;
        let created = rt
            .create_container(sandbox_id, &cfg)
            .await
            .map_err(|e| match e {
                RuntimeError::Config(m) => ("CreateContainerConfigError", m),
                other => ("CreateContainerError", other.to_string()),
            })?;
        self.event(
            pod,
            Some(container_path(pod, name)),
            EventType::Normal,
            reason::CREATED,
            format!("Created container: {name}"),
        );
        rt.start_container(&created.id)
            .await
            .map_err(|e| ("RunContainerError", e.to_string()))
    }

    /// Stops every running container (SIGTERM, `grace`, SIGKILL), then the sandbox.
    async fn kill(&self, pod: &Pod, obs: &Observed, grace: Duration) -> Result<(), String> {
        let rt = &self.ctx.runtime;
        let running: Vec<_> = obs
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .collect();
        let pod_ip = obs.sandbox().and_then(|s| s.ip.clone()).unwrap_or_default();
        let stops = running.iter().map(|c| {
            let pod_ip = pod_ip.clone();
            self.event(
                pod,
                Some(container_path(pod, &c.config.name)),
                EventType::Normal,
                reason::KILLING,
                format!("Stopping container {}", c.config.name),
            );
            async move {
                // preStop first, within the grace period; SIGTERM gets what is left.
                let t0 = tokio::time::Instant::now();
                super::probe::pre_stop(&**rt, pod, c, &pod_ip, grace).await;
                rt.stop_container(&c.id, grace.saturating_sub(t0.elapsed()))
                    .await
            }
        });
        for r in futures_util::future::join_all(stops).await {
            r.map_err(|e| e.to_string())?;
        }
        for sb in &obs.sandboxes {
            rt.stop_sandbox(&sb.id).await.map_err(|e| e.to_string())?;
        }
        tracing::info!(pod = %self.uid, name = ?pod.metadata.name, "pod stopped");
        Ok(())
    }

    /// Everything of the pod goes: sandboxes (their containers with them) and its logs.
    async fn cleanup(&self, pod: &Pod, obs: &Observed) -> Result<(), String> {
        for sb in &obs.sandboxes {
            self.ctx
                .runtime
                .remove_sandbox(&sb.id)
                .await
                .map_err(|e| e.to_string())?;
        }
        for dir in [
            log_dir(&self.ctx.log_root, pod),
            volumes::pod_dir(&self.ctx.node.root_dir, &self.uid),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("removing {}: {e}", dir.display()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The probes' view of the running containers of the current sandbox.
    fn probe(&mut self, pod: &Pod, obs: &Observed) -> HashMap<String, Health> {
        let Some(prober) = self.prober.as_mut() else {
            return HashMap::new();
        };
        let sb = obs.sandbox();
        let running: Vec<_> = obs
            .containers
            .iter()
            .filter(|c| {
                c.state == ContainerState::Running && sb.is_some_and(|s| s.id == c.sandbox_id)
            })
            .collect();
        let ip = sb.and_then(|s| s.ip.clone()).unwrap_or_default();
        prober.sync(pod, &running, &ip)
    }

    /// imagePullPolicy through CRI's ImageStatus (PullImage always goes to the network):
    /// Never needs the image present, IfNotPresent pulls only when it is missing, Always pulls.
    /// A failed pull backs off 10 s doubling to 5 min (ImagePullBackOff).
    async fn ensure_image(
        &mut self,
        pod: &Pod,
        container: &str,
        image: &str,
        policy: Option<&str>,
    ) -> Result<(), (&'static str, String)> {
        let path = || Some(container_path(pod, container));
        let result = self.pull_if_needed(pod, container, image, policy).await;
        if let Err((why, message)) = &result {
            let (ty, reason, message) = match *why {
                "ErrImagePull" => (EventType::Warning, reason::FAILED, capitalized(message)),
                "ImagePullBackOff" => (
                    EventType::Normal,
                    reason::BACK_OFF,
                    format!("Back-off pulling image {image:?}"),
                ),
                "ErrImageNeverPull" => (
                    EventType::Warning,
                    reason::ERR_IMAGE_NEVER_PULL,
                    message.clone(),
                ),
                _ => (EventType::Warning, reason::FAILED, message.clone()),
            };
            self.event(pod, path(), ty, reason, message);
            self.event(
                pod,
                path(),
                EventType::Warning,
                reason::FAILED,
                format!("Error: {why}"),
            );
        }
        result
    }

    async fn pull_if_needed(
        &mut self,
        pod: &Pod,
        container: &str,
        image: &str,
        policy: Option<&str>,
    ) -> Result<(), (&'static str, String)> {
        let path = || Some(container_path(pod, container));
        if image.is_empty() {
            return Err(("InvalidImageName", "the container names no image".into()));
        }
        let policy = policy.unwrap_or_else(|| default_pull_policy(image));
        let rt = &self.ctx.runtime;
        let present = rt
            .image_status(image)
            .await
            .map_err(|e| ("ErrImagePull", format!("image status of {image:?}: {e}")))?;
        match (policy, present) {
            ("Never", Some(_)) | ("IfNotPresent", Some(_)) => {
                self.event(
                    pod,
                    path(),
                    EventType::Normal,
                    reason::PULLED,
                    format!("Container image {image:?} already present on machine"),
                );
                return Ok(());
            }
            ("Never", None) => {
                return Err((
                    "ErrImageNeverPull",
                    format!("Container image {image:?} is not present with pull policy of Never"),
                ));
            }
            _ => {}
        }
        let now = tokio::time::Instant::now();
        if let Some((_, until)) = self.pulls.get(image)
            && *until > now
        {
            return Err((
                "ImagePullBackOff",
                format!("Back-off pulling image {image:?}"),
            ));
        }
        self.event(
            pod,
            path(),
            EventType::Normal,
            reason::PULLING,
            format!("Pulling image {image:?}"),
        );
        let started = tokio::time::Instant::now();
        match rt.pull_image(image).await {
            Ok(_) => {
                self.pulls.remove(image);
                self.event(
                    pod,
                    path(),
                    EventType::Normal,
                    reason::PULLED,
                    format!(
                        "Successfully pulled image {image:?} in {:?}",
                        started.elapsed()
                    ),
                );
                Ok(())
            }
            Err(e) => {
                let n = self.pulls.get(image).map_or(0, |(n, _)| *n);
                self.pulls
                    .insert(image.to_string(), (n + 1, now + plan::backoff_for(n)));
                Err((
                    "ErrImagePull",
                    format!("failed to pull image {image:?}: {e}"),
                ))
            }
        }
    }

    /// The pod vanished from the API (deleted while we were down, or forced): stop and remove.
    async fn gone(&mut self) -> Result<Outcome, String> {
        let obs = observe(&*self.ctx.runtime, &self.uid)
            .await
            .map_err(|e| e.to_string())?;
        let pod = match &self.last {
            Some(p) => (**p).clone(),
            None => return Ok(Outcome::Done),
        };
        self.kill(&pod, &obs, FORCED_GRACE).await?;
        let obs = observe(&*self.ctx.runtime, &self.uid)
            .await
            .map_err(|e| e.to_string())?;
        self.cleanup(&pod, &obs).await?;
        Ok(Outcome::Done)
    }

    async fn confirm_deletion(&self, pod: &Pod) -> Result<(), String> {
        self.ctx.api.confirm_deletion(pod, &self.uid).await
    }

    async fn write_status(&mut self, pod: &Pod, status: PodStatus) -> Result<(), String> {
        if self.written.as_ref() == Some(&status) || pod.status.as_ref() == Some(&status) {
            return Ok(());
        }
        self.written_version = self.ctx.api.write_status(pod, &self.uid, &status).await?;
        self.written = Some(status);
        Ok(())
    }
}

/// A volume that could not be prepared (`volume "cfg": configmap "x" not found`) as kubelet
/// words it: `MountVolume.SetUp failed for volume "cfg" : configmap "x" not found`.
/// The runtime id of the running container an ephemeral container `name` targets, if it
/// names one.
fn ephemeral_target(pod: &Pod, name: &str, obs: &plan::Observed) -> Option<String> {
    let target = pod
        .spec
        .as_ref()?
        .ephemeral_containers
        .iter()
        .flatten()
        .find(|e| e.name == name)?
        .target_container_name
        .as_deref()?;
    obs.latest(target)
        .filter(|c| c.state == ContainerState::Running)
        .map(|c| c.id.clone())
}

fn mount_failed(message: &str) -> String {
    match message
        .strip_prefix("volume ")
        .and_then(|m| m.split_once(": "))
    {
        Some((volume, why)) => format!("MountVolume.SetUp failed for volume {volume} : {why}"),
        None => format!("MountVolume.SetUp failed: {message}"),
    }
}

/// "failed to pull image ..." as an Event's message: "Failed to pull image ...".
fn capitalized(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Kubernetes' default: Always for `:latest` or untagged images, IfNotPresent otherwise.
fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn hostname(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default()
}

/// The pod's hostPorts, for CNI's portmap.
fn port_mappings(pod: &Pod) -> Vec<PortMapping> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host_port = p.host_port.filter(|hp| *hp > 0)?;
            Some(PortMapping {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                container_port: p.container_port,
                host_port,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
        })
        .collect()
}

/// A probe-failed container's grace: the pod's terminationGracePeriodSeconds.
fn grace_of_container(pod: &Pod) -> Duration {
    let secs = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

fn grace_of(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

/// The labels carrying a sandbox's or container's identity.
fn identity(pod: &Pod, container: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert(
        POD_UID.to_string(),
        pod.metadata.uid.clone().unwrap_or_default(),
    );
    l.insert(
        POD_NAME.to_string(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    l.insert(
        POD_NAMESPACE.to_string(),
        pod.metadata.namespace.clone().unwrap_or_default(),
    );
    if let Some(c) = container {
        l.insert(CONTAINER_NAME.to_string(), c.to_string());
    }
    l
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
