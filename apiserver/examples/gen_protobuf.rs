//! Generates `apiserver/src/protobuf/messages.rs`: the protobuf field table of every message the
//! built-in resources (and DeleteOptions, Scale, Binding, the access reviews) are made of.
//!
//! Field numbers come from the Kubernetes .proto definitions as the k8s-pb crate publishes them
//! (prost structs with `#[prost(..., tag = "N")]`); JSON names and which fields are required
//! come from the k8s-openapi schemas the server serves, so the table covers exactly the served
//! schema (fields of newer Kubernetes versions are left out; the `every_served_field_has_a_number`
//! unit test catches the reverse). Prost renames things (`podIPs` → `pod_i_ps`, `JSONSchemaProps` →
//! `JsonSchemaProps`): names are matched ignoring case, `_`, `-` and `$`.
//!
//! ```text
//! # fetch k8s-pb's sources (any scratch crate depending on k8s-pb = "=0.9.0", then `cargo fetch`)
//! cargo run -p capstan-apiserver --example gen_protobuf -- \
//!     ~/.cargo/registry/src/index.crates.io-*/k8s-pb-0.9.0/src > apiserver/src/protobuf/messages.rs
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use schemars::generate::SchemaSettings;
use serde_json::Value;

/// A field as prost declares it.
#[derive(Debug, Clone)]
struct ProstField {
    name: String,
    tag: u32,
    /// string, int32, int64, bool, double, bytes, message, map:string, map:bytes, map:message
    kind: String,
    repeated: bool,
    /// The message type (of the field, or of a map's values), as a full prost path.
    message: Option<String>,
}

fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '_' | '-' | '$'))
        .flat_map(char::to_lowercase)
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.file_name().is_some_and(|n| n == "mod.rs") {
            out.push(p);
        }
    }
}

/// Resolves `super::super::meta::v1::ObjectMeta` (or `ObjectMeta`) seen in module `module`.
fn resolve(module: &[String], path: &str) -> String {
    let mut base: Vec<String> = module.to_vec();
    let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    while parts.first() == Some(&"super") {
        base.pop();
        parts.remove(0);
    }
    base.extend(parts.iter().map(|s| s.to_string()));
    base.join("::")
}

/// Every prost message: full path (`api::core::v1::Pod`) → fields.
fn parse_prost(src: &Path) -> BTreeMap<String, Vec<ProstField>> {
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut out = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let module: Vec<String> = rel
            .parent()
            .map(|p| {
                p.components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let text = std::fs::read_to_string(&file).expect("readable");
        let lines: Vec<&str> = text.lines().collect();
        let mut current: Option<(String, Vec<ProstField>)> = None;
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i].trim();
            if let Some(rest) = line.strip_prefix("pub struct ") {
                if let Some((name, fields)) = current.take() {
                    out.insert(name, fields);
                }
                let name = rest.split_whitespace().next().unwrap_or_default();
                let mut full = module.clone();
                full.push(name.to_string());
                current = Some((full.join("::"), Vec::new()));
            } else if let Some(attr) = line.strip_prefix("#[prost(") {
                // The declaration follows: `pub name: Type,` possibly over several lines.
                let mut decl = String::new();
                let mut j = i + 1;
                while j < lines.len() {
                    decl.push_str(lines[j].trim());
                    let open = decl.matches('<').count();
                    if lines[j].trim_end().ends_with(',') && open == decl.matches('>').count() {
                        break;
                    }
                    j += 1;
                }
                i = j;
                let Some((name, ty)) = decl.strip_prefix("pub ").and_then(|d| d.split_once(':'))
                else {
                    continue;
                };
                let name = name.trim().trim_start_matches("r#").to_string();
                let tag: u32 = attr
                    .split("tag = \"")
                    .nth(1)
                    .and_then(|t| t.split('"').next())
                    .and_then(|t| t.parse().ok())
                    .expect("a tag");
                let repeated = attr.contains("repeated");
                let kind = if let Some(map) = attr.split("map = \"").nth(1) {
                    let value = map.split('"').next().unwrap_or_default();
                    format!("map:{}", value.rsplit(", ").next().unwrap_or_default())
                } else {
                    attr.split([',', ' '])
                        .next()
                        .unwrap_or_default()
                        .to_string()
                };
                let message = if kind == "message" || kind == "map:message" {
                    let mut t = ty.trim().trim_end_matches(',').to_string();
                    for wrapper in [
                        "::core::option::Option<",
                        "::prost::alloc::vec::Vec<",
                        "::prost::alloc::boxed::Box<",
                        "::prost::alloc::collections::BTreeMap<",
                        "::prost::alloc::string::String,",
                    ] {
                        t = t.replace(wrapper, "");
                    }
                    let t = t.replace('>', "");
                    Some(resolve(&module, t.trim().trim_end_matches(',')))
                } else {
                    None
                };
                if let Some((_, fields)) = current.as_mut() {
                    fields.push(ProstField {
                        name,
                        tag,
                        kind,
                        repeated,
                        message,
                    });
                }
            }
            i += 1;
        }
        if let Some((name, fields)) = current.take() {
            out.insert(name, fields);
        }
    }
    out
}

