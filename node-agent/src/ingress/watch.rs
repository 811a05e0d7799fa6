//! Feeding the proxy: a watcher (list, then watch; relist after 410) on Ingresses, Services,
//! EndpointSlices and `kubernetes.io/tls` Secrets in every namespace, into [`Objects`]; every
//! change wakes the builder, which makes a new [`Snapshot`](super::state::Snapshot) and swaps
//! it in (changes that arrive while one is built are folded into the next). The proxy counts
//! as synced once all four first lists are in.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

use super::state::{Key, Objects};
use super::{Shared, status};

/// Where one kind lands in [`Objects`].
trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    fn map(objs: &mut Objects) -> &mut BTreeMap<Key, Self>;
    fn config() -> watcher::Config {
        watcher::Config::default()
    }
}

impl Watched for Ingress {
    const KIND: &'static str = "Ingress";
    fn map(objs: &mut Objects) -> &mut BTreeMap<Key, Self> {
        &mut objs.ingresses
    }
}

impl Watched for Service {
    const KIND: &'static str = "Service";
    fn map(objs: &mut Objects) -> &mut BTreeMap<Key, Self> {
        &mut objs.services
    }
}

impl Watched for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    fn map(objs: &mut Objects) -> &mut BTreeMap<Key, Self> {
        &mut objs.slices
    }
}

impl Watched for Secret {
    const KIND: &'static str = "Secret";
    fn map(objs: &mut Objects) -> &mut BTreeMap<Key, Self> {
        &mut objs.secrets
    }
    /// Only certificates: the proxy never holds other Secrets.
    fn config() -> watcher::Config {
        watcher::Config::default().fields("type=kubernetes.io/tls")
    }
}

fn key_of<K: kube::Resource>(obj: &K) -> Option<Key> {
    let m = obj.meta();
    Some((m.namespace.clone()?, m.name.clone()?))
}

/// What the watchers share with the builder.
#[derive(Debug, Default)]
struct Feed {
    objects: Mutex<Objects>,
    listed: Mutex<std::collections::BTreeSet<&'static str>>,
    changed: Notify,
}

/// Runs the four watches and the builder until aborted; publishes the Ingresses' status after
/// each build and every status resync.
pub(super) async fn run(client: kube::Client, shared: Arc<Shared>) {
    let feed = Arc::new(Feed::default());
    let tasks = [
        tokio::spawn(watch_kind::<Ingress>(client.clone(), feed.clone())),
        tokio::spawn(watch_kind::<Service>(client.clone(), feed.clone())),
        tokio::spawn(watch_kind::<EndpointSlice>(client.clone(), feed.clone())),
        tokio::spawn(watch_kind::<Secret>(client.clone(), feed.clone())),
    ];
    let _guards = tasks.map(crate::agent::AbortOnDrop);
    let mut publishing: Option<crate::agent::AbortOnDrop> = None;
    loop {
        let changed = tokio::select! {
            _ = feed.changed.notified() => true,
            _ = tokio::time::sleep(shared.config.status_resync) => false,
        };
        if feed.listed.lock().unwrap_or_else(|e| e.into_inner()).len() < 4 {
            continue;
        }
        // Built under the lock (a watcher waits for one build) rather than from a copy of
        // every object.
        let objects = feed.objects.lock().unwrap_or_else(|e| e.into_inner());
        if changed {
            shared.rebuild(&objects);
        }
        let addresses = &shared.config.publish_addresses;
        let keys = status::pending(&objects, &shared.filter, addresses);
        drop(objects);
        if !keys.is_empty() && publishing.as_ref().is_none_or(|t| t.0.is_finished()) {
            let task = status::publish(client.clone(), keys);
            publishing = Some(crate::agent::AbortOnDrop(tokio::spawn(task)));
        }
    }
}

async fn watch_kind<K: Watched>(client: kube::Client, feed: Arc<Feed>) {
    let api: Api<K> = Api::all(client);
    let mut events = watcher(api, K::config()).default_backoff().boxed();
    let mut buffer: BTreeMap<Key, K> = BTreeMap::new();
    while let Some(event) = events.next().await {
        let objects = || feed.objects.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Ok(watcher::Event::Init) => buffer.clear(),
            Ok(watcher::Event::InitApply(obj)) => {
                if let Some(k) = key_of(&obj) {
                    buffer.insert(k, obj);
                }
            }
            Ok(watcher::Event::InitDone) => {
                *K::map(&mut objects()) = std::mem::take(&mut buffer);
                feed.listed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(K::KIND);
                tracing::debug!(kind = K::KIND, "ingress: listed");
            }
            Ok(watcher::Event::Apply(obj)) => {
                if let Some(k) = key_of(&obj) {
                    K::map(&mut objects()).insert(k, obj);
                }
            }
            Ok(watcher::Event::Delete(obj)) => {
                if let Some(k) = key_of(&obj) {
                    K::map(&mut objects()).remove(&k);
                }
            }
            Err(e) => {
                tracing::warn!(kind = K::KIND, error = %e, "ingress: watch error");
                continue;
            }
        }
        feed.changed.notify_one();
    }
}
