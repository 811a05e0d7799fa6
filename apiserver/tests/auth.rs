//! Authentication and authorization over HTTPS (issue 20): anonymous requests reach only the
//! public endpoints; a bad token is a 401 and a certificate from another CA never gets past
//! the handshake; RBAC decides every verb (watches like lists) with Kubernetes' wording; the
//! default roles (view, edit, admin) grant what Kubernetes' do; role and binding writes cannot
//! escalate; aggregation, ServiceAccount subjects, impersonation and the access reviews.

use std::sync::Arc;
use std::time::Duration;

use capstan_apiserver::auth::{AuthConfig, token_file::TokenFile};
use capstan_testkit::{TestCluster, api_error, pki, tls_exchange, until};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

async fn raw(
    addr: std::net::SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: &'static str,
    path: &str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> (u16, Value) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, _, text) =
            tls_exchange(&addr.to_string(), tls, method, &path, &h, &body).unwrap();
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

/// A TLS client trusting the test CA with no certificate (anonymous or token).
fn no_cert() -> Arc<rustls::ClientConfig> {
    pki::pki().anonymous_tls()
}

async fn with_tokens(anonymous: bool) -> TestCluster {
    let tokens = TokenFile::parse("tok-jane,jane,u1\ntok-ops,ops-bot,u2,\"ops\"\n").unwrap();
    TestCluster::with_config(capstan_apiserver::Config {
        auth: AuthConfig {
            anonymous,
            tokens,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_requests_reach_only_the_public_endpoints() {
    let c = with_tokens(true).await;
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let (code, _) = raw(c.addr, Some(no_cert()), "GET", path, vec![], vec![]).await;
        assert_eq!(code, 200, "{path}");
    }
    for method in METHODS {
        let (code, s) = raw(
            c.addr,
            Some(no_cert()),
            method,
            "/api/v1/namespaces/default/secrets/x",
            vec![],
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(code, 403, "{method}: {s}");
        assert_eq!(s["reason"], "Forbidden");
        assert!(
            s["message"]
                .as_str()
                .unwrap()
                .starts_with("secrets \"x\" is forbidden: User \"system:anonymous\" cannot "),
            "{s}"
        );
    }
    let (code, s) = raw(
        c.addr,
        Some(no_cert()),
        "GET",
        "/api/v1/secrets?watch=true",
        vec![],
        vec![],
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        s["message"],
        "secrets is forbidden: User \"system:anonymous\" cannot watch resource \"secrets\" in API group \"\" at the cluster scope"
    );
    for path in ["/metrics", "/api", "/apis", "/openapi/v2"] {
        let (code, s) = raw(c.addr, Some(no_cert()), "GET", path, vec![], vec![]).await;
        assert_eq!(code, 403, "{path}");
        assert_eq!(
            s["message"],
            format!("forbidden: User \"system:anonymous\" cannot get path \"{path}\"")
        );
    }
    // Without anonymous requests, no credentials is a 401.
    let strict = with_tokens(false).await;
    let (code, s) = raw(
        strict.addr,
        Some(no_cert()),
        "GET",
        "/api/v1/namespaces",
        vec![],
        vec![],
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (401, Some("Unauthorized")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_authenticate_and_bad_ones_are_refused_for_every_verb() {
    let c = with_tokens(true).await;
    let bearer = |t: &str| vec![("Authorization", format!("Bearer {t}"))];
    for method in METHODS {
        for bad in ["nope", "tok-jane2", ""] {
            let (code, s) = raw(
                c.addr,
                Some(no_cert()),
                method,
                "/api/v1/namespaces/default/pods",
                bearer(bad),
                b"{}".to_vec(),
            )
            .await;
            assert_eq!(code, 401, "{method} {bad:?}: {s}");
            assert_eq!(s["kind"], "Status");
        }
    }
    let (code, _) = raw(
        c.addr,
        Some(no_cert()),
        "GET",
        "/api/v1/namespaces/default/pods?watch=1",
        bearer("nope"),
        vec![],
    )
    .await;
    assert_eq!(code, 401);
    // A good token is jane, who may do nothing yet but discovery and reviewing herself.
    let (code, s) = raw(
        c.addr,
        Some(no_cert()),
        "GET",
        "/api/v1/namespaces/default/pods",
        bearer("tok-jane"),
        vec![],
    )
    .await;
    assert_eq!(code, 403);
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("User \"jane\" cannot list"),
        "{s}"
    );
    let (code, _) = raw(
        c.addr,
        Some(no_cert()),
        "GET",
        "/apis",
        bearer("tok-jane"),
        vec![],
    )
    .await;
    assert_eq!(code, 200);
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let (code, s) = raw(
        c.addr,
        Some(no_cert()),
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        bearer("tok-ops"),
        review.to_string().into_bytes(),
    )
    .await;
    assert_eq!(code, 201, "{s}");
    assert_eq!(
        s["status"]["userInfo"],
        json!({"username": "ops-bot", "uid": "u2", "groups": ["ops", "system:authenticated"]})
    );
    // TokenReview: the administrator asks whether tokens authenticate; jane may not ask.
    let review = |t: &str| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": t}}).to_string().into_bytes()
    };
    let (code, s) = raw(
        c.addr,
        None,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        vec![],
        review("tok-ops"),
    )
    .await;
    assert_eq!(code, 201, "{s}");
    assert_eq!(s["status"]["authenticated"], true);
    assert_eq!(s["status"]["user"]["username"], "ops-bot");
    let (_, s) = raw(
        c.addr,
        None,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        vec![],
        review("forged"),
    )
    .await;
    assert_eq!(
        (
            s["status"]["authenticated"].as_bool(),
            s["status"]["error"].as_str()
        ),
        (Some(false), Some("invalid bearer token"))
    );
    let (code, _) = raw(
        c.addr,
        Some(no_cert()),
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        bearer("tok-jane"),
        review("tok-ops"),
    )
    .await;
    assert_eq!(code, 403);
    // The refusals are counted.
    let (_, _, metrics) =
        tls_exchange(&c.addr.to_string(), None, "GET", "/metrics", &[], b"").unwrap();
    assert!(
        metrics.contains("apiserver_request_denied_total{reason=\"unauthorized\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("apiserver_request_denied_total{reason=\"forbidden\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_never_gets_past_the_handshake() {
    let c = TestCluster::start().await;
    let other = capstan_pki::Ca::generate().unwrap();
    let stranger = other.client("test-admin", &["system:masters"]).unwrap();
    let tls = Arc::new(
        capstan_pki::tls::client_config(pki::pki().ca.cert_pem(), Some(&stranger)).unwrap(),
    );
    let addr = c.addr.to_string();
    let r = tokio::task::spawn_blocking(move || {
        tls_exchange(&addr, Some(tls), "GET", "/api/v1/secrets", &[], b"")
    })
    .await
    .unwrap();
    assert!(r.is_err(), "a stranger's certificate was accepted: {r:?}");
    // Plain HTTP on the HTTPS port gets nothing either.
    let r = capstan_testkit::http_request(
        &format!("localhost:{}", c.addr.port()),
        "GET",
        "/api/v1/secrets",
        &[],
        b"",
    );
    assert!(r.is_err() || r.is_ok_and(|(code, _)| code != 200));
}

fn role(ns: &str, name: &str, rules: Value) -> Role {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "rules": rules}))
        .unwrap()
}

fn role_binding(ns: &str, name: &str, kind: &str, role: &str, user: &str) -> RoleBinding {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}],
    }))
    .unwrap()
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

/// Polls until the client's user may `verb` `resource[.group]` (as the index catches up with a
/// new binding).
async fn until_allowed(client: &kube::Client, ns: &str, verb: &str, resource: &str) {
    let c = client.clone();
    let (group, resource) = match resource.split_once('.') {
        Some((r, g)) => (g.to_string(), r.to_string()),
        None => (String::new(), resource.to_string()),
    };
    until(
        Duration::from_secs(5),
        &format!("{verb} {resource} allowed"),
        || {
            let c = c.clone();
            let (ns, verb, group, resource) = (
                ns.to_string(),
                verb.to_string(),
                group.clone(),
                resource.clone(),
            );
            async move { ssar(&c, &ns, &verb, &group, &resource).await }
        },
    )
    .await;
}

/// `kubectl auth can-i VERB RESOURCE -n NS` for the client's user.
async fn ssar(client: &kube::Client, ns: &str, verb: &str, group: &str, resource: &str) -> bool {
    let review: k8s_openapi::api::authorization::v1::SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {"namespace": ns, "verb": verb, "group": group, "resource": resource}}
    }))
    .unwrap();
    let api: Api<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview> =
        Api::all(client.clone());
    let r = api.create(&PostParams::default(), &review).await.unwrap();
    r.status.unwrap().allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_roles_grant_what_kubernetes_grants() {
    let c = TestCluster::start().await;
    let admin = c.client.clone();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    let rbs: Api<RoleBinding> = Api::namespaced(admin.clone(), "team");
    for (user, role) in [("viewer", "view"), ("editor", "edit"), ("owner", "admin")] {
        rbs.create(
            &PostParams::default(),
            &role_binding("team", user, "ClusterRole", role, user),
        )
        .await
        .unwrap();
    }
    let viewer = c.client_as("viewer", &[]).await;
    let editor = c.client_as("editor", &[]).await;
    let owner = c.client_as("owner", &[]).await;
    until_allowed(&owner, "team", "create", "roles.rbac.authorization.k8s.io").await;

    // view: reads, never writes; reads no Secrets.
    let v_cms: Api<ConfigMap> = Api::namespaced(viewer.clone(), "team");
    v_cms.list(&ListParams::default()).await.unwrap();
    let (code, _, msg) = api_error(
        v_cms
            .create(&PostParams::default(), &cm("a"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    assert_eq!(
        msg,
        "configmaps is forbidden: User \"viewer\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"team\""
    );
    let v_secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(viewer.clone(), "team");
    assert_eq!(
        api_error(v_secrets.list(&ListParams::default()).await.unwrap_err()).0,
        403
    );
    // Only in its namespace.
    let v_default: Api<ConfigMap> = Api::namespaced(viewer.clone(), "default");
    assert_eq!(
        api_error(v_default.list(&ListParams::default()).await.unwrap_err()).0,
        403
    );

    // edit: writes workloads and config, not roles or bindings.
    let e_cms: Api<ConfigMap> = Api::namespaced(editor.clone(), "team");
    e_cms
        .create(&PostParams::default(), &cm("b"))
        .await
        .unwrap();
    e_cms.delete("b", &DeleteParams::default()).await.unwrap();
    let e_roles: Api<Role> = Api::namespaced(editor.clone(), "team");
    let (code, _, msg) = api_error(
        e_roles
            .create(
                &PostParams::default(),
                &role(
                    "team",
                    "r",
                    json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]),
                ),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403, "{msg}");
    let e_rbs: Api<RoleBinding> = Api::namespaced(editor.clone(), "team");
    assert_eq!(
        api_error(
            e_rbs
                .create(
                    &PostParams::default(),
                    &role_binding("team", "x", "ClusterRole", "view", "editor")
                )
                .await
                .unwrap_err()
        )
        .0,
        403
    );

    // admin: roles and bindings in its namespace, within what it holds.
    let o_roles: Api<Role> = Api::namespaced(owner.clone(), "team");
    o_roles
        .create(
            &PostParams::default(),
            &role(
                "team",
                "pod-reader",
                json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]),
            ),
        )
        .await
        .unwrap();
    let (code, _, msg) = api_error(
        o_roles
            .create(
                &PostParams::default(),
                &role(
                    "team",
                    "everything",
                    json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]),
                ),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    assert!(
        msg.contains("is attempting to grant RBAC permissions not currently held"),
        "{msg}"
    );
    assert!(
        msg.contains("{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}"),
        "{msg}"
    );
    assert!(
        o_roles.get_opt("everything").await.unwrap().is_none(),
        "a refused role is not stored"
    );
    // Binding: its own role yes, cluster-admin no (it does not hold it, may not bind it).
    let o_rbs: Api<RoleBinding> = Api::namespaced(owner.clone(), "team");
    o_rbs
        .create(
            &PostParams::default(),
            &role_binding("team", "readers", "Role", "pod-reader", "viewer"),
        )
        .await
        .unwrap();
    let (code, _, msg) = api_error(
        o_rbs
            .create(
                &PostParams::default(),
                &role_binding("team", "power", "ClusterRole", "cluster-admin", "owner"),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    assert!(msg.contains("not currently held"), "{msg}");
    // Nothing outside its namespace.
    let o_other: Api<Role> = Api::namespaced(owner.clone(), "default");
    assert_eq!(
        api_error(
            o_other
                .create(
                    &PostParams::default(),
                    &role(
                        "default",
                        "r",
                        json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}])
                    )
                )
                .await
                .unwrap_err()
        )
        .0,
        403
    );
    // The viewer now reads pods through the owner's binding too; an edit to the role shows.
    let v_pods: Api<Pod> = Api::namespaced(viewer.clone(), "team");
    v_pods.list(&ListParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalate_and_bind_verbs_allow_what_holding_does_not() {
    let c = TestCluster::start().await;
    let admin = c.client.clone();
    let crs: Api<ClusterRole> = Api::all(admin.clone());
    let binder: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "binder"},
        "rules": [
            {"verbs": ["create", "get"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings", "roles"]},
            {"verbs": ["bind"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["edit"]},
            {"verbs": ["escalate"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"]},
        ]
    }))
    .unwrap();
    crs.create(&PostParams::default(), &binder).await.unwrap();
    let crbs: Api<ClusterRoleBinding> = Api::all(admin.clone());
    let b: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "binder"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "binder"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"}],
    }))
    .unwrap();
    crbs.create(&PostParams::default(), &b).await.unwrap();
    let bob = c.client_as("bob", &[]).await;
    until_allowed(
        &bob,
        "default",
        "create",
        "rolebindings.rbac.authorization.k8s.io",
    )
    .await;
    let rbs: Api<RoleBinding> = Api::namespaced(bob.clone(), "default");
    // bind on edit (by name): allowed without holding edit; view: refused.
    rbs.create(
        &PostParams::default(),
        &role_binding("default", "e", "ClusterRole", "edit", "carol"),
    )
    .await
    .unwrap();
    assert_eq!(
        api_error(
            rbs.create(
                &PostParams::default(),
                &role_binding("default", "v", "ClusterRole", "view", "carol")
            )
            .await
            .unwrap_err()
        )
        .0,
        403
    );
    // A binding to a role that does not exist: 404, as Kubernetes resolves the roleRef.
    let (code, _, _) = api_error(
        rbs.create(
            &PostParams::default(),
            &role_binding("default", "n", "Role", "ghost", "carol"),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 404);
    // escalate on roles: any rules.
    let roles: Api<Role> = Api::namespaced(bob.clone(), "default");
    roles
        .create(
            &PostParams::default(),
            &role(
                "default",
                "all",
                json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]),
            ),
        )
        .await
        .unwrap();
    // The roleRef of a binding never changes.
    let mut e = rbs.get("e").await.unwrap();
    e.role_ref.name = "view".into();
    let admin_rbs: Api<RoleBinding> = Api::namespaced(admin.clone(), "default");
    let (code, _, msg) = api_error(
        admin_rbs
            .replace("e", &PostParams::default(), &e)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(msg.contains("cannot change roleRef"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_need_watch_and_aggregation_and_service_accounts_work() {
    let c = TestCluster::start().await;
    let admin = c.client.clone();
    let crs: Api<ClusterRole> = Api::all(admin.clone());
    let lister: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "cm-lister"},
        "rules": [{"verbs": ["list"], "apiGroups": [""], "resources": ["configmaps"]}]
    }))
    .unwrap();
    crs.create(&PostParams::default(), &lister).await.unwrap();
    let rbs: Api<RoleBinding> = Api::namespaced(admin.clone(), "default");
    rbs.create(
        &PostParams::default(),
        &role_binding("default", "l", "ClusterRole", "cm-lister", "lister"),
    )
    .await
    .unwrap();
    let lister = c.client_as("lister", &[]).await;
    until_allowed(&lister, "default", "list", "configmaps").await;
    let cms: Api<ConfigMap> = Api::namespaced(lister.clone(), "default");
    cms.list(&ListParams::default()).await.unwrap();
    let (code, _, msg) = api_error(
        cms.watch(&kube::api::WatchParams::default(), "0")
            .await
            .err()
            .expect("a watch without the watch verb"),
    );
    assert_eq!(code, 403);
    assert!(
        msg.contains("cannot watch resource \"configmaps\""),
        "{msg}"
    );

    // A ClusterRole labelled to aggregate into view adds to it.
    let extra: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "view-widgets", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "rules": [{"verbs": ["get"], "apiGroups": ["widgets.example.com"], "resources": ["widgets"]}]
    }))
    .unwrap();
    crs.create(&PostParams::default(), &extra).await.unwrap();
    rbs.create(
        &PostParams::default(),
        &role_binding("default", "v", "ClusterRole", "view", "viewer"),
    )
    .await
    .unwrap();
    let viewer = c.client_as("viewer", &[]).await;
    let v = viewer.clone();
    until(Duration::from_secs(5), "view aggregates widgets", || {
        let v = v.clone();
        async move { ssar(&v, "default", "get", "widgets.example.com", "widgets").await }
    })
    .await;
    assert!(ssar(&viewer, "default", "list", "", "pods").await);
    assert!(!ssar(&viewer, "default", "create", "", "pods").await);

    // ServiceAccount subjects: the user system:serviceaccount:NS:NAME.
    let sa_binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "sa", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cm-lister"},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "default"}],
    }))
    .unwrap();
    rbs.create(&PostParams::default(), &sa_binding)
        .await
        .unwrap();
    let robot = c
        .client_as("system:serviceaccount:default:robot", &[])
        .await;
    until_allowed(&robot, "default", "list", "configmaps").await;
    assert!(!ssar(&robot, "kube-system", "list", "", "configmaps").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_answer_for_others_and_impersonation_needs_its_verb() {
    let c = TestCluster::start().await;
    let rbs: Api<RoleBinding> = Api::namespaced(c.client.clone(), "default");
    rbs.create(
        &PostParams::default(),
        &role_binding("default", "v", "ClusterRole", "view", "viewer"),
    )
    .await
    .unwrap();
    let admin_tls = pki::pki().client_tls();
    // SubjectAccessReview: about someone else.
    let sar = |user: &str, verb: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "resourceAttributes": {"namespace": "default", "verb": verb, "resource": "pods"}}})
        .to_string()
        .into_bytes()
    };
    let c2 = c.client_as("viewer", &[]).await;
    until_allowed(&c2, "default", "list", "pods").await;
    let (code, s) = raw(
        c.addr,
        Some(admin_tls.clone()),
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        vec![],
        sar("viewer", "list"),
    )
    .await;
    assert_eq!(code, 201, "{s}");
    assert_eq!(s["status"]["allowed"], true);
    assert!(
        s["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("RoleBinding \"v/default\" of ClusterRole \"view\""),
        "{s}"
    );
    let (_, s) = raw(
        c.addr,
        Some(admin_tls.clone()),
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        vec![],
        sar("viewer", "delete"),
    )
    .await;
    assert_eq!(s["status"]["allowed"], false);
    let (code, s) = raw(
        c.addr,
        Some(admin_tls.clone()),
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        vec![],
        b"{\"spec\": {}}".to_vec(),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    // The viewer may not ask about others.
    let viewer_tls = Arc::new(
        capstan_pki::tls::client_config(
            pki::pki().ca.cert_pem(),
            Some(&pki::pki().user("viewer", &[])),
        )
        .unwrap(),
    );
    let (code, _) = raw(
        c.addr,
        Some(viewer_tls.clone()),
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        vec![],
        sar("viewer", "list"),
    )
    .await;
    assert_eq!(code, 403);
    // LocalSubjectAccessReview: in the path's namespace.
    let lsar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview", "metadata": {"namespace": "default"},
        "spec": {"user": "viewer", "resourceAttributes": {"verb": "get", "resource": "pods"}}});
    let (code, s) = raw(
        c.addr,
        Some(admin_tls.clone()),
        "POST",
        "/apis/authorization.k8s.io/v1/namespaces/default/localsubjectaccessreviews",
        vec![],
        lsar.to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        (code, s["status"]["allowed"].as_bool()),
        (201, Some(true)),
        "{s}"
    );
    // SelfSubjectRulesReview: the viewer's rules in default, none of them writes.
    let ssrr = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": "default"}});
    let (code, s) = raw(
        c.addr,
        Some(viewer_tls.clone()),
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        vec![],
        ssrr.to_string().into_bytes(),
    )
    .await;
    assert_eq!(code, 201);
    let rules = s["status"]["resourceRules"].as_array().unwrap();
    assert!(
        rules.iter().any(
            |r| r["resources"].as_array().unwrap().contains(&json!("pods"))
                && r["verbs"].as_array().unwrap().contains(&json!("list"))
        ),
        "{s}"
    );
    assert!(
        !rules.iter().any(
            |r| r["verbs"].as_array().unwrap().contains(&json!("create"))
                && r["resources"].as_array().unwrap().contains(&json!("pods"))
        ),
        "{s}"
    );
    assert!(
        !s["status"]["nonResourceRules"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Impersonation: the administrator may; the viewer may not.
    let as_viewer = vec![("Impersonate-User", "viewer".to_string())];
    let (code, _) = raw(
        c.addr,
        Some(admin_tls.clone()),
        "GET",
        "/api/v1/namespaces/default/pods",
        as_viewer.clone(),
        vec![],
    )
    .await;
    assert_eq!(code, 200);
    let (code, s) = raw(
        c.addr,
        Some(admin_tls.clone()),
        "DELETE",
        "/api/v1/namespaces/default/pods/x",
        as_viewer.clone(),
        vec![],
    )
    .await;
    assert_eq!(code, 403);
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("User \"viewer\" cannot delete"),
        "{s}"
    );
    let as_admin = vec![
        ("Impersonate-User", "test-admin".to_string()),
        ("Impersonate-Group", "system:masters".to_string()),
    ];
    let (code, s) = raw(
        c.addr,
        Some(viewer_tls),
        "GET",
        "/api/v1/namespaces/default/secrets",
        as_admin,
        vec![],
    )
    .await;
    assert_eq!(code, 403);
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("cannot impersonate resource \"users\""),
        "{s}"
    );
    let groups_only = vec![("Impersonate-Group", "system:masters".to_string())];
    let (code, _) = raw(
        c.addr,
        Some(admin_tls),
        "GET",
        "/api/v1/namespaces",
        groups_only,
        vec![],
    )
    .await;
    assert_eq!(code, 400);
}
