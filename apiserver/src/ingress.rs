//! networking.k8s.io/v1 Ingress and IngressClass, as kube-apiserver validates and prints them
//! (kubernetes/pkg/apis/networking/validation, pkg/printers/internalversion): rules with
//! hosts (wildcards as the first label only, never an IP), paths by type (Exact and Prefix
//! absolute and clean), backends (a Service by port name or number, or a resource — one of
//! them), a default backend when there are no rules, TLS hosts and Secrets; classes with a
//! domain-prefixed controller that never changes. The DefaultIngressClass admission plugin
//! gives an Ingress without a class the class annotated as the default (the newest of them).

use std::sync::{Arc, OnceLock, Weak};

use capstan_api::validation::{self, FieldError};
use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::object::ObjectExt;
use crate::strategy::StorageHooks;
use crate::strategy::{invalid, required};
use crate::table::{Table, age, table};

pub const GROUP: &str = "networking.k8s.io";
/// The annotation naming the default IngressClass.
pub const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";
/// The class annotation from before `spec.ingressClassName`.
pub const LEGACY_CLASS: &str = "kubernetes.io/ingress.class";
const PATH_TYPES: &str = "\"Exact\", \"ImplementationSpecific\", \"Prefix\"";

/// A host: a DNS subdomain, or `*.` and one; never an IP address.
fn validate_host(field: &str, host: &str, errs: &mut Vec<FieldError>) {
    if host.parse::<std::net::IpAddr>().is_ok() {
        errs.push(invalid(
            field,
            host,
            "must be a DNS name, not an IP address",
        ));
        return;
    }
    let (name, wildcard) = match host.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (host, false),
    };
    if let Err(m) = validation::dns1123_subdomain(name) {
        let m = if wildcard {
            "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string()
        } else {
            m
        };
        errs.push(invalid(field, host, m));
    }
}

/// An IANA service name (a port's name): at most 15 characters, lower case letters, digits
/// and '-', at least one letter, no '-' at either end or twice in a row.
fn iana_svc_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > 15 {
        return Err("must be no more than 15 characters".into());
    }
    if !ok_chars || name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into(),
        );
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)".into());
    }
    Ok(())
}

