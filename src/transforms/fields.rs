//! `fields`: reshapes every event it gets. In this order: `copy`, `rename`,
//! `set` (a value, or a text template with `{{ path }}` parts), `coerce`
//! (to integer, float, boolean or string), `remove`.
//!
//! When every path the transform writes is a top-level key (the usual
//! case), it changes the event in its bytes ([`TextPlan`]): one strict
//! pass finds the top-level members, and the new event is the old one's
//! bytes without the removed members, with new values after the same keys,
//! and with the added members at the end. Values are copied as written,
//! never re-serialised. An event that pass refuses (a repeated or escaped
//! top-level key; text that is not a JSON object) and every event of a
//! transform that writes a nested path (`meta.n`) are parsed into a map
//! instead, changed there, and serialised once at the output, however many
//! transforms change them. Both ways give the same members and values.

use serde::Deserialize;
use serde_json::{Map, Number, Value};

use super::graph::{Compiler, Run, Step};
use super::members::{member_value, object_members, parse_value, Member, Span};
use super::stream::{lookup, remove_at, set_at, Item, Rewrite};
use super::TransformComponent;
use crate::config::{ConfigError, Validate};
use crate::decode::same_bytes;
use crate::decode::MemberAt;
use crate::event::FieldPath;
use crate::json_text::{escape_json_str, key_bucket, plain_prefix_len};

/// `[transforms.<name>] type = "fields"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsConfig {
    /// `to = from`... written `from = "to"`: copies the value at `from` to
    /// `to`.
    #[serde(default)]
    copy: Map<String, Value>,
    /// `old = "new"`: moves the value.
    #[serde(default)]
    rename: Map<String, Value>,
    /// `path = value`; a string with `{{ path }}` parts is a template.
    #[serde(default)]
    set: Map<String, Value>,
    /// `path = "integer" | "float" | "boolean" | "string"`.
    #[serde(default)]
    coerce: Map<String, Value>,
    /// Paths to remove.
    #[serde(default)]
    remove: Vec<String>,
}

/// A type `coerce` converts to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Integer,
    Float,
    Boolean,
    String,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "integer" => Kind::Integer,
            "float" => Kind::Float,
            "boolean" => Kind::Boolean,
            "string" => Kind::String,
            _ => return None,
        })
    }
}

/// A piece of a `set` template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(Vec<String>),
}

/// Splits `a {{ b.c }} d` into parts; `None` when a `{{` is not closed or
/// a path is invalid.
fn template(s: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| format!("unclosed {{{{ in template {s:?}"))?;
        let path = FieldPath::parse(after[..close].trim())?;
        parts.push(Part::Field(path.segments().to_vec()));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

fn path_at(path: &str, key: &str, errors: &mut Vec<ConfigError>) -> Option<Vec<String>> {
    match FieldPath::parse(key) {
        Ok(p) => Some(p.segments().to_vec()),
        Err(e) => {
            errors.push(ConfigError::new(path, e));
            None
        }
    }
}

/// The operations, checked and compiled; `errors` gets each problem.
fn compile(c: &FieldsConfig, path: &str, errors: &mut Vec<ConfigError>) -> Ops {
    let mut ops = Ops::default();
    for (key, target, list) in [("copy", &c.copy, &mut ops.copy), ("rename", &c.rename, &mut ops.rename)] {
        for (from, to) in target {
            let at = format!("{path}.{key}.{from}");
            let to = match to {
                Value::String(t) => path_at(&at, t, errors),
                _ => {
                    errors.push(ConfigError::new(&at, "must be the destination path, a string"));
                    None
                }
            };
            if let (Some(f), Some(t)) = (path_at(&at, from, errors), to) {
                list.push((f, t));
            }
        }
    }
    for (key, v) in &c.set {
        let at = format!("{path}.set.{key}");
        let Some(p) = path_at(&at, key, errors) else { continue };
        let value = match v {
            Value::String(s) if s.contains("{{") => match template(s) {
                Ok(parts) => SetValue::Template(parts),
                Err(e) => {
                    errors.push(ConfigError::new(&at, e));
                    continue;
                }
            },
            v => SetValue::Value(v.clone()),
        };
        ops.set.push((p, value));
    }
    for (key, v) in &c.coerce {
        let at = format!("{path}.coerce.{key}");
        let kind = v.as_str().and_then(Kind::parse);
        if kind.is_none() {
            errors.push(ConfigError::new(&at, "must be one of integer, float, boolean, string"));
        }
        if let (Some(p), Some(k)) = (path_at(&at, key, errors), kind) {
            ops.coerce.push((p, k));
        }
    }
    for (i, r) in c.remove.iter().enumerate() {
        if let Some(p) = path_at(&format!("{path}.remove[{i}]"), r, errors) {
            ops.remove.push(p);
        }
    }
    ops
}

impl Validate for FieldsConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let before = errors.len();
        let ops = compile(self, path, errors);
        let empty = ops.copy.is_empty() && ops.rename.is_empty() && ops.set.is_empty() && ops.coerce.is_empty() && ops.remove.is_empty();
        if empty && errors.len() == before {
            errors.push(ConfigError::new(path, "needs at least one of copy, rename, set, coerce, remove"));
        }
    }
}

