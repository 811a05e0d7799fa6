//! CustomResourceDefinitions through kube-rs (`Api<DynamicObject>`) and raw HTTP: served within a
//! second and gone after delete, on every server sharing the store; schema validation, pruning and
//! defaulting; status and scale subresources; several versions; name conflicts; cleanup of
//! instances (and their finalizers) before the CRD goes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_testkit::{TestCluster, api_error, http_exchange, http_get, http_request, until};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::{Value, json};

fn widget_crd(scope: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": scope,
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
            "versions": [
                {"name": "v1", "served": true, "storage": true,
                 "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}}},
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "color": {"type": "string", "enum": ["red", "green", "blue"], "default": "red"},
                        "replicas": {"type": "integer", "format": "int32", "default": 1},
                        "owner": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
                        "since": {"type": "string", "format": "date-time"},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                    "status": {"type": "object", "properties": {
                        "replicas": {"type": "integer"}, "selector": {"type": "string"}, "phase": {"type": "string"}}}}}},
                 "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}},
                 "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Color", "type": "string", "jsonPath": ".spec.color"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                 "selectableFields": [{"jsonPath": ".spec.color"}]},
                {"name": "v1beta1", "served": true, "storage": false, "deprecated": true,
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
            ]
        }
    })
}

fn widgets(c: &TestCluster, version: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("example.com", version, "Widget");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    Api::namespaced_with(c.client.clone(), "default", &ar)
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": name}, "spec": spec}))
    .unwrap()
}

async fn served(addr: std::net::SocketAddr, path: &'static str) -> bool {
    tokio::task::spawn_blocking(move || http_get(&addr.to_string(), path).map(|(c, _)| c == 200))
        .await
        .unwrap()
        .unwrap_or(false)
}

