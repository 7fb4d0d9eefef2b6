//! `type = "journald"`: the systemd journal, read through libsystemd's
//! `sd-journal` API where the library loads, else through `journalctl
//! --output=export --follow` (why systemd's code and not our own reader of
//! the files: see docs/journald.md), each entry one event with its process
//! metadata, and its cursor checkpointed only after every sink
//! acknowledged it.

mod config;
pub(crate) mod cursor;
mod entry;
mod export;
mod library;
mod reader;
pub(crate) mod source;

pub use config::JournaldConfig;

use super::{SourceComponent, SourceCx, SourceError, SourceErrorKind};

impl SourceComponent for JournaldConfig {
    /// Loads the checkpoint (setting a damaged one aside), then starts
    /// journalctl when the task first runs.
    fn build(&self, cx: SourceCx) -> Result<crate::pipeline::Task<SourceError>, SourceError> {
        let data_dir = cx.data_dir.clone().ok_or_else(|| {
            SourceError::new(
                &cx.name,
                SourceErrorKind::Setting {
                    key: "data_dir",
                    message: "not set: the journald source keeps its cursor in <data_dir>/journald/<source>; set `data_dir` in the config or SLUICE_DATA_DIR".into(),
                },
            )
        })?;
        if self.reader == config::ReaderKind::Library && !library::available() {
            return Err(SourceError::new(
                &cx.name,
                SourceErrorKind::Setting {
                    key: "reader",
                    message: "\"library\" needs libsystemd.so.0, which this machine does not have: use \"journalctl\" or \"auto\"".into(),
                },
            ));
        }
        let file = cursor::CursorFile::new(data_dir.join("journald").join(&*cx.name))
            .map_err(|e| SourceError::new(&cx.name, SourceErrorKind::Checkpoint(e)))?;
        let loaded = file.load();
        if let Some((aside, reason)) = &loaded.set_aside {
            tracing::warn!(source = %cx.name, path = %aside.display(), %reason, "the journal cursor file was damaged and set aside; reading from the start");
        }
        if let Some(c) = &loaded.cursor {
            tracing::info!(source = %cx.name, cursor = %c, "resuming after the acknowledged cursor");
        }
        Ok(Box::pin(source::run(self.clone(), cx, file, loaded.cursor)))
    }

    /// The cursor lives under `data_dir`.
    fn needs_data_dir(&self) -> bool {
        true
    }
}

/// Entry points for the fuzz target (`fuzz/fuzz_targets/journald_export.rs`).
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    /// Feeds `data` to the export reader in pieces of `piece` bytes and
    /// checks that every rendered line is a JSON object.
    pub fn read_export(data: &[u8], piece: usize, max_entry: usize) {
        let mut r = super::reader::EntryReader::new(
            max_entry.max(1),
            vec![b"x.service".to_vec()],
            super::entry::RenderOptions { host: true },
        );
        let (mut out, mut spans) = (Vec::new(), Vec::new());
        let mut buf = Vec::new();
        for chunk in data.chunks(piece.max(1)) {
            buf.extend_from_slice(chunk);
            let st = r.read(&buf, &mut out, &mut spans);
            assert!(st.consumed <= buf.len());
            buf.drain(..st.consumed);
            assert!(buf.len() <= max_entry.max(1), "a partial entry stays within the limit");
        }
        for s in spans {
            let line = &out[s.start as usize..(s.start + s.len) as usize];
            let v: serde_json::Value = serde_json::from_slice(line).expect("a rendered entry is JSON");
            assert!(v.is_object());
        }
    }
}