impl TransformComponent for FieldsConfig {
    fn build(&self, _name: &str, cx: &mut Compiler) -> Box<dyn Step> {
        // Validated: compiling again finds no error.
        let mut ops = compile(self, "", &mut Vec::new());
        ops.text = TextPlan::new(&ops);
        if ops.text.is_some() {
            // Where each event's members are, from the decoder's scan: no
            // second pass over the event to find them.
            cx.members();
        }
        Box::new(ops)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum SetValue {
    Value(Value),
    Template(Vec<Part>),
}

#[derive(Debug, Default)]
struct Ops {
    copy: Vec<(Vec<String>, Vec<String>)>,
    rename: Vec<(Vec<String>, Vec<String>)>,
    set: Vec<(Vec<String>, SetValue)>,
    coerce: Vec<(Vec<String>, Kind)>,
    remove: Vec<Vec<String>>,
    /// The same operations on an event's bytes, when they write top-level
    /// keys only.
    text: Option<TextPlan>,
}

impl Ops {
    /// Applies every operation to one event.
    fn apply(&self, event: &mut Map<String, Value>) {
        for (from, to) in &self.copy {
            if let Some(v) = lookup(event, from).cloned() {
                set_at(event, to, v);
            }
        }
        for (from, to) in &self.rename {
            if let Some(v) = remove_at(event, from) {
                set_at(event, to, v);
            }
        }
        for (path, value) in &self.set {
            let v = match value {
                SetValue::Value(v) => v.clone(),
                SetValue::Template(parts) => {
                    let mut s = String::new();
                    for p in parts {
                        match p {
                            Part::Text(t) => s.push_str(t),
                            Part::Field(f) => render_value(&mut s, lookup(event, f)),
                        }
                    }
                    Value::String(s)
                }
            };
            set_at(event, path, v);
        }
        for (path, kind) in &self.coerce {
            if let Some(v) = lookup(event, path) {
                if let Some(c) = coerce(v, *kind) {
                    set_at(event, path, c);
                }
            }
        }
        for path in &self.remove {
            remove_at(event, path);
        }
    }
}

/// Appends a template field's value: a string as its text, null or a
/// missing value as nothing, anything else as compact JSON.
fn render_value(out: &mut String, v: Option<&Value>) {
    match v {
        Some(Value::String(v)) => out.push_str(v),
        Some(Value::Null) | None => {}
        Some(v) => out.push_str(&v.to_string()),
    }
}

/// `v` as `kind`; `None` when it does not convert (the value then stays).
fn coerce(v: &Value, kind: Kind) -> Option<Value> {
    let text = match v {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    Some(match kind {
        Kind::String => Value::String(match v {
            Value::String(s) => s.clone(),
            _ => text,
        }),
        Kind::Integer => match text.parse::<i64>() {
            Ok(i) => Value::from(i),
            Err(_) => {
                let f = text
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15)?;
                Value::from(f as i64)
            }
        },
        Kind::Float => Value::Number(Number::from_f64(text.parse::<f64>().ok()?)?),
        Kind::Boolean => match text.as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return None,
        },
    })
}

impl Step for Ops {
    fn run(&self, input: Vec<Item>, run: &mut Run<'_>, out: &mut [Vec<Item>]) {
        let [changed] = out else { return };
        changed.reserve(input.len());
        let mut work = self.text.as_ref().map(TextPlan::work);
        for mut item in input {
            let done = match (&self.text, &mut work) {
                (Some(plan), Some(work)) => run.rewrite(&mut item, |event, members, out| plan.apply(event, members, work, out)),
                _ => false,
            };
            if !done {
                if let Some(event) = run.change(&mut item) {
                    self.apply(event);
                }
            }
            changed.push(item);
        }
    }

    fn drop_reason(&self) -> &'static str {
        "none"
    }
}

/// A path `fields` reads in an event's bytes: a top-level key of the plan,
/// then the segments below it.
#[derive(Debug)]
struct Read {
    key: usize,
    rest: Vec<String>,
}

/// A piece of a `set` template, read in bytes.
#[derive(Debug)]
enum TextPart {
    Text(String),
    Field(Read),
}

/// What `set` writes, in bytes.
#[derive(Debug)]
enum TextSet {
    /// A value's JSON text, rendered once.
    Value(usize),
    /// A template, rendered per event.
    Template(Vec<TextPart>),
}

/// The operations of a [`FieldsConfig`] on an event's text, for a
/// transform whose every written path is one top-level key (a nested
/// one's events take the map path). Keys are numbered: `keys[k]`.
#[derive(Debug)]
struct TextPlan {
    /// The top-level keys the operations name, written or read.
    keys: Vec<String>,
    /// Each key's [`key_bucket`].
    buckets: Vec<usize>,
    /// Bit `b` set when some key is in bucket `b`.
    mask: u64,
    /// Each key as an appended member starts: `"key":`.
    heads: Vec<Vec<u8>>,
    /// `set` values' JSON text.
    consts: Vec<Vec<u8>>,
    copy: Vec<(Read, usize)>,
    rename: Vec<(usize, usize)>,
    set: Vec<(usize, TextSet)>,
    coerce: Vec<(usize, Kind)>,
    remove: Vec<usize>,
}

