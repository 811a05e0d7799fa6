//! The audit log over HTTPS (issue 20): one JSON line per request with user, groups, verb,
//! resource, name, namespace, code and latency; the policy's levels (None, Metadata, Request)
//! with the first matching rule deciding; Secrets' bodies never logged; refused requests (401,
//! 403) logged too; watches logged when they start.

use std::time::Duration;

use capstan_apiserver::audit::{AuditConfig, Policy};
use capstan_apiserver::auth::{AuthConfig, token_file::TokenFile};
use capstan_testkit::{TestCluster, pki, tls_exchange, until};
use serde_json::{Value, json};

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_audited_at_their_policy_level() {
    let dir = capstan_testkit::temp_dir("capstan-audit-").unwrap();
    let log = dir.path().join("audit.log");
    let policy = Policy::parse(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n\
         - level: None\n  nonResourceURLs: ['/readyz', '/healthz']\n\
         - level: None\n  resources: [{group: coordination.k8s.io}]\n\
         - level: Request\n  resources: [{group: '', resources: [configmaps, secrets]}]\n\
         - level: Metadata\n",
    )
    .unwrap();
    let c = TestCluster::with_config(capstan_apiserver::Config {
        auth: AuthConfig {
            tokens: TokenFile::parse("tok,jane,7\n").unwrap(),
            ..Default::default()
        },
        audit: Some(AuditConfig {
            path: log.clone(),
            policy,
        }),
        ..Default::default()
    })
    .await;
    let addr = c.addr.to_string();
    let a = addr.clone();
    let send = move |tls: Option<_>,
                     method: &'static str,
                     path: &'static str,
                     headers: Vec<(&'static str, &'static str)>,
                     body: &'static str| {
        let a = a.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                tls_exchange(&a, tls, method, path, &headers, body.as_bytes())
                    .unwrap()
                    .0
            })
            .await
            .unwrap()
        }
    };
    let json_ct = vec![("Content-Type", "application/json")];
    assert_eq!(
        send(
            None,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            json_ct.clone(),
            r#"{"metadata":{"name":"c1"},"data":{"k":"logged"}}"#
        )
        .await,
        201
    );
    assert_eq!(
        send(
            None,
            "POST",
            "/api/v1/namespaces/default/secrets",
            json_ct.clone(),
            r#"{"metadata":{"name":"s1"},"stringData":{"password":"hunter2"}}"#
        )
        .await,
        201
    );
    assert_eq!(send(None, "GET", "/readyz", vec![], "").await, 200);
    let anon = Some(pki::pki().anonymous_tls());
    assert_eq!(
        send(
            anon.clone(),
            "GET",
            "/api/v1/namespaces/default/pods",
            vec![("Authorization", "Bearer tok")],
            ""
        )
        .await,
        403
    );
    assert_eq!(
        send(
            anon,
            "DELETE",
            "/api/v1/namespaces/default/pods/x",
            vec![("Authorization", "Bearer bad")],
            ""
        )
        .await,
        401
    );

    let log2 = log.clone();
    until(
        Duration::from_secs(5),
        "four requests audited (not /readyz)",
        || {
            let l = log2.clone();
            async move { lines(&l).len() >= 4 }
        },
    )
    .await;
    let all = lines(&log);
    let text = std::fs::read_to_string(&log).unwrap();
    let find = |verb: &str, resource: &str| -> Value {
        all.iter()
            .find(|e| e["verb"] == verb && e["objectRef"]["resource"] == resource)
            .cloned()
            .unwrap_or_else(|| panic!("no {verb} {resource} in {all:#?}"))
    };
    let cm = find("create", "configmaps");
    assert_eq!(cm["level"], "Request");
    assert_eq!(cm["user"]["username"], "test-admin");
    assert!(
        cm["user"]["groups"]
            .as_array()
            .unwrap()
            .contains(&json!("system:masters"))
    );
    assert_eq!(cm["objectRef"]["namespace"], "default");
    assert_eq!(cm["responseStatus"]["code"], 201);
    assert_eq!(cm["requestObject"]["data"]["k"], "logged");
    assert_eq!(cm["stage"], "ResponseComplete");
    assert_eq!(cm["sourceIPs"], json!(["127.0.0.1"]));
    assert!(
        cm["annotations"]["capstan.dev/latency"]
            .as_str()
            .unwrap()
            .ends_with("ms")
    );
    let secret = find("create", "secrets");
    assert_eq!(
        secret["level"], "Metadata",
        "a Secret's body is never logged"
    );
    assert!(secret.get("requestObject").is_none());
    assert!(!text.contains("hunter2"));
    let denied = find("list", "pods");
    assert_eq!(
        (
            denied["user"]["username"].as_str(),
            denied["responseStatus"]["code"].as_i64()
        ),
        (Some("jane"), Some(403))
    );
    assert_eq!(denied["level"], "Metadata");
    let refused = find("delete", "pods");
    assert_eq!(refused["responseStatus"]["code"], 401);
    assert_eq!(refused["objectRef"]["name"], "x");
    // Level None: not there (health checks, and the API server's own Leases).
    assert!(!all.iter().any(|e| e["requestURI"] == "/readyz"), "{text}");
    assert!(!text.contains("coordination.k8s.io"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_annotates_the_audit_event() {
    use kube::api::{Api, DynamicObject, PostParams};
    use kube::core::{ApiResource, GroupVersionKind};
    let dir = capstan_testkit::temp_dir("capstan-audit-").unwrap();
    let log = dir.path().join("audit.log");
    let policy =
        Policy::parse("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n")
            .unwrap();
    let c = TestCluster::with_config(capstan_apiserver::Config {
        audit: Some(AuditConfig {
            path: log.clone(),
            policy,
        }),
        ..Default::default()
    })
    .await;
    let hook = capstan_testkit::webhook::WebhookServer::start(
        &[],
        std::sync::Arc::new(|_, review| {
            let mut answer = capstan_testkit::webhook::allow(&review, &[]);
            answer["response"]["auditAnnotations"] = json!({"checked": "yes"});
            answer
        }),
    )
    .await
    .unwrap();
    let create = |kind: &str, plural: &str, body: Value| {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind),
            plural,
        );
        let api: Api<DynamicObject> = Api::all_with(c.client.clone(), &resource);
        async move {
            api.create(
                &PostParams::default(),
                &serde_json::from_value(body).unwrap(),
            )
            .await
            .unwrap();
        }
    };
    let rules = json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}]);
    create("ValidatingAdmissionPolicy", "validatingadmissionpolicies", json!({
        "metadata": {"name": "names"},
        "spec": {"matchConstraints": {"resourceRules": rules},
            "validations": [{"expression": "!object.metadata.name.startsWith('flagged')", "message": "flagged name"}],
            "auditAnnotations": [{"key": "seen", "valueExpression": "'saw ' + object.metadata.name"}]}
    }))
    .await;
    create("ValidatingAdmissionPolicyBinding", "validatingadmissionpolicybindings", json!({
        "metadata": {"name": "names"}, "spec": {"policyName": "names", "validationActions": ["Audit"]}
    }))
    .await;
    create("ValidatingWebhookConfiguration", "validatingwebhookconfigurations", json!({
        "metadata": {"name": "audited"},
        "webhooks": [{"name": "hook.example.test", "clientConfig": hook.client_config("/"), "rules": rules,
            "sideEffects": "None", "admissionReviewVersions": ["v1"]}]
    }))
    .await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(c.client.clone(), "default");
    let mut i = 0;
    until(
        Duration::from_secs(5),
        "all three annotations on a create's event",
        || {
            i += 1;
            let (cms, log, name) = (cms.clone(), log.clone(), format!("flagged-{i}"));
            async move {
                let cm = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
                // Audit only: the create goes through.
                cms.create(&PostParams::default(), &cm).await.unwrap();
                lines(&log).iter().any(|l| {
                    let a = &l["annotations"];
                    a["names/seen"] == format!("saw {name}")
                        && a["hook.example.test/checked"] == "yes"
                        && a["validation.policy.admission.k8s.io/validation_failure"]
                            .as_str()
                            .and_then(|v| serde_json::from_str::<Value>(v).ok())
                            .is_some_and(|v| {
                                v[0]["policy"] == "names"
                                    && v[0]["message"] == "flagged name"
                                    && v[0]["validationActions"] == json!(["Audit"])
                            })
                })
            }
        },
    )
    .await;
}
