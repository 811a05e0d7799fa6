//! Syncing the kernel to the desired state, as kube-proxy's nftables mode does:
//! - [`Syncer`] keeps the last programmed [`State`] in memory. The first sync, and the first
//!   after a failure, is a full one (it lists the table's chain and set *names* to delete stale
//!   ones — the only read, never per partial sync); every other sync is partial and sends only
//!   the changed services' chains and map elements. A failed `nft -f` changes nothing (the
//!   transaction is atomic), so the kernel still holds the last synced state and the next
//!   (full) sync starts from a known place.
//! - [`BoundedFrequency`] is kube-proxy's BoundedFrequencyRunner, pure: changes coalesce and
//!   syncs are at least `min_interval` apart; failures retry with a capped backoff; a periodic
//!   full resync (default one hour, like kube-proxy's forced full sync) repairs anything done
//!   to the table behind the proxy's back. A 30 s periodic sync would buy nothing more here:
//!   the state is event driven and a partial sync of an unchanged state is empty.

use std::time::{Duration, SystemTime};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use tokio::time::Instant;

use super::model::State;
use super::nft::{Nft, NftError};
use super::plan;

/// The proxy's metrics (named like kube-proxy's `kubeproxy_sync_proxy_rules_*`).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub sync_duration: HistogramVec,
    pub sync_failures: IntCounterVec,
    pub chains: IntGauge,
    pub rules: IntGauge,
    pub service_ports: IntGauge,
    pub last_sync: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let buckets = prometheus::exponential_buckets(0.001, 2.0, 16).unwrap_or_default();
        Metrics {
            sync_duration: HistogramVec::new(
                HistogramOpts::new(
                    "capstan_proxy_sync_proxy_rules_duration_seconds",
                    "Time to plan and apply one nftables sync, by kind (full, partial).",
                )
                .buckets(buckets),
                &["kind"],
            )
            .expect("valid metric"),
            sync_failures: IntCounterVec::new(
                Opts::new(
                    "capstan_proxy_sync_proxy_rules_failures_total",
                    "nftables syncs that failed, by kind (full, partial).",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            chains: IntGauge::new(
                "capstan_proxy_nftables_chains",
                "Chains in the proxy's nftables table after the last sync.",
            )
            .expect("valid metric"),
            rules: IntGauge::new(
                "capstan_proxy_nftables_rules",
                "Rules in the proxy's nftables table after the last sync.",
            )
            .expect("valid metric"),
            service_ports: IntGauge::new(
                "capstan_proxy_service_ports",
                "Service ports programmed by the last sync.",
            )
            .expect("valid metric"),
            last_sync: IntGauge::new(
                "capstan_proxy_sync_proxy_rules_last_timestamp_seconds",
                "Unix time of the last successful sync.",
            )
            .expect("valid metric"),
        }
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.sync_duration.clone()))?;
        registry.register(Box::new(self.sync_failures.clone()))?;
        registry.register(Box::new(self.chains.clone()))?;
        registry.register(Box::new(self.rules.clone()))?;
        registry.register(Box::new(self.service_ports.clone()))?;
        registry.register(Box::new(self.last_sync.clone()))?;
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    Full,
    Partial,
    /// Nothing changed: nothing was sent.
    Unchanged,
}

impl SyncKind {
    fn label(self) -> &'static str {
        match self {
            SyncKind::Full => "full",
            SyncKind::Partial | SyncKind::Unchanged => "partial",
        }
    }
}

/// Programs states into the kernel, remembering the last one programmed.
#[derive(Debug)]
pub struct Syncer {
    nft: Nft,
    metrics: Metrics,
    last: Option<State>,
    needs_full: bool,
    chains: i64,
    rules: i64,
}

impl Syncer {
    pub fn new(nft: Nft, metrics: Metrics) -> Syncer {
        Syncer {
            nft,
            metrics,
            last: None,
            needs_full: true,
            chains: 0,
            rules: 0,
        }
    }

    /// The next sync will be a full one.
    pub fn force_full(&mut self) {
        self.needs_full = true;
    }

    /// The state the kernel holds, as far as this syncer knows.
    pub fn last(&self) -> Option<&State> {
        self.last.as_ref()
    }

    /// Programs `state`: fully when forced, first, or after a failure; else only what changed.
    pub async fn sync(&mut self, state: State) -> Result<SyncKind, NftError> {
        let started = std::time::Instant::now();
        let kind = match (&self.last, self.needs_full) {
            (Some(_), false) => SyncKind::Partial,
            _ => SyncKind::Full,
        };
        let result = self.sync_inner(kind, &state).await;
        let elapsed = started.elapsed();
        match result {
            Ok(synced) => {
                self.metrics
                    .sync_duration
                    .with_label_values(&[synced.label()])
                    .observe(elapsed.as_secs_f64());
                self.metrics.chains.set(self.chains);
                self.metrics.rules.set(self.rules);
                self.metrics.service_ports.set(state.services.len() as i64);
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                self.metrics.last_sync.set(now.as_secs() as i64);
                tracing::debug!(
                    kind = synced.label(),
                    ?elapsed,
                    services = state.services.len(),
                    "proxy rules synced"
                );
                self.last = Some(state);
                self.needs_full = false;
                Ok(synced)
            }
            Err(e) => {
                self.metrics
                    .sync_failures
                    .with_label_values(&[kind.label()])
                    .inc();
                tracing::warn!(kind = kind.label(), error = %e, "proxy rules sync failed; the next sync is a full one");
                self.needs_full = true;
                Err(e)
            }
        }
    }

