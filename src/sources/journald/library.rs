//! The journal read in-process through libsystemd's `sd-journal` API, the
//! code journalctl itself reads with, loaded at run time with `dlopen`: the
//! binary does not link libsystemd, so it still runs where the library is
//! missing (the distroless image), and the source falls back to journalctl
//! there.
//!
//! Each entry is laid out as journalctl's export format would give it
//! (`__CURSOR`, `__REALTIME_TIMESTAMP`, `__MONOTONIC_TIMESTAMP`,
//! `_BOOT_ID`, then the data fields but `_BOOT_ID`), so both readers make
//! the same events and the same cursors, and a checkpoint written by one
//! resumes the other. What this saves over journalctl: its check of every
//! field for printable UTF-8, its stdio formatting, the pipe, and sluice's
//! parse of the export text back into fields (BENCHMARKS.md, "journald
//! through libsystemd").

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::OnceLock;

use super::export::FieldSpan;

/// `sd_id128_t`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Id128([u8; 16]);

type Handle = *mut c_void;

/// The functions of `sd-journal.h` the source uses.
struct Api {
    open: unsafe extern "C" fn(*mut Handle, c_int) -> c_int,
    open_directory: unsafe extern "C" fn(*mut Handle, *const c_char, c_int) -> c_int,
    close: unsafe extern "C" fn(Handle),
    next: unsafe extern "C" fn(Handle) -> c_int,
    get_cursor: unsafe extern "C" fn(Handle, *mut *mut c_char) -> c_int,
    test_cursor: unsafe extern "C" fn(Handle, *const c_char) -> c_int,
    seek_cursor: unsafe extern "C" fn(Handle, *const c_char) -> c_int,
    seek_head: unsafe extern "C" fn(Handle) -> c_int,
    seek_realtime_usec: unsafe extern "C" fn(Handle, u64) -> c_int,
    get_realtime_usec: unsafe extern "C" fn(Handle, *mut u64) -> c_int,
    get_monotonic_usec: unsafe extern "C" fn(Handle, *mut u64, *mut Id128) -> c_int,
    restart_data: unsafe extern "C" fn(Handle),
    enumerate_data: unsafe extern "C" fn(Handle, *mut *const c_void, *mut usize) -> c_int,
    set_data_threshold: unsafe extern "C" fn(Handle, usize) -> c_int,
    add_match: unsafe extern "C" fn(Handle, *const c_void, usize) -> c_int,
    add_conjunction: unsafe extern "C" fn(Handle) -> c_int,
    wait: unsafe extern "C" fn(Handle, u64) -> c_int,
    get_usage: unsafe extern "C" fn(Handle, *mut u64) -> c_int,
}

/// `SD_JOURNAL_LOCAL_ONLY`: this machine's journal, as journalctl opens it.
const LOCAL_ONLY: c_int = 1;

/// The soname every systemd since 209 ships.
const SONAME: &CStr = c"libsystemd.so.0";

/// libsystemd's journal API, loaded once; `None` where the library (or one
/// of its functions) is missing.
fn api() -> Option<&'static Api> {
    static API: OnceLock<Option<Api>> = OnceLock::new();
    API.get_or_init(load).as_ref()
}

/// True when the journal can be read through libsystemd on this machine.
pub(crate) fn available() -> bool {
    api().is_some()
}

