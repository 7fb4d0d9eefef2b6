//! File identity. A path is not an identity: rotation renames files, and a
//! new file can reuse the inode of a deleted one. A tracked file is known by
//! its device and inode while it is open, and by the bytes it holds when it
//! is not: a hash of its first bytes (the fingerprint) plus a hash of the
//! bytes just before the checkpointed offset (the tail). Device, inode and
//! birth time break ties between files whose first kilobyte is identical.
//!
//! A file shorter than the fingerprint length is identified by device and
//! inode (and the hash of what it has so far) until it grows.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Default number of leading bytes hashed: one kilobyte is past the header
/// most loggers write, and short enough that most files have it soon.
pub(crate) const DEFAULT_FINGERPRINT_BYTES: usize = 1024;

/// Bytes before a checkpointed offset that must match for a file found
/// elsewhere (a copy, a rotated name) to continue a checkpoint. 64 bytes
/// tell apart two files that share a header but diverge later.
pub(crate) const TAIL_BYTES: u64 = 64;

/// A stable 64-bit hash of `bytes`. The value is stored in checkpoint files,
/// so it must never change between versions: it is spelled out here rather
/// than taken from a library whose output may change.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (bytes.len() as u64);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(a)).wrapping_mul(PRIME);
        h ^= h >> 29;
    }
    for &b in words.remainder() {
        h = (h ^ b as u64).wrapping_mul(PRIME);
    }
    // Final avalanche (from splitmix64) so near-identical inputs differ in
    // every bit.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The hash of a file's first `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// [`hash_bytes`] of the first `len` bytes.
    pub(crate) hash: u64,
    /// How many bytes were hashed: the configured length, or less while the
    /// file is shorter than that.
    pub(crate) len: u32,
}

impl Fingerprint {
    /// The fingerprint of a file's leading bytes (`head` is at most the
    /// configured length).
    pub fn of(head: &[u8]) -> Fingerprint {
        Fingerprint {
            hash: hash_bytes(head),
            len: head.len() as u32,
        }
    }

    /// Whether the file whose leading bytes are `head` starts with the
    /// bytes this fingerprint was taken of.
    pub fn matches_head(&self, head: &[u8]) -> bool {
        let len = self.len as usize;
        head.len() >= len && hash_bytes(&head[..len]) == self.hash
    }
}

/// Device and inode: the identity of a file while it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FileKey {
    /// `st_dev`.
    pub(crate) dev: u64,
    /// `st_ino`.
    pub(crate) ino: u64,
}

/// What `stat` says about a file, as far as identity and reading go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStat {
    /// Device and inode.
    pub(crate) key: FileKey,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Hard links; 0 once the file is deleted (while still open).
    pub(crate) nlink: u64,
    /// Birth time in nanoseconds since the epoch, where the file system
    /// records it: a reused inode has a new one.
    pub(crate) btime: Option<u64>,
    /// A regular file (not a directory, pipe or device).
    pub(crate) regular: bool,
}

impl FileStat {
    fn from_statx(st: &libc::statx) -> FileStat {
        let btime = (st.stx_mask & libc::STATX_BTIME != 0 && st.stx_btime.tv_sec > 0)
            .then(|| st.stx_btime.tv_sec as u64 * 1_000_000_000 + st.stx_btime.tv_nsec as u64);
        FileStat {
            key: FileKey {
                dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
                ino: st.stx_ino,
            },
            size: st.stx_size,
            nlink: st.stx_nlink as u64,
            btime,
            regular: (st.stx_mode as u32 & libc::S_IFMT) == libc::S_IFREG,
        }
    }

