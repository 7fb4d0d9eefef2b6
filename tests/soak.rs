//! The chaos soak (issue 20): every kind of input sluice has, into Kafka, S3
//! and Loki, while everything goes wrong at once, then every input line is
//! counted at every destination.
//!
//! - **Inputs**: a file rotated by real `logrotate` (`create` mode; the writer
//!   goes on writing to the old handle for one tick, as an app does until its
//!   postrotate signal), a CRI container log rotated the kubelet's way (rename
//!   to `0.log.<time>`, reopen) with partial (`P`) lines, a TCP sender, a unix
//!   stream sender and a Kafka producer (tansu, topic `soak-in`, read by
//!   sluice's Kafka source in a consumer group).
//! - **Sinks**: Kafka (topic `soak-out`), S3 (s3s-fs, zstd objects) and Loki
//!   (`tests/support/loki_receiver.py`), each with a disk buffer that blocks
//!   when full; every sink receives every input.
//! - **Faults, all at once**: `kill -9` of sluice every 30–90 s (restarted at
//!   once, as systemd would); the broker stopped for 5–15 s every 30–60 s; the
//!   S3 server killed for 5–15 s every 25–50 s; Loki answering bursts of 429
//!   and 500; the data dir (checkpoints and the three disk buffers) on a
//!   64 MiB tmpfs filled to 95% by a ballast file, so the disk buffers run
//!   into ENOSPC before their own budgets whenever two sinks are down.
//! - **At the end** (faults stopped, services up, writers finished, sluice
//!   given time to drain, then SIGTERM): no line lost at any sink;
//!   duplicates within one checkpoint interval, and what the sinks had in
//!   flight, per crash (see [`duplicate_allowance`]); peak RSS within
//!   [`RSS_BUDGET_MIB`]; no file descriptor leak; no crash loop (sluice
//!   never exits by itself and always comes back healthy). Any of these
//!   failing fails the test, with what was seen.
//!
//! Socket senders have no acknowledgement protocol: what sluice had read (or
//! the kernel held for it) but not yet written to every disk buffer when it
//! was killed is gone, by design. Such lines are counted apart ("in flight
//! at a crash") and excused only when they are the tail of a connection that
//! a kill cut; a hole in the middle of a connection, or any loss on a
//! connection no kill cut, is a loss.
//!
//! `#[ignore]`d: `scripts/soak --minutes N` runs it. Environment:
//! `SLUICE_SOAK_SECONDS` (length of the fault phase, default 60),
//! `SLUICE_SOAK_SEED` (the fault schedule; default from the clock, printed),
//! `SLUICE_SOAK_BIN` (the sluice binary; default the test build's),
//! `SLUICE_SOAK_REPORT` (a file the report is also written to). Needs root
//! for `mount -t tmpfs`, and the services `scripts/test` installs.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use support::sluice::try_proc_status_kib;
use support::{Sluice, XorShift};

// ---------------------------------------------------------------------------
// Sizes, rates and budgets
// ---------------------------------------------------------------------------

/// Lines per second each of the five inputs writes.
const RATE: u64 = 60;
/// Writers write in ticks of this length (RATE / 10 lines a tick).
const TICK: Duration = Duration::from_millis(100);
/// Bytes of filler in each line (lines are about 300 bytes as sent).
const PAD: usize = 200;

/// The file sources' `checkpoint_interval` and the Kafka source's
/// `commit_interval`.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// What one crash (or one broker or S3 restart) may deliver again: what the
/// sources read, and the sinks delivered, in the last checkpoint interval
/// before it, plus one second for the disk buffers' `acked` file (written
/// within 250 ms), a batch in flight and the sampling of `/metrics`.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(2);

/// The tmpfs that holds `data_dir`.
const TMPFS_BYTES: u64 = 64 << 20;
/// How full the ballast file makes it.
const TMPFS_FILL: f64 = 0.95;
/// `max_bytes` of each sink's disk buffer: three of them (6 MiB) do not fit
/// in the 3.2 MiB the ballast leaves, so two sinks down at once run the
/// buffers into a full disk before their own budgets.
const DISK_BUFFER_MIB: u64 = 2;
/// `max_events` of each disk buffer: events read ahead into memory.
const DISK_READ_AHEAD_EVENTS: u64 = 2000;

/// The RSS budget, from the memory the config allows:
/// the process itself (code, runtime, threads, decode pool: 14.6 MiB
/// measured by `scripts/bench-memory`, rounded up to 32 MiB), the Kafka
/// source's prefetch (`queued.max.messages.kbytes`, 16 MiB), the Kafka
/// sink's librdkafka queue (`queue.buffering.max.kbytes`, 16 MiB), S3 (a
/// 5 MiB part and two in flight: 15 MiB, plus 4 MiB of compressors), a Loki
/// push (1 MiB, and its encoding: 2 MiB), and three disk buffers reading
/// ahead `DISK_READ_AHEAD_EVENTS` events of about 0.5 KiB (3 MiB).
const RSS_BUDGET_MIB: u64 = 32 + 16 + 16 + 15 + 4 + 2 + 3;

/// The descriptor check compares like with like: the last process, idle
/// after the drain (its quietest second in [`FD_IDLE_WINDOW`]), against a
/// fresh process started on the same config and data once everything was
/// counted (its busiest second in [`FD_SETTLE`]). Both have every
/// listener, Kafka client and tailed file; what the last process went
/// through (rotations, reconnects, broker and S3 restarts, ENOSPC) must
/// not have left it holding more than this many extra descriptors (idle
/// HTTP keep-alive connections to S3 and Loki, and the open segments of
/// the disk buffers, which only the process that delivered has). Pipes
/// vary most (librdkafka's and the runtime's wake-up pipes: 17 in an idle
/// last process, 35 at the busiest second of a fresh one, not settled
/// yet), hence the busiest second of the fresh process. Besides, the last process must hold no
/// deleted file and no log file beyond the ones still being written
/// (`rotate_wait` is long over). The first process's count is reported,
/// not compared: it was never idle.
const FD_SLACK: usize = 6;
/// How long the fresh baseline process is watched (its Kafka clients
/// connect and the consumer joins its group); its busiest second counts.
const FD_SETTLE: Duration = Duration::from_secs(15);
/// How long the last process is watched idle; its quietest second counts.
const FD_IDLE_WINDOW: Duration = Duration::from_secs(5);
/// Log files still being written at the end (`app.log` and `0.log`).
const LIVE_LOG_FILES: usize = 2;

/// How long sluice may take to serve `/health` after a start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the drain after the faults may take, at most.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(240);
/// A socket sender still stalled this long after the end is abandoned.
const SENDER_FINISH: Duration = Duration::from_secs(60);

/// How often the sampler reads `/proc` and `/metrics`.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------
// Inputs and their lines
// ---------------------------------------------------------------------------

/// The five inputs, in report order.
const INPUTS: [&str; 5] = ["logrotate", "kubelet", "tcp", "unix", "kafka"];
const LOGROTATE: usize = 0;
const KUBELET: usize = 1;
const TCP: usize = 2;
const UNIX: usize = 3;
const KAFKA: usize = 4;

/// The sinks, in report order (the names in the config).
const SINKS: [&str; 3] = ["kafka", "s3", "loki"];
const SINK_KAFKA: usize = 0;
const SINK_S3: usize = 1;

/// The sources whose input is re-read after a crash (from a checkpoint or a
/// committed offset): what they read before a kill may arrive twice.
const REREAD_SOURCES: [&str; 3] = ["app_files", "pods", "kafka_in"];

/// Line `n` of `input` (JSON, no newline). `conn` is the socket connection.
fn line(input: usize, n: u64, conn: u64) -> String {
    let filler: String = "abcdefghijklmnopqrstuvwxyz0123456789"
        .chars()
        .cycle()
        .skip((n % 36) as usize)
        .take(PAD)
        .collect();
    format!(
        r#"{{"id":"{}-{n}","conn":{conn},"level":"info","service":"soak","msg":"line {n} {filler}"}}"#,
        INPUTS[input]
    )
}

/// The (input, n) of an event as a sink holds it, or `None` for a line
/// that is not one of ours.
fn id_of(event: &[u8]) -> Option<(usize, u64)> {
    let v: serde_json::Value = serde_json::from_slice(event).ok()?;
    let (name, n) = v["id"].as_str()?.rsplit_once('-')?;
    Some((INPUTS.iter().position(|i| *i == name)?, n.parse().ok()?))
}

/// Copies of each line of each input seen at one place.
#[derive(Default, Clone)]
struct Tally {
    /// `copies[input][n]`.
    copies: [Vec<u32>; 5],
    /// Lines that are not ours (not JSON, no id): a mangled line.
    foreign: u64,
}

impl Tally {
    fn add(&mut self, event: &[u8]) {
        match id_of(event) {
            Some((input, n)) => {
                let v = &mut self.copies[input];
                let n = n as usize;
                if v.len() <= n {
                    v.resize(n + 1, 0);
                }
                v[n] += 1;
            }
            None => self.foreign += 1,
        }
    }

