//! Type checks and cost estimates for CEL expressions, as Kubernetes gets them from cel-go's
//! checker (checker/cost.go) and k8s.io/apiserver/pkg/cel's size estimator.
//!
//! The walk knows the [`Shape`] of every variable: when a CRD is written, its schema (the
//! largest string, list and map each node can hold — `maxLength`, `maxItems`,
//! `maxProperties`, or what a 3 MiB request can carry); at run time, the value itself. It
//! reports fields the schema cannot have (`undefined field 'x'`) and the worst-case cost.
//!
//! # Cost model (cel-go's units)
//! Reading a variable or a field costs 1; literals are free; most functions cost 1; work
//! that walks a string costs a tenth of its length (`contains`, `startsWith`, `+`, `==`);
//! `matches`/`find` cost ⌈len/10⌉ × ⌈pattern/4⌉; list functions (`sum`, `indexOf`, ...)
//! cost the list's length; a comprehension (`all`, `exists`, `map`, `filter`) costs its
//! range once plus its body once per element — so nesting multiplies.
//!
//! Worked example: `self.names.all(n, n.matches('^[a-z]+$'))` on a list of strings without
//! bounds. A 3 MiB request holds at most (3 MiB − 2) / 3 ≈ 1,048,575 two-byte strings, and a
//! string at most 3 MiB − 2 bytes; the body costs 1 (`n`) + ⌈3,145,726/10⌉ × ⌈8/4⌉ ≈ 629,147,
//! so the rule is estimated at ≈ 6.6 × 10¹¹ — over the 10⁷ limit; with `maxItems: 10` and
//! `maxLength: 64` it is 10 × (1 + 7 × 2) + 2 = 152.

use cel::common::ast::operators as op;
use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};

use super::MAX_REQUEST_BYTES;

/// What the estimator needs to know about a value.
pub trait Shape: Clone {
    /// The largest size it can have: bytes of a string, elements of a list, entries of a
    /// map; 1 for a scalar.
    fn max_size(&self) -> u64;
    /// A field of it; `Err` with the reason when it cannot have that field.
    fn field(&self, name: &str) -> Result<Self, String>;
    /// Its elements (a list) or values (a map).
    fn elem(&self) -> Self;
    /// Its keys (a map), what a comprehension over it binds.
    fn key(&self) -> Self;
    fn is_map(&self) -> bool;
}

/// A value nothing is known about (an admission request's object): every size is what a
/// request can carry, every field may exist.
#[derive(Clone, Copy, Debug)]
pub struct Unknown;

impl Shape for Unknown {
    fn max_size(&self) -> u64 {
        MAX_REQUEST_BYTES
    }
    fn field(&self, _: &str) -> Result<Self, String> {
        Ok(Unknown)
    }
    fn elem(&self) -> Self {
        Unknown
    }
    fn key(&self) -> Self {
        Unknown
    }
    fn is_map(&self) -> bool {
        false
    }
}

/// The actual value, for the run-time cost: sizes are exact and a list's elements are
/// summarised by their largest.
#[derive(Clone, Debug)]
pub enum Actual<'a> {
    One(&'a serde_json::Value),
    Many(Vec<&'a serde_json::Value>),
    Absent,
}

impl<'a> Actual<'a> {
    fn all(&self) -> Vec<&'a serde_json::Value> {
        match self {
            Actual::One(v) => vec![v],
            Actual::Many(vs) => vs.clone(),
            Actual::Absent => Vec::new(),
        }
    }
}

fn size_of(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => s.len() as u64,
        serde_json::Value::Array(a) => a.len() as u64,
        serde_json::Value::Object(m) => m.len() as u64,
        _ => 1,
    }
}

impl Shape for Actual<'_> {
    fn max_size(&self) -> u64 {
        self.all().into_iter().map(size_of).max().unwrap_or(0)
    }
    fn field(&self, name: &str) -> Result<Self, String> {
        let name = super::unescape(name);
        let found: Vec<_> = self
            .all()
            .into_iter()
            .filter_map(|v| v.get(name.as_ref()))
            .collect();
        Ok(match found.len() {
            0 => Actual::Absent,
            1 => Actual::One(found[0]),
            _ => Actual::Many(found),
        })
    }
    fn elem(&self) -> Self {
        let mut out = Vec::new();
        for v in self.all() {
            match v {
                serde_json::Value::Array(a) => out.extend(a.iter()),
                serde_json::Value::Object(m) => out.extend(m.values()),
                _ => {}
            }
        }
        Actual::Many(out)
    }
    fn key(&self) -> Self {
        // Keys are strings no longer than the request; their exact lengths rarely matter.
        Actual::Absent
    }
    fn is_map(&self) -> bool {
        self.all().iter().any(|v| v.is_object())
    }
}