fn load() -> Option<Api> {
    // SAFETY: dlopen with a constant NUL-terminated name; the handle is
    // kept for the life of the process (never dlclose'd), so the function
    // pointers below stay valid.
    let lib = unsafe { libc::dlopen(SONAME.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if lib.is_null() {
        return None;
    }
    macro_rules! sym {
        ($name:literal) => {{
            // SAFETY: `lib` is a live handle and the name NUL-terminated;
            // the symbol's C type is the field's, as sd-journal.h declares
            // it, and a missing one makes the whole API unavailable.
            let p = unsafe { libc::dlsym(lib, concat!($name, "\0").as_ptr().cast()) };
            if p.is_null() {
                return None;
            }
            // SAFETY: see above; a non-null symbol of that declared type,
            // and a function pointer is the size of a data pointer.
            unsafe { std::mem::transmute_copy::<*mut c_void, _>(&p) }
        }};
    }
    Some(Api {
        open: sym!("sd_journal_open"),
        open_directory: sym!("sd_journal_open_directory"),
        close: sym!("sd_journal_close"),
        next: sym!("sd_journal_next"),
        get_cursor: sym!("sd_journal_get_cursor"),
        test_cursor: sym!("sd_journal_test_cursor"),
        seek_cursor: sym!("sd_journal_seek_cursor"),
        seek_head: sym!("sd_journal_seek_head"),
        seek_realtime_usec: sym!("sd_journal_seek_realtime_usec"),
        get_realtime_usec: sym!("sd_journal_get_realtime_usec"),
        get_monotonic_usec: sym!("sd_journal_get_monotonic_usec"),
        restart_data: sym!("sd_journal_restart_data"),
        enumerate_data: sym!("sd_journal_enumerate_data"),
        set_data_threshold: sym!("sd_journal_set_data_threshold"),
        add_match: sym!("sd_journal_add_match"),
        add_conjunction: sym!("sd_journal_add_conjunction"),
        wait: sym!("sd_journal_wait"),
        get_usage: sym!("sd_journal_get_usage"),
    })
}

/// A failed call: what it was doing and the errno it returned.
#[derive(Debug)]
pub(crate) struct JournalError {
    /// The call, in words (`open the journal`).
    pub(crate) action: &'static str,
    /// The error it returned.
    pub(crate) error: std::io::Error,
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot {}: {}", self.action, self.error)
    }
}

/// A negative return is `-errno`.
fn check(action: &'static str, r: c_int) -> Result<c_int, JournalError> {
    if r < 0 {
        Err(JournalError {
            action,
            error: std::io::Error::from_raw_os_error(-r),
        })
    } else {
        Ok(r)
    }
}

/// What [`Journal::wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing within the timeout.
    Nothing,
    /// Entries were added, or files came or went.
    Some,
}

/// An open journal, used from one thread (sd-journal objects are not
/// thread-safe, but may move between threads).
pub(crate) struct Journal {
    api: &'static Api,
    j: Handle,
}

// SAFETY: an sd_journal may be used from any one thread at a time; Journal
// is not Sync and every call takes `&mut self` or `&self` on that thread.
unsafe impl Send for Journal {}

impl Drop for Journal {
    fn drop(&mut self) {
        // SAFETY: `j` was opened by this Journal and is closed once.
        unsafe { (self.api.close)(self.j) }
    }
}

