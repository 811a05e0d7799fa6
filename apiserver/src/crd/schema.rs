//! Structural OpenAPI v3 schemas, as CustomResourceDefinitions declare them
//! (`spec.versions[].schema.openAPIV3Schema`), and the three things Kubernetes does with them:
//! **prune** fields the schema does not know, apply **defaults**, and **validate**.
//!
//! # Order (kube-apiserver's, for every write and every read from the store)
//! 1. prune: unknown fields go, except under `x-kubernetes-preserve-unknown-fields`; nulls in
//!    non-nullable fields go too (so a default can take their place);
//! 2. default: each missing property with a `default` gets it (deep-copied), outside-in;
//! 3. validate: every failing field path is reported, not just the first.
//!
//! # Structural
//! [`Schema::parse`] refuses what Kubernetes refuses: a node without a `type` (unless it is
//! int-or-string or preserves unknown fields), `type`/`default`/`nullable`/`additionalProperties`
//! or `x-kubernetes-*` inside `allOf`/`anyOf`/`oneOf`/`not`, properties in a junctor that the
//! enclosing schema does not declare, `properties` together with `additionalProperties`,
//! `uniqueItems: true`, `$ref`, `additionalProperties: false`, invalid patterns, list-map keys
//! that are not required scalar properties, and defaults that do not validate.
//!
//! # Cost
//! Schemas have no `$ref`, so each schema node is checked at most once per value node it
//! applies to (junctor branches included): work is bounded by schema size × object size. Every
//! validation also runs under a step budget ([`VALIDATION_BUDGET`]) and reports "too complex"
//! rather than run long; junctor branches stop at their first error; a value shown in a message
//! is serialized only up to 80 bytes; at most [`MAX_ERRORS`] errors are reported.
//! Patterns use the `regex` crate (RE2 semantics, linear time — like Go's).

use std::collections::{BTreeMap, BTreeSet};

use capstan_api::validation::FieldError;
use regex::Regex;
use serde_json::{Map, Value};

/// The fields of metav1.ObjectMeta: a custom resource's metadata keeps these and no others.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Schema nodes visited per validation before it is abandoned as too complex.
pub const VALIDATION_BUDGET: u64 = 2_000_000;
/// How deep a schema may nest (serde_json already stops JSON at 128 levels).
const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl Type {
    fn parse(s: &str) -> Option<Type> {
        Some(match s {
            "object" => Type::Object,
            "array" => Type::Array,
            "string" => Type::String,
            "integer" => Type::Integer,
            "number" => Type::Number,
            "boolean" => Type::Boolean,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Type::Object => "object",
            Type::Array => "array",
            Type::String => "string",
            Type::Integer => "integer",
            Type::Number => "number",
            Type::Boolean => "boolean",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    Atomic,
    Set,
    Map,
}

/// One parsed schema node.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    pub ty: Option<Type>,
    pub format: Option<String>,
    pub nullable: bool,
    pub properties: BTreeMap<String, Schema>,
    pub required: Vec<String>,
    /// `additionalProperties` as a schema (a map); `true` is an empty schema that keeps all.
    pub additional: Option<Box<Schema>>,
    pub items: Option<Box<Schema>>,
    pub enumeration: Vec<Value>,
    pub minimum: Option<f64>,
    pub exclusive_minimum: bool,
    pub maximum: Option<f64>,
    pub exclusive_maximum: bool,
    pub multiple_of: Option<f64>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub pattern: Option<Regex>,
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    pub min_properties: Option<u64>,
    pub max_properties: Option<u64>,
    pub all_of: Vec<Schema>,
    pub any_of: Vec<Schema>,
    pub one_of: Vec<Schema>,
    pub not: Option<Box<Schema>>,
    pub default: Option<Value>,
    pub preserve_unknown: bool,
    pub int_or_string: bool,
    pub embedded_resource: bool,
    pub list_type: Option<ListType>,
    pub list_map_keys: Vec<String>,
}

/// Keywords a structural schema may use; anything else is refused by name.
const KNOWN: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "default",
    "example",
    "externalDocs",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
];

struct Parser<'e> {
    errs: &'e mut Vec<FieldError>,
    /// Parsing the direct junctors of an int-or-string node, where Kubernetes allows
    /// `anyOf: [{type: integer}, {type: string}]`.
    int_or_string_junctor: bool,
}

fn err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        value: String::new(),
        message: message.into(),
    }
}

fn forbidden(field: &str, message: impl Into<String>) -> FieldError {
    err(field, format!("Forbidden: {}", message.into()))
}

impl Schema {
    /// Parses a CRD's openAPIV3Schema, reporting every structural problem under `path`
    /// (`spec.versions[0].schema.openAPIV3Schema`). The schema is usable only when no errors
    /// were added.
    pub fn parse(v: &Value, path: &str, errs: &mut Vec<FieldError>) -> Schema {
        let before = errs.len();
        let mut p = Parser {
            errs,
            int_or_string_junctor: false,
        };
        let s = p.node(v, path, false, 0);
        if p.errs.len() == before {
            // Defaults must survive pruning and validate (checked once the tree is whole).
            s.check_defaults(path, p.errs);
        }
        s
    }

    /// Prunes, defaults and validates `obj` (the whole object, whose apiVersion, kind and
    /// metadata the schema does not govern). Returns the field errors.
    pub fn admit(&self, obj: &mut Value) -> Vec<FieldError> {
        self.prune_root(obj, None);
        self.default_root(obj);
        self.validate_root(obj)
    }

