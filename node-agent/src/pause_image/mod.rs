//! Capstan's own pause image: the counterpart of Kubernetes' `build/pause` (pause.c in a
//! `FROM scratch` image, published as registry.k8s.io/pause), made here, in process, so that a
//! node needs no registry, no image tools and no compiler to start its first pod.
//!
//! The image's one program is the capstan binary itself, run as `capstan pause` (sleeps until
//! SIGTERM or SIGINT, then exits 0; reaps the orphans of a shared process namespace). The
//! binary is dynamically linked, so the layer also holds the shared objects this process has
//! loaded (read from `/proc/self/maps`, at their paths) and its ELF interpreter (`PT_INTERP`,
//! a symlink to the loaded one where the paths differ); `LD_LIBRARY_PATH` names their
//! directories, since the image has no `ld.so.cache`.
//!
//! The archive is an OCI image layout in a tar (`oci-layout`, `index.json`, and under
//! `blobs/sha256/` the manifest, the config and one uncompressed tar layer), the form
//! containerd's `ctr images import` takes ([`crate::containerd::import`]). It is written in two
//! passes over files held open (the layer's digest must be known before the layer is written),
//! so nothing large is held in memory, and the same binary always makes the same image.
//! Beside this file: [`loaded`] (what the binary needs to run: its ELF interpreter and the
//! shared objects it loaded), [`ustar`] (the tar writer) and [`capstan_image`] (the same
//! builder making the capstan image the Helm chart runs, `capstan image build`).
//!
//! It is the fallback, not the lightest pause: its layer is the binary's size (136 MB for a
//! debug build: ~4 s to build and import here, once per containerd) and each pod's pause
//! holds a few MiB (3 MiB anonymous, plus the pages its relocations dirty) where pause.c's
//! static binary holds kilobytes; e2e/images/build.sh still makes that one when gcc is there.

mod capstan_image;
mod loaded;
mod ustar;

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::runtime::Runtime;
use loaded::{elf_interpreter, file_id, loaded_objects};
use ustar::{Kind, Tar};

/// The image's command: the binary at the root, with the hidden subcommand.
pub const ENTRYPOINT: [&str; 2] = ["/capstan", "pause"];

/// What Kubernetes' pause image runs as (nobody needs more).
const USER: &str = "65535:65535";

#[derive(Debug, thiserror::Error)]
pub enum PauseImageError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Something this builder cannot put into an image (an unreadable binary, a path too long
    /// for a tar header, a file that changed while it was read).
    #[error("{0}")]
    Invalid(String),
    #[error("importing the pause image: {0}")]
    Import(#[from] crate::containerd::ContainerdError),
    #[error("asking the runtime about the pause image: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
}

pub(super) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PauseImageError {
    let context = context.into();
    move |source| PauseImageError::Io { context, source }
}

/// Makes sure the runtime has `image`, the sandbox image its pods start with: when ImageStatus
/// does not find it, builds the pause image of this binary under that name in `work_dir`
/// and imports it into containerd at `socket` (then removes the archive). True when it had
/// to.
pub async fn ensure<R: Runtime>(
    rt: &R,
    socket: &Path,
    image: &str,
    work_dir: &Path,
) -> Result<bool, PauseImageError> {
    if rt.image_status(image).await?.is_some() {
        return Ok(false);
    }
    if !socket.exists() {
        return Err(PauseImageError::Invalid(format!(
            "the sandbox image {image:?} is missing, and there is no containerd socket at {} to import one into",
            socket.display()
        )));
    }
    let started = std::time::Instant::now();
    tracing::info!(
        image,
        "the sandbox image is missing: building Capstan's own pause image"
    );
    std::fs::create_dir_all(work_dir).map_err(io(format!("creating {}", work_dir.display())))?;
    let archive = work_dir.join("pause-image.tar");
    let (name, path) = (image.to_string(), archive.clone());
    let built = tokio::task::spawn_blocking(move || -> Result<u64, PauseImageError> {
        let image = Image::of_this_binary()?;
        let file =
            std::fs::File::create(&path).map_err(io(format!("creating {}", path.display())))?;
        let mut out = std::io::BufWriter::new(file);
        image.write_archive(&name, &mut out)?;
        out.flush()
            .map_err(io(format!("writing {}", path.display())))?;
        Ok(image.layer_size())
    })
    .await
    .map_err(|e| PauseImageError::Invalid(format!("building the pause image: {e}")));
    let imported = match built {
        Ok(Ok(size)) => crate::containerd::import(socket, std::slice::from_ref(&archive))
            .await
            .map(|_| size)
            .map_err(PauseImageError::from),
        Ok(Err(e)) | Err(e) => Err(e),
    };
    if let Err(e) = std::fs::remove_file(&archive)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(archive = %archive.display(), error = %e, "removing the pause image archive");
    }
    let size = imported?;
    if rt.image_status(image).await?.is_none() {
        return Err(PauseImageError::Invalid(format!(
            "the pause image was imported, but the runtime does not find {image:?} (CRI sees only normalized names in containerd's k8s.io namespace)"
        )));
    }
    tracing::info!(
        image,
        layer_bytes = size,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "pause image imported"
    );
    Ok(true)
}

