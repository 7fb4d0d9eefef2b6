//! Newline framing (`sluice::framing::LineFramer`): input handed over in
//! pieces of any size gives the same lines as splitting it at once, each cut
//! or dropped at the limit as the policy says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{frame_lines, framed, limited, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let piece = input.size(96);
    let max_line = input.size(48);
    let policy = input.policy();
    let data = input.rest();

    let runs = frame_lines(data, piece, max_line, policy);
    let (got, dropped) = framed(&runs);
    for (line, _) in &got {
        assert!(line.len() <= max_line, "line of {} bytes over the limit {max_line}", line.len());
    }
    // The same lines, split at once.
    let mut parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if parts.last().is_some_and(|l| l.is_empty()) {
        parts.pop();
    }
    let stripped = parts.into_iter().map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let (want, want_dropped) = limited(stripped, max_line, policy);
    assert_eq!(got, want, "lines differ (piece {piece}, max {max_line}, {policy:?})");
    assert_eq!(dropped, want_dropped, "dropped lines differ");
});
