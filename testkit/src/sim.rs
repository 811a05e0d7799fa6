//! Simulated nodes (kwok-like): N Nodes that register themselves, renew their Leases and play the
//! kubelet for the pods bound to them — Running and Ready after a configurable delay, with a pod
//! IP from the node's podCIDR, and deletion honoured — all through the API only, like any agent.
//! `capstan sim --nodes N` runs one; tests start one in-process with [`SimNodes::start`].
//!
//! It is a stand-in for node agents when what is under test is the control plane (scheduler,
//! workload controllers, node lifecycle) or its scale; it runs no containers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::task::JoinHandle;

/// What the simulated nodes look like.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    /// Node names are `{prefix}{index}`.
    pub prefix: String,
    /// `topology.kubernetes.io/zone` cycles through `zone-0` .. `zone-{zones-1}`.
    pub zones: usize,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    /// How long a bound pod takes to become Running and Ready.
    pub ready_after: Duration,
    /// Lease renewal interval (the kubelet's: 10 s).
    pub lease_every: Duration,
    /// Node status posted again (new heartbeats) this often, as an agent does at least every
    /// minute; None: only at registration.
    pub status_every: Option<Duration>,
    /// Nodes registered concurrently.
    pub parallelism: usize,
    /// Serve each node's `/stats/summary` (metrics.k8s.io, `kubectl top`, autoscalers) with
    /// every container using this much CPU; the nodes then live on loopback addresses
    /// (see [`crate::sim_stats`]).
    pub stats: Option<crate::sim_stats::Usage>,
    /// The port the nodes serve stats on (set by [`SimNodes::start`]).
    pub stats_port: u16,
}

impl SimConfig {
    /// `nodes` large nodes (64 cpu, 256Gi, 1,000 pods) renewing their Leases hourly, registered
    /// 64 at a time: what the benchmarks run many pods on without the nodes being the limit.
    pub fn roomy(nodes: usize) -> SimConfig {
        SimConfig {
            nodes,
            cpu: "64".into(),
            memory: "256Gi".into(),
            pods: 1000,
            lease_every: Duration::from_secs(3600),
            parallelism: 64,
            ..Default::default()
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            prefix: "sim-".into(),
            zones: 3,
            cpu: "8".into(),
            memory: "32Gi".into(),
            pods: 110,
            ready_after: Duration::ZERO,
            lease_every: Duration::from_secs(10),
            status_every: None,
            parallelism: 32,
            stats: None,
            stats_port: 0,
        }
    }
}

/// Running simulated nodes; their tasks stop when this is dropped.
pub struct SimNodes {
    pub names: Vec<String>,
    tasks: Vec<JoinHandle<()>>,
    client: kube::Client,
    cfg: SimConfig,
    /// Nodes "down": no Lease renewal, their pods left alone (a dead machine).
    silenced: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for SimNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNodes")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

fn is_silenced(silenced: &Mutex<HashSet<String>>, node: &str) -> bool {
    silenced.lock().is_ok_and(|s| s.contains(node))
}

impl Drop for SimNodes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Node `i`'s pod CIDR (`10.{128 + i/256}.{i%256}.0/24`) and internal IP (a loopback one
/// when the nodes serve stats).
fn addresses(cfg: &SimConfig, i: usize) -> (String, String) {
    let (hi, lo) = (128 + (i / 256) % 128, i % 256);
    let ip = if cfg.stats.is_some() {
        crate::sim_stats::node_ip(i)
    } else {
        format!(
            "172.{}.{}.{}",
            16 + (i / 65536) % 16,
            (i / 256) % 256,
            i % 256
        )
    };
    (format!("10.{hi}.{lo}.0/24"), ip)
}

fn node_object(cfg: &SimConfig, i: usize) -> serde_json::Value {
    let name = format!("{}{i}", cfg.prefix);
    let (cidr, ip) = addresses(cfg, i);
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "topology.kubernetes.io/zone": format!("zone-{}", i % cfg.zones.max(1)),
            "node.kubernetes.io/instance-type": "capstan-sim",
            "capstan.dev/sim": "true",
        }},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": node_status(cfg, &ip),
    })
}