    /// Drops unknown fields (recording their paths in `dropped`), keeping the root's
    /// apiVersion, kind and metadata.
    pub fn prune_root(&self, obj: &mut Value, mut dropped: Option<&mut Vec<String>>) {
        let Value::Object(map) = obj else { return };
        let keep = ["apiVersion", "kind", "metadata"];
        let mut path = String::new();
        prune_object(self, map, &mut path, &keep, &mut dropped);
        // metadata is an ObjectMeta, whatever the schema says: only its fields are kept.
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.retain(|k, _| {
                let known = OBJECT_META_FIELDS.contains(&k.as_str());
                if !known && let Some(d) = dropped.as_deref_mut() {
                    d.push(format!("metadata.{k}"));
                }
                known
            });
        }
    }

    pub fn default_root(&self, obj: &mut Value) {
        if let Value::Object(map) = obj {
            default_object(self, map, &["apiVersion", "kind", "metadata"]);
        }
    }

    /// Validates everything but apiVersion/kind/metadata (checked by the server itself).
    pub fn validate_root(&self, obj: &Value) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let Value::Object(map) = obj else {
            errs.push(err("", "must be an object"));
            return errs;
        };
        let mut v = Validator {
            budget: VALIDATION_BUDGET,
            errs: &mut errs,
            quiet: false,
        };
        let governed = |k: &str| !matches!(k, "apiVersion" | "kind" | "metadata");
        for r in self.required.iter().filter(|r| governed(r)) {
            if !map.contains_key(r) {
                v.errs.push(err(r, "Required value"));
            }
        }
        let mut path = String::new();
        for (k, child) in map.iter().filter(|(k, _)| governed(k)) {
            if let Some(sub) = self.properties.get(k).or(self.additional.as_deref()) {
                path.clear();
                path.push_str(k);
                v.validate(sub, child, &mut path);
            }
        }
        // The schema may constrain metadata.name and metadata.generateName (only those).
        if let Some(meta_schema) = self.properties.get("metadata") {
            for field in ["name", "generateName"] {
                if let (Some(fs), Some(value)) = (
                    meta_schema.properties.get(field),
                    obj.pointer(&format!("/metadata/{field}")),
                ) {
                    path.clear();
                    path.push_str("metadata.");
                    path.push_str(field);
                    v.validate(fs, value, &mut path);
                }
            }
        }
        path.clear();
        v.junctors(self, obj, &mut path);
        if errs.len() >= MAX_ERRORS {
            errs.truncate(MAX_ERRORS);
            errs.push(err(
                "<root>",
                format!("Too many: validation stopped after {MAX_ERRORS} errors"),
            ));
        }
        errs
    }
}

