//! Events through both APIs (core/v1 and events.k8s.io/v1): the field selectors Kubernetes
//! supports (what `kubectl events --for` and `kubectl get events --field-selector` send), 400 for
//! the rest, and kubectl's wide Table columns for events, pods and nodes.

use capstan_testkit::{TestCluster, api_error, http_request};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

fn event(name: &str, pod: &str, reason: &str, ty: &str, component: &str) -> Event {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": "default", "name": pod,
            "uid": format!("uid-{pod}"), "resourceVersion": "7", "fieldPath": "spec.containers{app}"},
        "reason": reason, "type": ty, "message": format!("{reason} on {pod}"),
        "source": {"component": component, "host": "n1"},
        "reportingComponent": component, "reportingInstance": "n1",
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:01:00Z", "count": 3,
    }))
    .unwrap()
}

async fn seed(c: &TestCluster) {
    let api: Api<Event> = Api::namespaced(c.client.clone(), "default");
    for e in [
        event("a", "web", "BackOff", "Warning", "kubelet"),
        event("b", "web", "Pulled", "Normal", "kubelet"),
        event("c", "db", "BackOff", "Warning", "kubelet"),
        event("d", "web", "Scheduled", "Normal", "default-scheduler"),
    ] {
        api.create(&PostParams::default(), &e).await.unwrap();
    }
}

