//! The API server through kube-rs (Api<T>, watcher) and raw HTTP: verbs, metadata rules,
//! optimistic concurrency, subresources, finalizers, pagination, watches and every error class.

use std::collections::BTreeMap;
use std::time::Duration;

use capstan_testkit::{TestCluster, api_error, http_get, http_request};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::{Value, json};

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()},
        "data": {"k": "v"},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmaps_round_trip_with_server_owned_metadata() {
    let c = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let created = api
        .create(&PostParams::default(), &cm("a", &[("app", "web")]))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    let rv: i64 = meta.resource_version.as_deref().unwrap().parse().unwrap();
    assert!(rv > 0);
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert_eq!(
        meta.generation, None,
        "ConfigMaps have no generation, as in Kubernetes"
    );

    let got = api.get("a").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);

    // PUT with the current resourceVersion succeeds and moves it; the old one then conflicts.
    let mut changed = got.clone();
    changed.data = Some(BTreeMap::from([("k".to_string(), "v2".to_string())]));
    changed.metadata.uid = None; // clients may omit it; the server keeps it
    let replaced = api
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.uid, created.metadata.uid);
    assert_ne!(
        replaced.metadata.resource_version,
        got.metadata.resource_version
    );
    let (code, reason, msg) = api_error(
        api.replace("a", &PostParams::default(), &changed)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(msg.contains("the object has been modified"), "{msg}");

    let (code, reason, _) = api_error(
        api.create(&PostParams::default(), &cm("a", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    api.delete("a", &DeleteParams::default()).await.unwrap();
    let (code, reason, msg) = api_error(api.get("a").await.unwrap_err());
    assert_eq!(
        (code, reason.as_str(), msg.as_str()),
        (404, "NotFound", "configmaps \"a\" not found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_and_field_selectors_filter_lists() {
    let c = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    for (n, app, tier) in [("a", "web", "fe"), ("b", "web", "be"), ("c", "db", "be")] {
        api.create(
            &PostParams::default(),
            &cm(n, &[("app", app), ("tier", tier)]),
        )
        .await
        .unwrap();
    }
    let names = |l: kube::api::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|o| o.metadata.name.unwrap())
            .collect()
    };
    let cases = [
        ("app=web", vec!["a", "b"]),
        ("app!=web", vec!["c"]),
        ("tier in (be),app notin (db)", vec!["b"]),
        ("app,!missing", vec!["a", "b", "c"]),
    ];
    for (sel, want) in cases {
        let got = names(api.list(&ListParams::default().labels(sel)).await.unwrap());
        assert_eq!(got, want, "{sel}");
    }
    let got = names(
        api.list(&ListParams::default().fields("metadata.name=b"))
            .await
            .unwrap(),
    );
    assert_eq!(got, ["b"]);
    let (code, _, msg) = api_error(
        api.list(&ListParams::default().fields("spec.nothing=x"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
    assert!(
        msg.contains("field label not supported: spec.nothing"),
        "{msg}"
    );
    let (code, _, _) = api_error(
        api.list(&ListParams::default().labels("app in (web"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
    // All namespaces: these three and kube-system/extension-apiserver-authentication.
    let all: Api<ConfigMap> = Api::all(c.client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        4
    );
}

/// kubectl lists in chunks of 500; every page must come from the first page's snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_lists_see_one_snapshot_while_writes_continue() {
    let c = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    for i in 0..25 {
        api.create(
            &PostParams::default(),
            &cm(
                &format!("cm-{i:02}"),
                &[("app", if i % 2 == 0 { "even" } else { "odd" })],
            ),
        )
        .await
        .unwrap();
    }
    let first = api.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    let token = first.metadata.continue_.clone().expect("a continue token");
    // Writes after the first page do not show in the following pages.
    api.delete("cm-15", &DeleteParams::default()).await.unwrap();
    api.create(&PostParams::default(), &cm("cm-99", &[]))
        .await
        .unwrap();
    let mut names: Vec<String> = first
        .items
        .iter()
        .map(|o| o.metadata.name.clone().unwrap())
        .collect();
    let mut token = Some(token);
    while let Some(t) = token {
        let page = api
            .list(&ListParams::default().limit(10).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version,
            first.metadata.resource_version
        );
        names.extend(page.items.iter().map(|o| o.metadata.name.clone().unwrap()));
        token = page.metadata.continue_.filter(|c| !c.is_empty());
    }
    let want: Vec<String> = (0..25).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(names, want);
    // Selectors apply across pages: 13 even ones, pages of 5.
    let mut count = 0;
    let mut lp = ListParams::default().labels("app=even").limit(5);
    loop {
        let page = api.list(&lp).await.unwrap();
        count += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(t) => lp = lp.continue_token(&t),
            None => break,
        }
    }
    assert_eq!(count, 13);
    let (code, _, _) = api_error(
        api.list(&ListParams::default().limit(5).continue_token("garbage"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_are_422_with_every_field_and_change_nothing() {
    let c = TestCluster::start().await;
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let bad: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "Bad_Name", "labels": {"ok": "not ok"}},
        "spec": {"replicas": -1, "selector": {"matchLabels": {"app": "a"}},
                 "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": ""}]}}}
    }))
    .unwrap();
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let fields: Vec<String> = status
        .details
        .unwrap()
        .causes
        .into_iter()
        .map(|c| c.field)
        .collect();
    assert_eq!(
        fields,
        [
            "metadata.name",
            "metadata.labels[ok]",
            "spec.replicas",
            "spec.template.metadata.labels",
            "spec.template.spec.containers[0].image"
        ]
    );
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Missing name and generateName.
    let (code, _, msg) = api_error(
        Api::<ConfigMap>::namespaced(c.client.clone(), "default")
            .create(&PostParams::default(), &ConfigMap::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(msg.contains("name or generateName is required"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_get_a_status_for_every_error_class() {
    let c = TestCluster::start().await;
    let addr = c.addr.to_string();
    let status = |(code, body): (u16, String)| -> (u16, Value) {
        (
            code,
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("not a Status: {body}")),
        )
    };
    let json_ct = [("Content-Type", "application/json")];
    let path = "/api/v1/namespaces/default/configmaps";

    let (code, s) = status(http_request(&addr, "POST", path, &json_ct, b"{not json").unwrap());
    assert_eq!((code, s["reason"].as_str()), (400, Some("BadRequest")));
    assert_eq!(s["kind"], "Status");

    let big = format!(
        "{{\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"k\":\"{}\"}}}}",
        "x".repeat(3 * 1024 * 1024 + 10)
    );
    let (code, s) = status(http_request(&addr, "POST", path, &json_ct, big.as_bytes()).unwrap());
    assert_eq!(
        (code, s["reason"].as_str()),
        (413, Some("RequestEntityTooLarge"))
    );

    let (code, s) = status(
        http_request(
            &addr,
            "POST",
            path,
            &[("Content-Type", "application/yaml")],
            b"a: b",
        )
        .unwrap(),
    );
    assert_eq!(
        (code, s["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );

    let (code, s) = status(http_request(&addr, "PUT", path, &json_ct, b"{}").unwrap());
    assert_eq!(
        (code, s["reason"].as_str()),
        (405, Some("MethodNotAllowed"))
    );

    let (code, s) = status(
        http_request(
            &addr,
            "POST",
            "/api/v1/namespaces/nope/configmaps",
            &json_ct,
            br#"{"metadata":{"name":"x"}}"#,
        )
        .unwrap(),
    );
    assert_eq!(
        (code, s["message"].as_str()),
        (404, Some("namespaces \"nope\" not found"))
    );

    let (code, s) = status(
        http_request(
            &addr,
            "POST",
            path,
            &json_ct,
            br#"{"apiVersion":"apps/v1","kind":"ConfigMap","metadata":{"name":"x"}}"#,
        )
        .unwrap(),
    );
    assert_eq!(code, 400, "{s}");

    let (code, _) = status(http_get(&addr, "/api/v1/nothings").unwrap());
    assert_eq!(code, 404);
    let (code, _) =
        status(http_get(&addr, "/api/v1/namespaces/default/configmaps/x/nosuchsub").unwrap());
    assert_eq!(code, 404);

    let (code, s) = status(
        http_request(
            &addr,
            "PATCH",
            "/api/v1/namespaces/default/configmaps/x",
            &[("Content-Type", "application/strategic-merge-patch+json")],
            b"{}",
        )
        .unwrap(),
    );
    assert_eq!((code, s["reason"].as_str()), (404, Some("NotFound")));
    let (code, s) = status(
        http_request(
            &addr,
            "PATCH",
            "/api/v1/namespaces/default/configmaps/x",
            &[("Content-Type", "application/apply-patch+yaml")],
            b"{}",
        )
        .unwrap(),
    );
    assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")));
    let (code, _) = status(http_get(&addr, &format!("{path}?dryRun=Some")).unwrap());
    assert_eq!(code, 200, "dryRun is ignored on reads");
    let (code, s) = status(
        http_request(
            &addr,
            "POST",
            &format!("{path}?dryRun=Some"),
            &json_ct,
            br#"{"metadata":{"name":"x"}}"#,
        )
        .unwrap(),
    );
    assert_eq!((code, s["reason"].as_str()), (400, Some("BadRequest")));

    // Nothing above was stored.
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_generate_name_behave_like_kubernetes() {
    let c = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let dry = api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &cm("dry", &[]),
        )
        .await
        .unwrap();
    assert_eq!(dry.metadata.name.as_deref(), Some("dry"));
    assert!(
        api.get_opt("dry").await.unwrap().is_none(),
        "dry run stores nothing"
    );

    let mut g = ConfigMap::default();
    g.metadata.generate_name = Some("gen-".into());
    let a = api.create(&PostParams::default(), &g).await.unwrap();
    let b = api.create(&PostParams::default(), &g).await.unwrap();
    let (an, bn) = (a.metadata.name.unwrap(), b.metadata.name.unwrap());
    assert!(
        an.starts_with("gen-") && an.len() == 9 && an != bn,
        "{an} {bn}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_merge_and_json_patch_with_generation_tracking_spec_only() {
    let c = TestCluster::start().await;
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        "status": {"replicas": 99}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.status.is_none(),
        "status is the controller's: reset on create"
    );

    let pp = PatchParams::default();
    let p = api
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        p.metadata.generation,
        Some(1),
        "a metadata change keeps the generation"
    );
    let p = api
        .patch("web", &pp, &Patch::Merge(json!({"spec": {"replicas": 3}})))
        .await
        .unwrap();
    assert_eq!(p.metadata.generation, Some(2), "a spec change bumps it");
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "busybox:2"},
        {"op": "test", "path": "/spec/replicas", "value": 3}
    ]))
    .unwrap();
    let p = api
        .patch("web", &pp, &Patch::Json::<()>(ops))
        .await
        .unwrap();
    assert_eq!(p.metadata.generation, Some(3));
    assert_eq!(
        p.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("busybox:2")
    );
    // A failing test op changes nothing.
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/replicas", "value": 7}]))
            .unwrap();
    let (code, _, _) = api_error(
        api.patch("web", &pp, &Patch::Json::<()>(ops))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert_eq!(api.get("web").await.unwrap().metadata.generation, Some(3));
    // The main endpoint ignores status; /status takes only status.
    api.patch(
        "web",
        &pp,
        &Patch::Merge(json!({"status": {"replicas": 5}})),
    )
    .await
    .unwrap();
    assert!(api.get("web").await.unwrap().status.is_none());
    let s = api
        .patch_status(
            "web",
            &pp,
            &Patch::Merge(json!({"status": {"replicas": 5}, "spec": {"replicas": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(s.status.unwrap().replicas, Some(5));
    assert_eq!(s.spec.unwrap().replicas, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scale_subresource_reads_and_writes_replicas() {
    let c = TestCluster::start().await;
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    let scale = api.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(2));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("app=web"));
    let scaled = api
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    assert_eq!(scaled.spec.unwrap().replicas, Some(7));
    assert_eq!(
        api.get("web").await.unwrap().spec.unwrap().replicas,
        Some(7)
    );
    let (code, _, _) = api_error(
        api.patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": -2}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_a_deleted_object_until_they_are_removed() {
    let c = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let mut o = cm("held", &[]);
    o.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &o).await.unwrap();
    api.delete("held", &DeleteParams::default()).await.unwrap();
    let held = api.get("held").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "marked, not gone"
    );
    // Finalizers cannot be added once deletion started; removing the last one deletes it.
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold", "example.com/new"]}})),
    )
    .await
    .unwrap();
    assert_eq!(
        api.get("held").await.unwrap().metadata.finalizers.unwrap(),
        ["example.com/hold"]
    );
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(api.get_opt("held").await.unwrap().is_none());

    // Preconditions on delete.
    let o = api
        .create(&PostParams::default(), &cm("pre", &[]))
        .await
        .unwrap();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let (code, _, msg) = api_error(api.delete("pre", &dp).await.unwrap_err());
    assert_eq!(code, 409);
    assert!(msg.contains("Precondition failed: UID"), "{msg}");
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: o.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    api.delete("pre", &dp).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_gate_creation_and_terminate_behind_their_finalizer() {
    let c = TestCluster::start().await;
    let ns: Api<Namespace> = Api::all(c.client.clone());
    let names: Vec<String> = ns
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| n.metadata.name.unwrap())
        .collect();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "team-a");
    cms.create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap();
    ns.delete("team-a", &DeleteParams::default()).await.unwrap();
    let t = ns.get("team-a").await.unwrap();
    assert_eq!(t.status.unwrap().phase.as_deref(), Some("Terminating"));
    let (code, _, msg) = api_error(
        cms.create(&PostParams::default(), &cm("y", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    assert!(msg.contains("being terminated"), "{msg}");
    // The namespace controller's last step: /finalize empties spec.finalizers, then it is gone.
    let (code, body) = http_request(&c.addr.to_string(), "PUT", "/api/v1/namespaces/team-a/finalize", &[("Content-Type", "application/json")],
        br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team-a"},"spec":{"finalizers":[]}}"#).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(ns.get_opt("team-a").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_bound_once_and_deleted_gracefully_when_on_a_node() {
    let c = TestCluster::start().await;
    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
    let created = api.create(&PostParams::default(), &pod).await.unwrap();
    let status = created.status.unwrap();
    assert_eq!(
        (status.phase.as_deref(), status.qos_class.as_deref()),
        (Some("Pending"), Some("BestEffort"))
    );
    let bind = |node: &str| {
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": node}}).to_string()
    };
    let addr = c.addr.to_string();
    let ct = [("Content-Type", "application/json")];
    let (code, body) = http_request(
        &addr,
        "POST",
        "/api/v1/namespaces/default/pods/p/binding",
        &ct,
        bind("n1").as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    let (code, body) = http_request(
        &addr,
        "POST",
        "/api/v1/namespaces/default/pods/p/binding",
        &ct,
        bind("n2").as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 409, "{body}");
    let bound = api.get("p").await.unwrap();
    assert_eq!(bound.spec.unwrap().node_name.as_deref(), Some("n1"));
    // Field selector the kubelet uses.
    let on_n1 = api
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap();
    assert_eq!(on_n1.items.len(), 1);
    // Bound to a node: deletion waits for the kubelet (grace period), then grace 0 removes it.
    api.delete("p", &DeleteParams::default()).await.unwrap();
    let dying = api.get("p").await.unwrap();
    assert_eq!(dying.metadata.deletion_grace_period_seconds, Some(30));
    // Writes during the grace period (the kubelet's status, the collector's patches) do not
    // delete it, though it has no finalizers.
    api.patch_status(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    api.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    assert!(
        api.get_opt("p").await.unwrap().is_some(),
        "still in its grace period"
    );
    api.delete(
        "p",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(api.get_opt("p").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_delete_switches_the_propagation_policy() {
    let c = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    api.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let finalizers = |o: &ConfigMap| o.metadata.finalizers.clone().unwrap_or_default();
    api.delete("a", &DeleteParams::foreground()).await.unwrap();
    assert_eq!(
        finalizers(&api.get("a").await.unwrap()),
        ["foregroundDeletion"]
    );
    // A user turns the foreground deletion into an orphaning one...
    api.delete("a", &DeleteParams::orphan()).await.unwrap();
    assert_eq!(finalizers(&api.get("a").await.unwrap()), ["orphan"]);
    // ...a plain delete without a policy changes nothing...
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(finalizers(&api.get("a").await.unwrap()), ["orphan"]);
    // ...and an explicit Background one releases it: nothing holds it any more.
    api.delete("a", &DeleteParams::background()).await.unwrap();
    assert!(api.get_opt("a").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_deliver_every_change_from_the_cache_and_resume() {
    let c = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let start = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = api
        .watch(&WatchParams::default().labels("app=web"), &start)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("a", &[("app", "web")]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("other", &[("app", "db")]))
        .await
        .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .unwrap();
    // Leaving the selector is a DELETED for this watcher.
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "gone"}}})),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut last_rv = String::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), w.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(o) => {
                last_rv = o.metadata.resource_version.clone().unwrap();
                seen.push(("ADDED", o.metadata.name.unwrap()))
            }
            WatchEvent::Modified(o) => {
                last_rv = o.metadata.resource_version.clone().unwrap();
                seen.push(("MODIFIED", o.metadata.name.unwrap()))
            }
            WatchEvent::Deleted(o) => {
                last_rv = o.metadata.resource_version.clone().unwrap();
                seen.push(("DELETED", o.metadata.name.unwrap()))
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            ("ADDED", "a".to_string()),
            ("MODIFIED", "a".to_string()),
            ("DELETED", "a".to_string())
        ]
    );

    // Resuming from a seen resourceVersion replays only what came after it.
    api.delete("other", &DeleteParams::default()).await.unwrap();
    let mut resumed = api
        .watch(&WatchParams::default(), &last_rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(10), resumed.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Deleted(o) => assert_eq!(o.metadata.name.as_deref(), Some("other")),
        other => panic!("expected the delete of other, got {other:?}"),
    }

    // RV "0": the current state first, as ADDED.
    let mut from_zero = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(10), from_zero.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("a")),
        other => panic!("expected a synthetic ADDED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_before_the_cache_history_gets_200_and_a_410_error_event() {
    // Objects written before the server starts: its cache lists after them, so revision 1 is
    // older than anything the cache can replay.
    let dir = capstan_testkit::temp_dir("capstan-apiserver-").unwrap();
    let mut opts = capstan_storage::embedded::EmbeddedOptions::new(dir.path());
    opts.compaction = None;
    let store: std::sync::Arc<dyn capstan_storage::Storage> =
        capstan_storage::embedded::EmbeddedStore::open(opts)
            .await
            .unwrap();
    for i in 0..3 {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}"), "namespace": "default"}});
        store
            .create(
                &format!("configmaps/default/cm-{i}"),
                serde_json::to_vec(&obj).unwrap().into(),
            )
            .await
            .unwrap();
    }
    let c = TestCluster::on(store, dir).await;
    let (code, body) = http_get(
        &c.addr.to_string(),
        "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=1",
    )
    .unwrap();
    assert_eq!(code, 200);
    let ev: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(
        (
            ev["object"]["code"].as_i64(),
            ev["object"]["reason"].as_str()
        ),
        (Some(410), Some("Expired"))
    );
}

/// kube-rs's watcher (list + watch + re-watch) converges on the same state as a list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_runtime_watcher_sees_initial_state_and_changes() {
    let c = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    api.create(&PostParams::default(), &cm("before", &[]))
        .await
        .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut names = std::collections::BTreeSet::new();
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            api.create(&PostParams::default(), &cm("after", &[]))
                .await
                .unwrap();
            api.delete("before", &DeleteParams::default())
                .await
                .unwrap();
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.try_next())
            .await
            .expect("watcher stalled")
            .unwrap()
            .unwrap();
        match ev {
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                names.insert(o.metadata.name.unwrap());
            }
            watcher::Event::Delete(o) => {
                names.remove(&o.metadata.name.unwrap());
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
        if names.len() == 1 && names.contains("after") {
            break;
        }
    }
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_only_get_list_and_watch_carry_no_data() {
    let c = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    api.create(&PostParams::default(), &cm("m1", &[("app", "web")]))
        .await
        .unwrap();
    // kube-rs's metadata verbs send Accept: application/json;as=PartialObjectMetadata(List).
    let one = api.get_metadata("m1").await.unwrap();
    assert_eq!(one.metadata.labels.unwrap()["app"], "web");
    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());
    // The raw bodies: kind PartialObjectMetadata(List), and no data field anywhere.
    let (code, raw) = http_request(
        &c.addr.to_string(),
        "GET",
        "/api/v1/namespaces/default/configmaps",
        &[(
            "accept",
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
        )],
        b"",
    )
    .unwrap();
    assert_eq!(code, 200);
    let body: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(body["kind"], "PartialObjectMetadataList");
    assert_eq!(body["items"][0]["kind"], "PartialObjectMetadata");
    assert_eq!(body["items"][0]["metadata"]["name"], "m1");
    assert!(body["items"][0].get("data").is_none());
    // A metadata watcher sees changes, deletions included, as metadata.
    let meta_api: Api<kube::core::PartialObjectMeta<ConfigMap>> =
        Api::namespaced(c.client.clone(), "default");
    let mut stream = watcher(meta_api, watcher::Config::default()).boxed();
    let api2 = api.clone();
    let writer = tokio::spawn(async move {
        api2.create(&PostParams::default(), &cm("m2", &[]))
            .await
            .unwrap();
        api2.delete("m1", &DeleteParams::default()).await.unwrap();
    });
    let mut names = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.try_next())
            .await
            .expect("metadata watcher stalled")
            .unwrap()
            .unwrap();
        match ev {
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                assert_eq!(o.types.as_ref().unwrap().kind, "PartialObjectMetadata");
                names.insert(o.metadata.name.unwrap());
            }
            watcher::Event::Delete(o) => {
                names.remove(&o.metadata.name.unwrap());
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
        if names.len() == 1 && names.contains("m2") {
            break;
        }
    }
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_every_resource_with_its_subresources() {
    let c = TestCluster::start().await;
    let addr = c.addr.to_string();
    let get = |p: &str| -> Value { serde_json::from_str(&http_get(&addr, p).unwrap().1).unwrap() };
    assert_eq!(get("/api")["versions"], json!(["v1"]));
    let groups: Vec<String> = get("/apis")["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        groups,
        [
            "admissionregistration.k8s.io",
            "apiextensions.k8s.io",
            "apiregistration.k8s.io",
            "apps",
            "authentication.k8s.io",
            "authorization.k8s.io",
            "autoscaling",
            "batch",
            "certificates.k8s.io",
            "coordination.k8s.io",
            "discovery.k8s.io",
            "events.k8s.io",
            "metrics.k8s.io",
            "networking.k8s.io",
            "policy",
            "rbac.authorization.k8s.io",
            "scheduling.k8s.io",
            "storage.k8s.io"
        ]
    );
    // The resource metrics: only read, never stored.
    let metrics = get("/apis/metrics.k8s.io/v1beta1")["resources"].clone();
    assert_eq!(
        metrics,
        json!([
            {"name": "nodes", "singularName": "nodemetrics", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"], "shortNames": [], "categories": []},
            {"name": "pods", "singularName": "podmetrics", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"], "shortNames": [], "categories": []},
        ]),
    );
    // kubectl drain evicts only when pods/eviction names policy/v1 Eviction.
    let eviction = get("/api/v1")["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods/eviction")
        .unwrap()
        .clone();
    assert_eq!(
        (
            eviction["group"].as_str(),
            eviction["version"].as_str(),
            eviction["kind"].as_str()
        ),
        (Some("policy"), Some("v1"), Some("Eviction"))
    );
    // batch/v1: Jobs and CronJobs with their status, in `kubectl get all`.
    let batch = get("/apis/batch/v1");
    let names: Vec<&str> = batch["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for name in ["jobs", "jobs/status", "cronjobs", "cronjobs/status"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let cron = batch["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "cronjobs")
        .unwrap();
    assert_eq!(cron["shortNames"], json!(["cj"]));
    assert_eq!(cron["categories"], json!(["all"]));
    let apps = get("/apis/apps/v1");
    let app_names: Vec<&str> = apps["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for name in ["statefulsets", "statefulsets/status", "statefulsets/scale"] {
        assert!(app_names.contains(&name), "{name} in {app_names:?}");
    }
    let scale = apps["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "deployments/scale")
        .unwrap()
        .clone();
    assert_eq!(
        (
            scale["group"].as_str(),
            scale["version"].as_str(),
            scale["kind"].as_str()
        ),
        (Some("autoscaling"), Some("v1"), Some("Scale"))
    );
    let core = get("/api/v1");
    let pods = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods")
        .unwrap()
        .clone();
    assert_eq!(pods["shortNames"], json!(["po"]));
    assert_eq!(pods["categories"], json!(["all"]));
    assert!(pods["verbs"].as_array().unwrap().contains(&json!("watch")));
    assert_eq!(get("/version")["major"], "1");
    assert_eq!(http_get(&addr, "/apis/nope").unwrap().0, 404);
    // kube-rs discovery works against it.
    let d = kube::Discovery::new(c.client.clone()).run().await.unwrap();
    assert!(d.has_group("apps"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_print_kubectl_columns() {
    let c = TestCluster::start().await;
    let addr = c.addr.to_string();
    let accept = [(
        "Accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )];
    let (code, body) = http_request(&addr, "GET", "/api/v1/namespaces", &accept, b"").unwrap();
    assert_eq!(code, 200);
    let t: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "Status", "Age"]);
    assert_eq!(t["rows"][0]["cells"][0], "default");
    assert_eq!(t["rows"][0]["cells"][1], "Active");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
}

/// GETs are served from the watch cache once it has caught up with the store: a GET right after
/// an acknowledged write must still see it (read-your-writes), from many clients at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_after_an_acknowledged_write_sees_it() {
    let c = TestCluster::start().await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
        tasks.push(tokio::spawn(async move {
            let name = format!("ryw-{t}");
            api.create(&PostParams::default(), &cm(&name, &[]))
                .await
                .unwrap();
            for i in 0..40 {
                let written = api
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"data": {"i": i.to_string()}})),
                    )
                    .await
                    .unwrap();
                let read = api.get(&name).await.unwrap();
                assert_eq!(
                    read.metadata.resource_version,
                    written.metadata.resource_version
                );
                assert_eq!(read.data.unwrap()["i"], i.to_string());
            }
            api.delete(&name, &DeleteParams::default()).await.unwrap();
            let (code, _, _) = api_error(api.get(&name).await.unwrap_err());
            assert_eq!(code, 404, "a get after a delete sees it gone");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Strategic merge patch on a built-in: containers merge by name, env by name, a `$patch: delete`
/// removes one container, and a malformed patch is refused without changing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategic_merge_patches_merge_lists_by_their_keys() {
    let c = TestCluster::start().await;
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                     {"name": "app", "image": "busybox", "env": [{"name": "A", "value": "1"}]},
                     {"name": "side", "image": "busybox"}]}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "busybox:2", "env": [{"name": "B", "value": "2"}]},
        {"name": "side", "$patch": "delete"}]}}}});
    let out = api
        .patch("web", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    let containers = out.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].image.as_deref(), Some("busybox:2"));
    let env: Vec<String> = containers[0]
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(env, ["A", "B"]);
    let before = api.get("web").await.unwrap().metadata.resource_version;
    let bad = json!({"spec": {"template": {"spec": {"containers": [{"image": "no-name"}]}}}});
    let (code, _, msg) = api_error(
        api.patch("web", &PatchParams::default(), &Patch::Strategic(bad))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
    assert!(msg.contains("merge key"), "{msg}");
    assert_eq!(
        api.get("web").await.unwrap().metadata.resource_version,
        before
    );
}

/// fieldValidation: Strict refuses unknown fields (nothing stored), Warn stores and warns,
/// Ignore (and no parameter) stores silently; an unknown mode is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_validation_strict_warn_and_ignore() {
    let c = TestCluster::start().await;
    let addr = c.addr.to_string();
    let ct = [("Content-Type", "application/json")];
    let body = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "colour": "red"}, "dta": {}}).to_string()
    };
    let path = "/api/v1/namespaces/default/configmaps";
    let (code, resp) = http_request(
        &addr,
        "POST",
        &format!("{path}?fieldValidation=Strict"),
        &ct,
        body("s").as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 400, "{resp}");
    assert!(
        resp.contains(
            r#"strict decoding error: unknown field \"dta\", unknown field \"metadata.colour\""#
        ),
        "{resp}"
    );
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    assert!(api.get_opt("s").await.unwrap().is_none());

    // Warn: the Warning headers.
    let b = body("w");
    let (code, head, raw) = capstan_testkit::http_exchange(
        &addr,
        "POST",
        &format!("{path}?fieldValidation=Warn"),
        &[("Content-Type", "application/json")],
        b.as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 201, "{raw}");
    let head = head.join("\n").to_ascii_lowercase();
    assert!(
        head.contains("warning: 299 - \"unknown field 'dta'\""),
        "{head}"
    );
    assert!(api.get_opt("w").await.unwrap().is_some());

    let (code, _) = http_request(&addr, "POST", path, &ct, body("i").as_bytes()).unwrap();
    assert_eq!(code, 201);
    // Not strict: unknown fields are dropped, not stored, and nobody owns them.
    let (_, stored) = http_get(&addr, &format!("{path}/i")).unwrap();
    assert!(
        !stored.contains("dta") && !stored.contains("colour"),
        "{stored}"
    );
    let (code, _) = http_request(
        &addr,
        "POST",
        &format!("{path}?fieldValidation=Loose"),
        &ct,
        body("x").as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 400);
    // Strict on a patch checks the patched object.
    let (code, resp) = http_request(
        &addr,
        "PATCH",
        &format!("{path}/i?fieldValidation=Strict"),
        &[("Content-Type", "application/merge-patch+json")],
        br#"{"spec":{"x":1}}"#,
    )
    .unwrap();
    assert_eq!(code, 400, "{resp}");
    // Warn on patches and on server-side apply: accepted, with a warning per unknown field.
    for (ct, patch) in [
        ("application/merge-patch+json", r#"{"spec":{"x":1}}"#),
        (
            "application/apply-patch+yaml",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"i"},"spec":{"x":1}}"#,
        ),
    ] {
        let (code, headers, resp) = capstan_testkit::http_exchange(
            &addr,
            "PATCH",
            &format!("{path}/i?fieldValidation=Warn&fieldManager=t"),
            &[("Content-Type", ct)],
            patch.as_bytes(),
        )
        .unwrap();
        assert_eq!(code, 200, "{ct}: {resp}");
        assert!(
            headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case("warning: 299 - \"unknown field 'spec'\"")),
            "{ct}: {headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_v3_serves_a_root_and_per_group_version_documents() {
    let c = TestCluster::start().await;
    let addr = c.addr.to_string();
    let (code, root) = http_get(&addr, "/openapi/v3").unwrap();
    assert_eq!(code, 200);
    let root: Value = serde_json::from_str(&root).unwrap();
    let url = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, doc) = http_get(&addr, &url).unwrap();
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"]
            [0]["kind"],
        "Deployment"
    );
    assert_eq!(http_get(&addr, "/openapi/v3/apis/nope/v1").unwrap().0, 404);
}

