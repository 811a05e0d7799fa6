//! The DaemonSet controller (kubernetes/pkg/controller/daemon): one pod of the template on
//! every node that should run it, kept there through node changes, rolled on template
//! changes. Decisions are pure and table-tested: [`plan`] (which nodes, which pods, the
//! status), [`update`] (the rolling update), [`crate::history`] (which ControllerRevision is current,
//! which to clean; shared with StatefulSets). A pass, in Kubernetes' order:
//! 1. claim pods and ControllerRevisions (adopt orphans the selector matches, release what
//!    stopped matching);
//! 2. make sure the current template has its revision ([`crate::history::sync`]);
//! 3. unless earlier creates or deletes are still unseen ([`Expectations`]): create pods on
//!    nodes lacking one, delete pods that should go, replace failed pods (per node with a
//!    backoff of 1 s doubling to 15 min, so a node that keeps failing the pod is not hammered);
//! 4. when that changed nothing, one pass of the rolling update (RollingUpdate only;
//!    OnDelete waits for the user to delete old pods);
//! 5. delete revisions beyond `revisionHistoryLimit`, then write the status when it changed.
//!
//! Node changes that can change where pods belong (a node added or removed, its labels,
//! taints or name-relevant spec) queue every DaemonSet; heartbeats do not.

pub mod plan;
#[cfg(test)]
mod plan_tests;
pub mod update;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::claims;
use crate::history;
use crate::podutil::{self, controller_owner_ref};
use crate::runtime::{Change, Expectations, Reconcile, Recorder, drive};
use crate::{Error, Manager};

pub const NAME: &str = "daemonset";

const FAILED_POD_BACKOFF: Duration = Duration::from_secs(1);
const FAILED_POD_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

/// When each node may next have its failed daemon pod replaced (`failedPodsBackoff`).
#[derive(Default)]
struct FailedPods(Mutex<HashMap<String, (Instant, Duration)>>);

impl FailedPods {
    /// Ok when the pod on `key` (DaemonSet uid / node) may be replaced now (and starts or
    /// doubles the wait for the next time); else how long to wait.
    fn replace(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, (at, _)| now.duration_since(*at) < 2 * FAILED_POD_BACKOFF_MAX);
        match m.get_mut(key) {
            Some((at, delay)) if now < *at + *delay => Err(*at + *delay - now),
            Some((at, delay)) => {
                *at = now;
                *delay = (*delay * 2).min(FAILED_POD_BACKOFF_MAX);
                Ok(())
            }
            None => {
                m.insert(key.to_string(), (now, FAILED_POD_BACKOFF));
                Ok(())
            }
        }
    }
}

struct DaemonSetController {
    client: kube::Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
    failed_pods: FailedPods,
    clock: crate::runtime::Clock,
}

/// What about a node decides where daemon pods belong.
fn placement(node: &Node) -> String {
    let spec = node.spec.as_ref();
    serde_json::json!([
        node.metadata.labels,
        spec.and_then(|s| s.taints.as_ref()),
        spec.and_then(|s| s.unschedulable),
    ])
    .to_string()
}

