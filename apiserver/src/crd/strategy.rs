//! A custom resource's strategy: its version's structural schema prunes, defaults and validates
//! every write (and every read from the store, so a default added to the CRD later shows up on
//! old objects, as in Kubernetes); `additionalPrinterColumns` make its Table; `selectableFields`
//! extend field selectors; with a status subresource, create drops the status.

use std::sync::Arc;

use capstan_api::validation::FieldError;
use serde_json::{Map, Value, json};

use super::jsonpath::JsonPath;
use super::schema::Schema;
use crate::object::ObjectExt;
use crate::strategy::Strategy;
use crate::table::{Column, Table};

/// One `additionalPrinterColumns` entry.
#[derive(Clone, Debug)]
pub struct PrinterColumn {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: u8,
    pub path: JsonPath,
}

/// One `selectableFields` entry: `spec.color` → `/spec/color`.
#[derive(Clone, Debug)]
pub struct SelectableField {
    pub name: String,
    pub pointer: String,
}

#[derive(Debug)]
pub struct CustomStrategy {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub schema: Arc<Schema>,
    /// The schema as the CRD wrote it, for /openapi/v3.
    pub raw_schema: Value,
    pub columns: Vec<PrinterColumn>,
    pub selectable: Vec<SelectableField>,
    pub status: bool,
}

/// Whether the value at a field path (`spec.items[0].name`) is the same in both objects.
/// Lists correlate only as a whole: an element error ratchets only when its list is unchanged
/// (Kubernetes correlates list-type map items by key; this is the stricter reading).
fn unchanged(new: &Value, old: &Value, field: &str) -> bool {
    if field.is_empty() || field.starts_with('<') {
        return false;
    }
    let (mut a, mut b) = (new, old);
    for seg in field.split('.') {
        let name = seg.split('[').next().unwrap_or(seg);
        match (a.get(name), b.get(name)) {
            (Some(x), Some(y)) => (a, b) = (x, y),
            _ => return false,
        }
        if seg.contains('[') {
            // Through a list: the whole list must be unchanged.
            return a == b;
        }
    }
    a == b
}

/// A Table cell as kube-apiserver's CRD table convertor makes it: the first value the path
/// selects; dates as ages; strings as kubectl would print them.
fn cell(c: &PrinterColumn, obj: &Value) -> Value {
    let Some(v) = c.path.first(obj) else {
        return Value::Null;
    };
    match (c.ty.as_str(), v) {
        ("date", Value::String(s)) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => json!(crate::table::human_duration(
                (jiff::Timestamp::now().as_second() - t.as_second()).max(0)
            )),
            Err(_) => Value::String(s.clone()),
        },
        ("integer", Value::Number(n)) if n.is_i64() || n.is_u64() => v.clone(),
        ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) => v.clone(),
        ("string", Value::String(s)) => Value::String(s.clone()),
        ("string", other) => Value::String(match other {
            Value::Object(_) | Value::Array(_) => other.to_string(),
            Value::Null => String::new(),
            x => x.to_string().trim_matches('"').to_string(),
        }),
        _ => Value::Null,
    }
}

