//! Fetching with the `git` binary (Debian's git), as Flux's source-controller fetches: one bare
//! cache repository per URL under the controller's cache directory, shallow fetches
//! (`--depth 1`) of exactly the ref asked for, every command under a timeout and killed when
//! it runs over. Files are read from the commit's tree (`ls-tree` + one `cat-file --batch`),
//! with no work tree to keep clean.
//!
//! Why the binary and not gix: it speaks every transport (https with credentials, ssh with
//! known_hosts, git://, file://) the way users' own git does, and gix needs a newer Rust
//! than the workspace's and extra transport features. Credentials never appear on a command
//! line: http headers go through `GIT_CONFIG_*` variables, ssh keys through files readable
//! only by the controller that are removed when the command ends.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use capstan_api::crds::GitRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::apply::fnv64;
use crate::apply::kustomize::{Files, is_manifest_file};

/// The most manifest text one commit may hold.
const MAX_FILES_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {command}: {message}")]
    Failed { command: String, message: String },
    #[error("git {command} did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("{0}")]
    Invalid(String),
}

/// Credentials from the GitSync's Secret (`username`, `password`, `bearerToken`, `ca.crt`,
/// `identity`, `known_hosts`).
#[derive(Clone, Debug, Default)]
pub struct Credentials(pub BTreeMap<String, Vec<u8>>);

impl Credentials {
    fn get(&self, k: &str) -> Option<String> {
        self.0.get(k).map(|v| {
            String::from_utf8_lossy(v)
                .trim_end_matches('\n')
                .to_string()
        })
    }
}

/// What a fetch found.
#[derive(Clone, Debug, PartialEq)]
pub struct Fetched {
    /// The full ref name (`refs/heads/main`, `refs/tags/v1.2.0`) or the commit asked for.
    pub git_ref: String,
    pub commit: String,
}

/// The files a command's credentials need, removed when dropped.
struct Scratch(Option<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The controller's git: a cache of bare repositories, one command at a time per repository.
#[derive(Debug)]
pub struct Git {
    root: PathBuf,
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// The highest tag whose version (a leading `v` aside) `range` accepts.
pub fn highest_in_range<'a>(
    tags: impl IntoIterator<Item = &'a str>,
    range: &str,
) -> Result<Option<&'a str>, String> {
    let req =
        semver::VersionReq::parse(range).map_err(|e| format!("semver range {range:?}: {e}"))?;
    Ok(tags
        .into_iter()
        .filter_map(|t| {
            let v = semver::Version::parse(t.strip_prefix('v').unwrap_or(t)).ok()?;
            req.matches(&v).then_some((v, t))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, t)| t))
}

impl Git {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Git {
            root: root.into(),
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn cache_of(&self, url: &str) -> PathBuf {
        self.root
            .join(format!("{:016x}.git", fnv64(url.as_bytes())))
    }

    fn lock_of(&self, dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(dir.to_path_buf()).or_default().clone()
    }

