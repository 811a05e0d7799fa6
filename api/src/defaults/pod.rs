//! Pods and pod templates (`SetDefaults_Pod`, `SetDefaults_PodSpec`, `SetDefaults_Container`,
//! `SetDefaults_Probe`, `SetDefaults_HTTPGetAction`, the volume sources' defaults and the
//! `+default=` markers under a PodSpec).
//!
//! A pod template gets the PodSpec defaults only; a Pod also gets what Kubernetes keeps out of
//! templates so that it does not change every workload's template hash (requests copied from
//! limits, `enableServiceLinks`, host ports under host networking).

use serde_json::{Value, json};

use super::{Object, default_int, default_ptr, default_str, each, existing, object_at, unset_str};

/// A Pod: the PodSpec defaults and the Pod-only ones (`SetDefaults_Pod`).
pub fn pod(obj: &mut Value) {
    let Some(spec) = super::spec(obj) else {
        return;
    };
    for list in ["containers", "initContainers"] {
        for c in each(spec, list) {
            requests_from_limits(c);
        }
    }
    default_ptr(spec, "enableServiceLinks", json!(true));
    if spec.get("hostNetwork") == Some(&Value::Bool(true)) {
        for list in ["containers", "initContainers"] {
            for p in each(spec, list).flat_map(|c| each(c, "ports")) {
                host_port_from_container_port(p);
            }
        }
    }
    pod_spec(spec);
}

/// A workload's pod template (`spec.template` of a Deployment or ReplicaSet, given that spec).
pub(super) fn template_of(workload_spec: &mut Object) {
    if let Some(spec) = object_at(workload_spec, "template").and_then(|t| object_at(t, "spec")) {
        pod_spec(spec);
    }
}

/// `SetDefaults_PodSpec` and the defaults of everything a PodSpec holds.
fn pod_spec(spec: &mut Object) {
    default_str(spec, "dnsPolicy", "ClusterFirst");
    default_str(spec, "restartPolicy", "Always");
    default_ptr(spec, "securityContext", json!({}));
    default_ptr(spec, "terminationGracePeriodSeconds", json!(30));
    default_str(spec, "schedulerName", "default-scheduler");
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in each(spec, list) {
            container(c);
        }
    }
    for v in each(spec, "volumes") {
        volume(v);
    }
}

/// The pull policy Kubernetes gives a container that names none: Always for the `latest` tag
/// (which an image without tag or digest has), IfNotPresent otherwise — also for a reference
/// that does not parse (empty, or upper case in the repository path).
///
/// `busybox` → Always; `busybox:1.36` → IfNotPresent; `busybox@sha256:…` → IfNotPresent;
/// `busybox:latest@sha256:…` → Always; `localhost:5000/busybox` → Always.
pub fn pull_policy(image: &str) -> &'static str {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    // A first component is a registry when it has a '.' or ':', is localhost, or has upper
    // case (docker's splitDockerDomain); the rest is the repository path, lower case only.
    let path = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            rest
        }
        _ => name,
    };
    let (repository, tag) = match path.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
        _ => (path, None),
    };
    if repository.is_empty() || repository.chars().any(|c| c.is_ascii_uppercase()) {
        return "IfNotPresent";
    }
    match (tag, digest) {
        (Some("latest"), _) | (None, None) => "Always",
        _ => "IfNotPresent",
    }
}

/// `SetDefaults_Container` (and `_EphemeralContainer`), with its ports, env and probes; and
/// `resources`, a struct Kubernetes always prints (`{}` when empty).
fn container(c: &mut Object) {
    default_ptr(c, "resources", json!({}));
    if unset_str(c, "imagePullPolicy") {
        let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
        c.insert("imagePullPolicy".into(), json!(pull_policy(image)));
    }
    default_str(c, "terminationMessagePath", "/dev/termination-log");
    default_str(c, "terminationMessagePolicy", "File");
    for p in each(c, "ports") {
        default_str(p, "protocol", "TCP");
    }
    for e in each(c, "env") {
        if let Some(field_ref) = existing(e, "valueFrom").and_then(|v| existing(v, "fieldRef")) {
            default_str(field_ref, "apiVersion", "v1");
        }
    }
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = existing(c, key) {
            probe(p);
        }
    }
    if let Some(lifecycle) = existing(c, "lifecycle") {
        for key in ["postStart", "preStop"] {
            if let Some(get) = existing(lifecycle, key).and_then(|h| existing(h, "httpGet")) {
                http_get(get);
            }
        }
    }
}

