//! The correlator, table-tested on explicit time: dedup with count bumps, aggregation of
//! similar events, the spam filter and its refill.

use super::*;

fn t(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn rec(pod: &str, ty: EventType, reason: &str, message: &str) -> Record {
    Record {
        object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{pod}")),
            resource_version: Some("5".into()),
            field_path: Some("spec.containers{app}".into()),
        },
        type_: ty,
        reason: reason.into(),
        message: message.into(),
    }
}

fn created(w: Option<Write>) -> Event {
    match w {
        Some(Write::Create(ev)) => ev,
        other => panic!("expected a create, got {other:?}"),
    }
}

#[test]
fn a_first_event_is_created_as_the_kubelet_writes_it() {
    let mut c = Correlator::new("n1");
    let ev = created(c.observe(
        &rec("web", EventType::Normal, reason::PULLED, "pulled"),
        t(0),
    ));
    assert!(ev.metadata.name.as_deref().unwrap().starts_with("web."));
    assert_eq!(ev.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(ev.count, Some(1));
    assert_eq!(ev.first_timestamp, Some(Time(t(0))));
    assert_eq!(ev.last_timestamp, Some(Time(t(0))));
    let src = ev.source.unwrap();
    assert_eq!(src.component.as_deref(), Some("kubelet"));
    assert_eq!(src.host.as_deref(), Some("n1"));
    assert_eq!(ev.reporting_component.as_deref(), Some("kubelet"));
    assert_eq!(ev.reporting_instance.as_deref(), Some("n1"));
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    assert_eq!(
        ev.involved_object.field_path.as_deref(),
        Some("spec.containers{app}")
    );
}

#[test]
fn identical_events_within_ten_minutes_bump_one_event() {
    let mut c = Correlator::new("n1");
    let r = rec(
        "web",
        EventType::Warning,
        reason::BACK_OFF,
        "Back-off restarting",
    );
    let first = created(c.observe(&r, t(0)));
    for (i, at) in [10, 70, 600].into_iter().enumerate() {
        match c.observe(&r, t(at)) {
            Some(Write::Patch {
                name,
                namespace,
                patch,
                event,
            }) => {
                assert_eq!(Some(name), first.metadata.name.clone());
                assert_eq!(namespace, "default");
                assert_eq!(patch["count"], i as i64 + 2);
                assert_eq!(patch["lastTimestamp"], json!(Time(t(at))));
                assert_eq!(event.first_timestamp, Some(Time(t(0))));
            }
            other => panic!("expected a patch, got {other:?}"),
        }
    }
    // Ten quiet minutes later it starts over.
    let again = created(c.observe(&r, t(600 + 601)));
    assert_ne!(again.metadata.name, first.metadata.name);
    assert_eq!(again.count, Some(1));
}

#[test]
fn events_differing_in_object_field_path_reason_or_message_are_separate() {
    let mut c = Correlator::new("n1");
    let base = rec(
        "web",
        EventType::Normal,
        reason::STARTED,
        "Started container app",
    );
    created(c.observe(&base, t(0)));
    let mut other_path = base.clone();
    other_path.object.field_path = Some("spec.containers{side}".into());
    let mut other_pod = base.clone();
    other_pod.object.name = Some("db".into());
    other_pod.object.uid = Some("uid-db".into());
    let other_reason = rec(
        "web",
        EventType::Normal,
        reason::CREATED,
        "Started container app",
    );
    let other_message = rec(
        "web",
        EventType::Normal,
        reason::STARTED,
        "Started container side",
    );
    for r in [other_path, other_pod, other_reason, other_message] {
        created(c.observe(&r, t(1)));
    }
    // A new pod resourceVersion is still the same event.
    let mut newer = base.clone();
    newer.object.resource_version = Some("9".into());
    assert!(matches!(c.observe(&newer, t(2)), Some(Write::Patch { .. })));
}

#[test]
fn similar_events_are_combined_from_the_tenth_distinct_message() {
    let mut c = Correlator::new("n1");
    for i in 0..9 {
        let ev = created(c.observe(
            &rec(
                "web",
                EventType::Warning,
                reason::UNHEALTHY,
                &format!("probe failed: {i}"),
            ),
            t(i),
        ));
        assert_eq!(ev.message, Some(format!("probe failed: {i}")));
    }
    let combined = created(c.observe(
        &rec(
            "web",
            EventType::Warning,
            reason::UNHEALTHY,
            "probe failed: 9",
        ),
        t(9),
    ));
    assert_eq!(
        combined.message.as_deref(),
        Some("(combined from similar events): probe failed: 9")
    );
    // More of them bump the combined event, carrying the latest message.
    match c.observe(
        &rec(
            "web",
            EventType::Warning,
            reason::UNHEALTHY,
            "probe failed: 10",
        ),
        t(10),
    ) {
        Some(Write::Patch { name, patch, .. }) => {
            assert_eq!(Some(name), combined.metadata.name);
            assert_eq!(patch["count"], 2);
            assert_eq!(
                patch["message"],
                "(combined from similar events): probe failed: 10"
            );
        }
        other => panic!("expected a patch, got {other:?}"),
    }
    // Another reason on the same pod is not combined.
    let other = created(c.observe(
        &rec("web", EventType::Normal, reason::PULLED, "pulled"),
        t(11),
    ));
    assert_eq!(other.message.as_deref(), Some("pulled"));
    // After a quiet interval the count of distinct messages starts over.
    let fresh = created(c.observe(
        &rec(
            "web",
            EventType::Warning,
            reason::UNHEALTHY,
            "probe failed: 11",
        ),
        t(10 + 601),
    ));
    assert_eq!(fresh.message.as_deref(), Some("probe failed: 11"));
}

#[test]
fn the_spam_filter_allows_a_burst_of_25_per_object_then_one_per_five_minutes() {
    let mut c = Correlator::new("n1");
    let r = |i: i64| rec("web", EventType::Normal, &format!("R{i}"), "m");
    for i in 0..25 {
        assert!(
            c.observe(&r(i), t(0)).is_some(),
            "event {i} within the burst"
        );
    }
    assert_eq!(c.observe(&r(25), t(0)), None, "the 26th is dropped");
    assert!(
        c.observe(&rec("db", EventType::Normal, "R", "m"), t(0))
            .is_some(),
        "another object has its own bucket"
    );
    assert_eq!(c.observe(&r(26), t(299)), None, "no token yet");
    assert!(
        c.observe(&r(27), t(300)).is_some(),
        "one token after 5 minutes"
    );
    assert_eq!(c.observe(&r(28), t(301)), None);
}

#[test]
fn event_names_never_repeat_on_a_stopped_clock() {
    let mut c = Correlator::new("n1");
    let a = created(c.observe(&rec("web", EventType::Normal, "A", "m"), t(0)));
    let b = created(c.observe(&rec("web", EventType::Normal, "B", "m"), t(0)));
    assert_ne!(a.metadata.name, b.metadata.name);
}

#[test]
fn container_paths_name_init_and_app_containers() {
    let pod: Pod = serde_json::from_value(json!({"metadata":{"name":"p"},"spec":{
        "initContainers":[{"name":"init"}],"containers":[{"name":"app"}]}}))
    .unwrap();
    assert_eq!(container_path(&pod, "init"), "spec.initContainers{init}");
    assert_eq!(container_path(&pod, "app"), "spec.containers{app}");
}
