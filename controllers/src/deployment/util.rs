//! Deployment arithmetic and naming shared by the rollout strategies (kubernetes/pkg/controller/
//! deployment/util): maxSurge/maxUnavailable resolution, the pod-template-hash, revisions.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const TEMPLATE_HASH: &str = "pod-template-hash";

/// Annotations a Deployment does not hand down to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0)
}

pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0)
}

pub fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

pub fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// An int-or-percent of `total`: percentages round up for surge, down for unavailability.
pub(crate) fn scaled(
    v: Option<&IntOrString>,
    default_percent: i32,
    total: i32,
    round_up: bool,
) -> i32 {
    match v {
        Some(IntOrString::Int(n)) => (*n).max(0),
        Some(IntOrString::String(s)) => {
            let p: i64 = s
                .trim_end_matches('%')
                .parse::<i64>()
                .unwrap_or(default_percent as i64);
            percent(p, total, round_up)
        }
        None => percent(default_percent as i64, total, round_up),
    }
}

fn percent(p: i64, total: i32, round_up: bool) -> i32 {
    let num = p.max(0) * total as i64;
    let v = if round_up {
        (num + 99) / 100
    } else {
        num / 100
    };
    v as i32
}

/// (maxSurge, maxUnavailable) as pod counts. When both resolve to zero, maxUnavailable becomes 1
/// so a rollout can always progress. Worked example, replicas=10, 25%/25%: surge =
/// ceil(2.5) = 3, unavailable = floor(2.5) = 2, so a rollout runs at most 13 pods and keeps at
/// least 8 available.
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let n = replicas(d);
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    if is_recreate(d) {
        return (0, 0);
    }
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), 25, n, true);
    let mut unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), 25, n, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(n.max(1)))
}

pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub fn annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

/// The template without its pod-template-hash label, as JSON (EqualIgnoreHash).
fn template_ignoring_hash(t: Option<&PodTemplateSpec>) -> serde_json::Value {
    let mut t = t.cloned().unwrap_or_default();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(TEMPLATE_HASH);
    }
    let mut v = serde_json::to_value(&t).unwrap_or_default();
    prune_empty(&mut v);
    v
}

/// Drops nulls, empty objects and empty lists at every depth: Kubernetes compares templates as
/// Go structs, where `resources: {}`, `creationTimestamp: null` and an absent field are the same
/// (kubectl rollout undo sends the former).
fn prune_empty(v: &mut serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !prune_empty(x));
            m.is_empty()
        }
        serde_json::Value::Array(a) => {
            for x in a.iter_mut() {
                prune_empty(x);
            }
            a.is_empty()
        }
        _ => false,
    }
}

pub fn same_template(d: &Deployment, rs: &ReplicaSet) -> bool {
    template_ignoring_hash(d.spec.as_ref().map(|s| &s.template))
        == template_ignoring_hash(rs.spec.as_ref().and_then(|s| s.template.as_ref()))
}

/// The pod-template-hash: FNV-1a (32 bit) of the template and the collision count, spelled in
/// the consonant-and-digit alphabet Kubernetes uses so it never forms words.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    let mut v = serde_json::to_value(template).unwrap_or_default();
    prune_empty(&mut v);
    feed(&serde_json::to_vec(&v).unwrap_or_default());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHABET[(b as usize) % ALPHABET.len()] as char)
        .collect()
}

/// The annotations a ReplicaSet inherits from its Deployment.
pub fn inherited_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .collect()
}

/// Active: asks for at least one replica.
pub fn active(rss: &[Arc<ReplicaSet>]) -> Vec<Arc<ReplicaSet>> {
    rss.iter().filter(|r| rs_replicas(r) > 0).cloned().collect()
}

pub fn created(rs: &ReplicaSet) -> Option<jiff::Timestamp> {
    rs.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};

    fn d(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn percentages_round_surge_up_and_unavailability_down() {
        let s = |v: &str| IntOrString::String(v.into());
        assert_eq!(surge_and_unavailable(&d(10, s("25%"), s("25%"))), (3, 2));
        assert_eq!(surge_and_unavailable(&d(3, s("25%"), s("25%"))), (1, 0));
        assert_eq!(
            surge_and_unavailable(&d(5, IntOrString::Int(2), IntOrString::Int(0))),
            (2, 0)
        );
        // Both zero: one may be unavailable, or nothing could ever move.
        assert_eq!(
            surge_and_unavailable(&d(4, IntOrString::Int(0), IntOrString::Int(0))),
            (0, 1)
        );
    }

    #[test]
    fn templates_compare_like_go_structs_empty_and_absent_alike() {
        let d: Deployment = serde_json::from_value(serde_json::json!({"spec": {"selector": {},
            "template": {"metadata": {"creationTimestamp": null, "labels": {"app": "a"}},
                "spec": {"containers": [{"name": "c", "image": "i", "resources": {}}]}}}}))
        .unwrap();
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({"spec": {"selector": {},
            "template": {"metadata": {"labels": {"app": "a", "pod-template-hash": "x"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}}}))
        .unwrap();
        assert!(same_template(&d, &rs));
        let other: ReplicaSet = serde_json::from_value(serde_json::json!({"spec": {"selector": {},
            "template": {"metadata": {"labels": {"app": "a"}},
                "spec": {"containers": [{"name": "c", "image": "j"}]}}}}))
        .unwrap();
        assert!(!same_template(&d, &other));
    }

    #[test]
    fn the_hash_changes_with_the_template_and_the_collision_count() {
        let mut t = PodTemplateSpec::default();
        let a = template_hash(&t, None);
        assert_eq!(a, template_hash(&t, None));
        assert_ne!(a, template_hash(&t, Some(1)));
        t.metadata = Some(Default::default());
        t.metadata.as_mut().unwrap().labels = Some([("a".to_string(), "b".to_string())].into());
        assert_ne!(a, template_hash(&t, None));
        assert!(
            a.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
    }
}
