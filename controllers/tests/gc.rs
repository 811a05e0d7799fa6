//! The garbage collector and the namespace controller against a real in-process API server:
//! every propagation policy, blockOwnerDeletion, owners that vanished while the collector was
//! down, custom resources as owners, and namespace deletion.

use std::time::Duration;

use capstan_controllers::Manager;
use capstan_testkit::{TestCluster, until};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

struct Env {
    c: TestCluster,
    manager: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop_manager();
    }
}

impl Env {
    async fn start(controllers: &[&str]) -> Env {
        let mut env = Env::without_manager().await;
        env.start_manager(controllers);
        env
    }

    async fn without_manager() -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        Env {
            c: TestCluster::start().await,
            manager: None,
        }
    }

    fn start_manager(&mut self, controllers: &[&str]) {
        let m = Manager::new(self.c.client.clone(), &prometheus::Registry::new());
        let names = controllers.iter().map(|s| s.to_string()).collect();
        self.manager = Some(tokio::spawn(async move {
            m.run(&names).await.unwrap();
        }));
    }

    fn stop_manager(&mut self) {
        if let Some(m) = self.manager.take() {
            m.abort();
        }
    }

    fn cms(&self) -> Api<ConfigMap> {
        Api::namespaced(self.c.client.clone(), "default")
    }
}

/// A ConfigMap owned by `owners` (each with blockOwnerDeletion as given).
fn cm(name: &str, owners: &[(&ConfigMap, bool)], finalizers: &[&str]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "finalizers": finalizers,
            "ownerReferences": owners.iter().map(|(o, block)| json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "name": o.metadata.name, "uid": o.metadata.uid, "blockOwnerDeletion": block,
            })).collect::<Vec<_>>(),
        },
        "data": {"k": "v"},
    }))
    .unwrap()
}

async fn create(api: &Api<ConfigMap>, obj: ConfigMap) -> ConfigMap {
    api.create(&PostParams::default(), &obj).await.unwrap()
}

async fn gone<K>(api: &Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.unwrap().is_none()
}

