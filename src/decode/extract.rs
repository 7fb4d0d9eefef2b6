//! Field extraction in one pass over an event's top-level keys.
//!
//! Looking each configured path up on its own scans the event's keys once
//! per path, with a string comparison per key; with the handful of fields
//! SLI rules and sink labels need, that cost more than parsing the event.
//! A [`FieldPlan`] instead indexes the distinct first segments of the
//! field set by a small hash of (length, first byte, last byte), walks the
//! top-level keys once, and compares a key in full only against the
//! segment its hash points at. Deeper segments are then resolved inside the
//! one value they start from. The result is the same as looking each path
//! up on its own: the first occurrence of a duplicated key wins.

use simd_json::Node;
use std::ops::Range;
use std::sync::Arc;

use super::scan::{number_value, string_end, value_at, value_start};
use super::tape::{lookup, node_count, scalar};
use super::text_test::{same, LineTests};
use crate::event::{FieldSet, FieldValueRef};
use crate::json_text::{key_bucket as bucket, KEY_BUCKETS as BUCKETS};

/// Distinct first segments the index holds (`u8` links); a larger field
/// set is looked up path by path.
const MAX_ROOTS: usize = 255;

/// How to extract one [`FieldSet`] from parsed events.
#[derive(Debug)]
pub(super) struct FieldPlan {
    /// The set this plan is for; holding it keeps its address from being
    /// reused by a different set.
    fields: Arc<FieldSet>,
    /// Distinct first segments, as bytes.
    roots: Vec<Box<[u8]>>,
    /// For each path, the index of its first segment in `roots`, and
    /// whether that is its only segment.
    path_root: Vec<(usize, bool)>,
    /// Bit `b` set when some root is in bucket `b`: most keys are ruled out
    /// by their bucket alone.
    mask: u64,
    /// Root index + 1 of the first root in each bucket; 0 for none.
    buckets: [u8; BUCKETS],
    /// Root index + 1 of the next root in the same bucket; 0 ends the chain.
    next: Vec<u8>,
    /// Per root, for the event being extracted: where its value starts in
    /// the tape and how many nodes it spans, or, for a line the scan read
    /// ([`FieldPlan::text_value`]), its value's byte offset and length in
    /// the line (start 0: not found).
    found: Vec<(usize, usize)>,
    /// Per root, whether some path goes below it (its value is then read
    /// inside an object).
    nested: Vec<bool>,
    /// Per root found by [`FieldPlan::offer_text`]: whether its value is a
    /// string with an escape.
    escaped: Vec<bool>,
    /// Per root found by [`FieldPlan::offer_text`] whose value is a
    /// number: the number, once [`FieldPlan::settle_text`] read it.
    numbers: Vec<f64>,
    /// Too many roots for the index: look paths up one by one.
    per_path: bool,
}

impl FieldPlan {
    /// The plan for `fields`.
    pub(super) fn new(fields: Arc<FieldSet>) -> FieldPlan {
        let mut roots: Vec<Box<[u8]>> = Vec::new();
        let mut path_root = Vec::with_capacity(fields.len());
        for path in fields.paths() {
            // FieldPath::parse rejects empty paths and empty segments.
            let first = path.segments().first().map(|s| s.as_bytes()).unwrap_or_default();
            let i = match roots.iter().position(|r| **r == *first) {
                Some(i) => i,
                None => {
                    roots.push(first.into());
                    roots.len() - 1
                }
            };
            path_root.push((i, path.segments().len() == 1));
        }
        let per_path = roots.len() > MAX_ROOTS || roots.iter().any(|r| r.is_empty());
        let mut buckets = [0u8; BUCKETS];
        let mut next = vec![0u8; roots.len()];
        let mut mask = 0u64;
        if !per_path {
            for (i, r) in roots.iter().enumerate().rev() {
                let b = bucket(r);
                mask |= 1 << b;
                next[i] = buckets[b];
                buckets[b] = (i + 1) as u8;
            }
        }
        let mut nested = vec![false; roots.len()];
        for &(root, single) in &path_root {
            nested[root] |= !single;
        }
        FieldPlan {
            found: vec![(0, 0); roots.len()],
            nested,
            escaped: vec![false; roots.len()],
            numbers: vec![0.0; roots.len()],
            fields,
            roots,
            path_root,
            mask,
            buckets,
            next,
            per_path,
        }
    }

    /// Whether this plan is for `fields`.
    pub(super) fn is_for(&self, fields: &Arc<FieldSet>) -> bool {
        Arc::ptr_eq(&self.fields, fields)
    }

    /// Number of paths in the field set.
    pub(super) fn len(&self) -> usize {
        self.path_root.len()
    }

