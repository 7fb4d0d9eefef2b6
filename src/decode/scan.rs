//! A validating scan of a line that holds one JSON object, for events that
//! need no field values: it proves the line valid and reports its top-level
//! keys without building simd-json's tape, unescaping strings or converting
//! numbers (about half of the pipe's CPU went there).
//!
//! The scan is sure or it gives up. It answers `true` only for a line that
//! simd-json accepts too; anything it does not settle cheaply (an exponent,
//! a long number, a lone surrogate escape, deep nesting, an escaped
//! top-level key, invalid JSON) returns `false`, and the caller parses the
//! line with simd-json, which decides. A differential test and the `json`
//! fuzz target hold the two to that.

use std::ops::Range;

/// Containers nested deeper than this are left to simd-json.
const MAX_DEPTH: u32 = 64;

/// Digits a number may have (integer and fraction together) and still be
/// taken as valid here: within them every integer fits an `i64` and every
/// other value is a finite `f64`.
const MAX_DIGITS: usize = 18;

/// Whether `line` is certainly one valid JSON object (with nothing but
/// whitespace around it), calling `on_member` with where each top-level
/// member's key (between its quotes, without an escape) and value (its
/// text exactly, without the whitespace around it; never at offset 0) are
/// in `line`, and whether the value is a string with an escape, as it
/// goes, in the order written. `false` means "not sure":
/// parse the line instead, and disregard the members already reported.
///
/// Everything it accepts, `serde_json` reads too (its grammar is a subset
/// of theirs, and its depth limit lower).
pub(crate) fn scan_object(line: &[u8], on_member: impl FnMut(Range<usize>, Range<usize>, bool)) -> bool {
    scan::<true>(line, on_member)
}

/// [`scan_object`] for a caller that needs the top-level keys only: each
/// key is reported as it is read, with an empty value range. The value
/// bookkeeping is compiled out, which the plain pipe, reading no field,
/// notices.
pub(crate) fn scan_object_keys(line: &[u8], mut on_key: impl FnMut(Range<usize>)) -> bool {
    scan::<false>(line, |key, _, _| on_key(key))
}

/// Where the value of the member whose key ends at `key_end` (its closing
/// quote) starts in `line`, for a line [`scan_object_keys`] accepted: past
/// the whitespace, the colon and the whitespace after the key.
#[inline(always)]
pub(crate) fn value_start(line: &[u8], key_end: usize) -> usize {
    let mut start = key_end + 1;
    while let Some(b' ' | b'\t' | b'\n' | b'\r' | b':') = line.get(start) {
        start += 1;
    }
    start
}

/// Where the value that starts at `start` in `line` ends, and whether it
/// is a string with an escape, for a line [`scan_object_keys`] accepted: a
/// caller that wants a few values finds them from their keys afterwards,
/// and the scan keeps the keys-only shape (reporting every value from
/// inside it cost more than the values themselves). `None` only for a line
/// the scan did not accept.
#[inline]
pub(crate) fn value_at(line: &[u8], start: usize) -> Option<(Range<usize>, bool)> {
    let mut s = Scanner { b: line, i: start };
    let mut escaped = false;
    match s.peek()? {
        b'"' => {
            s.i += 1;
            escaped = s.string()?;
        }
        b'{' | b'[' => {
            // Valid (the scan said so): only brackets outside strings count.
            let mut depth = 0usize;
            loop {
                match s.peek()? {
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => depth -= 1,
                    b'"' => {
                        s.i += 1;
                        s.string()?;
                        continue;
                    }
                    _ => {}
                }
                s.i += 1;
                if depth == 0 {
                    break;
                }
            }
        }
        b't' | b'n' => s.i += 4,
        b'f' => s.i += 5,
        _ => {
            if !s.number() {
                return None;
            }
        }
    }
    (s.i <= line.len()).then_some((start..s.i, escaped))
}

