//! The journald source's checkpoint: the cursor of the last entry every
//! sink acknowledged, in `<data_dir>/journald/<source>/cursor.json` as
//! `{"version":1,"crc32c":N,"cursor":"s=…;i=…;b=…;m=…;t=…;x=…"}`.
//!
//! Written atomically (like the file source's checkpoints); a file that
//! does not parse or check is renamed aside and reported, and reading
//! starts as on a first start: a bad checkpoint is never a crash loop.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::sources::file::checkpoint::{replace_file, CheckpointError};

/// Version of the cursor file's format.
const FORMAT_VERSION: u32 = 1;

/// The cursor file's name inside the source's directory.
pub(crate) const CURSOR_FILE: &str = "cursor.json";

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    /// CRC-32C of `cursor`'s bytes.
    crc32c: u32,
    cursor: String,
}

/// What loading found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LoadedCursor {
    /// The acknowledged cursor, if there is a valid one.
    pub(crate) cursor: Option<String>,
    /// Where a damaged file was moved, and why it was rejected.
    pub(crate) set_aside: Option<(PathBuf, String)>,
}

/// Reads and writes one source's cursor file.
#[derive(Debug, Clone)]
pub(crate) struct CursorFile {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
}

impl CursorFile {
    /// The cursor file in `dir` (created if missing).
    pub(crate) fn new(dir: PathBuf) -> Result<CursorFile, CheckpointError> {
        std::fs::create_dir_all(&dir).map_err(|error| CheckpointError::Dir { path: dir.clone(), error })?;
        Ok(CursorFile {
            path: dir.join(CURSOR_FILE),
            tmp: dir.join(format!("{CURSOR_FILE}.tmp")),
            dir,
        })
    }

    /// The file's path.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Loads the cursor; a damaged file is set aside.
    pub(crate) fn load(&self) -> LoadedCursor {
        let _ = std::fs::remove_file(&self.tmp);
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return LoadedCursor::default(),
            Err(e) => return self.set_aside(format!("unreadable: {e}")),
        };
        match serde_json::from_slice::<OnDisk>(&bytes) {
            Ok(d) if d.version == FORMAT_VERSION && d.crc32c == crc32c::crc32c(d.cursor.as_bytes()) && valid_cursor(&d.cursor) => {
                LoadedCursor {
                    cursor: Some(d.cursor),
                    set_aside: None,
                }
            }
            Ok(d) if d.version != FORMAT_VERSION => self.set_aside(format!("unknown format version {}", d.version)),
            Ok(_) => self.set_aside(format!("checksum mismatch ({} bytes)", bytes.len())),
            Err(e) => self.set_aside(format!("not a valid cursor file ({} bytes): {e}", bytes.len())),
        }
    }

    fn set_aside(&self, reason: String) -> LoadedCursor {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = self.dir.join(format!("{CURSOR_FILE}.corrupt-{secs}"));
        let moved = std::fs::rename(&self.path, &aside).is_ok() || std::fs::remove_file(&self.path).is_ok();
        LoadedCursor {
            cursor: None,
            set_aside: Some((if moved { aside } else { self.path.clone() }, reason)),
        }
    }

    /// Replaces the saved cursor, atomically.
    pub(crate) fn save(&self, cursor: &str) -> Result<(), CheckpointError> {
        let err = |error| CheckpointError::Write {
            path: self.path.clone(),
            error,
        };
        let body = serde_json::to_vec(&OnDisk {
            version: FORMAT_VERSION,
            crc32c: crc32c::crc32c(cursor.as_bytes()),
            cursor: cursor.to_owned(),
        })
        .map_err(|e| err(std::io::Error::other(e)))?;
        replace_file(&self.dir, &self.tmp, &self.path, &body).map_err(err)
    }
}

/// A cursor journalctl can be given as one argument: printable ASCII, no
/// spaces (they are `s=…;i=…;…` with hex values).
pub(crate) fn valid_cursor(cursor: &str) -> bool {
    !cursor.is_empty() && cursor.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "s=928f97cb235048d1a8253e66fcca9bb4;i=5;b=0123456789abcdef0123456789abcdef;m=5;t=661f4b37d63c4;x=704d068714696719";

    #[test]
    fn saved_cursor_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = CursorFile::new(dir.path().join("j")).unwrap();
        assert_eq!(f.load(), LoadedCursor::default());
        f.save(C).unwrap();
        assert_eq!(f.load().cursor.as_deref(), Some(C));
    }

    #[test]
    fn every_cut_and_flip_of_a_cursor_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let f = CursorFile::new(dir.path().to_path_buf()).unwrap();
        f.save(C).unwrap();
        let good = std::fs::read(f.path()).unwrap();
        let mut variants: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        for i in 0..good.len() {
            for mask in [0x01u8, 0x20] {
                let mut v = good.clone();
                v[i] ^= mask;
                variants.push(v);
            }
        }
        for v in variants {
            std::fs::write(f.path(), &v).unwrap();
            let l = f.load();
            // A flip inside a JSON key or in whitespace may still load
            // the right cursor; never a different one.
            match l.cursor {
                Some(c) => assert_eq!(c, C, "{}", String::from_utf8_lossy(&v)),
                None => {
                    let (aside, _) = l.set_aside.expect("reported");
                    std::fs::remove_file(aside).unwrap();
                }
            }
        }
    }
}
