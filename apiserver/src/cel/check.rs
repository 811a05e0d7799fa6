//! A type checker for CEL expressions over OpenAPI schemas: the part of cel-go's checker
//! Kubernetes relies on when it type-checks a ValidatingAdmissionPolicy against the kinds
//! it matches (`status.typeChecking`).
//!
//! Each variable has a [`Ty`]; an object's comes from its OpenAPI schema (`$ref`s resolved in
//! the document's `components.schemas`), so `object.spec.replicas` is an `int` and
//! `object.spec.replica` an undefined field. What it reports, in cel-go's words:
//! - `undefined field 'x'` (and `type 'int' does not support field selection`);
//! - `undeclared reference to 'x' (in container '')` for an unknown variable;
//! - `found no matching overload for '_>_' applied to '(int, string)'` for operators,
//!   conversions, `size` and the string functions called with the wrong types;
//! - a comprehension over something that is neither a list nor a map.
//!
//! Anything it cannot type (a function it does not know, `dyn`, an object with
//! `x-kubernetes-preserve-unknown-fields`) is `dyn`, which fits everywhere: the checker
//! warns only where cel-go certainly would.

use std::fmt;
use std::rc::Rc;

use cel::common::ast::operators as op;
use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, SourceInfo};
use serde_json::{Map, Value};

