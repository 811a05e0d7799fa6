//! An HA control plane (issue 26) with real processes on one host: a 3-member etcd cluster
//! (real etcd), two API servers on it (`capstan up --store etcd --controllers none --runtime
//! none`, sharing the cluster CA and the ServiceAccount signing key), two leader-elected
//! `capstan controllers`, both on the first server's kubeconfig with `--failover-servers` naming
//! the second (so the standby has to fail over to lead), and `capstan sim` nodes. While a
//! Deployment rolls and a client writes 300 ConfigMaps through both API servers (moving to
//! the other server when one fails, retrying), one etcd member, the first API server and the
//! leading controller manager are killed with -9. Then: every acknowledged write is there and
//! none was lost, a watch on the surviving server saw each ConfigMap added exactly once
//! (resuming from its last resourceVersion, never relisting), the standby took the Lease
//! within the lease duration plus 2 s, and the rollout completed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use capstan_testkit::etcd_cluster::EtcdCluster;
use capstan_testkit::{CapstanUp, capstan_bin, eventually, kubectl_ok, temp_dir};
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

const WRITES: usize = 300;
const LEASE_SECONDS: u64 = 4;
const NS: &str = "ha";

/// A child killed (-9) by pid on drop.
struct Proc(Child);

impl Proc {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(args: &[&str], log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(capstan_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn api_server(dir: &Path, endpoints: &str) -> CapstanUp {
    let data = dir.display().to_string();
    CapstanUp::start(
        capstan_bin(),
        &[
            "--data-dir",
            &data,
            "--store",
            "etcd",
            "--etcd-endpoints",
            endpoints,
            "--controllers",
            "none",
        ],
    )
    .unwrap()
}

/// A controller manager on the first server's kubeconfig, moving to `failover` when that one
/// stops answering.
fn manager(kubeconfig: &Path, failover: &str, identity: &str, log: &Path) -> Proc {
    let kc = kubeconfig.display().to_string();
    let lease = LEASE_SECONDS.to_string();
    spawn(
        &[
            "--kubeconfig",
            &kc,
            "--failover-servers",
            failover,
            "controllers",
            "--controllers",
            "deployment,replicaset,scheduler,garbagecollector,serviceaccount",
            "--leader-elect-identity",
            identity,
            "--leader-elect-lease-seconds",
            &lease,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        log,
    )
}

fn deployment() -> &'static str {
    r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: ha}
spec:
  replicas: 6
  strategy: {rollingUpdate: {maxUnavailable: 1, maxSurge: 1}}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: "example/web:1"}]
"#
}

/// The Deployment's status when its spec has `image` and the controllers have seen it.
fn observed(kc: &Path, image: &str) -> Option<serde_json::Value> {
    let d = capstan_testkit::kubectl_json(kc, &["get", "deploy", "web", "-n", NS])?;
    (d["spec"]["template"]["spec"]["containers"][0]["image"] == image
        && d["status"]["observedGeneration"] == d["metadata"]["generation"])
        .then(|| d["status"].clone())
}

/// Whether the Deployment has rolled out `image` fully.
fn rolled_out(kc: &Path, image: &str) -> bool {
    observed(kc, image).is_some_and(|s| {
        s["updatedReplicas"] == 6 && s["availableReplicas"] == 6 && s["replicas"] == 6
    })
}

/// Whether the controllers have started rolling `image` out and not finished.
fn rolling(kc: &Path, image: &str) -> bool {
    observed(kc, image).is_some_and(|s| {
        s["updatedReplicas"]
            .as_i64()
            .is_some_and(|n| (1..6).contains(&n))
    })
}

