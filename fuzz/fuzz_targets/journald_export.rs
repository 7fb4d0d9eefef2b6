//! journalctl's export format: any bytes, fed in pieces of any size, never
//! panic, never hold more than one partial entry within the limit, and
//! every entry rendered is a JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::sources::journald::fuzzing::read_export;
use sluice_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let piece = usize::from(input.byte()) + 1;
    let max_entry = input.size(255) * 8;
    read_export(input.rest(), piece, max_entry);
});
