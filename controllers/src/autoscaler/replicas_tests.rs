//! The replica calculator against the shapes of Kubernetes' replica_calculator_test.go: scale
//! up and down, tolerance, unready and missing pods, the CPU readiness rules, average values.

use super::*;

const T0: &str = "2026-12-04T12:00:00Z";

fn now() -> Timestamp {
    T0.parse().unwrap()
}

fn ago(secs: i64) -> Timestamp {
    now() - jiff::SignedDuration::from_secs(secs)
}

/// A Running pod started 10 minutes ago, Ready since 9 minutes ago, requesting `request`.
fn pod(name: &str, request: i64) -> PodInfo {
    PodInfo {
        name: name.into(),
        phase: Phase::Running,
        deleting: false,
        ready: Some((true, ago(540))),
        start_time: Some(ago(600)),
        request: Ok(request),
    }
}

fn pods(n: usize) -> Vec<PodInfo> {
    (0..n).map(|i| pod(&format!("p{i}"), 1000)).collect()
}

fn samples(values: &[(usize, i64)]) -> BTreeMap<String, Sample> {
    values
        .iter()
        .map(|(i, v)| {
            (
                format!("p{i}"),
                Sample {
                    value: *v,
                    timestamp: ago(5),
                    window: Duration::from_secs(10),
                },
            )
        })
        .collect()
}

fn levels(values: &[i64]) -> BTreeMap<String, Sample> {
    samples(&values.iter().copied().enumerate().collect::<Vec<_>>())
}

fn cpu(current: i32, pct: i32, pods: &[PodInfo], s: &BTreeMap<String, Sample>) -> Proposal {
    replicas(
        current,
        Target::Utilization(pct),
        true,
        pods,
        s,
        &Settings::default(),
        now(),
    )
    .unwrap()
}

#[test]
fn scale_up() {
    let p = cpu(3, 30, &pods(3), &levels(&[300, 500, 700]));
    assert_eq!((p.replicas, p.utilization, p.average), (5, Some(50), 500));
}

#[test]
fn scale_up_with_an_unready_pod_counts_it_as_idle() {
    let mut ps = pods(3);
    // Never Ready: its readiness last changed 10 s after it started.
    ps[0].ready = Some((false, ago(590)));
    let p = cpu(3, 30, &ps, &levels(&[300, 500, 700]));
    // 60% over the two ready pods; with the unready one at 0, 40% → ceil(1.33 × 3).
    assert_eq!((p.replicas, p.utilization, p.average), (4, Some(60), 600));
}

#[test]
fn scale_down() {
    let p = cpu(5, 50, &pods(5), &levels(&[100, 300, 500, 250, 250]));
    assert_eq!((p.replicas, p.utilization, p.average), (3, Some(28), 280));
}

#[test]
fn within_tolerance_nothing_changes() {
    let mut ps = pods(3);
    ps[0].request = Ok(900);
    ps[2].request = Ok(1100);
    let p = cpu(3, 100, &ps, &levels(&[1010, 1030, 1020]));
    assert_eq!((p.replicas, p.utilization), (3, Some(102)));
}

#[test]
fn a_missing_pod_at_exactly_the_target_changes_nothing() {
    let p = cpu(2, 100, &pods(2), &samples(&[(0, 1000)]));
    assert_eq!((p.replicas, p.utilization), (2, Some(100)));
}

#[test]
fn missing_pods_count_as_idle_on_the_way_up() {
    // 150% on the one pod with a sample; the other at 0 → 75% → ceil(1.5 × 2).
    let p = cpu(2, 50, &pods(2), &samples(&[(0, 1500)]));
    assert_eq!((p.replicas, p.utilization), (3, Some(150)));
}

#[test]
fn missing_pods_count_as_fully_used_on_the_way_down() {
    // 10% on three pods; the fourth at its whole request → 32% → ceil(0.64 × 4).
    let p = cpu(4, 50, &pods(4), &samples(&[(0, 100), (1, 100), (2, 100)]));
    assert_eq!((p.replicas, p.utilization), (3, Some(10)));
}

#[test]
fn missing_pods_that_flip_the_direction_keep_the_count() {
    // 40% → down; with the missing pod at 100%: 70% → up: no change.
    let p = cpu(2, 50, &pods(2), &samples(&[(0, 400)]));
    assert_eq!(p.replicas, 2);
}

#[test]
fn deleting_and_failed_pods_are_ignored() {
    let mut ps = pods(4);
    ps[2].deleting = true;
    ps[3].phase = Phase::Failed;
    let p = cpu(4, 50, &ps, &levels(&[1000, 1000, 9000, 9000]));
    assert_eq!((p.replicas, p.utilization), (4, Some(100)));
}

