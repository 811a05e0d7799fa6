//! The apply engine `capstan apply` and the GitOps controller share: manifests in, the cluster
//! made to match by server-side apply, typed errors out, nothing printed.
//!
//! An apply ([`Applier::apply`]) goes as Flux's staged apply does (fluxcd/pkg/ssa):
//! 1. every manifest is resolved through discovery ([`order`] sorts them: definitions,
//!    namespaces, cluster-scoped, namespaced) and put in its namespace;
//! 2. each is dry-run applied and compared with the live object, so an unchanged object costs
//!    no write (and, when its live resourceVersion is still the one the last apply left, not
//!    even the dry run);
//! 3. only when every dry run passed is anything applied: a broken set (a schema violation, a
//!    kind nobody serves) changes nothing — except that objects of kinds or namespaces the set
//!    itself introduces can be dry-run only once their CustomResourceDefinitions (waited on
//!    until Established) and Namespaces exist;
//! 4. the changed objects are applied; with `recreate`, one whose update an immutable field
//!    refuses is deleted and created again.
//!
//! [`Applier::prune`] deletes what an earlier apply's inventory holds and the new one does
//! not, in reverse order, never an object opted out (`capstan.dev/prune: disabled`), never one
//! another owner took over, never a Namespace holding objects that are not the inventory's.

pub mod kustomize;
pub mod manifests;
pub mod order;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_api::crds::SyncedObject;
use futures_util::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::Value;

use crate::runtime::Discovery;
use crate::runtime::discovery::Mapping;
pub use manifests::Manifest;
use order::Stage;

/// The annotation that keeps an object from being pruned (`disabled`).
pub const PRUNE_ANNOTATION: &str = "capstan.dev/prune";
/// Requests in flight at once.
const CONCURRENCY: usize = 16;
/// How often a CRD is looked at while waiting for it to be Established.
const POLL: Duration = Duration::from_millis(250);

/// Why an apply did not happen (or did not finish).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Not YAML (or JSON) at all.
    #[error("{at}: {message}")]
    Parse { at: String, message: String },
    /// YAML, but not something that can be applied.
    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
    /// No served resource has this kind.
    #[error("{at}: no matches for kind \"{kind}\" in version \"{api_version}\"")]
    UnknownKind {
        at: String,
        api_version: String,
        kind: String,
    },
    /// The same object twice.
    #[error("{at}: {object} is also at {first}")]
    Duplicate {
        at: String,
        object: Box<SyncedObject>,
        first: String,
    },
    /// The API server refused it (in the dry run or for real).
    #[error("{at}: {object}: {message}")]
    Refused {
        at: String,
        object: Box<SyncedObject>,
        code: u16,
        message: String,
    },
    /// Several objects were refused: all of them, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ApplyError>),
    #[error("{0}")]
    Timeout(String),
    #[error("api request failed: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Discovery(#[from] crate::Error),
}

/// What an apply did to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    /// Deleted and created again (an immutable field changed, with `recreate`).
    Recreated,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Recreated => "recreated",
        })
    }
}

/// How to apply.
#[derive(Clone, Debug)]
pub struct Options {
    pub field_manager: String,
    /// Take fields other managers own (server-side apply's force).
    pub force_conflicts: bool,
    /// Delete and re-create an object whose change an immutable field refuses.
    pub recreate: bool,
    /// The namespace of namespaced objects that name none.
    pub default_namespace: String,
    /// Labels put on every object; when set, live objects are found by one list per
    /// resource with them as the selector (else one GET per object).
    pub labels: BTreeMap<String, String>,
    /// The longest a CRD is waited on to be Established, or a recreated object to be gone.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            field_manager: "capstan".into(),
            force_conflicts: false,
            recreate: false,
            default_namespace: "default".into(),
            labels: BTreeMap::new(),
            timeout: Duration::from_secs(60),
        }
    }
}

/// One object's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub object: SyncedObject,
    pub action: Action,
}

/// What an apply did, in apply order.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub applied: Vec<Applied>,
}