impl Parser<'_> {
    fn node(&mut self, v: &Value, path: &str, in_junctor: bool, depth: usize) -> Schema {
        let mut s = Schema::default();
        let Value::Object(m) = v else {
            self.errs
                .push(err(path, "Invalid value: must be a schema object"));
            return s;
        };
        if depth > MAX_DEPTH {
            self.errs.push(err(
                path,
                format!("Forbidden: the schema nests more than {MAX_DEPTH} levels"),
            ));
            return s;
        }
        for k in m.keys() {
            if k == "x-kubernetes-validations" {
                self.errs.push(forbidden(
                    &format!("{path}.x-kubernetes-validations"),
                    "CEL validation rules are not supported by Capstan",
                ));
            } else if !KNOWN.contains(&k.as_str()) {
                self.errs.push(forbidden(
                    &format!("{path}.{k}"),
                    format!("{k} is not supported in a structural schema"),
                ));
            }
        }
        let field = |k: &str| format!("{path}.{k}");
        let type_allowed = std::mem::take(&mut self.int_or_string_junctor)
            && matches!(
                m.get("type").and_then(Value::as_str),
                Some("integer" | "string")
            );
        if in_junctor {
            for k in [
                "type",
                "default",
                "nullable",
                "additionalProperties",
                "description",
                "title",
                "x-kubernetes-preserve-unknown-fields",
                "x-kubernetes-int-or-string",
                "x-kubernetes-embedded-resource",
                "x-kubernetes-list-type",
                "x-kubernetes-list-map-keys",
                "x-kubernetes-map-type",
            ] {
                if m.contains_key(k) && !(k == "type" && type_allowed) {
                    self.errs.push(forbidden(
                        &field(k),
                        "must not be used inside of allOf, anyOf, oneOf or not",
                    ));
                }
            }
        }
        let bool_of = |k: &str, errs: &mut Vec<FieldError>| match m.get(k) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                errs.push(err(&field(k), "Invalid value: must be a boolean"));
                false
            }
        };
        let uint_of = |k: &str, errs: &mut Vec<FieldError>| match m.get(k) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) => Some(n),
                None => {
                    errs.push(err(
                        &field(k),
                        "Invalid value: must be a non-negative integer",
                    ));
                    None
                }
            },
        };
        let num_of = |k: &str, errs: &mut Vec<FieldError>| match m.get(k) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(n) => Some(n),
                None => {
                    errs.push(err(&field(k), "Invalid value: must be a number"));
                    None
                }
            },
        };
        s.nullable = bool_of("nullable", self.errs);
        s.preserve_unknown = bool_of("x-kubernetes-preserve-unknown-fields", self.errs);
        s.int_or_string = bool_of("x-kubernetes-int-or-string", self.errs);
        s.embedded_resource = bool_of("x-kubernetes-embedded-resource", self.errs);
        s.exclusive_minimum = bool_of("exclusiveMinimum", self.errs);
        s.exclusive_maximum = bool_of("exclusiveMaximum", self.errs);
        if bool_of("uniqueItems", self.errs) {
            self.errs.push(forbidden(
                &field("uniqueItems"),
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            ));
        }
        match m.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t.is_empty() => {}
            Some(Value::String(t)) => match Type::parse(t) {
                Some(ty) => s.ty = Some(ty),
                None => self.errs.push(err(
                    &field("type"),
                    format!(
                        "Unsupported value: {t:?}: supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\""
                    ),
                )),
            },
            Some(_) => self
                .errs
                .push(err(&field("type"), "Invalid value: must be a string")),
        }
        if !in_junctor && s.ty.is_none() && !s.int_or_string && !s.preserve_unknown {
            self.errs.push(err(
                &field("type"),
                "Required value: must not be empty for specified object fields",
            ));
        }
        if s.int_or_string && s.ty.is_some() {
            self.errs.push(forbidden(
                &field("type"),
                "must be empty if x-kubernetes-int-or-string is true",
            ));
        }
        if let Some(f) = m.get("format") {
            match f.as_str() {
                Some(f) if !f.is_empty() => s.format = Some(f.to_string()),
                Some(_) => {}
                None => self
                    .errs
                    .push(err(&field("format"), "Invalid value: must be a string")),
            }
        }
        if let Some(props) = m.get("properties") {
            match props {
                Value::Object(props) => {
                    for (name, sub) in props {
                        let child = self.node(
                            sub,
                            &format!("{path}.properties[{name}]"),
                            in_junctor,
                            depth + 1,
                        );
                        s.properties.insert(name.clone(), child);
                    }
                }
                _ => self.errs.push(err(
                    &field("properties"),
                    "Invalid value: must be an object",
                )),
            }
        }
        match m.get("additionalProperties") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(true)) => {
                s.additional = Some(Box::new(Schema {
                    preserve_unknown: true,
                    ..Schema::default()
                }))
            }
            Some(Value::Bool(false)) => self.errs.push(forbidden(
                &field("additionalProperties"),
                "additionalProperties cannot be set to false",
            )),
            Some(sub) => {
                s.additional = Some(Box::new(self.node(
                    sub,
                    &field("additionalProperties"),
                    in_junctor,
                    depth + 1,
                )))
            }
        }
        if !s.properties.is_empty() && s.additional.is_some() {
            self.errs.push(forbidden(
                &field("additionalProperties"),
                "additionalProperties and properties are mutual exclusive",
            ));
        }
        match m.get("required") {
            None | Some(Value::Null) => {}
            Some(Value::Array(r)) => {
                for (i, n) in r.iter().enumerate() {
                    match n.as_str() {
                        Some(n) => s.required.push(n.to_string()),
                        None => self.errs.push(err(
                            &format!("{path}.required[{i}]"),
                            "Invalid value: must be a string",
                        )),
                    }
                }
            }
            Some(_) => self
                .errs
                .push(err(&field("required"), "Invalid value: must be an array")),
        }
        match m.get("items") {
            None | Some(Value::Null) => {
                if s.ty == Some(Type::Array) && !in_junctor {
                    self.errs.push(err(
                        &field("items"),
                        "Required value: must be specified for arrays",
                    ));
                }
            }
            Some(Value::Array(_)) => self.errs.push(forbidden(
                &field("items"),
                "items must be a schema object and not an array",
            )),
            Some(sub) => {
                s.items = Some(Box::new(self.node(
                    sub,
                    &field("items"),
                    in_junctor,
                    depth + 1,
                )))
            }
        }
        match m.get("enum") {
            None | Some(Value::Null) => {}
            Some(Value::Array(e)) => s.enumeration = e.clone(),
            Some(_) => self
                .errs
                .push(err(&field("enum"), "Invalid value: must be an array")),
        }
        s.minimum = num_of("minimum", self.errs);
        s.maximum = num_of("maximum", self.errs);
        s.multiple_of = num_of("multipleOf", self.errs);
        if s.multiple_of.is_some_and(|m| m <= 0.0) {
            self.errs.push(err(
                &field("multipleOf"),
                "Invalid value: must be greater than zero",
            ));
            s.multiple_of = None;
        }
        s.min_length = uint_of("minLength", self.errs);
        s.max_length = uint_of("maxLength", self.errs);
        s.min_items = uint_of("minItems", self.errs);
        s.max_items = uint_of("maxItems", self.errs);
        s.min_properties = uint_of("minProperties", self.errs);
        s.max_properties = uint_of("maxProperties", self.errs);
        if let Some(p) = m.get("pattern") {
            match p.as_str() {
                Some(p) => match regex::RegexBuilder::new(p).size_limit(1 << 20).build() {
                    Ok(re) => s.pattern = Some(re),
                    Err(e) => self.errs.push(err(
                        &field("pattern"),
                        format!("Invalid value: {p:?}: must be a valid regular expression: {e}"),
                    )),
                },
                None => self
                    .errs
                    .push(err(&field("pattern"), "Invalid value: must be a string")),
            }
        }
        for (k, out) in [
            ("allOf", &mut s.all_of),
            ("anyOf", &mut s.any_of),
            ("oneOf", &mut s.one_of),
        ] {
            match m.get(k) {
                None | Some(Value::Null) => {}
                Some(Value::Array(list)) => {
                    for (i, sub) in list.iter().enumerate() {
                        self.int_or_string_junctor = s.int_or_string;
                        out.push(self.node(sub, &format!("{path}.{k}[{i}]"), true, depth + 1));
                    }
                }
                Some(_) => self
                    .errs
                    .push(err(&field(k), "Invalid value: must be an array")),
            }
        }
        if let Some(sub) = m.get("not").filter(|v| !v.is_null()) {
            s.not = Some(Box::new(self.node(sub, &field("not"), true, depth + 1)));
        }
        if let Some(d) = m.get("default") {
            s.default = Some(d.clone());
        }
        match m.get("x-kubernetes-list-type") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) => {
                s.list_type = match t.as_str() {
                    "atomic" => Some(ListType::Atomic),
                    "set" => Some(ListType::Set),
                    "map" => Some(ListType::Map),
                    other => {
                        self.errs.push(err(
                            &field("x-kubernetes-list-type"),
                            format!("Unsupported value: {other:?}: supported values: \"atomic\", \"map\", \"set\""),
                        ));
                        None
                    }
                };
                if s.ty != Some(Type::Array) {
                    self.errs.push(forbidden(
                        &field("x-kubernetes-list-type"),
                        "must only be used if type is array",
                    ));
                }
            }
            Some(_) => self.errs.push(err(
                &field("x-kubernetes-list-type"),
                "Invalid value: must be a string",
            )),
        }
        s.list_map_keys = crate::object::strings(m.get("x-kubernetes-list-map-keys"));
        self.check_lists(&s, path);
        if !in_junctor {
            // Everything a junctor describes (properties, items, additionalProperties, at any
            // depth, in nested junctors too) must exist in the structural skeleton outside it,
            // so pruning, which only looks at the skeleton, keeps what the junctor validates.
            for (k, list) in [
                ("allOf", &s.all_of),
                ("anyOf", &s.any_of),
                ("oneOf", &s.one_of),
            ] {
                for j in list {
                    self.check_covered(j, &s, &format!("{path}.{k}[*]"));
                }
            }
            if let Some(n) = &s.not {
                self.check_covered(n, &s, &format!("{path}.not"));
            }
        }
        s
    }

    fn check_covered(&mut self, j: &Schema, skeleton: &Schema, at: &str) {
        const MISSING: &str =
            "must have a corresponding property outside of allOf, anyOf, oneOf or not";
        for (name, jp) in &j.properties {
            let here = format!("{at}.properties[{name}]");
            match skeleton.properties.get(name) {
                Some(sp) => self.check_covered(jp, sp, &here),
                None => self.errs.push(forbidden(&here, MISSING)),
            }
        }
        if let Some(ji) = &j.items {
            match &skeleton.items {
                Some(si) => self.check_covered(ji, si, &format!("{at}.items")),
                None => self.errs.push(forbidden(&format!("{at}.items"), MISSING)),
            }
        }
        if let Some(ja) = &j.additional {
            match &skeleton.additional {
                Some(sa) => self.check_covered(ja, sa, &format!("{at}.additionalProperties")),
                None => self
                    .errs
                    .push(forbidden(&format!("{at}.additionalProperties"), MISSING)),
            }
        }
        for (k, list) in [
            ("allOf", &j.all_of),
            ("anyOf", &j.any_of),
            ("oneOf", &j.one_of),
        ] {
            for nested in list {
                self.check_covered(nested, skeleton, &format!("{at}.{k}[*]"));
            }
        }
        if let Some(n) = &j.not {
            self.check_covered(n, skeleton, &format!("{at}.not"));
        }
    }

    fn check_lists(&mut self, s: &Schema, path: &str) {
        let field = |k: &str| format!("{path}.{k}");
        if !s.list_map_keys.is_empty() && s.list_type != Some(ListType::Map) {
            self.errs.push(forbidden(
                &field("x-kubernetes-list-map-keys"),
                "must only be used if x-kubernetes-list-type is \"map\"",
            ));
        }
        if s.list_type == Some(ListType::Map) {
            if s.list_map_keys.is_empty() {
                self.errs.push(err(
                    &field("x-kubernetes-list-map-keys"),
                    "Required value: must not be empty if x-kubernetes-list-type is \"map\"",
                ));
            }
            match &s.items {
                Some(items) if items.ty == Some(Type::Object) => {
                    for key in &s.list_map_keys {
                        match items.properties.get(key) {
                            None => self.errs.push(err(
                                &field("x-kubernetes-list-map-keys"),
                                format!("Invalid value: {key:?}: entries must all be names of item properties"),
                            )),
                            Some(p) if !matches!(p.ty, Some(Type::String | Type::Integer | Type::Number | Type::Boolean)) && !p.int_or_string => {
                                self.errs.push(err(
                                    &field("x-kubernetes-list-map-keys"),
                                    format!("Invalid value: {key:?}: must be a scalar typed property"),
                                ));
                            }
                            Some(p) if !items.required.contains(key) && p.default.is_none() => {
                                self.errs.push(err(
                                    &field("items.required"),
                                    format!("Required value: all map keys must be required or have a default: {key:?} is neither"),
                                ));
                            }
                            Some(_) => {}
                        }
                    }
                }
                _ => self.errs.push(forbidden(
                    &field("items.type"),
                    "must be object if parent array's x-kubernetes-list-type is map",
                )),
            }
        }
        if s.list_type == Some(ListType::Set)
            && let Some(items) = &s.items
            && !matches!(
                items.ty,
                Some(Type::String | Type::Integer | Type::Number | Type::Boolean)
            )
            && !items.int_or_string
        {
            self.errs.push(forbidden(
                &field("items.type"),
                "must be a scalar type if parent array's x-kubernetes-list-type is set",
            ));
        }
    }
}

