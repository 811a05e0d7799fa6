//! managedFields: which field manager owns which fields (structured-merge-diff's FieldsV1 sets,
//! `{"f:spec": {"f:replicas": {}}}`; keyed list items as `k:{"name":"web"}`, set members as
//! `v:<json>`), and how a non-apply write (POST, PUT, PATCH) is recorded ([`track_update`]): the
//! writer's `Update` entry gains the fields it changed, taken from everyone else. Server-side
//! apply's merge and conflicts are in [`super::apply`].

use std::collections::BTreeSet;

use capstan_api::validation::FieldError;
use serde_json::{Map, Value, json};

use crate::patch::field_paths::{Finder, differs};
use crate::patch::strategic::{self, ListStrategy};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// `f:name`
    Field(String),
    /// `k:{"name":"web"}`: the list item with these key values.
    Key(String),
    /// `v:"x"`: a member of a set-like list.
    Value(String),
    /// `.`: the list item itself.
    Dot,
}

pub type Path = Vec<Step>;
pub type FieldSet = BTreeSet<Path>;

/// The leaf fields of `obj` (a kind's object), skipping what the server owns.
pub fn field_set(kind: &str, obj: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    if let Some(m) = obj.as_object() {
        for (k, v) in m {
            if matches!(k.as_str(), "apiVersion" | "kind" | "status") {
                continue;
            }
            if k == "metadata" {
                for (mk, mv) in v.as_object().into_iter().flatten() {
                    if matches!(
                        mk.as_str(),
                        "labels" | "annotations" | "finalizers" | "ownerReferences"
                    ) {
                        walk(
                            kind,
                            &mut vec!["metadata", mk],
                            mv,
                            &mut vec![Step::Field("metadata".into()), Step::Field(mk.clone())],
                            &mut out,
                        );
                    }
                }
                continue;
            }
            walk(
                kind,
                &mut vec![k.as_str()],
                v,
                &mut vec![Step::Field(k.clone())],
                &mut out,
            );
        }
    }
    out
}

fn walk<'a>(
    kind: &str,
    names: &mut Vec<&'a str>,
    v: &'a Value,
    path: &mut Path,
    out: &mut FieldSet,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                names.push(k);
                path.push(Step::Field(k.clone()));
                walk(kind, names, child, path, out);
                path.pop();
                names.pop();
            }
        }
        Value::Array(items) => match strategic::strategy_for(kind, names) {
            ListStrategy::MergeByKey(key) => {
                for item in items {
                    let Some(id) = item.get(key) else { continue };
                    let mut k = Map::new();
                    k.insert(key.to_string(), id.clone());
                    path.push(Step::Key(Value::Object(k).to_string()));
                    let mut dot = path.clone();
                    dot.push(Step::Dot);
                    out.insert(dot);
                    for (k, child) in item.as_object().into_iter().flatten() {
                        names.push(k);
                        path.push(Step::Field(k.clone()));
                        walk(kind, names, child, path, out);
                        path.pop();
                        names.pop();
                    }
                    path.pop();
                }
            }
            ListStrategy::MergeScalars => {
                for item in items {
                    let mut p = path.clone();
                    p.push(Step::Value(item.to_string()));
                    out.insert(p);
                }
            }
            ListStrategy::Replace => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// FieldsV1 JSON of a set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for step in path {
            let key = match step {
                Step::Field(f) => format!("f:{f}"),
                Step::Key(k) => format!("k:{k}"),
                Step::Value(v) => format!("v:{v}"),
                Step::Dot => ".".to_string(),
            };
            node = node
                .entry(key)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("built as objects");
        }
    }
    Value::Object(root)
}

