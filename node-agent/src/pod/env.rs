//! A container's environment and command line as the kubelet builds them: `env` values,
//! `valueFrom` (fieldRef, configMapKeyRef, secretKeyRef), `envFrom` (configMapRef, secretRef
//! with a prefix), then `$(VAR)` references expanded in env values, command and args
//! (`$$(VAR)` escapes one).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::api::{Api, ListParams};

/// Where a reference failed (becomes CreateContainerConfigError).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);

/// Reads ConfigMaps and Secrets (the API, or a map in tests).
pub trait Lookup: Send + Sync {
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ConfigMap>, EnvError>> + Send;
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Secret>, EnvError>> + Send;
    /// The Services of `namespace` and `default` (for the service environment variables).
    fn services(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<Service>, EnvError>> + Send;
    /// The PersistentVolume `claim` is bound to (an error while it is not bound yet).
    fn claimed_volume(
        &self,
        namespace: &str,
        claim: &str,
    ) -> impl Future<Output = Result<PersistentVolume, EnvError>> + Send {
        let msg = format!("no PersistentVolumeClaims here ({namespace}/{claim})");
        async move { Err(EnvError(msg)) }
    }
    /// A token of `service_account` bound to the pod (TokenRequest) and when it expires.
    fn token(
        &self,
        namespace: &str,
        service_account: &str,
        request: TokenFor<'_>,
    ) -> impl Future<Output = Result<(String, std::time::SystemTime), EnvError>> + Send;
}

/// What a projected token is asked for: the pod it is bound to, an audience, how long.
#[derive(Debug, Clone, Copy)]
pub struct TokenFor<'a> {
    pub pod: &'a str,
    pub pod_uid: &'a str,
    /// None: the API server's own audience.
    pub audience: Option<&'a str>,
    pub expiration_seconds: i64,
}

/// The API server, through kube's client: lookups here, the pod worker's writes in
/// [`super::worker::PodApi`].
#[derive(Clone)]
pub struct KubeApi {
    pub client: kube::Client,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi").finish_non_exhaustive()
    }
}

impl Lookup for KubeApi {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, EnvError> {
        Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| EnvError(format!("reading configmap {namespace}/{name}: {e}")))
    }
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, EnvError> {
        Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| EnvError(format!("reading secret {namespace}/{name}: {e}")))
    }
    async fn claimed_volume(&self, ns: &str, claim: &str) -> Result<PersistentVolume, EnvError> {
        let c = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
            .get_opt(claim)
            .await
            .map_err(|e| EnvError(format!("reading persistentvolumeclaim {ns}/{claim}: {e}")))?
            .ok_or_else(|| EnvError(format!("persistentvolumeclaim \"{claim}\" not found")))?;
        let bound = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let volume = c
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|v| bound && !v.is_empty())
            .ok_or_else(|| {
                EnvError(format!(
                    "persistentvolumeclaim \"{claim}\" is not bound yet"
                ))
            })?;
        Api::<PersistentVolume>::all(self.client.clone())
            .get(&volume)
            .await
            .map_err(|e| EnvError(format!("reading persistentvolume {volume}: {e}")))
    }
    async fn services(&self, namespace: &str) -> Result<Vec<Service>, EnvError> {
        let mut out = Vec::new();
        let namespaces: &[&str] = if namespace == "default" {
            &["default"]
        } else {
            &[namespace, "default"]
        };
        for ns in namespaces {
            let list = Api::<Service>::namespaced(self.client.clone(), ns)
                .list(&ListParams::default())
                .await
                .map_err(|e| EnvError(format!("listing services in {ns}: {e}")))?;
            out.extend(list.items);
        }
        Ok(out)
    }
    async fn token(
        &self,
        namespace: &str,
        service_account: &str,
        r: TokenFor<'_>,
    ) -> Result<(String, std::time::SystemTime), EnvError> {
        use k8s_openapi::api::authentication::v1::{
            BoundObjectReference, TokenRequest, TokenRequestSpec,
        };
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: r.audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
                expiration_seconds: Some(r.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(r.pod.into()),
                    uid: Some(r.pod_uid.into()),
                }),
            },
            ..Default::default()
        };
        let what = format!("a token for service account {namespace}/{service_account}");
        let issued = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
            self.client.clone(),
            namespace,
        )
        .create_token_request(service_account, &Default::default(), &req)
        .await
        .map_err(|e| EnvError(format!("requesting {what}: {e}")))?;
        let status = issued
            .status
            .ok_or_else(|| EnvError(format!("requesting {what}: no status in the answer")))?;
        let expires = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(
                status.expiration_timestamp.0.as_second().max(0) as u64
            );
        Ok((status.token, expires))
    }
}

