//! Route normalisation: `/users/42/orders/9f1c…` and `/users/7/orders/0b2e…`
//! are one route, `/users/:id/orders/:id`. Without it every id would be a
//! new series and the series limit would be spent on noise.

use regex::Regex;

/// What replaces an id segment.
pub(crate) const ID: &str = ":id";

/// Shortest run of hex digits treated as an id (a 64-bit id in hex, a Mongo
/// ObjectId, a hash); shorter hex-looking words (`cafe`, `add`) stay.
const MIN_HEX_ID: usize = 16;

/// Byte classes for [`normalize_into`]: one table load per byte tells
/// whether it ends a segment and whether it is a digit.
const SEPARATOR: u8 = 1;
const NOT_DIGIT: u8 = 2;
static CLASS: [u8; 256] = {
    let mut t = [NOT_DIGIT; 256];
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = 0;
        c += 1;
    }
    t[b'/' as usize] = SEPARATOR | NOT_DIGIT;
    t[b'?' as usize] = SEPARATOR | NOT_DIGIT;
    t[b'#' as usize] = SEPARATOR | NOT_DIGIT;
    t
};

/// Appends `path` to `out` with its query string and fragment removed and
/// every segment that is an id (all digits, a UUID, or 16+ hex digits with
/// at least one digit) replaced by `:id`. One pass over the bytes, copying
/// the stretches between ids in bulk; only whole segments are replaced, so
/// UTF-8 stays valid.
pub(crate) fn normalize_into(path: &str, out: &mut Vec<u8>) {
    let b = path.as_bytes();
    // Bytes of `b` before `copied` are in `out` (or replaced there).
    let mut copied = 0;
    let mut i = 0;
    loop {
        // The segment runs from `seg` to the next separator or the end.
        let seg = i;
        let mut seen = 0;
        while let Some(&c) = b.get(i) {
            let class = CLASS[c as usize];
            if class & SEPARATOR != 0 {
                break;
            }
            seen |= class;
            i += 1;
        }
        if i > seg && (seen & NOT_DIGIT == 0 || is_other_id(&b[seg..i])) {
            out.extend_from_slice(&b[copied..seg]);
            out.extend_from_slice(ID.as_bytes());
            copied = i;
        }
        if b.get(i) != Some(&b'/') {
            // '?', '#' or the end of the path.
            out.extend_from_slice(&b[copied..i]);
            return;
        }
        i += 1;
    }
}

/// A non-numeric id segment: a UUID, or 16+ hex digits with a digit.
fn is_other_id(seg: &[u8]) -> bool {
    seg.len() >= MIN_HEX_ID && (is_uuid(seg) || seg.iter().all(u8::is_ascii_hexdigit) && seg.iter().any(u8::is_ascii_digit))
}

/// `8-4-4-4-12` hex digits, any case.
fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// One configured rewrite of a label value, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Rewrite {
    re: Regex,
    replace: String,
    /// The replacement has no `$` group references: matches are replaced
    /// by plain copies, without building capture groups.
    literal: bool,
}

impl Rewrite {
    /// Every match of `re` becomes `replace` (`$1`, `${name}` expand).
    pub(crate) fn new(re: Regex, replace: String) -> Rewrite {
        let literal = !replace.contains('$');
        Rewrite { re, replace, literal }
    }
}

