//! Table tests of the DaemonSet controller's decisions, no I/O: where pods belong
//! (Kubernetes' TestNodeShouldRunDaemonPod cases), what manage creates and deletes, the
//! status counts, both rolling update modes, and which revisions are current or cleaned.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::{Value, json};

use super::plan::{self, NodeFit, REVISION_HASH};
use super::update::{self, Roll};
use crate::history::{self, patch_of};
use crate::podutil::fixtures::{at, pod};

fn ds(extra: Value) -> DaemonSet {
    let mut v = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "default", "uid": "uid-agent", "generation": 2,
            "annotations": {"deprecated.daemonset.template.generation": "2"}},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
            "updateStrategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    capstan_testkit::merge_json(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn node(name: &str, extra: Value) -> Arc<Node> {
    let mut v = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
    capstan_testkit::merge_json(&mut v, extra);
    Arc::new(serde_json::from_value(v).unwrap())
}

fn nodes(names: &[&str]) -> Vec<Arc<Node>> {
    names.iter().map(|n| node(n, json!({}))).collect()
}

/// A daemon pod of revision `hash` on `node`, ready since t=0.
fn dpod(name: &str, node: &str, hash: &str) -> Arc<Pod> {
    pod(name)
        .owned_by("DaemonSet", "agent")
        .labels(&[("app", "web"), (REVISION_HASH, hash)])
        .on(node)
        .ready_since(0)
        .build()
}

fn names(pods: &[Arc<Pod>]) -> Vec<String> {
    let mut v: Vec<String> = pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    v.sort();
    v
}

const RUN: NodeFit = NodeFit {
    should_run: true,
    should_continue: true,
};
const NO: NodeFit = NodeFit {
    should_run: false,
    should_continue: false,
};
const STAY: NodeFit = NodeFit {
    should_run: false,
    should_continue: true,
};

