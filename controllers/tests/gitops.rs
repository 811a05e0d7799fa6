//! The GitOps controller against a real in-process API server and real git repositories
//! (file://, `git daemon`, and smart HTTP with basic authentication through `git
//! http-backend`):
//! - first sync, a changed image rolled out, a deleted manifest pruned, a manual edit
//!   reverted, a broken commit (bad YAML; a schema violation) applying nothing and saying
//!   why, a force-pushed branch followed, suspend;
//! - dependsOn orders a CRD repository before the one using it; prune never deletes a
//!   Namespace holding objects it did not apply, nor an object opted out;
//! - a private repository through a credential Secret; a semver range picks the highest tag;
//!   a commit SHA pins exactly that commit; ssh:// with an identity and known_hosts (a real
//!   sshd), refused when the host key is not the one known;
//! - a Job's immutable template refuses the update (ReconciliationFailed) until `force`
//!   deletes and re-creates it;
//! - wait: Ready only once a Deployment has rolled out on simulated nodes (and again after a
//!   new image, every old pod gone), HealthCheckFailed when it cannot.

mod common;

use std::time::Duration;

use capstan_api::crds::GitSync;
use capstan_controllers::{Config, Manager, gitops};
use capstan_testkit::git::{GitDaemon, GitHttp, GitRepo, GitSsh};
use capstan_testkit::sim::{SimConfig, SimNodes};
use capstan_testkit::{TestCluster, until};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, CustomResourceExt, GroupVersionKind};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// The cluster with the GitSync CRD served.
async fn cluster() -> TestCluster {
    let c = TestCluster::start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    crds.create(&PostParams::default(), &GitSync::crd())
        .await
        .unwrap();
    let syncs: Api<GitSync> = Api::namespaced(c.client.clone(), "default");
    until(WAIT, "gitsyncs served", || async {
        syncs.list(&ListParams::default()).await.is_ok()
    })
    .await;
    c
}

fn manager(
    c: &TestCluster,
    controllers: &[&str],
) -> (capstan_testkit::Background, tempfile::TempDir) {
    let cache = capstan_testkit::temp_dir("capstan-gitops-cache-").unwrap();
    let config = Config {
        gitops: gitops::Config {
            cache_dir: cache.path().to_path_buf(),
        },
        ..Default::default()
    };
    let m = Manager::with_config(c.client.clone(), &prometheus::Registry::new(), config);
    (common::run(m, controllers), cache)
}

async fn create(c: &TestCluster, ns: &str, sync: Value) {
    let g: GitSync = serde_json::from_value(sync).unwrap();
    Api::<GitSync>::namespaced(c.client.clone(), ns)
        .create(&PostParams::default(), &g)
        .await
        .unwrap();
}

async fn status(c: &TestCluster, name: &str) -> Value {
    let g = Api::<GitSync>::namespaced(c.client.clone(), "default")
        .get(name)
        .await
        .unwrap();
    serde_json::to_value(g.status.unwrap_or_default()).unwrap()
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

/// Waits until the GitSync's Ready condition has `status` and `reason`, returning its status.
async fn until_ready(c: &TestCluster, name: &str, status_: &str, reason: &str) -> Value {
    let mut last = Value::Null;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            last = status(c, name).await;
            let r = condition(&last, "Ready");
            if r["status"] == status_ && r["reason"] == reason {
                return last.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!("{name}: Ready={status_} {reason} not reached; last status {last:#}")
    })
}

