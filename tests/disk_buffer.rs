//! The disk buffer, behind a Kafka sink whose broker (tansu) is down or up:
//! records kept across restarts and replayed first, corrupt records skipped
//! and counted, and the overflow action once the disk budget is spent.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::eventually;
use support::kafka::{events, id_of, read_until, Kafka, KAFKA_TIMEOUT};
use support::Sluice;

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// sluice with a stdin source named `in` feeding `sinks` (TOML).
fn stdin_config(data_dir: &Path, sinks: &str) -> String {
    format!(
        r#"
data_dir = "{}"
shutdown_timeout = "2s"
[api]
address = "127.0.0.1:0"
[sources.in]
type = "stdin"
{sinks}"#,
        data_dir.display()
    )
}

fn config(data_dir: &Path, bootstrap: &str, topic: &str, buffer: &str, with_stdout: bool) -> String {
    let stdout = if with_stdout { "[sinks.out]\ntype = \"stdout\"\n" } else { "" };
    stdin_config(
        data_dir,
        &format!(
            r#"{stdout}
[sinks.k]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
healthcheck = false
[sinks.k.librdkafka_options]
"reconnect.backoff.max.ms" = "500"
[sinks.k.buffer]
type = "disk"
{buffer}
"#
        ),
    )
}

fn buffer_events(s: &Sluice) -> f64 {
    s.metric("sluice_buffer_events{sink=\"k\"}")
}

#[test]
fn restart_with_a_non_empty_disk_buffer_replays_it_first() {
    let mut broker = Kafka::reserve();
    let data = tempfile::tempdir().expect("temp dir");
    let buf_dir = data.path().join("buffers/k");
    let cfg = config(data.path(), &broker.addr, "replay", "max_bytes = \"64MiB\"", false);

    // Run 1: the broker is down; everything goes to disk and stays there.
    let first = events(0, 2000, 150);
    let mut s = Sluice::with_stdin(&cfg);
    s.write_lines(&first);
    eventually("every event written to the disk buffer", RUN_TIMEOUT, || {
        buffer_events(&s) >= first.len() as f64
    });
    s.signal(libc::SIGTERM);
    s.wait(RUN_TIMEOUT);
    let on_disk: u64 = segments(&buf_dir).iter().map(|(_, n)| n).sum();
    assert!(on_disk > 2000 * 150, "the buffer is kept across the restart: {on_disk} bytes");

    // Run 2: the broker is up; the old records go out before new input.
    broker.up();
    broker.create_topic("replay", 1);
    let second = events(2000, 1000, 150);
    let mut s = Sluice::with_stdin(&cfg);
    s.write_lines(&second);
    s.close_stdin();
    let status = s.wait(RUN_TIMEOUT);
    assert!(status.success(), "{}", s.logs());

    let total = first.len() + second.len();
    let got = read_until(&broker.addr, "replay", KAFKA_TIMEOUT, |got| got.len() >= total);
    let mut first_offset = vec![i64::MAX; total];
    for m in &got {
        let id = id_of(&m.payload) as usize;
        first_offset[id] = first_offset[id].min(m.offset);
    }
    assert!(first_offset.iter().all(|&o| o != i64::MAX), "every event of both runs arrived");
    let last_old = first_offset[..first.len()].iter().max().copied().unwrap_or_default();
    let first_new = first_offset[first.len()..].iter().min().copied().unwrap_or_default();
    assert!(last_old < first_new, "replayed records come first ({last_old} vs {first_new})");
    assert!(
        segments(&buf_dir).is_empty(),
        "acknowledged segments are deleted: {:?}",
        segments(&buf_dir)
    );
}

/// Records of a segment file: (offset of the frame, payload length).
fn records(seg: &[u8]) -> Vec<(usize, usize)> {
    assert_eq!(&seg[..8], b"SLCBUF01", "segment magic");
    let mut out = Vec::new();
    let mut at = 8;
    while at + 8 <= seg.len() {
        let len = u32::from_le_bytes(seg[at..at + 4].try_into().expect("4 bytes")) as usize;
        if at + 8 + len > seg.len() {
            break;
        }
        out.push((at, len));
        at += 8 + len;
    }
    out
}

