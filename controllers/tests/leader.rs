//! Leader election through a Lease against a real in-process API server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use capstan_controllers::runtime::leader::{LeaderElection, Timings};
use capstan_testkit::{TestCluster, until};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

fn timings() -> Timings {
    Timings {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1300),
        retry_period: Duration::from_millis(200),
    }
}

/// Runs a candidate that counts itself as leading while its work runs.
fn candidate(
    client: kube::Client,
    id: &str,
    leading: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let e = LeaderElection::new(client, "kube-system", "test-lease", id, timings());
    let task = tokio::spawn(async move {
        e.run(
            || {
                let (leading, max) = (leading.clone(), max.clone());
                async move {
                    let n = leading.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    struct Done(Arc<AtomicUsize>);
                    impl Drop for Done {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _done = Done(leading);
                    std::future::pending::<()>().await
                }
            },
            async {
                let _ = rx.await;
            },
        )
        .await
    });
    (task, tx)
}

async fn holder(api: &Api<Lease>) -> Option<String> {
    api.get("test-lease")
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_candidate_leads_and_another_takes_over_on_release_or_crash() {
    let c = TestCluster::start().await;
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-system");
    let (leading, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, stop_a) = candidate(c.client.clone(), "a", leading.clone(), max.clone());
    until(Duration::from_secs(5), "a leads", || async {
        holder(&leases).await.as_deref() == Some("a")
    })
    .await;
    let (b, _stop_b) = candidate(c.client.clone(), "b", leading.clone(), max.clone());
    let (c2, _stop_c) = candidate(c.client.clone(), "c", leading.clone(), max.clone());
    // Standbys stay standing by while a renews (a few lease durations).
    for _ in 0..3 {
        tokio::time::sleep(timings().lease_duration).await;
        assert_eq!(holder(&leases).await.as_deref(), Some("a"));
    }
    // A clean stop releases the lease: a standby takes over well within a lease duration.
    stop_a.send(()).unwrap();
    a.await.unwrap();
    // Released, not left to expire: the moment a has stopped, the Lease no longer names it
    // (checked on the Lease itself, not by how fast a standby notices: on a loaded machine
    // that can take longer than a lease duration either way).
    assert_ne!(
        holder(&leases).await.as_deref(),
        Some("a"),
        "a stopped without releasing"
    );
    until(Duration::from_secs(10), "a standby leads", || async {
        matches!(holder(&leases).await.as_deref(), Some("b") | Some("c"))
    })
    .await;
    let next = holder(&leases).await.unwrap();
    // A crash (no release): the other takes over after the lease expires.
    let (crashed, survivor) = if next == "b" { (b, "c") } else { (c2, "b") };
    crashed.abort();
    until(Duration::from_secs(6), "the survivor leads", || async {
        holder(&leases).await.as_deref() == Some(survivor)
    })
    .await;
    assert_eq!(max.load(Ordering::SeqCst), 1, "never two leaders at once");
    let lease = leases.get("test-lease").await.unwrap().spec.unwrap();
    assert!(lease.lease_transitions.unwrap() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_releases_the_lease_and_a_restart_under_the_same_identity_takes_it_at_once() {
    let c = TestCluster::start().await;
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-system");
    let (leading, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));

    // A clean stop leaves the Lease released, as client-go's ReleaseOnCancel does: no holder,
    // a 1 s duration.
    let (a, stop_a) = candidate(c.client.clone(), "a", leading.clone(), max.clone());
    until(Duration::from_secs(5), "a leads", || async {
        holder(&leases).await.as_deref() == Some("a")
    })
    .await;
    stop_a.send(()).unwrap();
    a.await.unwrap();
    let spec = leases.get("test-lease").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.filter(|h| !h.is_empty()), None);
    assert_eq!(spec.lease_duration_seconds, Some(1));

    // A crash (no release) and a restart under the same identity: the Lease is still held by
    // "a", unexpired, and the new "a" takes it at once instead of waiting out the duration.
    let (a, _stop_a) = candidate(c.client.clone(), "a", leading.clone(), max.clone());
    until(Duration::from_secs(5), "a leads again", || async {
        holder(&leases).await.as_deref() == Some("a") && leading.load(Ordering::SeqCst) == 1
    })
    .await;
    a.abort();
    let _ = a.await;
    let renewed = leases.get("test-lease").await.unwrap().spec.unwrap();
    assert_eq!(renewed.holder_identity.as_deref(), Some("a"));
    let (a2, _stop_a2) = candidate(c.client.clone(), "a", leading.clone(), max.clone());
    let took = until(Duration::from_secs(5), "the restarted a leads", || async {
        leading.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        took < Duration::from_millis(500),
        "a restart under its own identity waited {took:?} (the lease lasts {:?})",
        timings().lease_duration
    );
    // A stranger, by contrast, waits for the lease to expire.
    let (b, _stop_b) = candidate(c.client.clone(), "b", leading.clone(), max.clone());
    tokio::time::sleep(timings().lease_duration * 2).await;
    assert_eq!(holder(&leases).await.as_deref(), Some("a"));
    assert_eq!(max.load(Ordering::SeqCst), 1, "never two leaders at once");
    a2.abort();
    b.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_told_who_leads() {
    let c = TestCluster::start().await;
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-system");
    let (leading, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, _stop_a) = candidate(c.client.clone(), "a", leading.clone(), max.clone());
    until(Duration::from_secs(5), "a leads", || async {
        holder(&leases).await.as_deref() == Some("a")
    })
    .await;
    let seen = Arc::new(std::sync::Mutex::new(None::<String>));
    let (stop_b, rx) = tokio::sync::oneshot::channel::<()>();
    let b = LeaderElection::new(
        c.client.clone(),
        "kube-system",
        "test-lease",
        "b",
        timings(),
    )
    .on_standby({
        let seen = seen.clone();
        move |h| *seen.lock().unwrap() = Some(h.to_string())
    });
    let b = tokio::spawn(async move {
        b.run(std::future::pending::<()>, async {
            let _ = rx.await;
        })
        .await
    });
    until(Duration::from_secs(2), "b hears that a leads", || async {
        seen.lock().unwrap().as_deref() == Some("a")
    })
    .await;
    let _ = stop_b.send(());
    b.await.unwrap();
    a.abort();
}