/// Waits until the GitSync has applied `commit`.
async fn until_applied(c: &TestCluster, name: &str, commit: &str) -> Value {
    let mut last = Value::Null;
    tokio::time::timeout(WAIT, async {
        loop {
            last = status(c, name).await;
            if last["lastAppliedCommit"] == commit && condition(&last, "Ready")["status"] == "True"
            {
                return last.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name}: {commit} not applied; last status {last:#}"))
}

fn cm(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

fn deployment(image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: {image}
"
    )
}

async fn image(c: &TestCluster) -> String {
    let d = Api::<Deployment>::namespaced(c.client.clone(), "default")
        .get("web")
        .await
        .unwrap();
    d.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

async fn config_value(c: &TestCluster, ns: &str, name: &str) -> Option<String> {
    Api::<ConfigMap>::namespaced(c.client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|m| m.data?.get("value").cloned())
}

async fn events(c: &TestCluster, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.message.unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_is_applied_followed_pruned_and_kept_against_edits_and_broken_commits() {
    let c = cluster().await;
    let (_m, _cache) = manager(&c, &[gitops::NAME]);
    let repo = GitRepo::new().unwrap();
    repo.write("apps/web.yaml", &deployment("nginx:1.0"))
        .unwrap();
    repo.write("apps/settings.yaml", &cm("settings", "one"))
        .unwrap();
    repo.write("README.md", "not a manifest").unwrap();
    let first = repo.commit("first").unwrap();
    create(
        &c,
        "default",
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "GitSync", "metadata": {"name": "site"},
            "spec": {"repo": repo.url(), "ref": {"branch": "main"}, "path": "apps", "interval": "1s", "prune": true}}),
    )
    .await;

    // First sync: both objects, labelled, in the inventory, under the GitOps field manager.
    let st = until_applied(&c, "site", &first).await;
    assert_eq!(st["ref"], "refs/heads/main");
    assert_eq!(st["inventory"].as_array().unwrap().len(), 2, "{st:#}");
    assert_eq!(image(&c).await, "nginx:1.0");
    let settings = Api::<ConfigMap>::namespaced(c.client.clone(), "default")
        .get("settings")
        .await
        .unwrap();
    let labels = settings.metadata.labels.clone().unwrap();
    assert_eq!(labels[gitops::NAME_LABEL], "site");
    assert_eq!(labels[gitops::NAMESPACE_LABEL], "default");
    let managers: Vec<_> = settings
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|f| f.manager)
        .collect();
    assert_eq!(managers, [gitops::FIELD_MANAGER]);
    assert!(
        condition(&st, "Ready")["message"]
            .as_str()
            .unwrap()
            .contains(&format!("main@sha1:{first}"))
    );

    // Nothing changed in git: nothing is written (the ConfigMap's resourceVersion holds).
    let rv = settings.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = Api::<ConfigMap>::namespaced(c.client.clone(), "default")
        .get("settings")
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version, rv,
        "an unchanged repository wrote the ConfigMap"
    );

    // A new image is applied (Reconciling while it is, gone after), with an Event naming what
    // changed.
    let syncs: Api<GitSync> = Api::namespaced(c.client.clone(), "default");
    let rv = syncs
        .get("site")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch = syncs
        .watch(&WatchParams::default().fields("metadata.name=site"), &rv)
        .await
        .unwrap()
        .boxed();
    repo.write("apps/web.yaml", &deployment("nginx:1.1"))
        .unwrap();
    let second = repo.commit("new image").unwrap();
    let mut reconciling_seen = false;
    tokio::time::timeout(WAIT, async {
        while let Some(event) = watch.next().await {
            let WatchEvent::Modified(g) = event.unwrap() else {
                continue;
            };
            let st = serde_json::to_value(g.status.unwrap_or_default()).unwrap();
            let r = condition(&st, "Reconciling");
            if r["status"] == "True" {
                assert!(r["message"].as_str().unwrap().contains(&second), "{r}");
                reconciling_seen = true;
            }
            if st["lastAppliedCommit"] == second.as_str()
                && condition(&st, "Ready")["status"] == "True"
            {
                assert!(r.is_null(), "Reconciling left behind: {st:#}");
                return;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("the second commit applied");
    assert!(
        reconciling_seen,
        "no Reconciling=True while the new commit was applied"
    );
    assert_eq!(image(&c).await, "nginx:1.1");
    let notes = events(&c, "ReconciliationSucceeded").await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("Deployment default/web configured")),
        "{notes:?}"
    );

    // A removed manifest is pruned.
    repo.remove("apps/settings.yaml").unwrap();
    let third = repo.commit("drop settings").unwrap();
    let st = until_applied(&c, "site", &third).await;
    assert_eq!(st["inventory"].as_array().unwrap().len(), 1, "{st:#}");
    assert_eq!(config_value(&c, "default", "settings").await, None);

    // A manual edit of a field git manages is reverted at the next interval.
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "edited:by-hand"}]}}}})),
        )
        .await
        .unwrap();
    until(WAIT, "the manual edit reverted", || async {
        image(&c).await == "nginx:1.1"
    })
    .await;

    // A commit that does not parse applies nothing; the error names the file and line.
    repo.write("apps/extra.yaml", &cm("extra", "x")).unwrap();
    repo.write(
        "apps/web.yaml",
        &format!("{}  bad: [\n", deployment("nginx:9")),
    )
    .unwrap();
    let broken = repo.commit("broken").unwrap();
    let st = until_ready(&c, "site", "False", "BuildFailed").await;
    let message = condition(&st, "Ready")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("apps/web.yaml:"), "{message}");
    assert_eq!(condition(&st, "Stalled")["status"], "True");
    assert_eq!(st["lastAttemptedCommit"], broken.as_str());
    assert_eq!(st["lastAppliedCommit"], third.as_str());
    assert_eq!(image(&c).await, "nginx:1.1");
    assert_eq!(config_value(&c, "default", "extra").await, None);
    until(WAIT, "a BuildFailed warning", || async {
        !events(&c, "BuildFailed").await.is_empty()
    })
    .await;
    // Retrying the same broken commit (every second here) writes nothing: no Reconciling
    // left behind, the status as it was.
    assert!(condition(&st, "Reconciling").is_null(), "{st:#}");
    let rv = syncs.get("site").await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = syncs.get("site").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, rv,
        "retries rewrote the status: {:#?}",
        after.status
    );

    // A schema violation: the dry run refuses it, and the good objects of the commit wait too.
    repo.write(
        "apps/web.yaml",
        &deployment("nginx:1.2").replace("replicas: 1", "replicas: many"),
    )
    .unwrap();
    repo.commit("invalid").unwrap();
    let st = until_ready(&c, "site", "False", "ReconciliationFailed").await;
    let message = condition(&st, "Ready")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("Deployment default/web") && message.contains("apps/web.yaml:1"),
        "{message}"
    );
    assert_eq!(config_value(&c, "default", "extra").await, None);
    assert_eq!(image(&c).await, "nginx:1.1");

    // Fixed: all of it applies.
    repo.write("apps/web.yaml", &deployment("nginx:1.2"))
        .unwrap();
    let fixed = repo.commit("fixed").unwrap();
    let st = until_applied(&c, "site", &fixed).await;
    assert!(condition(&st, "Stalled").is_null(), "{st:#}");
    assert_eq!(
        config_value(&c, "default", "extra").await.as_deref(),
        Some("x")
    );
    assert_eq!(image(&c).await, "nginx:1.2");

    // A force-pushed branch (history rewritten) is followed.
    repo.reset_hard(&third).unwrap();
    repo.write("apps/rewritten.yaml", &cm("rewritten", "yes"))
        .unwrap();
    let rewritten = repo.commit("rewritten history").unwrap();
    until_applied(&c, "site", &rewritten).await;
    assert_eq!(
        config_value(&c, "default", "rewritten").await.as_deref(),
        Some("yes")
    );
    assert_eq!(
        config_value(&c, "default", "extra").await,
        None,
        "pruned with the old history"
    );
    assert_eq!(image(&c).await, "nginx:1.1");

    // Suspended: new commits wait; resumed: applied.
    let suspended = syncs
        .patch(
            "site",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
    // The controller has seen the suspension once it records that generation.
    until(WAIT, "the suspension observed", || async {
        status(&c, "site").await["observedGeneration"].as_i64() == suspended.metadata.generation
    })
    .await;
    repo.write("apps/rewritten.yaml", &cm("rewritten", "later"))
        .unwrap();
    let later = repo.commit("while suspended").unwrap();
    // Three intervals pass without it being applied.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        config_value(&c, "default", "rewritten").await.as_deref(),
        Some("yes")
    );
    syncs
        .patch(
            "site",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await
        .unwrap();
    until_applied(&c, "site", &later).await;
    assert_eq!(
        config_value(&c, "default", "rewritten").await.as_deref(),
        Some("later")
    );
}

