//! What this controller last wrote, so it never acts on an informer cache that has not caught up
//! with its own writes (kubernetes/staging/src/k8s.io/endpointslice/endpointslice_tracker.go).
//!
//! The danger is creating twice: a sync that runs before the watch delivered the slice it
//! created a moment ago would see room for the same endpoints and create another slice. So every
//! write is recorded (the resourceVersion the API returned, or "deleted"), and a sync whose
//! cache is older than any of them is refused with an error, to be retried with backoff.
//! Updates are safe anyway (they carry a resourceVersion precondition); creates are not.
//!
//! Resource versions are compared as numbers: Capstan's (and etcd's) are revisions. One that does
//! not parse is taken as caught up, which is what a tracker without versions would do.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::discovery::v1::EndpointSlice;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Written at this revision: the cache must hold it at this revision or later.
    AtLeast(u64),
    /// Deleted: the cache must not hold it.
    Gone,
}

/// Expected slice states per owner key (`namespace/name`), by slice name.
#[derive(Debug, Default)]
pub struct Tracker {
    expected: Mutex<HashMap<String, HashMap<String, Expect>>>,
}

fn revision(s: &EndpointSlice) -> Option<u64> {
    s.metadata.resource_version.as_deref()?.parse().ok()
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Expect>>> {
        self.expected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a create or update the API answered with `written`.
    pub fn wrote(&self, owner: &str, written: &EndpointSlice) {
        let (Some(name), Some(rv)) = (written.metadata.name.clone(), revision(written)) else {
            return;
        };
        self.lock()
            .entry(owner.to_string())
            .or_default()
            .insert(name, Expect::AtLeast(rv));
    }

    /// Records a delete.
    pub fn deleted(&self, owner: &str, name: &str) {
        self.lock()
            .entry(owner.to_string())
            .or_default()
            .insert(name.to_string(), Expect::Gone);
    }

    /// The informer saw `name` deleted: nothing about it is pending any more.
    pub fn observed_deletion(&self, owner: &str, name: &str) {
        let mut m = self.lock();
        if let Some(names) = m.get_mut(owner) {
            names.remove(name);
            if names.is_empty() {
                m.remove(owner);
            }
        }
    }

    pub fn forget(&self, owner: &str) {
        self.lock().remove(owner);
    }

    /// Whether the cache (`cached` looks a slice up by name) is behind this owner's writes.
    /// Expectations the cache meets are dropped.
    pub fn stale(&self, owner: &str, cached: impl Fn(&str) -> Option<u64>) -> bool {
        let mut m = self.lock();
        let Some(names) = m.get_mut(owner) else {
            return false;
        };
        names.retain(|name, exp| match (exp, cached(name)) {
            (Expect::AtLeast(want), Some(have)) => have < *want,
            (Expect::AtLeast(_), None) => true,
            (Expect::Gone, Some(_)) => true,
            (Expect::Gone, None) => false,
        });
        let stale = !names.is_empty();
        if !stale {
            m.remove(owner);
        }
        stale
    }
}

/// A cached slice's revision for [`Tracker::stale`]: `u64::MAX` when it has none that parses
/// (so it counts as caught up).
pub fn cached_revision(s: &EndpointSlice) -> u64 {
    revision(s).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn slice(name: &str, rv: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_cache_is_stale_until_it_holds_every_write() {
        let t = Tracker::default();
        assert!(!t.stale("ns/web", |_| None));
        t.wrote("ns/web", &slice("web-a", "10"));
        t.deleted("ns/web", "web-b");
        // Created slice not seen yet, deleted one still there.
        assert!(t.stale("ns/web", |n| (n == "web-b").then_some(5)));
        // Seen at an older revision; the deleted one still there.
        assert!(t.stale("ns/web", |n| Some(if n == "web-a" { 9 } else { 5 })));
        // Caught up on the create, not on the delete.
        assert!(t.stale("ns/web", |n| Some(if n == "web-a" { 10 } else { 5 })));
        // Caught up on both (a later revision is fine too).
        assert!(!t.stale("ns/web", |n| (n == "web-a").then_some(12)));
        // Nothing pending any more.
        assert!(!t.stale("ns/web", |_| None));
    }

    #[test]
    fn an_observed_deletion_clears_a_pending_create() {
        let t = Tracker::default();
        t.wrote("ns/web", &slice("web-a", "10"));
        t.observed_deletion("ns/web", "web-a");
        assert!(!t.stale("ns/web", |_| None));
        assert!(!t.stale("ns/other", |_| None));
    }
}
