//! What one request is about, once the HTTP layer has read it: the [`Target`] (kube-apiserver's
//! RequestInfo after the resource was resolved), its query [`Params`] and the [`View`] the client
//! asked for.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::registry::ResourceInfo;

/// What one request is about (kube-apiserver's RequestInfo, after the resource was resolved).
#[derive(Debug, Clone)]
pub struct Target {
    pub info: Arc<ResourceInfo>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Query parameters, with the handful every verb reads.
#[derive(Debug, Default)]
pub struct Params {
    /// The query string's parameters.
    pub query: HashMap<String, String>,
    /// The field manager to record when the request names none: the User-Agent's product
    /// (`kubectl/v1.32.0 (linux/amd64) …` → `kubectl`), as kube-apiserver derives it.
    pub user_agent_manager: Option<String>,
}

impl Params {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.query
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    /// Who a non-apply write is recorded under in managedFields.
    pub fn manager(&self) -> &str {
        self.get("fieldManager")
            .or(self.user_agent_manager.as_deref())
            .unwrap_or("unknown")
    }

    /// The options of a write checked (a 422 on CreateOptions, UpdateOptions or PatchOptions,
    /// as Kubernetes validates them): the fieldManager is at most 128 printable characters, and
    /// `force` is for apply patches only.
    pub fn check_write_options(&self, verb: &str, apply: bool) -> ApiResult<()> {
        let kind = match verb {
            "create" => "CreateOptions",
            "update" => "UpdateOptions",
            _ => "PatchOptions",
        };
        let mut causes = Vec::new();
        if let Some(m) = self.get("fieldManager") {
            causes.extend(crate::patch::managed_fields::field_manager_errors(
                "fieldManager",
                m,
            ));
        }
        if verb == "patch" && !apply && self.get("force").is_some() {
            causes.push(capstan_api::validation::FieldError {
                field: "force".into(),
                value: String::new(),
                message: "Forbidden: may not be specified for non-apply patch".into(),
            });
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid("meta.k8s.io", kind, "", causes))
        }
    }

    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "Invalid dryRun value {other:?}: the only supported value is \"All\""
            ))),
        }
    }

    pub fn int(&self, k: &str) -> ApiResult<Option<i64>> {
        self.get(k)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid {k} {v:?}: not an integer"))
                })
            })
            .transpose()
    }

    /// A resourceVersion parameter: None for unset or "0" (any / current state).
    pub fn resource_version(&self) -> ApiResult<Option<i64>> {
        match self.get("resourceVersion") {
            None | Some("0") => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(rv) if rv > 0 => Ok(Some(rv)),
                _ => Err(ApiError::bad_request(format!(
                    "invalid resourceVersion {v:?}"
                ))),
            },
        }
    }
}

/// How to treat fields the type does not know (`?fieldValidation=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl Params {
    pub fn field_validation(&self) -> ApiResult<FieldValidation> {
        match self.get("fieldValidation") {
            None | Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other:?} (use Ignore, Warn or Strict)"
            ))),
        }
    }
}

/// How a response shows objects (chosen by the client's Accept header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Object,
    /// meta.k8s.io/v1 Table rows (kubectl get).
    Table,
    /// meta.k8s.io/v1 PartialObjectMetadata: the metadata alone.
    Metadata,
}

/// An object as PartialObjectMetadata (what metadata-only informers ask for).
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}
