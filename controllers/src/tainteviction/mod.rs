//! The taint-eviction controller (kubernetes/pkg/controller/tainteviction, once the
//! NoExecuteTaintManager): deletes pods from nodes with NoExecute taints they do not tolerate —
//! at once, or when their `tolerationSeconds` run out ([`plan::verdict`]).
//!
//! The timer starts when the controller sees the pod on the tainted node (as in Kubernetes:
//! a restarted controller starts it again, which errs on the side of keeping pods). A pod
//! leaves with a DisruptionTarget condition (reason DeletionByTaintManager) and a
//! TaintManagerEviction event; its controller replaces it elsewhere, since the scheduler does
//! not place pods on a node they cannot tolerate.

pub mod plan;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use prometheus::{IntCounter, Opts};
use serde_json::json;
use tokio::time::Instant;

use crate::runtime::{Change, Recorder};
use crate::taints::NO_EXECUTE;
use crate::{Manager, podutil};
use plan::Verdict;

pub const NAME: &str = "tainteviction";

/// A pod's eviction, scheduled.
#[derive(Debug, Clone)]
struct Scheduled {
    uid: String,
    /// When the pod was first seen on the tainted node.
    since: Instant,
    due: Instant,
}

struct Controller {
    client: kube::Client,
    pods: Store<Pod>,
    recorder: Recorder,
    deletions: IntCounter,
    /// NoExecute taints per node, as last seen.
    taints: HashMap<String, Vec<Taint>>,
    /// Pod key (ns/name) → its eviction.
    scheduled: HashMap<String, Scheduled>,
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let (nodes, pods) = (m.informers.nodes(), m.informers.pods());
    nodes.wait_synced().await;
    pods.wait_synced().await;
    let deletions = IntCounter::with_opts(Opts::new(
        "taint_eviction_controller_pod_deletions_total",
        "Pods deleted by the taint-eviction controller",
    ))
    .expect("valid metric");
    let _ = m.registry.register(Box::new(deletions.clone()));
    let mut c = Controller {
        client: m.client.clone(),
        pods: pods.store(),
        recorder: Recorder::new(m.client.clone(), "taint-eviction-controller"),
        deletions,
        taints: HashMap::new(),
        scheduled: HashMap::new(),
    };
    let mut node_changes = nodes.subscribe().boxed();
    let mut pod_changes = pods.subscribe().boxed();
    loop {
        let next = c.scheduled.values().map(|s| s.due).min();
        tokio::select! {
            Some(change) = node_changes.next() => c.node_changed(change),
            Some(change) = pod_changes.next() => c.pod_changed(change),
            _ = sleep_until_opt(next) => c.evict_due().await,
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn no_execute(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .filter(|t| t.effect == NO_EXECUTE)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

impl Controller {
    fn node_changed(&mut self, change: Change<Node>) {
        let node = change.object().clone();
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let taints = match change {
            Change::Deleted(_) => Vec::new(),
            _ => no_execute(&node),
        };
        let before = self.taints.get(&name).cloned().unwrap_or_default();
        if before == taints {
            return;
        }
        if taints.is_empty() {
            self.taints.remove(&name);
        } else {
            self.taints.insert(name.clone(), taints);
        }
        let pods = self
            .pods
            .state_filter(|p| podutil::node_name(p) == Some(name.as_str()));
        for p in pods {
            self.process(&p);
        }
    }

    fn pod_changed(&mut self, change: Change<Pod>) {
        match change {
            Change::Deleted(p) => {
                self.scheduled.remove(&podutil::key(&p.metadata));
            }
            Change::Added(p) | Change::Modified(p) => self.process(&p),
        }
    }

    /// Schedules, keeps or cancels one pod's eviction.
    fn process(&mut self, pod: &Pod) {
        let key = podutil::key(&pod.metadata);
        let taints = podutil::node_name(pod)
            .and_then(|n| self.taints.get(n))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let verdict = if pod.metadata.deletion_timestamp.is_some() || taints.is_empty() {
            Verdict::Stay
        } else {
            plan::verdict(pod, taints)
        };
        match verdict {
            Verdict::Stay => {
                if let Some(s) = self.scheduled.remove(&key)
                    && s.uid == uid
                    && pod.metadata.deletion_timestamp.is_none()
                {
                    self.recorder.normal(
                        pod,
                        "TaintManagerEviction",
                        format!("Cancelling deletion of Pod {key}"),
                    );
                }
            }
            Verdict::EvictAfter(d) => {
                let now = Instant::now();
                let since = self
                    .scheduled
                    .get(&key)
                    .filter(|s| s.uid == uid)
                    .map_or(now, |s| s.since);
                self.scheduled.insert(
                    key,
                    Scheduled {
                        uid,
                        since,
                        due: since + d,
                    },
                );
            }
        }
    }

    async fn evict_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, Scheduled)> = self
            .scheduled
            .iter()
            .filter(|(_, s)| s.due <= now)
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        for (key, s) in due {
            self.scheduled.remove(&key);
            let (ns, name) = key.split_once('/').unwrap_or(("", &key));
            let mut last = None;
            for attempt in 0..5 {
                match self.evict(ns, name, &s.uid).await {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
            }
            if let Some(e) = last {
                tracing::warn!(pod = %key, error = %e, "taint eviction failed");
            }
        }
    }

    async fn evict(&self, ns: &str, name: &str, uid: &str) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = match api.get(name).await {
            Ok(p) if p.metadata.uid.as_deref() == Some(uid) => p,
            Ok(_) => return Ok(()), // another pod of that name now
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        self.recorder.normal(
            &pod,
            "TaintManagerEviction",
            format!("Marking for deletion Pod {ns}/{name}"),
        );
        let condition = json!({"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint",
            "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }]}});
        api.patch_status(name, &PatchParams::default(), &Patch::Strategic(condition))
            .await?;
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(()),
            Err(e) => return Err(e),
        }
        self.deletions.inc();
        tracing::info!(pod = %format!("{ns}/{name}"), "evicted from a NoExecute-tainted node");
        Ok(())
    }
}
