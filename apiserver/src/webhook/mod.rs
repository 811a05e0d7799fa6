//! Admission webhooks (admissionregistration.k8s.io/v1 MutatingWebhookConfiguration and
//! ValidatingWebhookConfiguration), called as kube-apiserver's MutatingAdmissionWebhook and
//! ValidatingAdmissionWebhook plugins call them: an `AdmissionReview` POSTed over HTTPS
//! ([`client`]) for every create, update and delete their rules, selectors and match
//! conditions select — built-ins and custom resources alike, subresources by `pods/status`.
//!
//! - **Mutating** webhooks run first, one after another in configuration-name order, before
//!   the object's own validation; each may answer a JSON patch, applied to the object the next
//!   one sees. With `reinvocationPolicy: IfNeeded` a webhook is called once more when a later
//!   one changed the object.
//! - **Validating** webhooks run last (after ValidatingAdmissionPolicies), all at once.
//! - A denial is the request's answer: `admission webhook "NAME" denied the request: ...`
//!   with the webhook's code. A webhook that cannot be called, times out (`timeoutSeconds`) or
//!   answers nonsense refuses the request with a 500 under `failurePolicy: Fail`; under
//!   `Ignore` the request goes on and its client is told in a warning.
//! - Warnings webhooks return reach the client as `Warning` headers; a dry run calls only
//!   webhooks without side effects and refuses the request otherwise.
//! - The webhook configurations (and the policies) are never sent to webhooks, so a broken
//!   webhook can always be removed.

pub mod client;
pub mod config;

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::admission_policy::policy::Request;
use crate::admission_policy::{self, Attributes, GROUP, warn};
use crate::cel::{self, cost};
use crate::errors::{ApiError, ApiResult};
use crate::registry::ResourceInfo;
use crate::watch_cache::derived::Derived;
use config::Webhook;

#[derive(Debug, Default)]
struct Compiled {
    mutating: Vec<Arc<Webhook>>,
    validating: Vec<Arc<Webhook>>,
}

/// The admission webhooks of every configuration, compiled again when one changes.
#[derive(Debug)]
pub struct Webhooks(Derived<Compiled>);

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks(Derived::new(&[
            (GROUP, "v1", "mutatingwebhookconfigurations"),
            (GROUP, "v1", "validatingwebhookconfigurations"),
        ]))
    }
}

/// How one call went: the webhook's verdict or why there is none.
enum Outcome {
    Allowed {
        patch: Option<json_patch::Patch>,
    },
    /// Patched through an equivalent version and converted back: the new object.
    Mutated(Value),
    Denied(ApiError),
}

impl Webhooks {
    fn current(&self, api: &ApiServer) -> Arc<Compiled> {
        self.0.get(api, |lists| {
            let compile = |list: &[Arc<Value>], mutating: bool| {
                let mut configs: Vec<&Arc<Value>> = list.iter().collect();
                configs.sort_by(|a, b| {
                    a["metadata"]["name"]
                        .as_str()
                        .cmp(&b["metadata"]["name"].as_str())
                });
                configs
                    .into_iter()
                    .flat_map(|c| Webhook::compile_all(c, mutating))
                    .map(Arc::new)
                    .collect()
            };
            Compiled {
                mutating: compile(&lists[0], true),
                validating: compile(&lists[1], false),
            }
        })
    }

    /// Calls the mutating webhooks that select this request, in order, applying their patches
    /// to `object` (CREATE and UPDATE; for DELETE they are asked, and may only deny). True
    /// when the object changed.
    pub async fn mutate(
        &self,
        api: &ApiServer,
        a: &Attributes<'_>,
        object: &mut Option<Value>,
    ) -> ApiResult<bool> {
        if a.info.group == GROUP {
            return Ok(false);
        }
        let hooks = self.current(api).mutating.clone();
        if hooks.is_empty() {
            return Ok(false);
        }
        // Which webhooks were called, and after which of them the object last changed.
        let mut called: Vec<usize> = Vec::new();
        let mut last_change: Option<usize> = None;
        for (i, w) in hooks.iter().enumerate() {
            if self.mutate_one(api, a, w, object).await? {
                last_change = Some(i);
            }
            called.push(i);
        }
        // Reinvocation, once: webhooks that asked for it and ran before the last change.
        if let Some(last) = last_change {
            for &i in called.iter().filter(|&&i| i < last && hooks[i].reinvoke) {
                self.mutate_one(api, a, &hooks[i], object).await?;
            }
        }
        Ok(last_change.is_some())
    }

