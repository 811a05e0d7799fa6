//! POST pods/NAME/eviction (policy/v1 Eviction): a pod deleted only if its
//! PodDisruptionBudget allows one more disruption (kubernetes/pkg/registry/core/pod/storage/
//! eviction.go).
//!
//! - A pod that is Pending, Succeeded, Failed or already being deleted is deleted without a
//!   budget check; so is one no budget selects.
//! - More than one budget selecting the pod: 500, the eviction API cannot decide.
//! - A pod not Ready is deleted without using the budget when the budget says `AlwaysAllow`,
//!   or (`IfHealthyBudget`, the default) while the budget is met.
//! - Otherwise the budget must allow a disruption: a budget the disruption controller has not
//!   seen at its generation answers 429 with Retry-After 10; none allowed answers 429 with a
//!   DisruptionBudget cause (kubectl drain waits and tries again). Else `disruptionsAllowed` is
//!   decremented and the pod recorded in `disruptedPods`, written with the resourceVersion read
//!   (a lost race starts over), then the pod gets a DisruptionTarget condition and is deleted
//!   with the Eviction's deleteOptions.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult, Details};
use crate::object::{self, ObjectExt};
use crate::request::{Params, Target};

use super::name_of;

/// How many times a lost race on the budget is retried (Kubernetes' EvictionsRetry steps).
const ATTEMPTS: usize = 20;
/// More entries than this in `disruptedPods` means the disruption controller is not keeping up.
const MAX_DISRUPTED_PODS: usize = 2000;

fn too_many_requests(message: &str, cause: Option<String>, retry_after: Option<u32>) -> ApiError {
    let mut e = ApiError::too_many_requests(message);
    e.details = Some(Box::new(Details {
        causes: cause
            .into_iter()
            .map(|m| capstan_api::validation::FieldError {
                field: String::new(),
                value: String::new(),
                message: m,
            })
            .collect(),
        retry_after_seconds: retry_after,
        ..Default::default()
    }));
    e
}

const VIOLATES: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// canIgnorePDB: pods not running (or going) need no budget.
fn can_ignore_budget(pod: &Value) -> bool {
    pod.is_deleting()
        || matches!(
            pod["status"]["phase"].as_str(),
            Some("Pending" | "Succeeded" | "Failed")
        )
}

/// Whether a budget's selector selects `labels`: an empty selector selects every pod, a missing
/// one none (policy/v1).
fn selects(pdb: &Value, labels: &std::collections::BTreeMap<String, String>) -> bool {
    let Some(sel) = pdb["spec"].get("selector").filter(|s| !s.is_null()) else {
        return false;
    };
    serde_json::from_value(sel.clone())
        .ok()
        .and_then(|ls| capstan_api::Selector::from_label_selector(&ls).ok())
        .is_some_and(|s| s.matches_map(labels))
}

