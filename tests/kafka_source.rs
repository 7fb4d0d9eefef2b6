//! The Kafka source against a real broker (tansu): every produced event
//! reaches the sink at least once, offsets are committed only after
//! delivery, and a second aggregator in the group takes over when one is
//! killed mid-stream.

mod support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use support::Kafka;
use support::{Sluice, Stdout};

/// Joining a consumer group on tansu takes seconds (tens under load).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

fn produce(kafka: &Kafka, topic: &str, partitions: i32, seqs: std::ops::Range<u64>) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.addr)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for seq in seqs {
        let payload = format!(r#"{{"seq":{seq},"host":"agent-1","release":{{"version":"v1"}},"message":"event {seq}"}}"#);
        let partition = (seq % partitions as u64) as i32;
        loop {
            match producer.send(BaseRecord::<(), _>::to(topic).partition(partition).payload(&payload)) {
                Ok(()) => break,
                Err((e, _)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush the producer");
}

fn config(kafka: &Kafka, topic: &str, group: &str) -> String {
    format!(
        r#"
shutdown_timeout = "30s"
[api]
address = "127.0.0.1:0"
[enrich]
disable_host = true
release = "aggregator-release"
[sources.kafka]
type = "kafka"
bootstrap_servers = "{addr}"
topics = ["{topic}"]
group_id = "{group}"
session_timeout = "6s"
commit_interval = "200ms"
batch_timeout = "20ms"
lag_interval = "300ms"
[sources.kafka.librdkafka_options]
"heartbeat.interval.ms" = "500"
[sinks.out]
type = "stdout"
[sinks.out.buffer]
max_events = 200
"#,
        addr = kafka.addr
    )
}

/// A running aggregator whose stdout lines arrive on `lines`.
struct Aggregator {
    sluice: Sluice,
    lines: mpsc::Receiver<String>,
    /// Killed with SIGKILL: its last line may be torn mid-write.
    killed: bool,
}

impl Aggregator {
    fn start(config: &str) -> Aggregator {
        Aggregator::start_reading(config, Duration::ZERO)
    }

    /// Starts it with its stdout read one line per `pause`: a slow sink.
    fn start_reading(config: &str, pause: Duration) -> Aggregator {
        let mut sluice = Sluice::builder().config(config).stdout(Stdout::Raw).start();
        let stdout = sluice.take_stdout();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
                if !pause.is_zero() {
                    thread::sleep(pause);
                }
            }
        });
        Aggregator {
            sluice,
            lines,
            killed: false,
        }
    }

    /// Collects seqs from the output into `seen`; returns how many lines
    /// arrived.
    fn drain_into(&self, seen: &mut HashSet<u64>, check: impl Fn(&serde_json::Value)) -> usize {
        let mut n = 0;
        while let Ok(line) = self.lines.try_recv() {
            let v: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                // The write the kill interrupted; that event was never
                // acknowledged, so it is delivered again by the other.
                Err(_) if self.killed => continue,
                Err(e) => panic!("not JSON ({e}): {line}"),
            };
            check(&v);
            seen.insert(v["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {line}")));
            n += 1;
        }
        n
    }

    fn signal(&mut self, sig: i32) {
        self.killed |= sig == libc::SIGKILL;
        self.sluice.signal(sig);
    }

    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.sluice.wait(timeout)
    }
}

fn agent_fields_win(v: &serde_json::Value) {
    assert_eq!(v["host"], "agent-1", "the agent's host is kept: {v}");
    assert_eq!(v["release"]["version"], "v1", "the agent's release is kept: {v}");
}

fn wait_for_all(aggs: &[&Aggregator], seen: &mut HashSet<u64>, want: u64, what: &str) {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while (seen.len() as u64) < want {
        for a in aggs {
            a.drain_into(seen, agent_fields_win);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {want} events arrived within {DELIVERY_TIMEOUT:?}",
            seen.len()
        );
        thread::sleep(Duration::from_millis(20));
    }
    for s in 0..want {
        assert!(seen.contains(&s), "{what}: event {s} missing");
    }
}

fn committed_total(kafka: &Kafka, topic: &str, group: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.addr)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

