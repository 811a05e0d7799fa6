//! The monitoring pass, table-tested with an injected clock: silent nodes, partitions, zones
//! and their rates, recovery, cordons.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use super::*;

const S: Duration = Duration::from_secs(1);

fn wall() -> Time {
    Time(jiff::Timestamp::from_second(1_000_000).unwrap())
}

fn node(name: &str, zone: &str, ready: Option<&str>) -> Arc<Node> {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    if !zone.is_empty() {
        n.metadata.labels = Some(BTreeMap::from([(
            zones::LABEL_ZONE.to_string(),
            zone.to_string(),
        )]));
    }
    n.status = Some(NodeStatus {
        conditions: ready.map(|s| {
            vec![NodeCondition {
                type_: "Ready".into(),
                status: s.into(),
                reason: Some("KubeletReady".into()),
                last_heartbeat_time: Some(wall()),
                ..Default::default()
            }]
        }),
        ..Default::default()
    });
    Arc::new(n)
}

fn with(node: &Arc<Node>, f: impl FnOnce(&mut Node)) -> Arc<Node> {
    let mut n = (**node).clone();
    f(&mut n);
    Arc::new(n)
}

fn lease(name: &str, renew: i64) -> Lease {
    Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            renew_time: Some(MicroTime(jiff::Timestamp::from_second(renew).unwrap())),
            lease_duration_seconds: Some(40),
            ..Default::default()
        }),
    }
}

/// Applies the plan's writes to the nodes, as the API would.
fn apply(nodes: &mut [Arc<Node>], plan: &Plan) {
    for a in &plan.actions {
        match a {
            Action::MarkUnknown {
                node, conditions, ..
            } => {
                let n = nodes
                    .iter_mut()
                    .find(|n| n.metadata.name.as_deref() == Some(node))
                    .unwrap();
                *n = with(n, |n| {
                    n.status.as_mut().unwrap().conditions = Some(conditions.clone())
                });
            }
            Action::SetTaints { node, taints } => {
                let n = nodes
                    .iter_mut()
                    .find(|n| n.metadata.name.as_deref() == Some(node))
                    .unwrap();
                *n = with(n, |n| {
                    n.spec.get_or_insert_with(NodeSpec::default).taints = Some(taints.clone())
                });
            }
            Action::MarkPodsNotReady { .. } => {}
        }
    }
}

/// One pass at `at`, its writes applied.
fn step(m: &mut Monitor, nodes: &mut [Arc<Node>], at: Instant) -> Plan {
    let plan = m.pass(nodes, at, &wall());
    apply(nodes, &plan);
    plan
}

fn taint_keys(nodes: &[Arc<Node>], name: &str, effect: &str) -> Vec<String> {
    let n = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
        .unwrap();
    let mut keys: Vec<String> = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.effect == effect)
        .map(|t| t.key)
        .collect();
    keys.sort();
    keys
}

fn marked(plan: &Plan) -> Vec<String> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::MarkPodsNotReady { node } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

/// A cluster of `n` Ready nodes in `zones` zones, all renewed at t0.
fn cluster(n: usize, zones: usize) -> (Monitor, Vec<Arc<Node>>, Instant) {
    let t0 = Instant::now();
    let mut m = Monitor::new(Settings::default());
    let nodes: Vec<Arc<Node>> = (0..n)
        .map(|i| node(&format!("n{i}"), &format!("z{}", i % zones), Some("True")))
        .collect();
    for (i, nd) in nodes.iter().enumerate() {
        m.probes.observe_node(nd, t0);
        m.probes.observe_lease(&lease(&format!("n{i}"), 1), t0);
    }
    (m, nodes, t0)
}

/// Every node but `dead` renews its lease at `at`.
fn renew_all_but(m: &mut Monitor, nodes: &[Arc<Node>], dead: &[&str], at: Instant, stamp: i64) {
    for n in nodes {
        let name = n.metadata.name.as_deref().unwrap();
        if !dead.contains(&name) {
            m.probes.observe_lease(&lease(name, stamp), at);
        }
    }
}