    fn get(&self, input: usize, n: u64) -> u32 {
        self.copies[input].get(n as usize).copied().unwrap_or(0)
    }
}

/// What an outage schedule asks for now.
enum Change {
    Down,
    Up,
}

/// A service stopped for 5–15 s at a time, `every` (seconds, low and high)
/// after it came back.
struct Outage {
    name: &'static str,
    every: (u64, u64),
    next: Instant,
    down_until: Option<Instant>,
    /// When it was stopped, and started again.
    stops: Vec<Instant>,
    ups: Vec<Instant>,
    /// Time down in all.
    total: Duration,
}

impl Outage {
    fn new(name: &'static str, first: Instant, every: (u64, u64)) -> Outage {
        Outage {
            name,
            every,
            next: first,
            down_until: None,
            stops: Vec::new(),
            ups: Vec::new(),
            total: Duration::ZERO,
        }
    }

    /// The change due at `now` (`at` is `now` in seconds into the run, for
    /// the log), recorded as done.
    fn due(&mut self, now: Instant, rng: &mut XorShift, at: f64) -> Option<Change> {
        match self.down_until {
            Some(t) if now >= t => {
                self.down_until = None;
                self.ups.push(now);
                self.next = now + rng.secs(self.every.0, self.every.1);
                eprintln!("soak: {at:.1}s {} up", self.name);
                Some(Change::Up)
            }
            None if now >= self.next => {
                let d = rng.secs(5, 15);
                self.stops.push(now);
                self.total += d;
                self.down_until = Some(now + d);
                eprintln!("soak: {at:.1}s {} down for {:.1}s", self.name, d.as_secs_f64());
                Some(Change::Down)
            }
            _ => None,
        }
    }

    /// The end of the faults: true if the service is down and must be
    /// started again.
    fn end(&mut self) -> bool {
        let down = self.down_until.take().is_some();
        if down {
            self.ups.push(Instant::now());
        }
        down
    }
}

// ---------------------------------------------------------------------------
// The data dir: a small tmpfs, nearly full
// ---------------------------------------------------------------------------

/// A tmpfs mounted for the run, filled to `TMPFS_FILL` by a ballast file;
/// unmounted on drop.
struct NearlyFullTmpfs {
    mount: PathBuf,
    /// `data_dir`, inside the mount.
    data_dir: PathBuf,
    ballast: u64,
    free_after_ballast: u64,
    _parent: tempfile::TempDir,
}

impl NearlyFullTmpfs {
    fn mount() -> NearlyFullTmpfs {
        let parent = tempfile::tempdir().expect("temp dir");
        let mount = parent.path().join("data");
        fs::create_dir(&mount).expect("mkdir mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_BYTES},mode=0700"), "tmpfs"])
            .arg(&mount)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs refused ({}): {} -- the soak needs root for its nearly full data dir",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let guard = NearlyFullTmpfs {
            data_dir: mount.join("sluice"),
            mount,
            ballast: (TMPFS_BYTES as f64 * TMPFS_FILL) as u64,
            free_after_ballast: 0,
            _parent: parent,
        };
        let mut guard = guard;
        let mut f = fs::File::create(guard.mount.join("ballast")).expect("create ballast");
        let chunk = vec![0xa5u8; 1 << 20];
        let mut left = guard.ballast;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).expect("write ballast");
            left -= n as u64;
        }
        f.sync_all().expect("sync ballast");
        fs::create_dir(&guard.data_dir).expect("mkdir data dir");
        guard.free_after_ballast = free_bytes(&guard.mount);
        guard
    }
}

impl Drop for NearlyFullTmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.mount).status().is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it (a process the test could not reap):
            // detach it so the mount goes once they are gone.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

/// Bytes free to an unprivileged writer on the file system of `path`.
fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path without NUL");
    // SAFETY: statvfs fills a plain struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    st.f_bavail as u64 * st.f_frsize as u64
}

// ---------------------------------------------------------------------------
// Writers: bounded in time, they stop by themselves
// ---------------------------------------------------------------------------

/// What a writer reports when it stops.
#[derive(Default)]
struct Written {
    /// Lines written (numbered 0..lines).
    lines: u64,
    /// Socket inputs: the connections, in order.
    conns: Vec<Conn>,
    /// Rotations done.
    rotations: u64,
    /// Kafka: delivery reports that were errors.
    delivery_errors: u64,
    /// What went wrong in the writer itself (logrotate failing, ...).
    problems: Vec<String>,
}

/// One socket connection of a sender.
#[derive(Debug, Clone)]
struct Conn {
    /// Its lines are `first..end`.
    first: u64,
    end: u64,
    opened: Instant,
    /// When a write failed (sluice gone); `None` if the sender closed it.
    broken: Option<Instant>,
    /// The sender gave up on a write stalled past the end of the run.
    abandoned: bool,
}

/// Spawns a writer thread that stops by itself once `stop` is set.
fn spawn_writer(name: &str, f: impl FnOnce() -> Written + Send + 'static) -> JoinHandle<Written> {
    thread::Builder::new().name(name.to_string()).spawn(f).expect("spawn writer")
}

/// How a file writer rotates its file.
#[derive(Clone, Copy)]
enum Rotation {
    /// Real logrotate, `create` mode, with this config and state file.
    Logrotate,
    /// The kubelet: rename `0.log` to `0.log.<time>`, reopen.
    Kubelet,
}

/// Writes `RATE` lines a second of `input` to `path`, rotating every
/// `every`, until `stop`.
fn file_writer(input: usize, path: PathBuf, rotation: Rotation, every: Duration, stop: Arc<AtomicBool>) -> Written {
    let mut out = Written::default();
    let open = |p: &Path| fs::OpenOptions::new().create(true).append(true).open(p).expect("open log file");
    let dir = path.parent().expect("log dir").to_path_buf();
    let conf = dir.join("logrotate.conf");
    if let Rotation::Logrotate = rotation {
        fs::write(
            &conf,
            format!("{} {{\n  rotate 100000\n  create\n  nocompress\n  missingok\n}}\n", path.display()),
        )
        .expect("write logrotate.conf");
    }
    let mut f = open(&path);
    let mut last_rotation = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let tick_start = Instant::now();
        let mut buf = String::new();
        for _ in 0..RATE / 10 {
            match rotation {
                Rotation::Logrotate => buf.push_str(&line(input, n, 0)),
                Rotation::Kubelet => buf.push_str(&cri(&line(input, n, 0), n)),
            }
            buf.push('\n');
            n += 1;
        }
        f.write_all(buf.as_bytes()).expect("write log file");
        out.lines = n;
        if last_rotation.elapsed() >= every {
            last_rotation = Instant::now();
            out.rotations += 1;
            match rotation {
                Rotation::Logrotate => {
                    let st = Command::new("logrotate")
                        .arg("-f")
                        .arg("-s")
                        .arg(dir.join("logrotate.state"))
                        .arg(&conf)
                        .output()
                        .expect("logrotate is installed (scripts/test installs it)");
                    if !st.status.success() {
                        out.problems
                            .push(format!("logrotate failed: {}", String::from_utf8_lossy(&st.stderr)));
                    }
                    // The app writes to its old handle until it is told to
                    // reopen: one more tick there.
                    let mut buf = String::new();
                    for _ in 0..RATE / 10 {
                        buf.push_str(&line(input, n, 0));
                        buf.push('\n');
                        n += 1;
                    }
                    f.write_all(buf.as_bytes()).expect("write rotated log file");
                    out.lines = n;
                }
                Rotation::Kubelet => {
                    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                    let rotated = dir.join(format!("0.log.{}-{:06}", stamp.as_secs(), out.rotations));
                    fs::rename(&path, &rotated).expect("rename container log");
                }
            }
            f = open(&path);
        }
        thread::sleep(TICK.saturating_sub(tick_start.elapsed()));
    }
    out
}

/// `payload` as a CRI log line; every 20th line is split into a `P` piece
/// and an `F` piece, as the runtime does with long lines.
fn cri(payload: &str, n: u64) -> String {
    let ts = format!("{:.9}", jiff::Timestamp::now());
    if n % 20 == 0 {
        let (a, b) = payload.split_at(payload.len() / 2);
        format!("{ts} stdout P {a}\n{ts} stdout F {b}")
    } else {
        format!("{ts} stdout F {payload}")
    }
}

