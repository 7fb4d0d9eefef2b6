//! The text parsers and editors of the transforms: `parse`'s logfmt and
//! key=value reader, `redact`'s scrubbing, and `fields` changing an event
//! in its bytes. No input panics; pairs written with quoted values come
//! back exactly; a scrubbed text differs from its input; `fields` in bytes
//! gives the members, values and order that parsing the event into a map
//! and changing it there gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use sluice::transforms::{fuzz_fields, fuzz_is_object, fuzz_parse_pairs, fuzz_redact};
use sluice_fuzz::Input;

/// Paths the `fields` settings name: top-level and nested.
const PATHS: [&str; 9] = ["a", "b", "msg", "message", "level", "n", "x", "a.b", "a.c"];

/// Keys of the events `fields` gets: plain, spelled with an escape, and
/// with whitespace around.
const KEYS: [&str; 10] = [
    "\"a\"",
    "\"b\"",
    "\"msg\"",
    "\"message\"",
    "\"level\"",
    "\"n\"",
    "\"x\"",
    "\"ms\\u0067\"",
    " \"a\" ",
    "\"a\\u0062\"",
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    if mode & 0x80 != 0 {
        fields(mode, input);
        return;
    }
    let text = String::from_utf8_lossy(input.rest()).into_owned();

    if let Some(clean) = fuzz_redact(&text) {
        assert_ne!(clean, text, "a match changes the text");
    }

    if mode & 1 == 0 {
        // Any text: keys are never empty and hold no separator.
        for (split, eq) in [(" ", "="), (";", ":")] {
            for (k, _) in fuzz_parse_pairs(&text, split, eq) {
                assert!(!k.is_empty() && !k.contains(split), "key {k:?}");
            }
        }
        return;
    }
    // Pairs from the text: keys of plain letters, values of anything,
    // written quoted with escapes, read back exactly (the last of a
    // repeated key wins).
    let mut written = String::new();
    let mut want = serde_json::Map::new();
    for (i, value) in text.split('\u{1}').enumerate() {
        let key = format!("k{}", i % 7);
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        written.push_str(&format!("{key}=\"{escaped}\" "));
        want.insert(key, Value::String(value.to_owned()));
    }
    let got = fuzz_parse_pairs(&written, " ", "=");
    assert_eq!(got, want, "{written:?}");
});

/// `fields` settings from the input, then an event: the rest of the input
/// as it is (`mode & 0x40`), or an object built from it.
fn fields(mode: u8, mut input: Input<'_>) {
    let mut pick = |n: usize| -> Vec<&'static str> {
        let count = usize::from(input.byte()) % (n + 1);
        (0..count).map(|_| PATHS[usize::from(input.byte()) % PATHS.len()]).collect()
    };
    let pairs = |keys: Vec<&str>| -> Map<String, Value> {
        keys.chunks(2)
            .filter_map(|c| match c {
                [from, to] => Some((from.to_string(), json!(to))),
                _ => None,
            })
            .collect()
    };
    let copy = pairs(pick(4));
    let rename = pairs(pick(4));
    let values = [json!("prod"), json!(7), json!({"k": [1, null]}), json!("{{ level }}/{{ a.b }}/{{ n }}"), json!("{{ msg }}")];
    let set: Map<String, Value> = pick(3)
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), values[(i + usize::from(mode)) % values.len()].clone()))
        .collect();
    let kinds = ["integer", "float", "boolean", "string"];
    let coerce: Map<String, Value> = pick(2)
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), json!(kinds[(i + usize::from(mode >> 2)) % kinds.len()])))
        .collect();
    let remove = pick(2);
    let settings = json!({"copy": copy, "rename": rename, "set": set, "coerce": coerce, "remove": remove});

    let event = if mode & 0x40 != 0 {
        input.rest().to_vec()
    } else {
        built_event(input.rest()).into_bytes()
    };
    let Some((bytes, parsed)) = fuzz_fields(settings.clone(), &event) else {
        return;
    };
    let Some(bytes) = bytes else { return };
    assert!(fuzz_is_object(&bytes), "the bytes path writes one object: {:?}", String::from_utf8_lossy(&bytes));
    if let Some(parsed) = parsed {
        let got: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{e}: {:?} from {:?}", String::from_utf8_lossy(&bytes), String::from_utf8_lossy(&event)));
        assert!(
            same(&got, &parsed),
            "{settings} on {:?}: {got} against {parsed}",
            String::from_utf8_lossy(&event)
        );
    }
}

/// The same JSON, members in the same order, numbers within a rounding
/// step (serde_json reads some floats it wrote one step off, so a value
/// coerced and written differs from the one in the map by that step).
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

/// An object from `data`, three bytes a member: its key, the kind of its
/// value, and a byte of that value.
fn built_event(data: &[u8]) -> String {
    let mut out = String::from("{");
    for (i, c) in data.chunks(3).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let (k, kind, b) = (c[0], c.get(1).copied().unwrap_or(0), c.get(2).copied().unwrap_or(0));
        out.push_str(KEYS[usize::from(k) % KEYS.len()]);
        out.push(':');
        let byte = char::from(b);
        let value = match kind % 12 {
            0 => "null".to_owned(),
            1 => "-0".to_owned(),
            2 => (b as i8).to_string(),
            3 => format!("{b}.5e{}", b % 7),
            4 => serde_json::to_string(&format!("v{byte}é")).unwrap_or_default(),
            5 => format!("{{\"b\":{b},\"b\":\"{}\",\"c\":[{b}]}}", b % 10),
            6 => format!("[1,{{\"c\":\"x\"}},{}]", b % 3 == 0),
            7 => "\"\\u00e9\\\"q\\ud83d\\ude00\"".to_owned(),
            8 => format!("\" {} \"", b % 50),
            9 => format!("\"{}\"", ["true", "0", "1.5", "x", "1e400"][usize::from(b) % 5]),
            10 => format!("1{b}{}", "0".repeat(usize::from(b % 25))),
            _ => format!("{b}e-{}", b % 5),
        };
        out.push_str(&value);
    }
    out.push('}');
    out
}
