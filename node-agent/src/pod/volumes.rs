//! Pod volumes on the node: each is a directory under the pod's own
//! (`<root>/pods/<uid>/volumes/<plugin>/<name>`, kubelet's layout) or a host path, bind-mounted
//! into the containers that name it. emptyDir is a directory (medium Memory too: no tmpfs is
//! mounted, its contents live on the node's disk); configMap, secret and downwardAPI are files
//! written from the API's objects each time a container starts (a restarted container sees
//! the current data; running ones are not updated in place); hostPath checks or creates what
//! its `type` asks for; a persistentVolumeClaim mounts the hostPath or local path of the
//! volume it is bound to (and waits, failing the mount, while it is not bound).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, HostPathVolumeSource, KeyToPath, Pod, Volume,
    VolumeProjection,
};

use super::env::{self, Lookup};
use crate::runtime::Mount;

/// Where the pod's volumes live.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

/// A relative path inside a volume, refusing absolute paths and `..` (the API validates this
/// too; the agent does not trust it).
fn relative(path: &str) -> Result<&Path, String> {
    let p = Path::new(path);
    if path.is_empty()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "invalid path {path:?}: must be relative, without '..'"
        ));
    }
    Ok(p)
}

fn write_file(dir: &Path, rel: &str, data: &[u8], mode: i32) -> Result<(), String> {
    let path = dir.join(relative(rel)?);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f")
    ));
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    f.write_all(data)
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode((mode & 0o777) as u32))
        .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Writes `data` (key → bytes) as files: every key, or only `items` (key → path, mode).
fn project(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
    what: &str,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    match items {
        Some(items) => {
            for it in items {
                let bytes = data
                    .get(&it.key)
                    .ok_or_else(|| format!("configuration key {:?} not found in {what}", it.key))?;
                write_file(dir, &it.path, bytes, it.mode.unwrap_or(default_mode))?;
            }
        }
        None => {
            for (k, bytes) in data {
                write_file(dir, k, bytes, default_mode)?;
            }
        }
    }
    Ok(())
}

/// The pod's volumes on the host.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Where each volume is, by name.
    pub paths: HashMap<String, PathBuf>,
    /// When the first projected ServiceAccount token must be written again
    /// ([`refresh_tokens`]).
    pub token_refresh: Option<SystemTime>,
}

/// Prepares every volume of the pod: where each one is on the host.
pub async fn prepare(
    pod: &Pod,
    root: &Path,
    host_ip: &str,
    pod_ip: &str,
    lookup: &impl Lookup,
) -> Result<Prepared, String> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let base = pod_dir(root, uid).join("volumes");
    let mut out = Prepared::default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = prepare_one(
            pod,
            v,
            &base,
            ns,
            (host_ip, pod_ip),
            lookup,
            &mut out.token_refresh,
        )
        .await
        .map_err(|e| format!("volume {:?}: {e}", v.name))?;
        out.paths.insert(v.name.clone(), path);
    }
    Ok(out)
}

