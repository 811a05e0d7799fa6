//! ServiceAccount tokens and admission on the API server alone (issue 20): TokenRequest with
//! Kubernetes' limits and bound-object checks, the tokens authenticating (requests and
//! TokenReview) until what they name goes, and the ServiceAccount admission plugin's defaults,
//! refusal and projected volume.

use capstan_testkit::{TestCluster, api_error};
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

async fn cluster(max_expiration: Option<i64>) -> TestCluster {
    let mut tokens = capstan_testkit::pki::pki().service_accounts();
    tokens.max_expiration = max_expiration;
    TestCluster::with_config(capstan_apiserver::Config {
        service_account_admission: true,
        auth: capstan_apiserver::auth::AuthConfig {
            service_accounts: Some(tokens),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
}

fn request(seconds: Option<i64>, bound: Option<(&str, &str, Option<&str>)>) -> TokenRequest {
    TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: seconds,
            bound_object_ref: bound.map(|(kind, name, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some(kind.into()),
                name: Some(name.into()),
                uid: uid.map(str::to_string),
            }),
        },
        ..Default::default()
    }
}

async fn create_sa(
    c: &TestCluster,
    ns: &str,
    name: &str,
    automount: Option<bool>,
) -> ServiceAccount {
    let sa: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": name}, "automountServiceAccountToken": automount,
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(c.client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap()
}

fn pod(name: &str, spec: serde_json::Value) -> Pod {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

async fn review(c: &TestCluster, token: &str) -> (bool, String) {
    let r = Api::<TokenReview>::all(c.client.clone())
        .create(
            &PostParams::default(),
            &TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.into()),
                    audiences: None,
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let st = r.status.unwrap();
    (
        st.authenticated == Some(true),
        st.user.and_then(|u| u.username).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_follow_kubernetes_limits_and_bindings() {
    let c = cluster(Some(1200)).await;
    let sas = Api::<ServiceAccount>::namespaced(c.client.clone(), "default");
    let pp = PostParams::default();

    // No such account: 404.
    let e = api_error(
        sas.create_token_request("builder", &pp, &request(None, None))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.0, e.1.as_str()), (404, "NotFound"), "{e:?}");
    create_sa(&c, "default", "builder", None).await;

    // Too short: 422 naming the field.
    let e = api_error(
        sas.create_token_request("builder", &pp, &request(Some(599), None))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, 422, "{e:?}");
    assert!(
        e.2.contains("spec.expirationSeconds")
            && e.2
                .contains("may not specify a duration less than 10 minutes"),
        "{e:?}"
    );
    // Longer than --service-account-max-token-expiration: cut to it.
    let t = sas
        .create_token_request("builder", &pp, &request(Some(7200), None))
        .await
        .unwrap();
    assert_eq!(t.spec.expiration_seconds, Some(1200));
    let st = t.status.unwrap();
    let left = st.expiration_timestamp.0.as_second() - jiff::Timestamp::now().as_second();
    assert!((1190..=1201).contains(&left), "{left}");
    assert_eq!(
        review(&c, &st.token).await,
        (true, "system:serviceaccount:default:builder".into())
    );
    // Its audiences default to the API server's.
    assert_eq!(
        t.spec.audiences,
        ["https://kubernetes.default.svc.cluster.local"]
    );

    // Bound objects: a kind tokens cannot be bound to, a missing pod, another UID, a pod
    // running as another account.
    let e = api_error(
        sas.create_token_request(
            "builder",
            &pp,
            &request(None, Some(("ConfigMap", "x", None))),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.0, 400);
    assert!(e.2.contains("cannot bind token to object of type"), "{e:?}");
    let e = api_error(
        sas.create_token_request("builder", &pp, &request(None, Some(("Pod", "web", None))))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, 404, "{e:?}");
    let pods = Api::<Pod>::namespaced(c.client.clone(), "default");
    create_sa(&c, "default", "default", None).await;
    let web = pods
        .create(&pp, &pod("web", json!({"serviceAccountName": "builder"})))
        .await
        .unwrap();
    let other = pods.create(&pp, &pod("other", json!({}))).await.unwrap();
    let e = api_error(
        sas.create_token_request(
            "builder",
            &pp,
            &request(None, Some(("Pod", "web", Some("not-its-uid")))),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.0, 409);
    assert!(e.2.contains("does not match the UID in record"), "{e:?}");
    let e = api_error(
        sas.create_token_request("builder", &pp, &request(None, Some(("Pod", "other", None))))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, 400);
    assert!(
        e.2.contains("to pod running with different serviceaccount name"),
        "{e:?}"
    );
    assert_eq!(
        other.spec.unwrap().service_account_name.as_deref(),
        Some("default")
    );

    // Bound to web: valid until web goes.
    let uid = web.metadata.uid.clone();
    let t = sas
        .create_token_request(
            "builder",
            &pp,
            &request(None, Some(("Pod", "web", uid.as_deref()))),
        )
        .await
        .unwrap();
    let token = t.status.unwrap().token;
    assert!(review(&c, &token).await.0);
    pods.delete(
        "web",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    capstan_testkit::until(
        std::time::Duration::from_secs(10),
        "the pod's token is revoked",
        || async { !review(&c, &token).await.0 },
    )
    .await;
    // A request with it is a 401, not anonymous.
    let (code, _) = capstan_testkit::tls_exchange(
        &c.addr.to_string(),
        Some(capstan_testkit::pki::pki().anonymous_tls()),
        "GET",
        "/api/v1/namespaces/default/configmaps",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
    .map(|(code, _, body)| (code, body))
    .unwrap();
    assert_eq!(code, 401);
    // A token from another signer never authenticates.
    let stranger = capstan_apiserver::auth::service_account::ServiceAccountTokens::new(
        capstan_pki::jwt::SigningKey::from_pem(
            &capstan_pki::jwt::SigningKey::generate_pem().unwrap(),
        )
        .unwrap(),
    );
    let sa = serde_json::to_value(sas.get("builder").await.unwrap()).unwrap();
    let (forged, _) = stranger
        .issue(&capstan_apiserver::auth::service_account::Issue {
            service_account: &sa,
            audiences: &stranger.audiences,
            expiration_seconds: 3600,
            bound: None,
            node: None,
            now: jiff::Timestamp::now().as_second(),
        })
        .unwrap();
    assert!(!review(&c, &forged).await.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_their_account_and_its_token_volume() {
    let c = cluster(None).await;
    let pp = PostParams::default();
    let pods = Api::<Pod>::namespaced(c.client.clone(), "default");
    // No `default` account yet: refused (after a few lookups), in Kubernetes' words.
    let e = api_error(
        pods.create(&pp, &pod("early", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.0, e.1.as_str()), (403, "Forbidden"), "{e:?}");
    assert!(
        e.2.contains(
            "error looking up service account default/default: serviceaccount \"default\" not found"
        ),
        "{e:?}"
    );
    create_sa(&c, "default", "default", None).await;
    let p = pods
        .create(
            &pp,
            &pod(
                "web",
                json!({"initContainers": [{"name": "init", "image": "busybox"}],
                       "containers": [{"name": "a", "image": "busybox"},
                                      {"name": "b", "image": "busybox", "volumeMounts": [
                                          {"name": "own", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
                       "volumes": [{"name": "own", "emptyDir": {}}]}),
            ),
        )
        .await
        .unwrap();
    let spec = p.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    let vols = spec.volumes.unwrap();
    let token = vols
        .iter()
        .find(|v| v.name.starts_with("kube-api-access-"))
        .expect("the token volume");
    let sources = token.projected.as_ref().unwrap().sources.as_ref().unwrap();
    assert_eq!(
        sources[0]
            .service_account_token
            .as_ref()
            .unwrap()
            .expiration_seconds,
        Some(3607)
    );
    assert_eq!(
        sources[1].config_map.as_ref().unwrap().name,
        "kube-root-ca.crt"
    );
    let mounted = |c: &k8s_openapi::api::core::v1::Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.name == token.name)
            .count()
    };
    assert_eq!(mounted(&spec.init_containers.unwrap()[0]), 1);
    assert_eq!(mounted(&spec.containers[0]), 1);
    assert_eq!(
        mounted(&spec.containers[1]),
        0,
        "its own mount there is kept"
    );

    // Opted out, by the pod or by its account: no volume.
    let p = pods
        .create(
            &pp,
            &pod("quiet", json!({"automountServiceAccountToken": false})),
        )
        .await
        .unwrap();
    assert!(p.spec.unwrap().volumes.unwrap_or_default().is_empty());
    create_sa(&c, "default", "robot", Some(false)).await;
    let p = pods
        .create(&pp, &pod("robot", json!({"serviceAccountName": "robot"})))
        .await
        .unwrap();
    assert!(p.spec.unwrap().volumes.unwrap_or_default().is_empty());
    // A named account that does not exist is refused at once.
    let e = api_error(
        pods.create(&pp, &pod("ghost", json!({"serviceAccountName": "ghost"})))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, 403);
    assert!(e.2.contains("serviceaccount \"ghost\" not found"), "{e:?}");
    // Nothing else was made by the refusals.
    let names: Vec<String> = pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, ["quiet", "robot", "web"]);
}
