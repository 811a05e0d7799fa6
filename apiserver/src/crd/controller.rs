//! The CRD controller every API server replica runs (apiextensions-apiserver's naming,
//! establishing, finalizing and storage-version controllers, folded into one level-triggered
//! loop). Its input is the CRD watch cache, so every replica sharing a store converges on the
//! same served set: no replica-to-replica messages, no restart.
//!
//! Each pass, over all CRDs at once:
//! 1. **names**: CRDs are ordered — those whose `status.acceptedNames` already hold their names
//!    first, then by creation time and name — and each takes its plural, singular, kind,
//!    listKind and short names in its group unless an earlier CRD (or a built-in) holds one.
//!    A conflict sets NamesAccepted=False with the name in use, and the CRD is not served;
//! 2. **serve**: accepted CRDs are registered, one resource per served version; a change of
//!    spec re-registers (the old watch cache stops, so schema changes apply to cached objects);
//!    CRDs gone or no longer accepted are unregistered;
//! 3. **status**: NamesAccepted, Established, Terminating, acceptedNames and storedVersions are
//!    written when they differ from what is stored (every replica computes the same result, so
//!    concurrent replicas do not fight);
//! 4. **cleanup**: a CRD being deleted serves reads and deletes only; its instances are
//!    deleted (honouring their own finalizers), then its cleanup finalizer is removed and the
//!    store deletes it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::CLEANUP_FINALIZER;
use super::definition::{self, Names};
use crate::ApiServer;
use crate::errors::ApiResult;
use crate::object::{self, ObjectExt};
use crate::registry::ResourceInfo;
use crate::request::{Params, Target};

const CRD_GROUP: &str = "apiextensions.k8s.io";
const CRDS: &str = "customresourcedefinitions";

/// What one CRD currently registers.
struct Served {
    fingerprint: String,
    infos: Vec<Arc<ResourceInfo>>,
}

/// The controller's memory between passes.
pub struct CrdController {
    api: Weak<ApiServer>,
    served: HashMap<String, Served>,
    /// The built-in names per group, which no CRD may take.
    builtin_names: HashMap<String, Taken>,
    /// CRDs (by uid) whose instances are being deleted.
    cleanups: Arc<Mutex<HashSet<String>>>,
    /// (name, resourceVersion) of every CRD at the last pass: a pass with the same set does
    /// nothing new (progress notifications move the revision too).
    last_seen: Vec<(String, String)>,
}

impl std::fmt::Debug for CrdController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdController")
            .field("served", &self.served.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The outcome of the names pass for one CRD.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    /// What the spec asks for.
    names: Names,
    /// What it is served under: the spec's names when they are free, else the names it was
    /// accepted with earlier (a CRD keeps serving when an edit asks for a name in use), else none.
    accepted: Option<Names>,
    conflict: Option<String>,
}

/// The names taken in one group, with who holds each ("" for a built-in). Resource names
/// (plural, singular, short names) and kinds (kind, listKind) are separate spaces, as in
/// Kubernetes.
#[derive(Debug, Clone, Default)]
struct Taken {
    resources: HashMap<String, String>,
    kinds: HashMap<String, String>,
}

impl Taken {
    fn reserve(&mut self, names: &Names, owner: &str) {
        for n in resource_names(names) {
            self.resources.entry(n).or_insert_with(|| owner.to_string());
        }
        for k in [&names.kind, &names.list_kind] {
            self.kinds
                .entry(k.clone())
                .or_insert_with(|| owner.to_string());
        }
    }

    /// The first name of `names` someone other than `owner` holds.
    fn conflict(&self, names: &Names, owner: &str) -> Option<String> {
        let held = |m: &HashMap<String, String>, n: &String| m.get(n).is_some_and(|o| o != owner);
        resource_names(names)
            .iter()
            .find(|n| held(&self.resources, n))
            .or_else(|| {
                [&names.kind, &names.list_kind]
                    .into_iter()
                    .find(|k| held(&self.kinds, k))
            })
            .map(|n| format!("{n:?} is already in use"))
    }
}

