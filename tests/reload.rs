//! Live reload: SIGHUP and `POST /-/reload` re-read the config under load.
//! Unchanged components keep running, changed sinks are drained and
//! replaced, removed sources stop with a final checkpoint, an invalid config
//! changes nothing, and no line written is lost.

mod support;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::Sluice;
use support::{http_post, wait_until, S3};

const BUCKET: &str = "logs";
const WAIT: Duration = Duration::from_secs(60);

/// Appends numbered JSON lines to a file at about `per_second`, in small
/// bursts, until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(path: PathBuf, first: u64, per_second: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(first));
        let (s, w) = (stop.clone(), written.clone());
        let thread = thread::spawn(move || {
            let mut file = OpenOptions::new().create(true).append(true).open(&path).expect("open log");
            let started = Instant::now();
            while !s.load(Ordering::Acquire) {
                let due = first + (started.elapsed().as_secs_f64() * per_second as f64) as u64;
                let mut chunk = String::new();
                let mut n = w.load(Ordering::Acquire);
                while n < due {
                    chunk.push_str(&format!("{{\"n\":{n},\"msg\":\"line {n} of the reload test\"}}\n"));
                    n += 1;
                }
                file.write_all(chunk.as_bytes()).expect("append");
                w.store(n, Ordering::Release);
                thread::sleep(Duration::from_millis(10));
            }
        });
        Writer {
            stop,
            written,
            thread: Some(thread),
        }
    }

    /// Stops writing; returns the number after the last line written.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer");
        }
        self.written.load(Ordering::Acquire)
    }
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text.replace("{dir}", &dir.display().to_string())).expect("write config");
    path
}

/// A file source over `{dir}/logs/*.log` and a stdout sink, plus `extra`.
fn file_config(extra: &str) -> String {
    format!(
        "data_dir = \"{{dir}}/data\"\nshutdown_timeout = \"20s\"\n[api]\naddress = \"127.0.0.1:0\"\n\
         [sources.app]\ntype = \"file\"\ninclude = [\"{{dir}}/logs/*.log\"]\n\
         [sinks.stdout]\ntype = \"stdout\"\n{extra}"
    )
}

fn s3_sink(s3: &S3, prefix: &str) -> String {
    format!(
        "[sinks.s3]\ntype = \"s3\"\nbucket = \"{BUCKET}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
         key_prefix = \"{prefix}\"\ncompression = \"none\"\n[sinks.s3.batch]\ntimeout = \"1s\"\n\
         [sinks.s3.retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"500ms\"\n",
        s3.endpoint
    )
}

/// Starts sluice on the config at `{dir}/sluice.toml`, with S3 credentials
/// when given.
fn start(dir: tempfile::TempDir, s3: Option<&S3>) -> Sluice {
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let config = dir.path().join("sluice.toml");
    let mut sluice = Sluice::builder().arg("--config").arg(config).in_dir(dir);
    if let Some(s3) = s3 {
        sluice = sluice
            .env("AWS_ACCESS_KEY_ID", &s3.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key);
    }
    sluice.start()
}

/// Collects stdout events until every number below `total` was seen.
fn collect_until(sluice: &Sluice, seen: &mut BTreeSet<u64>, all: &mut Vec<u64>, total: u64) {
    let deadline = Instant::now() + WAIT;
    while (seen.len() as u64) < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} lines arrived; first missing: {:?}; logs:\n{}",
            seen.len(),
            (0..total).find(|n| !seen.contains(n)),
            sluice.logs()
        );
        let got = arrived(sluice, Duration::from_millis(200));
        seen.extend(got.iter().copied());
        all.extend(got);
    }
}

/// The numbers of the events that arrive on stdout within `window` (the
/// writer may never pause, so this does not wait for a quiet moment).
fn arrived(sluice: &Sluice, window: Duration) -> Vec<u64> {
    std::thread::sleep(window);
    let mut out = Vec::new();
    for line in sluice.new_lines() {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        out.extend(v["n"].as_u64());
    }
    out
}

fn metric(api: &str, series: &str) -> f64 {
    support::scrape(api).value(series)
}

