//! The journald source on real journal files: Debian's
//! `systemd-journal-remote` writes them from export-format input, sluice
//! reads them through the real `journalctl`. Every entry arrives with its
//! process metadata; the unit, priority and boot filters hold; a restart
//! resumes after the acknowledged cursor with nothing skipped; the cursor
//! never moves past entries no sink delivered.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{free_port, Sluice, Stdout};

/// Where Debian installs it (package systemd-journal-remote; scripts/test).
const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

const TIMEOUT: Duration = Duration::from_secs(60);

/// A journal entry to write.
struct Spec {
    seq: u64,
    unit: &'static str,
    priority: u8,
    boot_id: String,
    /// Bytes of padding after the message, to make an entry large.
    pad: usize,
}

impl Spec {
    fn new(seq: u64) -> Spec {
        Spec {
            seq,
            unit: "app.service",
            priority: 6,
            boot_id: current_boot_id(),
            pad: 0,
        }
    }
}

/// The running boot's id as the journal spells it (32 hex digits).
fn current_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot id")
        .trim()
        .replace('-', "")
}

/// Realtime stamps, increasing across every journal file of the test run,
/// so journalctl's interleaving of files follows `seq`.
fn next_realtime() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
    let prev = LAST.fetch_max(now, Ordering::SeqCst).max(now);
    LAST.fetch_add(1, Ordering::SeqCst);
    prev + 1
}

