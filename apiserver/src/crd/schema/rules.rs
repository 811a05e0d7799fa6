//! Validation rules (`x-kubernetes-validations`), as k8s.io/apiextensions-apiserver's
//! schema/cel package runs them.
//!
//! - **Parse** ([`Parser::rules`]): each rule is compiled once, when the CRD version's schema
//!   is parsed, with its `messageExpression`; `reason`, `fieldPath`, `optionalOldSelf` and
//!   `message` are checked as Kubernetes checks them.
//! - **Check** ([`Schema::check_rules`], once the tree is whole): every rule is type-checked
//!   against its node's schema (`undefined field 'x'`) and its cost estimated; a rule whose
//!   cost times the number of times its node can occur exceeds 10⁷, or a CRD whose rules
//!   together exceed 10⁸, is refused with Kubernetes' messages. Transition rules (those
//!   naming `oldSelf`) are refused where old values cannot be correlated (under lists that
//!   are not `x-kubernetes-list-type: map`).
//! - **Evaluate** ([`Schema::validate_rules`]): `self` is the node's value; `oldSelf` the old
//!   value where one correlates (object properties and map values by key, list-type map items
//!   by their keys). Transition rules run only on update and only where an old value exists,
//!   unless `optionalOldSelf`. **Ratcheting**: a subtree equal to its old value is not
//!   validated again, so an unchanged invalid field does not block an update elsewhere.
//!   Each evaluation's cost is measured against the value's actual sizes first; past 10⁶ for
//!   one rule or 10⁷ for the object, validation stops with Kubernetes' message.

use std::collections::HashMap;
use std::sync::Arc;

use capstan_api::validation::FieldError;
use serde_json::Value;

use super::*;
use crate::cel::{self, cost};

/// What a failing rule reports (`reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Invalid,
    Forbidden,
    Required,
    Duplicate,
}

/// One compiled `x-kubernetes-validations` entry.
#[derive(Debug)]
pub struct Rule {
    /// Its position in the node's `x-kubernetes-validations`.
    pub index: usize,
    pub rule: String,
    program: cel::Program,
    pub message: Option<String>,
    message_expression: Option<cel::Program>,
    pub reason: Reason,
    /// `fieldPath` as a field path below the node (`spec.x`, `m[key]`), without a leading dot.
    pub field_path: Option<String>,
    pub optional_old_self: bool,
    /// The rule names `oldSelf`.
    pub transition: bool,
}

impl Rule {
    /// `ruleErrorString`: the message if there is one, else the rule.
    fn error_string(&self) -> &str {
        self.message.as_deref().unwrap_or(&self.rule).trim()
    }
}

