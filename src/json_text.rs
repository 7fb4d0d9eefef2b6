//! How sluice writes JSON text and hashes JSON keys, shared by the metadata
//! it renders (`enrich`) and the events it decodes (`decode`). A leaf: it
//! imports nothing of sluice's.

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

/// Bytes that need escaping inside a JSON string: `"`, `\` and controls.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Appends `s` as the inside of a JSON string literal.
pub(crate) fn escape_json_str(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[b as usize] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}
