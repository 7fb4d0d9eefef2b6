//! The Kafka sink against a real Kafka-protocol broker (tansu) on loopback,
//! and against librdkafka's in-process mock cluster for request errors.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::kafka::{events, id_of, read_topic, read_until, Kafka, Record, KAFKA_TIMEOUT};
use support::Sluice;

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

fn kafka_config(bootstrap: &str, sink: &str) -> String {
    format!(
        r#"
shutdown_timeout = "20s"
[api]
address = "127.0.0.1:0"
[sources.in]
type = "stdin"
[sinks.out]
type = "stdout"
[sinks.k]
type = "kafka"
bootstrap_servers = "{bootstrap}"
{sink}
"#
    )
}

/// Runs sluice over `input` to completion and returns what it wrote on
/// stdout (the events exactly as every sink received them).
fn run_to_end(config: &str, input: &[String]) -> Vec<String> {
    let mut s = Sluice::with_stdin(config);
    s.write_lines(input);
    s.close_stdin();
    let status = s.wait(RUN_TIMEOUT);
    assert!(status.success(), "sluice failed ({status}):\n{}", s.logs());
    let out = s.lines();
    assert_eq!(out.len(), input.len(), "stdout lines");
    out
}

#[test]
fn every_event_arrives_exactly_once_as_written_with_topic_and_key_from_fields() {
    let broker = Kafka::start();
    let input = events(0, 3000, 120);
    let config = kafka_config(&broker.addr, "topic = \"logs-{{ service }}\"\nkey_field = \"id\"");
    let written = run_to_end(&config, &input);

    // What stdout got, by the topic each event must land in.
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in &written {
        let v: serde_json::Value = serde_json::from_str(line).expect("stdout is JSON");
        let service = v["service"].as_str().expect("service");
        expected.entry(format!("logs-{service}")).or_default().push(line.clone());
    }
    assert_eq!(expected.len(), 3);
    for (topic, lines) in &expected {
        let got = read_topic(&broker.addr, topic, lines.len(), KAFKA_TIMEOUT);
        assert_eq!(got.len(), lines.len(), "messages in {topic}: exactly once");
        let mut payloads: Vec<String> = got.iter().map(|m| String::from_utf8(m.payload.clone()).expect("UTF-8")).collect();
        let mut want = lines.clone();
        payloads.sort();
        want.sort();
        assert_eq!(payloads, want, "{topic}: byte-identical events");
        for m in &got {
            let key = m.key.as_deref().expect("every message has a key");
            assert_eq!(key, id_of(&m.payload).to_string().as_bytes(), "key is the id field");
        }
    }
}

#[test]
fn every_compression_codec_delivers_events_intact() {
    let broker = Kafka::start();
    for (i, codec) in ["none", "gzip", "snappy", "lz4", "zstd"].into_iter().enumerate() {
        let input = events(i * 1000, 400, 200);
        let topic = format!("codec-{codec}");
        let config = kafka_config(&broker.addr, &format!("topic = \"{topic}\"\ncompression = \"{codec}\""));
        let mut written = run_to_end(&config, &input);
        let got = read_topic(&broker.addr, &topic, input.len(), KAFKA_TIMEOUT);
        assert_eq!(got.len(), input.len(), "{codec}: exactly once");
        let mut got: Vec<String> = got.into_iter().map(|m| String::from_utf8(m.payload).expect("UTF-8")).collect();
        got.sort();
        written.sort();
        assert_eq!(got, written, "{codec}: byte-identical events");
    }
}

#[test]
fn broker_restart_mid_stream_delivers_every_event_at_least_once() {
    let mut broker = Kafka::start_persistent();
    broker.create_topic("restart", 2);
    // Short timeouts so both recovery paths run within the outage:
    // librdkafka's own reconnects and the sink's retries of timed-out
    // messages.
    let sink = r#"topic = "restart"
[sinks.k.librdkafka_options]
"message.timeout.ms" = "3000"
"reconnect.backoff.max.ms" = "500"
"#;
    let mut s = Sluice::with_stdin(&kafka_config(&broker.addr, sink));
    let total = 3000;
    let input = events(0, total, 150);
    for chunk in input[..1500].chunks(100) {
        s.write_lines(chunk);
        std::thread::sleep(Duration::from_millis(30));
    }
    broker.down();
    let down_at = Instant::now();
    for chunk in input[1500..].chunks(100) {
        s.write_lines(chunk);
        std::thread::sleep(Duration::from_millis(30));
    }
    // The broker stays down for about 7 s in all.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(down_at.elapsed()));
    assert_eq!(s.ready_status(), 503, "/ready reports the sink while its broker is down");
    broker.up();
    s.close_stdin();
    let status = s.wait(RUN_TIMEOUT);
    assert!(status.success(), "sluice failed ({status}):\n{}", s.logs());

    let count = |got: &[Record]| {
        let mut seen = vec![0u32; total];
        for m in got {
            seen[id_of(&m.payload) as usize] += 1;
        }
        seen
    };
    let got = read_until(&broker.addr, "restart", KAFKA_TIMEOUT, |got| count(got).iter().all(|&n| n > 0));
    let seen = count(&got);
    let missing: Vec<usize> = (0..total).filter(|&i| seen[i] == 0).collect();
    assert!(
        missing.is_empty(),
        "{} events lost, first {:?}\nbroker log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        broker.log()
    );
}

