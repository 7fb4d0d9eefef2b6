//! Transforms (issue 16), each against what docs/transforms.md says it
//! does: the real binary, real stdin, its stdout and `/metrics`.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{wait_until, Sluice};

const WAIT: Duration = Duration::from_secs(30);

const HEAD: &str = r#"
shutdown_timeout = "5s"
[api]
address = "127.0.0.1:0"
[sources.app]
type = "stdin"
"#;

/// sluice running `HEAD` + `rest`, stdin piped, its API serving.
fn start(rest: &str, env: &[(&str, &str)]) -> Sluice {
    let mut b = Sluice::builder().config(&format!("{HEAD}{rest}")).stdin_piped();
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.start().serving()
}

/// Feeds `lines`, waits for `n` lines on stdout, then for `metrics` to
/// settle, and ends the input. Returns stdout.
fn feed(s: &mut Sluice, lines: &[String], n: usize) -> Vec<String> {
    s.write_lines(lines);
    let out = s.wait_for(n, WAIT);
    // Nothing more arrives: every event of the input went somewhere.
    wait_until("every event counted in", WAIT, || {
        (s.metric("sluice_source_events_total{source=\"app\"}") >= lines.len() as f64).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    out
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn numbers(lines: &[String]) -> Vec<u64> {
    lines.iter().map(|l| json(l)["i"].as_u64().unwrap_or(u64::MAX)).collect()
}

/// Events 0..n: every fourth a health check, every fifth a metrics scrape,
/// levels cycling error, warn, info.
fn requests(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let path = if i % 4 == 0 {
                "/healthz"
            } else if i % 5 == 0 {
                "/metrics"
            } else {
                "/api"
            };
            let level = ["error", "warn", "info"][i % 3];
            format!(
                r#"{{"i":{i},"level":"{level}","path":"{path}","request_id":"r{i}","pod":"p{}"}}"#,
                i % 2
            )
        })
        .collect()
}

fn is_health(i: usize) -> bool {
    i % 4 == 0 || i % 5 == 0
}

#[test]
fn filter_drops_health_checks_counts_them_and_keeps_the_rest_byte_exact() {
    let input = requests(100);
    let kept: Vec<usize> = (0..100).filter(|i| !is_health(*i)).collect();

    let mut plain = start("[sinks.out]\ntype = \"stdout\"\n", &[]);
    let all = feed(&mut plain, &input, 100);
    let mut s = start(
        r#"
[transforms.quiet]
type = "filter"
inputs = ["app"]
condition = { not = { field = "path", one_of = ["/healthz", "/metrics"] } }
[sinks.out]
type = "stdout"
inputs = ["quiet"]
"#,
        &[],
    );
    let out = feed(&mut s, &input, kept.len());
    let want: Vec<String> = kept.iter().map(|&i| all[i].clone()).collect();
    assert_eq!(out, want, "the kept events, in order, byte for byte as without the filter");
    let dropped = 100 - kept.len();
    assert_eq!(
        s.metric("sluice_transform_events_dropped_total{reason=\"condition\",transform=\"quiet\"}"),
        dropped as f64
    );
    assert_eq!(s.metric("sluice_transform_events_in_total{transform=\"quiet\"}"), 100.0);
    assert_eq!(
        s.metric("sluice_transform_events_out_total{output=\"quiet\",transform=\"quiet\"}"),
        kept.len() as f64
    );
}

#[test]
fn route_sends_errors_to_one_sink_and_the_unmatched_rest_to_another() {
    let input = requests(90);
    let mut s = start(
        r#"
[transforms.split]
type = "route"
inputs = ["app"]
routes.errors = { field = "level", equals = "error" }
[sinks.alerts]
type = "stdout"
inputs = ["split.errors"]
[sinks.rest]
type = "blackhole"
inputs = ["split._unmatched"]
"#,
        &[],
    );
    let out = feed(&mut s, &input, 30);
    assert_eq!(numbers(&out), (0..90).step_by(3).collect::<Vec<u64>>());
    wait_until("the rest reaches the blackhole", WAIT, || {
        (s.metric("sluice_sink_events_total{sink=\"rest\"}") >= 60.0).then_some(())
    });
    assert_eq!(s.metric("sluice_sink_events_total{sink=\"rest\"}"), 60.0);
    assert_eq!(
        s.metric("sluice_transform_events_out_total{output=\"split._unmatched\",transform=\"split\"}"),
        60.0
    );
    assert_eq!(
        s.metric("sluice_transform_events_out_total{output=\"split.errors\",transform=\"split\"}"),
        30.0
    );
}

/// FNV-1a 64, as docs/transforms.md specifies for `sample`.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[test]
fn sample_keeps_the_keys_whose_hash_is_chosen_always_keeps_errors_and_writes_the_rate() {
    let input = requests(300);
    let keep = |i: usize| i % 3 == 0 || fnv1a(format!("r{i}").as_bytes()) % 4 == 0;
    let kept: Vec<u64> = (0..300).filter(|&i| keep(i)).map(|i| i as u64).collect();
    assert!(kept.len() > 100 && kept.len() < 250, "a real sample: {}", kept.len());
    let mut s = start(
        r#"
[transforms.few]
type = "sample"
inputs = ["app"]
rate = 4
key = "request_id"
always_keep = { field = "level", equals = "error" }
[sinks.out]
type = "stdout"
inputs = ["few"]
"#,
        &[],
    );
    let out = feed(&mut s, &input, kept.len());
    assert_eq!(numbers(&out), kept);
    for line in &out {
        let e = json(line);
        let error = e["level"] == "error";
        assert_eq!(e.get("sample_rate").is_some(), !error, "{line}");
        if !error {
            assert_eq!(e["sample_rate"], 4, "{line}");
        }
    }
    let dropped = 300 - kept.len();
    assert_eq!(
        s.metric("sluice_transform_events_dropped_total{reason=\"sampled\",transform=\"few\"}"),
        dropped as f64
    );
}

#[test]
fn throttle_lets_the_threshold_through_per_key_and_counts_the_rest_per_key() {
    let mut input: Vec<String> = (0..10).map(|i| format!(r#"{{"i":{i},"pod":"a"}}"#)).collect();
    input.extend((10..15).map(|i| format!(r#"{{"i":{i},"pod":"b"}}"#)));
    input.extend((15..17).map(|i| format!(r#"{{"i":{i}}}"#)));
    let mut s = start(
        r#"
[transforms.calm]
type = "throttle"
inputs = ["app"]
threshold = 3
window = "1h"
key = "pod"
[sinks.out]
type = "stdout"
inputs = ["calm"]
"#,
        &[],
    );
    let out = feed(&mut s, &input, 8);
    assert_eq!(numbers(&out), [0, 1, 2, 10, 11, 12, 15, 16]);
    assert_eq!(
        s.metric("sluice_transform_throttled_events_total{key=\"a\",transform=\"calm\"}"),
        7.0
    );
    assert_eq!(
        s.metric("sluice_transform_throttled_events_total{key=\"b\",transform=\"calm\"}"),
        2.0
    );
    assert_eq!(
        s.metric("sluice_transform_events_dropped_total{reason=\"throttled\",transform=\"calm\"}"),
        9.0
    );
}

#[test]
fn fields_reshape_every_event_and_a_route_after_them_sees_the_change() {
    let input: Vec<String> = vec![
        r#"{"i":0,"lvl":"error","msg":"boom","code":"503","debug":{"x":1}}"#.into(),
        r#"{"i":1,"lvl":"info","msg":"ok","code":"200"}"#.into(),
        "not json".into(),
    ];
    let mut s = start(
        r#"
[transforms.shape]
type = "fields"
inputs = ["app"]
rename = { lvl = "level" }
copy = { msg = "summary" }
set = { env = "prod", summary = "{{ level }}: {{ msg }}" }
coerce = { code = "integer" }
remove = ["debug"]
[transforms.split]
type = "route"
inputs = ["shape"]
routes.errors = { field = "level", equals = "error" }
[sinks.out]
type = "stdout"
inputs = ["split.errors", "split._unmatched"]
"#,
        &[("SLUICE_PROCESS_TYPE", "web")],
    );
    let out = feed(&mut s, &input, 3);
    let events: Vec<Value> = out.iter().map(|l| json(l)).collect();
    let first = events.iter().find(|e| e["i"] == 0).expect("event 0");
    assert_eq!(first["level"], "error");
    assert!(first.get("lvl").is_none() && first.get("debug").is_none(), "{first}");
    assert_eq!(first["code"], 503);
    assert_eq!(first["summary"], "error: boom");
    assert_eq!(first["env"], "prod");
    assert_eq!(first["process"]["type"], "web", "the metadata stays");
    let plain = events.iter().find(|e| e.get("message").is_some()).expect("the wrapped line");
    assert_eq!(plain["message"], "not json");
    assert_eq!(plain["summary"], ": ");
    assert_eq!(
        s.metric("sluice_transform_events_out_total{output=\"split.errors\",transform=\"split\"}"),
        1.0
    );
}

#[test]
fn conditions_read_metadata_the_event_lacks() {
    let input: Vec<String> = vec![
        r#"{"i":0}"#.into(),
        r#"{"i":1,"process":{"type":"worker"}}"#.into(),
        r#"{"i":2,"msg":"a timeout here"}"#.into(),
    ];
    let mut s = start(
        r#"
[transforms.web]
type = "filter"
inputs = ["app"]
condition = { any = [
  { all = [{ field = "process.type", equals = "web" }, { field = "msg", exists = false }] },
  { field = "msg", contains = "timeout" },
] }
[sinks.out]
type = "stdout"
inputs = ["web"]
"#,
        &[("SLUICE_PROCESS_TYPE", "web")],
    );
    let out = feed(&mut s, &input, 2);
    assert_eq!(numbers(&out), [0, 2]);
}

#[test]
fn a_reloaded_filter_replaces_the_old_one() {
    let cfg = |path: &str| {
        format!(
            r#"
[transforms.quiet]
type = "filter"
inputs = ["app"]
condition = {{ not = {{ field = "path", equals = "{path}" }} }}
[sinks.out]
type = "stdout"
inputs = ["quiet"]
"#
        )
    };
    let mut s = start(&cfg("/a"), &[]);
    let line = |i: usize, p: &str| format!(r#"{{"i":{i},"path":"{p}"}}"#);
    s.write_lines(&[line(0, "/a"), line(1, "/b")]);
    assert_eq!(numbers(&s.wait_for(1, WAIT)), [1]);
    std::fs::write(s.path("sluice.toml"), format!("{HEAD}{}", cfg("/b"))).expect("rewrite config");
    let before = s.metric("sluice_config_reloads_total{outcome=\"applied\"}");
    s.signal(libc::SIGHUP);
    wait_until("the reload applied", WAIT, || {
        (s.metric("sluice_config_reloads_total{outcome=\"applied\"}") > before).then_some(())
    });
    s.write_lines(&[line(2, "/a"), line(3, "/b")]);
    assert_eq!(numbers(&s.wait_for(2, WAIT)), [1, 2]);
}

#[test]
fn validate_reports_graph_errors_with_their_key_paths() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            r#"{HEAD}
[transforms.split]
type = "route"
inputs = ["loop"]
routes.errors = {{ field = "level", equals = "error" }}
[transforms.loop]
type = "filter"
inputs = ["split.errors"]
condition = {{ field = "level", exists = true }}
[sinks.out]
type = "stdout"
inputs = ["split.audit"]
"#
        ),
    )
    .expect("write config");
    let out = Command::new(support::sluice::BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("run sluice validate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("transforms.split.inputs[0]") && err.contains("cycle"), "{err}");
    assert!(err.contains("transforms.loop.inputs[0]"), "{err}");
    assert!(
        err.contains("sinks.out.inputs[0]: transform \"split\" has no route \"audit\""),
        "{err}"
    );
}

#[test]
fn redact_lets_no_planted_secret_out_and_leaves_ordinary_events_byte_exact() {
    let secrets = [
        "ada@example.com",
        "4111 1111 1111 1111",
        "10.20.30.40",
        "2001:db8::8a2e:370:7334",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX3g",
        "abcDEF123456789xyz",
        "AKIAIOSFODNN7EXAMPLE",
        "hunter22",
    ];
    let mut input: Vec<String> = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        let msg = match i {
            5 => format!("Authorization: Bearer {secret}"),
            7 => format!("login password={secret} done"),
            _ => format!("seen {secret} here"),
        };
        input.push(format!(r#"{{"i":{i},"message":"{msg}","status":200}}"#));
    }
    input.push(format!("plain line from {} to ada@example.com", secrets[2]));
    let ordinary: Vec<String> = (100..120)
        .map(|i| format!(r#"{{"i":{i},"message":"GET /api/v1/orders/{i} took 12.5ms","request_id":"3f2a9c0e8b7d4a1f9e6c5b4a3d2e{i:04}","ts":1733480000{i:03}}}"#))
        .collect();
    input.extend(ordinary.iter().cloned());

    let mut plain = start("[sinks.out]\ntype = \"stdout\"\n", &[]);
    let all = feed(&mut plain, &input, input.len());
    let mut s = start(
        r#"
[transforms.scrub]
type = "redact"
inputs = ["app"]
[sinks.out]
type = "stdout"
inputs = ["scrub"]
"#,
        &[],
    );
    let out = feed(&mut s, &input, input.len());
    for line in &out {
        for secret in secrets {
            assert!(!line.contains(secret), "{secret} left in {line}");
        }
    }
    let scrubbed = out.iter().filter(|l| l.contains("[REDACTED]")).count();
    assert_eq!(scrubbed, secrets.len() + 1, "{out:#?}");
    assert_eq!(
        out[secrets.len() + 1..],
        all[secrets.len() + 1..],
        "ordinary events are untouched, byte for byte"
    );
}

#[test]
fn parse_reads_logfmt_lines_into_fields_with_a_normalised_timestamp() {
    let input: Vec<String> = vec![
        r#"ts=1700000000123 level=warn msg="disk almost full" pct=91"#.into(),
        r#"{"i":1,"message":"not logfmt at all?"}"#.into(),
        r#"{"i":2,"level":"info"}"#.into(),
    ];
    let mut plain = start("[sinks.out]\ntype = \"stdout\"\n", &[]);
    let all = feed(&mut plain, &input, 3);
    let mut s = start(
        r#"
[transforms.kv]
type = "parse"
inputs = ["app"]
format = "logfmt"
drop_field = true
timestamp = { field = "ts", format = "epoch_ms", target = "time" }
[transforms.warnings]
type = "route"
inputs = ["kv"]
routes.warn = { field = "level", equals = "warn" }
[sinks.out]
type = "stdout"
inputs = ["warnings.warn", "warnings._unmatched"]
"#,
        &[],
    );
    let out = feed(&mut s, &input, 3);
    let first = out
        .iter()
        .map(|l| json(l))
        .find(|e| e.get("pct").is_some())
        .expect("the parsed line");
    assert_eq!(first["level"], "warn");
    assert_eq!(first["msg"], "disk almost full");
    assert_eq!(first["time"], "2023-11-14T22:13:20.123Z");
    assert!(first.get("message").is_none(), "drop_field removed the text: {first}");
    assert_eq!(
        s.metric("sluice_transform_events_out_total{output=\"warnings.warn\",transform=\"warnings\"}"),
        1.0
    );
    // "not logfmt at all?" parses as bare keys; the event without a
    // message does not parse and keeps its bytes.
    assert!(out.contains(&all[2]), "{out:#?}");
}

/// Runs `sluice test --config` on `HEAD` + `rest`: exit success, stdout.
fn sluice_test(rest: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tests.toml");
    std::fs::write(&path, format!("{HEAD}{rest}")).expect("write config");
    let out = Command::new(support::sluice::BIN)
        .args(["test", "--config"])
        .arg(&path)
        .env_remove("SLUICE_PROCESS_TYPE")
        .output()
        .expect("run sluice test");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

const TESTED: &str = r#"
[transforms.quiet]
type = "filter"
inputs = ["app"]
condition = { not = { field = "path", equals = "/healthz" } }
[transforms.split]
type = "route"
inputs = ["quiet"]
routes.errors = { field = "level", equals = "error" }
[sinks.out]
type = "stdout"
inputs = ["split.errors"]
"#;

#[test]
fn sluice_test_runs_config_cases_and_fails_on_a_wrong_expectation() {
    let good = format!(
        r#"{TESTED}
[[tests]]
name = "errors are routed, health checks dropped"
input = ['{{"level":"error","path":"/a"}}', '{{"level":"error","path":"/healthz"}}', "plain text", {{ level = "info" }}]
expect = [
  {{ output = "split.errors", events = [{{ level = "error", path = "/a" }}] }},
  {{ output = "split._unmatched", events = [{{ message = "plain text" }}, {{ level = "info" }}] }},
  {{ output = "quiet", count = 3 }},
]
"#
    );
    let (ok, text) = sluice_test(&good);
    assert!(ok, "{text}");
    assert!(text.contains("test errors are routed, health checks dropped ... ok"), "{text}");

    let bad = format!(
        r#"{TESTED}
[[tests]]
name = "a health check is not dropped"
input = ['{{"level":"error","path":"/healthz"}}']
expect = [{{ output = "split.errors", count = 1 }}]
"#
    );
    let (ok, text) = sluice_test(&bad);
    assert!(!ok, "{text}");
    assert!(
        text.contains("FAILED") && text.contains("split.errors: expected 1 event(s), got 0"),
        "{text}"
    );

    let unknown = format!("{TESTED}\n[[tests]]\nname = \"x\"\ninput = []\nexpect = [{{ output = \"split.audit\", count = 0 }}]\n");
    let (ok, text) = sluice_test(&unknown);
    assert!(!ok);
    assert!(text.contains("tests[0].expect[0].output"), "{text}");
}

#[test]
fn sluice_tap_prints_a_sample_of_a_route_output_and_of_a_transform_no_sink_takes() {
    let port = support::free_port();
    let text = format!(
        r#"
shutdown_timeout = "5s"
[api]
address = "127.0.0.1:{port}"
[sources.app]
type = "stdin"
{TESTED}"#
    );
    let mut s = Sluice::builder().config(&text).stdin_piped().start().serving();
    let config = s.path("sluice.toml");
    let tap = std::thread::spawn(move || {
        Command::new(support::sluice::BIN)
            .args(["tap", "split.errors", "--limit", "2", "--config"])
            .arg(&config)
            .output()
            .expect("run sluice tap")
    });
    let quiet = std::thread::spawn(move || support::http_get(&format!("http://127.0.0.1:{port}/tap/quiet?limit=1")));
    let mut i = 0;
    while !(tap.is_finished() && quiet.is_finished()) {
        s.write_lines(&[
            format!(r#"{{"i":{i},"level":"error","path":"/a"}}"#),
            format!(r#"{{"i":{},"level":"info","path":"/healthz"}}"#, i + 1),
        ]);
        i += 2;
        std::thread::sleep(Duration::from_millis(50));
        assert!(i < 2000, "the taps never answered");
    }
    let out = tap.join().expect("tap thread");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| json(l)["level"] == "error"), "{lines:?}");
    let (status, body) = quiet.join().expect("quiet thread");
    assert_eq!(status, 200);
    assert_eq!(body.lines().count(), 1, "{body}");
    assert_eq!(json(body.trim())["path"], "/a", "the filter's output, which no sink takes");
}