#[test]
fn a_node_silent_past_the_grace_period_goes_unknown_tainted_and_its_pods_not_ready() {
    let (mut m, mut nodes, t0) = cluster(3, 1);
    let t = t0 + 49 * S;
    renew_all_but(&mut m, &nodes, &["n0"], t, 49);
    let plan = m.pass(&nodes, t, &wall());
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert_eq!(
        plan.next_wake,
        Some(t0 + 50 * S),
        "wakes when n0's grace ends"
    );

    let t = t0 + 50 * S;
    let plan = m.pass(&nodes, t, &wall());
    assert!(
        matches!(&plan.actions[0], Action::MarkUnknown { node, was_ready: true, .. } if node == "n0")
    );
    assert_eq!(marked(&plan), vec!["n0"]);
    apply(&mut nodes, &plan);
    assert_eq!(
        taint_keys(&nodes, "n0", NO_EXECUTE),
        vec![taints::UNREACHABLE]
    );
    assert_eq!(
        taint_keys(&nodes, "n0", NO_SCHEDULE),
        vec![taints::UNREACHABLE]
    );
    let added = nodes[0].spec.as_ref().unwrap().taints.as_ref().unwrap();
    assert!(
        added
            .iter()
            .any(|t| t.effect == NO_EXECUTE && t.time_added == Some(wall()))
    );
    assert!(taint_keys(&nodes, "n1", NO_EXECUTE).is_empty());

    // Nothing more to do on the next pass: writes are not repeated.
    let plan = m.pass(&nodes, t + S, &wall());
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
}

#[test]
fn a_node_reporting_not_ready_is_tainted_not_ready_and_a_swap_happens_at_once() {
    let (mut m, mut nodes, t0) = cluster(3, 1);
    nodes[1] = with(&node("n1", "z0", Some("False")), |_| {});
    let plan = step(&mut m, &mut nodes, t0 + S);
    assert_eq!(marked(&plan), vec!["n1"]);
    assert_eq!(
        taint_keys(&nodes, "n1", NO_EXECUTE),
        vec![taints::NOT_READY]
    );
    assert_eq!(
        taint_keys(&nodes, "n1", NO_SCHEDULE),
        vec![taints::NOT_READY]
    );
    // Then it goes silent too: unreachable replaces not-ready, though the bucket is empty.
    let t = t0 + 60 * S;
    renew_all_but(&mut m, &nodes, &["n1"], t, 60);
    let plan = step(&mut m, &mut nodes, t);
    assert_eq!(
        taint_keys(&nodes, "n1", NO_EXECUTE),
        vec![taints::UNREACHABLE]
    );
    assert!(marked(&plan).is_empty(), "already marked for this outage");
}

#[test]
fn nodes_are_tainted_no_faster_than_the_zone_rate() {
    let (mut m, mut nodes, t0) = cluster(10, 1);
    let dead = ["n0", "n1"];
    let t = t0 + 50 * S;
    renew_all_but(&mut m, &nodes, &dead, t, 50);
    let plan = step(&mut m, &mut nodes, t);
    assert_eq!(marked(&plan), vec!["n0", "n1"], "pods are marked at once");
    assert_eq!(
        taint_keys(&nodes, "n0", NO_EXECUTE),
        vec![taints::UNREACHABLE]
    );
    assert!(
        taint_keys(&nodes, "n1", NO_EXECUTE).is_empty(),
        "0.1/s: one now"
    );
    assert_eq!(plan.next_wake, Some(t + 10 * S));
    step(&mut m, &mut nodes, t + 9 * S);
    assert!(taint_keys(&nodes, "n1", NO_EXECUTE).is_empty());
    step(&mut m, &mut nodes, t + 10 * S);
    assert_eq!(
        taint_keys(&nodes, "n1", NO_EXECUTE),
        vec![taints::UNREACHABLE]
    );
}

