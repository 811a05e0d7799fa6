//! Objects travel through the server as JSON (`serde_json::Value`), as kube-apiserver treats
//! custom resources as unstructured: one code path for every kind. [`ObjectExt`] reads and
//! writes the metadata every handler needs.

use std::collections::BTreeMap;

use capstan_api::validation::{self, FieldError};
use serde_json::{Map, Value};

pub trait ObjectExt {
    fn meta(&self) -> Option<&Map<String, Value>>;
    fn meta_mut(&mut self) -> &mut Map<String, Value>;
    fn name(&self) -> Option<&str>;
    fn namespace(&self) -> Option<&str>;
    fn meta_str(&self, field: &str) -> Option<&str>;
    fn labels(&self) -> BTreeMap<String, String>;
    fn finalizers(&self) -> Vec<String>;
    fn set_meta(&mut self, field: &str, v: Value);
    fn remove_meta(&mut self, field: &str);
    fn is_deleting(&self) -> bool;
}

impl ObjectExt for Value {
    fn meta(&self) -> Option<&Map<String, Value>> {
        self.get("metadata")?.as_object()
    }

    fn meta_mut(&mut self) -> &mut Map<String, Value> {
        if !self.is_object() {
            *self = Value::Object(Map::new());
        }
        let obj = self.as_object_mut().expect("made an object above");
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        meta.as_object_mut().expect("made an object above")
    }

    fn name(&self) -> Option<&str> {
        self.meta_str("name").filter(|s| !s.is_empty())
    }

    fn namespace(&self) -> Option<&str> {
        self.meta_str("namespace").filter(|s| !s.is_empty())
    }

    fn meta_str(&self, field: &str) -> Option<&str> {
        self.meta()?.get(field)?.as_str()
    }

    fn labels(&self) -> BTreeMap<String, String> {
        string_map(self.meta().and_then(|m| m.get("labels")))
    }

    fn finalizers(&self) -> Vec<String> {
        strings(self.meta().and_then(|m| m.get("finalizers")))
    }

    fn set_meta(&mut self, field: &str, v: Value) {
        self.meta_mut().insert(field.to_string(), v);
    }

    fn remove_meta(&mut self, field: &str) {
        self.meta_mut().remove(field);
    }

    fn is_deleting(&self) -> bool {
        self.meta_str("deletionTimestamp").is_some()
    }
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Sets `v` at `path` (e.g. ["spec", "nodeName"]), turning anything on the way that is not an
/// object into one: never panics, whatever shape a stored or patched object has.
/// The strings of a JSON array (anything else, and non-strings in it, count as nothing).
pub fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub fn set_path(obj: &mut Value, path: &[&str], v: Value) {
    let mut node = obj;
    for key in path {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node = node
            .as_object_mut()
            .expect("made an object above")
            .entry(key.to_string())
            .or_insert(Value::Null);
    }
    *node = v;
}

/// Decodes a stored value and stamps it with its resourceVersion.
pub fn decode(bytes: &[u8], rv: i64) -> Option<Value> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(mut v) if v.is_object() => {
            v.set_meta("resourceVersion", Value::String(rv.to_string()));
            Some(v)
        }
        _ => None,
    }
}

/// Removes the field at `path` (nothing when it is absent).
pub fn remove_path(obj: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = obj;
    for key in parents {
        match node.get_mut(*key) {
            Some(next) => node = next,
            None => return,
        }
    }
    if let Some(m) = node.as_object_mut() {
        m.remove(*last);
    }
}

/// Which rule object names follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most resources).
    Subdomain,
    /// RFC 1123 label (namespaces, services).
    Label,
    /// `VERSION.GROUP`, the group possibly empty (APIServices: `v1.apps`, `v1.`).
    VersionDotGroup,
    /// Any path segment (RBAC roles and bindings: `system:node`).
    PathSegment,
}

/// Kubernetes' IsValidPathSegmentName: not empty, `.` or `..`, and without `/` or `%`.
pub fn path_segment(name: &str) -> Result<(), String> {
    match name {
        "" => Err("Required value: name or generateName is required".into()),
        "." | ".." => Err(format!("may not be '{name}'")),
        n if n.contains('/') => Err("may not contain '/'".into()),
        n if n.contains('%') => Err("may not contain '%'".into()),
        _ => Ok(()),
    }
}

