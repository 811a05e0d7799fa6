//! JSON merge patch (RFC 7386, `application/merge-patch+json`): maps merge, `null` deletes,
//! everything else (lists included) replaces. What kubectl sends for custom resources and
//! `kubectl scale`.

use serde_json::Value;

use crate::errors::{ApiError, ApiResult};

/// Checks that a merge patch is an object (a 400 otherwise): a patch of any other type would
/// replace the whole object.
pub fn check(patch: &Value) -> ApiResult<()> {
    if patch.is_object() {
        Ok(())
    } else {
        Err(ApiError::bad_request("a merge patch must be a JSON object"))
    }
}

/// Merges `patch` into `doc`.
pub fn apply(doc: &mut Value, patch: &Value) {
    json_patch::merge(doc, patch)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn maps_merge_nulls_delete_and_lists_replace() {
        let mut doc =
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"ports": [1, 2]}});
        apply(
            &mut doc,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"ports": [3]}}),
        );
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"ports": [3]}})
        );
    }

    #[test]
    fn only_objects_are_merge_patches() {
        assert!(check(&json!({})).is_ok());
        assert_eq!(check(&json!([1])).unwrap_err().code, 400);
    }
}
