//! The resource-quota controller (kubernetes/pkg/controller/resourcequota): keeps each
//! ResourceQuota's `status.hard` equal to its spec and `status.used` equal to what its
//! namespace holds. The API server's admission charges every create as it happens; this
//! controller gives back what goes away and corrects any drift:
//! - a quota is recalculated when its `spec.hard` changes (and when it is new), on every
//!   deletion of a pod, Service, ConfigMap, Secret or PersistentVolumeClaim in its namespace and when a pod finishes
//!   (replenishment), and every `SYNC_PERIOD` (Kubernetes' `--resource-quota-sync-period`,
//!   5 min) for everything else (`count/deployments.apps` and the like);
//! - a recalculation never runs because admission charged the quota (a status-only change):
//!   its pod cache could be behind that charge and would hand the budget back too soon;
//! - usage is what `capstan_api::quota` says each object uses: pods from the shared pod
//!   informer (only those the quota's scopes select), every other kind listed from the API
//!   server at the version discovery prefers;
//! - the status is written with the quota's resourceVersion: a charge that landed meanwhile
//!   makes the write conflict and the pass run again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use capstan_api::quota::{self, Usage, format, parse_list};
use futures_util::{StreamExt, stream};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ResourceQuota, ResourceQuotaStatus, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde_json::Value;

use crate::runtime::{Change, Discovery, Reconcile, drive};
use crate::{Error, Manager};

pub const NAME: &str = "resourcequota";

/// How often every quota is recalculated in full.
pub const SYNC_PERIOD: Duration = Duration::from_secs(300);

/// Resource names that pods use (read from the pod informer).
fn pod_resource(name: &str) -> bool {
    matches!(
        name,
        "pods" | "count/pods" | "cpu" | "memory" | "ephemeral-storage"
    ) || name.starts_with("requests.") && name != "requests.storage"
        || name.starts_with("limits.")
}

/// The (group, plural) whose objects make up a quota resource other than pods'.
pub fn counted_kind(name: &str) -> Option<(String, String)> {
    let core = |p: &str| Some((String::new(), p.to_string()));
    match name {
        "services" | "services.nodeports" | "services.loadbalancers" => core("services"),
        "configmaps" | "secrets" | "resourcequotas" | "replicationcontrollers" => core(name),
        "persistentvolumeclaims" | "requests.storage" => core("persistentvolumeclaims"),
        n if n.contains(quota::STORAGE_CLASS_SUFFIX) => core("persistentvolumeclaims"),
        _ => {
            let what = name.strip_prefix("count/")?;
            match what.split_once('.') {
                Some((plural, group)) => Some((group.to_string(), plural.to_string())),
                None => core(what),
            }
        }
    }
}

/// The status a quota should have given what its namespace's objects use (pure).
pub fn status_for(hard_spec: &BTreeMap<String, Quantity>, used: &Usage) -> ResourceQuotaStatus {
    let used = hard_spec
        .keys()
        .map(|k| {
            let v = used.get(k).copied().unwrap_or(0);
            (k.clone(), Quantity(format(k, v)))
        })
        .collect();
    ResourceQuotaStatus {
        hard: Some(hard_spec.clone()),
        used: Some(used),
    }
}

struct QuotaController {
    client: kube::Client,
    pods: Store<Pod>,
    discovery: Discovery,
    clock: crate::runtime::Clock,
}

/// Every quota of `ns` in `store`.
fn quotas_in(store: &Store<ResourceQuota>, ns: &str) -> Vec<ObjectRef<ResourceQuota>> {
    store
        .state()
        .iter()
        .filter(|q| q.metadata.namespace.as_deref() == Some(ns))
        .map(|q| ObjectRef::from_obj(&**q))
        .collect()
}

/// The namespaces where objects of `K` are deleted.
fn deletions<K>(client: &kube::Client) -> impl futures_util::Stream<Item = String> + Send + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<kube::core::PartialObjectMeta<K>> = Api::all(client.clone());
    watcher::watcher(api, watcher::Config::default()).filter_map(|ev| async move {
        match ev {
            Ok(watcher::Event::Delete(m)) => m.metadata.namespace,
            _ => None,
        }
    })
}

/// Runs the controller until dropped.
pub async fn run(m: Arc<Manager>) {
    let quota_informer = m.informers.resource_quotas();
    let pod_informer = m.informers.pods();
    let me = Arc::new(QuotaController {
        client: m.client.clone(),
        pods: pod_informer.store(),
        discovery: Discovery::new(m.client.clone()),
        clock: m.clock,
    });
    // Quotas whose spec changed or whose status has not caught up with it; never a charge.
    let mut seen: HashMap<String, Option<BTreeMap<String, Quantity>>> = HashMap::new();
    let quota_changes = quota_informer.subscribe().filter_map(move |c| {
        let q = c.object().clone();
        let key = crate::podutil::key(&q.metadata);
        let hard = q.spec.as_ref().and_then(|s| s.hard.clone());
        let wanted = match &c {
            Change::Deleted(_) => {
                seen.remove(&key);
                false
            }
            _ => {
                let stale_status = q.status.as_ref().and_then(|s| s.hard.as_ref()) != hard.as_ref();
                let changed = seen.insert(key, hard.clone()).as_ref() != Some(&hard);
                changed || stale_status
            }
        };
        futures_util::future::ready(wanted.then_some(q))
    });
    let store = quota_informer.store();
    let for_pods = store.clone();
    let pod_namespaces = pod_informer.subscribe().filter_map(|c| {
        let p = c.object();
        let freed = matches!(c, Change::Deleted(_))
            || p.metadata.deletion_timestamp.is_some()
            || matches!(crate::podutil::phase(p), "Succeeded" | "Failed");
        futures_util::future::ready(freed.then(|| p.metadata.namespace.clone()).flatten())
    });
    let freed = stream::select_all(vec![
        pod_namespaces.boxed(),
        deletions::<Service>(&m.client).boxed(),
        deletions::<ConfigMap>(&m.client).boxed(),
        deletions::<Secret>(&m.client).boxed(),
        deletions::<PersistentVolumeClaim>(&m.client).boxed(),
    ])
    .flat_map(move |ns| stream::iter(quotas_in(&for_pods, &ns)));
    let controller = Controller::for_shared_stream(quota_changes, store)
        .reconcile_on(freed)
        .with_config(
            kube::runtime::controller::Config::default().debounce(Duration::from_millis(200)),
        );
    pod_informer.wait_synced().await;
    quota_informer.wait_synced().await;
    drive(NAME, controller, me, m.metrics.clone()).await;
}

