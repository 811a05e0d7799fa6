//! A two-version CRD with a conversion webhook (a real HTTPS server, testkit's
//! WebhookServer): v1 keeps `spec.sizeInMeters`, v2 `spec.size: {value, unit}`. Written at one
//! version, read, listed and watched at the other — the webhook counted; stored always at the
//! storage version; a write after the storage version changed rewrites the object at the new
//! one (storage migration); a webhook that fails makes reads of the other version a 500 with
//! its message. Admission webhooks with matchPolicy Equivalent see their own version.

use std::sync::Arc;
use std::time::Duration;

use capstan_testkit::webhook::{self, WebhookServer};
use capstan_testkit::{TestCluster, api_error, until};
use futures_util::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// The conversion: v1 `sizeInMeters` ⇄ v2 `size: {value, unit: m}`; objects named `broken*`
/// fail.
fn convert(review: Value) -> Value {
    let req = &review["request"];
    let desired = req["desiredAPIVersion"].as_str().unwrap_or_default();
    let mut out = Vec::new();
    for o in req["objects"].as_array().into_iter().flatten() {
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        if name.starts_with("broken") {
            return json!({"apiVersion": review["apiVersion"], "kind": "ConversionReview",
                "response": {"uid": req["uid"], "result": {"status": "Failure", "message": format!("cannot convert {name}")}}});
        }
        let mut c = o.clone();
        c["apiVersion"] = json!(desired);
        let spec = c["spec"].as_object_mut().unwrap();
        if desired.ends_with("/v2") {
            if let Some(m) = spec.remove("sizeInMeters") {
                spec.insert("size".into(), json!({"value": m, "unit": "m"}));
            }
        } else if let Some(s) = spec.remove("size") {
            spec.insert("sizeInMeters".into(), s["value"].clone());
        }
        out.push(c);
    }
    json!({"apiVersion": review["apiVersion"], "kind": "ConversionReview",
        "response": {"uid": req["uid"], "result": {"status": "Success"}, "convertedObjects": out}})
}

fn crd(server: &WebhookServer, storage: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.test"},
        "spec": {
            "group": "example.test", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "conversion": {"strategy": "Webhook", "webhook": {
                "conversionReviewVersions": ["v1"], "clientConfig": server.client_config("/convert")}},
            "versions": [
                {"name": "v1", "served": true, "storage": storage == "v1", "schema": {"openAPIV3Schema": {
                    "type": "object", "properties": {"spec": {"type": "object", "properties": {
                        "sizeInMeters": {"type": "integer"}}}}}}},
                {"name": "v2", "served": true, "storage": storage == "v2", "schema": {"openAPIV3Schema": {
                    "type": "object", "properties": {"spec": {"type": "object", "properties": {
                        "size": {"type": "object", "properties": {
                            "value": {"type": "integer"}, "unit": {"type": "string"}}}}}}}}}
            ]
        }
    })
}

fn api(c: &TestCluster, version: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("example.test", version, "Widget");
    Api::namespaced_with(
        c.client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
    )
}