fn resource_names(n: &Names) -> Vec<String> {
    let mut v = vec![n.plural.clone(), n.singular.clone()];
    v.extend(n.short_names.iter().cloned());
    v
}

/// The names a CRD was accepted with, if any.
fn accepted_of(crd: &Value) -> Option<Names> {
    let n = Names::of(crd["status"].get("acceptedNames")?);
    (!n.plural.is_empty() && !n.kind.is_empty()).then_some(n)
}

impl CrdController {
    /// Starts the controller: waits for the CRD cache, serves every accepted CRD before
    /// returning (so a restarted server serves custom resources as soon as it is ready), then
    /// follows changes in a task.
    pub async fn start(api: &Arc<ApiServer>) -> ApiResult<()> {
        let crd_info = api
            .registry
            .get(CRD_GROUP, "v1", CRDS)
            .ok_or_else(|| crate::errors::ApiError::internal("CRDs are not registered"))?;
        let cacher = api.cacher(&crd_info)?;
        let mut rx = cacher.subscribe_revision();
        if !cacher.wait_for(0, Duration::from_secs(30)).await {
            return Err(crate::errors::ApiError::timeout(
                "the CRD watch cache did not list within 30s",
            ));
        }
        let mut builtin_names: HashMap<String, Taken> = HashMap::new();
        for r in api.registry.all() {
            let names = Names {
                plural: r.plural.clone(),
                singular: r.singular.clone(),
                kind: r.kind.clone(),
                list_kind: r.list_kind.clone(),
                short_names: r.short_names.clone(),
                categories: Vec::new(),
            };
            builtin_names
                .entry(r.group.clone())
                .or_default()
                .reserve(&names, "");
        }
        let mut ctl = CrdController {
            api: Arc::downgrade(api),
            served: HashMap::new(),
            builtin_names,
            cleanups: Arc::new(Mutex::new(HashSet::new())),
            last_seen: Vec::new(),
        };
        let mut last_changes = cacher.changes();
        ctl.pass(api, &cacher.values("").0, false).await;
        let weak_cacher = Arc::downgrade(&cacher);
        drop(cacher);
        tokio::spawn(async move {
            let mut last_retry = std::time::Instant::now();
            loop {
                // Woken by any CRD change; every 2 s a pass also retries status writes that
                // failed (a busy cluster wakes this loop constantly, so the retry has its own
                // clock rather than waiting for a quiet moment).
                let changed = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
                if matches!(changed, Ok(Err(_))) {
                    return; // the cache is gone: the server stopped
                }
                // The revision also moves with writes to other resources (progress
                // notifications): those wake-ups cost one comparison of the cache's change
                // count (the CRDs are parsed only when they changed, or to retry).
                let retry = last_retry.elapsed() >= Duration::from_secs(2);
                if retry {
                    last_retry = std::time::Instant::now();
                }
                let (Some(api), Some(cacher)) = (ctl.api.upgrade(), weak_cacher.upgrade()) else {
                    return;
                };
                let changes = cacher.changes();
                if changes == last_changes && !retry {
                    continue;
                }
                last_changes = changes;
                let objects = cacher.values("").0;
                drop(cacher);
                ctl.pass(&api, &objects, retry).await;
            }
        });
        Ok(())
    }

