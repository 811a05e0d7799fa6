//! What makes a CustomResourceDefinition valid, and how one becomes served resources.
//!
//! Validation follows apiextensions-apiserver's: `metadata.name` is `<plural>.<group>`, the
//! group is a DNS subdomain with a dot, names are DNS labels (kind and listKind are CamelCase
//! identifiers), scope is Namespaced or Cluster, versions are unique DNS labels with exactly one
//! storage version, every version has a structural openAPIV3Schema, scale paths point into spec
//! and status, printer columns have known types and valid JSONPaths, and a conversion
//! webhook has a valid client configuration ([`super::conversion`]).

use std::sync::Arc;

use capstan_api::validation::{self, FieldError};
use serde_json::{Value, json};

use super::CLEANUP_FINALIZER;
use super::jsonpath::JsonPath;
use super::schema::Schema;
use super::strategy::{CustomStrategy, PrinterColumn, SelectableField};
use crate::object::ObjectExt;
use crate::registry::{ResourceInfo, ScalePaths, SelectorAt};

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        value: String::new(),
        message: message.into(),
    }
}

fn invalid(field: impl Into<String>, value: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        value: value.to_string(),
        message: message.into(),
    }
}

fn str_at<'v>(v: &'v Value, ptr: &str) -> Option<&'v str> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A plain `.a.b.c` path: the only form scale paths and selectable fields take.
fn is_dotted(p: &str) -> bool {
    p.starts_with('.')
        && p[1..].split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// A CamelCase identifier: kind and listKind.
fn is_kind(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// The names a CRD asks for, with Kubernetes' defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
}

impl Names {
    pub fn of(names: &Value) -> Names {
        let s = |k: &str| {
            names
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let list = |k: &str| crate::object::strings(names.get(k));
        let kind = s("kind");
        let singular = match s("singular") {
            x if x.is_empty() => kind.to_ascii_lowercase(),
            x => x,
        };
        let list_kind = match s("listKind") {
            x if x.is_empty() => format!("{kind}List"),
            x => x,
        };
        Names {
            plural: s("plural"),
            singular,
            kind,
            list_kind,
            short_names: list("shortNames"),
            categories: list("categories"),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "plural": self.plural,
            "singular": self.singular,
            "kind": self.kind,
            "listKind": self.list_kind,
        });
        if !self.short_names.is_empty() {
            v["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            v["categories"] = json!(self.categories);
        }
        v
    }
}

/// Defaults and resets on create: the cleanup finalizer, an empty status, listKind/singular
/// and conversion strategy None.
pub fn on_create(obj: &mut Value) {
    let mut finalizers = obj.finalizers();
    if !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
        finalizers.push(CLEANUP_FINALIZER.to_string());
        obj.set_meta("finalizers", json!(finalizers));
    }
    default_spec(obj);
}

/// listKind, singular and conversion defaults (applied on every write).
pub fn default_spec(obj: &mut Value) {
    if let Some(names) = obj.pointer("/spec/names").cloned() {
        let n = Names::of(&names);
        if let Some(m) = obj
            .pointer_mut("/spec/names")
            .and_then(Value::as_object_mut)
        {
            m.insert("singular".into(), json!(n.singular));
            m.insert("listKind".into(), json!(n.list_kind));
        }
    }
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
        && !spec.contains_key("conversion")
    {
        spec.insert("conversion".into(), json!({"strategy": "None"}));
    }
    if let Some(svc) = obj
        .pointer_mut("/spec/conversion/webhook/clientConfig/service")
        .and_then(Value::as_object_mut)
    {
        svc.entry("port").or_insert(json!(443));
    }
}

/// Validates a CRD (after its typed decoding succeeded).
pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let group = str_at(&spec, "/group").unwrap_or_default();
    let names = Names::of(spec.get("names").unwrap_or(&Value::Null));
    if group.is_empty() {
        errs.push(err("spec.group", "Required value"));
    } else if let Err(m) = validation::dns1123_subdomain(group) {
        errs.push(invalid("spec.group", group, m));
    } else if !group.contains('.') {
        errs.push(invalid(
            "spec.group",
            group,
            "should be a domain with at least one dot",
        ));
    }
    let name = obj.name().unwrap_or_default();
    let want = format!("{}.{group}", names.plural);
    if !names.plural.is_empty() && !group.is_empty() && name != want {
        errs.push(invalid(
            "metadata.name",
            name,
            format!("must be spec.names.plural+\".\"+spec.group ({want})"),
        ));
    }
    for (field, v) in [("plural", &names.plural), ("singular", &names.singular)] {
        if v.is_empty() {
            errs.push(err(format!("spec.names.{field}"), "Required value"));
        } else if let Err(m) = validation::dns1123_label(v) {
            errs.push(invalid(format!("spec.names.{field}"), v, m));
        }
    }
    for (field, v) in [("kind", &names.kind), ("listKind", &names.list_kind)] {
        if v.is_empty() || v == "List" {
            errs.push(err(format!("spec.names.{field}"), "Required value"));
        } else if !is_kind(v) {
            errs.push(invalid(
                format!("spec.names.{field}"),
                v,
                "may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?",
            ));
        }
    }
    if !names.kind.is_empty() && names.kind == names.list_kind {
        errs.push(invalid(
            "spec.names.listKind",
            &names.list_kind,
            "kind and listKind may not be the same",
        ));
    }
    for (i, s) in names.short_names.iter().enumerate() {
        if let Err(m) = validation::dns1123_label(s) {
            errs.push(invalid(format!("spec.names.shortNames[{i}]"), s, m));
        }
    }
    for (i, s) in names.categories.iter().enumerate() {
        if let Err(m) = validation::dns1123_label(s) {
            errs.push(invalid(format!("spec.names.categories[{i}]"), s, m));
        }
    }
    match str_at(&spec, "/scope") {
        Some("Namespaced" | "Cluster") => {}
        Some(other) => errs.push(err(
            "spec.scope",
            format!("Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""),
        )),
        None => errs.push(err("spec.scope", "Required value")),
    }
    for (field, message) in super::conversion::check(&spec) {
        errs.push(err(&field, message));
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errs.push(err(
            "spec.versions",
            "Required value: must have exactly one version marked as storage version",
        ));
    }
    let mut seen = Vec::new();
    let mut storage = 0;
    for (i, v) in versions.iter().enumerate() {
        let path = format!("spec.versions[{i}]");
        let vname = str_at(v, "/name").unwrap_or_default();
        if vname.is_empty() {
            errs.push(err(format!("{path}.name"), "Required value"));
        } else if let Err(m) = validation::dns1123_label(vname) {
            errs.push(invalid(format!("{path}.name"), vname, m));
        } else if seen.contains(&vname) {
            errs.push(invalid(format!("{path}.name"), vname, "must be unique"));
        }
        seen.push(vname);
        if v.get("storage").and_then(Value::as_bool) == Some(true) {
            storage += 1;
        }
        check_version(v, &path, &mut errs);
    }
    if !versions.is_empty() && storage != 1 {
        errs.push(invalid(
            "spec.versions",
            &storage.to_string(),
            "must have exactly one version marked as storage version",
        ));
    }
    if !versions.is_empty()
        && !versions
            .iter()
            .any(|v| v.get("served").and_then(Value::as_bool) == Some(true))
    {
        errs.push(invalid(
            "spec.versions",
            "",
            "must have at least one served version",
        ));
    }
    errs
}

/// Rules for updating a CRD (apiextensions' update validation): the scope never changes, the
/// kind and listKind stay once the CRD is established, and every version objects may be stored
/// at (`status.storedVersions`) stays in `spec.versions`.
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let immutable = |errs: &mut Vec<FieldError>, field: &str, ptr: &str| {
        let (n, o) = (str_at(new, ptr), str_at(old, ptr));
        if n != o {
            errs.push(invalid(field, n.unwrap_or_default(), "field is immutable"));
        }
    };
    immutable(&mut errs, "spec.scope", "/spec/scope");
    let established = old["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
    });
    if established {
        let (n, o) = (
            Names::of(new.pointer("/spec/names").unwrap_or(&Value::Null)),
            Names::of(old.pointer("/spec/names").unwrap_or(&Value::Null)),
        );
        if n.kind != o.kind {
            errs.push(invalid(
                "spec.names.kind",
                &n.kind,
                "field is immutable once the CRD is established",
            ));
        }
        if n.list_kind != o.list_kind {
            errs.push(invalid(
                "spec.names.listKind",
                &n.list_kind,
                "field is immutable once the CRD is established",
            ));
        }
    }
    let versions: Vec<&str> = new["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for (i, stored) in new["status"]["storedVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(s) = stored.as_str()
            && !versions.contains(&s)
        {
            errs.push(invalid(
                format!("status.storedVersions[{i}]"),
                s,
                "must appear in spec.versions",
            ));
        }
    }
    errs
}

