//! CEL validation rules in CRDs (`x-kubernetes-validations`) through the API: every failing
//! rule in one 422, transition rules on update, ratcheting, messageExpression, reasons and
//! field paths; CRDs whose rules are invalid or over the cost budget refused at create; and
//! Gateway API's standard CRDs (a copy under testdata) installed with their examples.

use std::time::Duration;

use capstan_testkit::{TestCluster, until};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

fn quota_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "quotas.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "quotas", "singular": "quota", "kind": "Quota"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "x-kubernetes-validations": [
                        {"rule": "self.metadata.name.startsWith('q-')", "message": "name must start with q-"}
                    ],
                    "properties": {"spec": {
                        "type": "object",
                        "x-kubernetes-validations": [
                            {"rule": "self.min <= self.max", "messageExpression": "'min (' + string(self.min) + ') must not exceed max (' + string(self.max) + ')'"},
                            {"rule": "self.max >= oldSelf.max", "message": "max may not decrease", "reason": "FieldValueForbidden", "fieldPath": ".max"}
                        ],
                        "properties": {
                            "min": {"type": "integer"},
                            "max": {"type": "integer"},
                            "memory": {"type": "string", "maxLength": 32, "x-kubernetes-validations": [
                                {"rule": "quantity(self).isLessThan(quantity('64Gi'))", "message": "memory must be below 64Gi"}
                            ]},
                            "owners": {"type": "array", "maxItems": 16, "items": {"type": "string", "maxLength": 63,
                                "x-kubernetes-validations": [{"rule": "format.dns1123Label().validate(self) == optional.none()", "message": "owners must be DNS labels"}]}}
                        }
                    }}
                }}
            }]
        }
    })
}

async fn create_crd(c: &TestCluster, crd: Value) {
    c.create_crd(crd).await;
}

fn plural(kind: &str) -> String {
    let lower = kind.to_lowercase();
    if lower.ends_with('s') {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    }
}

fn api(
    c: &TestCluster,
    group: &str,
    version: &str,
    kind: &str,
    namespaced: bool,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural(kind));
    if namespaced {
        Api::namespaced_with(c.client.clone(), "default", &ar)
    } else {
        Api::all_with(c.client.clone(), &ar)
    }
}

fn quota(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Quota",
        "metadata": {"name": name}, "spec": spec}))
    .unwrap()
}

fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => panic!("not an API error: {other}"),
    }
}

