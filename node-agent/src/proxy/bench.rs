//! The engine of `capstan bench services`: how long the proxy takes to program N Services × M
//! endpoints (a full sync: plan + `nft -f`) against the floor of `nft -f` loading the very same
//! text, and how long a one-Service change (a partial sync) takes. Runs in a scratch table it
//! deletes afterwards; needs root and `nft`.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::ProxyError;
use k8s_openapi::api::core::v1::{Service, ServicePort as K8sServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint as K8sEndpoint, EndpointPort, EndpointSlice};
use kube::api::ObjectMeta;

use super::model::{
    self, Endpoint, Protocol, SERVICE_NAME_LABEL, ServicePort, ServicePortName, State, TableConfig,
};
use super::nft::Nft;
use super::plan;
use super::sync::{Metrics, SyncKind, Syncer};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub services: usize,
    pub endpoints_per_service: usize,
    /// Full-sync rounds (each: floor and proxy, alternating); the median is reported.
    pub full_runs: usize,
    /// One-Service changes timed; the median is reported.
    pub partial_runs: usize,
    /// A scratch table, deleted before and after.
    pub table: String,
    pub nft: PathBuf,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            services: 1000,
            endpoints_per_service: 10,
            full_runs: 5,
            partial_runs: 20,
            table: format!("capstan-bench-{}", std::process::id()),
            nft: PathBuf::from("nft"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub services: usize,
    pub endpoints_per_service: usize,
    pub chains: i64,
    pub rules: i64,
    pub ruleset_bytes: usize,
    /// Median `nft -f` of the full ruleset text into an empty table.
    pub floor: Duration,
    /// Median proxy full sync into an empty table (plan + names listing + `nft -f`).
    pub full_sync: Duration,
    /// Median proxy full sync over the table it already holds (a restart's adoption).
    pub full_resync: Duration,
    /// Median planning time alone for the full ruleset.
    pub full_plan: Duration,
    /// Median one-Service change (partial sync: plan + `nft -f`).
    pub partial_sync: Duration,
    /// Median planning time alone for that change.
    pub partial_plan: Duration,
    /// Median `nft -f` of that change's text alone (nft reads the table's chains first).
    pub partial_floor: Duration,
    /// Median time to build the state from the Service and EndpointSlice objects (each sync of
    /// the running proxy does this before planning).
    pub state_build: Duration,
}

impl BenchReport {
    /// full sync / floor.
    pub fn ratio(&self) -> f64 {
        self.full_sync.as_secs_f64() / self.floor.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "services: {} × {} endpoints ({} chains, {} rules, {} KiB of nft text)",
            self.services,
            self.endpoints_per_service,
            self.chains,
            self.rules,
            self.ruleset_bytes / 1024
        )?;
        writeln!(f, "nft -f floor (same text):   {:>9.1} ms", ms(self.floor))?;
        writeln!(
            f,
            "proxy full sync:            {:>9.1} ms  ({:.2}× the floor; target ≤ 1.5×)",
            ms(self.full_sync),
            self.ratio()
        )?;
        writeln!(
            f,
            "  of which planning:        {:>9.1} ms",
            ms(self.full_plan)
        )?;
        writeln!(
            f,
            "proxy full resync (adopt):  {:>9.1} ms",
            ms(self.full_resync)
        )?;
        writeln!(
            f,
            "one-Service change:         {:>9.1} ms  (target ≤ 50 ms)",
            ms(self.partial_sync)
        )?;
        writeln!(
            f,
            "  of which planning:        {:>9.1} ms",
            ms(self.partial_plan)
        )?;
        writeln!(
            f,
            "  nft -f of its text alone: {:>9.1} ms",
            ms(self.partial_floor)
        )?;
        writeln!(
            f,
            "state from the API objects: {:>9.1} ms  (per sync of the running proxy)",
            ms(self.state_build)
        )
    }
}

/// The same world as [`synthetic_state`] as API objects: a Service and one EndpointSlice each.
pub fn synthetic_objects(services: usize, endpoints: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
    let ep_base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    let mut svcs = Vec::with_capacity(services);
    let mut slices = Vec::with_capacity(services);
    for i in 0..services {
        let name = format!("svc-{i}");
        let cluster_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i as u32);
        svcs.push(Service {
            metadata: ObjectMeta {
                namespace: Some("bench".into()),
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip.to_string()),
                ports: Some(vec![K8sServicePort {
                    name: Some("http".into()),
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        slices.push(EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("bench".into()),
                name: Some(format!("{name}-abcde")),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), name)].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..Default::default()
            }]),
            endpoints: (0..endpoints)
                .map(|j| K8sEndpoint {
                    addresses: vec![
                        Ipv4Addr::from(ep_base + (i * endpoints + j) as u32).to_string(),
                    ],
                    ..Default::default()
                })
                .collect(),
        });
    }
    (svcs, slices)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `services` ClusterIP Services (10.100.0.0/16) of `endpoints` ready endpoints each
