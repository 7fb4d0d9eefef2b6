//! Multiline against stack traces of real runtimes, captured at test time
//! (Java, Python, Node, Go), written the way the kubelet writes them: a CRI
//! log file, lines over 16 KiB split into `P`/`F` pieces, the trace on
//! stderr and other lines interleaved on stdout and stderr. Each trace must
//! arrive as one event, byte-exact, once; every other line untouched. And a
//! `kill -9` with a group half read: after the restart the group arrives
//! whole.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::file_source::{config, config_with_api, parse};
use support::Sluice;

const T: Duration = Duration::from_secs(60);

/// The kubelet's piece size: a longer line is written as `P` pieces of
/// this many bytes and a final `F` piece.
const CRI_PIECE: usize = 16 * 1024;

/// A message long enough to be split into three CRI pieces.
const LONG: usize = 40_000;

/// Runs `cmd` and returns what it wrote on stderr, without the last
/// newline. Panics with both streams when the runtime is missing.
fn stderr_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (scripts/test installs the runtimes): {e}"));
    let err = String::from_utf8(out.stderr).expect("a runtime wrote UTF-8");
    assert!(
        !err.is_empty(),
        "{cmd:?} wrote no trace; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    err.strip_suffix('\n').unwrap_or(&err).to_owned()
}

/// A Java trace with causes and a suppressed exception (which has a cause
/// of its own); its first line holds a message of `long` bytes.
fn java_trace(dir: &Path, long: usize) -> String {
    let src = dir.join("Demo.java");
    std::fs::write(
        &src,
        r#"public class Demo {
    static void inner(String m) { throw new IllegalArgumentException("inner " + m); }
    static void middle(String m) {
        try { inner(m); } catch (IllegalArgumentException e) { throw new IllegalStateException("middle", e); }
    }
    public static void main(String[] args) {
        try {
            middle("x");
        } catch (IllegalStateException e) {
            RuntimeException outer = new RuntimeException("outer " + "m".repeat(Integer.parseInt(args[0])), e);
            outer.addSuppressed(new java.io.UncheckedIOException("closing", new java.io.IOException("disk")));
            outer.printStackTrace();
        }
    }
}
"#,
    )
    .unwrap();
    let t = stderr_of(Command::new("java").arg(&src).arg(long.to_string()));
    for part in [
        "Caused by: java.lang.IllegalStateException",
        "\tSuppressed: ",
        "\tCaused by: java.io.IOException",
        "... ",
    ] {
        assert!(t.contains(part), "java trace without {part:?}:\n{t}");
    }
    t
}

/// A Python traceback chained twice (`from` and during handling).
fn python_trace(dir: &Path) -> String {
    let src = dir.join("t.py");
    std::fs::write(
        &src,
        r#"import sys
def inner():
    raise KeyError("k")
def outer():
    try:
        inner()
    except KeyError as e:
        raise ValueError("outer " + "p" * int(sys.argv[1])) from e
try:
    outer()
except ValueError:
    raise RuntimeError("during handling")
"#,
    )
    .unwrap();
    let t = stderr_of(Command::new("python3").arg(&src).arg(LONG.to_string()));
    assert_eq!(t.matches("Traceback (most recent call last):").count(), 3, "{t}");
    t
}

/// A Node error with a cause, as `console.error(err)` prints it.
fn node_trace(dir: &Path) -> String {
    let src = dir.join("t.js");
    std::fs::write(
        &src,
        r#"function inner() { throw new TypeError('inner'); }
function outer() { try { inner(); } catch (e) { throw new Error('outer', { cause: e }); } }
try { outer(); } catch (e) { console.error(e); }
"#,
    )
    .unwrap();
    let t = stderr_of(Command::new("node").arg(&src));
    assert!(t.contains("[cause]: TypeError: inner"), "{t}");
    t
}

/// A real Go panic with every goroutine dumped (`GOTRACEBACK=all`).
fn go_trace(dir: &Path) -> String {
    let src = dir.join("main.go");
    std::fs::write(
        &src,
        r#"package main

import "fmt"

type worker struct{ ch chan int }

func (w *worker) run(id int) { <-w.ch }

func explode(n int) { panic(fmt.Sprintf("boom %d", n)) }

func main() {
	w := &worker{ch: make(chan int)}
	for i := 0; i < 2; i++ {
		go w.run(i)
	}
	explode(42)
}
"#,
    )
    .unwrap();
    let bin = dir.join("gopanic");
    let build = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .output()
        .unwrap_or_else(|e| panic!("cannot run go (scripts/test installs golang-go): {e}"));
    assert!(build.status.success(), "go build: {}", String::from_utf8_lossy(&build.stderr));
    let t = stderr_of(Command::new(&bin).env("GOTRACEBACK", "all"));
    assert!(t.starts_with("panic: boom 42"), "{t}");
    assert!(t.matches("\ngoroutine ").count() >= 2, "no goroutine dump:\n{t}");
    t
}

