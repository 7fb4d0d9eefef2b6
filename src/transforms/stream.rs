//! The events flowing between transforms within one batch: an index into
//! the decoded batch, plus the changed event for those a transform has
//! changed. Dotted paths read and write changed events here.

use serde_json::{Map, Value};

use super::members::{value_at_path, Found, Span};
use crate::condition::Values;
use crate::event::{FieldPath, FieldValueRef};

/// One event on its way through the graph.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// The event's index in the decoded batch.
    pub(crate) idx: u32,
    /// The event as transforms changed it.
    pub(crate) changed: Changed,
}

/// What transforms made of an event so far.
#[derive(Debug, Clone)]
pub(crate) enum Changed {
    /// Nothing: it is the batch's bytes as they are.
    No,
    /// Rewritten in bytes: a JSON object at this span of the run's text
    /// (`Run::rewrite`).
    Text(Span),
    /// Parsed into a map, changed there, serialised at the output.
    Parsed(Box<Map<String, Value>>),
}

impl Item {
    /// Event `idx` of the batch, unchanged.
    pub(crate) fn new(idx: u32) -> Item {
        Item { idx, changed: Changed::No }
    }
}

/// How a rewrite of an event's bytes went (`Run::rewrite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rewrite {
    /// The changed event was written.
    Written,
    /// Nothing changed; nothing was written.
    Unchanged,
    /// The bytes cannot be changed as bytes; nothing was written, and the
    /// event is to be parsed instead.
    Refused,
}

/// The values of a field set in an event's text ([`Changed::Text`]),
/// located once: strings with escapes are unescaped into `unescaped`.
pub(crate) fn text_values(text: &[u8], paths: &[FieldPath], found: &mut Vec<Found>, unescaped: &mut String) {
    found.clear();
    unescaped.clear();
    for p in paths {
        found.push(value_at_path(text, p.segments()).map_or(Found::Missing, |span| Found::of(text, span, unescaped)));
    }
}

/// A changed event's values of a field set, from its text, as
/// [`text_values`] located them.
pub(crate) struct TextValues<'a> {
    /// The event's text.
    pub(crate) text: &'a [u8],
    /// Per field, where its value is.
    pub(crate) found: &'a [Found],
    /// The unescaped strings.
    pub(crate) unescaped: &'a str,
}

impl<'a> Values<'a> for TextValues<'a> {
    fn get(&self, i: usize) -> FieldValueRef<'a> {
        self.found
            .get(i)
            .map_or(FieldValueRef::Missing, |f| f.as_ref(self.text, self.unescaped))
    }
}

/// The value at `path` in a changed event, as the decoder would have
/// extracted it.
pub(crate) fn value_at<'a>(event: &'a Map<String, Value>, path: &FieldPath) -> FieldValueRef<'a> {
    match lookup(event, path.segments()) {
        None => FieldValueRef::Missing,
        Some(Value::Null) => FieldValueRef::Null,
        Some(Value::Bool(b)) => FieldValueRef::Bool(*b),
        Some(Value::Number(n)) => n.as_f64().map_or(FieldValueRef::Composite, FieldValueRef::Number),
        Some(Value::String(s)) => FieldValueRef::Str(s),
        Some(_) => FieldValueRef::Composite,
    }
}

/// The value at a dotted path.
pub(crate) fn lookup<'a>(event: &'a Map<String, Value>, segments: &[String]) -> Option<&'a Value> {
    let (first, rest) = segments.split_first()?;
    let mut v = event.get(first)?;
    for s in rest {
        v = v.as_object()?.get(s)?;
    }
    Some(v)
}

/// Sets the value at a dotted path, making the objects on the way (and
/// replacing a non-object in the way).
pub(crate) fn set_at(event: &mut Map<String, Value>, segments: &[String], value: Value) {
    let Some((last, parents)) = segments.split_last() else { return };
    let mut table = event;
    for s in parents {
        let entry = table.entry(s.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        table = next;
    }
    table.insert(last.clone(), value);
}

/// Removes and returns the value at a dotted path.
pub(crate) fn remove_at(event: &mut Map<String, Value>, segments: &[String]) -> Option<Value> {
    let (last, parents) = segments.split_last()?;
    let mut table = event;
    for s in parents {
        table = table.get_mut(s)?.as_object_mut()?;
    }
    table.shift_remove(last)
}

/// A changed event's values of a field set, for conditions judged after a
/// transform changed the event.
pub(crate) struct ChangedValues<'a> {
    /// The event.
    pub(crate) event: &'a Map<String, Value>,
    /// The field set's paths, by index.
    pub(crate) paths: &'a [FieldPath],
}

impl<'a> Values<'a> for ChangedValues<'a> {
    fn get(&self, i: usize) -> FieldValueRef<'a> {
        self.paths.get(i).map_or(FieldValueRef::Missing, |p| value_at(self.event, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn segs(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn paths_set_read_and_remove_nested_values() {
        let Value::Object(mut e) = json!({"a": 1, "b": {"c": "x"}}) else {
            unreachable!()
        };
        set_at(&mut e, &segs("b.d"), json!(2));
        set_at(&mut e, &segs("a.z"), json!(true));
        assert_eq!(Value::Object(e.clone()), json!({"a": {"z": true}, "b": {"c": "x", "d": 2}}));
        assert_eq!(remove_at(&mut e, &segs("b.c")), Some(json!("x")));
        assert_eq!(remove_at(&mut e, &segs("nope.x")), None);
        let p = FieldPath::parse("b.d").unwrap();
        assert_eq!(value_at(&e, &p), FieldValueRef::Number(2.0));
    }
}