fn probe(p: &mut Object) {
    default_int(p, "timeoutSeconds", 1);
    default_int(p, "periodSeconds", 10);
    default_int(p, "successThreshold", 1);
    default_int(p, "failureThreshold", 3);
    if let Some(get) = existing(p, "httpGet") {
        http_get(get);
    }
    if let Some(grpc) = existing(p, "grpc") {
        default_ptr(grpc, "service", json!(""));
    }
}

fn http_get(get: &mut Object) {
    default_str(get, "path", "/");
    default_str(get, "scheme", "HTTP");
}

/// Requests default to limits, key by key, when limits are given.
fn requests_from_limits(c: &mut Object) {
    let Some(resources) = existing(c, "resources") else {
        return;
    };
    let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    if limits.is_empty() {
        return;
    }
    if let Some(requests) = object_at(resources, "requests") {
        for (name, quantity) in limits {
            requests.entry(name).or_insert(quantity);
        }
    }
}

fn host_port_from_container_port(port: &mut Object) {
    if let Some(container_port) = port.get("containerPort").and_then(Value::as_i64) {
        default_int(port, "hostPort", container_port);
    }
}

/// The volume source fields with declarative defaults (`+default=` in k8s.io/api):
/// (source, field, value, whether the field is a pointer).
const VOLUME_SOURCE_DEFAULTS: &[(&str, &str, &str, bool)] = &[
    ("rbd", "pool", "rbd", false),
    ("rbd", "user", "admin", false),
    ("rbd", "keyring", "/etc/ceph/keyring", false),
    ("iscsi", "iscsiInterface", "default", false),
    ("azureDisk", "cachingMode", "ReadWrite", true),
    ("azureDisk", "fsType", "ext4", true),
    ("azureDisk", "kind", "Shared", true),
    ("scaleIO", "storageMode", "ThinProvisioned", false),
    ("scaleIO", "fsType", "xfs", false),
];

/// `SetDefaults_Volume` and the defaults of each volume source.
fn volume(v: &mut Object) {
    if v.iter().all(|(k, source)| k == "name" || source.is_null()) {
        v.insert("emptyDir".into(), json!({}));
    }
    if let Some(host_path) = existing(v, "hostPath") {
        default_ptr(host_path, "type", json!(""));
    }
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = existing(v, source) {
            default_ptr(s, "defaultMode", json!(420));
        }
    }
    if let Some(downward) = existing(v, "downwardAPI") {
        downward_api_items(downward);
    }
    if let Some(projected) = existing(v, "projected") {
        for s in each(projected, "sources") {
            if let Some(downward) = existing(s, "downwardAPI") {
                downward_api_items(downward);
            }
            if let Some(token) = existing(s, "serviceAccountToken") {
                default_ptr(token, "expirationSeconds", json!(3600));
            }
        }
    }
    for (source, field, value, pointer) in VOLUME_SOURCE_DEFAULTS {
        if let Some(s) = existing(v, source) {
            if *pointer {
                default_ptr(s, field, json!(value));
            } else {
                default_str(s, field, value);
            }
        }
    }
    if let Some(s) = existing(v, "azureDisk") {
        default_ptr(s, "readOnly", json!(false));
    }
    if let Some(claim_spec) = existing(v, "ephemeral")
        .and_then(|e| existing(e, "volumeClaimTemplate"))
        .and_then(|t| object_at(t, "spec"))
    {
        default_ptr(claim_spec, "volumeMode", json!("Filesystem"));
    }
}