async fn create_crd(c: &TestCluster, crd: Value) -> CustomResourceDefinition {
    c.create_crd(crd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_is_served_within_a_second_and_gone_after_delete() {
    let c = TestCluster::start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    assert!(!served(c.addr, "/apis/example.com/v1").await);
    let started = Instant::now();
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(widget_crd("Namespaced")).unwrap(),
    )
    .await
    .unwrap();
    until(Duration::from_secs(1), "discovery lists widgets", || {
        served(c.addr, "/apis/example.com/v1")
    })
    .await;
    let w = widgets(&c, "v1");
    until(Duration::from_secs(1), "widgets are served", || {
        let w = w.clone();
        async move { w.list(&ListParams::default()).await.is_ok() }
    })
    .await;
    eprintln!("CRD served after {:?}", started.elapsed());
    until(Duration::from_secs(1), "CRD status written", || {
        let crds = crds.clone();
        async move {
            crds.get("widgets.example.com")
                .await
                .is_ok_and(|c| c.status.is_some_and(|s| s.conditions.is_some()))
        }
    })
    .await;

    let crd = crds.get("widgets.example.com").await.unwrap();
    assert_eq!(
        crd.metadata.finalizers.as_deref(),
        Some(&["customresourcecleanup.apiextensions.k8s.io".to_string()][..])
    );
    let status = crd.status.unwrap();
    let conds = status.conditions.unwrap();
    for ty in ["NamesAccepted", "Established"] {
        assert!(
            conds.iter().any(|c| c.type_ == ty && c.status == "True"),
            "{ty} in {conds:?}"
        );
    }
    let accepted = status.accepted_names.unwrap();
    assert_eq!(accepted.kind, "Widget");
    assert_eq!(accepted.list_kind.as_deref(), Some("WidgetList"));
    assert_eq!(status.stored_versions, Some(vec!["v1".to_string()]));

    // Discovery: names, short names, categories, subresources.
    let (_, body) = http_get(&c.addr.to_string(), "/apis/example.com/v1").unwrap();
    let list: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["widgets", "widgets/status", "widgets/scale"]);
    assert_eq!(list["resources"][0]["shortNames"], json!(["wd"]));
    assert_eq!(list["resources"][0]["categories"], json!(["all"]));
    let (_, groups) = http_get(&c.addr.to_string(), "/apis").unwrap();
    let groups: Value = serde_json::from_str(&groups).unwrap();
    let g = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "example.com")
        .expect("example.com in /apis");
    assert_eq!(g["preferredVersion"]["version"], "v1");

    // Every verb on the custom resource, and a watch.
    let mut events = w.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    w.create(&PostParams::default(), &widget("a", json!({"size": 3})))
        .await
        .unwrap();
    match events.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("a")),
        other => panic!("expected ADDED, got {other:?}"),
    }
    w.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 4}})),
    )
    .await
    .unwrap();
    match events.try_next().await.unwrap().unwrap() {
        WatchEvent::Modified(o) => assert_eq!(o.data["spec"]["size"], 4),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    let got = w.get("a").await.unwrap();
    assert_eq!(got.metadata.generation, Some(2));

    // Deleting the CRD deletes its instances first, then the CRD; then it is not served.
    // Even what the API cannot reach goes: an undecodable value, an object under a foreign key.
    c.store
        .create(
            "example.com/widgets/default/junk",
            bytes::Bytes::from("not json"),
        )
        .await
        .unwrap();
    c.store
        .create(
            "example.com/widgets/default/misfiled",
            bytes::Bytes::from(r#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"other","namespace":"default"}}"#),
        )
        .await
        .unwrap();
    let old_info = c.api.registry.get("example.com", "v1", "widgets").unwrap();
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    until(Duration::from_secs(5), "the CRD is gone", || {
        let crds = crds.clone();
        async move { crds.get_opt("widgets.example.com").await.unwrap().is_none() }
    })
    .await;
    until(
        Duration::from_secs(1),
        "discovery drops example.com",
        || async { !served(c.addr, "/apis/example.com/v1").await },
    )
    .await;
    // A request that resolved the resource before it went gets a 404, not a new watch cache.
    assert_eq!(c.api.cacher(&old_info).unwrap_err().code, 404);
    assert!(
        c.store
            .list("example.com/widgets/", Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "instances deleted from the store"
    );
    // The client watch of the removed resource ended.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut n = 0;
        while let Ok(Some(_)) = events.try_next().await {
            n += 1;
        }
        n
    })
    .await
    .expect("the watch of a removed resource ends");
    assert!(rest <= 1, "at most the DELETED event, got {rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_are_validated_pruned_and_defaulted() {
    let c = TestCluster::start().await;
    create_crd(&c, widget_crd("Namespaced")).await;
    let w = widgets(&c, "v1");

    // Every failing field, one 422, nothing stored.
    let bad = widget(
        "bad",
        json!({"size": 11, "color": "purple", "owner": "UPPER-and-long", "since": "yesterday", "replicas": 3000000000i64}),
    );
    let (code, reason, message) =
        api_error(w.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
    for field in [
        "spec.size",
        "spec.color",
        "spec.owner",
        "spec.since",
        "spec.replicas",
    ] {
        assert!(message.contains(field), "{field} not in {message}");
    }
    assert!(
        message.contains("should be less than or equal to 10"),
        "{message}"
    );
    assert!(
        message.contains("Unsupported value: \"purple\""),
        "{message}"
    );
    let (code, _, message) = api_error(
        w.create(&PostParams::default(), &widget("nosize", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(message.contains("spec.size: Required value"), "{message}");
    assert!(
        w.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Unknown fields: strict is a 400 naming them; ignore prunes them; defaults fill in.
    let sloppy = widget(
        "ok",
        json!({"size": 2, "shade": "dark", "extra": {"kept": [1, 2]}}),
    );
    let addr = c.addr.to_string();
    let (code, body) = http_request(
        &addr,
        "POST",
        "/apis/example.com/v1/namespaces/default/widgets?fieldValidation=Strict",
        &[("Content-Type", "application/json")],
        &serde_json::to_vec(&sloppy).unwrap(),
    )
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("unknown field \\\"spec.shade\\\""), "{body}");
    let created = w.create(&PostParams::default(), &sloppy).await.unwrap();
    assert!(created.data["spec"].get("shade").is_none());
    assert_eq!(created.data["spec"]["extra"]["kept"], json!([1, 2]));
    assert_eq!(created.data["spec"]["color"], "red");
    assert_eq!(created.data["spec"]["replicas"], 1);

    // Updates are validated too, and a failed one changes nothing.
    let mut changed = created.clone();
    changed.data["spec"]["size"] = json!(0);
    let (code, _, message) = api_error(
        w.replace("ok", &PostParams::default(), &changed)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("should be greater than or equal to 1"));
    let (code, _, _) = api_error(
        w.patch(
            "ok",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "replace", "path": "/spec/color", "value": 7}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert_eq!(w.get("ok").await.unwrap().data["spec"]["size"], 2);

    // No strategic merge for custom resources (415), as in Kubernetes; SSA works.
    let (code, body) = http_request(
        &addr,
        "PATCH",
        "/apis/example.com/v1/namespaces/default/widgets/ok",
        &[("Content-Type", "application/strategic-merge-patch+json")],
        br#"{"spec":{"size":3}}"#,
    )
    .unwrap();
    assert_eq!(code, 415, "{body}");
    let applied = w
        .patch(
            "ok",
            &PatchParams::apply("tester").force(),
            &Patch::Apply(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "ok"}, "spec": {"size": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(applied.data["spec"]["size"], 5);
    assert!(
        applied
            .metadata
            .managed_fields
            .unwrap()
            .iter()
            .any(|m| m.manager.as_deref() == Some("tester"))
    );

    // The schema's metadata.name rule holds; metadata keeps ObjectMeta's fields only.
    let (code, _, message) = api_error(
        w.create(
            &PostParams::default(),
            &widget("a-name-longer-than-twenty", json!({"size": 1})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("metadata.name"), "{message}");
    let odd = json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "meta", "bogus": {"x": 1}}, "spec": {"size": 1}});
    let (code, body) = http_request(
        &addr,
        "POST",
        "/apis/example.com/v1/namespaces/default/widgets?fieldValidation=Strict",
        &[("Content-Type", "application/json")],
        odd.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("metadata.bogus"), "{body}");
    let (code, body) = http_request(
        &addr,
        "POST",
        "/apis/example.com/v1/namespaces/default/widgets",
        &[("Content-Type", "application/json")],
        odd.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    assert!(w.get("meta").await.unwrap().metadata.name.is_some());
    assert!(!body.contains("bogus"), "{body}");

    // dryRun validates and stores nothing.
    w.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &widget("dry", json!({"size": 1})),
    )
    .await
    .unwrap();
    assert!(w.get_opt("dry").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_scale_subresources_split_writes() {
    let c = TestCluster::start().await;
    create_crd(&c, widget_crd("Namespaced")).await;
    let w = widgets(&c, "v1");
    let mut obj = widget("s", json!({"size": 1, "replicas": 2}));
    obj.data["status"] = json!({"phase": "Ignored"});
    let created = w.create(&PostParams::default(), &obj).await.unwrap();
    assert!(
        created.data.get("status").is_none(),
        "status dropped on create"
    );

    // /status writes status only; the main endpoint ignores status.
    let after = w
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 9}, "status": {"phase": "Ready", "replicas": 2, "selector": "app=s"}})),
        )
        .await
        .unwrap();
    assert_eq!(after.data["status"]["phase"], "Ready");
    assert_eq!(after.data["spec"]["size"], 1);
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "status writes keep the generation"
    );
    let after = w
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}, "status": {"phase": "Hacked"}})),
        )
        .await
        .unwrap();
    assert_eq!(after.data["status"]["phase"], "Ready");
    assert_eq!(after.data["spec"]["size"], 2);
    assert_eq!(after.metadata.generation, Some(2));

    // Scale reads and writes the declared paths.
    let scale = w.get_scale("s").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(2));
    let status = scale.status.unwrap();
    assert_eq!(status.replicas, 2);
    assert_eq!(status.selector.as_deref(), Some("app=s"));
    w.patch_scale(
        "s",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 7}})),
    )
    .await
    .unwrap();
    assert_eq!(w.get("s").await.unwrap().data["spec"]["replicas"], 7);
    // Replicas that are not an int32 are refused, never read as 0.
    for bad in [json!("3"), json!(2.5), json!(4_294_967_296i64)] {
        let (code, _, message) = api_error(
            w.patch_scale(
                "s",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": bad}})),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(code, 400, "{message}");
    }
    assert_eq!(w.get("s").await.unwrap().data["spec"]["replicas"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_share_storage_and_deprecated_ones_warn() {
    let c = TestCluster::start().await;
    create_crd(&c, widget_crd("Namespaced")).await;
    let beta = widgets(&c, "v1beta1");
    let mut obj = widget("b", json!({"size": 3, "anything": true}));
    obj.types.as_mut().unwrap().api_version = "example.com/v1beta1".into();
    beta.create(&PostParams::default(), &obj).await.unwrap();
    // Stored at the storage version, served at each version with its apiVersion.
    let raw = c
        .store
        .get("example.com/widgets/default/b")
        .await
        .unwrap()
        .unwrap();
    let stored: Value = serde_json::from_slice(&raw.value).unwrap();
    assert_eq!(stored["apiVersion"], "example.com/v1");
    let v1 = widgets(&c, "v1").get("b").await.unwrap();
    assert_eq!(v1.types.unwrap().api_version, "example.com/v1");
    assert!(
        v1.data["spec"].get("anything").is_none(),
        "v1's schema prunes"
    );
    assert_eq!(
        v1.data["spec"]["color"], "red",
        "v1's defaults apply on read"
    );
    let b = beta.get("b").await.unwrap();
    assert_eq!(b.types.unwrap().api_version, "example.com/v1beta1");
    // v1beta1 has no status subresource: status is written through the object, and bumps the
    // generation like any other change.
    let generation = b.metadata.generation.unwrap();
    let patched = beta
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Seen"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["status"]["phase"], "Seen");
    assert_eq!(patched.metadata.generation, Some(generation + 1));

    let (code, headers, _) = http_exchange(
        &c.addr.to_string(),
        "GET",
        "/apis/example.com/v1beta1/namespaces/default/widgets",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(
        headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("warning:")
                && h.contains("example.com/v1beta1 Widget is deprecated")),
        "{headers:?}"
    );
    let (_, headers, _) = http_exchange(
        &c.addr.to_string(),
        "GET",
        "/apis/example.com/v1/namespaces/default/widgets",
        &[],
        b"",
    )
    .unwrap();
    assert!(
        !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("warning:"))
    );

    // Switching the storage version records it in storedVersions.
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    crds.patch(
        "widgets.example.com",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/versions/0/storage", "value": false},
                {"op": "replace", "path": "/spec/versions/1/storage", "value": true}
            ]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    until(Duration::from_secs(2), "storedVersions has both", || {
        let crds = crds.clone();
        async move {
            crds.get("widgets.example.com")
                .await
                .unwrap()
                .status
                .and_then(|s| s.stored_versions)
                == Some(vec!["v1".into(), "v1beta1".into()])
        }
    })
    .await;
    // Updating a CRD changes what is served: v1 stops being served, within a second.
    crds.patch(
        "widgets.example.com",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/versions/0/served", "value": false}
            ]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    until(Duration::from_secs(1), "v1 no longer served", || async {
        !served(c.addr, "/apis/example.com/v1").await
    })
    .await;
    assert!(served(c.addr, "/apis/example.com/v1beta1").await);
    // The objects are still there, at the version still served.
    assert_eq!(
        beta.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_conflicting_crds_are_refused_or_reported() {
    let c = TestCluster::start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    let mut bad = widget_crd("Namespaced");
    bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["loose"] =
        json!({"description": "no type"});
    bad["spec"]["versions"][1]["storage"] = json!(true);
    let (code, _, message) = api_error(
        crds.create(
            &PostParams::default(),
            &serde_json::from_value(bad).unwrap(),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("properties[loose].type: Required value"),
        "{message}"
    );
    assert!(
        message.contains("exactly one version marked as storage version"),
        "{message}"
    );

    create_crd(&c, widget_crd("Namespaced")).await;
    // Once established: scope and kind are immutable, stored versions cannot be dropped.
    for (ops, want) in [
        (
            json!([{"op": "replace", "path": "/spec/scope", "value": "Cluster"}]),
            "spec.scope",
        ),
        (
            json!([{"op": "replace", "path": "/spec/names/kind", "value": "Gadget"}]),
            "spec.names.kind",
        ),
        (
            json!([{"op": "remove", "path": "/spec/versions/0"}, {"op": "replace", "path": "/spec/versions/0/storage", "value": true}]),
            "status.storedVersions[0]",
        ),
    ] {
        let (code, _, message) = api_error(
            crds.patch(
                "widgets.example.com",
                &PatchParams::default(),
                &Patch::Json::<()>(serde_json::from_value(ops).unwrap()),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(code, 422, "{message}");
        assert!(message.contains(want), "{want}: {message}");
    }
    // A second CRD wanting the kind Widget in the same group is stored but not accepted.
    let mut rival = widget_crd("Namespaced");
    rival["metadata"]["name"] = json!("gizmos.example.com");
    rival["spec"]["names"] = json!({"plural": "gizmos", "kind": "Widget"});
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(rival).unwrap(),
    )
    .await
    .unwrap();
    until(
        Duration::from_secs(2),
        "NamesAccepted=False on the rival",
        || {
            let crds = crds.clone();
            async move {
                let conds = crds
                    .get("gizmos.example.com")
                    .await
                    .unwrap()
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default();
                conds.iter().any(|c| {
                    c.type_ == "NamesAccepted"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("NameConflict")
                        && c.message.as_deref() == Some("\"widget\" is already in use")
                }) && conds
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "False")
            }
        },
    )
    .await;
    let (code, _) = http_get(
        &c.addr.to_string(),
        "/apis/example.com/v1/namespaces/default/gizmos",
    )
    .unwrap();
    assert_eq!(code, 404);
    // Once the holder goes, the rival gets the names.
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    until(Duration::from_secs(3), "the rival is served", || {
        served(c.addr, "/apis/example.com/v1/gizmos")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_crd_waits_for_instance_finalizers() {
    let c = TestCluster::start().await;
    create_crd(&c, widget_crd("Cluster")).await;
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let w: Api<DynamicObject> = Api::all_with(
        c.client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
    );
    let mut held = widget("held", json!({"size": 1}));
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    w.create(&PostParams::default(), &held).await.unwrap();
    w.create(&PostParams::default(), &widget("free", json!({"size": 1})))
        .await
        .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    until(
        Duration::from_secs(3),
        "the free instance is deleted",
        || {
            let w = w.clone();
            async move { w.get_opt("free").await.unwrap().is_none() }
        },
    )
    .await;
    // Terminating: no creates; the held instance waits; the CRD waits for it.
    let terminating = crds.get("widgets.example.com").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let (code, _, message) = api_error(
        w.create(&PostParams::default(), &widget("late", json!({"size": 1})))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 405, "{message}");
    until(Duration::from_secs(2), "Terminating condition", || {
        let crds = crds.clone();
        async move {
            crds.get("widgets.example.com")
                .await
                .unwrap()
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Terminating" && c.status == "True")
        }
    })
    .await;
    // The CRD controller marks the held instance deleted as it empties the resource.
    until(
        Duration::from_secs(3),
        "the held instance is marked deleted",
        || {
            let w = w.clone();
            async move {
                w.get("held")
                    .await
                    .unwrap()
                    .metadata
                    .deletion_timestamp
                    .is_some()
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the cleanup loop runs meanwhile
    assert!(crds.get_opt("widgets.example.com").await.unwrap().is_some());
    w.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    until(
        Duration::from_secs(3),
        "the CRD goes after its last instance",
        || {
            let crds = crds.clone();
            async move { crds.get_opt("widgets.example.com").await.unwrap().is_none() }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_selectors_and_openapi_cover_custom_resources() {
    let c = TestCluster::start().await;
    create_crd(&c, widget_crd("Namespaced")).await;
    let w = widgets(&c, "v1");
    for (name, color) in [("r", "red"), ("g", "green")] {
        w.create(
            &PostParams::default(),
            &widget(name, json!({"size": 2, "color": color})),
        )
        .await
        .unwrap();
    }
    let addr = c.addr.to_string();
    let (code, body) = http_request(
        &addr,
        "GET",
        "/apis/example.com/v1/namespaces/default/widgets",
        &[("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")],
        b"",
    )
    .unwrap();
    assert_eq!(code, 200);
    let table: Value = serde_json::from_str(&body).unwrap();
    let cols: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, vec!["Name", "Size", "Color", "Phase", "Age"]);
    assert_eq!(table["columnDefinitions"][3]["priority"], 1);
    assert_eq!(table["rows"][0]["cells"][0], "g");
    assert_eq!(table["rows"][0]["cells"][1], 2);
    assert_eq!(table["rows"][0]["cells"][2], "green");
    assert!(table["rows"][0]["cells"][3].is_null());

    // Pagination and label selectors work as for built-ins.
    let page = w.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let token = page.metadata.continue_.clone().expect("a continue token");
    let rest = w
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_ne!(rest.items[0].metadata.name, page.items[0].metadata.name);
    assert!(rest.metadata.continue_.is_none_or(|c| c.is_empty()));
    w.patch(
        "r",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"hue": "warm"}}})),
    )
    .await
    .unwrap();
    let warm = w
        .list(&ListParams::default().labels("hue=warm"))
        .await
        .unwrap();
    assert_eq!(warm.items.len(), 1);

    // selectableFields extend field selectors; others are refused.
    let red = w
        .list(&ListParams::default().fields("spec.color=red"))
        .await
        .unwrap();
    assert_eq!(red.items.len(), 1);
    assert_eq!(red.items[0].metadata.name.as_deref(), Some("r"));
    let (code, _, _) = api_error(
        w.list(&ListParams::default().fields("spec.size=2"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);

    // OpenAPI v3 carries the schema, tagged with its GVK, ObjectMeta included.
    let (_, root) = http_get(&addr, "/openapi/v3").unwrap();
    let root: Value = serde_json::from_str(&root).unwrap();
    let url = root["paths"]["apis/example.com/v1"]["serverRelativeURL"]
        .as_str()
        .expect("the CRD's group/version in the OpenAPI root")
        .to_string();
    let (_, doc) = http_get(&addr, &url).unwrap();
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let schema = &doc["components"]["schemas"]["com.example.v1.Widget"];
    assert_eq!(
        schema["x-kubernetes-group-version-kind"][0]["kind"],
        "Widget"
    );
    assert_eq!(
        schema["properties"]["spec"]["properties"]["size"]["maximum"].as_f64(),
        Some(10.0)
    );
    assert!(
        doc["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object()
    );
    let patch =
        &doc["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"];
    assert!(patch["requestBody"]["content"]["application/merge-patch+json"].is_object());
    assert!(patch["requestBody"]["content"]["application/strategic-merge-patch+json"].is_null());

    // ... and in /openapi/v2 (JSON here; kubectl reads its protobuf form in the e2e suite).
    let (code, v2) = http_request(
        &addr,
        "GET",
        "/openapi/v2",
        &[("Accept", "application/json")],
        b"",
    )
    .unwrap();
    assert_eq!(code, 200);
    let v2: Value = serde_json::from_str(&v2).unwrap();
    assert_eq!(v2["swagger"], "2.0");
    let w = &v2["definitions"]["com.example.v1.Widget"];
    assert_eq!(w["x-kubernetes-group-version-kind"][0]["kind"], "Widget");
    assert_eq!(
        w["properties"]["metadata"]["$ref"],
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    let (code, proto) = http_request(
        &addr,
        "GET",
        "/openapi/v2",
        &[(
            "Accept",
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        )],
        b"",
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(proto.contains("com.example.v1.Widget"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_sharing_the_store_serves_a_new_crd_and_restarts_serve_it_at_once() {
    let first = TestCluster::start().await;
    let second = TestCluster::on_store(first.store.clone()).await;
    create_crd(&first, widget_crd("Namespaced")).await;
    let took = until(
        Duration::from_secs(1),
        "the second server serves widgets",
        || {
            served(
                second.addr,
                "/apis/example.com/v1/namespaces/default/widgets",
            )
        },
    )
    .await;
    eprintln!("second replica served the CRD {took:?} after the first established it");
    widgets(&second, "v1")
        .create(&PostParams::default(), &widget("x", json!({"size": 1})))
        .await
        .unwrap();
    assert_eq!(
        widgets(&first, "v1").get("x").await.unwrap().data["spec"]["color"],
        "red"
    );

    // A server started on a store with CRDs serves them as soon as it is built.
    let third = ApiOnly::new(first.store.clone()).await;
    assert!(
        third
            .api
            .registry
            .get("example.com", "v1", "widgets")
            .is_some()
    );
    drop(third);

    // Deleting through one server stops the others serving it.
    let crds: Api<CustomResourceDefinition> = Api::all(first.client.clone());
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    until(
        Duration::from_secs(3),
        "the second server drops widgets",
        || async { !served(second.addr, "/apis/example.com/v1").await },
    )
    .await;
}

/// An API server with no HTTP listener.
struct ApiOnly {
    api: Arc<capstan_apiserver::ApiServer>,
}

impl ApiOnly {
    async fn new(store: Arc<dyn capstan_storage::Storage>) -> ApiOnly {
        let api = capstan_apiserver::ApiServer::new(store, prometheus::Registry::new())
            .await
            .unwrap();
        ApiOnly { api }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capstans_own_crds_are_structural_and_served() {
    let c = TestCluster::start().await;
    for crd in capstan_api::crds::all() {
        create_crd(&c, serde_json::to_value(&crd).unwrap()).await;
    }
    let gs: Api<capstan_api::crds::GitSync> = Api::namespaced(c.client.clone(), "default");
    let created = gs
        .create(
            &PostParams::default(),
            &capstan_api::crds::GitSync::new(
                "site",
                capstan_api::crds::GitSyncSpec {
                    repo: "file:///srv/site.git".into(),
                    interval: Some("30s".into()),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    assert_eq!(created.spec.interval.as_deref(), Some("30s"));
    let mut bad = created.clone();
    bad.spec.repo = String::new();
    bad.spec.interval = Some("soon".into());
    let (code, _, message) = api_error(
        gs.replace("site", &PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("spec.repo") && message.contains("spec.interval"),
        "{message}"
    );
}
