//! The Prometheus exposition formats (text 0.0.4 and OpenMetrics) through
//! the prometheus_scrape source's parser and its rendering into metric
//! samples: no input panics, every rendered sample is valid in the metric
//! sample schema (the entry point checks each one), and the distinct series
//! stay within the guard's limit whatever the body holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::sources::prometheus_scrape::fuzz_exposition;

/// Distinct series: two formats × the guard's limit of 8, plus `up`,
/// `scrape_duration_seconds` and `scrape_samples_scraped` (the same
/// three series every time).
const MOST_SERIES: usize = 2 * 8 + 3;

fuzz_target!(|data: &[u8]| {
    let series = fuzz_exposition(data);
    assert!(series <= MOST_SERIES, "{series} distinct series rendered");
});
