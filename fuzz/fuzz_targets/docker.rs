//! docker json-file lines (`{"log":…,"stream":…,"time":…}`): framing,
//! unwrapping, merging of partial pieces (a `log` without its newline) per
//! stream under the size cap, expiry of unfinished pieces, and decoding.
//! Every event is valid JSON and nothing stays pending once every piece
//! expired.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::decode::docker::DockerReader;

fuzz_target!(|data: &[u8]| sluice_fuzz::run_container(data, DockerReader::new));
