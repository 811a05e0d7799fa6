//! What a DaemonSet wants, from its nodes and pods, with no I/O (kubernetes/pkg/controller/
//! daemon's `NodeShouldRunDaemonPod`, `podsShouldBeOnNode` and `updateDaemonSetStatus`):
//! - [`node_fit`]: whether a node should run the daemon pod (its nodeSelector, required node
//!   affinity and NoSchedule/NoExecute taints, with the tolerations every daemon pod gets), and
//!   whether a pod already there may keep running (only a NoExecute taint it does not tolerate
//!   evicts it);
//! - [`manage`]: the nodes needing a pod, the pods to delete (on nodes that should not run one,
//!   surplus pods, succeeded pods, pods aimed at nodes that are gone) and the failed pods to
//!   replace;
//! - [`status`]: desired, current, misscheduled, ready, available and updated counts.
//!
//! Daemon pods are placed by the scheduler: each carries a required node affinity on the
//! field `metadata.name` of its node ([`new_pod`]), so the scheduler's resource and port checks
//! apply to them as to every pod.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::podutil::{self, controller_owner_ref};
use crate::taints::{self, tolerates};

pub use crate::history::REVISION_HASH;
/// The (deprecated) label carrying the DaemonSet's template generation.
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";
/// The DaemonSet annotation the API server keeps the template generation in.
pub const TEMPLATE_GENERATION: &str = "deprecated.daemonset.template.generation";

/// Whether a node should run a DaemonSet's pod, and whether a pod already there may stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFit {
    pub should_run: bool,
    pub should_continue: bool,
}

/// The tolerations every daemon pod gets on top of its template's
/// (`AddOrUpdateDaemonPodTolerations`): it survives a node going not-ready or unreachable, and
/// is placed on cordoned nodes and nodes under memory, disk or pid pressure (and, with host
/// networking, nodes whose network is not ready yet).
pub fn tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut out = spec.tolerations.clone().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        let t = Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Default::default()
        };
        if !out.contains(&t) {
            out.push(t);
        }
    };
    add(taints::NOT_READY, taints::NO_EXECUTE);
    add(taints::UNREACHABLE, taints::NO_EXECUTE);
    add(taints::DISK_PRESSURE, taints::NO_SCHEDULE);
    add(taints::MEMORY_PRESSURE, taints::NO_SCHEDULE);
    add(taints::PID_PRESSURE, taints::NO_SCHEDULE);
    add(taints::UNSCHEDULABLE, taints::NO_SCHEDULE);
    if spec.host_network == Some(true) {
        add(taints::NETWORK_UNAVAILABLE, taints::NO_SCHEDULE);
    }
    out
}

fn untolerated<'t>(
    taints: &'t [Taint],
    tols: &[Toleration],
    effects: &[&str],
) -> Option<&'t Taint> {
    taints
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .find(|t| !tols.iter().any(|tol| tolerates(tol, t)))
}

/// `NodeShouldRunDaemonPod`.
pub fn node_fit(ds: &DaemonSet, node: &Node) -> NodeFit {
    const NO: NodeFit = NodeFit {
        should_run: false,
        should_continue: false,
    };
    let name = node.metadata.name.as_deref().unwrap_or("");
    let Some(spec) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return NO;
    };
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return NO;
    }
    let probe = Pod {
        spec: Some(PodSpec {
            tolerations: Some(tolerations(spec)),
            ..spec.clone()
        }),
        ..Default::default()
    };
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    if !crate::nodeaffinity::required_fits(&probe, labels, name) {
        return NO;
    }
    let node_taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[]);
    let tols = taints::tolerations(&probe);
    if untolerated(
        node_taints,
        tols,
        &[taints::NO_SCHEDULE, taints::NO_EXECUTE],
    )
    .is_some()
    {
        return NodeFit {
            should_run: false,
            should_continue: untolerated(node_taints, tols, &[taints::NO_EXECUTE]).is_none(),
        };
    }
    NodeFit {
        should_run: true,
        should_continue: true,
    }
}

/// The node a daemon pod is for: its `nodeName`, or before it is scheduled the node its
/// affinity names (`GetTargetNodeName`).
pub fn target_node(pod: &Pod) -> Option<&str> {
    if let Some(n) = podutil::node_name(pod) {
        return Some(n);
    }
    pod.spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first())
        .map(String::as_str)
}

/// The DaemonSet's template generation (its `deprecated.daemonset.template.generation`).
pub fn template_generation(ds: &DaemonSet) -> Option<&str> {
    ds.metadata
        .annotations
        .as_ref()?
        .get(TEMPLATE_GENERATION)
        .map(String::as_str)
}

/// Whether a pod runs the current template: the revision hash, or the template generation,
/// matches (`IsPodUpdated`).
pub fn is_updated(pod: &Pod, hash: &str, generation: Option<&str>) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    (!hash.is_empty() && label(REVISION_HASH) == Some(hash))
        || (generation.is_some() && label(TEMPLATE_GENERATION_LABEL) == generation)
}

/// The pod for `node`: the template, labelled with the revision `hash` and the template
/// generation, with the daemon tolerations, and its required node affinity replaced by the
/// node's name (`ReplaceDaemonSetPodNodeNameNodeAffinity`; preferred terms are kept).
pub fn new_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(REVISION_HASH.into(), hash.into());
    if let Some(g) = template_generation(ds) {
        labels.insert(TEMPLATE_GENERATION_LABEL.into(), g.into());
    }
    let mut spec = template.spec.unwrap_or_default();
    spec.tolerations = Some(tolerations(&spec));
    let only_this_node = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            ..Default::default()
        }],
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default)
        .required_during_scheduling_ignored_during_execution = Some(only_this_node);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.metadata.name.as_deref().unwrap_or(""))),
            namespace: ds.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_owner_ref(ds)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The DaemonSet's pods by the node they are for (pods aimed at no node are left out).
