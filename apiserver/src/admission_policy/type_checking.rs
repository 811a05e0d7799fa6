//! `status.typeChecking` of ValidatingAdmissionPolicies, as kube-controller-manager's
//! validatingadmissionpolicy-status controller writes it (its checker is
//! k8s.io/apiserver/pkg/admission/plugin/policy/validating/typechecking.go).
//!
//! The kinds a policy matches are resolved from `matchConstraints.resourceRules` — rules
//! with a wildcard group or version are skipped, as are wildcard resources and subresources,
//! and at most 10 kinds are checked. Each validation's `expression` and `messageExpression`
//! is checked against each kind's OpenAPI schema (`object`, `oldObject`), with `params`
//! typed by `paramKind`'s schema and `variables` by their own expressions. A problem becomes
//! an `expressionWarnings` entry (`spec.validations[0].expression`: `apps/v1,
//! Kind=Deployment: ERROR: <input>:1:22: ...`). The warnings change nothing at admission:
//! the policy is enforced as written.
//!
//! Every API server runs the loop (as the CRD controller): a policy whose generation is
//! newer than `status.observedGeneration` is checked and its status written; each replica
//! computes the same status, so they do not fight.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::ApiServer;
use crate::cel::check::{self, Ty};
use crate::object::ObjectExt;
use crate::openapi::OpenApiDocs;
use crate::registry::Registry;
use crate::request::Target;

const PLURAL: &str = "validatingadmissionpolicies";
/// kube's `maxTypesToCheck`.
const MAX_TYPES: usize = 10;
const MANAGER: &str = "validatingadmissionpolicy-status-controller";

/// (group, version, kind) of what a policy matches, sorted, at most [`MAX_TYPES`].
fn kinds_to_check(registry: &Registry, policy: &Value) -> Vec<(String, String, String)> {
    let mut kinds = BTreeSet::new();
    let rules = policy["spec"]["matchConstraints"]["resourceRules"].as_array();
    for rule in rules.into_iter().flatten() {
        let list = |key: &str| -> Vec<String> {
            let mut v = crate::object::strings(rule.get(key));
            v.sort();
            v
        };
        let (groups, versions) = (list("apiGroups"), list("apiVersions"));
        if groups.is_empty()
            || versions.is_empty()
            || groups.iter().chain(&versions).any(|x| x.contains('*'))
        {
            continue;
        }
        let resources: Vec<String> = list("resources")
            .into_iter()
            .filter(|r| !r.contains(['*', '/']))
            .collect();
        for g in &groups {
            for v in &versions {
                for r in &resources {
                    if let Some(info) = registry.get(g, v, r) {
                        kinds.insert((g.clone(), v.clone(), info.kind.clone()));
                        if kinds.len() == MAX_TYPES {
                            return kinds.into_iter().collect();
                        }
                    }
                }
            }
        }
    }
    kinds.into_iter().collect()
}

/// The root schema of a kind in its group/version's OpenAPI document.
fn root_schema<'a>(
    docs: &'a OpenApiDocs,
    group: &str,
    version: &str,
    kind: &str,
) -> Option<(&'a Map<String, Value>, &'a Value)> {
    let doc = docs.1.get(&crate::openapi::v3::gv_path(group, version))?;
    let schemas = doc["components"]["schemas"].as_object()?;
    let root = schemas.values().find(|s| {
        s["x-kubernetes-group-version-kind"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|g| g["group"] == group && g["version"] == version && g["kind"] == kind)
    })?;
    Some((schemas, root))
}

/// The expression warnings of a policy (empty when every expression checks).
pub fn warnings(api: &ApiServer, policy: &Value) -> Vec<Value> {
    warnings_in(&api.registry, || api.openapi(), policy)
}

