//! A ustar writer — the POSIX tar format as GNU tar, Go's archive/tar (which containerd
//! reads layers with) and the OCI image layout's archives use it — with as much of it as the
//! pause image needs: regular files, directories and symlinks owned by root at time 0, paths
//! up to ustar's 155-byte prefix and 100-byte name, no extended headers.

use std::io::Write;

use super::{PauseImageError, io};

#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    File,
    Dir,
    Symlink,
}

/// A ustar writer: as much of the format as these images need (no long names past ustar's
/// prefix + name, no extended headers).
pub(super) struct Tar<W: Write> {
    pub(super) out: W,
}

impl<W: Write> Tar<W> {
    pub(super) fn new(out: W) -> Self {
        Tar { out }
    }

    pub(super) fn header(
        &mut self,
        path: &str,
        kind: Kind,
        size: u64,
        mode: u32,
        link: &str,
    ) -> Result<(), PauseImageError> {
        let h = ustar_header(path, kind, size, mode, link)?;
        self.out
            .write_all(&h)
            .map_err(io(format!("writing the tar header of {path}")))
    }

    pub(super) fn file(&mut self, path: &str, bytes: &[u8]) -> Result<(), PauseImageError> {
        self.header(path, Kind::File, bytes.len() as u64, 0o644, "")?;
        self.out
            .write_all(bytes)
            .map_err(io(format!("writing {path}")))?;
        self.pad(bytes.len() as u64)
    }

    /// Zeros up to the next 512-byte block after `size` bytes of content.
    pub(super) fn pad(&mut self, size: u64) -> Result<(), PauseImageError> {
        let n = (512 - size % 512) % 512;
        self.out
            .write_all(&[0u8; 512][..n as usize])
            .map_err(io("writing tar padding"))
    }

    /// The end: two zero blocks.
    pub(super) fn finish(mut self) -> Result<(), PauseImageError> {
        self.out
            .write_all(&[0u8; 1024])
            .map_err(io("ending the tar"))
    }
}

/// One ustar header block. A path over 100 bytes is split at a `/` into prefix (≤ 155)
/// and name (≤ 100).
pub(super) fn ustar_header(
    path: &str,
    kind: Kind,
    size: u64,
    mode: u32,
    link: &str,
) -> Result<[u8; 512], PauseImageError> {
    let too_long = || PauseImageError::Invalid(format!("{path:?} is too long for a tar header"));
    let (prefix, name) = if path.len() <= 100 {
        ("", path)
    } else {
        // The name must fit in 100 bytes: split at the first '/' that leaves it short enough.
        // A directory's own trailing '/' is no place to split.
        let body = path.trim_end_matches('/');
        let split = body
            .char_indices()
            .filter(|&(i, c)| c == '/' && path.len() - i - 1 <= 100)
            .map(|(i, _)| i)
            .next()
            .ok_or_else(too_long)?;
        (&path[..split], &path[split + 1..])
    };
    if prefix.len() > 155 || link.len() > 100 || size >= 1 << 33 {
        return Err(too_long());
    }
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, bytes: &[u8]| {
        h[at..at + bytes.len()].copy_from_slice(bytes);
    };
    // Numbers are octal, zero-padded, NUL-terminated.
    let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = width - 1);
        h[at..at + width].copy_from_slice(s.as_bytes());
    };
    put(&mut h, 0, name.as_bytes());
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0); // uid
    octal(&mut h, 116, 8, 0); // gid
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 0); // mtime
    h[156] = match kind {
        Kind::File => b'0',
        Kind::Symlink => b'2',
        Kind::Dir => b'5',
    };
    put(&mut h, 157, link.as_bytes());
    put(&mut h, 257, b"ustar\x0000");
    put(&mut h, 265, b"root");
    put(&mut h, 297, b"root");
    put(&mut h, 345, prefix.as_bytes());
    // The checksum: the sum of the header's bytes with its own field as spaces.
    put(&mut h, 148, b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    Ok(h)
}

/// A tar's entries by path: (type flag, content, link target). Checks every header's
/// checksum and that the archive ends with zero blocks. For tests.
#[cfg(test)]
pub(super) fn untar(bytes: &[u8]) -> std::collections::BTreeMap<String, (u8, Vec<u8>, String)> {
    let field = |h: &[u8], at: usize, len: usize| {
        let f = &h[at..at + len];
        let end = f.iter().position(|&b| b == 0).unwrap_or(len);
        String::from_utf8(f[..end].to_vec()).unwrap()
    };
    let octal = |s: String| u64::from_str_radix(s.trim(), 8).unwrap();
    let mut out = std::collections::BTreeMap::new();
    let mut at = 0;
    loop {
        let h = &bytes[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            assert!(
                bytes[at..].iter().all(|&b| b == 0),
                "only zeros after the end"
            );
            assert!(bytes.len() - at >= 1024, "two zero blocks end it");
            return out;
        }
        let mut unsummed = h.to_vec();
        unsummed[148..156].copy_from_slice(b"        ");
        let sum: u64 = unsummed.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(octal(field(h, 148, 8)), sum, "checksum at {at}");
        assert_eq!(&h[257..265], b"ustar\x0000");
        let (name, prefix) = (field(h, 0, 100), field(h, 345, 155));
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let size = octal(field(h, 124, 12)) as usize;
        let data = bytes[at + 512..at + 512 + size].to_vec();
        out.insert(path, (h[156], data, field(h, 157, 100)));
        at += 512 + size.div_ceil(512) * 512;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_go_into_the_prefix_or_are_refused() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let h = ustar_header(&long, Kind::File, 0, 0o644, "").unwrap();
        let entries = untar(&[h.as_slice(), &[0u8; 1024]].concat());
        assert!(entries.contains_key(&long));
        assert!(
            ustar_header(&"x".repeat(101), Kind::File, 0, 0o644, "").is_err(),
            "no '/' to split at"
        );
        assert!(ustar_header(&format!("{}/f", "d".repeat(200)), Kind::File, 0, 0o644, "").is_err());
        assert!(ustar_header("f", Kind::Symlink, 0, 0o777, &"t".repeat(101)).is_err());
    }
}
