//! Checkpoints: for every file, the offset up to which every sink has
//! acknowledged its lines, with the identity needed to find the file again
//! after a restart (fingerprint, tail hash, device, inode, birth time).
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory)
//! so a crash leaves either the old or the new checkpoint, never half of
//! one. The entries carry a CRC-32C, so damage that still parses (a flipped
//! digit of an offset) is caught too. A file that does not parse or check
//! is reported, renamed aside and replaced: a bad checkpoint never turns
//! into a crash loop, and never into a wrong offset.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::fingerprint::{FileKey, Fingerprint};

/// Version of the checkpoint format; a file with another version is set
/// aside like a corrupt one. Version 2 added `crc32c`; version 1 files
/// (without it) are still read.
const FORMAT_VERSION: u32 = 2;

/// The format before the checksum.
const FORMAT_VERSION_UNCHECKED: u32 = 1;

/// The checkpoint file's name inside the source's directory.
pub const CHECKPOINT_FILE: &str = "checkpoints.json";

/// One file's acknowledged position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where the file was last seen (for logs and for finding rotated
    /// siblings; identity comes from the other fields).
    pub(crate) path: PathBuf,
    /// Device number.
    pub(crate) dev: u64,
    /// Inode number.
    pub(crate) ino: u64,
    /// Birth time (ns since the epoch) where the file system records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) btime: Option<u64>,
    /// Hash of the first `fingerprint_len` bytes.
    pub(crate) fingerprint: u64,
    /// Bytes the fingerprint covers.
    pub(crate) fingerprint_len: u32,
    /// Acknowledged offset: every line before it was delivered.
    pub(crate) offset: u64,
    /// Hash of the bytes just before `offset` (see `fingerprint::TAIL_BYTES`).
    pub(crate) tail: u64,
}

impl Entry {
    /// The device and inode the entry was written for.
    pub(crate) fn key(&self) -> FileKey {
        FileKey {
            dev: self.dev,
            ino: self.ino,
        }
    }

    /// The fingerprint the entry was written with.
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            hash: self.fingerprint,
            len: self.fingerprint_len,
        }
    }
}

/// The file: `{"version":2,"crc32c":N,"files":[…]}`, where `crc32c` is of
/// the `files` array as sluice serialises it (compact JSON, fields in
/// declaration order), so it can be checked after parsing.
#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32c: Option<u32>,
    files: Vec<Entry>,
}

/// CRC-32C of the entries' serialised form.
fn entries_crc(files: &[Entry]) -> Result<u32, serde_json::Error> {
    Ok(crc32c::crc32c(&serde_json::to_vec(files)?))
}

/// Why checkpoints could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The directory or file could not be created or written.
    #[error("cannot write checkpoint {path}: {error}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The directory could not be created.
    #[error("cannot create checkpoint directory {path}: {error}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// What loading found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The entries (empty on first start or after a corrupt file).
    pub entries: Vec<Entry>,
    /// A checkpoint file existed (valid or not): this is not a first start.
    pub existed: bool,
    /// Where a corrupt file was moved to, if it was.
    pub set_aside: Option<(PathBuf, String)>,
}

/// Reads and writes one source's checkpoint file.
#[derive(Debug)]
pub struct Checkpointer {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
}

impl Checkpointer {
    /// Checkpoints in `dir` (created if missing).
    pub fn new(dir: PathBuf) -> Result<Checkpointer, CheckpointError> {
        std::fs::create_dir_all(&dir).map_err(|error| CheckpointError::Dir { path: dir.clone(), error })?;
        Ok(Checkpointer {
            path: dir.join(CHECKPOINT_FILE),
            tmp: dir.join(format!("{CHECKPOINT_FILE}.tmp")),
            dir,
        })
    }

    /// The checkpoint file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the checkpoint. A corrupt, truncated or foreign file is renamed
    /// to `checkpoints.json.corrupt-<unix seconds>` and reported in
    /// [`Loaded::set_aside`]; loading then starts empty.
    pub fn load(&self) -> Loaded {
        // A temp file left by a crash mid-write is incomplete by definition.
        let _ = std::fs::remove_file(&self.tmp);
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::default(),
            Err(e) => return self.set_aside(format!("unreadable: {e}")),
        };
        let d = match serde_json::from_slice::<OnDisk>(&bytes) {
            Ok(d) => d,
            Err(e) => return self.set_aside(format!("not a valid checkpoint ({} bytes): {e}", bytes.len())),
        };
        let checked = match (d.version, d.crc32c) {
            (FORMAT_VERSION, Some(crc)) => entries_crc(&d.files).is_ok_and(|c| c == crc),
            (FORMAT_VERSION_UNCHECKED, None) => true,
            (FORMAT_VERSION | FORMAT_VERSION_UNCHECKED, _) => false,
            (v, _) => return self.set_aside(format!("unknown format version {v}")),
        };
        if !checked {
            return self.set_aside(format!("checksum mismatch ({} bytes)", bytes.len()));
        }
        Loaded {
            entries: d.files,
            existed: true,
            set_aside: None,
        }
    }

    fn set_aside(&self, reason: String) -> Loaded {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = self.dir.join(format!("{CHECKPOINT_FILE}.corrupt-{secs}"));
        let moved = std::fs::rename(&self.path, &aside).is_ok() || std::fs::remove_file(&self.path).is_ok();
        Loaded {
            entries: Vec::new(),
            existed: true,
            set_aside: Some((if moved { aside } else { self.path.clone() }, reason)),
        }
    }

    /// Replaces the checkpoint with `entries`, atomically.
    pub fn save(&self, entries: &[Entry]) -> Result<(), CheckpointError> {
        let err = |error| CheckpointError::Write {
            path: self.path.clone(),
            error,
        };
        let body = entries_crc(entries)
            .and_then(|crc| {
                serde_json::to_vec(&OnDisk {
                    version: FORMAT_VERSION,
                    crc32c: Some(crc),
                    files: entries.to_vec(),
                })
            })
            .map_err(|e| err(std::io::Error::other(e)))?;
        replace_file(&self.dir, &self.tmp, &self.path, &body).map_err(err)
    }
}