/// Where a value's text is while an event is changed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Buf {
    /// The event's own bytes.
    Event,
    /// Text made for this event ([`Work::made`]).
    Made,
    /// A `set` value ([`TextPlan::consts`]).
    Const(usize),
}

/// A value's text while an event is changed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Val {
    buf: Buf,
    span: Span,
}

/// Where a key of the plan is in the event being changed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    /// The event lacks it.
    Absent,
    /// Member `m` of the event, as it was.
    Kept(usize),
    /// Member `m`'s place, with a new value.
    Replaced(usize, Val),
    /// A member added at the end (in [`Work::added`] order).
    Added(Val),
}

/// Scratch space of one batch's run of a [`TextPlan`].
#[derive(Debug, Default)]
struct Work {
    members: Vec<Member>,
    member_buckets: Vec<u8>,
    slots: Vec<Slot>,
    /// Each key's member in the event, before any operation.
    found: Vec<Option<usize>>,
    /// Keys added at the end, in the order they were added.
    added: Vec<usize>,
    /// Values made for the event (template output, coerced values).
    made: Vec<u8>,
    /// Template text before it is escaped.
    text: String,
    /// Member changes at their place, by member index: a new value, or
    /// `None` for a member that goes.
    edits: Vec<(usize, Option<Val>)>,
}

impl TextPlan {
    /// The plan for `ops`; `None` when some operation writes a nested path.
    fn new(ops: &Ops) -> Option<TextPlan> {
        let top = |p: &[String]| match p {
            [k] => Some(k.clone()),
            _ => None,
        };
        let mut plan = TextPlan {
            keys: Vec::new(),
            buckets: Vec::new(),
            mask: 0,
            heads: Vec::new(),
            consts: Vec::new(),
            copy: Vec::new(),
            rename: Vec::new(),
            set: Vec::new(),
            coerce: Vec::new(),
            remove: Vec::new(),
        };
        for (from, to) in &ops.copy {
            let to = plan.key(top(to)?);
            let from = plan.read(from)?;
            plan.copy.push((from, to));
        }
        for (from, to) in &ops.rename {
            let from = plan.key(top(from)?);
            let to = plan.key(top(to)?);
            plan.rename.push((from, to));
        }
        for (path, value) in &ops.set {
            let k = plan.key(top(path)?);
            let v = match value {
                SetValue::Value(v) => {
                    plan.consts.push(serde_json::to_vec(v).ok()?);
                    TextSet::Value(plan.consts.len() - 1)
                }
                SetValue::Template(parts) => {
                    let mut text = Vec::with_capacity(parts.len());
                    for p in parts {
                        text.push(match p {
                            Part::Text(t) => TextPart::Text(t.clone()),
                            Part::Field(f) => TextPart::Field(plan.read(f)?),
                        });
                    }
                    TextSet::Template(text)
                }
            };
            plan.set.push((k, v));
        }
        for (path, kind) in &ops.coerce {
            let k = plan.key(top(path)?);
            plan.coerce.push((k, *kind));
        }
        for path in &ops.remove {
            let k = plan.key(top(path)?);
            plan.remove.push(k);
        }
        Some(plan)
    }

    /// The number of top-level key `key`, added if new.
    fn key(&mut self, key: String) -> usize {
        if let Some(k) = self.keys.iter().position(|x| *x == key) {
            return k;
        }
        let b = key_bucket(key.as_bytes());
        self.buckets.push(b);
        self.mask |= 1 << b;
        let mut head = vec![b'"'];
        escape_json_str(&key, &mut head);
        head.extend_from_slice(b"\":");
        self.heads.push(head);
        self.keys.push(key);
        self.keys.len() - 1
    }

    fn read(&mut self, path: &[String]) -> Option<Read> {
        let (first, rest) = path.split_first()?;
        Some(Read {
            key: self.key(first.clone()),
            rest: rest.to_vec(),
        })
    }

    /// Scratch space for a batch.
    fn work(&self) -> Work {
        Work {
            slots: vec![Slot::Absent; self.keys.len()],
            found: vec![None; self.keys.len()],
            ..Work::default()
        }
    }