fn reloads(api: &str, outcome: &str) -> f64 {
    metric(api, &format!("sluice_config_reloads_total{{outcome=\"{outcome}\"}}"))
}

fn starts(api: &str, component: &str, kind: &str) -> f64 {
    metric(
        api,
        &format!("sluice_component_starts_total{{component=\"{component}\",kind=\"{kind}\"}}"),
    )
}

/// Sends SIGHUP and waits until the reload counter for `outcome` moves.
fn sighup(sluice: &Sluice, api: &str, outcome: &str) {
    let before = reloads(api, outcome);
    sluice.signal(libc::SIGHUP);
    wait_until(&format!("a reload with outcome {outcome}"), WAIT, || {
        (reloads(api, outcome) > before).then_some(())
    });
}

/// Waits until sluice's log holds `text`.
fn logged(sluice: &Sluice, text: &str) {
    wait_until(&format!("{text:?} in the log"), WAIT, || sluice.logs().contains(text).then_some(()));
}

/// Every number in the objects of the bucket, by key.
fn s3_numbers(s3: &S3) -> Vec<(String, Vec<u64>)> {
    s3.keys_on_disk(BUCKET)
        .into_iter()
        .filter(|k| k.ends_with(".ndjson"))
        .map(|k| {
            let mut text = String::new();
            std::fs::File::open(s3.object_path(BUCKET, &k))
                .and_then(|mut f| f.read_to_string(&mut text))
                .expect("read object");
            let ns = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["n"].as_u64())
                .collect();
            (k, ns)
        })
        .collect()
}

fn stop(sluice: Sluice) {
    sluice.signal(libc::SIGTERM);
    let status = sluice.wait(WAIT);
    assert!(status.success(), "exit {status}; logs:\n{}", sluice.logs());
}