/// (10.128.0.0/9), one TCP port 80 → 8080.
pub fn synthetic_state(table: &str, services: usize, endpoints: usize) -> State {
    let mut state = State::new(TableConfig::new(table));
    let svc_base = u32::from(Ipv4Addr::new(10, 100, 0, 0));
    let ep_base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    for i in 0..services {
        let eps = (0..endpoints)
            .map(|j| Endpoint::ready(Ipv4Addr::from(ep_base + (i * endpoints + j) as u32), 8080))
            .collect();
        state.services.insert(
            ServicePortName {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
                port: "http".into(),
                protocol: Protocol::Tcp,
            },
            ServicePort::cluster_ip(Ipv4Addr::from(svc_base + i as u32), 80, eps),
        );
    }
    state
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Runs the benchmark. The scratch table is deleted afterwards, also on failure.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, ProxyError> {
    let nft = Nft::new(opts.nft.clone());
    nft.delete_table(&opts.table).await?;
    let result = measure(opts, &nft).await;
    let cleanup = nft.delete_table(&opts.table).await;
    let report = result?;
    cleanup?;
    Ok(report)
}

async fn measure(opts: &BenchOptions, nft: &Nft) -> Result<BenchReport, ProxyError> {
    let state = synthetic_state(&opts.table, opts.services, opts.endpoints_per_service);
    // What each sync of the running proxy does first: fold the informers' objects into a state.
    let (svcs, slices) = synthetic_objects(opts.services, opts.endpoints_per_service);
    let mut builds = Vec::new();
    for _ in 0..opts.full_runs.max(1) {
        let t = Instant::now();
        let built = model::build(TableConfig::new(&opts.table), "bench-node", &svcs, &slices);
        builds.push(t.elapsed());
        if built != state {
            return Err(ProxyError::Config(
                "bench: the objects do not build the synthetic state".into(),
            ));
        }
    }
    let (text, counts) = plan::full_adopting(&state, &plan::Existing::default());
    let (mut floors, mut fulls, mut plans) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..opts.full_runs.max(1) {
        // Alternate which goes first, so neither always meets a warmer kernel.
        for floor_first in [round % 2 == 0, round % 2 != 0] {
            nft.delete_table(&opts.table).await?;
            if floor_first {
                let t = Instant::now();
                nft.apply(&text).await?;
                floors.push(t.elapsed());
            } else {
                let mut syncer = Syncer::new(nft.clone(), Metrics::new());
                let t = Instant::now();
                syncer.sync(state.clone()).await?;
                fulls.push(t.elapsed());
            }
        }
        let t = Instant::now();
        let again = plan::full(&state);
        plans.push(t.elapsed());
        drop(again);
    }
    // The proxy's table is in place from the last round (or program it now).
    let mut syncer = Syncer::new(nft.clone(), Metrics::new());
    let mut resyncs = Vec::new();
    for _ in 0..opts.full_runs.max(1) {
        syncer.force_full();
        let t = Instant::now();
        syncer.sync(state.clone()).await?;
        resyncs.push(t.elapsed());
    }
    // One Service's port and endpoints' port flip back and forth. Each round: the planner alone,
    // `nft -f` of its text alone (then undone), and the proxy's partial sync of the same change.
    let (mut partials, mut partial_plans, mut partial_floors) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut current = state;
    let key = current
        .services
        .keys()
        .nth(current.services.len() / 2)
        .cloned();
    for i in 0..opts.partial_runs.max(1) {
        let mut next = current.clone();
        if let Some(sp) = key.as_ref().and_then(|k| next.services.get_mut(k)) {
            sp.port = if i % 2 == 0 { 81 } else { 80 };
            for ep in &mut sp.endpoints {
                ep.port = if i % 2 == 0 { 8081 } else { 8080 };
            }
        }
        let t = Instant::now();
        let text = plan::partial(&current, &next);
        partial_plans.push(t.elapsed());
        let t = Instant::now();
        nft.apply(&text).await?;
        partial_floors.push(t.elapsed());
        nft.apply(&plan::partial(&next, &current)).await?;

        let given = next.clone();
        let t = Instant::now();
        let kind = syncer.sync(given).await?;
        partials.push(t.elapsed());
        debug_assert_eq!(kind, SyncKind::Partial);
        current = next;
    }
    Ok(BenchReport {
        services: opts.services,
        endpoints_per_service: opts.endpoints_per_service,
        chains: counts.chains,
        rules: counts.rules,
        ruleset_bytes: text.len(),
        floor: median(floors),
        full_sync: median(fulls),
        full_resync: median(resyncs),
        full_plan: median(plans),
        partial_sync: median(partials),
        partial_plan: median(partial_plans),
        partial_floor: median(partial_floors),
        state_build: median(builds),
    })
}
