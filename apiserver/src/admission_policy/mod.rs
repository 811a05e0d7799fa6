//! ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1): admission rules written as
//! CEL, applied to every write of every resource — built-ins and custom resources alike —
//! after the object's own validation, as kube-apiserver's ValidatingAdmissionPolicy plugin does.
//!
//! - [`policy`]: the two kinds compiled (once per change of either kind, from their watch
//!   caches, as the RBAC index is) and validated when written;
//! - [`Policies::admit`]: for each binding whose policy and `matchResources` cover the request
//!   (resource rules, excluded rules, namespace and object selectors), its params are found
//!   (`paramRef` by name or selector, `parameterNotFoundAction`), `matchConditions` decide
//!   whether it applies, `variables` are computed in order, and each failing validation acts
//!   as the binding says: **Deny** refuses the request (`ValidatingAdmissionPolicy 'p' with
//!   binding 'b' denied request: ...`, with the validation's reason and code), **Warn** adds a
//!   warning, **Audit** logs it. An expression that errors, or a policy that did not compile,
//!   follows `failurePolicy` (Fail refuses, Ignore lets the request through).
//!
//! The variables are Kubernetes': `object`, `oldObject`, `request`, `params`,
//! `namespaceObject`, `variables`. Each expression's cost is computed from the actual values
//! before it runs and held to Kubernetes' per-call limit.

pub mod policy;
pub mod type_checking;

use std::collections::HashMap;
use std::sync::Arc;

use capstan_api::selectors::Selector;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::cel::{self, cost};
use crate::errors::{ApiError, ApiResult};
use crate::object::ObjectExt;
use crate::registry::ResourceInfo;
use crate::watch_cache::derived::Derived;
use policy::{Binding, Policy, Request};

pub const GROUP: &str = "admissionregistration.k8s.io";

tokio::task_local! {
    /// Warnings admission adds to the response of the request this task serves.
    pub static WARNINGS: std::cell::RefCell<Vec<String>>;
}

tokio::task_local! {
    /// Annotations admission adds to the audit event of the request this task serves.
    pub static AUDIT: std::cell::RefCell<crate::audit::AuditAnnotations>;
}

pub(crate) fn warn(text: String) {
    let _ = WARNINGS.try_with(|w| w.borrow_mut().push(text));
}

/// Adds an annotation to the request's audit event (a later value for the same key wins).
pub(crate) fn annotate(key: String, value: String) {
    let _ = AUDIT.try_with(|a| a.borrow_mut().0.insert(key, value));
}

/// What is being admitted.
#[derive(Debug)]
pub struct Attributes<'a> {
    pub info: &'a ResourceInfo,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    /// CREATE, UPDATE or DELETE.
    pub operation: &'a str,
    pub object: Option<&'a Value>,
    pub old_object: Option<&'a Value>,
    pub dry_run: bool,
}

#[derive(Debug, Default)]
struct Compiled {
    policies: HashMap<String, Arc<Policy>>,
    bindings: Vec<Arc<Binding>>,
}

/// The compiled policies and bindings, rebuilt when either kind changes.
#[derive(Debug)]
pub struct Policies(Derived<Compiled>);

impl Default for Policies {
    fn default() -> Self {
        Policies(Derived::new(&[
            (GROUP, "v1", "validatingadmissionpolicies"),
            (GROUP, "v1", "validatingadmissionpolicybindings"),
        ]))
    }
}

impl Policies {
    fn current(&self, api: &ApiServer) -> Arc<Compiled> {
        self.0.get(api, |lists| {
            let policies = lists[0]
                .iter()
                .map(|v| {
                    let p = Policy::compile(v);
                    (p.name.clone(), Arc::new(p))
                })
                .collect();
            let mut bindings: Vec<Arc<Binding>> = lists[1]
                .iter()
                .map(|v| Arc::new(Binding::compile(v)))
                .collect();
            bindings.sort_by(|a, b| a.name.cmp(&b.name));
            Compiled { policies, bindings }
        })
    }