#[derive(Clone)]
struct Est<S> {
    cost: u64,
    /// Largest size of the result (bytes, elements or entries; 1 for scalars).
    size: u64,
    shape: Option<S>,
}

impl<S> Est<S> {
    fn scalar(cost: u64) -> Self {
        Est {
            cost,
            size: 1,
            shape: None,
        }
    }
}

/// ⌈n × 0.1⌉: cel-go's cost of walking a string or list of n.
fn tenth(n: u64) -> u64 {
    n.div_ceil(10)
}

/// Estimates `expr` with the given variables; `Err` names a field the shapes cannot have.
pub fn estimate<S: Shape>(expr: &IdedExpr, vars: &[(&str, S)]) -> Result<u64, String> {
    let mut w = Walk {
        scopes: vars
            .iter()
            .map(|(n, s)| {
                (
                    n.to_string(),
                    Est {
                        cost: 1,
                        size: s.max_size(),
                        shape: Some(s.clone()),
                    },
                )
            })
            .collect(),
    };
    Ok(w.expr(expr)?.cost)
}

struct Walk<S> {
    scopes: Vec<(String, Est<S>)>,
}

impl<S: Shape> Walk<S> {
    fn expr(&mut self, e: &IdedExpr) -> Result<Est<S>, String> {
        Ok(match &e.expr {
            Expr::Unspecified => Est::scalar(0),
            Expr::Literal(LiteralValue::String(s)) => Est {
                cost: 0,
                size: s.inner().len() as u64,
                shape: None,
            },
            Expr::Literal(_) => Est::scalar(0),
            Expr::Ident(name) => match self.scopes.iter().rev().find(|(n, _)| n == name) {
                Some((_, est)) => Est {
                    cost: 1,
                    ..est.clone()
                },
                // A type name (`int`) or a namespace; free.
                None => Est::scalar(0),
            },
            Expr::Select(sel) => {
                let operand = self.expr(&sel.operand)?;
                let shape = match &operand.shape {
                    Some(s) => Some(s.field(&sel.field)?),
                    None => None,
                };
                let size = shape.as_ref().map_or(MAX_REQUEST_BYTES, Shape::max_size);
                Est {
                    cost: operand.cost.saturating_add(1),
                    size: if sel.test { 1 } else { size },
                    shape: if sel.test { None } else { shape },
                }
            }
            Expr::List(list) => {
                let mut cost = 0u64;
                for el in &list.elements {
                    cost = cost.saturating_add(self.expr(el)?.cost);
                }
                Est {
                    cost: cost.saturating_add(1),
                    size: list.elements.len() as u64,
                    shape: None,
                }
            }
            Expr::Map(map) => {
                let mut cost = 0u64;
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(m) = &entry.expr {
                        cost = cost
                            .saturating_add(self.expr(&m.key)?.cost)
                            .saturating_add(self.expr(&m.value)?.cost);
                    }
                }
                Est {
                    cost: cost.saturating_add(1),
                    size: map.entries.len() as u64,
                    shape: None,
                }
            }
            Expr::Struct(st) => {
                let mut cost = 0u64;
                for entry in &st.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        cost = cost.saturating_add(self.expr(&f.value)?.cost);
                    }
                }
                Est::scalar(cost.saturating_add(1))
            }
            Expr::Comprehension(c) => {
                let range = self.expr(&c.iter_range)?;
                let init = self.expr(&c.accu_init)?;
                let (elem, key) = match &range.shape {
                    Some(s) if s.is_map() => (Some(s.key()), Some(s.key())),
                    Some(s) => (Some(s.elem()), Some(s.elem())),
                    None => (None, None),
                };
                let bind = |shape: Option<S>| Est {
                    cost: 1,
                    size: shape.as_ref().map_or(MAX_REQUEST_BYTES, Shape::max_size),
                    shape,
                };
                let depth = self.scopes.len();
                self.scopes.push((c.iter_var.clone(), bind(key.clone())));
                if let Some(v2) = &c.iter_var2 {
                    self.scopes.push((v2.clone(), bind(elem)));
                }
                self.scopes.push((c.accu_var.clone(), Est::scalar(1)));
                let body = (|| -> Result<u64, String> {
                    let cond = self.expr(&c.loop_cond)?;
                    let step = self.expr(&c.loop_step)?;
                    Ok(cond.cost.saturating_add(step.cost))
                })();
                self.scopes.truncate(depth);
                let body = body?;
                self.scopes.push((c.accu_var.clone(), Est::scalar(1)));
                let result = self.expr(&c.result);
                self.scopes.truncate(depth);
                let result = result?;
                Est {
                    cost: range
                        .cost
                        .saturating_add(init.cost)
                        .saturating_add(range.size.saturating_mul(body))
                        .saturating_add(result.cost),
                    // map() and filter() give at most one element per element.
                    size: range.size,
                    shape: None,
                }
            }
            Expr::Call(call) => {
                let mut args = Vec::with_capacity(call.args.len() + 1);
                if let Some(t) = &call.target {
                    args.push(self.expr(t)?);
                }
                for a in &call.args {
                    args.push(self.expr(a)?);
                }
                call_cost(&call.func_name, args)
            }
        })
    }
}

