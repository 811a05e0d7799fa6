//! `?fieldValidation=Strict|Warn|Ignore` (KEP-2885): unknown fields in a request body are a 400,
//! warnings, or dropped silently.

use serde_json::Value;

use crate::errors::{ApiError, ApiResult};
use crate::request::{FieldValidation, Params, Target};

/// fieldValidation=Strict: unknown fields are a 400, kube-apiserver's message. Returns nothing
/// otherwise (warnings are added by the caller that owns the response).
pub fn strict_check(t: &Target, p: &Params, obj: &Value) -> ApiResult<()> {
    if p.field_validation()? != FieldValidation::Strict {
        return Ok(());
    }
    let unknown = t.info.strategy.unknown_fields(obj);
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    Err(ApiError::bad_request(format!(
        "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
        list.join(", "),
        kind = &t.info.kind,
        version = &t.info.version
    )))
}

/// A body's repeated keys (serde_json keeps the last; so does Kubernetes unless asked): with
/// fieldValidation=Strict a 400 (`strict decoding error: json: duplicate field "x"`), with Warn
/// one warning each, else nothing. Only read when asked for: it is another pass over the body.
pub fn duplicate_field_check(t: &Target, p: &Params, body: &[u8]) -> ApiResult<Vec<String>> {
    let mode = p.field_validation()?;
    if mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let found: Vec<String> = crate::body::duplicate_fields(body)
        .into_iter()
        .map(|f| format!("json: duplicate field \"{f}\""))
        .collect();
    if mode == FieldValidation::Strict && !found.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
            found.join(", "),
            kind = &t.info.kind,
            version = &t.info.version
        )));
    }
    Ok(found)
}

/// fieldValidation=Warn: one warning per unknown field of a request body.
pub fn unknown_field_warnings(t: &Target, p: &Params, obj: &Value) -> ApiResult<Vec<String>> {
    if p.field_validation()? != FieldValidation::Warn {
        return Ok(Vec::new());
    }
    Ok(t.info
        .strategy
        .unknown_fields(obj)
        .into_iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect())
}
