//! Which PersistentVolume a claim binds to, and what the local-path provisioner makes, with no
//! I/O (kubernetes/pkg/controller/volume/persistentvolume's `findBestMatchForClaim`, and
//! rancher/local-path-provisioner's volume shape).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The provisioner Capstan ships (as k3s ships rancher's local-path provisioner).
pub const LOCAL_PATH: &str = "capstan.dev/local-path";
/// The annotation the scheduler sets on a WaitForFirstConsumer claim: the node its first pod
/// was placed on.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The annotation naming who provisioned a volume.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The Node annotation where an agent says which directory holds its local volumes.
pub const LOCAL_PATH_DIR: &str = "capstan.dev/local-path-dir";
/// The finalizer on provisioned volumes: the node agent removes it with the directory.
pub const CLEANUP: &str = "capstan.dev/local-path-cleanup";
/// Where local volumes go on a node that does not say.
pub const DEFAULT_LOCAL_PATH_DIR: &str = "/var/lib/capstan/storage";

fn storage(q: Option<&BTreeMap<String, Quantity>>) -> i64 {
    q.and_then(|m| m.get("storage"))
        .and_then(|q| capstan_api::quantity::parse(&q.0, 1.0))
        .unwrap_or(0)
}

/// The size a claim asks for, in bytes.
pub fn requested(claim: &PersistentVolumeClaim) -> i64 {
    storage(
        claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    )
}

/// The class a claim names ("" for none).
pub fn class_of(claim: &PersistentVolumeClaim) -> &str {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

/// Whether `pv` can hold `claim`: free (or pre-bound to this very claim), the same class and
/// volume mode, every access mode the claim asks for, enough room, and the claim's selector.
pub fn fits(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let (Some(spec), Some(cspec)) = (pv.spec.as_ref(), claim.spec.as_ref()) else {
        return false;
    };
    if pv.metadata.deletion_timestamp.is_some() {
        return false;
    }
    if let Some(r) = &spec.claim_ref
        && (r.name.as_deref() != claim.metadata.name.as_deref()
            || r.namespace.as_deref() != claim.metadata.namespace.as_deref()
            || r.uid
                .as_ref()
                .is_some_and(|u| Some(u) != claim.metadata.uid.as_ref()))
    {
        return false;
    }
    if spec.storage_class_name.as_deref().unwrap_or("") != class_of(claim) {
        return false;
    }
    let mode = |m: Option<&String>| m.map_or("Filesystem", String::as_str).to_string();
    if mode(spec.volume_mode.as_ref()) != mode(cspec.volume_mode.as_ref()) {
        return false;
    }
    let have = spec.access_modes.as_deref().unwrap_or_default();
    if !cspec
        .access_modes
        .iter()
        .flatten()
        .all(|m| have.contains(m))
    {
        return false;
    }
    if storage(spec.capacity.as_ref()) < requested(claim) {
        return false;
    }
    // An empty selector selects every volume.
    match &cspec.selector {
        Some(sel)
            if sel.match_labels.as_ref().is_some_and(|m| !m.is_empty())
                || sel
                    .match_expressions
                    .as_ref()
                    .is_some_and(|m| !m.is_empty()) =>
        {
            crate::podutil::selects(Some(sel), pv.metadata.labels.as_ref())
        }
        _ => true,
    }
}

/// The best volume for a claim: one pre-bound to it, else the smallest that fits.
pub fn best_match(
    volumes: &[Arc<PersistentVolume>],
    claim: &PersistentVolumeClaim,
) -> Option<Arc<PersistentVolume>> {
    let fitting: Vec<&Arc<PersistentVolume>> = volumes.iter().filter(|v| fits(v, claim)).collect();
    if let Some(v) = fitting
        .iter()
        .find(|v| v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some())
    {
        return Some((*v).clone());
    }
    if let Some(name) = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref())
        && !name.is_empty()
    {
        return fitting
            .into_iter()
            .find(|v| v.metadata.name.as_deref() == Some(name))
            .cloned();
    }
    fitting
        .into_iter()
        .min_by_key(|v| storage(v.spec.as_ref().and_then(|s| s.capacity.as_ref())))
        .cloned()
}

