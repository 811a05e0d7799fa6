//! The capstan image (`capstan image build`): the capstan binary itself as an OCI image, for
//! running Capstan's controllers as pods (the Helm chart in charts/capstan), made like the
//! pause image — no registry, no Docker, no image tools.
//!
//! Beside `/capstan` and the shared objects it loaded, the layer holds the programs the
//! controllers run: git (the GitOps controller fetches with Debian's git, `--exec-path`'s
//! helpers for https and `git-upload-pack` for file:// with it), `/bin/sh` (git runs its local
//! transport through the shell) and ssh when the host has it, each with the shared objects
//! `ldd` finds for it and its ELF interpreter; the CA bundle for https remotes; the time zone
//! database (/usr/share/zoneinfo: schedules name their zones, and Capstan reads them there); an
//! /etc/passwd naming the user it runs as (65532, "nonroot" as distroless images call it);
//! and a world-writable /tmp (HOME, and the GitOps cache's default).
//! Files the host holds twice (hardlinks, as git's helpers are) are stored once, the others as
//! symlinks to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::loaded::file_id;
use super::{Entry, Image, PauseImageError, image_path, io};
use crate::containerd::which;

/// The user the capstan image runs as.
pub const CAPSTAN_USER: &str = "65532:65532";

/// Where the host keeps the CA bundle (Debian's ca-certificates); taken when present.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The time zone database (Debian's tzdata); taken when present.
const ZONEINFO: &str = "/usr/share/zoneinfo";

impl Image {
    /// The capstan image of the running binary, with `programs` (host paths: git and its
    /// helpers, sh, ssh; see [`Image::default_programs`]) and their libraries.
    /// With `strip`, `/capstan` is this binary without its debug sections (binutils' `strip
    /// --strip-debug`, symbols kept for backtraces: a release build's 377 MB become 84 MB);
    /// without binutils it is taken whole.
    pub fn of_capstan(programs: &[PathBuf], strip: bool) -> Result<Image, PauseImageError> {
        let mut image = Image::of_this_binary()?;
        if strip {
            match stripped_self()? {
                Some(file) => image.add_open_file("/capstan", file)?,
                None => tracing::warn!(
                    "no strip (binutils) on PATH: the image holds the binary with its debug sections"
                ),
            }
        }
        image.entrypoint = vec!["/capstan".to_string()];
        image.user = CAPSTAN_USER.to_string();
        image.created_by = format!(
            "capstan {} (capstan image build)",
            env!("CARGO_PKG_VERSION")
        );
        let mut lib_dirs: Vec<String> = image
            .env
            .iter()
            .find_map(|e| e.strip_prefix("LD_LIBRARY_PATH="))
            .map(|dirs| dirs.split(':').map(str::to_string).collect())
            .unwrap_or_default();
        let mut seen = Seen::default();
        for (path, entry) in &image.entries {
            if let Entry::File { file, .. } = entry {
                seen.by_id.insert(
                    file_id(file).map_err(io(format!("reading {path}")))?,
                    path.clone(),
                );
            }
        }
        for program in programs {
            image.add_host_path(program, &mut seen)?;
            for lib in ldd(program)? {
                if let Some(dir) = lib.parent().map(|d| d.display().to_string())
                    && !lib_dirs.contains(&dir)
                {
                    lib_dirs.push(dir);
                }
                image.add_host_path(&lib, &mut seen)?;
            }
        }
        if Path::new(CA_BUNDLE).exists() {
            image.add_host_path(Path::new(CA_BUNDLE), &mut seen)?;
        }
        if Path::new(ZONEINFO).is_dir() {
            image.add_host_tree(Path::new(ZONEINFO), &mut seen)?;
        }
        image.entries.insert(
            "etc/passwd".into(),
            Entry::Bytes(
                b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n"
                    .to_vec(),
            ),
        );
        image.entries.insert(
            "etc/group".into(),
            Entry::Bytes(b"root:x:0:\nnonroot:x:65532:\n".to_vec()),
        );
        image
            .entries
            .insert("tmp".into(), Entry::Dir { mode: 0o1777 });
        image.env = vec![
            "PATH=/usr/local/bin:/usr/bin:/bin:/".to_string(),
            "HOME=/tmp".to_string(),
            // What `capstan controllers` would re-exec itself with (cli/src/main.rs).
            "MIMALLOC_ARENA_EAGER_COMMIT=0".to_string(),
            format!("LD_LIBRARY_PATH={}", lib_dirs.join(":")),
        ];
        if Path::new(CA_BUNDLE).exists() {
            image.env.push(format!("SSL_CERT_FILE={CA_BUNDLE}"));
        }
        Ok(image)
    }

