//! The GitOps controller (`gitops`): keeps the cluster equal to git repositories of manifests,
//! one [`GitSync`] each. Every `interval` (1m), and at once when a spec changes, it
//! 1. waits for the GitSyncs it `dependsOn` to be Ready (condition DependencyNotReady);
//! 2. fetches the ref with [`git`] (credentials from the Secret `secretRef` names);
//! 3. renders the path ([`crate::apply::kustomize`]) — a file that does not parse stops the
//!    sync before anything is applied (BuildFailed, naming file and line; Stalled until a new
//!    commit);
//! 4. applies it with the shared [`crate::apply`] engine under field manager
//!    `capstan-gitops`, labelling every object with the GitSync's name and namespace: only
//!    what changed (a dry run against the live object decides) is written, so a manual edit
//!    of a field it manages is reverted at the next interval and an unchanged repository
//!    costs a fetch and one list per kind;
//! 5. with `prune`, deletes what the last inventory holds and this commit does not;
//! 6. with `wait`, waits for what it applied to be healthy ([`health`]);
//! 7. records the inventory, the commits and the conditions (Ready, Reconciling, Stalled), and
//!    an Event for each sync that changed something or failed.

pub mod git;
pub mod health;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_api::crds::{GitSync, GitSyncStatus, SyncedObject};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::apply::{Action, Applier, ApplyError, Manifest, Options};
use crate::endpointslice::split_key;
use crate::runtime::conditions::{self, Set};
use crate::runtime::informer::run_periodic;
use crate::runtime::{Backoffs, Clock, Discovery, Recorder, WorkQueue};
use crate::{Error, Manager};
use git::{Credentials, Git};
use health::Health;

pub const NAME: &str = "gitops";
/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "capstan-gitops";
/// The labels every applied object carries: which GitSync applied it.
pub const NAME_LABEL: &str = "gitops.capstan.dev/name";
pub const NAMESPACE_LABEL: &str = "gitops.capstan.dev/namespace";

const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How soon a GitSync waiting on another looks again.
const DEPENDENCY_RETRY: Duration = Duration::from_secs(5);
/// How often health is looked at while waiting.
const HEALTH_POLL: Duration = Duration::from_secs(1);
/// The objects an Event lists at most.
const EVENT_LINES: usize = 20;
const CONDITION_ORDER: &[&str] = &["Ready", "Reconciling", "Stalled"];

/// The controller's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where repositories are cached (one bare repository per URL).
    pub cache_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cache_dir: std::env::temp_dir().join("capstan-gitops"),
        }
    }
}

/// What the controller keeps per GitSync between syncs (a new leader starts afresh: the first
/// sync then dry-runs everything once).
struct Memory {
    applier: Arc<Applier>,
    /// The manifests of the last rendered (commit, path).
    rendered: Option<(String, String, Arc<Vec<Manifest>>)>,
}

struct Controller {
    client: kube::Client,
    syncs: Store<GitSync>,
    discovery: Arc<Discovery>,
    recorder: Recorder,
    queue: Arc<WorkQueue<String>>,
    clock: Clock,
    git: Git,
    memory: Mutex<HashMap<String, Memory>>,
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    m.discovery
        .wait_served("capstan.dev/v1alpha1", "GitSync", || {
            tracing::info!("gitsyncs.capstan.dev is not served (kubectl apply -f manifests/crds/); waiting for it")
        })
        .await;
    let syncs = m.informers.git_syncs();
    syncs.wait_synced().await;
    let queue = WorkQueue::new(Backoffs::default());
    let me = Arc::new(Controller {
        client: m.client.clone(),
        syncs: syncs.store(),
        discovery: m.discovery.clone(),
        recorder: Recorder::new(m.client.clone(), "gitops-controller"),
        queue: queue.clone(),
        clock: m.clock,
        git: Git::new(m.gitops.cache_dir.clone()),
        memory: Mutex::new(HashMap::new()),
    });
    // New objects and spec changes sync at once (status writes do not).
    let forget = me.clone();
    run_periodic(
        NAME,
        syncs,
        queue,
        4,
        m.metrics.clone(),
        move |key| {
            forget.lock().remove(key);
        },
        move |key| {
            let me = me.clone();
            async move { me.sync(&key).await }
        },
    )
    .await;
}

/// A failed sync: the condition's reason and message, and whether only a change (a new
/// commit, a new spec) can fix it.
struct Failure {
    reason: &'static str,
    message: String,
    stalled: bool,
}

