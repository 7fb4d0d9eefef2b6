//! `redact`: scrubs secrets from chosen string fields (`message` by
//! default) before they leave the node. Built-in detectors (email, credit
//! card with a Luhn check, IPv4, IPv6, JWT, bearer token, AWS access key,
//! `password=` values) and custom regular expressions; a match becomes a
//! fixed text or a keyed hash, so equal values can still be joined.
//!
//! The fields' text is read during decode; an event with nothing to scrub
//! keeps its bytes. Only an event with a match is parsed and changed.

use md5::{Digest, Md5};
use regex::{Captures, Regex, RegexSet};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

use super::graph::{Compiler, KeyId, Run, Step};
use super::members::{key_is, object_members, Member};
use super::stream::{lookup, set_at, Item, Rewrite};
use super::TransformComponent;
use crate::condition::Pattern;
use crate::config::{ConfigError, Validate};
use crate::decode::MemberAt;
use crate::event::FieldPath;
use crate::json_text::escape_json_str;

/// The built-in detectors: name, pattern. A pattern's first group, when it
/// has groups, is kept (the `password=` key), and the rest is replaced.
const DETECTORS: &[(&str, &str)] = &[
    ("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    // Card numbers by their issuer prefixes (Visa, Mastercard, Amex,
    // Discover), 13 to 19 digits with optional single spaces or dashes;
    // a match must also pass the Luhn check.
    ("credit_card", r"\b(?:4|5[1-5]|2[2-7]|3[47]|6(?:011|5))(?:[ -]?\d){11,17}\b"),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}"),
    ("bearer", r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/-]{8,}=*"),
    ("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    (
        "password",
        r#"(?i)(\b(?:password|passwd|pwd|secret|api_key|apikey|access_token)\s*[=:]\s*)[^\s&,;"']+"#,
    ),
    (
        "ipv6",
        r"(?i)\b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b|(?:\b(?:[0-9a-f]{1,4}:){1,6}|::)(?::[0-9a-f]{1,4}){1,6}\b|\b(?:[0-9a-f]{1,4}:){1,7}:",
    ),
    (
        "ipv4",
        r"\b(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}\b",
    ),
];

/// `[transforms.<name>] type = "redact"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// String fields to scrub; default `["message"]`.
    #[serde(default = "default_fields")]
    fields: Vec<String>,
    /// Built-in detectors to use; default all of them.
    #[serde(default)]
    detectors: Option<Vec<String>>,
    /// Custom regular expressions; the whole match is replaced.
    #[serde(default)]
    patterns: Vec<Pattern>,
    /// What a match becomes; default `[REDACTED]`.
    #[serde(default = "default_replace")]
    replace: String,
    /// An environment variable holding a key: a match then becomes
    /// `[<detector>:<keyed hash>]`, the same for the same value, so redacted
    /// values can still be joined. The key never appears in the config.
    #[serde(default)]
    hash_key_env: Option<String>,
}

fn default_fields() -> Vec<String> {
    vec!["message".into()]
}

fn default_replace() -> String {
    "[REDACTED]".into()
}

impl Validate for RedactConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.fields.is_empty() {
            errors.push(ConfigError::new(format!("{path}.fields"), "must name at least one field"));
        }
        for (i, f) in self.fields.iter().enumerate() {
            if let Err(e) = FieldPath::parse(f) {
                errors.push(ConfigError::new(format!("{path}.fields[{i}]"), e));
            }
        }
        for (i, d) in self.detectors.iter().flatten().enumerate() {
            if !DETECTORS.iter().any(|(n, _)| n == d) {
                let known: Vec<&str> = DETECTORS.iter().map(|(n, _)| *n).collect();
                errors.push(ConfigError::new(
                    format!("{path}.detectors[{i}]"),
                    format!("unknown detector {d:?}; known: {}", known.join(", ")),
                ));
            }
        }
        if self.detectors.as_ref().is_some_and(Vec::is_empty) && self.patterns.is_empty() {
            errors.push(ConfigError::new(path, "needs a detector or a pattern"));
        }
        if let Some(var) = &self.hash_key_env {
            if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
                errors.push(ConfigError::new(
                    format!("{path}.hash_key_env"),
                    format!("the environment variable {var} is not set"),
                ));
            }
        }
    }
}

