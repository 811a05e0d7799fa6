//! The ingress proxy's flags, shared by `capstan up` (which runs it in-process as its own
//! identity, `system:capstan:ingress`) and `capstan ingress` (the proxy alone, against a
//! cluster named by the kubeconfig, /metrics served on its own port).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use capstan_node_agent::ingress::{self, IngressConfig, IngressMetrics};

use crate::client_cmd::ClientArgs;
use crate::controllers_cmd::parse_duration;

/// A listener's address, or `off`.
#[derive(Debug, Clone, Copy)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        if s == "off" {
            return Ok(Listen(None));
        }
        s.parse()
            .map(|a| Listen(Some(a)))
            .map_err(|e| format!("{s:?} is neither an address (0.0.0.0:80) nor `off`: {e}"))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct IngressArgs {
    /// Where the ingress proxy serves plain HTTP (`off`: nowhere).
    #[arg(long = "ingress-http-address", default_value = "0.0.0.0:80")]
    pub http: Listen,
    /// Where the ingress proxy serves HTTPS, certificates chosen by SNI from the Ingresses'
    /// TLS Secrets (`off`: nowhere).
    #[arg(long = "ingress-https-address", default_value = "0.0.0.0:443")]
    pub https: Listen,
    /// The IngressClass whose Ingresses are served (`capstan up` creates `capstan`, the
    /// cluster's default class).
    #[arg(long = "ingress-class", default_value = ingress::DEFAULT_CLASS)]
    pub class: String,
    /// Also serve Ingresses that name no class.
    #[arg(long = "watch-ingress-without-class")]
    pub without_class: bool,
    /// The addresses written into the Ingresses' status.loadBalancer (comma-separated; `capstan
    /// up`: the node's IP when none is given). Give every proxy of a class the same list.
    #[arg(long = "publish-status-address", value_delimiter = ',')]
    pub publish: Vec<IpAddr>,
    /// How long connecting to an endpoint may take before the next one is tried.
    #[arg(long = "ingress-connect-timeout", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// How long an endpoint may take to send a response's headers (504 after).
    #[arg(long = "ingress-response-timeout", default_value = "60s", value_parser = parse_duration)]
    pub response_timeout: Duration,
    /// Threads serving connections, each on its own single-threaded runtime (default: one per
    /// core).
    #[arg(long = "ingress-workers", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
}

impl IngressArgs {
    pub fn config(&self, default_publish: Option<IpAddr>) -> IngressConfig {
        let mut c = IngressConfig::new(self.http.0, self.https.0);
        c.class = self.class.clone();
        c.without_class = self.without_class;
        c.publish_addresses = if self.publish.is_empty() {
            default_publish.into_iter().collect()
        } else {
            self.publish.clone()
        };
        c.connect_timeout = self.connect_timeout;
        c.response_timeout = self.response_timeout;
        if let Some(n) = self.workers {
            c.workers = usize::from(n);
        }
        c
    }
}

/// `capstan ingress`.
#[derive(Debug, clap::Args)]
pub struct IngressCmd {
    #[command(flatten)]
    pub ingress: IngressArgs,
    /// Where /metrics (and /healthz) are served (ingress-nginx's port).
    #[arg(long, default_value = "127.0.0.1:10254")]
    pub metrics_listen: SocketAddr,
}

pub async fn run(client_args: ClientArgs, cmd: IngressCmd) -> Result<()> {
    let client = kube::Client::try_from(crate::client_cmd::config(&client_args).await?)?;
    let registry = prometheus::Registry::new();
    let metrics = IngressMetrics::register(&registry).context("registering metrics")?;
    crate::controllers_cmd::serve_metrics(cmd.metrics_listen, Arc::new(registry)).await?;
    let proxy = ingress::start(client, cmd.ingress.config(None), metrics)
        .await
        .context("starting the ingress proxy")?;
    crate::signals::shutdown_signal().await;
    drop(proxy);
    Ok(())
}
