//! ValidatingWebhookConfiguration and MutatingWebhookConfiguration: each webhook compiled for
//! admission (its rules, selectors, match conditions and client), and both kinds validated
//! when written (kube-apiserver's `ValidateValidatingWebhookConfiguration` and
//! `ValidateMutatingWebhookConfiguration`), with v1's defaults.

use std::collections::BTreeSet;
use std::time::Duration;

use capstan_api::selectors::Selector;
use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use super::client::{self, Client};
use crate::admission_policy::policy::{self, Request, ResourceRule, check_expr, check_rules, err};
use crate::cel;

/// The AdmissionReview versions Capstan speaks (the same shape; v1 first).
pub const REVIEW_VERSIONS: &[&str] = &["v1", "v1beta1"];

/// One webhook of a configuration, ready to be called.
#[derive(Debug)]
pub struct Webhook {
    pub name: String,
    /// The configuration it is in.
    pub configuration: String,
    pub mutating: bool,
    rules: Vec<ResourceRule>,
    pub namespace_selector: Option<Selector>,
    pub object_selector: Option<Selector>,
    pub conditions: Vec<(String, cel::Program)>,
    /// Which of `object`, `oldObject`, `request` the conditions read.
    pub uses: BTreeSet<&'static str>,
    /// The client, or why there is none (its match conditions did not compile...).
    pub client: Result<Client, String>,
    pub fail_closed: bool,
    /// matchPolicy Equivalent: a request through another version of the resource is sent
    /// converted to a version the rules name.
    pub equivalent: bool,
    /// sideEffects None or NoneOnDryRun: may be called for a dry run.
    pub dry_run_safe: bool,
    pub timeout: Duration,
    /// `admission.k8s.io/v1` or `/v1beta1`: the first of its admissionReviewVersions spoken.
    pub review_api_version: String,
    /// reinvocationPolicy IfNeeded (mutating webhooks).
    pub reinvoke: bool,
}

impl Webhook {
    /// The webhooks of a configuration, in their order.
    pub fn compile_all(configuration: &Value, mutating: bool) -> Vec<Webhook> {
        let config_name = configuration["metadata"]["name"]
            .as_str()
            .unwrap_or_default();
        (configuration["webhooks"].as_array().into_iter().flatten())
            .map(|w| Webhook::compile(config_name, w, mutating))
            .collect()
    }

