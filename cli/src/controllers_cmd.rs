//! `capstan controllers`: the controller manager — the chosen controllers against the cluster
//! in the kubeconfig (in a pod: the in-cluster configuration), one leader among replicas (a
//! Lease, kube-system/capstan-controller-manager by default), /metrics served.
//! `capstan up` runs the same manager in-process against its own API server.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use capstan_controllers::runtime::leader::{LeaderElection, Timings};
use capstan_controllers::scheduler::{self, Strategy};
use capstan_controllers::{ALL, Manager};
use clap::Args;

use crate::client_cmd::ClientArgs;

#[derive(Clone, Debug, Args)]
pub struct ManagerArgs {
    /// Controllers to run, comma-separated; the help lists them from `capstan_controllers::ALL`.
    #[arg(long, value_delimiter = ',', default_value = "all", help = controllers_help())]
    pub controllers: Vec<String>,
    /// Elect one leader among replicas through a Lease
    /// (--leader-elect-resource-namespace/--leader-elect-resource-name).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// The namespace of the leader-election Lease (a manager run as a pod: its own).
    #[arg(long, default_value = "kube-system")]
    pub leader_elect_resource_namespace: String,
    /// The leader-election Lease's name. Managers running different controllers against one
    /// cluster (Capstan's own and one installed by the Helm chart) need different names.
    #[arg(long, default_value = "capstan-controller-manager")]
    pub leader_elect_resource_name: String,
    /// This replica's name in the Lease. A restarted replica that finds the Lease held by its
    /// own name takes it at once. Default: `capstan up` uses HOSTNAME_<hash of the data dir>
    /// (stable across restarts); `capstan controllers` uses HOSTNAME_PID.
    #[arg(long)]
    pub leader_elect_identity: Option<String>,
    /// Lease duration in seconds (renew deadline is 2/3 of it, retries every 2/15).
    #[arg(long, default_value_t = 15)]
    pub leader_elect_lease_seconds: u64,
    /// Scheduler profiles as schedulerName=strategy (spread, binpack, random); added to the
    /// defaults default-scheduler=spread, binpack-scheduler=binpack, random-scheduler=random.
    #[arg(long = "scheduler-profile", value_delimiter = ',')]
    pub scheduler_profiles: Vec<String>,
    /// The scheduler stops filtering once this percentage of the nodes fit (at least 100
    /// nodes; 100 looks at every node). Default: kube-scheduler's adaptive 50%-minus-1%-per-125-nodes.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub scheduler_percentage_of_nodes_to_score: Option<u32>,
    /// How long the endpoint controllers collect pod changes of one Service before syncing it,
    /// as a Go-style duration (100ms, 1s, 1m30s; 0 syncs at once).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub endpoint_updates_batch_period: std::time::Duration,
    /// The most endpoints one EndpointSlice holds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_endpoints_per_slice: u32,
    /// A node whose Lease is not renewed for this long is marked Unknown and tainted
    /// unreachable (judged by the controller's clock).
    #[arg(long, default_value = "50s", value_parser = parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// As --node-monitor-grace-period, for a node that never posted Ready.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub node_startup_grace_period: std::time::Duration,
    /// The node-lifecycle controller looks at every node at least this often (and also exactly
    /// when a grace period ends).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub node_monitor_period: std::time::Duration,
    /// Nodes per second tainted NoExecute (their pods evicted) in a healthy zone.
    #[arg(long, default_value_t = 0.1)]
    pub node_eviction_rate: f64,
    /// Nodes per second tainted in a partially disrupted zone of more than
    /// --large-cluster-size-threshold nodes (smaller zones: none).
    #[arg(long, default_value_t = 0.01)]
    pub secondary_node_eviction_rate: f64,
    /// The share of a zone's nodes not Ready (with at least 3) that makes it partially
    /// disrupted.
    #[arg(long, default_value_t = 0.55)]
    pub unhealthy_zone_threshold: f64,
    /// Zones of at most this many nodes stop tainting when partially disrupted.
    #[arg(long, default_value_t = 50)]
    pub large_cluster_size_threshold: usize,
    /// Succeeded and Failed pods kept before the oldest are garbage collected (0: all kept).
    #[arg(long, default_value_t = 12_500)]
    pub terminated_pod_gc_threshold: usize,
    /// Give every Node a pod range (`spec.podCIDR`) cut from --cluster-cidr (the `nodeipam`
    /// controller), for agents on many machines.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, requires = "cluster_cidr")]
    pub allocate_node_cidrs: bool,
    /// The cluster's pod range (`--cluster-cidr` of `capstan controllers`; in `capstan up`,
    /// the one flag the agent shares).
    #[arg(skip)]
    pub cluster_cidr: Option<capstan_controllers::nodeipam::Net4>,
    /// The size of each Node's pod range (/24: 254 pods).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(1..=30))]
    pub node_cidr_mask_size: u8,
    /// The cluster CA (PEM) published as `kube-root-ca.crt` in every namespace, for pods'
    /// token volumes (`capstan up`: its own CA). Without it nothing is published.
    #[arg(long)]
    pub root_ca_file: Option<std::path::PathBuf>,
    /// Run each controller as its own ServiceAccount (`kube-system/NAME-controller`, bound to
    /// `system:controller:NAME-controller`) with a token the manager asks for and keeps fresh;
    /// false: every controller acts as the manager itself.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub use_service_account_credentials: bool,
    /// Where the controllers' tokens are kept (`capstan up`: DATA_DIR/controller-tokens;
    /// else a private directory under the temporary one).
    #[arg(skip)]
    pub controller_token_dir: Option<std::path::PathBuf>,
    /// The CA certificate (PEM) the certificate signer issues with (`capstan up`: its own
    /// CA); with --cluster-signing-key-file. Without them approved requests stay unsigned.
    #[arg(long, requires = "cluster_signing_key_file")]
    pub cluster_signing_cert_file: Option<std::path::PathBuf>,
    #[arg(long, requires = "cluster_signing_cert_file")]
    pub cluster_signing_key_file: Option<std::path::PathBuf>,
    /// The longest certificate the signer issues.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    pub cluster_signing_duration: std::time::Duration,
    /// How often each HorizontalPodAutoscaler is synced.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub horizontal_pod_autoscaler_sync_period: std::time::Duration,
    /// How far back autoscalers look for a higher recommendation before scaling down (when
    /// their behavior sets no window of its own).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub horizontal_pod_autoscaler_downscale_stabilization: std::time::Duration,
    /// The least change of the usage-to-target ratio that rescales.
    #[arg(long, default_value_t = 0.1)]
    pub horizontal_pod_autoscaler_tolerance: f64,
    /// How long after a pod starts its CPU samples are trusted only once it is Ready.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub horizontal_pod_autoscaler_cpu_initialization_period: std::time::Duration,
    /// A pod whose readiness last changed this soon after its start is taken as never Ready.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub horizontal_pod_autoscaler_initial_readiness_delay: std::time::Duration,
    /// Autoscalers synced at once.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrent_horizontal_pod_autoscaler_syncs: u32,
    /// ReplicaSets reconciled at once (each creates its pods in slow-start batches).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub concurrent_replicaset_syncs: u16,
    /// Deployments reconciled at once.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub concurrent_deployment_syncs: u16,
    /// Where the GitOps controller caches the repositories it fetches (`capstan up`:
    /// DATA_DIR/gitops; else capstan-gitops under the temporary directory).
    #[arg(long)]
    pub gitops_cache_dir: Option<std::path::PathBuf>,
}