/// One entry of the layer, by its path in the image (relative, no leading `/`).
#[derive(Debug)]
enum Entry {
    Dir {
        mode: u32,
    },
    /// A small file made here (/etc/passwd).
    Bytes(Vec<u8>),
    /// A regular file, held open so both passes read the same bytes.
    File {
        file: std::fs::File,
        size: u64,
    },
    Symlink {
        target: String,
    },
}

/// The image: its filesystem (one layer) and how it runs.
#[derive(Debug, Default)]
pub struct Image {
    entries: BTreeMap<String, Entry>,
    entrypoint: Vec<String>,
    env: Vec<String>,
    /// The user it runs as (`UID:GID`).
    user: String,
    /// What its history says made it.
    created_by: String,
}

impl Image {
    /// The pause image of the running binary: `/capstan` (this process's executable), the
    /// shared objects it has loaded and its interpreter; `capstan pause` as the entrypoint.
    pub fn of_this_binary() -> Result<Image, PauseImageError> {
        let exe_path = Path::new("/proc/self/exe");
        // The executable as it runs (even if its file was replaced since).
        let exe = std::fs::File::open(exe_path).map_err(io("opening /proc/self/exe"))?;
        let exe_id = file_id(&exe).map_err(io("reading /proc/self/exe"))?;
        let interp = elf_interpreter(&exe)?;
        let mut image = Image::default();
        image.add_open_file(ENTRYPOINT[0], exe)?;
        let maps =
            std::fs::read_to_string("/proc/self/maps").map_err(io("reading /proc/self/maps"))?;
        let mut lib_dirs = Vec::new();
        for lib in loaded_objects(&maps, exe_id)? {
            if let Some(dir) = lib.parent()
                && !lib_dirs.contains(&dir.to_path_buf())
            {
                lib_dirs.push(dir.to_path_buf());
            }
            image.add_file(&lib)?;
        }
        if let Some(interp) = interp {
            let loaded = std::fs::canonicalize(&interp).map_err(io(format!(
                "resolving the interpreter {}",
                interp.display()
            )))?;
            if !image.entries.contains_key(&image_path(&loaded)?) {
                image.add_file(&loaded)?;
            }
            if loaded != interp {
                image.add_symlink(&interp, &loaded)?;
            }
        }
        lib_dirs.sort();
        image.entrypoint = ENTRYPOINT.iter().map(|s| s.to_string()).collect();
        image.user = USER.to_string();
        image.created_by = format!("capstan {} (its pause image)", env!("CARGO_PKG_VERSION"));
        // mimalloc (capstan's allocator) commits its arenas lazily: 9 → 3 MiB of anonymous
        // memory in every pod's pause (measured).
        image.env = vec![
            "PATH=/".to_string(),
            "MIMALLOC_ARENA_EAGER_COMMIT=0".to_string(),
        ];
        if !lib_dirs.is_empty() {
            let dirs: Vec<String> = lib_dirs.iter().map(|d| d.display().to_string()).collect();
            image
                .env
                .push(format!("LD_LIBRARY_PATH={}", dirs.join(":")));
        }
        Ok(image)
    }

    /// Adds the host file `path` at the same path in the image.
    fn add_file(&mut self, path: &Path) -> Result<(), PauseImageError> {
        let file = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
        self.add_open_file(&path.display().to_string(), file)
    }

    fn add_open_file(&mut self, at: &str, file: std::fs::File) -> Result<(), PauseImageError> {
        let meta = file.metadata().map_err(io(format!("reading {at}")))?;
        if !meta.is_file() {
            return Err(PauseImageError::Invalid(format!(
                "{at} is not a regular file"
            )));
        }
        let path = image_path(Path::new(at))?;
        self.add_parents(&path);
        self.entries.insert(
            path,
            Entry::File {
                file,
                size: meta.len(),
            },
        );
        Ok(())
    }