#[test]
fn sighup_with_the_same_config_restarts_nothing_and_leaves_no_gap() {
    let s3 = S3::start();
    s3.create_bucket_dir(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(&s3_sink(&s3, "first/"));
    write_config(dir.path(), &config);
    let sluice = start(dir, Some(&s3));
    let api = sluice.api_address();
    let writer = Writer::start(sluice.path("logs/app.log"), 0, 5000);
    let (mut seen, mut all) = (BTreeSet::new(), Vec::new());
    collect_until(&sluice, &mut seen, &mut all, 1000);

    sighup(&sluice, &api, "applied");
    logged(&sluice, "config reloaded: nothing changed");
    let (status, body) = http_post(&format!("http://{api}/-/reload"), &[], b"");
    assert_eq!((status, body.trim()), (200, "config reloaded: nothing changed"));
    for (component, kind) in [("app", "source"), ("stdout", "sink"), ("s3", "sink")] {
        assert_eq!(starts(&api, component, kind), 1.0, "{component} was restarted");
    }

    thread::sleep(Duration::from_secs(1));
    let total = writer.stop();
    collect_until(&sluice, &mut seen, &mut all, total);
    assert_eq!(all.len() as u64, total, "no line twice on stdout: nothing restarted");
    stop(sluice);
    let in_s3: BTreeSet<u64> = s3_numbers(&s3).into_iter().flat_map(|(_, ns)| ns).collect();
    assert_eq!(in_s3.len() as u64, total, "every line in S3");
}

#[test]
fn a_changed_s3_prefix_replaces_the_sink_and_delivers_every_line() {
    let s3 = S3::start();
    s3.create_bucket_dir(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &file_config(&s3_sink(&s3, "first/")));
    let sluice = start(dir, Some(&s3));
    let api = sluice.api_address();
    let writer = Writer::start(sluice.path("logs/app.log"), 0, 5000);
    let (mut seen, mut all) = (BTreeSet::new(), Vec::new());
    collect_until(&sluice, &mut seen, &mut all, 2000);

    write_config(sluice.dir(), &file_config(&s3_sink(&s3, "second/")));
    sighup(&sluice, &api, "applied");
    logged(&sluice, "sinks replaced: s3");
    assert_eq!(starts(&api, "s3", "sink"), 2.0);
    assert_eq!(starts(&api, "app", "source"), 1.0);
    assert_eq!(starts(&api, "stdout", "sink"), 1.0);
    let reloaded_at = writer.written.load(Ordering::Acquire);

    thread::sleep(Duration::from_secs(2));
    let total = writer.stop();
    collect_until(&sluice, &mut seen, &mut all, total);
    stop(sluice);
    let objects = s3_numbers(&s3);
    let in_s3: BTreeSet<u64> = objects.iter().flat_map(|(_, ns)| ns.iter().copied()).collect();
    let missing: Vec<u64> = (0..total).filter(|n| !in_s3.contains(n)).take(10).collect();
    assert!(missing.is_empty(), "lines missing from S3: {missing:?}");
    assert!(
        objects.iter().all(|(k, _)| k.starts_with("first/") || k.starts_with("second/")),
        "{objects:?}"
    );
    let after: BTreeSet<u64> = objects
        .iter()
        .filter(|(k, _)| k.starts_with("second/"))
        .flat_map(|(_, ns)| ns.iter().copied())
        .collect();
    assert!(
        (reloaded_at + 100..total).all(|n| after.contains(&n)),
        "lines written after the reload land under the new prefix"
    );
}

#[test]
fn an_invalid_config_is_rejected_and_the_pipeline_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &file_config(""));
    let sluice = start(dir, None);
    let api = sluice.api_address();
    let writer = Writer::start(sluice.path("logs/app.log"), 0, 2000);
    let (mut seen, mut all) = (BTreeSet::new(), Vec::new());
    collect_until(&sluice, &mut seen, &mut all, 500);

    write_config(
        sluice.dir(),
        &file_config("[sinks.stdout.buffer]\nmax_bytes = \"lots\"\n[sinks.more]\ntype = \"nope\"\n"),
    );
    sighup(&sluice, &api, "rejected");
    // The log lines may reach the file just after the counter moved.
    logged(&sluice, "sinks.stdout.buffer.max_bytes");
    logged(&sluice, "sinks.more.type");
    let (status, body) = http_post(&format!("http://{api}/-/reload"), &[], b"");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("sinks.more.type"), "{body}");
    assert_eq!(reloads(&api, "rejected"), 2.0);

    // A change that needs a restart is refused the same way.
    write_config(sluice.dir(), &file_config("").replace("127.0.0.1:0", "127.0.0.1:1"));
    sighup(&sluice, &api, "rejected");
    logged(&sluice, "restart sluice to apply it");

    thread::sleep(Duration::from_millis(500));
    let total = writer.stop();
    collect_until(&sluice, &mut seen, &mut all, total);
    assert_eq!(starts(&api, "stdout", "sink"), 1.0);
    stop(sluice);
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn fifty_reloads_lose_nothing_and_leak_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let configs = [
        file_config("[sinks.stdout.buffer]\nmax_events = 5000\n"),
        file_config("[sinks.stdout.buffer]\nmax_events = 6000\n[sinks.spare]\ntype = \"blackhole\"\n"),
    ];
    write_config(dir.path(), &configs[0]);
    let sluice = start(dir, None);
    let api = sluice.api_address();
    let writer = Writer::start(sluice.path("logs/app.log"), 0, 5000);
    let (mut seen, mut all) = (BTreeSet::new(), Vec::new());
    collect_until(&sluice, &mut seen, &mut all, 500);
    let pid = sluice.pid();
    let mut baseline = (0, 0);
    for i in 1..=50 {
        write_config(sluice.dir(), &configs[i % 2]);
        sighup(&sluice, &api, "applied");
        let got = arrived(&sluice, Duration::from_millis(20));
        seen.extend(got.iter().copied());
        all.extend(got);
        if i == 10 {
            baseline = (open_fds(pid), sluice.memory_kib("VmRSS"));
        }
    }
    let (fds, rss) = (open_fds(pid), sluice.memory_kib("VmRSS"));
    assert_eq!(starts(&api, "stdout", "sink"), 51.0, "the stdout sink was replaced every time");
    assert_eq!(starts(&api, "app", "source"), 1.0);
    assert!(fds <= baseline.0 + 2, "open fds grew from {} to {fds}", baseline.0);
    assert!(rss <= baseline.1 + 8 * 1024, "RSS grew from {} KiB to {rss} KiB", baseline.1);

    let total = writer.stop();
    collect_until(&sluice, &mut seen, &mut all, total);
    stop(sluice);
}

