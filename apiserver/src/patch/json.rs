//! JSON Patch (RFC 6902, `application/json-patch+json`): a list of operations (add, remove,
//! replace, move, copy, test). `kubectl rollout undo` sends one; kubectl patch `--type=json`.

use json_patch::PatchOperation;
use serde_json::Value;

use crate::errors::{ApiError, ApiResult};

use super::budget::{
    MAX_COPY_BYTES, MAX_DEPTH, MAX_JSON_PATCH_OPERATIONS, MAX_SHIFTED_ELEMENTS, depth,
    encoded_len_within,
};

/// A JSON Patch document: a list of operations.
pub type Operations = json_patch::Patch;

/// Parses a JSON Patch document (a 400 when it is not a list of valid operations; a 413 over
/// [`MAX_JSON_PATCH_OPERATIONS`], in kube-apiserver's words).
pub fn parse(patch: &Value) -> ApiResult<Operations> {
    if let Some(ops) = patch.as_array()
        && ops.len() > MAX_JSON_PATCH_OPERATIONS
    {
        return Err(ApiError::too_large(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.len()
        )));
    }
    serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))
}

/// Why a JSON patch was not applied.
#[derive(Debug, PartialEq, Eq)]
pub enum PatchError {
    /// An operation failed (a path that is not there, a failed `test`): a 422 in Kubernetes.
    Failed(String),
    /// The patch asks for more work or a bigger object than allowed.
    TooExpensive(String),
}

impl PatchError {
    /// The Status for it: 422 for a failed operation (as kube-apiserver answers), 413 for one
    /// that costs too much.
    pub fn api_error(self) -> ApiError {
        match self {
            PatchError::Failed(why) => ApiError {
                code: 422,
                reason: "Invalid",
                message: format!("the JSON patch could not be applied: {why}"),
                details: None,
            },
            PatchError::TooExpensive(why) => {
                ApiError::too_large(format!("the JSON patch could not be applied: {why}"))
            }
        }
    }
}

/// The list elements an insert or removal at `path` shifts (0 when the parent is not a list).
fn shifted(doc: &Value, path: &json_patch::jsonptr::Pointer) -> usize {
    let Some((parent, last)) = path.split_back() else {
        return 0;
    };
    match doc.pointer(parent.as_str()) {
        Some(Value::Array(a)) => {
            let at = last.decoded().parse::<usize>().unwrap_or(a.len());
            a.len().saturating_sub(at)
        }
        _ => 0,
    }
}