    fn add_symlink(&mut self, at: &Path, target: &Path) -> Result<(), PauseImageError> {
        let path = image_path(at)?;
        self.add_parents(&path);
        self.entries.insert(
            path,
            Entry::Symlink {
                target: target.display().to_string(),
            },
        );
        Ok(())
    }

    fn add_parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            self.entries
                .entry(path[..at + i].to_string())
                .or_insert(Entry::Dir { mode: 0o755 });
            at += i + 1;
        }
    }

    /// The layer's size in bytes: a 512-byte header per entry, file contents padded to
    /// 512 bytes, two zero blocks at the end.
    pub fn layer_size(&self) -> u64 {
        let data: u64 = self
            .entries
            .values()
            .map(|e| match e {
                Entry::File { size, .. } => size.div_ceil(512) * 512,
                Entry::Bytes(b) => (b.len() as u64).div_ceil(512) * 512,
                _ => 0,
            })
            .sum();
        512 * self.entries.len() as u64 + data + 1024
    }

    /// Writes the layer (a tar of the entries, in path order, owned by root, time 0).
    fn write_layer(&self, out: &mut dyn Write) -> Result<(), PauseImageError> {
        let mut tar = Tar::new(out);
        for (path, entry) in &self.entries {
            match entry {
                Entry::Dir { mode } => tar.header(&format!("{path}/"), Kind::Dir, 0, *mode, "")?,
                Entry::Bytes(bytes) => tar.file(path, bytes)?,
                Entry::Symlink { target } => tar.header(path, Kind::Symlink, 0, 0o777, target)?,
                Entry::File { file, size } => {
                    tar.header(path, Kind::File, *size, 0o755, "")?;
                    let mut f = file;
                    f.rewind().map_err(io(format!("reading {path}")))?;
                    let copied = std::io::copy(&mut f.take(*size), &mut tar.out)
                        .map_err(io(format!("copying {path}")))?;
                    if copied != *size {
                        return Err(PauseImageError::Invalid(format!(
                            "{path} changed while the pause image was made ({size} bytes, then {copied})"
                        )));
                    }
                    tar.pad(*size)?;
                }
            }
        }
        tar.finish()
    }

    /// Writes the OCI image layout archive, the image named `name` (a normalized reference
    /// such as `localhost/pause:1`).
    pub fn write_archive(&self, name: &str, out: &mut dyn Write) -> Result<(), PauseImageError> {
        // Pass one: the layer's digest (it is also the diff ID: the layer is uncompressed).
        let mut hashing = Hashing::default();
        self.write_layer(&mut hashing)?;
        let layer_size = self.layer_size();
        if hashing.len != layer_size {
            return Err(PauseImageError::Invalid(format!(
                "the layer came to {} bytes, not {layer_size}",
                hashing.len
            )));
        }
        let layer = Blob::described(hashing.digest(), layer_size);
        let config = serde_json::json!({
            "created": "1970-01-01T00:00:00Z",
            "architecture": oci_architecture()?,
            "os": "linux",
            "config": {
                "User": self.user,
                "Entrypoint": self.entrypoint,
                "Env": self.env,
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
            "history": [{
                "created": "1970-01-01T00:00:00Z",
                "created_by": self.created_by,
            }],
        });
        let config = Blob::of(serde_json::to_vec(&config).map_err(json)?);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config.digest, "size": config.size},
            "layers": [{"mediaType": LAYER, "digest": layer.digest, "size": layer.size}],
        });
        let manifest = Blob::of(serde_json::to_vec(&manifest).map_err(json)?);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": MANIFEST,
                "digest": manifest.digest,
                "size": manifest.size,
                "annotations": {
                    // containerd's name for it, and OCI's.
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name,
                },
            }],
        });
        let index = serde_json::to_vec(&index).map_err(json)?;
        // Pass two: the archive.
        let mut tar = Tar::new(out);
        tar.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        tar.file("index.json", &index)?;
        tar.header("blobs/", Kind::Dir, 0, 0o755, "")?;
        tar.header("blobs/sha256/", Kind::Dir, 0, 0o755, "")?;
        for blob in [&config, &manifest] {
            tar.file(&blob.path(), &blob.bytes)?;
        }
        tar.header(&layer.path(), Kind::File, layer.size, 0o644, "")?;
        self.write_layer(&mut tar.out)?;
        tar.pad(layer.size)?;
        tar.finish()
    }
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn json(e: serde_json::Error) -> PauseImageError {
    PauseImageError::Invalid(format!("encoding the image's JSON: {e}"))
}

