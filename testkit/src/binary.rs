//! Where the end-to-end suites find the `capstan` binary.
//!
//! Cargo hands `CARGO_BIN_EXE_<name>` only to tests of the package that owns the binary, and the
//! suites live in `e2e/`, not in `cli/`. So they run the binary cargo uplifted into the target
//! directory they were built in — `target/<profile>/capstan`, the parent of the `deps/` directory
//! a test executable runs from — which `cargo build -p capstan` (run first by `make test` and
//! `make e2e`) keeps current. `$CAPSTAN_BIN` overrides it (a release build, an installed binary);
//! it is then run as given.
//!
//! A stale binary must never be tested silently: next to the binary, cargo writes `capstan.d`,
//! the list of every source file it was built from (the dep-info that drives cargo's own
//! rebuilds). Finding the binary fails, saying how to rebuild, when that list is missing, names no
//! file of this checkout (another worktree sharing the target directory built it), or names a
//! file changed or removed since the binary was written. Manifest-only changes (features,
//! dependency versions) are not in the list; `make` rebuilds for those.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

const REBUILD: &str = "build it with `cargo build -p capstan` (`make test` and `make e2e` do), or point CAPSTAN_BIN at a capstan binary";

/// The capstan binary to run (see the module docs): `$CAPSTAN_BIN`, else the fresh
/// `target/<profile>/capstan`. Panics with what to do when it is missing or stale.
pub fn capstan_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        locate(std::env::var_os("CAPSTAN_BIN").map(PathBuf::from)).unwrap_or_else(|e| {
            panic!("no usable capstan binary: {e:#}");
        })
    })
}

