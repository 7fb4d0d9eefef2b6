//! What the decoder's unit tests share.

use bytes::Bytes;
use std::sync::Arc;

use super::Decoder;
use crate::enrich::SourceContext;
use crate::event::{BatchBuilder, FieldSet};
use crate::framing::{split_lines, Lines};

/// `text` framed as one chunk.
pub(crate) fn lines(text: &[u8]) -> Lines {
    let chunk = Bytes::copy_from_slice(text);
    let mut spans = Vec::new();
    split_lines(&chunk, &mut spans);
    Lines {
        chunk,
        spans,
        dropped: 0,
        may_hold_breaks: false,
    }
}

/// The events `decode` writes into an empty batch, parsed.
pub(crate) fn decoded(decode: impl FnOnce(&mut Decoder, &mut BatchBuilder)) -> Vec<serde_json::Value> {
    let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 1024, 8);
    decode(&mut Decoder::new(), &mut out);
    let b = out.build(context(), std::time::SystemTime::now());
    b.events()
        .map(|e| {
            assert!(!e.contains(&b'\n'), "an event spans lines: {:?}", String::from_utf8_lossy(e));
            serde_json::from_slice(e).unwrap()
        })
        .collect()
}

/// A source with no metadata, to build test batches with.
pub(crate) fn context() -> Arc<SourceContext> {
    Arc::new(SourceContext::new("t".into(), "file", String::new(), Default::default()))
}
