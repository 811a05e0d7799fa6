//! `capstan bench ...`: benchmarks that print a Markdown report, each measuring its raw floor in
//! the same run (e.g. raw etcd-client puts next to the store's puts). Figures and the exact
//! commands are recorded in docs/benchmarks.md. Build with --release before trusting numbers.

mod store;

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct BenchCmd {
    #[command(subcommand)]
    which: Which,
}

#[derive(Debug, Subcommand)]
enum Which {
    /// The object store: puts/s and latency at 1 and 32 writers, watch delivery, lists of
    /// 10,000 keys — embedded and etcd backends against raw etcd-client.
    Store(store::StoreBench),
}

pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd.which {
        Which::Store(b) => store::run(b).await,
    }
}

/// Latency samples of one measured run.
#[derive(Debug)]
pub struct Samples {
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Samples {
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted[idx]
    }
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let s = Samples {
            elapsed: Duration::from_secs(2),
            latencies: (1..=100).map(Duration::from_millis).collect(),
        };
        assert_eq!(s.quantile(0.5), Duration::from_millis(51));
        assert_eq!(s.quantile(0.99), Duration::from_millis(99));
        assert_eq!(s.quantile(0.0), Duration::from_millis(1));
        assert_eq!(s.rate(), 50.0);
    }
}
