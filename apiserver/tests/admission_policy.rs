//! ValidatingAdmissionPolicy through the API: a policy with a ConfigMap as its params denies
//! Deployments over N replicas (create, update and the scale subresource), in Deny and in Warn
//! mode; parameterNotFoundAction and failurePolicy; selectors and matchConditions; invalid
//! policies and bindings refused; status.typeChecking against the kinds a policy matches.

use std::time::Duration;

use capstan_testkit::{TestCluster, http_exchange, until};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

fn policy(name: &str, failure: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": failure,
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                "resources": ["deployments", "deployments/scale"]}]},
            "matchConditions": [{"name": "not-exempt", "expression": "!has(object.metadata.labels) || !('exempt' in object.metadata.labels)"}],
            "variables": [{"name": "limit", "expression": "int(params.data.maxReplicas)"}],
            "validations": [{
                "expression": "object.spec.replicas <= variables.limit",
                "messageExpression": "'replicas ' + string(object.spec.replicas) + ' exceed the limit of ' + string(variables.limit)",
                "reason": "Forbidden"
            }]
        }
    })
}

fn binding(name: &str, policy: &str, actions: &[&str], missing: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": policy, "validationActions": actions,
            "paramRef": {"name": "replica-limits", "namespace": "default", "parameterNotFoundAction": missing},
            "matchResources": {"namespaceSelector": {"matchLabels": {"limits": "on"}}}}
    })
}

fn deployment(name: &str, replicas: i64, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    })
}

fn post(c: &TestCluster, path: &str, body: &Value) -> (u16, Vec<String>, String) {
    http_exchange(
        &c.addr.to_string(),
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .unwrap()
}

fn warnings(headers: &[String]) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.to_ascii_lowercase().starts_with("warning:"))
        .cloned()
        .collect()
}

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const POLICIES: &str = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies";
const BINDINGS: &str = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings";

