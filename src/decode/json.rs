//! The JSON hot path: validate with simd-json, extract the fields the
//! pipeline needs, and splice the source's metadata members in before the
//! closing brace. The event's own bytes are copied, never re-serialised.

use simd_json::{Buffers, Node, Tape};

use super::extract::FieldPlan;
use super::scan::{scan_object, scan_object_keys};
use super::tape::{self, node_count, wrapped_value};
use super::values::{EventObserver, EventValues, MemberAt, Observer};
use super::DecodeStats;
use std::sync::Arc;

use crate::enrich::{key_signature, Fragment, Member};
use crate::event::{BatchBuilder, FieldSet};
use crate::framing::Lines;
use crate::json_text::escape_json_str;
use crate::json_text::key_bucket;

/// Deepest nesting simd-json accepts; deeper documents are kept as wrapped
/// text (simd-json's own default, named here so the behaviour is visible).
const MAX_DEPTH: usize = 1024;

/// Reusable parse state. One per thread or task: it holds scratch buffers
/// that grow to the largest line seen and are then reused.
pub struct Decoder {
    scratch: Vec<u8>,
    buffers: Buffers,
    tape: Tape<'static>,
    /// How to extract the field set of the batches being decoded.
    plan: Option<FieldPlan>,
    /// Observers of the batch being decoded, in the order attached.
    observers: Vec<Observer>,
    /// How to read the fields of each observer of those batches.
    observer_plans: Vec<Option<FieldPlan>>,
    /// Counters since the last [`Decoder::take_stats`].
    stats: DecodeStats,
    /// Whether objects may be read by the scan instead of the tape (off
    /// only to compare the two).
    scan: bool,
    /// Whether an observer of the batch asked where the members are.
    want_members: bool,
    /// The members of the event being decoded, when they are wanted.
    members: Vec<MemberAt>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("stats", &self.stats).finish()
    }
}

impl Decoder {
    /// A decoder with empty scratch space.
    pub fn new() -> Decoder {
        Decoder {
            scratch: Vec::with_capacity(4096),
            buffers: Buffers::with_max_depth(4096, MAX_DEPTH),
            tape: Tape(Vec::new()),
            plan: None,
            observers: Vec::new(),
            observer_plans: Vec::new(),
            stats: DecodeStats::default(),
            scan: true,
            want_members: false,
            members: Vec::new(),
        }
    }

