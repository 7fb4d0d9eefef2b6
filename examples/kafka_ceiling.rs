//! The broker's own ceiling for `scripts/bench-kafka`: a plain librdkafka
//! producer sends every line of a file as one message, with the settings the
//! Kafka sink uses by default (acks=all, no compression), and reports
//! events per second from the first send to the last delivery. Delivery
//! reports are served on librdkafka's polling thread (`ThreadedProducer`),
//! so the sending loop does nothing but send.
//!
//! `cargo run --release --example kafka_ceiling -- <bootstrap> <topic> <file>`

use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts delivery reports.
#[derive(Default)]
struct Counter {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Counter {}

impl ProducerContext for Counter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, bootstrap, topic, file] = args.as_slice() else {
        eprintln!("usage: kafka_ceiling <bootstrap> <topic> <file>");
        std::process::exit(2);
    };
    let data = std::fs::read(file).unwrap_or_else(|e| {
        eprintln!("cannot read {file}: {e}");
        std::process::exit(1);
    });
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let producer: ThreadedProducer<Counter> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("compression.codec", "none")
        .set("queue.buffering.max.kbytes", "16384")
        .create_with_context(Counter::default())
        .unwrap_or_else(|e| {
            eprintln!("cannot create the producer: {e}");
            std::process::exit(1);
        });
    let started = Instant::now();
    for line in &lines {
        let mut record = BaseRecord::<(), [u8]>::to(topic).payload(line);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    std::thread::sleep(Duration::from_millis(1));
                    record = r;
                }
                Err((e, _)) => {
                    eprintln!("send failed: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    if let Err(e) = producer.flush(Duration::from_secs(120)) {
        eprintln!("flush failed: {e}");
        std::process::exit(1);
    }
    let secs = started.elapsed().as_secs_f64();
    let ctx = producer.context();
    let delivered = ctx.delivered.load(Ordering::Relaxed);
    println!(
        "plain producer: {} events delivered ({} failed) in {secs:.2} s = {:.0} events/s, {:.1} MB/s",
        delivered,
        ctx.failed.load(Ordering::Relaxed),
        delivered as f64 / secs,
        data.len() as f64 / secs / 1e6
    );
}
