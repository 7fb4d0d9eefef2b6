//! RFC 6587 octet-counting framing of stream sockets: no input panics or
//! yields a frame over the limit, and messages written as `LEN SP MSG` come
//! back exactly, whatever pieces the bytes arrive in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::sources::socket::fuzz_octet_frames;
use sluice_fuzz::{framed, limited, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let encode = input.byte() & 1 == 1;
    let piece = input.size(96);
    let max_frame = input.size(48);
    let policy = input.policy();
    let data = input.rest();

    if !encode {
        for lines in fuzz_octet_frames(data, piece, max_frame, policy) {
            for i in 0..lines.len() {
                assert!(lines.line(i).len() <= max_frame, "frame over the limit {max_frame}");
            }
        }
        return;
    }

    // The rest as messages separated by 0xff, each sent with its count.
    let messages: Vec<&[u8]> = data.split(|&b| b == 0xff).filter(|m| !m.is_empty()).collect();
    let mut stream = Vec::new();
    for m in &messages {
        stream.extend_from_slice(format!("{} ", m.len()).as_bytes());
        stream.extend_from_slice(m);
    }
    let (want, want_dropped) = limited(messages, max_frame, policy);
    let runs = fuzz_octet_frames(&stream, piece, max_frame, policy);
    let (got, dropped) = framed(&runs);
    assert_eq!(got, want, "frames differ (piece {piece}, max {max_frame}, {policy:?})");
    assert_eq!(dropped, want_dropped, "dropped frames differ");
});
