//! sluice's own log lines (JSON on stderr when stderr is not a terminal)
//! carry plain values: a number as a number, a path as the path, and an
//! absent value left out, never Rust debug text such as `Some(42)` or
//! `None`.

mod support;

use std::process::Command;
use std::time::Duration;
use support::file_source::append;
use support::Sluice;

/// Every JSON log line of `stderr`, checked for debug text in any field
/// value; panics naming the line.
fn plain_log_lines(stderr: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        let fields = v.as_object().unwrap_or_else(|| panic!("log line is not an object: {line}"));
        for (k, value) in fields {
            if let Some(s) = value.as_str() {
                assert!(
                    !(s.starts_with("Some(") || s == "None" || s.starts_with("Ok(") || s.starts_with("Err(")),
                    "field {k} holds Rust debug text: {line}"
                );
            }
        }
        out.push(v);
    }
    out
}

fn the_line<'a>(lines: &'a [serde_json::Value], message: &str, stderr: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} line in:\n{stderr}"))
}

#[test]
fn sluice_run_start_line_logs_the_pid_as_a_number() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--", "sh", "-c", "echo '{\"hello\":1}'"])
        .env("SLUICE_API_ENABLED", "false")
        .env("SLUICE_LOG", "info")
        .output()
        .expect("run sluice");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = plain_log_lines(&stderr);
    let started = the_line(&lines, "started the command", &stderr);
    assert!(started["pid"].as_u64().is_some_and(|p| p > 0), "pid is a number: {started}");
    assert_eq!(started["command"], "sh -c echo '{\"hello\":1}'");
}

/// Truncates a file sluice has read (after copying it next to itself
/// with `copy`, as logrotate's copytruncate does) and returns sluice's
/// "file truncated" log line, with the file's path.
fn truncation_line(copy: Option<&str>) -> (serde_json::Value, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let app = logs.join("app.log");
    let line = |i: u32| format!(r#"{{"seq":{i}}}"#);
    append(&app, (0..100).map(line));
    // Readers idle for a second between rounds: the copy and truncate
    // below happen before the reader looks again.
    let cfg = support::file_source::config(&dir.path().join("data"), &[app.display().to_string()], "")
        .replace("poll_interval = \"20ms\"", "poll_interval = \"1s\"");
    let s = Sluice::start(&cfg);
    s.wait_for(100, Duration::from_secs(30));
    append(&app, (100..150).map(line));
    if let Some(name) = copy {
        std::fs::copy(&app, logs.join(name)).unwrap();
    }
    std::fs::OpenOptions::new().write(true).open(&app).unwrap().set_len(0).unwrap();
    append(&app, (150..160).map(line));
    s.wait_until("the lines after the truncation", Duration::from_secs(30), |l| {
        l.iter().any(|l| l.contains(r#""seq":159"#))
    });
    let (status, _) = s.stop();
    assert!(status.success());
    let stderr = s.logs();
    let lines = plain_log_lines(&stderr);
    let truncated = the_line(&lines, "file truncated; reading it again from the start", &stderr).clone();
    assert_eq!(truncated["path"], app.display().to_string(), "{truncated}");
    (truncated, logs)
}

#[test]
fn copytruncate_line_names_the_copy_as_a_plain_path() {
    let (line, logs) = truncation_line(Some("app.log.1"));
    assert_eq!(line["copy"], logs.join("app.log.1").display().to_string(), "{line}");
}

#[test]
fn truncation_without_a_copy_leaves_the_copy_field_out() {
    let (line, _) = truncation_line(None);
    assert!(line.get("copy").is_none(), "{line}");
}
