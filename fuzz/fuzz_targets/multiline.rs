//! Multiline: rules chosen by the first byte (every preset and custom
//! mode), lines in pieces, timeouts and the end of the stream. Lines leave
//! in order, none lost or duplicated, groups within their bounds, nothing
//! left open, and every event decodes to one JSON object on one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::decode::Decoder;

fuzz_target!(|data: &[u8]| {
    let batches = sluice::multiline::fuzz_multiline(data);
    let mut decoder = Decoder::new();
    let fragment = sluice_fuzz::fragment();
    for b in &batches {
        let mut out = sluice_fuzz::builder();
        b.decode(&mut decoder, &fragment, &mut out);
        let batch = sluice_fuzz::build(out);
        sluice_fuzz::check_batch(&batch);
    }
});