fn check_version(v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    match v.pointer("/schema/openAPIV3Schema") {
        None | Some(Value::Null) => errs.push(err(
            format!("{path}.schema.openAPIV3Schema"),
            "Required value: schemas are required",
        )),
        Some(s) => {
            let at = format!("{path}.schema.openAPIV3Schema");
            let parsed = Schema::parse(s, &at, errs);
            if parsed.ty.is_some() && parsed.ty != Some(super::schema::Type::Object) {
                errs.push(invalid(
                    format!("{at}.type"),
                    "",
                    "must be object at the root",
                ));
            }
            if let Some(meta) = parsed.properties.get("metadata") {
                let extra: Vec<&String> = meta
                    .properties
                    .keys()
                    .filter(|k| !matches!(k.as_str(), "name" | "generateName"))
                    .collect();
                if !extra.is_empty() || meta.default.is_some() {
                    errs.push(err(
                        format!("{at}.properties[metadata]"),
                        "Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified",
                    ));
                }
            }
        }
    }
    if let Some(scale) = v.pointer("/subresources/scale").filter(|s| !s.is_null()) {
        let sp = format!("{path}.subresources.scale");
        for (field, prefix, required) in [
            ("specReplicasPath", ".spec.", true),
            ("statusReplicasPath", ".status.", true),
            ("labelSelectorPath", "", false),
        ] {
            match scale.get(field).and_then(Value::as_str) {
                None if required => errs.push(err(format!("{sp}.{field}"), "Required value")),
                None => {}
                Some(p) => match JsonPath::parse(p).ok().and_then(|j| j.as_pointer()) {
                    Some(_) if p.starts_with(prefix) && is_dotted(p) => {
                        if field == "labelSelectorPath"
                            && !(p.starts_with(".spec.") || p.starts_with(".status."))
                        {
                            errs.push(invalid(
                                format!("{sp}.{field}"),
                                p,
                                "should be a json path under either .spec or .status",
                            ));
                        }
                    }
                    _ => errs.push(invalid(
                        format!("{sp}.{field}"),
                        p,
                        format!(
                            "should be a json path under {}",
                            if prefix.is_empty() {
                                ".spec or .status"
                            } else {
                                prefix
                            }
                        ),
                    )),
                },
            }
        }
    }
    if let Some(cols) = v.get("additionalPrinterColumns").and_then(Value::as_array) {
        for (i, c) in cols.iter().enumerate() {
            let cp = format!("{path}.additionalPrinterColumns[{i}]");
            if str_at(c, "/name").is_none() {
                errs.push(err(format!("{cp}.name"), "Required value"));
            }
            match str_at(c, "/type") {
                Some("integer" | "number" | "string" | "boolean" | "date") => {}
                Some(other) => errs.push(err(
                    format!("{cp}.type"),
                    format!("Unsupported value: {other:?}: supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\""),
                )),
                None => errs.push(err(format!("{cp}.type"), "Required value")),
            }
            match str_at(c, "/jsonPath") {
                Some(p) => {
                    if let Err(m) = JsonPath::parse(p) {
                        errs.push(invalid(format!("{cp}.jsonPath"), p, m));
                    }
                }
                None => errs.push(err(format!("{cp}.jsonPath"), "Required value")),
            }
        }
    }
    if let Some(fields) = v.get("selectableFields").and_then(Value::as_array) {
        for (i, f) in fields.iter().enumerate() {
            let fp = format!("{path}.selectableFields[{i}].jsonPath");
            match str_at(f, "/jsonPath") {
                Some(p) if is_dotted(p) => {}
                Some(p) => errs.push(invalid(
                    fp,
                    p,
                    "must be a simple path of fields, e.g. .spec.color",
                )),
                None => errs.push(err(fp, "Required value")),
            }
        }
    }
}

