//! `app | sluice`: the real binary, real pipes, real signals.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod support;

use support::{Sluice, Stdout};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Starts sluice with its API on a port the kernel picks (so that it never
/// races another process for a port), for a test that reads its output
/// bytes to the end.
fn spawn(args: &[&str], extra_env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("SLUICE_API_ADDRESS", "127.0.0.1:0")
        .env("SLUICE_LOG", "warn")
        .env_remove("SLUICE_RELEASE")
        .env_remove("SLUICE_PROCESS_TYPE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn sluice")
}

/// Starts sluice with its API on a port the kernel picks, stdin piped and
/// stdout left to the test.
fn start_with_api() -> Sluice {
    Sluice::builder()
        .env("SLUICE_API_ADDRESS", "127.0.0.1:0")
        .stdin_piped()
        .stdout(Stdout::Raw)
        .start()
}

/// Mixed input: JSON objects, text, arrays, invalid UTF-8, empty lines, CRLF.
fn mixed_input(n: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut input = Vec::new();
    let mut lines = Vec::new();
    for i in 0..n {
        let line: Vec<u8> = match i % 7 {
            0 => format!(r#"{{"i":{i},"msg":"hello \"world\"","nested":{{"a":[1,2,{{"b":null}}]}}}}"#).into_bytes(),
            1 => format!("plain text line {i}\twith tab").into_bytes(),
            2 => format!("[{i}, 2, 3]").into_bytes(),
            3 => {
                let mut l = format!("bad utf8 {i} ").into_bytes();
                l.extend_from_slice(&[0xff, 0xfe, 0x00, b'x']);
                l
            }
            4 => Vec::new(),
            5 => format!(r#"{{"i":{i},"host":"own-host","release":"own"}}"#).into_bytes(),
            _ => format!(r#"{{"i":{i},"broken":"#).into_bytes(),
        };
        input.extend_from_slice(&line);
        if i % 11 == 0 {
            input.push(b'\r');
        }
        input.push(b'\n');
        lines.push(line);
    }
    (input, lines)
}

#[test]
fn every_stdin_line_comes_out_once_in_order_with_metadata() {
    let (input, lines) = mixed_input(20_000);
    let mut child = spawn(
        &[],
        &[
            ("SLUICE_RELEASE", "1.4.2"),
            ("SLUICE_RELEASE_COMMIT", "abc123"),
            ("SLUICE_PROCESS_TYPE", "web"),
        ],
    );
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<&[u8]> = out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(got.len(), lines.len(), "one event per line");
    for (i, (line, event)) in lines.iter().zip(&got).enumerate() {
        let v: Value =
            serde_json::from_slice(event).unwrap_or_else(|e| panic!("event {i} is not JSON ({e}): {}", String::from_utf8_lossy(event)));
        let obj = v.as_object().unwrap();
        let original: Option<Value> = serde_json::from_slice(line).ok().filter(Value::is_object);
        match original {
            Some(Value::Object(orig)) => {
                for (k, val) in &orig {
                    assert_eq!(obj.get(k), Some(val), "line {i}: field {k} kept as written");
                }
                if orig.contains_key("host") {
                    assert_eq!(obj["host"], "own-host", "event fields win");
                    assert_eq!(obj["release"], "own", "event fields win");
                } else {
                    assert_eq!(obj["release"]["version"], "1.4.2");
                    assert_eq!(obj["release"]["commit"], "abc123");
                    assert_eq!(obj["process"]["type"], "web");
                    assert!(obj["host"].is_string());
                }
            }
            _ => assert_eq!(
                obj["message"].as_str().unwrap(),
                String::from_utf8_lossy(line),
                "line {i} wrapped as message"
            ),
        }
    }
}

#[test]
fn last_line_without_newline_is_kept() {
    let mut child = spawn(&[], &[]);
    child.stdin.take().unwrap().write_all(b"{\"a\":1}\nno newline at end").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[1].starts_with(r#"{"message":"no newline at end""#), "{}", lines[1]);
}

#[test]
fn unknown_metadata_is_left_out_not_empty() {
    let mut child = spawn(&[], &[("SLUICE_HOST", "h1")]);
    child.stdin.take().unwrap().write_all(b"{\"a\":1}\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert!(v.get("release").is_none(), "no release known: {v}");
    assert_eq!(v["host"], "h1");
}

#[test]
fn pipe_writer_pid_and_command_become_process_metadata() {
    // A shell pipeline, as a developer runs it: the writer is a subshell
    // that lives long enough for sluice to find it.
    let script = format!("(echo '{{\"x\":1}}'; sleep 0.5; echo '{{\"x\":2}}') | SLUICE_API_ADDRESS=127.0.0.1:0 SLUICE_LOG=warn {BIN}");
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success());
    let first: Value = serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert!(first["process"]["pid"].as_u64().unwrap() > 1, "{first}");
    assert!(first["process"]["command"].as_str().unwrap().contains("sh"), "{first}");
}

#[test]
fn signal_stops_reading_drains_accepted_lines_and_exits_zero() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut sluice = start_with_api();
        let n = 5_000;
        let mut input = Vec::new();
        for i in 0..n {
            input.extend_from_slice(format!("{{\"i\":{i}}}\n").as_bytes());
        }
        sluice.write(&input);
        // Accepted = counted by the source. stdout is not read yet, so the
        // events sit in the queue and the pipe when the signal arrives.
        support::eventually("lines accepted", Duration::from_secs(10), || {
            sluice.metrics().series("sluice_source_events_total{source=\"stdin\"}") == Some(n as f64)
        });
        sluice.signal(sig);
        let mut stdout = BufReader::new(sluice.take_stdout());
        let mut seen = 0;
        let mut line = String::new();
        while stdout.read_line(&mut line).unwrap() > 0 {
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["i"], seen);
            seen += 1;
            line.clear();
        }
        let status = sluice.wait(Duration::from_secs(10));
        assert!(status.success(), "signal {sig}: exit {status:?}");
        assert_eq!(seen, n, "signal {sig}: every accepted line delivered");
    }
}

#[test]
fn a_signal_after_input_ended_bounds_the_drain_by_shutdown_timeout() {
    let mut sluice = Sluice::builder()
        .env("SLUICE_API_ADDRESS", "127.0.0.1:0")
        .env("SLUICE_LOG", "info")
        .env("SLUICE_SHUTDOWN_TIMEOUT", "1s")
        .stdin_piped()
        .stdout(Stdout::Raw)
        .start();
    // Every line is read and the input ends, but nobody reads stdout:
    // the drain cannot finish until a signal bounds it.
    let stdout = sluice.take_stdout();
    let mut stdin = sluice.take_stdin();
    for i in 0..2_000 {
        writeln!(stdin, "{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(100)).unwrap();
    }
    drop(stdin);
    sluice.wait_for_log("input ended", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    sluice.signal(libc::SIGTERM);
    let status = sluice.wait(Duration::from_secs(10));
    drop(stdout);
    let log = sluice.logs();
    assert_eq!(status.code(), Some(1), "undelivered events: a failure\n{log}");
    assert!(log.contains("shutdown did not finish within 1s"), "{log}");
}

#[test]
fn health_ready_and_metrics_are_served_while_running() {
    let mut sluice = start_with_api();
    let api = sluice.api_address();
    support::eventually("/health", Duration::from_secs(5), || {
        support::http_get(&format!("http://{api}/health")).0 == 200
    });
    support::eventually("/ready", Duration::from_secs(5), || sluice.ready_status() == 200);
    sluice.write(b"{\"a\":1}\nnot json\n");
    let mut stdout = BufReader::new(sluice.take_stdout());
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        stdout.read_line(&mut line).unwrap();
    }
    support::eventually("events counted", Duration::from_secs(5), || {
        sluice.metrics().series("sluice_sink_events_total{sink=\"stdout\"}") == Some(2.0)
    });
    let body = sluice.metrics().text;
    for name in [
        "sluice_source_events_total{source=\"stdin\"} 2",
        "sluice_events_wrapped_total{reason=\"not_json\",source=\"stdin\"} 1",
        "sluice_buffer_max_bytes{sink=\"stdout\"} 8388608",
        "sluice_ready 1",
        "process_resident_memory_bytes",
    ] {
        assert!(body.contains(name), "missing {name} in\n{body}");
    }
    assert_eq!(support::http_get(&format!("http://{api}/nope")).0, 404);
    sluice.close_stdin();
    assert!(sluice.wait(Duration::from_secs(10)).success());
}

#[test]
fn an_explicit_api_address_that_is_taken_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .env("SLUICE_API_ADDRESS", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot serve the API"));
}

#[test]
fn validate_reports_every_error_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "shutdown_timeout = \"soon\"\n[sources.in]\ntype = \"stdin\"\nmax_line_bytes = \"lots\"\n\
         [sinks.out]\ntype = \"stdout\"\ninputs = [\"nope\"]\ncolor = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["validate", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "shutdown_timeout",
        "sources.in.max_line_bytes",
        "sinks.out.inputs[0]",
        "sinks.out.color",
    ] {
        assert!(err.contains(key), "missing {key} in:\n{err}");
    }
    let good = Command::new(BIN)
        .args(["validate", "--config", "config/dev.toml"])
        .output()
        .unwrap();
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
}

#[test]
fn required_variable_missing_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "sources:\n  in:\n    type: stdin\nsinks:\n  out:\n    type: stdout\nenrich:\n  release: \"${SLUICE_TEST_UNSET_VAR:?set the release}\"\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["validate", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLUICE_TEST_UNSET_VAR is required: set the release"));
}

#[test]
fn dev_config_is_exactly_the_embedded_default() {
    let input = b"{\"a\":1}\ntext\n";
    let run = |args: &[&str]| {
        let mut child = spawn(args, &[("SLUICE_RELEASE", "9")]);
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap().stdout
    };
    assert_eq!(run(&[]), run(&["--config", "config/dev.toml"]));
}

#[test]
fn help_and_version() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("validate") && text.contains("--config"), "{text}");
    let version = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("sluice {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn logs_go_to_stderr_never_stdout() {
    let mut child = spawn(&[], &[("SLUICE_LOG", "debug")]);
    child.stdin.take().unwrap().write_all(b"{\"only\":true}\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(!out.stderr.is_empty(), "debug logs expected on stderr");
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("structured log line: {line}"));
        assert!(v["level"].is_string());
    }
}