fn downward_api_items(downward: &mut Object) {
    for item in each(downward, "items") {
        if let Some(field_ref) = existing(item, "fieldRef") {
            default_str(field_ref, "apiVersion", "v1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted_pod(spec: Value) -> Value {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "spec": spec});
        pod(&mut p);
        p["spec"].take()
    }

    #[test]
    fn a_minimal_pod_gets_every_pod_spec_and_container_default() {
        let spec = defaulted_pod(json!({"containers": [{"name": "c", "image": "nginx:1.27"}]}));
        assert_eq!(
            spec,
            json!({
                "containers": [{
                    "name": "c",
                    "image": "nginx:1.27",
                    "imagePullPolicy": "IfNotPresent",
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "resources": {},
                }],
                "dnsPolicy": "ClusterFirst",
                "enableServiceLinks": true,
                "restartPolicy": "Always",
                "schedulerName": "default-scheduler",
                "securityContext": {},
                "terminationGracePeriodSeconds": 30,
            })
        );
    }

    #[test]
    fn the_pull_policy_follows_the_tag_as_kubernetes_parses_it() {
        let cases = [
            ("busybox", "Always"),
            ("busybox:latest", "Always"),
            ("busybox:1.36", "IfNotPresent"),
            ("docker.io/library/busybox", "Always"),
            ("localhost:5000/busybox", "Always"),
            ("localhost:5000/busybox:1", "IfNotPresent"),
            ("registry.example:443/team/app:latest", "Always"),
            ("busybox@sha256:abcd", "IfNotPresent"),
            ("busybox:latest@sha256:abcd", "Always"),
            ("Busybox", "IfNotPresent"),
            ("Registry.Example/app", "Always"),
            ("busybox:", "IfNotPresent"),
            ("", "IfNotPresent"),
        ];
        for (image, want) in cases {
            assert_eq!(pull_policy(image), want, "image {image:?}");
        }
    }

    #[test]
    fn given_values_are_kept_and_go_zero_values_are_replaced() {
        let spec = defaulted_pod(json!({
            "restartPolicy": "Never", "dnsPolicy": "", "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsUser": 1}, "enableServiceLinks": false,
            "containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "Never",
                "terminationMessagePolicy": "FallbackToLogsOnError"}],
        }));
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["terminationGracePeriodSeconds"], 0);
        assert_eq!(spec["securityContext"], json!({"runAsUser": 1}));
        assert_eq!(spec["enableServiceLinks"], false);
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Never");
        assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
    }

    #[test]
    fn every_kind_of_container_gets_ports_env_probes_and_hooks_defaulted() {
        let c = json!({
            "name": "c", "image": "app:1",
            "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
            "env": [{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "PLAIN", "value": "x"}],
            "livenessProbe": {"httpGet": {"port": 80}},
            "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 5, "timeoutSeconds": 0},
            "startupProbe": {"grpc": {"port": 9000}},
            "lifecycle": {"preStop": {"httpGet": {"port": 80, "path": "/quit"}}},
        });
        let spec = defaulted_pod(
            json!({"containers": [c.clone()], "initContainers": [c.clone()],
            "ephemeralContainers": [c]}),
        );
        for list in ["containers", "initContainers", "ephemeralContainers"] {
            let c = &spec[list][0];
            assert_eq!(
                c["ports"],
                json!([{"containerPort": 80, "protocol": "TCP"},
                    {"containerPort": 53, "protocol": "UDP"}]),
                "{list}"
            );
            assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
            assert_eq!(c["env"][1], json!({"name": "PLAIN", "value": "x"}));
            assert_eq!(
                c["livenessProbe"],
                json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                    "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
            );
            assert_eq!(
                c["readinessProbe"],
                json!({"tcpSocket": {"port": 80}, "timeoutSeconds": 1, "periodSeconds": 5,
                    "successThreshold": 1, "failureThreshold": 3})
            );
            assert_eq!(
                c["startupProbe"]["grpc"],
                json!({"port": 9000, "service": ""})
            );
            assert_eq!(
                c["lifecycle"]["preStop"]["httpGet"],
                json!({"port": 80, "path": "/quit", "scheme": "HTTP"})
            );
        }
    }

    #[test]
    fn a_pods_requests_default_to_its_limits_key_by_key() {
        let spec = defaulted_pod(json!({
            "containers": [
                {"name": "a", "image": "i", "resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                    "requests": {"cpu": "500m"}}},
                {"name": "b", "image": "i", "resources": {"requests": {"cpu": "1"}}},
                {"name": "c", "image": "i", "resources": {"limits": {}}},
            ],
            "initContainers": [{"name": "d", "image": "i", "resources": {"limits": {"cpu": "2"}}}],
        }));
        assert_eq!(
            spec["containers"][0]["resources"]["requests"],
            json!({"cpu": "500m", "memory": "1Gi"})
        );
        assert_eq!(
            spec["containers"][1]["resources"],
            json!({"requests": {"cpu": "1"}})
        );
        assert_eq!(
            spec["initContainers"][0]["resources"]["limits"],
            json!({"cpu": "2"})
        );
        assert_eq!(spec["containers"][2]["resources"], json!({"limits": {}}));
        assert_eq!(
            spec["initContainers"][0]["resources"]["requests"],
            json!({"cpu": "2"})
        );
    }

    #[test]
    fn host_networking_pods_expose_container_ports_on_the_host() {
        let spec = defaulted_pod(json!({"hostNetwork": true, "containers": [{"name": "c",
            "image": "i", "ports": [{"containerPort": 8080}, {"containerPort": 9090, "hostPort": 9090}]}]}));
        let ports = &spec["containers"][0]["ports"];
        assert_eq!(ports[0]["hostPort"], 8080);
        assert_eq!(ports[1]["hostPort"], 9090);
        let spec = defaulted_pod(
            json!({"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 8080}]}]}),
        );
        assert!(spec["containers"][0]["ports"][0].get("hostPort").is_none());
    }

    #[test]
    fn templates_get_the_pod_spec_defaults_but_not_the_pod_only_ones() {
        let mut workload = json!({"template": {"spec": {"hostNetwork": true, "containers": [{
            "name": "c", "image": "i:1", "ports": [{"containerPort": 80}],
            "resources": {"limits": {"cpu": "1"}}}]}}});
        template_of(workload.as_object_mut().unwrap());
        let spec = &workload["template"]["spec"];
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert!(spec.get("enableServiceLinks").is_none());
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["resources"], json!({"limits": {"cpu": "1"}}));
        assert_eq!(
            c["ports"][0],
            json!({"containerPort": 80, "protocol": "TCP"})
        );
    }

    #[test]
    fn volumes_get_their_sources_defaults() {
        let spec = defaulted_pod(json!({"containers": [], "volumes": [
            {"name": "bare"},
            {"name": "cm", "configMap": {"name": "x"}},
            {"name": "secret", "secret": {"secretName": "x", "defaultMode": 256}},
            {"name": "host", "hostPath": {"path": "/data"}},
            {"name": "down", "downwardAPI": {"items": [{"path": "n",
                "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"name": "proj", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}},
                {"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}},
            {"name": "rbd", "rbd": {"monitors": ["m"], "image": "i"}},
            {"name": "iscsi", "iscsi": {"targetPortal": "t", "iqn": "q", "lun": 0}},
            {"name": "azure", "azureDisk": {"diskName": "d", "diskURI": "u"}},
            {"name": "scaleio", "scaleIO": {"gateway": "g", "system": "s", "secretRef": {}}},
            {"name": "eph", "ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"]}}}},
        ]}));
        let v = |i: usize| spec["volumes"][i].clone();
        assert_eq!(v(0), json!({"name": "bare", "emptyDir": {}}));
        assert_eq!(v(1)["configMap"], json!({"name": "x", "defaultMode": 420}));
        assert_eq!(v(2)["secret"]["defaultMode"], 256);
        assert_eq!(v(3)["hostPath"], json!({"path": "/data", "type": ""}));
        assert_eq!(v(4)["downwardAPI"]["defaultMode"], 420);
        assert_eq!(
            v(4)["downwardAPI"]["items"][0]["fieldRef"]["apiVersion"],
            "v1"
        );
        assert_eq!(v(5)["projected"]["defaultMode"], 420);
        let sources = &v(5)["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3600);
        assert_eq!(
            sources[1]["downwardAPI"]["items"][0]["fieldRef"]["apiVersion"],
            "v1"
        );
        assert_eq!(
            v(6)["rbd"],
            json!({"monitors": ["m"], "image": "i", "pool": "rbd", "user": "admin",
                "keyring": "/etc/ceph/keyring"})
        );
        assert_eq!(v(7)["iscsi"]["iscsiInterface"], "default");
        assert_eq!(
            v(8)["azureDisk"],
            json!({"diskName": "d", "diskURI": "u", "cachingMode": "ReadWrite", "fsType": "ext4",
                "kind": "Shared", "readOnly": false})
        );
        assert_eq!(v(9)["scaleIO"]["storageMode"], "ThinProvisioned");
        assert_eq!(v(9)["scaleIO"]["fsType"], "xfs");
        assert_eq!(
            v(10)["ephemeral"]["volumeClaimTemplate"]["spec"]["volumeMode"],
            "Filesystem"
        );
    }

    #[test]
    fn defaulting_twice_changes_nothing_more() {
        let once = defaulted_pod(json!({"containers": [{"name": "c", "image": "i",
            "livenessProbe": {"httpGet": {"port": 1}}}], "volumes": [{"name": "v"}]}));
        let twice = defaulted_pod(once.clone());
        assert_eq!(once, twice);
    }

    #[test]
    fn a_malformed_pod_is_left_for_validation() {
        let mut p = json!({"spec": "nonsense"});
        pod(&mut p);
        assert_eq!(p, json!({"spec": "nonsense"}));
        let spec = defaulted_pod(json!({"containers": "x", "volumes": [3]}));
        assert_eq!(spec["containers"], "x");
        assert_eq!(spec["volumes"], json!([3]));
        let spec = defaulted_pod(json!({"containers": [{"name": "c", "image": 5,
            "ports": [{"containerPort": "x"}], "livenessProbe": {"timeoutSeconds": "1"}}]}));
        let c = &spec["containers"][0];
        assert_eq!(c["image"], 5);
        assert_eq!(c["ports"][0]["containerPort"], "x");
        assert_eq!(c["livenessProbe"]["timeoutSeconds"], "1");
        let mut not_an_object = json!([1, 2]);
        pod(&mut not_an_object);
        assert_eq!(not_an_object, json!([1, 2]));
    }
}