/// `api::core::v1::Pod` → the package part of its OpenAPI name (`io.k8s.api.core.v1`).
fn package_of(prost: &str) -> (String, String) {
    let (module, name) = prost.rsplit_once("::").expect("a path");
    (
        format!(
            "io.k8s.{}",
            module
                .replace("::", ".")
                .replace("apiextensions_apiserver", "apiextensions-apiserver")
        ),
        name.to_string(),
    )
}

fn main() {
    let src = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: gen_protobuf K8S_PB_SRC_DIR"),
    );
    let prost = parse_prost(&src);

    // The served schemas, as /openapi/v3 builds them.
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut kinds = BTreeSet::new();
    let ref_name = |s: &schemars::Schema| {
        s.as_value()
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.rsplit('/').next())
            .expect("a $ref")
            .to_string()
    };
    for r in capstan_apiserver::builtins::builtins() {
        if let Some(schema) = r.strategy.openapi_schema(&mut generator) {
            kinds.insert((r.api_version(), r.kind.clone(), ref_name(&schema)));
        }
    }
    let extra = [
        (
            "autoscaling/v1",
            "Scale",
            generator.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>(),
        ),
        (
            "v1",
            "Binding",
            generator.subschema_for::<k8s_openapi::api::core::v1::Binding>(),
        ),
        // The reviews kubectl's `auth can-i` and `auth whoami` post (auth::reviews).
        (
            "authentication.k8s.io/v1",
            "SelfSubjectReview",
            generator.subschema_for::<k8s_openapi::api::authentication::v1::SelfSubjectReview>(),
        ),
        (
            "authentication.k8s.io/v1",
            "TokenReview",
            generator.subschema_for::<k8s_openapi::api::authentication::v1::TokenReview>(),
        ),
        // serviceaccounts/NAME/token (`kubectl create token`).
        (
            "authentication.k8s.io/v1",
            "TokenRequest",
            generator.subschema_for::<k8s_openapi::api::authentication::v1::TokenRequest>(),
        ),
        (
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            generator
                .subschema_for::<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview>(),
        ),
        (
            "authorization.k8s.io/v1",
            "SubjectAccessReview",
            generator.subschema_for::<k8s_openapi::api::authorization::v1::SubjectAccessReview>(),
        ),
        (
            "authorization.k8s.io/v1",
            "LocalSubjectAccessReview",
            generator
                .subschema_for::<k8s_openapi::api::authorization::v1::LocalSubjectAccessReview>(),
        ),
        (
            "authorization.k8s.io/v1",
            "SelfSubjectRulesReview",
            generator
                .subschema_for::<k8s_openapi::api::authorization::v1::SelfSubjectRulesReview>(),
        ),
    ];
    for (v, k, s) in &extra {
        kinds.insert((v.to_string(), k.to_string(), ref_name(s)));
    }
    let delete_options = ref_name(
        &generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>(),
    );
    let defs = generator.take_definitions(true);

    // OpenAPI name → prost path, matched by package and case-insensitive name.
    let mut by_key: BTreeMap<(String, String), String> = BTreeMap::new();
    for path in prost.keys() {
        let (pkg, name) = package_of(path);
        by_key.insert((pkg, normalize(&name)), path.clone());
    }
    let openapi_of = |prost_path: &str| -> String {
        let (pkg, name) = package_of(prost_path);
        defs.keys()
            .find(|d| {
                d.rsplit_once('.')
                    .is_some_and(|(p, n)| p == pkg && normalize(n) == normalize(&name))
            })
            .cloned()
            .unwrap_or_else(|| format!("{pkg}.{name}"))
    };
    // Their JSON form is not an object of their fields: decoded by hand (protobuf/mod.rs).
    let special = |name: &str| {
        [
            "io.k8s.apimachinery.pkg.apis.meta.v1.Time",
            "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime",
            "io.k8s.apimachinery.pkg.apis.meta.v1.Duration",
            "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1",
            "io.k8s.apimachinery.pkg.api.resource.Quantity",
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
            "io.k8s.apimachinery.pkg.runtime.RawExtension",
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON",
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray",
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool",
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray",
            "io.k8s.api.authentication.v1.ExtraValue",
            "io.k8s.api.authorization.v1.ExtraValue",
        ]
        .contains(&name)
    };

    let mut queue: VecDeque<String> = kinds.iter().map(|(_, _, d)| d.clone()).collect();
    queue.push_back(delete_options);
    let mut done = BTreeMap::new();
    let mut no_message = BTreeSet::new();
    let mut unmatched = Vec::new();
    let mut inlined = Vec::new();
    let mut inline_parent: BTreeMap<String, String> = BTreeMap::new();
    while let Some(def) = queue.pop_front() {
        if done.contains_key(&def) || no_message.contains(&def) || special(&def) {
            continue;
        }
        let (pkg, name) = def.rsplit_once('.').expect("a dotted name");
        let Some(path) = by_key.get(&(pkg.to_string(), normalize(name))) else {
            // APIService: kube-aggregator's types are not in k8s-pb. JSON only (415).
            eprintln!("no protobuf message for {def}");
            no_message.insert(def);
            continue;
        };
        // An inlined struct without a schema of its own reads its parent's.
        let schema = defs
            .get(&def)
            .or_else(|| inline_parent.get(&def).and_then(|p| defs.get(p)))
            .cloned()
            .unwrap_or(Value::Null);
        let props: Vec<String> = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut fields = Vec::new();
        for f in &prost[path] {
            let Some(json) = props.iter().find(|p| normalize(p) == normalize(&f.name)) else {
                // An embedded Go struct (`VolumeSource` in `Volume`, `ProbeHandler` in `Probe`):
                // its fields are the parent's in JSON.
                let inline = f.message.as_deref().filter(|m| {
                    prost.get(*m).is_some_and(|fs| {
                        !fs.is_empty()
                            && fs
                                .iter()
                                .any(|c| props.iter().any(|p| normalize(p) == normalize(&c.name)))
                    })
                });
                match inline {
                    Some(m) if f.kind == "message" && !f.repeated => {
                        let m = openapi_of(m);
                        queue.push_back(m.clone());
                        inlined.push((def.clone(), m.clone()));
                        inline_parent.insert(m.clone(), def.clone());
                        fields.push(format!(
                            "F {{ tag: {}, name: \"\", ty: Inline({m:?}), rep: false, req: false }},",
                            f.tag
                        ));
                    }
                    _ => unmatched.push(format!("{def}.{} (tag {})", f.name, f.tag)),
                }
                continue;
            };
            let msg = f.message.as_deref().map(openapi_of);
            if let Some(m) = &msg {
                queue.push_back(m.clone());
            }
            let ty = match (f.kind.as_str(), &msg) {
                ("string", _) => "Str".to_string(),
                ("int32", _) => "Int32".to_string(),
                ("int64", _) => "Int64".to_string(),
                ("bool", _) => "Bool".to_string(),
                ("double", _) => "Double".to_string(),
                ("bytes", _) => "Bytes".to_string(),
                ("map:string", _) => "MapStr".to_string(),
                ("map:bytes", _) => "MapBytes".to_string(),
                ("message", Some(m)) => format!("Msg({m:?})"),
                ("map:message", Some(m)) => format!("MapMsg({m:?})"),
                (other, _) => panic!("{def}.{}: unhandled prost kind {other}", f.name),
            };
            fields.push(format!(
                "F {{ tag: {}, name: {json:?}, ty: {ty}, rep: {}, req: {} }},",
                f.tag,
                f.repeated,
                required.contains(&json.as_str())
            ));
        }
        done.insert(def, fields);
    }
    for (parent, m) in &inlined {
        eprintln!("inlined: {m} in {parent}");
    }
    for u in &unmatched {
        eprintln!("left out (not in the served schema): {u}");
    }

    println!(
        "// @generated by `cargo run -p capstan-apiserver --example gen_protobuf -- K8S_PB_SRC` from\n\
         // k8s-pb 0.9.0's field numbers and the served k8s-openapi schemas. Do not edit.\n\
         use super::{{Field as F, Message as M, Ty::*}};\n\n\
         pub(super) static MESSAGES: &[M] = &["
    );
    for (def, fields) in &done {
        println!("    M {{ name: {def:?}, fields: &[");
        for f in fields {
            println!("        {f}");
        }
        println!("    ]}},");
    }
    println!("];\n\n/// (apiVersion, kind, message) of every kind with a protobuf form.");
    println!("pub(super) static KINDS: &[(&str, &str, &str)] = &[");
    for (v, k, d) in kinds.iter().filter(|(_, _, d)| !no_message.contains(d)) {
        println!("    ({v:?}, {k:?}, {d:?}),");
    }
    println!("];");
}
