//! The `/proc` files the host metrics source reads (stat, meminfo,
//! loadavg, diskstats, net/dev, mounts) through its parsers: no input
//! panics and every sample has a valid name and a finite value (the entry
//! point checks each one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::sources::host_metrics::fuzz_host_metrics;

fuzz_target!(|data: &[u8]| {
    let _ = fuzz_host_metrics(data);
});
