//! What a StatefulSet wants from its pods, with no I/O (kubernetes/pkg/controller/statefulset's
//! `updateStatefulSet`, `newVersionedStatefulSetPod` and `completeRollingUpdate`). One pass:
//!
//! 1. every ordinal in `[start, start + replicas)` has a slot; pods with an ordinal outside it
//!    are condemned (deleted from the highest ordinal down);
//! 2. in ordinal order: a failed or succeeded pod is deleted (it comes back at the next pass); a
//!    missing pod is created with its claims — from the current revision below the partition,
//!    else the update revision. Under `OrderedReady` the pass stops at the first pod created,
//!    terminating, or not yet Running, Ready and available, so pods come up one at a time in
//!    order; `Parallel` creates them all at once;
//! 3. condemned pods go the same way: all at once under `Parallel`; one at a time, and only
//!    while every other pod is healthy, under `OrderedReady`;
//! 4. the rolling update (`RollingUpdate` only; `OnDelete` waits for the user): while fewer
//!    than `maxUnavailable` (1 unless set) of the set's pods are unhealthy, old-revision pods at
//!    or above the partition are deleted, highest ordinal first, to be recreated at the update
//!    revision;
//! 5. the status counts pods by readiness and revision; once every pod is updated and ready the
//!    update revision becomes the current one.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::history::REVISION_HASH;
use crate::podutil::{self, controller_owner_ref};

/// The label holding a stateful pod's name (what headless Services' per-pod selectors use).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label holding a stateful pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// A StatefulSet's pod `NAME-ORDINAL`.
pub fn pod_name(set: &str, ordinal: i32) -> String {
    format!("{set}-{ordinal}")
}

/// The claim of template `template` for `ordinal`: `TEMPLATE-SET-ORDINAL`.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// The ordinal of a pod named `SET-N` (None for any other name).
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    n.parse().ok()
}

fn spec(set: &StatefulSet) -> Option<&k8s_openapi::api::apps::v1::StatefulSetSpec> {
    set.spec.as_ref()
}

fn start(set: &StatefulSet) -> i32 {
    spec(set)
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0)
}

fn replicas(set: &StatefulSet) -> i32 {
    spec(set).and_then(|s| s.replicas).unwrap_or(1).max(0)
}

fn min_ready(set: &StatefulSet) -> i32 {
    spec(set).and_then(|s| s.min_ready_seconds).unwrap_or(0)
}

/// Whether pods come up and go one at a time (`OrderedReady`, the default).
pub fn monotonic(set: &StatefulSet) -> bool {
    spec(set).and_then(|s| s.pod_management_policy.as_deref()) != Some("Parallel")
}

fn rolling(set: &StatefulSet) -> bool {
    spec(set)
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate"
}

fn partition(set: &StatefulSet) -> i32 {
    spec(set)
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0)
}

/// `maxUnavailable` against the replica count, rounded up, at least 1.
pub fn max_unavailable(set: &StatefulSet) -> i32 {
    let n = replicas(set);
    let v = spec(set)
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref());
    let resolved = match v {
        None => 1,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((pct * n as i64 + 99) / 100) as i32
        }
    };
    resolved.max(1)
}

/// The revision (name) a pod was made from.
pub fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn running_and_ready(pod: &Pod) -> bool {
    podutil::phase(pod) == "Running" && podutil::is_ready(pod)
}

/// Running, ready for `minReadySeconds`, and not going away.
fn healthy(pod: &Pod, min_ready: i32, now: Timestamp) -> bool {
    running_and_ready(pod) && podutil::is_available(pod, min_ready, now) && !terminating(pod)
}

fn finished(pod: &Pod) -> bool {
    matches!(podutil::phase(pod), "Failed" | "Succeeded")
}

/// The revisions the plan works with: their names and templates.
#[derive(Debug, Clone)]
pub struct Revisions {
    pub current: String,
    pub current_template: PodTemplateSpec,
    pub update: String,
    pub update_template: PodTemplateSpec,
}

/// A pod to create: its ordinal and whether it is at the update revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    pub ordinal: i32,
    pub update: bool,
}

/// One pass's decisions.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<Create>,
    /// Pod names, in the order to delete them.
    pub delete: Vec<String>,
    /// Ordinals whose pods are condemned (their claims follow `whenScaled`).
    pub condemned: Vec<i32>,
    /// Why the pass stopped early, if it did (for the log).
    pub waiting: Option<String>,
    pub status: StatefulSetStatus,
}

