//! Services and their endpoints: `SetDefaults_Service` and `SetDefaults_Endpoints` (core/v1),
//! `SetDefaults_EndpointPort` (discovery/v1).

use serde_json::{Value, json};

use super::{default_ptr, default_str, each, existing};

/// `SetDefaults_Service`: type ClusterIP, sessionAffinity None (ClientIP gets a 10800 s timeout),
/// each port TCP to a targetPort of its own number, internalTrafficPolicy Cluster, and for a
/// Service reachable from outside the cluster externalTrafficPolicy Cluster; a LoadBalancer also
/// allocates node ports and its ingress IPs are VIPs.
pub fn service(obj: &mut Value) {
    let Some(spec) = super::spec(obj) else {
        return;
    };
    default_str(spec, "sessionAffinity", "None");
    match spec.get("sessionAffinity").and_then(Value::as_str) {
        Some("None") => {
            spec.remove("sessionAffinityConfig");
        }
        Some("ClientIP") => {
            let timeout = spec
                .get("sessionAffinityConfig")
                .and_then(|c| c.get("clientIP"))
                .and_then(|c| c.get("timeoutSeconds"));
            if timeout.is_none_or(Value::is_null) {
                spec.insert(
                    "sessionAffinityConfig".into(),
                    json!({"clientIP": {"timeoutSeconds": 10800}}),
                );
            }
        }
        _ => {}
    }
    default_str(spec, "type", "ClusterIP");
    for port in each(spec, "ports") {
        default_str(port, "protocol", "TCP");
        let unset = match port.get("targetPort") {
            None | Some(Value::Null) => true,
            Some(Value::Number(n)) => n.as_i64() == Some(0),
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if unset && let Some(number) = port.get("port").cloned() {
            port.insert("targetPort".into(), number);
        }
    }
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|ips| !ips.is_empty());
    let externally_accessible = matches!(kind.as_str(), "LoadBalancer" | "NodePort")
        || (kind == "ClusterIP" && external_ips);
    if externally_accessible {
        default_str(spec, "externalTrafficPolicy", "Cluster");
    }
    if matches!(kind.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        default_ptr(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        default_ptr(spec, "allocateLoadBalancerNodePorts", json!(true));
        let ingress = obj
            .as_object_mut()
            .and_then(|o| existing(o, "status"))
            .and_then(|s| existing(s, "loadBalancer"));
        for i in ingress.into_iter().flat_map(|lb| each(lb, "ingress")) {
            let has_ip = i
                .get("ip")
                .and_then(Value::as_str)
                .is_some_and(|ip| !ip.is_empty());
            if has_ip {
                default_ptr(i, "ipMode", json!("VIP"));
            }
        }
    }
}

/// `SetDefaults_Endpoints`: every subset's ports are TCP unless given.
pub fn endpoints(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    for subset in each(o, "subsets") {
        for port in each(subset, "ports") {
            default_str(port, "protocol", "TCP");
        }
    }
}

/// discovery/v1 `SetDefaults_EndpointPort`: each port of an EndpointSlice is named "" and TCP
/// unless given.
pub fn endpoint_slice(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    for port in each(o, "ports") {
        default_ptr(port, "name", json!(""));
        default_ptr(port, "protocol", json!("TCP"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted(spec: Value) -> Value {
        let mut s = json!({"spec": spec});
        service(&mut s);
        s["spec"].take()
    }

    #[test]
    fn a_minimal_service_gets_kubernetes_spec_defaults() {
        assert_eq!(
            defaulted(json!({"selector": {"app": "x"}, "ports": [{"port": 80}]})),
            json!({
                "selector": {"app": "x"},
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
                "type": "ClusterIP",
                "sessionAffinity": "None",
                "internalTrafficPolicy": "Cluster",
            })
        );
    }

    #[test]
    fn target_ports_default_to_the_port_unless_given() {
        let ports = defaulted(json!({"ports": [
            {"port": 80, "targetPort": 0}, {"port": 81, "targetPort": ""},
            {"port": 82, "targetPort": "http"}, {"port": 83, "targetPort": 8083},
            {"port": 84, "protocol": "UDP"},
        ]}))["ports"]
            .clone();
        let targets: Vec<Value> = ports
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["targetPort"].clone())
            .collect();
        assert_eq!(
            targets,
            [json!(80), json!(81), json!("http"), json!(8083), json!(84)]
        );
        assert_eq!(ports[4]["protocol"], "UDP");
    }

    #[test]
    fn traffic_policies_follow_the_service_type() {
        // (type, externalIPs, externalTrafficPolicy, internalTrafficPolicy)
        let cases = [
            ("ClusterIP", false, None, Some("Cluster")),
            ("ClusterIP", true, Some("Cluster"), Some("Cluster")),
            ("NodePort", false, Some("Cluster"), Some("Cluster")),
            ("LoadBalancer", false, Some("Cluster"), Some("Cluster")),
            ("ExternalName", false, None, None),
        ];
        for (kind, external_ips, external, internal) in cases {
            let mut spec = json!({"type": kind});
            if external_ips {
                spec["externalIPs"] = json!(["192.0.2.1"]);
            }
            let spec = defaulted(spec);
            assert_eq!(spec["externalTrafficPolicy"].as_str(), external, "{kind}");
            assert_eq!(spec["internalTrafficPolicy"].as_str(), internal, "{kind}");
            assert_eq!(
                spec.get("allocateLoadBalancerNodePorts").is_some(),
                kind == "LoadBalancer"
            );
        }
        let kept = defaulted(json!({"type": "NodePort", "externalTrafficPolicy": "Local",
            "internalTrafficPolicy": "Local"}));
        assert_eq!(kept["externalTrafficPolicy"], "Local");
        assert_eq!(kept["internalTrafficPolicy"], "Local");
    }

    #[test]
    fn session_affinity_config_follows_the_affinity() {
        let none = defaulted(json!({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}}));
        assert!(none.get("sessionAffinityConfig").is_none());
        let client_ip = defaulted(json!({"sessionAffinity": "ClientIP"}));
        assert_eq!(
            client_ip["sessionAffinityConfig"],
            json!({"clientIP": {"timeoutSeconds": 10800}})
        );
        let given = defaulted(json!({"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}));
        assert_eq!(
            given["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            60
        );
    }

    #[test]
    fn a_load_balancers_ingress_ips_are_vips() {
        let mut lb = json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {
            "ingress": [{"ip": "192.0.2.1"}, {"hostname": "lb.example"},
                {"ip": "192.0.2.2", "ipMode": "Proxy"}]}}});
        service(&mut lb);
        let ingress = &lb["status"]["loadBalancer"]["ingress"];
        assert_eq!(ingress[0]["ipMode"], "VIP");
        assert!(ingress[1].get("ipMode").is_none());
        assert_eq!(ingress[2]["ipMode"], "Proxy");
    }

    #[test]
    fn endpoint_ports_are_tcp_unless_given() {
        let mut ep =
            json!({"subsets": [{"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}]});
        endpoints(&mut ep);
        assert_eq!(
            ep["subsets"][0]["ports"],
            json!([{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}])
        );
        let mut slice = json!({"addressType": "IPv4", "endpoints": [],
            "ports": [{"port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]});
        endpoint_slice(&mut slice);
        assert_eq!(
            slice["ports"],
            json!([{"name": "", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"}])
        );
    }
}
