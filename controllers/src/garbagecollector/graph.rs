//! The dependency graph (Kubernetes' GraphBuilder, pure): every object the collector watches
//! with its ownerReferences, and for each owner its dependents. Owners referenced but not (yet)
//! observed are "virtual" nodes, checked against the API by a worker.
//!
//! Each change returns the work it makes: uids to attempt to delete (an owner went away, an
//! owner started a foreground deletion, a virtual owner to verify) and uids whose dependents
//! are to be orphaned.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// Which object a node is: enough to GET it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub api_version: String,
    pub kind: String,
    /// The namespace of the object, or for a virtual owner the namespace of the dependent
    /// that referenced it (used only if the owner's kind is namespaced).
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

impl Identity {
    /// Whether reference `r` from a dependent in `namespace` names this object: same group,
    /// kind and name, and (for a namespaced object) the dependent's namespace.
    pub fn matches(&self, r: &OwnerReference, namespace: Option<&str>) -> bool {
        let group = |v: &str| v.split_once('/').map_or("", |(g, _)| g).to_string();
        group(&self.api_version) == group(&r.api_version)
            && self.kind == r.kind
            && self.name == r.name
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| Some(ns) == namespace)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{} ({})", self.kind, self.name, self.uid),
            None => write!(f, "{} {} ({})", self.kind, self.name, self.uid),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub identity: Identity,
    pub owners: Vec<OwnerReference>,
    pub dependents: HashSet<String>,
    /// Seen through a watch (false: a virtual node, known only from references to it).
    pub observed: bool,
    /// The watched resource it came from (relists remove what they no longer return).
    pub source: Option<Arc<str>>,
    pub being_deleted: bool,
    /// Being deleted with the foregroundDeletion finalizer: waits for blocking dependents.
    pub deleting_dependents: bool,
    /// Being deleted with the orphan finalizer.
    pub orphaning: bool,
}

impl Node {
    /// Whether this node's reference to `owner` blocks the owner's foreground deletion.
    pub fn blocks(&self, owner: &str) -> bool {
        self.owners
            .iter()
            .any(|o| o.uid == owner && o.block_owner_deletion == Some(true))
    }
}

/// Work a graph change asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Work {
    AttemptToDelete(String),
    AttemptToOrphan(String),
}

#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
}

fn has_finalizer(meta: &ObjectMeta, f: &str) -> bool {
    meta.finalizers
        .as_ref()
        .is_some_and(|fs| fs.iter().any(|x| x == f))
}

