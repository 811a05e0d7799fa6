//! `/openapi/v3`: the root (one URL per group/version) and an OpenAPI 3.0 document per
//! group/version, generated from the registry and the k8s-openapi types' schemas. It carries what
//! kubectl reads (see shared/notes/kubectl-contract.md §3.2–3.3):
//! - every operation's `x-kubernetes-group-version-kind` and `x-kubernetes-action`;
//! - PATCH request bodies listing the patch content types the resource accepts;
//! - the `fieldValidation` query parameter on writes, so kubectl leaves validation to the server;
//! - each kind's schema tagged with its GVK (for `kubectl explain`) and the list fields' patch
//!   metadata (`x-kubernetes-patch-merge-key`/`-strategy`, `x-kubernetes-list-type`/`-map-keys`);
//! - the declarative defaults Kubernetes' schemas show (`default: TCP` on ports' protocol).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::registry::{Registry, ResourceInfo};

/// `api/v1` or `apis/GROUP/VERSION`: the key of a group/version in the root document.
pub(crate) fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The group/versions served, each with its resources.
fn group_versions(registry: &Registry) -> BTreeMap<String, Vec<std::sync::Arc<ResourceInfo>>> {
    let mut gvs: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for r in registry.all() {
        gvs.entry(gv_path(&r.group, &r.version))
            .or_default()
            .push(r);
    }
    gvs
}

/// The root (`{"paths": {"apis/apps/v1": {"serverRelativeURL": "/openapi/v3/apis/apps/v1?hash=…"}}}`)
/// and every group/version's document, keyed like the root's paths.
pub fn build(registry: &Registry) -> (Value, HashMap<String, Value>) {
    let mut paths = Map::new();
    let mut docs = HashMap::new();
    for key in group_versions(registry).keys() {
        let Some(doc) = document(registry, key) else {
            continue;
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        doc.to_string().hash(&mut h);
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={:016X}", h.finish())}),
        );
        docs.insert(key.clone(), doc);
    }
    (json!({ "paths": paths }), docs)
}

/// The root document alone.
pub fn root(registry: &Registry) -> Value {
    build(registry).0
}

fn param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn write_params() -> Vec<Value> {
    vec![
        param(
            "dryRun",
            "When present, indicates that modifications should not be persisted. Valid values: All.",
        ),
        param(
            "fieldManager",
            "A name associated with the actor or entity that is making these changes.",
        ),
        param(
            "fieldValidation",
            "How the server handles fields it does not know: Ignore, Warn or Strict.",
        ),
    ]
}

fn path_params(namespaced: bool, named: bool) -> Vec<Value> {
    let mut p = Vec::new();
    if named {
        p.push(json!({"name": "name", "in": "path", "required": true, "description": "name of the object", "schema": {"type": "string", "uniqueItems": true}}));
    }
    if namespaced {
        p.push(json!({"name": "namespace", "in": "path", "required": true, "description": "object name and auth scope, such as for teams and projects", "schema": {"type": "string", "uniqueItems": true}}));
    }
    p
}

