//! Capstan's own resource types, served as CustomResourceDefinitions in the `capstan.dev` group.
//! Each is a Rust struct with kube's `CustomResource` derive and a schemars schema; [`all`]
//! gives their CRDs and [`to_yaml`] renders them the way `capstan crd print` writes
//! manifests/crds/ (a test fails when the checked-in files are stale).

mod gitsync;
pub mod scalingpolicy;

pub use gitsync::{
    Dependency, GitRef, GitSync, GitSyncSpec, GitSyncStatus, LocalRef, SyncedObject,
};
pub use scalingpolicy::{ScalingPolicy, ScalingPolicySpec, ScalingPolicyStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_core::CustomResourceExt;

/// The API group of Capstan's own types.
pub const GROUP: &str = "capstan.dev";

/// Every CRD Capstan defines, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![GitSync::crd(), ScalingPolicy::crd()]
}

/// A CRD as a YAML document, with a header saying where it comes from.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "# Generated from api/src/crds by `capstan crd print`; do not edit by hand.\n{}",
        serde_yaml::to_string(crd)?
    ))
}

/// The file a CRD is written to under manifests/crds/: `capstan.dev_gitsyncs.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// manifests/crds/ and the Helm chart's copy (charts/capstan/files/crds/) are generated:
    /// this fails when either is stale (run `make crds`).
    #[test]
    fn checked_in_crds_are_up_to_date() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for at in ["manifests/crds", "charts/capstan/files/crds"] {
            let dir = root.join(at);
            let mut expected = Vec::new();
            for crd in all() {
                let name = file_name(&crd);
                let want = to_yaml(&crd).unwrap();
                let have = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
                assert!(
                    have == want,
                    "{at}/{name} is stale or missing: run `make crds`"
                );
                expected.push(name);
            }
            let mut present: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            present.sort();
            expected.sort();
            assert_eq!(present, expected, "{at}/ holds files no type generates");
        }
    }

    #[test]
    fn gitsync_serializes_with_its_kubernetes_names() {
        let g = GitSync::new(
            "site",
            GitSyncSpec {
                repo: "file:///srv/site.git".into(),
                prune: true,
                ..Default::default()
            },
        );
        let v = serde_json::to_value(&g).unwrap();
        assert_eq!(v["apiVersion"], "capstan.dev/v1alpha1");
        assert_eq!(v["kind"], "GitSync");
        assert_eq!(v["spec"]["prune"], true);
        assert!(v["spec"].get("ref").is_none());
    }
}
