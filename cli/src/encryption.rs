//! `--encryption-provider-config FILE`: kube-apiserver's EncryptionConfiguration
//! (apiserver.config.k8s.io/v1), with the aesgcm provider (and identity after it, for values
//! written before encryption was enabled):
//!
//! ```yaml
//! apiVersion: apiserver.config.k8s.io/v1
//! kind: EncryptionConfiguration
//! resources:
//!   - resources: [secrets]
//!     providers:
//!       - aesgcm:
//!           keys:
//!             - name: key2          # the first key encrypts
//!               secret: <base64 of 16 or 32 random bytes>
//!             - name: key1          # older keys still decrypt
//!               secret: <base64>
//!       - identity: {}
//! ```
//!
//! The listed resources' values are encrypted in the store ([`capstan_storage::encrypted`]);
//! at start every value not under the first key is re-encrypted, so rotating a key is: put the
//! new key first, restart, then remove the old one.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use base64::Engine;
use capstan_storage::Storage;
use capstan_storage::encrypted::{Encrypted, EncryptionConfig, Key};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    api_version: String,
    kind: String,
    resources: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    resources: Vec<String>,
    providers: Vec<Provider>,
}

/// One provider: exactly one of its fields is set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Provider {
    aesgcm: Option<AesGcm>,
    identity: Option<serde_yaml::Value>,
    aescbc: Option<serde_yaml::Value>,
    secretbox: Option<serde_yaml::Value>,
    kms: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AesGcm {
    keys: Vec<KeySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySpec {
    name: String,
    secret: String,
}

/// What one entry of the file asks for: the store prefixes and the keys.
fn entries(text: &str) -> Result<Vec<EncryptionConfig>> {
    let file: File = serde_yaml::from_str(text).context("not an EncryptionConfiguration")?;
    if file.api_version != "apiserver.config.k8s.io/v1" || file.kind != "EncryptionConfiguration" {
        bail!(
            "want apiVersion apiserver.config.k8s.io/v1, kind EncryptionConfiguration; got {}, {}",
            file.api_version,
            file.kind
        );
    }
    let mut out = Vec::new();
    for (i, e) in file.resources.iter().enumerate() {
        let at = format!("resources[{i}]");
        let mut prefixes = Vec::new();
        for r in &e.resources {
            if r.contains('*') {
                bail!(
                    "{at}: wildcards ({r}) are not supported: name the resources (secrets, configmaps)"
                );
            }
            // Built-in resources are stored under their plural (the group does not matter).
            let plural = r.split('.').next().unwrap_or_default();
            if plural.is_empty() {
                bail!("{at}: an empty resource name");
            }
            prefixes.push(format!("{plural}/"));
        }
        let mut keys = Vec::new();
        for (j, p) in e.providers.iter().enumerate() {
            let set = [
                p.aesgcm.is_some(),
                p.identity.is_some(),
                p.aescbc.is_some(),
                p.secretbox.is_some(),
                p.kms.is_some(),
            ];
            if set.iter().filter(|s| **s).count() != 1 {
                bail!("{at}: providers[{j}] must name exactly one provider");
            }
            if p.aescbc.is_some() || p.secretbox.is_some() || p.kms.is_some() {
                bail!("{at}: only the aesgcm and identity providers are supported");
            }
            match &p.aesgcm {
                Some(AesGcm { keys: specs }) if j == 0 => {
                    for k in specs {
                        let secret = base64::engine::general_purpose::STANDARD
                            .decode(k.secret.trim())
                            .with_context(|| {
                                format!("{at}: key {:?}: the secret is not base64", k.name)
                            })?;
                        keys.push(
                            Key::new(&k.name, &secret).map_err(|e| anyhow::anyhow!("{at}: {e}"))?,
                        );
                    }
                }
                Some(_) => bail!("{at}: aesgcm must be the first provider"),
                None if j == 0 => bail!(
                    "{at}: identity first writes plaintext; put aesgcm first (identity after it reads values written before encryption)"
                ),
                None => {}
            }
        }
        if keys.is_empty() {
            bail!("{at}: no aesgcm key");
        }
        out.push(EncryptionConfig { prefixes, keys });
    }
    Ok(out)
}

/// `store` with the resources the file at `path` names encrypted, their values re-encrypted
/// under the first keys.
pub async fn wrap(store: Arc<dyn Storage>, path: &Path) -> Result<Arc<dyn Storage>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --encryption-provider-config {}", path.display()))?;
    let configs = entries(&text)
        .with_context(|| format!("--encryption-provider-config {}", path.display()))?;
    let mut store = store;
    for config in configs {
        let prefixes = config.prefixes.clone();
        let wrapped = Encrypted::wrap(store, config).map_err(|e| anyhow::anyhow!(e))?;
        let rewritten = wrapped
            .reencrypt()
            .await
            .context("re-encrypting stored values")?;
        tracing::info!(
            ?prefixes,
            rewritten,
            "encryption at rest: values under the first key"
        );
        store = wrapped;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes

    #[test]
    fn kube_apiserver_files_are_read_and_what_is_not_supported_says_so() {
        let ok = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets, configmaps.v1]\n  providers:\n  - aesgcm:\n      keys:\n      - {{name: k1, secret: {K}}}\n  - identity: {{}}\n"
        );
        let e = entries(&ok).unwrap();
        assert_eq!(e[0].prefixes, ["secrets/", "configmaps/"]);
        assert_eq!(e[0].keys[0].name, "k1");
        for (bad, want) in [
            (
                ok.replace("aesgcm:", "aescbc:"),
                "only the aesgcm and identity",
            ),
            (
                ok.replace("[secrets, configmaps.v1]", "['*.*']"),
                "wildcards",
            ),
            (ok.replace(K, "not-base64!"), "not base64"),
            (ok.replace(K, "c2hvcnQ="), "16 or 32 bytes"),
            (
                ok.replace("kind: EncryptionConfiguration", "kind: Other"),
                "want apiVersion",
            ),
        ] {
            let err = format!("{:#}", entries(&bad).unwrap_err());
            assert!(err.contains(want), "{err}");
        }
        let identity_first = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - identity: {{}}\n  - aesgcm:\n      keys:\n      - {{name: k1, secret: {K}}}\n"
        );
        assert!(format!("{:#}", entries(&identity_first).unwrap_err()).contains("identity first"));
    }
}