fn crd_yaml() -> &'static str {
    "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_order_syncs_and_prune_spares_foreign_and_opted_out_objects() {
    let c = cluster().await;
    let (_m, _cache) = manager(&c, &[gitops::NAME]);
    let crds = GitRepo::new().unwrap();
    crds.write("widgets.yaml", crd_yaml()).unwrap();
    crds.commit("crd").unwrap();
    let apps = GitRepo::new().unwrap();
    apps.write(
        "kustomization.yaml",
        "resources:\n- shop.yaml\n- widget.yaml\n- keep.yaml\n",
    )
    .unwrap();
    apps.write(
        "shop.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: menu\n  namespace: shop\ndata:\n  value: a\n",
    )
    .unwrap();
    apps.write(
        "widget.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n  namespace: shop\nspec:\n  size: 3\n",
    )
    .unwrap();
    apps.write(
        "keep.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: keep\n  annotations:\n    capstan.dev/prune: disabled\n",
    )
    .unwrap();
    let apps_first = apps.commit("apps").unwrap();

    // The user of the CRD comes first: it waits for its dependency.
    create(
        &c,
        "default",
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "GitSync", "metadata": {"name": "apps"},
            "spec": {"repo": apps.url(), "interval": "1s", "prune": true, "dependsOn": [{"name": "crds"}]}}),
    )
    .await;
    let st = until_ready(&c, "apps", "False", "DependencyNotReady").await;
    assert!(
        condition(&st, "Ready")["message"]
            .as_str()
            .unwrap()
            .contains("'default/crds'"),
        "{st:#}"
    );
    create(
        &c,
        "default",
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "GitSync", "metadata": {"name": "crds"},
            "spec": {"repo": crds.url(), "interval": "1s"}}),
    )
    .await;
    until_ready(&c, "crds", "True", "ReconciliationSucceeded").await;
    until_applied(&c, "apps", &apps_first).await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(
        c.client.clone(),
        "shop",
        &ApiResource::from_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget")),
    );
    assert_eq!(widgets.get("w").await.unwrap().data["spec"]["size"], 3);
    assert_eq!(config_value(&c, "shop", "menu").await.as_deref(), Some("a"));

    // Someone else's object in the namespace git owns; then git drops the namespace and the
    // opted-out ConfigMap.
    Api::<ConfigMap>::namespaced(c.client.clone(), "shop")
        .create(
            &PostParams::default(),
            &serde_json::from_str(r#"{"metadata":{"name":"theirs"}}"#).unwrap(),
        )
        .await
        .unwrap();
    apps.write("kustomization.yaml", "resources:\n- widget.yaml\n")
        .unwrap();
    apps.write("widget.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n  namespace: default\nspec:\n  size: 4\n").unwrap();
    let apps_second = apps.commit("only the widget, elsewhere").unwrap();
    let st = until_applied(&c, "apps", &apps_second).await;
    assert_eq!(st["inventory"].as_array().unwrap().len(), 1, "{st:#}");
    until(WAIT, "the menu pruned", || async {
        Api::<ConfigMap>::namespaced(c.client.clone(), "shop")
            .get_opt("menu")
            .await
            .unwrap()
            .is_none()
    })
    .await;
    let ns = Api::<Namespace>::all(c.client.clone())
        .get("shop")
        .await
        .unwrap();
    assert!(
        ns.metadata.deletion_timestamp.is_none(),
        "a namespace holding another's object was pruned"
    );
    assert!(
        widgets.get_opt("w").await.unwrap().is_none(),
        "the old widget pruned"
    );
    assert!(
        Api::<ConfigMap>::namespaced(c.client.clone(), "default")
            .get_opt("keep")
            .await
            .unwrap()
            .is_some(),
        "an object annotated capstan.dev/prune: disabled was pruned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_repositories_take_credentials_from_a_secret_and_semver_picks_the_tag() {
    let c = cluster().await;
    let (_m, _cache) = manager(&c, &[gitops::NAME]);
    let repo = GitRepo::new().unwrap();
    repo.write("cm.yaml", &cm("release", "1.0.0")).unwrap();
    repo.commit("1.0.0").unwrap();
    repo.tag("v1.0.0").unwrap();
    repo.write("cm.yaml", &cm("release", "1.4.2")).unwrap();
    let v142 = repo.commit("1.4.2").unwrap();
    repo.tag("v1.4.2").unwrap();
    repo.write("cm.yaml", &cm("release", "2.0.0")).unwrap();
    repo.commit("2.0.0").unwrap();
    repo.tag("v2.0.0").unwrap();
    let served = capstan_testkit::temp_dir("capstan-git-served-").unwrap();
    let bare = repo.bare_clone(served.path(), "site").unwrap();
    let http = GitHttp::start(served.path(), "reader", "s3cret").unwrap();
    let daemon = GitDaemon::start(served.path()).unwrap();

    // Over http without credentials: refused, and said so.
    create(
        &c,
        "default",
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "GitSync", "metadata": {"name": "private"},
            "spec": {"repo": http.url("site"), "interval": "1s", "timeout": "10s", "secretRef": {"name": "git-auth"}, "targetNamespace": "default"}}),
    )
    .await;
    let st = until_ready(&c, "private", "False", "AuthenticationFailed").await;
    assert!(
        condition(&st, "Ready")["message"]
            .as_str()
            .unwrap()
            .contains("git-auth"),
        "{st:#}"
    );
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "git-auth"},
        "stringData": {"username": "reader", "password": "wrong"}}))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let st = until_ready(&c, "private", "False", "GitOperationFailed").await;
    let message = condition(&st, "Ready")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !message.contains("wrong"),
        "a password leaked into status: {message}"
    );
    secrets
        .patch(
            "git-auth",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "s3cret"}})),
        )
        .await
        .unwrap();
    let st = until_ready(&c, "private", "True", "ReconciliationSucceeded").await;
    // A token instead of a username and password.
    let token: Secret = serde_json::from_value(json!({"metadata": {"name": "git-token"},
        "stringData": {"bearerToken": "s3cret"}}))
    .unwrap();
    secrets
        .create(&PostParams::default(), &token)
        .await
        .unwrap();
    Api::<Namespace>::all(c.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "tokened"}})).unwrap(),
        )
        .await
        .unwrap();
    create(
        &c,
        "default",
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "GitSync", "metadata": {"name": "tokened"},
            "spec": {"repo": http.url("site"), "interval": "1s", "timeout": "10s", "secretRef": {"name": "git-token"}, "targetNamespace": "tokened"}}),
    )
    .await;
    until_ready(&c, "tokened", "True", "ReconciliationSucceeded").await;
    assert_eq!(
        config_value(&c, "tokened", "release").await.as_deref(),
        Some("2.0.0")
    );
    assert_eq!(st["ref"], "refs/heads/main");
    assert_eq!(
        config_value(&c, "default", "release").await.as_deref(),
        Some("2.0.0")
    );

    // Over git://, the highest tag in a range.
    create(
        &c,
        "default",
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "GitSync", "metadata": {"name": "pinned"},
            "spec": {"repo": daemon.url("site"), "ref": {"semver": ">=1.0.0, <2.0.0"}, "interval": "1s", "targetNamespace": "pinned"}}),
    )
    .await;
    // The target namespace must exist: until it does, the sync fails and says why.
    let st = until_ready(&c, "pinned", "False", "ReconciliationFailed").await;
    assert!(
        condition(&st, "Ready")["message"]
            .as_str()
            .unwrap()
            .contains("pinned"),
        "{st:#}"
    );
    Api::<Namespace>::all(c.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "pinned"}})).unwrap(),
        )
        .await
        .unwrap();
    let st = until_applied(&c, "pinned", &v142).await;
    assert_eq!(st["ref"], "refs/tags/v1.4.2");
    assert_eq!(
        config_value(&c, "pinned", "release").await.as_deref(),
        Some("1.4.2")
    );
    // A new tag in range is followed.
    repo.write("cm.yaml", &cm("release", "1.5.0")).unwrap();
    let v150 = repo.commit("1.5.0").unwrap();
    repo.tag("v1.5.0").unwrap();
    repo.push_to(&bare).unwrap();
    until_applied(&c, "pinned", &v150).await;
    assert_eq!(
        config_value(&c, "pinned", "release").await.as_deref(),
        Some("1.5.0")
    );

    // A commit, by its SHA, over file://: exactly that commit, whatever the branch does.
    Api::<Namespace>::all(c.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "exact"}})).unwrap(),
        )
        .await
        .unwrap();
    create(
        &c,
        "default",
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "GitSync", "metadata": {"name": "exact"},
            "spec": {"repo": repo.url(), "ref": {"commit": v142}, "interval": "1s", "targetNamespace": "exact"}}),
    )
    .await;
    let st = until_applied(&c, "exact", &v142).await;
    assert_eq!(st["ref"], v142.as_str());
    assert_eq!(
        config_value(&c, "exact", "release").await.as_deref(),
        Some("1.4.2")
    );
}