/// Event ids inside a record payload (its NDJSON part).
fn ids_in(payload: &[u8]) -> Vec<u64> {
    let pat = b"{\"id\":";
    let mut ids = Vec::new();
    let mut i = 0;
    while i + pat.len() <= payload.len() {
        if &payload[i..i + pat.len()] == pat {
            let digits: String = payload[i + pat.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|&b| b as char)
                .collect();
            if let Ok(id) = digits.parse() {
                ids.push(id);
            }
            i += pat.len();
        } else {
            i += 1;
        }
    }
    ids
}

#[test]
fn corrupt_records_and_a_torn_tail_are_skipped_and_counted() {
    let mut broker = Kafka::reserve();
    let data = tempfile::tempdir().expect("temp dir");
    let buf_dir = data.path().join("buffers/k");
    let cfg = config(data.path(), &broker.addr, "corrupt", "max_bytes = \"64MiB\"", false);

    // Run 1: five batches to disk, then a crash.
    let input = events(0, 500, 100);
    let mut s = Sluice::with_stdin(&cfg);
    for (i, chunk) in input.chunks(100).enumerate() {
        s.write_lines(chunk);
        eventually("the batch on disk", RUN_TIMEOUT, || buffer_events(&s) >= ((i + 1) * 100) as f64);
    }
    s.signal(libc::SIGKILL);
    s.wait(RUN_TIMEOUT);

    let segs = segments(&buf_dir);
    assert_eq!(segs.len(), 1, "{segs:?}");
    let path = &segs[0].0;
    let mut bytes = std::fs::read(path).expect("segment");
    let recs = records(&bytes);
    assert!(recs.len() >= 3, "one record per batch: {recs:?}");
    // Flip a byte in the middle of the second record: its CRC fails.
    let (at, len) = recs[1];
    let lost = ids_in(&bytes[at + 8..at + 8 + len]);
    assert!(!lost.is_empty());
    bytes[at + 8 + len / 2] ^= 0x55;
    // And a torn tail, as a crash in the middle of a write leaves it.
    bytes.extend_from_slice(&4096u32.to_le_bytes());
    bytes.extend_from_slice(&[0u8; 4]);
    bytes.extend_from_slice(b"{\"id\":9999");
    std::fs::write(path, &bytes).expect("write segment");

    // Run 2: the broker is up; every intact record is delivered.
    broker.up();
    broker.create_topic("corrupt", 1);
    let mut s = Sluice::with_stdin(&cfg);
    let expected = input.len() - lost.len();
    eventually("intact records delivered", RUN_TIMEOUT, || {
        s.metric("sluice_sink_events_total{sink=\"k\"}") >= expected as f64
    });
    assert_eq!(
        s.metric("sluice_buffer_corrupt_records_total{sink=\"k\"}"),
        2.0,
        "bad CRC and torn tail"
    );
    s.close_stdin();
    let status = s.wait(RUN_TIMEOUT);
    assert!(status.success(), "no endless loop on damage: {}", s.logs());

    let got = read_until(&broker.addr, "corrupt", KAFKA_TIMEOUT, |got| got.len() >= expected);
    let mut ids: Vec<u64> = got.iter().map(|m| id_of(&m.payload)).collect();
    ids.sort();
    ids.dedup();
    let want: Vec<u64> = (0..input.len() as u64).filter(|id| !lost.contains(id)).collect();
    assert_eq!(ids, want, "everything but the corrupt record, and nothing invented");
}

#[test]
fn spent_disk_budget_drops_newest_under_drop_newest_and_never_stalls_the_others() {
    let mut broker = Kafka::reserve();
    let data = tempfile::tempdir().expect("temp dir");
    let cfg = config(
        data.path(),
        &broker.addr,
        "overflow",
        "max_bytes = \"1MiB\"\nwhen_full = \"drop_newest\"",
        true,
    );
    let input = events(0, 4000, 900);
    let mut s = Sluice::with_stdin(&cfg);
    let writer = s.feed(input.clone(), true);
    eventually("stdout has every event", RUN_TIMEOUT, || s.count() >= input.len());
    let stdin = writer.join().expect("writer");
    let dropped = s.metric("sluice_events_dropped_total{component=\"k\",reason=\"buffer_full\"}");
    assert!(dropped > 0.0, "the budget was spent and the newest batches dropped");
    let on_disk = s.metric("sluice_buffer_bytes{sink=\"k\"}");
    assert!(on_disk <= (1 << 20) as f64, "disk use stays within max_bytes: {on_disk}");

    broker.up();
    let kept = input.len() - dropped as usize;
    eventually("what was kept reaches Kafka", RUN_TIMEOUT, || {
        s.metric("sluice_sink_events_total{sink=\"k\"}") >= kept as f64
    });
    drop(stdin);
    let status = s.wait(RUN_TIMEOUT);
    assert!(status.success(), "{}", s.logs());
    let got = read_until(&broker.addr, "overflow", KAFKA_TIMEOUT, |got| got.len() >= kept);
    let mut ids: Vec<u64> = got.iter().map(|m| id_of(&m.payload)).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), kept, "every kept event, once");
}