/// Parses `fieldPath` (`.spec.x`, `.m['key']`, `.list[0]` is refused as Kubernetes refuses
/// numeric indexes) into its segments.
fn field_path_segments(p: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            if name.is_empty() {
                return None;
            }
            out.push(name.to_string());
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']")?;
            out.push(r[..end].to_string());
            rest = &r[end + 2..];
        } else {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

impl Parser<'_> {
    /// Compiles a node's `x-kubernetes-validations`.
    pub(super) fn rules(&mut self, v: Option<&Value>, path: &str) -> Vec<Arc<Rule>> {
        let field = format!("{path}.x-kubernetes-validations");
        let list = match v {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Array(list)) => list,
            Some(_) => {
                self.errs
                    .push(err(&field, "Invalid value: must be an array"));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, r) in list.iter().enumerate() {
            let at = format!("{field}[{i}]");
            let Value::Object(m) = r else {
                self.errs.push(err(&at, "Invalid value: must be an object"));
                continue;
            };
            for k in m.keys() {
                if !matches!(
                    k.as_str(),
                    "rule"
                        | "message"
                        | "messageExpression"
                        | "reason"
                        | "fieldPath"
                        | "optionalOldSelf"
                ) {
                    self.errs.push(forbidden(
                        &format!("{at}.{k}"),
                        format!("{k} is not a validation rule field"),
                    ));
                }
            }
            let text = |k: &str, errs: &mut Vec<FieldError>| match m.get(k) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    errs.push(err(&format!("{at}.{k}"), "Invalid value: must be a string"));
                    None
                }
            };
            let Some(rule) = text("rule", self.errs).filter(|r| !r.trim().is_empty()) else {
                self.errs.push(err(
                    &format!("{at}.rule"),
                    "Required value: rule is not specified",
                ));
                continue;
            };
            let message = text("message", self.errs);
            if let Some(msg) = &message {
                if msg.trim().is_empty() {
                    self.errs.push(err(
                        &format!("{at}.message"),
                        format!("Invalid value: {msg:?}: message must be non-empty if specified"),
                    ));
                } else if msg.contains('\n') {
                    self.errs.push(err(
                        &format!("{at}.message"),
                        format!("Invalid value: {msg:?}: message must not contain line breaks"),
                    ));
                } else if msg.len() > 2048 {
                    self.errs.push(err(
                        &format!("{at}.message"),
                        "Too long: may not be longer than 2048",
                    ));
                }
            }
            let reason = match text("reason", self.errs).as_deref() {
                None | Some("FieldValueInvalid") => Reason::Invalid,
                Some("FieldValueForbidden") => Reason::Forbidden,
                Some("FieldValueRequired") => Reason::Required,
                Some("FieldValueDuplicate") => Reason::Duplicate,
                Some(other) => {
                    self.errs.push(err(&format!("{at}.reason"), format!("Unsupported value: {other:?}: supported values: \"FieldValueDuplicate\", \"FieldValueForbidden\", \"FieldValueInvalid\", \"FieldValueRequired\"")));
                    Reason::Invalid
                }
            };
            let field_path = match text("fieldPath", self.errs) {
                None => None,
                Some(p) => match field_path_segments(&p) {
                    Some(segs) => Some((p, segs)),
                    None => {
                        self.errs.push(err(
                            &format!("{at}.fieldPath"),
                            format!("Invalid value: {p:?}: fieldPath must be a valid path"),
                        ));
                        None
                    }
                },
            };
            let optional_old_self = match m.get("optionalOldSelf") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    self.errs.push(err(
                        &format!("{at}.optionalOldSelf"),
                        "Invalid value: must be a boolean",
                    ));
                    false
                }
            };
            let program = match cel::compile(&rule) {
                Ok(p) => p,
                Err(e) => {
                    self.errs.push(err(
                        &format!("{at}.rule"),
                        format!("Invalid value: {rule:?}: compilation failed: {e}"),
                    ));
                    continue;
                }
            };
            let transition = cel::uses(&program, "oldSelf");
            if optional_old_self && !transition {
                self.errs.push(forbidden(
                    &format!("{at}.optionalOldSelf"),
                    "may not be set if oldSelf is not used in rule",
                ));
            }
            let message_expression = match text("messageExpression", self.errs) {
                None => None,
                Some(src) if src.trim().is_empty() => {
                    self.errs.push(err(
                        &format!("{at}.messageExpression"),
                        "Required value: messageExpression of length 0 or greater is not allowed",
                    ));
                    None
                }
                Some(src) => {
                    match cel::compile(&src) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            self.errs.push(err(&format!("{at}.messageExpression"), format!("Invalid value: {src:?}: messageExpression compilation failed: {e}")));
                            None
                        }
                    }
                }
            };
            out.push(Arc::new(Rule {
                index: i,
                rule,
                program,
                message: message.map(|m| m.trim().to_string()),
                message_expression,
                reason,
                field_path: field_path.map(|(_, segs)| {
                    let mut p = String::new();
                    for s in segs {
                        p = join(&p, &s);
                    }
                    p
                }),
                optional_old_self,
                transition,
            }));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Sizes and shapes (the check)

/// The least bytes a value of this schema takes in JSON (`""`, `0`, `true`, `{}`, `[]`).
fn min_size(s: &Schema) -> u64 {
    match s.ty {
        Some(Type::Boolean) => 4,
        Some(Type::Integer | Type::Number) => 1,
        None if !s.int_or_string => 1,
        _ => 2,
    }
}

fn max_size(s: &Schema) -> u64 {
    let request = cel::MAX_REQUEST_BYTES - 2;
    match s.ty {
        Some(Type::String) => s.max_length.unwrap_or(match s.format.as_deref() {
            Some("date") => 12,
            Some("date-time") => 64,
            Some("duration") => 64,
            _ => request,
        }),
        Some(Type::Array) => s
            .max_items
            .unwrap_or_else(|| request / (s.items.as_deref().map_or(1, min_size) + 1)),
        Some(Type::Object) if s.additional.is_some() => s.max_properties.unwrap_or_else(|| {
            // `"":value,` per entry.
            request / (s.additional.as_deref().map_or(1, min_size) + 4)
        }),
        Some(Type::Object) if !s.properties.is_empty() && !s.preserve_unknown => {
            s.properties.len() as u64
        }
        Some(Type::Object) => request / 5,
        _ if s.int_or_string => request,
        None => request,
        _ => 1,
    }
}

