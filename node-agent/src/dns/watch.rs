//! Feeding the zone: a watcher (list, then watch; relist after 410) on Services and one on
//! EndpointSlices, all namespaces — CoreDNS's `kubernetes` plugin keeps the same two informers.
//! A relist replaces the whole set (so deletions missed while disconnected are dropped); the
//! server is synced once both first lists are in.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use super::server::Shared;
use super::zone::Zone;

/// How one kind of object lands in the zone.
trait ZoneObject:
    kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static
{
    const KIND: &'static str;
    fn reset(zone: &mut Zone, all: &[Self]);
    fn apply(zone: &mut Zone, obj: &Self);
    fn delete(zone: &mut Zone, namespace: &str, name: &str);
}

impl ZoneObject for Service {
    const KIND: &'static str = "Service";
    fn reset(zone: &mut Zone, all: &[Self]) {
        zone.reset_services(all);
    }
    fn apply(zone: &mut Zone, obj: &Self) {
        zone.apply_service(obj);
    }
    fn delete(zone: &mut Zone, namespace: &str, name: &str) {
        zone.delete_service(namespace, name);
    }
}

impl ZoneObject for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    fn reset(zone: &mut Zone, all: &[Self]) {
        zone.reset_slices(all);
    }
    fn apply(zone: &mut Zone, obj: &Self) {
        zone.apply_slice(obj);
    }
    fn delete(zone: &mut Zone, namespace: &str, name: &str) {
        zone.delete_slice(namespace, name);
    }
}

/// Runs both watches until aborted; flips `synced` once both have listed.
pub(super) async fn run(client: kube::Client, shared: Arc<Shared>, synced: watch::Sender<bool>) {
    let (listed_tx, mut listed_rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    let services = tokio::spawn(watch_kind::<Service>(
        client.clone(),
        shared.clone(),
        listed_tx.clone(),
    ));
    let slices = tokio::spawn(watch_kind::<EndpointSlice>(
        client,
        shared.clone(),
        listed_tx,
    ));
    // Aborting this task must stop the watches too.
    let _guards = (AbortOnDrop(services), AbortOnDrop(slices));
    let mut kinds = std::collections::HashSet::new();
    while let Some(kind) = listed_rx.recv().await {
        kinds.insert(kind);
        if kinds.len() == 2 && !shared.synced.swap(true, Ordering::AcqRel) {
            tracing::info!("dns: Services and EndpointSlices listed; answering the cluster zone");
            synced.send_replace(true);
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn watch_kind<K>(
    client: kube::Client,
    shared: Arc<Shared>,
    listed: tokio::sync::mpsc::Sender<&'static str>,
) where
    K: ZoneObject<DynamicType = ()>,
{
    let api: Api<K> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut buffer: Vec<K> = Vec::new();
    while let Some(event) = events.next().await {
        let zone = || shared.zone.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Ok(watcher::Event::Init) => buffer.clear(),
            Ok(watcher::Event::InitApply(obj)) => buffer.push(obj),
            Ok(watcher::Event::InitDone) => {
                K::reset(&mut zone(), &buffer);
                tracing::debug!(kind = K::KIND, count = buffer.len(), "dns: listed");
                buffer = Vec::new();
                let _ = listed.send(K::KIND).await;
            }
            Ok(watcher::Event::Apply(obj)) => K::apply(&mut zone(), &obj),
            Ok(watcher::Event::Delete(obj)) => {
                let meta = obj.meta();
                if let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) {
                    K::delete(&mut zone(), ns, name);
                }
            }
            Err(e) => tracing::warn!(kind = K::KIND, error = %e, "dns: watch error"),
        }
    }
}
