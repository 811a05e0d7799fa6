//! Stabilization and rate limits as horizontal_test.go exercises them.

use super::*;

fn t(secs: i64) -> Timestamp {
    "2026-12-04T12:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_secs(secs)
}

const WINDOW: Duration = Duration::from_secs(300);

fn defaults() -> Behavior {
    Behavior::from_api(&HorizontalPodAutoscalerBehavior::default(), WINDOW)
}

#[test]
fn unset_rules_are_kubernetes_defaults_and_the_window_comes_from_the_flag() {
    let b = defaults();
    assert_eq!(b.up, default_up());
    assert_eq!(b.down.stabilization, WINDOW);
    let given = HorizontalPodAutoscalerBehavior {
        scale_down: Some(HPAScalingRules {
            select_policy: Some("Disabled".into()),
            stabilization_window_seconds: Some(30),
            policies: Some(vec![k8s_openapi::api::autoscaling::v2::HPAScalingPolicy {
                type_: "Pods".into(),
                value: 2,
                period_seconds: 60,
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let b = Behavior::from_api(&given, WINDOW);
    assert_eq!(b.down.select, Select::Disabled);
    assert_eq!(b.down.stabilization, Duration::from_secs(30));
    assert_eq!(
        b.down.policies,
        [Policy::Pods {
            value: 2,
            period: Duration::from_secs(60)
        }]
    );
}

#[test]
fn scale_up_is_limited_to_four_pods_or_double_per_15_seconds() {
    let b = defaults();
    let mut h = History::default();
    h.record_initial(1, t(0));
    let n = h.normalize(Some(&b), WINDOW, 1, 10, 1, 20, t(0));
    assert_eq!(n.replicas, 5);
    assert_eq!(n.limited.reason, "ScaleUpLimit");
    assert!(n.limited.status);
    assert_eq!(n.able.reason, "ReadyForNewScale");
    h.record_scale(Some(&b), 1, 5, t(0));
    // Within the period the limit counts from the count it started with (1): no further.
    let n = h.normalize(Some(&b), WINDOW, 5, 20, 1, 20, t(5));
    assert_eq!(n.replicas, 5);
    // After it: max(5 + 4, 2 × 5).
    let n = h.normalize(Some(&b), WINDOW, 5, 20, 1, 20, t(16));
    assert_eq!(n.replicas, 10);
    assert_eq!(n.limited.reason, "ScaleUpLimit");
    // The maximum binds before the rate does.
    let n = h.normalize(Some(&b), WINDOW, 5, 20, 1, 7, t(40));
    assert_eq!((n.replicas, n.limited.reason), (7, "TooManyReplicas"));
}

#[test]
fn scale_down_waits_for_the_stabilization_window() {
    let b = defaults();
    let mut h = History::default();
    h.record_initial(10, t(0));
    let n = h.normalize(Some(&b), WINDOW, 10, 2, 1, 20, t(60));
    assert_eq!(n.replicas, 10);
    assert_eq!(n.able.reason, "ScaleDownStabilized");
    // Once the first recommendation (10) is older than the window, 2 holds.
    let n = h.normalize(Some(&b), WINDOW, 10, 2, 1, 20, t(301));
    assert_eq!(n.replicas, 2);
    assert_eq!(n.able.reason, "ReadyForNewScale");
    assert_eq!(n.limited.reason, "DesiredWithinRange");
    assert!(!n.limited.status);
}

#[test]
fn scale_up_stabilization_applies_the_lowest_recent_recommendation() {
    let mut b = defaults();
    b.up.stabilization = Duration::from_secs(60);
    let mut h = History::default();
    h.record_initial(3, t(0));
    let n = h.normalize(Some(&b), WINDOW, 3, 6, 1, 20, t(10));
    assert_eq!((n.replicas, n.able.reason), (3, "ScaleUpStabilized"));
    let n = h.normalize(Some(&b), WINDOW, 3, 6, 1, 20, t(61));
    assert_eq!(n.replicas, 6);
}

#[test]
fn scale_down_policies_pick_the_largest_change_unless_told_otherwise() {
    let period = Duration::from_secs(60);
    let mut b = defaults();
    b.down = Rules {
        stabilization: Duration::ZERO,
        select: Select::Max,
        policies: vec![
            Policy::Pods { value: 3, period },
            Policy::Percent { value: 50, period },
        ],
    };
    let mut h = History::default();
    h.record_initial(10, t(0));
    let n = h.normalize(Some(&b), WINDOW, 10, 1, 1, 20, t(1));
    assert_eq!((n.replicas, n.limited.reason), (5, "ScaleDownLimit"));
    b.down.select = Select::Min;
    let n = h.normalize(Some(&b), WINDOW, 10, 1, 1, 20, t(2));
    assert_eq!(n.replicas, 7);
    // Percent down truncates: 5 × 0.5 = 2.5 → 2.
    b.down.select = Select::Max;
    b.down.policies = vec![Policy::Percent { value: 50, period }];
    let n = h.normalize(Some(&b), WINDOW, 5, 1, 1, 20, t(3));
    assert_eq!(n.replicas, 2);
    // Disabled: no scale-down at all.
    b.down.select = Select::Disabled;
    let n = h.normalize(Some(&b), WINDOW, 5, 1, 1, 20, t(4));
    assert_eq!((n.replicas, n.limited.reason), (5, "ScaleDownLimit"));
    // The minimum binds before the rate does.
    b.down.select = Select::Max;
    let n = h.normalize(Some(&b), WINDOW, 5, 1, 4, 20, t(5));
    assert_eq!((n.replicas, n.limited.reason), (4, "TooFewReplicas"));
}

#[test]
fn scale_events_within_the_period_hold_back_the_next_step_down() {
    let period = Duration::from_secs(60);
    let mut b = defaults();
    b.down = Rules {
        stabilization: Duration::ZERO,
        select: Select::Max,
        policies: vec![Policy::Pods { value: 2, period }],
    };
    let mut h = History::default();
    h.record_initial(10, t(0));
    assert_eq!(
        h.normalize(Some(&b), WINDOW, 10, 1, 1, 20, t(0)).replicas,
        8
    );
    h.record_scale(Some(&b), 10, 8, t(0));
    // The period started at 10: 2 pods are already spent.
    assert_eq!(
        h.normalize(Some(&b), WINDOW, 8, 1, 1, 20, t(30)).replicas,
        8
    );
    assert_eq!(
        h.normalize(Some(&b), WINDOW, 8, 1, 1, 20, t(61)).replicas,
        6
    );
    h.record_scale(Some(&b), 8, 6, t(61));
    assert_eq!(h.down.len(), 1, "the outdated event's slot is reused");
    h.record_scale(Some(&b), 6, 5, t(70));
    assert_eq!(h.down.len(), 2);
    assert_eq!(changed_within(&h.down, period, t(71)), 3);
    h.record_scale(Some(&b), 5, 4, t(200));
    assert_eq!(h.down.len(), 2);
}

#[test]
fn without_behavior_scale_up_doubles_and_scale_down_is_stabilized() {
    let mut h = History::default();
    h.record_initial(3, t(0));
    let n = h.normalize(None, WINDOW, 3, 20, 1, 100, t(0));
    assert_eq!((n.replicas, n.limited.reason), (6, "ScaleUpLimit"));
    let n = h.normalize(None, WINDOW, 1, 20, 1, 100, t(1));
    assert_eq!(n.replicas, 4, "at least 4");
    let mut h = History::default();
    h.record_initial(6, t(0));
    let n = h.normalize(None, WINDOW, 6, 2, 1, 100, t(10));
    assert_eq!((n.replicas, n.able.reason), (6, "ScaleDownStabilized"));
    let n = h.normalize(None, WINDOW, 6, 2, 1, 100, t(301));
    assert_eq!((n.replicas, n.able.reason), (2, "ReadyForNewScale"));
    let n = h.normalize(None, WINDOW, 2, 0, 1, 100, t(302));
    assert_eq!(
        (n.replicas, n.limited.reason),
        (2, "DesiredWithinRange"),
        "2 recommended within the window"
    );
    let n = h.normalize(None, Duration::ZERO, 2, 0, 1, 100, t(303));
    assert_eq!((n.replicas, n.limited.reason), (1, "TooFewReplicas"));
}
