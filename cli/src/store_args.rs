//! `--store embedded|etcd` and friends, shared by every subcommand that opens a store.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use capstan_storage::embedded::{EmbeddedOptions, EmbeddedStore};
use capstan_storage::etcd::{EtcdOptions, EtcdStore};
use capstan_storage::{CompactionPolicy, Storage};
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// An on-disk store in --data-dir (the single-machine default).
    Embedded,
    /// A real etcd cluster at --etcd-endpoints.
    Etcd,
}

#[derive(Clone, Debug, Args)]
pub struct StoreArgs {
    /// Which store keeps the objects.
    #[arg(long, value_enum, default_value = "embedded")]
    pub store: Backend,
    /// Where the embedded store (and other local state) lives.
    #[arg(long, default_value = ".capstan")]
    pub data_dir: PathBuf,
    /// etcd client URLs, comma-separated (with --store etcd).
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix in etcd; lets several clusters share one etcd.
    #[arg(long, default_value = "/registry/")]
    pub etcd_prefix: String,
    /// How long to wait at start-up for etcd to answer (a cluster still electing its leader,
    /// members still starting), retrying with back-off from 250 ms to 5 s; 0s: fail at once.
    #[arg(long, default_value = "60s", value_parser = crate::controllers_cmd::parse_duration)]
    pub etcd_startup_timeout: std::time::Duration,
}

impl StoreArgs {
    /// Opens the store; `compaction` applies to the embedded store (etcd compacts on its own
    /// schedule or through `capstan store compact`).
    pub async fn open(&self, compaction: Option<CompactionPolicy>) -> Result<Arc<dyn Storage>> {
        match self.store {
            Backend::Embedded => {
                if !self.etcd_endpoints.is_empty() {
                    bail!("--etcd-endpoints is given but --store is embedded; add --store etcd");
                }
                let mut opts = EmbeddedOptions::new(self.data_dir.join("store"));
                opts.compaction = compaction;
                let store = EmbeddedStore::open(opts).await.with_context(|| {
                    format!("opening the embedded store in {}", self.data_dir.display())
                })?;
                Ok(store)
            }
            Backend::Etcd => {
                if self.etcd_endpoints.is_empty() {
                    bail!("--store etcd needs --etcd-endpoints URL[,URL...]");
                }
                let mut opts = EtcdOptions::new(self.etcd_endpoints.clone());
                opts.prefix = self.etcd_prefix.clone();
                Ok(Arc::new(
                    connect_with_backoff(opts, self.etcd_startup_timeout).await?,
                ))
            }
        }
    }
}

/// Connects to etcd, trying again with back-off (250 ms doubling to 5 s) while it is
/// unavailable, for at most `wait`; any other error, or the last one, is returned.
async fn connect_with_backoff(opts: EtcdOptions, wait: std::time::Duration) -> Result<EtcdStore> {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + wait;
    let mut backoff = Duration::from_millis(250);
    loop {
        match EtcdStore::connect(opts.clone()).await {
            Ok(store) => return Ok(store),
            Err(capstan_storage::StorageError::Unavailable { message, .. })
                if Instant::now() + backoff < deadline =>
            {
                tracing::warn!(%message, retry_in = ?backoff, "waiting for etcd");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("connecting to etcd (waited up to {wait:?}: --etcd-startup-timeout)")
                });
            }
        }
    }
}