    /// One mutating webhook, if it selects the request; true when it changed the object.
    async fn mutate_one(
        &self,
        api: &ApiServer,
        a: &Attributes<'_>,
        w: &Webhook,
        object: &mut Option<Value>,
    ) -> ApiResult<bool> {
        let current = Attributes {
            object: object.as_ref(),
            ..*a
        };
        let Some(outcome) = self.call_if_selected(api, &current, w).await? else {
            return Ok(false);
        };
        let Some(obj) = object.as_mut() else {
            // A DELETE: nothing to patch.
            return match outcome {
                Outcome::Denied(e) => Err(e),
                _ => Ok(false),
            };
        };
        let patched = match outcome {
            Outcome::Denied(e) => return Err(e),
            Outcome::Allowed { patch: None } => return Ok(false),
            Outcome::Mutated(v) => v,
            Outcome::Allowed { patch: Some(p) } => {
                let mut patched = obj.clone();
                if let Err(e) = json_patch::patch(&mut patched, &p) {
                    return self.failed(w, format!("JSON patch could not be applied: {e}"));
                }
                patched
            }
        };
        if patched == *obj {
            return Ok(false);
        }
        *obj = patched;
        Ok(true)
    }

    /// Calls every validating webhook that selects the request, concurrently.
    pub async fn validate(&self, api: &ApiServer, a: &Attributes<'_>) -> ApiResult<()> {
        if a.info.group == GROUP {
            return Ok(());
        }
        let hooks = self.current(api).validating.clone();
        if hooks.is_empty() {
            return Ok(());
        }
        let calls = hooks.iter().map(|w| self.call_if_selected(api, a, w));
        for result in futures_util::future::join_all(calls).await {
            if let Some(Outcome::Denied(e)) = result? {
                return Err(e);
            }
        }
        Ok(())
    }

    /// A webhook that could not give a verdict: `failurePolicy` decides.
    fn failed<T: Default>(&self, w: &Webhook, why: String) -> ApiResult<T> {
        if w.fail_closed {
            return Err(ApiError::internal(format!(
                "Internal error occurred: failed calling webhook \"{}\": {why}",
                w.name
            )));
        }
        tracing::warn!(webhook = %w.name, error = %why, "failing open: failurePolicy is Ignore");
        warn(format!(
            "failed calling webhook \"{}\": {why}; the request was let through (failurePolicy: Ignore)",
            w.name
        ));
        Ok(T::default())
    }

    /// The webhook's outcome, or None when it does not select this request.
    async fn call_if_selected(
        &self,
        api: &ApiServer,
        a: &Attributes<'_>,
        w: &Webhook,
    ) -> ApiResult<Option<Outcome>> {
        let Some(via) = matched_version(api, a, w) else {
            return Ok(None);
        };
        let ns = admission_policy::namespace_of(api, a);
        if !admission_policy::selected(
            w.namespace_selector.as_ref(),
            w.object_selector.as_ref(),
            a,
            ns.as_ref(),
        ) {
            return Ok(None);
        }
        match conditions_hold(w, a) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => return self.failed(w, e).map(|()| None),
        }
        if a.dry_run && !w.dry_run_safe {
            return Err(ApiError::bad_request(format!(
                "admission webhook \"{}\" does not support dry run",
                w.name
            )));
        }
        let client = match &w.client {
            Ok(c) => c,
            Err(e) => return self.failed(w, e.clone()).map(|()| None),
        };
        // matchPolicy Equivalent through another version: the webhook sees its version.
        let (object, old_object) = match &via {
            None => (a.object.cloned(), a.old_object.cloned()),
            Some(info) => {
                let mut objects = Vec::new();
                for o in [a.object, a.old_object] {
                    objects.push(match o {
                        Some(o) => {
                            Some(crate::crd::conversion::convert(api, info, o.clone()).await?)
                        }
                        None => None,
                    });
                }
                let old = objects.pop().flatten();
                (objects.pop().flatten(), old)
            }
        };
        let seen = via.as_deref().unwrap_or(a.info);
        let uid = uuid::Uuid::new_v4().to_string();
        let review = review(w, a, seen, &uid, object.as_ref(), old_object.as_ref());
        let started = Instant::now();
        let body = bytes::Bytes::from(serde_json::to_vec(&review).unwrap_or_default());
        let answer = client.post(api, body, w.timeout).await;
        let outcome = match answer {
            Err(e) => {
                api.observe_webhook(w, a.operation, started, Some(("calling_webhook_error", 0)));
                return self
                    .failed(w, format!("failed to call webhook: {e}"))
                    .map(|()| None);
            }
            Ok(v) => match verdict(w, &uid, &v) {
                Err(e) => {
                    api.observe_webhook(
                        w,
                        a.operation,
                        started,
                        Some(("apiserver_internal_error", 0)),
                    );
                    return (self.failed(w, format!("received invalid webhook response: {e}")))
                        .map(|()| None);
                }
                Ok(o) => o,
            },
        };
        let rejected = match &outcome {
            Outcome::Denied(e) => Some(("no_error", e.code)),
            _ => None,
        };
        api.observe_webhook(w, a.operation, started, rejected);
        // A patch to another version's object is made to that object, then converted back.
        if let (Some(info), Outcome::Allowed { patch: Some(p) }) = (&via, &outcome)
            && let Some(mut o) = object
        {
            if let Err(e) = json_patch::patch(&mut o, p) {
                return self
                    .failed(w, format!("JSON patch could not be applied: {e}"))
                    .map(|()| None);
            }
            let back = crate::crd::conversion::convert(api, a.info, o).await?;
            tracing::debug!(webhook = %w.name, via = %info.version, "patch converted back");
            return Ok(Some(Outcome::Mutated(back)));
        }
        Ok(Some(outcome))
    }
}