fn names(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap();
    let mut n: Vec<String> = v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_events_select_on_every_field_kubernetes_supports() {
    let c = TestCluster::start().await;
    seed(&c).await;
    let api: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let cases = [
        // kubectl events --for pod/web
        (
            "involvedObject.kind=Pod,involvedObject.name=web",
            vec!["a", "b", "d"],
        ),
        ("involvedObject.name=web,reason=BackOff", vec!["a"]),
        (
            "involvedObject.namespace=default,type=Warning",
            vec!["a", "c"],
        ),
        ("involvedObject.uid=uid-db", vec!["c"]),
        (
            "involvedObject.apiVersion=v1,reason!=BackOff",
            vec!["b", "d"],
        ),
        (
            "involvedObject.resourceVersion=7,metadata.name=b",
            vec!["b"],
        ),
        (
            "involvedObject.fieldPath=spec.containers{app},reason=Pulled",
            vec!["b"],
        ),
        ("source=default-scheduler", vec!["d"]),
        (
            "reportingComponent=kubelet,involvedObject.name=db",
            vec!["c"],
        ),
        ("metadata.namespace=default,type=Normal", vec!["b", "d"]),
    ];
    for (sel, want) in cases {
        let mut got: Vec<String> = api
            .list(&ListParams::default().fields(sel))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.metadata.name.unwrap())
            .collect();
        got.sort();
        assert_eq!(got, want, "{sel}");
    }
    for bad in [
        "involvedObject.labels=x",
        "message=hi",
        "regarding.name=web",
    ] {
        let (code, _, msg) = api_error(
            api.list(&ListParams::default().fields(bad))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, 400, "{bad}");
        assert!(msg.contains("field label not supported"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_k8s_io_selects_on_its_own_field_names() {
    let c = TestCluster::start().await;
    seed(&c).await;
    let addr = c.addr.to_string();
    let get = |sel: &str| {
        http_request(
            &addr,
            "GET",
            &format!("/apis/events.k8s.io/v1/namespaces/default/events?fieldSelector={sel}"),
            &[],
            b"",
        )
        .unwrap()
    };
    let cases = [
        ("regarding.kind=Pod,regarding.name=web", vec!["a", "b", "d"]),
        ("regarding.name=web,reason=BackOff", vec!["a"]),
        ("regarding.uid=uid-db", vec!["c"]),
        ("regarding.namespace=default,type=Warning", vec!["a", "c"]),
        (
            "regarding.apiVersion=v1,regarding.resourceVersion=7,reason=Pulled",
            vec!["b"],
        ),
        (
            "regarding.fieldPath=spec.containers%7Bapp%7D,reason=Pulled",
            vec!["b"],
        ),
        ("reportingController=default-scheduler", vec!["d"]),
        ("metadata.name=c", vec!["c"]),
    ];
    for (sel, want) in cases {
        let (code, body) = get(sel);
        assert_eq!(code, 200, "{sel}: {body}");
        assert_eq!(names(&body), want, "{sel}");
    }
    for bad in ["involvedObject.name=web", "source=kubelet", "note=x"] {
        let (code, body) = get(bad);
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body.contains("field label not supported"), "{body}");
    }
}

fn column_names(t: &Value) -> Vec<(String, i64)> {
    t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["priority"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_carry_kubectls_wide_columns() {
    let c = TestCluster::start().await;
    seed(&c).await;
    let addr = c.addr.to_string();
    let table = |path: &str| {
        let (code, body) = http_request(&addr, "GET", path, &[("Accept", TABLE)], b"").unwrap();
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };

    // Events: LAST SEEN first, NAME last and wide; selected like `kubectl get events
    // --field-selector`, with the whole object on request (`--sort-by`).
    let t = table(
        "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name=web,reason=BackOff&includeObject=Object",
    );
    let cols = column_names(&t);
    let want = [
        ("Last Seen", 0),
        ("Type", 0),
        ("Reason", 0),
        ("Object", 0),
        ("Subobject", 1),
        ("Source", 1),
        ("Message", 0),
        ("First Seen", 1),
        ("Count", 1),
        ("Name", 1),
    ];
    let want: Vec<(String, i64)> = want.iter().map(|(n, p)| (n.to_string(), *p)).collect();
    assert_eq!(cols, want);
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let cells = rows[0]["cells"].as_array().unwrap();
    assert_eq!(
        cells[1..7],
        [
            json!("Warning"),
            json!("BackOff"),
            json!("pod/web"),
            json!("spec.containers{app}"),
            json!("kubelet, n1"),
            json!("BackOff on web"),
        ]
    );
    assert_eq!(cells[8], 3);
    assert_eq!(cells[9], "a");
    assert_eq!(rows[0]["object"]["kind"], "Event");
    assert_eq!(rows[0]["object"]["reason"], "BackOff");

    // Nodes: addresses and node info.
    let nodes: Api<Node> = Api::all(c.client.clone());
    let node: Node = serde_json::from_value(json!({"metadata":{"name":"n1"},
        "status":{"addresses":[{"type":"InternalIP","address":"10.1.0.4"}],
        "nodeInfo":{"machineID":"","systemUUID":"","bootID":"","kernelVersion":"6.1.0","osImage":"Debian GNU/Linux 12 (bookworm)",
        "containerRuntimeVersion":"containerd://1.7.24","kubeletVersion":"v1.33.0","kubeProxyVersion":"",
        "operatingSystem":"linux","architecture":"amd64"}}}))
    .unwrap();
    let created = nodes.create(&PostParams::default(), &node).await.unwrap();
    let mut with_status = created.clone();
    with_status.status = node.status.clone();
    nodes
        .replace_status("n1", &PostParams::default(), &with_status)
        .await
        .unwrap();
    let t = table("/api/v1/nodes");
    let cols: Vec<String> = column_names(&t)
        .into_iter()
        .filter(|(_, p)| *p == 1)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        cols,
        [
            "Internal-IP",
            "External-IP",
            "OS-Image",
            "Kernel-Version",
            "Container-Runtime"
        ]
    );
    let cells = t["rows"][0]["cells"].as_array().unwrap();
    assert_eq!(
        cells[4..],
        [
            json!("v1.33.0"),
            json!("10.1.0.4"),
            json!("<none>"),
            json!("Debian GNU/Linux 12 (bookworm)"),
            json!("6.1.0"),
            json!("containerd://1.7.24"),
        ]
    );

    // Pods: IP, NODE, NOMINATED NODE, READINESS GATES.
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata":{"name":"web"},
        "spec":{"containers":[{"name":"app","image":"nginx"}],"readinessGates":[{"conditionType":"x/ok"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let t = table("/api/v1/namespaces/default/pods");
    let cols: Vec<String> = column_names(&t)
        .into_iter()
        .filter(|(_, p)| *p == 1)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(cols, ["IP", "Node", "Nominated Node", "Readiness Gates"]);
    let cells = t["rows"][0]["cells"].as_array().unwrap();
    assert_eq!(
        cells[5..],
        [
            json!("<none>"),
            json!("<none>"),
            json!("<none>"),
            json!("0/1"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_k8s_io_prints_the_same_table() {
    let c = TestCluster::start().await;
    seed(&c).await;
    let (code, body) = http_request(
        &c.addr.to_string(),
        "GET",
        "/apis/events.k8s.io/v1/namespaces/default/events?fieldSelector=metadata.name=a",
        &[("Accept", TABLE)],
        b"",
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let t: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(column_names(&t)[0].0, "Last Seen");
    let cells = t["rows"][0]["cells"].as_array().unwrap();
    assert_eq!(cells[3], "pod/web");
    assert_eq!(cells[5], "kubelet, n1");
    assert_eq!(cells[8], 3);
    assert_eq!(cells[9], "a");
}

/// The next event of a watch, within 10 s.
async fn next<K>(
    s: &mut futures_util::stream::BoxStream<'static, kube::Result<kube::api::WatchEvent<K>>>,
) -> kube::api::WatchEvent<K> {
    use futures_util::TryStreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(10), s.try_next())
        .await
        .expect("a watch event within 10 s")
        .unwrap()
        .expect("the watch goes on")
}

/// Events have no watch cache (kube-apiserver's default): reads come from the store and each
/// watch is a store watch of its own — with a cache's semantics: events after a
/// resourceVersion, the current state first without one, filters that see objects enter and
/// leave, the other group's shape, and streaming lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_served_without_a_watch_cache_with_a_caches_semantics() {
    use futures_util::StreamExt;
    use kube::api::{DeleteParams, Patch, PatchParams, WatchEvent, WatchParams};

    let c = TestCluster::start().await;
    seed(&c).await;
    let api: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = WatchParams::default()
        .fields("involvedObject.name=web")
        .timeout(20);
    let mut web = api.watch(&wp, &rv).await.unwrap().boxed();
    let mut k8s_io =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(c.client.clone(), "default")
            .watch(
                &WatchParams::default()
                    .fields("regarding.name=web")
                    .timeout(20),
                &rv,
            )
            .await
            .unwrap()
            .boxed();
    // Created, a change, one outside the filter, moved out of it, deleted.
    api.create(
        &PostParams::default(),
        &event("e", "web", "Started", "Normal", "kubelet"),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &event("f", "db", "Started", "Normal", "kubelet"),
    )
    .await
    .unwrap();
    api.patch(
        "e",
        &PatchParams::default(),
        &Patch::Merge(json!({"message": "started again", "count": 4})),
    )
    .await
    .unwrap();
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"involvedObject": {"name": "cache"}})),
    )
    .await
    .unwrap();
    api.delete("e", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(match next(&mut web).await {
            WatchEvent::Added(e) => ("ADDED", e.metadata.name.unwrap(), e.message),
            WatchEvent::Modified(e) => ("MODIFIED", e.metadata.name.unwrap(), e.message),
            WatchEvent::Deleted(e) => ("DELETED", e.metadata.name.unwrap(), e.message),
            other => panic!("unexpected {other:?}"),
        });
    }
    let m = |s: &str| Some(s.to_string());
    assert_eq!(
        seen,
        [
            ("ADDED", "e".to_string(), m("Started on web")),
            ("MODIFIED", "e".to_string(), m("started again")),
            ("DELETED", "b".to_string(), m("Pulled on web")),
            ("DELETED", "e".to_string(), m("started again")),
        ],
        "a filtered watch sees objects enter and leave it"
    );
    // The same changes through events.k8s.io/v1, in its own shape.
    match next(&mut k8s_io).await {
        WatchEvent::Added(e) => {
            assert_eq!(e.metadata.name.as_deref(), Some("e"));
            assert_eq!(e.note.as_deref(), Some("Started on web"));
            assert_eq!(e.regarding.and_then(|r| r.name).as_deref(), Some("web"));
        }
        other => panic!("unexpected {other:?}"),
    }

    // Without a resourceVersion: the current state first.
    let mut now = api
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .unwrap()
        .boxed();
    let mut initial = Vec::new();
    for _ in 0..5 {
        match next(&mut now).await {
            WatchEvent::Added(e) => initial.push(e.metadata.name.unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    initial.sort();
    assert_eq!(initial, ["a", "b", "c", "d", "f"]);
    drop(now);

    // A streaming list: every event, then the end bookmark.
    let mut stream = api
        .watch(&WatchParams::streaming_lists().timeout(5), "")
        .await
        .unwrap()
        .boxed();
    let mut listed = Vec::new();
    loop {
        match next(&mut stream).await {
            WatchEvent::Added(e) => listed.push(e.metadata.name.unwrap()),
            WatchEvent::Bookmark(b) => {
                assert_eq!(
                    b.metadata
                        .annotations
                        .get("k8s.io/initial-events-end")
                        .map(String::as_str),
                    Some("true")
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    listed.sort();
    assert_eq!(listed, ["a", "b", "c", "d", "f"]);

    // A GET and a future resourceVersion are answered from the store.
    assert_eq!(
        api.get("f").await.unwrap().message.as_deref(),
        Some("Started on db")
    );
    let future = (rv.parse::<i64>().unwrap() + 1_000).to_string();
    // (Raw HTTP: kube's client retries a 504 with back-off for minutes.)
    let (addr, path) = (
        c.addr.to_string(),
        format!(
            "/api/v1/namespaces/default/events?resourceVersion={future}&resourceVersionMatch=NotOlderThan"
        ),
    );
    let started = std::time::Instant::now();
    let (code, body) =
        tokio::task::spawn_blocking(move || capstan_testkit::http_get(&addr, &path).unwrap())
            .await
            .unwrap();
    assert_eq!(
        code, 504,
        "a resourceVersion the store has not reached: {body}"
    );
    assert!(body.contains("Too large resource version"), "{body}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "waited for it first"
    );

    // And no watch cache holds them.
    let cached: Vec<(String, String)> = c
        .api
        .cache_memory()
        .into_iter()
        .map(|(g, p, _)| (g, p))
        .collect();
    assert!(
        !cached.iter().any(|(_, p)| p == "events"),
        "events are not cached: {cached:?}"
    );
    assert!(
        cached
            .iter()
            .any(|(g, p)| g.is_empty() && p == "namespaces"),
        "{cached:?}"
    );
}
