//! ConfigMaps and Secrets (kube-apiserver's `ValidateConfigMap` / `ValidateSecret` and the v1
//! Secret conversion): their keys are config keys (they become file names in volumes), their
//! data is at most 1 MiB, and a Secret's write-only `stringData` is merged into `data` (base64)
//! before it is stored, never stored itself.

use capstan_api::validation::FieldError;
use k8s_openapi::ByteString;
use serde_json::{Map, Value};

/// The most data a ConfigMap or Secret may hold (Kubernetes' `MaxSecretSize`, used for both).
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

/// Bytes of a base64 value (None when it is not valid base64: the typed check reports it).
fn decoded_len(v: &Value) -> Option<usize> {
    serde_json::from_value::<ByteString>(v.clone())
        .ok()
        .map(|b| b.0.len())
}

fn too_long(field: &str) -> FieldError {
    FieldError {
        field: field.into(),
        value: String::new(),
        message: format!("Too long: must have at most {MAX_DATA_BYTES} bytes"),
    }
}

/// Why `key` is not a config key (Kubernetes' `IsConfigMapKey`): at most 253 characters of
/// `[-._a-zA-Z0-9]`, and not `.`, `..` or anything starting with `..` (it names a file).
pub fn config_key_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if key.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        errs.push("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".to_string());
    }
    if key == "." {
        errs.push("must not be '.'".to_string());
    } else if key == ".." {
        errs.push("must not be '..'".to_string());
    } else if key.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

/// The config key errors of the keys of `obj[field]`, each at `field[key]`.
fn key_errors(obj: &Value, field: &str) -> Vec<FieldError> {
    obj[field]
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
        .flat_map(|k| {
            config_key_errors(k)
                .into_iter()
                .map(move |message| FieldError {
                    field: format!("{field}[{k}]"),
                    value: k.clone(),
                    message,
                })
        })
        .collect()
}

/// A ConfigMap's keys are config keys, none in both `data` and `binaryData`, and its keys and
/// values (`data`, and `binaryData` decoded) add up to at most 1 MiB.
pub fn validate_configmap(obj: &Value) -> Vec<FieldError> {
    let mut errs = key_errors(obj, "data");
    errs.extend(key_errors(obj, "binaryData"));
    if let (Some(data), Some(bin)) = (obj["data"].as_object(), obj["binaryData"].as_object()) {
        for k in bin.keys().filter(|k| data.contains_key(*k)) {
            errs.push(FieldError {
                field: format!("binaryData[{k}]"),
                value: k.clone(),
                message: "duplicate of key present in data".into(),
            });
        }
    }
    let mut total = 0usize;
    if let Some(data) = obj["data"].as_object() {
        total += data
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum::<usize>();
    }
    if let Some(bin) = obj["binaryData"].as_object() {
        total += bin
            .iter()
            .map(|(k, v)| k.len() + decoded_len(v).unwrap_or(0))
            .sum::<usize>();
    }
    if total > MAX_DATA_BYTES {
        errs.push(too_long("data"));
    }
    errs
}

/// A Secret's keys are config keys and its values (decoded) add up to at most 1 MiB.
pub fn validate_secret(obj: &Value) -> Vec<FieldError> {
    let mut errs = key_errors(obj, "data");
    let total: usize = obj["data"]
        .as_object()
        .map(|d| d.values().map(|v| decoded_len(v).unwrap_or(0)).sum())
        .unwrap_or(0);
    if total > MAX_DATA_BYTES {
        errs.push(too_long("data"));
    }
    errs
}

/// Moves a Secret's `stringData` into `data` (each value base64-encoded, overriding a `data`
/// entry of the same key), as the v1 → internal conversion does on every write.
pub fn merge_string_data(obj: &mut Value) {
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    let data = o.entry("data").or_insert_with(|| Value::Object(Map::new()));
    if !data.is_object() {
        *data = Value::Object(Map::new());
    }
    if let Some(data) = data.as_object_mut() {
        for (k, v) in strings {
            if let Some(s) = v.as_str()
                && let Ok(encoded) = serde_json::to_value(ByteString(s.as_bytes().to_vec()))
            {
                data.insert(k, encoded);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_configmap_over_one_mebibyte_is_too_long_counting_keys_and_values() {
        let at_limit = "x".repeat(MAX_DATA_BYTES - 1);
        assert!(validate_configmap(&json!({"data": {"k": at_limit}})).is_empty());
        let over = "x".repeat(MAX_DATA_BYTES);
        let errs = validate_configmap(&json!({"data": {"k": over}}));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("must have at most 1048576 bytes"));
        // binaryData counts decoded bytes: 4 base64 characters are 3 bytes.
        let b64 = "QUFB".repeat(MAX_DATA_BYTES / 3);
        assert!(
            validate_configmap(&json!({"binaryData": {"b": b64}, "data": {"k": "xyz"}})).len() == 1
        );
    }

    #[test]
    fn a_secret_counts_decoded_values() {
        let under = "QUFB".repeat(MAX_DATA_BYTES / 3); // 1,048,575 bytes decoded
        assert!(validate_secret(&json!({"data": {"a": under}})).is_empty());
        let over = "QUFB".repeat(MAX_DATA_BYTES / 3 + 1);
        assert_eq!(validate_secret(&json!({"data": {"a": over}})).len(), 1);
    }

    #[test]
    fn string_data_is_merged_into_data_and_wins() {
        let mut s =
            json!({"data": {"a": "b2xk", "keep": "eA=="}, "stringData": {"a": "new", "b": "x"}});
        merge_string_data(&mut s);
        assert_eq!(
            s,
            json!({"data": {"a": "bmV3", "keep": "eA==", "b": "eA=="}})
        );
        let mut none = json!({"data": {"a": "eA=="}});
        merge_string_data(&mut none);
        assert_eq!(none, json!({"data": {"a": "eA=="}}));
    }

    #[test]
    fn keys_must_be_config_keys() {
        for good in ["a", "A-b_c.d", ".hidden", "x..y", &"k".repeat(253)] {
            assert!(config_key_errors(good).is_empty(), "{good}");
        }
        for bad in ["", "a/b", ".", "..", "..x", "a b", "é", &"k".repeat(254)] {
            assert!(!config_key_errors(bad).is_empty(), "{bad:?}");
        }
        let errs = validate_configmap(
            &json!({"data": {"a/b": "1", "ok": "2"}, "binaryData": {"ok": "eA=="}}),
        );
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["data[a/b]", "binaryData[ok]"]);
        assert_eq!(
            validate_secret(&json!({"data": {"..": "eA=="}}))[0].field,
            "data[..]"
        );
    }
}