/// Writes CRI lines the way the kubelet does: `P` pieces of 16 KiB, then
/// the `F` piece.
struct CriWriter {
    text: String,
    nanos: u64,
}

impl CriWriter {
    fn new() -> CriWriter {
        CriWriter {
            text: String::new(),
            nanos: 0,
        }
    }

    fn time(&mut self) -> String {
        self.nanos += 1;
        format!("2024-05-01T10:00:00.{:09}Z", self.nanos)
    }

    /// One line of `stream`; returns its first piece's timestamp.
    fn line(&mut self, stream: &str, line: &str) -> String {
        let bytes = line.as_bytes();
        let first = self.time();
        let mut time = first.clone();
        let mut pieces = bytes.chunks(CRI_PIECE).peekable();
        if pieces.peek().is_none() {
            self.text.push_str(&format!("{time} {stream} F \n"));
        }
        while let Some(piece) = pieces.next() {
            let tag = if pieces.peek().is_some() { "P" } else { "F" };
            // The traces are ASCII: a piece boundary never cuts a character.
            let piece = std::str::from_utf8(piece).expect("ASCII trace");
            self.text.push_str(&format!("{time} {stream} {tag} {piece}\n"));
            time = self.time();
        }
        first
    }
}

/// Every event's message, counted.
fn counted(events: &[serde_json::Value]) -> HashMap<(String, String), usize> {
    let mut m = HashMap::new();
    for e in events {
        let key = (
            e["stream"].as_str().unwrap_or("").to_owned(),
            e["message"].as_str().unwrap_or("").to_owned(),
        );
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

#[test]
fn real_runtime_traces_in_a_cri_log_arrive_each_as_one_event_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let traces = [
        ("java", java_trace(&work, LONG)),
        ("python", python_trace(&work)),
        ("node", node_trace(&work)),
        ("go", go_trace(&work)),
    ];
    // The long first lines really are split by the kubelet's rule.
    assert!(traces[0].1.lines().next().unwrap().len() > 2 * CRI_PIECE);

    let mut w = CriWriter::new();
    let mut expected: Vec<(String, String, Option<String>)> = Vec::new();
    let mut n = 0;
    for (rt, trace) in &traces {
        for (stream, text) in [
            ("stdout", format!("{rt} starting on stdout")),
            ("stderr", format!("2024-05-01 10:00:00 INFO {rt} before the trace")),
        ] {
            w.line(stream, &text);
            expected.push((stream.into(), text, None));
        }
        let mut first_time = None;
        for line in trace.lines() {
            let t = w.line("stderr", line);
            first_time.get_or_insert(t);
            // Other output on stdout between every line of the trace.
            n += 1;
            let other = format!("stdout line {n} while {rt} fails");
            w.line("stdout", &other);
            expected.push(("stdout".into(), other, None));
        }
        expected.push(("stderr".into(), trace.clone(), first_time));
        let after = format!("2024-05-01 10:00:01 WARN {rt} recovered");
        w.line("stderr", &after);
        expected.push(("stderr".into(), after, None));
    }
    let logs = dir.path().join("pods/ns_pod_uid/app");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("0.log"), &w.text).unwrap();

    let cfg = config_with_api(
        &dir.path().join("data"),
        &[format!("{}/*.log", logs.display())],
        "format = \"cri\"\nmultiline = \"auto\"",
    );
    let s = Sluice::start(&cfg);
    // The last line waits out the 1 s timeout: no more input comes.
    let lines = s.wait_for(expected.len(), T);
    std::thread::sleep(Duration::from_millis(1500));
    let lines = if s.count() > lines.len() { s.lines() } else { lines };
    let events = parse(&lines);
    let got = counted(&events);
    for (stream, message, time) in &expected {
        let c = got.get(&(stream.clone(), message.clone())).copied().unwrap_or(0);
        assert_eq!(c, 1, "{stream} event arrived {c} times: {:.300}", message);
        if let Some(time) = time {
            let e = events.iter().find(|e| e["message"] == message.as_str()).unwrap();
            assert_eq!(e["time"], time.as_str(), "a group keeps its first line's time");
            assert!(e.get("multiline_cut").is_none());
        }
    }
    assert_eq!(events.len(), expected.len(), "no other event");
    let m = s.metrics();
    assert_eq!(m.get("sluice_multiline_groups_total", &[("source", "files")]), Some(4.0));
    assert!(m.sum("sluice_multiline_flushes_total", &[("source", "files"), ("reason", "timeout")]) >= 1.0);
    assert!(m.sum("sluice_multiline_flushes_total", &[("source", "files"), ("reason", "start")]) >= 4.0);
}

