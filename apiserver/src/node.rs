//! Node validation beyond the schema (kube-apiserver's ValidateNode / ValidateNodeUpdate for
//! the fields Capstan's controllers and agents rely on): pod ranges are CIDRs, at most one per
//! IP family, with `podCIDR` the first of `podCIDRs`; once given, a node's pod ranges and
//! provider ID never change (the node IPAM controller and the agents' routes assume so).

use std::net::IpAddr;

use capstan_api::validation::FieldError;
use serde_json::Value;

fn cidr_family(s: &str) -> Option<bool> {
    let (ip, bits) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let v4 = ip.is_ipv4();
    (bits <= if v4 { 32 } else { 128 }).then_some(v4)
}

fn ranges(spec: &Value) -> Vec<&str> {
    spec["podCIDRs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// A Node's own rules.
pub fn validate(node: &Value) -> Vec<FieldError> {
    let spec = &node["spec"];
    let mut errs = Vec::new();
    let all = ranges(spec);
    let mut families = Vec::new();
    for (i, c) in all.iter().enumerate() {
        match cidr_family(c) {
            Some(v4) if families.contains(&v4) => errs.push(FieldError {
                field: "spec.podCIDRs".into(),
                value: format!("{all:?}"),
                message: "Invalid value: may specify no more than one CIDR for each IP family"
                    .into(),
            }),
            Some(v4) => families.push(v4),
            None => errs.push(FieldError {
                field: format!("spec.podCIDRs[{i}]"),
                value: c.to_string(),
                message:
                    "Invalid value: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
                        .into(),
            }),
        }
    }
    if let Some(single) = spec["podCIDR"].as_str().filter(|s| !s.is_empty())
        && all.first().is_some_and(|f| f != &single)
    {
        errs.push(FieldError {
            field: "spec.podCIDR".into(),
            value: single.to_string(),
            message: "Invalid value: must be the first of spec.podCIDRs".into(),
        });
    }
    errs
}

/// An update may set the pod ranges and the provider ID once, never change them.
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let (was, now) = (ranges(&old["spec"]), ranges(&new["spec"]));
    if !was.is_empty() && was != now {
        errs.push(FieldError {
            field: "spec.podCIDRs".into(),
            value: format!("{now:?}"),
            message: "Forbidden: node updates may not change podCIDR except from \"\" to valid"
                .into(),
        });
    }
    let id = |n: &Value| n["spec"]["providerID"].as_str().unwrap_or("").to_string();
    if !id(old).is_empty() && id(old) != id(new) {
        errs.push(FieldError {
            field: "spec.providerID".into(),
            value: id(new),
            message: "Forbidden: node updates may not change providerID except from \"\" to valid"
                .into(),
        });
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(spec: Value) -> Value {
        json!({"metadata": {"name": "n"}, "spec": spec})
    }

    #[test]
    fn pod_ranges_are_cidrs_one_per_family_led_by_pod_cidr() {
        assert!(validate(&node(json!({}))).is_empty());
        assert!(
            validate(&node(
                json!({"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]})
            ))
            .is_empty()
        );
        let e = validate(&node(json!({"podCIDRs": ["10.244.1.0/33"]})));
        assert_eq!(e[0].field, "spec.podCIDRs[0]");
        let e = validate(&node(json!({"podCIDRs": ["10.1.0.0/24", "10.2.0.0/24"]})));
        assert!(
            e[0].message.contains("one CIDR for each IP family"),
            "{e:?}"
        );
        let e = validate(&node(
            json!({"podCIDR": "10.2.0.0/24", "podCIDRs": ["10.1.0.0/24"]}),
        ));
        assert_eq!(e[0].field, "spec.podCIDR");
    }

    #[test]
    fn pod_ranges_and_provider_id_are_set_once() {
        let empty = node(json!({}));
        let set = node(
            json!({"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "providerID": "p"}),
        );
        assert!(validate_update(&set, &empty).is_empty());
        assert!(validate_update(&set, &set).is_empty());
        let moved = node(
            json!({"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"], "providerID": "q"}),
        );
        let e = validate_update(&moved, &set);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].message.contains("may not change podCIDR"));
        assert_eq!(validate_update(&empty, &set).len(), 2);
    }
}