#[test]
fn unreachable_brokers_stop_start_up_with_an_error_naming_them() {
    let dead = Kafka::reserve();
    let config = format!(
        r#"
[api]
enabled = false
[sources.in]
type = "stdin"
[sinks.k]
type = "kafka"
bootstrap_servers = "{}"
topic = "t"
healthcheck_timeout = "2s"
"#,
        dead.addr
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).expect("config");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("--config").arg(&path);
    let started = Instant::now();
    let out = support::run_bounded(cmd, Some(b""), Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start-up must fail: {stderr}");
    assert!(stderr.contains(&dead.addr), "the error names the brokers: {stderr}");
    assert!(stderr.contains("cannot reach the Kafka brokers"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "bounded by healthcheck_timeout");
}

/// The mock cluster answers produce requests with errors first; with
/// librdkafka's own retries off, the sink's retries must get every event
/// through, and count what they did.
#[test]
fn produce_errors_are_retried_by_the_sink_until_every_event_is_delivered() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("mock", 1, 1).expect("topic");
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let bootstrap = mock.bootstrap_servers();
    let sink = r#"topic = "mock"
[sinks.k.librdkafka_options]
"message.send.max.retries" = "0"
"#;
    let mut s = Sluice::with_stdin(&kafka_config(&bootstrap, sink));
    let input = events(0, 500, 80);
    s.write_lines(&input);
    support::eventually("every event delivered", RUN_TIMEOUT, || {
        s.metric("sluice_sink_events_total{sink=\"k\"}") >= input.len() as f64
    });
    let m = s.metrics();
    assert!(m.value("sluice_sink_retries_total{sink=\"k\"}") >= 1.0, "{m:?}");
    let errors: f64 = m.sum("sluice_sink_errors_total", &[]);
    assert!(errors >= 1.0, "errors are counted by kind: {m:?}");
    s.close_stdin();
    assert!(s.wait(RUN_TIMEOUT).success(), "{}", s.logs());

    let got = read_topic(&bootstrap, "mock", input.len(), KAFKA_TIMEOUT);
    let mut ids: Vec<u64> = got.iter().map(|m| id_of(&m.payload)).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), input.len(), "every event at least once");
}

/// A message the broker can never take is dropped and counted, and the
/// sink moves on (no endless retry): sluice exits at end of input.
#[test]
fn messages_the_broker_rejects_for_good_are_dropped_and_counted() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("big", 1, 1).expect("topic");
    mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE]);
    let bootstrap = mock.bootstrap_servers();
    let sink = r#"topic = "big"
[sinks.k.librdkafka_options]
"message.send.max.retries" = "0"
"linger.ms" = "50"
"#;
    let mut s = Sluice::with_stdin(&kafka_config(&bootstrap, sink));
    let input = events(0, 200, 80);
    s.write_lines(&input);
    let m = support::wait_until("rejected messages counted", RUN_TIMEOUT, || {
        let m = s.metrics();
        let dropped = m.value("sluice_events_dropped_total{component=\"k\",reason=\"message_too_large\"}");
        let sent = m.value("sluice_sink_events_total{sink=\"k\"}");
        (dropped >= 1.0 && dropped + sent >= input.len() as f64).then_some(m)
    });
    let dropped = m
        .series("sluice_events_dropped_total{component=\"k\",reason=\"message_too_large\"}")
        .expect("the sample is on /metrics");
    // Errors count failed deliveries as librdkafka reports them: one
    // refused Produce request may carry several messages, so errors are at
    // least one and at most the messages dropped.
    let errors = m
        .series("sluice_sink_errors_total{kind=\"message_too_large\",sink=\"k\"}")
        .expect("the sample is on /metrics");
    assert!(errors >= 1.0 && errors <= dropped, "errors {errors}, dropped {dropped}");
    s.close_stdin();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());
    let delivered = input.len() - dropped as usize;
    let got = read_topic(&bootstrap, "big", delivered, KAFKA_TIMEOUT);
    assert_eq!(got.len(), delivered);
}

/// While the broker is down every Kafka client error is logged once: one
/// report is one line, not two identical lines microseconds apart.
#[test]
fn broker_outage_logs_each_client_error_once() {
    let mut broker = Kafka::start_persistent();
    broker.create_topic("outage", 1);
    let sink = r#"topic = "outage"
[sinks.k.librdkafka_options]
"reconnect.backoff.ms" = "100"
"reconnect.backoff.max.ms" = "500"
"#;
    let mut s = Sluice::with_stdin(&kafka_config(&broker.addr, sink));
    s.write_lines(&events(0, 100, 50));
    broker.down();
    s.write_lines(&events(100, 100, 50));
    std::thread::sleep(Duration::from_secs(4));
    broker.up();
    s.close_stdin();
    let status = s.wait(RUN_TIMEOUT);
    let stderr = s.logs();
    assert!(status.success(), "sluice failed ({status}):\n{stderr}");
    // Each WARN or ERROR line without its timestamp, with the time it was
    // written: the same text twice within 50 ms is one report logged twice.
    let mut last: BTreeMap<String, jiff::Timestamp> = BTreeMap::new();
    let mut client_errors = 0;
    let mut twice = Vec::new();
    for line in stderr.lines() {
        let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if !matches!(fields.get("level").and_then(|l| l.as_str()), Some("WARN" | "ERROR")) {
            continue;
        }
        let Some(at) = fields.remove("timestamp").and_then(|t| t.as_str()?.parse::<jiff::Timestamp>().ok()) else {
            continue;
        };
        let text = serde_json::Value::Object(fields).to_string();
        if text.contains("Kafka client error") {
            client_errors += 1;
        }
        if let Some(before) = last.insert(text.clone(), at) {
            if at.duration_since(before) < jiff::SignedDuration::from_millis(50) {
                twice.push(text);
            }
        }
    }
    assert!(client_errors > 0, "the outage is logged:\n{stderr}");
    assert!(twice.is_empty(), "logged twice: {twice:#?}");
}
