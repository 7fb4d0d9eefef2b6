//! The two-tier topology, end to end with real processes and a real
//! Kafka-protocol broker: agents (stdin → Kafka sink) and an aggregator
//! (Kafka source, consumer group → stdout). Every event the agents accepted
//! reaches the aggregator's sink, and the agents' metadata survives the hop.

mod running;
mod support;

use running::{Output, Sluice};
use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::Kafka;

fn agent(kafka: &Kafka, topic: &str, release: &str, seqs: std::ops::Range<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[api]
enabled = false
[sources.stdin]
type = "stdin"
[sinks.kafka]
type = "kafka"
bootstrap_servers = "{addr}"
topic = "{topic}"
key_field = "seq"
"#,
            addr = kafka.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&config)
        .env("SLUICE_RELEASE", release)
        .env("SLUICE_PROCESS_TYPE", "web")
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for seq in seqs {
        writeln!(stdin, r#"{{"seq":{seq},"msg":"request done","status":200}}"#).unwrap();
    }
    drop(stdin);
    // Exit 0 at end of input means every event was delivered to Kafka.
    let status = support::wait_until("agent to exit", Duration::from_secs(60), || child.try_wait().unwrap());
    assert!(status.success(), "agent exit {status:?}");
}

#[test]
fn agents_to_kafka_to_aggregator_delivers_every_event_with_agent_metadata() {
    let kafka = Kafka::start();
    let topic = "two-tier";
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(kafka.create_topic(topic, 2));
    agent(&kafka, topic, "v1", 0..3000);
    agent(&kafka, topic, "v2", 3000..6000);

    let config = format!(
        r#"
[api]
address = "127.0.0.1:0"
[enrich]
release = "aggregator"
[sources.kafka]
type = "kafka"
bootstrap_servers = "{addr}"
topics = ["{topic}"]
group_id = "aggregators"
session_timeout = "6s"
[sources.kafka.librdkafka_options]
"heartbeat.interval.ms" = "500"
[sinks.out]
type = "stdout"
"#,
        addr = kafka.addr
    );
    let aggregator = Sluice::start(&config, Output::Lines);
    let events = aggregator.events(6000, Duration::from_secs(120));
    let mut seen = HashSet::new();
    for e in &events {
        let seq = e["seq"].as_u64().unwrap();
        let want = if seq < 3000 { "v1" } else { "v2" };
        assert_eq!(e["release"]["version"], want, "the agent's release wins over the aggregator's: {e}");
        assert_eq!(e["process"]["type"], "web", "{e}");
        seen.insert(seq);
    }
    assert_eq!(seen.len(), 6000, "every event reaches the aggregator's sink");
}