#[test]
fn which_nodes_run_the_daemon_pod() {
    let taint = |key: &str, effect: &str| json!({"spec": {"taints": [{"key": key, "value": "x", "effect": effect}]}});
    let cases: Vec<(&str, DaemonSet, Arc<Node>, NodeFit)> = vec![
        ("a plain node", ds(json!({})), node("n", json!({})), RUN),
        (
            "a nodeSelector the node matches",
            ds(json!({"spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}})),
            node("n", json!({"metadata": {"labels": {"disk": "ssd"}}})),
            RUN,
        ),
        (
            "a nodeSelector the node lacks",
            ds(json!({"spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}})),
            node("n", json!({})),
            NO,
        ),
        (
            "required node affinity NotIn the node's zone",
            ds(
                json!({"spec": {"template": {"spec": {"affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}]}}}}}}}),
            ),
            node("n", json!({"metadata": {"labels": {"zone": "a"}}})),
            NO,
        ),
        (
            "the template names another node",
            ds(json!({"spec": {"template": {"spec": {"nodeName": "other"}}}})),
            node("n", json!({})),
            NO,
        ),
        (
            "an untolerated NoSchedule taint keeps a running pod",
            ds(json!({})),
            node("n", taint("dedicated", "NoSchedule")),
            STAY,
        ),
        (
            "an untolerated NoExecute taint evicts",
            ds(json!({})),
            node("n", taint("dedicated", "NoExecute")),
            NO,
        ),
        (
            "a tolerated taint",
            ds(json!({"spec": {"template": {"spec": {"tolerations": [
                {"key": "dedicated", "operator": "Exists"}]}}}})),
            node("n", taint("dedicated", "NoExecute")),
            RUN,
        ),
        (
            "a cordoned node still gets its daemon pod",
            ds(json!({})),
            node(
                "n",
                json!({"spec": {"unschedulable": true,
                "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}}),
            ),
            RUN,
        ),
        (
            "an unreachable node keeps its pod but gets no new one while not ready",
            ds(json!({})),
            node(
                "n",
                json!({"spec": {"taints": [
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
                {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]}}),
            ),
            STAY,
        ),
        (
            "memory pressure is tolerated",
            ds(json!({})),
            node(
                "n",
                json!({"spec": {"taints": [
                {"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"}]}}),
            ),
            RUN,
        ),
    ];
    for (what, d, n, want) in cases {
        assert_eq!(plan::node_fit(&d, &n), want, "{what}");
    }
}

#[test]
fn a_daemon_pod_is_aimed_at_its_node_and_labelled_with_its_revision() {
    let d = ds(
        json!({"spec": {"template": {"spec": {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]},
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference":
            {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}}]}}}}}}),
    );
    let p = plan::new_pod(&d, "n1", "abc");
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(v["metadata"]["generateName"], "agent-");
    assert_eq!(
        v["metadata"]["labels"],
        json!({"app": "web", "controller-revision-hash": "abc", "pod-template-generation": "2"})
    );
    let aff = &v["spec"]["affinity"]["nodeAffinity"];
    assert_eq!(
        aff["requiredDuringSchedulingIgnoredDuringExecution"],
        json!({"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]})
    );
    assert_eq!(
        aff["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"],
        1
    );
    let keys: Vec<&str> = v["spec"]["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
            "node.kubernetes.io/disk-pressure",
            "node.kubernetes.io/memory-pressure",
            "node.kubernetes.io/pid-pressure",
            "node.kubernetes.io/unschedulable"
        ]
    );
    assert_eq!(plan::target_node(&p), Some("n1"));
    assert_eq!(
        p.metadata.owner_references.as_ref().unwrap()[0].kind,
        "DaemonSet"
    );
}

#[test]
fn manage_fills_empty_nodes_and_clears_the_rest() {
    let d = ds(json!({"spec": {"template": {"spec": {"nodeSelector": {"role": "edge"}}}}}));
    let edge = |n: &str| node(n, json!({"metadata": {"labels": {"role": "edge"}}}));
    let all = vec![
        edge("empty"),
        edge("two"),
        node("not-edge", json!({})),
        edge("failed"),
        edge("done"),
        edge("going"),
    ];
    let pods = vec![
        pod("two-old")
            .owned_by("DaemonSet", "agent")
            .on("two")
            .created(1)
            .running()
            .build(),
        pod("two-new")
            .owned_by("DaemonSet", "agent")
            .on("two")
            .created(2)
            .running()
            .build(),
        dpod("misplaced", "not-edge", "h"),
        pod("broken")
            .owned_by("DaemonSet", "agent")
            .on("failed")
            .phase("Failed")
            .build(),
        pod("finished")
            .owned_by("DaemonSet", "agent")
            .on("done")
            .phase("Succeeded")
            .build(),
        pod("leaving")
            .owned_by("DaemonSet", "agent")
            .on("going")
            .running()
            .deleting()
            .build(),
        dpod("orphaned-node", "gone", "h"),
    ];
    let unscheduled_on_gone_node = Arc::new(plan::new_pod(&d, "vanished", "h"));
    let mut by_node = plan::by_node(&pods);
    by_node.insert("vanished".into(), vec![unscheduled_on_gone_node]);
    let m = plan::manage(&d, &all, &by_node, "h");
    assert_eq!(
        m.create_on,
        ["empty"],
        "a node whose pod is being deleted waits"
    );
    let mut deleted = names(&m.delete);
    deleted.retain(|n| !n.is_empty());
    assert_eq!(deleted, ["finished", "misplaced", "two-new"]);
    assert_eq!(
        m.delete
            .iter()
            .filter(|p| p.metadata.name.is_none())
            .count(),
        1,
        "the unscheduled pod aimed at a vanished node goes; a bound one is the pod GC's"
    );
    assert_eq!(m.failed.len(), 1);
    assert_eq!(m.failed[0].0, "failed");
}

#[test]
fn with_surge_a_node_keeps_one_old_and_one_new_pod() {
    let d = ds(
        json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}}}),
    );
    let pods = vec![
        pod("old-1")
            .owned_by("DaemonSet", "agent")
            .labels(&[("app", "web"), (REVISION_HASH, "old")])
            .on("n")
            .created(1)
            .running()
            .build(),
        pod("old-2")
            .owned_by("DaemonSet", "agent")
            .labels(&[("app", "web"), (REVISION_HASH, "old")])
            .on("n")
            .created(2)
            .running()
            .build(),
        pod("new-1")
            .owned_by("DaemonSet", "agent")
            .labels(&[("app", "web"), (REVISION_HASH, "new")])
            .on("n")
            .created(3)
            .running()
            .build(),
    ];
    let m = plan::manage(&d, &nodes(&["n"]), &plan::by_node(&pods), "new");
    assert_eq!(names(&m.delete), ["old-2"]);
    assert!(m.create_on.is_empty());
}

#[test]
fn status_counts_nodes_not_pods() {
    let d = ds(json!({"spec": {"minReadySeconds": 10,
        "template": {"spec": {"nodeSelector": {"role": "edge"}}}}}));
    let edge = |n: &str| node(n, json!({"metadata": {"labels": {"role": "edge"}}}));
    let all = vec![
        edge("a"),
        edge("b"),
        edge("c"),
        edge("d"),
        node("x", json!({})),
    ];
    let pods = vec![
        dpod("a1", "a", "new"),
        pod("b1")
            .owned_by("DaemonSet", "agent")
            .labels(&[("app", "web"), (REVISION_HASH, "old")])
            .on("b")
            .ready_since(5)
            .build(),
        pod("c1")
            .owned_by("DaemonSet", "agent")
            .labels(&[("app", "web"), (REVISION_HASH, "new")])
            .on("c")
            .running()
            .build(),
        dpod("x1", "x", "new"),
    ];
    let st = plan::status(&d, &all, &plan::by_node(&pods), "new", at(12));
    assert_eq!(st.desired_number_scheduled, 4);
    assert_eq!(st.current_number_scheduled, 3);
    assert_eq!(st.number_misscheduled, 1);
    assert_eq!(st.number_ready, 2);
    assert_eq!(st.number_available, Some(1), "b1 has been ready 7 s of 10");
    assert_eq!(st.number_unavailable, Some(3));
    assert_eq!(st.updated_number_scheduled, Some(2));
    assert_eq!(st.observed_generation, Some(2));
    let by_generation = pod("g1")
        .owned_by("DaemonSet", "agent")
        .labels(&[("app", "web"), ("pod-template-generation", "2")])
        .build();
    assert!(plan::is_updated(
        &by_generation,
        "other",
        plan::template_generation(&d)
    ));
}

fn roll(d: &DaemonSet, all: &[Arc<Node>], pods: &[Arc<Pod>]) -> Roll {
    let mut r = update::rolling_update(d, all, &plan::by_node(pods), "new", at(100));
    r.delete.sort();
    r.create_on.sort();
    r
}

#[test]
fn max_unavailable_bounds_how_many_nodes_are_replaced_at_once() {
    let d = ds(json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 2}}}}));
    let all = nodes(&["a", "b", "c", "d", "e"]);
    let old: Vec<_> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| dpod(&format!("{n}-old"), n, "old"))
        .collect();
    assert_eq!(roll(&d, &all, &old).delete, ["a-old", "b-old"]);

    // a and b were replaced; a's new pod is not ready yet, b's is: one more may go.
    let unready = pod("a-new")
        .owned_by("DaemonSet", "agent")
        .labels(&[("app", "web"), (REVISION_HASH, "new")])
        .on("a")
        .running()
        .build();
    let mut mid = vec![unready, dpod("b-new", "b", "new")];
    mid.extend(old[2..].iter().cloned());
    assert_eq!(roll(&d, &all, &mid).delete, ["c-old"]);

    // An old pod that is unavailable anyway is replaced beyond the budget.
    let mut broken = mid.clone();
    broken[3] = pod("d-old")
        .owned_by("DaemonSet", "agent")
        .labels(&[("app", "web"), (REVISION_HASH, "old")])
        .on("d")
        .running()
        .build();
    assert_eq!(roll(&d, &all, &broken).delete, ["c-old", "d-old"]);

    // A node without a pod counts as unavailable.
    let missing: Vec<_> = old[1..].to_vec();
    assert_eq!(roll(&d, &all, &missing).delete, ["b-old"]);

    // Percentages of the 5 nodes round up: 30% is 2.
    let pct = ds(json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": "30%"}}}}));
    assert_eq!(roll(&pct, &all, &old).delete.len(), 2);

    let on_delete =
        ds(json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}}));
    assert_eq!(update::surge_and_unavailable(&on_delete, 5), (0, 0));
}

