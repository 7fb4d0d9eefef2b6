//! What the Kafka sink, disk buffer and fan-out tests share: a tansu broker
//! that can be stopped and started again on the same port (optionally
//! keeping its data in s3s-fs across restarts), a consumer that reads whole
//! topics by assignment (no consumer group: a first join takes ~20 s on
//! tansu), and a sluice process with piped stdin, captured stdout and
//! `/metrics`.
//!
//! Use with `mod support; mod kafka_support;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tempfile::TempDir;

use crate::support;

/// Bound on every Kafka request the tests make.
pub const KAFKA_TIMEOUT: Duration = Duration::from_secs(20);

/// A tansu broker on a fixed port that can go down and come back.
pub struct Broker {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// s3s-fs holding the broker's data, when it must survive a restart.
    store: Option<support::S3>,
    child: Option<Child>,
    dir: TempDir,
    starts: u32,
}

impl Broker {
    /// A port for a broker that is not running yet (a sink pointed at a
    /// broker that is down).
    pub fn reserve() -> Broker {
        Broker {
            addr: format!("127.0.0.1:{}", support::free_port()),
            store: None,
            child: None,
            dir: TempDir::new().expect("temp dir"),
            starts: 0,
        }
    }

    /// A running broker with in-memory storage.
    pub fn start() -> Broker {
        let mut b = Broker::reserve();
        b.up();
        b
    }

    /// A running broker whose topics live in s3s-fs, so they survive
    /// [`Broker::down`] and [`Broker::up`].
    pub fn start_persistent() -> Broker {
        let s3 = support::S3::start();
        s3.create_bucket("tansu");
        let mut b = Broker::reserve();
        b.store = Some(s3);
        b.up();
        b
    }

    /// Starts the broker (again) on its port.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let url = format!("tcp://{}", self.addr);
        let mut cmd = Command::new(support::tansu_bin());
        cmd.current_dir(self.dir.path())
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url]);
        match &self.store {
            Some(s3) => {
                cmd.args(["--storage-engine", "s3://tansu/"])
                    .env("AWS_ACCESS_KEY_ID", &s3.access_key)
                    .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
                    .env("AWS_DEFAULT_REGION", &s3.region)
                    .env("AWS_ENDPOINT", &s3.endpoint)
                    .env("AWS_ALLOW_HTTP", "true");
            }
            None => {
                cmd.args(["--storage-engine", "memory://tansu/"]);
            }
        }
        self.starts += 1;
        let log = fs::File::create(self.dir.path().join(format!("tansu-{}.log", self.starts))).expect("log file");
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("clone log")).stderr(log);
        self.child = Some(cmd.spawn().expect("start tansu"));
        let deadline = Instant::now() + support::START_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("tansu exited ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "tansu did not listen on {}:\n{}", self.addr, self.log());
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every log of the broker so far.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| fs::read_to_string(self.dir.path().join(format!("tansu-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        create_topic(&self.addr, topic, partitions);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
    }
}

/// Creates a topic on the brokers at `bootstrap`.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let opts = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    let res = rt
        .block_on(async {
            tokio::time::timeout(
                KAFKA_TIMEOUT,
                admin.create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &opts),
            )
            .await
        })
        .expect("create_topics timed out")
        .expect("create_topics");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

/// One message read back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sluice-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer")
}

/// How long a read keeps polling after it has what it expected, to catch
/// duplicates. (tansu's high watermark is the last batch's base offset plus
/// one, not the last offset plus one, so watermarks cannot count messages.)
const QUIET: Duration = Duration::from_secs(1);

/// Reads every message of `topic` (all partitions, from the beginning):
/// at least `n`, plus whatever else arrives until the topic stays quiet.
pub fn read_topic(bootstrap: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Received> {
    read_until(bootstrap, topic, timeout, |got| got.len() >= n)
}

/// Reads `topic` from the beginning until `done` says so, then until it
/// stays quiet for a moment. Each partition gets a consumer of its own:
/// tansu answers a fetch for several partitions with only one of them.
pub fn read_until(bootstrap: &str, topic: &str, timeout: Duration, mut done: impl FnMut(&[Received]) -> bool) -> Vec<Received> {
    let deadline = Instant::now() + timeout;
    let probe = consumer(bootstrap);
    let partitions = loop {
        if let Ok(md) = probe.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(t) = md.topics().iter().find(|t| t.name() == topic && t.error().is_none()) {
                if !t.partitions().is_empty() {
                    break t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>();
                }
            }
        }
        assert!(Instant::now() < deadline, "topic {topic} never appeared");
        thread::sleep(Duration::from_millis(100));
    };
    let consumers: Vec<BaseConsumer> = partitions
        .iter()
        .map(|p| {
            let c = consumer(bootstrap);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, *p, Offset::Beginning).expect("partition");
            c.assign(&tpl).expect("assign");
            c
        })
        .collect();
    let mut out = Vec::new();
    let mut satisfied = false;
    let mut last_message = Instant::now();
    loop {
        if !satisfied && done(&out) {
            satisfied = true;
        }
        if satisfied && last_message.elapsed() >= QUIET {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "read {} messages from {topic} within {timeout:?}, not what was expected",
            out.len()
        );
        for c in &consumers {
            while let Some(m) = c.poll(Duration::from_millis(20)) {
                let m = m.unwrap_or_else(|e| panic!("consuming {topic}: {e}"));
                last_message = Instant::now();
                out.push(Received {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                });
            }
        }
    }
}

