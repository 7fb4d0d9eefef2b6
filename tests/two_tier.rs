//! The two-tier topology, end to end with real processes and a real
//! Kafka-protocol broker: agents (stdin → Kafka sink) and an aggregator
//! (Kafka source, consumer group → stdout). Every event the agents accepted
//! reaches the aggregator's sink, and the agents' metadata survives the hop.

mod support;

use std::collections::HashSet;
use std::time::Duration;
use support::Kafka;
use support::{Sluice, Stdout};

fn agent(kafka: &Kafka, topic: &str, release: &str, seqs: std::ops::Range<u64>) {
    let config = format!(
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
    );
    let mut agent = Sluice::builder()
        .config(&config)
        .env("SLUICE_RELEASE", release)
        .env("SLUICE_PROCESS_TYPE", "web")
        .env("SLUICE_LOG", "warn")
        .stdin_piped()
        .stdout(Stdout::Null)
        .start();
    let input: String = seqs
        .map(|seq| format!("{{\"seq\":{seq},\"msg\":\"request done\",\"status\":200}}\n"))
        .collect();
    agent.write(input);
    agent.close_stdin();
    // Exit 0 at end of input means every event was delivered to Kafka.
    let status = agent.wait(Duration::from_secs(60));
    assert!(status.success(), "agent exit {status:?}");
}

#[test]
fn agents_to_kafka_to_aggregator_delivers_every_event_with_agent_metadata() {
    let kafka = Kafka::start();
    let topic = "two-tier";
    kafka.create_topic(topic, 2);
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
    let aggregator = Sluice::start(&config);
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
