//! Metrics through the two-tier topology with real parts: an agent
//! (statsd → Kafka sink, one JSON sample per message), a real Kafka-protocol
//! broker (tansu), and an aggregator (Kafka source with
//! `events = "metrics"` → remote write) into a real Prometheus, queried
//! through its HTTP API. Every kind arrives with exactly its values, bucket
//! counts and timestamps; messages that are not samples are counted and
//! skipped; offsets are committed only once Prometheus took the samples.

mod support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::remote_write::RemoteWriteReceiver;
use support::{Kafka, Sluice, Stdout};

/// Joining a consumer group on tansu takes seconds (tens under load).
const WAIT: Duration = Duration::from_secs(120);
const TOPIC: &str = "agent-metrics";
const GROUP: &str = "aggregators";

fn produce(kafka: &Kafka, payloads: &[String]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.addr)
        .create()
        .expect("producer");
    for p in payloads {
        producer
            .send(BaseRecord::<(), _>::to(TOPIC).partition(0).payload(p))
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
    producer.flush(Duration::from_secs(30)).expect("flush the producer");
}

fn committed(kafka: &Kafka) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.addr)
        .set("group.id", GROUP)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(TOPIC, 0);
    let c = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    match c.elements()[0].offset() {
        Offset::Offset(o) => o,
        _ => -1,
    }
}

fn wait_committed(kafka: &Kafka, want: i64) {
    support::wait_until(&format!("offset {want} committed"), WAIT, || {
        (committed(kafka) == want).then_some(())
    });
}

/// An agent: statsd over TCP, aggregated every 200 ms, into the Kafka sink.
fn agent(kafka: &Kafka) -> Sluice {
    let config = format!(
        "[api]\naddress = \"127.0.0.1:0\"\n[enrich]\ndisable_host = true\nrelease = \"agent-v1\"\n\
         [sources.statsd]\ntype = \"statsd\"\nmode = \"tcp\"\naddress = \"127.0.0.1:0\"\nflush_interval = \"200ms\"\n\
         buckets = [10.0, 100.0]\n\
         [sinks.kafka]\ntype = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic = \"{TOPIC}\"\n",
        kafka.addr
    );
    Sluice::builder().config(&config).stdout(Stdout::Null).start().serving()
}

fn aggregator(kafka: &Kafka, prom: &RemoteWriteReceiver) -> Sluice {
    let config = format!(
        r#"
[api]
address = "127.0.0.1:0"
[enrich]
disable_host = true
release = "aggregator"
[sources.kafka]
type = "kafka"
events = "metrics"
bootstrap_servers = "{addr}"
topics = ["{TOPIC}"]
group_id = "{GROUP}"
session_timeout = "6s"
commit_interval = "200ms"
batch_timeout = "20ms"
[sources.kafka.librdkafka_options]
"heartbeat.interval.ms" = "500"
[sinks.rw]
type = "prometheus_remote_write"
endpoint = "{url}"
metadata_labels = {{ release = "release.version" }}
[sinks.rw.batch]
timeout = "100ms"
[sinks.rw.retry]
initial_backoff = "50ms"
max_backoff = "500ms"
"#,
        addr = kafka.addr,
        url = prom.write_url()
    );
    Sluice::builder().config(&config).start().serving()
}

/// The newest sample of every series in the topic, by `metric{labels}`.
fn newest_samples(records: &[support::kafka::Record]) -> BTreeMap<String, Value> {
    let mut newest: BTreeMap<String, Value> = BTreeMap::new();
    for r in records {
        let Ok(v) = serde_json::from_slice::<Value>(&r.payload) else {
            continue;
        };
        if v["kind"].is_null() {
            continue;
        }
        let key = format!("{}{}", v["metric"].as_str().unwrap_or(""), v["labels"]);
        let newer = newest
            .get(&key)
            .is_none_or(|old| old["timestamp_ms"].as_i64() <= v["timestamp_ms"].as_i64());
        if newer {
            newest.insert(key, v);
        }
    }
    newest
}

/// `promql`'s single value and its timestamp in ms, once it is `want`.
fn wait_exact(prom: &RemoteWriteReceiver, promql: &str, want: f64, timestamp_ms: i64) {
    prom.wait_for_value(promql, want, WAIT);
    let at = prom.value(&format!("timestamp({promql})")).expect("a timestamp");
    assert_eq!((at * 1000.0).round() as i64, timestamp_ms, "{promql} carries the agent's timestamp");
}