/// Sends `RATE` lines a second of `input` over connections `connect` makes,
/// reconnecting when sluice goes away, until `stop`.
fn socket_sender<S: Write>(input: usize, connect: impl Fn() -> io::Result<S>, stop: Arc<AtomicBool>) -> Written {
    let mut out = Written::default();
    let mut conn: Option<S> = None;
    let mut n = 0u64;
    let mut stop_seen: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let tick_start = Instant::now();
        if conn.is_none() {
            match connect() {
                Ok(s) => {
                    conn = Some(s);
                    out.conns.push(Conn {
                        first: n,
                        end: n,
                        opened: Instant::now(),
                        broken: None,
                        abandoned: false,
                    });
                }
                Err(_) => {
                    thread::sleep(TICK);
                    continue;
                }
            }
        }
        let conn_id = out.conns.len() as u64;
        let (Some(s), Some(c)) = (conn.as_mut(), out.conns.last_mut()) else {
            continue;
        };
        let mut buf = String::new();
        for _ in 0..RATE / 10 {
            buf.push_str(&line(input, n, conn_id));
            buf.push('\n');
            n += 1;
        }
        c.end = n;
        out.lines = n;
        // Writes time out (set by `connect`) so the stop flag is seen while
        // sluice holds the sender back; the buffer is always finished, or
        // the connection given up, never left with half a line.
        let bytes = buf.as_bytes();
        let mut off = 0;
        while off < bytes.len() {
            match s.write(&bytes[off..]) {
                Ok(0) => {
                    c.broken = Some(Instant::now());
                    break;
                }
                Ok(k) => off += k,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        let since = *stop_seen.get_or_insert_with(Instant::now);
                        if since.elapsed() > SENDER_FINISH {
                            c.abandoned = true;
                            break;
                        }
                    }
                }
                Err(_) => {
                    c.broken = Some(Instant::now());
                    break;
                }
            }
        }
        if c.broken.is_some() || c.abandoned {
            conn = None;
            if c.abandoned {
                break;
            }
        }
        thread::sleep(TICK.saturating_sub(tick_start.elapsed()));
    }
    // A clean close: everything sent must arrive.
    drop(conn);
    out
}

/// Counts failed delivery reports of the input producer.
struct CountErrors(Arc<AtomicU64>);

impl ClientContext for CountErrors {}