async fn label_default_namespace(c: &TestCluster) {
    let ns: Api<DynamicObject> = Api::all_with(
        c.client.clone(),
        &kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()),
    );
    ns.patch(
        "default",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"limits": "on"}}})),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_with_params_denies_deployments_over_the_limit() {
    let c = TestCluster::start().await;
    label_default_namespace(&c).await;
    let (code, _, body) = post(
        &c,
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "replica-limits"}, "data": {"maxReplicas": "3"}}),
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(post(&c, POLICIES, &policy("replica-limit", "Fail")).0, 201);
    assert_eq!(
        post(
            &c,
            BINDINGS,
            &binding("replica-limit-deny", "replica-limit", &["Deny"], "Deny")
        )
        .0,
        201
    );

    // Over the limit: refused with the validation's reason and message.
    let denied = || {
        let (code, _, body) = post(
            &c,
            DEPLOYMENTS,
            &deployment(&format!("big{}", fastrand::u32(..)), 5, json!({})),
        );
        (code, body)
    };
    until(Duration::from_secs(2), "the policy in force", || async {
        denied().0 != 201
    })
    .await;
    let (code, body) = denied();
    assert_eq!(code, 403, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        "ValidatingAdmissionPolicy 'replica-limit' with binding 'replica-limit-deny' denied request: replicas 5 exceed the limit of 3"
    );
    assert_eq!(status["code"], 403);
    // Within it: created; raising it by update or through the scale subresource is refused.
    assert_eq!(
        post(&c, DEPLOYMENTS, &deployment("small", 2, json!({}))).0,
        201
    );
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(c.client.clone(), "default");
    let e = deployments
        .patch(
            "small",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("replicas 4 exceed the limit of 3"),
        "{e}"
    );
    // A matchCondition exempts labelled objects.
    assert_eq!(
        post(
            &c,
            DEPLOYMENTS,
            &deployment("exempt", 9, json!({"exempt": "yes"}))
        )
        .0,
        201
    );
    // The params are read live: a higher limit admits what was refused.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(c.client.clone(), "default");
    cms.patch(
        "replica-limits",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"maxReplicas": "10"}})),
    )
    .await
    .unwrap();
    until(Duration::from_secs(2), "the new limit", || async {
        denied().0 == 201
    })
    .await;

    // Without params and `parameterNotFoundAction: Deny`, writes are refused; delete them and...
    cms.delete("replica-limits", &Default::default())
        .await
        .unwrap();
    until(Duration::from_secs(2), "params gone", || async {
        post(&c, DEPLOYMENTS, &deployment("any", 1, json!({})))
            .2
            .contains("no params found")
    })
    .await;
    // ...another namespace, not selected by the binding, is not governed at all.
    let (code, _, body) = post(
        &c,
        "/api/v1/namespaces",
        &json!({"metadata": {"name": "free"}}),
    );
    assert_eq!(code, 201, "{body}");
    let (code, _, body) = post(
        &c,
        "/apis/apps/v1/namespaces/free/deployments",
        &deployment("big", 50, json!({})),
    );
    assert_eq!(code, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_mode_admits_with_a_warning_and_ignore_lets_errors_through() {
    let c = TestCluster::start().await;
    label_default_namespace(&c).await;
    post(
        &c,
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "replica-limits"}, "data": {"maxReplicas": "3"}}),
    );
    assert_eq!(post(&c, POLICIES, &policy("replica-limit", "Fail")).0, 201);
    assert_eq!(
        post(
            &c,
            BINDINGS,
            &binding("replica-limit-warn", "replica-limit", &["Warn"], "Allow")
        )
        .0,
        201
    );
    let mut warned = Vec::new();
    until(Duration::from_secs(2), "a warning", || {
        let (code, headers, body) = post(
            &c,
            DEPLOYMENTS,
            &deployment(&format!("w{}", fastrand::u32(..)), 5, json!({})),
        );
        assert_eq!(code, 201, "{body}");
        warned = warnings(&headers);
        let found = !warned.is_empty();
        async move { found }
    })
    .await;
    assert!(
        warned[0].contains("Validation failed for ValidatingAdmissionPolicy 'replica-limit' with binding 'replica-limit-warn': replicas 5 exceed the limit of 3"),
        "{warned:?}"
    );

    // An expression that errors (maxReplicas is not a number) follows failurePolicy.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(c.client.clone(), "default");
    cms.patch(
        "replica-limits",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"maxReplicas": "many"}})),
    )
    .await
    .unwrap();
    assert_eq!(post(&c, POLICIES, &policy("strict", "Fail")).0, 201);
    assert_eq!(
        post(
            &c,
            BINDINGS,
            &binding("strict-deny", "strict", &["Deny"], "Allow")
        )
        .0,
        201
    );
    until(Duration::from_secs(2), "Fail refuses on error", || async {
        let (code, _, body) = post(&c, DEPLOYMENTS, &deployment(&format!("err{}", fastrand::u32(..)), 1, json!({})));
        code == 422 && body.contains("ValidatingAdmissionPolicy 'strict' with binding 'strict-deny' denied request: expression 'limit' resulted in error")
    })
    .await;
    let policies: Api<DynamicObject> = Api::all_with(
        c.client.clone(),
        &kube::discovery::ApiResource::erase::<
            k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy,
        >(&()),
    );
    policies
        .patch(
            "strict",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"failurePolicy": "Ignore"}})),
        )
        .await
        .unwrap();
    until(Duration::from_secs(2), "Ignore admits on error", || async {
        post(
            &c,
            DEPLOYMENTS,
            &deployment(&format!("ok{}", fastrand::u32(..)), 1, json!({})),
        )
        .0 == 201
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_and_bindings_are_refused() {
    let c = TestCluster::start().await;
    let mut bad = policy("bad", "Sometimes");
    bad["spec"]["validations"][0]["expression"] = json!("object.spec.replicas <=");
    let (code, _, body) = post(&c, POLICIES, &bad);
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("spec.failurePolicy: Unsupported value: \\\"Sometimes\\\""),
        "{body}"
    );
    assert!(body.contains("spec.validations[0].expression: Invalid value: \\\"object.spec.replicas <=\\\": compilation failed: ERROR: <input>:"), "{body}");
    let (code, _, body) = post(&c, BINDINGS, &binding("b", "p", &["Deny", "Warn"], "Later"));
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("must not contain both Deny and Warn"),
        "{body}"
    );
    assert!(
        body.contains("spec.paramRef.parameterNotFoundAction: Unsupported value"),
        "{body}"
    );
}

