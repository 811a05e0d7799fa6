//! Expectations (kubernetes/pkg/controller's ControllerExpectations): what a controller has asked
//! for and not yet seen in its informer, so a slow watch never makes it act twice.
//!
//! Before creating N pods the ReplicaSet controller expects N additions; each pod the informer
//! reports *added* with that controller reference lowers the count (as does a create that
//! failed). Before deleting pods it expects their UIDs to go; a pod seen deleted or terminating
//! clears its UID. Until both are met the controller does not create or delete again for that
//! owner. Expectations expire after five minutes so a lost event cannot wedge an owner forever.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct Pending {
    adds: i64,
    deletes: HashSet<String>,
    since: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Pending>) -> R) -> R {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut m)
    }

    /// `owner` is about to create `n` objects.
    pub fn expect_creations(&self, owner: &str, n: usize) {
        self.with(|m| {
            let p = m.entry(owner.to_string()).or_default();
            p.adds += n as i64;
            p.since = Some(Instant::now());
        })
    }

    /// `owner` is about to delete the objects with these UIDs.
    pub fn expect_deletions(&self, owner: &str, uids: impl IntoIterator<Item = String>) {
        self.with(|m| {
            let p = m.entry(owner.to_string()).or_default();
            p.deletes.extend(uids);
            p.since = Some(Instant::now());
        })
    }

    /// An object of `owner` was seen added (or its create failed).
    pub fn creation_observed(&self, owner: &str) {
        self.with(|m| {
            if let Some(p) = m.get_mut(owner) {
                p.adds -= 1;
            }
        })
    }

    /// The object `uid` of `owner` was seen deleted or terminating (or its delete failed).
    pub fn deletion_observed(&self, owner: &str, uid: &str) {
        self.with(|m| {
            if let Some(p) = m.get_mut(owner) {
                p.deletes.remove(uid);
            }
        })
    }

    /// Whether `owner` may act: everything it asked for has been seen, or the wait expired.
    pub fn satisfied(&self, owner: &str) -> bool {
        self.with(|m| match m.get(owner) {
            None => true,
            Some(p) if p.adds <= 0 && p.deletes.is_empty() => true,
            Some(p) => p.since.is_some_and(|t| t.elapsed() > EXPECTATIONS_TTL),
        })
    }

    /// Drops `owner`'s expectations (the owner is gone, or they expired and it acts afresh).
    pub fn forget(&self, owner: &str) {
        self.with(|m| {
            m.remove(owner);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_waits_until_every_creation_and_deletion_is_seen() {
        let e = Expectations::default();
        assert!(e.satisfied("rs"));
        e.expect_creations("rs", 2);
        e.expect_deletions("rs", ["u1".to_string()]);
        assert!(!e.satisfied("rs"));
        e.creation_observed("rs");
        e.creation_observed("rs");
        assert!(!e.satisfied("rs"), "the deletion is still pending");
        e.deletion_observed("rs", "other");
        assert!(!e.satisfied("rs"));
        e.deletion_observed("rs", "u1");
        assert!(e.satisfied("rs"));
        // Another owner's events do not count.
        e.expect_creations("a", 1);
        e.creation_observed("b");
        assert!(!e.satisfied("a"));
        e.forget("a");
        assert!(e.satisfied("a"));
    }
}