impl Journal {
    /// Opens the journal files in `dir`, or this machine's journal.
    pub(crate) fn open(dir: Option<&Path>) -> Result<Journal, JournalError> {
        let api = api().ok_or(JournalError {
            action: "load libsystemd.so.0",
            error: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let mut j: Handle = std::ptr::null_mut();
        let r = match dir {
            Some(d) => {
                let path = CString::new(d.as_os_str().as_encoded_bytes()).map_err(|_| JournalError {
                    action: "open the journal directory",
                    error: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                })?;
                // SAFETY: `j` is an out pointer, `path` NUL-terminated.
                unsafe { (api.open_directory)(&mut j, path.as_ptr(), 0) }
            }
            // SAFETY: `j` is an out pointer.
            None => unsafe { (api.open)(&mut j, LOCAL_ONLY) },
        };
        check("open the journal", r)?;
        Ok(Journal { api, j })
    }

    /// Bytes of the journal files it opened: 0 means none could be read
    /// (missing, or no permission).
    pub(crate) fn usage(&self) -> u64 {
        let mut bytes = 0;
        // SAFETY: a live handle and an out pointer.
        let _ = unsafe { (self.api.get_usage)(self.j, &mut bytes) };
        bytes
    }

    /// Data fields larger than `bytes` are returned cut to it.
    pub(crate) fn set_data_threshold(&mut self, bytes: usize) -> Result<(), JournalError> {
        // SAFETY: a live handle.
        check("set the data threshold", unsafe { (self.api.set_data_threshold)(self.j, bytes) }).map(drop)
    }

    /// Adds a `FIELD=value` match: matches on one field are alternatives,
    /// on different fields all must hold.
    pub(crate) fn add_match(&mut self, m: &[u8]) -> Result<(), JournalError> {
        // SAFETY: a live handle; `m` is read for its length only.
        check("add a journal match", unsafe {
            (self.api.add_match)(self.j, m.as_ptr().cast(), m.len())
        })
        .map(drop)
    }

    /// Ends a group of matches: the next group must hold as well.
    pub(crate) fn add_conjunction(&mut self) -> Result<(), JournalError> {
        // SAFETY: a live handle.
        check("add a journal match", unsafe { (self.api.add_conjunction)(self.j) }).map(drop)
    }

    /// Moves before the first entry.
    pub(crate) fn seek_head(&mut self) -> Result<(), JournalError> {
        // SAFETY: a live handle.
        check("seek to the journal's head", unsafe { (self.api.seek_head)(self.j) }).map(drop)
    }

    /// Moves before the first entry written at or after `usec`.
    pub(crate) fn seek_realtime(&mut self, usec: u64) -> Result<(), JournalError> {
        // SAFETY: a live handle.
        check("seek to now", unsafe { (self.api.seek_realtime_usec)(self.j, usec) }).map(drop)
    }

    /// Moves to the entry of `cursor` (or the nearest one if it is gone).
    pub(crate) fn seek_cursor(&mut self, cursor: &str) -> Result<(), JournalError> {
        let c = CString::new(cursor).map_err(|_| JournalError {
            action: "seek to the cursor",
            error: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: a live handle and a NUL-terminated cursor.
        check("seek to the cursor", unsafe { (self.api.seek_cursor)(self.j, c.as_ptr()) }).map(drop)
    }

    /// True when the current entry is the one `cursor` names.
    pub(crate) fn is_at(&mut self, cursor: &str) -> bool {
        let Ok(c) = CString::new(cursor) else { return false };
        // SAFETY: a live handle and a NUL-terminated cursor.
        unsafe { (self.api.test_cursor)(self.j, c.as_ptr()) > 0 }
    }

    /// Steps to the next entry; false at the end.
    pub(crate) fn next(&mut self) -> Result<bool, JournalError> {
        // SAFETY: a live handle.
        check("read the next journal entry", unsafe { (self.api.next)(self.j) }).map(|r| r > 0)
    }

    /// Waits up to `timeout` for the journal to change.
    pub(crate) fn wait(&mut self, timeout: std::time::Duration) -> Result<Change, JournalError> {
        let usec = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX);
        // SAFETY: a live handle.
        let r = check("wait for the journal", unsafe { (self.api.wait)(self.j, usec) })?;
        Ok(if r == 0 { Change::Nothing } else { Change::Some })
    }

    /// The current entry's cursor.
    pub(crate) fn cursor(&mut self) -> Result<String, JournalError> {
        let mut p: *mut c_char = std::ptr::null_mut();
        // SAFETY: a live handle and an out pointer.
        check("read an entry's cursor", unsafe { (self.api.get_cursor)(self.j, &mut p) })?;
        if p.is_null() {
            return Err(JournalError {
                action: "read an entry's cursor",
                error: std::io::Error::from(std::io::ErrorKind::InvalidData),
            });
        }
        // SAFETY: sd_journal_get_cursor returned a malloc'd NUL-terminated
        // string, owned by the caller and freed here once copied.
        let cursor = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        // SAFETY: see above.
        unsafe { libc::free(p.cast()) };
        Ok(cursor)
    }

    /// Appends the current entry to `buf` as `KEY=value` fields (spans
    /// appended to `fields`), in journalctl's export order, keeping
    /// whole fields while the entry stays within `max_entry` bytes
    /// (counted as its export text). Returns the entry's cursor and what
    /// was kept of it; an entry whose fields cannot be read (a corrupt or
    /// unsupported compressed object) adds nothing, as journalctl skips it.
    pub(crate) fn read_entry(
        &mut self,
        max_entry: usize,
        buf: &mut Vec<u8>,
        fields: &mut Vec<FieldSpan>,
    ) -> Result<(String, Kept), JournalError> {
        let cursor = self.cursor()?;
        let mut realtime = 0;
        let mut monotonic = 0;
        let mut boot = Id128::default();
        // SAFETY: a live handle and out pointers.
        check("read an entry's time", unsafe {
            (self.api.get_realtime_usec)(self.j, &mut realtime)
        })?;
        // SAFETY: as above.
        check("read an entry's time", unsafe {
            (self.api.get_monotonic_usec)(self.j, &mut monotonic, &mut boot)
        })?;
        let start = buf.len();
        let first = fields.len();
        let mut cut = false;
        let mut push = |buf: &mut Vec<u8>, fields: &mut Vec<FieldSpan>, key: &[u8], value: &[u8]| -> bool {
            if buf.len() - start + key.len() + value.len() + 2 > max_entry {
                cut = true;
                return false;
            }
            let k = buf.len();
            buf.extend_from_slice(key);
            let v = buf.len() + 1;
            buf.push(b'=');
            buf.extend_from_slice(value);
            fields.push(FieldSpan {
                key: k..v - 1,
                value: v..buf.len(),
            });
            true
        };
        let mut num = itoa::Buffer::new();
        push(buf, fields, b"__CURSOR", cursor.as_bytes());
        push(buf, fields, b"__REALTIME_TIMESTAMP", num.format(realtime).as_bytes());
        push(buf, fields, b"__MONOTONIC_TIMESTAMP", num.format(monotonic).as_bytes());
        let mut hex = [0u8; 32];
        for (i, b) in boot.0.iter().enumerate() {
            hex[2 * i] = b"0123456789abcdef"[usize::from(b >> 4)];
            hex[2 * i + 1] = b"0123456789abcdef"[usize::from(b & 15)];
        }
        push(buf, fields, b"_BOOT_ID", &hex);
        // SAFETY: a live handle.
        unsafe { (self.api.restart_data)(self.j) };
        loop {
            let mut data: *const c_void = std::ptr::null();
            let mut len = 0usize;
            // SAFETY: a live handle and out pointers.
            let r = unsafe { (self.api.enumerate_data)(self.j, &mut data, &mut len) };
            if r < 0 {
                buf.truncate(start);
                fields.truncate(first);
                return Ok((cursor, Kept::Nothing(std::io::Error::from_raw_os_error(-r))));
            }
            if r == 0 || data.is_null() {
                break;
            }
            // SAFETY: sd_journal_enumerate_data points at `len` bytes that
            // stay valid until the next call on this journal; they are
            // copied before it.
            let field = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
            let Some(eq) = memchr::memchr(b'=', field) else { continue };
            let (key, value) = (&field[..eq], &field[eq + 1..]);
            if key == b"_BOOT_ID" {
                continue;
            }
            if !push(buf, fields, key, value) {
                break;
            }
        }
        Ok((cursor, if cut { Kept::Cut } else { Kept::Whole }))
    }
}

/// What [`Journal::read_entry`] kept of an entry.
#[derive(Debug)]
pub(crate) enum Kept {
    /// Every field.
    Whole,
    /// The fields up to `max_entry` bytes.
    Cut,
    /// Nothing: its fields could not be read, for this reason.
    Nothing(std::io::Error),
}

/// The running boot's id as the journal spells it (32 hex digits).
pub(crate) fn running_boot_id() -> std::io::Result<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    Ok(id.trim().replace('-', ""))
}
