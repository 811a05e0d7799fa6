//! What one patch may cost. A patch is small, but what it asks for need not be: each JSON-patch
//! `copy` can double the object, a `move` can nest it deeper, an insert at the front of a long
//! list shifts every element. Kubernetes caps a JSON patch at 10,000 operations and its copies at
//! the request size, and refuses a result over the object size; every engine here is bounded by
//! the size of what it produces, and the JSON-patch engine checks as it goes (before each
//! operation, not after the last), so an expensive patch is refused early.
//!
//! Merge and strategic merge patches and server-side apply produce at most the live object plus
//! the patch (maps merge key by key; keyed lists merge through hash indexes, never a scan per
//! element), no deeper than the deeper of the two: their cost is linear in what they read, and
//! the result's size is checked once, like every write's ([`crate::body::MAX_OBJECT_BYTES`]).

use std::io;

use serde_json::Value;

/// The most operations a JSON patch may have (kube-apiserver's `maxJSONPatchOperations`).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// The most bytes all `copy` operations of one JSON patch may add together (kube-apiserver sets
/// json-patch's `AccumulatedCopySizeLimit` from its request size limit).
pub const MAX_COPY_BYTES: usize = crate::body::MAX_BODY_BYTES;

/// The most list elements the operations of one JSON patch may shift (an insert or a removal
/// moves every element after it): 16 Mi element moves, a few tens of milliseconds.
pub const MAX_SHIFTED_ELEMENTS: usize = 16 * 1024 * 1024;

/// The deepest nesting of maps and lists an object may have: what serde_json (and so every
/// later read of the stored object) decodes.
pub const MAX_DEPTH: usize = 127;

/// Counts bytes and fails once past a limit: serialization stops there.
struct Counter {
    n: usize,
    limit: usize,
}

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.n += buf.len();
        if self.n > self.limit {
            return Err(io::Error::other("over the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The length of `v` as JSON, or None once it is past `limit` (measuring stops there: the cost
/// is at most `limit`, whatever the size of `v`).
pub fn encoded_len_within(v: &Value, limit: usize) -> Option<usize> {
    let mut c = Counter { n: 0, limit };
    serde_json::to_writer(&mut c, v).ok().map(|()| c.n)
}

/// How deeply maps and lists nest in `v` (a scalar: 0, `[]`: 1, `{"a": []}`: 2). Iterative, so
/// any depth is measured without recursion.
pub fn depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                deepest = deepest.max(d + 1);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            Value::Object(m) => {
                deepest = deepest.max(d + 1);
                stack.extend(m.values().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn measuring_stops_at_the_limit_and_is_exact_below_it() {
        let v = json!({"a": [1, "x", null], "b": {"c": true}});
        let exact = serde_json::to_vec(&v).unwrap().len();
        assert_eq!(encoded_len_within(&v, exact), Some(exact));
        assert_eq!(encoded_len_within(&v, exact - 1), None);
    }

    #[test]
    fn depth_counts_nested_maps_and_lists() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!([])), 1);
        assert_eq!(depth(&json!({"a": [{"b": 1}], "c": 2})), 3);
    }

    #[test]
    fn the_depth_limit_is_what_serde_json_decodes() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(serde_json::from_str::<Value>(&ok).is_ok());
        let over = format!("[{ok}]");
        assert!(serde_json::from_str::<Value>(&over).is_err());
    }
}
