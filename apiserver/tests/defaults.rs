//! Kubernetes 1.33's defaults for the built-ins, through the API: what a minimal object of each
//! kind is stored as, that every write path (create, update, the three patches, server-side
//! apply) defaults, that objects stored without defaults read back defaulted, and that the
//! defaults belong to no applier.

use capstan_testkit::{TestCluster, api_error};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

/// `(plural, namespaced)` of the kinds these tests write.
fn resource(obj: &Value) -> (ApiResource, bool) {
    let (plural, namespaced) = match obj["kind"].as_str().unwrap() {
        "Deployment" => ("deployments", true),
        "ReplicaSet" => ("replicasets", true),
        "Pod" => ("pods", true),
        "Service" => ("services", true),
        "Namespace" => ("namespaces", false),
        "Secret" => ("secrets", true),
        "HorizontalPodAutoscaler" => ("horizontalpodautoscalers", true),
        "Endpoints" => ("endpoints", true),
        "EndpointSlice" => ("endpointslices", true),
        "Node" => ("nodes", false),
        "APIService" => ("apiservices", false),
        other => panic!("no resource for {other}"),
    };
    let api_version = obj["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, obj["kind"].as_str().unwrap());
    (ApiResource::from_gvk_with_plural(&gvk, plural), namespaced)
}

fn api(c: &TestCluster, obj: &Value) -> Api<DynamicObject> {
    let (ar, namespaced) = resource(obj);
    if namespaced {
        Api::namespaced_with(c.client.clone(), "default", &ar)
    } else {
        Api::all_with(c.client.clone(), &ar)
    }
}

/// Creates `obj` and returns it as the store holds it.
async fn create_and_read_back(c: &TestCluster, obj: Value) -> Value {
    let created = api(c, &obj)
        .create(
            &PostParams::default(),
            &serde_json::from_value(obj.clone()).unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("creating {obj}: {e}"));
    stored(c, &obj, created.metadata.name.as_deref().unwrap()).await
}

async fn stored(c: &TestCluster, obj: &Value, name: &str) -> Value {
    let (ar, namespaced) = resource(obj);
    let key = if namespaced {
        format!("{}/default/{name}", ar.plural)
    } else {
        format!("{}/{name}", ar.plural)
    };
    let kv = c.store.get(&key).await.unwrap().expect("stored");
    serde_json::from_slice(&kv.value).unwrap()
}

fn deployment(name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})
}

