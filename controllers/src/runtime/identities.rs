//! Each controller's own identity (kube-controller-manager's
//! `--use-service-account-credentials`): the manager makes the ServiceAccount
//! `kube-system/NAME-controller` when missing, asks for its token (TokenRequest, an hour),
//! writes it to a file and writes it again at 80% of its life; the controller's client reads
//! the file (kube reloads it every minute). The API server binds each account to the role
//! `system:controller:NAME-controller` — what that controller needs, nothing more. The
//! manager's shared informers and leader election keep the manager's own identity.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

/// Where the accounts live.
pub const NAMESPACE: &str = "kube-system";
/// How long a token lasts.
const TOKEN_SECONDS: i64 = 3600;

/// The ServiceAccount of controller `name` (the API server's roles use the same names).
pub fn account(name: &str) -> String {
    format!("{name}-controller")
}

/// Makes controllers' clients.
pub struct Identities {
    base: kube::Config,
    root: kube::Client,
    dir: PathBuf,
    refreshers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Identities {
    fn drop(&mut self) {
        for t in self
            .refreshers
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default()
        {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn token(root: &kube::Client, sa: &str) -> Result<String, kube::Error> {
    let req = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(root.clone(), NAMESPACE)
        .create_token_request(sa, &PostParams::default(), &req)
        .await?;
    Ok(issued.status.map(|s| s.token).unwrap_or_default())
}

/// The private token directories under the system's temporary one: PREFIX PID - RANDOM.
const TEMP_PREFIX: &str = "capstan-controller-tokens-";

/// Removes the token directories of managers that died without cleaning up (kill -9): those
/// whose process is gone. Their tokens expire anyway; this keeps them from piling up.
fn remove_orphans(tmp: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn write(path: &std::path::Path, token: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(token.as_bytes())?;
    std::fs::rename(tmp, path)
}

impl Identities {
    /// Clients for the cluster `base` names (its server and CA), made with `root` — the
    /// manager's client — keeping token files in `dir` (made afresh, mode 0700), or in a
    /// private directory under the system's temporary one; removed when this is dropped.
    pub fn new(
        base: kube::Config,
        root: kube::Client,
        dir: Option<PathBuf>,
    ) -> std::io::Result<Arc<Identities>> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = dir.unwrap_or_else(|| {
            let tmp = std::env::temp_dir();
            remove_orphans(&tmp);
            tmp.join(format!(
                "{TEMP_PREFIX}{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ))
        });
        // Tokens a killed manager left behind are not reused.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Arc::new(Identities {
            base,
            root,
            dir,
            refreshers: Mutex::new(Vec::new()),
        }))
    }

    /// The client of controller `name`, its token kept fresh until this is dropped.
    pub async fn client(&self, name: &str) -> Result<kube::Client, String> {
        let sa = account(name);
        let accounts = Api::<ServiceAccount>::namespaced(self.root.clone(), NAMESPACE);
        let made: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": sa}}))
                .map_err(|e| e.to_string())?;
        match accounts.create(&PostParams::default(), &made).await {
            Ok(_) => tracing::info!(account = %sa, "created the controller's service account"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(format!("creating {NAMESPACE}/{sa}: {e}")),
        }
        let path = self.dir.join(format!("{sa}.token"));
        let first = token(&self.root, &sa)
            .await
            .map_err(|e| format!("a token for {NAMESPACE}/{sa}: {e}"))?;
        write(&path, &first).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let (root, file, account) = (self.root.clone(), path.clone(), sa.clone());
        let refresher = tokio::spawn(async move {
            let mut wait = Duration::from_secs((TOKEN_SECONDS * 8 / 10) as u64);
            loop {
                tokio::time::sleep(wait).await;
                match token(&root, &account).await {
                    Ok(t) => match write(&file, &t) {
                        Ok(()) => wait = Duration::from_secs((TOKEN_SECONDS * 8 / 10) as u64),
                        Err(e) => {
                            tracing::warn!(%account, error = %e, "writing a refreshed token failed");
                            wait = Duration::from_secs(10);
                        }
                    },
                    Err(e) => {
                        tracing::warn!(%account, error = %e, "refreshing the controller's token failed");
                        wait = Duration::from_secs(10);
                    }
                }
            }
        });
        if let Ok(mut r) = self.refreshers.lock() {
            r.push(refresher);
        }
        let mut config = self.base.clone();
        config.auth_info = kube::config::AuthInfo {
            token_file: Some(path.display().to_string()),
            ..Default::default()
        };
        kube::Client::try_from(config).map_err(|e| format!("the client of {sa}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_dead_managers_token_directories_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        // A pid above the kernel's maximum (4,194,304) is never running.
        let dead = tmp.path().join(format!("{TEMP_PREFIX}99999999-1"));
        let alive = tmp
            .path()
            .join(format!("{TEMP_PREFIX}{}-2", std::process::id()));
        let other = tmp.path().join("capstan-something-else-1-2");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("x.token"), "t").unwrap();
        }
        remove_orphans(tmp.path());
        assert!(!dead.exists());
        assert!(alive.exists());
        assert!(other.exists());
    }
}
