//! Configs and files for the file source tests: a file source into a
//! stdout sink, lines appended to log files, and counts of what came out.

use std::io::Write;
use std::path::Path;

/// A config reading `include` into stdout, with checkpoints in `data`.
/// `extra` goes into the source table.
pub fn config(data: &Path, include: &[String], extra: &str) -> String {
    let inc: Vec<String> = include.iter().map(|i| format!("{i:?}")).collect();
    format!(
        r#"data_dir = "{}"
shutdown_timeout = "20s"
[api]
enabled = false
[enrich]
disable_host = true
[sources.files]
type = "file"
include = [{}]
scan_interval = "100ms"
poll_interval = "20ms"
checkpoint_interval = "200ms"
rotate_wait = "1s"
{extra}
[sinks.out]
type = "stdout"
"#,
        data.display(),
        inc.join(", ")
    )
}

/// [`config`] with the API on an ephemeral port (for `/metrics`).
pub fn config_with_api(data: &Path, include: &[String], extra: &str) -> String {
    config(data, include, extra).replace("[api]\nenabled = false", "[api]\nenabled = true\naddress = \"127.0.0.1:0\"")
}

/// Parses each line as JSON.
pub fn parse(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Counts of each value of a string field.
pub fn counts(lines: &[String], field: &str) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for v in parse(lines) {
        let key = match &v[field] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// Appends lines to a file (created if missing).
pub fn append(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    let mut buf = String::new();
    for l in lines {
        buf.push_str(&l);
        buf.push('\n');
    }
    f.write_all(buf.as_bytes()).unwrap();
}