impl ProducerContext for CountErrors {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Produces `RATE` lines a second to `soak-in` until `stop`, then flushes.
/// Messages never time out: a broker that is down only delays them.
fn kafka_producer(bootstrap: String, stop: Arc<AtomicBool>) -> Written {
    let errors = Arc::new(AtomicU64::new(0));
    let producer: BaseProducer<CountErrors> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("message.timeout.ms", "0")
        // A batch a second per partition (~30 lines), not one per tick:
        // tansu keeps each batch as an object in s3s-fs and lists the
        // partition's objects on every fetch, so reading a topic back
        // costs (objects)^2. See `TopicReader`.
        .set("linger.ms", "1000")
        .set("reconnect.backoff.max.ms", "1000")
        .create_with_context(CountErrors(errors.clone()))
        .expect("input producer");
    let mut out = Written::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let tick_start = Instant::now();
        for _ in 0..RATE / 10 {
            let payload = line(KAFKA, n, 0);
            let partition = (n % 2) as i32;
            loop {
                match producer.send(BaseRecord::<(), _>::to("soak-in").partition(partition).payload(&payload)) {
                    Ok(()) => break,
                    Err((e, _)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => {
                        producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => {
                        out.problems.push(format!("producing to soak-in: {e}"));
                        break;
                    }
                }
            }
            n += 1;
        }
        producer.poll(Duration::ZERO);
        out.lines = n;
        thread::sleep(TICK.saturating_sub(tick_start.elapsed()));
    }
    if let Err(e) = producer.flush(Duration::from_secs(60)) {
        out.problems.push(format!("flushing the soak-in producer: {e}"));
    }
    out.delivery_errors = errors.load(Ordering::Relaxed);
    out
}

// ---------------------------------------------------------------------------
// sluice under supervision, and a sampler of /proc and /metrics
// ---------------------------------------------------------------------------

/// One run of the sluice process, from start to kill or exit.
struct Lifetime {
    started: Instant,
    pid: u32,
    log: PathBuf,
    /// How it ended, once it did.
    end: Option<(Instant, End)>,
    /// VmHWM when it ended (KiB).
    hwm_kib: u64,
}

#[derive(Debug)]
enum End {
    /// The soak killed it (SIGKILL).
    Killed,
    /// It exited by itself: a crash or a refusal to start.
    Exited(ExitStatus),
    /// SIGTERM at the end of the run.
    Stopped(ExitStatus),
}

/// One sample of the running process.
#[derive(Clone)]
struct Sample {
    at: Instant,
    lifetime: usize,
    rss_kib: u64,
    hwm_kib: u64,
    fds: usize,
    /// `sluice_source_events_total` by source, `sluice_sink_events_total`,
    /// `sluice_buffer_bytes`, `sluice_buffer_events` and
    /// `sluice_buffer_received_events_total` by sink, as `source:<name>`,
    /// `sink:<name>`, `buffer_bytes:<name>`, `buffer_events:<name>`,
    /// `received:<name>`.
    counters: BTreeMap<String, f64>,
}

/// Starts, kills and restarts sluice; samples it.
struct Supervisor {
    bin: PathBuf,
    config: PathBuf,
    /// Where each process's log is kept (`sluice-<k>.log`).
    dir: PathBuf,
    /// `host:port` of the API (fixed in the config: every process has it).
    api: String,
    env: Vec<(String, String)>,
    child: Option<Sluice>,
    lifetimes: Vec<Lifetime>,
    /// The pid the sampler watches (0: none) and its lifetime index.
    watched: Arc<(AtomicU32, AtomicU64)>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Supervisor {
    /// Starts sluice and waits until it serves `/health`. `Err` says why it
    /// did not (it exited, or never served).
    fn start(&mut self) -> Result<(), String> {
        let k = self.lifetimes.len();
        let log = self.dir.join(format!("sluice-{k}.log"));
        let child = Sluice::builder()
            .bin(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(support::Stdout::Null)
            .log_to(&log)
            .start();
        let pid = child.pid();
        self.lifetimes.push(Lifetime {
            started: Instant::now(),
            pid,
            log: log.clone(),
            end: None,
            hwm_kib: 0,
        });
        let serving = child.wait_serving(START_TIMEOUT);
        self.child = Some(child);
        if let Err(e) = serving {
            // Records the exit, if that is why.
            self.exited();
            return Err(format!("{e}; log tail:\n{}", tail(&log, 30)));
        }
        self.watched.0.store(pid, Ordering::SeqCst);
        self.watched.1.store(k as u64, Ordering::SeqCst);
        Ok(())
    }

    /// If sluice exited by itself, records it and returns the status.
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_ref()?.try_status()?;
        self.child = None;
        self.watched.0.store(0, Ordering::SeqCst);
        if let Some(l) = self.lifetimes.last_mut() {
            l.end = Some((Instant::now(), End::Exited(status)));
        }
        Some(status)
    }

    /// Samples it once more, then SIGKILL; returns when it died (the end
    /// of its lifetime).
    fn kill9(&mut self) -> Option<Instant> {
        let child = self.child.take()?;
        let k = self.lifetimes.len() - 1;
        let sample = sample(child.pid(), k, &self.api);
        self.watched.0.store(0, Ordering::SeqCst);
        let hwm = sample.hwm_kib;
        self.samples.lock().expect("samples").push(sample);
        // The kill time is taken before the signal: a sender sees its
        // connection fail at once, and a kill recorded after the reap
        // would look later than the failure it caused.
        let (_, _, died) = child.kill9_timed();
        let l = &mut self.lifetimes[k];
        l.hwm_kib = hwm;
        l.end = Some((died, End::Killed));
        Some(died)
    }

    /// SIGTERM, and waits for the exit (bounded; killed after `timeout`).
    fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.take()?;
        let k = self.lifetimes.len() - 1;
        self.lifetimes[k].hwm_kib = try_proc_status_kib(child.pid(), "VmHWM").unwrap_or(0);
        self.watched.0.store(0, Ordering::SeqCst);
        child.signal(libc::SIGTERM);
        let status = child.wait_timeout(timeout);
        if let Some(s) = status {
            self.lifetimes[k].end = Some((Instant::now(), End::Stopped(s)));
        }
        // Dropping `child` kills one that did not exit.
        status
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Open descriptors of a process (0 if it is gone).
fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Open descriptors of a process by what they point at: `socket`, `pipe`,
/// `anon_inode` (epoll, eventfd, ...), `log file` (under `logs`), `data
/// dir` (under `data_dir`), `deleted file`, `other file`.
fn fd_kinds(pid: u32, logs: &Path, data_dir: &Path) -> BTreeMap<&'static str, usize> {
    let mut kinds = BTreeMap::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        let Ok(target) = fs::read_link(e.path()) else { continue };
        let t = target.to_string_lossy();
        let kind = if t.starts_with("socket:") {
            "socket"
        } else if t.starts_with("pipe:") {
            "pipe"
        } else if t.starts_with("anon_inode:") {
            "anon_inode"
        } else if t.ends_with(" (deleted)") {
            "deleted file"
        } else if target.starts_with(logs) {
            "log file"
        } else if target.starts_with(data_dir) {
            "data dir"
        } else {
            "other file"
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// The descriptors of `pid` sampled every second for `window`: the sample
/// with the fewest (`Less`) or the most (`Greater`).
fn fd_extreme(pid: u32, logs: &Path, data_dir: &Path, window: Duration, want: std::cmp::Ordering) -> BTreeMap<&'static str, usize> {
    let total = |k: &BTreeMap<&'static str, usize>| k.values().sum::<usize>();
    let end = Instant::now() + window;
    let mut best = fd_kinds(pid, logs, data_dir);
    while Instant::now() < end {
        thread::sleep(Duration::from_secs(1));
        let k = fd_kinds(pid, logs, data_dir);
        if total(&k).cmp(&total(&best)) == want {
            best = k;
        }
    }
    best
}

/// `{"socket": 12, ...}` as `12 socket, ...`, with the total first.
fn kinds_text(kinds: &BTreeMap<&'static str, usize>) -> String {
    let total: usize = kinds.values().sum();
    let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!("{total} ({})", parts.join(", "))
}

/// One sample of process `pid` (lifetime `k`) and its `/metrics` (no
/// counters when it does not answer: it may be killed at any moment).
fn sample(pid: u32, k: usize, api: &str) -> Sample {
    let mut counters = BTreeMap::new();
    if let Ok(m) = support::try_scrape(api) {
        for s in &m.samples {
            let (kind, label) = match s.name.as_str() {
                "sluice_source_events_total" => ("source", "source"),
                "sluice_sink_events_total" => ("sink", "sink"),
                "sluice_buffer_bytes" => ("buffer_bytes", "sink"),
                "sluice_buffer_events" => ("buffer_events", "sink"),
                "sluice_buffer_received_events_total" => ("received", "sink"),
                _ => continue,
            };
            if let Some(name) = s.labels.get(label) {
                counters.insert(format!("{kind}:{name}"), s.value);
            }
        }
    }
    Sample {
        at: Instant::now(),
        lifetime: k,
        rss_kib: try_proc_status_kib(pid, "VmRSS").unwrap_or(0),
        hwm_kib: try_proc_status_kib(pid, "VmHWM").unwrap_or(0),
        fds: fd_count(pid),
        counters,
    }
}

/// Samples the watched process every `SAMPLE_EVERY` until `stop`.
fn spawn_sampler(
    watched: Arc<(AtomicU32, AtomicU64)>,
    samples: Arc<Mutex<Vec<Sample>>>,
    api: String,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let pid = watched.0.load(Ordering::SeqCst);
            let k = watched.1.load(Ordering::SeqCst) as usize;
            if pid != 0 {
                let s = sample(pid, k, &api);
                // Keep it only if the process was the same throughout.
                if watched.0.load(Ordering::SeqCst) == pid && s.rss_kib > 0 {
                    samples.lock().expect("samples").push(s);
                }
            }
            thread::sleep(SAMPLE_EVERY);
        }
    })
}

/// A counter of lifetime `k` at time `t`: from the last sample at or before
/// `t` (0 before its first sample: counters start at 0 with the process).
fn counter_at(samples: &[Sample], k: usize, t: Instant, key: &str) -> f64 {
    samples
        .iter()
        .rfind(|s| s.lifetime == k && s.at <= t)
        .and_then(|s| s.counters.get(key).copied())
        .unwrap_or(0.0)
}

/// How much `key` grew in lifetime `k` during the `DUPLICATE_WINDOW` before `t`.
fn grew_before(samples: &[Sample], k: usize, t: Instant, key: &str) -> f64 {
    let from = t.checked_sub(DUPLICATE_WINDOW).unwrap_or(t);
    (counter_at(samples, k, t, key) - counter_at(samples, k, from, key)).max(0.0)
}

/// What sink `sink` may have handed its backend, unacknowledged, when
/// lifetime `k` ended (or its backend stopped) at `t`: the most events its
/// disk buffer held in the `DUPLICATE_WINDOW` before, capped at the read
/// ahead, which is all a sink ever has in flight. A backend may have kept
/// all of them without its acknowledgements arriving (Kafka's delivery
/// reports, while a backlog drains after the broker comes back), and they
/// are delivered again: at-least-once.
fn in_flight_before(samples: &[Sample], k: usize, t: Instant, sink: &str) -> f64 {
    let key = format!("buffer_events:{sink}");
    let most = window_before(samples, k, t)
        .filter_map(|s| s.counters.get(&key).copied())
        .fold(0.0, f64::max);
    most.min(DISK_READ_AHEAD_EVENTS as f64)
}

/// What sink `sink` had taken in lifetime `k` that another sink had not
/// yet, at most, in the `DUPLICATE_WINDOW` before `t`: a source's
/// checkpoint waits for every sink, so while one lags (its buffer full and
/// blocking) the others deliver events a crash makes the sources read
/// again.
fn taken_ahead(samples: &[Sample], k: usize, t: Instant, sink: &str) -> f64 {
    let received = |s: &Sample, sink: &str| s.counters.get(&format!("received:{sink}")).copied().unwrap_or(0.0);
    window_before(samples, k, t)
        .map(|s| received(s, sink) - SINKS.iter().map(|o| received(s, o)).fold(f64::INFINITY, f64::min))
        .fold(0.0, f64::max)
}

/// The samples of lifetime `k` taken in the `DUPLICATE_WINDOW` before `t`.
fn window_before(samples: &[Sample], k: usize, t: Instant) -> impl Iterator<Item = &Sample> {
    let from = t.checked_sub(DUPLICATE_WINDOW).unwrap_or(t);
    samples.iter().filter(move |s| s.lifetime == k && from <= s.at && s.at <= t)
}

/// The lifetime running at `t`, if any.
fn lifetime_at(lifetimes: &[Lifetime], t: Instant) -> Option<usize> {
    lifetimes
        .iter()
        .position(|l| l.started <= t && l.end.as_ref().is_none_or(|(e, _)| t <= *e))
}

// ---------------------------------------------------------------------------
// Reading back what the destinations hold
// ---------------------------------------------------------------------------

/// Reads a topic from the beginning with one consumer per partition (tansu
/// answers a multi-partition fetch with one partition) and keeps its place,
/// so each call reads only what is new.
///
/// Reading back is slow on tansu with its data in s3s-fs: tansu keeps each
/// produced batch as one object and lists every object of the partition
/// for each batch it fetches, so a topic of `b` batches costs `b^2` object
/// listings (librdkafka's default `linger.ms` of 5 ms made a batch of one
/// or two lines: after a 10-minute run, ~15 lines/s were read back). Both
/// producers therefore linger a second (about 30 lines a batch in
/// `soak-in`, 150 in `soak-out`), and the reader asks for short waits
/// (`fetch.wait.max.ms`: tansu sleeps out half the remaining wait even
/// when it has data).
struct TopicReader {
    topic: String,
    consumers: Vec<BaseConsumer>,
    /// Per partition: the offset after the last message read.
    next: Vec<i64>,
    tally: Tally,
    /// Messages read so far.
    read: u64,
}

impl TopicReader {
    fn new(bootstrap: &str, topic: &str, partitions: i32) -> TopicReader {
        let consumers: Vec<BaseConsumer> = (0..partitions)
            .map(|p| {
                let c: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", bootstrap)
                    .set("group.id", format!("soak-reader-{topic}"))
                    .set("enable.auto.commit", "false")
                    .set("enable.partition.eof", "false")
                    .set("fetch.wait.max.ms", "50")
                    .set("fetch.error.backoff.ms", "100")
                    .create()
                    .expect("consumer");
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
                c.assign(&tpl).expect("assign");
                c
            })
            .collect();
        TopicReader {
            topic: topic.to_string(),
            next: vec![0; consumers.len()],
            consumers,
            tally: Tally::default(),
            read: 0,
        }
    }

    /// Reads up to each partition's high watermark as it is now, then
    /// until nothing new came for `quiet`; `Err` after `limit`. (tansu's
    /// high watermark is the base offset of the last batch plus one, so
    /// reaching it means the last batch is being read; the quiet period
    /// takes the rest of it.)
    fn catch_up(&mut self, quiet: Duration, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut ends = Vec::with_capacity(self.consumers.len());
        for (p, c) in self.consumers.iter().enumerate() {
            let (_, high) = c
                .fetch_watermarks(&self.topic, p as i32, Duration::from_secs(10))
                .map_err(|e| format!("watermarks of {} partition {p}: {e}", self.topic))?;
            ends.push(high);
        }
        let mut last = Instant::now();
        loop {
            let reached = self.next.iter().zip(&ends).all(|(n, e)| n >= e);
            if reached && last.elapsed() >= quiet {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "reading {}: at offsets {:?}, the ends were {ends:?}, after {limit:?}",
                    self.topic, self.next
                ));
            }
            for (p, c) in self.consumers.iter().enumerate() {
                while let Some(m) = c.poll(Duration::from_millis(20)) {
                    let m = m.map_err(|e| format!("consuming {}: {e}", self.topic))?;
                    self.tally.add(m.payload().unwrap_or_default());
                    self.read += 1;
                    self.next[p] = m.offset() + 1;
                    last = Instant::now();
                }
            }
        }
    }
}