/// A CEL type.
#[derive(Clone, Debug)]
pub enum Ty<'a> {
    Dyn,
    Null,
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Timestamp,
    Duration,
    Type,
    List(Box<Ty<'a>>),
    Map(Box<Ty<'a>>, Box<Ty<'a>>),
    /// An object with declared properties: its schema and the name messages show.
    Object(&'a Value, Rc<str>),
    /// Declared fields (`variables`).
    Record(Rc<Vec<(String, Ty<'a>)>>),
    Optional(Box<Ty<'a>>),
    /// Kubernetes' library types (`kubernetes.Quantity`, `net.IP`, ...).
    Opaque(&'static str),
}

impl fmt::Display for Ty<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Dyn => f.write_str("dyn"),
            Ty::Null => f.write_str("null_type"),
            Ty::Bool => f.write_str("bool"),
            Ty::Int => f.write_str("int"),
            Ty::Uint => f.write_str("uint"),
            Ty::Double => f.write_str("double"),
            Ty::String => f.write_str("string"),
            Ty::Bytes => f.write_str("bytes"),
            Ty::Timestamp => f.write_str("google.protobuf.Timestamp"),
            Ty::Duration => f.write_str("google.protobuf.Duration"),
            Ty::Type => f.write_str("type"),
            Ty::List(e) => write!(f, "list({e})"),
            Ty::Map(k, v) => write!(f, "map({k}, {v})"),
            Ty::Object(_, name) => f.write_str(name),
            Ty::Record(_) => f.write_str("variables"),
            Ty::Optional(t) => write!(f, "optional_type({t})"),
            Ty::Opaque(name) => f.write_str(name),
        }
    }
}

impl<'a> Ty<'a> {
    /// The type of a value of `schema`; `defs` resolves its `$ref`s.
    pub fn of_schema(defs: &'a Map<String, Value>, schema: &'a Value) -> Ty<'a> {
        let (s, name) = resolve(defs, schema);
        if s["x-kubernetes-int-or-string"] == true {
            return Ty::Dyn;
        }
        let has_properties = s["properties"].as_object().is_some_and(|p| !p.is_empty());
        match s["type"].as_str() {
            Some("object") | None if has_properties => {
                Ty::Object(s, name.unwrap_or("object").into())
            }
            Some("object") => match &s["additionalProperties"] {
                ap @ Value::Object(_) => {
                    Ty::Map(Box::new(Ty::String), Box::new(Ty::of_schema(defs, ap)))
                }
                _ => Ty::Dyn,
            },
            Some("array") => Ty::List(Box::new(match &s["items"] {
                Value::Null => Ty::Dyn,
                items => Ty::of_schema(defs, items),
            })),
            Some("string") => match s["format"].as_str() {
                Some("date-time") => Ty::Timestamp,
                Some("duration") => Ty::Duration,
                Some("byte") => Ty::Bytes,
                _ => Ty::String,
            },
            Some("integer") => Ty::Int,
            Some("number") => Ty::Double,
            Some("boolean") => Ty::Bool,
            _ => Ty::Dyn,
        }
    }

    fn is_dyn(&self) -> bool {
        matches!(self, Ty::Dyn)
    }

    /// A scalar whose type is known.
    fn is_primitive(&self) -> bool {
        matches!(
            self,
            Ty::Bool
                | Ty::Int
                | Ty::Uint
                | Ty::Double
                | Ty::String
                | Ty::Bytes
                | Ty::Timestamp
                | Ty::Duration
        )
    }

    fn is_number(&self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double)
    }

    /// Whether a value of this type can be where `other` is expected (type parameters and
    /// `dyn` fit everything; objects and records are compared by name).
    fn fits(&self, other: &Ty) -> bool {
        match (self, other) {
            (Ty::Dyn, _) | (_, Ty::Dyn) => true,
            (Ty::List(a), Ty::List(b)) => a.fits(b),
            (Ty::Map(k1, v1), Ty::Map(k2, v2)) => k1.fits(k2) && v1.fits(v2),
            (Ty::Optional(a), Ty::Optional(b)) => a.fits(b),
            (Ty::Object(_, a), Ty::Object(_, b)) => a == b,
            (Ty::Opaque(a), Ty::Opaque(b)) => a == b,
            // cel-go lets null stand for messages and wrappers; kept lenient for maps and
            // lists too, which Kubernetes' schemas make nullable.
            (Ty::Null, _) | (_, Ty::Null) => true,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }

    /// The type of field `name`, or cel-go's complaint.
    fn field(&self, defs: &'a Map<String, Value>, name: &str) -> Result<Ty<'a>, String> {
        match self {
            Ty::Dyn => Ok(Ty::Dyn),
            Ty::Object(s, _) => {
                let key = super::unescape(name);
                match s["properties"].get(key.as_ref()) {
                    Some(p) => Ok(Ty::of_schema(defs, p)),
                    None if s["x-kubernetes-preserve-unknown-fields"] == true => Ok(Ty::Dyn),
                    None => match &s["additionalProperties"] {
                        ap @ Value::Object(_) => Ok(Ty::of_schema(defs, ap)),
                        _ => Err(format!("undefined field '{name}'")),
                    },
                }
            }
            Ty::Map(k, v) if k.fits(&Ty::String) => Ok((**v).clone()),
            Ty::Record(fields) => fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| format!("undefined field '{name}'")),
            other => Err(format!("type '{other}' does not support field selection")),
        }
    }
}

/// Follows `$ref` (also as the single entry of `allOf`, as generated schemas wrap them);
/// returns the schema and the name of the definition it came from.
fn resolve<'a>(defs: &'a Map<String, Value>, mut s: &'a Value) -> (&'a Value, Option<&'a str>) {
    let mut name = None;
    for _ in 0..8 {
        let reference = s["$ref"].as_str().or_else(|| match &s["allOf"] {
            Value::Array(a) if a.len() == 1 => a[0]["$ref"].as_str(),
            _ => None,
        });
        let Some(r) = reference else { break };
        let Some(target) = r
            .rsplit('/')
            .next()
            .and_then(|n| defs.get(n).map(|t| (n, t)))
        else {
            break;
        };
        name = Some(target.0);
        s = target.1;
    }
    (s, name)
}

/// Namespaces of qualified function names (`strings.quote`, `sets.contains`).
const NAMESPACES: &[&str] = &[
    "strings", "sets", "math", "base64", "optional", "format", "lists",
];
/// Type names an expression may mention (`type(x) == int`).
const TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
];