    /// Applies every policy bound to this request; `Err` when one denies it.
    pub fn admit(&self, api: &ApiServer, a: &Attributes) -> ApiResult<()> {
        // The policies' own kinds are admitted without them, so a bad policy can be fixed.
        if a.info.group == GROUP {
            return Ok(());
        }
        let compiled = self.current(api);
        if compiled.bindings.is_empty() {
            return Ok(());
        }
        let r = Request {
            group: &a.info.group,
            version: &a.info.version,
            resource: &a.info.plural,
            subresource: a.subresource.unwrap_or(""),
            operation: a.operation,
            namespaced: a.info.namespaced,
            name: a.name,
        };
        let mut namespace_object: Option<Option<Value>> = None;
        for b in &compiled.bindings {
            let Some(p) = compiled.policies.get(&b.policy) else {
                continue;
            };
            if !p.constraints.covers(&r) || b.resources.as_ref().is_some_and(|m| !m.covers(&r)) {
                continue;
            }
            let ns = namespace_object.get_or_insert_with(|| namespace_of(api, a));
            let selectors_match = [Some(&p.constraints), b.resources.as_ref()]
                .into_iter()
                .flatten()
                .all(|m| {
                    selected(
                        m.namespace_selector.as_ref(),
                        m.object_selector.as_ref(),
                        a,
                        ns.as_ref(),
                    )
                });
            if !selectors_match {
                continue;
            }
            self.apply(api, a, p, b, ns.as_ref())?;
        }
        Ok(())
    }

