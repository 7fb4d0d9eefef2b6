//! The statsd line protocol (DogStatsD tags, sample rates, sets, gauge
//! deltas) through the statsd source's parser and aggregation: no input
//! panics, every flushed sample is valid in the metric sample schema (the
//! entry point checks each one), and the series stay within the limit and
//! its overflow budget, whatever the lines hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::sources::statsd::fuzz_statsd;

/// The entry point's series limit (8) plus its overflow budget (16).
const MOST_SERIES: usize = 8 + 16;

fuzz_target!(|data: &[u8]| {
    let samples = fuzz_statsd(data);
    assert!(samples <= MOST_SERIES, "{samples} series flushed");
});