impl TransformComponent for RedactConfig {
    fn build(&self, _name: &str, cx: &mut Compiler) -> Box<dyn Step> {
        Box::new(self.compile(cx))
    }
}

impl RedactConfig {
    fn compile(&self, cx: &mut Compiler) -> Redact {
        let fields: Vec<(KeyId, Vec<String>)> = self
            .fields
            .iter()
            .filter_map(|f| FieldPath::parse(f).ok())
            .map(|p| (cx.key(&p), p.segments().to_vec()))
            .collect();
        let mut detectors: Vec<Detector> = DETECTORS
            .iter()
            .filter(|(n, _)| self.detectors.as_ref().is_none_or(|d| d.iter().any(|x| x == n)))
            .filter_map(|(name, re)| {
                Regex::new(re).ok().map(|re| Detector {
                    name: name.to_string(),
                    keeps_prefix: re.captures_len() > 1,
                    luhn: *name == "credit_card",
                    re,
                })
            })
            .collect();
        detectors.extend(self.patterns.iter().map(|p| Detector {
            name: "pattern".into(),
            re: p.0.clone(),
            keeps_prefix: false,
            luhn: false,
        }));
        let set = RegexSet::new(detectors.iter().map(|d| d.re.as_str())).unwrap_or_else(|_| RegexSet::empty());
        let key = self
            .hash_key_env
            .as_ref()
            .and_then(std::env::var_os)
            .map(|k| k.into_encoded_bytes());
        Redact {
            fields,
            prefilter: self.patterns.is_empty(),
            detectors,
            set,
            replace: self.replace.clone(),
            key,
        }
    }
}

/// `text` scrubbed by every built-in detector (the fuzz target's way in).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_scrub(text: &str) -> Option<String> {
    use std::sync::OnceLock;
    static ALL: OnceLock<Redact> = OnceLock::new();
    let r = ALL.get_or_init(|| {
        let c: RedactConfig = serde_json::from_value(serde_json::json!({})).unwrap_or_else(|_| unreachable!("defaults"));
        c.compile(&mut Compiler::default())
    });
    r.scrub(text)
}

struct Detector {
    name: String,
    re: Regex,
    /// The pattern's first group is kept (the `password=` key).
    keeps_prefix: bool,
    /// A match must pass the Luhn check.
    luhn: bool,
}

struct Redact {
    fields: Vec<(KeyId, Vec<String>)>,
    detectors: Vec<Detector>,
    /// Every detector at once: most text matches none, found in one pass.
    set: RegexSet,
    /// Every pattern is a built-in detector, so text that [`may_hold_secret`]
    /// rules out matches none of them: the set need not run.
    prefilter: bool,
    replace: String,
    /// The keyed hash's key, when a match becomes a hash.
    key: Option<Vec<u8>>,
}

/// Bytes that some built-in detector's every match holds, when the text is
/// ASCII: `@` (email), `:` (IPv6; `password:`), `=` (`password=`), a digit
/// (card numbers, IPv4). A byte of 0x80 or above marks text that is not
/// ASCII, where `(?i)` and `\d` reach past ASCII (`ſ` folds to `s`, `K`
/// (Kelvin) to `k`, `٣` is a digit): such text always goes to the set.
const TRIGGER: [bool; 256] = {
    let mut t = [false; 256];
    let mut b: usize = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c >= 0x80 || c.is_ascii_digit() || c == b'@' || c == b':' || c == b'=';
        b += 1;
    }
    t
};