/// `n` JSON app-log events, ids `start..start+n`, spread over three
/// services, each padded to about `pad` bytes of message.
pub fn events(start: usize, n: usize, pad: usize) -> Vec<String> {
    let filler: String = "abcdefghijklmnopqrstuvwxyz0123456789".chars().cycle().take(pad).collect();
    (start..start + n)
        .map(|i| {
            format!(
                r#"{{"id":{i},"service":"svc-{}","level":"info","msg":"event {i} {filler}"}}"#,
                i % 3
            )
        })
        .collect()
}

/// The `id` of an event as sluice wrote it.
pub fn id_of(payload: &[u8]) -> u64 {
    let v: serde_json::Value =
        serde_json::from_slice(payload).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(payload)));
    v["id"].as_u64().unwrap_or_else(|| panic!("no id in {v}"))
}

/// A running sluice binary.
pub struct Sluice {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `http://127.0.0.1:PORT`.
    pub api: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
    _dir: TempDir,
}

impl Sluice {
    /// Starts sluice on `config`, where `{api}` is replaced by a free
    /// address for its API.
    pub fn start(config: &str) -> Sluice {
        for _attempt in 0..5 {
            let s = Sluice::launch(config);
            if s.wait_healthy() {
                return s;
            }
            // The API port was taken by another test's service between
            // choosing it and binding it: sluice refused to start (as it
            // must); try another port.
        }
        panic!("sluice could not bind a free API port in 5 attempts");
    }

    fn launch(config: &str) -> Sluice {
        let dir = TempDir::new().expect("temp dir");
        let api_addr = format!("127.0.0.1:{}", support::free_port());
        let path = dir.path().join("sluice.toml");
        fs::write(&path, config.replace("{api}", &api_addr)).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--config")
            .arg(&path)
            .env("SLUICE_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("start sluice");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("stdout");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lines.lock().expect("lines").push(line);
            }
        });
        let s = Sluice {
            child,
            stdin,
            api: format!("http://{api_addr}"),
            stdout,
            stderr_path,
            _dir: dir,
        };
        s
    }

    /// True once `/health` answers; false if sluice could not bind its API
    /// port because something else took it first.
    fn wait_healthy(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if support::http_agent().get(format!("{}/health", self.api)).call().is_ok() {
                return true;
            }
            if self.stderr().contains("cannot serve the API") && self.stderr().contains("Address already in use") {
                return false;
            }
            assert!(Instant::now() < deadline, "sluice never served /health:\n{}", self.stderr());
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes `lines` to sluice's stdin, one per line.
    pub fn write_lines(&mut self, lines: &[String]) {
        let mut buf = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            buf.push_str(l);
            buf.push('\n');
        }
        self.stdin
            .as_mut()
            .expect("stdin open")
            .write_all(buf.as_bytes())
            .unwrap_or_else(|e| panic!("write to sluice: {e}\n{}", self.stderr()));
    }

    /// Takes stdin, for a writer thread that may block when sluice pushes
    /// back.
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin open")
    }

    /// Writes `lines` from a thread (sluice may stop reading: backpressure);
    /// the thread closes stdin when done unless `keep_open`.
    pub fn feed(&mut self, lines: Vec<String>, keep_open: bool) -> thread::JoinHandle<Option<ChildStdin>> {
        let mut stdin = self.take_stdin();
        thread::spawn(move || {
            for chunk in lines.chunks(500) {
                let mut buf = String::new();
                for l in chunk {
                    buf.push_str(l);
                    buf.push('\n');
                }
                if stdin.write_all(buf.as_bytes()).is_err() {
                    return None;
                }
            }
            keep_open.then_some(stdin)
        })
    }

    /// Closes stdin: sluice drains and exits.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends a signal to sluice.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for sluice to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not exit within {timeout:?}:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines sluice wrote to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("lines").clone()
    }

    /// Number of lines on stdout so far.
    pub fn stdout_count(&self) -> usize {
        self.stdout.lock().expect("lines").len()
    }

    /// sluice's log so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Every sample of `/metrics` as `name{labels}` → value.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let (status, body) = support::http_get(&format!("{}/metrics", self.api));
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    /// One sample, 0 when absent: `metric("sluice_sink_events_total{sink=\"k\"}")`.
    pub fn metric(&self, key: &str) -> f64 {
        self.metrics().get(key).copied().unwrap_or(0.0)
    }

    /// `/ready`'s status code.
    pub fn ready_status(&self) -> u16 {
        support::http_get(&format!("{}/ready", self.api)).0
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `check` holds, polling every 50 ms.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    support::wait_until(what, timeout, || check().then_some(()));
}

/// Sizes of the segment files in a disk buffer directory, by name.
pub fn segments(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out: Vec<(PathBuf, u64)> = fs::read_dir(dir)
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