/// A schema node as the estimator sees it.
#[derive(Clone, Copy, Debug)]
pub(super) enum SchemaShape<'a> {
    Node(&'a Schema, bool),
    /// metadata at the root: only name and generateName are visible.
    Meta,
    Str,
    /// A map's key.
    Key,
    Any,
}

impl cost::Shape for SchemaShape<'_> {
    fn max_size(&self) -> u64 {
        match self {
            SchemaShape::Node(s, _) => max_size(s),
            SchemaShape::Meta => 2,
            SchemaShape::Str => 253,
            SchemaShape::Key => 0,
            SchemaShape::Any => cel::MAX_REQUEST_BYTES,
        }
    }
    fn field(&self, name: &str) -> Result<Self, String> {
        let undefined = || Err(format!("undefined field '{name}'"));
        match self {
            SchemaShape::Node(s, root) => {
                if *root || s.embedded_resource {
                    match name {
                        "apiVersion" | "kind" => return Ok(SchemaShape::Str),
                        "metadata" if *root => return Ok(SchemaShape::Meta),
                        "metadata" => return Ok(SchemaShape::Any),
                        _ => {}
                    }
                }
                if let Some(p) = s.properties.get(cel::unescape(name).as_ref()) {
                    return Ok(SchemaShape::Node(p, false));
                }
                if let Some(a) = &s.additional {
                    return Ok(SchemaShape::Node(a, false));
                }
                if s.preserve_unknown || s.ty.is_none() {
                    return Ok(SchemaShape::Any);
                }
                undefined()
            }
            SchemaShape::Meta => match name {
                "name" | "generateName" => Ok(SchemaShape::Str),
                _ => undefined(),
            },
            SchemaShape::Str | SchemaShape::Key => undefined(),
            SchemaShape::Any => Ok(SchemaShape::Any),
        }
    }
    fn elem(&self) -> Self {
        match self {
            SchemaShape::Node(s, _) => match (s.items.as_deref(), s.additional.as_deref()) {
                (Some(i), _) => SchemaShape::Node(i, false),
                (None, Some(a)) => SchemaShape::Node(a, false),
                _ => SchemaShape::Any,
            },
            _ => SchemaShape::Any,
        }
    }
    fn key(&self) -> Self {
        match self {
            SchemaShape::Node(s, _) if s.ty == Some(Type::Array) => self.elem(),
            // Kubernetes declares map keys as a plain string type without a size, which its
            // estimator reads as 0: `self.all(k, k.matches(...))` over a map costs only its
            // entries. Matched, so that CRDs Kubernetes accepts (Gateway API's) are accepted.
            SchemaShape::Node(..) | SchemaShape::Meta => SchemaShape::Key,
            _ => SchemaShape::Any,
        }
    }
    fn is_map(&self) -> bool {
        match self {
            SchemaShape::Node(s, _) => s.ty == Some(Type::Object),
            SchemaShape::Meta => true,
            _ => false,
        }
    }
}

/// `getCostErrorMessage`.
fn cost_error(what: &str, cost: u64, limit: u64) -> String {
    let factor = cost as f64 / limit as f64;
    let factor = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{what} exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

struct Checked<'e> {
    errs: &'e mut Vec<FieldError>,
    /// (field, cost) of every rule and message expression, for the CRD's total.
    costs: Vec<(String, u64)>,
}

impl Schema {
    /// Type-checks every rule against its node and holds their costs to Kubernetes' limits
    /// (see the module's docs). `path` is the schema's own (`...openAPIV3Schema`).
    pub(super) fn check_rules(&self, path: &str, errs: &mut Vec<FieldError>) {
        let mut c = Checked {
            errs,
            costs: Vec::new(),
        };
        self.check_node(path, 1, true, true, &mut c);
        let total = c.costs.iter().fold(0u64, |a, (_, x)| a.saturating_add(*x));
        if total > cel::STATIC_ESTIMATED_CRD_COST_LIMIT {
            c.costs.sort_by_key(|(_, cost)| std::cmp::Reverse(*cost));
            let mut running = 0u64;
            for (field, cost) in &c.costs {
                if running > cel::STATIC_ESTIMATED_CRD_COST_LIMIT {
                    break;
                }
                running = running.saturating_add(*cost);
                c.errs.push(forbidden(field, "contributed to estimated rule & messageExpression cost total exceeding cost limit for entire OpenAPIv3 schema"));
            }
            c.errs.push(forbidden(
                path,
                cost_error(
                    "x-kubernetes-validations estimated rule & messageExpression cost total for entire OpenAPIv3 schema",
                    total,
                    cel::STATIC_ESTIMATED_CRD_COST_LIMIT,
                ),
            ));
        }
    }

