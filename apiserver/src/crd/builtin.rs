//! Capstan's own CRDs (`capstan_api::crds`), installed by `capstan up` at start as k3s
//! installs its own: created when missing, updated when the binary's definition differs from
//! the stored one (an upgrade), left alone otherwise — so their controllers find them.

use serde_json::Value;

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::request::{Params, Target};

/// Whether every field `want` sets has the same value in `have` (the server adds defaults).
fn covers(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| covers(hv, v))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(a, b)| covers(a, b))
        }
        _ => have == want,
    }
}

/// Creates or updates each of Capstan's CRDs.
pub async fn ensure(api: &ApiServer) -> ApiResult<()> {
    let info = api
        .registry
        .get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::internal("CustomResourceDefinitions are not registered"))?;
    for crd in capstan_api::crds::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let want = serde_json::to_value(&crd)
            .map_err(|e| ApiError::internal(format!("CRD {name}: {e}")))?;
        let t = Target {
            info: info.clone(),
            namespace: None,
            name: Some(name.clone()),
            subresource: None,
        };
        match api.get(&t).await {
            Ok(live) if covers(&live["spec"], &want["spec"]) => {}
            Ok(live) => {
                let mut obj = want;
                obj["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
                api.update(&t, obj, &Params::default()).await?;
                tracing::info!(crd = %name, "updated Capstan's CRD");
            }
            Err(e) if e.code == 404 => {
                let create = Target { name: None, ..t };
                match api.create(&create, want, &Params::default()).await {
                    Err(e) if e.reason != "AlreadyExists" => return Err(e),
                    _ => tracing::info!(crd = %name, "installed Capstan's CRD"),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_server_do_not_count_as_a_difference() {
        let want = json!({"group": "capstan.dev", "versions": [{"name": "v1alpha1"}]});
        let have = json!({"group": "capstan.dev", "conversion": {"strategy": "None"},
            "versions": [{"name": "v1alpha1", "served": true}]});
        assert!(covers(&have, &want));
        let changed = json!({"group": "capstan.dev", "versions": [{"name": "v1beta1"}]});
        assert!(!covers(&have, &changed));
        let more =
            json!({"group": "capstan.dev", "versions": [{"name": "v1alpha1"}, {"name": "v1"}]});
        assert!(!covers(&have, &more));
    }
}