fn delete_with(policy: &str) -> DeleteParams {
    match policy {
        "Foreground" => DeleteParams::foreground(),
        "Orphan" => DeleteParams::orphan(),
        _ => DeleteParams::background(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_deletion_removes_dependents_level_by_level() {
    let env = Env::start(&["garbagecollector"]).await;
    let api = env.cms();
    let a = create(&api, cm("a", &[], &[])).await;
    let b = create(&api, cm("b", &[(&a, false)], &[])).await;
    create(&api, cm("c", &[(&b, false)], &[])).await;
    let bystander = create(&api, cm("bystander", &[], &[])).await;
    create(&api, cm("kept", &[(&bystander, true)], &[])).await;
    api.delete("a", &delete_with("Background")).await.unwrap();
    until(WAIT, "b and c collected", || async {
        gone(&api, "b").await && gone(&api, "c").await
    })
    .await;
    assert!(
        !gone(&api, "kept").await,
        "a dependent of a live owner stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_deletion_waits_for_blocking_dependents_and_removes_the_owner_last() {
    let env = Env::start(&["garbagecollector"]).await;
    let api = env.cms();
    let a = create(&api, cm("a", &[], &[])).await;
    // b blocks a and is held by its own finalizer; c does not block.
    create(&api, cm("b", &[(&a, true)], &["example.com/hold"])).await;
    create(&api, cm("c", &[(&a, false)], &[])).await;
    api.delete("a", &delete_with("Foreground")).await.unwrap();
    until(WAIT, "b being deleted, c gone", || async {
        let b = api.get("b").await.unwrap();
        b.metadata.deletion_timestamp.is_some() && gone(&api, "c").await
    })
    .await;
    // b still exists and blocks: the owner must still be there, waiting.
    let owner = api.get("a").await.unwrap();
    assert!(owner.metadata.deletion_timestamp.is_some());
    assert_eq!(
        owner.metadata.finalizers.as_deref(),
        Some(&["foregroundDeletion".to_string()][..])
    );
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    until(WAIT, "b then a gone", || async {
        gone(&api, "b").await && gone(&api, "a").await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_deletion_keeps_dependents_and_removes_their_references() {
    let env = Env::start(&["garbagecollector"]).await;
    let api = env.cms();
    let a = create(&api, cm("a", &[], &[])).await;
    let other = create(&api, cm("other", &[], &[])).await;
    create(&api, cm("b", &[(&a, true)], &[])).await;
    create(&api, cm("c", &[(&a, false), (&other, false)], &[])).await;
    api.delete("a", &delete_with("Orphan")).await.unwrap();
    until(WAIT, "a gone", || async { gone(&api, "a").await }).await;
    // The references went before the owner did, so nothing can collect them now.
    let b = api.get("b").await.unwrap();
    assert_eq!(b.metadata.owner_references, None);
    let c = api.get("c").await.unwrap();
    let owners: Vec<_> = c
        .metadata
        .owner_references
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(owners, ["other"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_with_another_live_owner_only_loses_the_dead_reference() {
    let env = Env::start(&["garbagecollector"]).await;
    let api = env.cms();
    let a1 = create(&api, cm("a1", &[], &[])).await;
    let a2 = create(&api, cm("a2", &[], &[])).await;
    create(&api, cm("b", &[(&a1, true), (&a2, true)], &[])).await;
    api.delete("a1", &delete_with("Background")).await.unwrap();
    until(WAIT, "the reference to a1 dropped", || async {
        let b = api.get("b").await.unwrap();
        b.metadata
            .owner_references
            .is_some_and(|o| o.len() == 1 && o[0].name == "a2")
    })
    .await;
    api.delete("a2", &delete_with("Background")).await.unwrap();
    until(WAIT, "b collected with its last owner", || async {
        gone(&api, "b").await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_of_owners_deleted_while_the_collector_was_down_are_collected_on_start() {
    let mut env = Env::without_manager().await;
    let api = env.cms();
    let a = create(&api, cm("a", &[], &[])).await;
    create(&api, cm("b", &[(&a, true)], &[])).await;
    // An owner replaced by another object of the same name: the reference is dangling.
    let x = create(&api, cm("x", &[], &[])).await;
    create(&api, cm("d", &[(&x, false)], &[])).await;
    let live = create(&api, cm("live", &[], &[])).await;
    create(&api, cm("e", &[(&live, false)], &[])).await;
    // No collector: deletions leave their dependents behind.
    api.delete("a", &DeleteParams::default()).await.unwrap();
    api.delete("x", &DeleteParams::default()).await.unwrap();
    create(&api, cm("x", &[], &[])).await;
    assert!(!gone(&api, "b").await && !gone(&api, "d").await);

    env.start_manager(&["garbagecollector"]);
    until(WAIT, "dangling b and d collected", || async {
        gone(&api, "b").await && gone(&api, "d").await
    })
    .await;
    assert!(!gone(&api, "e").await);
    assert!(
        !gone(&api, "x").await,
        "the new x is not the owner that went"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_cascades_through_its_replicasets_to_its_pods_in_each_policy() {
    let env = Env::start(&["garbagecollector", "deployment", "replicaset"]).await;
    let deploys: Api<Deployment> = Api::namespaced(env.c.client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(env.c.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(env.c.client.clone(), "default");
    for policy in ["Foreground", "Background", "Orphan"] {
        let name = format!("web-{}", policy.to_lowercase());
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .unwrap();
        deploys.create(&PostParams::default(), &d).await.unwrap();
        let sel = ListParams::default().labels(&format!("app={name}"));
        until(WAIT, "2 pods", || async {
            pods.list(&sel).await.unwrap().items.len() == 2
        })
        .await;
        deploys.delete(&name, &delete_with(policy)).await.unwrap();
        until(WAIT, "the deployment gone", || async {
            gone(&deploys, &name).await
        })
        .await;
        if policy == "Foreground" {
            // Foreground: the deployment went last, so its dependents were gone before it.
            assert!(rss.list(&sel).await.unwrap().items.is_empty());
            assert!(pods.list(&sel).await.unwrap().items.is_empty());
            continue;
        }
        if policy == "Background" {
            until(WAIT, "replicasets and pods collected", || async {
                rss.list(&sel).await.unwrap().items.is_empty()
                    && pods.list(&sel).await.unwrap().items.is_empty()
            })
            .await;
            continue;
        }
        // Orphan: the ReplicaSet stays, without an owner, and keeps its pods.
        let left = rss.list(&sel).await.unwrap().items;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].metadata.owner_references, None);
        assert_eq!(pods.list(&sel).await.unwrap().items.len(), 2);
    }
}

fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_registered_after_start_are_owners_too() {
    let env = Env::start(&["garbagecollector"]).await;
    let crds: Api<CustomResourceDefinition> = Api::all(env.c.client.clone());
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(widget_crd()).unwrap(),
    )
    .await
    .unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(env.c.client.clone(), "default", &ar);
    let w: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}))
    .unwrap();
    let pp = PostParams::default();
    let w = until_ok(|| widgets.create(&pp, &w)).await;
    let api = env.cms();
    let dep: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "of-w", "ownerReferences": [{
            "apiVersion": "example.com/v1", "kind": "Widget", "name": "w",
            "uid": w.metadata.uid, "blockOwnerDeletion": true}]}
    }))
    .unwrap();
    create(&api, dep).await;
    // Foreground, so the collector must watch widgets to see w's finalizer and wait on of-w.
    widgets
        .delete("w", &DeleteParams::foreground())
        .await
        .unwrap();
    until(WAIT, "of-w collected, then w", || async {
        gone(&api, "of-w").await && gone(&widgets, "w").await
    })
    .await;
}

/// Retries `f` until it succeeds (a CRD's resources are served within a moment of it).
async fn until_ok<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kube::Result<T>>,
{
    let started = std::time::Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => assert!(started.elapsed() < WAIT, "not within {WAIT:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_is_emptied_reports_what_remains_then_goes() {
    let env = Env::start(&["garbagecollector", "namespace", "deployment", "replicaset"]).await;
    let client = env.c.client.clone();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "doomed");
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "doomed");
    create(&cms, cm("plain", &[], &[])).await;
    create(&cms, cm("held", &[], &["example.com/hold"])).await;
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    until(WAIT, "3 pods", || async {
        pods.list(&ListParams::default()).await.unwrap().items.len() == 3
    })
    .await;
    // Outside the namespace: untouched.
    create(&env.cms(), cm("elsewhere", &[], &[])).await;

    nss.delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    until(WAIT, "everything but the held object gone, and said so", || async {
        let ns = nss.get("doomed").await.unwrap();
        let conds = ns.status.and_then(|s| s.conditions).unwrap_or_default();
        let fin = conds.iter().find(|c| c.type_ == "NamespaceFinalizersRemaining");
        fin.is_some_and(|c| {
            c.status == "True"
                && c.message.as_deref()
                    == Some("Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
        }) && pods.list(&ListParams::default()).await.unwrap().items.is_empty()
            && deploys.list(&ListParams::default()).await.unwrap().items.is_empty()
            && gone(&cms, "plain").await
    })
    .await;
    let ns = nss.get("doomed").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    // Nothing new gets in while it terminates.
    let refused = cms
        .create(&PostParams::default(), &cm("late", &[], &[]))
        .await
        .unwrap_err();
    assert!(matches!(refused, kube::Error::Api(s) if s.code == 403));

    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    until(WAIT, "the namespace gone", || async {
        gone(&nss, "doomed").await
    })
    .await;
    assert!(!gone(&env.cms(), "elsewhere").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_reference_elsewhere_does_not_condemn_the_dependents_of_a_live_owner() {
    let env = Env::start(&["garbagecollector"]).await;
    let api = env.cms();
    let a = create(&api, cm("a", &[], &[])).await;
    let p = create(&api, cm("p", &[], &[])).await;
    create(&api, cm("b", &[(&a, false), (&p, false)], &[])).await;
    // A copy of b's manifest in another namespace names a's uid, but there is no "a" there:
    // that copy is dangling and goes.
    let nss: Api<Namespace> = Api::all(env.c.client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap(),
    )
    .await
    .unwrap();
    let other: Api<ConfigMap> = Api::namespaced(env.c.client.clone(), "other");
    create(&other, cm("bogus", &[(&a, false)], &[])).await;
    until(WAIT, "the copy collected", || async {
        gone(&other, "bogus").await
    })
    .await;
    // b is examined when p goes: a is alive in b's namespace, so only p's reference is dropped.
    api.delete("p", &DeleteParams::default()).await.unwrap();
    until(WAIT, "p's reference dropped from b", || async {
        api.get_opt("b").await.unwrap().is_some_and(|b| {
            b.metadata
                .owner_references
                .is_some_and(|o| o.len() == 1 && o[0].name == "a")
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_served_only_at_a_non_preferred_version_are_collected_too() {
    let env = Env::start(&["garbagecollector"]).await;
    let crds: Api<CustomResourceDefinition> = Api::all(env.c.client.clone());
    // example.com's preferred version is v1 (widgets); gadgets exist only at v1alpha1.
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(widget_crd()).unwrap(),
    )
    .await
    .unwrap();
    let gadgets_crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    });
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(gadgets_crd).unwrap(),
    )
    .await
    .unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1alpha1", "Gadget"),
        "gadgets",
    );
    let gadgets: Api<DynamicObject> = Api::namespaced_with(env.c.client.clone(), "default", &ar);
    let api = env.cms();
    let owner = create(&api, cm("owner-of-g", &[], &[])).await;
    let g: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1alpha1", "kind": "Gadget",
        "metadata": {"name": "g", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
            "name": "owner-of-g", "uid": owner.metadata.uid}]}}))
    .unwrap();
    let pp = PostParams::default();
    until_ok(|| gadgets.create(&pp, &g)).await;
    // The collector starts watching gadgets on the discovery resync a CRD event triggers
    // (within ~1 s, not the 30 s period); then g, dangling once its owner goes, is collected.
    api.delete("owner-of-g", &DeleteParams::foreground())
        .await
        .unwrap();
    until(
        Duration::from_secs(45),
        "the gadget collected, then its owner",
        || async { gone(&gadgets, "g").await && gone(&api, "owner-of-g").await },
    )
    .await;
}
