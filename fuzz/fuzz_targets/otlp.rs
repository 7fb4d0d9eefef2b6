//! OTLP logs requests, protobuf and OTLP/JSON: no input panics, every
//! record becomes one line of JSON object, and the events go back to as
//! many records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::fuzz_otlp_logs;
use sluice_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let json = input.byte() & 1 == 1;
    fuzz_otlp_logs(input.rest(), json);
});