fn node_status(cfg: &SimConfig, ip: &str) -> serde_json::Value {
    let now = jiff::Timestamp::now().to_string();
    let resources = json!({"cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.pods.to_string(), "ephemeral-storage": "100Gi"});
    let cond = |ty: &str, status: &str, reason: &str| {
        json!({"type": ty, "status": status, "reason": reason, "message": format!("capstan sim: {reason}"),
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({
        "capacity": resources, "allocatable": resources,
        "conditions": [
            cond("Ready", "True", "KubeletReady"),
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [{"type": "InternalIP", "address": ip}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.stats_port}},
        "nodeInfo": {"kubeletVersion": "v1.33.0-capstan-sim", "containerRuntimeVersion": "sim://0",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            "osImage": "capstan sim", "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
    })
}

impl SimNodes {
    /// Registers the nodes (or takes over existing ones of the same names), then keeps their
    /// Leases and their pods going in background tasks.
    pub async fn start(client: kube::Client, mut cfg: SimConfig) -> Result<SimNodes> {
        let mut tasks = Vec::new();
        if let Some(usage) = cfg.stats.clone() {
            let listener = crate::sim_stats::listen()
                .await
                .context("listening for the nodes' stats")?;
            cfg.stats_port = listener.local_addr()?.port();
            tasks.push(tokio::spawn(crate::sim_stats::serve(
                client.clone(),
                listener,
                cfg.prefix.clone(),
                usage,
            )));
        }
        let nodes: Api<Node> = Api::all(client.clone());
        let names: Vec<String> = (0..cfg.nodes)
            .map(|i| format!("{}{i}", cfg.prefix))
            .collect();
        futures_util::stream::iter(0..cfg.nodes)
            .map(|i| {
                let (nodes, cfg) = (nodes.clone(), cfg.clone());
                async move {
                    let obj: Node = serde_json::from_value(node_object(&cfg, i))?;
                    let name = format!("{}{i}", cfg.prefix);
                    match nodes.create(&PostParams::default(), &obj).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 409 => {}
                        Err(e) => return Err(e).with_context(|| format!("registering {name}")),
                    }
                    // The status is the kubelet's to write, through /status.
                    let (_, ip) = addresses(&cfg, i);
                    nodes
                        .patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"status": node_status(&cfg, &ip)})),
                        )
                        .await
                        .with_context(|| format!("posting the status of {name}"))?;
                    Ok::<_, anyhow::Error>(())
                }
            })
            .buffer_unordered(cfg.parallelism.max(1))
            .try_collect::<Vec<_>>()
            .await?;
        let silenced: Arc<Mutex<HashSet<String>>> = Arc::default();
        tasks.push(tokio::spawn(renew_leases(
            client.clone(),
            names.clone(),
            cfg.clone(),
            silenced.clone(),
        )));
        let index: HashMap<String, usize> = names
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, n)| (n, i))
            .collect();
        tasks.push(tokio::spawn(run_pods(
            client.clone(),
            index,
            cfg.clone(),
            silenced.clone(),
        )));
        Ok(SimNodes {
            names,
            tasks,
            client,
            cfg,
            silenced,
        })
    }

    /// Takes a node down, as a machine that died: its Lease is no longer renewed and its pods
    /// are left as they are (deleted ones stay Terminating).
    pub fn silence(&self, node: &str) {
        if let Ok(mut s) = self.silenced.lock() {
            s.insert(node.to_string());
        }
    }

    /// Brings a silenced node back: it renews its Lease again and posts a fresh Ready status,
    /// as a kubelet coming back does; its pods deleted meanwhile are confirmed gone.
    pub async fn revive(&self, node: &str) -> Result<()> {
        if let Ok(mut s) = self.silenced.lock() {
            s.remove(node);
        }
        let i = self
            .names
            .iter()
            .position(|n| n == node)
            .with_context(|| format!("{node} is not a simulated node"))?;
        let (_, ip) = addresses(&self.cfg, i);
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .patch_status(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": node_status(&self.cfg, &ip)})),
            )
            .await
            .with_context(|| format!("posting the status of {node}"))?;
        // Pods deleted while it was away: the "kubelet" confirms their deletion.
        let pods: Api<Pod> = Api::all(self.client.clone());
        let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
        for p in pods.list(&lp).await?.items {
            if p.metadata.deletion_timestamp.is_some() {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                let _ = api
                    .delete(p.metadata.name.as_deref().unwrap_or_default(), &dp)
                    .await;
            }
        }
        Ok(())
    }
}

