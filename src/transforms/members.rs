//! The members of a JSON object's text, found in one strict pass, so that
//! a transform can change an event's top-level members in its bytes
//! (drop a member's span, write a new value after the same key, append a
//! member) instead of parsing it into a map and serialising it again.
//!
//! The pass accepts what `serde_json` reads into a map and nothing else:
//! the grammar of RFC 8259, strings of valid UTF-8 whose `\u` escapes pair
//! their surrogates, and at most [`MAX_DEPTH`] levels of nesting. Text it
//! refuses is left to the parsing path, which then behaves as before.

use serde_json::Value;

use crate::decode::{scan_object, MemberAt};
use crate::event::FieldValueRef;
use crate::json_text::plain_prefix_len;

/// Deepest nesting the pass follows (the top-level object is level 1);
/// `serde_json` refuses a document at its 128th level.
pub(crate) const MAX_DEPTH: usize = 127;

/// A span of text: `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// First byte.
    pub(crate) start: usize,
    /// One past the last byte.
    pub(crate) end: usize,
}

impl Span {
    /// The bytes of `text` it covers.
    #[inline]
    pub(crate) fn of<'t>(&self, text: &'t [u8]) -> &'t [u8] {
        text.get(self.start..self.end).unwrap_or_default()
    }
}

/// One member of an object, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    /// The key with its quotes.
    pub(crate) key: Span,
    /// Whether the key holds an escape (its text then differs from the
    /// key it stands for).
    pub(crate) escaped: bool,
    /// The value.
    pub(crate) value: Span,
}

impl From<&MemberAt> for Member {
    #[inline]
    fn from(m: &MemberAt) -> Member {
        Member {
            key: Span {
                start: m.key.0 as usize,
                end: m.key.1 as usize,
            },
            escaped: m.escaped,
            value: Span {
                start: m.value.0 as usize,
                end: m.value.1 as usize,
            },
        }
    }
}

impl Member {
    /// The key's text between its quotes.
    #[inline]
    pub(crate) fn key_text<'t>(&self, text: &'t [u8]) -> &'t [u8] {
        Span {
            start: self.key.start + 1,
            end: self.key.end.saturating_sub(1),
        }
        .of(text)
    }
}

/// The members of `text`, which must be one JSON object with nothing but
/// whitespace around it, appended to `members` in the order written.
/// `None` (with `members` in any state) when the text is anything else.
///
/// The decoder's scan settles the usual event (it accepts only what
/// `serde_json` reads, and finds the same members); the strict pass here
/// takes what it leaves (exponents, escaped keys, long numbers, deep
/// nesting, invalid text).
pub(crate) fn object_members(text: &[u8], members: &mut Vec<Member>) -> Option<()> {
    let before = members.len();
    let scanned = scan_object(text, |key, value, _| {
        members.push(Member {
            // With its quotes; the scan reports no escaped top-level key.
            key: Span {
                start: key.start - 1,
                end: key.end + 1,
            },
            escaped: false,
            value: Span {
                start: value.start,
                end: value.end,
            },
        })
    });
    if scanned {
        return Some(());
    }
    members.truncate(before);
    strict_members(text, members)
}

/// [`object_members`] without the scan: the strict pass alone.
fn strict_members(text: &[u8], members: &mut Vec<Member>) -> Option<()> {
    std::str::from_utf8(text).ok()?;
    let start = skip_ws(text, 0);
    if text.get(start) != Some(&b'{') {
        return None;
    }
    let end = object(text, start, 1, &mut |m| members.push(m))?;
    (skip_ws(text, end) == text.len()).then_some(())
}

/// The value of `key` in the object `text[span]` (already valid JSON: a
/// value of a document [`object_members`] accepted, or text `serde_json`
/// wrote), the last one when the key is repeated, as `serde_json` reads
/// it. `None` when the span is not an object or has no such key.
pub(crate) fn member_value(text: &[u8], span: Span, key: &str) -> Option<Span> {
    if text.get(span.start) != Some(&b'{') {
        return None;
    }
    let mut found = None;
    object(text, span.start, 1, &mut |m| {
        if key_is(text, &m, key) {
            found = Some(m.value);
        }
    })?;
    found
}

/// Whether member `m` of `text` has the key `key`.
#[inline]
pub(crate) fn key_is(text: &[u8], m: &Member, key: &str) -> bool {
    if m.escaped {
        serde_json::from_slice::<String>(m.key.of(text)).is_ok_and(|k| k == key)
    } else {
        crate::decode::same_bytes(m.key_text(text), key.as_bytes())
    }
}