fn selector(
    ds: &DaemonSet,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector> {
    ds.spec.as_ref().map(|s| &s.selector)
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let ds_informer = m.informers.daemon_sets();
    let pod_informer = m.informers.pods();
    let node_informer = m.informers.nodes();
    let revision_informer = m.informers.controller_revisions();
    let me = Arc::new(DaemonSetController {
        client: m.client.clone(),
        pods: pod_informer.store(),
        nodes: node_informer.store(),
        revisions: revision_informer.store(),
        expectations: Arc::new(Expectations::default()),
        recorder: Recorder::new(m.client.clone(), "daemonset-controller"),
        failed_pods: FailedPods::default(),
        clock: m.clock,
    });
    let exp = me.expectations.clone();
    let pod_changes = pod_informer.subscribe().map(move |c| {
        crate::podcontrol::observe(&exp, &c, "DaemonSet");
        c.into_object()
    });
    let ds_store = ds_informer.store();
    let (for_pods, for_revisions, for_nodes) =
        (ds_store.clone(), ds_store.clone(), ds_store.clone());
    let mut seen: HashMap<String, String> = HashMap::new();
    let node_changes = node_informer.subscribe().filter_map(move |c| {
        let node = c.object().clone();
        let name = node.metadata.name.clone().unwrap_or_default();
        let relevant = match &c {
            Change::Deleted(_) => seen.remove(&name).is_some(),
            _ => {
                let p = placement(&node);
                seen.insert(name, p.clone()).as_ref() != Some(&p)
            }
        };
        futures_util::future::ready(relevant.then_some(node))
    });
    let controller = Controller::for_shared_stream(ds_informer.objects(), ds_store.clone())
        .watches_shared_stream(pod_changes, move |pod| {
            claims::owners_of(&for_pods, &pod.metadata, selector)
        })
        .watches_shared_stream(revision_informer.objects(), move |r| {
            claims::owners_of(&for_revisions, &r.metadata, selector)
        })
        .watches_shared_stream(node_changes, move |_node| {
            for_nodes
                .state()
                .iter()
                .map(|ds| ObjectRef::from_obj(&**ds))
                .collect::<Vec<_>>()
        });
    pod_informer.wait_synced().await;
    node_informer.wait_synced().await;
    revision_informer.wait_synced().await;
    ds_informer.wait_synced().await;
    drive(NAME, controller, me, m.metrics.clone()).await;
}

impl Reconcile<DaemonSet> for DaemonSetController {
    async fn reconcile(&self, ds: Arc<DaemonSet>) -> Result<Action, Error> {
        if ds.metadata.deletion_timestamp.is_some() {
            // The garbage collector removes its pods and revisions.
            return Ok(Action::await_change());
        }
        let key = podutil::key(&ds.metadata);
        let ns = ds.metadata.namespace.clone().unwrap_or_default();
        let name = ds.metadata.name.clone().unwrap_or_default();
        let selector = ds.spec.as_ref().map(|s| &s.selector);
        let ds_api: Api<DaemonSet> = Api::namespaced(self.client.clone(), &ns);
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let rev_api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), &ns);

        let in_ns = |m: &kube::api::ObjectMeta| m.namespace.as_deref() == Some(ns.as_str());
        let pods = self.pods.state_filter(|p| in_ns(&p.metadata));
        let pod_claims = claims::claim(&ds.metadata, selector, &pods);
        let revisions = self.revisions.state_filter(|r| in_ns(&r.metadata));
        let rev_claims = claims::claim(&ds.metadata, selector, &revisions);
        let must_adopt = !pod_claims.adopt.is_empty() || !rev_claims.adopt.is_empty();
        if must_adopt && claims::can_adopt(&ds_api, &*ds).await? {
            for p in &pod_claims.adopt {
                claims::adopt(&pod_api, p, controller_owner_ref(&*ds)).await?;
            }
            for r in &rev_claims.adopt {
                claims::adopt(&rev_api, r, controller_owner_ref(&*ds)).await?;
            }
        }
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        for p in &pod_claims.release {
            claims::release(&pod_api, p, &uid).await?;
        }
        for r in &rev_claims.release {
            claims::release(&rev_api, r, &uid).await?;
        }

        let (current, old_revisions) = history::sync(&self.client, &*ds, &rev_claims.owned).await?;
        let hash = history::hash_of(&current);
        let nodes = self.nodes.state();
        let by_node = plan::by_node(&pod_claims.owned);
        let now = self.clock.now();
        let mut requeue: Option<Duration> = None;
        let mut acted = false;
        if self.expectations.satisfied(&key) {
            self.expectations.forget(&key);
            let manage = plan::manage(&ds, &nodes, &by_node, &hash);
            let mut delete = manage.delete;
            let now_i = Instant::now();
            for (node, pod) in manage.failed {
                match self.failed_pods.replace(&format!("{uid}/{node}"), now_i) {
                    Ok(()) => {
                        self.recorder.warning(
                            &*ds,
                            "FailedDaemonPod",
                            format!(
                                "Found failed daemon pod {ns}/{} on node {node}, will try to kill it",
                                pod.metadata.name.as_deref().unwrap_or("")
                            ),
                        );
                        delete.push(pod);
                    }
                    Err(wait) => requeue = Some(requeue.map_or(wait, |r| r.min(wait))),
                }
            }
            let mut create_on = manage.create_on;
            if create_on.is_empty() && delete.is_empty() && is_rolling(&ds) {
                let roll = update::rolling_update(&ds, &nodes, &by_node, &hash, now);
                create_on = roll.create_on;
                let doomed: HashSet<&str> = roll.delete.iter().map(String::as_str).collect();
                delete = pod_claims
                    .owned
                    .iter()
                    .filter(|p| doomed.contains(p.metadata.name.as_deref().unwrap_or("")))
                    .cloned()
                    .collect();
            }
            acted = !create_on.is_empty() || !delete.is_empty();
            self.sync_nodes(&ds, &key, &pod_api, &create_on, &delete, &hash)
                .await?;
        }

        let limit = ds
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let live: HashSet<String> = pod_claims
            .owned
            .iter()
            .filter_map(|p| {
                p.metadata
                    .labels
                    .as_ref()?
                    .get(plan::REVISION_HASH)
                    .cloned()
            })
            .collect();
        let doomed = history::to_clean(&old_revisions, limit, &live);
        history::clean(&self.client, &ns, &doomed).await?;

        let status = plan::status(&ds, &nodes, &by_node, &hash, now);
        if ds.status.as_ref() != Some(&status) {
            let mut updated = (*ds).clone();
            updated.status = Some(status);
            ds_api
                .replace_status(&name, &PostParams::default(), &updated)
                .await?;
        }
        if !acted && let Some(d) = plan::next_available(&ds, &pod_claims.owned, now) {
            requeue = Some(requeue.map_or(d, |r| r.min(d)));
        }
        Ok(match requeue {
            Some(d) => Action::requeue(self.clock.real(d) + Duration::from_millis(50)),
            None => Action::await_change(),
        })
    }
}

fn is_rolling(ds: &DaemonSet) -> bool {
    ds.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate"
}

impl DaemonSetController {
    /// Creates the pods for `create_on` and deletes `delete` (`syncNodes`).
    async fn sync_nodes(
        &self,
        ds: &DaemonSet,
        key: &str,
        pod_api: &Api<Pod>,
        create_on: &[String],
        delete: &[Arc<Pod>],
        hash: &str,
    ) -> Result<(), Error> {
        let pods: Vec<Pod> = create_on
            .iter()
            .map(|node| plan::new_pod(ds, node, hash))
            .collect();
        let (_, failed) = crate::podcontrol::create_pods(
            ds,
            key,
            pod_api,
            &pods,
            &self.expectations,
            &self.recorder,
        )
        .await;
        let deleted = crate::podcontrol::delete_pods(
            ds,
            key,
            pod_api,
            delete,
            &self.expectations,
            &self.recorder,
        )
        .await;
        match failed.or(deleted) {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