/// [`warnings`] with the registry and its OpenAPI documents (built only when some kind is
/// to be checked).
fn warnings_in(
    registry: &Registry,
    docs: impl FnOnce() -> Arc<OpenApiDocs>,
    policy: &Value,
) -> Vec<Value> {
    let kinds = kinds_to_check(registry, policy);
    if kinds.is_empty() {
        return Vec::new();
    }
    let docs = docs();
    let spec = &policy["spec"];
    let params = spec["paramKind"]["kind"].as_str().map(|kind| {
        let api_version = spec["paramKind"]["apiVersion"].as_str().unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        root_schema(&docs, group, version, kind)
    });
    let compiled = |src: &str| crate::cel::compile(src).ok();
    let variables: Vec<(String, Option<crate::cel::Program>)> = spec["variables"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            (
                v["name"].as_str().unwrap_or_default().to_string(),
                compiled(v["expression"].as_str().unwrap_or_default()),
            )
        })
        .collect();
    let mut out = Vec::new();
    for (i, validation) in spec["validations"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for field in ["expression", "messageExpression"] {
            let Some(program) = validation[field]
                .as_str()
                .filter(|s| !s.is_empty())
                .and_then(compiled)
            else {
                continue;
            };
            let mut text = Vec::new();
            for (group, version, kind) in &kinds {
                let Some((defs, root)) = root_schema(&docs, group, version, kind) else {
                    continue;
                };
                let object = match Ty::of_schema(defs, root) {
                    Ty::Object(s, _) => Ty::Object(s, kind.as_str().into()),
                    other => other,
                };
                let mut vars = vec![
                    ("object", object.clone()),
                    ("oldObject", object),
                    ("request", Ty::Dyn),
                    ("namespaceObject", Ty::Dyn),
                    ("authorizer", Ty::Dyn),
                ];
                // params' schema lives in another document; a missing one is `dyn`.
                let param_ty = params.as_ref().map(|p| match p {
                    Some((pdefs, proot)) => Ty::of_schema(pdefs, proot),
                    None => Ty::Dyn,
                });
                if let Some(p) = param_ty {
                    vars.push(("params", p));
                }
                let mut declared: Vec<(String, Ty)> = Vec::new();
                for (name, program) in &variables {
                    let ty = match program {
                        Some(p) => {
                            let mut scope = vars.clone();
                            scope.push(("variables", Ty::Record(Rc::new(declared.clone()))));
                            check::check(p.expression(), p.source_info(), defs, &scope).0
                        }
                        None => Ty::Dyn,
                    };
                    declared.push((name.clone(), ty));
                }
                vars.push(("variables", Ty::Record(Rc::new(declared))));
                let (_, issues) =
                    check::check(program.expression(), program.source_info(), defs, &vars);
                if !issues.is_empty() {
                    let gv = format!("{group}/{version}");
                    text.push(format!("{gv}, Kind={kind}: {issues}\n"));
                }
            }
            if !text.is_empty() {
                out.push(json!({
                    "fieldRef": format!("spec.validations[{i}].{field}"),
                    "warning": text.join("\n"),
                }));
            }
        }
    }
    out
}

/// The status a policy should have at its generation (conditions kept).
fn desired_status(api: &ApiServer, policy: &Value) -> Value {
    let mut status = match &policy["status"] {
        Value::Object(m) => Value::Object(m.clone()),
        _ => json!({}),
    };
    let warnings = warnings(api, policy);
    status["observedGeneration"] = policy["metadata"]["generation"].clone();
    status["typeChecking"] = if warnings.is_empty() {
        json!({})
    } else {
        json!({ "expressionWarnings": warnings })
    };
    status
}