    /// One reconcile over every CRD. `retry` (the periodic wake-up) also rewrites statuses that
    /// failed to be written when nothing changed since.
    async fn pass(&mut self, api: &Arc<ApiServer>, crds: &[Arc<Value>], retry: bool) {
        let seen: Vec<(String, String)> = crds
            .iter()
            .map(|c| {
                (
                    c.name().unwrap_or_default().to_string(),
                    c.meta_str("resourceVersion")
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        let quiet = seen == self.last_seen;
        self.last_seen = seen;
        if quiet {
            if retry {
                self.write_statuses(api, crds, &self.verdicts(crds)).await;
            }
            return;
        }
        let verdicts = self.verdicts(crds);
        self.serve(api, crds, &verdicts);
        self.write_statuses(api, crds, &verdicts).await;
        for crd in crds {
            if crd.is_deleting() && crd.finalizers().iter().any(|f| f == CLEANUP_FINALIZER) {
                self.start_cleanup(api, crd);
            }
        }
    }

    /// Step 1: who gets which names. Names already accepted stay with their holder; new names
    /// go to the earliest CRD (by creation time, then name) asking for them.
    fn verdicts(&self, crds: &[Arc<Value>]) -> BTreeMap<String, Verdict> {
        let mut order: Vec<&Arc<Value>> = crds.iter().collect();
        order.sort_by_key(|c| {
            (
                c.meta_str("creationTimestamp")
                    .unwrap_or_default()
                    .to_string(),
                c.name().unwrap_or_default().to_string(),
            )
        });
        let group_of = |c: &Value| c["spec"]["group"].as_str().unwrap_or_default().to_string();
        let mut taken: HashMap<String, Taken> = self.builtin_names.clone();
        for crd in &order {
            if let Some(acc) = accepted_of(crd) {
                taken
                    .entry(group_of(crd))
                    .or_default()
                    .reserve(&acc, crd.name().unwrap_or_default());
            }
        }
        let mut out = BTreeMap::new();
        for crd in order {
            let name = crd.name().unwrap_or_default().to_string();
            let names = Names::of(&crd["spec"]["names"]);
            let group = taken.entry(group_of(crd)).or_default();
            let conflict = group.conflict(&names, &name);
            let accepted = match conflict {
                None => {
                    group.reserve(&names, &name);
                    Some(names.clone())
                }
                // Keep serving the names accepted earlier — unless someone else holds them
                // too (two replicas that accepted from different views): then the order
                // decides, as for new names.
                Some(_) => accepted_of(crd).filter(|acc| group.conflict(acc, &name).is_none()),
            };
            out.insert(
                name,
                Verdict {
                    names,
                    accepted,
                    conflict,
                },
            );
        }
        out
    }

    /// Step 2: register what is accepted, unregister what is not.
    fn serve(
        &mut self,
        api: &ApiServer,
        crds: &[Arc<Value>],
        verdicts: &BTreeMap<String, Verdict>,
    ) {
        let mut keep = BTreeSet::new();
        for crd in crds {
            let name = crd.name().unwrap_or_default().to_string();
            let Some(v) = verdicts.get(&name) else {
                continue;
            };
            let Some(accepted) = &v.accepted else {
                continue;
            };
            let terminating = crd.is_deleting();
            let fingerprint = json!([crd["spec"], accepted.to_json(), terminating]).to_string();
            keep.insert(name.clone());
            if self
                .served
                .get(&name)
                .is_some_and(|s| s.fingerprint == fingerprint)
            {
                continue;
            }
            let infos = match definition::resources_of(crd, accepted, terminating) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(crd = name, error = e, "not serving an invalid CRD");
                    keep.remove(&name);
                    continue;
                }
            };
            // The new resources replace the old ones in place (no moment where an existing
            // version is not served); versions no longer served go afterwards.
            let mut registered = Vec::new();
            for info in infos {
                let info = api.registry.add(info);
                let _ = api.cacher(&info); // replaces a cache built for the old spec
                registered.push(info);
            }
            if let Some(old) = self.served.remove(&name) {
                let gone: Vec<Arc<ResourceInfo>> = old
                    .infos
                    .into_iter()
                    .filter(|o| !registered.iter().any(|n| n.version == o.version))
                    .collect();
                unregister(api, &gone);
            }
            tracing::info!(
                crd = name,
                versions = ?registered.iter().map(|i| i.version.as_str()).collect::<Vec<_>>(),
                terminating,
                "serving custom resource"
            );
            self.served.insert(
                name,
                Served {
                    fingerprint,
                    infos: registered,
                },
            );
        }
        let gone: Vec<String> = self
            .served
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = self.served.remove(&name) {
                tracing::info!(crd = name, "no longer serving custom resource");
                unregister(api, &old.infos);
            }
        }
    }

