//! The access reviews (authorization.k8s.io/v1), who-am-I and token reviews
//! (authentication.k8s.io/v1), all
//! create-only and never stored: `kubectl auth can-i` posts a SelfSubjectAccessReview (and,
//! with `--list`, a SelfSubjectRulesReview), `kubectl auth whoami` a SelfSubjectReview; other
//! components ask about someone else with a SubjectAccessReview, or in one namespace with a
//! LocalSubjectAccessReview; a component delegating authentication posts a TokenReview. Each
//! answers with the object it was sent and a status.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use super::UserInfo;
use super::attributes::Attributes;
use crate::ApiServer;
use crate::body::{json_body, read_body};
use crate::errors::{ApiError, ApiResult};

/// The virtual resources served here: (group, version, plural, kind, namespaced), for
/// discovery.
pub const RESOURCES: &[(&str, &str, &str, &str, bool)] = &[
    (
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "SelfSubjectReview",
        false,
    ),
    (
        "authorization.k8s.io",
        "v1",
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        true,
    ),
    (
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
    ),
    (
        "authorization.k8s.io",
        "v1",
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        false,
    ),
    (
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "SubjectAccessReview",
        false,
    ),
];

fn invalid(kind: &str, field: &str, message: &str) -> ApiError {
    ApiError::invalid(
        if matches!(kind, "SelfSubjectReview" | "TokenReview") {
            "authentication.k8s.io"
        } else {
            "authorization.k8s.io"
        },
        kind,
        "",
        vec![FieldError {
            field: field.into(),
            value: String::new(),
            message: message.into(),
        }],
    )
}

async fn body_of(headers: &HeaderMap, body: Body, group: &str, kind: &str) -> ApiResult<Value> {
    let bytes = read_body(body).await?;
    let mut v = json_body(headers, &bytes, &format!("{group}/v1"), kind)?;
    if !v.is_object() {
        return Err(ApiError::bad_request(format!(
            "a {kind} must be a JSON object"
        )));
    }
    let want = format!("{group}/v1");
    match (
        v.get("apiVersion").and_then(Value::as_str),
        v.get("kind").and_then(Value::as_str),
    ) {
        (None | Some(""), None | Some("")) => {}
        (Some(av), Some(k)) if av == want && k == kind => {}
        (av, k) => {
            return Err(ApiError::bad_request(format!(
                "the body is a {}/{} where a {want} {kind} was expected",
                av.unwrap_or_default(),
                k.unwrap_or_default()
            )));
        }
    }
    v["apiVersion"] = json!(want);
    v["kind"] = json!(kind);
    Ok(v)
}

fn created(mut v: Value, status: Value) -> Response {
    v["status"] = status;
    if v["metadata"].is_null() {
        v["metadata"] = json!({});
    }
    v["metadata"]["creationTimestamp"] = Value::Null;
    super::super::http::json_response(StatusCode::CREATED, &v)
}