fn needs_check(policy: &Value) -> bool {
    let generation = policy["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = policy["status"]["observedGeneration"].as_i64().unwrap_or(0);
    generation > observed && !policy.is_deleting()
}

/// Starts the loop: woken by every policy change, and every 5 s to retry failed writes.
pub fn start(api: &Arc<ApiServer>) -> crate::errors::ApiResult<()> {
    let Some(info) = api.registry.get(super::GROUP, "v1", PLURAL) else {
        return Ok(());
    };
    let cacher = api.cacher(&info)?;
    let mut rx = cacher.subscribe_revision();
    let weak_api = Arc::downgrade(api);
    let weak_cacher = Arc::downgrade(&cacher);
    drop(cacher);
    tokio::spawn(async move {
        loop {
            let (Some(api), Some(cacher)) = (weak_api.upgrade(), weak_cacher.upgrade()) else {
                return;
            };
            let (policies, _) = cacher.values("");
            drop(cacher);
            for policy in policies.iter().filter(|p| needs_check(p)) {
                let name = policy.name().unwrap_or_default().to_string();
                let target = Target {
                    info: info.clone(),
                    namespace: None,
                    name: Some(name.clone()),
                    subresource: Some("status".into()),
                };
                let result = api
                    .guaranteed_update(&target, None, false, Some(MANAGER), |live| {
                        let mut new = live.clone();
                        if needs_check(live) {
                            new["status"] = desired_status(&api, live);
                        }
                        Ok(new)
                    })
                    .await;
                if let Err(e) = result
                    && e.code != 404
                {
                    tracing::warn!(policy = name, error = %e.message, "writing the policy's type checking failed; will retry");
                }
            }
            drop(api);
            let changed = tokio::time::timeout(Duration::from_secs(5), rx.changed()).await;
            if matches!(changed, Ok(Err(_))) {
                return;
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rules: Value, params: Option<(&str, &str)>, expressions: &[&str]) -> Vec<Value> {
        let registry = Registry::with(crate::builtins::builtins());
        let docs = || Arc::new(crate::openapi::v3::build(&registry));
        let mut spec = json!({
            "matchConstraints": {"resourceRules": rules},
            "validations": expressions.iter().map(|e| json!({"expression": e})).collect::<Vec<_>>(),
        });
        if let Some((api_version, kind)) = params {
            spec["paramKind"] = json!({"apiVersion": api_version, "kind": kind});
        }
        warnings_in(&registry, docs, &json!({ "spec": spec }))
    }

    fn rule(group: &str, version: &str, resources: &[&str]) -> Value {
        json!([{"apiGroups": [group], "apiVersions": [version], "operations": ["*"], "resources": resources}])
    }

    #[test]
    fn policies_people_write_check_clean_against_the_built_in_schemas() {
        let workloads = check(
            rule("apps", "v1", &["deployments", "replicasets"]),
            Some(("v1", "ConfigMap")),
            &[
                "object.spec.template.spec.containers.all(c, c.image.startsWith('registry.example.com/'))",
                "object.spec.template.spec.containers.all(c, has(c.resources.limits) && 'memory' in c.resources.limits)",
                "object.spec.replicas <= int(params.data['max'])",
                "object.metadata.labels['team'] == params.data.team",
                "!has(object.spec.template.spec.hostNetwork) || !object.spec.template.spec.hostNetwork",
                "object.spec.template.spec.containers.exists_one(c, c.name == 'app')",
                "object.metadata.?ownerReferences.orValue([]).all(o, o.kind != 'Job')",
                "object.spec.selector.matchLabels.all(k, k in object.spec.template.metadata.labels)",
                "object.spec.template.spec.?securityContext.?runAsNonRoot.orValue(false) == true",
                "object.spec.template.spec.containers.map(c, c.ports.map(p, p.containerPort)).all(ps, ps.all(p, p > 1024))",
                "object.metadata.creationTimestamp == null || object.metadata.generation >= 1",
            ],
        );
        assert_eq!(workloads, Vec::<Value>::new());
        // ReplicaSets have no strategy: a warning for them only.
        let strategy = check(
            rule("apps", "v1", &["deployments", "replicasets"]),
            None,
            &["object.spec.strategy.type == 'RollingUpdate'"],
        );
        let text = strategy[0]["warning"].as_str().unwrap_or_default();
        assert!(
            text.starts_with(
                "apps/v1, Kind=ReplicaSet: ERROR: <input>:1:12: undefined field 'strategy'"
            ),
            "{text}"
        );
        assert!(!text.contains("Kind=Deployment"), "{text}");
        let pods = check(
            rule("", "v1", &["pods"]),
            None,
            &["object.kind == 'Pod' ? object.spec.containers.size() > 0 : true"],
        );
        assert_eq!(pods, Vec::<Value>::new());
    }

    #[test]
    fn each_matched_kind_gets_its_own_line() {
        let mut rules = rule("apps", "v1", &["deployments", "deployments/scale"]);
        if let Some(list) = rules.as_array_mut() {
            list.push(rule("", "v1", &["pods", "services"])[0].clone());
        }
        let warnings = check(
            rules,
            None,
            &["object.spec.replicas > 1 && object.spec.paused"],
        );
        let text = warnings[0]["warning"].as_str().unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("Kind=")).collect();
        assert_eq!(
            lines,
            [
                "/v1, Kind=Pod: ERROR: <input>:1:12: undefined field 'replicas'",
                "/v1, Kind=Service: ERROR: <input>:1:12: undefined field 'replicas'",
            ],
            "{text}"
        );
    }

    #[test]
    fn wildcards_and_unknown_resources_are_not_checked() {
        for rules in [
            rule("*", "v1", &["deployments"]),
            rule("apps", "*", &["deployments"]),
            rule("apps", "v1", &["*", "deployments/status"]),
            rule("example.com", "v1", &["nothings"]),
        ] {
            assert_eq!(
                check(rules, None, &["object.nope == 1"]),
                Vec::<Value>::new()
            );
        }
    }
}