fn job(command: &str) -> String {
    format!(
        "apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: migrate
        image: busybox
        command: [sh, -c, '{command}']
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_change_is_refused_unless_force_recreates_the_object() {
    let c = cluster().await;
    let (_m, _cache) = manager(&c, &[gitops::NAME]);
    let repo = GitRepo::new().unwrap();
    repo.write("job.yaml", &job("echo one")).unwrap();
    let first = repo.commit("job").unwrap();
    create(
        &c,
        "default",
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "GitSync", "metadata": {"name": "jobs"},
            "spec": {"repo": repo.url(), "interval": "1s"}}),
    )
    .await;
    until_applied(&c, "jobs", &first).await;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(c.client.clone(), "default");
    let uid = jobs.get("migrate").await.unwrap().metadata.uid;

    // A Job's template is immutable: without force, the sync fails and says so.
    repo.write("job.yaml", &job("echo two")).unwrap();
    let second = repo.commit("new command").unwrap();
    let st = until_ready(&c, "jobs", "False", "ReconciliationFailed").await;
    let message = condition(&st, "Ready")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("Job default/migrate") && message.contains("immutable"),
        "{message}"
    );
    assert_eq!(jobs.get("migrate").await.unwrap().metadata.uid, uid);

    // With force, it is deleted and created again from the new commit.
    Api::<GitSync>::namespaced(c.client.clone(), "default")
        .patch(
            "jobs",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"force": true}})),
        )
        .await
        .unwrap();
    until_applied(&c, "jobs", &second).await;
    let recreated = jobs.get("migrate").await.unwrap();
    assert_ne!(recreated.metadata.uid, uid);
    let command = recreated.spec.unwrap().template.spec.unwrap().containers[0]
        .command
        .clone()
        .unwrap();
    assert_eq!(command[2], "echo two");
    let notes = events(&c, "ReconciliationSucceeded").await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("Job default/migrate recreated")),
        "{notes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_makes_ready_mean_rolled_out() {
    let c = cluster().await;
    let sim = SimNodes::start(
        c.client.clone(),
        SimConfig {
            nodes: 2,
            ready_after: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (_m, _cache) = manager(&c, &[gitops::NAME, "deployment", "replicaset", "scheduler"]);
    let repo = GitRepo::new().unwrap();
    repo.write(
        "web.yaml",
        &deployment("nginx:1.0").replace("replicas: 1", "replicas: 2"),
    )
    .unwrap();
    let good = repo.commit("web").unwrap();
    create(
        &c,
        "default",
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "GitSync", "metadata": {"name": "web"},
            "spec": {"repo": repo.url(), "interval": "2s", "timeout": "8s", "wait": true}}),
    )
    .await;
    until_applied(&c, "web", &good).await;
    let d = Api::<Deployment>::namespaced(c.client.clone(), "default")
        .get("web")
        .await
        .unwrap();
    assert_eq!(
        d.status.unwrap().available_replicas,
        Some(2),
        "Ready before the rollout finished"
    );

    // A new image rolls out: Ready again only once every replica runs it.
    repo.write(
        "web.yaml",
        &deployment("nginx:1.1").replace("replicas: 1", "replicas: 2"),
    )
    .unwrap();
    let rolled = repo.commit("1.1").unwrap();
    until_applied(&c, "web", &rolled).await;
    let d = Api::<Deployment>::namespaced(c.client.clone(), "default")
        .get("web")
        .await
        .unwrap();
    let st = d.status.unwrap();
    assert_eq!(
        (st.updated_replicas, st.available_replicas, st.replicas),
        (Some(2), Some(2), Some(2)),
        "Ready mid-rollout"
    );
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    let live: Vec<_> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            p.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(live, ["nginx:1.1", "nginx:1.1"], "the old pods are gone");

    // Pods that cannot be scheduled: not healthy within the timeout.
    let stuck = deployment("nginx:2.0").replace(
        "      containers:",
        "      nodeSelector: {disk: none-has-it}\n      containers:",
    );
    repo.write("web.yaml", &stuck.replace("replicas: 1", "replicas: 2"))
        .unwrap();
    repo.commit("unschedulable").unwrap();
    let st = until_ready(&c, "web", "False", "HealthCheckFailed").await;
    let message = condition(&st, "Ready")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("Deployment default/web"), "{message}");
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_repositories_take_an_identity_and_known_hosts_from_a_secret() {
    if !GitSsh::available() {
        panic!("sshd is missing: apt-get install openssh-server");
    }
    let ssh = GitSsh::start().unwrap();
    let c = cluster().await;
    let (_m, _cache) = manager(&c, &[gitops::NAME]);
    let repo = GitRepo::new().unwrap();
    repo.write("cm.yaml", &cm("over-ssh", "yes")).unwrap();
    let commit = repo.commit("ssh").unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    // A known_hosts naming another key: the host is not trusted.
    let other = ssh.known_hosts.rsplit_once(' ').unwrap().0.to_string()
        + " AAAAC3NzaC1lZDI1NTE5AAAAIGb1mMQ5g0eGPC0hy7ZN3Pz3Vt3wM1lS9KkGwyo0bM2D";
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "deploy-key"},
        "stringData": {"identity": ssh.identity, "known_hosts": other}}))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    create(
        &c,
        "default",
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "GitSync", "metadata": {"name": "ssh"},
            "spec": {"repo": ssh.url(repo.path()), "interval": "1s", "timeout": "10s", "secretRef": {"name": "deploy-key"}}}),
    )
    .await;
    let st = until_ready(&c, "ssh", "False", "GitOperationFailed").await;
    let message = condition(&st, "Ready")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.to_lowercase().contains("host key"), "{message}");
    assert!(
        !message.contains("PRIVATE KEY"),
        "the identity leaked: {message}"
    );
    // The right host key: synced.
    secrets
        .patch(
            "deploy-key",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"known_hosts": ssh.known_hosts}})),
        )
        .await
        .unwrap();
    until_applied(&c, "ssh", &commit).await;
    assert_eq!(
        config_value(&c, "default", "over-ssh").await.as_deref(),
        Some("yes")
    );
}
