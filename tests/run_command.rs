//! `sluice run -- CMD ARGS`: a real command's stdout and stderr become
//! events with process metadata, signals sent to sluice reach the command,
//! and sluice exits with the command's exit code.

mod support;

use std::time::{Duration, Instant};
use support::Sluice;

const WAIT: Duration = Duration::from_secs(30);

fn run(args: &[&str]) -> Sluice {
    Sluice::builder()
        .arg("run")
        .args(args.iter().copied())
        .env("SLUICE_API_ENABLED", "false")
        .env("SLUICE_HOST", "test-host")
        .start()
}

#[test]
fn exits_with_the_commands_code_after_delivering_every_line_of_stdout_and_stderr() {
    let script = r#"for i in $(seq 1 500); do echo "{\"i\":$i}"; done; echo oops >&2; echo 'not json'; exit 3"#;
    let s = run(&["--process-type", "web", "--", "sh", "-c", script]);
    let events = s.events(502, WAIT);
    assert_eq!(s.wait(WAIT).code(), Some(3));
    let stdout: Vec<_> = events.iter().filter(|e| e["stream"] == "stdout").collect();
    assert_eq!(stdout.len(), 501);
    for (i, e) in stdout.iter().take(500).enumerate() {
        assert_eq!(e["i"], i + 1, "stdout lines in order");
    }
    assert_eq!(stdout[500]["message"], "not json");
    let err: Vec<_> = events.iter().filter(|e| e["stream"] == "stderr").collect();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0]["message"], "oops");
    for e in &events {
        let p = &e["process"];
        assert_eq!(p["type"], "web");
        assert!(p["pid"].as_u64().unwrap() > 0);
        assert_eq!(p["command"], format!("sh -c {script}"));
        assert_eq!(e["host"], "test-host");
    }
    assert!(s.remaining_events(Duration::from_millis(300)).is_empty(), "nothing extra");
}

fn wait_for_ready(s: &Sluice) -> serde_json::Value {
    let e = s.events(1, WAIT).remove(0);
    assert_eq!(e["message"], "ready", "{e}");
    e
}

#[test]
fn sigterm_reaches_the_command_which_drains_and_its_exit_code_is_kept() {
    let script = r#"trap 'echo "got TERM"; exit 7' TERM; echo ready; while :; do sleep 0.05; done"#;
    let s = run(&["--", "sh", "-c", script]);
    let ready = wait_for_ready(&s);
    let pid = ready["process"]["pid"].as_u64().unwrap() as i32;
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait(WAIT).code(), Some(7));
    // (sh may also report its terminated `sleep` on stderr.)
    let stdout: Vec<_> = s
        .remaining_events(Duration::from_millis(500))
        .into_iter()
        .filter(|e| e["stream"] == "stdout")
        .collect();
    assert_eq!(stdout.len(), 1, "{stdout:?}");
    assert_eq!(
        stdout[0]["message"], "got TERM",
        "the command saw the signal and its last line was delivered"
    );
    // SAFETY: probing a pid with signal 0.
    assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "the command is gone");
}

#[test]
fn sigint_is_forwarded_once() {
    // Counts SIGINTs for half a second after the first: forwarding must
    // not double it (the command runs in its own process group).
    let script = r#"n=0; trap 'n=$((n+1))' INT; echo ready; while [ $n -eq 0 ]; do sleep 0.02; done; sleep 0.5; echo "ints=$n"; exit 0"#;
    let s = run(&["--", "sh", "-c", script]);
    wait_for_ready(&s);
    s.signal(libc::SIGINT);
    let events = s.events(1, WAIT);
    assert_eq!(events[0]["message"], "ints=1");
    assert_eq!(s.wait(WAIT).code(), Some(0));
}

#[test]
fn a_command_killed_by_a_signal_gives_128_plus_the_signal() {
    let s = run(&["--", "sh", "-c", "echo bye; kill -9 $$"]);
    assert_eq!(s.events(1, WAIT)[0]["message"], "bye");
    assert_eq!(s.wait(WAIT).code(), Some(128 + 9));
}

#[test]
fn a_missing_command_exits_127_with_a_clear_error() {
    let s = run(&["--", "/nonexistent/program", "arg"]);
    assert_eq!(s.wait(WAIT).code(), Some(127));
    assert!(s.logs().contains("cannot start \\\"/nonexistent/program\\\""), "{}", s.logs());
}

#[test]
fn a_background_child_holding_the_output_open_is_stopped_and_does_not_keep_sluice_waiting() {
    let started = Instant::now();
    let s = run(&["--", "sh", "-c", "sleep 30 & echo started; exit 0"]);
    let e = s.events(1, WAIT).remove(0);
    assert_eq!(e["message"], "started");
    assert_eq!(s.wait(WAIT).code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(15), "waited {:?}", started.elapsed());
    // The command led its own process group; nothing of it is left.
    let group = e["process"]["pid"].as_u64().unwrap() as i32;
    let deadline = Instant::now() + WAIT;
    // SAFETY: probing a process group with signal 0.
    while unsafe { libc::kill(-group, 0) } == 0 {
        assert!(Instant::now() < deadline, "the background sleep survived");
        std::thread::sleep(Duration::from_millis(20));
    }
}