/// The attributes a review's spec asks about, for `user`.
fn asked(user: Arc<UserInfo>, spec: &Value, kind: &str) -> ApiResult<Attributes> {
    let res = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let non = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    match (res, non) {
        (Some(r), None) => {
            let mut a = Attributes::resource(
                user,
                &s(r, "verb"),
                &s(r, "group"),
                &s(r, "namespace"),
                &s(r, "resource"),
                &s(r, "subresource"),
                &s(r, "name"),
            );
            a.api_version = s(r, "version");
            Ok(a)
        }
        (None, Some(n)) => Ok(Attributes::non_resource(user, &s(n, "verb"), &s(n, "path"))),
        (Some(_), Some(_)) => Err(invalid(
            kind,
            "spec.nonResourceAttributes",
            "Invalid value: cannot be specified in combination with resourceAttributes",
        )),
        (None, None) => Err(invalid(
            kind,
            "spec.resourceAttributes",
            "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

fn review_status(api: &ApiServer, a: &Attributes) -> Value {
    let d = api.auth.authorize(api, a);
    let mut status = json!({"allowed": d.allowed});
    if !d.reason.is_empty() {
        status["reason"] = json!(d.reason);
    }
    status
}

/// POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews
pub async fn self_subject_access_review(
    State(api): State<Arc<ApiServer>>,
    Extension(user): Extension<Arc<UserInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let kind = "SelfSubjectAccessReview";
    let r = async {
        let v = body_of(&headers, body, "authorization.k8s.io", kind).await?;
        let a = asked(user, &v["spec"], kind)?;
        let status = review_status(&api, &a);
        Ok::<_, ApiError>(created(v, status))
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

/// The user a SubjectAccessReview's spec names.
fn subject_of(spec: &Value, kind: &str) -> ApiResult<Arc<UserInfo>> {
    let user = spec["user"].as_str().unwrap_or_default();
    let groups: Vec<String> = spec["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str().map(String::from))
        .collect();
    if user.is_empty() && groups.is_empty() {
        return Err(invalid(
            kind,
            "spec.user",
            "Invalid value: at least one of user or group must be specified",
        ));
    }
    let extra = spec["extra"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let vals = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect();
                    (k.clone(), vals)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Arc::new(UserInfo {
        username: user.into(),
        uid: spec["uid"].as_str().unwrap_or_default().into(),
        groups,
        extra,
    }))
}

/// POST /apis/authorization.k8s.io/v1/subjectaccessreviews
pub async fn subject_access_review(
    State(api): State<Arc<ApiServer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let kind = "SubjectAccessReview";
    let r = async {
        let v = body_of(&headers, body, "authorization.k8s.io", kind).await?;
        let subject = subject_of(&v["spec"], kind)?;
        let a = asked(subject, &v["spec"], kind)?;
        let status = review_status(&api, &a);
        Ok::<_, ApiError>(created(v, status))
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

/// POST /apis/authorization.k8s.io/v1/namespaces/{namespace}/localsubjectaccessreviews
pub async fn local_subject_access_review(
    State(api): State<Arc<ApiServer>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let kind = "LocalSubjectAccessReview";
    let r = async {
        let mut v = body_of(&headers, body, "authorization.k8s.io", kind).await?;
        match v["metadata"]["namespace"].as_str() {
            None | Some("") => v["metadata"]["namespace"] = json!(namespace),
            Some(ns) if ns == namespace => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        if v["spec"]
            .get("nonResourceAttributes")
            .is_some_and(|n| !n.is_null())
        {
            return Err(invalid(
                kind,
                "spec.nonResourceAttributes",
                "Invalid value: disallowed on this kind of request",
            ));
        }
        match v["spec"]["resourceAttributes"]["namespace"].as_str() {
            Some(ns) if !ns.is_empty() && ns != namespace => {
                return Err(invalid(
                    kind,
                    "spec.resourceAttributes.namespace",
                    "Invalid value: must match metadata.namespace",
                ));
            }
            _ => {
                if v["spec"]["resourceAttributes"].is_object() {
                    v["spec"]["resourceAttributes"]["namespace"] = json!(namespace);
                }
            }
        }
        let subject = subject_of(&v["spec"], kind)?;
        let a = asked(subject, &v["spec"], kind)?;
        let status = review_status(&api, &a);
        Ok::<_, ApiError>(created(v, status))
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

/// POST /apis/authorization.k8s.io/v1/selfsubjectrulesreviews
pub async fn self_subject_rules_review(
    State(api): State<Arc<ApiServer>>,
    Extension(user): Extension<Arc<UserInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let kind = "SelfSubjectRulesReview";
    let r = async {
        let v = body_of(&headers, body, "authorization.k8s.io", kind).await?;
        let namespace = v["spec"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (resource, non_resource) = api.auth.rbac.rules_for(&api, &user, &namespace);
        let resource: Vec<Value> = resource
            .iter()
            .map(|r| {
                json!({
                    "verbs": r.verbs,
                    "apiGroups": r.api_groups.clone().unwrap_or_default(),
                    "resources": r.resources.clone().unwrap_or_default(),
                    "resourceNames": r.resource_names.clone().unwrap_or_default(),
                })
            })
            .collect();
        let non_resource: Vec<Value> = non_resource
            .iter()
            .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls.clone().unwrap_or_default()}))
            .collect();
        let status = json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false});
        Ok::<_, ApiError>(created(v, status))
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

/// POST /apis/authentication.k8s.io/v1/selfsubjectreviews (`kubectl auth whoami`).
pub async fn self_subject_review(
    Extension(user): Extension<Arc<UserInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let kind = "SelfSubjectReview";
    let r = async {
        let v = body_of(&headers, body, "authentication.k8s.io", kind).await?;
        Ok::<_, ApiError>(created(v, json!({"userInfo": *user})))
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

/// POST /apis/authentication.k8s.io/v1/tokenreviews: whether a bearer token authenticates, and
/// as whom (what a component delegating authentication asks).
pub async fn token_review(
    State(api): State<Arc<ApiServer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let kind = "TokenReview";
    let r = async {
        let v = body_of(&headers, body, "authentication.k8s.io", kind).await?;
        let token = v["spec"]["token"].as_str().unwrap_or_default();
        if token.is_empty() {
            return Err(invalid(
                kind,
                "spec.token",
                "Required value: token must not be empty",
            ));
        }
        let status = match api.auth.token_user(&*api, token).await {
            Ok(user) => json!({"authenticated": true, "user": *user}),
            Err(_) => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
        };
        Ok::<_, ApiError>(created(v, status))
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}