/// The set a FieldsV1 JSON describes (its leaves).
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn go(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() && !path.is_empty() {
            out.insert(path.clone());
            return;
        }
        for (k, child) in m {
            let step = if let Some(f) = k.strip_prefix("f:") {
                Step::Field(f.to_string())
            } else if let Some(key) = k.strip_prefix("k:") {
                Step::Key(key.to_string())
            } else if let Some(val) = k.strip_prefix("v:") {
                Step::Value(val.to_string())
            } else if k == "." {
                Step::Dot
            } else {
                continue;
            };
            path.push(step);
            go(child, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    go(v, &mut Vec::new(), &mut out);
    out
}

/// `.spec.replicas`, `.spec.template.spec.containers[name="web"].image`, as kube prints paths.
pub fn display(path: &Path) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let inner: Vec<String> = key.iter().map(|(kk, kv)| format!("{kk}={kv}")).collect();
                s.push_str(&format!("[{}]", inner.join(",")));
            }
            Step::Value(v) => s.push_str(&format!("[{v}]")),
            Step::Dot => {}
        }
    }
    s
}

/// One managedFields entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

impl Entry {
    /// `manager`'s Apply entry owning `fields`.
    pub fn apply(manager: &str, api_version: &str, now: &str, fields: FieldSet) -> Entry {
        Entry {
            manager: manager.into(),
            operation: "Apply".into(),
            api_version: api_version.into(),
            time: now.into(),
            fields,
        }
    }
}

pub fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e
                    .get("operation")
                    .and_then(Value::as_str)
                    .unwrap_or("Update")
                    .to_string(),
                api_version: e
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                time: e
                    .get("time")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
            })
        })
        .collect()
}

pub fn entries_json(entries: &[Entry]) -> Value {
    Value::Array(
        entries
            .iter()
            .filter(|e| !e.fields.is_empty())
            .map(|e| {
                json!({
                    "manager": e.manager,
                    "operation": e.operation,
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": to_fields_v1(&e.fields),
                })
            })
            .collect(),
    )
}

/// The longest field manager name (Kubernetes' `FieldManagerMaxLength`).
pub const MAX_MANAGER_LENGTH: usize = 128;

/// Why `manager` is not a field manager name (Kubernetes' `ValidateFieldManager`): at most 128
/// bytes, printable characters only.
pub fn field_manager_errors(field: &str, manager: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if manager.len() > MAX_MANAGER_LENGTH {
        errs.push(FieldError {
            field: field.into(),
            value: String::new(),
            message: format!("Too long: may not be more than {MAX_MANAGER_LENGTH} bytes"),
        });
    }
    if let Some((i, c)) = manager
        .char_indices()
        .find(|(_, c)| c.is_control() || (c.is_whitespace() && *c != ' '))
    {
        errs.push(FieldError {
            field: field.into(),
            value: manager.chars().filter(|c| !c.is_control()).collect(),
            message: format!("invalid character U+{:04X} (at position {i})", u32::from(c)),
        });
    }
    errs
}

