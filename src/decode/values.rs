//! What an [`EventObserver`] sees of one event: its values of
//! the observer's fields, made only when the observer asks for them.

use simd_json::Node;

use super::extract::FieldPlan;
use super::tape::wrapped_value;
use super::text_test::LineTests;
use std::sync::Arc;

use crate::event::{FieldPath, FieldSet, FieldValueRef};

/// One event's values of an observer's fields, by index in its field set.
///
/// The decoder has already found where each field's value lies in the
/// parsed event (in its one pass over the keys), so reading a value is a
/// few instructions, and a value nobody reads costs nothing: a rule that
/// rejects an event on its first field never touches the others.
#[derive(Clone, Copy)]
pub struct EventValues<'v>(Source<'v>);

#[derive(Clone, Copy)]
enum Source<'v> {
    /// A parsed JSON object and the plan that located the fields in it.
    Parsed { nodes: &'v [Node<'v>], plan: &'v FieldPlan },
    /// A JSON object the scan read, and the plan that located the fields
    /// in its text ([`FieldPlan::settle_text`] passed); with its members'
    /// places when an observer asked for them.
    Scanned {
        line: &'v [u8],
        plan: &'v FieldPlan,
        members: Option<&'v [MemberAt]>,
    },
    /// A line kept as `{"message": text}`.
    Wrapped { text: &'v str, paths: &'v [FieldPath] },
}

impl std::fmt::Debug for EventValues<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries((0..self.len()).map(|i| self.get(i))).finish()
    }
}

impl<'v> EventValues<'v> {
    /// The fields `plan` located in the object whose tape is `nodes`.
    pub(super) fn parsed(nodes: &'v [Node<'v>], plan: &'v FieldPlan) -> EventValues<'v> {
        EventValues(Source::Parsed { nodes, plan })
    }

    /// The fields `plan` located in the text of the object `line`, and,
    /// when collected, where every member of the event written from it is.
    pub(super) fn scanned(line: &'v [u8], plan: &'v FieldPlan, members: Option<&'v [MemberAt]>) -> EventValues<'v> {
        EventValues(Source::Scanned { line, plan, members })
    }

    /// Where each top-level member of the event is in its bytes as the
    /// batch holds them (the line's own members, then those spliced in), in
    /// the order written: for an observer whose
    /// [`EventObserver::wants_members`] is true, when the scan read the
    /// line. `None` otherwise (a line simd-json parsed, a wrapped line):
    /// find them in the event's bytes.
    pub(crate) fn members(&self) -> Option<&'v [MemberAt]> {
        match self.0 {
            Source::Scanned { members, .. } => members,
            Source::Parsed { .. } | Source::Wrapped { .. } => None,
        }
    }

    /// The fields `paths` of a wrapped line whose text is `text`.
    pub(super) fn wrapped(text: &'v str, paths: &'v [FieldPath]) -> EventValues<'v> {
        EventValues(Source::Wrapped { text, paths })
    }

    /// Number of fields.
    pub(crate) fn len(&self) -> usize {
        match self.0 {
            Source::Parsed { plan, .. } | Source::Scanned { plan, .. } => plan.len(),
            Source::Wrapped { paths, .. } => paths.len(),
        }
    }

    /// The value of field `i`; `Missing` past the last field.
    #[inline(always)]
    pub(crate) fn get(&self, i: usize) -> FieldValueRef<'v> {
        match self.0 {
            Source::Parsed { nodes, plan } => plan.value(nodes, i),
            Source::Scanned { line, plan, .. } => plan.text_value(line, i),
            Source::Wrapped { text, paths } => paths.get(i).map_or(FieldValueRef::Missing, |p| wrapped_value(p, text)),
        }
    }
}

/// Sees every event of one batch as the decoder produces it, with the values
/// of its own fields. The SLI rules judge events this way, straight from the
/// parsed event: their fields are read where they lie, never copied into the
/// batch.
pub trait EventObserver: Send {
    /// One event: `values` gives its value of each path of the field set
    /// the observer was attached with, by index, as asked for.
    fn event(&mut self, values: &EventValues<'_>);

    /// The batch is complete: what the observer made of it.
    fn finish(self: Box<Self>) -> Box<dyn std::any::Any + Send>;

    /// Whether [`EventValues::members`] should say where each member of
    /// the event is (it costs the decoder a little per member).
    fn wants_members(&self) -> bool {
        false
    }

    /// Tests of string fields the decoder may judge on the line's text for
    /// this observer, showing it the verdicts ([`EventObserver::judged`])
    /// instead of the values, when they are all it needs of an event.
    fn line_tests(&self) -> Option<LineTests> {
        None
    }

    /// One event judged by [`EventObserver::line_tests`]: bit `i` is test
    /// `i`'s verdict. The decoder shows every other event through
    /// [`EventObserver::event`].
    fn judged(&mut self, _verdicts: u64) {}
}

/// Where one top-level member of an event is in the event's bytes, as a
/// batch holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberAt {
    /// The key with its quotes: `start..end`.
    pub(crate) key: (u32, u32),
    /// The value's text, without the whitespace around it.
    pub(crate) value: (u32, u32),
    /// Whether the key's text holds an escape.
    pub(crate) escaped: bool,
}

impl MemberAt {
    /// A member the scan found: its key between the quotes and its value.
    #[inline(always)]
    pub(super) fn scanned(key: std::ops::Range<usize>, value: std::ops::Range<usize>) -> MemberAt {
        MemberAt {
            key: (key.start as u32 - 1, key.end as u32 + 1),
            value: (value.start as u32, value.end as u32),
            escaped: false,
        }
    }

    /// A member spliced in at offset `at` of the event, rendered as
    /// `rendered` (`"key":value`, as serde_json or the enricher wrote it).
    pub(super) fn spliced(at: usize, rendered: &[u8]) -> MemberAt {
        // The key is the JSON string the rendering starts with.
        let mut i = 1;
        let mut escaped = false;
        while let Some(&b) = rendered.get(i) {
            match b {
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                b'"' => break,
                _ => i += 1,
            }
        }
        let key_end = (i + 1).min(rendered.len());
        let at = at as u32;
        MemberAt {
            key: (at, at + key_end as u32),
            value: (at + (key_end + 1).min(rendered.len()) as u32, at + rendered.len() as u32),
            escaped,
        }
    }
}

/// An observer and the fields it reads.
pub(crate) struct Observer {
    /// The paths whose values [`EventObserver::event`] gets.
    pub(crate) fields: Arc<FieldSet>,
    /// The observer.
    pub(crate) inner: Box<dyn EventObserver>,
    /// Its [`EventObserver::line_tests`], when they fit its fields.
    pub(crate) line_tests: Option<LineTests>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").field("fields", &self.fields.len()).finish()
    }
}
