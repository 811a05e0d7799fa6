//! `status.loadBalancer` of the proxy's Ingresses: the addresses clients reach it on (the
//! node's, or those given with `--publish-status-address`, as ingress-nginx's flag of that name).
//! Every proxy of a class writes the same list, so several proxies given the same addresses
//! agree and never undo each other's writes; a write happens only when the status differs.
//! An Ingress that leaves the class has its status cleared, but only when it still lists
//! exactly these addresses (what another controller wrote there is left alone).

use std::net::IpAddr;

use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::routes::ClassFilter;
use super::state::{Key, Objects};

/// What to write into one Ingress's status: these addresses, or none (cleared).
pub type Write = (Key, Option<Vec<IpAddr>>);

fn listed(ing: &Ingress) -> Vec<String> {
    ing.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|list| list.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

/// The writes that bring each Ingress's status in line: the class's Ingresses that do not list
/// exactly `addresses`, and the others that still do.
pub fn pending(objs: &Objects, filter: &ClassFilter, addresses: &[IpAddr]) -> Vec<Write> {
    if addresses.is_empty() {
        return Vec::new();
    }
    let want: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    objs.ingresses
        .iter()
        .filter_map(
            |(k, ing)| match (filter.accepts(ing), listed(ing) == want) {
                (true, false) => Some((k.clone(), Some(addresses.to_vec()))),
                (false, true) => Some((k.clone(), None)),
                _ => None,
            },
        )
        .collect()
}

/// Makes the writes; failures are logged (the next resync tries again).
pub async fn publish(client: kube::Client, writes: Vec<Write>) {
    for ((ns, name), addresses) in writes {
        let list: Vec<_> = addresses
            .iter()
            .flatten()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
        let patch = json!({"status": {"loadBalancer": {"ingress": list}}});
        let api: Api<Ingress> = Api::namespaced(client.clone(), &ns);
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(ingress = %format!("{ns}/{name}"), ?addresses, "ingress: status published")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(ingress = %format!("{ns}/{name}"), error = %e, "ingress: publishing status failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_gets_the_addresses_and_ingresses_that_left_it_are_cleared() {
        let mut objs = Objects::default();
        for (name, class, ips) in [
            ("fresh", "capstan", json!([])),
            ("done", "capstan", json!([{"ip": "192.0.2.1"}])),
            ("stale", "capstan", json!([{"ip": "192.0.2.9"}])),
            ("left", "nginx", json!([{"ip": "192.0.2.1"}])),
            ("other", "nginx", json!([{"ip": "198.51.100.1"}])),
            ("never", "nginx", json!([])),
        ] {
            let ing: Ingress = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"ingressClassName": class},
                "status": {"loadBalancer": {"ingress": ips}}
            }))
            .unwrap();
            objs.ingresses.insert(("ns".into(), name.into()), ing);
        }
        let filter = ClassFilter {
            class: "capstan".into(),
            unclassed: false,
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let writes: Vec<(String, Option<Vec<IpAddr>>)> = pending(&objs, &filter, &[ip])
            .into_iter()
            .map(|((_, n), w)| (n, w))
            .collect();
        assert_eq!(
            writes,
            vec![
                ("fresh".to_string(), Some(vec![ip])),
                ("left".to_string(), None),
                ("stale".to_string(), Some(vec![ip])),
            ]
        );
        assert!(pending(&objs, &filter, &[]).is_empty());
    }
}