/// Writes `entries` as a new journal file `name` in `dir` with
/// systemd-journal-remote, from export-format input.
fn write_journal(dir: &Path, name: &str, entries: &[Spec]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut export = Vec::new();
    for e in entries {
        let rt = next_realtime();
        export.extend_from_slice(
            format!(
                "__REALTIME_TIMESTAMP={rt}\n__MONOTONIC_TIMESTAMP={m}\n_BOOT_ID={boot}\n_HOSTNAME=node-7\n\
_PID={pid}\n_COMM=app\n_EXE=/usr/bin/app\n_CMDLINE=/usr/bin/app --port 80{seq}\n_SYSTEMD_UNIT={unit}\n\
PRIORITY={prio}\nSEQ={seq}\nMESSAGE=entry {seq} \"quoted\"{pad}\nTAG=a\nTAG=b\n",
                m = e.seq + 1,
                boot = e.boot_id,
                pid = 1000 + e.seq,
                seq = e.seq,
                unit = e.unit,
                prio = e.priority,
                pad = "x".repeat(e.pad),
            )
            .as_bytes(),
        );
        // A binary field holding a newline and a blank line.
        let data = format!("line one\n\nline {}", e.seq);
        export.extend_from_slice(b"STACK\n");
        export.extend_from_slice(&(data.len() as u64).to_le_bytes());
        export.extend_from_slice(data.as_bytes());
        export.extend_from_slice(b"\n\n");
    }
    let input = dir.join(format!("{name}.export"));
    std::fs::write(&input, &export).unwrap();
    let out = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", dir.join(format!("{name}.journal")).display()))
        .arg(&input)
        .output()
        .unwrap_or_else(|e| panic!("run {JOURNAL_REMOTE} (scripts/test installs systemd-journal-remote): {e}"));
    assert!(out.status.success(), "journal-remote: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(input).unwrap();
}

fn config(journal: &Path, data: &Path, extra: &str, sink: &str) -> String {
    format!(
        r#"
data_dir = "{data}"
shutdown_timeout = "5s"
[api]
address = "127.0.0.1:0"
[enrich]
release = "r1"
[sources.journal]
type = "journald"
journal_directory = "{journal}"
checkpoint_interval = "100ms"
drain_timeout = "3s"
{extra}
{sink}
"#,
        data = data.display(),
        journal = journal.display(),
    )
}

const STDOUT_SINK: &str = "[sinks.out]\ntype = \"stdout\"";

fn seq_of(v: &serde_json::Value) -> u64 {
    v["journald"]["SEQ"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no SEQ: {v}"))
}

/// Runs sluice over the journal once (`follow = false`) and returns the
/// events it printed.
fn read_once(journal: &Path, extra: &str) -> Vec<serde_json::Value> {
    let data = tempfile::tempdir().unwrap();
    let cfg = config(journal, data.path(), &format!("follow = false\n{extra}"), STDOUT_SINK);
    let s = Sluice::builder().config(&cfg).stdout(Stdout::Collect).start();
    let status = s.wait(TIMEOUT);
    assert!(status.success(), "sluice: {status}\n{}", s.logs());
    s.lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn journal_entries_arrive_with_process_metadata_and_level() {
    let dir = tempfile::tempdir().unwrap();
    let mut specs: Vec<Spec> = (0..20).map(Spec::new).collect();
    specs[3].priority = 3;
    write_journal(dir.path(), "a", &specs);
    let events = read_once(dir.path(), "current_boot_only = false");
    assert_eq!(events.iter().map(seq_of).collect::<Vec<_>>(), (0..20).collect::<Vec<_>>());
    let e = &events[3];
    assert_eq!(e["message"], "entry 3 \"quoted\"");
    assert_eq!(e["level"], "err");
    assert_eq!(events[4]["level"], "info");
    assert_eq!(e["host"], "node-7", "the entry's own host wins");
    assert_eq!(e["release"]["version"], "r1", "collector metadata is still added");
    assert_eq!(
        e["process"],
        serde_json::json!({"pid": 1003, "name": "app", "executable": "/usr/bin/app",
                           "command": "/usr/bin/app --port 803", "unit": "app.service"})
    );
    assert_eq!(e["journald"]["STACK"], "line one\n\nline 3", "a binary field keeps its newlines");
    assert!(e["journald"]["__CURSOR"].as_str().is_some_and(|c| c.starts_with("s=")));
    let t = e["time"].as_str().expect("time");
    assert!(t.parse::<jiff::Timestamp>().is_ok(), "time is RFC 3339: {t}");
}

#[test]
fn unit_priority_and_boot_filters_choose_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let units = ["app.service", "noisy.service", "db.service"];
    let specs: Vec<Spec> = (0..60)
        .map(|seq| Spec {
            seq,
            unit: units[(seq % 3) as usize],
            priority: (seq % 8) as u8,
            // Every fifth entry is from another boot.
            boot_id: if seq % 5 == 0 {
                "0123456789abcdef0123456789abcdef".into()
            } else {
                current_boot_id()
            },
            pad: 0,
        })
        .collect();
    write_journal(dir.path(), "a", &specs);
    let seqs = |extra: &str| read_once(dir.path(), extra).iter().map(seq_of).collect::<Vec<_>>();
    let want = |keep: &dyn Fn(&Spec) -> bool| specs.iter().filter(|s| keep(s)).map(|s| s.seq).collect::<Vec<_>>();

    assert_eq!(
        seqs("current_boot_only = true\nexclude_units = [\"noisy\"]"),
        want(&|s| s.seq % 5 != 0 && s.unit != "noisy.service")
    );
    assert_eq!(
        seqs("current_boot_only = false\ninclude_units = [\"app\", \"db.service\"]\npriority = \"warning\""),
        want(&|s| s.unit != "noisy.service" && s.priority <= 4)
    );
}

/// The two ways of reading the journal, libsystemd in-process and
/// journalctl's export output, make the same events (cursors, binary and
/// repeated fields, a cut entry) from the same files.
#[test]
fn both_readers_make_the_same_events_from_the_same_journal() {
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<Spec> = (0..200)
        .map(|seq| Spec {
            pad: if seq == 77 { 6000 } else { 0 },
            ..Spec::new(seq)
        })
        .collect();
    write_journal(dir.path(), "a", &specs);
    let read = |reader: &str| {
        read_once(
            dir.path(),
            &format!("reader = \"{reader}\"\nmax_entry_bytes = \"4KiB\"\ncurrent_boot_only = false"),
        )
    };
    let library = read("library");
    let journalctl = read("journalctl");
    assert_eq!(library.len(), 200);
    assert_eq!(library, journalctl);
    let cut = &library[77];
    assert_eq!(cut["journald_truncated"], true, "{cut}");
    assert!(cut.get("message").is_none(), "the field past the limit is left out: {cut}");
    assert_eq!(library[3]["journald"]["TAG"], serde_json::json!(["a", "b"]));
}

/// A checkpoint written by one reader resumes the other right after it.
#[test]
fn a_cursor_from_either_reader_resumes_the_other() {
    let journal = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let specs = |r: std::ops::Range<u64>| r.map(Spec::new).collect::<Vec<_>>();
    let run = |reader: &str| {
        let cfg = config(
            journal.path(),
            data.path(),
            &format!("reader = \"{reader}\"\nfollow = false\ncurrent_boot_only = false"),
            STDOUT_SINK,
        );
        let s = Sluice::builder().config(&cfg).stdout(Stdout::Collect).start();
        let status = s.wait(TIMEOUT);
        assert!(status.success(), "sluice: {status}\n{}", s.logs());
        s.lines()
            .iter()
            .map(|l| seq_of(&serde_json::from_str(l).unwrap()))
            .collect::<Vec<_>>()
    };
    write_journal(journal.path(), "a", &specs(0..100));
    assert_eq!(run("library"), (0..100).collect::<Vec<_>>());
    write_journal(journal.path(), "b", &specs(100..150));
    assert_eq!(run("journalctl"), (100..150).collect::<Vec<_>>());
    write_journal(journal.path(), "c", &specs(150..170));
    assert_eq!(run("library"), (150..170).collect::<Vec<_>>());
    assert_eq!(run("journalctl"), Vec::<u64>::new(), "nothing is read twice");
}

#[test]
fn a_missing_journal_directory_stops_sluice_with_the_error_with_either_reader() {
    let data = tempfile::tempdir().unwrap();
    let missing = data.path().join("no-journal-here");
    for (reader, error) in [
        ("library", "cannot open the journal: No such file or directory"),
        ("journalctl", "journalctl exited"),
    ] {
        let cfg = config(&missing, data.path(), &format!("reader = \"{reader}\""), STDOUT_SINK);
        let s = Sluice::builder().config(&cfg).stdout(Stdout::Collect).start();
        let status = s.wait(TIMEOUT);
        assert!(!status.success(), "{reader}: sluice exited well without a journal");
        assert!(s.logs().contains(error), "{reader}: no {error:?} in\n{}", s.logs());
    }
}

/// Reads events from a following sluice until `n` arrived.
fn events(s: &Sluice, n: usize) -> Vec<serde_json::Value> {
    s.events(n, TIMEOUT)
}

fn cursor_file(data: &Path) -> PathBuf {
    data.join("journald").join("journal").join("cursor.json")
}

#[test]
fn a_restart_resumes_after_the_acknowledged_cursor_without_skipping() {
    let journal = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let cfg = config(journal.path(), data.path(), "current_boot_only = true", STDOUT_SINK);
    let start = || Sluice::builder().config(&cfg).stdout(Stdout::Collect).start();
    let specs = |r: std::ops::Range<u64>| r.map(Spec::new).collect::<Vec<_>>();

    write_journal(journal.path(), "a", &specs(0..300));
    let s = start();
    let first: Vec<u64> = events(&s, 300).iter().map(seq_of).collect();
    assert_eq!(first, (0..300).collect::<Vec<_>>());
    // Entries written while it follows arrive too.
    write_journal(journal.path(), "b", &specs(300..400));
    let followed: Vec<u64> = events(&s, 100).iter().map(seq_of).collect();
    assert_eq!(followed, (300..400).collect::<Vec<_>>());
    let (status, _) = s.stop();
    assert!(status.success(), "{status}\n{}", s.logs());
    assert!(cursor_file(data.path()).exists());

    // Written while sluice is down: the next run starts right after the
    // last delivered entry (a clean stop delivered and checkpointed all).
    write_journal(journal.path(), "c", &specs(400..650));
    let s = start();
    let second: Vec<u64> = events(&s, 250).iter().map(seq_of).collect();
    assert_eq!(second, (400..650).collect::<Vec<_>>());
    assert!(s.remaining_events(Duration::from_millis(500)).is_empty(), "nothing read twice");

    // Killed without a chance to checkpoint: at least once, never a skip.
    s.kill();
    write_journal(journal.path(), "d", &specs(650..700));
    let s = start();
    let mut third: Vec<u64> = Vec::new();
    support::wait_until("entries after a kill -9", TIMEOUT, || {
        third.extend(s.new_lines().iter().map(|l| seq_of(&serde_json::from_str(l).unwrap())));
        third.contains(&699).then_some(())
    });
    let mut counts = BTreeMap::new();
    for q in &third {
        *counts.entry(*q).or_insert(0) += 1;
    }
    for q in 650..700 {
        assert_eq!(counts.get(&q), Some(&1), "entry {q} arrives once after the restart");
    }
    assert!(
        third.iter().all(|&q| q >= 400),
        "a restart after a checkpoint does not start over: {third:?}"
    );
    let (status, _) = s.stop();
    assert!(status.success());
}

#[test]
fn the_cursor_stays_before_entries_no_sink_delivered() {
    let journal = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    write_journal(journal.path(), "a", &(0..50).map(Spec::new).collect::<Vec<_>>());
    // A Loki sink whose server is not there: nothing is delivered.
    let dead = format!(
        "[sinks.loki]\ntype = \"loki\"\nhealthcheck = false\nendpoint = \"http://127.0.0.1:{}\"\n",
        free_port()
    );
    let cfg = config(journal.path(), data.path(), "current_boot_only = false", &dead);
    let s = Sluice::builder().config(&cfg).stdout(Stdout::Null).start();
    let api = s.api_address();
    support::eventually("the source read the journal", TIMEOUT, || {
        assert!(s.try_status().is_none(), "sluice exited:\n{}", s.logs());
        support::scrape(&api).sum("sluice_journald_entries_total", &[("outcome", "sent")]) >= 50.0
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!cursor_file(data.path()).exists(), "no cursor before delivery");
    let _ = s.stop();
    assert!(!cursor_file(data.path()).exists(), "no cursor after a stop that delivered nothing");

    // With a sink that delivers, every entry arrives.
    let cfg = config(journal.path(), data.path(), "current_boot_only = false", STDOUT_SINK);
    let s = Sluice::builder().config(&cfg).stdout(Stdout::Collect).start();
    assert_eq!(events(&s, 50).iter().map(seq_of).collect::<Vec<_>>(), (0..50).collect::<Vec<_>>());
    let _ = s.stop();
}

/// The machine's own journal, where journald runs. This one reads the
/// system journal only when `/run/systemd/journal/socket` exists; on a
/// machine (or container) without journald it says so and checks nothing.
#[test]
fn live_journal_entries_written_by_systemd_cat_arrive() {
    if !Path::new("/run/systemd/journal/socket").exists() {
        eprintln!("journald is not running on this machine: the live journal was not tested");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let tag = format!("sluice-test-{}", std::process::id());
    let cfg = format!(
        "data_dir = \"{}\"\n[api]\naddress = \"127.0.0.1:0\"\n[sources.journal]\ntype = \"journald\"\nsince_now = true\n{STDOUT_SINK}\n",
        data.path().display()
    );
    let s = Sluice::builder().config(&cfg).stdout(Stdout::Collect).start();
    std::thread::sleep(Duration::from_secs(1));
    let ok = Command::new("systemd-cat")
        .args(["-t", &tag, "echo", "hello from the live journal"])
        .status()
        .expect("systemd-cat");
    assert!(ok.success());
    s.wait_until("the live entry", TIMEOUT, |lines| {
        lines.iter().any(|l| l.contains(&tag) && l.contains("hello from the live journal"))
    });
    let _ = s.stop();
}
