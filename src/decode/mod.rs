//! Decoding: each framed line becomes one enriched JSON object in a batch.
//! Container formats (CRI, docker) unwrap first; the payload then goes
//! through [`Decoder::decode_line`], the one place that parses JSON.

pub mod cri;
pub mod docker;
mod extract;
mod json;
pub(crate) mod partial;
mod scan;
pub mod syslog;
mod tape;
#[cfg(test)]
pub(crate) mod test_support;
mod text_test;
mod values;

pub use json::Decoder;
pub(crate) use text_test::LineTests;
pub(crate) use values::{EventObserver, EventValues, MemberAt};

/// The validating scan of one JSON object's text, which reports where its
/// top-level members are: the decoder's fast path, and the `fields`
/// transform's way into an event's bytes.
pub(crate) use scan::scan_object;

/// Equality of byte strings without a call into `memcmp`, for keys, label
/// values, literals and series keys.
pub(crate) use text_test::{same as same_bytes, starts_with, TextKind, TextTest};

/// Counters a decoder accumulates; callers flush them into the self-metrics
/// once per batch, never per event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Events written.
    pub(crate) events: u64,
    /// Line bytes read (without newlines).
    pub(crate) bytes: u64,
    /// Lines that were not a JSON object and were wrapped as `{"message":…}`.
    pub wrapped: u64,
    /// Wrapped lines whose invalid UTF-8 was replaced.
    pub(crate) invalid_utf8: u64,
    /// Lines cut at `max_line_bytes`.
    pub(crate) truncated: u64,
}

impl DecodeStats {}
