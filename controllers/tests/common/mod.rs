//! What the controllers' cluster tests share: a controller manager running the named
//! controllers in the background, and an in-process API server with simulated nodes under it.
// Each test crate uses only some of these.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;

use capstan_controllers::Manager;
use capstan_testkit::sim::{SimConfig, SimNodes};
use capstan_testkit::{Background, TestCluster};

/// Runs `controllers` on `m` until dropped.
pub fn run(m: Arc<Manager>, controllers: &[&str]) -> Background {
    let names: BTreeSet<String> = controllers.iter().map(|s| s.to_string()).collect();
    Background::spawn(async move {
        m.run(&names).await.unwrap();
    })
}

/// A manager of `controllers` with default settings against `c`.
pub fn manager(c: &TestCluster, controllers: &[&str]) -> Background {
    run(
        Manager::new(c.client.clone(), &prometheus::Registry::new()),
        controllers,
    )
}

/// An API server, simulated nodes, and a manager running `controllers` against them.
pub struct SimCluster {
    /// Stopped first, before the cluster it talks to (fields drop in order).
    pub _manager: Background,
    pub c: TestCluster,
    pub _sim: SimNodes,
}

pub async fn sim_cluster(config: SimConfig, controllers: &[&str]) -> SimCluster {
    let c = TestCluster::start().await;
    let sim = SimNodes::start(c.client.clone(), config).await.unwrap();
    SimCluster {
        _manager: manager(&c, controllers),
        c,
        _sim: sim,
    }
}

/// A Deployment's `spec.replicas` in `default` (-1 when it cannot be read).
pub async fn deployment_replicas(c: &TestCluster, name: &str) -> i32 {
    kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(c.client.clone(), "default")
        .get(name)
        .await
        .ok()
        .and_then(|d| d.spec?.replicas)
        .unwrap_or(-1)
}

/// Whether `default` holds an Event of `reason` whose message satisfies `message`.
pub async fn has_event(c: &TestCluster, reason: &str, message: impl Fn(&str) -> bool) -> bool {
    kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(c.client.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|e| e.reason.as_deref() == Some(reason) && e.message.as_deref().is_some_and(&message))
}
