//! The disruption controller (kubernetes/pkg/controller/disruption): keeps each
//! PodDisruptionBudget's status — expectedPods, desiredHealthy, currentHealthy,
//! disruptionsAllowed, disruptedPods and the DisruptionAllowed condition — from the pods it
//! selects and their controllers' scale ([`plan`]). pods/eviction in the API server spends
//! what it allows.
//!
//! Controllers' scale: ReplicaSets and Deployments from the shared informers; any other
//! controller through its `/scale` subresource (found by discovery). A budget whose count
//! cannot be computed gets disruptionsAllowed 0 and DisruptionAllowed=False (SyncFailed), so
//! nothing is evicted on a guess.

pub mod plan;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DynamicObject, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::endpointslice::{serve, split_key};
use crate::runtime::{Backoffs, Discovery, Informer, Recorder, Watchable, WorkQueue};
use crate::{Error, Manager, podutil};

pub const NAME: &str = "disruption";

struct DisruptionController {
    client: kube::Client,
    pdbs: Store<PodDisruptionBudget>,
    pods: Store<Pod>,
    replicasets: Store<ReplicaSet>,
    deployments: Store<Deployment>,
    discovery: Arc<Discovery>,
    recorder: Recorder,
    queue: Arc<WorkQueue<String>>,
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let (pdbs, pods, replicasets, deployments) = (
        m.informers.pod_disruption_budgets(),
        m.informers.pods(),
        m.informers.replicasets(),
        m.informers.deployments(),
    );
    pdbs.wait_synced().await;
    pods.wait_synced().await;
    replicasets.wait_synced().await;
    deployments.wait_synced().await;
    let queue = WorkQueue::new(Backoffs::default());
    let me = Arc::new(DisruptionController {
        client: m.client.clone(),
        pdbs: pdbs.store(),
        pods: pods.store(),
        replicasets: replicasets.store(),
        deployments: deployments.store(),
        discovery: m.discovery.clone(),
        recorder: Recorder::new(m.client.clone(), "controllermanager"),
        queue: queue.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    {
        let queue = queue.clone();
        tasks.spawn(async move {
            let mut changes = pdbs.subscribe().boxed();
            while let Some(c) = changes.next().await {
                queue.add(podutil::key(&c.object().metadata));
            }
        });
    }
    tasks.spawn(queue_selecting(pods, me.pdbs.clone(), queue.clone()));
    tasks.spawn(queue_namespace(replicasets, me.pdbs.clone(), queue.clone()));
    tasks.spawn(queue_namespace(deployments, me.pdbs.clone(), queue.clone()));
    tasks.spawn(serve(NAME, queue, 2, m.metrics.clone(), move |key| {
        let me = me.clone();
        async move { me.sync(&key).await }
    }));
    while tasks.join_next().await.is_some() {}
}

/// Whether a budget selects `pod` (policy/v1: an empty selector selects all, none selects none).
fn selects(pdb: &PodDisruptionBudget, pod: &Pod) -> bool {
    if pdb.metadata.namespace != pod.metadata.namespace {
        return false;
    }
    let Some(sel) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    let empty = BTreeMap::new();
    capstan_api::Selector::from_label_selector(sel)
        .is_ok_and(|s| s.matches_map(pod.metadata.labels.as_ref().unwrap_or(&empty)))
}

/// A pod's change queues the budgets that select it.
async fn queue_selecting(
    pods: Arc<Informer<Pod>>,
    pdbs: Store<PodDisruptionBudget>,
    queue: Arc<WorkQueue<String>>,
) {
    let mut changes = pods.subscribe().boxed();
    while let Some(c) = changes.next().await {
        let pod = c.object();
        for b in pdbs.state().iter().filter(|b| selects(b, pod)) {
            queue.add(podutil::key(&b.metadata));
        }
    }
}

/// A controller's change (its scale) queues every budget of its namespace.
async fn queue_namespace<K: Watchable>(
    informer: Arc<Informer<K>>,
    pdbs: Store<PodDisruptionBudget>,
    queue: Arc<WorkQueue<String>>,
) {
    let mut changes = informer.subscribe().boxed();
    while let Some(c) = changes.next().await {
        let ns = c.object().meta().namespace.clone();
        for b in pdbs.state().iter().filter(|b| b.metadata.namespace == ns) {
            queue.add(podutil::key(&b.metadata));
        }
    }
}

fn condition(
    allowed: bool,
    failed: Option<&str>,
    generation: Option<i64>,
    old: &[Condition],
) -> Condition {
    let (status, reason, message) = match failed {
        Some(m) => ("False", "SyncFailed", m.to_string()),
        None if allowed => ("True", "SufficientPods", String::new()),
        None => ("False", "InsufficientPods", String::new()),
    };
    let since = old
        .iter()
        .find(|c| c.type_ == "DisruptionAllowed" && c.status == status && c.reason == reason)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(jiff::Timestamp::now()));
    Condition {
        type_: "DisruptionAllowed".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

impl DisruptionController {
    /// The sum of the selected pods' controllers' replicas (each controller once).
    async fn scale(&self, ns: &str, pods: &[Arc<Pod>]) -> Result<i32, String> {
        let mut seen = HashSet::new();
        let mut sum = 0;
        for pod in pods {
            let Some(r) = podutil::controller_ref(&pod.metadata) else {
                continue; // unmanaged: counted by minAvailable only
            };
            let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
            let no_controller = || format!("found no controllers for pod {pod_name:?}");
            if r.kind == "ReplicaSet" && r.api_version.starts_with("apps/") {
                let rs = self
                    .replicasets
                    .get(&ObjectRef::new(&r.name).within(ns))
                    .filter(|rs| rs.metadata.uid.as_deref() == Some(r.uid.as_str()))
                    .ok_or_else(no_controller)?;
                if let Some(d) =
                    podutil::controller_ref(&rs.metadata).filter(|d| d.kind == "Deployment")
                {
                    let dep = self
                        .deployments
                        .get(&ObjectRef::new(&d.name).within(ns))
                        .filter(|dep| dep.metadata.uid.as_deref() == Some(d.uid.as_str()))
                        .ok_or_else(no_controller)?;
                    if seen.insert(d.uid.clone()) {
                        sum += dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    }
                } else if seen.insert(r.uid.clone()) {
                    sum += rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                }
                continue;
            }
            if !seen.insert(r.uid.clone()) {
                continue;
            }
            let mapping = self
                .discovery
                .resolve(&r.api_version, &r.kind)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(no_controller)?;
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), ns, &mapping.resource);
            let scale = api.get_scale(&r.name).await.map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => format!(
                    "{}/{} does not implement the scale subresource",
                    mapping.resource.plural, r.name
                ),
                e => e.to_string(),
            })?;
            sum += scale.spec.and_then(|s| s.replicas).unwrap_or(0);
        }
        Ok(sum)
    }

    #[tracing::instrument(skip(self), fields(controller = NAME))]
    async fn sync(&self, key: &str) -> Result<(), Error> {
        let (ns, name) = split_key(key);
        let Some(pdb) = self.pdbs.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(());
        };
        let pods = self.pods.state_filter(|p| selects(&pdb, p));
        let now = jiff::Timestamp::now();
        let computed = if plan::needs_scale(&pdb) {
            match self.scale(ns, &pods).await {
                Ok(s) => plan::compute(&pdb, &pods, Some(s), now),
                Err(e) => Err(e),
            }
        } else {
            plan::compute(&pdb, &pods, None, now)
        };
        let old = pdb.status.clone().unwrap_or_default();
        let old_conds = old.conditions.clone().unwrap_or_default();
        let generation = pdb.metadata.generation;
        let status = match &computed {
            Ok(c) => {
                if pods.is_empty() {
                    self.recorder
                        .normal(&*pdb, "NoPods", "No matching pods found".into());
                }
                for p in &c.expired {
                    if let Some(pod) = pods.iter().find(|x| x.metadata.name.as_deref() == Some(p)) {
                        self.recorder.warning(
                            &**pod,
                            "NotDeleted",
                            format!(
                                "Pod was expected by PDB {ns}/{name} to be deleted but it wasn't"
                            ),
                        );
                    }
                }
                if let Some(at) = c.next_expiry {
                    let wait = now.duration_until(at).unsigned_abs();
                    self.queue
                        .add_after(key.to_string(), wait + Duration::from_millis(100));
                }
                PodDisruptionBudgetStatus {
                    observed_generation: generation,
                    current_healthy: c.current_healthy,
                    desired_healthy: c.desired_healthy,
                    expected_pods: c.expected_pods,
                    disruptions_allowed: c.disruptions_allowed,
                    disrupted_pods: (!c.disrupted_pods.is_empty()).then(|| {
                        c.disrupted_pods
                            .iter()
                            .map(|(k, t)| (k.clone(), Time(*t)))
                            .collect()
                    }),
                    conditions: Some(vec![condition(
                        c.disruptions_allowed > 0,
                        None,
                        generation,
                        &old_conds,
                    )]),
                }
            }
            Err(e) => {
                self.recorder.warning(
                    &*pdb,
                    "CalculateExpectedPodCountFailed",
                    format!("Failed to calculate the number of expected pods: {e}"),
                );
                PodDisruptionBudgetStatus {
                    disruptions_allowed: 0,
                    conditions: Some(vec![condition(false, Some(e), generation, &old_conds)]),
                    ..old.clone()
                }
            }
        };
        if status == old {
            return Ok(());
        }
        let mut updated = (*pdb).clone();
        updated.status = Some(status);
        let api: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), ns);
        api.replace_status(name, &PostParams::default(), &updated)
            .await?;
        Ok(())
    }
}
