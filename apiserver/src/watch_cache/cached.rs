//! One object as the watch cache holds it: its JSON, as served, plus a sparse copy of the few
//! fields that selectors and scopes read (name, namespace, labels, the resource's selectable
//! fields).
//!
//! # Why bytes
//! A `serde_json::Value` takes three to four times its JSON's size (a map node per object, a
//! `String` per key and value): 5,000 Nodes and 10,000 Pods held as values took `capstan up` to
//! 831 MiB. As JSON the cache costs about what etcd stores. Filtering a list or a watch reads
//! only the sparse copy ([`Cached::index`]); the full object is parsed back
//! ([`Cached::value`]) only for what is actually sent, and a plain JSON watch event writes the
//! bytes as they are ([`Cached::json`]) without parsing at all.
//!
//! The index is JSON too, parsed when a selector or a scope asks (about a microsecond for a
//! pod's): as a `Value` its nested maps took more memory than the pod's whole JSON (a B-tree
//! node per map), and a cluster-wide watch or list without selectors never reads it.

use serde_json::{Map, Value};

use crate::registry::ResourceInfo;

pub struct Cached {
    json: Box<[u8]>,
    index: Box<[u8]>,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("index", &String::from_utf8_lossy(&self.index))
            .field("bytes", &self.json.len())
            .finish()
    }
}

/// The JSON pointers of what [`Cached::index`] keeps for a resource: metadata's name,
/// namespace and labels, and each field its field selectors may name.
pub fn index_pointers(info: &ResourceInfo) -> Vec<String> {
    let mut p: Vec<String> = ["/metadata/name", "/metadata/namespace", "/metadata/labels"]
        .into_iter()
        .map(String::from)
        .collect();
    p.extend(info.strategy.selectable_pointers());
    p
}

impl Cached {
    /// `obj` serialized, with the values at `pointers` copied into the index.
    pub fn new(obj: &Value, pointers: &[String]) -> Cached {
        let mut index = Value::Object(Map::new());
        for p in pointers {
            if let Some(v) = obj.pointer(p) {
                set_pointer(&mut index, p, v.clone());
            }
        }
        // Serializing a Value cannot fail: its keys are strings.
        let bytes = |v: &Value| serde_json::to_vec(v).unwrap_or_default().into_boxed_slice();
        Cached {
            json: bytes(obj),
            index: bytes(&index),
        }
    }

    /// The object as JSON (what a watch or a list sends).
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// A sparse copy of the object: name, namespace, labels and the resource's selectable
    /// fields, at their usual paths — enough for label and field selectors and for
    /// [`ResourceInfo::key_of`]. Parsed on each call.
    pub fn index(&self) -> Value {
        serde_json::from_slice(&self.index).unwrap_or(Value::Null)
    }

    /// The whole object, parsed from its JSON.
    pub fn value(&self) -> Value {
        // The bytes are what `new` wrote from a Value: they parse.
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }

    /// Roughly the bytes it holds in memory (the history's accounting).
    pub fn size(&self) -> usize {
        std::mem::size_of::<Cached>() + self.json.len() + self.index.len()
    }
}

/// Sets `root`'s value at the JSON pointer `p`, creating the objects on the way.
fn set_pointer(root: &mut Value, p: &str, v: Value) {
    let mut at = root;
    let mut parts = p.split('/').skip(1).peekable();
    while let Some(raw) = parts.next() {
        let key = raw.replace("~1", "/").replace("~0", "~");
        let Value::Object(map) = at else { return };
        if parts.peek().is_none() {
            map.insert(key, v);
            return;
        }
        at = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_index_keeps_only_the_selected_paths_and_the_bytes_keep_everything() {
        let pod = json!({
            "metadata": {"name": "a", "namespace": "n", "labels": {"app": "web"},
                         "annotations": {"big": "x".repeat(1000)}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running"},
        });
        let pointers: Vec<String> = [
            "/metadata/name",
            "/metadata/namespace",
            "/metadata/labels",
            "/spec/nodeName",
            "/status/phase",
            "/status/podIP",
            "/metadata/annotations/a~1b",
        ]
        .map(String::from)
        .to_vec();
        let c = Cached::new(&pod, &pointers);
        assert_eq!(
            c.index(),
            json!({
                "metadata": {"name": "a", "namespace": "n", "labels": {"app": "web"}},
                "spec": {"nodeName": "n1"},
                "status": {"phase": "Running"},
            })
        );
        assert_eq!(c.value(), pod);
        assert_eq!(c.json(), serde_json::to_vec(&pod).unwrap());
        // The JSON, plus the index's: what it keeps, not the whole object.
        let extra = c.size() - c.json().len() - std::mem::size_of::<Cached>();
        assert_eq!(extra, serde_json::to_vec(&c.index()).unwrap().len());
        assert!(extra < 150, "{extra}");
    }

    #[test]
    fn escaped_pointers_name_keys_with_slashes() {
        let obj = json!({"metadata": {"labels": {"a/b": "1"}}});
        let mut index = json!({});
        set_pointer(
            &mut index,
            "/metadata/labels/a~1b",
            obj["metadata"]["labels"]["a/b"].clone(),
        );
        assert_eq!(index, obj);
    }
}
