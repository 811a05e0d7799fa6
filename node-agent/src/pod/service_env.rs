//! The Service environment variables the kubelet gives every container (`getServiceEnvVarMap`
//! and `envvars.FromServices`): for each Service with a ClusterIP in the pod's namespace (when
//! `enableServiceLinks` is not false) and always for `default/kubernetes`:
//! `NAME_SERVICE_HOST`, `NAME_SERVICE_PORT` (the first port), `NAME_SERVICE_PORT_<PORTNAME>`
//! for named ports, and the Docker-link variables `NAME_PORT=tcp://ip:port`,
//! `NAME_PORT_<port>_<PROTO>` (+ `_PROTO`, `_PORT`, `_ADDR`). A Service in the pod's namespace
//! named `kubernetes` wins over the default one. The container's own env overrides them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;

fn env_name(s: &str) -> String {
    s.to_uppercase().replace('-', "_")
}

/// The variables for `services` (any namespaces: only `namespace`'s and `default/kubernetes`
/// count), in a stable order.
pub fn service_env(
    services: &[Service],
    namespace: &str,
    enable_service_links: bool,
) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let ip = spec.cluster_ip.as_deref().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = svc.metadata.name.clone().unwrap_or_default();
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name).or_insert(svc);
        } else if ns == namespace && enable_service_links {
            chosen.insert(name, svc);
        }
    }
    let mut out = Vec::new();
    for (name, svc) in chosen {
        let Some(spec) = &svc.spec else { continue };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let prefix = env_name(&name);
        let ports = spec.ports.clone().unwrap_or_default();
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        let Some(first) = ports.first() else {
            continue;
        };
        out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{prefix}_SERVICE_PORT_{}", env_name(n)),
                    p.port.to_string(),
                ));
            }
        }
        let proto_of = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        out.push((
            format!("{prefix}_PORT"),
            format!("{}://{ip}:{}", proto_of(first).to_lowercase(), first.port),
        ));
        for p in &ports {
            let proto = proto_of(p);
            let base = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((
                base.clone(),
                format!("{}://{ip}:{}", proto.to_lowercase(), p.port),
            ));
            out.push((format!("{base}_PROTO"), proto.to_lowercase()));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports}
        }))
        .unwrap()
    }

    #[test]
    fn variables_follow_the_kubelet() {
        let services = vec![
            svc(
                "default",
                "kubernetes",
                "10.96.0.1",
                json!([{"name": "https", "port": 443}]),
            ),
            svc(
                "shop",
                "web-api",
                "10.96.0.20",
                json!([{"name": "http", "port": 80}, {"port": 53, "protocol": "UDP"}]),
            ),
            svc("shop", "headless", "None", json!([{"port": 80}])),
            svc("other", "elsewhere", "10.96.0.30", json!([{"port": 80}])),
        ];
        let env: BTreeMap<_, _> = service_env(&services, "shop", true).into_iter().collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["KUBERNETES_PORT"], "tcp://10.96.0.1:443");
        assert_eq!(env["WEB_API_SERVICE_HOST"], "10.96.0.20");
        assert_eq!(env["WEB_API_SERVICE_PORT"], "80");
        assert_eq!(env["WEB_API_SERVICE_PORT_HTTP"], "80");
        assert_eq!(env["WEB_API_PORT_53_UDP"], "udp://10.96.0.20:53");
        assert_eq!(env["WEB_API_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(env["WEB_API_PORT_80_TCP_ADDR"], "10.96.0.20");
        assert!(
            !env.keys().any(|k| k.starts_with("HEADLESS_")),
            "no IP, no variables"
        );
        assert!(
            !env.keys().any(|k| k.starts_with("ELSEWHERE_")),
            "other namespace"
        );

        let off: BTreeMap<_, _> = service_env(&services, "shop", false).into_iter().collect();
        assert!(off.contains_key("KUBERNETES_SERVICE_HOST"), "always");
        assert!(
            !off.contains_key("WEB_API_SERVICE_HOST"),
            "enableServiceLinks: false"
        );

        // A `kubernetes` Service of the pod's own namespace wins.
        let mut mine = services.clone();
        mine.push(svc(
            "shop",
            "kubernetes",
            "10.96.0.99",
            json!([{"port": 8443}]),
        ));
        let env: BTreeMap<_, _> = service_env(&mine, "shop", true).into_iter().collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.99");
    }
}