fn validate_backend(field: &str, b: &Value, errs: &mut Vec<FieldError>) {
    let (service, resource) = (&b["service"], &b["resource"]);
    match (service.is_null(), resource.is_null()) {
        (false, false) => errs.push(invalid(
            field,
            "",
            "cannot set both resource and service backends",
        )),
        (true, true) => errs.push(invalid(
            field,
            "",
            "one backend (service or resource) must be specified",
        )),
        (false, true) => {
            let name = service["name"].as_str().unwrap_or_default();
            if name.is_empty() {
                errs.push(required(&format!("{field}.service.name")));
            } else if let Err(m) = validation::dns1123_label(name) {
                errs.push(invalid(&format!("{field}.service.name"), name, m));
            }
            let port = &service["port"];
            let (pname, number) = (
                port["name"].as_str().filter(|s| !s.is_empty()),
                &port["number"],
            );
            let pfield = format!("{field}.service.port");
            match (pname, number.is_null()) {
                (Some(_), false) => errs.push(invalid(
                    &pfield,
                    "",
                    "cannot set both port name & port number",
                )),
                (None, true) => errs.push(invalid(&pfield, "", "port name or number is required")),
                (Some(n), true) => {
                    if let Err(m) = iana_svc_name(n) {
                        errs.push(invalid(&format!("{pfield}.name"), n, m));
                    }
                }
                (None, false) => {
                    if number.as_i64().is_none_or(|n| !(1..=65535).contains(&n)) {
                        errs.push(invalid(
                            &format!("{pfield}.number"),
                            &number.to_string(),
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                }
            }
        }
        (true, false) => {
            for k in ["kind", "name"] {
                if resource[k].as_str().is_none_or(str::is_empty) {
                    errs.push(required(&format!("{field}.resource.{k}")));
                }
            }
        }
    }
}

fn validate_path(field: &str, p: &Value, errs: &mut Vec<FieldError>) {
    let path = p["path"].as_str().unwrap_or_default();
    let kind = p["pathType"].as_str();
    match kind {
        None => errs.push(FieldError {
            field: format!("{field}.pathType"),
            value: String::new(),
            message: "Required value: pathType must be specified".into(),
        }),
        Some("Exact" | "Prefix") => {
            let pf = format!("{field}.path");
            if !path.starts_with('/') {
                errs.push(invalid(&pf, path, "must be an absolute path"));
            } else {
                for bad in ["//", "/./", "/../", "%2f", "%2F"] {
                    if path.contains(bad) {
                        errs.push(invalid(&pf, path, format!("must not contain '{bad}'")));
                    }
                }
                for bad in ["/..", "/."] {
                    if path.ends_with(bad) {
                        errs.push(invalid(&pf, path, format!("cannot end with '{bad}'")));
                    }
                }
            }
        }
        Some("ImplementationSpecific") => {
            if !path.is_empty() && !path.starts_with('/') {
                errs.push(invalid(
                    &format!("{field}.path"),
                    path,
                    "must be an absolute path",
                ));
            }
        }
        Some(other) => errs.push(FieldError {
            field: format!("{field}.pathType"),
            value: String::new(),
            message: format!("Unsupported value: \"{other}\": supported values: {PATH_TYPES}"),
        }),
    }
    validate_backend(&format!("{field}.backend"), &p["backend"], errs);
}

/// Creates the IngressClass `name` for `controller`, marked the cluster's default, unless a
/// class of that name exists (a user's edits to it are kept, the default mark included).
pub async fn ensure_class(api: &ApiServer, name: &str, controller: &str) -> ApiResult<()> {
    let obj = json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": name, "annotations": {DEFAULT_CLASS: "true"}},
        "spec": {"controller": controller}});
    api.create_if_missing((GROUP, "v1", "ingressclasses"), obj)
        .await
}

/// ValidateIngressSpec (v1) and, on create, the class annotation beside the class field.
pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &obj["spec"];
    let rules = spec["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if rules.is_empty() && spec["defaultBackend"].is_null() {
        errs.push(invalid(
            "spec",
            "",
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    if !spec["defaultBackend"].is_null() {
        validate_backend("spec.defaultBackend", &spec["defaultBackend"], &mut errs);
    }
    for (i, r) in rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        if let Some(h) = r["host"].as_str().filter(|h| !h.is_empty()) {
            validate_host(&format!("{field}.host"), h, &mut errs);
        }
        if r["http"].is_null() {
            continue;
        }
        let paths = r["http"]["paths"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if paths.is_empty() {
            errs.push(required(&format!("{field}.http.paths")));
        }
        for (j, p) in paths.iter().enumerate() {
            validate_path(&format!("{field}.http.paths[{j}]"), p, &mut errs);
        }
    }
    for (i, t) in spec["tls"].as_array().into_iter().flatten().enumerate() {
        for (j, h) in t["hosts"].as_array().into_iter().flatten().enumerate() {
            validate_host(
                &format!("spec.tls[{i}].hosts[{j}]"),
                h.as_str().unwrap_or_default(),
                &mut errs,
            );
        }
        if let Some(s) = t["secretName"].as_str().filter(|s| !s.is_empty())
            && let Err(m) = validation::dns1123_subdomain(s)
        {
            errs.push(invalid(&format!("spec.tls[{i}].secretName"), s, m));
        }
    }
    if let Some(c) = spec["ingressClassName"].as_str()
        && let Err(m) = validation::dns1123_subdomain(c)
    {
        errs.push(invalid("spec.ingressClassName", c, m));
    }
    errs
}

/// ValidateIngressCreate's own rule: the old annotation and the class field are not both set.
pub fn validate_create(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let annotation = &obj["metadata"]["annotations"][LEGACY_CLASS];
    if !spec_class(obj).is_empty() && annotation.as_str().is_some_and(|a| !a.is_empty()) {
        errs.push(invalid(
            &format!("annotations.{LEGACY_CLASS}"),
            annotation.as_str().unwrap_or_default(),
            "can not be set when the class field is also set",
        ));
    }
    errs
}

fn spec_class(obj: &Value) -> &str {
    obj["spec"]["ingressClassName"].as_str().unwrap_or_default()
}

/// An IngressClass: a domain-prefixed controller (at most 250 characters) and valid
/// parameters.
pub fn validate_class(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &obj["spec"];
    let controller = spec["controller"].as_str().unwrap_or_default();
    if controller.is_empty() {
        errs.push(required("spec.controller"));
    } else if controller.len() > 250 {
        errs.push(invalid(
            "spec.controller",
            controller,
            "must be no more than 250 bytes",
        ));
    } else {
        let domain_prefixed = controller
            .split_once('/')
            .is_some_and(|(d, p)| validation::dns1123_subdomain(d).is_ok() && !p.is_empty());
        if !domain_prefixed {
            errs.push(invalid(
                "spec.controller",
                controller,
                "must be a domain-prefixed path (such as \"acme.io/foo\")",
            ));
        }
    }
    let p = &spec["parameters"];
    if !p.is_null() {
        for k in ["kind", "name"] {
            if p[k].as_str().is_none_or(str::is_empty) {
                errs.push(required(&format!("spec.parameters.{k}")));
            }
        }
        match (p["scope"].as_str(), p["namespace"].as_str()) {
            (Some("Namespace"), None) => errs.push(FieldError {
                field: "spec.parameters.namespace".into(),
                value: String::new(),
                message: "Required value: `parameters.scope` is set to 'Namespace'".into(),
            }),
            (Some("Cluster") | None, Some(_)) => errs.push(FieldError {
                field: "spec.parameters.namespace".into(),
                value: String::new(),
                message: "Forbidden: `parameters.scope` is set to 'Cluster'".into(),
            }),
            (Some(s), _) if s != "Cluster" && s != "Namespace" => errs.push(FieldError {
                field: "spec.parameters.scope".into(),
                value: String::new(),
                message: format!(
                    "Unsupported value: \"{s}\": supported values: \"Cluster\", \"Namespace\""
                ),
            }),
            _ => {}
        }
    }
    errs
}

/// An IngressClass's controller never changes (on top of [`validate_class`]).
pub fn validate_class_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if new["spec"]["controller"] != old["spec"]["controller"] {
        errs.push(invalid(
            "spec.controller",
            new["spec"]["controller"].as_str().unwrap_or_default(),
            "field is immutable",
        ));
    }
    errs
}

/// `kubectl get ingress`: NAME CLASS HOSTS ADDRESS PORTS AGE.
pub fn ingresses() -> Table {
    table(
        &[
            ("Class", "string", 0),
            ("Hosts", "string", 0),
            ("Address", "string", 0),
            ("Ports", "string", 0),
            ("Age", "string", 0),
        ],
        |o| {
            let class = match spec_class(o) {
                "" => o["metadata"]["annotations"][LEGACY_CLASS]
                    .as_str()
                    .unwrap_or("<none>")
                    .to_string(),
                c => c.to_string(),
            };
            let hosts: Vec<&str> = o["spec"]["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["host"].as_str().filter(|h| !h.is_empty()).unwrap_or("*"))
                .collect();
            let hosts = match hosts.len() {
                0 => "*".to_string(),
                n if n > 4 => format!("{} + {} more...", hosts[..4].join(","), n - 4),
                _ => hosts.join(","),
            };
            let address: Vec<&str> = o["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str()))
                .collect();
            let tls = o["spec"]["tls"].as_array().is_some_and(|t| !t.is_empty());
            vec![
                json!(class),
                json!(hosts),
                json!(address.join(",")),
                json!(if tls { "80, 443" } else { "80" }),
                age(o),
            ]
        },
    )
}

/// `kubectl get ingressclass`: NAME CONTROLLER PARAMETERS AGE.
pub fn classes() -> Table {
    table(
        &[
            ("Controller", "string", 0),
            ("Parameters", "string", 0),
            ("Age", "string", 0),
        ],
        |o| {
            let p = &o["spec"]["parameters"];
            let parameters = if p.is_null() {
                "<none>".to_string()
            } else {
                let mut s = p["kind"].as_str().unwrap_or_default().to_string();
                if let Some(g) = p["apiGroup"].as_str() {
                    s = format!("{s}.{g}");
                }
                format!("{s}/{}", p["name"].as_str().unwrap_or_default())
            };
            vec![
                json!(o["spec"]["controller"].as_str().unwrap_or_default()),
                json!(parameters),
                age(o),
            ]
        },
    )
}

/// The default class among `classes`: of those annotated as default, the newest (then the
/// first by name), as the DefaultIngressClass plugin picks it.
pub fn pick_default(classes: &[Arc<Value>]) -> Option<String> {
    crate::object::newest_default(classes, DEFAULT_CLASS)
}

/// The DefaultIngressClass admission plugin.
#[derive(Debug, Default)]
pub struct DefaultClass {
    api: OnceLock<Weak<ApiServer>>,
}

impl DefaultClass {
    pub fn attach(&self, api: Weak<ApiServer>) {
        let _ = self.api.set(api);
    }
}

#[async_trait::async_trait]
impl StorageHooks for DefaultClass {
    async fn begin_create(&self, obj: &mut Value, _dry_run: bool) -> ApiResult<()> {
        let refused = validate_create(obj);
        if !refused.is_empty() {
            let name = obj.name().unwrap_or_default().to_string();
            return Err(ApiError::invalid(GROUP, "Ingress", &name, refused));
        }
        let has_class = !spec_class(obj).is_empty()
            || obj["metadata"]["annotations"][LEGACY_CLASS]
                .as_str()
                .is_some_and(|a| !a.is_empty());
        if has_class {
            return Ok(());
        }
        let api = self
            .api
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| ApiError::internal("the ingress class admission has no server"))?;
        let Some(info) = api.registry.get(GROUP, "v1", "ingressclasses") else {
            return Ok(());
        };
        let classes = api.cacher(&info)?.values("").0;
        if let Some(class) = pick_default(&classes) {
            obj["spec"]["ingressClassName"] = json!(class);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(errs: Vec<FieldError>) -> Vec<String> {
        errs.into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    fn ingress(spec: Value) -> Value {
        json!({"metadata": {"name": "web"}, "spec": spec})
    }

    #[test]
    fn rules_paths_and_backends_are_checked_as_kubernetes_checks_them() {
        let ok = ingress(json!({"rules": [
            {"host": "a.example.test", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "a", "port": {"number": 80}}}}]}},
            {"host": "*.b.example.test", "http": {"paths": [
                {"path": "/api", "pathType": "Exact", "backend": {"service": {"name": "b", "port": {"name": "http"}}}},
                {"pathType": "ImplementationSpecific", "backend": {"resource": {"apiGroup": "x.io", "kind": "Bucket", "name": "b"}}}]}}],
            "tls": [{"hosts": ["a.example.test"], "secretName": "a-tls"}]}));
        assert!(validate(&ok).is_empty(), "{:?}", validate(&ok));
        let bad = ingress(json!({"rules": [
            {"host": "10.0.0.1", "http": {"paths": [
                {"path": "api", "pathType": "Prefix", "backend": {"service": {"name": "a", "port": {"number": 0}}}},
                {"path": "/a//b", "pathType": "Exact", "backend": {}},
                {"path": "/", "backend": {"service": {"name": "a", "port": {"number": 80, "name": "http"}}}},
                {"path": "/", "pathType": "Regex", "backend": {"service": {"name": "a", "port": {}}}}]}},
            {"host": "a.*.test", "http": {"paths": []}}]}));
        assert_eq!(
            messages(validate(&bad)),
            [
                "spec.rules[0].host: must be a DNS name, not an IP address",
                "spec.rules[0].http.paths[0].path: must be an absolute path",
                "spec.rules[0].http.paths[0].backend.service.port.number: must be between 1 and 65535, inclusive",
                "spec.rules[0].http.paths[1].path: must not contain '//'",
                "spec.rules[0].http.paths[1].backend: one backend (service or resource) must be specified",
                "spec.rules[0].http.paths[2].pathType: Required value: pathType must be specified",
                "spec.rules[0].http.paths[2].backend.service.port: cannot set both port name & port number",
                "spec.rules[0].http.paths[3].pathType: Unsupported value: \"Regex\": supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\"",
                "spec.rules[0].http.paths[3].backend.service.port: port name or number is required",
                "spec.rules[1].host: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                "spec.rules[1].http.paths: Required value",
            ]
        );
        assert_eq!(
            messages(validate(&ingress(json!({})))),
            ["spec: either `defaultBackend` or `rules` must be specified"]
        );
        let both = json!({"metadata": {"name": "w", "annotations": {LEGACY_CLASS: "nginx"}},
            "spec": {"ingressClassName": "capstan", "defaultBackend": {"service": {"name": "a", "port": {"number": 80}}}}});
        assert!(validate(&both).is_empty());
        assert!(validate_create(&ok).is_empty());
        assert_eq!(
            messages(validate_create(&both)),
            [
                "annotations.kubernetes.io/ingress.class: can not be set when the class field is also set"
            ]
        );
    }

    #[test]
    fn classes_name_a_controller_that_never_changes_and_the_newest_default_wins() {
        let class = |controller: &str| json!({"metadata": {"name": "c"}, "spec": {"controller": controller}});
        assert!(validate_class(&class("capstan.dev/ingress")).is_empty());
        assert_eq!(validate_class(&class("ingress")).len(), 1);
        assert_eq!(
            messages(validate_class_update(
                &class("capstan.dev/other"),
                &class("capstan.dev/ingress")
            )),
            ["spec.controller: field is immutable"]
        );
        let mut scoped = class("a.io/b");
        scoped["spec"]["parameters"] = json!({"kind": "Params", "name": "p", "scope": "Namespace"});
        assert_eq!(
            messages(validate_class(&scoped)),
            ["spec.parameters.namespace: Required value: `parameters.scope` is set to 'Namespace'"]
        );
        let c = |name: &str, default: bool, created: &str| {
            Arc::new(
                json!({"metadata": {"name": name, "creationTimestamp": created,
                "annotations": {DEFAULT_CLASS: if default { "true" } else { "false" }}}}),
            )
        };
        let classes = [
            c("old", true, "2026-01-01T00:00:00Z"),
            c("new", true, "2026-02-01T00:00:00Z"),
            c("newest-not-default", false, "2026-03-01T00:00:00Z"),
        ];
        assert_eq!(pick_default(&classes).as_deref(), Some("new"));
        assert_eq!(pick_default(&classes[2..]), None);
    }
}
