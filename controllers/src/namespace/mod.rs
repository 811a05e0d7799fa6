//! The namespace controller: a namespace being deleted (Terminating, holding the `kubernetes`
//! finalizer in spec.finalizers) has everything inside it deleted — every namespaced resource
//! discovery lists, custom resources included — and, once nothing is left, its finalizer
//! removed through `/finalize`, after which the API server deletes it.
//!
//! While content remains (objects held by finalizers, pods terminating gracefully) the
//! namespace's status conditions say what and why, as Kubernetes' do:
//! NamespaceContentRemaining, NamespaceFinalizersRemaining, NamespaceDeletionContentFailure,
//! NamespaceDeletionDiscoveryFailure.

pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use crate::error::is_not_found;
use crate::runtime::discovery::Mapping;
use crate::runtime::{Discovery, Reconcile, drive};
use crate::{Manager, Result};
use status::{Remaining, conditions};

pub const NAME: &str = "namespace";

/// The finalizer the API server puts on every namespace (spec.finalizers).
pub const FINALIZER: &str = "kubernetes";

struct NamespaceController {
    client: kube::Client,
    discovery: Arc<Discovery>,
    /// Passes made per terminating namespace and when the last one was, for the back-off
    /// (our own status writes wake the reconcile too; they must not make passes faster).
    passes: Mutex<HashMap<String, (u32, std::time::Instant)>>,
}

pub async fn run(m: Arc<Manager>) {
    let me = Arc::new(NamespaceController {
        client: m.client.clone(),
        discovery: m.discovery.clone(),
        passes: Mutex::new(HashMap::new()),
    });
    let controller = Controller::new(
        Api::<Namespace>::all(m.client.clone()),
        watcher::Config::default(),
    );
    drive(NAME, controller, me, m.metrics.clone()).await;
}

impl Reconcile<Namespace> for NamespaceController {
    async fn reconcile(&self, ns: Arc<Namespace>) -> Result<Action> {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let pending = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|x| x == FINALIZER));
        if ns.metadata.deletion_timestamp.is_none() || !pending {
            self.lock_passes().remove(&name);
            return Ok(Action::await_change());
        }
        let passes = self.lock_passes().get(&name).copied();
        if let Some((n, last)) = passes {
            let wait = pass_interval(n).saturating_sub(last.elapsed());
            if !wait.is_zero() {
                return Ok(Action::requeue(wait));
            }
        }
        let remaining = self.delete_content(&name).await?;
        let conds = conditions(&remaining, ns.status.as_ref());
        let api: Api<Namespace> = Api::all(self.client.clone());
        if let Some(conds) = conds {
            match api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"conditions": conds}})),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
                Err(e) => return Err(e.into()),
            }
        }
        if !remaining.is_empty() {
            // Content is going (graceful pods, other controllers' finalizers): look again soon,
            // backing off from 1 s to 15 s.
            let mut passes = self.lock_passes();
            let entry = passes.entry(name).or_insert((0, std::time::Instant::now()));
            *entry = (entry.0.saturating_add(1), std::time::Instant::now());
            return Ok(Action::requeue(pass_interval(entry.0)));
        }
        self.lock_passes().remove(&name);
        // Empty: drop our finalizer (the API server deletes the namespace when none is left).
        let mut finalized = (*ns).clone();
        if let Some(spec) = finalized.spec.as_mut() {
            spec.finalizers = Some(
                spec.finalizers
                    .iter()
                    .flatten()
                    .filter(|f| f.as_str() != FINALIZER)
                    .cloned()
                    .collect(),
            );
        }
        match api
            .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
            .await
        {
            Ok(_) => {
                tracing::info!(namespace = %name, "namespace emptied and finalized");
                Ok(Action::await_change())
            }
            Err(e) if is_not_found(&e) => Ok(Action::await_change()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The least time between two deletion passes over one namespace after `n` passes: 1 s
/// doubling to 15 s.
fn pass_interval(n: u32) -> Duration {
    Duration::from_millis(500u64 << n.min(5)).min(Duration::from_secs(15))
}

impl NamespaceController {
    fn lock_passes(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, std::time::Instant)>> {
        self.passes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One deletion pass over every namespaced resource; what is still there after it.
    async fn delete_content(&self, ns: &str) -> Result<Remaining> {
        let mapper = self.discovery.refresh().await?;
        let mut remaining = Remaining {
            discovery_failures: mapper.failed.clone(),
            ..Default::default()
        };
        let resources: Vec<Arc<Mapping>> = mapper
            .preferred_with(&["list", "delete"])
            .into_iter()
            .filter(|m| m.namespaced)
            .collect();
        for m in resources {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), ns, &m.resource);
            let dp = DeleteParams::background();
            let deleted = if m.supports(&["deletecollection"]) {
                api.delete_collection(&dp, &ListParams::default())
                    .await
                    .map(|_| ())
            } else {
                self.delete_each(&api, &dp).await
            };
            if let Err(e) = deleted
                && !is_not_found(&e)
            {
                remaining.failures.push(format!("{}: {e}", m.key()));
            }
            match api.list_metadata(&ListParams::default()).await {
                Ok(left) if !left.items.is_empty() => {
                    let resource = format!("{}.{}", m.resource.plural, m.resource.group);
                    remaining.resources.insert(resource, left.items.len());
                    for o in &left.items {
                        for f in o.metadata.finalizers.iter().flatten() {
                            *remaining.finalizers.entry(f.clone()).or_insert(0) += 1;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => remaining.failures.push(format!("{}: {e}", m.key())),
            }
        }
        Ok(remaining)
    }

    async fn delete_each(
        &self,
        api: &Api<DynamicObject>,
        dp: &DeleteParams,
    ) -> Result<(), kube::Error> {
        for o in api.list_metadata(&ListParams::default()).await?.items {
            if let Some(name) = &o.metadata.name {
                match api.delete(name, dp).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}
