//! Defaulting: each missing property with a `default` gets it (deep-copied), outside-in, after
//! pruning.

use serde_json::{Map, Value};

use super::*;

pub(super) fn default_object(s: &Schema, map: &mut Map<String, Value>, skip: &[&str]) {
    for (name, p) in &s.properties {
        if skip.contains(&name.as_str()) {
            continue;
        }
        match map.get_mut(name) {
            Some(v) if v.is_null() && !p.nullable => {
                if let Some(d) = &p.default {
                    *v = d.clone();
                    default_value(p, v);
                }
            }
            Some(v) => default_value(p, v),
            None => {
                if let Some(d) = &p.default {
                    let mut d = d.clone();
                    default_value(p, &mut d);
                    map.insert(name.clone(), d);
                }
            }
        }
    }
    if let Some(a) = &s.additional {
        for (k, v) in map.iter_mut() {
            if !skip.contains(&k.as_str()) && !s.properties.contains_key(k) {
                default_value(a, v);
            }
        }
    }
}

pub(super) fn default_value(s: &Schema, v: &mut Value) {
    match v {
        Value::Object(map) => default_object(s, map, &[]),
        Value::Array(items) => {
            if let Some(item_schema) = &s.items {
                for item in items {
                    default_value(item_schema, item);
                }
            }
        }
        _ => {}
    }
}