    fn compile(configuration: &str, w: &Value, mutating: bool) -> Webhook {
        let selector = |s: &Value| {
            let ls = serde_json::from_value(s.clone()).ok()?;
            Selector::from_label_selector(&ls)
                .ok()
                .filter(|s| !s.is_empty())
        };
        let mut broken = Vec::new();
        let conditions: Vec<(String, cel::Program)> = (w["matchConditions"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let name = c["name"].as_str().unwrap_or_default().to_string();
                let p = policy::compile(
                    c["expression"].as_str().unwrap_or_default(),
                    &name,
                    &mut broken,
                )?;
                Some((name, p))
            })
            .collect();
        let uses = ["object", "oldObject", "request"]
            .into_iter()
            .filter(|v| conditions.iter().any(|(_, p)| cel::uses(p, v)))
            .collect();
        let client = match broken.into_iter().next() {
            Some(e) => Err(e),
            None => Client::new(&w["clientConfig"]),
        };
        let versions: Vec<String> = crate::object::strings(Some(&w["admissionReviewVersions"]));
        let version = versions
            .iter()
            .find(|v| REVIEW_VERSIONS.contains(&v.as_str()))
            .map_or("v1", String::as_str);
        Webhook {
            name: w["name"].as_str().unwrap_or_default().to_string(),
            configuration: configuration.to_string(),
            mutating,
            rules: (w["rules"].as_array().into_iter().flatten())
                .map(ResourceRule::parse)
                .collect(),
            namespace_selector: selector(&w["namespaceSelector"]),
            object_selector: selector(&w["objectSelector"]),
            conditions,
            uses,
            client,
            fail_closed: w["failurePolicy"].as_str() != Some("Ignore"),
            equivalent: w["matchPolicy"].as_str() != Some("Exact"),
            dry_run_safe: matches!(w["sideEffects"].as_str(), Some("None" | "NoneOnDryRun")),
            timeout: Duration::from_secs(w["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30)),
            review_api_version: format!("admission.k8s.io/{version}"),
            reinvoke: w["reinvocationPolicy"].as_str() == Some("IfNeeded"),
        }
    }

    /// Whether the rules name this request's resource, version and operation.
    pub fn covers(&self, r: &Request) -> bool {
        self.rules.iter().any(|x| x.matches(r))
    }
}

/// v1's defaults for each webhook of a configuration (kube's `SetDefaults_*Webhook`).
pub fn defaults(obj: &mut Value, mutating: bool) {
    let Some(hooks) = obj["webhooks"].as_array_mut() else {
        return;
    };
    for w in hooks {
        let Some(m) = w.as_object_mut() else { continue };
        for (k, v) in [
            ("failurePolicy", json!("Fail")),
            ("matchPolicy", json!("Equivalent")),
            ("namespaceSelector", json!({})),
            ("objectSelector", json!({})),
            ("timeoutSeconds", json!(10)),
        ] {
            m.entry(k).or_insert(v);
        }
        if mutating {
            m.entry("reinvocationPolicy").or_insert(json!("Never"));
        }
        if let Some(svc) = m.get_mut("clientConfig").and_then(|c| c.get_mut("service"))
            && let Some(s) = svc.as_object_mut()
        {
            s.entry("port").or_insert(json!(443));
        }
        if let Some(rules) = m.get_mut("rules").and_then(Value::as_array_mut) {
            for r in rules.iter_mut().filter_map(Value::as_object_mut) {
                r.entry("scope").or_insert(json!("*"));
            }
        }
    }
}

pub fn defaults_validating(obj: &mut Value) {
    defaults(obj, false)
}

pub fn defaults_mutating(obj: &mut Value) {
    defaults(obj, true)
}

/// The checks both kinds share; `mutating` adds reinvocationPolicy's.
fn validate(obj: &Value, mutating: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut names = BTreeSet::new();
    for (i, w) in (obj["webhooks"].as_array().into_iter().flatten()).enumerate() {
        let at = format!("webhooks[{i}]");
        match w["name"].as_str() {
            None | Some("") => errs.push(err(&format!("{at}.name"), "Required value")),
            Some(n) => {
                if !names.insert(n) {
                    errs.push(err(
                        &format!("{at}.name"),
                        format!("Duplicate value: {n:?}"),
                    ));
                }
                // A qualified name: at least three DNS labels.
                let labels: Vec<&str> = n.split('.').collect();
                if labels.len() < 3 || capstan_api::validation::dns1123_subdomain(n).is_err() {
                    errs.push(err(
                        &format!("{at}.name"),
                        format!("Invalid value: {n:?}: should be a domain with at least three segments separated by dots"),
                    ));
                }
            }
        }
        check_rules(&w["rules"], &format!("{at}.rules"), &mut errs);
        match w["sideEffects"].as_str() {
            Some("None" | "NoneOnDryRun") => {}
            None => errs.push(err(
                &format!("{at}.sideEffects"),
                "Required value: must specify one of None, NoneOnDryRun",
            )),
            Some(s) => errs.push(err(
                &format!("{at}.sideEffects"),
                format!("Unsupported value: {s:?}: supported values: \"None\", \"NoneOnDryRun\""),
            )),
        }
        let versions = crate::object::strings(Some(&w["admissionReviewVersions"]));
        if versions.is_empty() {
            errs.push(err(
                &format!("{at}.admissionReviewVersions"),
                "Required value: must specify one of v1, v1beta1",
            ));
        } else if !versions
            .iter()
            .any(|v| REVIEW_VERSIONS.contains(&v.as_str()))
        {
            errs.push(err(
                &format!("{at}.admissionReviewVersions"),
                format!("Invalid value: {versions:?}: must include at least one of v1, v1beta1"),
            ));
        }
        for (key, allowed) in [
            ("failurePolicy", &["Fail", "Ignore"][..]),
            ("matchPolicy", &["Equivalent", "Exact"][..]),
            ("reinvocationPolicy", &["IfNeeded", "Never"][..]),
        ] {
            if key == "reinvocationPolicy" && !mutating {
                continue;
            }
            if let Some(v) = w[key].as_str()
                && !allowed.contains(&v)
            {
                let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                errs.push(err(
                    &format!("{at}.{key}"),
                    format!(
                        "Unsupported value: {v:?}: supported values: {}",
                        list.join(", ")
                    ),
                ));
            }
        }
        if let Some(t) = w["timeoutSeconds"].as_i64()
            && !(1..=30).contains(&t)
        {
            errs.push(err(
                &format!("{at}.timeoutSeconds"),
                format!("Invalid value: {t}: the timeout value must be between 1 and 30 seconds"),
            ));
        }
        for key in ["namespaceSelector", "objectSelector"] {
            let s = &w[key];
            if !s.is_null()
                && serde_json::from_value(s.clone())
                    .ok()
                    .and_then(|ls| Selector::from_label_selector(&ls).ok())
                    .is_none()
            {
                errs.push(err(
                    &format!("{at}.{key}"),
                    "Invalid value: not a valid label selector",
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (j, c) in (w["matchConditions"].as_array().into_iter().flatten()).enumerate() {
            let cat = format!("{at}.matchConditions[{j}]");
            match c["name"].as_str() {
                None | Some("") => errs.push(err(&format!("{cat}.name"), "Required value")),
                Some(n) if !seen.insert(n) => errs.push(err(
                    &format!("{cat}.name"),
                    format!("Duplicate value: {n:?}"),
                )),
                Some(_) => {}
            }
            check_expr(
                c["expression"].as_str(),
                &format!("{cat}.expression"),
                true,
                &mut errs,
            );
        }
        if w["matchConditions"]
            .as_array()
            .is_some_and(|a| a.len() > 64)
        {
            errs.push(err(
                &format!("{at}.matchConditions"),
                "Too many: must have at most 64 items",
            ));
        }
        for (field, message) in
            client::check_config(&w["clientConfig"], &format!("{at}.clientConfig"))
        {
            errs.push(err(&field, message));
        }
    }
    errs
}

pub fn validate_validating(obj: &Value) -> Vec<FieldError> {
    validate(obj, false)
}

pub fn validate_mutating(obj: &Value) -> Vec<FieldError> {
    validate(obj, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(extra: Value) -> Value {
        let mut w = json!({
            "name": "deny.example.test",
            "clientConfig": {"url": "https://127.0.0.1:1/validate"},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        });
        json_patch::merge(&mut w, &extra);
        json!({"metadata": {"name": "c"}, "webhooks": [w]})
    }

    #[test]
    fn defaults_are_v1s() {
        let mut c = hook(
            json!({"clientConfig": {"url": null, "service": {"namespace": "n", "name": "s"}}}),
        );
        defaults(&mut c, true);
        let w = &c["webhooks"][0];
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["matchPolicy"], "Equivalent");
        assert_eq!(w["timeoutSeconds"], 10);
        assert_eq!(w["reinvocationPolicy"], "Never");
        assert_eq!(w["namespaceSelector"], json!({}));
        assert_eq!(w["clientConfig"]["service"]["port"], 443);
        assert_eq!(w["rules"][0]["scope"], "*");
        assert!(
            validate_mutating(&c).is_empty(),
            "{:?}",
            validate_mutating(&c)
        );
    }

    #[test]
    fn bad_webhooks_are_refused_field_by_field() {
        let c = hook(json!({
            "name": "short",
            "sideEffects": "Some",
            "admissionReviewVersions": ["v2"],
            "failurePolicy": "Maybe",
            "timeoutSeconds": 31,
            "matchConditions": [{"name": "x", "expression": "object.("}],
            "clientConfig": {"url": "http://insecure/"},
        }));
        let fields: Vec<String> = validate_validating(&c)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "webhooks[0].name",
                "webhooks[0].sideEffects",
                "webhooks[0].admissionReviewVersions",
                "webhooks[0].failurePolicy",
                "webhooks[0].timeoutSeconds",
                "webhooks[0].matchConditions[0].expression",
                "webhooks[0].clientConfig.url",
            ]
        );
        let mut missing = hook(json!({}));
        missing["webhooks"][0]
            .as_object_mut()
            .unwrap()
            .remove("sideEffects");
        assert_eq!(
            validate_validating(&missing)[0].field,
            "webhooks[0].sideEffects"
        );
    }

    #[test]
    fn compiled_webhooks_keep_their_policies() {
        let c = hook(
            json!({"failurePolicy": "Ignore", "matchPolicy": "Exact", "sideEffects": "Some", "timeoutSeconds": 3, "admissionReviewVersions": ["v9", "v1beta1"]}),
        );
        let w = &Webhook::compile_all(&c, false)[0];
        assert!(!w.fail_closed && !w.equivalent && !w.dry_run_safe);
        assert_eq!(w.timeout, Duration::from_secs(3));
        assert_eq!(w.review_api_version, "admission.k8s.io/v1beta1");
        assert!(w.client.is_ok());
        let req = |op| Request {
            group: "",
            version: "v1",
            resource: "configmaps",
            subresource: "",
            operation: op,
            namespaced: true,
            name: "x",
        };
        assert!(w.covers(&req("CREATE")));
        assert!(!w.covers(&req("DELETE")));
    }
}