#[test]
fn a_partially_disrupted_small_zone_is_not_tainted_while_a_healthy_zone_is() {
    // z0: n0 n2 n4 n6 n8 — three of them silent (3/5 ≥ 0.55): rate 0.
    // z1: n1 n3 n5 n7 n9 — one silent: normal rate.
    let (mut m, mut nodes, t0) = cluster(10, 2);
    let dead = ["n0", "n2", "n4", "n1"];
    let t = t0 + 50 * S;
    renew_all_but(&mut m, &nodes, &dead, t, 50);
    let plan = step(&mut m, &mut nodes, t);
    assert_eq!(plan.zones[":\u{0}:z0"].0, ZoneState::PartialDisruption);
    assert_eq!(plan.zones[":\u{0}:z1"].0, ZoneState::Normal);
    for n in ["n0", "n2", "n4"] {
        assert!(taint_keys(&nodes, n, NO_EXECUTE).is_empty(), "{n}");
    }
    assert_eq!(
        taint_keys(&nodes, "n1", NO_EXECUTE),
        vec![taints::UNREACHABLE]
    );
    step(&mut m, &mut nodes, t + 600 * S);
    assert!(
        taint_keys(&nodes, "n0", NO_EXECUTE).is_empty(),
        "still rate 0"
    );
}

#[test]
fn when_every_node_goes_silent_at_once_nothing_is_tainted_and_no_pod_marked() {
    // The agents stop within a few seconds of each other: n0 crosses its grace period first,
    // while the others are not past theirs yet.
    let (mut m, mut nodes, t0) = cluster(3, 1);
    m.probes.observe_lease(&lease("n1", 3), t0 + 3 * S);
    m.probes.observe_lease(&lease("n2", 6), t0 + 6 * S);
    for s in [50, 53, 56, 120] {
        let plan = m.pass(&nodes, t0 + s * S, &wall());
        assert!(m.full_disruption, "at {s} s");
        assert!(marked(&plan).is_empty(), "at {s} s: {:?}", plan.actions);
        apply(&mut nodes, &plan);
        for n in ["n0", "n1", "n2"] {
            assert!(taint_keys(&nodes, n, NO_EXECUTE).is_empty(), "{n} at {s} s");
        }
    }
    // Ready=Unknown is still written: kubectl shows them NotReady.
    assert_eq!(
        taint_keys(&nodes, "n0", NO_SCHEDULE),
        vec![taints::UNREACHABLE]
    );
    // The partition heals: n1 renews first and posts Ready; the others renew but have not
    // posted yet. Leaving full disruption does not taint them or mark their pods.
    let t = t0 + 130 * S;
    renew_all_but(&mut m, &nodes, &[], t, 130);
    let ready = node("n1", "z0", Some("True"));
    let ready = with(&ready, |n| {
        n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_heartbeat_time =
            Some(Time(jiff::Timestamp::from_second(1_000_130).unwrap()))
    });
    m.probes.observe_node(&ready, t);
    nodes[1] = with(&ready, |n| n.spec = nodes[1].spec.clone());
    let plan = m.pass(&nodes, t, &wall());
    assert_eq!(plan.full_disruption_changed, Some(false));
    assert!(marked(&plan).is_empty(), "{:?}", plan.actions);
    apply(&mut nodes, &plan);
    for n in ["n0", "n1", "n2"] {
        assert!(taint_keys(&nodes, n, NO_EXECUTE).is_empty(), "{n}");
    }
}

#[test]
fn one_dead_node_among_live_ones_is_not_a_partition() {
    // The single-failure case the partition rule must not swallow: the others renew every 10 s.
    let (mut m, mut nodes, t0) = cluster(3, 1);
    for s in (10..=50).step_by(10) {
        renew_all_but(&mut m, &nodes, &["n2"], t0 + s * S, s as i64);
    }
    let plan = m.pass(&nodes, t0 + 55 * S, &wall());
    assert!(!m.full_disruption);
    assert_eq!(marked(&plan), vec!["n2"]);
    apply(&mut nodes, &plan);
    assert_eq!(
        taint_keys(&nodes, "n2", NO_EXECUTE),
        vec![taints::UNREACHABLE]
    );
}