    /// A decoder that reads every object through simd-json's tape, never
    /// the scan: what the scan path is compared with.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn tape_only() -> Decoder {
        Decoder {
            scan: false,
            ..Decoder::new()
        }
    }

    /// Has every event decoded from now on shown to `observer`, with the
    /// values of `fields`, until [`Decoder::finish_observers`].
    pub fn observe(&mut self, fields: Arc<FieldSet>, observer: Box<dyn EventObserver>) {
        self.want_members |= observer.wants_members();
        let line_tests = observer.line_tests().filter(|t| t.fit(&fields));
        self.observers.push(Observer {
            fields,
            inner: observer,
            line_tests,
        });
    }

    /// Detaches the observers, each with what it made of the events so far,
    /// in the order they were attached.
    pub fn finish_observers(&mut self) -> Vec<Box<dyn std::any::Any + Send>> {
        self.want_members = false;
        self.observers.drain(..).map(|o| o.inner.finish()).collect()
    }

    /// Counters since the last call, resetting them.
    pub fn take_stats(&mut self) -> DecodeStats {
        std::mem::take(&mut self.stats)
    }

    /// Decodes every line of a framed chunk into `out`, adding `fragment`.
    pub fn decode_lines(&mut self, lines: &Lines, fragment: &Fragment, out: &mut BatchBuilder) {
        for (i, span) in lines.spans.iter().enumerate() {
            self.decode(lines.line(i), span.truncated, lines.may_hold_breaks, &[], fragment, out);
        }
    }

    /// Takes lines that are events a source rendered itself: each one
    /// JSON object of valid UTF-8 on one line, with `fragment`'s members
    /// already spliced in as [`Decoder::decode_lines`] would splice them
    /// (the source's renderer guarantees it; its tests and fuzz target
    /// check it). When nothing reads the events' fields (no fields to
    /// extract, no observers) they are copied as they are, without
    /// parsing; otherwise they are decoded like any line (splicing again
    /// adds nothing: the event has the members' keys).
    pub(crate) fn decode_rendered(&mut self, lines: &Lines, fragment: &Fragment, out: &mut BatchBuilder) {
        if !out.fields().is_empty() || !self.observers.is_empty() {
            return self.decode_lines(lines, fragment, out);
        }
        for i in 0..lines.len() {
            let line = lines.line(i);
            self.stats.events += 1;
            self.stats.bytes += line.len() as u64;
            out.buffer().extend_from_slice(line);
            out.finish_event();
        }
    }

    /// Decodes one line into one event.
    ///
    /// `extra` are per-event members (a container's stream and timestamp)
    /// and `fragment` the source's members; the event's own fields win over
    /// both, and `extra` wins over `fragment`.
    ///
    /// The line may hold line breaks (a docker `log`, a syslog message, a
    /// frame cut by NUL or octet counts): the event still takes one line.
    pub fn decode_line(&mut self, line: &[u8], truncated: bool, extra: &[Member], fragment: &Fragment, out: &mut BatchBuilder) {
        self.decode(line, truncated, true, extra, fragment, out);
    }

    /// [`Decoder::decode_line`] for a line newline framing cut, which holds
    /// no `\n` (a `\r` in an object's whitespace is left as it is).
    pub(crate) fn decode_framed_line(
        &mut self,
        line: &[u8],
        truncated: bool,
        extra: &[Member],
        fragment: &Fragment,
        out: &mut BatchBuilder,
    ) {
        self.decode(line, truncated, false, extra, fragment, out);
    }

    fn decode(
        &mut self,
        line: &[u8],
        truncated: bool,
        may_hold_breaks: bool,
        extra: &[Member],
        fragment: &Fragment,
        out: &mut BatchBuilder,
    ) {
        self.stats.events += 1;
        self.stats.bytes += line.len() as u64;
        if truncated {
            self.stats.truncated += 1;
        } else if let Some(close) = object_bounds(line) {
            if self.try_object(line, close, may_hold_breaks, extra, fragment, out) {
                return;
            }
        }
        self.wrap(line, truncated, extra, fragment, out);
    }

    /// Writes a line that looks like an object. Returns false, having
    /// written nothing, when it is not valid JSON. Line breaks can only
    /// be whitespace in a valid object: they become spaces, so the event
    /// stays on one line with the same meaning.
    fn try_object(
        &mut self,
        line: &[u8],
        close: usize,
        may_hold_breaks: bool,
        extra: &[Member],
        fragment: &Fragment,
        out: &mut BatchBuilder,
    ) -> bool {
        let members = fragment.members();
        let track_members = extra.len() + members.len() <= 64;
        // An event whose values nobody reads needs only a proof that it is
        // valid and its top-level keys: a scan does that without a tape.
        if track_members && self.scan && out.fields().is_empty() && self.observers.is_empty() {
            let signatures = signatures(extra, fragment);
            let mut present = 0u64;
            let mut keys = 0usize;
            let valid = scan_object_keys(line, |key| {
                keys += 1;
                let key = &line[key];
                mark_present(key, key_bucket(key), signatures, extra, members, &mut present);
            });
            if valid {
                let has = |i: usize| present & (1 << i) != 0;
                splice(out, line, close, may_hold_breaks, keys > 0, extra, members, has, |_, _| {});
                out.finish_event();
                return true;
            }
        }
        // Most others need the text of a few top-level values besides: the
        // scan finds them too. The usual one has a single observer (the
        // transforms' judge, or the SLI rules').
        else if track_members && self.scan && out.fields().is_empty() && self.observers.len() == 1 && !self.want_members {
            if self.try_observed(line, close, may_hold_breaks, extra, fragment, out) {
                return true;
            }
        } else if track_members && self.scan && self.try_scanned(line, close, may_hold_breaks, extra, fragment, out) {
            return true;
        }
        let Decoder {
            scratch,
            buffers,
            tape,
            plan,
            observers,
            observer_plans,
            ..
        } = self;
        scratch.clear();
        scratch.extend_from_slice(line);
        scratch.resize(line.len() + simd_json::INPUT_PADDING, 0);
        let mut t: Tape<'_> = std::mem::replace(tape, Tape(Vec::new())).reset();
        let ok = simd_json::fill_tape_padded(scratch, line.len(), buffers, &mut t).is_ok();
        let root = t.0.first();
        if !ok || !matches!(root, Some(Node::Object { .. })) {
            *tape = t.reset();
            return false;
        }
        let nodes = &t.0[..];
        let Some(&Node::Object { len: keys, .. }) = nodes.first() else {
            *tape = t.reset();
            return false;
        };

        // One pass over the event's keys marks the members it already has
        // (the usual event has none of them) and finds the fields the batch
        // and its first observer need.
        let mut out_plan = (!out.fields().is_empty()).then(|| cached_plan(plan, out.fields()));
        let observed = !observers.is_empty();
        let first_observer = observers.first().map(|o| observer_plan(observer_plans, 0, &o.fields));
        // One copy of the pass per combination of plans, so the usual event
        // with neither pays nothing for them.
        let present = match (out_plan.as_deref_mut(), first_observer) {
            (None, None) => scan_keys(nodes, extra, fragment, track_members, 0, |_, _, _, _| {}),
            (Some(p), None) | (None, Some(p)) => {
                p.begin();
                let mask = p.mask();
                scan_keys(nodes, extra, fragment, track_members, mask, |b, k, idx, count| {
                    p.offer(b, k, idx, count)
                })
            }
            (Some(p), Some(q)) => {
                p.begin();
                q.begin();
                let mask = p.mask() | q.mask();
                scan_keys(nodes, extra, fragment, track_members, mask, |b, k, idx, count| {
                    p.offer(b, k, idx, count);
                    q.offer(b, k, idx, count);
                })
            }
        };

        // Past 64 members the bits run out: look each key up in the tape.
        let has = |i: usize| match track_members {
            true => present & (1 << i) != 0,
            false => has_key(nodes, extra.iter().chain(members).nth(i).map_or("", |m| m.key())),
        };
        splice(out, line, close, may_hold_breaks, keys > 0, extra, members, has, |_, _| {});

        if let Some(plan) = out_plan {
            for i in 0..plan.len() {
                out.push_value(plan.value(nodes, i));
            }
        }
        if observed {
            show_object(observer_plans, nodes, observers);
        }
        out.finish_event();
        *tape = t.reset();
        true
    }

    /// [`Decoder::try_scanned`] for one observer, no field of the batch and
    /// no members' places: the plain pipe's keys-only scan, whose callback
    /// also shows the observer's plan the keys in its buckets.
    #[inline(never)]
    fn try_observed(
        &mut self,
        line: &[u8],
        close: usize,
        may_hold_breaks: bool,
        extra: &[Member],
        fragment: &Fragment,
        out: &mut BatchBuilder,
    ) -> bool {
        let Decoder {
            observers, observer_plans, ..
        } = self;
        let [o] = &mut observers[..] else {
            return false;
        };
        let p = observer_plan(observer_plans, 0, &o.fields);
        p.begin();
        let plan_buckets = p.mask();
        let members = fragment.members();
        let signatures = signatures(extra, fragment);
        let mut present = 0u64;
        let mut keys = 0usize;
        let valid = scan_object_keys(line, |key| {
            keys += 1;
            let k = &line[key.clone()];
            let b = key_bucket(k);
            mark_present(k, b, signatures, extra, members, &mut present);
            if plan_buckets & (1 << b) != 0 {
                p.offer_key(b, k, key.end);
            }
        });
        if !valid {
            return false;
        }
        // Tests judged on the text: the observer needs the verdicts alone;
        // else it reads the values.
        let verdicts = o.line_tests.as_ref().and_then(|t| p.judge_text(line, t));
        if verdicts.is_none() && !p.settle_keys(line) {
            return false;
        }
        let has = |i: usize| present & (1 << i) != 0;
        splice(out, line, close, may_hold_breaks, keys > 0, extra, members, has, |_, _| {});
        match verdicts {
            Some(v) => o.inner.judged(v),
            None => o.inner.event(&EventValues::scanned(line, p, None)),
        }
        out.finish_event();
        true
    }

    /// [`Decoder::try_object`] from the scan alone ([`scan_object`]),
    /// without simd-json's tape, for at most 64 members of `extra` and
    /// `fragment`. Returns false, having written nothing, when the scan is
    /// not sure the line is valid, or a field the batch or an observer
    /// reads is not in the line's text as the tape would give it
    /// ([`FieldPlan::settle_text`]).
    #[inline(never)]
    fn try_scanned(
        &mut self,
        line: &[u8],
        close: usize,
        may_hold_breaks: bool,
        extra: &[Member],
        fragment: &Fragment,
        out: &mut BatchBuilder,
    ) -> bool {
        let Decoder {
            plan,
            observers,
            observer_plans,
            want_members,
            members: at,
            ..
        } = self;
        let collect = *want_members;
        at.clear();
        let members = fragment.members();
        let mut out_plan = (!out.fields().is_empty()).then(|| cached_plan(plan, out.fields()));
        let mut plan_buckets = 0u64;
        if let Some(p) = out_plan.as_deref_mut() {
            p.begin();
            plan_buckets |= p.mask();
        }
        for (k, o) in observers.iter().enumerate() {
            let p = observer_plan(observer_plans, k, &o.fields);
            p.begin();
            plan_buckets |= p.mask();
        }
        let observer_plans = &mut observer_plans[..observers.len()];
        let signatures = signatures(extra, fragment);
        let wanted = signatures | plan_buckets;
        let mut present = 0u64;
        let mut keys = 0usize;
        // Each top-level key: counted, a spliced member it duplicates
        // marked, and shown to the plans (`$p.$offer`) when their buckets
        // hold it. Most keys are in no wanted bucket: one test rules them
        // out. (A macro: as a closure it kept the scan's callback from
        // being inlined, 4% more instructions for a filter and a route.)
        macro_rules! see {
            ($k:expr, |$p:ident, $b:ident| $offer:expr) => {{
                keys += 1;
                let $b = key_bucket($k);
                if wanted & (1 << $b) != 0 {
                    mark_present($k, $b, signatures, extra, members, &mut present);
                    if plan_buckets & (1 << $b) != 0 {
                        if let Some($p) = out_plan.as_deref_mut() {
                            $offer;
                        }
                        for $p in observer_plans.iter_mut().flatten() {
                            $offer;
                        }
                    }
                }
            }};
        }
        let valid = if collect {
            scan_object(line, |key, value, escaped| {
                at.push(MemberAt::scanned(key.clone(), value.clone()));
                let k = &line[key];
                see!(k, |p, b| p.offer_text(b, k, value.clone(), escaped));
            })
        } else {
            // Without every member's place, the keys-only scan: the plans
            // note where their keys end and find the values after it.
            scan_object_keys(line, |key| {
                let k = &line[key.clone()];
                see!(k, |p, b| p.offer_key(b, k, key.end));
            }) && out_plan.as_deref_mut().is_none_or(|p| p.settle_keys(line))
                && observer_plans.iter_mut().flatten().all(|p| p.settle_keys(line))
        };
        let settled = valid
            && (!collect
                || out_plan.as_deref_mut().is_none_or(|p| p.settle_text(line))
                    && observer_plans.iter_mut().flatten().all(|p| p.settle_text(line)));
        if !settled {
            return false;
        }
        let has = |i: usize| present & (1 << i) != 0;
        if collect {
            let appended = |offset, m: &Member| at.push(MemberAt::spliced(offset, m.rendered()));
            splice(out, line, close, may_hold_breaks, keys > 0, extra, members, has, appended);
        } else {
            splice(out, line, close, may_hold_breaks, keys > 0, extra, members, has, |_, _| {});
        }
        if let Some(p) = out_plan {
            for i in 0..p.len() {
                out.push_value(p.text_value(line, i));
            }
        }
        let at = collect.then_some(&at[..]);
        for (o, p) in observers.iter_mut().zip(observer_plans.iter()) {
            if let Some(p) = p {
                o.inner.event(&EventValues::scanned(line, p, at));
            }
        }
        out.finish_event();
        true
    }

    /// Writes `{"message":"<text>"}` for a line that is not a JSON object.
    fn wrap(&mut self, line: &[u8], truncated: bool, extra: &[Member], fragment: &Fragment, out: &mut BatchBuilder) {
        self.stats.wrapped += 1;
        let text = match std::str::from_utf8(line) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => {
                self.stats.invalid_utf8 += 1;
                String::from_utf8_lossy(line)
            }
        };
        let buf = out.buffer();
        buf.extend_from_slice(b"{\"message\":\"");
        escape_json_str(&text, buf);
        buf.push(b'"');
        if truncated {
            buf.extend_from_slice(b",\"truncated\":true");
        }
        for (i, m) in extra.iter().enumerate() {
            if m.key() != "message" && !extra[..i].iter().any(|e| e.key() == m.key()) {
                buf.push(b',');
                buf.extend_from_slice(m.rendered());
            }
        }
        for m in fragment.members() {
            if m.key() != "message" && !extra.iter().any(|e| e.key() == m.key()) {
                buf.push(b',');
                buf.extend_from_slice(m.rendered());
            }
        }
        buf.push(b'}');
        let fields = out.fields().clone();
        for path in fields.paths() {
            out.push_value(wrapped_value(path, &text));
        }
        for o in &mut self.observers {
            o.inner.event(&EventValues::wrapped(&text, o.fields.paths()));
        }
        out.finish_event();
    }
}

