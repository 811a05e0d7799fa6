//! `capstan up`: the single-machine Capstan. Today it opens the store (compacting it on the
//! default policy) and serves the operational endpoints; the Kubernetes API, controllers and the
//! node agent join here as they are built. It prints one line when /readyz answers.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use capstan_storage::{CompactionPolicy, StorageMetrics};
use clap::Args;

use crate::serve::{OpsState, router};
use crate::store_args::StoreArgs;

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
}

pub async fn run(args: UpArgs) -> Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = StorageMetrics::register(&registry).context("registering metrics")?;
    let store = metrics.wrap(args.store.open(Some(CompactionPolicy::default())).await?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let app = router(OpsState {
        store: store.clone(),
        registry,
    });
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
    });
    let revision = store.current_revision().await?;
    println!(
        "capstan is up: store={} revision={revision}; http://{addr}/readyz and /metrics answer. \
         The Kubernetes API is not served yet.",
        store.backend()
    );
    server.await.context("server task")?.context("serving")?;
    tracing::info!("shutting down");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
