//! The Prometheus exposition formats (text 0.0.4 and OpenMetrics) through
//! the prometheus_scrape source's parser and its rendering into metric
//! samples: no input panics, every rendered sample is valid in the metric
//! sample schema (the entry point checks each one), and the series stay
//! within the guard's limit whatever the body holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::sources::prometheus_scrape::fuzz_exposition;

/// Two formats × (the guard's limit of 8 series + `up`,
/// `scrape_duration_seconds`, `scrape_samples_scraped` twice: once per
/// `honor_labels` setting).
const MOST_SAMPLES: usize = 2 * (8 + 2 * 3) + 2 * 8;

fuzz_target!(|data: &[u8]| {
    let samples = fuzz_exposition(data);
    assert!(samples <= MOST_SAMPLES, "{samples} samples rendered");
});
