//! The scheduler's VolumeBinding checks (kube-scheduler's volumebinding plugin, simplified to
//! what Capstan's volumes need): a pod's claims decide where it may go.
//! - a claim that does not exist, or is being deleted, keeps the pod off every node;
//! - a bound claim's volume may pin it (`spec.nodeAffinity`: a local volume's node);
//! - an unbound claim of a WaitForFirstConsumer class waits for the pod: once the pod has a
//!   node, the claim is annotated with it ([`binding::SELECTED_NODE`]) before the pod is bound,
//!   and the provisioner makes the volume there;
//! - an unbound claim of any other class keeps the pod waiting until it is bound.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelector, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use crate::volume::binding;

/// The stores the checks read.
#[derive(Clone, Debug)]
pub struct Stores {
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
    pub classes: Store<StorageClass>,
}

/// What a pod's claims ask of its node.
#[derive(Debug, Default)]
pub struct VolumeFacts {
    /// Node affinities of bound volumes: every one must hold.
    pub pinned: Vec<NodeSelector>,
    /// Unbound WaitForFirstConsumer claims to annotate with the chosen node.
    pub to_select: Vec<String>,
}

/// The pod's volume facts, or the reason no node fits.
pub fn facts(pod: &Pod, stores: &Stores) -> Result<VolumeFacts, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let mut out = VolumeFacts::default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(src) = &v.persistent_volume_claim else {
            continue;
        };
        let name = &src.claim_name;
        let Some(claim) = stores.claims.get(&ObjectRef::new(name).within(ns)) else {
            return Err(format!("persistentvolumeclaim \"{name}\" not found"));
        };
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        let bound_to = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .filter(|n| !n.is_empty());
        if let Some(pv_name) = bound_to {
            let Some(pv) = stores.volumes.get(&ObjectRef::new(pv_name)) else {
                return Err("pvc(s) bound to non-existent pv(s)".into());
            };
            if let Some(sel) = pv
                .spec
                .as_ref()
                .and_then(|s| s.node_affinity.as_ref())
                .and_then(|a| a.required.clone())
            {
                out.pinned.push(sel);
            }
            continue;
        }
        let class = stores
            .classes
            .get(&ObjectRef::new(binding::class_of(&claim)));
        let wait = class
            .as_ref()
            .and_then(|c| c.volume_binding_mode.as_deref())
            == Some("WaitForFirstConsumer");
        if !wait {
            return Err("pod has unbound immediate PersistentVolumeClaims".into());
        }
        out.to_select.push(name.clone());
    }
    Ok(out)
}

/// Whether a node satisfies every bound volume's node affinity.
pub fn fits(f: &VolumeFacts, labels: Option<&BTreeMap<String, String>>, node: &str) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    f.pinned.iter().all(|sel| {
        sel.node_selector_terms
            .iter()
            .any(|t| crate::nodeaffinity::term_fits(t, labels, node))
    })
}

/// Annotates the pod's unbound WaitForFirstConsumer claims with its node (PreBind).
pub async fn select_node(
    client: &kube::Client,
    pod: &Pod,
    claims: &[String],
    node: &str,
) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    for c in claims {
        let patch = json!({"metadata": {"annotations": {binding::SELECTED_NODE: node}}});
        api.patch(c, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    Ok(())
}