/// The pass described in the module docs, over the set's own pods.
pub fn plan(set: &StatefulSet, pods: &[Arc<Pod>], rev: &Revisions, now: Timestamp) -> Plan {
    let name = set.metadata.name.as_deref().unwrap_or("");
    let (first, count) = (start(set), replicas(set));
    let min_ready = min_ready(set);
    let mut out = Plan::default();
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        // Zeros are written out, so a merge patch of the status lowers a count to 0.
        ready_replicas: Some(0),
        available_replicas: Some(0),
        current_replicas: Some(0),
        updated_replicas: Some(0),
        ..Default::default()
    };
    let mut slots: Vec<Option<Arc<Pod>>> = vec![None; count as usize];
    let mut condemned: Vec<(i32, Arc<Pod>)> = Vec::new();
    for p in pods {
        let Some(ord) = ordinal_of(name, p.metadata.name.as_deref().unwrap_or("")) else {
            continue;
        };
        status.replicas += 1;
        if running_and_ready(p) {
            status.ready_replicas = Some(status.ready_replicas.unwrap_or(0) + 1);
            if podutil::is_available(p, min_ready, now) {
                status.available_replicas = Some(status.available_replicas.unwrap_or(0) + 1);
            }
        }
        if !terminating(p) {
            let r = revision_of(p);
            if r == Some(rev.current.as_str()) {
                status.current_replicas = Some(status.current_replicas.unwrap_or(0) + 1);
            }
            if r == Some(rev.update.as_str()) {
                status.updated_replicas = Some(status.updated_replicas.unwrap_or(0) + 1);
            }
        }
        if ord >= first && ord < first + count {
            slots[(ord - first) as usize] = Some(p.clone());
        } else {
            condemned.push((ord, p.clone()));
        }
    }
    condemned.sort_by_key(|c| std::cmp::Reverse(c.0));
    out.condemned = condemned.iter().map(|(o, _)| *o).collect();
    let mono = monotonic(set);
    let unhealthy_other = |me: &str| {
        slots
            .iter()
            .flatten()
            .chain(condemned.iter().map(|(_, p)| p))
            .any(|p| p.metadata.name.as_deref() != Some(me) && !healthy(p, min_ready, now))
            || slots.iter().any(Option::is_none)
    };
    let finish = |mut out: Plan, mut status: StatefulSetStatus| {
        complete_rolling_update(set, rev, &mut status);
        out.status = status;
        out
    };
    if set.metadata.deletion_timestamp.is_some() {
        return finish(out, status);
    }

    // 2. the ordinals in range, in order.
    for (i, slot) in slots.iter().enumerate() {
        let ordinal = first + i as i32;
        let pod_name = pod_name(name, ordinal);
        match slot {
            Some(p) if finished(p) => {
                if !terminating(p) {
                    out.delete.push(pod_name.clone());
                }
                if mono {
                    out.waiting = Some(format!("pod {pod_name} has finished; it is recreated"));
                    return finish(out, status);
                }
            }
            None => {
                let update =
                    !(rolling(set) && ordinal < partition(set)) || rev.current == rev.update;
                out.create.push(Create { ordinal, update });
                if mono {
                    out.waiting = Some(format!("pod {pod_name} is being created"));
                    return finish(out, status);
                }
            }
            Some(p) if terminating(p) => {
                if mono {
                    out.waiting = Some(format!("pod {pod_name} is terminating"));
                    return finish(out, status);
                }
            }
            Some(p) if !healthy(p, min_ready, now) => {
                if mono {
                    out.waiting = Some(format!(
                        "pod {pod_name} is not yet Running, Ready and available"
                    ));
                    return finish(out, status);
                }
            }
            Some(_) => {}
        }
    }

    // 3. condemned pods, highest ordinal first.
    for (ord, p) in &condemned {
        let pod_name = pod_name(name, *ord);
        if terminating(p) {
            if mono {
                out.waiting = Some(format!("pod {pod_name} is terminating"));
                return finish(out, status);
            }
            continue;
        }
        if mono && unhealthy_other(&pod_name) {
            out.waiting = Some("waiting for every pod to be healthy before scaling down".into());
            return finish(out, status);
        }
        out.delete.push(pod_name);
        if mono {
            return finish(out, status);
        }
    }

    // 4. the rolling update.
    if !rolling(set) || !out.create.is_empty() || !out.delete.is_empty() {
        return finish(out, status);
    }
    let unavailable = slots
        .iter()
        .filter(|s| s.as_ref().is_none_or(|p| !healthy(p, min_ready, now)))
        .count() as i32;
    let budget = max_unavailable(set) - unavailable;
    if budget <= 0 {
        out.waiting = Some(format!(
            "{unavailable} pods are unavailable; the update waits"
        ));
        return finish(out, status);
    }
    let floor = partition(set).min(count) as usize;
    for slot in slots[floor..].iter().rev() {
        if out.delete.len() as i32 >= budget {
            break;
        }
        if let Some(p) = slot
            && revision_of(p) != Some(rev.update.as_str())
            && !terminating(p)
        {
            out.delete.push(p.metadata.name.clone().unwrap_or_default());
        }
    }
    finish(out, status)
}

