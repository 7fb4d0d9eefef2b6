//! The one Kafka broker harness: tansu on a fixed loopback port that can go
//! down and come back (optionally keeping its topics in s3s-fs across
//! restarts), and a reader that reads whole topics by assignment (no
//! consumer group: a first join takes ~20 s on tansu).

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tempfile::TempDir;

use super::{free_port, tansu_bin, ServiceProcess, S3, START_TIMEOUT};

/// How long a Kafka admin call, metadata request or read may take.
pub const KAFKA_TIMEOUT: Duration = Duration::from_secs(20);

/// A tansu broker on 127.0.0.1.
///
/// Topics are not created on produce: create them first
/// ([`Kafka::create_topic`]).
pub struct Kafka {
    /// `127.0.0.1:PORT`, usable as `bootstrap.servers`; the same across
    /// [`Kafka::down`] and [`Kafka::up`].
    pub addr: String,
    /// `None` while the broker is down.
    process: Option<ServiceProcess>,
    /// s3s-fs holding the broker's data, when it must survive a restart.
    store: Option<S3>,
    dir: TempDir,
    /// How many times the broker was started (names its log files).
    starts: u32,
}

impl Kafka {
    /// A running broker with in-memory storage.
    pub fn start() -> Kafka {
        let mut k = Kafka::reserve();
        k.up();
        k
    }

    /// A running broker whose topics live in s3s-fs, so they survive
    /// [`Kafka::down`] and [`Kafka::up`].
    pub fn start_persistent() -> Kafka {
        let s3 = S3::start();
        s3.create_bucket("tansu");
        let mut k = Kafka::reserve();
        k.store = Some(s3);
        k.up();
        k
    }

    /// A port for a broker that is not running yet (a sink pointed at a
    /// broker that is down); [`Kafka::up`] starts it there.
    pub fn reserve() -> Kafka {
        Kafka {
            addr: format!("127.0.0.1:{}", free_port()),
            process: None,
            store: None,
            dir: TempDir::new().expect("temp dir"),
            starts: 0,
        }
    }

    /// Starts the broker (again) on its port and waits until it accepts
    /// connections.
    pub fn up(&mut self) {
        assert!(self.process.is_none(), "broker already running");
        let url = format!("tcp://{}", self.addr);
        let mut cmd = Command::new(tansu_bin());
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
        let log = self.log_path(self.starts);
        let mut process = ServiceProcess::spawn("tansu", cmd, log, false);
        process.wait_for_tcp(&self.addr, START_TIMEOUT);
        self.process = Some(process);
    }

    /// Kills the broker (SIGKILL); the port and any s3s-fs data stay.
    pub fn down(&mut self) {
        self.process = None;
    }

    fn log_path(&self, start: u32) -> std::path::PathBuf {
        self.dir.path().join(format!("tansu-{start}.log"))
    }

    /// Every log of the broker so far, restarts separated.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| std::fs::read_to_string(self.log_path(i)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// Creates `topic` with `partitions` partitions (replication 1). Runs
    /// its own runtime: call it from synchronous code.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()
            .expect("kafka admin client");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let opts = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let result = rt
            .block_on(async { tokio::time::timeout(KAFKA_TIMEOUT, admin.create_topics(&[new_topic], &opts)).await })
            .unwrap_or_else(|_| panic!("creating topic {topic} took over {KAFKA_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("creating topic {topic}: {e}; tansu log:\n{}", self.log()));
        assert_eq!(
            result,
            vec![Ok(topic.to_string())],
            "creating topic {topic}; tansu log:\n{}",
            self.log()
        );
    }

    /// [`read_topic`] on this broker.
    pub fn read_topic(&self, topic: &str, n: usize, timeout: Duration) -> Vec<Record> {
        read_topic(&self.addr, topic, n, timeout)
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// Empty for a null payload.
    pub payload: Vec<u8>,
    /// Header (name, value) pairs in order; a null value reads as empty.
    pub headers: Vec<(String, Vec<u8>)>,
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

/// Reads every message of `topic` on the brokers at `bootstrap` (all
/// partitions, from the beginning): at least `n`, plus whatever else
/// arrives until the topic stays quiet; sorted by partition and offset.
pub fn read_topic(bootstrap: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Record> {
    let mut records = read_until(bootstrap, topic, timeout, |got| got.len() >= n);
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// Reads `topic` from the beginning until `done` says so, then until it
/// stays quiet for a moment; in arrival order. Each partition gets a
/// consumer of its own: tansu answers a fetch for several partitions with
/// only one of them.
pub fn read_until(bootstrap: &str, topic: &str, timeout: Duration, mut done: impl FnMut(&[Record]) -> bool) -> Vec<Record> {
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
                out.push(Record {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec).unwrap_or_default()))
                                .collect()
                        })
                        .unwrap_or_default(),
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
