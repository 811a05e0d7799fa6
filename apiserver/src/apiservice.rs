//! APIService registration (kube-aggregator's autoregister and crdregistration controllers):
//! every served group/version has an `apiregistration.k8s.io/v1` APIService named
//! `VERSION.GROUP` (`v1.` for the core group), local (no `spec.service`) and Available. Built-ins
//! are labelled `kube-aggregator.kubernetes.io/automanaged: onstart`, custom resources' groups
//! `true`; an automanaged APIService whose group/version is no longer served (its CRD is gone)
//! is deleted. APIServices a user created are never touched.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::ApiResult;
use crate::object::ObjectExt;
use crate::request::{Params, Target};

const AUTOMANAGED: &str = "kube-aggregator.kubernetes.io/automanaged";
const MANAGER: &str = "capstan-apiservice-registration";

/// Kubernetes' priorities for the built-in groups (group, groupPriorityMinimum,
/// versionPriority); other groups (custom resources) get 1000 / 100.
const PRIORITIES: &[(&str, i64, i64)] = &[
    ("", 18000, 1),
    ("apps", 17800, 15),
    ("events.k8s.io", 17750, 15),
    ("autoscaling", 17500, 30),
    ("batch", 17400, 15),
    ("networking.k8s.io", 17200, 15),
    ("policy", 17100, 15),
    ("rbac.authorization.k8s.io", 17000, 15),
    ("apiextensions.k8s.io", 16700, 15),
    ("coordination.k8s.io", 16500, 15),
    ("discovery.k8s.io", 16200, 15),
    ("apiregistration.k8s.io", 18000, 15),
    ("metrics.k8s.io", 100, 100),
];

fn name_of(group: &str, version: &str) -> String {
    format!("{version}.{group}")
}

/// The APIServices the registry's served group/versions call for, by name.
fn desired(api: &ApiServer) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let served = api.registry.all();
    let stored = served.iter().map(|info| {
        let builtin = info.store_prefix == format!("{}/", info.plural);
        (info.group.as_str(), info.version.as_str(), builtin)
    });
    // The resource metrics are built in here (metrics-server's APIService elsewhere).
    let answered = [(
        crate::resource_metrics::GROUP,
        crate::resource_metrics::VERSION,
        true,
    )];
    for (group, version, builtin) in stored.chain(answered) {
        let (group_min, version_priority) = PRIORITIES
            .iter()
            .find(|(g, _, _)| *g == group)
            .map(|(_, g, v)| (*g, *v))
            .unwrap_or((1000, 100));
        let name = name_of(group, version);
        out.entry(name.clone()).or_insert_with(|| {
            json!({
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": name, "labels": {AUTOMANAGED: if builtin { "onstart" } else { "true" }}},
                "spec": {
                    "group": group,
                    "version": version,
                    "groupPriorityMinimum": group_min,
                    "versionPriority": version_priority,
                },
            })
        });
    }
    out
}