/// Reads every S3 object under `bucket` (zstd NDJSON) once, remembering the
/// ones read (an object is never rewritten: each key is new).
struct S3Reader {
    root: PathBuf,
    /// Path → its tally and the size it had.
    objects: BTreeMap<PathBuf, (u64, Tally)>,
    /// Objects that do not decode whole, with the error.
    unreadable: BTreeMap<PathBuf, String>,
}

impl S3Reader {
    fn read(&mut self) -> Tally {
        let mut files = Vec::new();
        walk(&self.root, &mut files);
        for p in files {
            if !p.to_string_lossy().ends_with(".ndjson.zst") {
                continue;
            }
            let size = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            if self.objects.get(&p).is_some_and(|(s, _)| *s == size) {
                continue;
            }
            let mut tally = Tally::default();
            let data = fs::read(&p).unwrap_or_default();
            let mut text = Vec::new();
            let result = zstd::stream::read::Decoder::new(&data[..]).and_then(|mut d| d.read_to_end(&mut text));
            if let Err(e) = result {
                self.unreadable.insert(p.clone(), e.to_string());
            } else {
                self.unreadable.remove(&p);
            }
            for l in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                tally.add(l);
            }
            self.objects.insert(p, (size, tally));
        }
        let mut all = Tally::default();
        for (_, t) in self.objects.values() {
            for (i, v) in t.copies.iter().enumerate() {
                let a = &mut all.copies[i];
                if a.len() < v.len() {
                    a.resize(v.len(), 0);
                }
                for (n, c) in v.iter().enumerate() {
                    a[n] += c;
                }
            }
            all.foreign += t.foreign;
        }
        all
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Everything the Loki receiver accepted.
fn loki_tally(loki: &support::Loki) -> Result<Tally, String> {
    let mut t = Tally::default();
    for s in loki.received()? {
        for e in s.entries {
            t.add(e.line.as_bytes());
        }
    }
    Ok(t)
}

// ---------------------------------------------------------------------------
// Accounting
// ---------------------------------------------------------------------------

/// What each input is known to have put in: copies of each line (1, or as
/// many as the input topic holds for Kafka).
struct Expected {
    /// `copies[input][n]`; a line with 0 copies is not expected.
    copies: [Vec<u32>; 5],
    /// Socket inputs: their connections.
    conns: [Vec<Conn>; 5],
}

/// One sink's count for one input.
#[derive(Default, Clone, Copy)]
struct Count {
    expected: u64,
    /// Distinct expected lines that arrived.
    arrived: u64,
    /// Lines missing that no crash excuses.
    lost: u64,
    /// Socket lines missing at the tail of a connection a kill cut.
    in_flight: u64,
    /// Copies beyond what the input holds.
    duplicates: u64,
    /// Lines that arrived but were never written.
    unexpected: u64,
}

/// Counts `got` against `want` for one input; `kills` excuse socket tails.
fn count(input: usize, want: &Expected, got: &Tally, kills: &[Instant], lost_examples: &mut Vec<String>) -> Count {
    let mut c = Count::default();
    let exp = &want.copies[input];
    let mut missing = vec![false; exp.len()];
    for (n, &w) in exp.iter().enumerate() {
        if w == 0 {
            continue;
        }
        c.expected += 1;
        let g = got.get(input, n as u64);
        if g == 0 {
            missing[n] = true;
        } else {
            c.arrived += 1;
            c.duplicates += g.saturating_sub(w) as u64;
        }
    }
    c.unexpected = got.copies[input]
        .iter()
        .enumerate()
        .skip(exp.len())
        .map(|(_, &g)| g as u64)
        .sum::<u64>()
        + got.copies[input]
            .iter()
            .enumerate()
            .take(exp.len())
            .filter(|(n, g)| **g > 0 && exp[*n] == 0)
            .count() as u64;
    let excused = excused_tails(input, want, got, kills);
    for (n, &m) in missing.iter().enumerate() {
        if !m {
            continue;
        }
        if excused[n] {
            c.in_flight += 1;
        } else {
            c.lost += 1;
            if lost_examples.len() < 10 {
                lost_examples.push(format!("{}-{n}", INPUTS[input]));
            }
        }
    }
    c
}

/// The lost lines of `input` at `got`, as inclusive ranges.
fn lost_ranges(input: usize, want: &Expected, got: &Tally, kills: &[Instant]) -> Vec<(u64, u64)> {
    let excused = excused_tails(input, want, got, kills);
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (n, &w) in want.copies[input].iter().enumerate() {
        let n = n as u64;
        if w == 0 || got.get(input, n) > 0 || excused.get(n as usize).copied().unwrap_or(false) {
            continue;
        }
        match out.last_mut() {
            Some((_, to)) if *to + 1 == n => *to = n,
            _ => out.push((n, n)),
        }
    }
    out
}

/// Which lines of a socket input are the tail of a connection a kill cut
/// and never arrived at `got`.
fn excused_tails(input: usize, want: &Expected, got: &Tally, kills: &[Instant]) -> Vec<bool> {
    let mut excused = vec![false; want.copies[input].len()];
    for conn in &want.conns[input] {
        if cutting_kill(conn, kills).is_none() {
            continue;
        }
        let last_arrived = (conn.first..conn.end).rev().find(|n| got.get(input, *n) > 0);
        for n in last_arrived.map_or(conn.first, |n| n + 1)..conn.end {
            if let Some(e) = excused.get_mut(n as usize) {
                *e = true;
            }
        }
    }
    excused
}

/// The kill that cut connection `c`, if one did.
fn cutting_kill(c: &Conn, kills: &[Instant]) -> Option<usize> {
    let broken = c.broken?;
    kills.iter().position(|k| c.opened <= *k && *k <= broken)
}

/// Socket lines missing at `got` from the tails of the connections kill
/// `k` cut (the same lines [`count`] excuses).
fn tail_lost_at_kill(input: usize, want: &Expected, got: &Tally, kills: &[Instant], k: usize) -> u64 {
    want.conns[input]
        .iter()
        .filter(|c| cutting_kill(c, kills) == Some(k))
        .map(|c| {
            let last = (c.first..c.end).rev().find(|n| got.get(input, *n) > 0);
            (last.map_or(c.first, |n| n + 1)..c.end).filter(|n| got.get(input, *n) == 0).count() as u64
        })
        .sum()
}

/// Duplicates each sink may show: for every kill, what the re-readable
/// sources read and what the sink delivered in the `DUPLICATE_WINDOW`
/// before it, what it had in flight ([`in_flight_before`]) and what it had
/// taken ahead of a lagging sink ([`taken_ahead`]); for every broker stop,
/// what the Kafka source read in the window before it, what each sink had
/// taken ahead, and what the Kafka sink delivered and had in flight; for
/// every S3 stop, what
/// the S3 sink delivered and had in flight. Loki's 429 and 500
/// store nothing, so they excuse no duplicate.
fn duplicate_allowance(
    samples: &[Sample],
    lifetimes: &[Lifetime],
    kills: &[Instant],
    broker_stops: &[Instant],
    s3_stops: &[Instant],
) -> [f64; 3] {
    let mut allow = [0.0; 3];
    let reread = |k: usize, t: Instant, sources: &[&str]| -> f64 {
        sources.iter().map(|s| grew_before(samples, k, t, &format!("source:{s}"))).sum()
    };
    // What sink `i` delivered in the window before `t`, and had in flight.
    let resent = |k: usize, t: Instant, i: usize| -> f64 {
        grew_before(samples, k, t, &format!("sink:{}", SINKS[i])) + in_flight_before(samples, k, t, SINKS[i])
    };
    // What the sources read again because another sink had not taken it.
    let ahead = |k: usize, t: Instant, i: usize| taken_ahead(samples, k, t, SINKS[i]);
    for &t in kills {
        // The lifetime that ended at `t`; its last sample was taken just
        // before the kill.
        let Some(k) = lifetimes.iter().position(|l| matches!(l.end, Some((e, End::Killed)) if e == t)) else {
            continue;
        };
        let r = reread(k, t, &REREAD_SOURCES);
        for (i, a) in allow.iter_mut().enumerate() {
            *a += r + resent(k, t, i) + ahead(k, t, i);
        }
    }
    for &t in broker_stops {
        if let Some(k) = lifetime_at(lifetimes, t) {
            let r = reread(k, t, &["kafka_in"]);
            for (i, a) in allow.iter_mut().enumerate() {
                *a += r + ahead(k, t, i);
            }
            allow[SINK_KAFKA] += resent(k, t, SINK_KAFKA);
        }
    }
    for &t in s3_stops {
        if let Some(k) = lifetime_at(lifetimes, t) {
            allow[SINK_S3] += resent(k, t, SINK_S3);
        }
    }
    allow
}

// ---------------------------------------------------------------------------
// The config
// ---------------------------------------------------------------------------

struct Places<'a> {
    data_dir: &'a Path,
    logs: &'a Path,
    sock: &'a Path,
    api: &'a str,
    tcp: &'a str,
    kafka: &'a str,
    s3: &'a str,
    loki: &'a str,
}

