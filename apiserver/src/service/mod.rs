//! What a Service needs beyond the generic REST storage (kube-apiserver's
//! `registry/core/service/storage`): a ClusterIP ([`cluster_ip`]) and node ports
//! ([`node_port`]) claimed before the Service is stored, kept across updates (an update that
//! leaves them out keeps them; one that changes the type or the ports claims and releases what
//! changed), and released when the Service is gone. Both allocators share [`claims`]. Wired
//! into the generic verbs as the services resource's [`StorageHooks`]. The Services the API
//! server keeps itself (`default/kubernetes`, `kube-system/kube-dns`) are in [`system`].

pub mod claims;
pub mod cluster_ip;
pub mod node_port;
pub mod system;

use std::collections::BTreeSet;

use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::object::{self, ObjectExt};
use crate::strategy::StorageHooks;
use cluster_ip::Allocator;
use node_port::{NodePortAllocator, may_have_node_ports, node_ports_of};

/// The services resource's storage hooks: ClusterIP and NodePort allocation.
#[derive(Debug)]
pub struct ServiceHooks {
    ips: Allocator,
    ports: NodePortAllocator,
}

impl ServiceHooks {
    pub fn new(ips: Allocator, ports: NodePortAllocator) -> ServiceHooks {
        ServiceHooks { ips, ports }
    }
}

fn owner_of(svc: &Value) -> String {
    format!(
        "{}/{}",
        svc.namespace().unwrap_or_default(),
        svc.name().unwrap_or_default()
    )
}

/// The ClusterIP a Service holds (none for headless and ExternalName Services).
fn cluster_ip_of(svc: &Value) -> Option<&str> {
    svc["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

#[async_trait::async_trait]
impl StorageHooks for ServiceHooks {
    async fn begin_create(&self, obj: &mut Value, dry_run: bool) -> ApiResult<()> {
        let ip = allocate_cluster_ip(&self.ips, obj, dry_run).await?;
        let owner = owner_of(obj);
        if let Err(e) = self
            .ports
            .allocate(obj, &BTreeSet::new(), &owner, dry_run)
            .await
        {
            if let (Some(ip), false) = (ip, dry_run) {
                self.ips.release(&ip).await;
            }
            return Err(named(e, obj));
        }
        Ok(())
    }

    async fn abort_create(&self, obj: &Value) {
        self.after_delete(obj).await;
    }

    async fn begin_update(&self, live: &Value, new: &mut Value, dry_run: bool) -> ApiResult<()> {
        drop_type_dependent_fields(live, new);
        let ip = if new["spec"]["type"] == "ExternalName" {
            None // its IP, if it had one, is released once the update is stored
        } else if cluster_ip_of(live).is_some() || live["spec"]["clusterIP"] == "None" {
            keep_cluster_ip(live, new)?;
            None
        } else {
            // An ExternalName Service turned into one with an IP.
            allocate_cluster_ip(&self.ips, new, dry_run).await?
        };
        if may_have_node_ports(&new["spec"]) {
            keep_node_ports(live, new);
        }
        let owner = owner_of(live);
        if let Err(e) = self
            .ports
            .allocate(new, &node_ports_of(live), &owner, dry_run)
            .await
        {
            if let (Some(ip), false) = (ip, dry_run) {
                self.ips.release(&ip).await;
            }
            return Err(named(e, live));
        }
        Ok(())
    }

    async fn abort_update(&self, live: &Value, new: &Value) {
        release_added(self, live, new).await;
    }

    async fn after_update(&self, live: &Value, stored: &Value) {
        release_added(self, stored, live).await;
    }

    async fn after_delete(&self, obj: &Value) {
        if let Some(ip) = cluster_ip_of(obj) {
            self.ips.release(ip).await;
        }
        for p in node_ports_of(obj) {
            self.ports.release(p).await;
        }
    }
}

/// Releases what `with` holds that `without` does not.
async fn release_added(hooks: &ServiceHooks, without: &Value, with: &Value) {
    if let Some(ip) = cluster_ip_of(with)
        && cluster_ip_of(without) != Some(ip)
    {
        hooks.ips.release(ip).await;
    }
    let kept = node_ports_of(without);
    for p in node_ports_of(with).difference(&kept) {
        hooks.ports.release(*p).await;
    }
}

/// An allocation error names the Service.
fn named(mut e: ApiError, svc: &Value) -> ApiError {
    let name = svc.name().unwrap_or_default().to_string();
    if let Some(d) = e.details.as_mut() {
        d.name = name.clone();
    }
    e.message = e
        .message
        .replace("Service \"\"", &format!("Service \"{name}\""));
    e
}

/// Kubernetes' `dropTypeDependentFields`: a Service changed to a type that has no use for its
/// allocated values loses them when the update left them as they were (a user who sets them
/// explicitly to new values gets the validation error instead): ExternalName drops the
/// ClusterIP, types without node ports drop the node ports.
fn drop_type_dependent_fields(live: &Value, new: &mut Value) {
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
        let unchanged = spec.get("clusterIP").is_none_or(|ip| {
            ip == &live["spec"]["clusterIP"] || ip.as_str().is_some_and(str::is_empty)
        });
        if unchanged {
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                spec.remove(f);
            }
        }
    }
    if !may_have_node_ports(&Value::Object(spec.clone())) {
        let held = node_ports_of(live);
        for port in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let n = port["nodePort"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok());
            if (n.is_some_and(|n| held.contains(&n)) || port["nodePort"] == 0)
                && let Some(o) = port.as_object_mut()
            {
                o.remove("nodePort");
            }
        }
    }
}

