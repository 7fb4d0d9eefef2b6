//! OTLP logs and metrics requests, protobuf and OTLP/JSON: no input
//! panics; the source's in-place wire reader takes exactly the requests
//! prost takes and makes the same events as prost's messages do, with the
//! source's metadata spliced in as decode would; every record becomes one
//! line of JSON object and the events go back to as many records, every
//! data point becomes at most one sample and each sample goes back to a
//! data point. The first byte chooses:
//! bit 0 JSON, bit 7 metrics (the logs seeds start with 0 or `{`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::{fuzz_otlp_logs, fuzz_otlp_metrics};
use sluice_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.byte();
    let json = selector & 1 == 1;
    if selector & 0x80 != 0 {
        fuzz_otlp_metrics(input.rest(), json);
    } else {
        fuzz_otlp_logs(input.rest(), json);
    }
});