/// Replaces `path` (in `dir`) with `body` atomically: writes `tmp`, syncs
/// it, renames it over `path` and syncs `dir`. A crash leaves the old file
/// or the new one; a failed write (a full disk) leaves the old one and
/// removes the partial temp file.
pub(crate) fn replace_file(dir: &Path, tmp: &Path, path: &Path, body: &[u8]) -> std::io::Result<()> {
    let written = std::fs::File::create(tmp).and_then(|mut f| {
        f.write_all(body)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    std::fs::rename(tmp, path)?;
    // The rename is durable only once the directory is.
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64) -> Entry {
        Entry {
            path: "/var/log/a.log".into(),
            dev: 1,
            ino: 2,
            btime: Some(3),
            fingerprint: 4,
            fingerprint_len: 1024,
            offset,
            tail: 5,
        }
    }

    #[test]
    fn saved_entries_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpointer::new(dir.path().join("src")).unwrap();
        assert!(!c.load().existed);
        c.save(&[entry(10), entry(20)]).unwrap();
        let l = c.load();
        assert!(l.existed);
        assert_eq!(l.entries, vec![entry(10), entry(20)]);
    }

    #[test]
    fn checkpoint_without_a_checksum_from_before_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpointer::new(dir.path().to_path_buf()).unwrap();
        let v1 = serde_json::json!({"version": 1, "files": [entry(10)]});
        std::fs::write(c.path(), v1.to_string()).unwrap();
        let l = c.load();
        assert!(l.set_aside.is_none());
        assert_eq!(l.entries, vec![entry(10)]);
        let v1_with_crc = serde_json::json!({"version": 1, "crc32c": 7, "files": [entry(10)]});
        std::fs::write(c.path(), v1_with_crc.to_string()).unwrap();
        assert!(
            c.load().set_aside.is_some(),
            "a damaged version number is not a way around the check"
        );
    }

    /// Every cut and every flipped byte of a small checkpoint file is
    /// caught: set aside and reported, never loaded with a wrong offset,
    /// never a panic. A flipped digit still parses as JSON, so only the
    /// checksum catches it.
    #[test]
    fn every_cut_and_flip_of_a_checkpoint_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpointer::new(dir.path().to_path_buf()).unwrap();
        c.save(&[entry(10), entry(123_456)]).unwrap();
        let good = std::fs::read(c.path()).unwrap();
        let mut variants: Vec<(String, Vec<u8>)> = (0..good.len()).map(|n| (format!("cut {n}"), good[..n].to_vec())).collect();
        for i in 0..good.len() {
            for mask in [0x01u8, 0x02, 0x10, 0xff] {
                let mut v = good.clone();
                v[i] ^= mask;
                variants.push((format!("byte {i} ^ {mask:#04x}"), v));
            }
        }
        for (what, v) in variants {
            std::fs::write(c.path(), &v).unwrap();
            let l = c.load();
            assert!(l.existed, "{what}");
            assert!(l.entries.is_empty(), "{what}: loaded {:?}", l.entries);
            let (aside, _) = l.set_aside.unwrap_or_else(|| panic!("{what}: not reported"));
            assert_eq!(std::fs::read(&aside).unwrap(), v, "{what}: the damaged file is kept aside");
            assert!(!c.path().exists(), "{what}");
            std::fs::remove_file(aside).unwrap();
        }
        std::fs::write(c.path(), &good).unwrap();
        assert_eq!(c.load().entries, vec![entry(10), entry(123_456)], "the intact file still loads");
    }

    #[test]
    fn truncated_checkpoint_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpointer::new(dir.path().to_path_buf()).unwrap();
        c.save(&[entry(10)]).unwrap();
        let full = std::fs::read(c.path()).unwrap();
        std::fs::write(c.path(), &full[..full.len() / 2]).unwrap();
        let l = c.load();
        assert!(l.entries.is_empty());
        let (aside, _) = l.set_aside.expect("reported");
        assert!(aside.exists());
        assert!(!c.path().exists());
        // And the next save works.
        c.save(&[entry(11)]).unwrap();
        assert_eq!(c.load().entries, vec![entry(11)]);
    }
}
