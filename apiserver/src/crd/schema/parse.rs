//! Structural schema parsing: [`Schema::parse`] turns a CRD's openAPIV3Schema into [`Schema`]
//! nodes and refuses what Kubernetes refuses (see the module above); defaults are checked
//! against their own schema here.

use capstan_api::validation::FieldError;
use serde_json::Value;

use super::*;

/// Keywords a structural schema may use; anything else is refused by name.
pub(super) const KNOWN: &[&str] = &[
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

pub(super) struct Parser<'e> {
    pub(super) errs: &'e mut Vec<FieldError>,
    /// Parsing the direct junctors of an int-or-string node, where Kubernetes allows
    /// `anyOf: [{type: integer}, {type: string}]`.
    pub(super) int_or_string_junctor: bool,
}

impl Parser<'_> {
    pub(super) fn node(&mut self, v: &Value, path: &str, in_junctor: bool, depth: usize) -> Schema {
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
                if in_junctor {
                    self.errs.push(forbidden(
                        &format!("{path}.x-kubernetes-validations"),
                        "must not be used inside of allOf, anyOf, oneOf or not",
                    ));
                }
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
        if !in_junctor {
            s.rules = self.rules(m.get("x-kubernetes-validations"), path);
        }
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
    pub(super) fn check_defaults(&self, path: &str, errs: &mut Vec<FieldError>) {
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
