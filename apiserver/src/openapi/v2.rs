//! `/openapi/v2`: the Swagger 2.0 form of the same documents `/openapi/v3` serves, as JSON
//! (`Accept: application/json`) or as the gnostic protobuf kubectl asks for
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`; kubectl parses only that
//! form — `kubectl explain --output plaintext-openapiv2`, and older kubectls for validation).
//!
//! The Swagger document is derived from the v3 documents: every group/version's
//! `components/schemas` become `definitions` (refs rewritten to `#/definitions/…`), every path
//! keeps its operations with their GVK, parameters and patch content types. Schemas are
//! simplified the way kube-openapi's v2 consumers need them: a kind (properties) has no `type`,
//! a map is `type: object` with `additionalProperties`, anything else untyped is an arbitrary
//! value; `anyOf`/`oneOf`/`nullable` (not in Swagger 2.0) are dropped, a lone `$ref` among them
//! is kept.
//!
//! The protobuf encoder below writes the gnostic `openapi.v2.Document` message by field number
//! (only the messages and fields used here); values that are free JSON (`default`, `enum`,
//! vendor extensions) go in `Any.yaml` as JSON text, which is YAML.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

const V3_PREFIX: &str = "#/components/schemas/";
const V2_PREFIX: &str = "#/definitions/";

/// The Swagger 2.0 document of every group/version.
pub fn swagger(v3_docs: &HashMap<String, Value>) -> Value {
    let mut definitions = Map::new();
    let mut paths = Map::new();
    let mut keys: Vec<&String> = v3_docs.keys().collect();
    keys.sort();
    for key in keys {
        let doc = &v3_docs[key];
        if let Some(schemas) = doc["components"]["schemas"].as_object() {
            for (name, s) in schemas {
                definitions.entry(name.clone()).or_insert_with(|| schema(s));
            }
        }
        if let Some(ps) = doc["paths"].as_object() {
            for (path, item) in ps {
                paths.insert(path.clone(), path_item(item));
            }
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "definitions": definitions,
    })
}

fn rewrite_ref(r: &str) -> String {
    match r.strip_prefix(V3_PREFIX) {
        Some(name) => format!("{V2_PREFIX}{name}"),
        None => r.to_string(),
    }
}

/// A v3 schema as a kube-openapi-friendly Swagger schema.
fn schema(s: &Value) -> Value {
    let Value::Object(m) = s else {
        return json!({});
    };
    let mut out = Map::new();
    if let Some(d) = m.get("description").and_then(Value::as_str) {
        out.insert("description".into(), json!(d));
    }
    for (k, v) in m {
        if k.starts_with("x-kubernetes-") {
            out.insert(k.clone(), v.clone());
        }
    }
    // A reference, directly or as the single useful branch of allOf/anyOf/oneOf.
    let reference = m
        .get("$ref")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            ["allOf", "anyOf", "oneOf"].iter().find_map(|k| {
                let branches = m.get(*k)?.as_array()?;
                let refs: Vec<&str> = branches
                    .iter()
                    .filter_map(|b| b.get("$ref").and_then(Value::as_str))
                    .collect();
                (refs.len() == 1).then(|| refs[0].to_string())
            })
        });
    if let Some(r) = reference {
        out.insert("$ref".into(), json!(rewrite_ref(&r)));
        return Value::Object(out);
    }
    for k in [
        "format",
        "title",
        "default",
        "multipleOf",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "maxLength",
        "minLength",
        "pattern",
        "maxItems",
        "minItems",
        "maxProperties",
        "minProperties",
        "required",
        "enum",
    ] {
        if let Some(v) = m.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    let ty = match m.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Array(ts)) => {
            let real: Vec<&str> = ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            (real.len() == 1).then(|| real[0])
        }
        _ => None,
    };
    let properties = m.get("properties").and_then(Value::as_object);
    match (ty, properties) {
        (_, Some(props)) if ty.is_none_or(|t| t == "object") => {
            let converted: Map<String, Value> =
                props.iter().map(|(k, v)| (k.clone(), schema(v))).collect();
            out.insert("properties".into(), Value::Object(converted));
        }
        (Some("object"), None) => {
            // A map (additionalProperties), else an arbitrary object.
            match m.get("additionalProperties") {
                Some(Value::Object(a)) => {
                    out.insert("type".into(), json!("object"));
                    out.insert(
                        "additionalProperties".into(),
                        schema(&Value::Object(a.clone())),
                    );
                }
                Some(Value::Bool(true)) => {
                    out.insert("type".into(), json!("object"));
                    out.insert("additionalProperties".into(), json!({}));
                }
                _ => {}
            }
        }
        (Some("array"), _) => {
            if let Some(items @ Value::Object(_)) = m.get("items") {
                out.insert("type".into(), json!("array"));
                out.insert("items".into(), schema(items));
            }
        }
        (Some(t @ ("string" | "integer" | "number" | "boolean")), _) => {
            out.insert("type".into(), json!(t));
        }
        _ => {}
    }
    Value::Object(out)
}