/// What a write sent as managedFields, before it is recorded: unchanged (None: the live
/// entries stand), `[]` (the live entries stand: a client unaware of the field never wipes
/// them), `[{}]` (Kubernetes' way to strip them: Some(empty)), or entries that must be well
/// formed — each an object with a printable `manager`, `operation` Apply or Update, and
/// `fieldsType` FieldsV1 with an object `fieldsV1` — or the write is refused (422), never
/// stored as sent or dropped in silence.
pub fn requested(live: Option<&Value>, new: &Value) -> Result<Option<Value>, Vec<FieldError>> {
    let Some(sent) = new.pointer("/metadata/managedFields") else {
        return Ok(None);
    };
    if live.and_then(|l| l.pointer("/metadata/managedFields")) == Some(sent) {
        return Ok(None);
    }
    let at = |i: usize, f: &str| format!("metadata.managedFields[{i}].{f}");
    let entries = match sent {
        Value::Null => return Ok(None),
        Value::Array(a) if a.is_empty() => return Ok(None),
        Value::Array(a) if a.len() == 1 && a[0].as_object().is_some_and(Map::is_empty) => {
            return Ok(Some(Value::Array(Vec::new())));
        }
        Value::Array(a) => a,
        _ => {
            return Err(vec![FieldError {
                field: "metadata.managedFields".into(),
                value: String::new(),
                message: "Invalid value: must be a list of entries".into(),
            }]);
        }
    };
    let mut errs = Vec::new();
    let wrong_type = |field: String, what: &str| FieldError {
        field,
        value: String::new(),
        message: format!("Invalid value: must be {what}"),
    };
    for (i, e) in entries.iter().enumerate() {
        let Some(m) = e.as_object() else {
            errs.push(wrong_type(
                format!("metadata.managedFields[{i}]"),
                "an object",
            ));
            continue;
        };
        match m.get("manager") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => errs.extend(field_manager_errors(&at(i, "manager"), s)),
            Some(_) => errs.push(wrong_type(at(i, "manager"), "a string")),
        }
        match m.get("operation") {
            Some(Value::String(op)) if op == "Apply" || op == "Update" => {}
            Some(Value::String(op)) => errs.push(FieldError {
                field: at(i, "operation"),
                value: op.clone(),
                message: "must be `Apply` or `Update`".into(),
            }),
            _ => errs.push(wrong_type(at(i, "operation"), "`Apply` or `Update`")),
        }
        match m.get("fieldsType") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t == "FieldsV1" || t.is_empty() => {}
            Some(other) => errs.push(FieldError {
                field: at(i, "fieldsType"),
                value: other.as_str().unwrap_or_default().into(),
                message: "must be `FieldsV1`".into(),
            }),
        }
        if m.get("fieldsV1")
            .is_some_and(|f| !f.is_object() && !f.is_null())
        {
            errs.push(wrong_type(at(i, "fieldsV1"), "an object"));
        }
        for f in ["apiVersion", "time", "subresource"] {
            if m.get(f).is_some_and(|v| !v.is_string() && !v.is_null()) {
                errs.push(wrong_type(at(i, f), "a string"));
            }
        }
    }
    if errs.is_empty() {
        Ok(Some(sent.clone()))
    } else {
        Err(errs)
    }
}

/// Records a non-apply write by `manager` from `old` (None: a create) to `new` in
/// `new`'s managedFields: the fields it changed become its own (`operation: Update`), fields it
/// removed are no one's. A write that changes no field leaves managedFields exactly as they were.
pub fn track_update(
    kind: &str,
    api_version: &str,
    manager: &str,
    old: Option<&Value>,
    new: &mut Value,
    now: &str,
) {
    let old_mf = old
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .cloned();
    // managedFields the client changed (kubectl's migration to SSA does; checked by
    // [`requested`] before this runs) are taken as given; otherwise the live ones stand.
    let base_json = match requested(old, new) {
        Ok(Some(given)) => given,
        _ => old_mf.unwrap_or_else(|| Value::Array(Vec::new())),
    };
    let after = field_set(kind, new);
    let changed: FieldSet = match old {
        None => after.clone(),
        Some(o) => {
            let (was, is) = (Finder::new(o), Finder::new(new));
            after
                .iter()
                .filter(|p| differs(&was, &is, p))
                .cloned()
                .collect()
        }
    };
    let removed: FieldSet = old
        .map(|o| field_set(kind, o).difference(&after).cloned().collect())
        .unwrap_or_default();
    if changed.is_empty() && removed.is_empty() {
        if base_json.as_array().is_some_and(|a| !a.is_empty()) {
            crate::object::set_path(new, &["metadata", "managedFields"], base_json);
        } else if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
        return;
    }
    let mut wrapper = json!({"metadata": {"managedFields": base_json}});
    let mut all = entries(&wrapper);
    for e in all.iter_mut() {
        e.fields
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    match all
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update" && e.api_version == api_version)
    {
        Some(e) => {
            e.fields.extend(changed);
            e.time = now.to_string();
        }
        None => all.push(Entry {
            manager: manager.into(),
            operation: "Update".into(),
            api_version: api_version.into(),
            time: now.into(),
            fields: changed,
        }),
    }
    wrapper = entries_json(&all);
    crate::object::set_path(new, &["metadata", "managedFields"], wrapper);
}
