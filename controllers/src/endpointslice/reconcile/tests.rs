//! Table tests of the reconciler: minimal writes.

use super::*;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::EndpointConditions;

const MAX: usize = 100;

fn template() -> Template {
    Template {
        namespace: "default".into(),
        generate_name: "web-".into(),
        labels: [
            ("kubernetes.io/service-name".to_string(), "web".to_string()),
            (
                "endpointslice.kubernetes.io/managed-by".to_string(),
                "endpointslice-controller.k8s.io".to_string(),
            ),
        ]
        .into(),
        annotations: None,
        owner: OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: "web".into(),
            uid: "uid-web".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
    }
}

fn ep(i: usize, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some("default".into()),
            name: Some(format!("pod-{i}")),
            uid: Some(format!("uid-{i}")),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(n: i32) -> Vec<EndpointPort> {
    vec![EndpointPort {
        name: Some("http".into()),
        port: Some(n),
        protocol: Some("TCP".into()),
        app_protocol: None,
    }]
}

fn group(ids: impl IntoIterator<Item = usize>) -> Group {
    Group {
        address_type: "IPv4".into(),
        ports: port(8080),
        endpoints: ids.into_iter().map(|i| ep(i, true)).collect(),
    }
}

/// Applies a plan the way the API server would: creates get names, updates replace.
fn apply(existing: &[Arc<EndpointSlice>], plan: Plan) -> Vec<Arc<EndpointSlice>> {
    let mut out: BTreeMap<String, EndpointSlice> = existing
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap(), (**s).clone()))
        .collect();
    for d in &plan.delete {
        out.remove(d.metadata.name.as_ref().unwrap());
    }
    for u in plan.update {
        assert!(out.contains_key(u.metadata.name.as_ref().unwrap()));
        out.insert(u.metadata.name.clone().unwrap(), u);
    }
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    for mut c in plan.create {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("web-{n:06}");
        c.metadata.name = Some(name.clone());
        out.insert(name, c);
    }
    out.into_values().map(Arc::new).collect()
}

fn sizes(slices: &[Arc<EndpointSlice>]) -> Vec<usize> {
    slices.iter().map(|s| s.endpoints.len()).collect()
}

fn counts(p: &Plan) -> (usize, usize, usize) {
    (p.create.len(), p.update.len(), p.delete.len())
}

fn converge(ids: impl IntoIterator<Item = usize> + Clone) -> Vec<Arc<EndpointSlice>> {
    let plan = reconcile(&template(), vec![group(ids)], &[], MAX, true);
    apply(&[], plan)
}