fn earliest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn prepare_one(
    pod: &Pod,
    v: &Volume,
    base: &Path,
    ns: &str,
    (host_ip, pod_ip): (&str, &str),
    lookup: &impl Lookup,
    refresh: &mut Option<SystemTime>,
) -> Result<PathBuf, String> {
    let name = relative(&v.name)?;
    if v.empty_dir.is_some() {
        let dir = base.join("kubernetes.io~empty-dir").join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        return Ok(dir);
    }
    if let Some(src) = &v.config_map {
        let dir = base.join("kubernetes.io~configmap").join(name);
        let data = config_map_data(lookup, ns, &src.name, src.optional).await?;
        let what = format!("ConfigMap {ns}/{}", src.name);
        project(
            &dir,
            &data,
            src.items.as_ref(),
            src.default_mode.unwrap_or(0o644),
            &what,
        )?;
        return Ok(dir);
    }
    if let Some(src) = &v.secret {
        let secret_name = src.secret_name.clone().unwrap_or_default();
        let dir = base.join("kubernetes.io~secret").join(name);
        let data = secret_data(lookup, ns, &secret_name, src.optional).await?;
        let what = format!("Secret {ns}/{secret_name}");
        project(
            &dir,
            &data,
            src.items.as_ref(),
            src.default_mode.unwrap_or(0o644),
            &what,
        )?;
        return Ok(dir);
    }
    if let Some(src) = &v.downward_api {
        let dir = base.join("kubernetes.io~downward-api").join(name);
        let (data, items) = downward_data(pod, src.items.iter().flatten(), host_ip, pod_ip)?;
        project(
            &dir,
            &data,
            Some(&items),
            src.default_mode.unwrap_or(0o644),
            "downwardAPI",
        )?;
        return Ok(dir);
    }
    if let Some(src) = &v.projected {
        let dir = base.join("kubernetes.io~projected").join(name);
        let mode = src.default_mode.unwrap_or(0o644);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for source in src.sources.iter().flatten() {
            let at = project_source(pod, source, &dir, mode, ns, (host_ip, pod_ip), lookup).await?;
            *refresh = earliest(*refresh, at);
        }
        return Ok(dir);
    }
    if let Some(src) = &v.persistent_volume_claim {
        let pv = lookup
            .claimed_volume(ns, &src.claim_name)
            .await
            .map_err(|e| e.0)?;
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        let spec = pv.spec.unwrap_or_default();
        if let Some(hp) = &spec.host_path {
            return host_path(hp);
        }
        if let Some(local) = &spec.local {
            let path = PathBuf::from(&local.path);
            if !path.is_dir() {
                return Err(format!(
                    "local volume {pv_name}: {} is not a directory on this node",
                    local.path
                ));
            }
            return Ok(path);
        }
        return Err(format!(
            "persistentvolume {pv_name}: only hostPath and local volumes can be mounted by Capstan's node agent"
        ));
    }
    if let Some(src) = &v.host_path {
        return host_path(src);
    }
    Err("this volume type is not supported by Capstan's node agent (emptyDir, configMap, secret, downwardAPI, projected, hostPath and persistentVolumeClaim are)".into())
}

/// A hostPath (a pod's, or a PersistentVolume's), checked or created as its `type` asks.
fn host_path(src: &HostPathVolumeSource) -> Result<PathBuf, String> {
    {
        let path = PathBuf::from(&src.path);
        if !path.is_absolute() {
            return Err(format!("hostPath {:?} must be absolute", src.path));
        }
        let exists = path.exists();
        match src.type_.as_deref().unwrap_or_default() {
            "" => {}
            "DirectoryOrCreate" => {
                if !exists {
                    std::fs::create_dir_all(&path)
                        .map_err(|e| format!("creating {}: {e}", path.display()))?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
                }
            }
            "FileOrCreate" => {
                if !exists {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|e| format!("creating {}: {e}", path.display()))?;
                }
            }
            "Directory" if !path.is_dir() => {
                return Err(format!(
                    "hostPath type check failed: {} is not a directory",
                    src.path
                ));
            }
            "File" if !path.is_file() => {
                return Err(format!(
                    "hostPath type check failed: {} is not a file",
                    src.path
                ));
            }
            "Socket" | "CharDevice" | "BlockDevice" if !exists => {
                return Err(format!(
                    "hostPath type check failed: {} does not exist",
                    src.path
                ));
            }
            "Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice" => {}
            other => return Err(format!("unknown hostPath type {other:?}")),
        }
        Ok(path)
    }
}

async fn config_map_data(
    lookup: &impl Lookup,
    ns: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    Ok(match lookup.config_map(ns, name).await.map_err(|e| e.0)? {
        Some(cm) => {
            let mut d: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            d.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            d
        }
        None if optional == Some(true) => BTreeMap::new(),
        None => return Err(format!("configmap {name:?} not found")),
    })
}

async fn secret_data(
    lookup: &impl Lookup,
    ns: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    Ok(match lookup.secret(ns, name).await.map_err(|e| e.0)? {
        Some(s) => {
            let mut d: BTreeMap<String, Vec<u8>> = s
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            d.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            d
        }
        None if optional == Some(true) => BTreeMap::new(),
        None => return Err(format!("secret {name:?} not found")),
    })
}