/// A reference to the claim, as a volume's `claimRef`.
pub fn claim_ref(claim: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: claim.metadata.namespace.clone(),
        name: claim.metadata.name.clone(),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// The local volume for `claim` on `node`, under `dir`: a directory
/// `DIR/pvc-UID_NAMESPACE_NAME` (DirectoryOrCreate: the agent makes it on first mount), pinned
/// to the node, pre-bound to the claim, with the class's reclaim policy.
pub fn local_volume(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
    dir: &str,
) -> PersistentVolume {
    let uid = claim.metadata.uid.as_deref().unwrap_or("");
    let name = format!("pvc-{uid}");
    let path = format!(
        "{}/{name}_{}_{}",
        dir.trim_end_matches('/'),
        claim.metadata.namespace.as_deref().unwrap_or(""),
        claim.metadata.name.as_deref().unwrap_or("")
    );
    let cspec = claim.spec.clone().unwrap_or_default();
    let size = cspec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()
        .unwrap_or(Quantity("0".into()));
    let reclaim = class
        .reclaim_policy
        .clone()
        .unwrap_or_else(|| "Delete".into());
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name),
            annotations: Some([(PROVISIONED_BY.to_string(), LOCAL_PATH.to_string())].into()),
            // Held until the node removes the directory (reclaim Delete only: a retained
            // volume's data outlives its object).
            finalizers: (reclaim == "Delete").then(|| vec![CLEANUP.to_string()]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: cspec.access_modes.clone(),
            capacity: Some([("storage".to_string(), size)].into()),
            claim_ref: Some(claim_ref(claim)),
            host_path: Some(HostPathVolumeSource {
                path,
                type_: Some("DirectoryOrCreate".into()),
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".into(),
                            operator: "In".into(),
                            values: Some(vec![node.into()]),
                        }]),
                        ..Default::default()
                    }],
                }),
            }),
            persistent_volume_reclaim_policy: Some(reclaim),
            storage_class_name: class.metadata.name.clone(),
            volume_mode: cspec.volume_mode.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(extra: serde_json::Value) -> PersistentVolumeClaim {
        let mut v = json!({"metadata": {"name": "data", "namespace": "db", "uid": "u1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "slow",
                "resources": {"requests": {"storage": "1Gi"}}}});
        capstan_testkit::merge_json(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn pv(name: &str, size: &str, extra: serde_json::Value) -> Arc<PersistentVolume> {
        let mut v = json!({"metadata": {"name": name, "labels": {"tier": "a"}},
            "spec": {"accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "storageClassName": "slow",
                "capacity": {"storage": size}, "hostPath": {"path": "/x"}}});
        capstan_testkit::merge_json(&mut v, extra);
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn name(v: Option<Arc<PersistentVolume>>) -> Option<String> {
        v.and_then(|v| v.metadata.name.clone())
    }

    #[test]
    fn the_smallest_fitting_volume_wins_and_a_pre_bound_one_first() {
        let c = claim(json!({}));
        let vols = [
            pv("big", "10Gi", json!({})),
            pv("small", "1Gi", json!({})),
            pv("tiny", "500Mi", json!({})),
            pv(
                "other-class",
                "1Gi",
                json!({"spec": {"storageClassName": "fast"}}),
            ),
            pv(
                "rwx-only",
                "1Gi",
                json!({"spec": {"accessModes": ["ReadWriteMany"]}}),
            ),
            pv(
                "taken",
                "1Gi",
                json!({"spec": {"claimRef": {"namespace": "db", "name": "other"}}}),
            ),
        ];
        assert_eq!(name(best_match(&vols, &c)).as_deref(), Some("small"));
        let mut with_pre = vols.to_vec();
        with_pre.push(pv(
            "mine",
            "5Gi",
            json!({"spec": {"claimRef": {"namespace": "db", "name": "data", "uid": "u1"}}}),
        ));
        assert_eq!(name(best_match(&with_pre, &c)).as_deref(), Some("mine"));
        let picky = claim(json!({"spec": {"selector": {"matchLabels": {"tier": "b"}}}}));
        assert_eq!(best_match(&vols, &picky), None);
        let named = claim(json!({"spec": {"volumeName": "big"}}));
        assert_eq!(name(best_match(&vols, &named)).as_deref(), Some("big"));
        let stale = pv(
            "stale",
            "1Gi",
            json!({"spec": {"claimRef": {"namespace": "db", "name": "data", "uid": "old"}}}),
        );
        assert!(
            !fits(&stale, &c),
            "a claim of the same name but another uid"
        );
    }

    #[test]
    fn a_local_volume_is_pinned_to_its_node_and_bound_to_its_claim() {
        let c = claim(json!({}));
        let class: StorageClass = serde_json::from_value(json!({"metadata": {"name": "slow"},
            "provisioner": LOCAL_PATH, "reclaimPolicy": "Retain"}))
        .unwrap();
        let v = local_volume(&c, &class, "node-a", "/data/");
        assert_eq!(v.metadata.name.as_deref(), Some("pvc-u1"));
        let spec = v.spec.as_ref().unwrap();
        assert_eq!(
            spec.host_path.as_ref().unwrap().path,
            "/data/pvc-u1_db_data"
        );
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Retain")
        );
        assert_eq!(
            v.metadata.finalizers, None,
            "retained data is not cleaned up"
        );
        assert_eq!(spec.claim_ref.as_ref().unwrap().uid.as_deref(), Some("u1"));
        assert!(fits(&v, &c));
        let term = &spec
            .node_affinity
            .as_ref()
            .unwrap()
            .required
            .as_ref()
            .unwrap()
            .node_selector_terms[0];
        assert!(crate::nodeaffinity::term_fits(
            term,
            &[("kubernetes.io/hostname".to_string(), "node-a".to_string())].into(),
            "node-a"
        ));
    }
}