    /// Finds where each first segment's value is in the object whose tape
    /// is `nodes`, in one pass over its keys; [`FieldPlan::value`] then reads
    /// the values. The decoder's own pass over the keys uses
    /// [`FieldPlan::begin`] and [`FieldPlan::offer`] instead.
    pub(super) fn locate(&mut self, nodes: &[Node<'_>]) {
        self.begin();
        let Some(&Node::Object { len, .. }) = nodes.first() else {
            return;
        };
        let mut idx = 1;
        for _ in 0..len {
            let Some(Node::String(key)) = nodes.get(idx) else { break };
            let Some(value) = nodes.get(idx + 1) else { break };
            let count = node_count(value);
            let key = key.as_bytes();
            self.offer(bucket(key), key, idx + 1, count);
            idx += 1 + count;
        }
    }

    /// The buckets ([`crate::json_text::key_bucket`]) of the keys the plan looks for,
    /// as bits.
    #[inline]
    pub(super) fn mask(&self) -> u64 {
        self.mask
    }

    /// Forgets the last event's values: a start of 0 is "not found" (no
    /// value starts at a line's or a tape's first place).
    #[inline]
    pub(super) fn begin(&mut self) {
        for f in &mut self.found {
            f.0 = 0;
        }
    }

    /// Shows the plan one top-level key of the event: `b` is its
    /// [`crate::json_text::key_bucket`], and its value starts at tape index `idx` and
    /// spans `count` nodes. The first occurrence of a key wins.
    #[inline(always)]
    pub(super) fn offer(&mut self, b: usize, key: &[u8], idx: usize, count: usize) {
        if let Some(r) = self.root(b, key) {
            if self.found[r].0 == 0 {
                self.found[r] = (idx, count);
            }
        }
    }

    /// [`FieldPlan::offer`] for a line [`scan_object`] read: the key's
    /// value is at `value` in the line, and `escaped` says it is a string
    /// with an escape.
    ///
    /// [`scan_object`]: super::scan::scan_object
    #[inline(always)]
    pub(super) fn offer_text(&mut self, b: usize, key: &[u8], value: Range<usize>, escaped: bool) {
        if let Some(r) = self.root(b, key) {
            if self.found[r].0 == 0 {
                self.found[r] = (value.start, value.len());
                self.escaped[r] = escaped;
            }
        }
    }

    /// [`FieldPlan::offer_text`] from a key alone: the key ends (its closing
    /// quote) at `key_end` in the line; [`FieldPlan::settle_keys`] then
    /// finds the value.
    #[inline(always)]
    pub(super) fn offer_key(&mut self, b: usize, key: &[u8], key_end: usize) {
        if let Some(r) = self.root(b, key) {
            if self.found[r].0 == 0 {
                self.found[r] = (key_end, 0);
            }
        }
    }

    /// The verdicts of `tests` ([`LineTests`]) on the values whose keys
    /// [`FieldPlan::offer_key`] found in `line` (which
    /// [`scan_object_keys`] accepted), judged on their text; `None` when
    /// the text does not settle one ([`TextTest::on_line`]), and the
    /// values are read instead.
    ///
    /// [`scan_object_keys`]: super::scan::scan_object_keys
    /// [`TextTest::on_line`]: super::text_test::TextTest::on_line
    #[inline]
    pub(super) fn judge_text(&self, line: &[u8], tests: &LineTests) -> Option<u64> {
        if self.per_path {
            return None;
        }
        let mut verdicts = tests.if_missing;
        for (i, t) in tests.tests.iter().enumerate() {
            let (root, _) = *self.path_root.get(t.field())?;
            let key_end = self.found[root].0;
            if key_end != 0 {
                let bit = 1 << i;
                verdicts = (verdicts & !bit) | (u64::from(t.on_line(line, value_start(line, key_end))?) << i);
            }
        }
        Some(verdicts)
    }

    /// [`FieldPlan::settle_text`] for the keys [`FieldPlan::offer_key`]
    /// found in `line` (which [`scan_object_keys`] accepted): finds each
    /// value after its key and settles it in the same pass.
    ///
    /// [`scan_object_keys`]: super::scan::scan_object_keys
    #[inline]
    pub(super) fn settle_keys(&mut self, line: &[u8]) -> bool {
        if self.per_path {
            return false;
        }
        for r in 0..self.found.len() {
            let (key_end, _) = self.found[r];
            if key_end == 0 {
                continue;
            }
            let start = value_start(line, key_end);
            let end = match line.get(start) {
                Some(b'"') => match string_end(line, start + 1) {
                    Some(end) => end,
                    // An escape: the tape unescapes it.
                    None => return false,
                },
                Some(b'{') if self.nested[r] => return false,
                Some(b'{' | b'[') => match value_at(line, start) {
                    Some((value, _)) => value.end,
                    None => return false,
                },
                Some(b't' | b'n') => start + 4,
                Some(b'f') => start + 5,
                Some(_) => {
                    let rest = &line[start..];
                    let end = start
                        + rest
                            .iter()
                            .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'.'))
                            .unwrap_or(rest.len());
                    match number_value(&line[start..end]) {
                        Some(n) => self.numbers[r] = n,
                        None => return false,
                    }
                    end
                }
                None => return false,
            };
            self.found[r] = (start, end - start);
        }
        true
    }

    /// Whether every value [`FieldPlan::offer_text`] found in `line` can
    /// be read from its text as the tape would give it: not a string with
    /// an escape (the tape unescapes it), not an object a deeper path goes
    /// into, not a number simd-json computes another way
    /// ([`number_value`]); numbers are read here, once. The caller parses
    /// the line when it cannot; else [`FieldPlan::text_value`] reads the
    /// values.
    #[inline]
    pub(super) fn settle_text(&mut self, line: &[u8]) -> bool {
        if self.per_path {
            return false;
        }
        for r in 0..self.found.len() {
            let (start, len) = self.found[r];
            if start == 0 {
                continue;
            }
            let Some(value) = line.get(start..start + len) else {
                return false;
            };
            match value.first() {
                Some(b'"') if self.escaped[r] => return false,
                Some(b'{') if self.nested[r] => return false,
                Some(b'"' | b'{' | b'[' | b't' | b'f' | b'n') => {}
                _ => match number_value(value) {
                    Some(n) => self.numbers[r] = n,
                    None => return false,
                },
            }
        }
        true
    }

    /// The value of path `i` in `line`, once [`FieldPlan::settle_text`]
    /// accepted it, as [`FieldPlan::value`] reads it from the line's tape;
    /// `Missing` for `i` past the last path.
    #[inline(always)]
    pub(super) fn text_value<'a>(&self, line: &'a [u8], i: usize) -> FieldValueRef<'a> {
        let Some(&(root, single)) = self.path_root.get(i) else {
            return FieldValueRef::Missing;
        };
        let (start, len) = self.found[root];
        let Some(value) = line.get(start..start + len).filter(|_| start != 0) else {
            return FieldValueRef::Missing;
        };
        // A deeper path: in a settled line its root is not an object (the
        // tape reads into objects), and below anything else is nothing.
        if !single {
            debug_assert_ne!(value.first(), Some(&b'{'), "a nested path into an object is not settled");
            return FieldValueRef::Missing;
        }
        match value {
            [b'"', inner @ .., b'"'] => {
                debug_assert!(std::str::from_utf8(inner).is_ok());
                // SAFETY: the scan accepted the line (`settle_text` and
                // `settle_keys` read no other), and its strings are ASCII or
                // were checked as UTF-8 (`Scanner::string`).
                FieldValueRef::Str(unsafe { std::str::from_utf8_unchecked(inner) })
            }
            [b'{' | b'[', ..] => FieldValueRef::Composite,
            b"true" => FieldValueRef::Bool(true),
            b"false" => FieldValueRef::Bool(false),
            b"null" => FieldValueRef::Null,
            _ => FieldValueRef::Number(self.numbers[root]),
        }
    }

    /// The root `key` is, if the plan has it; `b` is its bucket.
    #[inline(always)]
    fn root(&self, b: usize, key: &[u8]) -> Option<usize> {
        if self.mask & (1 << b) == 0 {
            return None;
        }
        let mut link = self.buckets[b];
        while link != 0 {
            let r = (link - 1) as usize;
            if same(&self.roots[r], key) {
                return Some(r);
            }
            link = self.next[r];
        }
        None
    }

    /// The value of path `i` of the field set in the object [`FieldPlan::locate`]
    /// last looked at (`nodes` must be that object's tape); `Missing` for
    /// `i` past the last path.
    #[inline(always)]
    pub(super) fn value<'a>(&self, nodes: &'a [Node<'a>], i: usize) -> FieldValueRef<'a> {
        if self.per_path {
            return self
                .fields
                .paths()
                .get(i)
                .map_or(FieldValueRef::Missing, |p| lookup(nodes, p.segments()));
        }
        let Some(&(root, single)) = self.path_root.get(i) else {
            return FieldValueRef::Missing;
        };
        match self.found[root] {
            (0, _) => FieldValueRef::Missing,
            (start, _) if single => nodes.get(start).map_or(FieldValueRef::Missing, scalar),
            (start, count) => match nodes.get(start..start + count) {
                Some(value) => lookup(value, &self.fields.paths()[i].segments()[1..]),
                None => FieldValueRef::Missing,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{BatchBuilder, FieldPath};
    use proptest::prelude::*;
    use simd_json::{Buffers, Tape};

    /// Extracts `paths` from `json` with the plan and with one lookup per
    /// path, as the extracted values of a one-event batch each.
    fn both(json: &str, paths: &[String]) -> (Vec<String>, Vec<String>) {
        let mut set = FieldSet::new();
        for p in paths {
            set.add(FieldPath::parse(p).unwrap());
        }
        let set = Arc::new(set);
        let mut bytes = json.as_bytes().to_vec();
        let len = bytes.len();
        bytes.resize(len + simd_json::INPUT_PADDING, 0);
        let mut buffers = Buffers::new(len);
        let mut tape = Tape(Vec::new());
        simd_json::fill_tape_padded(&mut bytes, len, &mut buffers, &mut tape).expect("valid JSON");
        let run = |planned: bool| {
            let mut out = BatchBuilder::with_capacity(set.clone(), 64, 1);
            out.buffer().extend_from_slice(b"{}");
            if planned {
                let mut plan = FieldPlan::new(set.clone());
                plan.locate(&tape.0);
                for i in 0..plan.len() {
                    out.push_value(plan.value(&tape.0, i));
                }
            } else {
                for p in set.paths() {
                    out.push_value(lookup(&tape.0, p.segments()));
                }
            }
            out.finish_event();
            let batch = out.build(super::super::test_support::context(), std::time::SystemTime::now());
            (0..set.len()).map(|i| format!("{:?}", batch.value(0, i))).collect::<Vec<_>>()
        };
        (run(true), run(false))
    }

    #[test]
    fn nested_missing_duplicate_and_colliding_keys() {
        let paths: Vec<String> = [
            "status",
            "http.status",
            "http.host",
            "a",
            "ab",
            "ba",
            "missing",
            "x.y.z",
            "dup",
            "long_key_name_here",
        ]
        .map(String::from)
        .to_vec();
        let json = r#"{"a":1,"dup":"first","http":{"status":503,"host":"h"},"ab":"x","dup":"second","ba":[1],"x":{"y":{"z":null}},"status":"200","long_key_name_here":true,"":0}"#;
        let (plan, each) = both(json, &paths);
        assert_eq!(plan, each);
        assert_eq!(plan[8], r#"Str("first")"#);
        assert_eq!(plan[1], "Number(503.0)");
        assert_eq!(plan[6], "Missing");
    }

    #[test]
    fn short_and_long_key_equality() {
        for (a, b) in [
            ("", ""),
            ("a", "a"),
            ("abcdefg", "abcdefh"),
            ("abcd", "abce"),
            ("abcde", "xbcde"),
            ("ab", "ac"),
            ("abcdefgh", "abcdefgh"),
            ("abcdefghij", "abcdefghiJ"),
        ] {
            assert_eq!(same(a.as_bytes(), b.as_bytes()), a == b, "{a} {b}");
        }
        let long_a = "k".repeat(40);
        let mut long_b = long_a.clone();
        long_b.replace_range(20..21, "x");
        assert!(same(long_a.as_bytes(), long_a.as_bytes()));
        assert!(!same(long_a.as_bytes(), long_b.as_bytes()));
    }

    proptest! {
        /// On any object over a small key alphabet (so keys repeat, nest and
        /// collide in buckets) the plan finds what per-path lookups find.
        #[test]
        fn plan_matches_per_path_lookup(
            members in proptest::collection::vec(("[abk]{1,3}|status|service_name_long", 0u8..4, "[a-z]{0,3}"), 0..12),
            paths in proptest::collection::vec("[abk]{1,3}(\\.[abk]{1,2}){0,2}|status|service_name_long", 1..8),
        ) {
            let mut json = String::from("{");
            for (i, (k, kind, v)) in members.iter().enumerate() {
                if i > 0 { json.push(','); }
                let value = match kind {
                    0 => format!("\"{v}\""),
                    1 => format!("{}", v.len()),
                    2 => format!("{{\"a\":\"{v}\",\"b\":{{\"k\":{}}}}}", v.len()),
                    _ => "[1,{\"a\":2}]".to_owned(),
                };
                json.push_str(&format!("\"{k}\":{value}"));
            }
            json.push('}');
            let (plan, each) = both(&json, &paths);
            prop_assert_eq!(plan, each);
        }
    }
}