/// Where the string whose first byte (after its opening quote) is at
/// `from` in `line` ends (after its closing quote), in a line
/// [`scan_object_keys`] accepted; `None` when an escape comes first, or for
/// a line the scan did not accept.
#[inline(always)]
pub(crate) fn string_end(line: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(block) = line.get(i..i + 16) {
        let mask = quotes_and_backslashes(block.try_into().ok()?);
        if mask != 0 {
            let at = i + mask.trailing_zeros() as usize;
            return (line[at] == b'"').then_some(at + 1);
        }
        i += 16;
    }
    let at = i + line.get(i..)?.iter().position(|&c| c == b'"' || c == b'\\')?;
    (line[at] == b'"').then_some(at + 1)
}

/// The scan; with `VALUES`, members are reported after their values.
///
/// The top-level object is read member by member in straight-line code:
/// every step knows what comes next, so the processor predicts it from
/// where it is; so are the objects and arrays inside it
/// ([`Scanner::container`]). A state machine that jumped through a table
/// per token read it before, and with an observer's work between the
/// tokens that jump was mispredicted often enough to cost more than the
/// observer itself.
#[inline(always)]
fn scan<const VALUES: bool>(line: &[u8], mut on_member: impl FnMut(Range<usize>, Range<usize>, bool)) -> bool {
    let mut s = Scanner { b: line, i: 0 };
    s.skip_ws();
    if s.peek() != Some(b'{') {
        return false;
    }
    s.i += 1;
    s.skip_ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
        s.skip_ws();
        return s.i == line.len();
    }
    loop {
        if s.peek() != Some(b'"') {
            return false;
        }
        s.i += 1;
        let start = s.i;
        // An escaped top-level key is left to simd-json.
        if s.string() != Some(false) {
            return false;
        }
        let key = start..s.i - 1;
        if !VALUES {
            on_member(key.clone(), 0..0, false);
        }
        s.skip_ws();
        if s.peek() != Some(b':') {
            return false;
        }
        s.i += 1;
        s.skip_ws();
        let value_start = s.i;
        let Some(escaped) = s.value(2) else {
            return false;
        };
        if VALUES {
            on_member(key, value_start..s.i, escaped);
        }
        s.skip_ws();
        match s.peek() {
            Some(b',') => {
                s.i += 1;
                s.skip_ws();
            }
            Some(b'}') => {
                s.i += 1;
                s.skip_ws();
                return s.i == line.len();
            }
            _ => return false,
        }
    }
}

/// Powers of ten that an `f64` holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The largest integer below which every integer is an exact `f64` (2^53 - 1).
const MAX_EXACT_SIGNIFICAND: u64 = (1 << 53) - 1;

/// The value simd-json gives the number `text` (as [`scan_object`] accepts
/// numbers: no exponent, at most [`MAX_DIGITS`] digits), computed the way
/// simd-json computes it: an integer through `i64`/`u64`, a fraction as
/// its digits divided by a power of ten when both are exact `f64`s (one
/// correctly rounded division). `None` for any other text, and for a
/// fraction with more significant bits than that: simd-json then takes
/// another route, and the caller parses the line with it.
pub(crate) fn number_value(text: &[u8]) -> Option<f64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > MAX_DIGITS + 1 {
        return None;
    }
    let mut significand: u64 = 0;
    let mut fraction_digits = None;
    for (i, &c) in digits.iter().enumerate() {
        match c {
            b'0'..=b'9' => significand = significand.checked_mul(10)?.checked_add(u64::from(c - b'0'))?,
            b'.' if fraction_digits.is_none() => fraction_digits = Some(digits.len() - i - 1),
            _ => return None,
        }
    }
    match fraction_digits {
        None => {
            let n = i64::try_from(significand).ok()?;
            Some(if negative { n.wrapping_neg() as f64 } else { n as f64 })
        }
        Some(k) if significand <= MAX_EXACT_SIGNIFICAND => {
            let f = significand as f64 / *EXACT_POWERS_OF_TEN.get(k)?;
            Some(if negative { -f } else { f })
        }
        Some(_) => None,
    }
}