    /// The text of `v`.
    #[inline]
    fn bytes<'a>(&'a self, event: &'a [u8], work: &'a Work, v: Val) -> &'a [u8] {
        match v.buf {
            Buf::Event => v.span.of(event),
            Buf::Made => v.span.of(&work.made),
            Buf::Const(i) => self.consts.get(i).map_or(&[][..], |c| v.span.of(c)),
        }
    }

    /// Applies every operation to `event`, writing the changed event to
    /// `out`. [`Rewrite::Refused`] (with `out` as it was) when the event is
    /// not a JSON object or has a top-level key repeated or escaped: the
    /// map path then changes it, as it reads such keys. `members`, when
    /// given, are the event's members as the decoder found them (the
    /// object is then valid); else they are found here.
    fn apply(&self, event: &[u8], members: Option<&[MemberAt]>, work: &mut Work, out: &mut Vec<u8>) -> Rewrite {
        work.members.clear();
        match members {
            Some(members) => work.members.extend(members.iter().map(Member::from)),
            None => {
                if object_members(event, &mut work.members).is_none() {
                    return Rewrite::Refused;
                }
            }
        }
        if !self.find_keys(event, work) {
            return Rewrite::Refused;
        }
        for (i, f) in work.found.iter().enumerate() {
            work.slots[i] = f.map_or(Slot::Absent, Slot::Kept);
        }
        work.added.clear();
        work.made.clear();

        for (from, to) in &self.copy {
            if let Some(v) = self.get(event, work, from) {
                work.set(*to, v);
            }
        }
        for &(from, to) in &self.rename {
            if let Some(v) = work.remove(from) {
                work.set(to, v);
            }
        }
        for (k, value) in &self.set {
            let v = match value {
                TextSet::Value(i) => Val {
                    buf: Buf::Const(*i),
                    span: Span {
                        start: 0,
                        end: self.consts.get(*i).map_or(0, Vec::len),
                    },
                },
                TextSet::Template(parts) => self.render(event, work, parts),
            };
            work.set(*k, v);
        }
        for &(k, kind) in &self.coerce {
            let Some(v) = work.get(k) else { continue };
            let coerced = match self.bytes(event, work, v).first() {
                // Objects, arrays and null never convert.
                Some(b'{' | b'[' | b'n') | None => None,
                Some(_) => parse_value(self.bytes(event, work, v)).and_then(|v| coerce(&v, kind)),
            };
            if let Some(c) = coerced {
                let start = work.made.len();
                if serde_json::to_writer(&mut work.made, &c).is_err() {
                    work.made.truncate(start);
                    continue;
                }
                let span = Span {
                    start,
                    end: work.made.len(),
                };
                work.set(k, Val { buf: Buf::Made, span });
            }
        }
        for &k in &self.remove {
            work.remove(k);
        }
        self.write(event, work, out)
    }

    /// Finds the plan's keys among the event's members (`work.found`);
    /// false when a key is repeated or escaped.
    fn find_keys(&self, event: &[u8], work: &mut Work) -> bool {
        work.found.iter_mut().for_each(|f| *f = None);
        work.member_buckets.clear();
        let mut seen = 0u64;
        for (i, m) in work.members.iter().enumerate() {
            if m.escaped {
                return false;
            }
            let key = m.key_text(event);
            let b = key_bucket(key);
            if seen & (1 << b) != 0 {
                let earlier = work.members[..i].iter().zip(&work.member_buckets);
                if earlier
                    .filter(|(_, eb)| usize::from(**eb) == b)
                    .any(|(e, _)| same_bytes(e.key_text(event), key))
                {
                    return false;
                }
            }
            seen |= 1 << b;
            work.member_buckets.push(b as u8);
            if self.mask & (1 << b) != 0 {
                for (k, name) in self.keys.iter().enumerate() {
                    if self.buckets[k] == b && same_bytes(name.as_bytes(), key) {
                        work.found[k] = Some(i);
                    }
                }
            }
        }
        true
    }

    /// The value at `read` in the event as changed so far.
    fn get(&self, event: &[u8], work: &Work, read: &Read) -> Option<Val> {
        let mut v = work.get(read.key)?;
        for segment in &read.rest {
            let text = match v.buf {
                Buf::Event => event,
                Buf::Made => &work.made,
                Buf::Const(i) => self.consts.get(i)?,
            };
            v.span = member_value(text, v.span, segment)?;
        }
        Some(v)
    }

    /// A template rendered from the event as changed so far: a JSON
    /// string in `work.made`.
    fn render(&self, event: &[u8], work: &mut Work, parts: &[TextPart]) -> Val {
        let mut text = std::mem::take(&mut work.text);
        text.clear();
        for p in parts {
            match p {
                TextPart::Text(t) => text.push_str(t),
                TextPart::Field(read) => {
                    if let Some(v) = self.get(event, work, read) {
                        render_text(&mut text, self.bytes(event, work, v));
                    }
                }
            }
        }
        let start = work.made.len();
        work.made.push(b'"');
        escape_json_str(&text, &mut work.made);
        work.made.push(b'"');
        work.text = text;
        Val {
            buf: Buf::Made,
            span: Span {
                start,
                end: work.made.len(),
            },
        }
    }

    /// Writes the changed event to `out`: runs of kept members as they were
    /// written, replaced values after their own key's text, then the added
    /// members. [`Rewrite::Unchanged`] when no operation changed anything.
    fn write(&self, event: &[u8], work: &mut Work, out: &mut Vec<u8>) -> Rewrite {
        work.edits.clear();
        for (k, f) in work.found.iter().enumerate() {
            let Some(m) = *f else { continue };
            match work.slots[k] {
                Slot::Kept(_) => {}
                Slot::Replaced(_, v) => work.edits.push((m, Some(v))),
                Slot::Absent | Slot::Added(_) => work.edits.push((m, None)),
            }
        }
        if work.edits.is_empty() && work.added.is_empty() {
            return Rewrite::Unchanged;
        }
        work.edits.sort_unstable_by_key(|e| e.0);
        let members = &work.members;
        let mut comma = false;
        let mut piece = |out: &mut Vec<u8>, bytes: &[u8]| {
            if comma {
                out.push(b',');
            }
            comma = true;
            out.extend_from_slice(bytes);
        };
        out.push(b'{');
        let mut next = 0;
        for &(m, edit) in &work.edits {
            if next < m {
                piece(
                    out,
                    Span {
                        start: members[next].key.start,
                        end: members[m - 1].value.end,
                    }
                    .of(event),
                );
            }
            if let Some(v) = edit {
                let member = &members[m];
                piece(
                    out,
                    Span {
                        start: member.key.start,
                        end: member.value.start,
                    }
                    .of(event),
                );
                out.extend_from_slice(self.bytes(event, work, v));
            }
            next = m + 1;
        }
        if let Some(last) = members.last().filter(|_| next < members.len()) {
            piece(
                out,
                Span {
                    start: members[next].key.start,
                    end: last.value.end,
                }
                .of(event),
            );
        }
        for &k in &work.added {
            if let Slot::Added(v) = work.slots[k] {
                piece(out, &self.heads[k]);
                out.extend_from_slice(self.bytes(event, work, v));
            }
        }
        out.push(b'}');
        Rewrite::Written
    }
}

