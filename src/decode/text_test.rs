//! Byte comparisons, and the condition that is one test of a string
//! ([`TextTest`]): judged on a string value's bytes, or on the value's text
//! where it is written in a line, which the decoder does for an observer
//! that needs nothing else ([`LineTests`]).

use std::sync::Arc;

use crate::event::FieldSet;

/// Equality of byte strings without a call into `memcmp`: keys and label
/// values are mostly under 16 bytes, where two overlapping loads of 4 or 8
/// bytes decide; longer ones (series keys) compare 8 bytes at a time.
#[inline(always)]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 4 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    if n < 8 {
        return word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4);
    }
    if word8(a, 0) != word8(b, 0) || word8(a, n - 8) != word8(b, n - 8) {
        return false;
    }
    // The words between the first and the last, the final one overlapping
    // the last.
    let mut at = 8;
    while at + 8 < n {
        if word8(a, at) != word8(b, at) {
            return false;
        }
        at += 8;
    }
    true
}

/// The 4 bytes of `s` at `at`, as one load.
#[inline(always)]
fn word4(s: &[u8], at: usize) -> u32 {
    match s[at..at + 4].try_into() {
        Ok(w) => u32::from_ne_bytes(w),
        Err(_) => unreachable!("a 4-byte slice"),
    }
}

/// The 8 bytes of `s` at `at`, as one load.
#[inline(always)]
fn word8(s: &[u8], at: usize) -> u64 {
    match s[at..at + 8].try_into() {
        Ok(w) => u64::from_ne_bytes(w),
        Err(_) => unreachable!("an 8-byte slice"),
    }
}

/// Whether `text` starts with `prefix`.
#[inline(always)]
pub(crate) fn starts_with(text: &[u8], prefix: &[u8]) -> bool {
    text.len() >= prefix.len() && same(&text[..prefix.len()], prefix)
}

/// A condition that is one test of a string: `equals` or `one_of` with
/// literals only a string matches, or `prefix`, on one field; `negate` for
/// `not` of it. The condition module makes it ([`crate::condition::Program`]).
#[derive(Debug, Clone)]
pub(crate) struct TextTest {
    field: usize,
    kind: TextKind,
    negate: bool,
    /// No literal holds a quote or a backslash: the test can be judged on
    /// the text of the value in the line ([`TextTest::on_line`]).
    plain: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum TextKind {
    /// The literals, and the length of the longest.
    OneOf(Box<[Box<[u8]>]>, usize),
    Prefix(Box<[u8]>),
}

impl TextKind {
    /// `one_of` the literals `ls` (`equals` is one of one).
    pub(crate) fn one_of(ls: Box<[Box<[u8]>]>) -> TextKind {
        let longest = ls.iter().map(|l| l.len()).max().unwrap_or(0);
        TextKind::OneOf(ls, longest)
    }
}

impl TextTest {
    /// The test `kind` of field `field`, negated when `negate`.
    pub(crate) fn new(field: usize, kind: TextKind, negate: bool) -> TextTest {
        let plain = |l: &[u8]| !l.iter().any(|&c| c == b'"' || c == b'\\');
        let plain = match &kind {
            TextKind::OneOf(ls, _) => ls.iter().all(|l| plain(l)),
            TextKind::Prefix(p) => plain(p),
        };
        TextTest {
            field,
            kind,
            negate,
            plain,
        }
    }

    /// Whether it can be judged on the text of a value in a line
    /// ([`TextTest::on_line`]): no literal holds a quote or a backslash.
    pub(crate) fn plain(&self) -> bool {
        self.plain
    }

    /// The field it tests.
    pub(crate) fn field(&self) -> usize {
        self.field
    }

    /// The verdict on the string `s`.
    #[inline(always)]
    pub(crate) fn on_string(&self, s: &[u8]) -> bool {
        let passes = match &self.kind {
            TextKind::OneOf(ls, _) => ls.iter().any(|l| same(s, l)),
            TextKind::Prefix(p) => starts_with(s, p),
        };
        passes != self.negate
    }

    /// The verdict on the value that starts at `start` in `line`, a line
    /// the decoder's scan accepted, from the value's text as it is written:
    /// `None` when the text alone cannot say (the value is not a string,
    /// or an escape comes before the string could differ from the
    /// literals), and the caller reads the value. Only for a plain
    /// test ([`TextTest::plain`]): its literals are written in the line
    /// as they are.
    #[inline(always)]
    pub(crate) fn on_line(&self, line: &[u8], start: usize) -> Option<bool> {
        let Some((b'"', text)) = line.get(start..).and_then(|v| v.split_first()) else {
            return None;
        };
        // A match in the text is a match of the string: a literal holds no
        // quote or backslash, so the string ends where the literal does
        // (`one_of`), or goes on as written (`prefix`).
        let window = match &self.kind {
            TextKind::OneOf(ls, longest) => {
                if ls.iter().any(|l| text.get(l.len()) == Some(&b'"') && starts_with(text, l)) {
                    return Some(!self.negate);
                }
                longest + 1
            }
            TextKind::Prefix(p) => {
                if starts_with(text, p) {
                    return Some(!self.negate);
                }
                p.len()
            }
        };
        // No match: the string's first bytes are as written unless an
        // escape comes among them.
        (!has_backslash(text, window)).then_some(self.negate)
    }
}

/// Whether the first `n` bytes of `s` (at most its length) hold a
/// backslash, 8 bytes at a time.
#[inline(always)]
fn has_backslash(s: &[u8], n: usize) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    // High bit of each byte of `w` that is a backslash (exact up to the
    // first one, which is all that is asked).
    let found = |w: &[u8]| {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) ^ BACKSLASHES;
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let n = n.min(s.len());
    let mut at = 0;
    while at + 8 <= n {
        if found(&s[at..at + 8]) != 0 {
            return true;
        }
        at += 8;
    }
    let left = n - at;
    match s.get(at..at + 8) {
        _ if left == 0 => false,
        // The bytes past the first `n` masked off.
        Some(w) => found(w) & (u64::MAX >> (64 - 8 * left)) != 0,
        None => s[at..n].contains(&b'\\'),
    }
}

/// What [`super::EventObserver::line_tests`] asks the decoder to judge.
#[derive(Debug, Clone)]
pub struct LineTests {
    /// At most 64, each of a field of the observer's set with one segment;
    /// test `i`'s verdict is bit `i`.
    pub(crate) tests: Arc<[TextTest]>,
    /// Bit `i`: test `i`'s verdict on an event without its field (judged
    /// on the source's metadata, the same for the whole batch).
    pub(crate) if_missing: u64,
}

impl LineTests {
    /// Whether the decoder can judge these for an observer of `fields`.
    pub(crate) fn fit(&self, fields: &FieldSet) -> bool {
        self.tests.len() <= 64
            && self
                .tests
                .iter()
                .all(|t| fields.paths().get(t.field()).is_some_and(|p| p.segments().len() == 1))
    }
}