impl ManagerArgs {
    /// The HorizontalPodAutoscaler controller's settings from the flags.
    pub fn autoscaler(&self) -> Result<capstan_controllers::autoscaler::Config> {
        let tolerance = self.horizontal_pod_autoscaler_tolerance;
        if !(tolerance.is_finite() && tolerance >= 0.0) {
            return Err(anyhow!(
                "--horizontal-pod-autoscaler-tolerance {tolerance}: must be a ratio ≥ 0"
            ));
        }
        if self.horizontal_pod_autoscaler_sync_period.is_zero() {
            return Err(anyhow!(
                "--horizontal-pod-autoscaler-sync-period must be positive"
            ));
        }
        Ok(capstan_controllers::autoscaler::Config {
            sync_period: self.horizontal_pod_autoscaler_sync_period,
            downscale_stabilization: self.horizontal_pod_autoscaler_downscale_stabilization,
            calculator: capstan_controllers::autoscaler::replicas::Settings {
                tolerance,
                cpu_initialization_period: self.horizontal_pod_autoscaler_cpu_initialization_period,
                initial_readiness_delay: self.horizontal_pod_autoscaler_initial_readiness_delay,
            },
            workers: self.concurrent_horizontal_pod_autoscaler_syncs as usize,
        })
    }

    /// The node IPAM controller's settings from the flags (checked: the mask cuts the range).
    pub fn node_ipam(&self) -> Result<capstan_controllers::nodeipam::Config> {
        let config = capstan_controllers::nodeipam::Config {
            cluster_cidr: self.cluster_cidr.filter(|_| self.allocate_node_cidrs),
            node_cidr_mask_size: self.node_cidr_mask_size,
        };
        config.cidr_set().map_err(anyhow::Error::msg)?;
        Ok(config)
    }