    /// What the controllers run, found on this host: the `git` on PATH, its `git-remote-http`,
    /// `git-remote-https` and `git-upload-pack`, `/bin/sh`, and `ssh` if there is one. An
    /// error names what is missing (git is needed: the GitOps controller cannot work without).
    pub fn default_programs() -> Result<Vec<PathBuf>, PauseImageError> {
        let git = which("git").ok_or_else(|| {
            PauseImageError::Invalid(
                "git is not on PATH: the image's GitOps controller needs it (apt-get install git)"
                    .into(),
            )
        })?;
        let out = std::process::Command::new(&git)
            .arg("--exec-path")
            .output()
            .map_err(io(format!("running {} --exec-path", git.display())))?;
        let exec_path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let mut programs = vec![git];
        for helper in ["git-remote-http", "git-remote-https", "git-upload-pack"] {
            let p = exec_path.join(helper);
            if !p.exists() {
                return Err(PauseImageError::Invalid(format!(
                    "{} is missing: git cannot fetch without it",
                    p.display()
                )));
            }
            programs.push(p);
        }
        programs.push(PathBuf::from("/bin/sh"));
        if let Some(ssh) = which("ssh") {
            programs.push(ssh);
        }
        Ok(programs)
    }

    /// Adds the host's `path` at the same path: a symlink as a symlink (and what it points
    /// at), a file held twice (a hardlink) as a symlink to the first copy.
    fn add_host_path(&mut self, path: &Path, seen: &mut Seen) -> Result<(), PauseImageError> {
        let at = image_path(path)?;
        if self.entries.contains_key(&at) || !seen.visiting.insert(at.clone()) {
            return Ok(());
        }
        let meta =
            std::fs::symlink_metadata(path).map_err(io(format!("reading {}", path.display())))?;
        if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(path).map_err(io(format!("reading {}", path.display())))?;
            let (resolved, link) = match path.parent() {
                Some(dir) if target.is_relative() => {
                    let real_dir = std::fs::canonicalize(dir)
                        .map_err(io(format!("resolving {}", dir.display())))?;
                    let resolved = lexical(&real_dir.join(&target));
                    // In a directory reached through a symlink (/lib → usr/lib), the link
                    // is relative to where it really is: in the image it names that place.
                    let link = if real_dir == dir {
                        target.clone()
                    } else {
                        resolved.clone()
                    };
                    (resolved, link)
                }
                _ => (lexical(&target), target.clone()),
            };
            self.add_symlink(path, &link)?;
            if resolved.is_dir() {
                // A link to a directory (zoneinfo's `posix -> .`): what it holds is added
                // by the walk of the tree, if at all.
                return Ok(());
            }
            return self.add_host_path(&resolved, seen);
        }
        // A parent directory that is a symlink on the host (/bin → usr/bin, /lib → usr/lib):
        // the file goes where it really is, and the path it was asked by becomes a symlink.
        let real =
            std::fs::canonicalize(path).map_err(io(format!("resolving {}", path.display())))?;
        if real != path {
            self.add_symlink(path, &real)?;
            return self.add_host_path(&real, seen);
        }
        let file = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
        let id = file_id(&file).map_err(io(format!("reading {}", path.display())))?;
        if let Some(first) = seen.by_id.get(&id) {
            let target = PathBuf::from(format!("/{first}"));
            return self.add_symlink(path, &target);
        }
        seen.by_id.insert(id, at);
        self.add_open_file(&path.display().to_string(), file)
    }
}

impl Image {
    /// Adds every file and symlink under the host directory `dir`, at the same paths.
    fn add_host_tree(&mut self, dir: &Path, seen: &mut Seen) -> Result<(), PauseImageError> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(format!("reading {}", dir.display())))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io(format!("reading {}", dir.display())))?;
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path)
                .map_err(io(format!("reading {}", path.display())))?;
            if meta.is_dir() {
                self.add_host_tree(&path, seen)?;
            } else if meta.is_file() || meta.file_type().is_symlink() {
                self.add_host_path(&path, seen)?;
            }
        }
        Ok(())
    }
}