/// The value at the dotted `path` in the object `text` (valid JSON), the
/// last of a repeated key at each level.
pub(crate) fn value_at_path(text: &[u8], path: &[String]) -> Option<Span> {
    let mut span = Span {
        start: skip_ws(text, 0),
        end: skip_ws_back(text),
    };
    for segment in path {
        span = member_value(text, span, segment)?;
    }
    Some(span)
}

/// A value of an object's text as the decoder would have extracted it:
/// strings with an escape are unescaped into a scratch string, so the
/// value is read in two steps ([`Found::as_ref`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Found {
    /// No such member.
    Missing,
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string without escapes: its content in the text.
    Plain(Span),
    /// A string with escapes: its content in the scratch string.
    Unescaped(Span),
    /// An object or array.
    Composite,
}

impl Found {
    /// The value at `span` of `text`; escaped strings are unescaped onto
    /// `scratch`.
    pub(crate) fn of(text: &[u8], span: Span, scratch: &mut String) -> Found {
        let v = span.of(text);
        match v.first() {
            None => Found::Missing,
            Some(b'"') => {
                let inner = Span {
                    start: span.start + 1,
                    end: span.end.saturating_sub(1),
                };
                if plain_prefix_len(inner.of(text)) == inner.end - inner.start {
                    return Found::Plain(inner);
                }
                match serde_json::from_slice::<String>(v) {
                    Ok(s) => {
                        let start = scratch.len();
                        scratch.push_str(&s);
                        Found::Unescaped(Span { start, end: scratch.len() })
                    }
                    Err(_) => Found::Missing,
                }
            }
            Some(b'{' | b'[') => Found::Composite,
            Some(b't') => Found::Bool(true),
            Some(b'f') => Found::Bool(false),
            Some(b'n') => Found::Null,
            Some(_) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .map_or(Found::Missing, Found::Number),
        }
    }

    /// The value, borrowing strings from `text` or `scratch` (the scratch
    /// string [`Found::of`] wrote to).
    pub(crate) fn as_ref<'a>(&self, text: &'a [u8], scratch: &'a str) -> FieldValueRef<'a> {
        match *self {
            Found::Missing => FieldValueRef::Missing,
            Found::Null => FieldValueRef::Null,
            Found::Bool(b) => FieldValueRef::Bool(b),
            Found::Number(n) => FieldValueRef::Number(n),
            Found::Plain(s) => std::str::from_utf8(s.of(text)).map_or(FieldValueRef::Missing, FieldValueRef::Str),
            Found::Unescaped(s) => scratch.get(s.start..s.end).map_or(FieldValueRef::Missing, FieldValueRef::Str),
            Found::Composite => FieldValueRef::Composite,
        }
    }
}

/// The value `text[span]` parsed, for the rare cases the bytes alone do not
/// settle (a number's canonical text, a type conversion).
pub(crate) fn parse_value(text: &[u8]) -> Option<Value> {
    serde_json::from_slice(text).ok()
}

#[inline]
fn skip_ws(text: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = text.get(i) {
        i += 1;
    }
    i
}

/// The length of `text` without trailing whitespace.
#[inline]
fn skip_ws_back(text: &[u8]) -> usize {
    let mut n = text.len();
    while n > 0 && matches!(text[n - 1], b' ' | b'\t' | b'\n' | b'\r') {
        n -= 1;
    }
    n
}