#[test]
fn every_event_arrives_and_offsets_are_committed_only_for_delivered_events() {
    let kafka = Kafka::start();
    let (topic, partitions) = ("agent-logs", 3);
    kafka.create_topic(topic, partitions);
    const FIRST: u64 = 3000;
    produce(&kafka, topic, partitions, 0..FIRST);

    let cfg = config(&kafka, topic, "aggregators");
    let started = Instant::now();
    let mut agg = Aggregator::start(&cfg);
    let mut seen = HashSet::new();
    wait_for_all(&[&agg], &mut seen, FIRST, "first run");
    eprintln!("first run delivered {FIRST} events in {:?}", started.elapsed());

    // Everything delivered is committed, so the lag of every partition
    // falls to zero.
    let api = agg.sluice.api_address();
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let m = agg.sluice.metrics();
        let lags: Vec<f64> = (0..partitions)
            .filter_map(|p| {
                let series = format!(r#"sluice_kafka_consumer_lag{{partition="{p}",source="kafka",topic="{topic}"}}"#);
                m.series(&series)
            })
            .collect();
        if lags.len() == partitions as usize && lags.iter().all(|l| *l == 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "lag did not reach 0 on every partition: {lags:?}");
        thread::sleep(Duration::from_millis(100));
    }
    assert!(support::scrape(&api).value(r#"sluice_kafka_commits_total{result="ok",source="kafka"}"#) >= 1.0);

    // A clean stop commits everything delivered.
    agg.signal(libc::SIGTERM);
    assert!(agg.wait(Duration::from_secs(60)).success());
    agg.drain_into(&mut seen, agent_fields_win);
    assert_eq!(committed_total(&kafka, topic, "aggregators", partitions), FIRST as i64);

    // A restart resumes from the committed offsets: only new events.
    produce(&kafka, topic, partitions, FIRST..FIRST + 500);
    let agg = Aggregator::start(&cfg);
    let mut second = HashSet::new();
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while second.len() < 500 {
        assert!(Instant::now() < deadline, "restart: {} of 500 new events arrived", second.len());
        agg.drain_into(&mut second, agent_fields_win);
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(500));
    agg.drain_into(&mut second, agent_fields_win);
    assert_eq!(
        second,
        (FIRST..FIRST + 500).collect::<HashSet<_>>(),
        "the restart re-read nothing already committed"
    );
}

#[test]
fn a_second_aggregator_takes_over_when_one_is_killed_mid_stream() {
    let kafka = Kafka::start();
    let (topic, partitions) = ("agent-logs-2", 4);
    kafka.create_topic(topic, partitions);
    let started = Instant::now();
    const FIRST: u64 = 20_000;
    const TOTAL: u64 = 30_000;
    let cfg = config(&kafka, topic, "pair");
    // The backlog is there before either starts and A's sink is slow, so A
    // is killed while it is still working through its partitions.
    produce(&kafka, topic, partitions, 0..FIRST);
    let a = Aggregator::start_reading(&cfg, Duration::from_millis(1));
    let b = Aggregator::start(&cfg);

    // Kill one aggregator as soon as it has delivered part of its share.
    let mut seen = HashSet::new();
    let mut from_a = 0;
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while from_a < 100 {
        assert!(
            Instant::now() < deadline,
            "aggregator A delivered nothing within {DELIVERY_TIMEOUT:?}"
        );
        from_a += a.drain_into(&mut seen, agent_fields_win);
        b.drain_into(&mut seen, agent_fields_win);
        thread::sleep(Duration::from_millis(5));
    }
    let mut a = a;
    a.signal(libc::SIGKILL);
    a.wait(Duration::from_secs(10));
    a.drain_into(&mut seen, agent_fields_win);
    eprintln!(
        "killed A after {from_a} events from it, {} in all, at {:?}",
        seen.len(),
        started.elapsed()
    );
    assert!(seen.len() < FIRST as usize, "A was killed before the backlog was delivered");

    produce(&kafka, topic, partitions, FIRST..TOTAL);
    // What A delivered before it died is still in its stdout pipe: the
    // slow reader keeps collecting it.
    wait_for_all(&[&a, &b], &mut seen, TOTAL, "after the kill");
    eprintln!("all {TOTAL} events delivered at least once in {:?}", started.elapsed());
}