impl Schema {
    /// Every default, pruned and defaulted like an object would be, must validate against its
    /// own schema and survive pruning unchanged (Kubernetes' rule).
    fn check_defaults(&self, path: &str, errs: &mut Vec<FieldError>) {
        if let Some(d) = &self.default {
            let field = format!("{path}.default");
            if d.is_null() && !self.nullable {
                errs.push(forbidden(
                    &field,
                    "must not be null for a non-nullable field",
                ));
            } else {
                let mut copy = d.clone();
                let mut dropped = Vec::new();
                prune_value(self, &mut copy, &mut String::new(), &mut Some(&mut dropped));
                if !dropped.is_empty() {
                    errs.push(err(
                        &field,
                        format!(
                            "Invalid value: must not have unknown fields: {}",
                            dropped.join(", ")
                        ),
                    ));
                }
                default_value(self, &mut copy);
                let mut inner = Vec::new();
                Validator {
                    budget: VALIDATION_BUDGET,
                    errs: &mut inner,
                    quiet: false,
                }
                .validate(self, &copy, &mut String::new());
                for e in inner {
                    let sub = if e.field.is_empty() || e.field == "<root>" {
                        field.clone()
                    } else {
                        format!("{field}.{}", e.field)
                    };
                    errs.push(FieldError {
                        field: sub,
                        value: e.value,
                        message: e.message.replace("<root>", "default"),
                    });
                }
            }
        }
        for (name, p) in &self.properties {
            p.check_defaults(&format!("{path}.properties[{name}]"), errs);
        }
        if let Some(a) = &self.additional {
            a.check_defaults(&format!("{path}.additionalProperties"), errs);
        }
        if let Some(i) = &self.items {
            i.check_defaults(&format!("{path}.items"), errs);
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Prunes one object's fields under schema `s`; `keep` names fields kept regardless (the root's
/// apiVersion/kind/metadata, an embedded resource's).
fn prune_object(
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

fn prune_value(
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

fn default_object(s: &Schema, map: &mut Map<String, Value>, skip: &[&str]) {
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

fn default_value(s: &Schema, v: &mut Value) {
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

struct Validator<'e> {
    budget: u64,
    errs: &'e mut Vec<FieldError>,
    /// Only whether the value passes matters (a junctor's branch): stop at the first error.
    quiet: bool,
}

/// At most this many field errors are reported for one object (then a count of the rest).
pub const MAX_ERRORS: usize = 256;

/// `123`, `"text"`, `true`, or a JSON rendering, short, as Kubernetes prints values.
fn show(v: &Value) -> String {
    /// Stops the serializer after `limit` bytes: a huge value costs no more than a small one.
    struct Limited(Vec<u8>, usize);
    impl std::io::Write for Limited {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let room = self.1.saturating_sub(self.0.len());
            if room == 0 {
                return Err(std::io::Error::other("long enough"));
            }
            let n = b.len().min(room);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Limited(Vec::new(), 81);
    let _ = match v {
        Value::String(s) => {
            let head: String = s.chars().take(81).collect();
            serde_json::to_writer(&mut out, &head)
        }
        other => serde_json::to_writer(&mut out, other),
    };
    let s = String::from_utf8_lossy(&out.0).into_owned();
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &s[..cut])
    } else {
        s
    }
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

/// A text equal for values [`json_eq`] calls equal (numbers compare by value: 1 == 1.0).
fn canonical(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("n{}", f as i64),
            Some(f) => format!("n{f}"),
            None => format!("n{n}"),
        },
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{k:?}:{}", canonical(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

impl Validator<'_> {
    fn fail(&mut self, path: &str, value: &Value, message: String) {
        let field = if path.is_empty() { "<root>" } else { path };
        self.errs.push(FieldError {
            field: field.to_string(),
            value: String::new(),
            message: format!("Invalid value: {}: {message}", show(value)),
        });
    }

    fn validate(&mut self, s: &Schema, v: &Value, path: &mut String) {
        if self.budget == 0
            || (self.quiet && !self.errs.is_empty())
            || self.errs.len() >= MAX_ERRORS
        {
            return;
        }
        self.budget -= 1;
        if self.budget == 0 {
            self.errs.push(err(
                if path.is_empty() { "<root>" } else { path },
                "Forbidden: validation is too complex for this schema (it exceeded its budget of checks)",
            ));
            return;
        }
        let shown = if path.is_empty() {
            "<root>"
        } else {
            path.as_str()
        }
        .to_string();
        if v.is_null() {
            if s.nullable || (s.ty.is_none() && !s.int_or_string) {
                return;
            }
            let want = if s.int_or_string {
                "integer or string"
            } else {
                s.ty.map(Type::name).unwrap_or("object")
            };
            self.fail(
                path,
                v,
                format!("{shown} in body must be of type {want}: \"null\""),
            );
            return;
        }
        // Type.
        if s.int_or_string {
            if !(is_integer(v) || v.is_string()) {
                self.fail(
                    path,
                    v,
                    format!(
                        "{shown} in body must be of type integer or string: {:?}",
                        type_of(v)
                    ),
                );
                return;
            }
        } else if let Some(ty) = s.ty {
            let ok = match ty {
                Type::Object => v.is_object(),
                Type::Array => v.is_array(),
                Type::String => v.is_string(),
                Type::Integer => is_integer(v),
                Type::Number => v.is_number(),
                Type::Boolean => v.is_boolean(),
            };
            if !ok {
                self.fail(
                    path,
                    v,
                    format!(
                        "{shown} in body must be of type {}: {:?}",
                        ty.name(),
                        type_of(v)
                    ),
                );
                return;
            }
        }
        if !s.enumeration.is_empty() && !s.enumeration.iter().any(|e| json_eq(e, v)) {
            let supported: Vec<String> = s.enumeration.iter().map(show).collect();
            self.errs.push(err(
                if path.is_empty() { "<root>" } else { path },
                format!(
                    "Unsupported value: {}: supported values: {}",
                    show(v),
                    supported.join(", ")
                ),
            ));
        }
        match v {
            Value::Number(n) => self.number(s, v, n.as_f64().unwrap_or(0.0), &shown),
            Value::String(text) => self.string(s, v, text, &shown),
            Value::Array(items) => self.array(s, v, items, path),
            Value::Object(map) => self.object(s, v, map, path),
            _ => {}
        }
        self.junctors(s, v, path);
    }

    fn number(&mut self, s: &Schema, v: &Value, n: f64, shown: &str) {
        if let Some(min) = s.minimum {
            if s.exclusive_minimum && n <= min {
                self.fail(
                    shown,
                    v,
                    format!("{shown} in body should be greater than {min}"),
                );
            } else if n < min {
                self.fail(
                    shown,
                    v,
                    format!("{shown} in body should be greater than or equal to {min}"),
                );
            }
        }
        if let Some(max) = s.maximum {
            if s.exclusive_maximum && n >= max {
                self.fail(
                    shown,
                    v,
                    format!("{shown} in body should be less than {max}"),
                );
            } else if n > max {
                self.fail(
                    shown,
                    v,
                    format!("{shown} in body should be less than or equal to {max}"),
                );
            }
        }
        if let Some(m) = s.multiple_of {
            let q = n / m;
            if (q - q.round()).abs() > 1e-9 {
                self.fail(
                    shown,
                    v,
                    format!("{shown} in body should be a multiple of {m}"),
                );
            }
        }
        match s.format.as_deref() {
            Some("int32")
                if !(is_integer(v) && (i32::MIN as f64..=i32::MAX as f64).contains(&n)) =>
            {
                self.fail(
                    shown,
                    v,
                    format!("{shown} in body must be of type int32: {n}"),
                );
            }
            Some("int64") if !is_integer(v) || v.as_i64().is_none() => {
                self.fail(
                    shown,
                    v,
                    format!("{shown} in body must be of type int64: {n}"),
                );
            }
            Some("float") if n.is_finite() && n.abs() > f32::MAX as f64 => {
                self.fail(
                    shown,
                    v,
                    format!("{shown} in body must be of type float: {n}"),
                );
            }
            _ => {}
        }
    }

    fn string(&mut self, s: &Schema, v: &Value, text: &str, shown: &str) {
        let chars = || text.chars().count() as u64;
        if let Some(min) = s.min_length
            && chars() < min
        {
            self.fail(
                shown,
                v,
                format!("{shown} in body should be at least {min} chars long"),
            );
        }
        if let Some(max) = s.max_length
            && (text.len() as u64 > max && chars() > max)
        {
            self.fail(
                shown,
                v,
                format!("{shown} in body should be at most {max} chars long"),
            );
        }
        if let Some(re) = &s.pattern
            && !re.is_match(text)
        {
            self.fail(
                shown,
                v,
                format!("{shown} in body should match '{}'", re.as_str()),
            );
        }
        if let Some(f) = s.format.as_deref()
            && !s.int_or_string
            && let Err(want) = check_format(f, text)
        {
            self.fail(
                shown,
                v,
                format!("{shown} in body must be of type {want}: {text:?}"),
            );
        }
    }

    fn array(&mut self, s: &Schema, v: &Value, items: &[Value], path: &mut String) {
        let shown = if path.is_empty() {
            "<root>"
        } else {
            path.as_str()
        }
        .to_string();
        if let Some(min) = s.min_items
            && (items.len() as u64) < min
        {
            self.errs.push(err(
                &shown,
                format!(
                    "Invalid value: {}: {shown} in body should have at least {min} items",
                    items.len()
                ),
            ));
        }
        if let Some(max) = s.max_items
            && items.len() as u64 > max
        {
            self.errs.push(err(
                &shown,
                format!("Too many: {}: must have at most {max} items", items.len()),
            ));
        }
        if let Some(item_schema) = &s.items {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                self.validate(item_schema, item, path);
                path.truncate(len);
                if self.budget == 0 {
                    return;
                }
            }
        }
        match s.list_type {
            Some(ListType::Set) => {
                // Linear: items are compared by a canonical text (numbers by value).
                let mut seen = std::collections::HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    if !seen.insert(canonical(item)) {
                        self.errs.push(err(
                            &format!("{shown}[{i}]"),
                            format!("Duplicate value: {}", show(item)),
                        ));
                    }
                }
                let _ = v;
            }
            Some(ListType::Map) => {
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let key: Vec<String> = s
                        .list_map_keys
                        .iter()
                        .map(|k| item.get(k).map(canonical).unwrap_or_default())
                        .collect();
                    if !seen.insert(key.clone()) {
                        let shown_key: Vec<String> = s
                            .list_map_keys
                            .iter()
                            .zip(&key)
                            .map(|(k, v)| format!("\"{k}\":{v}"))
                            .collect();
                        self.errs.push(err(
                            &format!("{shown}[{i}]"),
                            format!(
                                "Duplicate value: map[string]interface {{}}{{{}}}",
                                shown_key.join(", ")
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    fn object(&mut self, s: &Schema, v: &Value, map: &Map<String, Value>, path: &mut String) {
        let shown = if path.is_empty() {
            "<root>"
        } else {
            path.as_str()
        }
        .to_string();
        for r in &s.required {
            if !map.contains_key(r) {
                self.errs.push(err(&join(path, r), "Required value"));
            }
        }
        if let Some(min) = s.min_properties
            && (map.len() as u64) < min
        {
            self.fail(
                &shown,
                v,
                format!("{shown} in body should have at least {min} properties"),
            );
        }
        if let Some(max) = s.max_properties
            && map.len() as u64 > max
        {
            self.errs.push(err(
                &shown,
                format!("Too many: {}: must have at most {max} items", map.len()),
            ));
        }
        if s.embedded_resource {
            for k in ["apiVersion", "kind"] {
                if map.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                    self.errs
                        .push(err(&join(path, k), "Required value: must not be empty"));
                }
            }
        }
        for (k, child) in map {
            let sub = s.properties.get(k).or(s.additional.as_deref());
            if let Some(sub) = sub {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                self.validate(sub, child, path);
                path.truncate(len);
                if self.budget == 0 {
                    return;
                }
            }
        }
    }

    fn junctors(&mut self, s: &Schema, v: &Value, path: &mut String) {
        for sub in &s.all_of {
            self.validate(sub, v, path);
        }
        let shown = if path.is_empty() {
            "<root>"
        } else {
            path.as_str()
        }
        .to_string();
        if !s.any_of.is_empty() {
            let mut any = false;
            for sub in &s.any_of {
                if self.passes(sub, v, path) {
                    any = true;
                    break;
                }
            }
            if !any && self.budget > 0 {
                self.fail(
                    &shown,
                    v,
                    format!("{shown} in body must validate at least one schema (anyOf)"),
                );
            }
        }
        if !s.one_of.is_empty() {
            let mut passing = 0;
            for sub in &s.one_of {
                if self.passes(sub, v, path) {
                    passing += 1;
                }
            }
            if passing != 1 && self.budget > 0 {
                self.fail(
                    &shown,
                    v,
                    format!("{shown} in body must validate one and only one schema (oneOf)"),
                );
            }
        }
        if let Some(not) = &s.not
            && self.passes(not, v, path)
        {
            self.fail(
                &shown,
                v,
                format!("{shown} in body must not validate the schema (not)"),
            );
        }
    }

    /// Whether `v` validates against `s` (errors discarded; the budget is shared).
    fn passes(&mut self, s: &Schema, v: &Value, path: &mut String) -> bool {
        let mut scratch = Vec::new();
        let mut inner = Validator {
            budget: self.budget,
            errs: &mut scratch,
            quiet: true,
        };
        inner.validate(s, v, path);
        self.budget = inner.budget;
        if self.budget == 0 {
            self.errs.extend(scratch.into_iter().filter(|e| {
                e.message
                    .starts_with("Forbidden: validation is too complex")
            }));
            return false;
        }
        scratch.is_empty()
    }
}

/// Checks a string format Kubernetes validates; unknown formats pass, as in Kubernetes.
fn check_format(format: &str, s: &str) -> Result<(), &'static str> {
    let ok = match format {
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.len() == 10 && s.parse::<jiff::civil::Date>().is_ok(),
        "int32" => s.parse::<i32>().is_ok(),
        "int64" => s.parse::<i64>().is_ok(),
        "byte" => is_base64(s),
        "uuid" => is_uuid(s),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            let bits: Result<u8, _> = bits.parse();
            match (ip.parse::<std::net::IpAddr>(), bits) {
                (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
                (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
                _ => false,
            }
        }),
        "hostname" => capstan_api::validation::dns1123_subdomain(s).is_ok(),
        "duration" => is_go_duration(s),
        _ => return Ok(()),
    };
    if ok {
        Ok(())
    } else {
        Err(match format {
            "date-time" | "datetime" => "date-time",
            "date" => "date",
            "int32" => "int32",
            "int64" => "int64",
            "byte" => "byte",
            "uuid" => "uuid",
            "ipv4" => "ipv4",
            "ipv6" => "ipv6",
            "cidr" => "cidr",
            "hostname" => "hostname",
            _ => "duration",
        })
    }
}

fn is_base64(s: &str) -> bool {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return false;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    pad <= 2
        && b[..b.len() - pad]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Go's time.ParseDuration syntax: `1h30m`, `-1.5s`, `300ms`.
fn is_go_duration(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    if s == "0" {
        return true;
    }
    if s.is_empty() {
        return false;
    }
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 || rest[..digits].parse::<f64>().is_err() {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(**u));
        match unit {
            // "ms" before "m" and "s": the list order tries longer units first.
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Schema {
        let mut errs = Vec::new();
        let s = Schema::parse(&v, "schema", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        s
    }

    fn parse_errs(v: Value) -> Vec<String> {
        let mut errs = Vec::new();
        Schema::parse(&v, "schema", &mut errs);
        errs.into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    fn fields(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.field.as_str()).collect()
    }

    fn widget() -> Schema {
        parse(json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10, "format": "int32"},
                        "color": {"type": "string", "enum": ["red", "green"], "default": "red"},
                        "name": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"},
                        "when": {"type": "string", "format": "date-time"},
                        "port": {"x-kubernetes-int-or-string": true},
                        "tags": {"type": "array", "maxItems": 3, "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                        "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                            "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "n": {"type": "integer", "default": 80}}}},
                        "note": {"type": "string", "nullable": true},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    }
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }
        }))
    }

    #[test]
    fn a_valid_object_is_pruned_and_defaulted() {
        let s = widget();
        let mut obj = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a", "whatever": 1},
            "spec": {"size": 3, "bogus": true, "ports": [{"name": "http"}], "extra": {"anything": [1]},
                     "labels": {"a": "b"}, "note": null},
            "junk": 1});
        let errs = s.admit(&mut obj);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(obj["spec"]["color"], "red");
        assert_eq!(obj["spec"]["ports"][0]["n"], 80);
        assert!(obj["spec"].get("bogus").is_none());
        assert!(obj.get("junk").is_none());
        assert_eq!(obj["spec"]["extra"]["anything"], json!([1]));
        assert!(
            obj["metadata"].get("whatever").is_none(),
            "metadata keeps ObjectMeta's fields only"
        );
        assert_eq!(obj["metadata"]["name"], "a");
        assert!(obj["spec"]["note"].is_null());
    }

    #[test]
    fn every_failing_field_is_reported() {
        let s = widget();
        let mut obj = json!({"spec": {"size": 11, "color": "blue", "name": "ABCDEFG", "when": "yesterday",
            "port": true, "tags": ["a", "a", "b", "c"], "ports": [{"name": "x"}, {"name": "x"}]},
            "status": {"ready": "yes"}});
        let errs = s.admit(&mut obj);
        let f = fields(&errs);
        for want in [
            "spec.size",
            "spec.color",
            "spec.name",
            "spec.when",
            "spec.port",
            "spec.tags",
            "spec.tags[1]",
            "spec.ports[1]",
            "status.ready",
        ] {
            assert!(f.contains(&want), "{want} missing from {errs:#?}");
        }
        // name breaks maxLength and pattern: both reported.
        assert_eq!(f.iter().filter(|x| **x == "spec.name").count(), 2);
        let size = errs.iter().find(|e| e.field == "spec.size").unwrap();
        assert_eq!(
            size.message,
            "Invalid value: 11: spec.size in body should be less than or equal to 10"
        );
    }

    #[test]
    fn required_fields_and_types_have_kubernetes_messages() {
        let s = widget();
        let errs = s.admit(&mut json!({"spec": {"size": "3"}}));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.size");
        assert_eq!(
            errs[0].message,
            "Invalid value: \"3\": spec.size in body must be of type integer: \"string\""
        );
        let errs = s.admit(&mut json!({"spec": {}}));
        assert_eq!(errs[0].field, "spec.size");
        assert_eq!(errs[0].message, "Required value");
    }

    #[test]
    fn formats_int32_int64_and_date_time() {
        let s = parse(json!({"type": "object", "properties": {
            "a": {"type": "integer", "format": "int32"},
            "b": {"type": "integer", "format": "int64"},
            "c": {"type": "string", "format": "date-time"},
            "d": {"type": "string", "format": "date"}}}));
        assert!(
            s.admit(&mut json!({"a": 2147483647, "b": 9223372036854775807i64, "c": "2024-01-02T03:04:05Z", "d": "2024-02-29"}))
                .is_empty()
        );
        let errs = s.admit(
            &mut json!({"a": 2147483648i64, "b": 18446744073709551615u64, "c": "2024-01-02", "d": "2023-02-29"}),
        );
        assert_eq!(fields(&errs), vec!["a", "b", "c", "d"], "{errs:?}");
    }

    #[test]
    fn nullable_and_null_defaults() {
        let s = parse(json!({"type": "object", "properties": {
            "n": {"type": "string", "nullable": true},
            "d": {"type": "string", "default": "x"},
            "p": {"type": "string"}}}));
        let mut obj = json!({"n": null, "d": null, "p": null});
        assert!(s.admit(&mut obj).is_empty());
        assert_eq!(obj, json!({"n": null, "d": "x"}));
    }

    #[test]
    fn junctors_validate_where_structural() {
        let s = parse(json!({"type": "object", "properties": {
            "v": {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                  "oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
            "w": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+%$"}]},
            "x": {"type": "string", "not": {"enum": ["forbidden"]}},
            "y": {"type": "integer", "allOf": [{"minimum": 1}, {"maximum": 5}]}}}));
        assert!(
            s.admit(&mut json!({"v": {"a": "1"}, "w": "50%", "x": "ok", "y": 3}))
                .is_empty()
        );
        let errs = s
            .admit(&mut json!({"v": {"a": "1", "b": "2"}, "w": "fifty", "x": "forbidden", "y": 9}));
        assert_eq!(fields(&errs), vec!["v", "w", "x", "y"], "{errs:?}");
    }

    #[test]
    fn non_structural_schemas_are_refused_with_their_paths() {
        let errs = parse_errs(json!({"type": "object", "properties": {
            "a": {"properties": {"b": {"type": "string"}}},
            "c": {"type": "array"},
            "d": {"type": "string", "anyOf": [{"type": "string"}]},
            "e": {"type": "object", "properties": {"f": {"type": "string"}}, "additionalProperties": {"type": "string"}},
            "g": {"type": "string", "pattern": "("},
            "h": {"$ref": "#/definitions/x"},
            "i": {"type": "string", "x-kubernetes-validations": [{"rule": "self.size() > 1"}]},
            "j": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"]},
            "l": {"type": "integer", "default": "nope"},
            "m": {"type": "object", "properties": {"n": {"type": "string"}}, "anyOf": [{"properties": {"o": {"type": "string"}}}]},
            "p": {"type": "array", "items": {"type": "string"}, "uniqueItems": true},
            "q": {"type": "object", "properties": {"r": {"type": "object"}},
                  "anyOf": [{"properties": {"r": {"properties": {"s": {"required": ["t"]}}}}}]},
        }}));
        let text = errs.join("\n");
        for want in [
            "schema.properties[a].type: Required value",
            "schema.properties[c].items: Required value",
            "schema.properties[d].anyOf[0].type: Forbidden",
            "schema.properties[e].additionalProperties: Forbidden",
            "schema.properties[g].pattern: Invalid value",
            "schema.properties[h].$ref: Forbidden",
            "schema.properties[i].x-kubernetes-validations: Forbidden",
            "schema.properties[j].items.required: Required value",
            "schema.properties[m].anyOf[*].properties[o]: Forbidden",
            "schema.properties[p].uniqueItems: Forbidden",
            "schema.properties[q].anyOf[*].properties[r].properties[s]: Forbidden",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        // The default is checked only when the rest is structural.
        let errs = parse_errs(
            json!({"type": "object", "properties": {"l": {"type": "integer", "default": "nope"}}}),
        );
        assert!(
            errs[0].starts_with("schema.properties[l].default: Invalid value"),
            "{errs:?}"
        );
    }

    #[test]
    fn nested_anyof_finishes_quickly() {
        // 40 levels of two-way anyOf over one value: each branch is tried once (no $ref).
        let mut junctor = json!({"minimum": 0});
        for _ in 0..40 {
            junctor = json!({"anyOf": [{"maximum": -1}, junctor.clone(), ]});
        }
        let mut inner = json!({"type": "integer"});
        inner["anyOf"] = json!([{"maximum": -1}, junctor]);
        let s = parse(json!({"type": "object", "properties": {"n": inner}}));
        let started = std::time::Instant::now();
        let errs = s.admit(&mut json!({"n": 5}));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Either it passes (found the branch) or stops with the budget error; never hangs.
        assert!(
            errs.is_empty() || errs[0].message.contains("too complex"),
            "{errs:?}"
        );
    }

    #[test]
    fn durations_and_base64() {
        for ok in ["1h30m", "300ms", "-1.5s", "0", "2h45m10.5s"] {
            assert!(is_go_duration(ok), "{ok}");
        }
        for bad in ["", "1", "h", "1x", "1.2.3s"] {
            assert!(!is_go_duration(bad), "{bad}");
        }
        assert!(is_base64("aGVsbG8="));
        assert!(!is_base64("aGVsbG8"));
    }
}