/// The version the webhook's rules match the request at: `Some(None)` as requested,
/// `Some(Some(info))` through an equivalent version (matchPolicy Equivalent), None when the
/// rules do not match.
fn matched_version(
    api: &ApiServer,
    a: &Attributes<'_>,
    w: &Webhook,
) -> Option<Option<Arc<ResourceInfo>>> {
    fn at<'b>(a: &'b Attributes<'_>, version: &'b str) -> Request<'b> {
        Request {
            group: &a.info.group,
            version,
            resource: &a.info.plural,
            subresource: a.subresource.unwrap_or(""),
            operation: a.operation,
            namespaced: a.info.namespaced,
            name: a.name,
        }
    }
    if w.covers(&at(a, &a.info.version)) {
        return Some(None);
    }
    if !w.equivalent {
        return None;
    }
    api.registry
        .all()
        .into_iter()
        .filter(|i| {
            i.group == a.info.group && i.plural == a.info.plural && i.version != a.info.version
        })
        .find(|i| w.covers(&at(a, &i.version)))
        .map(Some)
}

/// Whether every match condition holds (an error is the webhook's failure).
fn conditions_hold(w: &Webhook, a: &Attributes<'_>) -> Result<bool, String> {
    if w.conditions.is_empty() {
        return Ok(true);
    }
    let null = Value::Null;
    let request = admission_policy::request_json(a);
    let (object, old) = (a.object.unwrap_or(&null), a.old_object.unwrap_or(&null));
    let mut ctx = cel::scope();
    for (name, v) in [
        ("object", object),
        ("oldObject", old),
        ("request", &request),
    ] {
        if w.uses.contains(name) {
            ctx.add_variable_from_value(name, cel::value::from_json(v));
        }
    }
    let shapes = [
        ("object", cost::Actual::One(object)),
        ("oldObject", cost::Actual::One(old)),
        ("request", cost::Actual::One(&request)),
    ];
    for (name, program) in &w.conditions {
        if cost::estimate(program.expression(), &shapes).unwrap_or(u64::MAX) > cel::PER_CALL_LIMIT {
            return Err(format!(
                "matchCondition '{name}': operation cancelled: actual cost limit exceeded"
            ));
        }
        match program.execute(&ctx) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => return Ok(false),
            Ok(_) => {
                return Err(format!(
                    "matchCondition '{name}' did not evaluate to a bool"
                ));
            }
            Err(e) => {
                return Err(format!(
                    "matchCondition '{name}' resulted in error: {}",
                    cel::error_text(&e)
                ));
            }
        }
    }
    Ok(true)
}

/// The AdmissionReview sent: the request as `seen` (the version the webhook's rules name).
fn review(
    w: &Webhook,
    a: &Attributes<'_>,
    seen: &ResourceInfo,
    uid: &str,
    object: Option<&Value>,
    old_object: Option<&Value>,
) -> Value {
    let mut request = admission_policy::request_json(a);
    let r = request.as_object_mut().expect("request_json is an object");
    r.insert("uid".into(), json!(uid));
    r.insert(
        "kind".into(),
        json!({"group": seen.group, "version": seen.version, "kind": seen.kind}),
    );
    r.insert(
        "resource".into(),
        json!({"group": seen.group, "version": seen.version, "resource": seen.plural}),
    );
    r.insert(
        "requestKind".into(),
        json!({"group": a.info.group, "version": a.info.version, "kind": a.info.kind}),
    );
    r.insert(
        "requestResource".into(),
        json!({"group": a.info.group, "version": a.info.version, "resource": a.info.plural}),
    );
    if let Some(sub) = a.subresource {
        r.insert("requestSubResource".into(), json!(sub));
    }
    r.insert("object".into(), object.cloned().unwrap_or(Value::Null));
    r.insert(
        "oldObject".into(),
        old_object.cloned().unwrap_or(Value::Null),
    );
    let options_kind = match a.operation {
        "CREATE" => "CreateOptions",
        "UPDATE" => "UpdateOptions",
        _ => "DeleteOptions",
    };
    let mut options = json!({"apiVersion": "meta.k8s.io/v1", "kind": options_kind});
    if a.dry_run {
        options["dryRun"] = json!(["All"]);
    }
    r.insert("options".into(), options);
    json!({"apiVersion": w.review_api_version, "kind": "AdmissionReview", "request": request})
}

