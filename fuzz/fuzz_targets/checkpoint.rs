//! The file source's checkpoint reader: any bytes in `checkpoints.json`
//! load without panicking (a file that is not a checkpoint is set aside),
//! and what loads saves and loads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::sources::file::checkpoint::{Checkpointer, CHECKPOINT_FILE};
use sluice_fuzz::scratch_dir;

fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir("checkpoint");
    let cp = match Checkpointer::new(dir.to_owned()) {
        Ok(cp) => cp,
        Err(e) => panic!("scratch directory: {e}"),
    };
    if let Err(e) = std::fs::write(dir.join(CHECKPOINT_FILE), data) {
        panic!("scratch write: {e}");
    }
    let loaded = cp.load();
    assert!(loaded.existed, "the file was there");
    if let Some((aside, _reason)) = loaded.set_aside {
        assert!(loaded.entries.is_empty(), "a set-aside file yields no entries");
        let _ = std::fs::remove_file(aside);
        return;
    }
    if let Err(e) = cp.save(&loaded.entries) {
        panic!("saving what loaded failed: {e}");
    }
    let again = cp.load();
    assert_eq!(again.set_aside, None, "a saved checkpoint loads");
    assert_eq!(again.entries, loaded.entries, "entries survive a save and a load");
});