    /// Step 3: conditions, acceptedNames and storedVersions.
    async fn write_statuses(
        &self,
        api: &Arc<ApiServer>,
        crds: &[Arc<Value>],
        verdicts: &BTreeMap<String, Verdict>,
    ) {
        let Some(info) = api.registry.get(CRD_GROUP, "v1", CRDS) else {
            return;
        };
        for crd in crds {
            let name = crd.name().unwrap_or_default().to_string();
            let Some(verdict) = verdicts.get(&name) else {
                continue;
            };
            let served = self.served.contains_key(&name);
            let desired = desired_status(crd, verdict, served);
            if same_status(&crd["status"], &desired) {
                continue;
            }
            let target = Target {
                info: info.clone(),
                namespace: None,
                name: Some(name.clone()),
                subresource: Some("status".into()),
            };
            let result = api
                .guaranteed_update(&target, None, false, None, |live| {
                    let mut new = live.clone();
                    new["status"] = desired_status(live, verdict, served);
                    Ok(new)
                })
                .await;
            if let Err(e) = result
                && e.code != 404
            {
                tracing::warn!(crd = name, error = %e.message, "writing CRD status failed; will retry");
            }
        }
    }

    /// Step 4: delete every instance, then let the CRD go.
    fn start_cleanup(&self, api: &Arc<ApiServer>, crd: &Value) {
        let uid = crd.meta_str("uid").unwrap_or_default().to_string();
        {
            let Ok(mut running) = self.cleanups.lock() else {
                return;
            };
            if !running.insert(uid.clone()) {
                return;
            }
        }
        let names = Names::of(&crd["spec"]["names"]);
        // Where the instances are does not depend on the definition being usable: a CRD that
        // no longer validates still has its instances deleted (directly from the store).
        let prefix = format!(
            "{}/{}/",
            crd["spec"]["group"].as_str().unwrap_or_default(),
            names.plural
        );
        let infos = definition::resources_of(crd, &names, true).unwrap_or_default();
        let name = crd.name().unwrap_or_default().to_string();
        let weak = Arc::downgrade(api);
        let cleanups = self.cleanups.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let Some(api) = weak.upgrade() else { break };
                match cleanup_step(&api, &name, &prefix, infos.first()).await {
                    Ok(true) => break,
                    Ok(false) => backoff = Duration::from_millis(250),
                    Err(e) => {
                        tracing::warn!(crd = name, error = %e.message, "deleting custom resources failed; retrying");
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                drop(api);
                tokio::time::sleep(backoff).await;
            }
            if let Ok(mut running) = cleanups.lock() {
                running.remove(&uid);
            }
        });
    }
}

fn unregister(api: &ApiServer, infos: &[Arc<ResourceInfo>]) {
    for info in infos {
        api.registry
            .remove(&info.group, &info.version, &info.plural);
        api.drop_cacher(info);
    }
}

