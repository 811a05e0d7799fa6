//! ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding as compiled for admission
//! (k8s.io/apiserver/pkg/admission/plugin/policy/validating), and the validation of both
//! kinds when they are written (pkg/apis/admissionregistration/validation).

use capstan_api::selectors::Selector;
use capstan_api::validation::FieldError;
use serde_json::Value;

use crate::cel;

pub(crate) fn err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        value: String::new(),
        message: message.into(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    crate::object::strings(Some(v))
}

/// One `resourceRules` entry (`NamedRuleWithOperations`).
#[derive(Debug, Clone)]
pub struct ResourceRule {
    groups: Vec<String>,
    versions: Vec<String>,
    /// `pods`, `pods/status`, `*`, `*/status`, `pods/*`.
    resources: Vec<String>,
    operations: Vec<String>,
    /// `*`, `Cluster` or `Namespaced`.
    scope: String,
    names: Vec<String>,
}

/// What a request is, as the matchers see it.
#[derive(Debug)]
pub struct Request<'a> {
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub operation: &'a str,
    pub namespaced: bool,
    pub name: &'a str,
}

fn any(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == "*" || x == v)
}

impl ResourceRule {
    pub(crate) fn parse(v: &Value) -> ResourceRule {
        ResourceRule {
            groups: strings(&v["apiGroups"]),
            versions: strings(&v["apiVersions"]),
            resources: strings(&v["resources"]),
            operations: strings(&v["operations"]),
            scope: v["scope"].as_str().unwrap_or("*").to_string(),
            names: strings(&v["resourceNames"]),
        }
    }

    pub(crate) fn matches(&self, r: &Request) -> bool {
        let resource_ok = self.resources.iter().any(|pattern| {
            let (res, sub) = pattern.split_once('/').unwrap_or((pattern, ""));
            (res == "*" || res == r.resource)
                && (sub == r.subresource
                    || (sub == "*" && !r.subresource.is_empty())
                    || (pattern == "*" && r.subresource.is_empty()))
        });
        let scope_ok = match self.scope.as_str() {
            "Cluster" => !r.namespaced,
            "Namespaced" => r.namespaced,
            _ => true,
        };
        any(&self.groups, r.group)
            && any(&self.versions, r.version)
            && resource_ok
            && any(&self.operations, r.operation)
            && scope_ok
            && (self.names.is_empty() || self.names.iter().any(|n| n == r.name))
    }
}

/// `matchConstraints` or a binding's `matchResources`.
#[derive(Debug, Clone, Default)]
pub struct Match {
    rules: Vec<ResourceRule>,
    exclude: Vec<ResourceRule>,
    pub namespace_selector: Option<Selector>,
    pub object_selector: Option<Selector>,
}

impl Match {
    fn parse(v: &Value) -> Match {
        let selector = |s: &Value| {
            if s.is_null() {
                return None;
            }
            let ls = serde_json::from_value(s.clone()).ok()?;
            Selector::from_label_selector(&ls).ok()
        };
        Match {
            rules: v["resourceRules"]
                .as_array()
                .map(|a| a.iter().map(ResourceRule::parse).collect())
                .unwrap_or_default(),
            exclude: v["excludeResourceRules"]
                .as_array()
                .map(|a| a.iter().map(ResourceRule::parse).collect())
                .unwrap_or_default(),
            namespace_selector: selector(&v["namespaceSelector"]),
            object_selector: selector(&v["objectSelector"]),
        }
    }

    /// Whether the request's resource and operation are in the rules (selectors aside). No
    /// rules at all (a binding's `matchResources` that only selects namespaces) covers
    /// everything; a policy's `matchConstraints` always has some.
    pub fn covers(&self, r: &Request) -> bool {
        (self.rules.is_empty() || self.rules.iter().any(|x| x.matches(r)))
            && !self.exclude.iter().any(|x| x.matches(r))
    }
}

/// One `validations` entry.
#[derive(Debug)]
pub struct Validation {
    pub expression: String,
    pub program: cel::Program,
    pub message: Option<String>,
    pub message_expression: Option<cel::Program>,
    /// `Invalid` unless set (`Forbidden`, `Unauthorized`, `RequestEntityTooLarge`).
    pub reason: String,
}

/// A compiled ValidatingAdmissionPolicy.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    /// `paramKind` as (apiVersion, kind).
    pub param_kind: Option<(String, String)>,
    pub constraints: Match,
    pub conditions: Vec<(String, cel::Program)>,
    pub variables: Vec<(String, cel::Program)>,
    pub validations: Vec<Validation>,
    pub audit_annotations: Vec<(String, cel::Program)>,
    /// `failurePolicy: Fail` (the default).
    pub fail_closed: bool,
    /// Expressions that did not compile (the policy then fails by its failurePolicy).
    pub broken: Vec<String>,
    /// The variables its expressions name (`object`, `params`, ...): only those are bound.
    pub uses: std::collections::BTreeSet<&'static str>,
}