/// Type-checks `expr` (compiled from `source`) with the given variables; returns the issues
/// as cel-go prints them (`ERROR: <input>:1:22: ...` with the line and a caret), one per line
/// group, or an empty string.
pub fn check<'a>(
    expr: &IdedExpr,
    source: &SourceInfo,
    defs: &'a Map<String, Value>,
    vars: &[(&str, Ty<'a>)],
) -> (Ty<'a>, String) {
    let mut c = Checker {
        defs,
        scopes: vars
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect(),
        issues: Vec::new(),
    };
    let ty = c.expr(expr);
    let text = c
        .issues
        .iter()
        .map(|(id, message)| issue_text(source, *id, message))
        .collect::<Vec<_>>()
        .join("\n");
    (ty, text)
}

/// `ERROR: <input>:L:C: message`, then the source line and a caret under column C.
fn issue_text(source: &SourceInfo, id: u64, message: &str) -> String {
    let start = source.offset_for(id).map_or(0, |(s, _)| s as usize);
    let src = &source.source;
    let start = start.min(src.len());
    let before = &src[..start];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = src[line_start..start].chars().count();
    let line = src[line_start..].lines().next().unwrap_or_default();
    format!(
        "ERROR: <input>:{line_no}:{}: {message}\n | {line}\n | {}^",
        col + 1,
        ".".repeat(col)
    )
}

struct Checker<'a> {
    defs: &'a Map<String, Value>,
    scopes: Vec<(String, Ty<'a>)>,
    issues: Vec<(u64, String)>,
}

impl<'a> Checker<'a> {
    /// Records an issue at `id`; the expression is then `dyn`, so one mistake is reported once.
    fn issue(&mut self, id: u64, message: String) -> Ty<'a> {
        self.issues.push((id, message));
        Ty::Dyn
    }

    fn expr(&mut self, e: &IdedExpr) -> Ty<'a> {
        match &e.expr {
            Expr::Unspecified | Expr::Struct(_) => Ty::Dyn,
            Expr::Literal(l) => match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::Uint,
            },
            Expr::Ident(name) => {
                if let Some((_, t)) = self.scopes.iter().rev().find(|(n, _)| n == name) {
                    return t.clone();
                }
                if TYPE_NAMES.contains(&name.as_str()) {
                    return Ty::Type;
                }
                if NAMESPACES.contains(&name.as_str()) {
                    return Ty::Dyn;
                }
                self.issue(
                    e.id,
                    format!("undeclared reference to '{name}' (in container '')"),
                )
            }
            Expr::Select(sel) => {
                let operand = self.expr(&sel.operand);
                match operand.field(self.defs, &sel.field) {
                    Ok(_) if sel.test => Ty::Bool,
                    Ok(t) => t,
                    Err(m) => self.issue(e.id, m),
                }
            }
            Expr::List(list) => {
                let types: Vec<Ty> = list.elements.iter().map(|x| self.expr(x)).collect();
                Ty::List(Box::new(common(&types)))
            }
            Expr::Map(map) => {
                let mut keys = Vec::new();
                let mut values = Vec::new();
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(m) = &entry.expr {
                        keys.push(self.expr(&m.key));
                        values.push(self.expr(&m.value));
                    }
                }
                Ty::Map(Box::new(common(&keys)), Box::new(common(&values)))
            }
            Expr::Comprehension(c) => {
                let range = self.expr(&c.iter_range);
                let (first, second) = match &range {
                    Ty::List(elem) => (Ty::Int, (**elem).clone()),
                    Ty::Map(k, v) => ((**k).clone(), (**v).clone()),
                    Ty::Dyn => (Ty::Dyn, Ty::Dyn),
                    other => {
                        let m = format!(
                            "expression of type '{other}' cannot be range of a comprehension (must be list, map, or dynamic)"
                        );
                        self.issue(c.iter_range.id, m);
                        (Ty::Dyn, Ty::Dyn)
                    }
                };
                let accu = self.expr(&c.accu_init);
                let depth = self.scopes.len();
                match &c.iter_var2 {
                    Some(v2) => {
                        self.scopes.push((c.iter_var.clone(), first));
                        self.scopes.push((v2.clone(), second));
                    }
                    // One variable: a list's elements, a map's keys.
                    None => {
                        let var = if matches!(range, Ty::List(_)) {
                            second
                        } else {
                            first
                        };
                        self.scopes.push((c.iter_var.clone(), var));
                    }
                }
                self.scopes.push((c.accu_var.clone(), accu));
                self.expr(&c.loop_cond);
                let step = self.expr(&c.loop_step);
                self.scopes.truncate(depth);
                self.scopes.push((c.accu_var.clone(), step));
                let result = self.expr(&c.result);
                self.scopes.truncate(depth);
                result
            }
            Expr::Call(call) => {
                // `sets.contains(a, b)` may arrive as a call on the identifier `sets`.
                let qualified = call.target.as_ref().and_then(|t| match &t.expr {
                    Expr::Ident(ns) if NAMESPACES.contains(&ns.as_str()) => {
                        Some(format!("{ns}.{}", call.func_name))
                    }
                    _ => None,
                });
                let (name, target) = match qualified {
                    Some(q) => (q, None),
                    None => (
                        call.func_name.clone(),
                        call.target.as_ref().map(|t| self.expr(t)),
                    ),
                };
                let args: Vec<Ty> = call.args.iter().map(|a| self.expr(a)).collect();
                match call_type(&name, target.as_ref(), &args) {
                    Some(t) => t,
                    None => {
                        let list = args
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ");
                        let applied = match &target {
                            Some(t) => format!("{t}.({list})"),
                            None => format!("({list})"),
                        };
                        self.issue(
                            e.id,
                            format!(
                                "found no matching overload for '{name}' applied to '{applied}'"
                            ),
                        )
                    }
                }
            }
        }
    }
}