/// Whether `text` may hold a match of a built-in detector: false only when
/// none can match, so a false answer skips the [`RegexSet`] without
/// changing what is scrubbed. Besides the [`TRIGGER`] bytes, the detectors
/// without one need a literal: `eyJ` (JWT), `AKIA` or `ASIA` (AWS access
/// keys), `bearer` in any ASCII case.
///
/// Sixteen bytes at a time: a block where no byte is a trigger and no pair
/// of bytes starts one of those literals (`ey`, `AK`, `AS`, `be` in any
/// case) is passed over; the positions it flags are checked one by one.
#[inline]
fn may_hold_secret(text: &[u8]) -> bool {
    let mut at = 0;
    while at < text.len() {
        // A block and the byte after it (a pair may straddle two blocks);
        // past the end, zeros, which start nothing.
        let mut m = match text.get(at..at + 17) {
            Some(window) => secret_starts_in(window.try_into().expect("17 bytes")),
            None => {
                let mut window = [0u8; 17];
                window[..text.len() - at].copy_from_slice(&text[at..]);
                secret_starts_in(&window)
            }
        };
        while m != 0 {
            if secret_starts(&text[at + m.trailing_zeros() as usize..]) {
                return true;
            }
            m &= m - 1;
        }
        at += 16;
    }
    false
}

/// Whether a match of a built-in detector may start at `rest[0]`.
#[inline]
fn secret_starts(rest: &[u8]) -> bool {
    let b = rest[0];
    TRIGGER[b as usize]
        || match b {
            b'e' => rest.starts_with(b"eyJ"),
            b'A' => rest.starts_with(b"AKIA") || rest.starts_with(b"ASIA"),
            b'b' | b'B' => rest.get(..6).is_some_and(|w| w.eq_ignore_ascii_case(b"bearer")),
            _ => false,
        }
}

/// A bit per byte of the first 16 of `w` where [`secret_starts`] may hold:
/// a trigger byte, or the first two bytes of a literal (SSE2, in every
/// x86-64).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn secret_starts_in(w: &[u8; 17]) -> u32 {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86-64 baseline; the loads read bytes
    // 0..16 and 1..17 of `w` (unaligned loads are allowed).
    unsafe {
        let v = _mm_loadu_si128(w.as_ptr().cast());
        let next = _mm_loadu_si128(w.as_ptr().add(1).cast());
        let is = |x, c: u8| _mm_cmpeq_epi8(x, _mm_set1_epi8(c as i8));
        let lower = |x| _mm_or_si128(x, _mm_set1_epi8(0x20));
        // Signed compares: the non-ASCII bytes are negative, and their own
        // movemask bit says so.
        let digit = _mm_and_si128(
            _mm_cmpgt_epi8(v, _mm_set1_epi8(b'0' as i8 - 1)),
            _mm_cmplt_epi8(v, _mm_set1_epi8(b'9' as i8 + 1)),
        );
        let punct = _mm_or_si128(_mm_or_si128(is(v, b'@'), is(v, b':')), is(v, b'='));
        let jwt = _mm_and_si128(is(v, b'e'), is(next, b'y'));
        let aws = _mm_and_si128(is(v, b'A'), _mm_or_si128(is(next, b'K'), is(next, b'S')));
        let bearer = _mm_and_si128(is(lower(v), b'b'), is(lower(next), b'e'));
        let any = _mm_or_si128(_mm_or_si128(digit, punct), _mm_or_si128(jwt, _mm_or_si128(aws, bearer)));
        (_mm_movemask_epi8(any) | _mm_movemask_epi8(v)) as u32
    }
}

/// [`secret_starts_in`] without SIMD.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn secret_starts_in(w: &[u8; 17]) -> u32 {
    (0..16).filter(|&i| secret_starts(&w[i..])).fold(0, |m, i| m | 1 << i)
}

/// Whether the digits of `s` pass the Luhn check.
pub(crate) fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() < 13 {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { (d * 2) % 9 + if d == 9 { 9 } else { 0 } } else { d })
        .sum();
    sum % 10 == 0
}