fn config(p: &Places<'_>) -> String {
    let disk_buffer = |sink: &str| {
        format!(
            "[sinks.{sink}.buffer]\ntype = \"disk\"\nmax_bytes = \"{DISK_BUFFER_MIB}MiB\"\nmax_events = {DISK_READ_AHEAD_EVENTS}\nwhen_full = \"block\"\n"
        )
    };
    let interval = format!("{}s", CHECKPOINT_INTERVAL.as_secs());
    format!(
        r#"data_dir = "{data_dir}"
shutdown_timeout = "20s"

[api]
address = "{api}"

[sources.app_files]
type = "file"
include = ["{logs}/app/*.log"]
format = "lines"
checkpoint_interval = "{interval}"

[sources.pods]
type = "file"
include = ["{logs}/pods/**/*.log"]
checkpoint_interval = "{interval}"

[sources.pods.kubernetes]
enabled = true

[sources.tcp]
type = "socket"
mode = "tcp"
address = "{tcp}"

[sources.unix]
type = "socket"
mode = "unix_stream"
path = "{sock}"

[sources.kafka_in]
type = "kafka"
bootstrap_servers = "{kafka}"
topics = ["soak-in"]
group_id = "soak"
session_timeout = "6s"
commit_interval = "{interval}"

[sources.kafka_in.librdkafka_options]
"heartbeat.interval.ms" = "500"
"reconnect.backoff.max.ms" = "1000"

[sinks.kafka]
type = "kafka"
bootstrap_servers = "{kafka}"
topic = "soak-out"
healthcheck = false

[sinks.kafka.librdkafka_options]
"reconnect.backoff.max.ms" = "1000"
# Batches of up to a second (librdkafka's default, 5 ms, makes one or two
# lines a batch, and tansu an object per batch: too many to read back).
"linger.ms" = "1000"

{kafka_buffer}
[sinks.s3]
type = "s3"
bucket = "soak"
endpoint = "{s3}"
region = "us-east-1"
key_prefix = "soak/"
compression = "zstd"
healthcheck = false

[sinks.s3.batch]
max_bytes = "1MiB"
timeout = "3s"

[sinks.s3.retry]
max_backoff = "2s"

{s3_buffer}
[sinks.loki]
type = "loki"
endpoint = "{loki}"
healthcheck = false

[sinks.loki.retry]
max_backoff = "2s"

{loki_buffer}"#,
        data_dir = p.data_dir.display(),
        api = p.api,
        logs = p.logs.display(),
        tcp = p.tcp,
        sock = p.sock.display(),
        kafka = p.kafka,
        s3 = p.s3,
        loki = p.loki,
        kafka_buffer = disk_buffer("kafka"),
        s3_buffer = disk_buffer("s3"),
        loki_buffer = disk_buffer("loki"),
    )
}