    fn apply(
        &self,
        api: &ApiServer,
        a: &Attributes,
        p: &Policy,
        b: &Binding,
        ns: Option<&Value>,
    ) -> ApiResult<()> {
        // A failed validation (or an error under failurePolicy Fail) does what the binding's
        // validationActions say.
        let act = |reason: &str, message: &str| -> ApiResult<()> {
            if b.warn {
                warn(format!(
                    "Validation failed for ValidatingAdmissionPolicy '{}' with binding '{}': {message}",
                    p.name, b.name
                ));
            }
            if b.audit {
                tracing::info!(policy = %p.name, binding = %b.name, resource = %a.info.plural, name = %a.name, %message,
                    "validation.policy.admission.k8s.io/validation_failure");
                // Kubernetes' annotation: a JSON list of every failure of the request.
                let key = "validation.policy.admission.k8s.io/validation_failure";
                let _ = AUDIT.try_with(|audit| {
                    let mut audit = audit.borrow_mut();
                    let mut list: Vec<Value> = (audit.0.get(key))
                        .and_then(|v| serde_json::from_str(v).ok())
                        .unwrap_or_default();
                    let actions: Vec<&str> =
                        [(b.deny, "Deny"), (b.warn, "Warn"), (b.audit, "Audit")]
                            .into_iter()
                            .filter_map(|(on, name)| on.then_some(name))
                            .collect();
                    list.push(
                        json!({"message": message, "policy": p.name, "binding": b.name,
                        "validationActions": actions}),
                    );
                    audit.0.insert(key.into(), Value::Array(list).to_string());
                });
            }
            if b.deny {
                return Err(denied(p, b, reason, message));
            }
            Ok(())
        };
        let failure = |why: String| -> ApiResult<()> {
            if p.fail_closed {
                act("Invalid", &why)
            } else {
                warn(format!(
                    "ValidatingAdmissionPolicy '{}' with binding '{}' was ignored: {why}",
                    p.name, b.name
                ));
                Ok(())
            }
        };
        if let Some(e) = p.broken.first() {
            return failure(e.clone());
        }
        let params: Vec<Option<Value>> = match (&p.param_kind, &b.param_ref) {
            (None, _) => vec![None],
            (Some(_), None) => {
                return failure("the policy has a paramKind but its binding no paramRef".into());
            }
            (Some(kind), Some(r)) => match find_params(api, kind, r, a.namespace) {
                Err(e) => return failure(e),
                Ok(found) if found.is_empty() => {
                    if r.deny_when_missing {
                        return act(
                            "Invalid",
                            "no params found for policy binding with `Deny` parameterNotFoundAction",
                        );
                    }
                    return Ok(());
                }
                Ok(found) => found.into_iter().map(Some).collect(),
            },
        };
        let request = request_json(a);
        for param in params {
            let null = Value::Null;
            let object = a.object.unwrap_or(&null);
            let old = a.old_object.unwrap_or(&null);
            let param_json = param.as_ref().unwrap_or(&null);
            let ns_json = ns.unwrap_or(&null);
            let shapes = [
                ("object", cost::Actual::One(object)),
                ("oldObject", cost::Actual::One(old)),
                ("request", cost::Actual::One(&request)),
                ("params", cost::Actual::One(param_json)),
                ("namespaceObject", cost::Actual::One(ns_json)),
            ];
            // Binding converts the whole value: only what the policy's expressions name.
            let mut ctx = cel::scope();
            for (name, v) in [
                ("object", object),
                ("oldObject", old),
                ("request", &request),
                ("params", param_json),
                ("namespaceObject", ns_json),
            ] {
                if p.uses.contains(name) {
                    ctx.add_variable_from_value(name, cel::value::from_json(v));
                }
            }
            let run = |program: &cel::Program,
                       ctx: &cel::Context,
                       what: &str|
             -> Result<cel::Value, String> {
                let c = cost::estimate(program.expression(), &shapes).unwrap_or(u64::MAX);
                if c > cel::PER_CALL_LIMIT {
                    return Err(format!(
                        "{what}: operation cancelled: actual cost limit exceeded"
                    ));
                }
                program.execute(ctx).map_err(|e| {
                    format!(
                        "expression '{what}' resulted in error: {}",
                        cel::error_text(&e)
                    )
                })
            };
            // Variables, in order, each seeing the ones before it.
            let mut vars: HashMap<String, cel::Value> = HashMap::new();
            if !p.variables.is_empty() {
                ctx.add_variable_from_value("variables", cel::Value::Map(vars.clone().into()));
            }
            for (name, program) in &p.variables {
                match run(program, &ctx, name) {
                    Ok(v) => {
                        vars.insert(name.clone(), v);
                        ctx.add_variable_from_value(
                            "variables",
                            cel::Value::Map(vars.clone().into()),
                        );
                    }
                    Err(e) => return failure(e),
                }
            }
            let mut applies = true;
            for (name, program) in &p.conditions {
                match run(program, &ctx, name) {
                    Ok(cel::Value::Bool(true)) => {}
                    Ok(cel::Value::Bool(false)) => applies = false,
                    Ok(_) => {
                        return failure(format!(
                            "matchCondition '{name}' did not evaluate to a bool"
                        ));
                    }
                    Err(e) => return failure(e),
                }
            }
            if !applies {
                continue;
            }
            for v in &p.validations {
                let ok = match run(&v.program, &ctx, &v.expression) {
                    Ok(cel::Value::Bool(b)) => b,
                    Ok(_) => {
                        return failure(format!(
                            "expression '{}' did not evaluate to a bool",
                            v.expression
                        ));
                    }
                    Err(e) => return failure(e),
                };
                if ok {
                    continue;
                }
                let message = v
                    .message_expression
                    .as_ref()
                    .and_then(|m| match m.execute(&ctx) {
                        Ok(cel::Value::String(s)) if !s.trim().is_empty() => {
                            Some(s.trim().to_string())
                        }
                        _ => None,
                    })
                    .or_else(|| v.message.clone())
                    .unwrap_or_else(|| format!("failed expression: {}", v.expression));
                act(&v.reason, &message)?;
            }
            for (key, program) in &p.audit_annotations {
                match run(program, &ctx, key) {
                    Ok(cel::Value::String(value)) => {
                        annotate(format!("{}/{key}", p.name), value.to_string())
                    }
                    Ok(_) => {} // null (or anything but a string): no annotation
                    Err(e) => failure(e)?,
                }
            }
        }
        Ok(())
    }
}

/// Whether a request is selected by a namespace selector (the labels of its namespace, or of
/// a Namespace itself; cluster-scoped requests always are) and an object selector (the labels
/// of its object or old object).
pub(crate) fn selected(
    namespace_selector: Option<&Selector>,
    object_selector: Option<&Selector>,
    a: &Attributes,
    namespace: Option<&Value>,
) -> bool {
    namespace_selector.is_none_or(|s| {
        !a.info.namespaced && a.info.plural != "namespaces" || s.matches_map(&labels(namespace))
    }) && object_selector.is_none_or(|s| {
        [a.object, a.old_object]
            .into_iter()
            .flatten()
            .any(|o| s.matches_map(&labels(Some(o))))
    })
}