    /// The environment of a command reaching `url` with `creds`.
    fn environment(
        &self,
        creds: &Credentials,
    ) -> Result<(Vec<(String, String)>, Scratch), GitError> {
        let mut env = vec![
            ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
            ("GIT_SSH_VARIANT".into(), "ssh".into()),
        ];
        let mut config: Vec<(String, String)> = Vec::new();
        let mut scratch = Scratch(None);
        let mut file = |name: &str, content: &str| -> Result<PathBuf, GitError> {
            let dir = match &scratch.0 {
                Some(d) => d.clone(),
                None => {
                    let d = self.root.join(format!(".creds-{:016x}", fastrand::u64(..)));
                    std::fs::create_dir_all(&d)
                        .map_err(|e| GitError::Invalid(format!("{}: {e}", d.display())))?;
                    scratch.0 = Some(d.clone());
                    d
                }
            };
            let p = dir.join(name);
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            use std::io::Write;
            opts.open(&p)
                .and_then(|mut f| {
                    f.write_all(content.as_bytes())
                        .and_then(|_| f.write_all(b"\n"))
                })
                .map_err(|e| GitError::Invalid(format!("{}: {e}", p.display())))?;
            Ok(p)
        };
        if let Some(token) = creds.get("bearerToken") {
            config.push((
                "http.extraHeader".into(),
                format!("Authorization: Bearer {token}"),
            ));
        } else if let (Some(u), Some(p)) = (creds.get("username"), creds.get("password")) {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            config.push((
                "http.extraHeader".into(),
                format!("Authorization: Basic {basic}"),
            ));
        }
        if let Some(ca) = creds.get("ca.crt") {
            let p = file("ca.crt", &ca)?;
            config.push(("http.sslCAInfo".into(), p.display().to_string()));
        }
        if let Some(identity) = creds.get("identity") {
            let known = creds.get("known_hosts").ok_or_else(|| {
                GitError::Invalid("the Secret has an identity but no known_hosts".into())
            })?;
            let id = file("identity", &identity)?;
            let kh = file("known_hosts", &known)?;
            env.push((
                "GIT_SSH_COMMAND".into(),
                format!(
                    "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
                    id.display(),
                    kh.display()
                ),
            ));
        }
        env.push(("GIT_CONFIG_COUNT".into(), config.len().to_string()));
        for (i, (k, v)) in config.into_iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}"), k));
            env.push((format!("GIT_CONFIG_VALUE_{i}"), v));
        }
        Ok((env, scratch))
    }

    /// Runs git in `dir` (the cache), returning its standard output.
    async fn run(
        &self,
        dir: Option<&Path>,
        args: &[&str],
        env: &[(String, String)],
        stdin: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, GitError> {
        let command = args.first().copied().unwrap_or_default().to_string();
        let mut cmd = tokio::process::Command::new("git");
        if let Some(d) = dir {
            cmd.arg("--git-dir").arg(d);
        }
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| GitError::Failed {
            command: command.clone(),
            message: format!("cannot run git: {e}"),
        })?;
        let feed = stdin.map(|input| {
            let mut pipe = child.stdin.take().expect("piped");
            tokio::spawn(async move {
                let _ = pipe.write_all(&input).await;
            })
        });
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let work = async {
            let (mut o, mut e) = (Vec::new(), Vec::new());
            let (r1, r2) = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e));
            r1.and(r2)?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, o, e))
        };
        let (status, stdout, stderr) = match tokio::time::timeout(timeout, work).await {
            Err(_) => return Err(GitError::Timeout { command, timeout }),
            Ok(Err(e)) => {
                return Err(GitError::Failed {
                    command,
                    message: e.to_string(),
                });
            }
            Ok(Ok(r)) => r,
        };
        if let Some(f) = feed {
            f.abort();
        }
        if !status.success() {
            let text = String::from_utf8_lossy(&stderr);
            let message = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.trim().trim_start_matches("fatal: ").to_string())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(GitError::Failed {
                command,
                message: if message.is_empty() {
                    status.to_string()
                } else {
                    message
                },
            });
        }
        Ok(stdout)
    }

    /// Fetches what `git_ref` names from `url` into the cache.
    pub async fn fetch(
        &self,
        url: &str,
        git_ref: Option<&GitRef>,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Fetched, GitError> {
        if url.starts_with('-') {
            return Err(GitError::Invalid(format!(
                "{url:?} is not a repository URL"
            )));
        }
        let dir = self.cache_of(url);
        let lock = self.lock_of(&dir);
        let _held = lock.lock().await;
        let (env, _scratch) = self.environment(creds)?;
        if !dir.join("HEAD").exists() {
            std::fs::create_dir_all(&self.root)
                .map_err(|e| GitError::Invalid(format!("{}: {e}", self.root.display())))?;
            let d = dir.display().to_string();
            self.run(
                None,
                &["init", "--bare", "--quiet", &d],
                &env,
                None,
                timeout,
            )
            .await?;
        }
        let r = git_ref.cloned().unwrap_or_default();
        if let Some(commit) = &r.commit {
            let shallow = self
                .fetch_into(&dir, &env, url, commit, true, timeout)
                .await;
            if shallow.is_err() {
                // A server that will not hand out a commit by its name: the branches, whole.
                let all = "+refs/heads/*:refs/remotes/all/*";
                self.fetch_into(&dir, &env, url, all, false, timeout)
                    .await?;
            }
            let found = self
                .rev_parse(&dir, commit, &env, timeout)
                .await
                .map_err(|_| GitError::Invalid(format!("commit {commit} is not in {url}")))?;
            return Ok(Fetched {
                git_ref: commit.clone(),
                commit: found,
            });
        }
        let full = if let Some(range) = &r.semver {
            let out = self
                .run(
                    None,
                    &["ls-remote", "--tags", "--refs", "--end-of-options", url],
                    &env,
                    None,
                    timeout,
                )
                .await?;
            let text = String::from_utf8_lossy(&out);
            let tags: Vec<&str> = text
                .lines()
                .filter_map(|l| l.split('\t').nth(1)?.strip_prefix("refs/tags/"))
                .collect();
            let tag = highest_in_range(tags.iter().copied(), range)
                .map_err(GitError::Invalid)?
                .ok_or_else(|| {
                    GitError::Invalid(format!("no tag of {url} is in the range {range:?}"))
                })?;
            format!("refs/tags/{tag}")
        } else if let Some(tag) = &r.tag {
            format!("refs/tags/{tag}")
        } else if let Some(branch) = &r.branch {
            format!("refs/heads/{branch}")
        } else {
            let out = self
                .run(
                    None,
                    &["ls-remote", "--symref", "--end-of-options", url, "HEAD"],
                    &env,
                    None,
                    timeout,
                )
                .await?;
            let text = String::from_utf8_lossy(&out);
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("ref: ")?
                        .split('\t')
                        .next()
                        .map(str::to_string)
                })
                .ok_or_else(|| GitError::Invalid(format!("{url} names no default branch (HEAD)")))?
        };
        let refspec = format!("+{full}:{full}");
        self.fetch_into(&dir, &env, url, &refspec, true, timeout)
            .await?;
        let commit = self.rev_parse(&dir, &full, &env, timeout).await?;
        Ok(Fetched {
            git_ref: full,
            commit,
        })
    }

    /// `git fetch` of `refspec` from `url` into the cache `dir`, forced (history rewritten
    /// upstream is followed), without tags, one commit deep when `shallow`.
    async fn fetch_into(
        &self,
        dir: &Path,
        env: &[(String, String)],
        url: &str,
        refspec: &str,
        shallow: bool,
        timeout: Duration,
    ) -> Result<Vec<u8>, GitError> {
        let mut args = vec!["fetch", "--quiet", "--no-tags", "--force"];
        if shallow {
            args.extend(["--depth", "1"]);
        }
        args.extend(["--end-of-options", url, refspec]);
        self.run(Some(dir), &args, env, None, timeout).await
    }

    async fn rev_parse(
        &self,
        dir: &Path,
        what: &str,
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<String, GitError> {
        let spec = format!("{what}^{{commit}}");
        let out = self
            .run(
                Some(dir),
                &[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    "--end-of-options",
                    &spec,
                ],
                env,
                None,
                timeout,
            )
            .await?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    /// The manifest files (and kustomizations) of `commit` of `url`'s cache.
    pub async fn files(
        &self,
        url: &str,
        commit: &str,
        timeout: Duration,
    ) -> Result<Files, GitError> {
        let dir = self.cache_of(url);
        let lock = self.lock_of(&dir);
        let _held = lock.lock().await;
        let (env, _scratch) = self.environment(&Credentials::default())?;
        let listing = self
            .run(
                Some(&dir),
                &[
                    "ls-tree",
                    "-r",
                    "-z",
                    "--full-tree",
                    "--end-of-options",
                    commit,
                ],
                &env,
                None,
                timeout,
            )
            .await?;
        let mut wanted: Vec<(String, String)> = Vec::new();
        for entry in listing.split(|b| *b == 0).filter(|e| !e.is_empty()) {
            let entry = String::from_utf8_lossy(entry);
            let Some((meta, path)) = entry.split_once('\t') else {
                continue;
            };
            let mut parts = meta.split(' ');
            let (_mode, kind, sha) = (parts.next(), parts.next(), parts.next());
            let base = path.rsplit('/').next().unwrap_or(path);
            if kind == Some("blob") && (is_manifest_file(path) || base == "Kustomization") {
                wanted.push((sha.unwrap_or_default().to_string(), path.to_string()));
            }
        }
        let input: Vec<u8> = wanted
            .iter()
            .flat_map(|(sha, _)| format!("{sha}\n").into_bytes())
            .collect();
        let out = self
            .run(
                Some(&dir),
                &["cat-file", "--batch"],
                &env,
                Some(input),
                timeout,
            )
            .await?;
        let mut files = BTreeMap::new();
        let mut rest = &out[..];
        let mut total = 0usize;
        for (_, path) in &wanted {
            let nl = rest
                .iter()
                .position(|b| *b == b'\n')
                .ok_or_else(|| GitError::Invalid("cat-file: short output".into()))?;
            let header = String::from_utf8_lossy(&rest[..nl]).to_string();
            let size: usize = header
                .rsplit(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| GitError::Invalid(format!("cat-file: {header}")))?;
            let body = rest
                .get(nl + 1..nl + 1 + size)
                .ok_or_else(|| GitError::Invalid("cat-file: short output".into()))?;
            total += size;
            if total > MAX_FILES_BYTES {
                return Err(GitError::Invalid(format!(
                    "the commit's manifests exceed {} MiB",
                    MAX_FILES_BYTES >> 20
                )));
            }
            files.insert(path.clone(), String::from_utf8_lossy(body).into_owned());
            rest = rest.get(nl + 2 + size..).unwrap_or_default();
        }
        Ok(Files(files))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_ranges_pick_the_highest_matching_tag() {
        let tags = [
            "v1.0.0",
            "v1.2.0",
            "1.3.0-rc.1",
            "v2.0.0",
            "latest",
            "v1.10.1",
        ];
        assert_eq!(
            highest_in_range(tags, ">=1.0.0, <2.0.0").unwrap(),
            Some("v1.10.1")
        );
        assert_eq!(highest_in_range(tags, "^2").unwrap(), Some("v2.0.0"));
        assert_eq!(highest_in_range(tags, ">3").unwrap(), None);
        assert!(highest_in_range(tags, "not a range").is_err());
    }
}
