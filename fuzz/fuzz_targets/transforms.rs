//! The text parsers of the transforms: `parse`'s logfmt and key=value
//! reader and `redact`'s scrubbing. No input panics; pairs written with
//! quoted values come back exactly; a scrubbed text differs from its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sluice::transforms::{fuzz_parse_pairs, fuzz_redact};
use sluice_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
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