/// One round of a CRD's cleanup. Ok(true) once its instances are gone and its finalizer is
/// removed.
async fn cleanup_step(
    api: &Arc<ApiServer>,
    crd: &str,
    prefix: &str,
    info: Option<&ResourceInfo>,
) -> ApiResult<bool> {
    let page = api
        .store
        .list(prefix, capstan_storage::ListOptions::default())
        .await
        .map_err(|e| crate::errors::from_storage(e, CRD_GROUP, CRDS, crd))?;
    if !page.items.is_empty() {
        let info = info.map(|i| Arc::new(i.clone()));
        for kv in &page.items {
            // What the API cannot reach (no usable definition, undecodable, or stored under a
            // key its name does not map to) is removed from the store directly: nothing else
            // could delete it.
            let raw_delete = || async {
                match api.store.delete(&kv.key, Some(kv.mod_revision)).await {
                    Ok(_)
                    | Err(capstan_storage::StorageError::NotFound { .. })
                    | Err(capstan_storage::StorageError::Conflict { .. }) => Ok(()),
                    Err(e) => Err(crate::errors::from_storage(e, CRD_GROUP, CRDS, crd)),
                }
            };
            let Some(info) = &info else {
                raw_delete().await?;
                continue;
            };
            let Some(obj) = info.decode(&kv.value, kv.mod_revision) else {
                raw_delete().await?;
                continue;
            };
            if info.key_of(&obj) != kv.key {
                raw_delete().await?;
                continue;
            }
            if obj.is_deleting() {
                continue; // waiting for its own finalizers
            }
            let target = Target {
                info: info.clone(),
                namespace: obj.namespace().map(str::to_string),
                name: obj.name().map(str::to_string),
                subresource: None,
            };
            match api.delete(&target, &Bytes::new(), &Params::default()).await {
                Ok(_) => {}
                Err(e) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(false);
    }
    let Some(crd_info) = api.registry.get(CRD_GROUP, "v1", CRDS) else {
        return Ok(true);
    };
    let target = Target {
        info: crd_info,
        namespace: None,
        name: Some(crd.to_string()),
        subresource: None,
    };
    match api
        .guaranteed_update(&target, None, false, None, |live| {
            let mut new = live.clone();
            let kept: Vec<String> = live
                .finalizers()
                .into_iter()
                .filter(|f| f != CLEANUP_FINALIZER)
                .collect();
            new.set_meta("finalizers", json!(kept));
            Ok(new)
        })
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code == 404 => Ok(true),
        Err(e) => Err(e),
    }
}

fn condition<'v>(crd: &'v Value, ty: &str) -> Option<&'v str> {
    crd["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)?
        .get("status")?
        .as_str()
}

/// The status a CRD should have; conditions keep their lastTransitionTime while their status
/// does not change.
fn desired_status(crd: &Value, verdict: &Verdict, served: bool) -> Value {
    let now = object::now();
    let old = crd["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let cond = |ty: &str, status: bool, reason: &str, message: &str| {
        let status = if status { "True" } else { "False" };
        let since = old
            .iter()
            .find(|c| c["type"] == ty && c["status"] == status)
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now));
        json!({"type": ty, "status": status, "reason": reason, "message": message, "lastTransitionTime": since})
    };
    let mut conditions = Vec::new();
    match &verdict.conflict {
        None => conditions.push(cond(
            "NamesAccepted",
            true,
            "NoConflicts",
            "no conflicts found",
        )),
        Some(c) => conditions.push(cond("NamesAccepted", false, "NameConflict", c)),
    }
    if served || condition(crd, "Established") == Some("True") {
        // Once established, a CRD stays established (a later name conflict does not undo it).
        conditions.push(cond(
            "Established",
            true,
            "InitialNamesAccepted",
            "the initial names have been accepted",
        ));
    } else {
        conditions.push(cond(
            "Established",
            false,
            "NotAccepted",
            "not all names are accepted",
        ));
    }
    if crd.is_deleting() {
        conditions.push(cond(
            "Terminating",
            true,
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
        ));
    }
    let accepted = verdict
        .accepted
        .as_ref()
        .map(Names::to_json)
        .unwrap_or_else(|| json!({"plural": "", "kind": ""}));
    let mut stored = object::strings(crd["status"].get("storedVersions"));
    if let Some(v) = crd["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .and_then(|v| v["name"].as_str())
        && !stored.iter().any(|s| s == v)
    {
        stored.push(v.to_string());
    }
    json!({"conditions": conditions, "acceptedNames": accepted, "storedVersions": stored})
}

