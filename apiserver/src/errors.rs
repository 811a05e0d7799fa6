//! Every error the API returns is a `metav1.Status` with the HTTP code, the reason and, where a
//! field is at fault, `details.causes` naming it — exactly as kube-apiserver writes them, because
//! kubectl and client libraries branch on `reason` and print `message`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use capstan_api::validation::FieldError;
use capstan_storage::StorageError;
use serde_json::{Value, json};

/// An API error; turns into a Status response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// (group, kind, name) when the error is about an object.
    pub details: Option<Box<Details>>,
}

#[derive(Debug, Clone, Default)]
pub struct Details {
    pub name: String,
    pub group: String,
    pub kind: String,
    pub causes: Vec<FieldError>,
    pub retry_after_seconds: Option<u32>,
}

/// What a resource is called in messages: `pods`, `deployments.apps`.
pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.details = Some(Box::new(Details {
            name: name.to_string(),
            group: group.to_string(),
            kind: kind.to_string(),
            ..Default::default()
        }));
        self
    }

    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, plural)),
        )
        .about(group, plural, name)
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, plural)),
        )
        .about(group, plural, name)
    }

    pub fn conflict(group: &str, plural: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, plural)
            ),
        )
        .about(group, plural, name)
    }

    /// 403: the request is understood and refused (`namespaces "kube-system" is forbidden: ...`).
    pub fn forbidden(group: &str, plural: &str, name: &str, why: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: {why}",
                qualified(group, plural)
            ),
        )
        .about(group, plural, name)
    }

    /// 401: the request's credentials are missing (anonymous requests refused) or wrong.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 for a request authorization denied, worded as kube-apiserver words it:
    /// `pods "p" is forbidden: User "jane" cannot get resource "pods" in API group "" in the
    /// namespace "default"` (no name for lists; `forbidden: ...` for paths).
    pub fn denied(a: &crate::auth::attributes::Attributes) -> Self {
        let why = a.denial();
        if !a.resource_request {
            return Self::new(403, "Forbidden", format!("forbidden: {why}"));
        }
        let what = qualified(&a.api_group, &a.resource);
        let message = if a.name.is_empty() {
            format!("{what} is forbidden: {why}")
        } else {
            format!("{what} \"{}\" is forbidden: {why}", a.name)
        };
        Self::new(403, "Forbidden", message).about(&a.api_group, &a.resource, &a.name)
    }

    /// 422 with every failing field listed.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<FieldError>) -> Self {
        let list: Vec<String> = causes
            .iter()
            .map(|c| {
                if c.value.is_empty() {
                    format!("{}: {}", c.field, c.message)
                } else {
                    format!("{}: Invalid value: \"{}\": {}", c.field, c.value, c.message)
                }
            })
            .collect();
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {}", bracket(&list)),
        )
        .about(group, kind, name);
        if let Some(d) = e.details.as_mut() {
            d.causes = causes;
        }
        e
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(503, "ServiceUnavailable", message);
        e.details = Some(Box::new(Details {
            retry_after_seconds: Some(1),
            ..Default::default()
        }));
        e
    }

    /// 429: the request may succeed later (an eviction a disruption budget refuses now).
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(429, "TooManyRequests", message)
    }

    /// 429 for a request over the in-flight limits, as kube-apiserver answers it
    /// (`Retry-After: 1`).
    pub fn overloaded() -> Self {
        let mut e = Self::too_many_requests("Too many requests, please try again later.");
        e.details = Some(Box::new(Details {
            retry_after_seconds: Some(1),
            ..Default::default()
        }));
        e
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// 504 for a read naming a resourceVersion the store did not reach in time, with the
    /// `ResourceVersionTooLarge` cause client-go looks for.
    pub fn too_large_resource_version(rv: i64, current: i64) -> Self {
        let mut e = Self::timeout(format!(
            "Too large resource version: {rv}, current: {current}"
        ));
        e.details = Some(Box::new(Details {
            causes: vec![FieldError {
                field: String::new(),
                value: String::new(),
                message: "Too large resource version".into(),
            }],
            retry_after_seconds: Some(1),
            ..Default::default()
        }));
        e
    }

    /// The Status object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut details = serde_json::Map::new();
            if !d.name.is_empty() {
                details.insert("name".into(), json!(d.name));
            }
            if !d.group.is_empty() {
                details.insert("group".into(), json!(d.group));
            }
            if !d.kind.is_empty() {
                details.insert("kind".into(), json!(d.kind));
            }
            if !d.causes.is_empty() {
                details.insert(
                    "causes".into(),
                    Value::Array(
                        d.causes
                            .iter()
                            .map(|c| {
                                json!({
                                    "reason": cause_reason(&c.message),
                                    "message": if c.value.is_empty() { c.message.clone() } else { format!("Invalid value: \"{}\": {}", c.value, c.message) },
                                    "field": c.field,
                                })
                            })
                            .collect(),
                    ),
                );
            }
            if let Some(r) = d.retry_after_seconds {
                details.insert("retryAfterSeconds".into(), json!(r));
            }
            s["details"] = Value::Object(details);
        }
        s
    }
}

fn cause_reason(message: &str) -> &'static str {
    if message.starts_with("Too large resource version") {
        "ResourceVersionTooLarge"
    } else if message.starts_with("conflict with") {
        "FieldManagerConflict"
    } else if message.starts_with("Required value") {
        "FieldValueRequired"
    } else if message.starts_with("Unsupported value") {
        "FieldValueNotSupported"
    } else if message.starts_with("Forbidden") {
        "FieldValueForbidden"
    } else if message.starts_with("The disruption budget") {
        "DisruptionBudget"
    } else if message.starts_with("Duplicate") {
        "FieldValueDuplicate"
    } else {
        "FieldValueInvalid"
    }
}

fn bracket(list: &[String]) -> String {
    if list.len() == 1 {
        list[0].clone()
    } else {
        format!("[{}]", list.join(", "))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        let mut resp = (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        let retry_after = self.details.as_ref().and_then(|d| d.retry_after_seconds);
        if let Some(secs) = retry_after.or((self.code == 503 || self.code == 504).then_some(1)) {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(secs));
        }
        resp
    }
}

/// Maps a storage error about one object (group/plural/name) to its API error.
pub fn from_storage(e: StorageError, group: &str, plural: &str, name: &str) -> ApiError {
    match e {
        StorageError::NotFound { .. } => ApiError::not_found(group, plural, name),
        StorageError::AlreadyExists { .. } => ApiError::already_exists(group, plural, name),
        StorageError::Conflict { .. } => ApiError::conflict(
            group,
            plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
        StorageError::Compacted {
            requested,
            compacted,
        } => ApiError::gone(format!(
            "The resourceVersion for the provided list is too old: {requested} (compacted to {compacted})"
        )),
        StorageError::FutureRevision { requested, current } => {
            ApiError::too_large_resource_version(requested, current)
        }
        StorageError::TooLarge { size, limit, .. } => ApiError::too_large(format!(
            "object is {size} bytes, over the limit of {limit} bytes"
        )),
        StorageError::Unavailable { message, .. } => {
            ApiError::unavailable(format!("storage is unavailable: {message}"))
        }
        e @ (StorageError::InvalidKey { .. } | StorageError::Internal { .. }) => {
            tracing::error!(error = %e, "storage failure");
            ApiError::internal(format!("storage error: {e}"))
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// 404 for a path the server does not serve (no such route or resource).
pub fn route_not_found() -> ApiError {
    ApiError {
        code: 404,
        reason: "NotFound",
        message: "the server could not find the requested resource".into(),
        details: None,
    }
}
