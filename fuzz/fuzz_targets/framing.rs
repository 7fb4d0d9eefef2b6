//! Newline framing (`sluice::framing::LineFramer`): input handed over in
//! pieces of any size gives the same lines as splitting it at once, each cut
//! or dropped at the limit as the policy says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::framing::OverflowPolicy;
use sluice_fuzz::{frame_lines, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let piece = input.size(96);
    let max_line = input.size(48);
    let policy = input.policy();
    let data = input.rest();

    let mut got: Vec<(&[u8], bool)> = Vec::new();
    let mut dropped = 0;
    let runs = frame_lines(data, piece, max_line, policy);
    for lines in &runs {
        dropped += lines.dropped;
        for (i, span) in lines.spans.iter().enumerate() {
            let line = lines.line(i);
            assert!(line.len() <= max_line, "line of {} bytes over the limit {max_line}", line.len());
            got.push((line, span.truncated));
        }
    }

    // The same lines, split at once.
    let mut want: Vec<(&[u8], bool)> = Vec::new();
    let mut want_dropped = 0;
    let mut parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if parts.last().is_some_and(|l| l.is_empty()) {
        parts.pop();
    }
    for mut line in parts {
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        if line.len() <= max_line {
            want.push((line, false));
        } else if policy == OverflowPolicy::Truncate {
            want.push((&line[..max_line], true));
        } else {
            want_dropped += 1;
        }
    }
    assert_eq!(got, want, "lines differ (piece {piece}, max {max_line}, {policy:?})");
    assert_eq!(dropped, want_dropped, "dropped lines differ");
});