#[test]
fn the_cluster_converges_and_loses_nothing_when_a_member_a_server_and_the_leader_die() {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("ha: {:>6.1}s {what}", t0.elapsed().as_secs_f64());
    let mut etcd = EtcdCluster::start(3).unwrap();
    phase("etcd up");
    let endpoints = etcd.endpoints();
    let dir = temp_dir("capstan-ha-").unwrap();
    let (d1, d2): (PathBuf, PathBuf) = (dir.path().join("s1"), dir.path().join("s2"));
    std::fs::create_dir_all(&d1).unwrap();
    let mut up1 = Some(api_server(&d1, &endpoints));
    // The second server signs and checks ServiceAccount tokens with the first one's key.
    std::fs::create_dir_all(d2.join("pki")).unwrap();
    std::fs::copy(
        d1.join("pki/service-account.key"),
        d2.join("pki/service-account.key"),
    )
    .unwrap();
    let up2 = api_server(&d2, &endpoints);
    phase("API servers up");
    let (kc1, kc2) = (d1.join("kubeconfig"), d2.join("kubeconfig"));
    let servers = [
        format!("https://{}", up1.as_ref().unwrap().addr),
        format!("https://{}", up2.addr),
    ];
    let kc2_s = kc2.display().to_string();
    let _sim = spawn(
        // Pods Ready a second after they start: a rollout of 6 takes several seconds, so
        // the failures below land in the middle of it.
        &[
            "--kubeconfig",
            &kc2_s,
            "sim",
            "--nodes",
            "3",
            "--ready-after-ms",
            "1000",
        ],
        &dir.path().join("sim.log"),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pki = capstan_testkit::pki::pki();
    let clients: Vec<kube::Client> = rt.block_on(async {
        let mut out = Vec::new();
        for s in &servers {
            out.push(pki.client(s, None).await.unwrap());
        }
        out
    });
    let leases: Api<Lease> = Api::namespaced(clients[1].clone(), "kube-system");

    // The first manager leads; the second stands by.
    // Both managers use the first server's kubeconfig and fail over to the second.
    let mut cm_a = manager(&kc1, &servers[1], "cm-a", &dir.path().join("cm-a.log"));
    rt.block_on(async {
        capstan_testkit::until(Duration::from_secs(30), "cm-a leading", || async {
            capstan_testkit::manager_lease_holder(&leases)
                .await
                .as_deref()
                == Some("cm-a")
        })
        .await;
    });
    let _cm_b = manager(&kc1, &servers[1], "cm-b", &dir.path().join("cm-b.log"));
    phase("cm-a leads");

    kubectl_ok(&kc2, &["create", "namespace", NS], None);
    kubectl_ok(&kc2, &["apply", "-f", "-"], Some(deployment()));
    eventually(Duration::from_secs(60), "the first rollout", || {
        rolled_out(&kc2, "example/web:1")
    })
    .unwrap();
    phase("first rollout done");

    // A watch on the second server from now on, resuming from its last resourceVersion.
    let cms: Api<ConfigMap> = Api::namespaced(clients[1].clone(), NS);
    let start_rv = rt
        .block_on(cms.list_metadata(&ListParams::default()))
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let seen: Arc<std::sync::Mutex<BTreeMap<String, usize>>> = Arc::default();
    let watch = {
        let (cms, seen) = (cms.clone(), seen.clone());
        rt.spawn(async move {
            let mut rv = start_rv;
            loop {
                let wp = WatchParams::default().timeout(30);
                let Ok(stream) = cms.watch(&wp, &rv).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut stream = stream.boxed();
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(WatchEvent::Added(cm)) => {
                            rv = cm.metadata.resource_version.clone().unwrap_or(rv);
                            let name = cm.metadata.name.unwrap_or_default();
                            *seen.lock().unwrap().entry(name).or_default() += 1;
                        }
                        Ok(WatchEvent::Modified(o)) | Ok(WatchEvent::Deleted(o)) => {
                            rv = o.metadata.resource_version.unwrap_or(rv);
                        }
                        Ok(WatchEvent::Bookmark(b)) => rv = b.metadata.resource_version,
                        Ok(WatchEvent::Error(e)) => panic!("the watch failed: {e:?}"),
                        Err(_) => break,
                    }
                }
            }
        })
    };

    // The writer: through both servers in turn, moving on when one fails, retrying each
    // write until it is acknowledged (an AlreadyExists after a lost answer counts).
    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (clients, done) = (clients.clone(), done.clone());
        rt.spawn(async move {
            let mut server = 0;
            let mut failovers = 0;
            for i in 0..WRITES {
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("cm-{i:03}")},
                    "data": {"i": i.to_string()},
                }))
                .unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let api: Api<ConfigMap> = Api::namespaced(clients[server].clone(), NS);
                    let r = tokio::time::timeout(
                        Duration::from_secs(5),
                        api.create(&PostParams::default(), &cm),
                    )
                    .await;
                    match r {
                        Ok(Ok(_)) => break,
                        Ok(Err(kube::Error::Api(s))) if s.code == 409 => break,
                        _ => {
                            assert!(Instant::now() < deadline, "cm-{i:03} never written");
                            server = (server + 1) % clients.len();
                            failovers += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                server = (server + 1) % clients.len();
                done.store(i + 1, Ordering::Relaxed);
            }
            failovers
        })
    };

    // The failures while the writes go on: an etcd member; then a rollout, and once the
    // leader has started it (a new ReplicaSet with pods, which take a second each to be
    // Ready, so it is mid-way), the first API server and the leader.
    let at = |n: usize| {
        eventually(Duration::from_secs(60), "writes progressing", || {
            done.load(Ordering::Relaxed) >= n
        })
        .unwrap()
    };
    at(60);
    phase("killing an etcd member");
    etcd.kill(0);
    at(120);
    kubectl_ok(
        &kc2,
        &["set", "image", "deploy/web", "-n", NS, "c=example/web:2"],
        None,
    );
    eventually(Duration::from_secs(30), "the rollout started", || {
        rolling(&kc2, "example/web:2")
    })
    .unwrap();
    if let Some(mut up) = up1.take() {
        let _ = up.child.kill();
        let _ = up.child.wait();
    }
    phase("killed the first API server; killing the leader mid-rollout");
    let killed_leader = Instant::now();
    cm_a.kill();
    let failover = rt.block_on(async {
        capstan_testkit::until(
            Duration::from_secs(LEASE_SECONDS + 10),
            "cm-b leading",
            || async {
                capstan_testkit::manager_lease_holder(&leases)
                    .await
                    .as_deref()
                    == Some("cm-b")
            },
        )
        .await;
        killed_leader.elapsed()
    });
    assert!(
        failover <= Duration::from_secs(LEASE_SECONDS + 2),
        "the standby took over after {failover:?}"
    );

    phase("cm-b leads");
    // A `capstan` command on the dead server's kubeconfig answers through the other.
    let get = Command::new(capstan_bin())
        .arg("--kubeconfig")
        .arg(&kc1)
        .args([
            "--failover-servers",
            &servers[1],
            "get",
            "deploy",
            "-n",
            NS,
            "-o",
            "name",
        ])
        .output()
        .unwrap();
    assert!(
        get.status.success() && String::from_utf8_lossy(&get.stdout).contains("web"),
        "capstan get through the failover front: {}",
        String::from_utf8_lossy(&get.stderr)
    );
    let failovers = rt.block_on(writer).unwrap();
    phase("writes done");
    // Every write is there, exactly once, and the watch saw each added once.
    let names: Vec<String> = rt
        .block_on(cms.list_metadata(&ListParams::default()))
        .unwrap()
        .items
        .into_iter()
        .filter_map(|m| m.metadata.name)
        .collect();
    assert_eq!(names.len(), WRITES, "{names:?}");
    rt.block_on(async {
        capstan_testkit::until(
            Duration::from_secs(20),
            "the watch saw every write",
            || async { seen.lock().unwrap().len() == WRITES },
        )
        .await;
    });
    let twice: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n != 1)
        .map(|(k, n)| format!("{k}×{n}"))
        .collect();
    assert!(twice.is_empty(), "seen more than once: {twice:?}");
    watch.abort();

    let rolled = eventually(Duration::from_secs(90), "the rollout completing", || {
        rolled_out(&kc2, "example/web:2")
    });
    assert!(
        rolled.is_ok(),
        "{rolled:?}; cm-b log:\n{}",
        std::fs::read_to_string(dir.path().join("cm-b.log")).unwrap_or_default()
    );
    phase("second rollout done");
    assert!(etcd.healthy(1) && etcd.healthy(2));
    eprintln!(
        "ha: {WRITES} writes ({failovers} moves to the other server), leader failover {failover:?}"
    );
}
