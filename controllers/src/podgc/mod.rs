//! The pod garbage collector (kubernetes/pkg/controller/podgc): force-deletes the pods no agent
//! will ever finish — orphans of deleted nodes, terminating pods on out-of-service nodes or
//! never bound, and terminated pods beyond the threshold ([`plan`]). A pass runs every
//! `period` (20 s), at once when a node changes (an out-of-service taint acts within 100 ms)
//! and when a missing node's quarantine ends.

pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use prometheus::{IntCounterVec, Opts};
use serde_json::json;
use tokio::time::Instant;

use crate::Manager;
use crate::error::is_not_found;
pub use plan::{Config, Quarantine, Why};

pub const NAME: &str = "podgc";

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let (nodes, pods) = (m.informers.nodes(), m.informers.pods());
    nodes.wait_synced().await;
    pods.wait_synced().await;
    let cfg = m.pod_gc.clone();
    let deleted = IntCounterVec::new(
        Opts::new(
            "pod_gc_collector_force_delete_pods_total",
            "Pods force-deleted by the pod garbage collector, by reason",
        ),
        &["reason"],
    )
    .expect("valid metric");
    let _ = m.registry.register(Box::new(deleted.clone()));
    let mut quarantine = Quarantine::default();
    let mut node_changes = nodes.subscribe().boxed();
    let mut wake = Instant::now();
    loop {
        tokio::select! {
            Some(_) = node_changes.next() => {
                wake = wake.min(Instant::now() + Duration::from_millis(100));
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                let doomed = quarantine.plan(&cfg, &pods.store().state(), &nodes.store().state(), now);
                for (pod, why) in doomed {
                    if let Err(e) = collect(&m.client, &pod, why).await {
                        tracing::warn!(pod = %crate::podutil::key(&pod.metadata), error = %e, "pod garbage collection failed");
                    } else {
                        deleted.with_label_values(&[&format!("{why:?}")]).inc();
                    }
                }
                let next = now + cfg.period.max(Duration::from_millis(100));
                wake = quarantine.next_release(&cfg).map_or(next, |r| r.min(next)).max(now + Duration::from_millis(10));
            }
        }
    }
}

/// Force-deletes one pod (an orphan only once the API confirms its node is gone), recording
/// why in a DisruptionTarget condition and failing it first when it had not finished.
async fn collect(client: &kube::Client, pod: &Pod, why: Why) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    if why == Why::Orphaned
        && let Some(node) = crate::podutil::node_name(pod)
    {
        match Api::<Node>::all(client.clone()).get(node).await {
            Ok(_) => return Ok(()), // back, or the cache was behind
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if let Some(message) = why.message() {
        let mut status = json!({"conditions": [{"type": "DisruptionTarget", "status": "True",
            "reason": "DeletionByPodGC", "message": message,
            "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}]});
        if !matches!(crate::podutil::phase(pod), "Succeeded" | "Failed") {
            status["phase"] = json!("Failed");
        }
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": status})),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => {
            tracing::info!(pod = %format!("{ns}/{name}"), reason = ?why, "pod garbage collected");
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()), // another pod of that name now
        Err(e) => Err(e),
    }
}