/// HMAC-MD5 of `value` under `key`, as 16 hex digits: stable for a value,
/// unreadable without the key.
fn keyed_hash(key: &[u8], value: &str) -> String {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..16].copy_from_slice(&Md5::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Md5::new().chain_update(pad(0x36)).chain_update(value.as_bytes()).finalize();
    let outer = Md5::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    outer[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Redact {
    /// `text` with every match replaced; `None` when nothing matched.
    fn scrub(&self, text: &str) -> Option<String> {
        if self.prefilter && !may_hold_secret(text.as_bytes()) {
            return None;
        }
        self.scrub_unfiltered(text)
    }

    /// [`Redact::scrub`] without the prefilter: every text goes to the set.
    fn scrub_unfiltered(&self, text: &str) -> Option<String> {
        // Most text holds no secret: `is_match` says so without allocating
        // the set of matches (`matches` does, on every call).
        if !self.set.is_match(text) {
            return None;
        }
        let hits = self.set.matches(text);
        let mut out: Cow<'_, str> = Cow::Borrowed(text);
        let mut changed = false;
        for i in hits.iter() {
            let d = &self.detectors[i];
            let replaced = d.re.replace_all(&out, |c: &Captures<'_>| {
                let whole = c.get(0).map_or("", |m| m.as_str());
                if d.luhn && !luhn(whole) {
                    return whole.to_owned();
                }
                let (keep, secret) = match (d.keeps_prefix, c.get(1)) {
                    (true, Some(p)) => (p.as_str(), &whole[p.as_str().len()..]),
                    _ => ("", whole),
                };
                let scrubbed = match &self.key {
                    Some(key) => format!("{keep}[{}:{}]", d.name, keyed_hash(key, secret)),
                    None => format!("{keep}{}", self.replace),
                };
                // Text scrubbed before (`password=[REDACTED]`) is no change.
                changed |= scrubbed != whole;
                scrubbed
            });
            if let Cow::Owned(s) = replaced {
                out = Cow::Owned(s);
            }
        }
        changed.then(|| out.into_owned())
    }
}

impl Step for Redact {
    fn run(&self, input: Vec<Item>, run: &mut Run<'_>, out: &mut [Vec<Item>]) {
        let [kept] = out else { return };
        kept.reserve(input.len());
        let mut text = String::new();
        for mut item in input {
            for (k, path) in &self.fields {
                let Some(value) = run.key_text(*k, &item, &mut text) else {
                    continue;
                };
                let Some(clean) = self.scrub(value) else { continue };
                if let [key] = &path[..] {
                    // A top-level field: the new string goes in the event's
                    // bytes, after its key; the rest stays as written.
                    if run.rewrite(&mut item, |event, members, out| replace_string(event, members, key, &clean, out)) {
                        continue;
                    }
                }
                if let Some(event) = run.change(&mut item) {
                    // Only string values are scrubbed: a number or boolean
                    // is left as it is.
                    if matches!(lookup(event, path), Some(Value::String(_))) {
                        set_at(event, path, Value::String(clean));
                    }
                }
            }
            kept.push(item);
        }
    }

    fn drop_reason(&self) -> &'static str {
        "none"
    }
}