/// A compiled ValidatingAdmissionPolicyBinding.
#[derive(Debug)]
pub struct Binding {
    pub name: String,
    pub policy: String,
    pub param_ref: Option<ParamRef>,
    pub resources: Option<Match>,
    pub deny: bool,
    pub warn: bool,
    pub audit: bool,
}

#[derive(Debug)]
pub struct ParamRef {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub selector: Option<Selector>,
    /// `parameterNotFoundAction: Deny` (else Allow).
    pub deny_when_missing: bool,
}

pub(crate) fn compile(src: &str, what: &str, broken: &mut Vec<String>) -> Option<cel::Program> {
    match cel::compile(src) {
        Ok(p) => Some(p),
        Err(e) => {
            broken.push(format!("{what}: compilation failed: {e}"));
            None
        }
    }
}

impl Policy {
    pub fn compile(v: &Value) -> Policy {
        let spec = &v["spec"];
        let mut broken = Vec::new();
        let named = |list: &Value,
                     key: &str,
                     expr: &str,
                     broken: &mut Vec<String>|
         -> Vec<(String, cel::Program)> {
            list.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| {
                    let name = x[key].as_str().unwrap_or_default().to_string();
                    let p = compile(x[expr].as_str().unwrap_or_default(), &name, broken)?;
                    Some((name, p))
                })
                .collect()
        };
        let conditions = named(&spec["matchConditions"], "name", "expression", &mut broken);
        let variables = named(&spec["variables"], "name", "expression", &mut broken);
        let audit_annotations = named(
            &spec["auditAnnotations"],
            "key",
            "valueExpression",
            &mut broken,
        );
        let validations: Vec<Validation> = spec["validations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| {
                let expression = x["expression"].as_str().unwrap_or_default().to_string();
                let program = compile(&expression, &expression, &mut broken)?;
                Some(Validation {
                    message_expression: x["messageExpression"]
                        .as_str()
                        .and_then(|m| compile(m, m, &mut broken)),
                    expression,
                    program,
                    message: x["message"].as_str().map(str::to_string),
                    reason: x["reason"].as_str().unwrap_or("Invalid").to_string(),
                })
            })
            .collect();
        let mut programs: Vec<&cel::Program> = conditions
            .iter()
            .chain(&variables)
            .chain(&audit_annotations)
            .map(|(_, p)| p)
            .collect();
        for v in &validations {
            programs.push(&v.program);
            programs.extend(&v.message_expression);
        }
        let uses = [
            "object",
            "oldObject",
            "request",
            "params",
            "namespaceObject",
        ]
        .into_iter()
        .filter(|name| programs.iter().any(|p| cel::uses(p, name)))
        .collect();
        Policy {
            uses,
            name: v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            param_kind: spec["paramKind"]["kind"].as_str().map(|k| {
                (
                    spec["paramKind"]["apiVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    k.to_string(),
                )
            }),
            constraints: Match::parse(&spec["matchConstraints"]),
            conditions,
            variables,
            validations,
            audit_annotations,
            fail_closed: spec["failurePolicy"].as_str() != Some("Ignore"),
            broken,
        }
    }
}

impl Binding {
    pub fn compile(v: &Value) -> Binding {
        let spec = &v["spec"];
        let actions = strings(&spec["validationActions"]);
        let pr = &spec["paramRef"];
        Binding {
            name: v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            policy: spec["policyName"].as_str().unwrap_or_default().to_string(),
            param_ref: pr.is_object().then(|| ParamRef {
                name: pr["name"].as_str().map(str::to_string),
                namespace: pr["namespace"].as_str().map(str::to_string),
                selector: (!pr["selector"].is_null())
                    .then(|| serde_json::from_value(pr["selector"].clone()).ok())
                    .flatten()
                    .and_then(|ls| Selector::from_label_selector(&ls).ok()),
                deny_when_missing: pr["parameterNotFoundAction"].as_str() == Some("Deny"),
            }),
            resources: spec["matchResources"]
                .is_object()
                .then(|| Match::parse(&spec["matchResources"])),
            deny: actions.iter().any(|a| a == "Deny"),
            warn: actions.iter().any(|a| a == "Warn"),
            audit: actions.iter().any(|a| a == "Audit"),
        }
    }
}

// --- validation of the kinds as written -------------------------------------------------