fn widget(version: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": format!("example.test/{version}"), "kind": "Widget",
        "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

fn spec(o: &DynamicObject) -> Value {
    o.data["spec"].clone()
}

/// The stored form of widget `name` (apiVersion and spec).
async fn stored(c: &TestCluster, name: &str) -> Value {
    let kv = c
        .store
        .get(&format!("example.test/widgets/default/{name}"))
        .await
        .unwrap()
        .unwrap();
    serde_json::from_slice(&kv.value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_webhook_serves_every_version() {
    let c = TestCluster::start().await;
    let server = WebhookServer::start(&[], Arc::new(|_, review| convert(review)))
        .await
        .unwrap();
    c.create_crd(crd(&server, "v1")).await;
    let (v1, v2) = (api(&c, "v1"), api(&c, "v2"));
    let pp = PostParams::default();

    // Written at v1 (the storage version: no conversion), read at v2 (converted — by the read
    // or already by v2's watch cache, which converts each change once as it arrives).
    let before = server.calls();
    v1.create(&pp, &widget("v1", "a", json!({"sizeInMeters": 3})))
        .await
        .unwrap();
    let a = v2.get("a").await.unwrap();
    assert_eq!(spec(&a), json!({"size": {"value": 3, "unit": "m"}}));
    assert!(server.calls() > before, "the webhook converted it");

    // Written at v2: stored at v1, read back at either.
    let b = v2
        .create(
            &pp,
            &widget("v2", "b", json!({"size": {"value": 5, "unit": "m"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        spec(&b),
        json!({"size": {"value": 5, "unit": "m"}}),
        "answered at the request's version"
    );
    let raw = stored(&c, "b").await;
    assert_eq!(raw["apiVersion"], "example.test/v1");
    assert_eq!(raw["spec"], json!({"sizeInMeters": 5}));
    assert_eq!(
        spec(&v1.get("b").await.unwrap()),
        json!({"sizeInMeters": 5})
    );

    // Listed and watched at v2.
    let list = v2.list(&Default::default()).await.unwrap();
    let sizes: Vec<Value> = list
        .items
        .iter()
        .map(|o| spec(o)["size"]["value"].clone())
        .collect();
    assert_eq!(sizes, [json!(3), json!(5)]);
    let rv = list.metadata.resource_version.unwrap();
    let mut events = v2
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    v1.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"sizeInMeters": 7}})),
    )
    .await
    .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Modified(o) => {
            assert_eq!(o.types.as_ref().unwrap().api_version, "example.test/v2");
            assert_eq!(spec(&o), json!({"size": {"value": 7, "unit": "m"}}));
        }
        other => panic!("{other:?}"),
    }

    // An update at v2 of what v1 wrote keeps what v2 does not show.
    v2.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    assert_eq!(stored(&c, "a").await["spec"], json!({"sizeInMeters": 7}));

    // The webhook failing: a read at the other version is a 500 with its message; nothing lost.
    v1.create(&pp, &widget("v1", "broken", json!({"sizeInMeters": 1})))
        .await
        .unwrap();
    let (code, _, message) = api_error(v2.get("broken").await.unwrap_err());
    assert_eq!(code, 500);
    assert_eq!(
        message,
        "Internal error occurred: conversion webhook for example.test/v1, Kind=Widget failed: cannot convert broken"
    );
    assert_eq!(
        spec(&v1.get("broken").await.unwrap()),
        json!({"sizeInMeters": 1})
    );
    let (code, _, _) = api_error(
        v2.create(
            &pp,
            &widget(
                "v2",
                "broken-too",
                json!({"size": {"value": 1, "unit": "m"}}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        code, 500,
        "a write that cannot be converted to the storage version is refused"
    );
    assert!(
        c.store
            .get("example.test/widgets/default/broken-too")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_the_storage_version_changed_rewrites_the_object_there() {
    let c = TestCluster::start().await;
    let server = WebhookServer::start(&[], Arc::new(|_, review| convert(review)))
        .await
        .unwrap();
    c.create_crd(crd(&server, "v1")).await;
    let v1 = api(&c, "v1");
    v1.create(
        &PostParams::default(),
        &widget("v1", "old", json!({"sizeInMeters": 4})),
    )
    .await
    .unwrap();
    assert_eq!(stored(&c, "old").await["apiVersion"], "example.test/v1");

    // v2 becomes the storage version; the object stays at v1 until written.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(c.client.clone());
    let mut changed = crd(&server, "v2");
    changed["metadata"]["resourceVersion"] = json!(
        crds.get("widgets.example.test")
            .await
            .unwrap()
            .metadata
            .resource_version
    );
    crds.replace(
        "widgets.example.test",
        &PostParams::default(),
        &serde_json::from_value(changed).unwrap(),
    )
    .await
    .unwrap();
    until(Duration::from_secs(5), "v2 stores", || async {
        let _ = v1
            .create(
                &PostParams::default(),
                &widget("v1", "probe", json!({"sizeInMeters": 1})),
            )
            .await;
        let at = stored(&c, "probe").await["apiVersion"].clone();
        let _ = v1.delete("probe", &Default::default()).await;
        at == "example.test/v2"
    })
    .await;
    assert_eq!(stored(&c, "old").await["apiVersion"], "example.test/v1");
    // A write that changes nothing still rewrites it at the storage version (what `capstan
    // storage migrate` does to every object); a second one writes nothing.
    let rv = v1.get("old").await.unwrap().metadata.resource_version;
    let after = v1
        .patch("old", &PatchParams::default(), &Patch::Merge(json!({})))
        .await
        .unwrap();
    assert_ne!(after.metadata.resource_version, rv);
    let raw = stored(&c, "old").await;
    assert_eq!(raw["apiVersion"], "example.test/v2");
    assert_eq!(raw["spec"], json!({"size": {"value": 4, "unit": "m"}}));
    let again = v1
        .patch("old", &PatchParams::default(), &Patch::Merge(json!({})))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        after.metadata.resource_version
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivalent_admission_webhook_sees_the_version_it_names() {
    let c = TestCluster::start().await;
    let server = WebhookServer::start(
        &[],
        Arc::new(|path, review| match path {
            "/convert" => convert(review),
            // Registered for v1 only: sees v1 objects, and its patch is made to them.
            _ => {
                let obj = &review["request"]["object"];
                assert_eq!(review["request"]["kind"]["version"], "v1");
                if obj["spec"]["sizeInMeters"].as_i64().unwrap_or(0) > 10 {
                    return webhook::deny(&review, 422, "too big");
                }
                webhook::patch(&review, json!([{"op": "add", "path": "/metadata/labels", "value": {"seen-as": obj["apiVersion"].as_str().unwrap_or_default().rsplit('/').next()}}]))
            }
        }),
    )
    .await
    .unwrap();
    c.create_crd(crd(&server, "v1")).await;
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "sizes"},
        "webhooks": [{"name": "sizes.example.test", "clientConfig": server.client_config("/admit"),
            "rules": [{"operations": ["CREATE"], "apiGroups": ["example.test"], "apiVersions": ["v1"], "resources": ["widgets"]}],
            "sideEffects": "None", "admissionReviewVersions": ["v1"]}]
    });
    let configs: Api<DynamicObject> = Api::all_with(
        c.client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                "MutatingWebhookConfiguration",
            ),
            "mutatingwebhookconfigurations",
        ),
    );
    configs
        .create(
            &PostParams::default(),
            &serde_json::from_value(config).unwrap(),
        )
        .await
        .unwrap();
    let v2 = api(&c, "v2");
    let created = until(Duration::from_secs(5), "the webhook in force", || async {
        let name = format!("w{}", fastrand::u32(..));
        let o = v2
            .create(
                &PostParams::default(),
                &widget("v2", &name, json!({"size": {"value": 2, "unit": "m"}})),
            )
            .await;
        o.is_ok_and(|o| {
            o.metadata
                .labels
                .unwrap_or_default()
                .get("seen-as")
                .map(String::as_str)
                == Some("v1")
        })
    })
    .await;
    assert!(created < Duration::from_secs(5));
    let (code, _, message) = api_error(
        v2.create(
            &PostParams::default(),
            &widget("v2", "big", json!({"size": {"value": 11, "unit": "m"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(message.contains("too big"), "{message}");
}
