//! Persistent volumes (kubernetes/pkg/controller/volume/{persistentvolume,pvcprotection,
//! pvprotection}), with the local-path provisioner k3s ships built in. Two reconcilers:
//!
//! **Claims.** A claim binds to the volume it names, else to a free volume that fits
//! ([`binding::best_match`]: same class and mode, its access modes, enough room, its
//! selector — the smallest). With none, a claim of a class whose provisioner is
//! [`binding::LOCAL_PATH`] gets a volume made for it: under WaitForFirstConsumer (the only mode
//! a node-local volume can have) once the scheduler has named the node of its first pod
//! ([`binding::SELECTED_NODE`]), as a directory under the node's data dir, pinned to that node.
//! Binding writes the volume's `claimRef` and phase Bound, then the claim's `volumeName` and
//! its status (Bound, capacity, access modes). A claim being deleted keeps its
//! `kubernetes.io/pvc-protection` finalizer while a pod that has not finished uses it.
//!
//! **Volumes.** A volume with no claim is Available; one whose claim is gone is Released, then
//! deleted when its reclaim policy is Delete (Retain keeps it, and its data, for an admin). A
//! volume being deleted keeps `kubernetes.io/pv-protection` while it is Bound.
//!
//! Events say what users must see: WaitForFirstConsumer, ProvisioningSucceeded,
//! ProvisioningFailed, FailedBinding.

pub mod binding;

use std::sync::Arc;

use futures_util::FutureExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use crate::error::is_not_found;
use crate::runtime::{Reconcile, Recorder, drive};
use crate::{Error, Manager, podutil};

pub const NAME: &str = "persistentvolume-binder";

const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";

struct Volumes {
    client: kube::Client,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    recorder: Recorder,
}

fn claim_names(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
}

/// Runs both reconcilers until dropped.
pub async fn run(m: Arc<Manager>) {
    let claims = m.informers.persistent_volume_claims();
    let volumes = m.informers.persistent_volumes();
    let classes = m.informers.storage_classes();
    let nodes = m.informers.nodes();
    let pods = m.informers.pods();
    let me = Arc::new(Volumes {
        client: m.client.clone(),
        claims: claims.store(),
        volumes: volumes.store(),
        classes: classes.store(),
        nodes: nodes.store(),
        pods: pods.store(),
        recorder: Recorder::new(m.client.clone(), "persistentvolume-controller"),
    });
    for ready in [
        claims.wait_synced().boxed(),
        volumes.wait_synced().boxed(),
        classes.wait_synced().boxed(),
        nodes.wait_synced().boxed(),
        pods.wait_synced().boxed(),
    ] {
        ready.await;
    }
    let pending = claims.store();
    let claim_ctl = Controller::for_shared_stream(claims.objects(), claims.store())
        .watches_shared_stream(volumes.objects(), move |pv| waiting_for(&pv, &pending))
        .watches_shared_stream(pods.objects(), |pod| {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            claim_names(&pod)
                .map(|c| ObjectRef::new(c).within(&ns))
                .collect::<Vec<_>>()
        });
    let volume_ctl = Controller::for_shared_stream(volumes.objects(), volumes.store())
        .watches_shared_stream(claims.objects(), |c| {
            c.spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .filter(|n| !n.is_empty())
                .map(ObjectRef::new)
        });
    let (me2, metrics2) = (me.clone(), m.metrics.clone());
    tokio::join!(
        drive(NAME, claim_ctl, me, m.metrics.clone()),
        drive(
            "persistentvolume-reclaimer",
            volume_ctl,
            Arc::new(VolumeSide(me2)),
            metrics2
        ),
    );
}

/// The claims a volume change may concern: the one it is bound or pre-bound to; for a free
/// volume, every unbound claim of its class (a volume made after its claim binds it).
fn waiting_for(
    pv: &PersistentVolume,
    claims: &Store<PersistentVolumeClaim>,
) -> Vec<ObjectRef<PersistentVolumeClaim>> {
    let spec = pv.spec.as_ref();
    if let Some(r) = spec.and_then(|s| s.claim_ref.as_ref()) {
        return match (r.name.as_deref(), r.namespace.as_deref()) {
            (Some(name), Some(ns)) => vec![ObjectRef::new(name).within(ns)],
            _ => Vec::new(),
        };
    }
    let class = spec
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("");
    claims
        .state()
        .iter()
        .filter(|c| {
            binding::class_of(c) == class
                && c.spec
                    .as_ref()
                    .and_then(|s| s.volume_name.as_deref())
                    .is_none_or(str::is_empty)
        })
        .map(|c| ObjectRef::from_obj(&**c))
        .collect()
}