impl Work {
    /// Key `k`'s value in the event as changed so far.
    #[inline]
    fn get(&self, k: usize) -> Option<Val> {
        match self.slots[k] {
            Slot::Absent => None,
            Slot::Kept(m) => Some(Val {
                buf: Buf::Event,
                span: self.members[m].value,
            }),
            Slot::Replaced(_, v) | Slot::Added(v) => Some(v),
        }
    }

    /// Sets key `k`: in its place when the event has it (as a map's
    /// insert keeps a key's place), else at the end.
    #[inline]
    fn set(&mut self, k: usize, v: Val) {
        self.slots[k] = match self.slots[k] {
            Slot::Kept(m) | Slot::Replaced(m, _) => Slot::Replaced(m, v),
            Slot::Added(_) => Slot::Added(v),
            Slot::Absent => {
                self.added.push(k);
                Slot::Added(v)
            }
        };
    }

    /// Removes key `k`, returning its value; the members after it keep
    /// their order.
    #[inline]
    fn remove(&mut self, k: usize) -> Option<Val> {
        let v = self.get(k)?;
        if let Slot::Added(_) = self.slots[k] {
            self.added.retain(|&a| a != k);
        }
        self.slots[k] = Slot::Absent;
        Some(v)
    }
}

/// Appends the value whose JSON text is `value` as a template renders it
/// ([`render_value`]): a string without escapes and a plain integer
/// straight from the text, anything else through its parsed value.
fn render_text(out: &mut String, value: &[u8]) {
    let plain = match value {
        [b'"', inner @ .., b'"'] if plain_prefix_len(inner) == inner.len() => std::str::from_utf8(inner).ok(),
        [b'n', ..] => Some(""),
        [b't', ..] => Some("true"),
        [b'f', ..] => Some("false"),
        // Up to 18 digits: a u64 or i64 serde_json writes back the same
        // (`-0` it reads as a float).
        [b'-', b'1'..=b'9', rest @ ..] | [b'1'..=b'9', rest @ ..] if rest.len() < 18 && rest.iter().all(u8::is_ascii_digit) => {
            std::str::from_utf8(value).ok()
        }
        [b'0'] => Some("0"),
        _ => None,
    };
    match plain {
        Some(text) => out.push_str(text),
        None => render_value(out, parse_value(value).as_ref()),
    }
}

