//! Kubernetes' format library (k8s.io/apiserver/pkg/cel/library/format.go):
//! `format.dns1123Label()` and its siblings, or `format.named("dns1123Label")` (an optional),
//! and `f.validate(s)`: `optional.none()` when `s` is valid, else the list of what is wrong.
//! `strings.quote(s)` from cel-go's strings extension (v2) lives here too.

use std::sync::Arc;

use capstan_api::validation;
use cel::extractors::This;
use cel::objects::OptionalValue;
use cel::{Context, FunctionContext, ResolveResult, Value};

/// The named formats Kubernetes' library knows.
const NAMES: &[&str] = &[
    "dns1123Label",
    "dns1123Subdomain",
    "dns1035Label",
    "qualifiedName",
    "dns1123LabelPrefix",
    "dns1123SubdomainPrefix",
    "dns1035LabelPrefix",
    "labelValue",
    "uri",
    "uuid",
    "byte",
    "date",
    "datetime",
];

#[derive(Debug, PartialEq, Eq)]
pub struct Format(&'static str);

impl cel::objects::Opaque for Format {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.NamedFormat"
    }
}

fn dns1035_label(s: &str) -> Result<(), String> {
    validation::dns1123_label(s)?;
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".into());
    }
    Ok(())
}

fn check(name: &str, s: &str) -> Result<(), String> {
    let prefix = |s: &str| s.strip_suffix('-').unwrap_or(s).to_string();
    match name {
        "dns1123Label" => validation::dns1123_label(s),
        "dns1123Subdomain" => validation::dns1123_subdomain(s),
        "dns1035Label" => dns1035_label(s),
        "qualifiedName" => validation::qualified_name(s),
        "dns1123LabelPrefix" => validation::dns1123_label(&prefix(s)),
        "dns1123SubdomainPrefix" => validation::dns1123_subdomain(&prefix(s)),
        "dns1035LabelPrefix" => dns1035_label(&prefix(s)),
        "labelValue" => validation::label_value(s),
        "uri" => crate::crd::schema::check_format("uri", s).map_err(str::to_string),
        "uuid" => crate::crd::schema::check_format("uuid", s).map_err(str::to_string),
        "byte" => crate::crd::schema::check_format("byte", s).map_err(str::to_string),
        "date" => crate::crd::schema::check_format("date", s).map_err(str::to_string),
        "datetime" => crate::crd::schema::check_format("date-time", s).map_err(str::to_string),
        _ => Ok(()),
    }
}

fn optional(v: Option<Value>) -> Value {
    Value::Opaque(Arc::new(match v {
        Some(v) => OptionalValue::of(v),
        None => OptionalValue::none(),
    }))
}

pub fn register(ctx: &mut Context<'static, 'static>) {
    for &name in NAMES {
        let _ = ctx.add_function(&format!("format.{name}"), move || {
            Value::Opaque(Arc::new(Format(name)))
        });
    }
    let _ = ctx.add_function("format.named", |s: Arc<String>| {
        optional(
            NAMES
                .iter()
                .find(|n| ***n == *s)
                .map(|n| Value::Opaque(Arc::new(Format(n)))),
        )
    });
    let _ = ctx.add_function(
        "validate",
        |ftx: &FunctionContext, This(f): This<Value>, s: Arc<String>| -> ResolveResult {
            let Value::Opaque(o) = &f else {
                return Err(ftx.error("validate() applies to a format"));
            };
            let Some(Format(name)) = o.downcast_ref::<Format>() else {
                return Err(ftx.error("validate() applies to a format"));
            };
            Ok(optional(check(name, &s).err().map(|e| {
                Value::List(Arc::new(vec![Value::String(Arc::new(e))]))
            })))
        },
    );
    let _ = ctx.add_function("strings.quote", |s: Arc<String>| {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        Value::String(Arc::new(out))
    });
}