/// A volume's files by key (or path).
type Files = BTreeMap<String, Vec<u8>>;

/// The downward API's files: path → value, and the items that write them.
fn downward_data<'a>(
    pod: &Pod,
    files: impl Iterator<Item = &'a DownwardAPIVolumeFile>,
    host_ip: &str,
    pod_ip: &str,
) -> Result<(Files, Vec<KeyToPath>), String> {
    let mut data = BTreeMap::new();
    let mut items = Vec::new();
    for it in files {
        let value = if let Some(f) = &it.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => kv_lines(pod.metadata.labels.as_ref()),
                "metadata.annotations" => kv_lines(pod.metadata.annotations.as_ref()),
                path => env::field(pod, path, host_ip, pod_ip).map_err(|e| e.0)?,
            }
        } else if let Some(r) = &it.resource_field_ref {
            if r.container_name.is_none() {
                return Err(format!("{}: resourceFieldRef needs containerName", it.path));
            }
            env::resource_field(pod, "", r).map_err(|e| e.0)?
        } else {
            return Err(format!(
                "{}: neither fieldRef nor resourceFieldRef",
                it.path
            ));
        };
        data.insert(it.path.clone(), value.into_bytes());
        items.push(KeyToPath {
            key: it.path.clone(),
            path: it.path.clone(),
            mode: it.mode,
        });
    }
    Ok((data, items))
}

/// One source of a projected volume, written into `dir`.
async fn project_source(
    pod: &Pod,
    source: &VolumeProjection,
    dir: &Path,
    mode: i32,
    ns: &str,
    (host_ip, pod_ip): (&str, &str),
    lookup: &impl Lookup,
) -> Result<Option<SystemTime>, String> {
    if let Some(cm) = &source.config_map {
        let data = config_map_data(lookup, ns, &cm.name, cm.optional).await?;
        project(
            dir,
            &data,
            cm.items.as_ref(),
            mode,
            &format!("ConfigMap {ns}/{}", cm.name),
        )?;
    } else if let Some(sec) = &source.secret {
        let data = secret_data(lookup, ns, &sec.name, sec.optional).await?;
        project(
            dir,
            &data,
            sec.items.as_ref(),
            mode,
            &format!("Secret {ns}/{}", sec.name),
        )?;
    } else if let Some(d) = &source.downward_api {
        let (data, items) = downward_data(pod, d.items.iter().flatten(), host_ip, pod_ip)?;
        project(dir, &data, Some(&items), mode, "downwardAPI")?;
    } else if let Some(t) = &source.service_account_token {
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        let issued = SystemTime::now();
        let (token, expires) = lookup
            .token(
                ns,
                account,
                env::TokenFor {
                    pod: pod.metadata.name.as_deref().unwrap_or_default(),
                    pod_uid: pod.metadata.uid.as_deref().unwrap_or_default(),
                    audience: t.audience.as_deref().filter(|a| !a.is_empty()),
                    expiration_seconds: t.expiration_seconds.unwrap_or(3600),
                },
            )
            .await
            .map_err(|e| e.0)?;
        write_file(dir, &t.path, token.as_bytes(), mode)?;
        return Ok(Some(refresh_at(issued, expires)));
    } else {
        return Err(
            "a projected source Capstan's node agent does not know (configMap, secret, downwardAPI and serviceAccountToken are)"
                .into(),
        );
    }
    Ok(None)
}

/// When a projected token is written again: at 80% of its life, or after a day, whichever is
/// first (kubelet's token manager).
pub fn refresh_at(issued: SystemTime, expires: SystemTime) -> SystemTime {
    let life = expires.duration_since(issued).unwrap_or_default();
    issued
        + life
            .mul_f64(0.8)
            .min(std::time::Duration::from_secs(24 * 3600))
}

