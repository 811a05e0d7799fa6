//! POST pods/NAME/binding: the scheduler's assignment of a pending pod to a node, once.

use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::object::{self, ObjectExt};
use crate::request::{Params, Target};

use super::name_of;

impl ApiServer {
    /// POST pods/NAME/binding: assigns a pending pod to a node, once.
    pub async fn bind(&self, t: &Target, body: Value, p: &Params) -> ApiResult<Value> {
        let node = body
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                self.invalid(
                    t,
                    name_of(t),
                    vec![FieldError {
                        field: "target.name".into(),
                        value: String::new(),
                        message: "Required value".into(),
                    }],
                )
            })?
            .to_string();
        let name = name_of(t).to_string();
        self.guaranteed_update(t, None, p.dry_run()?, Some(p.manager()), |live| {
            if let Some(current) = live["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                return Err(ApiError::conflict("", "pods", &name, &format!("pod {name} is already assigned to node \"{current}\"")));
            }
            if live.is_deleting() {
                return Err(ApiError::conflict("", "pods", &name, "pod is being deleted, cannot be assigned to a host"));
            }
            let mut bound = live.clone();
            object::set_path(&mut bound, &["spec", "nodeName"], json!(node));
            let conds = bound["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
            conds.push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": object::now()}));
            object::set_path(&mut bound, &["status", "conditions"], json!(conds));
            Ok(bound)
        })
        .await?;
        Ok(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )
    }
}
