//! State shared between the scanner (discovery, checkpoints) and the
//! readers: one [`Shared`] per tracked file, and the [`Registry`] of them.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::fingerprint::FileKey;

/// What happens to a file's checkpoint entry once its reader is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposal {
    /// The file is finished (rotated away or deleted and read to its end):
    /// forget it.
    Forget,
    /// The file was closed to make room (`max_open_files`): keep its entry
    /// so it is resumed when it is opened again.
    Keep,
}

/// One tracked file. The reader owns the reading; the scanner reads these
/// fields to write checkpoints and to tell rotations.
///
/// Invariant: `acked <= read`; bytes before `acked` were delivered by every
/// sink. `head` holds the first bytes of the file (at most the fingerprint
/// length), which never change while the file is not truncated.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Unique for the life of the process.
    pub(crate) id: u64,
    /// The open file; closed when the last reference goes.
    pub(crate) file: File,
    /// Device and inode of `file`.
    pub(crate) key: FileKey,
    /// Birth time of `file`.
    pub(crate) btime: Option<u64>,
    /// The path it was last seen at.
    pub(crate) path: Mutex<PathBuf>,
    /// Its first bytes.
    pub(crate) head: Mutex<Vec<u8>>,
    /// Offset read so far.
    pub(crate) read: AtomicU64,
    /// Offset acknowledged so far.
    pub(crate) acked: AtomicU64,
    /// Set by the scanner: the path no longer leads to this file.
    pub(crate) rotated: AtomicBool,
    /// Set by the scanner, never cleared: the file was seen under another
    /// path, or its path led to another file. Its end is then a rotation,
    /// even if the rotated file is deleted (compressed) before it is closed.
    pub(crate) renamed: AtomicBool,
    /// Set by the scanner: the first bytes changed (truncated and written
    /// again past the read offset between two looks).
    pub(crate) rewritten: AtomicBool,
    /// Set by the scanner: close when idle, others wait for a slot.
    pub(crate) park: AtomicBool,
    /// Milliseconds since the source started at which the reader last found
    /// the file at its end without new data (0 while it has data).
    pub(crate) idle_since_ms: AtomicU64,
    /// Set by the reader when it is finished with the file.
    pub(crate) done: Mutex<Option<Disposal>>,
    /// False when the entry must not be written (an old generation whose
    /// bytes are gone).
    pub(crate) checkpointable: AtomicBool,
}

impl Shared {
    /// Locks a mutex, ignoring poisoning (the data are plain values).
    pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The path, cloned.
    pub(crate) fn path(&self) -> PathBuf {
        Shared::lock(&self.path).clone()
    }

    /// Whether the reader is done, and how.
    pub(crate) fn disposal(&self) -> Option<Disposal> {
        *Shared::lock(&self.done)
    }
}

/// Every tracked file, by id and by device and inode; plus files known to
/// be copies of a tracked file (not read unless their original is
/// truncated).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    next_id: u64,
    /// Tracked files by id.
    pub(crate) files: HashMap<u64, Arc<Shared>>,
    /// Ids by device and inode, for files whose fd is live.
    pub(crate) by_key: HashMap<FileKey, u64>,
    /// Copies of tracked files (logrotate `copytruncate` at work), with the
    /// size they had when judged.
    pub(crate) shadows: HashMap<FileKey, u64>,
    /// Heads of files that were truncated: a new file next to one that
    /// starts with such a head and is no longer than what was read is the
    /// rotated copy of bytes already read.
    pub(crate) retired: Vec<Retired>,
}

/// What a truncated file held before it was truncated.
#[derive(Debug)]
pub(crate) struct Retired {
    /// Its directory.
    pub(crate) dir: PathBuf,
    /// Its first bytes.
    pub(crate) head: Vec<u8>,
    /// How far it had been read.
    pub(crate) read: u64,
    /// When it was truncated.
    pub(crate) at: Instant,
}

impl Registry {
    /// Adds a file and returns its shared state.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add(
        &mut self,
        file: File,
        key: FileKey,
        btime: Option<u64>,
        path: PathBuf,
        head: Vec<u8>,
        offset: u64,
        acked: u64,
    ) -> Arc<Shared> {
        self.next_id += 1;
        let s = Arc::new(Shared {
            id: self.next_id,
            file,
            key,
            btime,
            path: Mutex::new(path),
            head: Mutex::new(head),
            read: AtomicU64::new(offset),
            acked: AtomicU64::new(acked),
            rotated: AtomicBool::new(false),
            renamed: AtomicBool::new(false),
            rewritten: AtomicBool::new(false),
            park: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            done: Mutex::new(None),
            checkpointable: AtomicBool::new(true),
        });
        self.files.insert(s.id, s.clone());
        self.by_key.insert(key, s.id);
        self.shadows.remove(&key);
        s
    }

    /// Forgets a file (its fd closes once the reader drops it too).
    pub(crate) fn remove(&mut self, id: u64) -> Option<Arc<Shared>> {
        let s = self.files.remove(&id)?;
        if self.by_key.get(&s.key) == Some(&id) {
            self.by_key.remove(&s.key);
        }
        Some(s)
    }

    /// Whether a live tracked file has this device and inode.
    pub(crate) fn tracks(&self, key: &FileKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// Files whose fd is open and not yet done.
    pub(crate) fn open_count(&self) -> usize {
        self.files.values().filter(|s| s.disposal().is_none()).count()
    }
}

/// Loads an atomic.
pub(crate) fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Acquire)
}