fn path_item(item: &Value) -> Value {
    let mut out = Map::new();
    if let Some(m) = item.as_object() {
        for (k, v) in m {
            match k.as_str() {
                "get" | "put" | "post" | "delete" | "patch" => {
                    out.insert(k.clone(), operation(v));
                }
                "parameters" => {
                    out.insert(k.clone(), parameters(v));
                }
                _ => {}
            }
        }
    }
    Value::Object(out)
}

fn parameters(v: &Value) -> Value {
    Value::Array(
        v.as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                json!({
                    "name": p["name"],
                    "in": p["in"],
                    "description": p["description"],
                    "required": p["required"].as_bool().unwrap_or(false),
                    "type": "string",
                    "uniqueItems": true,
                })
            })
            .collect(),
    )
}

fn operation(op: &Value) -> Value {
    let mut out = Map::new();
    for (k, v) in op.as_object().into_iter().flatten() {
        if k.starts_with("x-kubernetes-") {
            out.insert(k.clone(), v.clone());
        }
    }
    let mut params = parameters(&op["parameters"]);
    if let Some(content) = op["requestBody"]["content"].as_object() {
        let types: Vec<&String> = content.keys().collect();
        out.insert("consumes".into(), json!(types));
        let body_schema = content
            .values()
            .next()
            .map(|c| schema(&c["schema"]))
            .unwrap_or_else(|| json!({}));
        if let Value::Array(ps) = &mut params {
            ps.push(json!({"name": "body", "in": "body", "required": true, "schema": body_schema}));
        }
    }
    out.insert("parameters".into(), params);
    out.insert("produces".into(), json!(["application/json"]));
    let mut responses = Map::new();
    for (code, r) in op["responses"].as_object().into_iter().flatten() {
        let s = r["content"]["application/json"]["schema"].clone();
        responses.insert(
            code.clone(),
            json!({"description": r["description"].as_str().unwrap_or("OK"), "schema": schema(&s)}),
        );
    }
    out.insert("responses".into(), Value::Object(responses));
    Value::Object(out)
}