/// Applies rewrites in order and leaves the result in `out`; `tmp` is
/// scratch. Only rules that configure patterns run a regex per event, and
/// with plain replacements nothing is allocated once the buffers have grown.
pub(crate) fn rewrite_into(value: &str, rewrites: &[Rewrite], out: &mut String, tmp: &mut String) {
    out.clear();
    out.push_str(value);
    for rw in rewrites {
        let mut matches = rw.re.find_iter(out.as_str()).peekable();
        if matches.peek().is_none() {
            continue;
        }
        tmp.clear();
        if rw.literal {
            let mut last = 0;
            for m in matches {
                tmp.push_str(&out[last..m.start()]);
                tmp.push_str(&rw.replace);
                last = m.end();
            }
            tmp.push_str(&out[last..]);
        } else {
            drop(matches);
            tmp.push_str(&rw.re.replace_all(out.as_str(), rw.replace.as_str()));
        }
        std::mem::swap(out, tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        let mut out = b"prefix:".to_vec();
        normalize_into(p, &mut out);
        String::from_utf8(out).unwrap().strip_prefix("prefix:").unwrap().to_owned()
    }

    #[test]
    fn ids_and_uuids_become_placeholders() {
        assert_eq!(norm("/users/42/orders"), "/users/:id/orders");
        assert_eq!(norm("/o/3F2504E0-4F89-11D3-9A0C-0305E82C3301/items/7"), "/o/:id/items/:id");
        assert_eq!(norm("/blob/507f1f77bcf86cd799439011"), "/blob/:id");
        assert_eq!(norm("/search?q=1&page=2"), "/search");
        assert_eq!(norm("/a/7#frag"), "/a/:id");
        assert_eq!(norm("42"), ":id");
        assert_eq!(norm("/é/12/ü"), "/é/:id/ü");
    }

    /// The byte-at-a-time version [`normalize_into`] replaced, as the
    /// reference it must agree with.
    fn reference(path: &str, out: &mut Vec<u8>) {
        let b = path.as_bytes();
        // Bytes of `b` before `copied` are in `out` (or replaced there).
        let mut copied = 0;
        let mut seg = 0;
        let mut digits = true;
        let mut i = 0;
        loop {
            let c = b.get(i).copied();
            match c {
                Some(b'/') | Some(b'?') | Some(b'#') | None => {
                    if i > seg && (digits || is_other_id(&b[seg..i])) {
                        out.extend_from_slice(&b[copied..seg]);
                        out.extend_from_slice(ID.as_bytes());
                        copied = i;
                    }
                    if c != Some(b'/') {
                        out.extend_from_slice(&b[copied..i]);
                        return;
                    }
                    seg = i + 1;
                    digits = true;
                }
                Some(c) => digits &= c.is_ascii_digit(),
            }
            i += 1;
        }
    }

    proptest::proptest! {
        /// Paths rich in separators, digits, hex letters and dashes (so ids,
        /// near-ids and UUID shapes are common) normalise as they did.
        #[test]
        fn same_as_the_byte_at_a_time_version(path in "[/?#0-9a-fA-F\\-xyzé]{0,48}|(/([0-9]{1,6}|[0-9a-f]{14,40}|[a-z]{1,6}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})){0,6}(\\?[a-z=0-9]{0,6})?") {
            let mut new = Vec::new();
            normalize_into(&path, &mut new);
            let mut old = Vec::new();
            reference(&path, &mut old);
            proptest::prop_assert_eq!(new, old);
        }
    }

    #[test]
    fn hex_ids_are_ids_at_every_length_from_16() {
        // 36 hex digits are an id although not UUID-shaped, as 35 and 37 are.
        for n in [16, 35, 36, 37, 64] {
            let id = "a1".repeat(n / 2) + &"f".repeat(n % 2);
            assert_eq!(norm(&format!("/blobs/{id}")), "/blobs/:id", "{n} hex digits");
        }
        assert_eq!(norm(&format!("/blobs/{}", "a".repeat(36))), format!("/blobs/{}", "a".repeat(36)));
    }

    #[test]
    fn words_and_templates_are_kept() {
        for p in [
            "/",
            "",
            "/users/:id",
            "/v2/cafe/add",
            "/deadbeefcafebabe",
            "/users/42x",
            "/a//b",
            "a/b/",
        ] {
            assert_eq!(norm(p), p, "{p}");
        }
    }

    #[test]
    fn patterns_rewrite_in_order() {
        let rws = vec![
            Rewrite::new(Regex::new("^/v[0-9]+/").unwrap(), "/v:n/".to_owned()),
            Rewrite::new(Regex::new("/files/(.*)").unwrap(), "/files/*".to_owned()),
            Rewrite::new(Regex::new("/(?P<kind>img|doc)s/").unwrap(), "/${kind}/".to_owned()),
            Rewrite::new(Regex::new("x").unwrap(), "y".to_owned()),
        ];
        let (mut out, mut tmp) = (String::new(), String::new());
        let mut run = |v: &str| {
            rewrite_into(v, &rws, &mut out, &mut tmp);
            out.clone()
        };
        assert_eq!(run("/v3/files/a/b.txt"), "/v:n/files/*");
        assert_eq!(run("/imgs/a/docs/b"), "/img/a/doc/b");
        assert_eq!(run("/other"), "/other");
        assert_eq!(run("xax"), "yay");
        assert_eq!(run(""), "");
    }
}
