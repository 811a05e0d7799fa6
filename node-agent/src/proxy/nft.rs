//! Running `nft`: a transaction is the plan's text on `nft -f -`'s stdin (kube-proxy does the
//! same through knftables); reading back is `nft -j`, and only chain and set *names* are ever
//! listed, and only for a full sync — never the whole table per sync (kubernetes issue 139513:
//! listing cost 40 s at 44k Services).

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::plan::Existing;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running {path}")]
    Spawn {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft {what} failed: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("reading nft's json output")]
    Json(#[source] serde_json::Error),
}

/// The `nft` binary.
#[derive(Debug, Clone)]
pub struct Nft {
    pub path: PathBuf,
    /// Arguments before nft's own (`netns exec NS nft` when `path` is `ip`).
    prefix: Vec<String>,
}

impl Nft {
    pub fn new(path: impl Into<PathBuf>) -> Nft {
        Nft {
            path: path.into(),
            prefix: Vec::new(),
        }
    }

    /// `nft` in the named network namespace (`ip netns exec NETNS nft`): tests' own worlds.
    pub fn in_netns(netns: &str) -> Nft {
        Nft {
            path: PathBuf::from("ip"),
            prefix: ["netns", "exec", netns, "nft"].map(String::from).to_vec(),
        }
    }

    /// Applies `text` as one transaction (`nft -f -`): all of it or nothing.
    pub async fn apply(&self, text: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], Some(text), "-f").await.map(drop)
    }

    /// `nft <args>`, returning stdout.
    pub async fn run(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        what: &str,
    ) -> Result<String, NftError> {
        let spawn_err = |source| NftError::Spawn {
            path: self.path.display().to_string(),
            source,
        };
        let mut child = Command::new(&self.path)
            .args(&self.prefix)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // nft reads all of stdin before it answers, so writing first cannot deadlock on a
            // full stdout pipe.
            pipe.write_all(text.as_bytes()).await.map_err(spawn_err)?;
            drop(pipe);
        }
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        if !out.status.success() {
            let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            stderr.truncate(4096);
            return Err(NftError::Failed {
                what: what.to_string(),
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether `ip <table>` exists.
    pub async fn table_exists(&self, table: &str) -> Result<bool, NftError> {
        let out = self
            .run(&["-j", "list", "tables", "ip"], None, "list tables")
            .await?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(NftError::Json)?;
        Ok(entries(&v, "table").any(|t| t["name"] == table))
    }

    /// The names of the chains and sets (maps included) in `ip <table>`; empty when it does
    /// not exist. Lists names only: no rules, no set elements.
    pub async fn existing(&self, table: &str) -> Result<Existing, NftError> {
        let mut e = Existing::default();
        if !self.table_exists(table).await? {
            return Ok(e);
        }
        for (what, kind) in [("chains", "chain"), ("sets", "set"), ("maps", "map")] {
            let out = self
                .run(&["-j", "-t", "list", what, "ip"], None, what)
                .await?;
            let v: serde_json::Value = serde_json::from_str(&out).map_err(NftError::Json)?;
            for obj in entries(&v, kind).filter(|o| o["table"] == table) {
                if let Some(name) = obj["name"].as_str() {
                    if kind == "chain" {
                        e.chains.insert(name.to_string());
                    } else {
                        e.sets.insert(name.to_string());
                    }
                }
            }
        }
        Ok(e)
    }

    /// Deletes `ip <table>` if it exists.
    pub async fn delete_table(&self, table: &str) -> Result<(), NftError> {
        if self.table_exists(table).await? {
            let text = format!("delete table ip {table}\n");
            self.apply(&text).await?;
        }
        Ok(())
    }
}

/// The objects of one kind in an `nft -j` answer (`{"nftables": [{"chain": {..}}, ..]}`).
fn entries<'a>(
    v: &'a serde_json::Value,
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(move |o| o.get(kind))
}