/// The element type of a literal list (or map keys/values): the one type they share, else `dyn`.
fn common<'a>(types: &[Ty<'a>]) -> Ty<'a> {
    let mut known = types.iter().filter(|t| !t.is_dyn());
    match known.next() {
        Some(first) if known.all(|t| t.fits(first) && first.fits(t)) => first.clone(),
        _ => Ty::Dyn,
    }
}

/// The result of calling `name`; `None` when no overload takes these arguments. Functions
/// it does not know give `dyn`.
fn call_type<'a>(name: &str, target: Option<&Ty<'a>>, args: &[Ty<'a>]) -> Option<Ty<'a>> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Ty::Dyn);
    let (a, b) = (arg(0), arg(1));
    let all_fit = |expected: &[Ty]| {
        args.len() == expected.len() && args.iter().zip(expected).all(|(x, y)| x.fits(y))
    };
    let on = |receiver: Ty<'a>, expected: &[Ty], result: Ty<'a>| {
        let ok = target.is_some_and(|t| t.fits(&receiver)) && all_fit(expected);
        ok.then_some(result)
    };
    match name {
        op::LOGICAL_AND | op::LOGICAL_OR => all_fit(&[Ty::Bool, Ty::Bool]).then_some(Ty::Bool),
        op::LOGICAL_NOT => all_fit(&[Ty::Bool]).then_some(Ty::Bool),
        op::NOT_STRICTLY_FALSE => Some(Ty::Bool),
        op::CONDITIONAL => {
            let (then, other) = (arg(1), arg(2));
            let branches_agree = !(then.is_primitive() && other.is_primitive())
                || std::mem::discriminant(&then) == std::mem::discriminant(&other);
            (a.fits(&Ty::Bool) && branches_agree).then(|| if then.is_dyn() { other } else { then })
        }
        op::EQUALS | op::NOT_EQUALS => {
            let comparable = !(a.is_primitive() && b.is_primitive())
                || std::mem::discriminant(&a) == std::mem::discriminant(&b);
            (comparable && a.fits(&b)).then_some(Ty::Bool)
        }
        op::LESS | op::LESS_EQUALS | op::GREATER | op::GREATER_EQUALS => {
            let ok = match (&a, &b) {
                (Ty::Dyn, x) | (x, Ty::Dyn) => x.is_dyn() || x.is_primitive(),
                (x, y) if x.is_number() && y.is_number() => true,
                (x, y) => {
                    x.is_primitive() && std::mem::discriminant(x) == std::mem::discriminant(y)
                }
            };
            ok.then_some(Ty::Bool)
        }
        op::ADD => match (&a, &b) {
            (Ty::Dyn, Ty::Dyn) => Some(Ty::Dyn),
            (Ty::Timestamp, Ty::Duration) | (Ty::Duration, Ty::Timestamp) => Some(Ty::Timestamp),
            (Ty::List(x), Ty::List(y)) => {
                Some(Ty::List(Box::new(common(&[(**x).clone(), (**y).clone()]))))
            }
            (Ty::Dyn, x) | (x, Ty::Dyn) => (x.is_number()
                || matches!(
                    x,
                    Ty::String | Ty::Bytes | Ty::List(_) | Ty::Duration | Ty::Timestamp
                ))
            .then(|| x.clone()),
            (x, y) => (matches!(
                x,
                Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Bytes | Ty::Duration
            ) && std::mem::discriminant(x) == std::mem::discriminant(y))
            .then(|| x.clone()),
        },
        op::SUBSTRACT => match (&a, &b) {
            (Ty::Timestamp, Ty::Timestamp) => Some(Ty::Duration),
            (Ty::Timestamp, Ty::Duration) => Some(Ty::Timestamp),
            (Ty::Dyn, Ty::Dyn) => Some(Ty::Dyn),
            (Ty::Dyn, x) | (x, Ty::Dyn) => {
                (x.is_number() || matches!(x, Ty::Duration | Ty::Timestamp)).then_some(Ty::Dyn)
            }
            (x, y) => (matches!(x, Ty::Int | Ty::Uint | Ty::Double | Ty::Duration)
                && std::mem::discriminant(x) == std::mem::discriminant(y))
            .then(|| x.clone()),
        },
        op::MULTIPLY | op::DIVIDE | op::MODULO => {
            let numbers: &[Ty] = if name == op::MODULO {
                &[Ty::Int, Ty::Uint]
            } else {
                &[Ty::Int, Ty::Uint, Ty::Double]
            };
            let kind = |x: &Ty| {
                numbers
                    .iter()
                    .any(|n| std::mem::discriminant(n) == std::mem::discriminant(x))
            };
            match (&a, &b) {
                (Ty::Dyn, x) | (x, Ty::Dyn) => (x.is_dyn() || kind(x)).then(|| x.clone()),
                (x, y) => (kind(x) && std::mem::discriminant(x) == std::mem::discriminant(y))
                    .then(|| x.clone()),
            }
        }
        op::NEGATE => matches!(a, Ty::Int | Ty::Double | Ty::Dyn).then_some(a),
        op::INDEX => match (&a, &b) {
            (Ty::List(e), i) => matches!(i, Ty::Int | Ty::Uint | Ty::Dyn).then(|| (**e).clone()),
            (Ty::Map(k, v), key) => key.fits(k).then(|| (**v).clone()),
            (Ty::Dyn, _) => Some(Ty::Dyn),
            _ => None,
        },
        op::IN => match &b {
            Ty::List(e) | Ty::Map(e, _) => a.fits(e).then_some(Ty::Bool),
            Ty::Dyn => Some(Ty::Bool),
            _ => None,
        },
        op::OPT_SELECT | op::OPT_INDEX => {
            let base = match a {
                Ty::Optional(t) => *t,
                t => t,
            };
            let inner = match (&base, &b) {
                (Ty::List(e), _) => (**e).clone(),
                (Ty::Map(_, v), _) => (**v).clone(),
                _ => Ty::Dyn,
            };
            let inner = if name == op::OPT_SELECT {
                match &base {
                    Ty::Object(..) | Ty::Record(_) => Ty::Dyn,
                    _ => inner,
                }
            } else {
                inner
            };
            Some(Ty::Optional(Box::new(inner)))
        }
        "size" => {
            let x = target.cloned().unwrap_or(a);
            matches!(
                x,
                Ty::String | Ty::Bytes | Ty::List(_) | Ty::Map(..) | Ty::Dyn
            )
            .then_some(Ty::Int)
        }
        "contains" | "startsWith" | "endsWith" | "matches" if target.is_some() => {
            on(Ty::String, &[Ty::String], Ty::Bool)
        }
        "lowerAscii" | "upperAscii" | "trim" if target.is_some() => on(Ty::String, &[], Ty::String),
        "charAt" => on(Ty::String, &[Ty::Int], Ty::String),
        "find" if target.is_some() => on(Ty::String, &[Ty::String], Ty::String),
        "findAll" if target.is_some() => Some(Ty::List(Box::new(Ty::String))),
        "split" if target.is_some() => Some(Ty::List(Box::new(Ty::String))),
        "replace" | "substring" | "format" | "join" | "strings.quote" => Some(Ty::String),
        "int" => Some(Ty::Int),
        "uint" => Some(Ty::Uint),
        "double" => Some(Ty::Double),
        "string" => Some(Ty::String),
        "bytes" => Some(Ty::Bytes),
        "bool" => Some(Ty::Bool),
        "timestamp" => Some(Ty::Timestamp),
        "duration" => Some(Ty::Duration),
        "type" => Some(Ty::Type),
        "dyn" => Some(Ty::Dyn),
        "isSorted"
        | "isQuantity"
        | "isURL"
        | "isIP"
        | "isCIDR"
        | "sets.contains"
        | "sets.equivalent"
        | "sets.intersects"
        | "hasValue"
        | "isInteger"
        | "isGreaterThan"
        | "isLessThan"
        | "containsIP"
        | "containsCIDR"
        | "isUnspecified"
        | "isLoopback"
        | "isLinkLocalMulticast"
        | "isLinkLocalUnicast"
        | "isGlobalUnicast"
        | "isCanonical"
        | "ip.isCanonical"
        | "exists"
        | "all"
        | "exists_one" => Some(Ty::Bool),
        "indexOf" | "lastIndexOf" | "sign" | "compareTo" | "asInteger" | "family"
        | "prefixLength" | "getMilliseconds" | "getSeconds" | "getMinutes" | "getHours"
        | "getFullYear" | "getMonth" | "getDayOfMonth" | "getDate" | "getDayOfWeek"
        | "getDayOfYear" => Some(Ty::Int),
        "asApproximateFloat" => Some(Ty::Double),
        "getScheme" | "getHost" | "getHostname" | "getPort" | "getEscapedPath" => Some(Ty::String),
        "quantity" | "add" | "sub" => Some(Ty::Opaque("kubernetes.Quantity")),
        "url" => Some(Ty::Opaque("kubernetes.URL")),
        "ip" => Some(Ty::Opaque("net.IP")),
        "cidr" | "masked" => Some(Ty::Opaque("net.CIDR")),
        "sum" | "min" | "max" => match target.or(args.first()) {
            Some(Ty::List(e)) => Some((**e).clone()),
            _ => Some(Ty::Dyn),
        },
        "value" | "orValue" => match target {
            Some(Ty::Optional(t)) => Some((**t).clone()),
            _ => Some(Ty::Dyn),
        },
        "optional.of" | "optional.ofNonZeroValue" => Some(Ty::Optional(Box::new(a))),
        "optional.none" => Some(Ty::Optional(Box::new(Ty::Dyn))),
        _ => Some(Ty::Dyn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defs() -> Map<String, Value> {
        json!({
            "Thing": {"type": "object", "properties": {
                "apiVersion": {"type": "string"},
                "metadata": {"$ref": "#/components/schemas/Meta"},
                "spec": {"allOf": [{"$ref": "#/components/schemas/Spec"}]},
            }},
            "Meta": {"type": "object", "properties": {
                "name": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "creationTimestamp": {"type": "string", "format": "date-time"},
            }},
            "Spec": {"type": "object", "properties": {
                "replicas": {"type": "integer"},
                "port": {"x-kubernetes-int-or-string": true},
                "hosts": {"type": "array", "items": {"type": "string"}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            }},
        })
        .as_object()
        .cloned()
        .unwrap_or_default()
    }

    fn warnings(src: &str) -> String {
        let defs = defs();
        let program = crate::cel::compile(src).expect("compiles");
        let object = Ty::of_schema(&defs, &defs["Thing"]);
        let (_, text) = check(
            program.expression(),
            program.source_info(),
            &defs,
            &[
                ("object", object.clone()),
                ("oldObject", object),
                ("request", Ty::Dyn),
            ],
        );
        text
    }

    #[test]
    fn well_typed_expressions_pass() {
        for ok in [
            "object.spec.replicas > 1",
            "object.spec.replicas > 1.5",
            "object.spec.replicas <= 10 && object.metadata.name.startsWith('a')",
            "has(object.spec.replicas) ? object.spec.replicas : 0",
            "object.spec.hosts.all(h, h.endsWith('.example.com'))",
            "object.spec.hosts.map(h, size(h)).all(n, n < 64)",
            "object.metadata.labels.exists(k, k == 'app' && object.metadata.labels[k] != '')",
            "'app' in object.metadata.labels",
            "object.metadata.labels.team == 'x'",
            "object.spec.port == 80 || object.spec.port == 'http'",
            "object.spec.extra.anything.goes == 1",
            "object.?spec.?replicas.orValue(1) > 0",
            "request.userInfo.username == 'x'",
            "string(object.spec.replicas) + ' replicas'",
            "object.metadata.creationTimestamp < timestamp('2030-01-01T00:00:00Z')",
            "object.spec.hosts.size() == 1 && size(object.spec.hosts) == 1",
            "type(object.spec.replicas) == int",
            "object.spec == oldObject.spec",
            "object.metadata.labels == null || object.spec.hosts.filter(h, h != '').size() > 0",
            "quantity('1Gi').isGreaterThan(quantity('1Mi'))",
            "[1, 2].exists(i, i == object.spec.replicas)",
        ] {
            assert_eq!(warnings(ok), "", "{ok}");
        }
    }

    #[test]
    fn mistakes_are_reported_in_cel_gos_words() {
        for (bad, expected) in [
            ("object.spec.replica > 1", "undefined field 'replica'"),
            (
                "object.spec.replicas > '1'",
                "found no matching overload for '_>_' applied to '(int, string)'",
            ),
            (
                "'wants ' + object.spec.replicas",
                "found no matching overload for '_+_' applied to '(string, int)'",
            ),
            (
                "object.spec.replicas == 'three'",
                "found no matching overload for '_==_' applied to '(int, string)'",
            ),
            (
                "objekt.spec.replicas > 1",
                "undeclared reference to 'objekt' (in container '')",
            ),
            (
                "object.spec.replicas.startsWith('1')",
                "found no matching overload for 'startsWith' applied to 'int.(string)'",
            ),
            ("has(object.spec.nope)", "undefined field 'nope'"),
            (
                "object.spec.replicas.x == 1",
                "type 'int' does not support field selection",
            ),
            (
                "object.spec.hosts.all(h, h > 1)",
                "found no matching overload for '_>_' applied to '(string, int)'",
            ),
            (
                "object.spec.replicas.all(x, x)",
                "expression of type 'int' cannot be range of a comprehension",
            ),
            (
                "size(object.spec.replicas) > 0",
                "found no matching overload for 'size' applied to '(int)'",
            ),
            (
                "!object.spec.replicas",
                "found no matching overload for '!_' applied to '(int)'",
            ),
        ] {
            let text = warnings(bad);
            assert!(text.contains(expected), "{bad}: {text}");
            assert!(text.starts_with("ERROR: <input>:1:"), "{bad}: {text}");
        }
    }

    #[test]
    fn the_caret_points_at_the_operator() {
        let text = warnings("object.spec.replicas > '1'");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], " | object.spec.replicas > '1'");
        let caret = lines[2].find('^').unwrap_or(0);
        assert_eq!(&lines[1][caret..caret + 1], ">", "{text}");
        assert!(lines[0].starts_with("ERROR: <input>:1:22:"), "{text}");
    }
}
