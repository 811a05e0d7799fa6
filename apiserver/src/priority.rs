//! scheduling.k8s.io/v1 PriorityClasses (pkg/apis/scheduling) and the Priority admission
//! plugin (plugin/pkg/admission/priority):
//!
//! - a class's `value` is at most 1,000,000,000 (higher values are the system's),
//!   `system-` names are the system's, `value` and `preemptionPolicy` never change, and one
//!   class at most is the `globalDefault`;
//! - the system classes `system-node-critical` (2,000,001,000) and `system-cluster-critical`
//!   (2,000,000,000) exist from the start, as kube-apiserver makes them;
//! - every new pod gets `spec.priority` (and `preemptionPolicy`) from its
//!   `priorityClassName`, else from the global default class (whose name it then carries),
//!   else 0. A class that does not exist, or a `priority` given that differs from the
//!   class's, refuses the pod with Kubernetes' 403.

use std::sync::{OnceLock, Weak};

use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::object::ObjectExt;
use crate::strategy::{StorageHooks, invalid, required};
use crate::table::{self, Table};

pub const GROUP: &str = "scheduling.k8s.io";
const PLURAL: &str = "priorityclasses";
/// The highest value a user's class may have (`HighestUserDefinablePriority`).
const HIGHEST_USER: i64 = 1_000_000_000;
/// The classes kube-apiserver creates: name, value, description.
pub const SYSTEM_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// `PreemptLowerPriority` unless set (the declarative default).
pub fn defaults(obj: &mut Value) {
    if let Some(m) = obj.as_object_mut()
        && m.get("preemptionPolicy").is_none_or(Value::is_null)
    {
        m.insert("preemptionPolicy".into(), json!("PreemptLowerPriority"));
    }
}

pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = obj.name().unwrap_or_default();
    let system = SYSTEM_CLASSES.iter().find(|(n, ..)| *n == name);
    match obj["value"].as_i64() {
        None => errs.push(required("value")),
        Some(v) => match system {
            Some((_, value, _)) if v != *value => errs.push(invalid(
                "metadata.name",
                name,
                format!("name is reserved for a system priority class with value {value}"),
            )),
            None if v > HIGHEST_USER => errs.push(invalid(
                "value",
                &v.to_string(),
                format!("maximum allowed value of a user defined priority is {HIGHEST_USER}"),
            )),
            _ => {}
        },
    }
    if system.is_none() && name.starts_with("system-") {
        errs.push(invalid(
            "metadata.name",
            name,
            "priority class names with 'system-' prefix are reserved",
        ));
    }
    let policy = obj["preemptionPolicy"]
        .as_str()
        .unwrap_or("PreemptLowerPriority");
    if !matches!(policy, "PreemptLowerPriority" | "Never") {
        errs.push(FieldError {
            field: "preemptionPolicy".into(),
            value: String::new(),
            message: format!(
                "Unsupported value: \"{policy}\": supported values: \"Never\", \"PreemptLowerPriority\""
            ),
        });
    }
    errs
}

pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for key in ["value", "preemptionPolicy"] {
        if new[key] != old[key] {
            errs.push(FieldError {
                field: key.into(),
                value: String::new(),
                message: format!("Invalid value: {}: field is immutable", new[key]),
            });
        }
    }
    errs
}

pub fn table() -> Table {
    table::table(
        &[
            ("Value", "integer", 0),
            ("Global-Default", "boolean", 0),
            ("Age", "string", 0),
            ("PreemptionPolicy", "string", 0),
        ],
        |o| {
            vec![
                json!(o["value"].as_i64().unwrap_or(0)),
                json!(o["globalDefault"].as_bool().unwrap_or(false)),
                table::age(o),
                json!(
                    o["preemptionPolicy"]
                        .as_str()
                        .unwrap_or("PreemptLowerPriority")
                ),
            ]
        },
    )
}

/// The classes kube-apiserver bootstraps, made when missing.
pub async fn ensure_system_classes(api: &ApiServer) -> ApiResult<()> {
    for (name, value, description) in SYSTEM_CLASSES {
        let obj = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, "description": description});
        api.create_if_missing((GROUP, "v1", PLURAL), obj).await?;
    }
    Ok(())
}

/// The Priority admission plugin (pods' storage hook) and the globalDefault check (the
/// classes' hook); [`PriorityAdmission::attach`] gives it the server it reads classes from.
#[derive(Debug, Default)]
pub struct PriorityAdmission {
    api: OnceLock<Weak<ApiServer>>,
}

impl PriorityAdmission {
    pub fn attach(&self, api: Weak<ApiServer>) {
        let _ = self.api.set(api);
    }

