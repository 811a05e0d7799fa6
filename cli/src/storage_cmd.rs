//! `capstan storage migrate`: rewrites every object of the custom resources at their CRD's
//! storage version, then trims the CRD's `status.storedVersions` to that version — the job
//! kube-storage-version-migrator does, through the API (so conversion webhooks convert what
//! needs it). After changing a CRD's storage version, run it before dropping the old version
//! from `spec.versions`: the API server refuses to drop a version still in storedVersions.
//!
//! Each object gets an empty merge patch: the API server writes an object that changes
//! nothing only when it is stored at another version than the storage version, so objects
//! already there cost no write, and a second run rewrites nothing.

use anyhow::{Context, Result};
use clap::Subcommand;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

use crate::client_cmd::{ClientArgs, client};

#[derive(Debug, Subcommand)]
pub enum StorageCmd {
    /// Rewrite custom resources at their storage version and trim status.storedVersions.
    Migrate {
        /// Only these CRDs (`widgets.example.com`); default: every CRD.
        crds: Vec<String>,
    },
}

/// What migrating one CRD did.
#[derive(Debug, PartialEq, Eq)]
pub struct Migrated {
    pub crd: String,
    pub storage_version: String,
    /// Objects read.
    pub objects: usize,
    /// Objects written again (those stored at another version).
    pub rewritten: usize,
}

pub async fn run(args: ClientArgs, cmd: StorageCmd) -> Result<()> {
    let StorageCmd::Migrate { crds } = cmd;
    let client = client(&args).await?;
    for m in migrate(&client, &crds).await? {
        println!(
            "{}: {} objects, {} rewritten at {}; storedVersions [{}]",
            m.crd, m.objects, m.rewritten, m.storage_version, m.storage_version
        );
    }
    Ok(())
}

/// Migrates the CRDs named (all when none is).
pub async fn migrate(client: &kube::Client, names: &[String]) -> Result<Vec<Migrated>> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut all = crds
        .list(&ListParams::default())
        .await
        .context("listing CRDs")?
        .items;
    all.retain(|c| names.is_empty() || names.iter().any(|n| Some(n) == c.metadata.name.as_ref()));
    if let Some(missing) = names
        .iter()
        .find(|n| !all.iter().any(|c| c.metadata.name.as_ref() == Some(n)))
    {
        anyhow::bail!("customresourcedefinition {missing:?} not found");
    }
    let mut out = Vec::new();
    for crd in all {
        out.push(migrate_one(client, &crds, &crd).await?);
    }
    Ok(out)
}

async fn migrate_one(
    client: &kube::Client,
    crds: &Api<CustomResourceDefinition>,
    crd: &CustomResourceDefinition,
) -> Result<Migrated> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let spec = &crd.spec;
    let storage = spec
        .versions
        .iter()
        .find(|v| v.storage)
        .with_context(|| format!("{name} has no storage version"))?;
    let mut report = Migrated {
        crd: name.clone(),
        storage_version: storage.name.clone(),
        objects: 0,
        rewritten: 0,
    };
    // The storage version may not be served: then its objects are read and written through
    // a served version — the server stores at the storage version whatever the request's.
    let served = if storage.served {
        storage.name.clone()
    } else {
        (spec.versions.iter().find(|v| v.served))
            .map(|v| v.name.clone())
            .with_context(|| format!("{name} serves no version"))?
    };
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&spec.group, &served, &spec.names.kind),
        &spec.names.plural,
    );
    let mut params = ListParams::default().limit(500);
    loop {
        let page = Api::<DynamicObject>::all_with(client.clone(), &resource)
            .list(&params)
            .await
            .with_context(|| format!("listing {}", spec.names.plural))?;
        for o in &page.items {
            report.objects += 1;
            let api: Api<DynamicObject> = match &o.metadata.namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            let object = o.metadata.name.clone().unwrap_or_default();
            match api
                .patch(&object, &PatchParams::default(), &Patch::Merge(json!({})))
                .await
            {
                Ok(after) if after.metadata.resource_version != o.metadata.resource_version => {
                    report.rewritten += 1;
                }
                Ok(_) => {}
                // Deleted meanwhile: nothing left to migrate.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e).with_context(|| format!("rewriting {name} {object}")),
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    crds.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"storedVersions": [storage.name]}})),
    )
    .await
    .with_context(|| format!("trimming {name}'s storedVersions"))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_testkit::TestCluster;
    use kube::api::PostParams;

    fn crd(storage: &str) -> serde_json::Value {
        let version = |v: &str| {
            json!({"name": v, "served": true, "storage": v == storage, "schema": {"openAPIV3Schema": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": true}}})
        };
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "gadgets.example.test"},
            "spec": {"group": "example.test", "scope": "Namespaced",
                "names": {"plural": "gadgets", "kind": "Gadget"},
                "versions": [version("v1"), version("v2")]}
        })
    }

    async fn stored_version(c: &TestCluster, name: &str) -> String {
        let kv = c
            .store
            .get(&format!("example.test/gadgets/default/{name}"))
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
        v["apiVersion"].as_str().unwrap_or_default().to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_move_to_the_storage_version_and_stored_versions_are_trimmed() {
        let c = TestCluster::start().await;
        c.create_crd(crd("v1")).await;
        let resource = |v: &str| {
            ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("example.test", v, "Gadget"),
                "gadgets",
            )
        };
        let v1: Api<DynamicObject> =
            Api::namespaced_with(c.client.clone(), "default", &resource("v1"));
        for i in 0..3 {
            let o =
                serde_json::from_value(json!({"apiVersion": "example.test/v1", "kind": "Gadget",
                "metadata": {"name": format!("g{i}")}, "spec": {"n": i}}))
                .unwrap();
            v1.create(&PostParams::default(), &o).await.unwrap();
        }
        // v2 becomes the storage version: the objects stay at v1; storedVersions lists both.
        let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
        crds.patch(
            "gadgets.example.test",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"versions": crd("v2")["spec"]["versions"]}})),
        )
        .await
        .unwrap();
        capstan_testkit::until(
            std::time::Duration::from_secs(5),
            "both stored versions",
            || async {
                crds.get("gadgets.example.test")
                    .await
                    .unwrap()
                    .status
                    .and_then(|s| s.stored_versions)
                    == Some(vec!["v1".into(), "v2".into()])
            },
        )
        .await;
        assert_eq!(stored_version(&c, "g0").await, "example.test/v1");

        let report = migrate(&c.client, &["gadgets.example.test".into()])
            .await
            .unwrap();
        assert_eq!(
            report,
            [Migrated {
                crd: "gadgets.example.test".into(),
                storage_version: "v2".into(),
                objects: 3,
                rewritten: 3
            }]
        );
        for i in 0..3 {
            assert_eq!(
                stored_version(&c, &format!("g{i}")).await,
                "example.test/v2"
            );
        }
        let status = crds
            .get("gadgets.example.test")
            .await
            .unwrap()
            .status
            .unwrap();
        assert_eq!(status.stored_versions, Some(vec!["v2".into()]));
        // Again: nothing to rewrite. An unknown CRD is an error naming it.
        assert_eq!(migrate(&c.client, &[]).await.unwrap()[0].rewritten, 0);
        let e = migrate(&c.client, &["nope.example.test".into()])
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("\"nope.example.test\" not found"),
            "{e}"
        );
    }
}