/// GETs a policy once its status has caught up with its generation.
async fn checked_policy(c: &TestCluster, name: &str, generation: i64) -> Value {
    let path = format!("{POLICIES}/{name}");
    let mut seen = Value::Null;
    until(Duration::from_secs(10), "status.observedGeneration", || {
        let (code, _, body) = http_exchange(&c.addr.to_string(), "GET", &path, &[], b"").unwrap();
        assert_eq!(code, 200, "{body}");
        seen = serde_json::from_str(&body).unwrap();
        let observed = seen["status"]["observedGeneration"].as_i64() == Some(generation);
        async move { observed }
    })
    .await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_type_checking_warnings_against_the_matched_kinds() {
    let c = TestCluster::start().await;

    // Well typed: params as the ConfigMap's schema, variables by their expressions.
    assert_eq!(post(&c, POLICIES, &policy("typed", "Fail")).0, 201);
    let good = checked_policy(&c, "typed", 1).await;
    assert_eq!(good["status"]["typeChecking"], json!({}), "{good}");

    // Mistakes: a string compared with an int, an int added to a string, a field Deployments
    // do not have; the expressions still compile, so the policy is accepted and enforced.
    let mut bad = policy("mistyped", "Fail");
    bad["spec"]["validations"] = json!([
        {"expression": "object.spec.replicas > '1'",
         "messageExpression": "'wants replicas > 1, got ' + object.spec.replicas"},
        {"expression": "has(object.spec.replica) && variables.limit > 0"},
        {"expression": "object.metadata.name.startsWith('a')"},
    ]);
    let (code, _, body) = post(&c, POLICIES, &bad);
    assert_eq!(code, 201, "{body}");
    let checked = checked_policy(&c, "mistyped", 1).await;
    let warnings = checked["status"]["typeChecking"]["expressionWarnings"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let refs: Vec<&str> = warnings
        .iter()
        .map(|w| w["fieldRef"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        refs,
        [
            "spec.validations[0].expression",
            "spec.validations[0].messageExpression",
            "spec.validations[1].expression"
        ],
        "{checked}"
    );
    let text = |i: usize| {
        warnings[i]["warning"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        text(0).starts_with("apps/v1, Kind=Deployment: ERROR: <input>:1:22: found no matching overload for '_>_' applied to '(int, string)'"),
        "{}",
        text(0)
    );
    assert!(
        text(1).contains("found no matching overload for '_+_' applied to '(string, int)'"),
        "{}",
        text(1)
    );
    assert!(text(2).contains("undefined field 'replica'"), "{}", text(2));

    // Fixed: the next generation is checked again and the warnings go.
    let fixed = json!({"spec": {"validations": [{"expression": "object.spec.replicas > 1"}]}});
    let (code, _, body) = http_exchange(
        &c.addr.to_string(),
        "PATCH",
        &format!("{POLICIES}/mistyped"),
        &[("Content-Type", "application/merge-patch+json")],
        fixed.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let checked = checked_policy(&c, "mistyped", 2).await;
    assert_eq!(checked["status"]["typeChecking"], json!({}), "{checked}");

    // A custom resource's schema types `object` too; wildcard rules are not checked.
    c.create_crd(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}
    }))
    .await;
    let widgets = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "widgets"},
        "spec": {"matchConstraints": {"resourceRules": [
            {"apiGroups": ["example.com"], "apiVersions": ["v1"], "operations": ["*"], "resources": ["widgets"]},
            {"apiGroups": ["*"], "apiVersions": ["v1"], "operations": ["*"], "resources": ["deployments"]}]},
            "validations": [{"expression": "object.spec.colour == 'red' && object.spec.size < 10"}]}
    });
    assert_eq!(post(&c, POLICIES, &widgets).0, 201);
    let checked = checked_policy(&c, "widgets", 1).await;
    let warnings = &checked["status"]["typeChecking"]["expressionWarnings"];
    assert_eq!(warnings.as_array().map(Vec::len), Some(1), "{checked}");
    let text = warnings[0]["warning"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("example.com/v1, Kind=Widget: ERROR: <input>:1:")
            && text.contains("undefined field 'colour'")
            && !text.contains("Deployment"),
        "{text}"
    );
}