/// The pod template Kubernetes stores for `deployment(name)`.
fn defaulted_template(name: &str) -> Value {
    json!({"metadata": {"labels": {"app": name}}, "spec": {
        "containers": [{"name": "web", "image": "nginx", "imagePullPolicy": "Always",
            "resources": {}, "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File"}],
        "dnsPolicy": "ClusterFirst", "restartPolicy": "Always",
        "schedulerName": "default-scheduler", "securityContext": {},
        "terminationGracePeriodSeconds": 30}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_objects_are_stored_with_exactly_kubernetes_defaults() {
    let c = TestCluster::start().await;
    // (object, JSON pointer, what Kubernetes 1.33 stores there)
    let cases = [
        (
            deployment("web"),
            "/spec",
            json!({"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
                "template": defaulted_template("web")}),
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs"},
                "spec": deployment("rs")["spec"].clone()}),
            "/spec",
            json!({"replicas": 1, "selector": {"matchLabels": {"app": "rs"}},
                "template": defaulted_template("rs")}),
        ),
        (
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                    "ports": [{"containerPort": 8080}],
                    "resources": {"limits": {"cpu": "1"}},
                    "livenessProbe": {"httpGet": {"port": 8080}}}],
                    "volumes": [{"name": "scratch"}]}}),
            "/spec",
            json!({"containers": [{"name": "c", "image": "busybox:1.36",
                    "imagePullPolicy": "IfNotPresent",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}},
                    "livenessProbe": {"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"},
                        "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1,
                        "failureThreshold": 3},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File"}],
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "dnsPolicy": "ClusterFirst", "enableServiceLinks": true, "restartPolicy": "Always",
                "schedulerName": "default-scheduler", "securityContext": {},
                "terminationGracePeriodSeconds": 30,
                // The Priority admission plugin: no class and no global default.
                "priority": 0, "preemptionPolicy": "PreemptLowerPriority",
                // The DefaultTolerationSeconds admission plugin, on by default in Kubernetes.
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                     "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                     "effect": "NoExecute", "tolerationSeconds": 300}]}),
        ),
        (
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "headless"},
                "spec": {"clusterIP": "None", "ports": [{"port": 53, "protocol": "UDP"}]}}),
            "/spec",
            json!({"clusterIP": "None", "clusterIPs": ["None"],
                "ports": [{"port": 53, "protocol": "UDP", "targetPort": 53}],
                "type": "ClusterIP", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
        ),
        (
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
            "/metadata/labels",
            json!({"kubernetes.io/metadata.name": "team"}),
        ),
        (
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                "stringData": {"k": "v"}}),
            "/type",
            json!("Opaque"),
        ),
        (
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "web"}, "spec": {"maxReplicas": 4, "scaleTargetRef":
                    {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}}),
            "/spec",
            json!({"maxReplicas": 4, "minReplicas": 1, "scaleTargetRef":
                    {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 80}}}]}),
        ),
        (
            json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "e"},
                "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}),
            "/subsets/0/ports",
            json!([{"port": 80, "protocol": "TCP"}]),
        ),
        (
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "e"}, "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.1"]}], "ports": [{"port": 80}]}),
            "/ports",
            json!([{"name": "", "port": 80, "protocol": "TCP"}]),
        ),
        (
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
                "status": {"capacity": {"cpu": "4", "pods": "110"}}}),
            "/status/allocatable",
            json!({"cpu": "4", "pods": "110"}),
        ),
        (
            json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": "v1beta1.metrics.example.com"},
                "spec": {"group": "metrics.example.com", "version": "v1beta1",
                    "groupPriorityMinimum": 100, "versionPriority": 100,
                    "service": {"namespace": "default", "name": "metrics"}}}),
            "/spec/service",
            json!({"namespace": "default", "name": "metrics", "port": 443}),
        ),
    ];
    for (obj, pointer, want) in cases {
        let got = create_and_read_back(&c, obj.clone()).await;
        assert_eq!(
            got.pointer(pointer),
            Some(&want),
            "{} {pointer}",
            obj["kind"]
        );
    }

    // A Service with a ClusterIP: the same but for the IP the allocator chose.
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
    let mut spec = create_and_read_back(&c, svc).await["spec"].take();
    let ip = spec["clusterIP"].as_str().unwrap().to_string();
    assert_eq!(spec["clusterIPs"], json!([ip]));
    spec.as_object_mut()
        .unwrap()
        .retain(|k, _| !k.starts_with("clusterIP"));
    assert_eq!(
        spec,
        json!({"selector": {"app": "web"},
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
            "type": "ClusterIP", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
            "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"]})
    );

    // A namespace named by the server is labelled with the name it got.
    let generated = create_and_read_back(
        &c,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"generateName": "team-"}}),
    )
    .await;
    assert_eq!(
        generated["metadata"]["labels"]["kubernetes.io/metadata.name"],
        generated["metadata"]["name"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_every_patch_type_default_what_they_leave_unset() {
    let c = TestCluster::start().await;
    let d = deployment("web");
    let deployments = api(&c, &d);
    create_and_read_back(&c, d.clone()).await;
    let defaulted_spec = stored(&c, &d, "web").await["spec"].clone();

    // PUT without the defaulted fields: defaulted again, so the spec (and generation) stay.
    let mut live: Value = serde_json::to_value(deployments.get("web").await.unwrap()).unwrap();
    live["spec"] = d["spec"].clone();
    let put = deployments
        .replace(
            "web",
            &PostParams::default(),
            &serde_json::from_value(live).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(put.metadata.generation, Some(1));
    assert_eq!(stored(&c, &d, "web").await["spec"], defaulted_spec);

    let pp = PatchParams::default();
    // JSON merge patch: a field set to null is removed, then defaulted.
    deployments
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"spec": {"template": {"spec": {"dnsPolicy": null}}}})),
        )
        .await
        .unwrap();
    // JSON patch removing a defaulted field.
    let remove: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/spec/progressDeadlineSeconds"}]))
            .unwrap();
    deployments
        .patch("web", &pp, &Patch::Json::<()>(remove))
        .await
        .unwrap();
    assert_eq!(stored(&c, &d, "web").await["spec"], defaulted_spec);
    // Strategic merge patch adding a container: the new container is defaulted.
    let patched = deployments
        .patch(
            "web",
            &pp,
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "sidecar", "image": "envoy:1.30", "readinessProbe": {"tcpSocket": {"port": 1}}}
            ]}}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    let containers = stored(&c, &d, "web").await["spec"]["template"]["spec"]["containers"].clone();
    assert_eq!(containers[0]["imagePullPolicy"], "Always");
    assert_eq!(
        containers[1],
        json!({"name": "sidecar", "image": "envoy:1.30", "imagePullPolicy": "IfNotPresent",
            "resources": {},
            "readinessProbe": {"tcpSocket": {"port": 1}, "timeoutSeconds": 1, "periodSeconds": 10,
                "successThreshold": 1, "failureThreshold": 3},
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"})
    );

    // Recreate takes no rollingUpdate, so a merge patch switching to it must drop the
    // defaulted one, as in Kubernetes.
    let err = deployments
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"spec": {"strategy": {"type": "Recreate"}}})),
        )
        .await
        .unwrap_err();
    let (code, _, message) = api_error(err);
    assert_eq!(code, 422);
    assert!(
        message.contains("spec.strategy.rollingUpdate: Forbidden"),
        "{message}"
    );
    let recreate = deployments
        .patch(
            "web",
            &pp,
            &Patch::Merge(
                json!({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": null}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        recreate.data["spec"]["strategy"],
        json!({"type": "Recreate"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_stored_without_defaults_read_back_defaulted() {
    let c = TestCluster::start().await;
    // Written by an older server, straight into the store.
    let mut old = deployment("old");
    old["metadata"]["namespace"] = json!("default");
    old["metadata"]["uid"] = json!("0e9a4a9c-0000-4000-8000-000000000001");
    c.store
        .create(
            "deployments/default/old",
            serde_json::to_vec(&old).unwrap().into(),
        )
        .await
        .unwrap();
    let deployments = api(&c, &old);
    let got = serde_json::to_value(deployments.get("old").await.unwrap()).unwrap();
    assert_eq!(got["spec"]["template"], defaulted_template("old"));
    assert_eq!(got["spec"]["revisionHistoryLimit"], 10);
    let listed = deployments.list(&Default::default()).await.unwrap();
    let listed = serde_json::to_value(&listed.items[0]).unwrap();
    assert_eq!(listed["spec"], got["spec"]);
    // Writing it back stores the defaults (the stored bytes differ, so Kubernetes writes too).
    assert!(
        stored(&c, &old, "old").await["spec"]
            .get("revisionHistoryLimit")
            .is_none()
    );
    deployments
        .replace(
            "old",
            &PostParams::default(),
            &serde_json::from_value(got.clone()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(stored(&c, &old, "old").await["spec"], got["spec"]);
}

/// The fields of one managedFields entry, as dotted `f:` paths.
fn owned_paths(obj: &Value, manager: &str, operation: &str) -> Vec<String> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        for (k, child) in v.as_object().into_iter().flatten() {
            let path = format!("{prefix}.{k}");
            out.push(path.clone());
            walk(child, &path, out);
        }
    }
    let entry = obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["manager"] == manager && m["operation"] == operation)
        .unwrap_or_else(|| panic!("no {operation} by {manager}: {obj}"));
    let mut out = Vec::new();
    walk(&entry["fieldsV1"], "", &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_belong_to_no_applier_and_to_the_creator_of_a_plain_write() {
    let c = TestCluster::start().await;
    let d = deployment("applied");
    let deployments = api(&c, &d);
    let apply = PatchParams::apply("gitops");
    let first = deployments
        .patch("applied", &apply, &Patch::Apply(d.clone()))
        .await
        .unwrap();
    let first = serde_json::to_value(first).unwrap();
    assert_eq!(first["spec"]["revisionHistoryLimit"], 10);
    let owned = owned_paths(&first, "gitops", "Apply");
    assert!(owned.iter().any(|p| p.ends_with("f:image")), "{owned:?}");
    for default in [
        "f:revisionHistoryLimit",
        "f:strategy",
        "f:dnsPolicy",
        "f:imagePullPolicy",
    ] {
        assert!(
            !owned.iter().any(|p| p.ends_with(default)),
            "the applier owns {default}: {owned:?}"
        );
    }
    // Applying again is a no-op.
    let second = deployments
        .patch("applied", &apply, &Patch::Apply(d.clone()))
        .await
        .unwrap();
    assert_eq!(
        second.metadata.resource_version.as_deref(),
        first["metadata"]["resourceVersion"].as_str()
    );
    // Another applier may set a defaulted field: nobody owns it, so no conflict.
    let mut tuned = d.clone();
    tuned["spec"] = json!({"revisionHistoryLimit": 3});
    let tuned = deployments
        .patch(
            "applied",
            &PatchParams::apply("tuner"),
            &Patch::Apply(tuned),
        )
        .await
        .unwrap();
    assert_eq!(tuned.data["spec"]["revisionHistoryLimit"], 3);
    // The first applier re-applies with a change: still no conflict.
    let mut scaled = d.clone();
    scaled["spec"]["replicas"] = json!(2);
    let scaled = deployments
        .patch("applied", &apply, &Patch::Apply(scaled))
        .await
        .unwrap();
    assert_eq!(scaled.data["spec"]["replicas"], 2);

    // A plain create owns what it stored, defaults included (an Update in Kubernetes).
    let created = deployments
        .create(
            &PostParams {
                field_manager: Some("creator".into()),
                ..Default::default()
            },
            &serde_json::from_value(deployment("created")).unwrap(),
        )
        .await
        .unwrap();
    let owned = owned_paths(&serde_json::to_value(created).unwrap(), "creator", "Update");
    for field in ["f:revisionHistoryLimit", "f:dnsPolicy", "f:imagePullPolicy"] {
        assert!(
            owned.iter().any(|p| p.ends_with(field)),
            "{field}: {owned:?}"
        );
    }
}
