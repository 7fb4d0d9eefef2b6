//! Docker json-file lines for multiline: each wrapper is parsed in order on
//! the file's reader (its `log` unescaped) so that the stage can judge and
//! join the lines of one stream. Only when multiline is on: without it the
//! wrappers go to the decode pool whole.

use serde::Deserialize;

use crate::decode::cri::{CriBatch, Record};
use crate::decode::docker::DockerBatch;
use crate::decode::partial::{Piece, Stream};

/// The members of a wrapper the stage needs.
#[derive(Deserialize)]
struct Wrapper<'a> {
    #[serde(borrow)]
    log: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    stream: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<std::borrow::Cow<'a, str>>,
}

/// The events of a docker batch as records: `log` without its newline,
/// with its stream and time. A line that is not a wrapper is kept as it is.
/// `chunk_offset` is where the batch's chunk starts in the file; a wrapper
/// assembled from pieces has no offset of its own and gets 0, which holds
/// the checkpoint where it already is (offsets recorded never go back).
pub(crate) fn docker_records(batch: DockerBatch, chunk_offset: u64) -> CriBatch {
    let mut merged = Vec::with_capacity(batch.wrapper_bytes());
    let mut records = Vec::with_capacity(batch.records.len());
    for (piece, truncated) in &batch.records {
        let line = piece.get(&batch.chunk, &batch.merged);
        let offset = if piece.merged { 0 } else { chunk_offset + u64::from(piece.start) };
        let record = match serde_json::from_slice::<Wrapper<'_>>(line) {
            Ok(w) => {
                let log = w.log.strip_suffix('\n').unwrap_or(&w.log);
                let log = log.strip_suffix('\r').unwrap_or(log);
                let stream = match w.stream.as_deref() {
                    Some("stdout") => Some(Stream::Stdout),
                    Some("stderr") => Some(Stream::Stderr),
                    _ => None,
                };
                Record {
                    payload: Piece::append(&mut merged, log.as_bytes()),
                    time: Piece::append(&mut merged, w.time.as_deref().unwrap_or_default().as_bytes()),
                    stream,
                    truncated: *truncated,
                    offset,
                    breaks: false,
                    cut: None,
                }
            }
            Err(_) => Record {
                payload: Piece::append(&mut merged, line),
                time: Piece::default(),
                stream: None,
                truncated: *truncated,
                offset,
                // A foreign line holds no newline; a cut wrapper may hold
                // an escaped one only.
                breaks: false,
                cut: None,
            },
        };
        records.push(record);
    }
    crate::framing::recycle(batch.chunk);
    CriBatch {
        chunk: bytes::Bytes::new(),
        merged,
        records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::docker::DockerReader;
    use crate::decode::test_support::{decoded, lines};
    use crate::enrich::Fragment;
    use crate::multiline::{Multiline, MultilineConfig};
    use std::time::Instant;

    #[test]
    fn docker_lines_of_a_trace_join_per_stream_with_the_first_time() {
        let text = concat!(
            r#"{"log":"Exception in thread \"main\" java.lang.Error: x\n","stream":"stderr","time":"t1"}"#,
            "\n",
            r#"{"log":"out\n","stream":"stdout","time":"t2"}"#,
            "\n",
            r#"{"log":"\tat A.b(A.java:1)\n","stream":"stderr","time":"t3"}"#,
            "\n",
            r#"{"log":"done\n","stream":"stderr","time":"t4"}"#,
            "\n",
            "not a wrapper\n",
        );
        let mut r = DockerReader::new(1 << 20);
        let mut m = Multiline::new(MultilineConfig::preset("java").compile().unwrap());
        let now = Instant::now();
        let batch = r.unwrap(&lines(text.as_bytes()), 0, now);
        let records = docker_records(batch, 0);
        let first_len = text.find('\n').unwrap() as u64 + 1;
        assert_eq!(
            (records.records[0].offset, records.records[1].offset),
            (0, first_len),
            "offsets are those of the lines"
        );
        let out = m.regroup(records, now);
        let mut ev = decoded(|d, o| out.decode(d, &Fragment::default(), o));
        let rest = m.take_expired(now, true).unwrap();
        ev.extend(decoded(|d, o| rest.decode(d, &Fragment::default(), o)));
        let msgs: Vec<_> = ev.iter().map(|e| (e["stream"].clone(), e["message"].clone())).collect();
        assert!(
            msgs.contains(&(
                "stderr".into(),
                "Exception in thread \"main\" java.lang.Error: x\n\tat A.b(A.java:1)".into()
            )),
            "{msgs:?}"
        );
        assert!(msgs.contains(&("stdout".into(), "out".into())));
        assert!(msgs.contains(&("stderr".into(), "done".into())));
        assert!(msgs.contains(&(serde_json::Value::Null, "not a wrapper".into())));
        let joined = ev
            .iter()
            .find(|e| e["message"].as_str().is_some_and(|m| m.contains("\tat")))
            .unwrap();
        assert_eq!(joined["time"], "t1");
    }
}