/// Writes the object `line[..=close]` into `out`'s buffer with the members
/// of `extra` then `members` it does not have (`present(i)`, counting
/// through both in that order) spliced in before its closing brace. An
/// earlier `extra` member wins over a later one and over `members`.
/// `appended` is shown each member spliced in, with its offset in the
/// event.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn splice(
    out: &mut BatchBuilder,
    line: &[u8],
    close: usize,
    may_hold_breaks: bool,
    has_keys: bool,
    extra: &[Member],
    members: &[Member],
    present: impl Fn(usize) -> bool,
    mut appended: impl FnMut(usize, &Member),
) {
    let buf = out.buffer();
    let start = buf.len();
    buf.extend_from_slice(&line[..close]);
    if may_hold_breaks {
        blank_line_breaks(&mut buf[start..]);
    }
    let mut need_comma = has_keys;
    let mut append = |m: &Member| {
        if need_comma {
            buf.push(b',');
        }
        appended(buf.len() - start, m);
        buf.extend_from_slice(m.rendered());
        need_comma = true;
    };
    for (i, m) in extra.iter().enumerate() {
        if !present(i) && !extra[..i].iter().any(|e| e.key() == m.key()) {
            append(m);
        }
    }
    for (i, m) in members.iter().enumerate() {
        if !present(extra.len() + i) && !extra.iter().any(|e| e.key() == m.key()) {
            append(m);
        }
    }
    buf.push(b'}');
}