fn labels(v: Option<&Value>) -> std::collections::BTreeMap<String, String> {
    v.and_then(|o| o.pointer("/metadata/labels"))
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default()
}

/// The request's Namespace object (for a Namespace, the object itself).
pub(crate) fn namespace_of(api: &ApiServer, a: &Attributes) -> Option<Value> {
    if a.info.group.is_empty() && a.info.plural == "namespaces" {
        return a.object.or(a.old_object).cloned();
    }
    let ns = a.namespace.filter(|_| a.info.namespaced)?;
    let info = api.registry.get("", "v1", "namespaces")?;
    Some(api.cacher(&info).ok()?.get(&info.key(None, ns))?.value())
}

fn find_params(
    api: &ApiServer,
    (api_version, kind): &(String, String),
    r: &policy::ParamRef,
    request_namespace: Option<&str>,
) -> Result<Vec<Value>, String> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let info = api
        .registry
        .all()
        .into_iter()
        .find(|i| i.group == group && i.version == version && i.kind == *kind)
        .ok_or_else(|| {
            format!("failed to find resource referenced by paramKind: '{api_version}, Kind={kind}'")
        })?;
    let cacher = api.cacher(&info).map_err(|e| e.message)?;
    let ns = if info.namespaced {
        r.namespace.as_deref().or(request_namespace)
    } else {
        None
    };
    if info.namespaced && ns.is_none() {
        return Err("cannot use a namespaced paramKind for a cluster-scoped request without paramRef.namespace".into());
    }
    if let Some(name) = &r.name {
        return Ok(cacher
            .get(&info.key(ns, name))
            .map(|v| v.value())
            .into_iter()
            .collect());
    }
    let (items, _) = cacher.values(&info.list_prefix(ns));
    Ok(items
        .iter()
        .filter(|v| {
            r.selector
                .as_ref()
                .is_none_or(|s| s.matches_map(&labels(Some(v))))
        })
        .map(|v| (**v).clone())
        .collect())
}

pub(crate) fn request_json(a: &Attributes) -> Value {
    let user = crate::auth::rbac::escalation::request_user();
    json!({
        "kind": {"group": a.info.group, "version": a.info.version, "kind": a.info.kind},
        "resource": {"group": a.info.group, "version": a.info.version, "resource": a.info.plural},
        "subResource": a.subresource.unwrap_or(""),
        "name": a.name,
        "namespace": a.namespace.unwrap_or(""),
        "operation": a.operation,
        "userInfo": user.as_deref().map_or(json!({}), |u| json!({"username": u.username, "uid": u.uid, "groups": u.groups})),
        "dryRun": a.dry_run,
    })
}

/// The refusal kube-apiserver answers a denying policy with.
fn denied(p: &Policy, b: &Binding, reason: &str, message: &str) -> ApiError {
    let (code, reason) = match reason {
        "Forbidden" => (403, "Forbidden"),
        "Unauthorized" => (401, "Unauthorized"),
        "RequestEntityTooLarge" => (413, "RequestEntityTooLarge"),
        _ => (422, "Invalid"),
    };
    ApiError {
        code,
        reason,
        message: format!(
            "ValidatingAdmissionPolicy '{}' with binding '{}' denied request: {message}",
            p.name, b.name
        ),
        details: None,
    }
}

impl<'a> Attributes<'a> {
    /// A write in progress: the object as it will be stored (and the one stored now).
    pub fn write(
        info: &'a ResourceInfo,
        subresource: Option<&'a str>,
        operation: &'a str,
        object: Option<&'a Value>,
        old_object: Option<&'a Value>,
        dry_run: bool,
    ) -> Attributes<'a> {
        let any = object.or(old_object);
        Attributes {
            info,
            subresource,
            namespace: any.and_then(|o| o.namespace()),
            name: any.and_then(|o| o.name()).unwrap_or_default(),
            operation,
            object,
            old_object,
            dry_run,
        }
    }
}

/// The validating admission of a write in progress: the policies, then the webhooks.
pub async fn validate_write(api: &ApiServer, a: &Attributes<'_>) -> ApiResult<()> {
    api.policies.admit(api, a)?;
    api.webhooks.validate(api, a).await
}
