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
//!
//! # Where things are
//! [`parse`] (structural checks, and defaults checked against their own schema), [`prune`],
//! [`defaults`], [`validate`] and [`formats`] (the string formats Kubernetes checks).

mod defaults;
mod formats;
mod parse;
mod prune;
pub mod rules;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;

use capstan_api::validation::FieldError;
use regex::Regex;
use serde_json::Value;

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
    /// `x-kubernetes-validations`, compiled.
    pub rules: Vec<std::sync::Arc<rules::Rule>>,
    /// This node or one below it has rules.
    pub rules_below: bool,
}

use defaults::*;
pub use formats::check_format;
use parse::*;
use prune::*;
pub use validate::MAX_ERRORS;
use validate::*;

pub(super) fn err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        value: String::new(),
        message: message.into(),
    }
}

pub(super) fn forbidden(field: &str, message: impl Into<String>) -> FieldError {
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
        let mut s = p.node(v, path, false, 0);
        if p.errs.len() == before {
            // Defaults must survive pruning and validate (checked once the tree is whole);
            // rules must type-check within their cost, reported alongside other errors.
            s.check_defaults(path, p.errs);
        }
        s.check_rules(path, p.errs);
        s.mark_rules();
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

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}