/// The served resources of an (accepted, valid) CRD: one per served version. `terminating`
/// marks a CRD being deleted: its instances are served for reads and deletes, not creates.
pub fn resources_of(
    crd: &Value,
    names: &Names,
    terminating: bool,
) -> Result<Vec<ResourceInfo>, String> {
    let spec = crd.get("spec").cloned().unwrap_or(Value::Null);
    let group = str_at(&spec, "/group").unwrap_or_default().to_string();
    let namespaced = str_at(&spec, "/scope") != Some("Cluster");
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .and_then(|v| str_at(v, "/name"))
        .ok_or("no storage version")?
        .to_string();
    let conversion_webhook = super::conversion::ConversionWebhook::of(
        crd.get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default(),
        &spec,
    );
    let mut out = Vec::new();
    for v in &versions {
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let version = str_at(v, "/name")
            .ok_or("a version has no name")?
            .to_string();
        let raw = v
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .ok_or_else(|| format!("version {version} has no schema"))?;
        let mut errs = Vec::new();
        let schema = Schema::parse(&raw, "openAPIV3Schema", &mut errs);
        if !errs.is_empty() {
            return Err(format!("version {version}: {}", errs[0].message));
        }
        let status = v
            .pointer("/subresources/status")
            .is_some_and(|s| !s.is_null());
        let scale = v
            .pointer("/subresources/scale")
            .filter(|s| !s.is_null())
            .map(|s| {
                let ptr = |k: &str| {
                    s.get(k)
                        .and_then(Value::as_str)
                        .and_then(|p| JsonPath::parse(p).ok())
                        .and_then(|j| j.as_pointer())
                };
                ScalePaths {
                    spec_replicas: ptr("specReplicasPath")
                        .unwrap_or_else(|| "/spec/replicas".into()),
                    status_replicas: ptr("statusReplicasPath")
                        .unwrap_or_else(|| "/status/replicas".into()),
                    selector: ptr("labelSelectorPath").map(SelectorAt::String),
                }
            });
        let mut columns = Vec::new();
        for c in v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let path = JsonPath::parse(str_at(c, "/jsonPath").unwrap_or_default())
                .map_err(|e| format!("printer column: {e}"))?;
            columns.push(PrinterColumn {
                name: str_at(c, "/name").unwrap_or_default().to_string(),
                ty: str_at(c, "/type").unwrap_or("string").to_string(),
                format: str_at(c, "/format").unwrap_or_default().to_string(),
                description: str_at(c, "/description").unwrap_or_default().to_string(),
                priority: c
                    .get("priority")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
                    .min(255) as u8,
                path,
            });
        }
        let selectable = v
            .get("selectableFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| {
                let src = str_at(f, "/jsonPath")?;
                let ptr = JsonPath::parse(src).ok()?.as_pointer()?;
                Some(SelectableField {
                    name: src.trim_start_matches('.').to_string(),
                    pointer: ptr,
                })
            })
            .collect();
        let deprecation = (v.get("deprecated").and_then(Value::as_bool) == Some(true)).then(|| {
            str_at(v, "/deprecationWarning")
                .map(str::to_string)
                .unwrap_or_else(|| format!("{group}/{version} {} is deprecated", names.kind))
        });
        let strategy = CustomStrategy {
            group: group.clone(),
            version: version.clone(),
            kind: names.kind.clone(),
            schema: Arc::new(schema),
            raw_schema: raw,
            columns,
            selectable,
            status,
        };
        out.push(ResourceInfo {
            group: group.clone(),
            version,
            kind: names.kind.clone(),
            plural: names.plural.clone(),
            singular: names.singular.clone(),
            short_names: names.short_names.clone(),
            categories: names.categories.clone(),
            namespaced,
            status,
            scale,
            strategic_merge: false,
            storage_version: storage_version.clone(),
            deprecation,
            store_prefix: format!("{group}/{}/", names.plural),
            terminating,
            list_kind: names.list_kind.clone(),
            conversion: None,
            conversion_webhook: conversion_webhook.clone(),
            strategy: Arc::new(strategy),
            hooks: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn widget_crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
                        "status": {"type": "object", "properties": {"replicas": {"type": "integer"}, "selector": {"type": "string"}}}}}},
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}},
                     "additionalPrinterColumns": [{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}]},
                    {"name": "v1beta1", "served": true, "storage": false, "deprecated": true,
                     "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
                ]}
        })
    }

    #[test]
    fn a_good_crd_validates_and_serves_each_version() {
        let mut crd = widget_crd();
        on_create(&mut crd);
        assert_eq!(validate(&crd), vec![]);
        assert_eq!(crd["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(crd["metadata"]["finalizers"][0], CLEANUP_FINALIZER);
        let names = Names::of(&crd["spec"]["names"]);
        let infos = resources_of(&crd, &names, false).unwrap();
        assert_eq!(infos.len(), 2);
        let v1 = &infos[0];
        assert_eq!(v1.store_prefix, "example.com/widgets/");
        assert_eq!(
            v1.scale.as_ref().unwrap().selector,
            Some(SelectorAt::String("/status/selector".into()))
        );
        assert!(v1.status && !v1.strategic_merge && v1.deprecation.is_none());
        assert_eq!(infos[1].storage_version, "v1");
        assert_eq!(
            infos[1].deprecation.as_deref(),
            Some("example.com/v1beta1 Widget is deprecated")
        );
    }

    #[test]
    fn every_problem_of_a_bad_crd_is_reported() {
        let crd = json!({
            "metadata": {"name": "wrong"},
            "spec": {"group": "nodot", "scope": "Galaxy", "conversion": {"strategy": "Webhook"},
                "names": {"plural": "Widgets", "kind": "wid get"},
                "versions": [
                    {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "properties": {"a": {}}}},
                     "subresources": {"scale": {"specReplicasPath": ".status.x", "statusReplicasPath": ".status['a/b']"}},
                     "selectableFields": [{"jsonPath": "{.spec.color}"}],
                     "additionalPrinterColumns": [{"name": "X", "type": "float", "jsonPath": "spec"}]},
                    {"name": "v1", "served": true, "storage": true}
                ]}
        });
        let fields: Vec<String> = validate(&crd).into_iter().map(|e| e.field).collect();
        for want in [
            "spec.group",
            "metadata.name",
            "spec.names.plural",
            "spec.names.kind",
            "spec.scope",
            "spec.conversion.webhook",
            "spec.versions[1].name",
            "spec.versions",
            "spec.versions[0].schema.openAPIV3Schema.properties[a].type",
            "spec.versions[0].subresources.scale.specReplicasPath",
            "spec.versions[0].subresources.scale.statusReplicasPath",
            "spec.versions[0].selectableFields[0].jsonPath",
            "spec.versions[0].additionalPrinterColumns[0].type",
            "spec.versions[0].additionalPrinterColumns[0].jsonPath",
            "spec.versions[1].schema.openAPIV3Schema",
        ] {
            assert!(
                fields.iter().any(|f| f == want),
                "{want} not in {fields:#?}"
            );
        }
    }
}