    fn check_node(
        &self,
        path: &str,
        cardinality: u64,
        correlatable: bool,
        root: bool,
        c: &mut Checked,
    ) {
        let shape = SchemaShape::Node(self, root);
        for r in &self.rules {
            let at = format!("{path}.x-kubernetes-validations[{}]", r.index);
            if r.transition && !correlatable {
                c.errs.push(forbidden(&format!("{at}.rule"), format!("oldSelf cannot be used on the uncorrelatable portion of the schema within {path}")));
            }
            if let Some(fp) = &r.field_path
                && !self.resolves(fp)
            {
                c.errs.push(err(
                    &format!("{at}.fieldPath"),
                    format!("Invalid value: {fp:?}: fieldPath must be a valid path: no such field"),
                ));
            }
            let vars = [("self", shape), ("oldSelf", shape)];
            let vars = if r.transition { &vars[..] } else { &vars[..1] };
            match cost::estimate(r.program.expression(), vars) {
                Err(e) => c.errs.push(err(
                    &format!("{at}.rule"),
                    format!(
                        "Invalid value: {:?}: compilation failed: ERROR: <input>: {e}",
                        r.rule
                    ),
                )),
                Ok(cost) => {
                    let cost = cost.saturating_mul(cardinality);
                    if cost > cel::STATIC_ESTIMATED_COST_LIMIT {
                        c.errs.push(forbidden(
                            &format!("{at}.rule"),
                            cost_error(
                                "estimated rule cost",
                                cost,
                                cel::STATIC_ESTIMATED_COST_LIMIT,
                            ),
                        ));
                    }
                    c.costs.push((format!("{at}.rule"), cost));
                }
            }
            if let Some(m) = &r.message_expression {
                match cost::estimate(m.expression(), vars) {
                    Err(e) => c.errs.push(err(&format!("{at}.messageExpression"), format!("Invalid value: {:?}: messageExpression compilation failed: ERROR: <input>: {e}", r.rule))),
                    Ok(cost) => {
                        let cost = cost.saturating_mul(cardinality);
                        if cost > cel::STATIC_ESTIMATED_COST_LIMIT {
                            c.errs.push(forbidden(&format!("{at}.messageExpression"), cost_error("estimated messageExpression cost", cost, cel::STATIC_ESTIMATED_COST_LIMIT)));
                        }
                        c.costs.push((format!("{at}.messageExpression"), cost));
                    }
                }
            }
        }
        for (name, p) in &self.properties {
            p.check_node(
                &format!("{path}.properties[{name}]"),
                cardinality,
                correlatable,
                false,
                c,
            );
        }
        let many = cardinality.saturating_mul(max_size(self));
        if let Some(a) = &self.additional {
            a.check_node(
                &format!("{path}.additionalProperties"),
                many,
                correlatable,
                false,
                c,
            );
        }
        if let Some(items) = &self.items {
            let correlated = correlatable && self.list_type == Some(ListType::Map);
            items.check_node(&format!("{path}.items"), many, correlated, false, c);
        }
    }

    /// Whether `fieldPath` (`spec.x`) names a field this schema can have.
    fn resolves(&self, path: &str) -> bool {
        let mut s = self;
        for seg in path.split('.') {
            match s.properties.get(seg).or(s.additional.as_deref()) {
                Some(next) => s = next,
                None if s.preserve_unknown => return true,
                None => return false,
            }
        }
        true
    }

