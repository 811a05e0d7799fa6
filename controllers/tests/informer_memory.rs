//! What the controllers' shared pod informer keeps per pod, measured: a Deployment's pods made
//! by the real controllers, bound by the scheduler and run by simulated nodes, read from the
//! informer's store and straight from the API server. The store must keep everything a
//! controller decides on, and take a fraction of the memory of the pod as the server sends it
//! (its managedFields are most of that).

// Measuring needs a counting allocator, and implementing `GlobalAlloc` is unsafe: this test's
// allocator only counts and hands every call to the system allocator unchanged.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use capstan_controllers::Informers;
use capstan_testkit::sim::SimConfig;
use capstan_testkit::until;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

/// Counts the bytes allocated and not yet freed by the current thread only, so the in-process
/// API server's threads do not blur a measurement.
struct ThreadCounting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|c| c.set(c.get() + delta));
}

unsafe impl GlobalAlloc for ThreadCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: ThreadCounting = ThreadCounting;

/// Bytes one more copy of `x` holds: its own size plus everything it allocates.
fn footprint<T: Clone>(x: &T) -> usize {
    const COPIES: usize = 64;
    let mut copies = Vec::with_capacity(COPIES);
    let before = LIVE.with(Cell::get);
    for _ in 0..COPIES {
        copies.push(x.clone());
    }
    let held = LIVE.with(Cell::get) - before;
    drop(copies);
    held as usize / COPIES + std::mem::size_of::<T>()
}

fn deployment() -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", "tier": "frontend"}},
                "spec": {
                    "containers": [{
                        "name": "web",
                        "image": "registry.example/web:1.4.2",
                        "command": ["/bin/web"],
                        "args": ["--listen=:8080", "--log-format=json", "--cache-dir=/cache"],
                        "env": [
                            {"name": "MODE", "value": "production"},
                            {"name": "CACHE_DIR", "value": "/cache"},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        ],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                    }],
                    "volumes": [
                        {"name": "cache", "emptyDir": {}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}},
                    ],
                    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}],
                },
            },
        },
    }))
    .expect("a Deployment")
}

#[tokio::test]
async fn the_pod_informer_keeps_what_controllers_read_in_a_fraction_of_the_memory() {
    let env = common::sim_cluster(
        SimConfig {
            ready_after: Duration::from_millis(10),
            ..SimConfig::roomy(2)
        },
        &["deployment", "replicaset", "scheduler"],
    )
    .await;
    let c = &env.c;
    // A claim bound to a volume, for the pods to mount beside their emptyDir.
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "web-data"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "hostPath": {"path": "/tmp/web-data"},
        },
    }))
    .unwrap();
    Api::<PersistentVolume>::all(c.client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .unwrap();
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "web-data", "namespace": "default"},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}},
            "volumeName": "web-data",
        },
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(c.client.clone(), "default")
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap();
    Api::<Deployment>::namespaced(c.client.clone(), "default")
        .create(&PostParams::default(), &deployment())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let running = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    until(Duration::from_secs(30), "3 pods running", || async {
        let list = pods.list(&ListParams::default()).await.unwrap();
        list.items.len() == 3 && list.items.iter().all(running)
    })
    .await;

    let informers = Informers::new(c.client.clone());
    let informer = informers.pods();
    informer.wait_synced().await;
    until(
        Duration::from_secs(10),
        "the store holds the running pods",
        || async {
            informer
                .store()
                .state()
                .iter()
                .filter(|p| running(p))
                .count()
                == 3
        },
    )
    .await;

    for cached in informer.store().state() {
        let name = cached.metadata.name.clone().unwrap();
        let full = pods.get(&name).await.unwrap();
        assert!(
            full.metadata
                .managed_fields
                .as_ref()
                .is_some_and(|m| !m.is_empty()),
            "the server records who wrote {name}: {:?}",
            full.metadata.managed_fields
        );

        // Dropped: what only the node agent reads.
        assert_eq!(cached.metadata.managed_fields, None);
        let (c0, f0) = (
            &cached.spec.as_ref().unwrap().containers[0],
            &full.spec.as_ref().unwrap().containers[0],
        );
        assert!(c0.env.is_none() && c0.command.is_none() && c0.args.is_none());
        assert!(c0.readiness_probe.is_none() && c0.liveness_probe.is_none());
        assert!(c0.volume_mounts.is_none());
        assert!(f0.env.is_some() && f0.readiness_probe.is_some() && f0.volume_mounts.is_some());
        let volumes = |p: &Pod| -> Vec<String> {
            let spec = p.spec.as_ref().unwrap();
            spec.volumes
                .iter()
                .flatten()
                .map(|v| v.name.clone())
                .collect()
        };
        assert_eq!(volumes(&cached), ["data"], "only the claim is kept");
        assert!(volumes(&full).contains(&"cache".to_string()));

        // Kept: everything a controller decides on.
        let mut expected = full.clone();
        expected.metadata.managed_fields = None;
        assert_eq!(cached.metadata, expected.metadata);
        assert_eq!(cached.status, full.status);
        let (cs, fs) = (cached.spec.as_ref().unwrap(), full.spec.as_ref().unwrap());
        assert_eq!(cs.node_name, fs.node_name);
        assert!(cs.node_name.is_some());
        assert_eq!(cs.tolerations, fs.tolerations);
        let claim = |p: &Pod| {
            let spec = p.spec.as_ref().unwrap();
            let v = spec.volumes.iter().flatten().find(|v| v.name == "data");
            v.and_then(|v| v.persistent_volume_claim.clone())
        };
        assert_eq!(claim(&cached), claim(&full));
        assert!(claim(&cached).is_some());
        assert_eq!(cs.affinity, fs.affinity);
        assert_eq!(cs.priority, fs.priority);
        assert_eq!(
            (&c0.name, &c0.image, &c0.ports, &c0.resources),
            (&f0.name, &f0.image, &f0.ports, &f0.resources)
        );

        let (full_bytes, kept_bytes) = (footprint(&full), footprint(&*cached));
        let mut no_managed = full.clone();
        no_managed.metadata.managed_fields = None;
        let no_managed_bytes = footprint(&no_managed);
        let json_bytes = serde_json::to_vec(&full).unwrap().len();
        println!(
            "{name}: {json_bytes} bytes of JSON; typed as sent {full_bytes} bytes, without managedFields {no_managed_bytes}, as the informer keeps it {kept_bytes}"
        );
        assert!(
            kept_bytes * 2 < full_bytes,
            "the informer keeps {kept_bytes} bytes of a {full_bytes}-byte pod"
        );
    }
}