/// Creates and renews each node's Lease in kube-node-lease, every `lease_every` (a quarter of
/// the Lease's duration, as the kubelet).
async fn renew_leases(
    client: kube::Client,
    names: Vec<String>,
    cfg: SimConfig,
    silenced: Arc<Mutex<HashSet<String>>>,
) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let duration = (cfg.lease_every.as_secs_f64() * 4.0).ceil().max(1.0) as i64;
    let nodes: Api<Node> = Api::all(leases.clone().into_client());
    let mut status_posted = tokio::time::Instant::now();
    loop {
        if let Some(every) = cfg.status_every
            && status_posted.elapsed() >= every
        {
            status_posted = tokio::time::Instant::now();
            futures_util::stream::iter(
                names
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| !is_silenced(&silenced, n)),
            )
            .for_each_concurrent(cfg.parallelism.max(1), |(i, name)| {
                let (nodes, cfg) = (nodes.clone(), cfg.clone());
                async move {
                    let (_, ip) = addresses(&cfg, i);
                    let status = json!({"status": node_status(&cfg, &ip)});
                    if let Err(e) = nodes
                        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                    {
                        tracing::warn!(node = %name, error = %e, "posting the node status failed");
                    }
                }
            })
            .await;
        }
        let now = jiff::Timestamp::now();
        let micro = format!("{}", now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"));
        futures_util::stream::iter(names.iter().filter(|n| !is_silenced(&silenced, n)))
            .for_each_concurrent(cfg.parallelism.max(1), |name| {
                let (leases, micro) = (leases.clone(), micro.clone());
                async move {
                    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": name, "namespace": "kube-node-lease"},
                        "spec": {"holderIdentity": name, "leaseDurationSeconds": duration, "renewTime": micro}});
                    let pp = PatchParams::apply("capstan-sim").force();
                    if let Err(e) = leases.patch(name, &pp, &Patch::Apply(&lease)).await {
                        tracing::warn!(node = %name, error = %e, "renewing the node lease failed");
                    }
                }
            })
            .await;
        tokio::time::sleep(cfg.lease_every).await;
    }
}

/// Plays the kubelet for pods bound to the simulated nodes.
async fn run_pods(
    client: kube::Client,
    nodes: HashMap<String, usize>,
    cfg: SimConfig,
    silenced: Arc<Mutex<HashSet<String>>>,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let started: Arc<Mutex<HashSet<String>>> = Arc::default();
    let next_ip: Arc<Mutex<HashMap<usize, u32>>> = Arc::default();
    let limit = Arc::new(tokio::sync::Semaphore::new(cfg.parallelism.max(1)));
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    loop {
        let event = match events.try_next().await {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "sim: pod watch failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let pods = match event {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => vec![p],
            watcher::Event::Delete(p) => {
                if let Some(uid) = &p.metadata.uid
                    && let Ok(mut s) = started.lock()
                {
                    s.remove(uid);
                }
                continue;
            }
            _ => continue,
        };
        for pod in pods {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let Some(&index) = nodes.get(&node) else {
                continue;
            };
            if is_silenced(&silenced, &node) {
                continue;
            }
            let (client, cfg, started, next_ip, limit) = (
                client.clone(),
                cfg.clone(),
                started.clone(),
                next_ip.clone(),
                limit.clone(),
            );
            tokio::spawn(async move {
                let Ok(_permit) = limit.acquire_owned().await else {
                    return;
                };
                if let Err(e) = handle(&client, &cfg, pod, index, &started, &next_ip).await {
                    tracing::warn!(error = %e, "sim: handling a pod failed");
                }
            });
        }
    }
}

