//! CRI container log lines (`<time> <stream> <P|F> <message>`): framing,
//! unwrapping, merging of partial (`P`) pieces per stream under the size
//! cap, expiry of unfinished pieces, and decoding. Every event is valid
//! JSON and nothing stays pending once every piece expired.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::decode::cri::CriReader;

fuzz_target!(|data: &[u8]| sluice_fuzz::run_container(data, CriReader::new));