pub(crate) fn check_rules(list: &Value, path: &str, errs: &mut Vec<FieldError>) {
    for (i, r) in list.as_array().into_iter().flatten().enumerate() {
        let at = format!("{path}[{i}]");
        for (k, what) in [
            ("apiGroups", "group"),
            ("apiVersions", "version"),
            ("resources", "resource"),
            ("operations", "operation"),
        ] {
            if strings(&r[k]).is_empty() {
                errs.push(err(
                    &format!("{at}.{k}"),
                    format!("Required value: at least one {what} is required"),
                ));
            }
        }
        for op in strings(&r["operations"]) {
            if !matches!(
                op.as_str(),
                "*" | "CREATE" | "UPDATE" | "DELETE" | "CONNECT"
            ) {
                errs.push(err(&format!("{at}.operations"), format!("Unsupported value: {op:?}: supported values: \"*\", \"CONNECT\", \"CREATE\", \"DELETE\", \"UPDATE\"")));
            }
        }
        if let Some(s) = r["scope"].as_str()
            && !matches!(s, "*" | "Cluster" | "Namespaced")
        {
            errs.push(err(
                &format!("{at}.scope"),
                format!(
                    "Unsupported value: {s:?}: supported values: \"*\", \"Cluster\", \"Namespaced\""
                ),
            ));
        }
    }
}

pub(crate) fn check_expr(
    src: Option<&str>,
    field: &str,
    required: bool,
    errs: &mut Vec<FieldError>,
) {
    match src {
        None | Some("") if required => {
            errs.push(err(field, "Required value: expression is not specified"))
        }
        None | Some("") => {}
        Some(s) => {
            if let Err(e) = cel::compile(s) {
                errs.push(err(
                    field,
                    format!("Invalid value: {s:?}: compilation failed: {e}"),
                ));
            }
        }
    }
}

/// ValidatingAdmissionPolicy validation (kube-apiserver's `ValidateValidatingAdmissionPolicy`).
pub fn validate_policy(v: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &v["spec"];
    let mc = &spec["matchConstraints"];
    if !mc.is_object() {
        errs.push(err("spec.matchConstraints", "Required value"));
    } else if mc["resourceRules"].as_array().is_none_or(|a| a.is_empty()) {
        errs.push(err("spec.matchConstraints.resourceRules", "Required value"));
    }
    check_rules(
        &mc["resourceRules"],
        "spec.matchConstraints.resourceRules",
        &mut errs,
    );
    check_rules(
        &mc["excludeResourceRules"],
        "spec.matchConstraints.excludeResourceRules",
        &mut errs,
    );
    if let Some(fp) = spec["failurePolicy"].as_str()
        && !matches!(fp, "Fail" | "Ignore")
    {
        errs.push(err(
            "spec.failurePolicy",
            format!("Unsupported value: {fp:?}: supported values: \"Fail\", \"Ignore\""),
        ));
    }
    let validations = spec["validations"].as_array().map_or(0, Vec::len);
    let annotations = spec["auditAnnotations"].as_array().map_or(0, Vec::len);
    if validations == 0 && annotations == 0 {
        errs.push(err(
            "spec.validations",
            "Required value: validations or auditAnnotations must contain at least one item",
        ));
    }
    for (i, x) in spec["validations"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("spec.validations[{i}]");
        check_expr(
            x["expression"].as_str(),
            &format!("{at}.expression"),
            true,
            &mut errs,
        );
        check_expr(
            x["messageExpression"].as_str(),
            &format!("{at}.messageExpression"),
            false,
            &mut errs,
        );
        if let Some(m) = x["message"].as_str()
            && m.contains('\n')
        {
            errs.push(err(
                &format!("{at}.message"),
                format!("Invalid value: {m:?}: message must not contain line breaks"),
            ));
        }
        if let Some(r) = x["reason"].as_str()
            && !matches!(
                r,
                "Unauthorized" | "Forbidden" | "Invalid" | "RequestEntityTooLarge"
            )
        {
            errs.push(err(&format!("{at}.reason"), format!("Unsupported value: {r:?}: supported values: \"Forbidden\", \"Invalid\", \"RequestEntityTooLarge\", \"Unauthorized\"")));
        }
    }
    for (list, key, expr) in [
        ("matchConditions", "name", "expression"),
        ("variables", "name", "expression"),
        ("auditAnnotations", "key", "valueExpression"),
    ] {
        let mut seen = std::collections::BTreeSet::new();
        for (i, x) in spec[list].as_array().into_iter().flatten().enumerate() {
            let at = format!("spec.{list}[{i}]");
            match x[key].as_str() {
                None | Some("") => errs.push(err(&format!("{at}.{key}"), "Required value")),
                Some(n) if !seen.insert(n.to_string()) => errs.push(err(
                    &format!("{at}.{key}"),
                    format!("Duplicate value: {n:?}"),
                )),
                Some(_) => {}
            }
            check_expr(x[expr].as_str(), &format!("{at}.{expr}"), true, &mut errs);
        }
    }
    let pk = &spec["paramKind"];
    if pk.is_object()
        && (pk["apiVersion"].as_str().is_none_or(str::is_empty)
            || pk["kind"].as_str().is_none_or(str::is_empty))
    {
        errs.push(err(
            "spec.paramKind",
            "Required value: apiVersion and kind are required",
        ));
    }
    errs
}