/// A file source into stdout through a filter named `name` that keeps
/// every line, or straight into stdout when `name` is empty.
fn transform_config(name: &str) -> String {
    if name.is_empty() {
        return file_config("inputs = [\"app\"]\n");
    }
    file_config(&format!(
        "inputs = [\"{name}\"]\n[transforms.{name}]\ntype = \"filter\"\ninputs = [\"app\"]\n\
         condition = {{ field = \"n\", exists = true }}\n"
    ))
}

#[test]
fn renamed_added_and_removed_transforms_under_load_lose_nothing() {
    // Batches decoded through the old transforms but fanned out after the
    // reload name outputs the new wiring no longer has: they must be
    // judged again by the new transforms, not acknowledged with no sink.
    let dir = tempfile::tempdir().unwrap();
    let configs = [transform_config("keep_a"), transform_config("keep_b"), transform_config("")];
    write_config(dir.path(), &configs[0]);
    let sluice = start(dir, None);
    let api = sluice.api_address();
    let writer = Writer::start(sluice.path("logs/app.log"), 0, 20_000);
    let (mut seen, mut all) = (BTreeSet::new(), Vec::new());
    collect_until(&sluice, &mut seen, &mut all, 500);
    for i in 1..=30 {
        write_config(sluice.dir(), &configs[i % configs.len()]);
        sighup(&sluice, &api, "applied");
        let got = arrived(&sluice, Duration::from_millis(20));
        seen.extend(got.iter().copied());
        all.extend(got);
    }
    let total = writer.stop();
    collect_until(&sluice, &mut seen, &mut all, total);
    stop(sluice);
}

#[test]
fn a_removed_source_added_back_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let other = "[sources.other]\ntype = \"file\"\ninclude = [\"{dir}/other/*.log\"]\n";
    let with_app = file_config(other);
    let without_app = with_app.replace("[sources.app]\ntype = \"file\"\ninclude = [\"{dir}/logs/*.log\"]\n", "");
    write_config(dir.path(), &with_app);
    let sluice = start(dir, None);
    let api = sluice.api_address();
    let log = sluice.path("logs/app.log");
    let writer = Writer::start(log.clone(), 0, 5000);
    thread::sleep(Duration::from_millis(300));
    let first = writer.stop();
    let (mut seen, mut all) = (BTreeSet::new(), Vec::new());
    collect_until(&sluice, &mut seen, &mut all, first);

    write_config(sluice.dir(), &without_app);
    sighup(&sluice, &api, "applied");
    logged(&sluice, "sources removed: app");
    let writer = Writer::start(log, first, 5000);
    thread::sleep(Duration::from_millis(300));
    let total = writer.stop();
    assert!(
        arrived(&sluice, Duration::from_millis(500)).is_empty(),
        "a removed source reads nothing"
    );

    write_config(sluice.dir(), &with_app);
    sighup(&sluice, &api, "applied");
    assert_eq!(starts(&api, "app", "source"), 2.0);
    collect_until(&sluice, &mut seen, &mut all, total);
    let again = all.iter().filter(|n| **n < first).count() as u64 - first;
    assert_eq!(again, 0, "lines before the removal were read again");
    stop(sluice);
}

#[test]
fn sighup_to_a_plain_pipe_changes_nothing() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env("SLUICE_API_ENABLED", "false")
        .env("SLUICE_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    stdin.write_all(b"{\"n\":0}\n").unwrap();
    thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    thread::sleep(Duration::from_millis(300));
    stdin.write_all(b"{\"n\":1}\n").unwrap();
    drop(stdin);
    let out = reader.join().unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "exit {status}; logs:\n{err}");
    let ns: Vec<u64> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [0, 1]);
    assert!(err.contains("no config file"), "{err}");
}
