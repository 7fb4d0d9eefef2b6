//! The metric sample JSON decoder the Kafka source runs in
//! `events = "metrics"` mode, on NUL-separated messages: no input panics,
//! and a message it accepts is copied as one line that reads back as the
//! very same sample (names, labels, kind, timestamp, every number by its
//! bits); the entry point checks each one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::metrics::sample::fuzz_samples;

fuzz_target!(|data: &[u8]| {
    let copied = fuzz_samples(data);
    assert!(copied <= data.len() + 1, "{copied} samples from {} bytes", data.len());
});