/// The object at `text[i]` (`{`), each member shown to `member`; the
/// offset after its `}`.
fn object(text: &[u8], i: usize, depth: usize, member: &mut dyn FnMut(Member)) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut i = skip_ws(text, i + 1);
    if text.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        if text.get(i) != Some(&b'"') {
            return None;
        }
        let (key_end, escaped) = string(text, i)?;
        let key = Span { start: i, end: key_end };
        i = skip_ws(text, key_end);
        if text.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(text, i + 1);
        let value_end = value(text, value_start, depth)?;
        member(Member {
            key,
            escaped,
            value: Span {
                start: value_start,
                end: value_end,
            },
        });
        i = skip_ws(text, value_end);
        match text.get(i) {
            Some(b',') => i = skip_ws(text, i + 1),
            Some(b'}') => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The array at `text[i]` (`[`); the offset after its `]`.
fn array(text: &[u8], i: usize, depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut i = skip_ws(text, i + 1);
    if text.get(i) == Some(&b']') {
        return Some(i + 1);
    }
    loop {
        i = skip_ws(text, value(text, i, depth)?);
        match text.get(i) {
            Some(b',') => i = skip_ws(text, i + 1),
            Some(b']') => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The value at `text[i]` (a value of a container at `depth`); the offset
/// after it.
fn value(text: &[u8], i: usize, depth: usize) -> Option<usize> {
    match *text.get(i)? {
        b'"' => string(text, i).map(|(end, _)| end),
        b'{' => object(text, i, depth + 1, &mut |_| {}),
        b'[' => array(text, i, depth + 1),
        b't' => literal(text, i, b"true"),
        b'f' => literal(text, i, b"false"),
        b'n' => literal(text, i, b"null"),
        _ => number(text, i),
    }
}

fn literal(text: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (text.get(i..i + word.len()) == Some(word)).then_some(i + word.len())
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` at `text[i]`.
fn number(text: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: usize| i + text.get(i..).unwrap_or_default().iter().take_while(|b| b.is_ascii_digit()).count();
    if text.get(i) == Some(&b'-') {
        i += 1;
    }
    match text.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i),
        _ => return None,
    }
    if text.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = text.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = text.get(i) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

/// The string at `text[i]` (`"`): the offset after its closing quote, and
/// whether it holds an escape.
fn string(text: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j += plain_prefix_len(text.get(j..)?);
        match *text.get(j)? {
            b'"' => return Some((j + 1, escaped)),
            b'\\' => {
                escaped = true;
                j = escape(text, j)?;
            }
            // A control byte: JSON strings hold them escaped only.
            _ => return None,
        }
    }
}

/// The escape at `text[j]` (`\`): the offset after it. A `\u` escape of a
/// high surrogate must be followed by one of a low surrogate, as
/// `serde_json` requires.
fn escape(text: &[u8], j: usize) -> Option<usize> {
    match *text.get(j + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(j + 2),
        b'u' => match hex4(text, j + 2)? {
            0xDC00..=0xDFFF => None,
            0xD800..=0xDBFF => {
                if text.get(j + 6..j + 8) != Some(b"\\u") {
                    return None;
                }
                matches!(hex4(text, j + 8)?, 0xDC00..=0xDFFF).then_some(j + 12)
            }
            _ => Some(j + 6),
        },
        _ => None,
    }
}

fn hex4(text: &[u8], at: usize) -> Option<u32> {
    let digits = text.get(at..at + 4)?;
    digits.iter().try_fold(0u32, |n, &b| Some(n * 16 + char::from(b).to_digit(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(text: &str) -> Option<Vec<(String, String)>> {
        let mut m = Vec::new();
        object_members(text.as_bytes(), &mut m)?;
        Some(
            m.iter()
                .map(|m| {
                    let t = text.as_bytes();
                    (
                        String::from_utf8_lossy(m.key.of(t)).into_owned(),
                        String::from_utf8_lossy(m.value.of(t)).into_owned(),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn members_are_found_with_their_key_and_value_text() {
        let got = keys(r#" { "a" : 1 ,"b\u0062":{"x":[1,{"y":null}]},"c":"q\"\\","d":-0.5e+3, "e":true,"f":[] } "#).unwrap();
        let want = [
            ("\"a\"", "1"),
            ("\"b\\u0062\"", "{\"x\":[1,{\"y\":null}]}"),
            ("\"c\"", "\"q\\\"\\\\\""),
            ("\"d\"", "-0.5e+3"),
            ("\"e\"", "true"),
            ("\"f\"", "[]"),
        ];
        assert_eq!(got, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
        assert_eq!(keys("{}"), Some(vec![]));
    }

    #[test]
    fn text_serde_json_refuses_is_refused() {
        for bad in [
            "",
            "[]",
            "\"a\"",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1}}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\\ud800\\u0041\"}",
            "{\"a\":[1 2]}",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":1} x",
        ] {
            assert_eq!(keys(bad), None, "{bad:?}");
            assert!(serde_json::from_str::<serde_json::Map<String, Value>>(bad).is_err(), "{bad:?}");
        }
        assert_eq!(object_members(b"{\"a\":\"\xff\"}", &mut Vec::new()), None, "invalid UTF-8");
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(keys(&deep), None, "deeper than serde_json reads");
        let ok = format!("{{\"a\":{}1{}}}", "[".repeat(MAX_DEPTH - 2), "]".repeat(MAX_DEPTH - 2));
        assert!(keys(&ok).is_some());
    }

    #[test]
    fn nested_values_are_found_by_unescaped_key_and_the_last_repeat_wins() {
        let t = br#"{"a":{"b\u0063":1,"bc":2,"d":"x\ty","e":"plain"},"n":-2.5}"#;
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        let span = value_at_path(t, &path("a.bc")).unwrap();
        assert_eq!(span.of(t), b"2");
        let mut scratch = String::new();
        let d = Found::of(t, value_at_path(t, &path("a.d")).unwrap(), &mut scratch);
        let e = Found::of(t, value_at_path(t, &path("a.e")).unwrap(), &mut scratch);
        let n = Found::of(t, value_at_path(t, &path("n")).unwrap(), &mut scratch);
        assert_eq!(d.as_ref(t, &scratch), FieldValueRef::Str("x\ty"));
        assert_eq!(e.as_ref(t, &scratch), FieldValueRef::Str("plain"));
        assert_eq!(n.as_ref(t, &scratch), FieldValueRef::Number(-2.5));
        assert_eq!(value_at_path(t, &path("a.zz")), None);
        assert_eq!(value_at_path(t, &path("n.x")), None);
    }

    #[test]
    fn the_scan_finds_the_members_the_strict_pass_finds() {
        // Every cut and every one-byte change of a few objects.
        let objects = [
            r#" { "a" : 1 ,"b":{"x":[1,{"y":null}]},"c":"q\"\\","d":-0.5, "e":true,"f":[] ,"a":"é\u00e9"} "#,
            r#"{"time":"2026-11-01T00:00:00Z","msg":"tab\there","n":123456789012345678,"m":-0,"z":{}}"#,
            r#"{"b\u0062":1,"d":-0.5e+3,"n":12345678901234567890,"s":"\ud83d\ude00"}"#,
        ];
        let swaps = [
            b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'-', b'.', b'e', b' ', b'\n', 0x01, 0xC3, b'u',
        ];
        for object in objects {
            let bytes = object.as_bytes();
            let mut texts = vec![bytes.to_vec()];
            for at in 0..bytes.len() {
                texts.push(bytes[..at].to_vec());
                for &b in &swaps {
                    let mut t = bytes.to_vec();
                    t[at] = b;
                    texts.push(t);
                }
            }
            for text in texts {
                let (mut fast, mut strict) = (Vec::new(), Vec::new());
                let got = object_members(&text, &mut fast).map(|()| fast);
                let want = strict_members(&text, &mut strict).map(|()| strict);
                assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&text));
            }
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::from),
            "[\\x00-\\x1f\"\\\\/]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c\"\\\\\\x01é]{0,3}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Every object serde_json writes, compact or pretty, is read with
        /// its members' keys and values.
        #[test]
        fn objects_serde_json_writes_are_read_member_by_member(
            map in proptest::collection::btree_map("[a-c\"\\\\\\x01é]{0,3}", json_value(), 0..6),
            pretty in any::<bool>(),
        ) {
            let map: serde_json::Map<String, Value> = map.into_iter().collect();
            let text = if pretty { serde_json::to_string_pretty(&map) } else { serde_json::to_string(&map) }.unwrap();
            let mut members = Vec::new();
            prop_assert!(object_members(text.as_bytes(), &mut members).is_some(), "{}", text);
            prop_assert_eq!(members.len(), map.len());
            for (m, (key, value)) in members.iter().zip(&map) {
                let t = text.as_bytes();
                prop_assert_eq!(&serde_json::from_slice::<String>(m.key.of(t)).unwrap(), key);
                // As serde_json reads its own text back (its float
                // parsing may land one step off the value written).
                let want: Value = serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap();
                prop_assert_eq!(serde_json::from_slice::<Value>(m.value.of(t)).unwrap(), want);
                prop_assert_eq!(m.escaped, m.key_text(t).contains(&b'\\'));
                prop_assert!(key_is(t, m, key));
            }
        }

        /// Whatever the bytes, the pass does not panic, and it accepts
        /// only what serde_json reads as an object, with the same keys.
        #[test]
        fn the_pass_agrees_with_serde_json(text in "[{}\\[\\]\":,a-c0-9.eE+\\- \\\\u]{0,40}") {
            let mut m = Vec::new();
            if object_members(text.as_bytes(), &mut m).is_some() {
                let map: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
                for member in &m {
                    let key: String = serde_json::from_slice(member.key.of(text.as_bytes())).unwrap();
                    prop_assert!(map.contains_key(&key));
                }
            }
        }
    }
}