/// An APIService is named for what it serves: `spec.version` + "." + `spec.group`.
pub fn validate(obj: &Value) -> Vec<FieldError> {
    let (group, version) = (
        obj["spec"]["group"].as_str().unwrap_or_default(),
        obj["spec"]["version"].as_str().unwrap_or_default(),
    );
    let mut errs = Vec::new();
    if version.is_empty() {
        errs.push(FieldError {
            field: "spec.version".into(),
            value: String::new(),
            message: "Required value".into(),
        });
    }
    let name = obj.name().unwrap_or_default();
    if !version.is_empty() && name != name_of(group, version) {
        errs.push(FieldError {
            field: "metadata.name".into(),
            value: name.into(),
            message: format!("Invalid value: must be {}", name_of(group, version)),
        });
    }
    let spec = &obj["spec"];
    let mut invalid = |field: &str, value: String, message: &str| {
        errs.push(FieldError {
            field: format!("spec.{field}"),
            value,
            message: message.into(),
        })
    };
    let (group_min, version_priority) = (
        spec["groupPriorityMinimum"].as_i64().unwrap_or_default(),
        spec["versionPriority"].as_i64().unwrap_or_default(),
    );
    if !(1..=20000).contains(&group_min) {
        invalid(
            "groupPriorityMinimum",
            group_min.to_string(),
            "Invalid value: must be positive and less than 20000",
        );
    }
    if !(1..=1000).contains(&version_priority) {
        invalid(
            "versionPriority",
            version_priority.to_string(),
            "Invalid value: must be positive and less than 1000",
        );
    }
    let ca_bundle = spec["caBundle"].as_str().filter(|b| !b.is_empty());
    let insecure = spec["insecureSkipTLSVerify"].as_bool() == Some(true);
    match spec.get("service").filter(|s| !s.is_null()) {
        None => {
            if ca_bundle.is_some() {
                invalid(
                    "caBundle",
                    "<bundle>".into(),
                    "Invalid value: local APIServices do not have certificates",
                );
            }
            if insecure {
                invalid(
                    "insecureSkipTLSVerify",
                    "true".into(),
                    "Invalid value: local APIServices do not have certificates",
                );
            }
        }
        Some(svc) => {
            // The same shape as a webhook's service reference.
            let config = json!({"service": svc, "caBundle": spec["caBundle"]});
            for (field, message) in crate::webhook::client::check_config(&config, "spec") {
                errs.push(FieldError {
                    field,
                    value: String::new(),
                    message,
                });
            }
            if insecure && ca_bundle.is_some() {
                errs.push(FieldError {
                    field: "spec.insecureSkipTLSVerify".into(),
                    value: "true".into(),
                    message: "Invalid value: true: may not be true if caBundle is present".into(),
                });
            }
        }
    }
    errs
}

fn available() -> Value {
    json!({"conditions": [{
        "type": "Available",
        "status": "True",
        "reason": "Local",
        "message": "Local APIServices are always available",
        "lastTransitionTime": crate::object::now(),
    }]})
}

fn target(api: &ApiServer, name: Option<&str>, sub: Option<&str>) -> Option<Target> {
    Some(Target {
        info: api
            .registry
            .get("apiregistration.k8s.io", "v1", "apiservices")?,
        namespace: None,
        name: name.map(str::to_string),
        subresource: sub.map(str::to_string),
    })
}

/// Makes the stored APIServices match the registry: creates the missing ones (Available),
/// deletes automanaged ones no longer served.
pub async fn sync(api: &ApiServer) -> ApiResult<()> {
    let Some(all) = target(api, None, None) else {
        return Ok(());
    };
    let params = Params {
        user_agent_manager: Some(MANAGER.into()),
        ..Params::default()
    };
    let want = desired(api);
    let (live, _, _) = api.list(&all, &params).await?;
    let live: BTreeMap<String, Value> = live
        .into_iter()
        .filter_map(|o| Some((o.name()?.to_string(), o)))
        .collect();
    for (name, obj) in &want {
        if live.contains_key(name) {
            continue;
        }
        let mut obj = obj.clone();
        obj["status"] = available();
        match api.create(&all, obj, &params).await {
            Ok(_) => tracing::debug!(apiservice = name, "registered"),
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    for (name, obj) in &live {
        let automanaged = obj["metadata"]["labels"][AUTOMANAGED].as_str().is_some();
        if automanaged && !want.contains_key(name) && !obj.is_deleting() {
            let Some(one) = target(api, Some(name), None) else {
                continue;
            };
            match api.delete(&one, &bytes::Bytes::new(), &params).await {
                Ok(_) => tracing::debug!(apiservice = name, "unregistered"),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Keeps the APIServices in sync with the registry for as long as the server lives.
pub fn spawn(api: &Arc<ApiServer>) {
    let mut changes = api.registry.subscribe();
    let weak: Weak<ApiServer> = Arc::downgrade(api);
    tokio::spawn(async move {
        loop {
            let Some(api) = weak.upgrade() else {
                return;
            };
            if let Err(e) = sync(&api).await {
                tracing::warn!(error = %e.message, "registering APIServices failed; retrying");
                drop(api);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            drop(api);
            if changes.changed().await.is_err() {
                return;
            }
        }
    });
}