/// Metadata rules every object follows: a valid name, labels and annotations as string maps
/// with valid keys and values, finalizers as qualified names.
pub fn validate_meta(obj: &Value, namespaced: bool, names: NameRule) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let meta = obj.meta();
    let name = obj.name().unwrap_or_default();
    let check = match names {
        NameRule::Subdomain => validation::dns1123_subdomain(name),
        NameRule::Label => validation::dns1123_label(name),
        // `v1.apps`, and `v1.` for the core group.
        NameRule::VersionDotGroup => match name.split_once('.') {
            Some((version, "")) => validation::dns1123_label(version),
            Some((version, group)) => validation::dns1123_label(version)
                .and_then(|()| validation::dns1123_subdomain(group)),
            None => Err("must be VERSION.GROUP (VERSION. for the core group)".into()),
        },
        NameRule::PathSegment => path_segment(name),
    };
    if let Err(m) = check {
        errs.push(FieldError {
            field: "metadata.name".into(),
            value: name.into(),
            message: m,
        });
    }
    if namespaced && obj.namespace().is_none() {
        errs.push(FieldError {
            field: "metadata.namespace".into(),
            value: String::new(),
            message: "Required value".into(),
        });
    }
    for field in ["labels", "annotations"] {
        match meta.and_then(|m| m.get(field)) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) if m.values().all(Value::is_string) => {
                let map = string_map(Some(&Value::Object(m.clone())));
                let path = format!("metadata.{field}");
                errs.extend(if field == "labels" {
                    validation::labels(&path, &map)
                } else {
                    validation::annotations(&path, &map)
                });
            }
            Some(_) => errs.push(FieldError {
                field: format!("metadata.{field}"),
                value: String::new(),
                message: "Invalid value: must be a map of strings".into(),
            }),
        }
    }
    for (i, f) in obj.finalizers().iter().enumerate() {
        if let Err(m) = validation::qualified_name(f) {
            errs.push(FieldError {
                field: format!("metadata.finalizers[{i}]"),
                value: f.clone(),
                message: m,
            });
        }
    }
    errs
}

/// Now, as metav1.Time writes it (seconds, UTC).
/// The default class of a kind (StorageClass, IngressClass): of the objects annotated
/// `annotation: "true"`, the newest, then the first by name — how Kubernetes' DefaultStorageClass
/// and DefaultIngressClass admission plugins pick when several claim to be the default.
pub fn newest_default(classes: &[std::sync::Arc<Value>], annotation: &str) -> Option<String> {
    classes
        .iter()
        .filter(|c| c["metadata"]["annotations"][annotation] == "true")
        .max_by(|a, b| {
            let created = |c: &Value| c.meta_str("creationTimestamp").unwrap_or("").to_string();
            created(a)
                .cmp(&created(b))
                .then_with(|| b.name().cmp(&a.name()))
        })
        .and_then(|c| c.name().map(str::to_string))
}

pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A name from generateName: the prefix plus 5 characters, as Kubernetes' SimpleNameGenerator.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    // By characters: the prefix is not validated yet and may hold any UTF-8.
    let base: String = prefix.chars().take(58).collect();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    format!("{base}{suffix}")
}

/// Everything but metadata and status: what a change to bumps `metadata.generation`.
pub fn spec_of(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_problems_are_all_reported_with_their_paths() {
        let obj = json!({"metadata": {"name": "Bad_Name", "labels": {"ok": "bad value"}, "annotations": {"a": 1}}});
        let fields: Vec<_> = validate_meta(&obj, true, NameRule::Subdomain)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "metadata.namespace",
                "metadata.labels[ok]",
                "metadata.annotations"
            ]
        );
    }

    #[test]
    fn generated_names_keep_the_prefix_and_add_five_characters() {
        let n = generate_name("web-");
        assert!(n.starts_with("web-") && n.len() == 9, "{n}");
        assert_ne!(generate_name("web-"), generate_name("web-"));
        assert!(generate_name(&"é".repeat(100)).starts_with(&"é".repeat(58)));
    }

    #[test]
    fn set_path_replaces_whatever_is_in_the_way() {
        let mut v = json!({"spec": "oops"});
        set_path(&mut v, &["spec", "nodeName"], json!("n1"));
        assert_eq!(v, json!({"spec": {"nodeName": "n1"}}));
        let mut s = json!("not an object");
        set_path(&mut s, &["a"], json!(1));
        assert_eq!(s, json!({"a": 1}));
    }

    #[test]
    fn meta_mut_repairs_a_non_object_metadata() {
        let mut v = json!({"metadata": 5});
        v.set_meta("name", json!("x"));
        assert_eq!(v.name(), Some("x"));
    }
}
