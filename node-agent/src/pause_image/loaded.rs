//! What the capstan binary needs to run in an image of its own, found as the dynamic linker
//! found it — `ldd`'s answer without running ldd: the ELF interpreter the kernel starts
//! (`PT_INTERP`, read from the program headers) and the shared objects this process has
//! loaded (`/proc/self/maps`), so transitive dependencies come along as they resolved here.

use std::path::PathBuf;

use super::{PauseImageError, io};

/// A file's identity: its device (major, minor) and inode, as /proc/self/maps names them.
pub(super) type FileId = (u32, u32, u64);

/// The identity of an open file.
pub(super) fn file_id(file: &std::fs::File) -> std::io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    Ok((
        rustix::fs::major(meta.dev()),
        rustix::fs::minor(meta.dev()),
        meta.ino(),
    ))
}

/// The executable files mapped into this process (`/proc/self/maps` lines with `x` in
/// their permissions), but the program itself (`exe`): the shared objects it loaded, the
/// interpreter among them. A library replaced on disk since it was loaded is an error: its
/// file is not the one running.
pub(super) fn loaded_objects(maps: &str, exe: FileId) -> Result<Vec<PathBuf>, PauseImageError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut fields = line.splitn(6, ' ');
        let (Some(_), Some(perms), Some(_), Some(dev), Some(inode), Some(path)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path = path.trim_start();
        let id = dev.split_once(':').and_then(|(major, minor)| {
            Some((
                u32::from_str_radix(major, 16).ok()?,
                u32::from_str_radix(minor, 16).ok()?,
                inode.parse::<u64>().ok()?,
            ))
        });
        if !perms.contains('x') || !path.starts_with('/') || id == Some(exe) {
            continue;
        }
        if let Some(gone) = path.strip_suffix(" (deleted)") {
            return Err(PauseImageError::Invalid(format!(
                "the loaded library {gone} was replaced on disk: restart capstan to build its pause image"
            )));
        }
        let path = PathBuf::from(path);
        if !out.contains(&path) {
            out.push(path);
        }
    }
    Ok(out)
}

/// The ELF interpreter (`PT_INTERP`) of a 64-bit ELF file, None for a static one.
pub(super) fn elf_interpreter(file: &std::fs::File) -> Result<Option<PathBuf>, PauseImageError> {
    use std::os::unix::fs::FileExt;
    let bad = |what: &str| PauseImageError::Invalid(format!("the capstan binary: {what}"));
    let mut ident = [0u8; 64];
    file.read_exact_at(&mut ident, 0)
        .map_err(io("reading the ELF header"))?;
    if ident[..4] != *b"\x7fELF" || ident[4] != 2 {
        return Err(bad("not a 64-bit ELF file"));
    }
    let little = match ident[5] {
        1 => true,
        2 => false,
        _ => return Err(bad("an ELF file of unknown byte order")),
    };
    // An unsigned number of `len` bytes at `at`, in the file's byte order (every offset read
    // below lies inside the 64-byte header or a program header of at least 56 bytes).
    let num = |b: &[u8], at: usize, len: usize| -> u64 {
        let bytes = &b[at..at + len];
        let fold = |v: u64, x: &u8| v << 8 | u64::from(*x);
        if little {
            bytes.iter().rev().fold(0, fold)
        } else {
            bytes.iter().fold(0, fold)
        }
    };
    let (phoff, phentsize, phnum) = (
        num(&ident, 0x20, 8),
        num(&ident, 0x36, 2) as usize,
        num(&ident, 0x38, 2) as usize,
    );
    if phentsize < 56 || phentsize * phnum > 64 * 1024 {
        return Err(bad("implausible program headers"));
    }
    let mut headers = vec![0u8; phentsize * phnum];
    file.read_exact_at(&mut headers, phoff)
        .map_err(io("reading the ELF program headers"))?;
    const PT_INTERP: u64 = 3;
    for h in headers.chunks_exact(phentsize) {
        if num(h, 0, 4) != PT_INTERP {
            continue;
        }
        let (offset, size) = (num(h, 8, 8), num(h, 32, 8));
        if size == 0 || size > 4096 {
            return Err(bad("an implausible interpreter path"));
        }
        let mut path = vec![0u8; size as usize];
        file.read_exact_at(&mut path, offset)
            .map_err(io("reading the ELF interpreter"))?;
        let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
        let path = std::str::from_utf8(&path[..end])
            .map_err(|_| bad("an interpreter path that is not UTF-8"))?;
        return Ok(Some(PathBuf::from(path)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loaded_objects_are_the_executable_mappings_but_the_program() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fd:01 1234 /work/target/debug/capstan
55d0c0100000-55d0c0200000 r-xp 00100000 fd:01 1234 /work/target/debug/capstan
7f0000000000-7f0000100000 r--p 00000000 fd:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000100000-7f0000200000 r-xp 00100000 fd:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000300000-7f0000400000 r-xp 00000000 fd:01 78 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7f0000500000-7f0000600000 rw-p 00000000 00:00 0 
7f0000600000-7f0000601000 r--s 00000000 fd:01 90 /var/lib/data file with spaces
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
";
        assert_eq!(
            loaded_objects(maps, (0xfd, 1, 1234)).unwrap(),
            [
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
            ]
        );
        let replaced =
            "7f0000100000-7f0000200000 r-xp 00100000 fd:01 77 /usr/lib/libc.so.6 (deleted)\n";
        assert!(loaded_objects(replaced, (0xfd, 1, 1234)).is_err());
        // The same inode on another device is another file.
        let other = "7f0000100000-7f0000200000 r-xp 00100000 08:02 1234 /usr/lib/libc.so.6\n";
        assert_eq!(
            loaded_objects(other, (0xfd, 1, 1234)).unwrap(),
            [PathBuf::from("/usr/lib/libc.so.6")]
        );
    }

    #[test]
    fn the_interpreter_is_read_from_elf_files_only() {
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        if let Some(interp) = elf_interpreter(&exe).unwrap() {
            assert!(interp.is_absolute(), "{}", interp.display());
            assert!(interp.exists(), "{}", interp.display());
        }
        assert!(
            elf_interpreter(&std::fs::File::open("/proc/self/maps").unwrap()).is_err(),
            "not an ELF file"
        );
        let empty = tempfile::tempfile().unwrap();
        assert!(elf_interpreter(&empty).is_err(), "too short");
    }
}
