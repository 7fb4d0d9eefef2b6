//! Decoding: each framed line becomes one enriched JSON object in a batch.
//! Container formats (CRI, docker) unwrap first; the payload then goes
//! through [`Decoder::decode_line`], the one place that parses JSON.

pub mod cri;
pub mod docker;
mod extract;
mod json;
pub mod partial;
pub mod syslog;
#[cfg(test)]
pub(crate) mod test_support;
mod values;

pub use json::{escape_json_str, Decoder};
pub use values::EventValues;

/// Equality of byte strings without a call into `memcmp`, for keys, label
/// values, literals and series keys.
pub(crate) use extract::same as same_bytes;

/// Buckets of [`key_bucket`]: a power of two well above the number of keys
/// a config names, and 64 so that a set of buckets fits in one `u64`.
pub(crate) const KEY_BUCKETS: usize = 64;

/// A JSON key's bucket, from its length and its first and last byte. Keys
/// in different buckets differ, so a lookup compares a key in full only
/// with the keys of its bucket (field extraction, and the metadata splice
/// checking whether an event already has a member).
#[inline]
pub(crate) fn key_bucket(key: &[u8]) -> usize {
    match (key.first(), key.last()) {
        (Some(&first), Some(&last)) => (key.len().wrapping_mul(7) ^ first as usize ^ ((last as usize) << 1)) % KEY_BUCKETS,
        _ => 0,
    }
}

/// Counters a decoder accumulates; callers flush them into the self-metrics
/// once per batch, never per event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Events written.
    pub events: u64,
    /// Line bytes read (without newlines).
    pub bytes: u64,
    /// Lines that were not a JSON object and were wrapped as `{"message":…}`.
    pub wrapped: u64,
    /// Wrapped lines whose invalid UTF-8 was replaced.
    pub invalid_utf8: u64,
    /// Lines cut at `max_line_bytes`.
    pub truncated: u64,
}

impl DecodeStats {
    /// Adds another set of counters.
    pub fn add(&mut self, o: &DecodeStats) {
        self.events += o.events;
        self.bytes += o.bytes;
        self.wrapped += o.wrapped;
        self.invalid_utf8 += o.invalid_utf8;
        self.truncated += o.truncated;
    }
}