#[test]
fn kill_9_inside_a_group_then_restart_delivers_the_group_whole() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let trace = java_trace(&work, LONG);
    let trace_lines: Vec<&str> = trace.lines().collect();
    let half = trace_lines.len() / 2;

    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let f = logs.join("0.log");
    let mut w = CriWriter::new();
    w.line("stderr", "before the trace");
    let group_start = w.text.len() as u64;
    for l in &trace_lines[..half] {
        w.line("stderr", l);
    }
    std::fs::write(&f, &w.text).unwrap();

    let data = dir.path().join("data");
    let cfg = config(
        &data,
        &[format!("{}/*.log", logs.display())],
        // A long timeout: the group stays open across the kill.
        "format = \"cri\"\nmultiline = { preset = \"java\", timeout = \"60s\" }",
    );
    let cp = sluice::sources::file::checkpoint_path(&data, "files");
    let offset = || -> Option<u64> {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cp).ok()?).ok()?;
        v["files"][0]["offset"].as_u64()
    };
    let s = Sluice::start(&cfg);
    // `before the trace` leaves once the trace's first line shows it is
    // complete; the trace's group stays open.
    support::wait_until("the checkpoint at the group's first line", T, || {
        (offset() == Some(group_start)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        offset(),
        Some(group_start),
        "the checkpoint never passes the open group's first line"
    );
    s.kill();
    let first = s.lines();
    assert!(
        first.iter().all(|l| !l.contains("java.lang.RuntimeException")),
        "the open group was not sent"
    );

    // The rest of the trace, and a line that ends the group.
    let mut rest = CriWriter {
        text: String::new(),
        nanos: 1000,
    };
    for l in &trace_lines[half..] {
        rest.line("stderr", l);
    }
    rest.line("stderr", "after the trace");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut h| std::io::Write::write_all(&mut h, rest.text.as_bytes()))
        .unwrap();

    let s = Sluice::start(&cfg);
    // `after the trace` ends the group (and itself waits for its timeout).
    let lines = s.wait_until("the trace", T, |lines| {
        lines.iter().any(|l| l.contains("java.lang.RuntimeException"))
    });
    std::thread::sleep(Duration::from_millis(300));
    let lines = if s.count() > lines.len() { s.lines() } else { lines };
    let events = parse(&lines);
    let traces: Vec<_> = events
        .iter()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with("java.lang.")))
        .collect();
    assert_eq!(traces.len(), 1, "the group arrives once after the restart");
    assert_eq!(traces[0]["message"], trace.as_str(), "the group arrives whole, byte-exact");
    let all: Vec<_> = parse(&first).into_iter().chain(events.clone()).collect();
    assert!(
        all.iter().any(|e| e["message"] == "before the trace"),
        "lines before the group arrive at least once"
    );
}

/// A config with one source table `source` into stdout.
fn stream_config(source: &str) -> String {
    format!(
        r#"shutdown_timeout = "20s"
[api]
enabled = false
[enrich]
disable_host = true
[sources.app]
{source}
[sinks.out]
type = "stdout"
"#
    )
}

fn messages(events: &[serde_json::Value]) -> Vec<String> {
    events.iter().map(|e| e["message"].as_str().unwrap_or("").to_owned()).collect()
}

#[test]
fn stdin_group_leaves_after_its_timeout_while_stdin_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let trace = python_trace(dir.path());
    let cfg = stream_config("type = \"stdin\"\nmultiline = { preset = \"python\", timeout = \"300ms\" }");
    let mut s = Sluice::builder().config(&cfg).stdin_piped().start();
    s.write(format!("before\n{trace}\n"));
    // No more input and stdin open: the timeout sends the traceback.
    let events = s.events(2, Duration::from_secs(10));
    assert_eq!(messages(&events), vec!["before".to_string(), trace.clone()]);
    s.write("after\n");
    s.close_stdin();
    let rest = s.remaining_events(Duration::from_millis(1500));
    assert_eq!(messages(&rest), vec!["after"]);
}