impl Failure {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            reason,
            message: message.into(),
            stalled: false,
        }
    }
}

/// `main@sha1:0123abcd…`, as Flux names a revision.
fn revision(git_ref: &str, commit: &str) -> String {
    let short = git_ref
        .strip_prefix("refs/heads/")
        .or_else(|| git_ref.strip_prefix("refs/tags/"))
        .unwrap_or(git_ref);
    if short == commit {
        format!("sha1:{commit}")
    } else {
        format!("{short}@sha1:{commit}")
    }
}

impl Controller {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Memory>> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[tracing::instrument(skip(self), fields(controller = NAME))]
    async fn sync(&self, key: &str) -> Result<(), Error> {
        let (ns, name) = split_key(key);
        let Some(gs) = self.syncs.get(&ObjectRef::new(name).within(ns)) else {
            self.lock().remove(key);
            return Ok(());
        };
        if gs.spec.suspend {
            // Nothing is fetched or applied; the status says the suspension was seen.
            let seen = gs.status.as_ref().and_then(|s| s.observed_generation);
            if seen != gs.metadata.generation {
                let api: Api<GitSync> = Api::namespaced(self.client.clone(), ns);
                let patch =
                    serde_json::json!({"status": {"observedGeneration": gs.metadata.generation}});
                api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
            return Ok(());
        }
        let old = gs.status.clone().unwrap_or_default();
        let mut status = GitSyncStatus {
            observed_generation: gs.metadata.generation,
            ..old.clone()
        };
        let (interval, retry, timeout) = match (
            capstan_api::duration::parse_or(gs.spec.interval.as_deref(), DEFAULT_INTERVAL),
            capstan_api::duration::parse_or(gs.spec.timeout.as_deref(), DEFAULT_TIMEOUT),
        ) {
            (Ok(i), Ok(t)) => {
                let i = i.max(Duration::from_secs(1));
                let r = capstan_api::duration::parse_or(gs.spec.retry_interval.as_deref(), i)
                    .unwrap_or(i);
                (
                    i,
                    r.max(Duration::from_secs(1)),
                    t.max(Duration::from_secs(1)),
                )
            }
            (Err(e), _) | (_, Err(e)) => {
                let f = Failure {
                    reason: "InvalidSpec",
                    message: e,
                    stalled: true,
                };
                return self.finish(&gs, old, status, Err(f), false).await;
            }
        };
        // 1. Dependencies.
        if let Some(waiting) = self.unready_dependency(&gs) {
            self.queue
                .add_after(key.to_string(), DEPENDENCY_RETRY.min(retry));
            let f = Failure::new("DependencyNotReady", waiting);
            return self.finish(&gs, old, status, Err(f), false).await;
        }
        let mut marked = false;
        let outcome = self
            .reconcile(key, ns, &gs, &mut status, timeout, &mut marked)
            .await;
        self.queue.add_after(
            key.to_string(),
            if outcome.is_ok() { interval } else { retry },
        );
        self.finish(&gs, old, status, outcome, marked).await
    }

    /// The first dependency that is not Ready at its latest generation, as a message.
    fn unready_dependency(&self, gs: &GitSync) -> Option<String> {
        let own_ns = gs.metadata.namespace.as_deref().unwrap_or_default();
        gs.spec.depends_on.iter().find_map(|d| {
            let ns = d.namespace.as_deref().unwrap_or(own_ns);
            let Some(dep) = self.syncs.get(&ObjectRef::new(&d.name).within(ns)) else {
                return Some(format!("dependency '{ns}/{}' is not found", d.name));
            };
            let st = dep.status.clone().unwrap_or_default();
            let ready = conditions::is_true(&st.conditions, "Ready")
                && st.observed_generation == dep.metadata.generation;
            (!ready).then(|| format!("dependency '{ns}/{}' is not ready", d.name))
        })
    }

    async fn credentials(&self, ns: &str, gs: &GitSync) -> Result<Credentials, Failure> {
        let Some(r) = &gs.spec.secret_ref else {
            return Ok(Credentials::default());
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        match api.get_opt(&r.name).await {
            Ok(Some(s)) => Ok(Credentials(
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
            )),
            Ok(None) => Err(Failure::new(
                "AuthenticationFailed",
                format!("Secret '{ns}/{}' is not found", r.name),
            )),
            Err(e) => Err(Failure::new(
                "AuthenticationFailed",
                format!("reading Secret '{ns}/{}': {e}", r.name),
            )),
        }
    }

    /// Steps 2–6; on success, `status` holds the new inventory and commit.
    async fn reconcile(
        &self,
        key: &str,
        ns: &str,
        gs: &GitSync,
        status: &mut GitSyncStatus,
        timeout: Duration,
        marked: &mut bool,
    ) -> Result<Report, Failure> {
        let spec = &gs.spec;
        let creds = self.credentials(ns, gs).await?;
        // 2. Fetch.
        let fetched = self
            .git
            .fetch(&spec.repo, spec.git_ref.as_ref(), &creds, timeout)
            .await
            .map_err(|e| Failure::new("GitOperationFailed", e.to_string()))?;
        status.git_ref = Some(fetched.git_ref.clone());
        status.last_attempted_commit = Some(fetched.commit.clone());
        let rev = revision(&fetched.git_ref, &fetched.commit);
        // A commit or spec not tried before: Reconciling while it is applied (not again on
        // each retry of one that failed).
        let before = gs.status.clone().unwrap_or_default();
        let progressing = before.last_attempted_commit.as_deref() != Some(fetched.commit.as_str())
            || before.observed_generation != gs.metadata.generation;
        if progressing {
            *marked = self.mark_reconciling(ns, gs, &rev).await;
        }
        // 3. Render (once per commit and path).
        let path = spec.path.clone().unwrap_or_default();
        let manifests = self
            .render(key, &spec.repo, &fetched.commit, &path, timeout)
            .await
            .map_err(|(reason, message)| Failure {
                reason,
                message: format!("{rev}: {message}"),
                stalled: reason == "BuildFailed",
            })?;
        let mut manifests: Vec<Manifest> = manifests.as_ref().clone();
        if let Some(target) = &spec.target_namespace {
            for m in &mut manifests {
                m.namespace_override = Some(target.clone());
            }
        }
        // 4. Apply.
        let applier = {
            let mut memory = self.lock();
            let entry = memory.entry(key.to_string()).or_insert_with(|| Memory {
                applier: Arc::new(Applier::new(self.client.clone(), self.discovery.clone())),
                rendered: None,
            });
            entry.applier.clone()
        };
        let opts = Options {
            field_manager: FIELD_MANAGER.into(),
            force_conflicts: true,
            recreate: spec.force,
            default_namespace: spec
                .target_namespace
                .clone()
                .unwrap_or_else(|| ns.to_string()),
            labels: BTreeMap::from([
                (
                    NAME_LABEL.to_string(),
                    gs.metadata.name.clone().unwrap_or_default(),
                ),
                (NAMESPACE_LABEL.to_string(), ns.to_string()),
            ]),
            timeout,
        };
        let report = applier.apply(&manifests, &opts).await.map_err(|e| {
            let reason = match e {
                ApplyError::Parse { .. }
                | ApplyError::Invalid { .. }
                | ApplyError::Duplicate { .. } => "BuildFailed",
                _ => "ReconciliationFailed",
            };
            Failure {
                reason,
                message: format!("{rev}: {e}"),
                stalled: reason == "BuildFailed",
            }
        })?;
        let inventory = report.inventory();
        // 5. Prune.
        let mut pruned = Vec::new();
        if spec.prune {
            let keep: BTreeSet<SyncedObject> = inventory.iter().cloned().collect();
            let stale: Vec<SyncedObject> = status
                .inventory
                .iter()
                .filter(|o| !keep.contains(o) && !keep.iter().any(|k| same_object(k, o)))
                .cloned()
                .collect();
            if !stale.is_empty() {
                let (deleted, kept) = applier
                    .prune(&stale, &keep, &opts)
                    .await
                    .map_err(|e| Failure::new("PruneFailed", format!("{rev}: {e}")))?;
                for (o, why) in kept {
                    tracing::info!(object = %o, why, "not pruned");
                }
                pruned = deleted;
            }
        }
        status.inventory = inventory;
        status.last_applied_commit = Some(fetched.commit.clone());
        // 6. Health.
        if spec.wait {
            self.wait_healthy(&report, timeout)
                .await
                .map_err(|m| Failure::new("HealthCheckFailed", format!("{rev}: {m}")))?;
        }
        Ok(Report {
            revision: rev,
            applied: report,
            pruned,
        })
    }

    /// Writes Reconciling=True; whether it was written.
    async fn mark_reconciling(&self, ns: &str, gs: &GitSync, rev: &str) -> bool {
        let mut conds = gs.status.clone().unwrap_or_default().conditions;
        let set = Set {
            type_: "Reconciling",
            status: true,
            reason: "Progressing",
            message: format!("Reconciliation in progress: {rev}"),
        };
        conditions::set(
            &mut conds,
            set,
            gs.metadata.generation,
            self.clock.now(),
            CONDITION_ORDER,
        );
        let api: Api<GitSync> = Api::namespaced(self.client.clone(), ns);
        let name = gs.metadata.name.as_deref().unwrap_or_default();
        let patch = serde_json::json!({"status": {"conditions": conds}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(error = %e, "marking Reconciling");
                false
            }
        }
    }

    /// The manifests of `path` at `commit`: (reason, message) when they cannot be had.
    async fn render(
        &self,
        key: &str,
        repo: &str,
        commit: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<Arc<Vec<Manifest>>, (&'static str, String)> {
        if let Some(m) = self.lock().get(key).and_then(|m| m.rendered.clone())
            && m.0 == commit
            && m.1 == path
        {
            return Ok(m.2);
        }
        let files = self
            .git
            .files(repo, commit, timeout)
            .await
            .map_err(|e| ("GitOperationFailed", e.to_string()))?;
        let manifests = Arc::new(
            files
                .render(path)
                .map_err(|e| ("BuildFailed", e.to_string()))?,
        );
        if let Some(m) = self.lock().get_mut(key) {
            m.rendered = Some((commit.to_string(), path.to_string(), manifests.clone()));
        }
        Ok(manifests)
    }

    /// Waits until everything applied that has a health rule is healthy, or says what is not.
    async fn wait_healthy(
        &self,
        report: &crate::apply::Report,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<&SyncedObject> = report
            .applied
            .iter()
            .map(|a| &a.object)
            .filter(|o| has_health_rule(o))
            .collect();
        loop {
            let mut still = Vec::new();
            let mut last = String::new();
            for o in pending {
                match self.health(o).await {
                    Health::Healthy => {}
                    Health::Failed(why) => return Err(format!("{o}: {why}")),
                    Health::Progressing(why) => {
                        last = format!("{o}: {why}");
                        still.push(o);
                    }
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() + HEALTH_POLL > deadline {
                return Err(format!("not healthy within {timeout:?}: {last}"));
            }
            pending = still;
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }

    async fn health(&self, o: &SyncedObject) -> Health {
        let mapping = match self.discovery.resolve(&o.api_version, &o.kind).await {
            Ok(Some(m)) => m,
            _ => return Health::Progressing("its kind is not served".into()),
        };
        let api: Api<DynamicObject> = match &o.namespace {
            Some(ns) if mapping.namespaced => {
                Api::namespaced_with(self.client.clone(), ns, &mapping.resource)
            }
            _ => Api::all_with(self.client.clone(), &mapping.resource),
        };
        match api.get_opt(&o.name).await {
            Ok(Some(live)) => health::of(&o.kind, &serde_json::to_value(&live).unwrap_or_default()),
            Ok(None) => Health::Progressing("not found".into()),
            Err(e) => Health::Progressing(e.to_string()),
        }
    }

    /// Writes the status (when it changed) and the Events of a sync's outcome.
    async fn finish(
        &self,
        gs: &GitSync,
        old: GitSyncStatus,
        mut status: GitSyncStatus,
        outcome: Result<Report, Failure>,
        reconciling_written: bool,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        let generation = gs.metadata.generation;
        let mut conds = std::mem::take(&mut status.conditions);
        conds.retain(|c| c.type_ != "Reconciling");
        match &outcome {
            Ok(report) => {
                let changed = report.applied.changed() || !report.pruned.is_empty();
                let ready = Set {
                    type_: "Ready",
                    status: true,
                    reason: "ReconciliationSucceeded",
                    message: format!("Applied revision: {}", report.revision),
                };
                conditions::set(&mut conds, ready, generation, now, CONDITION_ORDER);
                conds.retain(|c| c.type_ != "Stalled");
                if changed || old.last_applied_commit != status.last_applied_commit {
                    status.last_sync_time = Some(now.to_string());
                }
                if changed {
                    self.recorder
                        .normal(gs, "ReconciliationSucceeded", change_note(report));
                }
            }
            Err(f) => {
                let ready = Set {
                    type_: "Ready",
                    status: false,
                    reason: f.reason,
                    message: f.message.clone(),
                };
                conditions::set(&mut conds, ready, generation, now, CONDITION_ORDER);
                if f.stalled {
                    let stalled = Set {
                        type_: "Stalled",
                        status: true,
                        reason: f.reason,
                        message: f.message.clone(),
                    };
                    conditions::set(&mut conds, stalled, generation, now, CONDITION_ORDER);
                } else {
                    conds.retain(|c| c.type_ != "Stalled");
                }
                // One Warning per distinct failure, not one per retry.
                let before = old.conditions.iter().find(|c| c.type_ == "Ready");
                if before.is_none_or(|c: &Condition| c.status == "True" || c.message != f.message) {
                    self.recorder.warning(gs, f.reason, f.message.clone());
                }
            }
        }
        status.conditions = conds;
        // Unchanged: nothing to write — unless Reconciling was written meanwhile and must go.
        if status == old && !reconciling_written {
            return Ok(());
        }
        let mut body = serde_json::to_value(&status).unwrap_or_default();
        if let (Some(new), Ok(serde_json::Value::Object(before))) =
            (body.as_object_mut(), serde_json::to_value(&old))
        {
            for k in before.keys() {
                new.entry(k.clone()).or_insert(serde_json::Value::Null);
            }
        }
        let (ns, name) = (
            gs.metadata.namespace.as_deref().unwrap_or_default(),
            gs.metadata.name.as_deref().unwrap_or_default(),
        );
        let api: Api<GitSync> = Api::namespaced(self.client.clone(), ns);
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": body })),
        )
        .await?;
        Ok(())
    }
}

/// What a successful sync did.
struct Report {
    revision: String,
    applied: crate::apply::Report,
    pruned: Vec<SyncedObject>,
}

/// The same object at another version (an inventory entry whose manifest moved from
/// `v1beta1` to `v1` is not stale).
fn same_object(a: &SyncedObject, b: &SyncedObject) -> bool {
    let group = |o: &SyncedObject| {
        o.api_version
            .rsplit_once('/')
            .map_or("", |(g, _)| g)
            .to_string()
    };
    a.kind == b.kind && a.name == b.name && a.namespace == b.namespace && group(a) == group(b)
}

fn has_health_rule(o: &SyncedObject) -> bool {
    let builtin = !o.api_version.contains('.') || o.api_version.contains(".k8s.io/");
    !builtin
        || matches!(
            o.kind.as_str(),
            "Deployment"
                | "StatefulSet"
                | "DaemonSet"
                | "Job"
                | "CustomResourceDefinition"
                | "PersistentVolumeClaim"
        )
}

/// The Event of a sync that changed something: one line per object, as Flux writes it.
fn change_note(r: &Report) -> String {
    let mut lines: Vec<String> = r
        .applied
        .applied
        .iter()
        .filter(|a| a.action != Action::Unchanged)
        .map(|a| format!("{} {}", a.object, a.action))
        .chain(r.pruned.iter().map(|o| format!("{o} deleted")))
        .collect();
    if lines.len() > EVENT_LINES {
        let more = lines.len() - EVENT_LINES;
        lines.truncate(EVENT_LINES);
        lines.push(format!("and {more} more"));
    }
    format!("{}\n{}", r.revision, lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_read_as_flux_writes_them() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(revision("refs/heads/main", c), format!("main@sha1:{c}"));
        assert_eq!(revision("refs/tags/v1.0.0", c), format!("v1.0.0@sha1:{c}"));
        assert_eq!(revision(c, c), format!("sha1:{c}"));
    }

    #[test]
    fn versions_of_one_object_are_the_same_object() {
        let o = |v: &str| SyncedObject {
            api_version: v.into(),
            kind: "HorizontalPodAutoscaler".into(),
            namespace: Some("a".into()),
            name: "w".into(),
        };
        assert!(same_object(&o("autoscaling/v1"), &o("autoscaling/v2")));
        assert!(!same_object(&o("autoscaling/v1"), &o("example.com/v1")));
        assert!(has_health_rule(&o("example.com/v1")));
        assert!(!has_health_rule(&SyncedObject {
            kind: "ConfigMap".into(),
            ..o("v1")
        }));
    }
}