#[test]
fn pending_pods_hold_a_scale_up_back() {
    let mut ps = pods(3);
    ps[2].phase = Phase::Pending;
    let p = cpu(3, 50, &ps, &samples(&[(0, 1000), (1, 1000)]));
    // 200% over the two; the pending one at 0 → 66% → ceil(1.32 × 3).
    assert_eq!(p.replicas, 4);
}

#[test]
fn cpu_samples_within_a_window_of_a_readiness_change_are_not_trusted_while_initializing() {
    let mut ps = pods(2);
    // Started a minute ago, Ready for only 5 s: its 10 s sample straddles the change.
    ps[1].start_time = Some(ago(60));
    ps[1].ready = Some((true, ago(5)));
    let p = cpu(2, 50, &ps, &levels(&[500, 5000]));
    assert_eq!(p.utilization, Some(50), "only p0's sample counts");
    assert_eq!(p.replicas, 2);
    // The same pod Ready for a minute of its first five is trusted.
    ps[1].ready = Some((true, ago(30)));
    ps[1].start_time = Some(ago(90));
    assert_eq!(
        cpu(2, 50, &ps, &levels(&[500, 5000])).utilization,
        Some(275)
    );
}

#[test]
fn after_initialization_only_pods_never_ready_are_unready() {
    let mut ps = pods(2);
    // Not Ready, its readiness last changed 10 s after start: it never was Ready.
    ps[1].ready = Some((false, ago(590)));
    assert_eq!(cpu(2, 50, &ps, &levels(&[500, 5000])).utilization, Some(50));
    // Not Ready since a minute after start: it was Ready once, its sample counts.
    ps[1].ready = Some((false, ago(540)));
    assert_eq!(
        cpu(2, 50, &ps, &levels(&[500, 5000])).utilization,
        Some(275)
    );
    // No Ready condition or no start time: unready.
    ps[1].ready = None;
    assert_eq!(cpu(2, 50, &ps, &levels(&[500, 5000])).utilization, Some(50));
}

#[test]
fn readiness_does_not_matter_for_memory() {
    let mut ps = pods(2);
    ps[1].ready = None;
    let p = replicas(
        2,
        Target::Utilization(50),
        false,
        &ps,
        &levels(&[1000, 1000]),
        &Settings::default(),
        now(),
    )
    .unwrap();
    assert_eq!((p.replicas, p.utilization), (4, Some(100)));
}

#[test]
fn average_values_scale_by_the_value_per_pod() {
    let avg = |current, ps: &[PodInfo], s: &BTreeMap<String, Sample>| {
        replicas(
            current,
            Target::AverageValue(1000),
            false,
            ps,
            s,
            &Settings::default(),
            now(),
        )
        .unwrap()
    };
    let p = avg(3, &pods(3), &levels(&[1000, 2000, 3000]));
    assert_eq!((p.replicas, p.utilization, p.average), (6, None, 2000));
    // A pod without a sample counts as 0 on the way up: (3000 + 3000 + 0) / 3 → 2 × 3.
    let p = avg(3, &pods(3), &samples(&[(0, 3000), (1, 3000)]));
    assert_eq!((p.replicas, p.average), (6, 3000));
    // ... and as the target on the way down: (100 + 1000) / 2 → ceil(0.55 × 2).
    let p = avg(2, &pods(2), &samples(&[(0, 100)]));
    assert_eq!(p.replicas, 2, "0.55 × 2 rounds up to the current count");
    let p = avg(4, &pods(4), &samples(&[(0, 100), (1, 100), (2, 100)]));
    // (300 + 1000) / 4 = 325 → ceil(0.325 × 4) = 2.
    assert_eq!(p.replicas, 2);
}

#[test]
fn errors_say_what_is_wrong() {
    let s = Settings::default();
    let err = |ps: &[PodInfo], samples: &BTreeMap<String, Sample>| {
        replicas(2, Target::Utilization(50), true, ps, samples, &s, now()).unwrap_err()
    };
    assert!(err(&[], &levels(&[1])).contains("no pods returned by selector"));
    let mut unready = pods(2);
    unready.iter_mut().for_each(|p| p.phase = Phase::Pending);
    assert!(err(&unready, &levels(&[1, 1])).contains("did not receive metrics"));
    let mut no_request = pods(2);
    no_request[1].request = Err("missing request for cpu in container app of Pod p1".into());
    assert_eq!(
        err(&no_request, &levels(&[1, 1])),
        "missing request for cpu in container app of Pod p1"
    );
}
