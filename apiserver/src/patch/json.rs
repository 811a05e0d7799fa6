//! JSON Patch (RFC 6902, `application/json-patch+json`): a list of operations (add, remove,
//! replace, move, copy, test). `kubectl rollout undo` sends one; kubectl patch `--type=json`.

use serde_json::Value;

use crate::errors::{ApiError, ApiResult};

/// A JSON Patch document: a list of operations.
pub type Operations = json_patch::Patch;

/// Parses a JSON Patch document (a 400 when it is not a list of valid operations).
pub fn parse(patch: &Value) -> ApiResult<Operations> {
    serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))
}

/// Applies the operations to `doc` in order; on failure `doc` is left as it was and the error
/// says which operation failed and why.
pub fn apply(doc: &mut Value, ops: &Operations) -> Result<(), String> {
    json_patch::patch(doc, ops).map_err(|e| e.to_string())
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
}