/// Applies the operations to `doc` in order; on failure `doc` is left as it was and the error
/// says which operation failed and why. The work is bounded as it goes (see [`super::budget`]):
/// before each operation, the bytes all copies add, the list elements inserts and removals
/// shift, and how deep the object may become are checked, so a patch that would cost too much
/// stops at the operation that crosses a limit.
pub fn apply(doc: &mut Value, ops: &Operations) -> Result<(), PatchError> {
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooExpensive(format!(
            "the allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.len()
        )));
    }
    let mut work = doc.clone();
    // An upper bound of the object's depth: an operation nests what it writes under its path.
    let mut deepest = depth(&work);
    let mut copied = 0usize;
    let mut moved = 0usize;
    for (i, op) in ops.iter().enumerate() {
        let (name, path) = match op {
            PatchOperation::Add(o) => {
                deepest = deepest.max(o.path.count() + depth(&o.value));
                moved += shifted(&work, &o.path);
                ("add", &o.path)
            }
            PatchOperation::Replace(o) => {
                deepest = deepest.max(o.path.count() + depth(&o.value));
                ("replace", &o.path)
            }
            PatchOperation::Remove(o) => {
                moved += shifted(&work, &o.path);
                ("remove", &o.path)
            }
            PatchOperation::Move(o) => {
                deepest += o.path.count().saturating_sub(o.from.count());
                moved += shifted(&work, &o.from) + shifted(&work, &o.path);
                ("move", &o.path)
            }
            PatchOperation::Copy(o) => {
                if let Some(source) = work.pointer(o.from.as_str()) {
                    let left = MAX_COPY_BYTES - copied;
                    match encoded_len_within(source, left) {
                        Some(n) => copied += n,
                        None => {
                            return Err(PatchError::TooExpensive(format!(
                                "operation {i} (copy from {:?}): the copies of the patch would add more than {MAX_COPY_BYTES} bytes",
                                o.from.as_str()
                            )));
                        }
                    }
                }
                deepest += o.path.count().saturating_sub(o.from.count());
                moved += shifted(&work, &o.path);
                ("copy", &o.path)
            }
            PatchOperation::Test(o) => ("test", &o.path),
        };
        if deepest > MAX_DEPTH {
            return Err(PatchError::TooExpensive(format!(
                "operation {i} ({name} {:?}) would nest the object deeper than {MAX_DEPTH} levels",
                path.as_str()
            )));
        }
        if moved > MAX_SHIFTED_ELEMENTS {
            return Err(PatchError::TooExpensive(format!(
                "operation {i} ({name} {:?}): the inserts and removals of the patch would shift more than {MAX_SHIFTED_ELEMENTS} list elements",
                path.as_str()
            )));
        }
        json_patch::patch_unsafe(&mut work, std::slice::from_ref(op)).map_err(|e| {
            PatchError::Failed(format!(
                "operation {i} ({name}) failed at path {:?}: {}",
                path.as_str(),
                e.kind
            ))
        })?;
    }
    *doc = work;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn operations_apply_in_order_and_a_failed_test_changes_nothing() {
        let mut doc = json!({"spec": {"replicas": 1}});
        let ops = parse(&json!([
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/spec/paused", "value": true},
        ]))
        .unwrap();
        apply(&mut doc, &ops).unwrap();
        assert_eq!(doc, json!({"spec": {"replicas": 3, "paused": true}}));

        let failing = parse(&json!([
            {"op": "replace", "path": "/spec/replicas", "value": 5},
            {"op": "test", "path": "/spec/replicas", "value": 4},
        ]))
        .unwrap();
        assert!(apply(&mut doc, &failing).is_err());
        assert_eq!(doc["spec"]["replicas"], 3);
    }

    #[test]
    fn a_document_that_is_not_a_list_of_operations_is_a_bad_request() {
        assert_eq!(parse(&json!({"op": "add"})).unwrap_err().code, 400);
        assert_eq!(
            parse(&json!([{"op": "frobnicate", "path": "/a"}]))
                .unwrap_err()
                .code,
            400
        );
    }
    fn ops(v: Value) -> Operations {
        parse(&v).unwrap()
    }

    #[test]
    fn copies_that_double_the_object_stop_at_the_copy_limit_quickly() {
        // Issue 16: 21 copies of the root's growing list in a 1 KB patch cost 22 s and 8.8 GiB.
        let mut doc = json!({"a": ["x".repeat(100)]});
        let mut list = vec![];
        for _ in 0..40 {
            list.push(json!({"op": "copy", "from": "/a", "path": "/a/-"}));
            list.push(json!({"op": "copy", "from": "/a", "path": "/b"}));
            list.push(json!({"op": "move", "from": "/b", "path": "/a/0"}));
        }
        let started = std::time::Instant::now();
        let err = apply(&mut doc, &ops(Value::Array(list))).unwrap_err();
        assert!(
            matches!(err, PatchError::TooExpensive(ref m) if m.contains("copies")),
            "{err:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(doc, json!({"a": ["x".repeat(100)]}), "nothing changed");
        assert_eq!(err.api_error().code, 413);
    }

    #[test]
    fn moves_that_nest_the_object_deeper_than_it_can_be_read_are_refused() {
        let mut doc = json!({"a": {}});
        let mut list = vec![];
        for _ in 0..200 {
            list.push(json!({"op": "add", "path": "/b", "value": {}}));
            list.push(json!({"op": "move", "from": "/a", "path": "/b/x"}));
            list.push(json!({"op": "move", "from": "/b", "path": "/a"}));
        }
        let err = apply(&mut doc, &ops(Value::Array(list))).unwrap_err();
        assert!(
            matches!(err, PatchError::TooExpensive(ref m) if m.contains("deeper")),
            "{err:?}"
        );
    }

    #[test]
    fn inserts_at_the_front_of_a_long_list_are_bounded() {
        let mut doc = json!({"a": vec![0; 500_000]});
        let list: Vec<Value> = (0..5_000)
            .map(|_| json!({"op": "add", "path": "/a/0", "value": 1}))
            .collect();
        let err = apply(&mut doc, &ops(Value::Array(list))).unwrap_err();
        assert!(
            matches!(err, PatchError::TooExpensive(ref m) if m.contains("shift")),
            "{err:?}"
        );
        // Appending is free.
        let list: Vec<Value> = (0..5_000)
            .map(|_| json!({"op": "add", "path": "/a/-", "value": 1}))
            .collect();
        apply(&mut doc, &ops(Value::Array(list))).unwrap();
    }

    #[test]
    fn more_than_ten_thousand_operations_are_too_large() {
        let list: Vec<Value> = (0..10_001)
            .map(|_| json!({"op": "test", "path": "/a", "value": 1}))
            .collect();
        let e = parse(&Value::Array(list)).unwrap_err();
        assert_eq!(e.code, 413);
        assert!(e.message.contains("10000"), "{}", e.message);
    }

    #[test]
    fn a_failed_operation_names_its_index() {
        let mut doc = json!({});
        let err = apply(
            &mut doc,
            &ops(json!([{"op": "add", "path": "/a", "value": 1}, {"op": "remove", "path": "/b"}])),
        )
        .unwrap_err();
        assert!(
            matches!(err, PatchError::Failed(ref m) if m.contains("operation 1")),
            "{err:?}"
        );
        assert_eq!(doc, json!({}));
    }
}