/// Both ways of changing `event` ([`super::fuzz_fields`]).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_both(config: Value, event: &[u8]) -> Option<(Option<Vec<u8>>, Option<Value>)> {
    let c: FieldsConfig = serde_json::from_value(config).ok()?;
    let mut errors = Vec::new();
    let mut ops = compile(&c, "", &mut errors);
    if !errors.is_empty() {
        return None;
    }
    ops.text = TextPlan::new(&ops);
    let bytes = ops.text.as_ref().and_then(|plan| {
        let mut out = Vec::new();
        match plan.apply(event, None, &mut plan.work(), &mut out) {
            Rewrite::Written => Some(out),
            Rewrite::Unchanged => Some(event.to_vec()),
            Rewrite::Refused => None,
        }
    });
    let parsed = serde_json::from_slice::<Map<String, Value>>(event).ok().map(|mut map| {
        ops.apply(&mut map);
        Value::Object(map)
    });
    Some((bytes, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ops(v: Value) -> Result<Ops, Vec<String>> {
        let c: FieldsConfig = serde_json::from_value(v).map_err(|e| vec![e.to_string()])?;
        let mut errors = Vec::new();
        let ops = compile(&c, "t", &mut errors);
        if errors.is_empty() {
            Ok(ops)
        } else {
            Err(errors.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn copy_rename_set_coerce_remove_apply_in_that_order() {
        let o = ops(json!({
            "copy": {"level": "severity"},
            "rename": {"msg": "message"},
            "set": {"env": "prod", "summary": "{{ level }}: {{ message }} ({{ code }})", "meta.n": 1},
            "coerce": {"code": "integer", "ok": "boolean", "ratio": "float", "id": "string"},
            "remove": ["debug", "nested.x"],
        }))
        .unwrap();
        let Value::Object(mut e) = json!({"level": "warn", "msg": "slow", "code": "504", "ok": "true", "ratio": "0.5", "id": 7, "debug": 1, "nested": {"x": 1, "y": 2}})
        else {
            unreachable!()
        };
        o.apply(&mut e);
        assert_eq!(
            Value::Object(e),
            json!({"level": "warn", "code": 504, "ok": true, "ratio": 0.5, "id": "7", "nested": {"y": 2},
                   "severity": "warn", "message": "slow", "env": "prod", "summary": "warn: slow (504)", "meta": {"n": 1}})
        );
    }

    #[test]
    fn a_value_that_does_not_convert_stays() {
        assert_eq!(coerce(&json!("abc"), Kind::Integer), None);
        assert_eq!(coerce(&json!("2.0"), Kind::Integer), Some(json!(2)));
        assert_eq!(coerce(&json!("yes"), Kind::Boolean), None);
        assert_eq!(coerce(&json!({"a": 1}), Kind::String), None);
    }

    #[test]
    fn bad_paths_templates_and_kinds_are_errors_at_their_keys() {
        let e = ops(json!({"set": {"a..b": 1, "c": "{{ d "}, "coerce": {"x": "date"}, "rename": {"y": 3}})).unwrap_err();
        for want in [
            "t.set.a..b",
            "t.set.c: unclosed",
            "t.coerce.x: must be one of",
            "t.rename.y: must be the destination",
        ] {
            assert!(e.iter().any(|x| x.starts_with(want)), "missing {want} in {e:?}");
        }
    }

    /// `event` changed by `config` in bytes (`None`: refused) and through a
    /// map; when both read it, they agree.
    fn both(config: Value, event: &str) -> (Option<String>, Option<Value>) {
        let (bytes, parsed) = fuzz_both(config, event.as_bytes()).expect("valid settings");
        let bytes = bytes.map(|b| String::from_utf8(b).unwrap());
        if let (Some(b), Some(p)) = (&bytes, &parsed) {
            let got: Value = serde_json::from_str(b).unwrap_or_else(|e| panic!("{b}: {e}"));
            assert!(same(&got, p), "bytes {b} against map {p}");
        }
        (bytes, parsed)
    }

    /// The same JSON, members in the same order, numbers within a rounding
    /// step (serde_json reads some floats it wrote one step off, so a value
    /// coerced and written may differ from the one in the map by that).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
                _ if x == y => true,
                (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                _ => false,
            },
            (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|((kx, vx), (ky, vy))| kx == ky && same(vx, vy))
            }
            _ => a == b,
        }
    }

    fn reshape() -> Value {
        json!({
            "copy": {"level": "severity", "http.status": "code_copy"},
            "rename": {"msg": "message", "gone": "here"},
            "set": {"env": "prod", "summary": "{{ level }}: {{ message }} ({{ code }}) {{ http.status }} {{ n }} {{ nothing }}", "team": {"a": [1, "x"]}},
            "coerce": {"code": "integer", "ok": "boolean", "ratio": "float", "id": "string"},
            "remove": ["debug", "team"],
        })
    }

    #[test]
    fn the_bytes_path_changes_top_level_members_as_the_map_path_does() {
        let (got, _) = both(
            reshape(),
            r#"{"level":"warn","msg":"slow \"q\"","code":"504","ok":"true","ratio":"0.5","id":7,"debug":1,"http":{"status":503},"n":null,"severity":"x"}"#,
        );
        assert_eq!(
            got.as_deref(),
            Some(
                r#"{"level":"warn","code":504,"ok":true,"ratio":0.5,"id":"7","http":{"status":503},"n":null,"severity":"warn","code_copy":503,"message":"slow \"q\"","env":"prod","summary":"warn: slow \"q\" (504) 503  "}"#
            )
        );
        for event in [
            "{}",
            r#"{"msg":1,"message":2}"#,
            r#"{"message":2,"msg":{"a":[true,false,null]}}"#,
            r#" { "level" : 1.5e3 , "msg":"\u00e9\n", "gone": "x", "team": 1 } "#,
            r#"{"level":"a\u0000b","code":" 12 ","ok":"0","ratio":"1e3","id":"s","http":[1]}"#,
            r#"{"level":-0,"code":"2.0","ok":"maybe","ratio":"x","id":true,"http":{"status":"a\"b"}}"#,
            r#"{"level":18446744073709551616,"code":-12,"ok":1,"ratio":3,"id":{"x":1}}"#,
            r#"{"level":"é✓","msg":"","code":"9007199254740993"}"#,
        ] {
            let (got, parsed) = both(reshape(), event);
            assert!(got.is_some() && parsed.is_some(), "{event}");
        }
    }

    #[test]
    fn values_keep_their_text_and_untouched_events_their_bytes() {
        let config = json!({"rename": {"a": "b"}, "remove": ["c"]});
        let (got, _) = both(config.clone(), r#"{"x":1.50E+2,"a":"\u0041","y":{"z":[ 1 , 2 ]}}"#);
        assert_eq!(got.as_deref(), Some(r#"{"x":1.50E+2,"y":{"z":[ 1 , 2 ]},"b":"\u0041"}"#));
        let untouched = r#"{ "x" : 1 , "y":"\u0041" }"#;
        assert_eq!(
            both(config, untouched).0.as_deref(),
            Some(untouched),
            "nothing to change: the same bytes"
        );
    }

    #[test]
    fn repeated_or_escaped_top_level_keys_and_other_text_go_to_the_map_path() {
        for (event, readable) in [
            (r#"{"msg":1,"x":2,"msg":3}"#, true),
            (r#"{"x":1,"x":2}"#, true),
            (r#"{"ms\u0067":1}"#, true),
            (r#"{"a\u0062":1,"ab":2}"#, true),
            ("[1,2]", false),
            ("\"text\"", false),
            (r#"{"msg":1"#, false),
            (r#"{"msg":1} {}"#, false),
            (r#"{"msg":"\ud800"}"#, false),
            ("", false),
        ] {
            let (bytes, parsed) = both(json!({"rename": {"msg": "m"}, "set": {"x": 0}}), event);
            assert_eq!(bytes, None, "{event}");
            assert_eq!(parsed.is_some(), readable, "{event}");
        }
        // What the map path makes of them: the last of a repeated key, at
        // the first one's place; an escaped key is the key it spells.
        let (_, parsed) = both(
            json!({"rename": {"msg": "m"}, "set": {"x": 0}}),
            r#"{"msg":1,"x":2,"msg":3,"ms\u0067":4}"#,
        );
        assert_eq!(parsed, Some(json!({"x": 0, "m": 4})));
    }

    #[test]
    fn nested_paths_are_read_in_bytes_and_written_through_the_map() {
        let read = ops(json!({"copy": {"a.b": "c"}, "set": {"d": "{{ a.b }}"}})).unwrap();
        assert!(TextPlan::new(&read).is_some(), "nested reads stay in bytes");
        for write in [
            json!({"set": {"meta.n": 1}}),
            json!({"remove": ["a.b"]}),
            json!({"rename": {"a.b": "c"}}),
            json!({"rename": {"c": "a.b"}}),
            json!({"copy": {"c": "a.b"}}),
            json!({"coerce": {"a.b": "integer"}}),
        ] {
            assert!(TextPlan::new(&ops(write.clone()).unwrap()).is_none(), "{write}");
            assert_eq!(both(write, r#"{"a":{"b":"1"}}"#).0, None);
        }
        let (got, _) = both(
            json!({"copy": {"a.b": "c", "a.x.y": "e"}, "set": {"d": "{{ a.b }}/{{ a.x }}"}}),
            r#"{"a":{"b":"v","b":"w","x":{"y":[1]}}}"#,
        );
        assert_eq!(
            got.as_deref(),
            Some(r#"{"a":{"b":"v","b":"w","x":{"y":[1]}},"c":"w","e":[1],"d":"w/{\"y\":[1]}"}"#)
        );
    }

    /// Keys of the generated events (the first 8) and paths of the
    /// generated settings (all).
    const KEYS: [&str; 10] = ["a", "b", "msg", "message", "level", "code", "n", "x", "a.b", "a.c"];

    /// A JSON object's text with keys from a few, repeated or not, values
    /// of every kind, and whitespace here and there.
    fn event_text() -> impl Strategy<Value = String> {
        let key = proptest::sample::select(&KEYS[..8]);
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("-0".to_owned()),
            Just("1.5e2".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
            "[ -~é\n\t]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just(r#""\u00e9\"x""#.to_owned()),
            Just(r#"" 42 ""#.to_owned()),
            Just(r#""1""#.to_owned()),
        ];
        let value = leaf.prop_recursive(3, 12, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec((prop_oneof![Just("b"), Just("c"), Just("y")], inner), 0..3).prop_map(|m| format!(
                    "{{{}}}",
                    m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")
                )),
            ]
        });
        proptest::collection::vec((key, value, any::<bool>()), 0..7).prop_map(|members| {
            let body: Vec<String> = members
                .iter()
                .map(|(k, v, spaced)| {
                    if *spaced {
                        format!(" \"{k}\" : {v} ")
                    } else {
                        format!("\"{k}\":{v}")
                    }
                })
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    /// Settings of a `fields` transform over the same few keys.
    fn settings() -> impl Strategy<Value = Value> {
        let key = || proptest::sample::select(&KEYS[..]);
        let kind = prop_oneof![Just("integer"), Just("float"), Just("boolean"), Just("string")];
        let set_value = prop_oneof![
            Just(json!("prod")),
            Just(json!(1)),
            Just(json!({"k": [1, null]})),
            Just(json!("{{ level }}-{{ a.b }}:{{ n }}")),
            Just(json!("{{ msg }}")),
        ];
        (
            proptest::collection::btree_map(key(), key(), 0..2),
            proptest::collection::btree_map(key(), key(), 0..3),
            proptest::collection::btree_map(key(), set_value, 0..3),
            proptest::collection::btree_map(key(), kind, 0..2),
            proptest::collection::vec(key(), 0..3),
        )
            .prop_map(|(copy, rename, set, coerce, remove)| json!({"copy": copy, "rename": rename, "set": set, "coerce": coerce, "remove": remove}))
    }

    /// Records where the decoder says each event's members are.
    struct MemberLog(Vec<Option<Vec<Member>>>);

    impl crate::decode::EventObserver for MemberLog {
        fn event(&mut self, values: &crate::decode::EventValues<'_>) {
            self.0.push(values.members().map(|ms| ms.iter().map(Member::from).collect()));
        }

        fn finish(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
            Box::new(self.0)
        }

        fn wants_members(&self) -> bool {
            true
        }
    }

    /// Decodes `lines` with the source's members of `meta` and the
    /// per-event `extra` spliced in; returns the batch and the members the
    /// decoder reported per event.
    fn decoded_members(lines: &[String], meta: &Value, extra: &[crate::enrich::Member]) -> (crate::event::Batch, Vec<Option<Vec<Member>>>) {
        use crate::event::{BatchBuilder, FieldSet};
        use std::sync::Arc;
        let Value::Object(meta) = meta.clone() else {
            unreachable!("an object")
        };
        let fragment = crate::enrich::Fragment::from_map(&meta);
        let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 1024, lines.len());
        let mut d = crate::decode::Decoder::new();
        d.observe(Arc::new(FieldSet::new()), Box::new(MemberLog(Vec::new())));
        for l in lines {
            d.decode_line(l.as_bytes(), false, extra, &fragment, &mut out);
        }
        let seen = d
            .finish_observers()
            .pop()
            .and_then(|s| s.downcast::<Vec<Option<Vec<Member>>>>().ok())
            .unwrap();
        (
            out.build(crate::decode::test_support::context(), std::time::SystemTime::now()),
            *seen,
        )
    }

    #[test]
    fn the_decoder_reports_the_members_a_pass_over_the_event_finds() {
        let lines: Vec<String> = [
            r#"{"a":1,"msg":"x\"y","n":{"b":[1,2]}}"#,
            " {\n\"a\" : \"v\" ,\r\n \"host\":2 }  ",
            "{}",
            r#"{"a":1.5e3}"#,
            r#"{"ms\u0067":1}"#,
            "not json",
            r#"{"release":{"version":"own"},"x":null}"#,
        ]
        .map(String::from)
        .to_vec();
        let meta = json!({"host": "node-1", "release": {"version": "v2"}, "we\"ird": [1, {"k": "\u{00e9}"}], "é": true});
        let extra = [
            crate::enrich::Member::string("stream", "stdout"),
            crate::enrich::Member::string("a", "x\""),
        ];
        let (batch, seen) = decoded_members(&lines, &meta, &extra);
        assert_eq!(seen.len(), lines.len());
        let mut told = 0;
        for (i, got) in seen.iter().enumerate() {
            let event = batch.event(i);
            let Some(got) = got else { continue };
            told += 1;
            let mut want = Vec::new();
            assert!(object_members(event, &mut want).is_some(), "{:?}", String::from_utf8_lossy(event));
            assert_eq!(*got, want, "{:?}", String::from_utf8_lossy(event));
        }
        assert!(told >= 4, "the scan reads most of these lines: {told}");
        let weird = seen[2]
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.escaped)
            .expect("the escaped key is marked");
        assert_eq!(weird.key_text(batch.event(2)), br#"we\"ird"#);
    }

    proptest! {
        /// Whatever the event, where the decoder says its members are is
        /// where a pass over the decoded event finds them: `fields` may
        /// take either.
        #[test]
        fn the_decoders_members_are_the_events_members(events in proptest::collection::vec(event_text(), 1..6), spaced in any::<bool>()) {
            let lines: Vec<String> = events.iter().map(|e| if spaced { format!(" {e} \t") } else { e.clone() }).collect();
            let meta = json!({"host": "h", "msg": "from meta", "n\\x": 1});
            let extra = [crate::enrich::Member::string("level", "info")];
            let (batch, seen) = decoded_members(&lines, &meta, &extra);
            for (i, got) in seen.iter().enumerate() {
                let Some(got) = got else { continue };
                let event = batch.event(i);
                let mut want = Vec::new();
                prop_assert!(object_members(event, &mut want).is_some());
                prop_assert_eq!(got, &want, "{:?}", String::from_utf8_lossy(event));
            }
        }

        /// Whatever the settings and the event, the bytes path, when it
        /// takes the event, gives the members, values and order the map
        /// path gives, and it refuses only what it must.
        #[test]
        fn the_bytes_path_agrees_with_the_map_path(config in settings(), event in event_text()) {
            if fuzz_both(config.clone(), event.as_bytes()).is_none() {
                return Ok(());
            }
            let (bytes, parsed) = both(config.clone(), &event);
            let plan = TextPlan::new(&ops(config).unwrap());
            let mut members = Vec::new();
            let repeated = object_members(event.as_bytes(), &mut members).is_some() && {
                let keys: Vec<&[u8]> = members.iter().map(|m| m.key_text(event.as_bytes())).collect();
                keys.iter().enumerate().any(|(i, k)| keys[..i].contains(k))
            };
            prop_assert_eq!(bytes.is_some(), plan.is_some() && !repeated && parsed.is_some(), "{}", event);
        }
    }
}