    async fn sync_inner(&mut self, kind: SyncKind, state: &State) -> Result<SyncKind, NftError> {
        match (kind, &self.last) {
            (SyncKind::Partial, Some(last)) => {
                let (text, delta) = plan::partial_counted(last, state);
                if text.is_empty() {
                    return Ok(SyncKind::Unchanged);
                }
                self.nft.apply(&text).await?;
                self.chains += delta.chains;
                self.rules += delta.rules;
                Ok(SyncKind::Partial)
            }
            _ => {
                let existing = self.nft.existing(&state.config.table).await?;
                let (text, counts) = plan::full_adopting(state, &existing);
                self.nft.apply(&text).await?;
                self.chains = counts.chains;
                self.rules = counts.rules;
                Ok(SyncKind::Full)
            }
        }
    }
}

/// When to sync next (kube-proxy's BoundedFrequencyRunner, without the timer): pure, driven by
/// [`BoundedFrequency::changed`], [`BoundedFrequency::next`] and [`BoundedFrequency::ran`].
#[derive(Debug, Clone)]
pub struct BoundedFrequency {
    min_interval: Duration,
    full_interval: Duration,
    last_run: Option<Instant>,
    last_full: Option<Instant>,
    pending: bool,
    failures: u32,
}

/// What the next run must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub at: Instant,
    pub full: bool,
}

impl BoundedFrequency {
    /// Retries after a failure wait min_interval doubled per failure, at most this long.
    pub const MAX_RETRY: Duration = Duration::from_secs(30);

    pub fn new(min_interval: Duration, full_interval: Duration) -> BoundedFrequency {
        BoundedFrequency {
            min_interval,
            full_interval,
            last_run: None,
            last_full: None,
            pending: true,
            failures: 0,
        }
    }

    /// Something changed: sync soon.
    pub fn changed(&mut self) {
        self.pending = true;
    }

    /// When the next sync is due and whether it must be a full one.
    pub fn next(&self) -> Due {
        let full_at = self.last_full.map(|t| t + self.full_interval);
        let Some(last) = self.last_run else {
            return Due {
                at: Instant::now(),
                full: true,
            };
        };
        let gap = if self.failures > 0 {
            let factor = 1u32 << self.failures.min(16);
            (self.min_interval.max(Duration::from_millis(100)) * factor).min(Self::MAX_RETRY)
        } else {
            self.min_interval
        };
        let soonest = last + gap;
        match (self.pending || self.failures > 0, full_at) {
            (true, Some(f)) if f <= soonest => Due {
                at: soonest,
                full: true,
            },
            (true, _) => Due {
                at: soonest,
                full: false,
            },
            (false, Some(f)) => Due {
                at: f.max(soonest),
                full: true,
            },
            (false, None) => Due {
                at: soonest + self.full_interval,
                full: true,
            },
        }
    }

    /// A sync started at `at` finished.
    pub fn ran(&mut self, at: Instant, full: bool, ok: bool) {
        self.last_run = Some(at);
        if ok {
            self.pending = false;
            self.failures = 0;
            if full {
                self.last_full = Some(at);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
        }
    }

    /// A change arrived while the sync that just ran was in flight: run again.
    pub fn pending(&self) -> bool {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const FULL: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn the_first_sync_is_immediate_and_full() {
        let bf = BoundedFrequency::new(MIN, FULL);
        let due = bf.next();
        assert!(due.full);
        assert!(due.at <= Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn changes_coalesce_to_one_partial_sync_min_interval_after_the_last() {
        let mut bf = BoundedFrequency::new(MIN, FULL);
        let t0 = Instant::now();
        bf.ran(t0, true, true);
        assert!(bf.next().full, "idle: only the periodic full sync is due");
        assert_eq!(bf.next().at, t0 + FULL);
        bf.changed();
        bf.changed();
        assert_eq!(
            bf.next(),
            Due {
                at: t0 + MIN,
                full: false
            }
        );
        bf.ran(t0 + MIN, false, true);
        assert!(!bf.pending());
        assert_eq!(
            bf.next(),
            Due {
                at: t0 + FULL,
                full: true
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_retry_with_a_capped_backoff() {
        let mut bf = BoundedFrequency::new(MIN, FULL);
        let t0 = Instant::now();
        bf.ran(t0, true, false);
        assert_eq!(bf.next().at, t0 + 2 * MIN);
        bf.ran(t0, true, false);
        assert_eq!(bf.next().at, t0 + 4 * MIN);
        for _ in 0..20 {
            bf.ran(t0, true, false);
        }
        assert_eq!(bf.next().at, t0 + BoundedFrequency::MAX_RETRY);
        bf.ran(t0, true, true);
        assert_eq!(bf.next().at, t0 + FULL);
    }
}