/// Protobuf wire encoding, field by field.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }
    fn message(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.0);
    }
    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, 0);
            self.varint(1);
        }
    }
    fn int64(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }
    fn double(&mut self, field: u32, v: f64) {
        if v != 0.0 {
            self.key(field, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// gnostic `Any`: the value as YAML text (JSON is YAML).
fn any(v: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(2, &v.to_string());
    m
}

/// `NamedAny` vendor extensions of a JSON object (its `x-` keys).
fn vendor_extensions(m: &mut Msg, field: u32, obj: &Value) {
    for (k, v) in obj.as_object().into_iter().flatten() {
        if k.starts_with("x-") {
            let mut named = Msg::default();
            named.string(1, k);
            named.message(2, any(v));
            m.message(field, named);
        }
    }
}

fn encode_schema(s: &Value) -> Msg {
    let mut m = Msg::default();
    let str_of = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or_default();
    m.string(1, str_of("$ref"));
    m.string(2, str_of("format"));
    m.string(3, str_of("title"));
    m.string(4, str_of("description"));
    if let Some(d) = s.get("default") {
        m.message(5, any(d));
    }
    let num = |k: &str| s.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let int = |k: &str| s.get(k).and_then(Value::as_i64).unwrap_or(0);
    let flag = |k: &str| s.get(k).and_then(Value::as_bool).unwrap_or(false);
    m.double(6, num("multipleOf"));
    m.double(7, num("maximum"));
    m.boolean(8, flag("exclusiveMaximum"));
    m.double(9, num("minimum"));
    m.boolean(10, flag("exclusiveMinimum"));
    m.int64(11, int("maxLength"));
    m.int64(12, int("minLength"));
    m.string(13, str_of("pattern"));
    m.int64(14, int("maxItems"));
    m.int64(15, int("minItems"));
    m.int64(17, int("maxProperties"));
    m.int64(18, int("minProperties"));
    for r in s
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = r.as_str() {
            m.string(19, r);
        }
    }
    for e in s
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(20, any(e));
    }
    match s.get("additionalProperties") {
        Some(Value::Object(a)) => {
            let mut item = Msg::default();
            item.message(1, encode_schema(&Value::Object(a.clone())));
            m.message(21, item);
        }
        Some(Value::Bool(b)) => {
            let mut item = Msg::default();
            item.key(2, 0);
            item.varint(*b as u64);
            m.message(21, item);
        }
        _ => {}
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let mut ty = Msg::default();
        ty.string(1, t);
        m.message(22, ty);
    }
    if let Some(items) = s.get("items").filter(|i| i.is_object()) {
        let mut it = Msg::default();
        it.message(1, encode_schema(items));
        m.message(23, it);
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        let mut p = Msg::default();
        for (name, sub) in props {
            let mut named = Msg::default();
            named.string(1, name);
            named.message(2, encode_schema(sub));
            p.message(1, named);
        }
        m.message(25, p);
    }
    vendor_extensions(&mut m, 31, s);
    m
}

fn encode_parameter(p: &Value) -> Msg {
    let str_of = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut param = Msg::default();
    if str_of("in") == "body" {
        let mut body = Msg::default();
        body.string(1, str_of("description"));
        body.string(2, str_of("name"));
        body.string(3, "body");
        body.boolean(4, p["required"].as_bool().unwrap_or(false));
        body.message(5, encode_schema(&p["schema"]));
        param.message(1, body);
    } else {
        // Query and path parameters share these field numbers in gnostic.
        let mut sub = Msg::default();
        sub.boolean(1, p["required"].as_bool().unwrap_or(false));
        sub.string(2, str_of("in"));
        sub.string(3, str_of("description"));
        sub.string(4, str_of("name"));
        let (type_field, unique_field, which) = if str_of("in") == "path" {
            (5, 19, 4)
        } else {
            (6, 20, 3)
        };
        sub.string(type_field, "string");
        sub.boolean(unique_field, p["uniqueItems"].as_bool().unwrap_or(false));
        let mut non_body = Msg::default();
        non_body.message(which, sub);
        param.message(2, non_body);
    }
    let mut item = Msg::default();
    item.message(1, param);
    item
}

fn encode_operation(op: &Value) -> Msg {
    let mut m = Msg::default();
    for t in op["produces"].as_array().into_iter().flatten() {
        m.string(6, t.as_str().unwrap_or_default());
    }
    for t in op["consumes"].as_array().into_iter().flatten() {
        m.string(7, t.as_str().unwrap_or_default());
    }
    for p in op["parameters"].as_array().into_iter().flatten() {
        m.message(8, encode_parameter(p));
    }
    let mut responses = Msg::default();
    for (code, r) in op["responses"].as_object().into_iter().flatten() {
        let mut response = Msg::default();
        response.string(1, r["description"].as_str().unwrap_or_default());
        let mut schema_item = Msg::default();
        schema_item.message(1, encode_schema(&r["schema"]));
        response.message(2, schema_item);
        let mut value = Msg::default();
        value.message(1, response);
        let mut named = Msg::default();
        named.string(1, code);
        named.message(2, value);
        responses.message(1, named);
    }
    m.message(9, responses);
    vendor_extensions(&mut m, 13, op);
    m
}

/// The gnostic protobuf encoding of a Swagger document made by [`swagger`].
pub fn to_protobuf(doc: &Value) -> Vec<u8> {
    let mut m = Msg::default();
    m.string(1, doc["swagger"].as_str().unwrap_or("2.0"));
    let mut info = Msg::default();
    info.string(1, doc["info"]["title"].as_str().unwrap_or_default());
    info.string(2, doc["info"]["version"].as_str().unwrap_or_default());
    m.message(2, info);
    let mut paths = Msg::default();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let mut pi = Msg::default();
        for (field, verb) in [
            (2, "get"),
            (3, "put"),
            (4, "post"),
            (5, "delete"),
            (8, "patch"),
        ] {
            if let Some(op) = item.get(verb) {
                pi.message(field, encode_operation(op));
            }
        }
        for p in item["parameters"].as_array().into_iter().flatten() {
            pi.message(9, encode_parameter(p));
        }
        let mut named = Msg::default();
        named.string(1, path);
        named.message(2, pi);
        paths.message(2, named);
    }
    m.message(8, paths);
    let mut defs = Msg::default();
    for (name, s) in doc["definitions"].as_object().into_iter().flatten() {
        let mut named = Msg::default();
        named.string(1, name);
        named.message(2, encode_schema(s));
        defs.message(1, named);
    }
    m.message(9, defs);
    m.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_maps_arrays_and_refs_take_the_shapes_kubectl_parses() {
        assert_eq!(
            schema(
                &json!({"type": "object", "properties": {"a": {"type": "string"}}, "description": "k"})
            ),
            json!({"description": "k", "properties": {"a": {"type": "string"}}})
        );
        assert_eq!(
            schema(&json!({"type": "object", "additionalProperties": {"type": "string"}})),
            json!({"type": "object", "additionalProperties": {"type": "string"}})
        );
        assert_eq!(
            schema(&json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})),
            json!({"x-kubernetes-preserve-unknown-fields": true})
        );
        assert_eq!(
            schema(
                &json!({"anyOf": [{"$ref": "#/components/schemas/X"}, {"type": "null"}], "description": "d"})
            ),
            json!({"description": "d", "$ref": "#/definitions/X"})
        );
        assert_eq!(
            schema(&json!({"type": ["string", "null"], "nullable": true})),
            json!({"type": "string"})
        );
        assert_eq!(schema(&json!({"type": "array"})), json!({}));
    }

    #[test]
    fn varints_and_nested_messages_encode_by_the_book() {
        let mut m = Msg::default();
        m.int64(1, 300);
        assert_eq!(m.0, vec![0x08, 0xAC, 0x02]);
        let mut outer = Msg::default();
        let mut inner = Msg::default();
        inner.string(1, "hi");
        outer.message(2, inner);
        assert_eq!(outer.0, vec![0x12, 0x04, 0x0A, 0x02, b'h', b'i']);
    }
}
