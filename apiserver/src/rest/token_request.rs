//! POST serviceaccounts/NAME/token: the TokenRequest API (authentication.k8s.io/v1), as
//! kubernetes/pkg/registry/core/serviceaccount/storage/token.go serves it — `kubectl create
//! token`, and the node agent asking for a pod's projected token.
//!
//! - `spec.expirationSeconds` defaults to an hour; under 10 minutes or over 2^32 seconds is a
//!   422, and with `--service-account-max-token-expiration` a longer request is cut to it.
//! - `spec.audiences` default to the API server's own (`--api-audiences`).
//! - `spec.boundObjectRef` (v1 Pod, Secret or Node) must name an object that exists, with the
//!   UID given if one is (else a 409: the object was deleted and recreated); a pod must run as
//!   this ServiceAccount. A pod-bound token also records the pod's node.
//!
//! The answer is the request with `status.token` and `status.expirationTimestamp`.

use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::auth::service_account::{Bound, Issue, Objects};
use crate::errors::{ApiError, ApiResult};
use crate::object::ObjectExt;
use crate::request::{Params, Target};

use super::name_of;

/// An hour, as Kubernetes defaults it.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest token Kubernetes issues.
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn invalid(name: &str, field: &str, value: String, message: &str) -> ApiError {
    ApiError::invalid(
        "authentication.k8s.io",
        "TokenRequest",
        name,
        vec![FieldError {
            field: field.into(),
            value,
            message: message.into(),
        }],
    )
}

impl ApiServer {
    /// POST serviceaccounts/NAME/token.
    pub async fn request_token(&self, t: &Target, mut req: Value, p: &Params) -> ApiResult<Value> {
        let name = name_of(t).to_string();
        let ns = t.namespace.clone().unwrap_or_default();
        let Some(tokens) = &self.auth.config.service_accounts else {
            return Err(ApiError::not_found(
                "",
                "serviceaccounts/token",
                "(this server has no service-account signing key)",
            ));
        };
        p.dry_run()?;
        if !req["spec"].is_object() {
            req["spec"] = json!({});
        }
        let spec = &mut req["spec"];
        let mut seconds = match &spec["expirationSeconds"] {
            Value::Null => DEFAULT_EXPIRATION_SECONDS,
            v => v.as_i64().ok_or_else(|| {
                invalid(
                    &name,
                    "spec.expirationSeconds",
                    v.to_string(),
                    "must be an integer",
                )
            })?,
        };
        if seconds < MIN_EXPIRATION_SECONDS {
            return Err(invalid(
                &name,
                "spec.expirationSeconds",
                seconds.to_string(),
                "may not specify a duration less than 10 minutes",
            ));
        }
        if seconds > MAX_EXPIRATION_SECONDS {
            return Err(invalid(
                &name,
                "spec.expirationSeconds",
                seconds.to_string(),
                "may not specify a duration larger than 2^32 seconds",
            ));
        }
        if let Some(max) = tokens.max_expiration {
            seconds = seconds.min(max);
        }
        spec["expirationSeconds"] = json!(seconds);
        let audiences: Vec<String> = match &spec["audiences"] {
            Value::Array(a) if !a.is_empty() => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    invalid(
                        &name,
                        "spec.audiences",
                        spec["audiences"].to_string(),
                        "must be strings",
                    )
                })?,
            _ => tokens.audiences.clone(),
        };
        spec["audiences"] = json!(audiences);
        let sa = self
            .object(("", "v1", "serviceaccounts"), Some(&ns), &name)
            .await
            .ok_or_else(|| ApiError::not_found("", "serviceaccounts", &name))?;
        let (bound, node) = self
            .bound_object(&ns, &name, &spec["boundObjectRef"])
            .await?;
        let now = unix_now();
        let (token, exp) = tokens
            .issue(&Issue {
                service_account: &sa,
                audiences: &audiences,
                expiration_seconds: seconds,
                bound,
                node,
                now,
            })
            .map_err(ApiError::internal)?;
        let expires = jiff::Timestamp::from_second(exp)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        req["apiVersion"] = json!("authentication.k8s.io/v1");
        req["kind"] = json!("TokenRequest");
        req.set_meta("name", json!(name));
        req.set_meta("namespace", json!(ns));
        req.set_meta("creationTimestamp", json!(crate::object::now()));
        req["status"] = json!({"token": token, "expirationTimestamp": expires});
        tracing::info!(namespace = %ns, service_account = %name, seconds, "issued a service account token");
        Ok(req)
    }

    /// The object a token is to be bound to (and a pod's node), checked as Kubernetes does.
    async fn bound_object(
        &self,
        ns: &str,
        sa: &str,
        r: &Value,
    ) -> ApiResult<(Option<Bound>, Option<(String, String)>)> {
        if r.is_null() {
            return Ok((None, None));
        }
        let kind = r["kind"].as_str().unwrap_or_default();
        let api_version = r["apiVersion"].as_str().unwrap_or_default();
        let (resource, namespace) = match (api_version, kind) {
            ("v1", "Pod") => (("", "v1", "pods"), Some(ns)),
            ("v1", "Secret") => (("", "v1", "secrets"), Some(ns)),
            ("v1", "Node") => (("", "v1", "nodes"), None),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token to object of type {api_version}, Kind={kind}"
                )));
            }
        };
        let name = r["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            return Err(invalid(
                sa,
                "spec.boundObjectRef.name",
                String::new(),
                "Required value",
            ));
        }
        let obj = self
            .object(resource, namespace, name)
            .await
            .ok_or_else(|| ApiError::not_found("", resource.2, name))?;
        let uid = obj.meta_str("uid").unwrap_or_default().to_string();
        if let Some(want) = r["uid"].as_str().filter(|u| !u.is_empty())
            && want != uid
        {
            return Err(ApiError::conflict(
                "",
                kind,
                name,
                &format!(
                    "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        let mut node = None;
        if kind == "Pod" {
            let runs_as = obj["spec"]["serviceAccountName"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("default");
            if runs_as != sa {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {sa:?} to pod running with different serviceaccount name."
                )));
            }
            if let Some(n) = obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                let node_uid = self
                    .object(("", "v1", "nodes"), None, n)
                    .await
                    .and_then(|o| o.meta_str("uid").map(str::to_string))
                    .unwrap_or_default();
                node = Some((n.to_string(), node_uid));
            }
        }
        Ok((
            Some(Bound {
                kind: kind.into(),
                name: name.into(),
                uid,
            }),
            node,
        ))
    }
}
