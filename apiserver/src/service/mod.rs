//! What a Service needs beyond the generic REST storage (kube-apiserver's
//! `registry/core/service/storage`): a ClusterIP claimed before the Service is stored
//! ([`cluster_ip`]), kept across updates, and released when the Service is gone. Wired into the
//! generic verbs as the services resource's [`StorageHooks`].

pub mod cluster_ip;

use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::object::{self, ObjectExt};
use crate::strategy::StorageHooks;
use cluster_ip::Allocator;

/// The services resource's storage hooks: ClusterIP allocation.
#[derive(Debug)]
pub struct ServiceHooks {
    ips: Allocator,
}

impl ServiceHooks {
    pub fn new(ips: Allocator) -> ServiceHooks {
        ServiceHooks { ips }
    }
}

#[async_trait::async_trait]
impl StorageHooks for ServiceHooks {
    async fn begin_create(&self, obj: &mut Value) -> ApiResult<()> {
        allocate_cluster_ip(&self.ips, obj).await.map(|_| ())
    }

    async fn abort_create(&self, obj: &Value) {
        release_cluster_ip(&self.ips, obj).await;
    }

    fn begin_update(&self, live: &Value, new: &mut Value) -> ApiResult<()> {
        keep_cluster_ip(live, new)
    }

    async fn after_delete(&self, obj: &Value) {
        release_cluster_ip(&self.ips, obj).await;
    }
}

/// Frees the ClusterIP a Service holds (none for headless and ExternalName Services).
async fn release_cluster_ip(ips: &Allocator, svc: &Value) {
    if let Some(ip) = svc["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty() && *ip != "None")
    {
        ips.release(ip).await;
    }
}

/// Gives a new Service its ClusterIP (the requested one, or a free one), unless it is
/// headless (`None`) or an ExternalName. Returns the IP it claimed.
async fn allocate_cluster_ip(ips: &Allocator, svc: &mut Value) -> ApiResult<Option<String>> {
    let name = svc.name().unwrap_or_default().to_string();
    if svc["spec"]["type"] == "ExternalName" {
        return Ok(None);
    }
    let wanted = svc["spec"]["clusterIP"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    if wanted.as_deref() == Some("None") {
        object::set_path(svc, &["spec", "clusterIPs"], json!(["None"]));
        return Ok(None);
    }
    let owner = format!("{}/{name}", svc.namespace().unwrap_or_default());
    let ip = ips
        .allocate(wanted.as_deref(), &owner)
        .await
        .map_err(|mut e| {
            if let Some(d) = e.details.as_mut() {
                d.name = name.clone();
            }
            e.message = e
                .message
                .replace("Service \"\"", &format!("Service \"{name}\""));
            e
        })?;
    let ip = ip.to_string();
    object::set_path(svc, &["spec", "clusterIP"], json!(ip));
    object::set_path(svc, &["spec", "clusterIPs"], json!([ip]));
    object::set_path(svc, &["spec", "ipFamilies"], json!(["IPv4"]));
    object::set_path(svc, &["spec", "ipFamilyPolicy"], json!("SingleStack"));
    Ok(Some(ip))
}

/// spec.clusterIP is immutable once allocated; an update that leaves it out keeps it.
fn keep_cluster_ip(live: &Value, new: &mut Value) -> ApiResult<()> {
    let name = live.name().unwrap_or_default();
    let Some(ip) = live["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty())
    else {
        return Ok(());
    };
    match new
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        None => {
            object::set_path(new, &["spec", "clusterIP"], json!(ip));
            if let Some(ips) = live.pointer("/spec/clusterIPs") {
                object::set_path(new, &["spec", "clusterIPs"], ips.clone());
            }
            Ok(())
        }
        Some(given) if given == ip => Ok(()),
        Some(given) => Err(ApiError::invalid(
            "",
            "Service",
            name,
            vec![FieldError {
                field: "spec.clusterIPs[0]".into(),
                value: given.into(),
                message: "Invalid value: field is immutable".into(),
            }],
        )),
    }
}