// ---------------------------------------------------------------------------
// The soak
// ---------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
#[ignore = "the chaos soak: run it with scripts/soak"]
fn chaos_soak_loses_no_line_and_stays_within_its_budgets() {
    let fault_phase = Duration::from_secs(env_u64("SLUICE_SOAK_SECONDS").unwrap_or(60));
    let seed = env_u64("SLUICE_SOAK_SEED")
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64)
        | 1;
    let bin = std::env::var_os("SLUICE_SOAK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice")));
    let mut rng = XorShift(seed);
    let t0 = Instant::now();
    let secs = |t: Instant| t.duration_since(t0).as_secs_f64();
    eprintln!("soak: {}s of faults, seed {seed}, sluice {}", fault_phase.as_secs(), bin.display());

    // The data dir first: without root there is no soak.
    let tmpfs = NearlyFullTmpfs::mount();
    let work = tempfile::tempdir().expect("temp dir");
    let logs = work.path().join("logs");
    let app_dir = logs.join("app");
    let pod_dir = logs.join("pods/soak_web-0_5f0c2a1e/web");
    fs::create_dir_all(&app_dir).expect("mkdir app logs");
    fs::create_dir_all(&pod_dir).expect("mkdir pod logs");
    let sock = work.path().join("app.sock");
    // sluice's own logs, one per process: kept where SLUICE_SOAK_LOGS says.
    let log_dir = std::env::var_os("SLUICE_SOAK_LOGS").map_or_else(|| work.path().to_path_buf(), PathBuf::from);
    fs::create_dir_all(&log_dir).expect("mkdir log dir");

    // Services.
    let mut broker = support::Kafka::start_persistent();
    broker.create_topic("soak-in", 2);
    broker.create_topic("soak-out", 2);
    let mut s3 = support::S3::start();
    s3.create_bucket("soak");
    let loki = support::Loki::start();

    let api_addr = format!("127.0.0.1:{}", support::free_port());
    let tcp_addr = format!("127.0.0.1:{}", support::free_port());
    let config_path = work.path().join("sluice.toml");
    fs::write(
        &config_path,
        config(&Places {
            data_dir: &tmpfs.data_dir,
            logs: &logs,
            sock: &sock,
            api: &api_addr,
            tcp: &tcp_addr,
            kafka: &broker.addr,
            s3: &s3.endpoint,
            loki: &loki.url,
        }),
    )
    .expect("write config");

    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut sup = Supervisor {
        bin: bin.clone(),
        config: config_path,
        dir: log_dir.clone(),
        api: api_addr.clone(),
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), s3.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key.clone()),
        ],
        child: None,
        lifetimes: Vec::new(),
        watched: Arc::new((AtomicU32::new(0), AtomicU64::new(0))),
        samples: samples.clone(),
    };
    let mut failures: Vec<String> = Vec::new();
    if let Err(e) = sup.start() {
        panic!("sluice does not start on the soak config: {e}");
    }
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_sampler(sup.watched.clone(), samples.clone(), sup.api.clone(), sampler_stop.clone());

    // Writers.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<(usize, JoinHandle<Written>)> = vec![
        (LOGROTATE, {
            let (p, s) = (app_dir.join("app.log"), stop.clone());
            spawn_writer("logrotate", move || {
                file_writer(LOGROTATE, p, Rotation::Logrotate, Duration::from_secs(8), s)
            })
        }),
        (KUBELET, {
            let (p, s) = (pod_dir.join("0.log"), stop.clone());
            spawn_writer("kubelet", move || {
                file_writer(KUBELET, p, Rotation::Kubelet, Duration::from_secs(6), s)
            })
        }),
        (TCP, {
            let (a, s) = (tcp_addr.clone(), stop.clone());
            spawn_writer("tcp", move || {
                socket_sender(
                    TCP,
                    || {
                        let c = TcpStream::connect(&a)?;
                        c.set_write_timeout(Some(Duration::from_millis(500)))?;
                        Ok(c)
                    },
                    s,
                )
            })
        }),
        (UNIX, {
            let (p, s) = (sock.clone(), stop.clone());
            spawn_writer("unix", move || {
                socket_sender(
                    UNIX,
                    || {
                        let c = UnixStream::connect(&p)?;
                        c.set_write_timeout(Some(Duration::from_millis(500)))?;
                        Ok(c)
                    },
                    s,
                )
            })
        }),
        (KAFKA, {
            let (b, s) = (broker.addr.clone(), stop.clone());
            spawn_writer("kafka", move || kafka_producer(b, s))
        }),
    ];

    // Faults, all at once, until the end of the fault phase.
    let end = t0 + fault_phase;
    let mut next_kill = t0 + rng.secs(30, 90);
    if next_kill + Duration::from_secs(10) > end {
        // A short run still has a crash, half way.
        next_kill = t0 + fault_phase / 2;
    }
    let mut broker_outage = Outage::new("broker", t0 + rng.secs(10, 40), (30, 60));
    let mut s3_outage = Outage::new("S3", t0 + rng.secs(5, 30), (25, 50));
    let mut next_loki = t0 + rng.secs(5, 15);
    let mut kills = Vec::new();
    let mut loki_bursts: BTreeMap<&str, (u32, u64)> = BTreeMap::new();
    let mut crash_loop = false;
    while Instant::now() < end && !crash_loop {
        let now = Instant::now();
        if let Some(status) = sup.exited() {
            failures.push(format!(
                "sluice exited by itself at {:.1}s ({status}); log tail:\n{}",
                secs(now),
                tail(&sup.lifetimes.last().expect("lifetime").log, 30)
            ));
            if let Err(e) = sup.start() {
                failures.push(format!("crash loop: sluice does not come back: {e}"));
                crash_loop = true;
            }
            continue;
        }
        if now >= next_kill {
            kills.extend(sup.kill9());
            eprintln!("soak: {:.1}s kill -9 (lifetime {})", secs(now), sup.lifetimes.len() - 1);
            thread::sleep(rng.secs(0, 2));
            if let Err(e) = sup.start() {
                failures.push(format!("crash loop: sluice does not come back after kill -9: {e}"));
                crash_loop = true;
            }
            next_kill = Instant::now() + rng.secs(30, 90);
        }
        match broker_outage.due(now, &mut rng, secs(now)) {
            Some(Change::Down) => broker.down(),
            Some(Change::Up) => broker.up(),
            None => {}
        }
        match s3_outage.due(now, &mut rng, secs(now)) {
            Some(Change::Down) => s3.stop(),
            Some(Change::Up) => s3.start_again(),
            None => {}
        }
        if now >= next_loki {
            let (mode, name) = if rng.next() % 2 == 0 {
                (support::LokiMode::TooManyRequests, "429")
            } else {
                (support::LokiMode::ServerError, "500")
            };
            let count = 3 + (rng.next() % 10) as u32;
            loki.set_mode(mode, Some(count));
            let e = loki_bursts.entry(name).or_default();
            e.0 += 1;
            e.1 += count as u64;
            next_loki = now + rng.secs(8, 20);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let faults_ended = Instant::now();

    // The end: writers stop, services come back, Loki accepts.
    stop.store(true, Ordering::Relaxed);
    if broker_outage.end() {
        broker.up();
    }
    if s3_outage.end() {
        s3.start_again();
    }
    loki.set_mode(support::LokiMode::Ok, None);
    let mut written: [Written; 5] = Default::default();
    for (input, h) in writers {
        match h.join() {
            Ok(w) => written[input] = w,
            Err(_) => failures.push(format!("the {} writer panicked", INPUTS[input])),
        }
    }
    let writers_done = Instant::now();
    for (i, w) in written.iter().enumerate() {
        for p in &w.problems {
            failures.push(format!("{} writer: {p}", INPUTS[i]));
        }
        if w.delivery_errors > 0 {
            failures.push(format!("{} producer: {} delivery errors", INPUTS[i], w.delivery_errors));
        }
        let abandoned = w.conns.iter().filter(|c| c.abandoned).count();
        if abandoned > 0 {
            failures.push(format!(
                "{} sender: {abandoned} connection(s) still stalled {SENDER_FINISH:?} after the end",
                INPUTS[i]
            ));
        }
    }
    if sup.child.is_none() && !crash_loop {
        if let Err(e) = sup.start() {
            failures.push(format!("sluice does not start after the faults: {e}"));
        }
    }

    // What went in: the file and socket writers' counts; for Kafka, the
    // input topic as the broker holds it.
    let mut input_topic = TopicReader::new(&broker.addr, "soak-in", 2);
    let read_started = Instant::now();
    if let Err(e) = input_topic.catch_up(Duration::from_secs(3), Duration::from_secs(120)) {
        failures.push(e);
    }
    let input_read_in = read_started.elapsed();
    let mut expected = Expected {
        copies: Default::default(),
        conns: Default::default(),
    };
    for (i, w) in written.iter().enumerate() {
        expected.copies[i] = vec![1; w.lines as usize];
        expected.conns[i] = w.conns.clone();
    }
    expected.copies[KAFKA] = input_topic.tally.copies[KAFKA].clone();
    let kafka_in_missing = (0..written[KAFKA].lines).filter(|n| input_topic.tally.get(KAFKA, *n) == 0).count();

    // Drain: until every sink holds every expected line, or the timeout.
    let mut output_topic = TopicReader::new(&broker.addr, "soak-out", 2);
    let mut s3_reader = S3Reader {
        root: s3.root.path().join("soak"),
        objects: BTreeMap::new(),
        unreadable: BTreeMap::new(),
    };
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        if let Some(status) = sup.exited() {
            failures.push(format!(
                "sluice exited by itself while draining ({status}); log tail:\n{}",
                tail(&sup.lifetimes.last().expect("lifetime").log, 30)
            ));
        }
        // An unfinished read here is retried on the next round; the one
        // after shutdown counts.
        let _ = output_topic.catch_up(Duration::from_secs(2), Duration::from_secs(60));
        let loki_now = loki_tally(&loki).unwrap_or_else(|e| {
            failures.push(e);
            Tally::default()
        });
        let tallies = [output_topic.tally.clone(), s3_reader.read(), loki_now];
        let complete = tallies.iter().all(|t| {
            (0..5).all(|i| {
                let c = count(i, &expected, t, &kills, &mut Vec::new());
                c.lost == 0
            })
        });
        // Leave rotated files time to be let go (rotate_wait, 5 s) before
        // the descriptors are counted.
        if (complete && writers_done.elapsed() > Duration::from_secs(10)) || Instant::now() > drain_deadline || sup.child.is_none() {
            break;
        }
        thread::sleep(Duration::from_secs(5));
    }
    let drained_in = writers_done.elapsed();

    // Descriptors and memory of the last process, idle, then SIGTERM.
    let last_pid = sup.child.as_ref().map(|c| c.pid());
    let fds_end = last_pid.map(|p| fd_extreme(p, &logs, &tmpfs.data_dir, FD_IDLE_WINDOW, std::cmp::Ordering::Less));
    let stop_status = sup.stop(Duration::from_secs(40));
    sampler_stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    match stop_status {
        Some(s) if s.success() => {}
        Some(s) => failures.push(format!("sluice exited with {s} after SIGTERM")),
        None => {
            if last_pid.is_some() {
                failures.push("sluice did not exit within 40 s of SIGTERM".to_string());
            }
        }
    }
    // What arrived during shutdown counts too.
    let read_started = Instant::now();
    if let Err(e) = output_topic.catch_up(Duration::from_secs(2), Duration::from_secs(120)) {
        failures.push(e);
    }
    let output_read_in = read_started.elapsed();
    let loki_end = loki_tally(&loki).unwrap_or_else(|e| {
        failures.push(e);
        Tally::default()
    });
    let tallies = [output_topic.tally.clone(), s3_reader.read(), loki_end];
    let processes = sup.lifetimes.len();

    // The descriptor baseline: a fresh process on the same config and data
    // (everything is counted already), idle as long as the last one was.
    let fds_fresh = if fds_end.is_some() {
        match sup.start() {
            Ok(()) => {
                let kinds = sup
                    .child
                    .as_ref()
                    .map(|c| fd_extreme(c.pid(), &logs, &tmpfs.data_dir, FD_SETTLE, std::cmp::Ordering::Greater));
                match sup.stop(Duration::from_secs(40)) {
                    Some(s) if s.success() => {}
                    other => failures.push(format!("the baseline process did not stop cleanly: {other:?}")),
                }
                kinds
            }
            Err(e) => {
                failures.push(format!("sluice does not start again after the run: {e}"));
                None
            }
        }
    } else {
        None
    };

    // ---- The report ------------------------------------------------------
    let samples = samples.lock().expect("samples").clone();
    let mut report = String::new();
    let mut say = |s: String| {
        eprintln!("{s}");
        report.push_str(&s);
        report.push('\n');
    };
    say(format!(
        "== chaos soak: {}s of faults (seed {seed}), sluice {}",
        fault_phase.as_secs(),
        bin.display()
    ));
    say(format!(
        "faults: {} kill -9 ({} sluice processes); broker stopped {}x ({:.0}s down); S3 server stopped {}x ({:.0}s down); Loki bursts {}",
        kills.len(),
        processes,
        broker_outage.stops.len(),
        broker_outage.total.as_secs_f64(),
        s3_outage.stops.len(),
        s3_outage.total.as_secs_f64(),
        loki_bursts
            .iter()
            .map(|(k, (n, pushes))| format!("{k}: {n} bursts, {pushes} pushes"))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    say(format!(
        "data dir: tmpfs {} MiB, ballast {:.1} MiB ({:.0}%), {:.1} MiB free; disk buffers {DISK_BUFFER_MIB} MiB each (3 sinks)",
        TMPFS_BYTES >> 20,
        tmpfs.ballast as f64 / 1048576.0,
        TMPFS_FILL * 100.0,
        tmpfs.free_after_ballast as f64 / 1048576.0
    ));
    say(format!(
        "writers: logrotate {} rotations, kubelet {} rotations, tcp {} connections, unix {} connections; kafka input: {} produced, {} missing from soak-in (the broker's loss, not sluice's), {} copies in soak-in",
        written[LOGROTATE].rotations,
        written[KUBELET].rotations,
        written[TCP].conns.len(),
        written[UNIX].conns.len(),
        written[KAFKA].lines,
        kafka_in_missing,
        input_topic.tally.copies[KAFKA].iter().map(|c| *c as u64).sum::<u64>()
    ));
    say(format!(
        "drain after the faults: {:.0}s (faults ended at {:.0}s)",
        drained_in.as_secs_f64(),
        secs(faults_ended)
    ));
    say(format!(
        "kafka read back: soak-in {} messages in {:.1}s; soak-out {} messages, the last catch-up (after SIGTERM) {:.1}s",
        input_topic.read,
        input_read_in.as_secs_f64(),
        output_topic.read,
        output_read_in.as_secs_f64()
    ));
    say(format!(
        "{:<10} {:>8} | {:>26} | {:>26} | {:>26}",
        "input", "lines", "kafka: lost/in-flight/dups", "s3: lost/in-flight/dups", "loki: lost/in-flight/dups"
    ));
    let mut lost_examples = Vec::new();
    let mut totals = [Count::default(); 3];
    for (i, name) in INPUTS.iter().enumerate() {
        let counts: Vec<Count> = tallies.iter().map(|t| count(i, &expected, t, &kills, &mut lost_examples)).collect();
        let mut row = format!("{name:<10} {:>8}", counts[0].expected);
        for (s, c) in counts.iter().enumerate() {
            row.push_str(&format!(" | {:>26}", format!("{}/{}/{}", c.lost, c.in_flight, c.duplicates)));
            let t = &mut totals[s];
            t.expected += c.expected;
            t.arrived += c.arrived;
            t.lost += c.lost;
            t.in_flight += c.in_flight;
            t.duplicates += c.duplicates;
            t.unexpected += c.unexpected;
        }
        say(row);
    }
    let allow = duplicate_allowance(&samples, &sup.lifetimes, &kills, &broker_outage.stops, &s3_outage.stops);
    let crashes = kills.len().max(1) as f64;
    for (s, sink) in SINKS.iter().enumerate() {
        let t = &totals[s];
        say(format!(
            "{sink}: {} of {} lines arrived, {} lost, {} lost in flight at a crash (socket tails), {} duplicates ({:.0} per crash; allowed {:.0}: one checkpoint interval of reads and deliveries, what was in flight, and what it took ahead of a lagging sink, per crash and restart), {} lines never written, {} foreign lines",
            t.arrived,
            t.expected,
            t.lost,
            t.in_flight,
            t.duplicates,
            t.duplicates as f64 / crashes,
            allow[s],
            t.unexpected,
            tallies[s].foreign
        ));
        if t.lost > 0 {
            failures.push(format!("{sink}: {} lines lost", t.lost));
        }
        if t.duplicates as f64 > allow[s] {
            failures.push(format!(
                "{sink}: {} duplicates, more than one checkpoint interval, what was in flight and what it took ahead of a lagging sink per crash allow ({:.0})",
                t.duplicates, allow[s]
            ));
        }
        if t.unexpected > 0 || tallies[s].foreign > 0 {
            failures.push(format!(
                "{sink}: {} lines never written, {} foreign lines",
                t.unexpected, tallies[s].foreign
            ));
        }
    }
    for (s, sink) in SINKS.iter().enumerate() {
        for (i, name) in INPUTS.iter().enumerate() {
            for (from, to) in lost_ranges(i, &expected, &tallies[s], &kills).into_iter().take(5) {
                let conn = expected.conns[i].iter().enumerate().find(|(_, c)| c.first <= from && from < c.end);
                let conn = conn.map_or(String::new(), |(j, c)| {
                    format!(
                        " (connection {j}: lines {}..{}, opened at {:.1}s, {})",
                        c.first,
                        c.end,
                        secs(c.opened),
                        match (c.broken, cutting_kill(c, &kills)) {
                            (Some(b), Some(k)) => format!("cut by kill {k}, write failed at {:.1}s", secs(b)),
                            (Some(b), None) => format!("write failed at {:.1}s with no kill", secs(b)),
                            (None, _) => "closed by the sender".to_string(),
                        }
                    )
                });
                say(format!("{sink}: lost {name} {from}..={to}{conn}"));
            }
        }
    }
    if !s3_reader.unreadable.is_empty() {
        say(format!("S3 objects that do not decode whole: {:?}", s3_reader.unreadable));
    }
    let in_flight_per_crash: Vec<String> = totals
        .iter()
        .zip(SINKS)
        .map(|(t, s)| format!("{s} {:.0}", t.in_flight as f64 / crashes))
        .collect();
    say(format!(
        "socket lines in flight at a crash, per crash: {}",
        in_flight_per_crash.join(", ")
    ));
    for (k, &t) in kills.iter().enumerate() {
        let down =
            |stops: &[Instant], ups: &[Instant]| stops.iter().enumerate().any(|(i, d)| *d <= t && ups.get(i).is_none_or(|u| t <= *u));
        let lifetime = sup.lifetimes.iter().position(|l| matches!(l.end, Some((e, End::Killed)) if e == t));
        let buffers: Vec<String> = SINKS
            .iter()
            .map(|sink| {
                let b = lifetime.map_or(0.0, |l| counter_at(&samples, l, t, &format!("buffer_bytes:{sink}")));
                format!("{sink} {:.2} MiB", b / 1048576.0)
            })
            .collect();
        let tails: Vec<String> = SINKS
            .iter()
            .enumerate()
            .map(|(s, sink)| {
                format!(
                    "{sink} tcp {} unix {}",
                    tail_lost_at_kill(TCP, &expected, &tallies[s], &kills, k),
                    tail_lost_at_kill(UNIX, &expected, &tallies[s], &kills, k)
                )
            })
            .collect();
        say(format!(
            "kill {k} at {:.1}s: broker {}, S3 {}; disk buffers {}; socket tail lost: {}",
            secs(t),
            if down(&broker_outage.stops, &broker_outage.ups) {
                "down"
            } else {
                "up"
            },
            if down(&s3_outage.stops, &s3_outage.ups) { "down" } else { "up" },
            buffers.join(", "),
            tails.join("; ")
        ));
    }

    // Memory.
    let peak = sup
        .lifetimes
        .iter()
        .map(|l| l.hwm_kib)
        .chain(samples.iter().map(|s| s.hwm_kib))
        .max()
        .unwrap_or(0);
    let peak_rss_sampled = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    say(format!(
        "memory: peak RSS (VmHWM) {:.1} MiB, highest sampled VmRSS {:.1} MiB, budget {RSS_BUDGET_MIB} MiB",
        mib(peak),
        mib(peak_rss_sampled)
    ));
    if peak > RSS_BUDGET_MIB * 1024 {
        failures.push(format!("peak RSS {:.1} MiB is over the {RSS_BUDGET_MIB} MiB budget", mib(peak)));
    }

    // Descriptors: the last process, idle after the drain, against a fresh
    // one on the same data, idle as long (see `FD_SLACK`).
    let fds_first = samples.iter().filter(|s| s.lifetime == 0).map(|s| s.fds).max().unwrap_or(0);
    let fds_max = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let fds_floor: Vec<String> = (0..processes)
        .map(|k| {
            samples
                .iter()
                .filter(|s| s.lifetime == k)
                .map(|s| s.fds)
                .min()
                .map_or("-".to_string(), |n| n.to_string())
        })
        .collect();
    let none = BTreeMap::new();
    say(format!(
        "file descriptors: last process idle at the end (fewest in {}s) {}; a fresh process on the same data (most in {}s) {}; first process at its busiest {fds_first}, most in any sample {fds_max}; fewest in each process [{}]",
        FD_IDLE_WINDOW.as_secs(),
        kinds_text(fds_end.as_ref().unwrap_or(&none)),
        FD_SETTLE.as_secs(),
        kinds_text(fds_fresh.as_ref().unwrap_or(&none)),
        fds_floor.join(", ")
    ));
    if let (Some(end), Some(fresh)) = (&fds_end, &fds_fresh) {
        let (n_end, n_fresh) = (end.values().sum::<usize>(), fresh.values().sum::<usize>());
        if n_end > n_fresh + FD_SLACK {
            failures.push(format!(
                "file descriptor leak: the last process holds {n_end} idle at the end, a fresh one on the same data {n_fresh} (slack {FD_SLACK})"
            ));
        }
        let deleted = end.get("deleted file").copied().unwrap_or(0);
        let log_files = end.get("log file").copied().unwrap_or(0);
        if deleted > 0 || log_files > LIVE_LOG_FILES {
            failures.push(format!(
                "file descriptor leak: the last process holds {deleted} deleted files and {log_files} log files ({LIVE_LOG_FILES} are still written) long after rotate_wait"
            ));
        }
    }
    for (k, l) in sup.lifetimes.iter().enumerate() {
        match &l.end {
            Some((_, End::Exited(s))) => say(format!("process {k} (pid {}) exited by itself: {s}", l.pid)),
            Some((_, End::Stopped(s))) => say(format!("process {k} (pid {}) stopped by SIGTERM: {s}", l.pid)),
            _ => {}
        }
    }

    if failures.is_empty() {
        say("result: PASS".to_string());
    } else {
        say(format!("result: FAIL\n- {}", failures.join("\n- ")));
    }
    if let Some(path) = std::env::var_os("SLUICE_SOAK_REPORT") {
        let _ = fs::write(path, &report);
    }
    drop(sup);
    drop(tmpfs);
    assert!(failures.is_empty(), "the chaos soak failed:\n- {}", failures.join("\n- "));
}