#[test]
fn max_surge_starts_new_pods_before_old_ones_go() {
    let d = ds(
        json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}}}),
    );
    let all = nodes(&["a", "b", "c"]);
    let old: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| dpod(&format!("{n}-old"), n, "old"))
        .collect();
    assert_eq!(
        roll(&d, &all, &old),
        Roll {
            delete: vec![],
            create_on: vec!["a".into()]
        }
    );
    // a's new pod is starting: no more surge; once ready, a's old pod goes and b surges.
    let starting = pod("a-new")
        .owned_by("DaemonSet", "agent")
        .labels(&[("app", "web"), (REVISION_HASH, "new")])
        .on("a")
        .running()
        .build();
    let mut mid = old.clone();
    mid.push(starting);
    assert_eq!(roll(&d, &all, &mid), Roll::default());
    let mut ready = old.clone();
    ready.push(dpod("a-new", "a", "new"));
    assert_eq!(
        roll(&d, &all, &ready),
        Roll {
            delete: vec!["a-old".into()],
            create_on: vec!["b".into()]
        }
    );
    // An unavailable old pod gets its replacement at once, beyond maxSurge.
    let mut broken = mid.clone();
    broken[2] = pod("c-old")
        .owned_by("DaemonSet", "agent")
        .labels(&[("app", "web"), (REVISION_HASH, "old")])
        .on("c")
        .running()
        .build();
    assert_eq!(roll(&d, &all, &broken).create_on, ["c"]);
}