#[test]
fn process_source_groups_each_output_stream_apart() {
    let dir = tempfile::tempdir().unwrap();
    // Prints on stdout and stderr, then fails with a chained traceback.
    let script = dir.path().join("both.py");
    std::fs::write(
        &script,
        r#"import sys
print("out 1", flush=True)
sys.stderr.write("err before\n"); sys.stderr.flush()
print("out 2", flush=True)
def inner():
    raise KeyError("k")
try:
    inner()
except KeyError as e:
    raise ValueError("outer") from e
"#,
    )
    .unwrap();
    let run = stderr_of(Command::new("python3").arg(&script));
    let trace = run.strip_prefix("err before\n").expect("the script's first stderr line").to_owned();
    assert!(trace.starts_with("Traceback") && trace.ends_with("ValueError: outer"), "{trace}");
    let cfg = stream_config(&format!(
        "type = \"process\"\ncommand = [\"python3\", {:?}]\nmultiline = \"auto\"",
        script.display().to_string()
    ));
    let s = Sluice::start(&cfg);
    let got = messages(&parse(&s.wait_for(4, T)));
    assert_eq!(
        got.iter().filter(|m| **m == trace).count(),
        1,
        "one traceback event, byte-exact: {got:?}"
    );
    for plain in ["out 1", "out 2", "err before"] {
        assert_eq!(got.iter().filter(|m| *m == plain).count(), 1, "{plain}: {got:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.count(), 4, "no other event");
}

#[test]
fn tcp_connection_lines_are_grouped_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let trace = java_trace(dir.path(), 10);
    let cfg = stream_config("type = \"socket\"\nmode = \"tcp\"\naddress = \"127.0.0.1:0\"\nmultiline = \"java\"");
    let s = Sluice::builder().config(&cfg).start();
    let addr = s.logged_address("listening on TCP", Some("app"), T);
    let mut a = std::net::TcpStream::connect(&addr).unwrap();
    let mut b = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::Write;
    // Two connections interleave; each keeps its own group.
    let lines: Vec<&str> = trace.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        a.write_all(format!("{l}\n").as_bytes()).unwrap();
        b.write_all(format!("other {i}\n").as_bytes()).unwrap();
        a.flush().unwrap();
    }
    a.write_all(b"{\"level\":\"info\"}\n").unwrap();
    drop(a);
    drop(b);
    let events = parse(&s.wait_for(lines.len() + 2, T));
    let got = messages(&events);
    assert_eq!(got.iter().filter(|m| **m == trace).count(), 1, "{got:?}");
    assert!(events.iter().any(|e| e["level"] == "info"), "a JSON line is its own event");
    for i in 0..lines.len() {
        assert_eq!(got.iter().filter(|m| **m == format!("other {i}")).count(), 1);
    }
}

#[test]
fn docker_json_file_trace_arrives_as_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let trace = node_trace(dir.path());
    let logs = dir.path().join("containers");
    std::fs::create_dir_all(&logs).unwrap();
    let mut text = String::new();
    let wrap = |log: &str, stream: &str, n: usize| {
        serde_json::json!({"log": format!("{log}\n"), "stream": stream, "time": format!("2024-05-01T10:00:00.{n:09}Z")}).to_string() + "\n"
    };
    text.push_str(&wrap("before", "stderr", 0));
    for (i, l) in trace.lines().enumerate() {
        text.push_str(&wrap(l, "stderr", 2 * i + 1));
        text.push_str(&wrap(&format!("out {i}"), "stdout", 2 * i + 2));
    }
    text.push_str(&wrap("after", "stderr", 9999));
    std::fs::write(logs.join("app.log"), text).unwrap();
    let cfg = config(
        &dir.path().join("data"),
        &[format!("{}/*.log", logs.display())],
        "format = \"docker\"\nmultiline = \"node\"",
    );
    let s = Sluice::start(&cfg);
    let n = trace.lines().count();
    let events = parse(&s.wait_for(n + 3, T));
    let got = counted(&events);
    assert_eq!(
        got.get(&("stderr".to_owned(), trace.clone())),
        Some(&1),
        "{:?}",
        got.keys().collect::<Vec<_>>()
    );
    let t = events.iter().find(|e| e["message"] == trace.as_str()).unwrap();
    assert_eq!(t["time"], "2024-05-01T10:00:00.000000001Z");
    for i in 0..n {
        assert_eq!(got.get(&("stdout".to_owned(), format!("out {i}"))), Some(&1));
    }
    assert_eq!(got.get(&("stderr".to_owned(), "before".to_owned())), Some(&1));
    assert_eq!(got.get(&("stderr".to_owned(), "after".to_owned())), Some(&1));
}

#[test]
fn sluice_run_with_a_multiline_preset_sends_the_commands_traceback_as_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let trace = python_trace(dir.path());
    let script = dir.path().join("t.py");
    let s = Sluice::builder()
        .env("SLUICE_API_ENABLED", "false")
        .args(["run", "--multiline", "python", "--", "python3"])
        .arg(script.as_os_str())
        .arg(LONG.to_string())
        .start();
    let status = s.wait(T);
    assert_eq!(status.code(), Some(1), "python's exit code");
    // What it wrote before exiting may still be in the pipe.
    let lines = s.wait_until("the traceback", Duration::from_secs(5), |l| !l.is_empty());
    std::thread::sleep(Duration::from_millis(200));
    let lines = if s.count() > lines.len() { s.lines() } else { lines };
    let got = messages(&parse(&lines));
    assert_eq!(got, vec![trace], "the whole traceback, once, byte-exact");
}
