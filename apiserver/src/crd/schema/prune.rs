//! Pruning: fields a schema does not know are dropped (kube-apiserver's structural pruning),
//! except under `x-kubernetes-preserve-unknown-fields`; nulls in non-nullable fields go too.

use serde_json::{Map, Value};

use super::*;

/// Prunes one object's fields under schema `s`; `keep` names fields kept regardless (the root's
/// apiVersion/kind/metadata, an embedded resource's).
pub(super) fn prune_object(
    s: &Schema,
    map: &mut Map<String, Value>,
    path: &mut String,
    keep: &[&str],
    dropped: &mut Option<&mut Vec<String>>,
) {
    let track = dropped.is_some();
    // Pass 1: drop unknown fields, and nulls in non-nullable fields without a default.
    map.retain(|k, v| {
        if keep.contains(&k.as_str()) {
            return true;
        }
        let keep_it = match s.properties.get(k).or(s.additional.as_deref()) {
            Some(c) => !(v.is_null() && !c.nullable && c.default.is_none()),
            None => s.preserve_unknown,
        };
        if !keep_it
            && track
            && !s.properties.contains_key(k)
            && s.additional.is_none()
            && let Some(d) = dropped.as_deref_mut()
        {
            d.push(join(path, k));
        }
        keep_it
    });
    // Pass 2: recurse into the fields the schema describes.
    for (k, v) in map.iter_mut() {
        if keep.contains(&k.as_str()) || !(v.is_object() || v.is_array()) {
            continue;
        }
        let Some(c) = s.properties.get(k).or(s.additional.as_deref()) else {
            continue;
        };
        let len = path.len();
        if track {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k);
        }
        prune_value(c, v, path, dropped);
        path.truncate(len);
    }
}

pub(super) fn prune_value(
    s: &Schema,
    v: &mut Value,
    path: &mut String,
    dropped: &mut Option<&mut Vec<String>>,
) {
    match v {
        Value::Object(map)
            if s.ty == Some(Type::Object) || !s.properties.is_empty() || s.additional.is_some() =>
        {
            let keep: &[&str] = if s.embedded_resource {
                &["apiVersion", "kind", "metadata"]
            } else {
                &[]
            };
            prune_object(s, map, path, keep, dropped);
        }
        Value::Array(items) => {
            if let Some(item_schema) = &s.items {
                let track = dropped.is_some();
                for (i, item) in items.iter_mut().enumerate() {
                    if !(item.is_object() || item.is_array()) {
                        continue;
                    }
                    let len = path.len();
                    if track {
                        path.push_str(&format!("[{i}]"));
                    }
                    prune_value(item_schema, item, path, dropped);
                    path.truncate(len);
                }
            }
        }
        _ => {}
    }
}