    /// The node-lifecycle controller's settings from the flags.
    pub fn node_lifecycle(&self) -> Result<capstan_controllers::nodelifecycle::Config> {
        use capstan_controllers::nodelifecycle::{Config, Settings, zones::Rates};
        for (flag, v) in [
            ("--node-eviction-rate", self.node_eviction_rate),
            (
                "--secondary-node-eviction-rate",
                self.secondary_node_eviction_rate,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(anyhow!("{flag} {v}: must be a rate ≥ 0"));
            }
        }
        if !(0.0..=1.0).contains(&self.unhealthy_zone_threshold) {
            return Err(anyhow!(
                "--unhealthy-zone-threshold {}: must be between 0 and 1",
                self.unhealthy_zone_threshold
            ));
        }
        if self.node_monitor_grace_period.is_zero() || self.node_monitor_period.is_zero() {
            return Err(anyhow!(
                "--node-monitor-grace-period and --node-monitor-period must be positive"
            ));
        }
        Ok(Config {
            settings: Settings {
                grace: self.node_monitor_grace_period,
                startup_grace: self.node_startup_grace_period,
                rates: Rates {
                    primary: self.node_eviction_rate,
                    secondary: self.secondary_node_eviction_rate,
                    unhealthy_zone_threshold: self.unhealthy_zone_threshold,
                    large_cluster_threshold: self.large_cluster_size_threshold,
                },
            },
            monitor_period: self.node_monitor_period,
        })
    }
}

/// `--controllers`' help, naming every controller there is.
fn controllers_help() -> String {
    format!(
        "Controllers to run, comma-separated: `all` (the default), `none`, `-NAME` to leave one out, or any of: {}",
        ALL.join(", ")
    )
}

/// The controllers `--controllers` names, as kube-controller-manager reads the flag: `all` (or
/// `*`) for every one, `NAME` to add one, `-NAME` to leave one out (whatever the order: a
/// disabled controller stays off), `none` for nothing.
fn names_of(items: &[String]) -> Result<BTreeSet<String>> {
    let known = |name: &str| -> Result<String> {
        if ALL.contains(&name) {
            Ok(name.to_string())
        } else {
            Err(anyhow!(
                "unknown controller {name:?}; known: {}",
                ALL.join(", ")
            ))
        }
    };
    let (mut on, mut off) = (BTreeSet::new(), BTreeSet::new());
    for item in items {
        match item.trim() {
            "all" | "*" => on.extend(ALL.iter().map(|s| s.to_string())),
            "none" | "" => {}
            other => match other.strip_prefix('-') {
                Some(name) => {
                    off.insert(known(name)?);
                }
                None => {
                    on.insert(known(other)?);
                }
            },
        }
    }
    Ok(&on - &off)
}

/// This machine's name (uname's nodename), for Lease identities.
pub fn hostname() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    if name.is_empty() {
        "capstan".into()
    } else {
        name
    }
}

/// A Go-style duration (`300ms`, `1.5s`, `1m30s`; also `d` for days): [`capstan_api::duration::parse`].
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    capstan_api::duration::parse(s)
}

/// Where a controller manager stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManagerState {
    /// Not leading, and not yet seen another replica lead.
    Campaigning,
    /// The controllers run.
    Leading,
    /// Another replica (this identity) holds the Lease; this one takes over when it goes.
    StandingBy(String),
}

#[derive(Debug, Args)]
pub struct ControllersArgs {
    #[command(flatten)]
    pub manager: ManagerArgs,
    /// Where /metrics (and /healthz) are served.
    #[arg(long, default_value = "127.0.0.1:10257")]
    pub metrics_listen: SocketAddr,
    /// The cluster's pod addresses, an IPv4 CIDR (e.g. 10.244.0.0/16): what
    /// --allocate-node-cidrs cuts Nodes' ranges from.
    #[arg(long, value_parser = parse_cluster_cidr)]
    pub cluster_cidr: Option<capstan_controllers::nodeipam::Net4>,
}

