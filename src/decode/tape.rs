//! Reading simd-json's tape: a value's extent, a member by key or path,
//! and a node as a [`FieldValueRef`]. The decoder, its field plans and the
//! lazy values observers read all use these; they use nothing else of the
//! decoder.

use simd_json::{Node, StaticNode};

use crate::event::{FieldPath, FieldValueRef};

/// The value of `path` in a wrapped line: its text is the `message`.
pub(super) fn wrapped_value<'a>(path: &FieldPath, text: &'a str) -> FieldValueRef<'a> {
    match path.segments() {
        [only] if only == "message" => FieldValueRef::Str(text),
        _ => FieldValueRef::Missing,
    }
}

/// The value of `key` in the object that starts at `nodes[0]`, as the slice
/// of nodes it spans.
pub(super) fn child<'t, 'i>(nodes: &'t [Node<'i>], key: &str) -> Option<&'t [Node<'i>]> {
    let Some(&Node::Object { len, .. }) = nodes.first() else {
        return None;
    };
    let mut idx = 1;
    for _ in 0..len {
        let k = match nodes.get(idx)? {
            Node::String(s) => *s,
            _ => return None,
        };
        idx += 1;
        let count = node_count(nodes.get(idx)?);
        if k == key {
            return nodes.get(idx..idx + count);
        }
        idx += count;
    }
    None
}

/// How many tape nodes the value that starts at `n` spans.
pub(super) fn node_count(n: &Node<'_>) -> usize {
    match n {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// The value at `path` below the value that starts at `nodes[0]`.
pub(super) fn lookup<'a>(nodes: &'a [Node<'a>], path: &[String]) -> FieldValueRef<'a> {
    let mut cur = nodes;
    for seg in path {
        match child(cur, seg) {
            Some(next) => cur = next,
            None => return FieldValueRef::Missing,
        }
    }
    cur.first().map_or(FieldValueRef::Missing, scalar)
}

/// The value a node starts: strings, numbers, booleans and null as such,
/// objects and arrays as composite.
#[inline]
pub(super) fn scalar<'a>(node: &'a Node<'a>) -> FieldValueRef<'a> {
    match node {
        Node::String(s) => FieldValueRef::Str(s),
        Node::Static(StaticNode::Null) => FieldValueRef::Null,
        Node::Static(StaticNode::Bool(b)) => FieldValueRef::Bool(*b),
        Node::Static(StaticNode::I64(n)) => FieldValueRef::Number(*n as f64),
        Node::Static(StaticNode::U64(n)) => FieldValueRef::Number(*n as f64),
        Node::Static(StaticNode::F64(n)) => FieldValueRef::Number(*n),
        Node::Object { .. } | Node::Array { .. } => FieldValueRef::Composite,
        #[allow(unreachable_patterns)]
        _ => FieldValueRef::Missing,
    }
}
