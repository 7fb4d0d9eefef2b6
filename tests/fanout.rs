//! Fan-out isolation: one source, two sinks, one of them a Kafka sink whose
//! broker is down. With a disk buffer the healthy sink keeps full speed; with
//! a blocking memory buffer it stalls (the control that shows the first test
//! can fail). In Vector one failing sink stalls every sink sharing a source
//! (#19938).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::eventually;
use support::kafka::{events, id_of, read_until, Kafka, KAFKA_TIMEOUT};
use support::Sluice;

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// About 16 MB of events: twice the default memory queue budget.
const EVENTS: usize = 40_000;

fn config(data_dir: &Path, bootstrap: &str, topic: &str, buffer: &str) -> String {
    format!(
        r#"
data_dir = "{}"
shutdown_timeout = "5s"
[api]
address = "127.0.0.1:0"
[sources.in]
type = "stdin"
[sinks.out]
type = "stdout"
[sinks.k]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
healthcheck = false
[sinks.k.librdkafka_options]
"reconnect.backoff.max.ms" = "500"
[sinks.k.buffer]
{buffer}
"#,
        data_dir.display()
    )
}

#[test]
fn dead_sink_with_a_disk_buffer_does_not_slow_the_others() {
    let mut broker = Kafka::reserve();
    let data = tempfile::tempdir().expect("temp dir");
    let cfg = config(data.path(), &broker.addr, "isolated", "type = \"disk\"\nmax_bytes = \"256MiB\"");
    let input = events(0, EVENTS, 300);
    let mut s = Sluice::with_stdin(&cfg);
    let started = Instant::now();
    let writer = s.feed(input.clone(), true);
    eventually("every event on stdout while Kafka is down", RUN_TIMEOUT, || s.count() >= EVENTS);
    let healthy_took = started.elapsed();
    let stdin = writer.join().expect("writer");
    eventually("/ready reports the dead broker", RUN_TIMEOUT, || s.ready_status() == 503);
    assert_eq!(s.metric("sluice_sink_events_total{sink=\"k\"}"), 0.0, "the broker really is down");
    // The disk buffer took every event (so the source could move on), and
    // stdout's queue too: no gap between the sinks holds a checkpoint back.
    eventually("the disk buffer took every event", RUN_TIMEOUT, || {
        s.metric("sluice_buffer_received_events_total{sink=\"k\"}") == EVENTS as f64
    });
    assert_eq!(s.metric("sluice_buffer_received_events_total{sink=\"out\"}"), EVENTS as f64);
    eprintln!("stdout received {EVENTS} events in {healthy_took:?} with the Kafka broker down");

    broker.up();
    eventually("every event reaches Kafka once the broker is up", RUN_TIMEOUT, || {
        s.metric("sluice_sink_events_total{sink=\"k\"}") >= EVENTS as f64
    });
    eventually("/ready recovers", RUN_TIMEOUT, || s.ready_status() == 200);
    drop(stdin);
    let status = s.wait(RUN_TIMEOUT);
    assert!(status.success(), "{}", s.logs());
    let got = read_until(&broker.addr, "isolated", KAFKA_TIMEOUT, |got| got.len() >= EVENTS);
    let mut ids: Vec<u64> = got.iter().map(|m| id_of(&m.payload)).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), EVENTS, "every event reached Kafka");
    assert_eq!(s.count(), EVENTS, "and stdout, once");
}

/// The control: the same dead sink with a small blocking memory queue holds
/// the healthy sink back, so the test above measures something real.
#[test]
fn dead_sink_with_a_blocking_memory_buffer_stalls_the_others() {
    let mut broker = Kafka::reserve();
    let data = tempfile::tempdir().expect("temp dir");
    let cfg = config(
        data.path(),
        &broker.addr,
        "stalled",
        "type = \"memory\"\nmax_bytes = \"2MiB\"\nwhen_full = \"block\"",
    );
    let input = events(0, EVENTS, 300);
    let mut s = Sluice::with_stdin(&cfg);
    let writer = s.feed(input.clone(), false);
    let stalled = support::wait_until("the healthy sink to stall", RUN_TIMEOUT, || {
        let before = s.count();
        std::thread::sleep(Duration::from_millis(1500));
        let after = s.count();
        (after > 0 && after == before).then_some(after)
    });
    assert!(
        stalled < EVENTS / 2,
        "stdout stalls with the dead sink's queue: {stalled} of {EVENTS}"
    );
    // librdkafka has copied what it could take (its own cap is 16 MiB), yet
    // the budget still counts those batches until the broker has them.
    let queued = s.metric("sluice_buffer_bytes{sink=\"k\"}");
    assert!(
        queued > (1 << 20) as f64 && queued <= (2 << 20) as f64,
        "the 2 MiB budget is held for undelivered batches: {queued}"
    );

    broker.up();
    let status = s.wait(RUN_TIMEOUT);
    assert!(status.success(), "{}", s.logs());
    let _ = writer.join();
    assert_eq!(s.count(), EVENTS);
}