/// A pod field for fieldRef (Kubernetes' downward API fields).
pub(crate) fn field(
    pod: &Pod,
    path: &str,
    host_ip: &str,
    pod_ip: &str,
) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(|k| map.and_then(|m| m.get(k)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        other => {
            return Err(EnvError(format!(
                "unsupported fieldRef fieldPath {other:?}"
            )));
        }
    })
}

/// A resourceFieldRef's value (limits.cpu, requests.memory, ...) divided by its divisor and
/// rounded up, as the kubelet gives it; an unset limit is the node's capacity.
pub(crate) fn resource_field(
    pod: &Pod,
    default_container: &str,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Result<String, EnvError> {
    use capstan_api::quantity::parse;
    let name = r.container_name.as_deref().unwrap_or(default_container);
    let spec = pod.spec.clone().unwrap_or_default();
    let c = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .ok_or_else(|| EnvError(format!("resourceFieldRef: no container {name:?}")))?;
    let (which, res) = r
        .resource
        .split_once('.')
        .ok_or_else(|| EnvError(format!("unsupported resource {:?}", r.resource)))?;
    let res_ = c.resources.clone().unwrap_or_default();
    let map = match which {
        "limits" => res_.limits,
        "requests" => res_.requests,
        _ => None,
    };
    let set = map.and_then(|m| m.get(res).map(|q| q.0.clone()));
    let cpu = res == "cpu";
    if !cpu && res != "memory" && res != "ephemeral-storage" {
        return Err(EnvError(format!("unsupported resource {:?}", r.resource)));
    }
    // Millicores for cpu, bytes otherwise.
    let scale = if cpu { 1000.0 } else { 1.0 };
    let value = match set {
        Some(q) => parse(&q, scale),
        None if which == "limits" && cpu => {
            Some(std::thread::available_parallelism().map_or(1, |n| n.get()) as i64 * 1000)
        }
        None if which == "limits" && res == "memory" => {
            let info = rustix::system::sysinfo();
            Some((info.totalram as u128 * info.mem_unit as u128) as i64)
        }
        None => Some(0),
    }
    .ok_or_else(|| EnvError(format!("unparsable quantity for {:?}", r.resource)))?;
    let divisor = match &r.divisor {
        Some(d) => parse(&d.0, scale).filter(|d| *d > 0),
        None => Some(if cpu { 1000 } else { 1 }),
    }
    .ok_or_else(|| EnvError(format!("invalid divisor for {:?}", r.resource)))?;
    Ok(((value + divisor - 1) / divisor).to_string())
}

pub(crate) fn data_of_secret(s: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    out.extend(s.string_data.clone().unwrap_or_default());
    out
}

/// The environment of container `c` of `pod`, in order, references resolved.
pub async fn environment(
    pod: &Pod,
    c: &Container,
    host_ip: &str,
    pod_ip: &str,
    lookup: &impl Lookup,
) -> Result<Vec<(String, String)>, EnvError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let services = lookup.services(ns).await?;
    // The Service variables come first: the container's own override them.
    let mut env: Vec<(String, String)> = super::service_env::service_env(&services, ns, links);
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match lookup.config_map(ns, &r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError(format!("configmap {:?} not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match lookup.secret(ns, &r.name).await? {
                Some(s) => {
                    for (k, v) in data_of_secret(&s) {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError(format!("secret {:?} not found", r.name))),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => {
                let so_far: BTreeMap<String, String> = env.iter().cloned().collect();
                expand(e.value.as_deref().unwrap_or_default(), &so_far)
            }
            Some(src) => {
                if let Some(f) = &src.field_ref {
                    field(pod, &f.field_path, host_ip, pod_ip)?
                } else if let Some(r) = &src.config_map_key_ref {
                    let cm = lookup.config_map(ns, &r.name).await?;
                    match cm.and_then(|cm| cm.data.and_then(|d| d.get(&r.key).cloned())) {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(EnvError(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key,
                                pod.metadata.namespace.as_deref().unwrap_or_default(),
                                r.name
                            )));
                        }
                    }
                } else if let Some(r) = &src.secret_key_ref {
                    let s = lookup.secret(ns, &r.name).await?;
                    match s.and_then(|s| data_of_secret(&s).get(&r.key).cloned()) {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(EnvError(format!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key,
                                pod.metadata.namespace.as_deref().unwrap_or_default(),
                                r.name
                            )));
                        }
                    }
                } else if let Some(r) = &src.resource_field_ref {
                    resource_field(pod, &c.name, r)?
                } else {
                    return Err(EnvError(format!(
                        "env {:?}: valueFrom names no source",
                        e.name
                    )));
                }
            }
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(env)
}

