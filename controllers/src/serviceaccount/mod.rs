//! Two small controllers every namespace needs before its pods can run (kube-controller-
//! manager's `serviceaccount` and `root-ca-certificate-publisher`):
//!
//! - [`NAME`]: a `default` ServiceAccount in each active namespace, made again when deleted —
//!   the ServiceAccount admission plugin refuses pods whose account is missing;
//! - [`ROOT_CA_NAME`]: a `kube-root-ca.crt` ConfigMap with the cluster CA (`--root-ca-file`)
//!   in each active namespace, put back when changed — a pod's projected token volume takes
//!   its `ca.crt` from it.
//!
//! Both are level-triggered: a pass over what the informers hold runs on any change (within
//! 50 ms, batched) and every 5 minutes. What to write is decided in [`plan`].

pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use crate::Manager;
use crate::runtime::Informer;
use plan::RootCa;

pub const NAME: &str = "serviceaccount";
pub const ROOT_CA_NAME: &str = "root-ca-certificate-publisher";

/// How often a full pass runs without any change seen.
const RESYNC: Duration = Duration::from_secs(300);
/// Changes arriving this close together are handled in one pass.
const BATCH: Duration = Duration::from_millis(50);

/// An informer of this controller's own (field-selected), stopped with it: its watch must not
/// outlive the controller (a stopping API server waits for open watches).
struct Owned<K: crate::runtime::Watchable>(Arc<Informer<K>>, tokio::task::JoinHandle<()>);

impl<K: crate::runtime::Watchable> Drop for Owned<K> {
    fn drop(&mut self) {
        self.1.abort();
    }
}

impl<K: crate::runtime::Watchable> std::ops::Deref for Owned<K> {
    type Target = Informer<K>;
    fn deref(&self) -> &Informer<K> {
        &self.0
    }
}

fn informer<K: crate::runtime::Watchable>(api: Api<K>, fields: Option<&str>) -> Owned<K> {
    let mut config = watcher::Config::default();
    if let Some(f) = fields {
        config = config.fields(f);
    }
    let inf = Informer::new(api, config);
    let task = tokio::spawn(inf.clone().run());
    Owned(inf, task)
}

/// Waits for a change from either stream (or the resync period), then a short batch window.
async fn next_pass<A, B>(a: &mut A, b: &mut B)
where
    A: futures_util::Stream + Unpin,
    B: futures_util::Stream + Unpin,
{
    tokio::select! {
        _ = a.next() => {}
        _ = b.next() => {}
        _ = tokio::time::sleep(RESYNC) => {}
    }
    tokio::time::sleep(BATCH).await;
}

fn ignorable(e: &kube::Error) -> bool {
    // Already there (another pass or manager made it), or the namespace began terminating.
    matches!(e, kube::Error::Api(s) if s.code == 409 || (s.code == 403 && s.message.contains("terminat")))
}

/// Runs the `default` ServiceAccount controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let namespaces = informer(Api::<Namespace>::all(m.client.clone()), None);
    let accounts = informer(
        Api::<ServiceAccount>::all(m.client.clone()),
        Some(&format!("metadata.name={}", plan::DEFAULT_ACCOUNT)),
    );
    namespaces.wait_synced().await;
    accounts.wait_synced().await;
    let (mut ns_changes, mut sa_changes) =
        (namespaces.subscribe().boxed(), accounts.subscribe().boxed());
    loop {
        let active = plan::active(&namespaces.store().state());
        for ns in plan::missing_accounts(&active, &accounts.store().state()) {
            let sa: ServiceAccount = serde_json::from_value(
                json!({"metadata": {"name": plan::DEFAULT_ACCOUNT, "namespace": ns}}),
            )
            .expect("a valid ServiceAccount");
            match Api::<ServiceAccount>::namespaced(m.client.clone(), &ns)
                .create(&PostParams::default(), &sa)
                .await
            {
                Ok(_) => tracing::info!(namespace = %ns, "created the default service account"),
                Err(e) if ignorable(&e) => {}
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "creating the default service account failed")
                }
            }
        }
        next_pass(&mut ns_changes, &mut sa_changes).await;
    }
}

/// Runs the root CA publisher until dropped (nothing to publish without a CA).
pub async fn run_root_ca(m: Arc<Manager>) {
    let Some(ca) = m.root_ca.clone() else {
        tracing::info!("no --root-ca-file: kube-root-ca.crt is not published");
        return;
    };
    let namespaces = informer(Api::<Namespace>::all(m.client.clone()), None);
    let maps = informer(
        Api::<ConfigMap>::all(m.client.clone()),
        Some(&format!("metadata.name={}", plan::ROOT_CA)),
    );
    namespaces.wait_synced().await;
    maps.wait_synced().await;
    let (mut ns_changes, mut cm_changes) =
        (namespaces.subscribe().boxed(), maps.subscribe().boxed());
    loop {
        let active = plan::active(&namespaces.store().state());
        for change in plan::root_ca_changes(&active, &maps.store().state(), &ca) {
            let (ns, rv) = match &change {
                RootCa::Create(ns) => (ns, None),
                RootCa::Update {
                    namespace,
                    resource_version,
                } => (namespace, Some(resource_version.clone())),
            };
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {
                    "name": plan::ROOT_CA,
                    "namespace": ns,
                    "resourceVersion": rv,
                    "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."},
                },
                "data": {plan::CA_KEY: ca},
            }))
            .expect("a valid ConfigMap");
            let api = Api::<ConfigMap>::namespaced(m.client.clone(), ns);
            let r = match rv {
                None => api.create(&PostParams::default(), &cm).await.map(|_| ()),
                Some(_) => api
                    .replace(plan::ROOT_CA, &PostParams::default(), &cm)
                    .await
                    .map(|_| ()),
            };
            match r {
                Ok(()) => tracing::info!(namespace = %ns, "published kube-root-ca.crt"),
                Err(e) if ignorable(&e) => {}
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "publishing kube-root-ca.crt failed")
                }
            }
        }
        next_pass(&mut ns_changes, &mut cm_changes).await;
    }
}
