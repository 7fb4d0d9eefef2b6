//! The fields the pipeline needs from each event. The decoder extracts only
//! these, so an unused field costs nothing beyond the parse itself.

use std::fmt;

/// A dotted path into an event: `status`, `http.status`. Keys that contain a
/// dot cannot be addressed (a documented limit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    segments: Vec<String>,
}

impl FieldPath {
    /// Parses `a.b.c`. Empty segments are an error.
    pub fn parse(path: &str) -> Result<FieldPath, String> {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!("invalid field path {path:?}: empty segment"));
        }
        Ok(FieldPath { segments })
    }

    /// The path's segments, outermost first.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

/// The set of field paths extracted per event, in a fixed order: a
/// consumer keeps the index [`FieldSet::add`] returned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSet {
    paths: Vec<FieldPath>,
}

impl FieldSet {
    /// An empty set: the decoder validates and enriches but extracts nothing.
    pub fn new() -> FieldSet {
        FieldSet::default()
    }

    /// Adds a path (once) and returns its index.
    pub fn add(&mut self, path: FieldPath) -> usize {
        if let Some(i) = self.paths.iter().position(|p| *p == path) {
            return i;
        }
        self.paths.push(path);
        self.paths.len() - 1
    }

    /// Index of a path, if present.
    pub(crate) fn index_of(&self, path: &FieldPath) -> Option<usize> {
        self.paths.iter().position(|p| p == path)
    }

    /// Number of paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True when nothing is extracted.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The paths in index order.
    pub fn paths(&self) -> &[FieldPath] {
        &self.paths
    }
}

/// A stored extracted value; strings live in the batch's string arena.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FieldValue {
    /// Absent.
    Missing,
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(f64),
    /// Offset and length in the batch's string arena.
    Str(u32, u32),
    /// An object or array.
    Composite,
}

impl FieldValue {
    pub(crate) fn as_ref<'a>(&self, arena: &'a str) -> super::FieldValueRef<'a> {
        use super::FieldValueRef as R;
        match *self {
            FieldValue::Missing => R::Missing,
            FieldValue::Null => R::Null,
            FieldValue::Bool(b) => R::Bool(b),
            FieldValue::Number(n) => R::Number(n),
            FieldValue::Composite => R::Composite,
            FieldValue::Str(start, len) => R::Str(&arena[start as usize..(start + len) as usize]),
        }
    }

    /// `v` stored, its text (if a string) appended to `arena`.
    pub(crate) fn store(v: super::FieldValueRef<'_>, arena: &mut String) -> FieldValue {
        use super::FieldValueRef as R;
        match v {
            R::Missing => FieldValue::Missing,
            R::Null => FieldValue::Null,
            R::Bool(b) => FieldValue::Bool(b),
            R::Number(n) => FieldValue::Number(n),
            R::Composite => FieldValue::Composite,
            R::Str(s) => {
                let start = arena.len() as u32;
                arena.push_str(s);
                FieldValue::Str(start, s.len() as u32)
            }
        }
    }
}
