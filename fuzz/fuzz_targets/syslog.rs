//! Syslog lines, RFC 3164 and RFC 5424 (the octet-counted framing has its
//! own target, `octet`): the parser on any bytes, and every line framed and
//! decoded into an event, which is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::decode::syslog::{self, SyslogDecoder};
use sluice::decode::Decoder;
use sluice_fuzz::{build, builder, check_batch, fragment, frame_lines, Input};
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let max_line = input.size(255);
    let policy = input.policy();
    // The receive time decides the year of RFC 3164 timestamps.
    let received_at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(input.byte()) * 40_000_000);
    let data = input.rest();

    let _ = syslog::parse(data);
    let fragment = fragment();
    let mut syslog = SyslogDecoder::new(received_at);
    let mut decoder = Decoder::new();
    let mut out = builder();
    let mut lines_in = 0;
    for lines in frame_lines(data, 4096, max_line, policy) {
        for (i, span) in lines.spans.iter().enumerate() {
            syslog.decode_line(&mut decoder, lines.line(i), span.truncated, &fragment, &mut out);
            lines_in += 1;
        }
    }
    let _ = (syslog.take_malformed(), syslog.take_truncated());
    let batch = build(out);
    assert_eq!(batch.len(), lines_in, "one event per line");
    check_batch(&batch);
});