#[test]
fn spent_disk_budget_blocks_the_pipeline_under_block_until_the_sink_recovers() {
    let mut broker = Kafka::reserve();
    let data = tempfile::tempdir().expect("temp dir");
    let cfg = config(
        data.path(),
        &broker.addr,
        "blocked",
        "max_bytes = \"1MiB\"\nwhen_full = \"block\"",
        true,
    );
    let input = events(0, 4000, 900);
    let mut s = Sluice::with_stdin(&cfg);
    let writer = s.feed(input.clone(), false);
    // The budget fills (records are ~270 KB batches: three fit), the
    // fan-out waits, and stdout stops short.
    let stalled = support::wait_until("the pipeline to stall", RUN_TIMEOUT, || {
        let before = s.count();
        std::thread::sleep(Duration::from_millis(1500));
        let after = s.count();
        (after > 0 && after == before && s.metric("sluice_buffer_bytes{sink=\"k\"}") >= (512 << 10) as f64).then_some(after)
    });
    assert!(stalled < input.len(), "block holds every sink back once the budget is spent");
    let on_disk = s.metric("sluice_buffer_bytes{sink=\"k\"}");
    assert!(on_disk <= (1 << 20) as f64, "disk use stays within max_bytes: {on_disk}");
    assert_eq!(s.metric("sluice_events_dropped_total{component=\"k\",reason=\"buffer_full\"}"), 0.0);

    broker.up();
    let started = Instant::now();
    let status = s.wait(RUN_TIMEOUT);
    assert!(status.success(), "{}", s.logs());
    let _ = writer.join();
    assert_eq!(s.count(), input.len(), "stdout got everything once the sink recovered");
    let got = read_until(&broker.addr, "blocked", KAFKA_TIMEOUT, |got| got.len() >= input.len());
    let mut ids: Vec<u64> = got.iter().map(|m| id_of(&m.payload)).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), input.len(), "nothing lost under block");
    assert!(started.elapsed() < RUN_TIMEOUT);
}

/// End to end with a source that checkpoints: written to the disk buffer
/// counts as delivered, so the file source's checkpoint moves while the
/// broker is down. After a restart the events come once, from the disk
/// buffer, and the file is not read again (if the checkpoint had waited for
/// Kafka, every event would arrive twice).
#[test]
fn file_checkpoint_moves_once_events_are_on_disk_so_a_restart_sends_each_event_once() {
    let mut broker = Kafka::reserve();
    let data = tempfile::tempdir().expect("temp dir");
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("app.log");
    let input = events(0, 3000, 150);
    std::fs::write(&log, input.join("\n") + "\n").expect("write log");
    let cfg = format!(
        r#"
data_dir = "{}"
shutdown_timeout = "2s"
[api]
address = "127.0.0.1:0"
[sources.app]
type = "file"
include = ["{}"]
checkpoint_interval = "100ms"
[sinks.k]
type = "kafka"
bootstrap_servers = "{}"
topic = "checkpointed"
healthcheck = false
[sinks.k.librdkafka_options]
"reconnect.backoff.max.ms" = "500"
[sinks.k.buffer]
type = "disk"
max_bytes = "64MiB"
"#,
        data.path().display(),
        log.display(),
        broker.addr
    );

    // Run 1: the broker is down; the whole file goes to the disk buffer and
    // the checkpoint follows.
    let s = Sluice::with_stdin(&cfg);
    eventually("the file on disk in the buffer", RUN_TIMEOUT, || {
        buffer_events(&s) >= input.len() as f64
    });
    std::thread::sleep(Duration::from_millis(500));
    s.signal(libc::SIGTERM);
    s.wait(RUN_TIMEOUT);

    // Run 2: the broker is up.
    broker.up();
    broker.create_topic("checkpointed", 1);
    let s = Sluice::with_stdin(&cfg);
    eventually("the buffered events delivered", RUN_TIMEOUT, || {
        s.metric("sluice_sink_events_total{sink=\"k\"}") >= input.len() as f64
    });
    // Give a re-read of the file (the failure this test looks for) time to
    // show up before stopping.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.metric("sluice_source_events_total{source=\"app\"}"),
        0.0,
        "the file was not read again"
    );
    s.signal(libc::SIGTERM);
    let status = s.wait(RUN_TIMEOUT);
    assert!(status.success(), "{}", s.logs());

    let got = read_until(&broker.addr, "checkpointed", KAFKA_TIMEOUT, |got| got.len() >= input.len());
    let mut ids: Vec<u64> = got.iter().map(|m| id_of(&m.payload)).collect();
    ids.sort();
    assert_eq!(ids, (0..input.len() as u64).collect::<Vec<_>>(), "every event exactly once");
}