/// Writes every projected ServiceAccount token of the pod again; when they next need it.
pub async fn refresh_tokens(
    pod: &Pod,
    root: &Path,
    lookup: &impl Lookup,
) -> Result<Option<SystemTime>, String> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let base = pod_dir(root, uid)
        .join("volumes")
        .join("kubernetes.io~projected");
    let mut next: Option<SystemTime> = None;
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(src) = &v.projected else { continue };
        let dir = base.join(relative(&v.name)?);
        let mode = src.default_mode.unwrap_or(0o644);
        for source in src.sources.iter().flatten() {
            if source.service_account_token.is_none() {
                continue;
            }
            let at = project_source(pod, source, &dir, mode, ns, ("", ""), lookup)
                .await
                .map_err(|e| format!("volume {:?}: {e}", v.name))?;
            next = earliest(next, at);
        }
    }
    Ok(next)
}

/// `key="value"` lines, sorted, as the downward API writes labels and annotations.
fn kv_lines(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}\n"))
        .collect()
}

/// The container's mounts from its volumeMounts. configMap, secret and downwardAPI volumes are
/// mounted read-only, as Kubernetes does.
pub fn mounts(
    pod: &Pod,
    c: &Container,
    volumes: &HashMap<String, PathBuf>,
) -> Result<Vec<Mount>, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let host = volumes.get(&m.name).ok_or_else(|| {
            format!(
                "volumeMount {:?}: no volume of that name in the pod",
                m.name
            )
        })?;
        let v = spec.volumes.iter().flatten().find(|v| v.name == m.name);
        let projected = v.is_some_and(|v| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some()
        });
        let mut host_path = host.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            host_path = host_path.join(relative(sub).map_err(|e| format!("subPath: {e}"))?);
            if !host_path.exists() {
                std::fs::create_dir_all(&host_path)
                    .map_err(|e| format!("creating {}: {e}", host_path.display()))?;
            }
        }
        out.push(Mount {
            container_path: m.mount_path.clone(),
            host_path,
            readonly: m.read_only.unwrap_or(false) || projected,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use serde_json::json;

    struct Fixed;

    impl Lookup for Fixed {
        async fn claimed_volume(
            &self,
            _: &str,
            claim: &str,
        ) -> Result<k8s_openapi::api::core::v1::PersistentVolume, env::EnvError> {
            let pv = |name: &str, source: serde_json::Value| {
                let mut v = json!({"metadata": {"name": name}, "spec": {}});
                v["spec"] = source;
                Ok(serde_json::from_value(v).unwrap())
            };
            match claim {
                "local" => pv(
                    "pv-local",
                    json!({"local": {"path": "/nonexistent/capstan"}}),
                ),
                "tmp" => pv(
                    "pv-tmp",
                    json!({"hostPath": {"path": std::env::temp_dir().join("capstan-pv-test"),
                        "type": "DirectoryOrCreate"}}),
                ),
                _ => Err(env::EnvError(format!(
                    "persistentvolumeclaim \"{claim}\" is not bound yet"
                ))),
            }
        }
        async fn config_map(
            &self,
            _: &str,
            name: &str,
        ) -> Result<Option<ConfigMap>, env::EnvError> {
            Ok((name == "cfg").then(|| {
                serde_json::from_value(
                    json!({"metadata": {"name": "cfg"}, "data": {"a.conf": "alpha", "b": "beta"}}),
                )
                .unwrap()
            }))
        }
        async fn secret(&self, _: &str, name: &str) -> Result<Option<Secret>, env::EnvError> {
            Ok((name == "s").then(|| {
                serde_json::from_value(
                    json!({"metadata": {"name": "s"}, "data": {"token": "czNjcjN0"}}),
                )
                .unwrap()
            }))
        }
        async fn services(
            &self,
            _: &str,
        ) -> Result<Vec<k8s_openapi::api::core::v1::Service>, env::EnvError> {
            Ok(Vec::new())
        }
        async fn token(
            &self,
            ns: &str,
            account: &str,
            r: env::TokenFor<'_>,
        ) -> Result<(String, SystemTime), env::EnvError> {
            // The token names what it was asked for, and each one differs (a counter).
            let n = TOKENS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let token = format!(
                "{ns}/{account}/{}/{}/{:?}/{}#{n}",
                r.pod, r.pod_uid, r.audience, r.expiration_seconds
            );
            Ok((
                token,
                SystemTime::now() + std::time::Duration::from_secs(r.expiration_seconds as u64),
            ))
        }
    }

    static TOKENS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    #[tokio::test]
    async fn a_projected_volume_holds_the_token_ca_and_namespace_and_the_token_is_refreshed() {
        let root = tempfile::tempdir().unwrap();
        let mut p = pod(
            json!([{"name": "kube-api-access-x", "projected": {"defaultMode": 0o640, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "vault/token"}},
                {"configMap": {"name": "cfg", "items": [{"key": "a.conf", "path": "ca.crt"}]}},
                {"secret": {"name": "s", "items": [{"key": "token", "path": "s3"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
            ]}}]),
            json!([{"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]),
        );
        p.spec.as_mut().unwrap().service_account_name = Some("reader".into());
        let before = SystemTime::now();
        let vols = prepare(&p, root.path(), "", "", &Fixed).await.unwrap();
        let dir = root
            .path()
            .join("pods/u1/volumes/kubernetes.io~projected/kube-api-access-x");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let token = read("token");
        assert!(token.starts_with("ns/reader/p/u1/None/3607#"), "{token}");
        assert!(read("vault/token").starts_with("ns/reader/p/u1/Some(\"vault\")/600#"));
        assert_eq!(read("ca.crt"), "alpha");
        assert_eq!(read("s3"), "s3cr3t");
        assert_eq!(read("namespace"), "ns");
        assert_eq!(
            std::fs::metadata(dir.join("token"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        // The 600 s token is due first, at 80% of its life.
        let due = vols.token_refresh.unwrap();
        let at = due.duration_since(before).unwrap().as_secs();
        assert!((479..=481).contains(&at), "{at}");
        let m = mounts(&p, &p.spec.as_ref().unwrap().containers[0], &vols.paths).unwrap();
        assert!(m[0].readonly, "projected volumes are read-only");

        // A refresh writes new tokens and leaves the rest.
        let next = refresh_tokens(&p, root.path(), &Fixed).await.unwrap();
        assert_ne!(read("token"), token);
        assert_eq!(read("ca.crt"), "alpha");
        assert!(next.is_some());
        // Unknown sources are a clear error.
        let p = pod(
            json!([{"name": "v", "projected": {"sources": [{"clusterTrustBundle": {"path": "x", "name": "b"}}]}}]),
            json!([]),
        );
        let e = prepare(&p, root.path(), "", "", &Fixed).await.unwrap_err();
        assert!(e.contains("projected source"), "{e}");
    }

    #[test]
    fn tokens_are_refreshed_at_80_percent_of_their_life_or_after_a_day() {
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let h = |n: u64| std::time::Duration::from_secs(n * 3600);
        assert_eq!(
            refresh_at(t0, t0 + h(1)),
            t0 + std::time::Duration::from_secs(2880)
        );
        assert_eq!(refresh_at(t0, t0 + h(24 * 365)), t0 + h(24));
        // Already expired (a clock step): at once.
        assert_eq!(refresh_at(t0, t0 - h(1)), t0);
    }

    fn pod(volumes: serde_json::Value, mounts: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web", "tier": "f"}},
            "spec": {"volumes": volumes, "containers": [{"name": "c", "image": "i", "volumeMounts": mounts,
                "resources": {"limits": {"memory": "64Mi"}}}]}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn every_supported_volume_is_materialized_and_mounted() {
        let root = tempfile::tempdir().unwrap();
        let host = root.path().join("host/data");
        let p = pod(
            json!([
                {"name": "scratch", "emptyDir": {}},
                {"name": "conf", "configMap": {"name": "cfg", "items": [{"key": "a.conf", "path": "etc/a.conf", "mode": 0o600}]}},
                {"name": "all", "configMap": {"name": "cfg"}},
                {"name": "sec", "secret": {"secretName": "s"}},
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}]}},
                {"name": "h", "hostPath": {"path": host.to_str().unwrap(), "type": "DirectoryOrCreate"}},
                {"name": "claim", "persistentVolumeClaim": {"claimName": "tmp"}}
            ]),
            json!([
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "conf", "mountPath": "/etc/conf"},
                {"name": "sec", "mountPath": "/sec"},
                {"name": "h", "mountPath": "/h", "subPath": "sub", "readOnly": true}
            ]),
        );
        let vols = prepare(&p, root.path(), "10.0.0.1", "10.88.0.2", &Fixed)
            .await
            .unwrap();
        let base = root.path().join("pods/u1/volumes");
        assert!(base.join("kubernetes.io~empty-dir/scratch").is_dir());
        let a = base.join("kubernetes.io~configmap/conf/etc/a.conf");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "alpha");
        assert_eq!(
            std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            !base.join("kubernetes.io~configmap/conf/b").exists(),
            "items select keys"
        );
        assert_eq!(
            std::fs::read_to_string(base.join("kubernetes.io~configmap/all/b")).unwrap(),
            "beta"
        );
        assert_eq!(
            std::fs::read_to_string(base.join("kubernetes.io~secret/sec/token")).unwrap(),
            "s3cr3t"
        );
        let info = base.join("kubernetes.io~downward-api/info");
        assert_eq!(
            std::fs::read_to_string(info.join("labels")).unwrap(),
            "app=\"web\"\ntier=\"f\"\n"
        );
        assert_eq!(std::fs::read_to_string(info.join("name")).unwrap(), "p");
        assert_eq!(std::fs::read_to_string(info.join("mem")).unwrap(), "64");
        assert!(host.is_dir(), "DirectoryOrCreate created it");
        let claimed = std::env::temp_dir().join("capstan-pv-test");
        assert_eq!(
            vols.paths["claim"], claimed,
            "a claim mounts its volume's path"
        );
        assert!(claimed.is_dir());

        let c = &p.spec.as_ref().unwrap().containers[0];
        let m = mounts(&p, c, &vols.paths).unwrap();
        assert_eq!(m.len(), 4);
        assert!(!m[0].readonly);
        assert!(m[1].readonly, "configMap volumes are read-only");
        assert_eq!(m[3].host_path, host.join("sub"));
        assert!(m[3].readonly && host.join("sub").is_dir());
    }

    #[tokio::test]
    async fn missing_sources_and_bad_paths_are_clear_errors() {
        let root = tempfile::tempdir().unwrap();
        let cases = [
            (
                json!([{"name": "v", "configMap": {"name": "nope"}}]),
                "configmap \"nope\" not found",
            ),
            (
                json!([{"name": "v", "secret": {"secretName": "nope"}}]),
                "secret \"nope\" not found",
            ),
            (
                json!([{"name": "v", "configMap": {"name": "cfg", "items": [{"key": "a.conf", "path": "../x"}]}}]),
                "must be relative",
            ),
            (
                json!([{"name": "v", "configMap": {"name": "cfg", "items": [{"key": "zz", "path": "x"}]}}]),
                "key \"zz\" not found",
            ),
            (
                json!([{"name": "v", "hostPath": {"path": "/nonexistent/x", "type": "Directory"}}]),
                "not a directory",
            ),
            (
                json!([{"name": "v", "nfs": {"server": "nfs", "path": "/"}}]),
                "not supported",
            ),
            (
                json!([{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}]),
                "persistentvolumeclaim \"c\" is not bound yet",
            ),
            (
                json!([{"name": "v", "persistentVolumeClaim": {"claimName": "local"}}]),
                "local volume pv-local: /nonexistent/capstan is not a directory on this node",
            ),
        ];
        for (vols, want) in cases {
            let p = pod(vols, json!([]));
            let err = prepare(&p, root.path(), "", "", &Fixed).await.unwrap_err();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            assert!(err.starts_with("volume \"v\""), "{err}");
        }
        let p = pod(
            json!([{"name": "v", "configMap": {"name": "nope", "optional": true}}]),
            json!([]),
        );
        prepare(&p, root.path(), "", "", &Fixed).await.unwrap();
        let p = pod(json!([]), json!([{"name": "ghost", "mountPath": "/g"}]));
        let err = mounts(&p, &p.spec.as_ref().unwrap().containers[0], &HashMap::new()).unwrap_err();
        assert!(err.contains("no volume of that name"), "{err}");
    }
}
