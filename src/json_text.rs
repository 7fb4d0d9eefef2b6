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

/// Whether any of the 8 bytes of `w` may be below 0x20, `"` or `\\`
/// (SWAR). Never false when one is; may be true when none is (a borrow
/// between bytes), which only sends the word to the byte table.
#[inline]
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (below_space | zero(w ^ (ONES * b'"' as u64)) | zero(w ^ (ONES * b'\\' as u64))) != 0
}

/// Appends `s` as the inside of a JSON string literal.
pub(crate) fn escape_json_str(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    // Whole words with nothing to escape are skipped eight bytes at a time.
    while i + 8 <= bytes.len() {
        let w = u64::from_le_bytes([
            bytes[i],
            bytes[i + 1],
            bytes[i + 2],
            bytes[i + 3],
            bytes[i + 4],
            bytes[i + 5],
            bytes[i + 6],
            bytes[i + 7],
        ]);
        if word_needs_escape(w) {
            break;
        }
        i += 8;
    }
    for (i, &b) in bytes.iter().enumerate().skip(i) {
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

/// How many bytes at the start of `bytes` are plain string text: none of
/// them is `"`, `\\` or a control byte (a JSON string's content up to its
/// closing quote or its first escape), eight bytes at a time where it can.
#[inline]
pub(crate) fn plain_prefix_len(bytes: &[u8]) -> usize {
    let mut i = 0;
    while let Some(w) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        if word_needs_escape(w) {
            break;
        }
        i += 8;
    }
    match bytes[i..].iter().position(|&b| NEEDS_ESCAPE[b as usize]) {
        Some(p) => i + p,
        None => bytes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        escape_json_str(s, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_land_in_any_position_of_a_word() {
        for pos in 0..20 {
            for c in ['"', '\\', '\n', '\u{1}', '\u{1f}'] {
                let mut s: String = "abcdefghijklmnopqrst".into();
                s.replace_range(pos..pos + 1, &c.to_string());
                let want = serde_json::to_string(&s).unwrap();
                assert_eq!(format!("\"{}\"", escaped(&s)), want, "{s:?}");
            }
        }
        assert_eq!(escaped("plain ascii, no escapes at all ✓"), "plain ascii, no escapes at all ✓");
    }

    proptest! {
        #[test]
        fn escaped_text_reads_back_as_the_same_string(s in "\\PC*|[\\x00-\\x7f]{0,40}") {
            let text = format!("\"{}\"", escaped(&s));
            let back: String = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back, s);
        }
    }
}