fn revision(name: &str, rev: i64, data: Value, hash: &str) -> Arc<ControllerRevision> {
    Arc::new(ControllerRevision {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                REVISION_HASH.to_string(),
                hash.to_string(),
            )])),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision: rev,
    })
}

#[test]
fn the_current_revision_holds_the_template_and_the_next_number() {
    let d = ds(json!({}));
    let mut older = d.clone();
    older
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("busybox:old".into());
    let revs = vec![
        revision("agent-1", 1, patch_of(&d), "h1"),
        revision("agent-2", 2, patch_of(&older), "h2"),
    ];
    // After `rollout undo` to revision 1: it is current again and must become number 3.
    let (cur, old, next) = history::split(&d, &revs);
    assert_eq!(cur.unwrap().metadata.name.as_deref(), Some("agent-1"));
    assert_eq!(old.len(), 1);
    assert_eq!(next, 3);
    let data = patch_of(&d);
    assert_eq!(data["spec"]["template"]["$patch"], "replace");
    assert_eq!(
        data["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox"
    );
    let fresh = history::new_revision(&d, "h9", 4);
    assert_eq!(fresh.metadata.name.as_deref(), Some("agent-h9"));
    assert_eq!(fresh.metadata.labels.unwrap()[REVISION_HASH], "h9");

    let (none, all_old, next) = history::split(
        &ds(json!({"spec": {"minReadySeconds": 1,
        "template": {"metadata": {"labels": {"tier": "x"}}}}})),
        &revs,
    );
    assert!(none.is_none());
    assert_eq!((all_old.len(), next), (2, 3));
}

#[test]
fn old_revisions_beyond_the_limit_go_oldest_first_unless_a_pod_uses_them() {
    let old: Vec<_> = (1..=5)
        .map(|i| revision(&format!("r{i}"), i, json!({"n": i}), &format!("h{i}")))
        .collect();
    let live: HashSet<String> = ["h1".to_string()].into();
    let doomed: Vec<_> = history::to_clean(&old, 2, &live)
        .iter()
        .map(|r| r.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(doomed, ["r2", "r3", "r4"]);
    assert!(history::to_clean(&old, 5, &live).is_empty());
}
