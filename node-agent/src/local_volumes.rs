//! The node's side of the local-path provisioner: volumes it provisioned here are directories
//! `ROOT/storage/pvc-UID_NAMESPACE_NAME` (made on first mount). When the controller reclaims
//! one with policy Delete it deletes the PersistentVolume, which waits on the
//! [`CLEANUP`] finalizer; this loop, every [`PERIOD`], looks up the volume of each directory
//! and, for one being deleted, removes the directory (when its policy is still Delete) and
//! then the finalizer. A directory whose volume is gone without the finalizer (an admin
//! deleted a Retain volume) is kept: its data is the admin's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// The finalizer the provisioner puts on the volumes it makes.
pub const CLEANUP: &str = "capstan.dev/local-path-cleanup";
pub const PERIOD: Duration = Duration::from_secs(5);

/// The volume a directory belongs to: `pvc-UID` from `pvc-UID_NAMESPACE_NAME`.
pub fn volume_of(dir: &Path) -> Option<String> {
    let name = dir.file_name()?.to_str()?;
    let (pv, _) = name.split_once('_')?;
    pv.starts_with("pvc-").then(|| pv.to_string())
}

/// One pass over `storage`: the directories whose volume is being deleted, removed.
pub async fn reclaim(client: &kube::Client, storage: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(storage) else {
        return Vec::new();
    };
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let dir = e.path();
        let Some(name) = volume_of(&dir) else {
            continue;
        };
        let pv = match api.get_opt(&name).await {
            Ok(Some(pv)) => pv,
            Ok(None) => continue,
            Err(err) => {
                tracing::debug!(volume = %name, error = %err, "looking up a local volume");
                continue;
            }
        };
        let finalizers = pv.metadata.finalizers.clone().unwrap_or_default();
        if pv.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == CLEANUP) {
            continue;
        }
        // A volume switched to Retain since it was made keeps its data.
        let policy = pv
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref());
        if policy == Some("Delete") {
            if let Err(err) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(volume = %name, dir = %dir.display(), error = %err, "removing a deleted volume's directory");
                continue;
            }
            tracing::info!(volume = %name, dir = %dir.display(), "deleted volume's data removed");
            removed.push(dir);
        }
        let kept: Vec<&String> = finalizers.iter().filter(|f| *f != CLEANUP).collect();
        let patch = json!({"metadata": {"resourceVersion": pv.metadata.resource_version,
            "finalizers": kept}});
        if let Err(err) = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            tracing::warn!(volume = %name, error = %err, "releasing a deleted volume");
        }
    }
    removed
}

/// Runs [`reclaim`] every [`PERIOD`] until dropped.
pub async fn run(client: kube::Client, storage: PathBuf) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        reclaim(&client, &storage).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_names_its_volume() {
        assert_eq!(
            volume_of(Path::new("/s/pvc-1234-ab_default_data-web-0")).as_deref(),
            Some("pvc-1234-ab")
        );
        assert_eq!(volume_of(Path::new("/s/lost+found")), None);
        assert_eq!(volume_of(Path::new("/s/other_x_y")), None);
    }
}