    fn classes(&self) -> ApiResult<Vec<std::sync::Arc<Value>>> {
        let api = self
            .api
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| ApiError::internal("the Priority admission has no server"))?;
        let info = api
            .registry
            .get(GROUP, "v1", PLURAL)
            .ok_or_else(|| ApiError::internal("PriorityClasses are not registered"))?;
        Ok(api.cacher(&info)?.values("").0)
    }

    /// Sets a new pod's priority from its class.
    pub fn admit_pod(&self, pod: &mut Value) -> ApiResult<()> {
        let name = pod.name().unwrap_or_default().to_string();
        let classes = self.classes()?;
        let spec = &mut pod["spec"];
        let wanted = spec["priorityClassName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let class = match &wanted {
            Some(n) => Some(
                classes
                    .iter()
                    .find(|c| c.name() == Some(n.as_str()))
                    .ok_or_else(|| {
                        ApiError::forbidden(
                            "",
                            "pods",
                            &name,
                            &format!("no PriorityClass with name {n} was found"),
                        )
                    })?,
            ),
            None => classes
                .iter()
                .filter(|c| c["globalDefault"] == true)
                .min_by_key(|c| c["value"].as_i64().unwrap_or(0)),
        };
        let (value, policy) = match class {
            Some(c) => (
                c["value"].as_i64().unwrap_or(0),
                c["preemptionPolicy"]
                    .as_str()
                    .unwrap_or("PreemptLowerPriority")
                    .to_string(),
            ),
            None => (0, "PreemptLowerPriority".to_string()),
        };
        if let Some(given) = spec["priority"].as_i64()
            && given != value
        {
            return Err(ApiError::forbidden(
                "",
                "pods",
                &name,
                &format!(
                    "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
                ),
            ));
        }
        if let (None, Some(c)) = (&wanted, class) {
            spec["priorityClassName"] = json!(c.name().unwrap_or_default());
        }
        spec["priority"] = json!(value);
        if spec["preemptionPolicy"].as_str().is_none_or(str::is_empty) {
            spec["preemptionPolicy"] = json!(policy);
        }
        Ok(())
    }

    /// One global default at most (kube's admission refuses a second).
    fn admit_class(&self, class: &Value, old: Option<&Value>) -> ApiResult<()> {
        if class["globalDefault"] != true || old.is_some_and(|o| o["globalDefault"] == true) {
            return Ok(());
        }
        let name = class.name().unwrap_or_default();
        if let Some(other) = self
            .classes()?
            .iter()
            .find(|c| c["globalDefault"] == true && c.name() != Some(name))
        {
            return Err(ApiError::forbidden(
                GROUP,
                PLURAL,
                name,
                &format!(
                    "PriorityClass {} is already marked as default. Only one default can exist",
                    other.name().unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }
}

/// The pods' hook.
#[derive(Debug)]
pub struct PodPriority(pub std::sync::Arc<PriorityAdmission>);

#[async_trait::async_trait]
impl StorageHooks for PodPriority {
    async fn begin_create(&self, obj: &mut Value, _dry_run: bool) -> ApiResult<()> {
        self.0.admit_pod(obj)
    }
}

/// The classes' hook.
#[derive(Debug)]
pub struct ClassDefault(pub std::sync::Arc<PriorityAdmission>);

#[async_trait::async_trait]
impl StorageHooks for ClassDefault {
    async fn begin_create(&self, obj: &mut Value, _dry_run: bool) -> ApiResult<()> {
        self.0.admit_class(obj, None)
    }
    async fn begin_update(&self, live: &Value, new: &mut Value, _dry_run: bool) -> ApiResult<()> {
        self.0.admit_class(new, Some(live))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, value: i64) -> Value {
        let mut c = json!({"metadata": {"name": name}, "value": value});
        defaults(&mut c);
        c
    }

    #[test]
    fn classes_are_checked_as_kubernetes_checks_them() {
        assert_eq!(validate(&class("high", 1_000_000)), Vec::new());
        assert_eq!(
            validate(&class("system-node-critical", 2_000_001_000)),
            Vec::new()
        );
        let msg = |c: &Value| {
            validate(c)
                .iter()
                .map(|e| format!("{}: {} {}", e.field, e.value, e.message))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            msg(&class("huge", 1_000_000_001)),
            ["value: 1000000001 maximum allowed value of a user defined priority is 1000000000"]
        );
        assert_eq!(
            msg(&class("system-mine", 5)),
            ["metadata.name: system-mine priority class names with 'system-' prefix are reserved"]
        );
        let mut bad = class("x", 1);
        bad["preemptionPolicy"] = json!("Sometimes");
        assert_eq!(validate(&bad).len(), 1);
        let mut raised = class("x", 2);
        raised["preemptionPolicy"] = json!("Never");
        assert_eq!(validate_update(&raised, &class("x", 1)).len(), 2);
        assert_eq!(class("x", 1)["preemptionPolicy"], "PreemptLowerPriority");
    }
}