impl ManagerArgs {
    pub fn names(&self) -> Result<BTreeSet<String>> {
        names_of(&self.controllers)
    }

    fn scheduler_config(&self) -> Result<scheduler::Config> {
        let mut cfg = scheduler::Config::default();
        cfg.percentage_of_nodes_to_score = self.scheduler_percentage_of_nodes_to_score;
        for p in &self.scheduler_profiles {
            let (name, strategy) = p
                .split_once('=')
                .ok_or_else(|| anyhow!("--scheduler-profile {p:?}: expected NAME=STRATEGY"))?;
            let strategy: Strategy = strategy.parse().map_err(|e: String| anyhow!(e))?;
            cfg = cfg.profile(name, strategy);
        }
        Ok(cfg)
    }

    /// Runs the manager (under leader election when asked) until `shutdown` resolves, releasing
    /// the Lease on the way out. `state` says whether the controllers run (at once without
    /// leader election or with no controllers) or stand by while another replica leads.
    pub async fn run(
        &self,
        client: kube::Client,
        base: kube::Config,
        registry: &prometheus::Registry,
        state: tokio::sync::watch::Sender<ManagerState>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let names = self.names()?;
        let leading = std::sync::Arc::new(state);
        if names.is_empty() {
            leading.send_replace(ManagerState::Leading);
            shutdown.await;
            return Ok(());
        }
        let sched = self.scheduler_config()?;
        let node_lifecycle = self.node_lifecycle()?;
        let node_ipam = self.node_ipam()?;
        let autoscaler = self.autoscaler()?;
        let gc_threshold = self.terminated_pod_gc_threshold;
        let cluster_signing = match (
            &self.cluster_signing_cert_file,
            &self.cluster_signing_key_file,
        ) {
            (Some(c), Some(k)) => {
                let read = |p: &std::path::Path| {
                    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
                };
                Some(std::sync::Arc::new(
                    capstan_pki::Ca::from_pem(&read(c)?, &read(k)?)
                        .context("--cluster-signing-cert-file / --cluster-signing-key-file")?,
                ))
            }
            _ => None,
        };
        let signing_duration = self.cluster_signing_duration;
        let root_ca = match &self.root_ca_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading --root-ca-file {}", p.display()))?,
            ),
            None => None,
        };
        let (batch, max_per_slice) = (
            self.endpoint_updates_batch_period,
            self.max_endpoints_per_slice as usize,
        );
        let election_registry = registry.clone();
        let registry = registry.clone();
        let use_sa = self.use_service_account_credentials;
        let token_dir = self.controller_token_dir.clone();
        let lead = {
            let client = client.clone();
            let names = names.clone();
            let leading = leading.clone();
            move || {
                let identities = if use_sa {
                    match capstan_controllers::runtime::identities::Identities::new(
                        base.clone(),
                        client.clone(),
                        token_dir.clone(),
                    ) {
                        Ok(ids) => Some(ids),
                        Err(e) => {
                            tracing::error!(error = %e, "no directory for the controllers' tokens: they run as the manager");
                            None
                        }
                    }
                } else {
                    None
                };
                let config = capstan_controllers::Config {
                    identities,
                    scheduler: sched.clone(),
                    endpoint_updates_batch_period: batch,
                    max_endpoints_per_slice: max_per_slice,
                    node_lifecycle: node_lifecycle.clone(),
                    node_ipam: node_ipam.clone(),
                    pod_gc: capstan_controllers::podgc::Config {
                        terminated_threshold: gc_threshold,
                        ..Default::default()
                    },
                    root_ca: root_ca.clone(),
                    cluster_signing: cluster_signing.clone(),
                    cluster_signing_duration: signing_duration,
                    autoscaler,
                    concurrent_replicaset_syncs: self.concurrent_replicaset_syncs,
                    concurrent_deployment_syncs: self.concurrent_deployment_syncs,
                    gitops: match &self.gitops_cache_dir {
                        Some(dir) => capstan_controllers::gitops::Config {
                            cache_dir: dir.clone(),
                        },
                        None => Default::default(),
                    },
                    ..Default::default()
                };
                let m = Manager::with_config(client.clone(), &registry, config);
                let names = names.clone();
                let leading = leading.clone();
                async move {
                    // Not leading any more once this future ends or is dropped.
                    struct Stopped(std::sync::Arc<tokio::sync::watch::Sender<ManagerState>>);
                    impl Drop for Stopped {
                        fn drop(&mut self) {
                            self.0.send_replace(ManagerState::Campaigning);
                        }
                    }
                    leading.send_replace(ManagerState::Leading);
                    let _stopped = Stopped(leading);
                    if let Err(e) = m.run(&names).await {
                        tracing::error!(error = %e, "controller manager stopped");
                    }
                }
            }
        };
        if !self.leader_elect {
            tokio::select! {
                _ = lead() => {},
                _ = shutdown => {},
            }
            return Ok(());
        }
        let secs = self.leader_elect_lease_seconds.max(3);
        let timings = Timings {
            lease_duration: std::time::Duration::from_secs(secs),
            renew_deadline: std::time::Duration::from_millis(secs * 1000 * 2 / 3),
            retry_period: std::time::Duration::from_millis((secs * 1000 * 2 / 15).max(200)),
        };
        let identity = self
            .leader_elect_identity
            .clone()
            .unwrap_or_else(|| format!("{}_{}", hostname(), std::process::id()));
        let election = LeaderElection::new(
            client,
            &self.leader_elect_resource_namespace,
            &self.leader_elect_resource_name,
            &identity,
            timings,
        )
        .with_metrics(&election_registry)
        .on_standby({
            let state = leading.clone();
            move |holder| {
                state.send_if_modified(|s| {
                    let next = ManagerState::StandingBy(holder.to_string());
                    let changed = *s != next;
                    *s = next;
                    changed
                });
            }
        });
        tracing::info!(%identity, controllers = ?names, "campaigning for the controller-manager lease");
        election.run(lead, shutdown).await;
        Ok(())
    }
}