/// Issue 20, item 10: one record the sink cannot deliver (its first push
/// fails and the retry waits a minute) while every later record is
/// delivered. A `kill -9` well after those deliveries must resend only the
/// stuck record's events: the buffer remembers the acknowledged ranges past
/// it, not only the contiguous prefix (which would resend everything after
/// it).
#[test]
fn kill_9_with_one_stuck_record_resends_only_what_was_not_delivered() {
    let loki = support::Loki::start();
    let data = tempfile::tempdir().expect("temp dir");
    let cfg = stdin_config(
        data.path(),
        &format!(
            r#"
[sinks.k]
type = "loki"
endpoint = "{}"
[sinks.k.request]
concurrency = 2
[sinks.k.retry]
initial_backoff = "120s"
max_backoff = "120s"
[sinks.k.batch]
timeout = "50ms"
[sinks.k.buffer]
type = "disk"
max_bytes = "64MiB"
"#,
            loki.url
        ),
    );
    let line = |i: usize, lane: &str| format!(r#"{{"id":{i},"lane":"{lane}","msg":"event {i} of lane {lane}"}}"#);
    let stuck: Vec<String> = (0..100).map(|i| line(i, "stuck")).collect();
    let ok: Vec<String> = (100..3100).map(|i| line(i, "ok")).collect();
    let ids = |lines: Vec<String>| -> Vec<u64> {
        let mut ids: Vec<u64> = lines.iter().map(|l| id_of(l.as_bytes())).collect();
        ids.sort();
        ids
    };

    // Run 1: the first push fails once; its retry waits past the crash.
    loki.set_mode(support::LokiMode::ServerError, Some(1));
    let mut s = Sluice::with_stdin(&cfg);
    s.write_lines(&stuck);
    support::wait_until("the stuck push refused", RUN_TIMEOUT, || {
        (loki.stats().by_status.get("500").copied().unwrap_or(0) >= 1).then_some(())
    });
    for chunk in ok.chunks(300) {
        s.write_lines(chunk);
        std::thread::sleep(Duration::from_millis(50));
    }
    eventually("every later event delivered", RUN_TIMEOUT, || {
        s.metric("sluice_sink_events_total{sink=\"k\"}") >= ok.len() as f64
    });
    assert_eq!(
        ids(loki.lines()),
        (100..3100).collect::<Vec<u64>>(),
        "the stuck push is still undelivered"
    );
    // Longer than the acknowledged state's write interval (250 ms): the
    // documented promise is that nothing delivered before that is resent.
    std::thread::sleep(Duration::from_millis(1000));
    s.signal(libc::SIGKILL);
    s.wait(RUN_TIMEOUT);

    // Run 2: the stuck events go out, and nothing delivered before the
    // crash goes out again.
    let mut s = Sluice::with_stdin(&cfg);
    eventually("the stuck events delivered", RUN_TIMEOUT, || {
        s.metric("sluice_sink_events_total{sink=\"k\"}") >= stuck.len() as f64
    });
    std::thread::sleep(Duration::from_secs(2));
    s.close_stdin();
    let status = s.wait(RUN_TIMEOUT);
    assert!(status.success(), "{}", s.logs());
    let got = ids(loki.lines());
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique, (0..3100).collect::<Vec<u64>>(), "every event arrived");
    assert_eq!(
        got.len() - unique.len(),
        0,
        "duplicates: the restart must resend only the undelivered record"
    );
}

/// Sizes of the segment files in a disk buffer directory, by name.
fn segments(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