impl Reconcile<ResourceQuota> for QuotaController {
    async fn reconcile(&self, q: Arc<ResourceQuota>) -> Result<Action, Error> {
        let ns = q.metadata.namespace.clone().unwrap_or_default();
        let name = q.metadata.name.clone().unwrap_or_default();
        let hard_spec = q
            .spec
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default();
        let hard: BTreeSet<&String> = hard_spec.keys().collect();
        let quota_json = serde_json::to_value(&*q).unwrap_or_default();
        let now = self.clock.now();
        let mut used = Usage::new();
        let mut add = |u: Usage| {
            for (k, v) in u {
                if hard.contains(&k) {
                    *used.entry(k).or_default() += v;
                }
            }
        };
        if hard.iter().any(|k| pod_resource(k)) {
            for p in self
                .pods
                .state()
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            {
                let pv = serde_json::to_value(&**p).unwrap_or_default();
                if quota::matches_scopes(&quota_json, "", "pods", &pv) {
                    add(quota::usage("", "pods", &pv, now));
                }
            }
        }
        let kinds: BTreeSet<(String, String)> = hard
            .iter()
            .filter(|k| !pod_resource(k))
            .filter_map(|k| counted_kind(k))
            .filter(|(g, p)| !(g.is_empty() && p == "pods"))
            .collect();
        if !quota::is_scoped(&quota_json) {
            for (group, plural) in kinds {
                for obj in self.list(&group, &plural, &ns).await? {
                    add(quota::usage(&group, &plural, &obj, now));
                }
            }
        }
        let status = status_for(&hard_spec, &used);
        let current = q.status.clone().unwrap_or_default();
        let same = current.hard == status.hard
            && current.used.as_ref().map(parse_used)
                == Some(parse_used(status.used.as_ref().unwrap_or(&BTreeMap::new())));
        if !same {
            let mut updated = (*q).clone();
            updated.status = Some(status);
            let api: Api<ResourceQuota> = Api::namespaced(self.client.clone(), &ns);
            api.replace_status(&name, &PostParams::default(), &updated)
                .await?;
        }
        Ok(Action::requeue(SYNC_PERIOD))
    }
}

/// A resource list as amounts, to compare quantities written differently ("1000m", "1").
fn parse_used(list: &BTreeMap<String, Quantity>) -> Usage {
    let v = serde_json::to_value(list).unwrap_or_default();
    parse_list(&v)
}

impl QuotaController {
    /// The objects of `group`/`plural` in `ns`, as JSON; none when the kind is not served.
    async fn list(&self, group: &str, plural: &str, ns: &str) -> Result<Vec<Value>, Error> {
        let find = |mapper: &crate::runtime::discovery::RestMapper| {
            mapper
                .preferred_with(&["list"])
                .into_iter()
                .find(|m| m.resource.group == group && m.resource.plural == plural && m.namespaced)
        };
        let mut mapping = find(&self.discovery.current());
        if mapping.is_none() {
            mapping = find(&*self.discovery.refresh().await?);
        }
        let Some(mapping) = mapping else {
            return Ok(Vec::new());
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &mapping.resource);
        let list = api.list(&ListParams::default()).await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_resources_map_to_the_kinds_that_use_them() {
        assert_eq!(
            counted_kind("services.nodeports"),
            Some(("".into(), "services".into()))
        );
        assert_eq!(
            counted_kind("count/deployments.apps"),
            Some(("apps".into(), "deployments".into()))
        );
        assert_eq!(
            counted_kind("count/jobs.batch"),
            Some(("batch".into(), "jobs".into()))
        );
        assert_eq!(
            counted_kind("count/configmaps"),
            Some(("".into(), "configmaps".into()))
        );
        assert_eq!(
            counted_kind("requests.storage"),
            Some(("".into(), "persistentvolumeclaims".into()))
        );
        assert_eq!(counted_kind("requests.cpu"), None);
        assert!(
            pod_resource("requests.cpu") && pod_resource("pods") && pod_resource("limits.memory")
        );
        assert!(!pod_resource("requests.storage") && !pod_resource("count/secrets"));
    }

    #[test]
    fn the_status_lists_every_hard_resource_with_its_use() {
        let hard: BTreeMap<String, Quantity> = [
            ("pods".to_string(), Quantity("4".into())),
            ("requests.memory".to_string(), Quantity("1Gi".into())),
        ]
        .into();
        let used = Usage::from([
            ("pods".to_string(), 3000),
            ("requests.memory".to_string(), 256 * 1024 * 1024 * 1000),
        ]);
        let st = status_for(&hard, &used);
        assert_eq!(st.hard.as_ref(), Some(&hard));
        let u = st.used.unwrap();
        assert_eq!(u["pods"].0, "3");
        assert_eq!(u["requests.memory"].0, "256Mi");
        let empty = status_for(&hard, &Usage::new());
        assert_eq!(empty.used.unwrap()["pods"].0, "0");
    }
}