fn finalizers_without(meta: &kube::api::ObjectMeta, f: &str) -> Option<Vec<String>> {
    let list = meta.finalizers.as_ref()?;
    list.iter()
        .any(|x| x == f)
        .then(|| list.iter().filter(|x| *x != f).cloned().collect())
}

impl Reconcile<PersistentVolumeClaim> for Volumes {
    async fn reconcile(&self, claim: Arc<PersistentVolumeClaim>) -> Result<Action, Error> {
        let ns = claim.metadata.namespace.clone().unwrap_or_default();
        let name = claim.metadata.name.clone().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        if claim.metadata.deletion_timestamp.is_some() {
            let in_use = self.pods.state().iter().any(|p| {
                p.metadata.namespace.as_deref() == Some(ns.as_str())
                    && !matches!(podutil::phase(p), "Succeeded" | "Failed")
                    && claim_names(p).any(|c| c == name)
            });
            if !in_use && let Some(kept) = finalizers_without(&claim.metadata, PVC_PROTECTION) {
                let patch = json!({"metadata": {"resourceVersion": claim.metadata.resource_version,
                    "finalizers": kept}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
            return Ok(Action::await_change());
        }
        let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
        let volume_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| !n.is_empty());
        if phase == Some("Bound") {
            let live = volume_name
                .as_deref()
                .and_then(|v| self.volumes.get(&ObjectRef::new(v)));
            if live.is_none() {
                let patch = json!({"status": {"phase": "Lost"}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                self.recorder.warning(
                    &*claim,
                    "ClaimLost",
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!".into(),
                );
            }
            return Ok(Action::await_change());
        }
        let volumes = self.volumes.state();
        if let Some(pv) = binding::best_match(&volumes, &claim) {
            self.bind(&claim, &pv).await?;
            return Ok(Action::await_change());
        }
        if let Some(v) = &volume_name {
            self.recorder.warning(
                &*claim,
                "FailedBinding",
                format!("volume \"{v}\" is not available or does not fit the claim"),
            );
            return Ok(Action::await_change());
        }
        let class_name = binding::class_of(&claim);
        let class = self.classes.get(&ObjectRef::new(class_name));
        let Some(class) = class.filter(|_| !class_name.is_empty()) else {
            let note = if class_name.is_empty() {
                "no persistent volumes available for this claim and no storage class is set"
                    .to_string()
            } else {
                format!("storageclass.storage.k8s.io \"{class_name}\" not found")
            };
            self.recorder.warning(&*claim, "FailedBinding", note);
            return Ok(Action::await_change());
        };
        if class.provisioner != binding::LOCAL_PATH {
            // Another provisioner's claim: left to it.
            return Ok(Action::await_change());
        }
        if class.volume_binding_mode.as_deref() != Some("WaitForFirstConsumer") {
            self.recorder.warning(
                &*claim,
                "ProvisioningFailed",
                format!("{} provisions node-local volumes: the class needs volumeBindingMode WaitForFirstConsumer", binding::LOCAL_PATH),
            );
            return Ok(Action::await_change());
        }
        let selected = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(binding::SELECTED_NODE));
        let Some(node) = selected else {
            self.recorder.normal(
                &*claim,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding".into(),
            );
            return Ok(Action::await_change());
        };
        let dir = self
            .nodes
            .get(&ObjectRef::new(node))
            .and_then(|n| {
                n.metadata
                    .annotations
                    .as_ref()?
                    .get(binding::LOCAL_PATH_DIR)
                    .cloned()
            })
            .unwrap_or_else(|| binding::DEFAULT_LOCAL_PATH_DIR.into());
        let pv = binding::local_volume(&claim, &class, node, &dir);
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        let pv_api: Api<PersistentVolume> = Api::all(self.client.clone());
        match pv_api.create(&PostParams::default(), &pv).await {
            Ok(_) => self.recorder.normal(
                &*claim,
                "ProvisioningSucceeded",
                format!("Successfully provisioned volume {pv_name} on node {node}"),
            ),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                self.recorder.warning(
                    &*claim,
                    "ProvisioningFailed",
                    format!("failed to provision volume with StorageClass \"{class_name}\": {e}"),
                );
                return Err(e.into());
            }
        }
        // The volume's arrival in the cache queues the claim again, to bind it.
        Ok(Action::await_change())
    }
}

impl Volumes {
    /// Binds `claim` to `pv`: the volume's side first (claimRef, Bound), then the claim's.
    async fn bind(
        &self,
        claim: &PersistentVolumeClaim,
        pv: &PersistentVolume,
    ) -> Result<(), Error> {
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        let pv_api: Api<PersistentVolume> = Api::all(self.client.clone());
        let want_ref = binding::claim_ref(claim);
        let spec = pv.spec.clone().unwrap_or_default();
        let same = spec.claim_ref.as_ref().is_some_and(|r| {
            r.uid == want_ref.uid && r.name == want_ref.name && r.namespace == want_ref.namespace
        });
        if !same {
            let patch = json!({"metadata": {"resourceVersion": pv.metadata.resource_version,
                    "annotations": {BOUND_BY_CONTROLLER: "yes"}},
                "spec": {"claimRef": want_ref}});
            pv_api
                .patch(&pv_name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            let patch = json!({"status": {"phase": "Bound"}});
            pv_api
                .patch_status(&pv_name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        let ns = claim.metadata.namespace.clone().unwrap_or_default();
        let name = claim.metadata.name.clone().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        let patch = json!({"metadata": {"resourceVersion": claim.metadata.resource_version,
                "annotations": {BIND_COMPLETED: "yes", BOUND_BY_CONTROLLER: "yes"}},
            "spec": {"volumeName": pv_name}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        let patch = json!({"status": {"phase": "Bound",
            "capacity": spec.capacity, "accessModes": spec.access_modes}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }
}

/// The volumes' reconciler (phases, reclaim, protection).
struct VolumeSide(Arc<Volumes>);

impl Reconcile<PersistentVolume> for VolumeSide {
    async fn reconcile(&self, pv: Arc<PersistentVolume>) -> Result<Action, Error> {
        let me = &self.0;
        let name = pv.metadata.name.clone().unwrap_or_default();
        let api: Api<PersistentVolume> = Api::all(me.client.clone());
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
        let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        let claim = claim_ref.and_then(|r| {
            let c = me
                .claims
                .get(&ObjectRef::new(r.name.as_deref()?).within(r.namespace.as_deref()?))?;
            let same_uid = r.uid.is_none() || r.uid == c.metadata.uid;
            same_uid.then_some(c)
        });
        if pv.metadata.deletion_timestamp.is_some() {
            let bound = phase == Some("Bound") && claim.is_some();
            if !bound && let Some(kept) = finalizers_without(&pv.metadata, PV_PROTECTION) {
                let patch = json!({"metadata": {"resourceVersion": pv.metadata.resource_version,
                    "finalizers": kept}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
            return Ok(Action::await_change());
        }
        let set_phase = |p: &'static str| {
            let api = api.clone();
            let name = name.clone();
            async move {
                let patch = json!({"status": {"phase": p}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
            }
        };
        match (claim_ref, claim) {
            (None, _) => {
                if phase != Some("Available") {
                    set_phase("Available").await?;
                }
            }
            (Some(_), Some(c)) => {
                let bound_here =
                    c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(name.as_str());
                if bound_here && phase != Some("Bound") {
                    set_phase("Bound").await?;
                }
            }
            (Some(_), None) => {
                // Its claim is gone.
                if phase != Some("Released") && phase != Some("Failed") {
                    set_phase("Released").await?;
                    return Ok(Action::await_change());
                }
                let policy = pv
                    .spec
                    .as_ref()
                    .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
                    .unwrap_or("Retain");
                if policy == "Delete" && phase == Some("Released") {
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: pv.metadata.uid.clone(),
                            resource_version: None,
                        }),
                        ..Default::default()
                    };
                    match api.delete(&name, &dp).await {
                        Err(e) if !is_not_found(&e) => return Err(e.into()),
                        _ => {}
                    }
                }
            }
        }
        Ok(Action::await_change())
    }
}
