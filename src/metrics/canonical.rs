//! A fast reader for samples in the exact form [`write_sample`] writes:
//! members in its order, no whitespace, no escapes, integers as integers.
//! A statsd flush of 100,000 series is 100,000 such objects that the
//! remote write sink reads back at once; serde_json's general reader was
//! a quarter of sluice's CPU on that path.
//!
//! It answers only when its answer is certainly what the general reader
//! ([`Sample::parse`]'s serde path) would give: at anything it does not
//! know for sure (an escape, whitespace, a number it does not read
//! exactly, a metadata member named like a schema member, deep nesting),
//! it gives up and the general reader decides.
//!
//! [`write_sample`]: super::sample::write_sample

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::sample::{Bucket, MetricKind, Quantile, Sample};

/// Nesting of objects and arrays it follows in metadata members; deeper
/// metadata goes to the general reader (whose own limit is 128).
const MAX_DEPTH: usize = 16;

/// Digits of a number it reads itself: every integer of up to 15 digits is
/// an exact `f64`, and a JSON reader takes it without a range check.
const MAX_DIGITS: usize = 15;

/// `event` as a sample when it is in the written form; `None` when the
/// general reader must decide.
pub(super) fn parse(event: &[u8]) -> Option<Sample<'_>> {
    let mut r = Reader { b: event, i: 0 };
    r.expect(b"{\"metric\":")?;
    let name = r.string()?;
    r.expect(b",\"kind\":")?;
    let kind = match r.string()? {
        "counter" => MetricKind::Counter,
        "gauge" => MetricKind::Gauge,
        "histogram" => MetricKind::Histogram,
        "summary" => MetricKind::Summary,
        "set" => MetricKind::Set,
        _ => return None,
    };
    r.expect(b",\"labels\":{")?;
    let mut labels = BTreeMap::new();
    if !r.eat(b'}') {
        loop {
            let k = r.string()?;
            r.expect(b":")?;
            let v = r.string()?;
            // Of two labels with one name the last wins, as in a map.
            labels.insert(Cow::Borrowed(k), Cow::Borrowed(v));
            if r.eat(b'}') {
                break;
            }
            r.expect(b",")?;
        }
    }
    r.expect(b",\"timestamp_ms\":")?;
    let timestamp_ms = r.integer()?;
    let mut sample = Sample {
        name: Cow::Borrowed(name),
        kind,
        labels,
        timestamp_ms,
        value: None,
        count: None,
        sum: None,
        buckets: Vec::new(),
        quantiles: Vec::new(),
    };
    match kind {
        MetricKind::Counter | MetricKind::Gauge | MetricKind::Set => {
            r.expect(b",\"value\":")?;
            sample.value = Some(r.number()?);
        }
        MetricKind::Histogram | MetricKind::Summary => {
            r.expect(b",\"count\":")?;
            sample.count = Some(r.number()?);
            r.expect(b",\"sum\":")?;
            sample.sum = Some(r.number()?);
            if kind == MetricKind::Histogram {
                r.expect(b",\"buckets\":[")?;
                sample.buckets = r.pairs(b"{\"le\":", b",\"count\":", |le, count| Bucket { le, count })?;
            } else {
                r.expect(b",\"quantiles\":[")?;
                sample.quantiles = r.pairs(b"{\"quantile\":", b",\"value\":", |quantile, value| Quantile { quantile, value })?;
            }
        }
    }
    // The source's metadata members, skipped as the general reader skips
    // unknown members.
    while r.eat(b',') {
        let key = r.string()?;
        if is_schema_member(key) {
            return None;
        }
        r.expect(b":")?;
        r.skip_value(0)?;
    }
    r.expect(b"}")?;
    (r.i == event.len()).then_some(sample)
}

/// Bytes of the JSON number at the start of `b`:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn json_number_len(b: &[u8]) -> Option<usize> {
    let digits = |from: usize| b.get(from..).map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count());
    let mut i = usize::from(b.first() == Some(&b'-'));
    let int = digits(i);
    if int == 0 || (int > 1 && b[i] == b'0') {
        return None;
    }
    i += int;
    if b.get(i) == Some(&b'.') {
        let frac = digits(i + 1);
        if frac == 0 {
            return None;
        }
        i += 1 + frac;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp = digits(i);
        if exp == 0 {
            return None;
        }
        i += exp;
    }
    Some(i)
}