/// Services get distinct ClusterIPs from the service CIDR, a requested one when it is free and in
/// range, none when headless; the IP is immutable and released on delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_unique_cluster_ips_released_on_delete() {
    use k8s_openapi::api::core::v1::Service;
    // A /28: 16 addresses, 13 usable (not the network, .1 or the broadcast).
    let c = TestCluster::with_service_cidr("10.0.0.0/28").await;
    let api: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let svc = |name: &str, ip: Option<&str>| -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}),
        )
        .unwrap()
    };
    let mut tasks = Vec::new();
    // kube-system/kube-dns holds the 10th address (10.0.0.10): 12 are left.
    for i in 0..9 {
        let api = api.clone();
        let s = svc(&format!("s{i}"), None);
        tasks.push(tokio::spawn(async move {
            api.create(&PostParams::default(), &s).await.unwrap()
        }));
    }
    let mut ips = std::collections::BTreeSet::new();
    for t in tasks {
        let created = t.await.unwrap();
        let spec = created.spec.unwrap();
        let ip: std::net::Ipv4Addr = spec.cluster_ip.clone().unwrap().parse().unwrap();
        assert!(
            ip.octets()[..3] == [10, 0, 0] && (2..15).contains(&ip.octets()[3]),
            "{ip}"
        );
        assert_eq!(spec.cluster_ips.unwrap(), [ip.to_string()]);
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.ports.unwrap()[0].protocol.as_deref(), Some("TCP"));
        assert!(ips.insert(ip), "{ip} handed out twice");
    }
    assert!(ips.insert("10.0.0.10".parse().unwrap()), "kube-dns's");
    let free: Vec<String> = (2..15)
        .map(|o| format!("10.0.0.{o}"))
        .filter(|ip| !ips.contains(&ip.parse().unwrap()))
        .collect();
    assert_eq!(free.len(), 3);
    // A requested free IP is granted; a taken one and one out of range are 422.
    let got = api
        .create(&PostParams::default(), &svc("pick", Some(&free[0])))
        .await
        .unwrap();
    assert_eq!(
        got.spec.unwrap().cluster_ip.as_deref(),
        Some(free[0].as_str())
    );
    let (code, _, msg) = api_error(
        api.create(&PostParams::default(), &svc("dup", Some(&free[0])))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(msg.contains("already allocated"), "{msg}");
    let (code, _, msg) = api_error(
        api.create(&PostParams::default(), &svc("far", Some("10.1.0.5")))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(msg.contains("not in the valid range"), "{msg}");
    assert!(api.get_opt("dup").await.unwrap().is_none());
    // Headless: no IP taken.
    let headless = api
        .create(&PostParams::default(), &svc("headless", Some("None")))
        .await
        .unwrap();
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    // Immutable: an update without it keeps it, one changing it is refused.
    let p = api
        .patch(
            "pick",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"clusterIP": free[1]}})),
        )
        .await;
    assert_eq!(api_error(p.unwrap_err()).0, 422);
    let mut replaced = api.get("pick").await.unwrap();
    replaced.spec.as_mut().unwrap().cluster_ip = None;
    replaced.spec.as_mut().unwrap().cluster_ips = None;
    let kept = api
        .replace("pick", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(
        kept.spec.unwrap().cluster_ip.as_deref(),
        Some(free[0].as_str())
    );
    // Exhaustion, then release on delete.
    api.create(&PostParams::default(), &svc("x1", None))
        .await
        .unwrap();
    api.create(&PostParams::default(), &svc("x2", None))
        .await
        .unwrap();
    let (code, _, msg) = api_error(
        api.create(&PostParams::default(), &svc("x3", None))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 500, "{msg}");
    api.delete("pick", &DeleteParams::default()).await.unwrap();
    let reused = api
        .create(&PostParams::default(), &svc("again", Some(&free[0])))
        .await
        .unwrap();
    assert_eq!(
        reused.spec.unwrap().cluster_ip.as_deref(),
        Some(free[0].as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_collection_removes_only_what_the_selector_matches() {
    let c = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    for i in 0..6 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        api.create(
            &PostParams::default(),
            &cm(&format!("c{i}"), &[("tier", tier)]),
        )
        .await
        .unwrap();
    }
    let other: Api<ConfigMap> = Api::namespaced(c.client.clone(), "kube-system");
    other
        .create(&PostParams::default(), &cm("elsewhere", &[("tier", "web")]))
        .await
        .unwrap();
    let deleted = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("tier=web"),
        )
        .await
        .unwrap();
    let gone: Vec<String> = deleted
        .left()
        .unwrap()
        .items
        .into_iter()
        .map(|o| o.metadata.name.unwrap())
        .collect();
    assert_eq!(gone, ["c0", "c2", "c4"]);
    let left: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| o.metadata.name.unwrap())
        .collect();
    assert_eq!(left, ["c1", "c3", "c5"]);
    assert!(
        other.get_opt("elsewhere").await.unwrap().is_some(),
        "other namespaces untouched"
    );
}

