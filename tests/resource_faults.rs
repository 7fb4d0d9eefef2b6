//! Disk and resource faults against the real binary: a file descriptor
//! limit far below the number of files, a data directory on a full file
//! system (under `when_full = "drop_newest"` and `"block"`), and damaged
//! checkpoint files at start.

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use support::file_source::{append, config, config_with_api, counts};
use support::{eventually, Sluice};

const T: Duration = Duration::from_secs(60);

fn glob(dir: &Path, pat: &str) -> String {
    format!("{}/{pat}", dir.display())
}

/// Every expected id arrived exactly once.
fn assert_each_once(lines: &[String], expected: impl IntoIterator<Item = String>) {
    let got = counts(lines, "id");
    let mut n = 0;
    for want in expected {
        n += 1;
        assert_eq!(got.get(&want), Some(&1), "{want} in {lines:?}");
    }
    assert_eq!(lines.len(), n, "no extra lines");
}

/// `ulimit -n 256` with 1,000 files: the files wait their turn for a
/// descriptor, nothing crashes, and every line of every file arrives.
#[test]
fn a_thousand_files_under_a_256_descriptor_limit_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = |f: usize| logs.join(format!("f{f}.log"));
    for f in 0..1000 {
        append(&path(f), (0..20).map(|i| format!(r#"{{"id":"{f}-{i}"}}"#)));
    }
    let cfg = config(&dir.path().join("data"), &[glob(&logs, "*.log")], "");
    let s = Sluice::builder()
        .config(&cfg)
        .adjust(|cmd| {
            // SAFETY: setrlimit is async-signal-safe; it runs in the child
            // between fork and exec and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    let limit = libc::rlimit {
                        rlim_cur: 256,
                        rlim_max: 256,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
        .start();
    s.wait_for(20_000, T);
    // Tailing goes on under the limit: every file grows once more.
    for f in 0..1000 {
        append(&path(f), (20..25).map(|i| format!(r#"{{"id":"{f}-{i}"}}"#)));
    }
    s.wait_for(25_000, T);
    std::thread::sleep(Duration::from_millis(500));
    let (status, lines) = s.stop();
    assert!(status.success(), "exit status {status}");
    assert_each_once(&lines, (0..1000).flat_map(|f| (0..25).map(move |i| format!("{f}-{i}"))));
}

/// A small tmpfs mounted for one test, unmounted (lazily, so a process
/// still holding a file cannot keep it) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs root to mount a tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Takes every free byte left (again, when called again): the file
    /// system stays full even when sluice frees a little.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("filler"))
            .unwrap();
        for chunk in [64 << 10, 4096, 512, 64, 1] {
            let buf = vec![0u8; chunk];
            while f.write_all(&buf).is_ok() {}
        }
    }

    /// Gives the space taken by [`Tmpfs::fill`] back.
    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Filler in each line of a [`FullDiskCase`] log (lines are ~180 bytes).
const PAD: usize = 150;

/// `data_dir` on a 1 MiB tmpfs, and a log of `n` JSON lines (`"id"` 0..n)
/// for the file source.
struct FullDiskCase {
    fs: Tmpfs,
    data: std::path::PathBuf,
    /// Holds the log (removed on drop).
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl FullDiskCase {
    fn new(n: usize) -> FullDiskCase {
        let fs = Tmpfs::mount("1m");
        let data = fs.path().join("data");
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join("app.log");
        let pad = "x".repeat(PAD);
        append(&log, (0..n).map(|i| format!(r#"{{"id":"{i}","pad":"{pad}"}}"#)));
        FullDiskCase { fs, data, _dir: dir, log }
    }

    /// The file source into stdout and into a Loki sink `sink` at `url`
    /// with a 64 MiB disk buffer under `when_full`; a 2 s shutdown.
    fn config(&self, sink: &str, url: &str, when_full: &str) -> String {
        let logs = self.log.parent().unwrap();
        config_with_api(&self.data, &[glob(logs, "*.log")], "").replace("shutdown_timeout = \"20s\"", "shutdown_timeout = \"2s\"")
            + &format!(
                r#"
[sinks.{sink}]
type = "loki"
endpoint = "{url}"
healthcheck = false
[sinks.{sink}.retry]
max_backoff = "500ms"
[sinks.{sink}.buffer]
type = "disk"
max_bytes = "64MiB"
when_full = "{when_full}"
"#
            )
    }
}

/// `data_dir` on a full file system: the file source's checkpoint writes
/// fail with a clear error and are retried (and succeed once there is room
/// again), nothing already written is damaged, and the disk buffer of a
/// sink that is down applies its `when_full` (here `drop_newest`: the
/// batches that do not fit are dropped and counted, and the other sink is
/// not held back).
#[test]
fn full_data_dir_fails_checkpoints_clearly_and_applies_when_full() {
    let n = 20_000;
    let case = FullDiskCase::new(n);
    let (fs, log) = (&case.fs, &case.log);
    // A Loki sink at a port nobody listens on: its disk buffer only grows.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let cfg = case.config("dead", &dead_url, "drop_newest");
    let pad = "x".repeat(PAD);
    let s = Sluice::start(&cfg);
    // The other sink gets every line: the full disk holds nobody back.
    let lines = s.wait_for(n, T);
    assert_each_once(&lines[..n], (0..n).map(|i| i.to_string()));
    let dropped = s.metric("sluice_events_dropped_total{component=\"dead\",reason=\"buffer_full\"}");
    assert!(dropped > 0.0, "batches that do not fit the full disk are dropped and counted");
    assert!(s.metric("sluice_buffer_errors_total{kind=\"write\",sink=\"dead\"}") > 0.0);

    // Nothing at all left: new lines still reach the other sink, and the
    // checkpoint write that follows them fails and is retried.
    fs.fill();
    append(log, (n..n + 100).map(|i| format!(r#"{{"id":"{i}","pad":"{pad}"}}"#)));
    s.wait_for(n + 100, T);
    // A line now and then keeps checkpoints coming: space a failed buffer
    // write gave back can let one checkpoint through, and a checkpoint is
    // only written when the position moves.
    let mut polls = 0;
    eventually("a checkpoint write to fail", T, || {
        fs.fill();
        if s.metric("sluice_file_checkpoint_errors_total{kind=\"write\",source=\"files\"}") > 0.0 {
            return true;
        }
        polls += 1;
        if polls % 10 == 0 {
            append(log, std::iter::once(format!(r#"{{"id":"more-{polls}","pad":"{pad}"}}"#)));
        }
        false
    });
    assert!(
        s.logs().contains("checkpoint not written") && s.logs().contains("No space left on device"),
        "a clear error: {}",
        s.logs()
    );

    // Room again: the next checkpoint write succeeds.
    fs.free();
    let writes = s.metric("sluice_file_checkpoint_writes_total{source=\"files\"}");
    eventually("a checkpoint write to succeed", T, || {
        s.metric("sluice_file_checkpoint_writes_total{source=\"files\"}") > writes
    });
    stop_with_a_dead_sink(s);

    // Nothing was damaged: the checkpoint loads (the file is not read
    // again) and every record the buffer kept reads back intact.
    let s = Sluice::start(&cfg);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.metric("sluice_file_checkpoint_errors_total{kind=\"corrupt\",source=\"files\"}"),
        0.0
    );
    assert_eq!(s.metric("sluice_buffer_corrupt_files_total{sink=\"dead\"}"), 0.0);
    assert_eq!(s.metric("sluice_buffer_corrupt_records_total{sink=\"dead\"}"), 0.0);
    assert!(
        s.metric("sluice_buffer_events{sink=\"dead\"}") > 0.0,
        "the kept records are replayed"
    );
    assert_eq!(s.count(), 0, "the checkpoint survived: nothing is read again");
    stop_with_a_dead_sink(s);
}

/// The largest `offset` in the file source's checkpoint file (0 when there
/// is none yet).
fn checkpoint_offset(data: &Path) -> u64 {
    fn max_offset(v: &serde_json::Value) -> u64 {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| if k == "offset" { v.as_u64().unwrap_or(0) } else { max_offset(v) })
                .max()
                .unwrap_or(0),
            serde_json::Value::Array(a) => a.iter().map(max_offset).max().unwrap_or(0),
            _ => 0,
        }
    }
    std::fs::read(data.join("file/files/checkpoints.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .map_or(0, |v| max_offset(&v))
}

/// `data_dir` on a full file system under `when_full = "block"`: a sink
/// that is down fills its disk buffer until the file system has no room,
/// then the source is held back (it stops reading, and its checkpoint
/// stays behind what the buffer holds), nothing is dropped; a `kill -9`
/// while it is held back loses nothing and damages nothing; once the sink
/// is back, the buffer drains, its space comes back, and every line
/// arrives. (With `drop_newest` this fails: the source reads on, batches
/// are dropped, and lines never arrive.)
#[test]
fn full_data_dir_under_block_holds_the_source_back_and_loses_nothing() {
    // About 11 MB of lines for a 1 MiB file system (besides the buffer,
    // a few batches of about 1 MiB are in memory when the source stops).
    let n = 60_000;
    let case = FullDiskCase::new(n);
    let (data, log) = (&case.data, &case.log);
    let size = std::fs::metadata(log).unwrap().len();
    let loki = support::Loki::start();
    loki.set_mode(support::LokiMode::ServerError, None);
    let cfg = case.config("loki", &loki.url, "block");
    let dropped = |s: &Sluice| s.metric("sluice_events_dropped_total{component=\"loki\",reason=\"buffer_full\"}");

    // Loki answers 500: the buffer grows until the file system is full.
    let s = Sluice::start(&cfg);
    eventually("the disk buffer to run out of room", T, || {
        s.metric("sluice_buffer_errors_total{kind=\"write\",sink=\"loki\"}") > 0.0
    });
    assert!(s.logs().contains("cannot write to the disk buffer; retrying"), "{}", s.logs());
    // Held back: the source reads no further (the stdout sink, fed by the
    // same fan-out, stops), and the checkpoint is behind the file's end.
    std::thread::sleep(Duration::from_secs(2));
    let read = s.count();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(s.count(), read, "the source is held back while the disk is full");
    assert!(read < n / 2, "the source is held back early: {read} of {n} lines read");
    let checkpoint = checkpoint_offset(data);
    assert!(checkpoint < size / 2, "checkpoint at {checkpoint} of {size} bytes");
    assert_eq!(dropped(&s), 0.0, "block drops nothing");

    // A crash while held back: nothing past the buffer was checkpointed,
    // so nothing is lost.
    let (before_kill, _, _) = s.kill9_timed();
    assert_eq!(before_kill.len(), read);

    // Still full, Loki still down: sluice starts, reads the buffer back
    // undamaged, and is held back again.
    let s = Sluice::start(&cfg);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(s.metric("sluice_buffer_corrupt_files_total{sink=\"loki\"}"), 0.0);
    assert_eq!(s.metric("sluice_buffer_corrupt_records_total{sink=\"loki\"}"), 0.0);
    assert_eq!(
        s.metric("sluice_file_checkpoint_errors_total{kind=\"corrupt\",source=\"files\"}"),
        0.0
    );
    assert!(s.metric("sluice_buffer_events{sink=\"loki\"}") > 0.0, "the buffered lines are kept");
    assert!(s.count() < n - read, "still held back");

    // Loki is back: the buffer drains, its space comes back, the source
    // reads on, and every line arrives at Loki.
    loki.set_mode(support::LokiMode::Ok, None);
    s.wait_for(n - read, T);
    let arrived = support::wait_until("every line at Loki", T, || {
        let ids = counts(&loki.lines(), "id");
        (0..n).all(|i| ids.contains_key(&i.to_string())).then_some(ids)
    });
    assert_eq!(dropped(&s), 0.0, "block drops nothing");
    assert!(checkpoint_offset(data) <= size);
    let copies: usize = arrived.values().sum();
    assert_eq!(arrived.len(), n, "only our lines arrived");
    let (status, _) = s.stop();
    assert!(status.success(), "exit status {status}");
    // A crash re-sends at most what was read after the last checkpoint.
    assert!(copies - n <= read, "{} duplicates after one crash", copies - n);
}

/// SIGTERM: sluice drains within `shutdown_timeout` and exits by itself;
/// the status is 1 because the dead sink never delivered what it held.
fn stop_with_a_dead_sink(s: Sluice) {
    let (status, _) = s.stop();
    let log = s.logs();
    assert_eq!(status.code(), Some(1), "{log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("shutdown did not finish"), "{last}");
}

/// A damaged checkpoint file at start, against the real binary: for cuts
/// and flipped bytes spread over the whole file (every byte position is
/// covered in-process by the checkpoint's unit tests), sluice starts, sets
/// the file aside, counts it, reads the files again from their start, and
/// keeps tailing.
#[test]
fn damaged_checkpoint_is_set_aside_and_counted_and_sluice_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for f in 0..2 {
        append(&logs.join(format!("f{f}.log")), (0..10).map(|i| format!(r#"{{"id":"{f}-{i}"}}"#)));
    }
    let data = dir.path().join("data");
    let cfg = config_with_api(&data, &[glob(&logs, "*.log")], "");
    let s = Sluice::start(&cfg);
    s.wait_for(20, T);
    let (status, _) = s.stop();
    assert!(status.success());
    let ckpt = data.join("file/files/checkpoints.json");
    let good = std::fs::read(&ckpt).unwrap();
    const STRIDE: usize = 23;
    let mut variants: Vec<(String, Vec<u8>)> = (0..good.len())
        .step_by(STRIDE)
        .map(|n| (format!("cut at {n}"), good[..n].to_vec()))
        .collect();
    for i in (STRIDE / 2..good.len()).step_by(STRIDE) {
        let mut v = good.clone();
        v[i] ^= 0x01;
        variants.push((format!("byte {i} ^ 0x01"), v));
    }
    let mut next = 10;
    for (what, v) in variants {
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(ckpt.parent().unwrap()).unwrap();
        std::fs::write(&ckpt, &v).unwrap();
        let s = Sluice::start(&cfg);
        let lines = s.wait_for(2 * next, T);
        assert_eq!(
            s.metric("sluice_file_checkpoint_errors_total{kind=\"corrupt\",source=\"files\"}"),
            1.0,
            "{what}: counted"
        );
        assert_each_once(&lines, (0..2).flat_map(|f| (0..next).map(move |i| format!("{f}-{i}"))));
        append(&logs.join("f0.log"), [format!(r#"{{"id":"0-{next}"}}"#)]);
        append(&logs.join("f1.log"), [format!(r#"{{"id":"1-{next}"}}"#)]);
        next += 1;
        s.wait_for(2 * next, T);
        let (status, _) = s.stop();
        assert!(status.success(), "{what}");
        let aside = std::fs::read_dir(ckpt.parent().unwrap())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".corrupt-"))
            .count();
        assert_eq!(aside, 1, "{what}: set aside");
    }
}