/// Serves /metrics (the registry's series, Prometheus text) and /healthz on `listen`.
pub async fn serve_metrics(listen: SocketAddr, registry: Arc<prometheus::Registry>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let r = registry.clone();
                async move {
                    use prometheus::Encoder;
                    let mut buf = Vec::new();
                    let _ = prometheus::TextEncoder::new().encode(&r.gather(), &mut buf);
                    String::from_utf8_lossy(&buf).into_owned()
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

pub async fn run(client_args: ClientArgs, mut args: ControllersArgs) -> Result<()> {
    args.manager.cluster_cidr = args.cluster_cidr;
    args.manager.node_ipam()?;
    let base = crate::client_cmd::config(&client_args).await?;
    let client = kube::Client::try_from(base.clone())?;
    let registry = prometheus::Registry::new();
    serve_metrics(args.metrics_listen, Arc::new(registry.clone())).await?;
    let (leading, _) = tokio::sync::watch::channel(ManagerState::Campaigning);
    args.manager
        .run(
            client,
            base,
            &registry,
            leading,
            crate::signals::shutdown_signal(),
        )
        .await
}

pub(crate) fn parse_cluster_cidr(s: &str) -> Result<capstan_controllers::nodeipam::Net4, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::{names_of, parse_duration};
    use std::time::Duration;

    fn names(flag: &str) -> Result<Vec<String>, String> {
        let items: Vec<String> = flag.split(',').map(str::to_string).collect();
        names_of(&items)
            .map(|s| s.into_iter().collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn controllers_flag_adds_and_leaves_out_as_kube_controller_manager() {
        let all = names("all").unwrap();
        assert_eq!(all.len(), capstan_controllers::ALL.len());
        assert_eq!(names("*").unwrap(), all);
        let without = names("*,-gitops,-scalingpolicy").unwrap();
        assert_eq!(without.len(), all.len() - 2);
        assert!(
            !without
                .iter()
                .any(|n| n == "gitops" || n == "scalingpolicy")
        );
        // A disabled controller stays off whatever the order.
        assert_eq!(
            names("-gitops,gitops,scalingpolicy").unwrap(),
            ["scalingpolicy"]
        );
        assert_eq!(names("none").unwrap(), Vec::<String>::new());
        let err = names("all,-gitsync").unwrap_err();
        assert!(err.contains("unknown controller \"gitsync\""), "{err}");
        assert!(names("nope").is_err());
    }

    #[test]
    fn go_style_durations_parse() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "10", "ms", "1x", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