#[test]
fn a_node_back_loses_its_taints_and_can_be_marked_again_later() {
    let (mut m, mut nodes, t0) = cluster(3, 1);
    let t = t0 + 50 * S;
    renew_all_but(&mut m, &nodes, &["n0"], t, 50);
    step(&mut m, &mut nodes, t);
    assert_eq!(
        taint_keys(&nodes, "n0", NO_EXECUTE),
        vec![taints::UNREACHABLE]
    );
    // The agent comes back: renews, and posts Ready with a new heartbeat.
    let t = t0 + 80 * S;
    renew_all_but(&mut m, &nodes, &[], t, 80);
    let back = with(&node("n0", "z0", Some("True")), |n| {
        n.spec = nodes[0].spec.clone();
        n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_heartbeat_time =
            Some(Time(jiff::Timestamp::from_second(1_000_080).unwrap()));
    });
    m.probes.observe_node(&back, t);
    nodes[0] = back;
    step(&mut m, &mut nodes, t);
    assert!(taint_keys(&nodes, "n0", NO_EXECUTE).is_empty());
    assert!(taint_keys(&nodes, "n0", NO_SCHEDULE).is_empty());
    // Silent again: a new outage marks its pods again.
    let t = t0 + 130 * S;
    renew_all_but(&mut m, &nodes, &["n0"], t, 130);
    let plan = m.pass(&nodes, t, &wall());
    assert_eq!(marked(&plan), vec!["n0"]);
}

#[test]
fn a_node_that_never_posted_ready_gets_the_startup_grace_period() {
    let t0 = Instant::now();
    let mut m = Monitor::new(Settings::default());
    let mut nodes = vec![node("new", "", None), node("ok", "", Some("True"))];
    for n in &nodes {
        m.probes.observe_node(n, t0);
    }
    m.probes.observe_lease(&lease("ok", 55), t0 + 55 * S);
    let plan = m.pass(&nodes, t0 + 55 * S, &wall());
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    m.probes.observe_lease(&lease("ok", 60), t0 + 60 * S);
    let plan = m.pass(&nodes, t0 + 60 * S, &wall());
    let Some(Action::MarkUnknown {
        conditions,
        was_ready,
        ..
    }) = plan.actions.first()
    else {
        panic!("{:?}", plan.actions);
    };
    assert!(!was_ready);
    assert!(
        conditions
            .iter()
            .all(|c| c.reason.as_deref() == Some(health::REASON_NEVER_UPDATED))
    );
    apply(&mut nodes, &plan);
    assert_eq!(
        taint_keys(&nodes, "new", NO_EXECUTE),
        vec![taints::UNREACHABLE]
    );
}

#[test]
fn cordoned_and_pressured_nodes_get_no_schedule_taints_and_lose_them_after() {
    let (mut m, mut nodes, t0) = cluster(2, 1);
    nodes[0] = with(&nodes[0], |n| {
        n.spec = Some(NodeSpec {
            unschedulable: Some(true),
            taints: Some(vec![taints::taint("user/own", NO_SCHEDULE)]),
            ..Default::default()
        });
        n.status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()
            .push(NodeCondition {
                type_: "DiskPressure".into(),
                status: "True".into(),
                ..Default::default()
            });
    });
    step(&mut m, &mut nodes, t0 + S);
    assert_eq!(
        taint_keys(&nodes, "n0", NO_SCHEDULE),
        vec![taints::DISK_PRESSURE, taints::UNSCHEDULABLE, "user/own"]
    );
    nodes[0] = with(&nodes[0], |n| {
        n.spec.as_mut().unwrap().unschedulable = None;
        n.status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()
            .pop();
    });
    step(&mut m, &mut nodes, t0 + 2 * S);
    assert_eq!(taint_keys(&nodes, "n0", NO_SCHEDULE), vec!["user/own"]);
}

#[test]
fn a_deleted_node_is_forgotten() {
    let (mut m, nodes, t0) = cluster(3, 1);
    let plan = m.pass(&nodes[..2], t0 + S, &wall());
    assert!(plan.actions.is_empty());
    assert!(m.probes.get("n2").is_none());
}