/// Streaming lists: kube-rs's watcher with `streaming_lists()` gets the current objects, the
/// initial-events-end bookmark, then changes; the parameter rules are Kubernetes'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_lists_send_initial_events_then_a_bookmark() {
    let c = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    for n in ["a", "b"] {
        api.create(&PostParams::default(), &cm(n, &[]))
            .await
            .unwrap();
    }
    let mut stream = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut init = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, stream.try_next())
            .await
            .expect("stalled")
            .unwrap()
            .unwrap()
        {
            watcher::Event::Init => {}
            watcher::Event::InitApply(o) => init.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            other => panic!("before InitDone: {other:?}"),
        }
    }
    init.sort();
    assert_eq!(init, ["a", "b"]);
    api.create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    match tokio::time::timeout_at(deadline, stream.try_next())
        .await
        .expect("stalled")
        .unwrap()
        .unwrap()
    {
        watcher::Event::Apply(o) => assert_eq!(o.metadata.name.as_deref(), Some("c")),
        other => panic!("expected the new object, got {other:?}"),
    }

    let addr = c.addr.to_string();
    let (code, body) = http_get(
        &addr,
        "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true",
    )
    .unwrap();
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("resourceVersionMatch") && body.contains("allowWatchBookmarks"),
        "{body}"
    );
    // Raw: ADDED x3, then the bookmark with the annotation (the stream ends at timeoutSeconds).
    let (code, body) = http_get(&addr, "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1").unwrap();
    assert_eq!(code, 200);
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "ADDED", "ADDED", "BOOKMARK"]);
    assert_eq!(
        events[3]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

/// Server-side apply through kube-rs: create by apply, ownership in managedFields, a conflict
/// with another manager (409 with the field), force taking it over, and a field the manager
/// stops applying removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_tracks_owners_conflicts_and_removals() {
    let c = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let config = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": data});
    let alice = PatchParams::apply("alice");
    let created = api
        .patch(
            "ssa",
            &alice,
            &Patch::Apply(config(json!({"a": "1", "b": "2"}))),
        )
        .await
        .unwrap();
    let mf = created.metadata.managed_fields.clone().unwrap();
    assert_eq!(
        (mf[0].manager.as_deref(), mf[0].operation.as_deref()),
        (Some("alice"), Some("Apply"))
    );
    // Bob sets a field Alice owns to another value: conflict, nothing written.
    let bob = PatchParams::apply("bob");
    let err = api
        .patch("ssa", &bob, &Patch::Apply(config(json!({"a": "9"}))))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status.message.contains(r#"conflict with "alice""#) && status.message.contains(".data.a"),
        "{}",
        status.message
    );
    assert_eq!(
        status.details.unwrap().causes[0].reason,
        "FieldManagerConflict"
    );
    assert_eq!(api.get("ssa").await.unwrap().data.unwrap()["a"], "1");
    // Forced: Bob owns data.a now.
    let forced = api
        .patch(
            "ssa",
            &bob.clone().force(),
            &Patch::Apply(config(json!({"a": "9"}))),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["a"], "9");
    // Alice stops applying b (owned by her alone): removed; a is Bob's: kept.
    let after = api
        .patch("ssa", &alice, &Patch::Apply(config(json!({"c": "3"}))))
        .await
        .unwrap();
    let data = after.data.unwrap();
    assert_eq!(data.get("a").map(String::as_str), Some("9"));
    assert!(!data.contains_key("b"), "{data:?}");
    assert_eq!(data.get("c").map(String::as_str), Some("3"));
    // A plain write takes the fields it changes: the applier then conflicts with it.
    let editor = PatchParams {
        field_manager: Some("editor".into()),
        ..Default::default()
    };
    api.patch("ssa", &editor, &Patch::Merge(json!({"data": {"c": "4"}})))
        .await
        .unwrap();
    let err = api
        .patch("ssa", &alice, &Patch::Apply(config(json!({"c": "3"}))))
        .await
        .unwrap_err();
    let (code, _, msg) = api_error(err);
    assert_eq!(code, 409);
    assert!(
        msg.contains(r#"conflict with "editor""#) && msg.contains(".data.c"),
        "{msg}"
    );
    let managers: Vec<(String, String)> = api
        .get("ssa")
        .await
        .unwrap()
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|m| (m.manager.unwrap(), m.operation.unwrap()))
        .collect();
    assert!(
        managers.contains(&("editor".to_string(), "Update".to_string())),
        "{managers:?}"
    );
    // A field manager is required.
    let (code, _, _) = api_error(
        api.patch(
            "ssa",
            &PatchParams::default(),
            &Patch::Apply(config(json!({}))),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
}

/// Review findings on list/watch parameters: a resourceVersion newer than the store is a 504
/// after waiting, never an older list; `limit` with a resourceVersion reads that exact snapshot;
/// a negative resourceVersion is a 400; `timeoutSeconds=0` means the default, not "end now".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_watch_resource_version_rules() {
    let c = TestCluster::start().await;
    let addr = c.addr.to_string();
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let first = api
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let rv: i64 = first.metadata.resource_version.unwrap().parse().unwrap();
    api.create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();
    let path = "/api/v1/namespaces/default/configmaps";

    let (code, body) = http_get(&addr, &format!("{path}?resourceVersion={}", rv + 1000)).unwrap();
    assert_eq!(code, 504, "{body}");
    let (code, body) = http_get(&addr, &format!("{path}?limit=10&resourceVersion={rv}")).unwrap();
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a"], "the snapshot at {rv}, before b");
    assert_eq!(
        http_get(&addr, &format!("{path}?resourceVersion=-5"))
            .unwrap()
            .0,
        400
    );

    // timeoutSeconds=0: the watch stays open (the next write arrives on it).
    let mut w = api
        .watch(&WatchParams::default().timeout(0), &rv.to_string())
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(10), w.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_ip_claimed_by_no_service_is_repaired_on_the_second_pass() {
    use k8s_openapi::api::core::v1::Service;
    let c = TestCluster::start().await;
    let api: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "real"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .unwrap();
    let ip = api
        .create(&PostParams::default(), &svc)
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    // A crash between claiming an IP and storing its Service leaves this behind.
    c.store
        .create("serviceips/10.96.0.50", bytes::Bytes::from("default/ghost"))
        .await
        .unwrap();
    let first = c.api.ips.repair(&Default::default()).await.unwrap();
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        vec!["10.96.0.50"],
        "only the unused claim"
    );
    assert!(
        c.store
            .get("serviceips/10.96.0.50")
            .await
            .unwrap()
            .is_some(),
        "kept after one pass"
    );
    // Claimed again in between (a new Service on its way): not released on the second pass.
    let again_claimed = c.store.get("serviceips/10.96.0.50").await.unwrap().unwrap();
    c.store
        .update(
            "serviceips/10.96.0.50",
            bytes::Bytes::from("default/newcomer"),
            again_claimed.mod_revision,
        )
        .await
        .unwrap();
    let second = c.api.ips.repair(&first).await.unwrap();
    assert!(
        c.store
            .get("serviceips/10.96.0.50")
            .await
            .unwrap()
            .is_some(),
        "re-claimed: kept"
    );
    // Unused and unchanged for a whole pass: released.
    let third = c.api.ips.repair(&second).await.unwrap();
    assert!(third.is_empty());
    assert!(
        c.store
            .get("serviceips/10.96.0.50")
            .await
            .unwrap()
            .is_none(),
        "released"
    );
    assert!(
        c.store
            .get(&format!("serviceips/{ip}"))
            .await
            .unwrap()
            .is_some(),
        "in use: kept"
    );
    // A Service whose claim was lost gets it back.
    c.store
        .delete(&format!("serviceips/{ip}"), None)
        .await
        .unwrap();
    c.api.ips.repair(&Default::default()).await.unwrap();
    assert!(
        c.store
            .get(&format!("serviceips/{ip}"))
            .await
            .unwrap()
            .is_some(),
        "re-claimed"
    );
    // The released IP can be asked for again.
    let mut again = svc.clone();
    again.metadata.name = Some("again".into());
    again.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.50".into());
    api.create(&PostParams::default(), &again).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_carry_the_watch_past_changes_it_does_not_see() {
    let c = TestCluster::start().await;
    c.api.set_bookmark_interval(Duration::from_millis(100));
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let start: i64 = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    let mut events = cms
        .watch(&WatchParams::default(), &start.to_string()) // bookmarks on by default
        .await
        .unwrap()
        .boxed();
    let bookmark_rv = |e: WatchEvent<ConfigMap>| -> i64 {
        match e {
            WatchEvent::Bookmark(b) => b.metadata.resource_version.parse().unwrap(),
            other => panic!("expected only bookmarks, got {other:?}"),
        }
    };
    // The first bookmark is at the watch's start, never 0.
    let first = bookmark_rv(events.try_next().await.unwrap().unwrap());
    assert!(first >= start, "{first} < {start}");
    // A change in another namespace is not sent, but bookmarks move past it.
    let other: Api<ConfigMap> = Api::namespaced(c.client.clone(), "kube-system");
    let written: i64 = other
        .create(&PostParams::default(), &cm("elsewhere", &[]))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rv = bookmark_rv(events.try_next().await.unwrap().unwrap());
        if rv >= written {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no bookmark reached {written}"
        );
    }
}

/// kube-rs's event recorder writes events.k8s.io/v1; the same events are core/v1 Events for
/// `kubectl describe` and friends (one store, kube-apiserver's field mapping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_k8s_io_and_core_events_are_the_same_objects() {
    use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let c = TestCluster::start().await;
    let recorder = Recorder::new(
        c.client.clone(),
        Reporter {
            controller: "capstan-test".into(),
            instance: Some("test-1".into()),
        },
    );
    let pod = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        uid: Some("0000-1111".into()),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Warning,
        reason: "BackOff".into(),
        note: Some("Back-off restarting failed container".into()),
        action: "Restart".into(),
        secondary: None,
    };
    recorder.publish(&ev, &pod).await.unwrap();
    recorder.publish(&ev, &pod).await.unwrap(); // the second one becomes a series
    let core: Api<CoreEvent> = Api::namespaced(c.client.clone(), "default");
    let listed = core
        .list(&ListParams::default().fields("involvedObject.name=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "{listed:?}");
    let e = &listed.items[0];
    assert_eq!(
        e.message.as_deref(),
        Some("Back-off restarting failed container")
    );
    assert_eq!(e.reason.as_deref(), Some("BackOff"));
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.reporting_component.as_deref(), Some("capstan-test"));
    assert_eq!(e.involved_object.kind.as_deref(), Some("Pod"));
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(Some(2)));
    // And a core/v1 Event reads back through events.k8s.io/v1.
    let raw: Value = serde_json::from_str(
        &http_get(
            &c.addr.to_string(),
            &format!(
                "/apis/events.k8s.io/v1/namespaces/default/events/{}",
                e.metadata.name.as_deref().unwrap()
            ),
        )
        .unwrap()
        .1,
    )
    .unwrap();
    assert_eq!(raw["apiVersion"], "events.k8s.io/v1");
    assert_eq!(raw["regarding"]["name"], "web");
    assert_eq!(raw["note"], "Back-off restarting failed container");
    assert!(raw.get("message").is_none() && raw.get("involvedObject").is_none());
}