/// Equal but for condition timestamps.
fn same_status(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in cs {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastTransitionTime");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(name: &str, plural: &str, kind: &str, created: &str) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": format!("{plural}.example.com"), "creationTimestamp": created, "resourceVersion": "1", "uid": name},
            "spec": {"group": "example.com", "names": {"plural": plural, "kind": kind}}}),
        )
    }

    fn ctl() -> CrdController {
        let mut builtin = HashMap::new();
        let mut core = Taken::default();
        core.reserve(&Names::of(&json!({"plural": "pods", "kind": "Pod"})), "");
        builtin.insert("".to_string(), core);
        CrdController {
            api: Weak::new(),
            served: HashMap::new(),
            builtin_names: builtin,
            cleanups: Arc::default(),
            last_seen: Vec::new(),
        }
    }

    fn accepted(mut c: Value) -> Arc<Value> {
        c["status"] = json!({"acceptedNames": c["spec"]["names"].clone(),
            "conditions": [{"type": "NamesAccepted", "status": "True"}, {"type": "Established", "status": "True"}]});
        Arc::new(c)
    }

    #[test]
    fn the_earlier_crd_keeps_a_contested_name() {
        let a = crd("a", "widgets", "Widget", "2024-01-01T00:00:00Z");
        let b = crd("b", "gadgets", "Widget", "2024-01-02T00:00:00Z");
        let v = ctl().verdicts(&[b.clone(), a.clone()]);
        assert_eq!(v["widgets.example.com"].conflict, None);
        assert_eq!(
            v["gadgets.example.com"].conflict.as_deref(),
            Some("\"widget\" is already in use"),
            "the singular, defaulted from the kind"
        );
        assert_eq!(v["gadgets.example.com"].accepted, None);
    }

    #[test]
    fn a_crd_holding_its_accepted_names_wins_over_an_older_newcomer() {
        let holder = accepted((*crd("a", "widgets", "Widget", "2024-01-05T00:00:00Z")).clone());
        let older = crd("b", "widgets2", "Widget", "2024-01-01T00:00:00Z");
        let v = ctl().verdicts(&[older, holder]);
        assert_eq!(v["widgets.example.com"].conflict, None);
        assert!(v["widgets2.example.com"].conflict.is_some());
    }

    #[test]
    fn an_edit_into_a_conflict_keeps_serving_the_accepted_names() {
        let a = accepted((*crd("a", "widgets", "Widget", "2024-01-01T00:00:00Z")).clone());
        let mut b = (*crd("b", "gadgets", "Gadget", "2024-01-02T00:00:00Z")).clone();
        b["spec"]["names"]["shortNames"] = json!(["g"]);
        let b = accepted(b);
        let mut edited = (*a).clone();
        edited["spec"]["names"]["shortNames"] = json!(["w", "g"]);
        let v = ctl().verdicts(&[Arc::new(edited.clone()), b]);
        let va = &v["widgets.example.com"];
        assert_eq!(va.conflict.as_deref(), Some("\"g\" is already in use"));
        assert_eq!(
            va.accepted.as_ref().unwrap().short_names,
            Vec::<String>::new()
        );
        let status = desired_status(&edited, va, true);
        assert_eq!(status["conditions"][0]["status"], "False");
        assert_eq!(
            status["conditions"][1]["status"], "True",
            "still established"
        );
    }

    #[test]
    fn resource_names_and_kinds_are_separate_spaces() {
        // Kind "Backup" and a plural "backups" do not collide.
        let a = crd("a", "backupjobs", "Backup", "2024-01-01T00:00:00Z");
        let b = crd("b", "backups", "BackupV2", "2024-01-02T00:00:00Z");
        let v = ctl().verdicts(&[a, b]);
        assert!(v.values().all(|v| v.conflict.is_none()), "{v:?}");
    }

    #[test]
    fn status_reports_conditions_and_stored_versions() {
        let c = json!({"metadata": {"name": "w"}, "spec": {"versions": [{"name": "v1", "storage": true}]},
            "status": {"storedVersions": ["v1beta1"]}});
        let names = Names::of(&json!({"plural": "widgets", "kind": "Widget"}));
        let verdict = Verdict {
            names: names.clone(),
            accepted: Some(names),
            conflict: None,
        };
        let s = desired_status(&c, &verdict, true);
        assert_eq!(s["storedVersions"], json!(["v1beta1", "v1"]));
        assert_eq!(s["conditions"][1]["type"], "Established");
        assert_eq!(s["conditions"][1]["status"], "True");
        assert_eq!(s["acceptedNames"]["listKind"], "WidgetList");
        let again = desired_status(
            &json!({"spec": c["spec"], "status": s.clone()}),
            &verdict,
            true,
        );
        assert!(same_status(&s, &again));
    }
}