impl Report {
    /// The objects the apply covers (its inventory), sorted.
    pub fn inventory(&self) -> Vec<SyncedObject> {
        let set: BTreeSet<_> = self.applied.iter().map(|a| a.object.clone()).collect();
        set.into_iter().collect()
    }

    /// Whether anything was written.
    pub fn changed(&self) -> bool {
        self.applied.iter().any(|a| a.action != Action::Unchanged)
    }
}

/// One object an apply would change.
#[derive(Clone, Debug)]
pub struct Diff {
    pub object: SyncedObject,
    pub live: Option<Value>,
    pub merged: Value,
}

/// A manifest made ready to send: resolved, namespaced, labelled.
#[derive(Clone, Debug)]
struct Prepared {
    mapping: Arc<Mapping>,
    id: SyncedObject,
    object: Value,
    at: String,
    hash: u64,
}

/// What the dry run decided for one object.
#[derive(Debug)]
enum Plan {
    Unchanged,
    Write { action: Action },
}

/// The engine. Keep one per apply target (a GitSync) to let unchanged objects be recognised
/// without a dry run.
pub struct Applier {
    client: kube::Client,
    discovery: Arc<Discovery>,
    /// Per object: the manifest's hash and the resourceVersion the last apply (or check) saw.
    seen: Mutex<HashMap<SyncedObject, (u64, String)>>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").finish_non_exhaustive()
    }
}

/// FNV-1a: a stable hash of a manifest (the same across restarts and builds).
pub fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn api_of(client: &kube::Client, mapping: &Mapping, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) if mapping.namespaced => {
            Api::namespaced_with(client.clone(), ns, &mapping.resource)
        }
        _ => Api::all_with(client.clone(), &mapping.resource),
    }
}

/// An object without what the server changes on its own: compared to tell drift.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        for k in ["managedFields", "resourceVersion", "generation"] {
            m.remove(k);
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    v
}

/// The key of an object regardless of its version: (group, kind, namespace, name).
fn group_key(id: &SyncedObject) -> (String, String, Option<String>, String) {
    let group = id.api_version.split_once('/').map_or("", |(g, _)| g);
    (
        group.to_string(),
        id.kind.clone(),
        id.namespace.clone(),
        id.name.clone(),
    )
}

fn is_immutable(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422 && s.message.contains("immutable"))
}

