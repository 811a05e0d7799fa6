//! JSON ↔ CEL values. Objects become maps keyed by string, integers `int` (or `uint` past
//! i64), other numbers `double`, as kube-apiserver's unstructured conversion does.

use std::collections::HashMap;
use std::sync::Arc;

use cel::Value;
use serde_json::Value as Json;

/// A JSON value as CEL sees it when no schema says more.
pub fn from_json(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(from_json).collect())),
        Json::Object(m) => {
            let map: HashMap<String, Value> =
                m.iter().map(|(k, v)| (k.clone(), from_json(v))).collect();
            Value::Map(map.into())
        }
    }
}

/// A CEL value as JSON (for variables and audit annotations); `None` for what JSON cannot
/// hold (types, functions, opaque values other than their string forms).
pub fn to_json(v: &Value) -> Option<Json> {
    Some(match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f).map(Json::Number)?,
        Value::String(s) => Json::String(s.to_string()),
        Value::Bytes(b) => Json::String(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            b.as_slice(),
        )),
        Value::List(items) => Json::Array(items.iter().map(to_json).collect::<Option<_>>()?),
        Value::Map(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m.map.iter() {
                let key = match k {
                    cel::objects::Key::String(s) => s.to_string(),
                    cel::objects::Key::Int(i) => i.to_string(),
                    cel::objects::Key::Uint(u) => u.to_string(),
                    cel::objects::Key::Bool(b) => b.to_string(),
                };
                out.insert(key, to_json(v)?);
            }
            Json::Object(out)
        }
        Value::Duration(d) => Json::String(format!("{}s", d.num_milliseconds() as f64 / 1000.0)),
        Value::Timestamp(t) => Json::String(t.to_rfc3339()),
        _ => return None,
    })
}