async fn handle(
    client: &kube::Client,
    cfg: &SimConfig,
    pod: Pod,
    index: usize,
    started: &Mutex<HashSet<String>>,
    next_ip: &Mutex<HashMap<usize, u32>>,
) -> Result<()> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if pod.metadata.deletion_timestamp.is_some() {
        // The containers "stop" at once: confirm the deletion, as the kubelet does.
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) | Err(kube::Error::Api(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    let started_already = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| matches!(p, "Running" | "Succeeded" | "Failed"));
    if started_already {
        return Ok(());
    }
    {
        let mut s = started.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if !s.insert(uid.clone()) {
            return Ok(()); // already on its way
        }
    }
    if !cfg.ready_after.is_zero() {
        tokio::time::sleep(cfg.ready_after).await;
    }
    let (cidr, host_ip) = addresses(cfg, index);
    let n = {
        let mut m = next_ip.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let n = m.entry(index).or_insert(1);
        *n = *n % 253 + 1; // .2 .. .254
        *n + 1
    };
    let pod_ip = cidr.replace(".0/24", &format!(".{n}"));
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let containers = container_statuses(&pod, true, json!({"running": {"startedAt": now}}));
    let cond = |ty: &str| json!({"type": ty, "status": "True", "lastTransitionTime": now});
    let status = json!({"status": {
        "phase": "Running",
        "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "startTime": now,
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("ContainersReady"), cond("Ready"), cond("PodScheduled")],
        "containerStatuses": containers,
    }});
    let written = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await;
    if let Err(e) = written {
        // Not started after all: the next event for this pod tries again.
        if let Ok(mut s) = started.lock() {
            s.remove(&uid);
        }
        return Err(e).with_context(|| format!("marking pod {ns}/{name} Running"));
    }
    if let Some((after, code)) = exit_of(&pod) {
        tokio::time::sleep(after).await;
        finish(&api, &pod, code).await?;
    }
    Ok(())
}

/// How a pod asks the simulated kubelet to end it: `sim.capstan.dev/run-ms` (how long its
/// containers run) with `sim.capstan.dev/exit-code` (0 unless set), or exit code 1 when its
/// Job completion index is listed in `sim.capstan.dev/fail-indexes` (`1,3`).
pub const RUN_MS: &str = "sim.capstan.dev/run-ms";
pub const EXIT_CODE: &str = "sim.capstan.dev/exit-code";
pub const FAIL_INDEXES: &str = "sim.capstan.dev/fail-indexes";

fn exit_of(pod: &Pod) -> Option<(Duration, i32)> {
    let a = pod.metadata.annotations.as_ref()?;
    let ms: u64 = a.get(RUN_MS)?.parse().ok()?;
    let mut code: i32 = a.get(EXIT_CODE).and_then(|c| c.parse().ok()).unwrap_or(0);
    let index = a.get("batch.kubernetes.io/job-completion-index");
    if let (Some(list), Some(i)) = (a.get(FAIL_INDEXES), index)
        && list.split(',').any(|x| x.trim() == i)
    {
        code = 1;
    }
    Some((Duration::from_millis(ms), code))
}

/// A status for each of the pod's containers, all in `state`.
fn container_statuses(
    pod: &Pod,
    running: bool,
    state: serde_json::Value,
) -> Vec<serde_json::Value> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    containers
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            json!({"name": c.name, "image": image, "imageID": format!("sim://{image}"),
                "containerID": format!("sim://{uid}/{}", c.name),
                "ready": running, "started": running, "restartCount": 0, "state": state})
        })
        .collect()
}

/// Every container exits with `code`: the pod Succeeded (0) or Failed.
async fn finish(api: &Api<Pod>, pod: &Pod, code: i32) -> Result<()> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let reason = if code == 0 { "Completed" } else { "Error" };
    let state = json!({"terminated": {"exitCode": code, "reason": reason,
        "startedAt": now, "finishedAt": now}});
    let containers = container_statuses(pod, false, state);
    let not_ready = |ty: &str| json!({"type": ty, "status": "False", "reason": "PodCompleted", "lastTransitionTime": now});
    let status = json!({"status": {
        "phase": if code == 0 { "Succeeded" } else { "Failed" },
        "conditions": [not_ready("Ready"), not_ready("ContainersReady")],
        "containerStatuses": containers,
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("finishing pod {name}"))?;
    Ok(())
}