impl Applier {
    pub fn new(client: kube::Client, discovery: Arc<Discovery>) -> Self {
        Applier {
            client,
            discovery,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<SyncedObject, (u64, String)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves a manifest, or says it cannot be resolved yet (`None`: its kind is unknown).
    fn prepare(
        &self,
        m: &Manifest,
        mapper: &crate::runtime::discovery::RestMapper,
        opts: &Options,
    ) -> Option<Prepared> {
        let mapping = mapper.resolve(m.api_version(), m.kind())?;
        let mut object = m.object.clone();
        let meta = object["metadata"]
            .as_object_mut()
            .expect("manifests have metadata");
        let namespace = if mapping.namespaced {
            let ns = m
                .namespace_override
                .clone()
                .or_else(|| {
                    meta.get("namespace")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| opts.default_namespace.clone());
            meta.insert("namespace".into(), Value::String(ns.clone()));
            Some(ns)
        } else {
            meta.remove("namespace");
            None
        };
        if !opts.labels.is_empty() {
            let labels = meta
                .entry("labels")
                .or_insert_with(|| Value::Object(Default::default()));
            if !labels.is_object() {
                *labels = Value::Object(Default::default());
            }
            for (k, v) in &opts.labels {
                labels[k] = Value::String(v.clone());
            }
        }
        let id = SyncedObject {
            api_version: m.api_version().to_string(),
            kind: m.kind().to_string(),
            namespace,
            name: m.name().to_string(),
        };
        let hash = fnv64(object.to_string().as_bytes());
        Some(Prepared {
            mapping,
            id,
            object,
            at: m.at(),
            hash,
        })
    }

    /// Applies the manifests.
    pub async fn apply(
        &self,
        manifests: &[Manifest],
        opts: &Options,
    ) -> Result<Report, ApplyError> {
        let mut mapper = self.discovery.current();
        if manifests
            .iter()
            .any(|m| mapper.resolve(m.api_version(), m.kind()).is_none())
        {
            mapper = self.discovery.refresh_now().await?;
        }
        // CRDs and Namespaces the set brings: what may be unknown (or missing) until applied.
        let crds: Vec<(String, String)> = manifests
            .iter()
            .filter(|m| m.kind() == "CustomResourceDefinition")
            .map(|m| {
                let spec = &m.object["spec"];
                (
                    spec["group"].as_str().unwrap_or_default().to_string(),
                    spec["names"]["kind"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        let brought_namespaces: BTreeSet<&str> = manifests
            .iter()
            .filter(|m| m.api_version() == "v1" && m.kind() == "Namespace")
            .map(Manifest::name)
            .collect();
        let mut now = Vec::new();
        let mut later = Vec::new();
        let mut firsts: HashMap<SyncedObject, String> = HashMap::new();
        for m in manifests {
            match self.prepare(m, &mapper, opts) {
                Some(p) => {
                    if let Some(first) = firsts.insert(p.id.clone(), p.at.clone()) {
                        return Err(ApplyError::Duplicate {
                            at: p.at,
                            object: Box::new(p.id),
                            first,
                        });
                    }
                    now.push(p)
                }
                None => {
                    let group = m.api_version().split_once('/').map_or("", |(g, _)| g);
                    if crds.iter().any(|(g, k)| g == group && k == m.kind()) {
                        later.push(m.clone());
                    } else {
                        return Err(ApplyError::UnknownKind {
                            at: m.at(),
                            api_version: m.api_version().to_string(),
                            kind: m.kind().to_string(),
                        });
                    }
                }
            }
        }
        now.sort_by_key(|p| {
            order::key(&p.mapping.resource.group, &p.id.kind, p.mapping.namespaced)
        });
        let live = self.live(&now, opts).await?;
        // Objects in namespaces the set creates are dry-run once those exist.
        let new_namespace = |p: &Prepared| {
            p.id.namespace.as_deref().is_some_and(|ns| {
                brought_namespaces.contains(ns)
                    && !live.contains_key(&group_key(&SyncedObject {
                        api_version: "v1".into(),
                        kind: "Namespace".into(),
                        namespace: None,
                        name: ns.to_string(),
                    }))
            })
        };
        let (deferred, first): (Vec<Prepared>, Vec<Prepared>) =
            now.into_iter().partition(|p| new_namespace(p));
        let plans = self.plan_all(&first, &live, opts).await?;
        let mut report = Report::default();
        // Definitions and cluster objects first; CRDs waited on.
        let split = first
            .iter()
            .position(|p| {
                Stage::of(&p.mapping.resource.group, &p.id.kind, p.mapping.namespaced)
                    == Stage::Namespaced
            })
            .unwrap_or(first.len());
        self.write_all(&first[..split], &plans[..split], opts, &mut report)
            .await?;
        let established: Vec<&Prepared> = first[..split]
            .iter()
            .filter(|p| p.id.kind == "CustomResourceDefinition")
            .collect();
        for crd in &established {
            self.wait_established(&crd.id.name, opts.timeout).await?;
        }
        let mut rest: Vec<Prepared> = first[split..].to_vec();
        let mut rest_plans: Vec<Plan> = plans.into_iter().skip(split).collect();
        if !later.is_empty() || !deferred.is_empty() {
            // The new kinds are served now (discovery may trail Established a moment); their
            // objects (and those of new namespaces) are dry-run in turn.
            let deadline = Instant::now() + opts.timeout;
            let mut mapper = self.discovery.refresh_now().await?;
            while later
                .iter()
                .any(|m| mapper.resolve(m.api_version(), m.kind()).is_none())
                && Instant::now() < deadline
            {
                tokio::time::sleep(POLL).await;
                mapper = self.discovery.refresh_now().await?;
            }
            let mut more = deferred;
            for m in &later {
                let p = self
                    .prepare(m, &mapper, opts)
                    .ok_or_else(|| ApplyError::UnknownKind {
                        at: m.at(),
                        api_version: m.api_version().to_string(),
                        kind: m.kind().to_string(),
                    })?;
                if let Some(first) = firsts.insert(p.id.clone(), p.at.clone()) {
                    return Err(ApplyError::Duplicate {
                        at: p.at,
                        object: Box::new(p.id),
                        first,
                    });
                }
                more.push(p);
            }
            let live = self.live(&more, opts).await?;
            let more_plans = self.plan_all(&more, &live, opts).await?;
            rest.extend(more);
            rest_plans.extend(more_plans);
            let mut keyed: Vec<(Prepared, Plan)> = rest.into_iter().zip(rest_plans).collect();
            keyed.sort_by_key(|(p, _)| {
                order::key(&p.mapping.resource.group, &p.id.kind, p.mapping.namespaced)
            });
            (rest, rest_plans) = keyed.into_iter().unzip();
        }
        self.write_all(&rest, &rest_plans, opts, &mut report)
            .await?;
        Ok(report)
    }

    /// The live objects of the prepared ones, by [`group_key`]: one labelled list per resource
    /// when `opts.labels` is set, else one GET per object.
    async fn live(
        &self,
        prepared: &[Prepared],
        opts: &Options,
    ) -> Result<HashMap<(String, String, Option<String>, String), Value>, ApplyError> {
        let mut out = HashMap::new();
        if !opts.labels.is_empty() {
            let selector = opts
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut mappings: Vec<Arc<Mapping>> = Vec::new();
            for p in prepared {
                if !mappings.iter().any(|m| m.key() == p.mapping.key()) {
                    mappings.push(p.mapping.clone());
                }
            }
            let lists: Vec<_> = mappings
                .into_iter()
                .map(|m| {
                    let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &m.resource);
                    let lp = ListParams::default().labels(&selector);
                    async move { api.list(&lp).await.map(|l| (m, l.items)) }
                })
                .collect();
            let lists: Vec<(Arc<Mapping>, Vec<DynamicObject>)> = stream::iter(lists)
                .buffer_unordered(CONCURRENCY)
                .try_collect()
                .await?;
            for (m, items) in lists {
                for o in items {
                    let id = SyncedObject {
                        api_version: m.resource.api_version.clone(),
                        kind: m.resource.kind.clone(),
                        namespace: o.metadata.namespace.clone(),
                        name: o.metadata.name.clone().unwrap_or_default(),
                    };
                    out.insert(group_key(&id), serde_json::to_value(&o).unwrap_or_default());
                }
            }
            return Ok(out);
        }
        let gets: Vec<_> = prepared
            .iter()
            .map(|p| {
                let api = api_of(&self.client, &p.mapping, p.id.namespace.as_deref());
                let (key, name) = (group_key(&p.id), p.id.name.clone());
                async move {
                    let o = api.get_opt(&name).await?;
                    Ok::<_, kube::Error>(
                        o.map(|o| (key, serde_json::to_value(&o).unwrap_or_default())),
                    )
                }
            })
            .collect();
        let got: Vec<Option<(_, Value)>> = stream::iter(gets)
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        out.extend(got.into_iter().flatten());
        Ok(out)
    }

    /// What applying the manifests would change, object by object (`capstan diff`): the live
    /// object (none when it would be created) and the server's dry-run result, for those
    /// that differ. Nothing is written.
    pub async fn diff(
        &self,
        manifests: &[Manifest],
        opts: &Options,
    ) -> Result<Vec<Diff>, ApplyError> {
        let mut mapper = self.discovery.current();
        if manifests
            .iter()
            .any(|m| mapper.resolve(m.api_version(), m.kind()).is_none())
        {
            mapper = self.discovery.refresh().await?;
        }
        let mut prepared = Vec::new();
        for m in manifests {
            prepared.push(self.prepare(m, &mapper, opts).ok_or_else(|| {
                ApplyError::UnknownKind {
                    at: m.at(),
                    api_version: m.api_version().to_string(),
                    kind: m.kind().to_string(),
                }
            })?);
        }
        let live = self
            .live(
                &prepared,
                &Options {
                    labels: BTreeMap::new(),
                    ..opts.clone()
                },
            )
            .await?;
        let runs: Vec<_> = prepared
            .iter()
            .map(|p| async {
                let api = api_of(&self.client, &p.mapping, p.id.namespace.as_deref());
                let mut pp = PatchParams::apply(&opts.field_manager).dry_run();
                pp.force = opts.force_conflicts;
                api.patch(&p.id.name, &pp, &Patch::Apply(&p.object))
                    .await
                    .map_err(|e| refused(p, e))
            })
            .collect();
        let results: Vec<Result<DynamicObject, ApplyError>> =
            stream::iter(runs).buffered(CONCURRENCY).collect().await;
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (p, r) in prepared.iter().zip(results) {
            let merged = match r {
                Ok(o) => serde_json::to_value(&o).unwrap_or_default(),
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let live = live.get(&group_key(&p.id)).cloned();
            if live
                .as_ref()
                .is_none_or(|l| comparable(l) != comparable(&merged))
            {
                out.push(Diff {
                    object: p.id.clone(),
                    live,
                    merged,
                });
            }
        }
        match errors.len() {
            0 => Ok(out),
            1 => Err(errors.remove(0)),
            _ => Err(ApplyError::Many(errors)),
        }
    }

    /// Dry-runs every object (those the cache knows unchanged excepted); every refusal is
    /// returned together, and then nothing is applied.
    async fn plan_all(
        &self,
        prepared: &[Prepared],
        live: &HashMap<(String, String, Option<String>, String), Value>,
        opts: &Options,
    ) -> Result<Vec<Plan>, ApplyError> {
        let plans: Vec<_> = prepared
            .iter()
            .map(|p| self.plan(p, live.get(&group_key(&p.id)), opts))
            .collect();
        let results: Vec<Result<Plan, ApplyError>> =
            stream::iter(plans).buffered(CONCURRENCY).collect().await;
        let mut plans = Vec::with_capacity(results.len());
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(p) => plans.push(p),
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(plans),
            1 => Err(errors.remove(0)),
            _ => Err(ApplyError::Many(errors)),
        }
    }

    async fn plan(
        &self,
        p: &Prepared,
        live: Option<&Value>,
        opts: &Options,
    ) -> Result<Plan, ApplyError> {
        let live_rv = live.and_then(|l| l["metadata"]["resourceVersion"].as_str());
        if let Some(rv) = live_rv
            && self.seen().get(&p.id) == Some(&(p.hash, rv.to_string()))
        {
            return Ok(Plan::Unchanged);
        }
        let api = api_of(&self.client, &p.mapping, p.id.namespace.as_deref());
        let mut pp = PatchParams::apply(&opts.field_manager).dry_run();
        pp.force = opts.force_conflicts;
        match api.patch(&p.id.name, &pp, &Patch::Apply(&p.object)).await {
            Ok(after) => {
                let after = serde_json::to_value(&after).unwrap_or_default();
                match live {
                    // Found by the dry run though not by the labelled list: it exists, unlabelled.
                    None if after["metadata"]["resourceVersion"]
                        .as_str()
                        .is_some_and(|rv| !rv.is_empty()) =>
                    {
                        Ok(Plan::Write {
                            action: Action::Configured,
                        })
                    }
                    None => Ok(Plan::Write {
                        action: Action::Created,
                    }),
                    Some(l) if comparable(l) == comparable(&after) => {
                        let rv = live_rv.unwrap_or_default().to_string();
                        self.seen().insert(p.id.clone(), (p.hash, rv));
                        Ok(Plan::Unchanged)
                    }
                    Some(_) => Ok(Plan::Write {
                        action: Action::Configured,
                    }),
                }
            }
            Err(e) if opts.recreate && live.is_some() && is_immutable(&e) => Ok(Plan::Write {
                action: Action::Recreated,
            }),
            Err(e) => Err(refused(p, e)),
        }
    }

    /// Applies the objects the plans say changed, in order, `CONCURRENCY` at a time within a
    /// kind.
    async fn write_all(
        &self,
        prepared: &[Prepared],
        plans: &[Plan],
        opts: &Options,
        report: &mut Report,
    ) -> Result<(), ApplyError> {
        let mut i = 0;
        while i < prepared.len() {
            // One group of the same order key at a time: a Service before its Deployment.
            let key = |p: &Prepared| {
                order::key(&p.mapping.resource.group, &p.id.kind, p.mapping.namespaced)
            };
            let k = key(&prepared[i]);
            let end = prepared[i..]
                .iter()
                .position(|p| key(p) != k)
                .map_or(prepared.len(), |n| i + n);
            let writes: Vec<_> = (i..end)
                .map(|j| self.write(&prepared[j], &plans[j], opts))
                .collect();
            let results: Vec<Result<Applied, ApplyError>> =
                stream::iter(writes).buffered(CONCURRENCY).collect().await;
            for r in results {
                report.applied.push(r?);
            }
            i = end;
        }
        Ok(())
    }

    async fn write(
        &self,
        p: &Prepared,
        plan: &Plan,
        opts: &Options,
    ) -> Result<Applied, ApplyError> {
        let action = match plan {
            Plan::Unchanged => {
                return Ok(Applied {
                    object: p.id.clone(),
                    action: Action::Unchanged,
                });
            }
            Plan::Write { action } => *action,
        };
        let api = api_of(&self.client, &p.mapping, p.id.namespace.as_deref());
        if action == Action::Recreated {
            self.delete_and_wait(&api, &p.id.name, opts.timeout).await?;
        }
        let mut pp = PatchParams::apply(&opts.field_manager);
        pp.force = opts.force_conflicts;
        let done = api
            .patch(&p.id.name, &pp, &Patch::Apply(&p.object))
            .await
            .map_err(|e| refused(p, e))?;
        let rv = done.metadata.resource_version.unwrap_or_default();
        self.seen().insert(p.id.clone(), (p.hash, rv));
        Ok(Applied {
            object: p.id.clone(),
            action,
        })
    }

    async fn delete_and_wait(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        timeout: Duration,
    ) -> Result<(), ApplyError> {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if crate::error::is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let deadline = Instant::now() + timeout;
        while api.get_opt(name).await?.is_some() {
            if Instant::now() > deadline {
                return Err(ApplyError::Timeout(format!(
                    "{name} was not gone within {timeout:?} of its deletion"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Waits until CRD `name` is Established (the API serves its kind).
    pub async fn wait_established(&self, name: &str, timeout: Duration) -> Result<(), ApplyError> {
        let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            Api::all(self.client.clone());
        let deadline = Instant::now() + timeout;
        loop {
            let crd = api.get_opt(name).await?;
            let established = crd
                .as_ref()
                .and_then(|c| c.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ApplyError::Timeout(format!(
                    "CustomResourceDefinition {name} was not Established within {timeout:?}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Deletes the objects of `stale` (an earlier inventory minus the current one), last
    /// applied first. Returns what was deleted; what was kept, and why, is in the second list.
    pub async fn prune(
        &self,
        stale: &[SyncedObject],
        keep: &BTreeSet<SyncedObject>,
        opts: &Options,
    ) -> Result<(Vec<SyncedObject>, Vec<(SyncedObject, String)>), ApplyError> {
        let mapper = self.discovery.refresh().await?;
        let mut targets: Vec<(Arc<Mapping>, &SyncedObject)> = Vec::new();
        let mut kept = Vec::new();
        for id in stale {
            // A kind that is gone (its CRD removed) took its objects with it.
            if let Some(m) = mapper.resolve(&id.api_version, &id.kind) {
                targets.push((m, id));
            }
        }
        targets.sort_by_key(|(m, id)| {
            std::cmp::Reverse(order::key(&m.resource.group, &id.kind, m.namespaced))
        });
        let mut deleted = Vec::new();
        for (m, id) in targets {
            let api = api_of(&self.client, &m, id.namespace.as_deref());
            let Some(live) = api.get_opt(&id.name).await? else {
                continue;
            };
            if live.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let annotations = live.metadata.annotations.clone().unwrap_or_default();
            if annotations.get(PRUNE_ANNOTATION).map(String::as_str) == Some("disabled") {
                kept.push((
                    id.clone(),
                    format!("annotated {PRUNE_ANNOTATION}: disabled"),
                ));
                continue;
            }
            let labels = live.metadata.labels.clone().unwrap_or_default();
            if let Some((k, v)) = opts.labels.iter().find(|(k, v)| labels.get(*k) != Some(*v)) {
                kept.push((
                    id.clone(),
                    format!("its label {k}={v} is gone: another owner took it over"),
                ));
                continue;
            }
            if id.api_version == "v1" && id.kind == "Namespace" {
                let foreign = self.foreign_in(&id.name, &mapper, stale, keep).await?;
                if let Some(f) = foreign {
                    kept.push((
                        id.clone(),
                        format!("it holds {f}, which this inventory did not apply"),
                    ));
                    continue;
                }
            }
            match api.delete(&id.name, &DeleteParams::background()).await {
                Ok(_) => deleted.push(id.clone()),
                Err(e) if crate::error::is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok((deleted, kept))
    }

    /// The first object in namespace `ns` that neither inventory holds and no owner made
    /// (events, the `default` ServiceAccount, the root CA ConfigMap and v1 Endpoints, which the
    /// cluster makes itself, aside).
    async fn foreign_in(
        &self,
        ns: &str,
        mapper: &crate::runtime::discovery::RestMapper,
        stale: &[SyncedObject],
        keep: &BTreeSet<SyncedObject>,
    ) -> Result<Option<String>, ApplyError> {
        let ours = |kind: &str, name: &str| {
            stale
                .iter()
                .chain(keep)
                .any(|o| o.kind == kind && o.name == name && o.namespace.as_deref() == Some(ns))
        };
        for m in mapper.preferred_with(&["list", "delete"]) {
            let kind = m.resource.kind.as_str();
            if !m.namespaced || matches!(kind, "Event" | "Endpoints") {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), ns, &m.resource);
            let list = match api.list_metadata(&ListParams::default()).await {
                Ok(l) => l,
                Err(e) if matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 405) => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            for o in list.items {
                let name = o.metadata.name.as_deref().unwrap_or_default();
                let made_by_cluster = (kind == "ServiceAccount" && name == "default")
                    || (kind == "ConfigMap" && name == "kube-root-ca.crt");
                let owned = o
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|r| !r.is_empty());
                if !made_by_cluster && !owned && !ours(kind, name) {
                    return Ok(Some(format!("{kind} {name}")));
                }
            }
        }
        Ok(None)
    }
}

fn refused(p: &Prepared, e: kube::Error) -> ApplyError {
    match e {
        kube::Error::Api(s) => ApplyError::Refused {
            at: p.at.clone(),
            object: Box::new(p.id.clone()),
            code: s.code,
            message: s.message,
        },
        e => ApplyError::Api(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drift_ignores_what_the_server_changes_on_its_own() {
        let live = json!({"metadata": {"name": "a", "resourceVersion": "5", "generation": 2,
            "managedFields": [{"manager": "x"}]}, "spec": {"replicas": 1}, "status": {"ready": 1}});
        let same = json!({"metadata": {"name": "a", "resourceVersion": "5", "generation": 2},
            "spec": {"replicas": 1}, "status": {"ready": 0}});
        let changed = json!({"metadata": {"name": "a", "generation": 3}, "spec": {"replicas": 2}});
        assert_eq!(comparable(&live), comparable(&same));
        assert_ne!(comparable(&live), comparable(&changed));
        assert_eq!(fnv64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