/// A content-addressed blob: its digest (`sha256:…`), size and, when small, its bytes.
struct Blob {
    digest: String,
    size: u64,
    bytes: Vec<u8>,
}

impl Blob {
    fn of(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: sha256(Sha256::digest(&bytes).as_slice()),
            size: bytes.len() as u64,
            bytes,
        }
    }

    fn described(digest: String, size: u64) -> Blob {
        Blob {
            digest,
            size,
            bytes: Vec::new(),
        }
    }

    /// Its path in the layout: `blobs/sha256/<hex>`.
    fn path(&self) -> String {
        format!("blobs/sha256/{}", self.digest.trim_start_matches("sha256:"))
    }
}

fn sha256(hash: &[u8]) -> String {
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A writer that only hashes and counts.
#[derive(Default)]
struct Hashing {
    hash: Sha256,
    len: u64,
}

impl Hashing {
    fn digest(self) -> String {
        sha256(self.hash.finalize().as_slice())
    }
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hash.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// OCI's name for this machine's architecture (Go's GOARCH).
fn oci_architecture() -> Result<&'static str, PauseImageError> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => {
            return Err(PauseImageError::Invalid(format!(
                "no OCI name for the architecture {other}"
            )));
        }
    })
}

/// A path as the layer holds it: relative, normal components only.
fn image_path(path: &Path) -> Result<String, PauseImageError> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::RootDir => {}
            std::path::Component::Normal(p) => parts.push(p.to_str().ok_or_else(|| {
                PauseImageError::Invalid(format!("{} is not UTF-8", path.display()))
            })?),
            _ => {
                return Err(PauseImageError::Invalid(format!(
                    "{} is not a plain absolute path",
                    path.display()
                )));
            }
        }
    }
    if parts.is_empty() {
        return Err(PauseImageError::Invalid("an empty path".into()));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ustar::untar;

    fn json_of(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    /// An image of two small files and a symlink, as of_this_binary lays them out.
    fn small_image(dir: &Path) -> Image {
        let (exe, lib) = (dir.join("exe"), dir.join("libfoo.so.1"));
        std::fs::write(&exe, b"#!not really a program\n").unwrap();
        std::fs::write(&lib, vec![7u8; 1000]).unwrap();
        let mut image = Image::default();
        image
            .add_open_file("/capstan", std::fs::File::open(&exe).unwrap())
            .unwrap();
        image
            .add_open_file("/usr/lib/x/libfoo.so.1", std::fs::File::open(&lib).unwrap())
            .unwrap();
        image
            .add_symlink(
                Path::new("/lib64/ld.so"),
                Path::new("/usr/lib/x/libfoo.so.1"),
            )
            .unwrap();
        image.entrypoint = ENTRYPOINT.iter().map(|s| s.to_string()).collect();
        image.user = USER.to_string();
        image.created_by = format!("capstan {} (its pause image)", env!("CARGO_PKG_VERSION"));
        image.env = vec!["PATH=/".into(), "LD_LIBRARY_PATH=/usr/lib/x".into()];
        image
    }

    #[test]
    fn the_archive_is_an_oci_layout_whose_digests_match_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let image = small_image(dir.path());
        let mut archive = Vec::new();
        image
            .write_archive("localhost/pause:1", &mut archive)
            .unwrap();
        let files = untar(&archive);
        assert_eq!(
            json_of(&files["oci-layout"].1)["imageLayoutVersion"],
            "1.0.0"
        );
        // Every blob is named by the digest of its content.
        let blobs: Vec<&String> = files
            .keys()
            .filter(|p| p.starts_with("blobs/sha256/") && p.len() > 13)
            .collect();
        assert_eq!(blobs.len(), 3, "config, manifest, layer: {blobs:?}");
        for p in blobs {
            let digest = sha256(Sha256::digest(&files[p].1).as_slice());
            assert_eq!(&format!("blobs/sha256/{}", &digest[7..]), p);
        }
        let blob = |d: &serde_json::Value| {
            &files[&format!("blobs/sha256/{}", &d.as_str().unwrap()[7..])].1
        };

        let index = json_of(&files["index.json"].1);
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "localhost/pause:1"
        );
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "localhost/pause:1"
        );
        assert_eq!(m["size"], blob(&m["digest"]).len());
        let manifest = json_of(blob(&m["digest"]));
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MANIFEST);
        let config = json_of(blob(&manifest["config"]["digest"]));
        let layer_desc = &manifest["layers"][0];
        assert_eq!(layer_desc["mediaType"], LAYER);
        let layer = blob(&layer_desc["digest"]);
        assert_eq!(layer_desc["size"], layer.len());
        assert_eq!(layer.len() as u64, image.layer_size());
        assert_eq!(
            config["rootfs"]["diff_ids"][0], layer_desc["digest"],
            "uncompressed: the diff ID is the digest"
        );
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], oci_architecture().unwrap());
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/capstan", "pause"])
        );
        assert_eq!(config["config"]["Env"][1], "LD_LIBRARY_PATH=/usr/lib/x");

        // The layer: the files at their paths, their parents before them, the symlink.
        let entries = untar(layer);
        let kinds: Vec<(&str, u8)> = entries.iter().map(|(p, e)| (p.as_str(), e.0)).collect();
        assert_eq!(
            kinds,
            [
                ("capstan", b'0'),
                ("lib64/", b'5'),
                ("lib64/ld.so", b'2'),
                ("usr/", b'5'),
                ("usr/lib/", b'5'),
                ("usr/lib/x/", b'5'),
                ("usr/lib/x/libfoo.so.1", b'0'),
            ]
        );
        assert_eq!(entries["capstan"].1, b"#!not really a program\n");
        assert_eq!(entries["usr/lib/x/libfoo.so.1"].1, vec![7u8; 1000]);
        assert_eq!(entries["lib64/ld.so"].2, "/usr/lib/x/libfoo.so.1");

        // The same files make the same image.
        let mut again = Vec::new();
        image
            .write_archive("localhost/pause:1", &mut again)
            .unwrap();
        assert!(again == archive);
    }

    #[test]
    fn the_system_tar_reads_the_layer() {
        if crate::containerd::which("tar").is_none() {
            eprintln!("SKIPPED: no tar here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = small_image(dir.path());
        let layer = dir.path().join("layer.tar");
        let mut f = std::fs::File::create(&layer).unwrap();
        image.write_layer(&mut f).unwrap();
        drop(f);
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&layer)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("usr/lib/x/libfoo.so.1"), "{listing}");
        assert!(
            listing.contains("lib64/ld.so -> /usr/lib/x/libfoo.so.1"),
            "{listing}"
        );
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("-rwxr-xr-x root/root") && l.ends_with(" capstan")),
            "{listing}"
        );
    }

    #[test]
    fn this_binarys_image_holds_it_its_interpreter_and_its_libraries() {
        let image = Image::of_this_binary().unwrap();
        assert!(matches!(image.entries["capstan"], Entry::File { .. }));
        let exe_path = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(
            !image.entries.contains_key(&image_path(&exe_path).unwrap()),
            "the program once, as /capstan"
        );
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        if let Some(interp) = elf_interpreter(&exe).unwrap() {
            // Where the kernel looks for it, and where it resolves to.
            assert!(image.entries.contains_key(&image_path(&interp).unwrap()));
            let loaded = std::fs::canonicalize(&interp).unwrap();
            assert!(matches!(
                image.entries[&image_path(&loaded).unwrap()],
                Entry::File { .. }
            ));
            assert!(
                image.entries.keys().any(|p| p.ends_with("/libc.so.6")),
                "{:?}",
                image.entries.keys().collect::<Vec<_>>()
            );
            assert!(image.env.iter().any(|e| e.starts_with("LD_LIBRARY_PATH=/")));
        }
    }

    #[test]
    fn image_paths_are_plain_and_relative() {
        assert!(image_path(Path::new("/usr/../etc")).is_err());
        assert!(image_path(Path::new("/")).is_err());
        assert_eq!(
            image_path(Path::new("/usr/lib/libc.so.6")).unwrap(),
            "usr/lib/libc.so.6"
        );
    }

    #[tokio::test]
    async fn a_present_sandbox_image_is_left_alone() {
        let rt = crate::runtime::fake::FakeRuntime::new();
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let built = ensure(&rt, &dir.path().join("no.sock"), "localhost/pause:1", &work)
            .await
            .unwrap();
        assert!(!built);
        assert!(!work.exists(), "nothing built");
        // Missing, without containerd to import into: said before anything is built.
        rt.remove_image("localhost/pause:1");
        let e = ensure(&rt, &dir.path().join("no.sock"), "localhost/pause:1", &work)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no containerd socket"), "{e}");
        assert!(!work.exists());
    }
}