/// Writes `event` to `out` with the string value of its top-level member
/// `key` replaced by `value` (what the map path does with `set_at` on a
/// string value). [`Rewrite::Unchanged`] when the event has no such member
/// or its value is not a string; [`Rewrite::Refused`] when the event is not
/// an object, or has `key` twice or a key with an escape (the map path then
/// decides which one it means).
fn replace_string(event: &[u8], members: Option<&[MemberAt]>, key: &str, value: &str, out: &mut Vec<u8>) -> Rewrite {
    let mut found: Vec<Member> = Vec::new();
    match members {
        Some(ms) => found.extend(ms.iter().map(Member::from)),
        None => {
            if object_members(event, &mut found).is_none() {
                return Rewrite::Refused;
            }
        }
    }
    if found.iter().any(|m| m.escaped) {
        return Rewrite::Refused;
    }
    let mut named = found.iter().filter(|m| key_is(event, m, key));
    let Some(member) = named.next() else {
        return Rewrite::Unchanged;
    };
    if named.next().is_some() {
        return Rewrite::Refused;
    }
    if member.value.of(event).first() != Some(&b'"') {
        return Rewrite::Unchanged;
    }
    out.extend_from_slice(&event[..member.value.start]);
    out.push(b'"');
    escape_json_str(value, out);
    out.push(b'"');
    out.extend_from_slice(&event[member.value.end..]);
    Rewrite::Written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_valid;
    use serde_json::json;

    fn redact(v: serde_json::Value) -> Redact {
        let mut errors = Vec::new();
        let c: RedactConfig = parse_valid("t", v, &mut errors).unwrap_or_else(|| panic!("{errors:?}"));
        c.compile(&mut Compiler::default())
    }

    #[test]
    fn planted_secrets_of_every_kind_are_scrubbed() {
        let r = redact(json!({"patterns": ["tok-[0-9]{6}"]}));
        let planted = [
            ("mail ada@example.com now", "mail [REDACTED] now"),
            ("card 4111 1111 1111 1111 ok", "card [REDACTED] ok"),
            ("card 5500-0000-0000-0004", "card [REDACTED]"),
            ("from 10.1.2.3 via", "from [REDACTED] via"),
            ("v6 2001:db8::8a2e:370:7334 x", "v6 [REDACTED] x"),
            ("v6 fe80:0:0:0:202:b3ff:fe1e:8329", "v6 [REDACTED]"),
            ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX3g", "jwt [REDACTED]"),
            ("Authorization: Bearer abcDEF123456789xyz", "Authorization: Bearer [REDACTED]"),
            ("key AKIAIOSFODNN7EXAMPLE used", "key [REDACTED] used"),
            ("login user=bob password=hunter22 ok", "login user=bob password=[REDACTED] ok"),
            ("custom tok-123456 end", "custom [REDACTED] end"),
        ];
        for (input, want) in planted {
            assert_eq!(r.scrub(input).as_deref(), Some(want), "{input}");
        }
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        let r = redact(json!({}));
        for ordinary in [
            "request completed in 12.5ms",
            "GET /api/v1/orders/12345 200",
            "time=2026-11-01T10:30:00.000Z level=info",
            "request_id=3f2a9c0e8b7d4a1f9e6c5b4a3d2e1f00",
            "epoch 1733480000123 ms",
            "card-like 4111 1111 1111 1112 fails luhn",
            "version 1.2.3 build 4",
            "user u-004512 bytes 48213",
            // Scrubbed already: scrubbing again changes nothing.
            "login password=[REDACTED] ok",
        ] {
            assert_eq!(r.scrub(ordinary), None, "{ordinary}");
        }
    }

    #[test]
    fn a_keyed_hash_is_stable_per_value() {
        let r = redact(json!({"detectors": ["email"], "hash_key_env": "PATH"}));
        let a = r.scrub("to ada@example.com").unwrap();
        let b = r.scrub("cc ada@example.com").unwrap();
        let c = r.scrub("to bob@example.com").unwrap();
        assert!(a.starts_with("to [email:") && a.len() == "to [email:]".len() + 16, "{a}");
        assert_eq!(a[3..], b[3..]);
        assert_ne!(a, c);
    }

    /// Text that may hold a secret, in pieces: the planted secrets, their
    /// literals cut short, every trigger byte, and letters outside ASCII
    /// that `(?i)` folds to ASCII ones (`ſ`, the Kelvin sign) or that `\d`
    /// takes for digits.
    const PIECES: [&str; 24] = [
        "ada@example.com",
        "4111 1111 1111 1111",
        "10.1.2.3",
        "2001:db8::1",
        "fe80::",
        "eyJ",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX3g",
        "BeArEr abcdefghijk",
        "bearer",
        "AKIAIOSFODNN7EXAMPLE",
        "ASIA",
        "AKIAABCDEFGHIJKLMNOP",
        "passWord=x",
        "paſsword=hunter22",
        "apiKey: k",
        "api_\u{212a}ey=v",
        "٣٣.٣.٣.٣",
        "request completed",
        " ",
        "cache miss",
        "=",
        ":",
        "@",
        "x",
    ];

    #[test]
    fn the_prefilter_scrubs_exactly_what_the_set_alone_scrubs_on_a_corpus_with_secrets() {
        let all = redact(json!({}));
        let some = redact(json!({"detectors": ["bearer", "aws_access_key", "password"]}));
        assert!(all.prefilter && some.prefilter);
        let corpus = [
            "request completed",
            "upstream slow",
            "cache miss",
            "client 10.24.7.193 retried",
            "s3 put with key AKIAIOSFODNN7EXAMPLE",
            "mail sent to ada.lovelace@example.com",
            "upstream call with Authorization: Bearer abcDEF123456789xyz",
            "upstream call with authorization bearer abcdefghijklmnop",
            "charged card 4111 1111 1111 1111",
            "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX3g",
            "login user=bob password=hunter22 ok",
            "login paſsword=hunter22 ok",
            "session ASIAABCDEFGHIJKLMNOP opened",
            "",
        ];
        let mut scrubbed = 0;
        for text in corpus {
            for r in [&all, &some] {
                let got = r.scrub(text);
                assert_eq!(got, r.scrub_unfiltered(text), "{text:?}");
                scrubbed += got.is_some() as usize;
            }
        }
        assert!(scrubbed >= 10, "the corpus plants secrets: {scrubbed} scrubbed");
        assert_eq!(
            all.scrub("login paſsword=hunter22 ok").as_deref(),
            Some("login paſsword=[REDACTED] ok")
        );
        assert_eq!(all.scrub("request completed"), None);
    }

    /// Every built-in detector, compiled once for the property tests.
    fn every_detector() -> &'static Redact {
        static ALL: std::sync::OnceLock<Redact> = std::sync::OnceLock::new();
        ALL.get_or_init(|| redact(json!({})))
    }

    /// `event` with `msg` scrubbed both ways: in its bytes (`None`:
    /// refused) and through a map, which the bytes must equal as JSON.
    fn both_ways(r: &Redact, event: &str) -> (Option<Value>, Value) {
        let mut map: serde_json::Map<String, Value> = serde_json::from_str(event).unwrap();
        let path = vec!["msg".to_owned()];
        let clean = match lookup(&map, &path) {
            Some(Value::String(s)) => r.scrub(s),
            _ => None,
        };
        let Some(clean) = clean else {
            return (Some(serde_json::from_str(event).unwrap()), Value::Object(map));
        };
        let mut out = Vec::new();
        let bytes = match replace_string(event.as_bytes(), None, "msg", &clean, &mut out) {
            Rewrite::Written => Some(serde_json::from_slice(&out).unwrap()),
            Rewrite::Unchanged => Some(serde_json::from_str(event).unwrap()),
            Rewrite::Refused => None,
        };
        set_at(&mut map, &path, Value::String(clean));
        (bytes, Value::Object(map))
    }

    #[test]
    fn a_secret_replaced_in_the_bytes_gives_the_event_the_map_gives() {
        let r = redact(json!({}));
        for (event, in_bytes) in [
            (r#"{"msg":"mail ada@example.com","n":1.50E+2,"x":{"msg":"ada@example.com"}}"#, true),
            (r#" { "a" : [1, "b"] , "msg" : "card 4111 1111 1111 1111 \u00e9\"" } "#, true),
            (r#"{"msg":"login password=hunter22","msg2":"ada@example.com"}"#, true),
            (r#"{"msg":"ok"}"#, true),
            (r#"{"msg":"to ada@example.com","msg":"again ada@example.com"}"#, false),
            (r#"{"ms\u0067":"to ada@example.com"}"#, false),
        ] {
            let (bytes, map) = both_ways(&r, event);
            assert_eq!(bytes.is_some(), in_bytes, "{event}");
            if let Some(bytes) = bytes {
                assert_eq!(bytes, map, "{event}");
            }
        }
        let mut out = Vec::new();
        let event = r#"{"n":1.50E+2,"msg":"to ada@example.com","m":7}"#;
        assert_eq!(
            replace_string(event.as_bytes(), None, "msg", "to [REDACTED]", &mut out),
            Rewrite::Written
        );
        assert_eq!(out, br#"{"n":1.50E+2,"msg":"to [REDACTED]","m":7}"#, "the rest keeps its bytes");
        for (event, why) in [(r#"{"msg":12}"#, "not a string"), (r#"{"other":"x"}"#, "no such member")] {
            assert_eq!(
                replace_string(event.as_bytes(), None, "msg", "x", &mut Vec::new()),
                Rewrite::Unchanged,
                "{why}"
            );
        }
    }

    #[test]
    fn custom_patterns_turn_the_prefilter_off() {
        let r = redact(json!({"patterns": ["completed"]}));
        assert!(!r.prefilter);
        assert_eq!(r.scrub("request completed").as_deref(), Some("request [REDACTED]"));
    }

    proptest::proptest! {
        /// Whatever the event, a secret replaced in its bytes gives what
        /// the map path gives, or the bytes path refuses it.
        #[test]
        fn the_bytes_path_scrubs_as_the_map_path_does(
            members in proptest::collection::vec((0usize..4, 0usize..PIECES.len(), 0usize..3), 0..6),
        ) {
            let r = every_detector();
            let keys = [r#""msg""#, r#""a""#, r#""ms\u0067""#, r#" "msg" "#];
            let body: Vec<String> = members
                .iter()
                .map(|(k, p, kind)| {
                    let text = PIECES[*p];
                    let value = match kind {
                        0 => serde_json::to_string(text).unwrap(),
                        1 => format!("{{\"msg\":{}}}", serde_json::to_string(text).unwrap()),
                        _ => "1.5e2".to_owned(),
                    };
                    format!("{}:{value}", keys[*k])
                })
                .collect();
            let event = format!("{{{}}}", body.join(","));
            let (bytes, map) = both_ways(r, &event);
            if let Some(bytes) = bytes {
                proptest::prop_assert_eq!(bytes, map, "{}", event);
            }
        }

        /// The block scan says what a byte-by-byte look says, wherever the
        /// literals and triggers fall against the blocks' edges.
        #[test]
        fn the_block_scan_agrees_with_a_byte_by_byte_look(
            pieces in proptest::collection::vec(
                proptest::sample::select(&["e", "y", "J", "A", "K", "S", "b", "E", "r", " ", "eyJ", "AKIA", "ASIA", "bEaReR", "bea"][..]),
                0..30,
            ),
            trigger in proptest::option::of((0usize..70, proptest::sample::select(&b"=@:5\xc3"[..]))),
        ) {
            let mut text = pieces.concat().into_bytes();
            if let Some((at, b)) = trigger {
                text.insert(at.min(text.len()), b);
            }
            let bytewise = (0..text.len()).any(|i| secret_starts(&text[i..]));
            proptest::prop_assert_eq!(may_hold_secret(&text), bytewise, "{:?}", String::from_utf8_lossy(&text));
        }

        /// Whatever the text, the prefilter changes nothing the detectors
        /// scrub: it skips only text no detector matches.
        #[test]
        fn the_prefilter_never_changes_what_is_scrubbed(
            picks in proptest::collection::vec((0usize..PIECES.len(), proptest::bool::ANY), 0..8),
            noise in "[a-zA-Z .ſ\u{212a}٣:=@0-9-]{0,30}",
        ) {
            let r = every_detector();
            let mut text = String::new();
            for (i, (p, space)) in picks.iter().enumerate() {
                text.push_str(PIECES[*p]);
                if *space { text.push(' '); }
                if i == 1 { text.push_str(&noise); }
            }
            for t in [&text, &noise] {
                proptest::prop_assert_eq!(r.scrub(t), r.scrub_unfiltered(t), "{:?}", t);
            }
        }
    }

    #[test]
    fn luhn_checks_card_digits() {
        assert!(luhn("4111111111111111"));
        assert!(luhn("4111-1111-1111-1111"));
        assert!(!luhn("4111111111111112"));
        assert!(!luhn("411111"));
    }
}