/// The members the schema reads: a metadata member by one of these names
/// would be read (or refused as a duplicate) by the general reader.
fn is_schema_member(key: &str) -> bool {
    matches!(
        key,
        "metric" | "kind" | "labels" | "timestamp_ms" | "value" | "count" | "sum" | "buckets" | "quantiles"
    )
}

/// A position in the event; `i` is at most `b.len()`.
struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    /// Steps over `lit` if the input goes on with it.
    fn expect(&mut self, lit: &[u8]) -> Option<()> {
        let end = self.i + lit.len();
        (self.b.get(self.i..end)? == lit).then(|| self.i = end)
    }

    /// Steps over `c` if it comes next; true if it did.
    fn eat(&mut self, c: u8) -> bool {
        let next = self.b.get(self.i) == Some(&c);
        self.i += usize::from(next);
        next
    }

    /// A string without escapes or control characters, as valid UTF-8.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b"\"")?;
        let rest = self.b.get(self.i..)?;
        let len = rest.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        let s = std::str::from_utf8(&rest[..len]).ok()?;
        self.i += len + 1;
        Some(s)
    }

    /// `-?(0|[1-9][0-9]*)`, at most [`MAX_DIGITS`] digits, and no
    /// fraction or exponent after it: the digits and whether it was
    /// negative.
    fn digits(&mut self) -> Option<(u64, bool)> {
        let negative = self.eat(b'-');
        let rest = self.b.get(self.i..)?;
        let len = rest.iter().position(|c| !c.is_ascii_digit()).unwrap_or(rest.len());
        if len == 0 || len > MAX_DIGITS || (len > 1 && rest[0] == b'0') || matches!(rest.get(len), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let n = rest[..len].iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        self.i += len;
        Some((n, negative))
    }

    /// An integer that an `i64` member takes (`-0` is a float to the
    /// general reader, which an `i64` refuses).
    fn integer(&mut self) -> Option<i64> {
        let (n, negative) = self.digits()?;
        // At most 15 digits: within i64.
        let n = n as i64;
        match (negative, n) {
            (true, 0) => None,
            (true, n) => Some(-n),
            (false, n) => Some(n),
        }
    }

    /// A number as the general reader gives it: integers exactly (up to
    /// [`MAX_DIGITS`] digits), other finite numbers correctly rounded as
    /// `str::parse` and serde_json's `float_roundtrip` both do; `null` and
    /// numbers out of range are left to it.
    fn number(&mut self) -> Option<f64> {
        let start = self.i;
        if let Some((n, negative)) = self.digits() {
            // `-0` is a negative zero to the general reader.
            return Some(if negative { -(n as f64) } else { n as f64 });
        }
        self.i = start;
        let rest = self.b.get(start..)?;
        let len = json_number_len(rest)?;
        let v: f64 = std::str::from_utf8(&rest[..len]).ok()?.parse().ok()?;
        self.i += len;
        v.is_finite().then_some(v)
    }

    /// `…pairs…]`: objects `{"a":x,"b":y}` until the closing bracket.
    fn pairs<T>(&mut self, a: &[u8], b: &[u8], make: impl Fn(f64, f64) -> T) -> Option<Vec<T>> {
        let mut out = Vec::new();
        if self.eat(b']') {
            return Some(out);
        }
        loop {
            self.expect(a)?;
            let x = self.number()?;
            self.expect(b)?;
            let y = self.number()?;
            self.expect(b"}")?;
            out.push(make(x, y));
            if self.eat(b']') {
                return Some(out);
            }
            self.expect(b",")?;
        }
    }

    /// Steps over one JSON value that the general reader would skip too
    /// (strings, integers and literals as above, objects and arrays of
    /// them up to [`MAX_DEPTH`] deep).
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        match self.b.get(self.i)? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.integer().map(drop),
            b't' => self.expect(b"true"),
            b'f' => self.expect(b"false"),
            b'n' => self.expect(b"null"),
            b'[' if depth < MAX_DEPTH => {
                self.i += 1;
                if self.eat(b']') {
                    return Some(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    if self.eat(b']') {
                        return Some(());
                    }
                    self.expect(b",")?;
                }
            }
            b'{' if depth < MAX_DEPTH => {
                self.i += 1;
                if self.eat(b'}') {
                    return Some(());
                }
                loop {
                    self.string()?;
                    self.expect(b":")?;
                    self.skip_value(depth + 1)?;
                    if self.eat(b'}') {
                        return Some(());
                    }
                    self.expect(b",")?;
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::Fragment;
    use crate::metrics::sample::{same_sample, write_sample, SampleValue};
    use proptest::prelude::*;

    /// The fast reader's answer, checked against the general reader's.
    fn read_both(event: &[u8]) -> Option<Sample<'_>> {
        let fast = parse(event)?;
        match Sample::parse_general(event) {
            Ok(general) => assert!(
                same_sample(&fast, &general),
                "{}: fast {fast:?}, general {general:?}",
                String::from_utf8_lossy(event)
            ),
            Err(e) => panic!(
                "{}: the fast reader took what serde_json refuses: {e}",
                String::from_utf8_lossy(event)
            ),
        }
        Some(fast)
    }

    fn metadata() -> Fragment {
        let meta = serde_json::json!({
            "host": "node-1",
            "release": {"version": "1.2.3", "build": 42, "canary": false, "tags": ["a", {"b": null}], "empty": {}},
            "process": "web",
        });
        Fragment::from_map(meta.as_object().unwrap())
    }

    fn written(value: &SampleValue<'_>, labels: &[(&str, &str)], meta: &Fragment) -> Vec<u8> {
        let mut out = Vec::new();
        write_sample(&mut out, "api.requests", labels.iter().copied(), 1_733_480_000_123, value, meta);
        out
    }

    #[test]
    fn samples_as_written_read_fast_and_the_same_as_through_serde_json() {
        let bounds = [0.005, 0.5, 10.0, 1e300];
        let cumulative = [0.0, 3.0, 7.0, 9.0];
        let quantiles = [(0.5, 1.25), (0.99, -7.0)];
        let values = [
            SampleValue::Counter(12.0),
            SampleValue::Counter(0.0),
            SampleValue::Counter(123_456_789_012_345_678.0),
            SampleValue::Gauge(-3.5),
            SampleValue::Gauge(-0.0),
            SampleValue::Gauge(1e-7),
            SampleValue::Gauge(f64::MAX),
            SampleValue::Gauge(f64::MIN_POSITIVE / 8.0),
            SampleValue::Set(4),
            SampleValue::Histogram {
                bounds: &bounds,
                cumulative: &cumulative,
                count: 9.0,
                sum: 41.5,
            },
            SampleValue::Histogram {
                bounds: &[],
                cumulative: &[],
                count: 0.0,
                sum: 0.0,
            },
            SampleValue::Summary {
                quantiles: &quantiles,
                count: 3.0,
                sum: 4.5,
            },
        ];
        let label_sets: [&[(&str, &str)]; 3] = [&[], &[("route", "/a")], &[("", "x"), ("shard", "s1"), ("ü", "ẞ")]];
        for v in &values {
            for labels in label_sets {
                for meta in [Fragment::default(), metadata()] {
                    let event = written(v, labels, &meta);
                    let s = read_both(&event).unwrap_or_else(|| panic!("not read fast: {}", String::from_utf8_lossy(&event)));
                    assert_eq!(s.kind, v.kind());
                    assert_eq!(s.labels.len(), labels.len());
                }
            }
        }
    }

    #[test]
    fn what_the_fast_reader_cannot_vouch_for_goes_to_serde_json() {
        let ok = br#"{"metric":"a","kind":"counter","labels":{"x":"1"},"timestamp_ms":5,"value":3}"#;
        assert!(read_both(ok).is_some());
        for other in [
            // Escapes, whitespace, other member order.
            &br#"{"metric":"a\"b","kind":"counter","labels":{},"timestamp_ms":5,"value":3}"#[..],
            br#"{"metric":"a","kind":"counter","labels":{"x":"\u0031"},"timestamp_ms":5,"value":3}"#,
            br#"{"metric": "a","kind":"counter","labels":{},"timestamp_ms":5,"value":3}"#,
            br#"{"metric":"a","kind":"counter","labels":{},"timestamp_ms":5,"value":3} "#,
            br#"{"kind":"counter","metric":"a","labels":{},"timestamp_ms":5,"value":3}"#,
            // Numbers: -0 is a float (an i64 refuses it), out of range, null.
            br#"{"metric":"a","kind":"counter","labels":{},"timestamp_ms":-0,"value":3}"#,
            br#"{"metric":"a","kind":"counter","labels":{},"timestamp_ms":5.0,"value":3}"#,
            br#"{"metric":"a","kind":"counter","labels":{},"timestamp_ms":1234567890123456789,"value":3}"#,
            br#"{"metric":"a","kind":"gauge","labels":{},"timestamp_ms":5,"value":1e400}"#,
            br#"{"metric":"a","kind":"gauge","labels":{},"timestamp_ms":5,"value":null}"#,
            br#"{"metric":"a","kind":"gauge","labels":{},"timestamp_ms":5,"value":01}"#,
            // A metadata member named like a schema member (read, or a
            // duplicate), floats and deep nesting in metadata.
            br#"{"metric":"a","kind":"counter","labels":{},"timestamp_ms":5,"value":3,"value":4}"#,
            br#"{"metric":"a","kind":"counter","labels":{},"timestamp_ms":5,"value":3,"sum":4}"#,
            br#"{"metric":"a","kind":"counter","labels":{},"timestamp_ms":5,"value":3,"x":0.5}"#,
            br#"{"metric":"a","kind":"counter","labels":{},"timestamp_ms":5,"value":3,"x":[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}"#,
            // Not JSON, or not a sample.
            br#"{"metric":"a","kind":"counter","labels":{},"timestamp_ms":5,"value":3,}"#,
            br#"{"metric":"a","kind":"counter","labels":{},"timestamp_ms":5,"value":3}x"#,
            br#"{"metric":"a","kind":"counter","labels":{},"timestamp_ms":5,"value":3"#,
            br#"{"metric":"a","kind":"odd","labels":{},"timestamp_ms":5,"value":3}"#,
            b"{\"metric\":\"\xff\",\"kind\":\"counter\",\"labels\":{},\"timestamp_ms\":5,\"value\":3}",
        ] {
            assert!(parse(other).is_none(), "read fast: {}", String::from_utf8_lossy(other));
        }
        // The general reader still decides them, as before.
        let s = Sample::parse(br#"{"kind":"counter","metric":"a","timestamp_ms":5,"value":3,"x":0.5}"#).unwrap();
        assert_eq!((s.name.as_ref(), s.value), ("a", Some(3.0)));
        assert!(Sample::parse(br#"{"metric":"a","kind":"counter","labels":{},"timestamp_ms":5,"value":3,"value":4}"#).is_err());
    }

    proptest! {
        #[test]
        fn any_written_gauge_reads_fast_and_bit_exact(bits in any::<u64>(), label in "[a-z_ü]{0,8}", ts in -999_999_999_999_999i64..999_999_999_999_999) {
            let v = f64::from_bits(bits);
            prop_assume!(v.is_finite());
            let mut event = Vec::new();
            write_sample(&mut event, "g", [("l", label.as_str())], ts, &SampleValue::Gauge(v), &Fragment::default());
            let s = read_both(&event).expect("read fast");
            prop_assert_eq!(s.value.map(f64::to_bits), Some(bits));
            prop_assert_eq!(s.timestamp_ms, ts);
        }

        #[test]
        fn a_changed_sample_is_read_fast_only_as_serde_json_reads_it(at in 0usize..200, byte in any::<u8>(), cut in any::<bool>()) {
            let mut event = written(&SampleValue::Histogram {
                bounds: &[0.5, 10.0],
                cumulative: &[1.0, 2.0],
                count: 3.0,
                sum: 20.25,
            }, &[("a", "1"), ("b", "2")], &metadata());
            let at = at % event.len();
            if cut {
                event.truncate(at);
            } else {
                event[at] = byte;
            }
            read_both(&event);
        }
    }
}