/// `completeRollingUpdate`: every pod updated and ready makes the update revision current.
fn complete_rolling_update(set: &StatefulSet, rev: &Revisions, status: &mut StatefulSetStatus) {
    status.current_revision = Some(rev.current.clone());
    status.update_revision = Some(rev.update.clone());
    let updated = status.updated_replicas.unwrap_or(0);
    if rolling(set)
        && updated == status.replicas
        && status.ready_replicas.unwrap_or(0) == status.replicas
        && status.replicas == replicas(set)
    {
        status.current_replicas = Some(updated);
        status.current_revision = Some(rev.update.clone());
    }
}

/// The pod for `ordinal` from `template` at revision `revision` (`newStatefulSetPod`): its
/// identity (name, hostname, the headless Service's subdomain, the name and index labels)
/// and its claims in place of the template's volumes of the same names.
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, revision: &str, ordinal: i32) -> Pod {
    let name = set.metadata.name.as_deref().unwrap_or("");
    let pod_name = pod_name(name, ordinal);
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH.into(), revision.into());
    labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(pod_name.clone());
    if let Some(svc) = set.spec.as_ref().and_then(|s| s.service_name.as_deref())
        && !svc.is_empty()
    {
        spec.subdomain = Some(svc.into());
    }
    let mut volumes: Vec<Volume> = spec.volumes.take().unwrap_or_default();
    for t in claim_templates(set) {
        let tname = t.metadata.name.clone().unwrap_or_default();
        volumes.retain(|v| v.name != tname);
        volumes.push(Volume {
            name: tname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&tname, name, ordinal),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    if !volumes.is_empty() {
        spec.volumes = Some(volumes);
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_owner_ref(set)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn claim_templates(set: &StatefulSet) -> &[PersistentVolumeClaim] {
    set.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_deref())
        .unwrap_or_default()
}

/// The claims `ordinal` needs (`getPersistentVolumeClaims`): each template named for the
/// ordinal, labelled with the set's selector, without the template's status.
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let name = set.metadata.name.as_deref().unwrap_or("");
    let selector: BTreeMap<String, String> = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    claim_templates(set)
        .iter()
        .map(|t| {
            let tname = t.metadata.name.as_deref().unwrap_or("");
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector.clone());
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(tname, name, ordinal)),
                    namespace: set.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            }
        })
        .collect()
}

fn retention(set: &StatefulSet) -> (bool, bool) {
    let p = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let delete = |v: Option<&String>| v.map(String::as_str) == Some("Delete");
    (
        delete(p.and_then(|p| p.when_deleted.as_ref())),
        delete(p.and_then(|p| p.when_scaled.as_ref())),
    )
}

/// The owner references a claim should carry (`updateClaimOwnerRefForSetAndPod`): its pod's
/// alone when `whenScaled: Delete` and the ordinal is condemned (it goes with the pod), else
/// the set's when `whenDeleted: Delete` (the garbage collector deletes it with the set). References
/// to anything else are kept as they are.
pub fn claim_owners(
    set: &StatefulSet,
    claim: &PersistentVolumeClaim,
    condemned_pod: Option<&Pod>,
) -> Vec<OwnerReference> {
    let (when_deleted, when_scaled) = retention(set);
    let set_uid = set.metadata.uid.clone().unwrap_or_default();
    let mut refs: Vec<OwnerReference> = claim
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.uid != set_uid && !(r.kind == "Pod" && r.api_version == "v1"))
        .collect();
    match condemned_pod.filter(|_| when_scaled) {
        // Only the pod: were the set an owner too, the garbage collector would drop the
        // pod's reference as dangling once the pod is gone, and keep the claim.
        Some(pod) => {
            let mut r = controller_owner_ref(pod);
            r.controller = None;
            refs.push(r);
        }
        None if when_deleted => {
            let mut r = controller_owner_ref(set);
            r.controller = None;
            refs.push(r);
        }
        None => {}
    }
    refs
}

/// When the next pod becomes available (for a requeue), if any is waiting on minReadySeconds.
pub fn next_available(
    set: &StatefulSet,
    pods: &[Arc<Pod>],
    now: Timestamp,
) -> Option<std::time::Duration> {
    let min_ready = min_ready(set);
    if min_ready <= 0 {
        return None;
    }
    pods.iter()
        .filter_map(|p| podutil::available_in(p, min_ready, now))
        .min()
        .and_then(|d| d.try_into().ok())
}