    /// Whether this node or one below it has rules (set once after parsing).
    pub(super) fn mark_rules(&mut self) -> bool {
        let mut below = !self.rules.is_empty();
        for p in self.properties.values_mut() {
            below |= p.mark_rules();
        }
        if let Some(a) = self.additional.as_deref_mut() {
            below |= a.mark_rules();
        }
        if let Some(i) = self.items.as_deref_mut() {
            below |= i.mark_rules();
        }
        self.rules_below = below;
        below
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation

/// A value as CEL sees it under its schema: `number` fields are doubles even when written
/// as integers; the root's metadata shows only name and generateName.
fn to_cel(s: &Schema, v: &Value, root: bool) -> cel::Value {
    match v {
        Value::Number(n) if s.ty == Some(Type::Number) => {
            cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))
        }
        Value::Object(m) => {
            let mut out: HashMap<String, cel::Value> = HashMap::with_capacity(m.len());
            for (k, child) in m {
                let value = if root && k == "metadata" {
                    let mut meta = HashMap::new();
                    for f in ["name", "generateName"] {
                        if let Some(x) = child.get(f) {
                            meta.insert(f.to_string(), cel::value::from_json(x));
                        }
                    }
                    cel::Value::Map(meta.into())
                } else {
                    match s.properties.get(k).or(s.additional.as_deref()) {
                        Some(cs) => to_cel(cs, child, false),
                        None => cel::value::from_json(child),
                    }
                };
                // Properties go by their escaped names (`__namespace__`); map keys as they are.
                let key = if s.properties.contains_key(k) {
                    match cel::escape(k) {
                        Some(e) => e.into_owned(),
                        None => continue,
                    }
                } else {
                    k.clone()
                };
                out.insert(key, value);
            }
            cel::Value::Map(out.into())
        }
        Value::Array(items) => match s.items.as_deref() {
            Some(is) => cel::Value::List(Arc::new(
                items.iter().map(|x| to_cel(is, x, false)).collect(),
            )),
            None => cel::value::from_json(v),
        },
        other => cel::value::from_json(other),
    }
}

/// Evaluation state: the errors and what is left of the object's cost budget.
struct Eval<'e> {
    errs: &'e mut Vec<FieldError>,
    budget: u64,
    stopped: bool,
}

fn at(path: &str) -> String {
    if path.is_empty() {
        "<nil>".to_string()
    } else {
        path.to_string()
    }
}

impl Schema {
    /// Runs every validation rule on `new` (the whole object), against `old` on update.
    pub fn validate_rules(&self, new: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if !self.rules_below {
            return errs;
        }
        let mut e = Eval {
            errs: &mut errs,
            budget: cel::RUNTIME_COST_BUDGET,
            stopped: false,
        };
        let mut path = String::new();
        self.eval_node(new, old, &mut path, true, &mut e);
        errs
    }