/// ValidatingAdmissionPolicyBinding validation.
pub fn validate_binding(v: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &v["spec"];
    if spec["policyName"].as_str().is_none_or(str::is_empty) {
        errs.push(err("spec.policyName", "Required value"));
    }
    let actions = strings(&spec["validationActions"]);
    if actions.is_empty() {
        errs.push(err(
            "spec.validationActions",
            "Required value: at least one validation action is required",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, a) in actions.iter().enumerate() {
        if !matches!(a.as_str(), "Deny" | "Warn" | "Audit") {
            errs.push(err(
                &format!("spec.validationActions[{i}]"),
                format!(
                    "Unsupported value: {a:?}: supported values: \"Audit\", \"Deny\", \"Warn\""
                ),
            ));
        } else if !seen.insert(a.as_str()) {
            errs.push(err(
                &format!("spec.validationActions[{i}]"),
                format!("Duplicate value: {a:?}"),
            ));
        }
    }
    if seen.contains("Deny") && seen.contains("Warn") {
        errs.push(err("spec.validationActions", "Invalid value: must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)"));
    }
    let pr = &spec["paramRef"];
    if pr.is_object() {
        if pr["name"].is_string() != pr["selector"].is_null() {
            errs.push(err(
                "spec.paramRef",
                "Invalid value: one of name or selector must be set",
            ));
        }
        match pr["parameterNotFoundAction"].as_str() {
            Some("Allow" | "Deny") => {}
            None => errs.push(err(
                "spec.paramRef.parameterNotFoundAction",
                "Required value",
            )),
            Some(o) => errs.push(err(
                "spec.paramRef.parameterNotFoundAction",
                format!("Unsupported value: {o:?}: supported values: \"Allow\", \"Deny\""),
            )),
        }
    }
    check_rules(
        &spec["matchResources"]["resourceRules"],
        "spec.matchResources.resourceRules",
        &mut errs,
    );
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req<'a>(resource: &'a str, sub: &'a str, op: &'a str) -> Request<'a> {
        Request {
            group: "apps",
            version: "v1",
            resource,
            subresource: sub,
            operation: op,
            namespaced: true,
            name: "x",
        }
    }

    #[test]
    fn resource_rules_match_resources_subresources_and_operations() {
        let m = Match::parse(&json!({"resourceRules": [
            {"apiGroups": ["apps"], "apiVersions": ["v1"], "resources": ["deployments", "deployments/scale"], "operations": ["CREATE", "UPDATE"]}
        ], "excludeResourceRules": [{"apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "operations": ["*"], "resourceNames": ["skip"]}]}));
        assert!(m.covers(&req("deployments", "", "CREATE")));
        assert!(m.covers(&req("deployments", "scale", "UPDATE")));
        assert!(!m.covers(&req("deployments", "status", "UPDATE")));
        assert!(!m.covers(&req("deployments", "", "DELETE")));
        assert!(!m.covers(&req("replicasets", "", "CREATE")));
        let mut skipped = req("deployments", "", "CREATE");
        skipped.name = "skip";
        assert!(!m.covers(&skipped));
        let all = Match::parse(
            &json!({"resourceRules": [{"apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "operations": ["*"]}]}),
        );
        assert!(all.covers(&req("pods", "", "DELETE")));
        assert!(
            !all.covers(&req("pods", "status", "UPDATE")),
            "* is the main resource only"
        );
    }

    #[test]
    fn bad_policies_and_bindings_are_refused_with_their_fields() {
        let errs = validate_policy(
            &json!({"spec": {"validations": [{"expression": "object.x >"}, {"expression": "true", "reason": "Nope"}], "failurePolicy": "Maybe"}}),
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.matchConstraints",
                "spec.failurePolicy",
                "spec.validations[0].expression",
                "spec.validations[1].reason"
            ]
        );
        let errs = validate_binding(
            &json!({"spec": {"validationActions": ["Deny", "Warn", "Deny"], "paramRef": {"name": "p"}}}),
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.policyName",
                "spec.validationActions[2]",
                "spec.validationActions",
                "spec.paramRef.parameterNotFoundAction"
            ]
        );
    }
}