#[test]
fn metric_samples_cross_kafka_into_prometheus_exactly_and_garbage_is_counted() {
    let kafka = Kafka::start();
    kafka.create_topic(TOPIC, 1);

    // The agent: every statsd kind, then a stop (its last flush).
    let a = agent(&kafka);
    let addr = a.logged_address("listening on TCP", Some("statsd"), WAIT);
    let mut conn = TcpStream::connect(&addr).unwrap();
    let (mut hits, mut latencies) = (0u64, Vec::new());
    let mut lines = String::new();
    for i in 0..300u64 {
        let n = i % 7 + 1;
        hits += n;
        let ms = (i * 37 % 300) as f64 + 0.25;
        latencies.push(ms);
        lines.push_str(&format!(
            "app.hits:{n}|c|#route:/a\napp.latency:{ms}|ms|#route:/a\napp.users:u{}|s\n",
            i % 11
        ));
    }
    lines.push_str("app.temp:21|g\napp.temp:+2.5|g\n");
    conn.write_all(lines.as_bytes()).unwrap();
    let applied = 300 * 3 + 2;
    support::wait_until("the agent applied every line", WAIT, || {
        (a.metrics().sum("sluice_metric_updates_total", &[]) >= applied as f64).then_some(())
    });
    drop(conn);
    let (status, _) = a.stop();
    assert!(status.success(), "agent exit {status:?}");

    // Beside the agent's samples: a summary and a pretty-printed gauge from
    // another writer, and three messages that are not samples.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    produce(
        &kafka,
        &[
            format!(
                r#"{{"metric":"rpc.seconds","kind":"summary","labels":{{"svc":"x"}},"timestamp_ms":{now_ms},"count":3,"sum":4.5,"quantiles":[{{"quantile":0.5,"value":1.2}},{{"quantile":0.99,"value":0.30000000000000004}}],"release":{{"version":"other-v2"}}}}"#
            ),
            "not json at all".into(),
            r#"{"message":"a log line","release":{"version":"v1"}}"#.into(),
            format!(r#"{{"metric":"no.value","kind":"counter","labels":{{}},"timestamp_ms":{now_ms}}}"#),
            format!("{{\n  \"metric\": \"disk.free\",\n  \"kind\": \"gauge\",\n  \"timestamp_ms\": {now_ms},\n  \"value\": 1.0000000000000002e300\n}}\n"),
        ],
    );
    let records = support::kafka::read_until(&kafka.addr, TOPIC, WAIT, |got| got.iter().any(|r| r.payload.starts_with(b"{\n")));
    let end = records.iter().map(|r| r.offset).max().unwrap() + 1;
    let newest = newest_samples(&records);

    let prom = RemoteWriteReceiver::start();
    let agg = aggregator(&kafka, &prom);

    let count = latencies.len() as f64;
    let sample = |key: &str| {
        newest
            .get(key)
            .unwrap_or_else(|| panic!("{key} not in the topic: {:?}", newest.keys()))
    };
    let s = sample(r#"app.hits{"route":"/a"}"#);
    assert_eq!(s["value"], hits, "the agent's counter total");
    let ts = s["timestamp_ms"].as_i64().unwrap();
    wait_exact(&prom, r#"app_hits{route="/a",release="agent-v1"}"#, hits as f64, ts);
    let s = sample(r#"app.latency{"route":"/a"}"#);
    let ts = s["timestamp_ms"].as_i64().unwrap();
    wait_exact(&prom, r#"app_latency_count{route="/a"}"#, count, ts);
    wait_exact(&prom, r#"app_latency_sum{route="/a"}"#, latencies.iter().sum(), ts);
    for (le, bound) in [("10", 10.0), ("100", 100.0), ("+Inf", f64::INFINITY)] {
        let n = latencies.iter().filter(|v| **v <= bound).count() as f64;
        wait_exact(&prom, &format!(r#"app_latency_bucket{{route="/a",le="{le}"}}"#), n, ts);
    }
    let s = sample("app.temp{}");
    wait_exact(&prom, "app_temp", 23.5, s["timestamp_ms"].as_i64().unwrap());
    let s = sample("app.users{}");
    wait_exact(
        &prom,
        "app_users",
        s["value"].as_f64().unwrap(),
        s["timestamp_ms"].as_i64().unwrap(),
    );
    wait_exact(
        &prom,
        r#"rpc_seconds{svc="x",quantile="0.99",release="other-v2"}"#,
        0.30000000000000004,
        now_ms,
    );
    wait_exact(&prom, r#"rpc_seconds{svc="x",quantile="0.5"}"#, 1.2, now_ms);
    wait_exact(&prom, r#"rpc_seconds_sum{svc="x"}"#, 4.5, now_ms);
    wait_exact(&prom, "disk_free", 1.0000000000000002e300, now_ms);

    // The three messages that are not samples were counted, and their
    // offsets committed with the rest.
    wait_committed(&kafka, end);
    let m = agg.metrics();
    assert_eq!(
        m.sum(
            "sluice_metric_lines_invalid_total",
            &[("source", "kafka"), ("reason", "not_a_sample")]
        ),
        3.0
    );
    assert_eq!(m.sum("sluice_events_dropped_total", &[("sink", "rw")]), 0.0);
    assert!(agg.logs().contains("not metric samples were skipped"), "{}", agg.logs());

    // Prometheus down: new samples are read but not committed until it
    // has taken them.
    let read = m.sum("sluice_source_events_total", &[("source", "kafka")]);
    let mut prom = prom;
    prom.stop();
    let late: Vec<String> = (1..=5)
        .map(|i| {
            format!(
                r#"{{"metric":"late.count","kind":"counter","labels":{{}},"timestamp_ms":{},"value":{i}}}"#,
                now_ms + i
            )
        })
        .collect();
    produce(&kafka, &late);
    support::wait_until("the late samples read", WAIT, || {
        (agg.metrics().sum("sluice_source_events_total", &[("source", "kafka")]) >= read + 5.0).then_some(())
    });
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(2) {
        assert_eq!(committed(&kafka), end, "committed before the sink delivered");
        std::thread::sleep(Duration::from_millis(200));
    }
    prom.start_again();
    prom.wait_for_value("late_count", 5.0, WAIT);
    wait_committed(&kafka, end + 5);
}
