//! apiregistration.k8s.io/v1 (kube-aggregator's `SetDefaults_ServiceReference`): APIServices.

use serde_json::{Value, json};

use super::{default_ptr, existing};

/// An APIService served by a Service reaches it on port 443 unless given.
pub fn api_service(obj: &mut Value) {
    if let Some(service) = super::spec(obj).and_then(|s| existing(s, "service")) {
        default_ptr(service, "port", json!(443));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_services_service_port_defaults_to_443() {
        let cases = [
            (
                json!({"service": {"namespace": "ns", "name": "metrics"}}),
                json!({"service": {"namespace": "ns", "name": "metrics", "port": 443}}),
            ),
            (
                json!({"service": {"name": "metrics", "port": 8443}}),
                json!({"service": {"name": "metrics", "port": 8443}}),
            ),
            // Served locally (service null): nothing to default.
            (json!({"service": null}), json!({"service": null})),
        ];
        for (spec, want) in cases {
            let mut a = json!({ "spec": spec.clone() });
            api_service(&mut a);
            assert_eq!(a["spec"], want, "{spec}");
        }
    }
}
