//! Leader election through a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it:
//! many controller-manager replicas, one leader, the rest standing by.
//!
//! - A candidate takes the Lease when it does not exist, when it holds it already, or when the
//!   holder has not renewed it for `lease_duration` **as observed locally**: expiry is measured
//!   from the moment this candidate last saw the record change, never from the holder's
//!   timestamps, so clock skew between machines cannot hand the lease over early.
//! - Every write carries the resourceVersion it read (a Conflict means someone else won).
//! - The leader renews every `retry_period`; if it cannot renew for `renew_deadline` it stops
//!   leading (its controllers are dropped) before the lease can expire for the others — the
//!   deadline must be shorter than the duration.
//! - On a clean shutdown the leader releases the lease (empty holder, 1 s duration) so a standby
//!   takes over at once.
//! - A restarted candidate under the identity that holds the lease (e.g. `capstan up` on the
//!   same machine and data dir after a crash) takes it back at once: it is "ours", whatever its
//!   age. The identity must therefore name one running replica; two sharing it would both lead.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

/// Timings; [`LeaderElection::default_timings`] has Kubernetes' 15 s / 10 s / 2 s.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Called with the holder's identity when a campaign attempt finds the lease held by another.
pub type StandbyObserver = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Clone)]
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
    leading: Option<prometheus::IntGauge>,
    on_standby: Option<StandbyObserver>,
}

impl std::fmt::Debug for LeaderElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElection")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("timings", &self.timings)
            .finish_non_exhaustive()
    }
}

/// What this candidate last saw of the lease record, and when.
#[derive(Debug)]
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    at: Instant,
}

impl LeaderElection {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: Timings,
    ) -> Self {
        LeaderElection {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timings,
            leading: None,
            on_standby: None,
        }
    }

    /// Tells `f` who holds the lease whenever a campaign attempt finds it held (unexpired) by
    /// another candidate: this one stands by.
    pub fn on_standby(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_standby = Some(std::sync::Arc::new(f));
        self
    }

    /// Reports leadership in `leader_election_master_status{name}` (1 while leading).
    pub fn with_metrics(mut self, registry: &prometheus::Registry) -> Self {
        let gauge = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "leader_election_master_status",
                "1 while this process holds the lease",
            ),
            &["name"],
        )
        .ok()
        .map(|g| {
            let _ = registry.register(Box::new(g.clone()));
            g.with_label_values(&[&self.name])
        });
        self.leading = gauge;
        self
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Runs `lead()` whenever this process holds the lease, dropping it when leadership is lost,
    /// and campaigning again; returns (releasing the lease) when `shutdown` resolves.
    pub async fn run<F, Fut>(&self, mut lead: F, shutdown: impl Future<Output = ()>)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let mut observed: Option<Observed> = None;
        loop {
            // Campaign.
            loop {
                if self.try_acquire_or_renew(&mut observed).await {
                    break;
                }
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(self.timings.retry_period) => {}
                }
            }
            tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
            if let Some(g) = &self.leading {
                g.set(1);
            }
            let work = lead();
            tokio::pin!(work);
            let outcome = tokio::select! {
                _ = &mut shutdown => Outcome::Shutdown,
                _ = &mut work => Outcome::WorkEnded,
                _ = self.keep_renewing(&mut observed) => Outcome::Lost,
            };
            if let Some(g) = &self.leading {
                g.set(0);
            }
            match outcome {
                Outcome::Shutdown | Outcome::WorkEnded => {
                    self.release().await;
                    return;
                }
                Outcome::Lost => {
                    tracing::warn!(lease = %self.name, identity = %self.identity, "lost the lease; stopped leading");
                }
            }
        }
    }

    /// Renews every retry period; returns when a renewal has not succeeded for the deadline.
    async fn keep_renewing(&self, observed: &mut Option<Observed>) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.timings.retry_period).await;
            if self.try_acquire_or_renew(observed).await {
                last_ok = Instant::now();
            } else if last_ok.elapsed() >= self.timings.renew_deadline
                || observed
                    .as_ref()
                    .is_some_and(|o| o.holder.as_deref() != Some(&self.identity))
            {
                return;
            }
        }
    }

    /// One attempt: true when this process holds the lease afterwards.
    async fn try_acquire_or_renew(&self, observed: &mut Option<Observed>) -> bool {
        let now = MicroTime(jiff::Timestamp::now());
        let duration_s = self.timings.lease_duration.as_secs().max(1) as i32;
        let current = match self.api.get_opt(&self.name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(lease = %self.name, error = %e, "reading the lease failed");
                return false;
            }
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_s),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now.clone()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    *observed = Some(Observed {
                        holder: Some(self.identity.clone()),
                        renew: Some(now),
                        at: Instant::now(),
                    });
                    true
                }
                Err(e) => {
                    tracing::debug!(lease = %self.name, error = %e, "creating the lease failed");
                    false
                }
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let changed = observed
            .as_ref()
            .is_none_or(|o| o.holder != holder || o.renew != spec.renew_time);
        if changed {
            *observed = Some(Observed {
                holder: holder.clone(),
                renew: spec.renew_time.clone(),
                at: Instant::now(),
            });
        }
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let held_for = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(0) as u64);
        let expired = observed.as_ref().is_some_and(|o| o.at.elapsed() > held_for);
        if let Some(h) = holder.as_deref()
            && !ours
            && !expired
        {
            if let Some(f) = &self.on_standby {
                f(h);
            }
            return false;
        }
        let mut next = spec.clone();
        next.holder_identity = Some(self.identity.clone());
        next.lease_duration_seconds = Some(duration_s);
        next.renew_time = Some(now.clone());
        if !ours {
            next.acquire_time = Some(now.clone());
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(next);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                *observed = Some(Observed {
                    holder: Some(self.identity.clone()),
                    renew: Some(now),
                    at: Instant::now(),
                });
                true
            }
            Err(e) => {
                tracing::debug!(lease = %self.name, error = %e, "updating the lease failed");
                false
            }
        }
    }

    /// Gives the lease up so a standby need not wait for it to expire. A renewal that was in
    /// flight when leading stopped can land between the read and the write here; the write then
    /// conflicts, and the release is tried again on the fresh Lease (a few times, bounded by the
    /// renew deadline).
    async fn release(&self) {
        let deadline = Instant::now() + self.timings.renew_deadline;
        loop {
            match self.try_release().await {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(lease = %self.name, error = %e, "releasing the lease failed; trying again");
                    tokio::time::sleep(self.timings.retry_period.min(Duration::from_millis(50)))
                        .await;
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "releasing the lease failed");
                    return;
                }
            }
        }
    }

    /// One release attempt; Ok when the Lease no longer names this process.
    async fn try_release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        tracing::info!(lease = %self.name, "released the lease");
        Ok(())
    }
}

enum Outcome {
    Shutdown,
    WorkEnded,
    Lost,
}