impl Strategy for CustomStrategy {
    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        let mut errs = self.schema.validate_root(obj);
        errs.extend(self.schema.validate_rules(obj, None));
        errs
    }

    fn validate_on_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        let mut errs = self.schema.validate_root(new);
        // Ratcheting: a schema error in a field the update left as it was does not count.
        errs.retain(|e| !unchanged(new, old, &e.field));
        errs.extend(self.schema.validate_rules(new, Some(old)));
        errs
    }

    fn canonicalize(&self, obj: &mut Value) {
        self.schema.prune_root(obj, None);
        self.schema.default_root(obj);
    }

    fn field(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "metadata.name" => return Some(obj.name().unwrap_or_default().to_string()),
            "metadata.namespace" => return Some(obj.namespace().unwrap_or_default().to_string()),
            _ => {}
        }
        let f = self.selectable.iter().find(|f| f.name == field)?;
        Some(match obj.pointer(&f.pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        })
    }

    fn supports_field(&self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace")
            || self.selectable.iter().any(|f| f.name == field)
    }

    fn selectable_pointers(&self) -> Vec<String> {
        self.selectable.iter().map(|f| f.pointer.clone()).collect()
    }

    fn table(&self) -> Table {
        let mut columns: Vec<PrinterColumn> = self.columns.clone();
        if columns.is_empty() {
            // Kubernetes' default for CRDs without printer columns: the age.
            columns.push(PrinterColumn {
                name: "Age".into(),
                ty: "date".into(),
                format: String::new(),
                description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(),
                priority: 0,
                path: JsonPath::parse(".metadata.creationTimestamp").expect("a literal path"),
            });
        }
        let defs = columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                ty: c.ty.clone(),
                priority: c.priority,
                description: c.description.clone(),
            })
            .collect();
        let row = Arc::new(move |obj: &Value| columns.iter().map(|c| cell(c, obj)).collect());
        Table::new(defs, row)
    }

    fn reset_status_on_create(&self) -> bool {
        self.status
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn prune_unknown(&self, obj: &mut Value) {
        self.schema.prune_root(obj, None);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        if self.status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
    }

    fn unknown_fields(&self, obj: &Value) -> Vec<String> {
        let mut copy = obj.clone();
        let mut dropped = Vec::new();
        self.schema.prune_root(&mut copy, Some(&mut dropped));
        dropped
    }

    fn openapi_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<schemars::Schema> {
        let meta =
            generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
        let mut schema = self.raw_schema.clone();
        if let Some(m) = schema.as_object_mut() {
            let props = m
                .entry("properties")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(p) = props.as_object_mut() {
                p.insert(
                    "apiVersion".into(),
                    json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}),
                );
                p.insert(
                    "kind".into(),
                    json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}),
                );
                p.insert("metadata".into(), meta.as_value().clone());
            }
        }
        // `com.example.v1.Widget`, as kube-apiserver names CRD schemas.
        let reversed: Vec<&str> = self.group.split('.').rev().collect();
        let name = format!("{}.{}.{}", reversed.join("."), self.version, self.kind);
        let schema = schemars::Schema::try_from(schema).ok()?;
        generator
            .definitions_mut()
            .insert(name.clone(), schema.to_value());
        schemars::Schema::try_from(json!({"$ref": format!("#/components/schemas/{name}")})).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(columns: Vec<PrinterColumn>) -> CustomStrategy {
        let raw = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "replicas": {"type": "integer", "default": 1}, "color": {"type": "string"}}}}});
        let mut errs = Vec::new();
        let schema = Schema::parse(&raw, "s", &mut errs);
        assert!(errs.is_empty());
        CustomStrategy {
            group: "example.com".into(),
            version: "v1".into(),
            kind: "Widget".into(),
            schema: Arc::new(schema),
            raw_schema: raw,
            columns,
            selectable: vec![SelectableField {
                name: "spec.color".into(),
                pointer: "/spec/color".into(),
            }],
            status: true,
        }
    }

    #[test]
    fn printer_columns_fill_table_cells() {
        let col = |name: &str, ty: &str, path: &str| PrinterColumn {
            name: name.into(),
            ty: ty.into(),
            format: String::new(),
            description: String::new(),
            priority: 0,
            path: JsonPath::parse(path).unwrap(),
        };
        let s = strategy(vec![
            col("Replicas", "integer", ".spec.replicas"),
            col("Color", "string", ".spec.color"),
            col("Missing", "string", ".spec.nothing"),
            col("Age", "date", ".metadata.creationTimestamp"),
        ]);
        let t = s.table();
        assert_eq!(t.columns.len(), 5);
        let obj = json!({"metadata": {"name": "w", "creationTimestamp": jiff::Timestamp::now().to_string()},
            "spec": {"replicas": 3, "color": "red"}});
        let cells = (t.row)(&obj);
        assert_eq!(cells[0], 3);
        assert_eq!(cells[1], "red");
        assert!(cells[2].is_null());
        assert!(cells[3].as_str().unwrap().ends_with('s'));
        // No columns: Age alone.
        assert_eq!(strategy(vec![]).table().columns[1].name, "Age");
    }

    #[test]
    fn unknown_fields_and_selectable_fields() {
        let s = strategy(vec![]);
        let obj = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"color": "red", "shade": "dark"}, "extra": 1});
        assert_eq!(
            s.unknown_fields(&obj),
            vec!["extra".to_string(), "spec.shade".to_string()]
        );
        assert_eq!(s.field(&obj, "spec.color").as_deref(), Some("red"));
        assert!(s.supports_field("spec.color") && !s.supports_field("spec.shade"));
        let mut obj = obj;
        s.canonicalize(&mut obj);
        assert_eq!(obj["spec"], json!({"color": "red", "replicas": 1}));
    }
}