/// The [`key_bucket`]s of the members of `extra` and `fragment`, as bits:
/// an event key outside them duplicates none of them.
#[inline(always)]
fn signatures(extra: &[Member], fragment: &Fragment) -> u64 {
    extra.iter().fold(fragment.key_signatures(), |acc, m| acc | key_signature(m.key()))
}

/// Marks in `present` which members of `extra` then `members` have the key
/// `key`, once its [`key_bucket`] says one of them might.
#[inline(always)]
fn mark_present(key: &[u8], bucket: usize, signatures: u64, extra: &[Member], members: &[Member], present: &mut u64) {
    if signatures & (1 << bucket) != 0 {
        for (i, m) in extra.iter().chain(members).enumerate() {
            if m.key().as_bytes() == key {
                *present |= 1 << i;
            }
        }
    }
}

/// The plan for `fields`, made anew when the field set changed.
#[inline(always)]
fn cached_plan<'p>(plan: &'p mut Option<FieldPlan>, fields: &Arc<FieldSet>) -> &'p mut FieldPlan {
    if !plan.as_ref().is_some_and(|p| p.is_for(fields)) {
        *plan = None;
    }
    plan.get_or_insert_with(|| new_plan(fields))
}

/// A new plan, made once per field set (out of the per-event path).
#[cold]
#[inline(never)]
fn new_plan(fields: &Arc<FieldSet>) -> FieldPlan {
    FieldPlan::new(fields.clone())
}