fn call_cost<S: Shape>(name: &str, args: Vec<Est<S>>) -> Est<S> {
    let sum = args.iter().fold(0u64, |a, e| a.saturating_add(e.cost));
    let size = |i: usize| args.get(i).map_or(1, |e| e.size);
    let with = |own: u64, size: u64| Est {
        cost: sum.saturating_add(own),
        size,
        shape: None,
    };
    match name {
        op::CONDITIONAL => {
            let then = args.get(1).map_or(0, |e| e.cost);
            let other = args.get(2).map_or(0, |e| e.cost);
            Est {
                cost: args[0].cost.saturating_add(then.max(other)),
                size: size(1).max(size(2)),
                shape: None,
            }
        }
        op::LOGICAL_AND | op::LOGICAL_OR | op::LOGICAL_NOT | op::NOT_STRICTLY_FALSE => with(0, 1),
        op::ADD => {
            let total = size(0).saturating_add(size(1));
            with(tenth(total).max(1), total)
        }
        op::EQUALS
        | op::NOT_EQUALS
        | op::LESS
        | op::LESS_EQUALS
        | op::GREATER
        | op::GREATER_EQUALS => with(tenth(size(0).min(size(1))).max(1), 1),
        op::INDEX | op::OPT_INDEX | op::OPT_SELECT => {
            let shape = args.first().and_then(|e| e.shape.as_ref()).map(Shape::elem);
            Est {
                cost: sum.saturating_add(1),
                size: shape.as_ref().map_or(MAX_REQUEST_BYTES, Shape::max_size),
                shape,
            }
        }
        op::IN => with(size(1), 1),
        "matches" | super::library::regex::MATCHES | "find" | "findAll" => {
            let (text, pattern) = if args.len() >= 2 {
                (size(0), size(1))
            } else {
                (1, 1)
            };
            with(
                tenth(text)
                    .max(1)
                    .saturating_mul(pattern.div_ceil(4).max(1)),
                text,
            )
        }
        "contains" | "startsWith" | "endsWith" => with(tenth(size(0)).max(1), 1),
        "lowerAscii" | "upperAscii" | "trim" | "replace" | "split" | "substring" | "join"
        | "format" | "charAt" | "quote" | "strings.quote" | "string" | "bytes" => {
            with(tenth(size(0)).max(1), size(0))
        }
        "indexOf" | "lastIndexOf" | "isSorted" | "sum" | "min" | "max" | "sort" | "distinct"
        | "flatten" | "reverse" | "slice" => with(size(0).max(1), size(0)),
        "sets.contains" | "sets.equivalent" | "sets.intersects" => {
            with(size(0).saturating_mul(size(1)).max(1), 1)
        }
        "quantity" | "isQuantity" | "url" | "isURL" | "ip" | "isIP" | "cidr" | "isCIDR"
        | "validate" | "ip.isCanonical" => with(tenth(size(0)).max(1), 1),
        "size" => with(1, 1),
        _ => with(1, args.first().map_or(1, |e| e.size)),
    }
}