fn causes(e: &kube::Error) -> Vec<String> {
    let kube::Error::Api(s) = e else {
        panic!("not an API error: {e}")
    };
    assert_eq!(s.code, 422, "{s:?}");
    s.details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .map(|c| format!("{} {}: {}", c.reason, c.field, c.message))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failing_rule_is_listed_and_transition_rules_guard_updates() {
    let c = TestCluster::start().await;
    create_crd(&c, quota_crd()).await;
    let quotas = api(&c, "example.com", "v1", "Quota", true);
    let pp = PostParams::default();

    // Rules at three levels fail at once; each is listed with its path.
    let e = quotas
        .create(
            &pp,
            &quota(
                "bad",
                json!({"min": 5, "max": 1, "memory": "128Gi", "owners": ["ok", "Not_OK"]}),
            ),
        )
        .await
        .unwrap_err();
    let got = causes(&e);
    assert_eq!(
        got,
        vec![
            "FieldValueInvalid <nil>: Invalid value: \"object\": name must start with q-",
            "FieldValueInvalid spec: Invalid value: \"object\": min (5) must not exceed max (1)",
            "FieldValueInvalid spec.memory: Invalid value: \"128Gi\": memory must be below 64Gi",
            "FieldValueInvalid spec.owners[1]: Invalid value: \"Not_OK\": owners must be DNS labels",
        ],
        "{e}"
    );
    assert!(message(&e).contains("Quota \"bad\" is invalid"), "{e}");
    assert!(
        quotas.get_opt("bad").await.unwrap().is_none(),
        "nothing was stored"
    );

    // A valid one goes in; the transition rule refuses a decrease and allows an increase.
    quotas
        .create(
            &pp,
            &quota(
                "q-1",
                json!({"min": 1, "max": 5, "memory": "1Gi", "owners": ["team-a"]}),
            ),
        )
        .await
        .unwrap();
    let patch = |max: i64| Patch::Merge(json!({"spec": {"max": max}}));
    let e = quotas
        .patch("q-1", &PatchParams::default(), &patch(4))
        .await
        .unwrap_err();
    assert_eq!(
        causes(&e),
        vec!["FieldValueForbidden spec.max: Forbidden: max may not decrease"]
    );
    let raised = quotas
        .patch("q-1", &PatchParams::default(), &patch(9))
        .await
        .unwrap();
    assert_eq!(raised.data["spec"]["max"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_invalid_field_does_not_block_other_updates() {
    let c = TestCluster::start().await;
    // First without the memory rule: a large memory is stored.
    let mut crd = quota_crd();
    let rules =
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["memory"]
            .as_object_mut()
            .unwrap()
            .remove("x-kubernetes-validations")
            .unwrap();
    create_crd(&c, crd.clone()).await;
    let quotas = api(&c, "example.com", "v1", "Quota", true);
    quotas
        .create(
            &PostParams::default(),
            &quota("q-big", json!({"min": 1, "max": 2, "memory": "128Gi"})),
        )
        .await
        .unwrap();
    // Then the rule arrives with a CRD update.
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    let mut live = serde_json::to_value(crds.get("quotas.example.com").await.unwrap()).unwrap();
    live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["memory"]["x-kubernetes-validations"] = rules;
    crds.replace(
        "quotas.example.com",
        &PostParams::default(),
        &serde_json::from_value(live).unwrap(),
    )
    .await
    .unwrap();
    // The old value ratchets: raising max passes although memory would now be refused...
    until(Duration::from_secs(2), "the new rule in force", || {
        let quotas = quotas.clone();
        async move {
            quotas
                .create(
                    &PostParams::default(),
                    &quota("q-probe", json!({"min": 1, "max": 2, "memory": "100Gi"})),
                )
                .await
                .is_err()
        }
    })
    .await;
    let patched = quotas
        .patch(
            "q-big",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"max": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["max"], 3);
    // ...while changing memory to another invalid value is refused.
    let e = quotas
        .patch(
            "q-big",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"memory": "100Gi"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        causes(&e),
        vec!["FieldValueInvalid spec.memory: Invalid value: \"100Gi\": memory must be below 64Gi"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_with_bad_or_too_costly_rules_are_refused_at_create() {
    let c = TestCluster::start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    let mut crd = quota_crd();
    let schema = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    schema["properties"]["tags"] = json!({"type": "array", "items": {"type": "string"},
        "x-kubernetes-validations": [{"rule": "self.all(x, self.exists(y, x != y && x.contains(y)))"}]});
    schema["x-kubernetes-validations"][0]["rule"] = json!("self.minimum <= self.max");
    let e = crds
        .create(
            &PostParams::default(),
            &serde_json::from_value(crd).unwrap(),
        )
        .await
        .unwrap_err();
    let text = message(&e);
    assert!(text.contains("spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value: \"self.minimum <= self.max\": compilation failed: ERROR: <input>: undefined field 'minimum'"), "{text}");
    assert!(text.contains("spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[tags].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x"), "{text}");
    assert!(crds.get_opt("quotas.example.com").await.unwrap().is_none());
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| {
            let v: Value = serde::Deserialize::deserialize(d).ok()?;
            v.is_object().then_some(v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_crds_install_and_validate_their_examples() {
    let c = TestCluster::start().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/gateway-api");
    for f in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "referencegrants",
        "backendtlspolicies",
    ] {
        let text = std::fs::read_to_string(dir.join(format!("{f}.yaml"))).unwrap();
        for crd in yaml_docs(&text) {
            create_crd(&c, crd).await;
        }
    }
    let mut applied = 0;
    let mut examples: Vec<_> = std::fs::read_dir(dir.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    examples.sort();
    for path in examples {
        for doc in yaml_docs(&std::fs::read_to_string(&path).unwrap()) {
            // Only Gateway API's own kinds (the examples also carry Services and the like).
            let Some((group, version)) = doc["apiVersion"].as_str().unwrap().split_once('/') else {
                continue;
            };
            if group != "gateway.networking.k8s.io" {
                continue;
            }
            let kind = doc["kind"].as_str().unwrap();
            let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
            let a = match (kind, obj.metadata.namespace.as_deref()) {
                ("GatewayClass", _) => api(&c, group, version, kind, false),
                (_, Some(ns)) if ns != "default" => {
                    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
                        Api::all(c.client.clone());
                    if namespaces.get_opt(ns).await.unwrap().is_none() {
                        namespaces
                            .create(
                                &PostParams::default(),
                                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
                            )
                            .await
                            .unwrap();
                    }
                    let gvk = GroupVersionKind::gvk(group, version, kind);
                    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural(kind));
                    Api::namespaced_with(c.client.clone(), ns, &ar)
                }
                _ => api(&c, group, version, kind, true),
            };
            let name = obj.metadata.name.clone().unwrap();
            if a.get_opt(&name).await.unwrap().is_some() {
                continue;
            }
            a.create(&PostParams::default(), &obj)
                .await
                .unwrap_or_else(|e| panic!("{} {kind}/{name}: {}", path.display(), message(&e)));
            applied += 1;
        }
    }
    assert!(applied >= 10, "{applied}");

    // Their rules hold: a relative path prefix, a redirect with a path and a rewrite both.
    let routes = api(&c, "gateway.networking.k8s.io", "v1", "HTTPRoute", true);
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "bad-route"},
        "spec": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "relative"}}],
            "backendRefs": [{"name": "svc", "port": 80}]}]}
    }))
    .unwrap();
    let e = routes
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    let text = message(&e);
    assert!(text.contains("value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']"), "{text}");

    let gateways = api(&c, "gateway.networking.k8s.io", "v1", "Gateway", true);
    let dup: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "dup-listeners"},
        "spec": {"gatewayClassName": "example", "listeners": [
            {"name": "a", "protocol": "HTTP", "port": 80},
            {"name": "b", "protocol": "HTTP", "port": 80}]}
    }))
    .unwrap();
    let e = gateways
        .create(&PostParams::default(), &dup)
        .await
        .unwrap_err();
    assert!(message(&e).contains("must be unique"), "{}", message(&e));
}