/// The plan of observer `k`, reading `fields`.
#[inline(always)]
fn observer_plan<'p>(plans: &'p mut Vec<Option<FieldPlan>>, k: usize, fields: &Arc<FieldSet>) -> &'p mut FieldPlan {
    if plans.len() <= k {
        plans.resize_with(k + 1, || None);
    }
    cached_plan(&mut plans[k], fields)
}

/// Shows the event whose tape is `nodes` to every observer, each with its
/// own fields located. The first observer's plan has seen the keys already
/// ([`scan_keys`]); the others look for themselves.
#[inline]
fn show_object(plans: &mut Vec<Option<FieldPlan>>, nodes: &[Node<'_>], observers: &mut [Observer]) {
    for (k, o) in observers.iter_mut().enumerate() {
        if k > 0 {
            observer_plan(plans, k, &o.fields).locate(nodes);
        }
        if let Some(Some(plan)) = plans.get(k) {
            o.inner.event(&EventValues::parsed(nodes, plan));
        }
    }
}

/// If the line (ignoring surrounding whitespace) starts with `{` and ends
/// with `}`, the offset of that closing brace.
fn object_bounds(line: &[u8]) -> Option<usize> {
    let first = line.iter().position(|b| !b.is_ascii_whitespace())?;
    let last = line.iter().rposition(|b| !b.is_ascii_whitespace())?;
    (line[first] == b'{' && line[last] == b'}' && last > first).then_some(last)
}

/// One pass over the keys of the root object of the tape: which members of
/// `extra` then `fragment` the event already has, as bits in that order
/// (when `track_members`, which needs 64 members or fewer), while `offer`
/// is shown every key in `plan_buckets` (the plans' [`FieldPlan::mask`]).
/// An event key is compared with the members only when its [`key_bucket`]
/// is one of theirs, which the usual event's keys are not.
#[inline(always)]
fn scan_keys(
    nodes: &[Node<'_>],
    extra: &[Member],
    fragment: &Fragment,
    track_members: bool,
    plan_buckets: u64,
    mut offer: impl FnMut(usize, &[u8], usize, usize),
) -> u64 {
    let Some(&Node::Object { len, .. }) = nodes.first() else {
        return 0;
    };
    let signatures = if track_members { signatures(extra, fragment) } else { 0 };
    let wanted = signatures | plan_buckets;
    let mut present = 0u64;
    let mut idx = 1;
    for _ in 0..len {
        let Some(Node::String(k)) = nodes.get(idx) else {
            break;
        };
        let Some(value) = nodes.get(idx + 1) else {
            break;
        };
        let count = node_count(value);
        let b = key_bucket(k.as_bytes());
        // Most keys are in no wanted bucket: one test rules them out.
        if wanted & (1 << b) != 0 {
            mark_present(k.as_bytes(), b, signatures, extra, fragment.members(), &mut present);
            if plan_buckets & (1 << b) != 0 {
                offer(b, k.as_bytes(), idx + 1, count);
            }
        }
        idx += 1 + count;
    }
    present
}

/// Whether the root object of the tape has the key.
fn has_key(nodes: &[Node<'_>], key: &str) -> bool {
    tape::child(nodes, key).is_some()
}

/// Turns every `\n` and `\r` of a valid object's bytes into a space: they
/// can only be whitespace there.
fn blank_line_breaks(object: &mut [u8]) {
    let mut at = 0;
    while let Some(i) = memchr::memchr2(b'\n', b'\r', &object[at..]) {
        object[at + i] = b' ';
        at += i + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FieldPath, FieldValueRef};
    use proptest::prelude::Strategy;
    use serde_json::{json, Map, Value};

    fn fragment() -> Fragment {
        let mut m = Map::new();
        m.insert("release".into(), json!({"version": "v2"}));
        m.insert("host".into(), json!("node-1"));
        Fragment::from_map(&m)
    }

    fn decode(lines: &[&[u8]], fields: &[&str]) -> (Vec<Value>, crate::event::Batch, DecodeStats) {
        let mut fs = FieldSet::new();
        for f in fields {
            fs.add(FieldPath::parse(f).unwrap());
        }
        let mut out = BatchBuilder::with_capacity(Arc::new(fs), 1024, 8);
        let mut d = Decoder::new();
        for l in lines {
            d.decode_line(l, false, &[], &fragment(), &mut out);
        }
        let ctx = Arc::new(crate::enrich::SourceContext::new("t".into(), "test", String::new(), Map::new()));
        let batch = out.build(ctx, std::time::SystemTime::now());
        let values = batch.events().map(|e| serde_json::from_slice(e).unwrap()).collect();
        (values, batch, d.take_stats())
    }

    #[test]
    fn line_breaks_in_an_objects_whitespace_become_spaces() {
        let (values, batch, _) = decode(&[b"{\"a\":1\n,\"b\":\r\n[2,\n3]\n}", b"{\"a\":\"x\ny\"}"], &[]);
        for e in batch.events() {
            assert!(!e.contains(&b'\n') && !e.contains(&b'\r'), "{:?}", String::from_utf8_lossy(e));
        }
        assert_eq!((&values[0]["a"], &values[0]["b"]), (&json!(1), &json!([2, 3])));
        assert_eq!(values[1]["message"], "{\"a\":\"x\ny\"}", "a raw break inside a string is not JSON");
    }

    #[test]
    fn object_gets_metadata_and_keeps_its_own_fields() {
        let (v, _, s) = decode(&[br#" {"msg":"hi","host":"mine"} "#], &[]);
        assert_eq!(v[0], json!({"msg":"hi","host":"mine","release":{"version":"v2"}}));
        assert_eq!(s.wrapped, 0);
    }

    #[test]
    fn a_key_that_only_shares_a_signature_with_a_member_does_not_hide_it() {
        // "hint" and "host" have the same length, first and last byte.
        assert_eq!(crate::enrich::key_signature("hint"), crate::enrich::key_signature("host"));
        let (v, _, _) = decode(&[br#"{"hint":{"host":"x"},"hos":1,"hostname":2}"#], &[]);
        assert_eq!(v[0]["host"], "node-1");
        assert_eq!(v[0]["hint"], json!({"host":"x"}));
    }

    #[test]
    fn more_than_64_members_still_yield_to_the_event() {
        let mut m = Map::new();
        for i in 0..70 {
            m.insert(format!("k{i}"), json!(i));
        }
        let frag = Fragment::from_map(&m);
        let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 1024, 1);
        Decoder::new().decode_line(br#"{"k69":"mine"}"#, false, &[], &frag, &mut out);
        let batch = out.build(super::super::test_support::context(), std::time::SystemTime::now());
        let v: Value = serde_json::from_slice(batch.events().next().unwrap()).unwrap();
        assert_eq!(v["k69"], "mine");
        assert_eq!(v["k0"], 0);
        assert_eq!(v.as_object().unwrap().len(), 70);
    }

    #[test]
    fn empty_object_gets_members_without_leading_comma() {
        let (v, _, _) = decode(&[b"{}"], &[]);
        assert_eq!(v[0], json!({"release":{"version":"v2"},"host":"node-1"}));
    }

    #[test]
    fn non_objects_are_wrapped_never_dropped() {
        let inputs: Vec<&[u8]> = vec![b"plain text", b"[1,2]", b"42", b"{\"a\":", b"", b"{bad}", b"\xff\xfe{}"];
        let (v, _, s) = decode(&inputs, &[]);
        assert_eq!(v.len(), inputs.len());
        assert_eq!(v[0]["message"], "plain text");
        assert_eq!(v[3]["message"], "{\"a\":");
        assert_eq!(v[4]["message"], "");
        assert_eq!(v[6]["message"], "\u{fffd}\u{fffd}{}");
        assert_eq!(s.wrapped, 7);
        assert_eq!(s.invalid_utf8, 1);
    }

    #[test]
    fn fields_are_extracted_by_path() {
        let (_, b, _) = decode(
            &[br#"{"status":503,"http":{"path":"/a\"b"},"ok":true}"#, b"text"],
            &["status", "http.path", "ok", "missing", "message"],
        );
        assert_eq!(b.value(0, 0), FieldValueRef::Number(503.0));
        assert_eq!(b.value(0, 1), FieldValueRef::Str("/a\"b"));
        assert_eq!(b.value(0, 2), FieldValueRef::Bool(true));
        assert_eq!(b.value(0, 3), FieldValueRef::Missing);
        assert_eq!(b.value(1, 4), FieldValueRef::Str("text"));
    }

    /// Renders every value an observer is shown.
    struct Seen(Vec<String>);

    /// Decodes `lines` into `out` with an observer reading each of
    /// `observed`, and returns what each was shown, rendered.
    fn observe_lines(out: &mut BatchBuilder, observed: &[Arc<FieldSet>], lines: &[&[u8]]) -> Vec<Vec<String>> {
        let mut d = Decoder::new();
        for set in observed {
            d.observe(set.clone(), Box::new(Seen(Vec::new())));
        }
        for l in lines {
            d.decode_line(l, false, &[], &fragment(), out);
        }
        d.finish_observers()
            .into_iter()
            .map(|s| *s.downcast::<Vec<String>>().unwrap())
            .collect()
    }

    impl EventObserver for Seen {
        fn event(&mut self, values: &EventValues<'_>) {
            assert_eq!(values.get(values.len()), FieldValueRef::Missing, "past the last field");
            self.0.push(format!("{values:?}"));
        }

        fn finish(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
            Box::new(self.0)
        }
    }

    #[test]
    fn observers_see_what_extraction_stores() {
        let lines: [&[u8]; 4] = [
            br#"{"status":503,"http":{"path":"/p"},"host":"own","status":1}"#,
            b"not json",
            br#"{"ok":false,"message":"m"}"#,
            br#"{"a":"#,
        ];
        let sets: Vec<Arc<FieldSet>> = [&["status", "http.path", "host"][..], &["message", "ok", "http.path"][..]]
            .iter()
            .map(|paths| {
                let mut set = FieldSet::new();
                for p in *paths {
                    set.add(FieldPath::parse(p).unwrap());
                }
                Arc::new(set)
            })
            .collect();
        for batch_fields in &sets {
            let mut out = BatchBuilder::with_capacity(batch_fields.clone(), 1024, 4);
            let seen = observe_lines(&mut out, &sets, &lines);
            let batch = out.build(super::super::test_support::context(), std::time::SystemTime::now());
            let stored: Vec<String> = (0..batch.len())
                .map(|i| format!("{:?}", (0..batch_fields.len()).map(|f| batch.value(i, f)).collect::<Vec<_>>()))
                .collect();
            let which = sets.iter().position(|s| Arc::ptr_eq(s, batch_fields)).unwrap();
            assert_eq!(seen[which], stored);
        }
        let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 1024, 4);
        let seen = observe_lines(&mut out, &sets, &lines);
        assert_eq!(seen[0][0], r#"[Number(503.0), Str("/p"), Str("own")]"#);
        assert_eq!(seen[1][1], r#"[Str("not json"), Missing, Missing]"#);
        assert_eq!(seen[1][2], r#"[Str("m"), Bool(false), Missing]"#);
        assert_eq!(seen[0][3], "[Missing, Missing, Missing]");
    }

    /// What decoding `lines` gives with `fields` extracted into the batch
    /// and observed (and a second observer reading `message`): each
    /// event's bytes, the values stored and the values each observer saw.
    fn decoded_with(mut d: Decoder, lines: &[&[u8]], fields: &[&str]) -> (Vec<Vec<u8>>, Vec<String>, Vec<Vec<String>>) {
        let set = |paths: &[&str]| {
            let mut set = FieldSet::new();
            for p in paths {
                set.add(FieldPath::parse(p).unwrap());
            }
            Arc::new(set)
        };
        let fields = set(fields);
        let mut out = BatchBuilder::with_capacity(fields.clone(), 1024, lines.len());
        d.observe(fields.clone(), Box::new(Seen(Vec::new())));
        d.observe(set(&["message"]), Box::new(Seen(Vec::new())));
        for l in lines {
            d.decode_line(l, false, &[Member::string("stream", "stdout")], &fragment(), &mut out);
        }
        let seen = d
            .finish_observers()
            .into_iter()
            .map(|s| *s.downcast::<Vec<String>>().unwrap())
            .collect();
        let batch = out.build(super::super::test_support::context(), std::time::SystemTime::now());
        let events = batch.events().map(<[u8]>::to_vec).collect();
        let stored = (0..batch.len())
            .map(|i| format!("{:?}", (0..fields.len()).map(|f| batch.value(i, f)).collect::<Vec<_>>()))
            .collect();
        (events, stored, seen)
    }

    /// What decoding `lines` gives with one observer reading `fields` and
    /// no field in the batch (the shape [`Decoder::try_observed`] takes):
    /// each event's bytes and the values the observer saw.
    fn observed_alone(mut d: Decoder, lines: &[&[u8]], fields: &[&str]) -> (Vec<Vec<u8>>, Vec<String>) {
        let mut set = FieldSet::new();
        for p in fields {
            set.add(FieldPath::parse(p).unwrap());
        }
        let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 1024, lines.len());
        d.observe(Arc::new(set), Box::new(Seen(Vec::new())));
        for l in lines {
            d.decode_line(l, false, &[Member::string("stream", "stdout")], &fragment(), &mut out);
        }
        let seen = d.finish_observers().pop().map(|s| *s.downcast::<Vec<String>>().unwrap());
        let batch = out.build(super::super::test_support::context(), std::time::SystemTime::now());
        (batch.events().map(<[u8]>::to_vec).collect(), seen.unwrap_or_default())
    }

    /// The scan path and the tape path decode `lines` alike, with the
    /// fields in the batch and two observers, and with one observer alone.
    fn assert_paths_agree(lines: &[&[u8]], fields: &[&str]) {
        let shown = || lines.iter().map(|l| String::from_utf8_lossy(l)).collect::<Vec<_>>();
        let scanned = decoded_with(Decoder::new(), lines, fields);
        let parsed = decoded_with(Decoder::tape_only(), lines, fields);
        assert_eq!(scanned, parsed, "{:?}", shown());
        let scanned = observed_alone(Decoder::new(), lines, fields);
        let parsed = observed_alone(Decoder::tape_only(), lines, fields);
        assert_eq!(scanned, parsed, "one observer: {:?}", shown());
    }

    #[test]
    fn fields_read_from_the_scan_equal_what_the_tape_gives() {
        let fields = [
            "level",
            "status",
            "ms",
            "http.status",
            "release.version",
            "msg",
            "tags",
            "ok",
            "n",
            "é",
            "missing",
        ];
        let lines: [&[u8]; 16] = [
            br#"{"level":"info","status":200,"ms":3.741,"http":{"status":503},"msg":"plain","tags":[1],"ok":true,"n":null}"#,
            br#"{"level":"a \"quoted\" word","status":-0,"ms":-0.0,"msg":"tab\there"}"#,
            "{\"é\":\"ünïcode ✓\",\"level\":\"\\u00e9\\ud83d\\ude00\",\"status\":123456789012345678}".as_bytes(),
            br#"{"status":1e3,"ms":1.5E-2,"level":"x"}"#,
            br#"{"status":12345678901234567890,"ms":9007199254740993.5}"#,
            br#"{"ms":0.30000000000000004,"status":-9007199254740991,"level":"dup","level":"second"}"#,
            br#"{"ms":1234567.8901234567,"status":0.1}"#,
            br#"{"http":"not an object","release":[1],"level":{"deep":{"x":1}}}"#,
            br#"{"http":{"status":{"code":1},"status":2},"release":{"version":"v\"3"}}"#,
            br#"{"msg":{"nested":"object"},"tags":{},"ok":[],"n":{"a":[]}}"#,
            br#"{"level":"info","level\u0031":1}"#,
            br#"{"level":"info", "status" : 200 ,"ms": 2 }"#,
            br#"{"level":"info","status":200"#,
            br#"{"level":"info","status":01}"#,
            b"{\"level\":\"\xff\"}",
            br#"plain text"#,
        ];
        assert_paths_agree(&lines, &fields);
        for line in lines {
            assert_paths_agree(&[line], &fields);
            assert_paths_agree(&[line], &["level"]);
            assert_paths_agree(&[line], &[]);
        }
    }

    #[test]
    fn an_event_read_from_the_scan_keeps_its_bytes_and_gets_its_values() {
        let line: &[u8] = br#"{"level":"warn","status":404,"ms":12.5,"http":{"status":1},"msg":"m"}"#;
        let (events, stored, seen) = decoded_with(Decoder::new(), &[line], &["level", "status", "ms", "http", "msg", "missing"]);
        assert_eq!(
            String::from_utf8(events[0].clone()).unwrap(),
            r#"{"level":"warn","status":404,"ms":12.5,"http":{"status":1},"msg":"m","stream":"stdout","release":{"version":"v2"},"host":"node-1"}"#
        );
        let want = r#"[Str("warn"), Number(404.0), Number(12.5), Composite, Str("m"), Missing]"#;
        assert_eq!(stored, [want]);
        assert_eq!(seen, [vec![want.to_owned()], vec![r#"[Missing]"#.to_owned()]]);
    }

    proptest::proptest! {
        /// On objects built from tricky pieces (escapes, unicode, repeated
        /// keys, nested objects, exponents, long and negative numbers),
        /// whole or cut short, the scan path writes the same events and
        /// reads the same values as the tape path.
        #[test]
        fn the_scan_path_agrees_with_the_tape_path(
            members in proptest::collection::vec((
                proptest::sample::select(vec!["a", "b", "level", "status", "é", "a\\u0062", "msg"]),
                proptest::prop_oneof![
                    proptest::sample::select(vec![
                        r#""x""#, r#""a\"b""#, r#""\u00e9""#, r#""é ✓""#, "true", "false", "null", "{}", "[]",
                        r#"{"b":1}"#, r#"{"b":{"c":"d"}}"#, r#"{"b":"\n"}"#, "[1,{\"b\":2}]",
                    ]).prop_map(str::to_owned),
                    "-?(0|[1-9][0-9]{0,19})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
                ],
                proptest::sample::select(vec!["", " ", "\t"]),
            ), 0..8),
            cut in proptest::option::of(0usize..200),
        ) {
            let mut line = String::from("{");
            for (i, (k, v, ws)) in members.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                line.push_str(&format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"));
            }
            line.push('}');
            let mut bytes = line.into_bytes();
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            assert_paths_agree(&[&bytes], &["a", "b", "level", "status", "é", "ab", "msg", "a.b", "a.b.c", "b.c"]);
        }
    }

    #[test]
    fn very_deep_nesting_is_wrapped_not_a_crash() {
        let mut deep = vec![b'{'];
        for _ in 0..10_000 {
            deep.extend_from_slice(b"\"a\":{");
        }
        deep.extend(std::iter::repeat_n(b'}', 10_001));
        let (v, _, _) = decode(&[&deep], &[]);
        assert!(v[0]["message"].is_string());
    }

    #[test]
    fn escaping_round_trips_controls() {
        let s = "a\"b\\c\nd\u{1}e\u{7f}é";
        let mut out = Vec::new();
        escape_json_str(s, &mut out);
        let back: String = serde_json::from_slice(&[b"\"".as_slice(), &out, b"\""].concat()).unwrap();
        assert_eq!(back, s);
    }
}