/// A cursor over the line.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline(always)]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    /// The rest of a string whose opening quote was consumed; leaves the
    /// cursor after the closing quote. `Some(escaped)` if it is valid,
    /// `None` if invalid or not settled here.
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        let start = self.i;
        let mut escaped = false;
        let mut non_ascii = false;
        loop {
            let at = self.next_special()?;
            self.i = at + 1;
            match self.b[at] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            self.i += 1;
                            let unit = self.hex4()?;
                            if (0xDC00..0xE000).contains(&unit) {
                                return None;
                            }
                            if (0xD800..0xDC00).contains(&unit) {
                                if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return None;
                                }
                                self.i += 2;
                                if !(0xDC00..0xE000).contains(&self.hex4()?) {
                                    return None;
                                }
                            }
                        }
                        _ => return None,
                    }
                }
                0x80.. => non_ascii = true,
                // A control character.
                _ => return None,
            }
        }
        if non_ascii && std::str::from_utf8(&self.b[start..self.i - 1]).is_err() {
            return None;
        }
        Some(escaped)
    }

    /// Where the next byte from the cursor on is one a string cannot hold
    /// as it is: a quote, a backslash, a control character or a non-ASCII
    /// byte (which needs a UTF-8 check). `None` at the end of the line.
    #[inline(always)]
    fn next_special(&self) -> Option<usize> {
        let mut i = self.i;
        while let Some(block) = self.b.get(i..i + 16) {
            let mask = special_bytes(block.try_into().ok()?);
            if mask != 0 {
                return Some(i + mask.trailing_zeros() as usize);
            }
            i += 16;
        }
        self.b[i..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c))
            .map(|p| i + p)
    }

    /// Four hex digits of a `\u` escape.
    #[inline(always)]
    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut unit = 0;
        for &d in digits {
            unit = unit * 16 + char::from(d).to_digit(16)?;
        }
        self.i += 4;
        Some(unit)
    }

    /// The value at the cursor, `depth` containers deep if it is an object
    /// or an array; leaves the cursor after it. `Some(escaped)` when it is
    /// valid, `escaped` saying it is a string with an escape.
    #[inline(always)]
    fn value(&mut self, depth: u32) -> Option<bool> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.string()
            }
            b'{' | b'[' => self.container(depth).then_some(false),
            c @ (b't' | b'f' | b'n') => self.word(c).then_some(false),
            b'-' | b'0'..=b'9' => self.number().then_some(false),
            _ => None,
        }
    }

    /// The object or array that starts at the cursor, `depth` containers
    /// deep (the top-level object is 1); leaves the cursor after it.
    /// Containers nest to [`MAX_DEPTH`], the top-level object included.
    /// Read as the top level is, in straight-line code, with a call per
    /// container inside it.
    fn container(&mut self, depth: u32) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        let object = self.peek() == Some(b'{');
        let close = if object { b'}' } else { b']' };
        self.i += 1;
        self.skip_ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return true;
        }
        loop {
            if object {
                if self.peek() != Some(b'"') {
                    return false;
                }
                self.i += 1;
                if self.string().is_none() {
                    return false;
                }
                self.skip_ws();
                if self.peek() != Some(b':') {
                    return false;
                }
                self.i += 1;
                self.skip_ws();
            }
            if self.value(depth + 1).is_none() {
                return false;
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.skip_ws();
                }
                Some(c) if c == close => {
                    self.i += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    /// `true`, `false` or `null`, whose first byte `c` is at the cursor.
    #[inline(always)]
    fn word(&mut self, c: u8) -> bool {
        let word: &[u8] = match c {
            b't' => b"true",
            b'f' => b"false",
            _ => b"null",
        };
        if self.b.get(self.i..self.i + word.len()) != Some(word) {
            return false;
        }
        self.i += word.len();
        true
    }

    /// A number without an exponent and of at most [`MAX_DIGITS`] digits
    /// (others are left to simd-json). What follows it is the caller's to
    /// check: only whitespace, `,`, `}` or `]` pass.
    #[inline(always)]
    fn number(&mut self) -> bool {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let int_start = self.i;
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return false,
        }
        let mut count = self.i - int_start;
        if self.peek() == Some(b'.') {
            self.i += 1;
            let frac_start = self.i;
            self.digits();
            if self.i == frac_start {
                return false;
            }
            count += self.i - frac_start;
        }
        count <= MAX_DIGITS && !matches!(self.peek(), Some(b'e' | b'E' | b'0'..=b'9'))
    }

    #[inline(always)]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }
}