    fn eval_node(
        &self,
        new: &Value,
        old: Option<&Value>,
        path: &mut String,
        root: bool,
        e: &mut Eval,
    ) {
        if e.stopped || !self.rules_below || new.is_null() {
            return;
        }
        // Ratcheting: an unchanged subtree passed (or was let through) before.
        if old.is_some_and(|o| o == new) {
            return;
        }
        if !self.rules.is_empty() {
            self.eval_rules(new, old, path, root, e);
        }
        let len = path.len();
        match new {
            Value::Object(map) => {
                for (k, child) in map {
                    if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                        continue;
                    }
                    let (schema, key) = match self.properties.get(k) {
                        Some(p) => (p, false),
                        None => match &self.additional {
                            Some(a) => (&**a, true),
                            None => continue,
                        },
                    };
                    if key {
                        path.push_str(&format!("[{k}]"));
                    } else {
                        *path = join(path, k);
                    }
                    schema.eval_node(child, old.and_then(|o| o.get(k)), path, false, e);
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                let Some(is) = self.items.as_deref() else {
                    return;
                };
                for (i, item) in items.iter().enumerate() {
                    let old_item = match (self.list_type.as_ref(), old) {
                        (Some(ListType::Map), Some(Value::Array(olds))) => olds
                            .iter()
                            .find(|o| self.list_map_keys.iter().all(|k| o.get(k) == item.get(k))),
                        (Some(ListType::Set), Some(Value::Array(olds))) => {
                            olds.iter().find(|o| *o == item)
                        }
                        _ => None,
                    };
                    path.push_str(&format!("[{i}]"));
                    is.eval_node(item, old_item, path, false, e);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }

    fn eval_rules(&self, new: &Value, old: Option<&Value>, path: &str, root: bool, e: &mut Eval) {
        let this = to_cel(self, new, root);
        // The old value is converted only when a transition rule will read it.
        let before = old
            .filter(|_| self.rules.iter().any(|r| r.transition))
            .map(|o| to_cel(self, o, root));
        let mut shared: Option<cel::Context> = None;
        for r in &self.rules {
            if e.stopped {
                return;
            }
            if r.transition && before.is_none() && !r.optional_old_self {
                continue;
            }
            // The run-time cost, from the actual sizes, before running.
            let mut vars = vec![("self", cost::Actual::One(new))];
            if r.transition {
                vars.push((
                    "oldSelf",
                    old.map_or(cost::Actual::Absent, cost::Actual::One),
                ));
            }
            let cost = cost::estimate(r.program.expression(), &vars).unwrap_or(u64::MAX);
            if cost > cel::PER_CALL_LIMIT {
                e.errs.push(err(&at(path), format!("Invalid value: {:?}: operation cancelled: actual cost limit exceeded: no further validation rules will be run due to call cost exceeds limit for rule: {}", value_type(self, new), r.error_string())));
                e.stopped = true;
                return;
            }
            if cost > e.budget {
                e.errs.push(err(&at(path), format!("Invalid value: {:?}: validation failed due to running out of cost budget, no further validation rules will be run", value_type(self, new))));
                e.stopped = true;
                return;
            }
            e.budget -= cost;
            // Binding a variable converts the whole value: once per node, not per rule
            // (rules with optionalOldSelf get their own scope, oldSelf being an optional).
            let own;
            let ctx = if r.transition && r.optional_old_self {
                let mut c = cel::scope();
                c.add_variable_from_value("self", this.clone());
                let wrapped = match &before {
                    Some(b) => ::cel::objects::OptionalValue::of(b.clone()),
                    None => ::cel::objects::OptionalValue::none(),
                };
                c.add_variable_from_value("oldSelf", cel::Value::Opaque(Arc::new(wrapped)));
                own = c;
                &own
            } else {
                &*shared.get_or_insert_with(|| {
                    let mut c = cel::scope();
                    c.add_variable_from_value("self", this.clone());
                    if let Some(b) = &before {
                        c.add_variable_from_value("oldSelf", b.clone());
                    }
                    c
                })
            };
            match r.program.execute(ctx) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => self.fail(r, new, path, ctx, e),
                Ok(other) => e.errs.push(err(&at(path), format!("Invalid value: {:?}: rule did not evaluate to a bool ({other:?}) for rule: {}", value_type(self, new), r.error_string()))),
                Err(x) => {
                    let text = cel::error_text(&x);
                    let msg = if text.starts_with("no such overload") {
                        format!("'{text}': call arguments did not match a supported operator, function or macro signature for rule: {}", r.error_string())
                    } else {
                        format!("{text} evaluating rule: {}", r.error_string())
                    };
                    e.errs.push(err(&at(path), format!("Invalid value: {:?}: {msg}", value_type(self, new))));
                }
            }
        }
    }

    fn fail(&self, r: &Rule, new: &Value, path: &str, ctx: &cel::Context, e: &mut Eval) {
        let detail = r
            .message_expression
            .as_ref()
            .and_then(|m| match m.execute(ctx) {
                Ok(cel::Value::String(s)) if !s.trim().is_empty() && !s.contains('\n') => {
                    Some(s.trim().to_string())
                }
                _ => None,
            })
            .unwrap_or_else(|| match &r.message {
                Some(m) => m.clone(),
                None => format!("failed rule: {}", r.error_string()),
            });
        let field = match &r.field_path {
            Some(fp) => join(path, fp),
            None => at(path),
        };
        let message = match r.reason {
            Reason::Forbidden => format!("Forbidden: {detail}"),
            Reason::Required => format!("Required value: {detail}"),
            Reason::Duplicate => format!("Duplicate value: {}", validate::show(new)),
            Reason::Invalid => match self.ty {
                Some(Type::Object | Type::Array) => {
                    format!("Invalid value: {:?}: {detail}", value_type(self, new))
                }
                _ => format!("Invalid value: {}: {detail}", validate::show(new)),
            },
        };
        e.errs.push(err(&field, message));
    }
}

/// `"object"` or `"array"` for composite values, as Kubernetes shows them in messages.
fn value_type(s: &Schema, v: &Value) -> &'static str {
    match (s.ty, v) {
        (_, Value::Object(_)) => "object",
        (_, Value::Array(_)) => "array",
        (Some(t), _) => t.name(),
        _ => "value",
    }
}