/// The webhook's answer read as kube-apiserver reads it.
fn verdict(w: &Webhook, uid: &str, review: &Value) -> Result<Outcome, String> {
    if review["apiVersion"].as_str() != Some(&w.review_api_version)
        || review["kind"].as_str() != Some("AdmissionReview")
    {
        return Err(format!(
            "expected webhook response of {}, Kind=AdmissionReview, got {}, Kind={}",
            w.review_api_version,
            review["apiVersion"].as_str().unwrap_or_default(),
            review["kind"].as_str().unwrap_or_default()
        ));
    }
    let response = review
        .get("response")
        .filter(|r| r.is_object())
        .ok_or("webhook response was absent")?;
    let got = response["uid"].as_str().unwrap_or_default();
    if got != uid {
        return Err(format!("expected response.uid={uid:?}, got {got:?}"));
    }
    for text in crate::object::strings(Some(&response["warnings"])) {
        // Kubernetes keeps warnings to one line of printable text.
        let clean: String = text
            .chars()
            .filter(|c| !c.is_control())
            .take(4096)
            .collect();
        if !clean.is_empty() {
            warn(clean);
        }
    }
    // Its audit annotations go into the request's audit event under its name.
    for (k, v) in response["auditAnnotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if let Some(v) = v.as_str() {
            admission_policy::annotate(format!("{}/{k}", w.name), v.to_string());
        }
    }
    let allowed = response["allowed"].as_bool().unwrap_or(false);
    if !allowed {
        let status = &response["status"];
        let message = status["message"].as_str().unwrap_or_default();
        let code = status["code"]
            .as_u64()
            .filter(|c| (400..600).contains(c))
            .unwrap_or(400) as u16;
        let denied_by = format!("admission webhook \"{}\" denied the request", w.name);
        return Ok(Outcome::Denied(ApiError {
            code,
            reason: status_reason(status["reason"].as_str(), code),
            message: if message.is_empty() {
                format!("{denied_by} without explanation")
            } else {
                format!("{denied_by}: {message}")
            },
            details: None,
        }));
    }
    let Some(patch) = response["patch"].as_str().filter(|p| !p.is_empty()) else {
        return Ok(Outcome::Allowed { patch: None });
    };
    if !w.mutating {
        return Err("validating webhooks may not return patches".into());
    }
    match response["patchType"].as_str() {
        Some("JSONPatch") => {}
        other => {
            return Err(format!(
                "unsupported patch type {:?}",
                other.unwrap_or_default()
            ));
        }
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| format!("the patch is not base64: {e}"))?;
    let patch: json_patch::Patch = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the patch is not a JSON patch: {e}"))?;
    Ok(Outcome::Allowed { patch: Some(patch) })
}

/// A webhook's `status.reason` when it is one of Kubernetes' reasons, else the one of its code.
fn status_reason(given: Option<&str>, code: u16) -> &'static str {
    const REASONS: &[&str] = &[
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "Invalid",
        "ServerTimeout",
        "Timeout",
        "TooManyRequests",
        "BadRequest",
        "MethodNotAllowed",
        "NotAcceptable",
        "RequestEntityTooLarge",
        "UnsupportedMediaType",
        "InternalError",
        "Expired",
        "ServiceUnavailable",
    ];
    if let Some(r) = REASONS.iter().find(|r| Some(**r) == given) {
        return r;
    }
    match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        _ => "BadRequest",
    }
}

impl ApiServer {
    /// Records a webhook call: its latency, and a rejection (error type, code) if it was one.
    fn observe_webhook(
        &self,
        w: &Webhook,
        operation: &str,
        started: Instant,
        rejected: Option<(&str, u16)>,
    ) {
        let Some(m) = &self.metrics else { return };
        let kind = if w.mutating { "admit" } else { "validating" };
        m.webhook_duration
            .with_label_values(&[
                w.name.as_str(),
                kind,
                operation,
                if rejected.is_some() { "true" } else { "false" },
            ])
            .observe(started.elapsed().as_secs_f64());
        if let Some((error_type, code)) = rejected {
            m.webhook_rejections
                .with_label_values(&[
                    w.name.as_str(),
                    kind,
                    operation,
                    error_type,
                    &code.to_string(),
                ])
                .inc();
        }
    }
}