/// A bit per byte of `block` that is a quote, a backslash, a control
/// character or non-ASCII, lowest bit first (SSE2, in every x86-64).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn special_bytes(block: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8};
    // SAFETY: SSE2 is part of the x86-64 baseline, so these intrinsics are
    // always available; the load reads exactly the 16 bytes of `block`
    // (unaligned loads are allowed).
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Signed: below 0x20 are the controls and, negative, the non-ASCII bytes.
        let other = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), other)) as u32
    }
}

/// A bit per byte of `block` that is a quote or a backslash, lowest bit
/// first (SSE2).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn quotes_and_backslashes(block: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8};
    // SAFETY: as in `special_bytes`.
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        _mm_movemask_epi8(_mm_or_si128(quote, backslash)) as u32
    }
}

/// [`quotes_and_backslashes`] without SIMD.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn quotes_and_backslashes(block: &[u8; 16]) -> u32 {
    block
        .iter()
        .enumerate()
        .filter(|(_, &c)| c == b'"' || c == b'\\')
        .fold(0, |m, (i, _)| m | 1 << i)
}

/// [`special_bytes`] without SIMD.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn special_bytes(block: &[u8; 16]) -> u32 {
    block
        .iter()
        .enumerate()
        .filter(|(_, &c)| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c))
        .fold(0, |m, (i, _)| m | 1 << i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// simd-json's verdict on `line`: a valid document whose root is an object.
    fn simd_json_accepts(line: &[u8]) -> bool {
        let mut copy = line.to_vec();
        let accepted = matches!(simd_json::to_borrowed_value(&mut copy), Ok(simd_json::BorrowedValue::Object(_)));
        accepted
    }

    fn keys(line: &str) -> Option<Vec<String>> {
        let mut keys = Vec::new();
        scan_object(line.as_bytes(), |k, _, _| {
            keys.push(String::from_utf8_lossy(&line.as_bytes()[k]).into_owned())
        })
        .then_some(keys)
    }

    #[test]
    fn a_plain_event_is_valid_and_its_top_level_keys_are_reported_in_order() {
        let line = r#"{"time":"2026-11-01T00:00:00Z","level":"info","http":{"status":200,"bytes":[1,2.5,-3]},"ok":true,"x":null}"#;
        assert_eq!(keys(line).unwrap(), ["time", "level", "http", "ok", "x"]);
        assert_eq!(keys(" {} \t").unwrap(), Vec::<String>::new());
        assert_eq!(
            keys(r#"{"a":[],"b":{},"c":[[]],"d":"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"}"#).unwrap(),
            ["a", "b", "c", "d"]
        );
        assert_eq!(keys("{\"é\":\"ü ünïcode\"}").unwrap(), ["é"]);
    }

    #[test]
    fn what_it_does_not_settle_is_left_to_simd_json() {
        for line in [
            r#"{"a":1e5}"#,
            r#"{"a":12345678901234567890}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"a\u0062":1}"#,
            &format!("{}{}", "{\"a\":".to_owned() + &"[".repeat(70), "]".repeat(70) + "}"),
        ] {
            assert!(keys(line).is_none(), "{line}");
        }
        // An escaped key below the top level is fine.
        assert_eq!(keys(r#"{"a":{"b\u0063":1}}"#).unwrap(), ["a"]);
    }

    #[test]
    fn invalid_json_is_never_called_valid() {
        for line in [
            "{",
            "}",
            "{]",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":01}"#,
            r#"{"a":-}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":+1}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":"x}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":1} {"b":2}"#,
            r#"{"a":1}x"#,
            r#"{"a":[1}"#,
            r#"{"a":{1:2}}"#,
            r#"{"a" 1}"#,
            r#"{"a":1 "b":2}"#,
            r#"[1]"#,
            r#"{"a":"1"]"#,
            r#"{"a":-0.5x}"#,
            r#"{"a":True}"#,
        ] {
            assert!(keys(line).is_none(), "called valid: {line}");
            assert!(!simd_json_accepts(line.as_bytes()), "simd-json rejects it too: {line}");
        }
        let invalid_utf8 = b"{\"a\":\"\xff\"}";
        assert!(!scan_object(invalid_utf8, |_, _, _| {}));
    }

    #[test]
    fn every_line_it_calls_valid_simd_json_accepts_and_the_members_match() {
        // Every cut and every one-byte change of a few events.
        let events = [
            r#"{"time":"2026-11-01T00:00:00.000250Z","level":"info","msg":"a \"quoted\" word","status":200,"duration_ms":3.741,"http":{"proto":"HTTP/1.1","bytes":18331},"tags":["a","b"],"ok":false,"n":null}"#,
            r#"{"a":-0,"b":0.0,"c":[{"d":[true,false,null]}],"e":"\u00e9\ud83d\ude00","é":"ü"}"#,
            "{ \"a\" : { } , \"b\":[ ]\t,\"c\" :\"x\" ,\"a\":-12.5 }",
        ];
        let swaps = [
            b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'-', b'.', b'e', b' ', b'\n', 0x01, 0xC3, b'u', b'x',
        ];
        for event in events {
            let bytes = event.as_bytes();
            let mut lines = Vec::new();
            for cut in 0..bytes.len() {
                lines.push(bytes[..cut].to_vec());
                for &s in &swaps {
                    let mut l = bytes.to_vec();
                    l[cut] = s;
                    lines.push(l);
                }
            }
            lines.push(bytes.to_vec());
            for line in lines {
                let mut keys = Vec::new();
                let mut values = Vec::new();
                let mut escapes = Vec::new();
                let mut members = Vec::new();
                let valid = scan_object(&line, |k, v, escaped| {
                    keys.push(line[k.clone()].to_vec());
                    escapes.push(escaped);
                    values.push(line[v.clone()].to_vec());
                    members.push((k, v, escaped));
                });
                // The keys-only scan gives the same verdict and keys, and
                // each value found after its key is the one reported.
                let mut only_keys = Vec::new();
                assert_eq!(scan_object_keys(&line, |k| only_keys.push(line[k].to_vec())), valid);
                if valid {
                    assert_eq!(only_keys, keys);
                    for (k, v, escaped) in members {
                        assert_eq!(value_start(&line, k.end), v.start, "{:?}", String::from_utf8_lossy(&line));
                        assert_eq!(value_at(&line, v.start), Some((v, escaped)), "{:?}", String::from_utf8_lossy(&line));
                    }
                }
                if valid {
                    let mut copy = line.clone();
                    let Ok(simd_json::BorrowedValue::Object(_)) = simd_json::to_borrowed_value(&mut copy) else {
                        panic!("called valid, simd-json rejects: {:?}", String::from_utf8_lossy(&line));
                    };
                    let mut want: Vec<Vec<u8>> = Vec::new();
                    let mut copy2 = line.clone();
                    let tape = simd_json::to_tape(&mut copy2).expect("valid");
                    let simd_json::Node::Object { len, .. } = tape.0[0] else { panic!() };
                    let mut idx = 1;
                    for value in &values {
                        let simd_json::Node::String(k) = tape.0[idx] else { panic!() };
                        want.push(k.as_bytes().to_vec());
                        let count = super::super::tape::node_count(&tape.0[idx + 1]);
                        // The value's bytes alone are the same value.
                        let mut alone = value.clone();
                        let own = simd_json::to_tape(&mut alone).expect("a member's value is valid alone");
                        assert_eq!(own.0[..], tape.0[idx + 1..idx + 1 + count], "{:?}", String::from_utf8_lossy(&line));
                        idx += 1 + count;
                    }
                    assert_eq!(len, values.len());
                    for (value, escaped) in values.iter().zip(escapes) {
                        assert_eq!(escaped, value[0] == b'"' && value.contains(&b'\\'));
                    }
                    assert_eq!(keys, want, "{:?}", String::from_utf8_lossy(&line));
                }
            }
        }
    }
}