    /// Stats a path, following symlinks.
    pub(crate) fn of_path(path: &Path) -> std::io::Result<FileStat> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a zeroed statx is a valid out-parameter.
        let mut st: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is NUL-terminated and outlives the call; `st` is
        // valid for writes.
        let rc = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, libc::STATX_BASIC_STATS | libc::STATX_BTIME, &mut st) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileStat::from_statx(&st))
    }

    /// Stats an open file.
    pub(crate) fn of_file(file: &File) -> std::io::Result<FileStat> {
        use std::os::fd::AsRawFd;
        // SAFETY: a zeroed statx is a valid out-parameter.
        let mut st: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is open for the duration of the call; the empty
        // path with AT_EMPTY_PATH stats the fd itself.
        let rc = unsafe {
            libc::statx(
                file.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_BASIC_STATS | libc::STATX_BTIME,
                &mut st,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileStat::from_statx(&st))
    }
}

/// Reads up to `len` bytes at `offset`, fewer only at end of file.
pub(crate) fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// The hash of the (up to) [`TAIL_BYTES`] bytes before `offset`, or `None`
/// when the file no longer has them.
pub(crate) fn tail_hash(file: &File, offset: u64) -> Option<u64> {
    let start = offset.saturating_sub(TAIL_BYTES);
    let bytes = read_at(file, start, (offset - start) as usize).ok()?;
    (bytes.len() as u64 == offset - start).then(|| hash_bytes(&bytes))
}

/// File name endings of compressed files. Rotated logs are often
/// compressed; their bytes are not lines, and sluice does not read them.
const COMPRESSED_SUFFIXES: &[&str] = &[
    ".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4", ".zip", ".z", ".lzma", ".br", ".7z", ".tgz",
];

/// Whether a file is compressed, by its name or its first bytes (gzip,
/// bzip2, xz, zstd, lz4 and zip magic numbers).
pub(crate) fn is_compressed(path: &Path, head: &[u8]) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if COMPRESSED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return true;
    }
    const MAGIC: &[&[u8]] = &[
        &[0x1f, 0x8b],
        b"BZh",
        &[0xfd, b'7', b'z', b'X', b'Z', 0x00],
        &[0x28, 0xb5, 0x2f, 0xfd],
        &[0x04, 0x22, 0x4d, 0x18],
        b"PK\x03\x04",
    ];
    MAGIC.iter().any(|m| head.starts_with(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn hash_is_stable_across_versions() {
        // Stored in checkpoints: these values must never change.
        assert_eq!(hash_bytes(b""), 0xf52a_15e9_a9b5_e89b);
        let a = hash_bytes(b"hello world, this is a log line\n");
        assert_eq!(a, 0x3960_08d5_2271_9a18);
        assert_ne!(a, hash_bytes(b"hello world, this is a log line!"));
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"a\0"));
    }

    #[test]
    fn fingerprint_matches_only_the_same_prefix() {
        let fp = Fingerprint::of(b"header line\nfirst");
        assert!(fp.matches_head(b"header line\nfirst and more"));
        assert!(!fp.matches_head(b"header line\nfirsT and more"));
        assert!(!fp.matches_head(b"header"), "a shorter file cannot match");
    }

    #[test]
    fn reused_inode_is_told_apart_by_birth_time_or_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, b"old content\n").unwrap();
        let old = FileStat::of_path(&p).unwrap();
        let old_fp = Fingerprint::of(b"old content\n");
        std::fs::remove_file(&p).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut f = File::create(&p).unwrap();
        f.write_all(b"new content\n").unwrap();
        let new = FileStat::of_path(&p).unwrap();
        let same_inode = old.key == new.key;
        let same_birth = old.btime.is_some() && old.btime == new.btime;
        assert!(!same_birth, "a new file has a new birth time");
        assert!(!old_fp.matches_head(b"new content\n") || !same_inode);
    }

    #[test]
    fn compressed_files_are_recognised_by_name_and_magic() {
        assert!(is_compressed(Path::new("/x/0.log.20240101-000000.gz"), b""));
        assert!(is_compressed(Path::new("/x/app.log.1"), &[0x1f, 0x8b, 8, 0]));
        assert!(!is_compressed(Path::new("/x/app.log.1"), b"2024-01-01T00:00:00Z stdout F hi"));
    }
}