#[test]
fn two_hundred_fifty_endpoints_make_three_slices_and_then_nothing_to_do() {
    let slices = converge(0..250);
    assert_eq!(sizes(&slices), [100, 100, 50]);
    let s = &slices[0];
    assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
    assert_eq!(s.metadata.labels.as_ref(), Some(&template().labels));
    assert_eq!(
        s.metadata.owner_references.as_ref().unwrap()[0].uid,
        "uid-web"
    );
    assert_eq!(s.ports.as_deref(), Some(&port(8080)[..]));
    let again = reconcile(&template(), vec![group(0..250)], &slices, MAX, true);
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn desired_order_does_not_matter() {
    let slices = converge(0..150);
    let plan = reconcile(&template(), vec![group((0..150).rev())], &slices, MAX, true);
    assert!(plan.is_empty());
}

#[test]
fn one_pod_added_updates_only_the_slice_with_room() {
    let slices = converge(0..250);
    let plan = reconcile(&template(), vec![group(0..251)], &slices, MAX, true);
    assert_eq!(counts(&plan), (0, 1, 0));
    assert_eq!(plan.update[0].metadata.name, slices[2].metadata.name);
    assert_eq!(plan.update[0].endpoints.len(), 51);
    // The 50 it held are unchanged and in place; the new one is appended.
    assert_eq!(plan.update[0].endpoints[..50], slices[2].endpoints[..]);
}

#[test]
fn a_removal_from_a_full_slice_rewrites_that_slice_only() {
    let slices = converge(0..250);
    let gone = slices[0].endpoints[7].clone();
    let ids = (0..250).filter(|&i| ep(i, true) != gone);
    let plan = reconcile(&template(), vec![group(ids)], &slices, MAX, true);
    assert_eq!(counts(&plan), (0, 1, 0));
    assert_eq!(plan.update[0].metadata.name, slices[0].metadata.name);
    assert_eq!(plan.update[0].endpoints.len(), 99);
}

#[test]
fn a_condition_change_is_rewritten_in_place() {
    let slices = converge(0..250);
    let target = slices[1].endpoints[3].clone();
    let mut g = group(0..250);
    for e in &mut g.endpoints {
        if *e == target {
            e.conditions.as_mut().unwrap().ready = Some(false);
        }
    }
    let plan = reconcile(&template(), vec![g], &slices, MAX, true);
    assert_eq!(counts(&plan), (0, 1, 0));
    let u = &plan.update[0];
    assert_eq!(u.metadata.name, slices[1].metadata.name);
    assert_eq!(u.endpoints[3].addresses, target.addresses);
    assert_eq!(
        u.endpoints[3].conditions.as_ref().unwrap().ready,
        Some(false)
    );
}

#[test]
fn new_endpoints_fill_a_slice_being_updated_before_new_slices() {
    let slices = converge(0..250);
    // One endpoint leaves slice 0 (so it is updated anyway) and two arrive: both go into it.
    let gone = slices[0].endpoints[0].clone();
    let ids = (0..252).filter(|&i| ep(i, true) != gone);
    let plan = reconcile(&template(), vec![group(ids)], &slices, MAX, true);
    assert_eq!(
        counts(&plan),
        (0, 2, 0),
        "slice 0 takes one, slice 2 the other"
    );
    let after = apply(&slices, plan);
    assert_eq!(sizes(&after), [100, 100, 51]);
}

#[test]
fn more_than_fits_anywhere_makes_a_new_slice_without_touching_the_others() {
    let slices = converge(0..250);
    let plan = reconcile(&template(), vec![group(0..310)], &slices, MAX, true);
    assert_eq!(counts(&plan), (1, 0, 0));
    assert_eq!(plan.create[0].endpoints.len(), 60);
}

#[test]
fn an_emptied_slice_is_deleted_and_others_stay() {
    let slices = converge(0..250);
    let keep: Vec<usize> = (0..250)
        .filter(|&i| !slices[2].endpoints.contains(&ep(i, true)))
        .collect();
    let plan = reconcile(&template(), vec![group(keep)], &slices, MAX, true);
    assert_eq!(counts(&plan), (0, 0, 1));
    assert_eq!(plan.delete[0].metadata.name, slices[2].metadata.name);
}

#[test]
fn a_port_change_replaces_slices_by_updating_them() {
    let slices = converge(0..150);
    let mut g = group(0..150);
    g.ports = port(9090);
    let plan = reconcile(&template(), vec![g], &slices, MAX, true);
    // Two slices to create and two to delete become two updates.
    assert_eq!(counts(&plan), (0, 2, 0));
    assert!(
        plan.update
            .iter()
            .all(|s| s.ports.as_deref() == Some(&port(9090)[..]))
    );
}

#[test]
fn different_port_sets_get_different_slices() {
    let mut other = group(10..15);
    other.ports = port(9090);
    let plan = reconcile(&template(), vec![group(0..10), other], &[], MAX, true);
    assert_eq!(counts(&plan), (2, 0, 0));
}

#[test]
fn no_endpoints_keeps_one_placeholder_slice() {
    let plan = reconcile(&template(), vec![], &[], MAX, true);
    assert_eq!(counts(&plan), (1, 0, 0));
    assert!(plan.create[0].endpoints.is_empty());
    let slices = apply(&[], plan);
    assert!(reconcile(&template(), vec![], &slices, MAX, true).is_empty());
    // Endpoints arrive: the placeholder is reused.
    let plan = reconcile(&template(), vec![group(0..3)], &slices, MAX, true);
    assert_eq!(counts(&plan), (0, 1, 0));
    // Without placeholders (mirroring), an owner without endpoints has no slices.
    let slices = converge(0..3);
    let plan = reconcile(&template(), vec![], &slices, MAX, false);
    assert_eq!(counts(&plan), (0, 0, 1));
}

#[test]
fn slices_of_an_older_owner_are_deleted_not_reused() {
    let slices = converge(0..3);
    let mut t = template();
    t.owner.uid = "uid-web-2".into();
    let plan = reconcile(&t, vec![group(0..3)], &slices, MAX, true);
    assert_eq!(counts(&plan), (1, 0, 1));
}

#[test]
fn label_changes_update_every_slice_once() {
    let slices = converge(0..150);
    let mut t = template();
    t.labels.insert("team".into(), "a".into());
    let plan = reconcile(&t, vec![group(0..150)], &slices, MAX, true);
    assert_eq!(counts(&plan), (0, 2, 0));
    let after = apply(&slices, plan);
    assert!(reconcile(&t, vec![group(0..150)], &after, MAX, true).is_empty());
}

#[test]
fn duplicates_in_a_slice_are_dropped() {
    let slices = converge(0..2);
    let mut dup = (*slices[0]).clone();
    dup.endpoints.push(dup.endpoints[0].clone());
    let plan = reconcile(&template(), vec![group(0..2)], &[Arc::new(dup)], MAX, true);
    assert_eq!(counts(&plan), (0, 1, 0));
    assert_eq!(plan.update[0].endpoints.len(), 2);
}

#[test]
fn churn_over_many_rounds_never_exceeds_max_and_converges() {
    let mut slices = converge(0..250);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut ids: Vec<usize> = (0..250).collect();
    let mut next = 250;
    for _ in 0..50 {
        for _ in 0..rng.usize(0..20) {
            if !ids.is_empty() {
                ids.swap_remove(rng.usize(0..ids.len()));
            }
        }
        for _ in 0..rng.usize(0..20) {
            ids.push(next);
            next += 1;
        }
        let plan = reconcile(&template(), vec![group(ids.clone())], &slices, MAX, true);
        slices = apply(&slices, plan);
        assert!(slices.iter().all(|s| s.endpoints.len() <= MAX));
        let total: usize = sizes(&slices).iter().sum();
        assert_eq!(total, ids.len());
        assert!(reconcile(&template(), vec![group(ids.clone())], &slices, MAX, true).is_empty());
    }
}