/// Kubernetes' `patchAllocatedValues` for node ports: a port an update left without a node port
/// keeps the one the live Service gave the same port number and protocol.
fn keep_node_ports(live: &Value, new: &mut Value) {
    let held: Vec<(i64, String, i64)> = live["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["port"].as_i64()?,
                p["protocol"].as_str().unwrap_or("TCP").to_string(),
                p["nodePort"].as_i64().filter(|n| *n != 0)?,
            ))
        })
        .collect();
    for port in new
        .pointer_mut("/spec/ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if port["nodePort"].as_i64().is_some_and(|n| n != 0) {
            continue;
        }
        let (num, proto) = (
            port["port"].as_i64(),
            port["protocol"].as_str().unwrap_or("TCP"),
        );
        if let Some((_, _, n)) = held
            .iter()
            .find(|(p, pr, _)| Some(*p) == num && pr == proto)
            && let Some(o) = port.as_object_mut()
        {
            o.insert("nodePort".into(), json!(n));
        }
    }
}

/// Kubernetes' Service validation of node ports: only NodePort and LoadBalancer Services have
/// them, each number once per protocol.
pub fn validate_node_ports(svc: &Value) -> Vec<FieldError> {
    let spec = &svc["spec"];
    let mut errs = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, p) in spec["ports"].as_array().into_iter().flatten().enumerate() {
        let Some(n) = p["nodePort"].as_i64().filter(|n| *n != 0) else {
            continue;
        };
        let field = format!("spec.ports[{i}].nodePort");
        if !may_have_node_ports(spec) {
            errs.push(FieldError {
                field,
                value: n.to_string(),
                message: format!(
                    "Forbidden: may not be used when `type` is '{}'",
                    spec["type"].as_str().unwrap_or("ClusterIP")
                ),
            });
        } else if !(1..=65535).contains(&n) {
            errs.push(FieldError {
                field,
                value: n.to_string(),
                message: "Invalid value: must be between 1 and 65535, inclusive".into(),
            });
        } else if !seen.insert((n, p["protocol"].as_str().unwrap_or("TCP").to_string())) {
            errs.push(FieldError {
                field,
                value: n.to_string(),
                message: "Duplicate value".into(),
            });
        }
    }
    errs
}

/// Gives a Service its ClusterIP (the requested one, or a free one), unless it is headless
/// (`None`) or an ExternalName. Returns the IP it claimed (none claimed with `dry_run`).
async fn allocate_cluster_ip(
    ips: &Allocator,
    svc: &mut Value,
    dry_run: bool,
) -> ApiResult<Option<String>> {
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
    let owner = owner_of(svc);
    let ip = ips
        .allocate(wanted.as_deref(), &owner, dry_run)
        .await
        .map_err(|e| named(e, svc))?;
    let ip = ip.to_string();
    object::set_path(svc, &["spec", "clusterIP"], json!(ip));
    object::set_path(svc, &["spec", "clusterIPs"], json!([ip]));
    object::set_path(svc, &["spec", "ipFamilies"], json!(["IPv4"]));
    object::set_path(svc, &["spec", "ipFamilyPolicy"], json!("SingleStack"));
    Ok((!dry_run).then_some(ip))
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