fn locate(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(bin) = explicit {
        if !bin.is_file() {
            bail!("CAPSTAN_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let exe = std::env::current_exe().context("the test executable's path")?;
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} is not in a cargo target directory", exe.display()))?;
    let bin = profile_dir.join(format!("capstan{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!("{} does not exist: {REBUILD}", bin.display());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("testkit lies in the workspace")?;
    check_fresh(&bin, &profile_dir.join("capstan.d"), workspace)?;
    Ok(bin)
}

/// Fails unless `bin` was built from this checkout's sources as they are now, by `dep_info`.
fn check_fresh(bin: &Path, dep_info: &Path, workspace: &Path) -> Result<()> {
    let built = modified(bin)?;
    let text = std::fs::read_to_string(dep_info).with_context(|| {
        format!(
            "reading {} (cargo's list of the sources of {}): {REBUILD}",
            dep_info.display(),
            bin.display()
        )
    })?;
    let sources = dep_info_sources(&text);
    let ours: Vec<&PathBuf> = sources
        .iter()
        .filter(|p| p.starts_with(workspace))
        .collect();
    if ours.is_empty() {
        bail!(
            "{} was not built from {} (none of its {} sources is there; another checkout sharing the target directory built it): {REBUILD}",
            bin.display(),
            workspace.display(),
            sources.len()
        );
    }
    for source in ours {
        match modified(source) {
            Ok(changed) if changed <= built => {}
            Ok(_) => bail!(
                "{} is stale: {} changed after it was built; {REBUILD}",
                bin.display(),
                source.display()
            ),
            Err(_) => bail!(
                "{} is stale: {} was removed after it was built; {REBUILD}",
                bin.display(),
                source.display()
            ),
        }
    }
    Ok(())
}

fn modified(path: &Path) -> Result<SystemTime> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("modification time of {}", path.display()))
}

/// The prerequisites of the first rule of a makefile-syntax dep-info file (`target: a b c`), with
/// cargo's escapes undone (`\ ` is a space in a path, `\\` a backslash, `$$` a dollar).
fn dep_info_sources(text: &str) -> Vec<PathBuf> {
    let Some(rule) = text.lines().find(|l| !l.trim().is_empty()) else {
        return Vec::new();
    };
    // The target is the binary's own path: split at the first ": " that is not escaped.
    let Some(rest) = rule.split_once(": ").map(|(_, rest)| rest) else {
        return Vec::new();
    };
    let mut paths = Vec::new();
    let mut current = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some(' ' | '\\')) => {
                current.push(chars.next().unwrap_or(' '));
            }
            '$' if chars.peek() == Some(&'$') => {
                chars.next();
                current.push('$');
            }
            ' ' => {
                if !current.is_empty() {
                    paths.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        paths.push(PathBuf::from(current));
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_sources_are_the_first_rules_prerequisites_unescaped() {
        let text = "/t/debug/capstan: /w/cli/src/main.rs /w/my\\ dir/a.rs /w/c\\\\d.rs /w/$$x.rs\n\n/w/cli/src/main.rs:\n";
        assert_eq!(
            dep_info_sources(text),
            [
                "/w/cli/src/main.rs",
                "/w/my dir/a.rs",
                "/w/c\\d.rs",
                "/w/$x.rs"
            ]
            .map(PathBuf::from)
        );
        assert!(dep_info_sources("").is_empty());
    }

    /// A checkout with one source, a binary and its dep-info, the times set explicitly.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = crate::temp_dir("capstan-binary-").unwrap();
            std::fs::create_dir_all(dir.path().join("ws/cli/src")).unwrap();
            std::fs::create_dir_all(dir.path().join("target/debug")).unwrap();
            let f = Fixture { dir };
            std::fs::write(f.source(), "fn main() {}").unwrap();
            std::fs::write(f.bin(), "binary").unwrap();
            std::fs::write(
                f.dep_info(),
                format!(
                    "{}: {} /registry/serde/src/lib.rs\n",
                    f.bin().display(),
                    f.source().display()
                ),
            )
            .unwrap();
            f.touch(&f.source(), 100);
            f.touch(&f.bin(), 200);
            f
        }
        fn workspace(&self) -> PathBuf {
            self.dir.path().join("ws")
        }
        fn source(&self) -> PathBuf {
            self.workspace().join("cli/src/main.rs")
        }
        fn bin(&self) -> PathBuf {
            self.dir.path().join("target/debug/capstan")
        }
        fn dep_info(&self) -> PathBuf {
            self.dir.path().join("target/debug/capstan.d")
        }
        fn touch(&self, path: &Path, secs: u64) {
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + secs);
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        fn check(&self) -> Result<()> {
            check_fresh(&self.bin(), &self.dep_info(), &self.workspace())
        }
    }

    #[test]
    fn a_binary_newer_than_its_sources_is_fresh() {
        Fixture::new().check().unwrap();
    }

    #[test]
    fn a_source_changed_after_the_build_makes_the_binary_stale() {
        let f = Fixture::new();
        f.touch(&f.source(), 300);
        let e = f.check().unwrap_err().to_string();
        assert!(
            e.contains("stale") && e.contains("main.rs") && e.contains("cargo build -p capstan"),
            "{e}"
        );
    }

    #[test]
    fn a_source_removed_after_the_build_makes_the_binary_stale() {
        let f = Fixture::new();
        std::fs::remove_file(f.source()).unwrap();
        let e = f.check().unwrap_err().to_string();
        assert!(e.contains("removed"), "{e}");
    }

    #[test]
    fn a_binary_built_from_another_checkout_is_refused() {
        let f = Fixture::new();
        let e = check_fresh(&f.bin(), &f.dep_info(), &f.dir.path().join("other"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("another checkout"), "{e}");
    }

    #[test]
    fn a_binary_without_dep_info_is_refused() {
        let f = Fixture::new();
        std::fs::remove_file(f.dep_info()).unwrap();
        let e = format!("{:#}", f.check().unwrap_err());
        assert!(e.contains("capstan.d"), "{e}");
    }

    #[test]
    fn a_missing_override_is_refused_by_name() {
        let e = locate(Some(PathBuf::from("/nonexistent/capstan")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CAPSTAN_BIN=/nonexistent/capstan"), "{e}");
    }
}
