//! Kubernetes watch streams of Events: any bytes, read as watch lines and
//! rendered as sluice events, never panic, and every event rendered is one
//! line holding a JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::sources::kubernetes_events::fuzzing::watch_lines;

fuzz_target!(|data: &[u8]| {
    watch_lines(data);
});
