//! The ServiceAccount admission plugin (kubernetes/plugin/pkg/admission/serviceaccount), on
//! every new pod:
//!
//! - `spec.serviceAccountName` defaults to `default` (and the deprecated `serviceAccount`
//!   follows it);
//! - the account must exist — a 403 "error looking up service account NS/NAME" otherwise.
//!   `default` is made by the ServiceAccount controller just after its namespace, so it is
//!   looked up several times (up to 10, 100–200 ms apart) before the pod is refused;
//! - unless `automountServiceAccountToken` is false (the pod's, else the account's), a
//!   projected volume `kube-api-access-XXXXX` — the account's token (3607 s, refreshed by the
//!   node agent), `ca.crt` from the namespace's `kube-root-ca.crt` ConfigMap and the pod's
//!   `namespace` — is added and mounted read-only at
//!   `/var/run/secrets/kubernetes.io/serviceaccount` in every container and init container that
//!   does not mount something there already.
//!
//! On by default in `capstan apiserver` and `capstan up`; off with
//! `--disable-admission-plugins ServiceAccount` (kube-apiserver's integration tests run
//! without it, as API-server-only tests here do).

use std::sync::{OnceLock, Weak};
use std::time::Duration;

use serde_json::{Value, json};

use crate::ApiServer;
use crate::auth::service_account::Objects;
use crate::errors::{ApiError, ApiResult};
use crate::object::ObjectExt;
use crate::strategy::StorageHooks;

/// Where the token, CA and namespace appear in a container.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap holding the cluster CA in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// What kubelet asks for (an hour and 7 s: Kubernetes spots such tokens by this number).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// The account a pod runs as when it names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
const DEFAULT_LOOKUPS: usize = 10;

/// The plugin; [`ServiceAccountAdmission::attach`] gives it the server it reads accounts from.
#[derive(Debug, Default)]
pub struct ServiceAccountAdmission {
    api: OnceLock<Weak<ApiServer>>,
}

/// The projected volume every pod that automounts gets.
pub fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// Mounts `volume` at [`MOUNT_PATH`] in each container that has nothing there; whether the
/// volume is needed at all.
fn mount_everywhere(spec: &mut serde_json::Map<String, Value>, volume: &str) -> bool {
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let mounts = c
                .as_object_mut()
                .map(|c| c.entry("volumeMounts").or_insert_with(|| json!([])));
            let Some(mounts) = mounts else { continue };
            if mounts.is_null() {
                *mounts = json!([]);
            }
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            if mounts.iter().any(|m| m["mountPath"] == MOUNT_PATH) {
                continue;
            }
            mounts.push(json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH}));
            needed = true;
        }
    }
    needed
}

impl ServiceAccountAdmission {
    pub fn attach(&self, api: Weak<ApiServer>) {
        let _ = self.api.set(api);
    }

    async fn account(&self, ns: &str, name: &str) -> ApiResult<Value> {
        let api = self
            .api
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| ApiError::internal("the ServiceAccount admission has no server"))?;
        let tries = if name == DEFAULT_SERVICE_ACCOUNT {
            DEFAULT_LOOKUPS
        } else {
            1
        };
        for attempt in 1..=tries {
            if let Some(sa) = api
                .object(("", "v1", "serviceaccounts"), Some(ns), name)
                .await
            {
                return Ok(sa);
            }
            if attempt < tries {
                tokio::time::sleep(Duration::from_millis(100 + fastrand::u64(..100))).await;
            }
        }
        Err(ApiError::forbidden(
            "",
            "pods",
            "",
            &format!(
                "error looking up service account {ns}/{name}: serviceaccount {name:?} not found"
            ),
        ))
    }

    /// Defaults, checks and mounts the pod's ServiceAccount.
    pub async fn admit(&self, pod: &mut Value) -> ApiResult<()> {
        let ns = pod.namespace().unwrap_or("default").to_string();
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let name = spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .or_else(|| {
                spec.get("serviceAccount")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
            .to_string();
        spec.insert("serviceAccountName".into(), json!(name));
        spec.insert("serviceAccount".into(), json!(name));
        let sa = self.account(&ns, &name).await?;
        let automount = spec
            .get("automountServiceAccountToken")
            .and_then(Value::as_bool)
            .or_else(|| sa["automountServiceAccountToken"].as_bool())
            .unwrap_or(true);
        if !automount {
            return Ok(());
        }
        let volume = crate::object::generate_name("kube-api-access-");
        if mount_everywhere(spec, &volume) {
            let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
            if !volumes.is_array() {
                *volumes = json!([]);
            }
            if let Some(v) = volumes.as_array_mut() {
                v.push(token_volume(&volume));
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl StorageHooks for ServiceAccountAdmission {
    async fn begin_create(&self, obj: &mut Value, _dry_run: bool) -> ApiResult<()> {
        self.admit(obj).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_without_a_mount_there_gets_the_volume() {
        let mut spec = json!({
            "initContainers": [{"name": "i"}],
            "containers": [
                {"name": "a", "volumeMounts": null},
                {"name": "b", "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]},
            ],
        });
        let map = spec.as_object_mut().unwrap();
        assert!(mount_everywhere(map, "kube-api-access-x"));
        assert_eq!(
            spec["initContainers"][0]["volumeMounts"],
            json!([{"name": "kube-api-access-x", "readOnly": true, "mountPath": MOUNT_PATH}])
        );
        assert_eq!(
            spec["containers"][0]["volumeMounts"][0]["name"],
            "kube-api-access-x"
        );
        assert_eq!(
            spec["containers"][1]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // Nobody needs it: no volume.
        let mut spec = json!({"containers": [{"name": "b", "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]}]});
        assert!(!mount_everywhere(spec.as_object_mut().unwrap(), "v"));
        let v = token_volume("kube-api-access-x");
        assert_eq!(
            v["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
    }
}
