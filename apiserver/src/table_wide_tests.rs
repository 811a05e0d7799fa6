//! kubectl's wide columns, cell by cell.

use super::*;

fn cells(t: &Table, obj: &Value) -> Vec<Value> {
    row(t, obj, Some("None"))["cells"]
        .as_array()
        .unwrap()
        .clone()
}

fn names(t: &Table, priority: u8) -> Vec<String> {
    t.columns
        .iter()
        .filter(|c| c.priority == priority)
        .map(|c| c.name.clone())
        .collect()
}

#[test]
fn a_pod_shows_ip_node_nominated_node_and_readiness_gates_when_wide() {
    let t = pods();
    assert_eq!(
        names(&t, 1),
        ["IP", "Node", "Nominated Node", "Readiness Gates"]
    );
    let pod = json!({"metadata":{"name":"web"},"spec":{"nodeName":"n1","containers":[{"name":"a"}],
        "readinessGates":[{"conditionType":"x/ready"},{"conditionType":"y/ready"}]},
        "status":{"phase":"Running","podIP":"10.0.0.5","podIPs":[{"ip":"10.0.0.5"}],
        "conditions":[{"type":"x/ready","status":"True"},{"type":"y/ready","status":"False"}]}});
    let c = cells(&t, &pod);
    assert_eq!(
        c[5..],
        [
            json!("10.0.0.5"),
            json!("n1"),
            json!("<none>"),
            json!("1/2")
        ]
    );
    let bare = json!({"metadata":{"name":"p"},"spec":{"containers":[]},"status":{}});
    let c = cells(&t, &bare);
    assert_eq!(
        c[5..],
        [
            json!("<none>"),
            json!("<none>"),
            json!("<none>"),
            json!("<none>")
        ]
    );
}

#[test]
fn a_node_shows_addresses_and_node_info_when_wide() {
    let t = nodes();
    assert_eq!(
        names(&t, 1),
        [
            "Internal-IP",
            "External-IP",
            "OS-Image",
            "Kernel-Version",
            "Container-Runtime"
        ]
    );
    let node = json!({"metadata":{"name":"n1","labels":{"node-role.kubernetes.io/control-plane":"","kubernetes.io/role":"edge"}},
        "status":{"addresses":[{"type":"Hostname","address":"n1"},{"type":"InternalIP","address":"192.168.1.2"}],
        "nodeInfo":{"kubeletVersion":"v1.33.0-capstan","osImage":"Debian GNU/Linux 12 (bookworm)",
        "kernelVersion":"6.1.0","containerRuntimeVersion":"containerd://1.7.24"}}});
    let c = cells(&t, &node);
    assert_eq!(c[2], "control-plane,edge");
    assert_eq!(
        c[4..],
        [
            json!("v1.33.0-capstan"),
            json!("192.168.1.2"),
            json!("<none>"),
            json!("Debian GNU/Linux 12 (bookworm)"),
            json!("6.1.0"),
            json!("containerd://1.7.24")
        ]
    );
    let c = cells(&t, &json!({"metadata":{"name":"n2"}}));
    assert_eq!(c[2], "<none>");
    assert_eq!(c[8], "<unknown>");
}

#[test]
fn workloads_show_containers_images_and_selector_when_wide() {
    let d = json!({"metadata":{"name":"web"},"spec":{"replicas":2,
        "selector":{"matchLabels":{"app":"web"},"matchExpressions":[{"key":"tier","operator":"In","values":["b","a"]},{"key":"canary","operator":"DoesNotExist"}]},
        "template":{"spec":{"containers":[{"name":"app","image":"nginx:1.27"},{"name":"side","image":"busybox"}]}}}});
    for t in [deployments(), replicasets()] {
        assert_eq!(names(&t, 1), ["Containers", "Images", "Selector"]);
        let c = cells(&t, &d);
        let n = c.len();
        assert_eq!(c[n - 3], "app,side");
        assert_eq!(c[n - 2], "nginx:1.27,busybox");
        assert_eq!(c[n - 1], "app=web,!canary,tier in (a,b)");
    }
}

#[test]
fn a_service_shows_its_selector_when_wide() {
    let t = services();
    assert_eq!(names(&t, 1), ["Selector"]);
    let svc =
        json!({"metadata":{"name":"s"},"spec":{"selector":{"tier":"fe","app":"web"},"ports":[]}});
    assert_eq!(cells(&t, &svc)[6], "app=web,tier=fe");
    assert_eq!(
        cells(&t, &json!({"metadata":{"name":"s"},"spec":{}}))[6],
        "<none>"
    );
}

#[test]
fn endpoints_print_three_addresses_and_how_many_more() {
    let ep = json!({"metadata":{"name":"e"},"subsets":[{"addresses":[{"ip":"10.0.0.1"},{"ip":"10.0.0.2"},{"ip":"fd00::3"}],
        "ports":[{"port":80},{"port":443}]}]});
    assert_eq!(
        cells(&endpoints(), &ep)[1],
        "10.0.0.1:80,10.0.0.2:80,[fd00::3]:80 + 3 more..."
    );
    let headless = json!({"metadata":{"name":"e"},"subsets":[{"addresses":[{"ip":"10.0.0.1"}]}]});
    assert_eq!(cells(&endpoints(), &headless)[1], "10.0.0.1");
    assert_eq!(
        cells(&endpoints(), &json!({"metadata":{"name":"e"}}))[1],
        "<none>"
    );
}

#[test]
fn an_event_prints_like_kubectl_with_name_last_and_wide_columns() {
    let t = events();
    let all: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        all,
        [
            "Last Seen",
            "Type",
            "Reason",
            "Object",
            "Subobject",
            "Source",
            "Message",
            "First Seen",
            "Count",
            "Name"
        ]
    );
    assert_eq!(
        names(&t, 1),
        ["Subobject", "Source", "First Seen", "Count", "Name"]
    );
    let now = jiff::Timestamp::now();
    let ts = |ago: i64| (now - jiff::SignedDuration::from_secs(ago)).to_string();
    let ev = json!({"metadata":{"name":"web.1a2b"},"type":"Warning","reason":"BackOff",
        "involvedObject":{"kind":"Pod","name":"web","fieldPath":"spec.containers{app}"},
        "source":{"component":"kubelet","host":"n1"},"message":"Back-off restarting failed container app in pod web_default(u)\n",
        "firstTimestamp": ts(300),"lastTimestamp": ts(30),"count":7});
    let c = cells(&t, &ev);
    assert_eq!(
        c,
        [
            json!("30s"),
            json!("Warning"),
            json!("BackOff"),
            json!("pod/web"),
            json!("spec.containers{app}"),
            json!("kubelet, n1"),
            json!("Back-off restarting failed container app in pod web_default(u)"),
            json!("5m"),
            json!(7),
            json!("web.1a2b")
        ]
    );
    // events.k8s.io writers: eventTime only, reportingController/Instance, no count.
    let ev = json!({"metadata":{"name":"x"},"type":"Normal","reason":"Scheduled",
        "involvedObject":{"kind":"Node"},"reportingComponent":"scheduler","reportingInstance":"s-1",
        "eventTime": ts(60)});
    let c = cells(&t, &ev);
    assert_eq!(c[0], "60s");
    assert_eq!(c[3], "node");
    assert_eq!(c[5], "scheduler, s-1");
    assert_eq!(c[7], "60s");
    assert_eq!(c[8], 1);
}