/// What [`Image::add_host_path`] has met: files by identity, paths on the way (a symlink loop
/// ends).
#[derive(Default)]
struct Seen {
    by_id: BTreeMap<super::loaded::FileId, String>,
    visiting: std::collections::BTreeSet<String>,
}

/// This binary without debug sections, as an open file whose name is already gone; None
/// when there is no `strip`.
fn stripped_self() -> Result<Option<std::fs::File>, PauseImageError> {
    let Some(strip) = which("strip") else {
        return Ok(None);
    };
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_path =
        std::env::temp_dir().join(format!("capstan-image-{}-{n}.strip", std::process::id()));
    let result = std::process::Command::new(strip)
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out_path)
        // This process's executable (strip's own /proc/self would be strip).
        .arg(format!("/proc/{}/exe", std::process::id()))
        .output()
        .map_err(io("running strip"));
    let opened = match result {
        Ok(o) if o.status.success() => std::fs::File::open(&out_path)
            .map(Some)
            .map_err(io(format!("opening {}", out_path.display()))),
        Ok(o) => Err(PauseImageError::Invalid(format!(
            "strip --strip-debug: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&out_path);
    opened
}

/// `path` with `.` and `..` taken out by their names alone (its directory is a real one).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The shared objects `program` loads and its interpreter, as `ldd` resolves them on this host.
fn ldd(program: &Path) -> Result<Vec<PathBuf>, PauseImageError> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .map_err(io(format!("running ldd {}", program.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static program: ldd says so and fails; it needs nothing.
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(PauseImageError::Invalid(format!(
            "ldd {}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_ldd(&text).map_err(|line| {
        PauseImageError::Invalid(format!(
            "{} needs a library this host lacks: {line}",
            program.display()
        ))
    })
}

/// The paths in ldd's answer (`libz.so.1 => /lib/…/libz.so.1 (0x…)` and the interpreter's
/// `/lib64/ld-linux-x86-64.so.2 (0x…)`); the vDSO has none. A `not found` is the line's error.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("=> not found") {
            return Err(line.to_string());
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (0x").next().unwrap_or("").trim();
        if path.starts_with('/') {
            out.push(PathBuf::from(path));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_the_library_paths_and_the_interpreter() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007fa3)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fa2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007fa1)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        let missing = "\tlibfoo.so.2 => not found\n";
        assert_eq!(parse_ldd(missing).unwrap_err(), "libfoo.so.2 => not found");
    }

    /// The image of this test binary with sh: sh is there (a symlink where the host has one,
    /// the file where it really is), with its libraries; /tmp is world-writable and sticky;
    /// the user and the entrypoint are the capstan image's.
    #[test]
    fn the_capstan_image_holds_the_programs_their_libraries_and_a_user() {
        let image = Image::of_capstan(&[PathBuf::from("/bin/sh")], false).unwrap();
        assert_eq!(image.entrypoint, ["/capstan"]);
        assert_eq!(image.user, CAPSTAN_USER);
        let real = std::fs::canonicalize("/bin/sh").unwrap();
        let real = image_path(&real).unwrap();
        assert!(
            matches!(image.entries.get(&real), Some(Entry::File { .. })),
            "{real} is not a file in the image"
        );
        if std::fs::symlink_metadata("/bin/sh")
            .unwrap()
            .file_type()
            .is_symlink()
        {
            assert!(matches!(
                image.entries.get("bin/sh"),
                Some(Entry::Symlink { .. })
            ));
        }
        for lib in ldd(Path::new("/bin/sh")).unwrap() {
            let at = image_path(&lib).unwrap();
            assert!(image.entries.contains_key(&at), "{at} is missing");
        }
        assert!(matches!(
            image.entries.get("tmp"),
            Some(Entry::Dir { mode: 0o1777 })
        ));
        let passwd = match image.entries.get("etc/passwd") {
            Some(Entry::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("etc/passwd: {other:?}"),
        };
        assert!(passwd.contains(":65532:65532:"), "{passwd}");
        let ld = image
            .env
            .iter()
            .find(|e| e.starts_with("LD_LIBRARY_PATH="))
            .unwrap();
        for lib in ldd(Path::new("/bin/sh")).unwrap() {
            let dir = lib.parent().unwrap().display().to_string();
            assert!(ld.split([':', '=']).any(|d| d == dir), "{dir} not in {ld}");
        }
    }

    /// A tree with a link to itself (as zoneinfo's `posix -> .`) and a hardlink: every file
    /// once, the links as links, no endless walk.
    #[test]
    fn a_tree_is_added_with_its_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("Asia")).unwrap();
        std::fs::write(d.join("Asia/Seoul"), b"TZif").unwrap();
        std::fs::hard_link(d.join("Asia/Seoul"), d.join("ROK")).unwrap();
        std::os::unix::fs::symlink(".", d.join("posix")).unwrap();
        let mut image = Image::default();
        image.add_host_tree(d, &mut Seen::default()).unwrap();
        let at = |p: &str| image_path(&d.join(p)).unwrap();
        assert!(matches!(
            image.entries.get(&at("Asia/Seoul")),
            Some(Entry::File { .. })
        ));
        assert!(matches!(
            image.entries.get(&at("ROK")),
            Some(Entry::Symlink { .. })
        ));
        match image.entries.get(&at("posix")) {
            Some(Entry::Symlink { target }) => assert_eq!(target, "."),
            other => panic!("posix: {other:?}"),
        }
        let files = image
            .entries
            .values()
            .filter(|e| matches!(e, Entry::File { .. }))
            .count();
        assert_eq!(files, 1);
    }

    /// Every symlink of the image leads to a file or directory of the image, following
    /// links the way the kernel would inside it.
    #[test]
    fn every_link_in_the_capstan_image_resolves_inside_it() {
        let programs = Image::default_programs().unwrap();
        let image = Image::of_capstan(&programs, true).unwrap();
        let resolve = |start: &str| -> Option<String> {
            let mut at = start.to_string();
            for _ in 0..40 {
                match image.entries.get(&at)? {
                    Entry::Symlink { target } => {
                        let base = Path::new("/").join(&at);
                        let next = if target.starts_with('/') {
                            PathBuf::from(target)
                        } else {
                            base.parent().unwrap().join(target)
                        };
                        at = image_path(&lexical(&next)).ok()?;
                    }
                    _ => return Some(at),
                }
            }
            None
        };
        for (path, entry) in &image.entries {
            if matches!(entry, Entry::Symlink { .. }) {
                assert!(resolve(path).is_some(), "{path} leads nowhere in the image");
            }
        }
    }

    /// With binutils, `/capstan` loses its debug sections (a test binary has plenty).
    #[test]
    fn the_binary_is_stripped_of_debug_sections() {
        if which("strip").is_none() {
            eprintln!("SKIPPED: no strip (binutils)");
            return;
        }
        let whole = std::fs::metadata("/proc/self/exe").unwrap().len();
        let image = Image::of_capstan(&[], true).unwrap();
        let Some(Entry::File { file, size }) = image.entries.get("capstan") else {
            panic!("no /capstan file");
        };
        assert!(*size < whole, "{size} ≥ {whole}");
        // And it is this program still: the stripped test binary lists this test.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("stripped");
        let mut f = file;
        std::io::Seek::rewind(&mut f).unwrap();
        std::io::copy(&mut f, &mut std::fs::File::create(&copy).unwrap()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new(&copy)
            .args(["--list", "--format", "terse"])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            listed.contains("the_binary_is_stripped_of_debug_sections"),
            "{listed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let image = Image::of_capstan(&[], false).unwrap();
        match image.entries.get("capstan") {
            Some(Entry::File { size, .. }) => assert_eq!(*size, whole),
            other => panic!("capstan: {other:?}"),
        }
    }

    /// Two names of one file: stored once, the second a symlink to the first.
    #[test]
    fn a_file_held_twice_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"#!/bin/sh\n").unwrap();
        std::fs::hard_link(&a, &b).unwrap();
        let mut image = Image::default();
        let mut seen = Seen::default();
        image.add_host_path(&a, &mut seen).unwrap();
        image.add_host_path(&b, &mut seen).unwrap();
        let (ia, ib) = (image_path(&a).unwrap(), image_path(&b).unwrap());
        assert!(matches!(image.entries.get(&ia), Some(Entry::File { .. })));
        match image.entries.get(&ib) {
            Some(Entry::Symlink { target }) => assert_eq!(target, &format!("/{ia}")),
            other => panic!("{ib}: {other:?}"),
        }
    }
}