pub fn by_node(pods: &[Arc<Pod>]) -> BTreeMap<String, Vec<Arc<Pod>>> {
    let mut out: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    for p in pods {
        if let Some(n) = target_node(p) {
            out.entry(n.to_string()).or_default().push(p.clone());
        }
    }
    out
}

/// Whether the DaemonSet rolls by surging (a non-zero maxSurge under RollingUpdate).
pub fn allows_surge(ds: &DaemonSet) -> bool {
    super::update::surge_and_unavailable(ds, 1).0 > 0
}

/// What [`manage`] decided.
#[derive(Debug, Default)]
pub struct Manage {
    /// Nodes that should run the pod and have none.
    pub create_on: Vec<String>,
    /// Pods to delete now.
    pub delete: Vec<Arc<Pod>>,
    /// Failed pods to replace, with their node (deleted unless their node is backing off).
    pub failed: Vec<(String, Arc<Pod>)>,
}

/// Oldest first, and of pods created together the running one first
/// (`podByCreationTimestampAndPhase`).
fn oldest_first(pods: &mut [Arc<Pod>]) {
    pods.sort_by(|a, b| {
        let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| (podutil::phase(b) == "Running").cmp(&(podutil::phase(a) == "Running")))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

/// `manage` / `podsShouldBeOnNode` over every node: a node that should run the pod and has none
/// gets one; on a node where a pod may stay, failed pods are replaced, succeeded ones removed
/// and only the oldest running pod kept (with surge, the oldest of the current revision and the
/// oldest older one); on a node where none may stay, every pod goes. Pods aimed at a node that
/// is gone and not yet scheduled are deleted too. A node with a pod being deleted waits for it.
pub fn manage(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    pods_by_node: &BTreeMap<String, Vec<Arc<Pod>>>,
    hash: &str,
) -> Manage {
    let mut out = Manage::default();
    let surge = allows_surge(ds);
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let fit = node_fit(ds, node);
        let pods = pods_by_node.get(name);
        match pods {
            None if fit.should_run => out.create_on.push(name.to_string()),
            None => {}
            Some(pods) if fit.should_continue => {
                let mut running = Vec::new();
                for p in pods
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                {
                    match podutil::phase(p) {
                        "Failed" => out.failed.push((name.to_string(), p.clone())),
                        "Succeeded" => out.delete.push(p.clone()),
                        _ => running.push(p.clone()),
                    }
                }
                oldest_first(&mut running);
                if !surge {
                    out.delete.extend(running.into_iter().skip(1));
                } else {
                    let (mut newest_kept, mut old_kept) = (false, false);
                    for p in running {
                        let current = is_updated(&p, hash, None);
                        let kept = if current {
                            &mut newest_kept
                        } else {
                            &mut old_kept
                        };
                        if *kept {
                            out.delete.push(p);
                        } else {
                            *kept = true;
                        }
                    }
                }
            }
            Some(pods) => out.delete.extend(
                pods.iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .cloned(),
            ),
        }
    }
    let known: std::collections::HashSet<&str> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    for (node, pods) in pods_by_node {
        if known.contains(node.as_str()) {
            continue;
        }
        out.delete.extend(
            pods.iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none() && podutil::node_name(p).is_none()
                })
                .cloned(),
        );
    }
    out
}

/// The DaemonSet's status (`updateDaemonSetStatus`): for each node that should run the pod,
/// whether it has one, and whether the oldest (not being deleted) is ready, available (ready
/// for minReadySeconds) and of the current revision; pods on nodes that should not run one
/// are misscheduled.
pub fn status(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    pods_by_node: &BTreeMap<String, Vec<Arc<Pod>>>,
    hash: &str,
    now: Timestamp,
) -> DaemonSetStatus {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let generation = template_generation(ds);
    let old = ds.status.clone().unwrap_or_default();
    let mut st = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: old.collision_count,
        conditions: old.conditions,
        ..Default::default()
    };
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let fit = node_fit(ds, node);
        let mut pods: Vec<Arc<Pod>> = pods_by_node.get(name).cloned().unwrap_or_default();
        if fit.should_run {
            st.desired_number_scheduled += 1;
            if pods.is_empty() {
                continue;
            }
            st.current_number_scheduled += 1;
            oldest_first(&mut pods);
            // A pod on its way out speaks for the node only when it is all there is.
            let pod = pods
                .iter()
                .find(|p| p.metadata.deletion_timestamp.is_none())
                .unwrap_or(&pods[0]);
            if podutil::is_ready(pod) {
                st.number_ready += 1;
                if podutil::is_available(pod, min_ready, now) {
                    st.number_available = Some(st.number_available.unwrap_or(0) + 1);
                }
            }
            if is_updated(pod, hash, generation) {
                st.updated_number_scheduled = Some(st.updated_number_scheduled.unwrap_or(0) + 1);
            }
        } else if !pods.is_empty() {
            st.number_misscheduled += 1;
        }
    }
    let unavailable = st.desired_number_scheduled - st.number_available.unwrap_or(0);
    if unavailable > 0 {
        st.number_unavailable = Some(unavailable);
    }
    st
}

/// The soonest a ready pod of the DaemonSet becomes available (to look again then).
pub fn next_available(
    ds: &DaemonSet,
    pods: &[Arc<Pod>],
    now: Timestamp,
) -> Option<std::time::Duration> {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    if min_ready <= 0 {
        return None;
    }
    pods.iter()
        .filter_map(|p| podutil::available_in(p, min_ready, now))
        .min()
        .and_then(|d| std::time::Duration::try_from(d).ok())
}