/// The OpenAPI document of one group/version (`api/v1`, `apis/apps/v1`), or None.
pub fn document(registry: &Registry, gv: &str) -> Option<Value> {
    let resources = group_versions(registry).remove(gv)?;
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    let mut kinds = Vec::new();
    for r in &resources {
        let Some(schema) = r.strategy.openapi_schema(&mut generator) else {
            continue;
        };
        let object_ref = schema.as_value().clone();
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        kinds.push((object_ref.clone(), gvk.clone()));
        let base = if r.group.is_empty() {
            format!("/api/{}", r.version)
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        let collection = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let ok = |schema: &Value| json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}});
        let op = |action: &str| {
            json!({
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "responses": ok(&object_ref),
            })
        };
        let body =
            json!({"content": {"application/json": {"schema": object_ref}}, "required": true});
        let mut post = op("post");
        post["requestBody"] = body.clone();
        post["parameters"] = json!(write_params());
        let mut list = op("list");
        list["responses"] = ok(&json!({"type": "object"}));
        paths.insert(
            collection.clone(),
            json!({
                "get": list,
                "post": post,
                "parameters": path_params(r.namespaced, false),
            }),
        );
        let mut put = op("put");
        put["requestBody"] = body;
        put["parameters"] = json!(write_params());
        let mut patch = op("patch");
        let mut patch_types = Map::new();
        let mut kinds_of_patch = vec![
            "application/json-patch+json",
            "application/merge-patch+json",
        ];
        if r.strategic_merge {
            kinds_of_patch.push("application/strategic-merge-patch+json");
        }
        for ct in kinds_of_patch {
            patch_types.insert(ct.into(), json!({"schema": {"type": "object"}}));
        }
        patch["requestBody"] = json!({"content": patch_types, "required": true});
        let mut patch_params = write_params();
        patch_params.push(param(
            "force",
            "Force is going to \"force\" Apply requests.",
        ));
        patch["parameters"] = json!(patch_params);
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": op("get"),
                "put": put,
                "patch": patch,
                "delete": op("delete"),
                "parameters": path_params(r.namespaced, true),
            }),
        );
    }
    let mut schemas = generator.take_definitions(true);
    for (reference, gvk) in kinds {
        if let Some(name) = reference
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.rsplit('/').next())
            && let Some(Value::Object(s)) = schemas.get_mut(name)
        {
            s.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
        }
    }
    annotate_patch_metadata(&mut schemas);
    annotate_defaults(&mut schemas);
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The list fields of the built-in types that merge rather than replace, as their Go struct tags
/// declare them: (schema, property, merge key or "" for a set of scalars, retainKeys too).
const PATCH_METADATA: &[(&str, &str, &str)] = &[
    ("io.k8s.api.core.v1.PodSpec", "containers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "volumes", "name"),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", "name"),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", "ip"),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        "topologyKey",
    ),
    ("io.k8s.api.core.v1.PodSpec", "resourceClaims", "name"),
    ("io.k8s.api.core.v1.PodSpec", "schedulingGates", "name"),
    ("io.k8s.api.core.v1.Container", "env", "name"),
    ("io.k8s.api.core.v1.Container", "ports", "containerPort"),
    ("io.k8s.api.core.v1.Container", "volumeMounts", "mountPath"),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        "devicePath",
    ),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", "name"),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        "containerPort",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        "mountPath",
    ),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "port"),
    ("io.k8s.api.core.v1.PodStatus", "conditions", "type"),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", "type"),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", "type"),
    ("io.k8s.api.core.v1.NamespaceStatus", "conditions", "type"),
    ("io.k8s.api.apps.v1.DeploymentStatus", "conditions", "type"),
    ("io.k8s.api.apps.v1.ReplicaSetStatus", "conditions", "type"),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "uid",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        "",
    ),
];

fn annotate_patch_metadata(schemas: &mut Map<String, Value>) {
    for (schema, field, key) in PATCH_METADATA {
        let Some(prop) = schemas
            .get_mut(*schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(*field))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        prop.insert("x-kubernetes-patch-strategy".into(), json!("merge"));
        if key.is_empty() {
            prop.insert("x-kubernetes-list-type".into(), json!("set"));
        } else {
            prop.insert("x-kubernetes-patch-merge-key".into(), json!(key));
            prop.insert("x-kubernetes-list-type".into(), json!("map"));
            prop.insert("x-kubernetes-list-map-keys".into(), json!([key]));
        }
    }
    for (schema, field) in [
        ("io.k8s.api.core.v1.PodSpec", "volumes"),
        ("io.k8s.api.apps.v1.DeploymentSpec", "strategy"),
    ] {
        if let Some(prop) = schemas
            .get_mut(schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(field))
            .and_then(Value::as_object_mut)
        {
            let strategy = if field == "volumes" {
                "merge,retainKeys"
            } else {
                "retainKeys"
            };
            prop.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
        }
    }
}

/// The declarative defaults Kubernetes' schemas carry (`ContainerPort.protocol: TCP` …).
fn annotate_defaults(schemas: &mut Map<String, Value>) {
    for (schema, field, default) in capstan_api::defaults::openapi_defaults() {
        if let Some(prop) = schemas
            .get_mut(schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(field))
            .and_then(Value::as_object_mut)
        {
            prop.insert("default".into(), default);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_tag_kinds_operations_and_patch_metadata() {
        let reg = Registry::with(crate::builtins::builtins());
        let root = root(&reg);
        assert!(
            root["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        assert!(root["paths"]["api/v1"].is_object());
        let doc = document(&reg, "apis/apps/v1").unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "apps", "version": "v1", "kind": "Deployment"})
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(
            patch["requestBody"]["content"]["application/strategic-merge-patch+json"].is_object()
        );
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert_eq!(
            schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]["x-kubernetes-patch-merge-key"],
            "name"
        );
        assert!(document(&reg, "apis/nope/v1").is_none());
        let core = document(&reg, "api/v1").unwrap();
        let schemas = &core["components"]["schemas"];
        for (schema, field, default) in [
            ("io.k8s.api.core.v1.ContainerPort", "protocol", json!("TCP")),
            ("io.k8s.api.core.v1.ServicePort", "protocol", json!("TCP")),
            ("io.k8s.api.core.v1.GRPCAction", "service", json!("")),
        ] {
            assert_eq!(
                schemas[schema]["properties"][field]["default"], default,
                "{schema}.{field}"
            );
        }
        assert!(
            schemas["io.k8s.api.core.v1.Container"]["properties"]["imagePullPolicy"]
                .get("default")
                .is_none(),
            "computed defaults are not in Kubernetes' schemas"
        );
    }
}
