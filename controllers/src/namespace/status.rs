//! The conditions of a terminating namespace (pure), worded as Kubernetes' namespace
//! controller words them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NamespaceStatus;
use serde_json::{Value, json};

/// What a deletion pass left behind.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Remaining {
    /// "plural.group" → objects left.
    pub resources: BTreeMap<String, usize>,
    /// finalizer → objects left holding it.
    pub finalizers: BTreeMap<String, usize>,
    /// Resources whose deletion or listing failed, with the error.
    pub failures: Vec<String>,
    /// Group versions discovery could not read: their content is unknown, so the namespace
    /// is not finalized until it can be checked.
    pub discovery_failures: Vec<String>,
}

impl Remaining {
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.failures.is_empty() && self.discovery_failures.is_empty()
    }
}

fn condition(
    type_: &str,
    on: bool,
    reason: &str,
    message: String,
) -> (String, bool, String, String) {
    (type_.to_string(), on, reason.to_string(), message)
}

/// The namespace's conditions after a pass, or None when they would not change (the
/// lastTransitionTime of a condition whose status did not change is kept).
pub fn conditions(r: &Remaining, current: Option<&NamespaceStatus>) -> Option<Vec<Value>> {
    let counts = |m: &BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, n)| format!("{k} has {n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wanted = [
        if r.discovery_failures.is_empty() {
            condition(
                "NamespaceDeletionDiscoveryFailure",
                false,
                "ResourcesDiscovered",
                "All resources successfully discovered".into(),
            )
        } else {
            condition(
                "NamespaceDeletionDiscoveryFailure",
                true,
                "DiscoveryFailed",
                format!(
                    "Discovery failed for some groups, {} failing: {}",
                    r.discovery_failures.len(),
                    r.discovery_failures.join(", ")
                ),
            )
        },
        if r.failures.is_empty() {
            condition(
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".into(),
            )
        } else {
            condition(
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    r.failures.len(),
                    r.failures.join(", ")
                ),
            )
        },
        if r.resources.is_empty() {
            condition(
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".into(),
            )
        } else {
            condition(
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", counts(&r.resources)),
            )
        },
        if r.finalizers.is_empty() {
            condition(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        } else {
            condition(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    {
                        r.finalizers
                            .iter()
                            .map(|(f, n)| format!("{f} in {n} resource instances"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            )
        },
    ];
    let existing = current.and_then(|s| s.conditions.as_ref());
    let find = |t: &str| existing.and_then(|cs| cs.iter().find(|c| c.type_ == t));
    let unchanged = wanted.iter().all(|(t, on, reason, message)| {
        find(t).is_some_and(|c| {
            (c.status == "True") == *on
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message)
        })
    });
    if unchanged {
        return None;
    }
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now());
    Some(
        wanted
            .iter()
            .map(|(t, on, reason, message)| {
                let since = find(t)
                    .filter(|c| (c.status == "True") == *on)
                    .and_then(|c| c.last_transition_time.as_ref())
                    .map(|t| t.0.to_string())
                    .unwrap_or_else(|| now.to_string());
                json!({
                    "type": t,
                    "status": if *on { "True" } else { "False" },
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": since,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(conds: &[Value]) -> NamespaceStatus {
        serde_json::from_value(json!({"phase": "Terminating", "conditions": conds})).unwrap()
    }

    #[test]
    fn remaining_content_and_finalizers_are_named() {
        let r = Remaining {
            resources: BTreeMap::from([("pods.".into(), 2), ("widgets.example.com".into(), 1)]),
            finalizers: BTreeMap::from([("example.com/hold".into(), 1)]),
            ..Default::default()
        };
        let conds = conditions(&r, None).unwrap();
        let by = |t: &str| conds.iter().find(|c| c["type"] == t).unwrap().clone();
        assert_eq!(by("NamespaceContentRemaining")["status"], "True");
        assert_eq!(
            by("NamespaceContentRemaining")["message"],
            "Some resources are remaining: pods. has 2 resource instances, widgets.example.com has 1 resource instances"
        );
        assert_eq!(
            by("NamespaceFinalizersRemaining")["message"],
            "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
        );
        assert_eq!(by("NamespaceDeletionContentFailure")["status"], "False");
        // The same pass again writes nothing.
        assert_eq!(conditions(&r, Some(&status(&conds))), None);
        // Content gone: conditions flip, times of the unchanged ones are kept.
        let mut old = conds.clone();
        for c in &mut old {
            c["lastTransitionTime"] = json!("2026-01-01T00:00:00Z");
        }
        let done = conditions(&Remaining::default(), Some(&status(&old))).unwrap();
        let by = |t: &str| done.iter().find(|c| c["type"] == t).unwrap().clone();
        assert_eq!(by("NamespaceContentRemaining")["status"], "False");
        assert_ne!(
            by("NamespaceContentRemaining")["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(
            by("NamespaceDeletionDiscoveryFailure")["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn a_discovery_failure_keeps_the_namespace_and_says_why() {
        let r = Remaining {
            discovery_failures: vec!["example.com/v1".into()],
            ..Default::default()
        };
        assert!(!r.is_empty(), "not finalized while content is unknown");
        let conds = conditions(&r, None).unwrap();
        let c = conds
            .iter()
            .find(|c| c["type"] == "NamespaceDeletionDiscoveryFailure")
            .unwrap();
        assert_eq!(c["status"], "True");
        assert_eq!(
            c["message"],
            "Discovery failed for some groups, 1 failing: example.com/v1"
        );
    }

    #[test]
    fn failures_are_reported() {
        let r = Remaining {
            failures: vec!["apps/v1/deployments: boom".into()],
            ..Default::default()
        };
        assert!(!r.is_empty());
        let conds = conditions(&r, None).unwrap();
        let c = conds
            .iter()
            .find(|c| c["type"] == "NamespaceDeletionContentFailure")
            .unwrap();
        assert_eq!(c["status"], "True");
        assert_eq!(c["reason"], "ContentDeletionFailed");
    }
}