impl ApiServer {
    /// POST pods/NAME/eviction.
    pub async fn evict(&self, t: &Target, body: Value, p: &Params) -> ApiResult<Value> {
        let name = name_of(t).to_string();
        let ns = t.namespace.clone().unwrap_or_default();
        if let Some(n) = body.meta_str("name")
            && n != name
        {
            return Err(ApiError::bad_request(
                "name in URL does not match name in Eviction object",
            ));
        }
        let mut opts = body
            .get("deleteOptions")
            .filter(|o| o.is_object())
            .cloned()
            .unwrap_or_else(|| json!({}));
        let body_dry = opts["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "All"));
        let query_dry = p.dry_run()?;
        if opts.get("dryRun").is_some_and(|d| !d.is_null()) && body_dry != query_dry && query_dry {
            return Err(ApiError::bad_request(format!(
                "Non-matching dry-run options in request and content: {:?} and {}",
                p.get("dryRun"),
                opts["dryRun"]
            )));
        }
        let dry_run = query_dry || body_dry;
        let pdb_info = self
            .registry
            .get("policy", "v1", "poddisruptionbudgets")
            .ok_or_else(|| ApiError::internal("poddisruptionbudgets are not served"))?;
        let pod_target = Target {
            info: t.info.clone(),
            namespace: t.namespace.clone(),
            name: Some(name.clone()),
            subresource: None,
        };
        for _ in 0..ATTEMPTS {
            let (pod, _) = self.live(&pod_target).await?;
            if opts.pointer("/preconditions/uid").is_none() {
                // The pod judged here is the pod deleted.
                opts["preconditions"]["uid"] = json!(pod.meta_str("uid").unwrap_or_default());
            }
            if can_ignore_budget(&pod) {
                return self.evict_delete(&pod_target, &opts, dry_run, false).await;
            }
            let labels: std::collections::BTreeMap<String, String> =
                serde_json::from_value(pod["metadata"]["labels"].clone()).unwrap_or_default();
            let list_target = Target {
                info: pdb_info.clone(),
                namespace: Some(ns.clone()),
                name: None,
                subresource: None,
            };
            let (pdbs, _, _) = self.list(&list_target, &Params::default()).await?;
            let matching: Vec<&Value> = pdbs.iter().filter(|b| selects(b, &labels)).collect();
            let pdb = match matching.as_slice() {
                [] => return self.evict_delete(&pod_target, &opts, dry_run, false).await,
                [one] => *one,
                _ => {
                    return Err(ApiError::internal(
                        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                    ));
                }
            };
            let pdb_name = pdb.meta_str("name").unwrap_or_default().to_string();
            let pdb_target = Target {
                info: pdb_info.clone(),
                namespace: Some(ns.clone()),
                name: Some(pdb_name.clone()),
                subresource: Some("status".into()),
            };
            let (pdb, rev) = match self.live(&pdb_target).await {
                Ok(l) => l,
                Err(e) if e.code == 404 => continue, // gone meanwhile: look again
                Err(e) => return Err(e),
            };
            let status = &pdb["status"];
            let (healthy, desired) = (
                status["currentHealthy"].as_i64().unwrap_or(0),
                status["desiredHealthy"].as_i64().unwrap_or(0),
            );
            if !pod_ready(&pod) {
                let always = pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
                if always || (healthy >= desired && desired > 0) {
                    return self.evict_delete(&pod_target, &opts, dry_run, false).await;
                }
            }
            let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
            if status["observedGeneration"].as_i64().unwrap_or(0) < generation {
                return Err(too_many_requests(
                    VIOLATES,
                    Some(format!(
                        "The disruption budget {pdb_name} is still being processed by the server."
                    )),
                    Some(10),
                ));
            }
            let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
            if allowed < 0 {
                return Err(ApiError::forbidden(
                    "policy",
                    "poddisruptionbudgets",
                    &pdb_name,
                    "pdb disruptions allowed is negative",
                ));
            }
            let disrupted = status["disruptedPods"].as_object().map_or(0, |m| m.len());
            if disrupted > MAX_DISRUPTED_PODS {
                return Err(ApiError::forbidden(
                    "policy",
                    "poddisruptionbudgets",
                    &pdb_name,
                    "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
                ));
            }
            if allowed == 0 {
                return Err(too_many_requests(
                    VIOLATES,
                    Some(format!(
                        "The disruption budget {pdb_name} needs {desired} healthy pods and has {healthy} currently"
                    )),
                    None,
                ));
            }
            let now = object::now();
            let decremented = self
                .guaranteed_update(&pdb_target, Some(rev), dry_run, None, |live| {
                    let mut new = live.clone();
                    let left = allowed - 1;
                    object::set_path(&mut new, &["status", "disruptionsAllowed"], json!(left));
                    object::set_path(
                        &mut new,
                        &["status", "disruptedPods", name.as_str()],
                        json!(now),
                    );
                    if left == 0 {
                        let mut conds: Vec<Value> = new["status"]["conditions"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        conds.retain(|c| c["type"] != "DisruptionAllowed");
                        conds.push(json!({"type": "DisruptionAllowed", "status": "False",
                            "reason": "InsufficientPods", "message": "",
                            "observedGeneration": generation, "lastTransitionTime": now}));
                        object::set_path(&mut new, &["status", "conditions"], json!(conds));
                    }
                    Ok(new)
                })
                .await;
            match decremented {
                Ok(_) => return self.evict_delete(&pod_target, &opts, dry_run, true).await,
                Err(e) if e.code == 409 => continue, // lost a race with another eviction
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict(
            "policy",
            "poddisruptionbudgets",
            "",
            "the disruption budget kept changing under this eviction; try again",
        ))
    }

    /// Deletes the evicted pod with the Eviction's options, first recording why in a
    /// DisruptionTarget condition (not under dry run).
    async fn evict_delete(
        &self,
        pod: &Target,
        opts: &Value,
        dry_run: bool,
        budgeted: bool,
    ) -> ApiResult<Value> {
        if !dry_run {
            let uid = opts.pointer("/preconditions/uid").and_then(Value::as_str);
            let marked = self
                .guaranteed_update(pod, None, false, None, |live| {
                    if uid.is_some_and(|u| live.meta_str("uid") != Some(u)) {
                        return Err(ApiError::conflict(
                            "",
                            "pods",
                            name_of(pod),
                            "Precondition failed: UID in precondition does not match the pod",
                        ));
                    }
                    let mut new = live.clone();
                    let mut conds: Vec<Value> = new["status"]["conditions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    conds.retain(|c| c["type"] != "DisruptionTarget");
                    conds.push(json!({"type": "DisruptionTarget", "status": "True",
                        "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting",
                        "lastTransitionTime": object::now()}));
                    object::set_path(&mut new, &["status", "conditions"], json!(conds));
                    Ok(new)
                })
                .await;
            if let Err(e) = marked {
                if budgeted {
                    tracing::warn!(pod = %name_of(pod), error = %e.message, "eviction: the budget was charged but the pod could not be marked");
                }
                return Err(e);
            }
        }
        let mut opts = opts.clone();
        if dry_run {
            opts["dryRun"] = json!(["All"]);
        }
        let body = Bytes::from(serde_json::to_vec(&opts).unwrap_or_default());
        self.delete(pod, &body, &Params::default()).await?;
        Ok(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )
    }
}
