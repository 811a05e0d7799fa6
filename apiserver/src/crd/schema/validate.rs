//! Validation of a value against a schema: every failing field path reported (up to
//! [`MAX_ERRORS`]), under a step budget ([`super::VALIDATION_BUDGET`]).

use std::collections::BTreeSet;

use capstan_api::validation::FieldError;
use serde_json::{Map, Value};

use super::formats::check_format;
use super::*;

pub(super) struct Validator<'e> {
    pub(super) budget: u64,
    pub(super) errs: &'e mut Vec<FieldError>,
    /// Only whether the value passes matters (a junctor's branch): stop at the first error.
    pub(super) quiet: bool,
}

/// At most this many field errors are reported for one object (then a count of the rest).
pub const MAX_ERRORS: usize = 256;

/// `123`, `"text"`, `true`, or a JSON rendering, short, as Kubernetes prints values.
pub(super) fn show(v: &Value) -> String {
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

pub(super) fn type_of(v: &Value) -> &'static str {
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

pub(super) fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

/// A text equal for values [`json_eq`] calls equal (numbers compare by value: 1 == 1.0).
pub(super) fn canonical(v: &Value) -> String {
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

pub(super) fn json_eq(a: &Value, b: &Value) -> bool {
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

    pub(super) fn validate(&mut self, s: &Schema, v: &Value, path: &mut String) {
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

    pub(super) fn junctors(&mut self, s: &Schema, v: &Value, path: &mut String) {
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