/// Expands `$(VAR)` from `vars`; `$$` is a literal `$`; unknown references stay as written.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&s[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap_or_default();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// command + args, with `$(VAR)` expanded from the container's environment.
pub fn argv(c: &Container, env: &[(String, String)]) -> Vec<String> {
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(|a| expand(a, &vars))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixed(Vec<ConfigMap>, Vec<Secret>);

    impl Lookup for Fixed {
        async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, EnvError> {
            assert_eq!(ns, "prod", "looked up in the pod's namespace");
            Ok(self
                .0
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name))
                .cloned())
        }
        async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, EnvError> {
            assert_eq!(ns, "prod", "looked up in the pod's namespace");
            Ok(self
                .1
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name))
                .cloned())
        }
        async fn services(&self, _: &str) -> Result<Vec<Service>, EnvError> {
            Ok(Vec::new())
        }
        async fn token(
            &self,
            _: &str,
            _: &str,
            _: TokenFor<'_>,
        ) -> Result<(String, std::time::SystemTime), EnvError> {
            Err(EnvError("no tokens here".into()))
        }
    }

    fn fixtures() -> Fixed {
        Fixed(
            vec![
                serde_json::from_value(
                    json!({"metadata": {"name": "cfg"}, "data": {"mode": "fast", "level": "3"}}),
                )
                .unwrap(),
            ],
            vec![
                serde_json::from_value(
                    json!({"metadata": {"name": "sec"}, "data": {"token": "czNjcjN0"}}),
                )
                .unwrap(),
            ],
        )
    }

    fn pod(container: serde_json::Value) -> (Pod, Container) {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "prod", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [container]}
        }))
        .unwrap();
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        (p, c)
    }

    #[tokio::test]
    async fn values_field_refs_config_maps_secrets_and_expansion() {
        let (p, c) = pod(json!({"name": "c",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "env": [
                {"name": "A", "value": "1"},
                {"name": "B", "value": "$(A)-$(CFG_mode)-$$(A)-$(NOPE)"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
                {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "none", "optional": true}}}
            ],
            "command": ["sh", "-c"], "args": ["echo $(POD) $(TOKEN)"]}));
        let env = environment(&p, &c, "192.168.0.2", "10.0.0.9", &fixtures())
            .await
            .unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("CFG_level").as_deref(), Some("3"));
        assert_eq!(get("B").as_deref(), Some("1-fast-$(A)-$(NOPE)"));
        assert_eq!(get("POD").as_deref(), Some("web"));
        assert_eq!(get("APP").as_deref(), Some("web"));
        assert_eq!(get("NODE").as_deref(), Some("n1"));
        assert_eq!(get("IP").as_deref(), Some("10.0.0.9"));
        assert_eq!(get("MODE").as_deref(), Some("fast"));
        assert_eq!(get("TOKEN").as_deref(), Some("s3cr3t"));
        assert_eq!(get("MAYBE"), None);
        assert_eq!(argv(&c, &env), ["sh", "-c", "echo web s3cr3t"]);
    }

    #[tokio::test]
    async fn a_missing_reference_is_a_config_error_naming_it() {
        let (p, c) = pod(json!({"name": "c", "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "missing"}}}]}));
        let err = environment(&p, &c, "", "", &fixtures()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "couldn't find key missing in ConfigMap prod/cfg"
        );
        let (p, c) = pod(json!({"name": "c", "envFrom": [{"secretRef": {"name": "gone"}}]}));
        let err = environment(&p, &c, "", "", &fixtures()).await.unwrap_err();
        assert_eq!(err.to_string(), "secret \"gone\" not found");
    }
}