impl Graph {
    pub fn get(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The uids of the objects `source` delivered that are observed now.
    pub fn observed_from(&self, source: &str) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| n.observed && n.source.as_deref() == Some(source))
            .map(|n| n.identity.uid.clone())
            .collect()
    }

    /// An object was seen (added or changed) through the watch of `source`.
    pub fn observe(
        &mut self,
        api_version: &str,
        kind: &str,
        meta: &ObjectMeta,
        source: &Arc<str>,
    ) -> Vec<Work> {
        let mut work = Vec::new();
        let Some(uid) = meta.uid.clone() else {
            return work;
        };
        let identity = Identity {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            uid: uid.clone(),
        };
        let owners = meta.owner_references.clone().unwrap_or_default();
        let being_deleted = meta.deletion_timestamp.is_some();
        let foreground = being_deleted && has_finalizer(meta, FOREGROUND);
        let orphan = being_deleted && has_finalizer(meta, ORPHAN);

        let (old_owners, was_observed, was_deleting_dependents, was_orphaning) =
            match self.nodes.get_mut(&uid) {
                Some(n) => {
                    let old = std::mem::replace(&mut n.owners, owners.clone());
                    let was = (old, n.observed, n.deleting_dependents, n.orphaning);
                    n.identity = identity.clone();
                    n.observed = true;
                    n.source = Some(source.clone());
                    n.being_deleted = being_deleted;
                    was
                }
                None => {
                    self.nodes.insert(
                        uid.clone(),
                        Node {
                            identity: identity.clone(),
                            owners: owners.clone(),
                            dependents: HashSet::new(),
                            observed: true,
                            source: Some(source.clone()),
                            being_deleted,
                            deleting_dependents: false,
                            orphaning: false,
                        },
                    );
                    (Vec::new(), false, false, false)
                }
            };

        // Owners no longer referenced: drop the edge, and wake an owner waiting on it.
        for old in &old_owners {
            let still = owners.iter().find(|o| o.uid == old.uid);
            let unblocked = match still {
                None => true,
                Some(o) => {
                    old.block_owner_deletion == Some(true) && o.block_owner_deletion != Some(true)
                }
            };
            if still.is_none()
                && let Some(owner) = self.nodes.get_mut(&old.uid)
            {
                owner.dependents.remove(&uid);
                if !owner.observed && owner.dependents.is_empty() {
                    self.nodes.remove(&old.uid);
                    continue;
                }
            }
            if unblocked
                && self
                    .nodes
                    .get(&old.uid)
                    .is_some_and(|o| o.deleting_dependents)
            {
                work.push(Work::AttemptToDelete(old.uid.clone()));
            }
        }
        // New owners: add the edge, creating a virtual node for an owner not seen yet.
        for o in owners
            .iter()
            .filter(|o| !old_owners.iter().any(|old| old.uid == o.uid))
        {
            match self.nodes.get_mut(&o.uid) {
                Some(owner) => {
                    owner.dependents.insert(uid.clone());
                    // The reference names the owner's uid but not where it is (another
                    // namespace, kind or name): the dependent must be checked against what it
                    // names, not against this owner.
                    if owner.observed && !owner.identity.matches(o, meta.namespace.as_deref()) {
                        work.push(Work::AttemptToDelete(uid.clone()));
                    }
                }
                None => {
                    self.nodes.insert(
                        o.uid.clone(),
                        Node {
                            identity: Identity {
                                api_version: o.api_version.clone(),
                                kind: o.kind.clone(),
                                namespace: meta.namespace.clone(),
                                name: o.name.clone(),
                                uid: o.uid.clone(),
                            },
                            owners: Vec::new(),
                            dependents: HashSet::from([uid.clone()]),
                            observed: false,
                            source: None,
                            being_deleted: false,
                            deleting_dependents: false,
                            orphaning: false,
                        },
                    );
                    work.push(Work::AttemptToDelete(o.uid.clone()));
                }
            }
        }
        // A dependent of an owner being deleted in the foreground goes too.
        if owners.iter().any(|o| {
            self.nodes
                .get(&o.uid)
                .is_some_and(|owner| owner.deleting_dependents)
        }) {
            work.push(Work::AttemptToDelete(uid.clone()));
        }

        let node = self.nodes.get_mut(&uid).expect("inserted above");
        if orphan {
            node.orphaning = true;
            node.deleting_dependents = false;
            if !was_orphaning || !was_observed {
                work.push(Work::AttemptToOrphan(uid.clone()));
            }
        } else if foreground {
            node.deleting_dependents = true;
            if !was_deleting_dependents || !was_observed {
                work.extend(
                    node.dependents
                        .iter()
                        .map(|d| Work::AttemptToDelete(d.clone())),
                );
            }
            work.push(Work::AttemptToDelete(uid.clone()));
        } else {
            node.orphaning = false;
            node.deleting_dependents = false;
        }
        work
    }

    /// An object is gone (its watch said so, a relist no longer returned it, or a virtual
    /// owner was found absent): its dependents lose an owner and are re-examined.
    pub fn remove(&mut self, uid: &str) -> Vec<Work> {
        let mut work = Vec::new();
        let Some(node) = self.nodes.remove(uid) else {
            return work;
        };
        for o in &node.owners {
            let mut drop_virtual = false;
            if let Some(owner) = self.nodes.get_mut(&o.uid) {
                owner.dependents.remove(uid);
                if owner.deleting_dependents {
                    work.push(Work::AttemptToDelete(o.uid.clone()));
                }
                drop_virtual = !owner.observed && owner.dependents.is_empty();
            }
            if drop_virtual {
                self.nodes.remove(&o.uid);
            }
        }
        work.extend(node.dependents.into_iter().map(Work::AttemptToDelete));
        work
    }

    /// A virtual node's object was found absent: removed (an observed node is left to its
    /// watch, but its dependents are re-examined).
    pub fn remove_virtual(&mut self, uid: &str) -> Vec<Work> {
        match self.nodes.get(uid) {
            Some(n) if !n.observed => self.remove(uid),
            Some(n) => n
                .dependents
                .iter()
                .map(|d| Work::AttemptToDelete(d.clone()))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Dependents whose reference to `uid` has blockOwnerDeletion=true.
    pub fn blocking_dependents(&self, uid: &str) -> Vec<&Node> {
        let Some(n) = self.nodes.get(uid) else {
            return Vec::new();
        };
        n.dependents
            .iter()
            .filter_map(|d| self.nodes.get(d))
            .filter(|d| d.blocks(uid))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(uid: &str, owners: &[(&str, bool)], deleting: Option<&str>) -> ObjectMeta {
        serde_json::from_value(json!({
            "name": format!("n-{uid}"), "namespace": "default", "uid": uid,
            "ownerReferences": owners.iter().map(|(o, block)| json!({
                "apiVersion": "v1", "kind": "ConfigMap", "name": format!("n-{o}"), "uid": o,
                "blockOwnerDeletion": block,
            })).collect::<Vec<_>>(),
            "deletionTimestamp": deleting.map(|_| "2026-01-01T00:00:00Z"),
            "finalizers": deleting.map(|f| vec![f]).unwrap_or_default(),
        }))
        .unwrap()
    }

    fn src() -> Arc<str> {
        Arc::from("/v1/configmaps")
    }

    fn observe(g: &mut Graph, m: ObjectMeta) -> Vec<Work> {
        g.observe("v1", "ConfigMap", &m, &src())
    }

    fn del(uid: &str) -> Work {
        Work::AttemptToDelete(uid.into())
    }

    #[test]
    fn an_unseen_owner_becomes_a_virtual_node_to_verify() {
        let mut g = Graph::default();
        assert_eq!(observe(&mut g, meta("b", &[("a", true)], None)), [del("a")]);
        let a = g.get("a").unwrap();
        assert!(!a.observed);
        assert_eq!(a.identity.name, "n-a");
        assert!(a.dependents.contains("b"));
        // Observing the owner makes it real; nothing to do.
        assert_eq!(observe(&mut g, meta("a", &[], None)), []);
        assert!(g.get("a").unwrap().observed);
        assert!(g.get("a").unwrap().dependents.contains("b"));
    }

    #[test]
    fn a_removed_owner_sends_its_dependents_to_be_examined() {
        let mut g = Graph::default();
        observe(&mut g, meta("a", &[], None));
        observe(&mut g, meta("b", &[("a", false)], None));
        observe(&mut g, meta("c", &[("a", false)], None));
        let mut work = g.remove("a");
        work.sort_by_key(|w| format!("{w:?}"));
        assert_eq!(work, [del("b"), del("c")]);
        assert!(g.get("a").is_none());
    }

    #[test]
    fn foreground_deletion_starts_once_and_dependents_unblock_the_owner() {
        let mut g = Graph::default();
        observe(&mut g, meta("a", &[], None));
        observe(&mut g, meta("b", &[("a", true)], None));
        observe(&mut g, meta("c", &[("a", false)], None));
        let mut work = observe(&mut g, meta("a", &[], Some(FOREGROUND)));
        work.sort_by_key(|w| format!("{w:?}"));
        assert_eq!(work, [del("a"), del("b"), del("c")]);
        assert!(g.get("a").unwrap().deleting_dependents);
        let blocking: Vec<_> = g
            .blocking_dependents("a")
            .iter()
            .map(|n| n.identity.uid.clone())
            .collect();
        assert_eq!(blocking, ["b"]);
        // A second update of the owner does not requeue every dependent again.
        assert_eq!(
            observe(&mut g, meta("a", &[], Some(FOREGROUND))),
            [del("a")]
        );
        // The blocking dependent going away wakes the owner.
        assert_eq!(g.remove("b"), [del("a")]);
        // So does a dependent dropping its blockOwnerDeletion.
        observe(&mut g, meta("d", &[("a", true)], None));
        assert!(observe(&mut g, meta("d", &[("a", false)], None)).contains(&del("a")));
        assert!(g.blocking_dependents("a").is_empty());
    }

    #[test]
    fn a_new_dependent_of_a_foreground_owner_is_examined() {
        let mut g = Graph::default();
        observe(&mut g, meta("a", &[], Some(FOREGROUND)));
        assert_eq!(observe(&mut g, meta("b", &[("a", true)], None)), [del("b")]);
    }

    #[test]
    fn a_reference_naming_a_known_uid_at_other_coordinates_is_examined() {
        let mut g = Graph::default();
        observe(&mut g, meta("a", &[], None)); // default/n-a
        let mut elsewhere = meta("b", &[("a", false)], None);
        elsewhere.namespace = Some("other".into());
        assert_eq!(g.observe("v1", "ConfigMap", &elsewhere, &src()), [del("b")]);
        // The same reference from a's namespace is fine.
        assert_eq!(observe(&mut g, meta("c", &[("a", false)], None)), []);
    }

    #[test]
    fn orphaning_is_asked_for_once() {
        let mut g = Graph::default();
        observe(&mut g, meta("a", &[], None));
        assert_eq!(
            observe(&mut g, meta("a", &[], Some(ORPHAN))),
            [Work::AttemptToOrphan("a".into())]
        );
        assert_eq!(observe(&mut g, meta("a", &[], Some(ORPHAN))), []);
    }

    #[test]
    fn dropping_an_owner_reference_removes_the_edge_and_virtual_nodes_go_with_their_last_dependent()
    {
        let mut g = Graph::default();
        observe(&mut g, meta("a", &[], None));
        observe(&mut g, meta("b", &[("a", false)], None));
        observe(&mut g, meta("b", &[], None));
        assert!(g.get("a").unwrap().dependents.is_empty());
        observe(&mut g, meta("b", &[("w", false)], None));
        observe(&mut g, meta("b", &[], None));
        assert!(
            g.get("w").is_none(),
            "a virtual node no one references is dropped"
        );
        observe(&mut g, meta("c", &[("v", false)], None));
        g.remove("c");
        assert!(
            g.get("v").is_none(),
            "virtual node dropped with its last dependent"
        );
        // remove_virtual leaves observed nodes to their watch.
        observe(&mut g, meta("x", &[], None));
        observe(&mut g, meta("y", &[("x", false)], None));
        assert_eq!(g.remove_virtual("x"), [del("y")]);
        assert!(g.get("x").is_some());
    }
}
