//! The disk buffer's segment reader, as after a restart: magic, record
//! frames (`len`, `crc32c`), and record payloads decoded back into batches,
//! with the field set they were written with or another one. No segment
//! makes it panic or loop.
//!
//! The first byte picks how the rest is used: as the raw segment file, or
//! (so the fuzzer gets past the CRC) as payloads separated by 0xff that the
//! target frames with correct lengths and CRCs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::buffer::fuzz_read_segment;
use sluice_fuzz::{scratch_dir, Input, FIELDS};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let data = input.rest();
    let fields: &[&str] = if mode & 2 == 0 { FIELDS } else { &[] };
    let segment = if mode & 1 == 0 {
        data.to_vec()
    } else {
        let mut seg = b"SLCBUF01".to_vec();
        for payload in data.split(|&b| b == 0xff) {
            seg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            seg.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
            seg.extend_from_slice(payload);
        }
        seg
    };
    let dir = scratch_dir("disk_record");
    if let Err(e) = fuzz_read_segment(dir, &segment, fields) {
        panic!("scratch I/O failed: {e}");
    }
});
