//! Memory is bounded by configuration, never by the input: with a dead sink
//! and far more input offered than the queue budget, the process stops
//! reading instead of growing. (`scripts/bench-memory` measures the figure on
//! the release build; this test only catches unbounded growth.)

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::kafka::Kafka;
use support::Sluice;

const BUDGET: u64 = 32 << 20;

/// Peak resident set of a process, from /proc.
fn vm_hwm_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

#[test]
fn dead_sink_with_a_blocking_memory_queue_keeps_memory_within_a_small_multiple_of_its_budget() {
    let broker = Kafka::reserve();
    let cfg = format!(
        r#"
shutdown_timeout = "1s"
[api]
address = "127.0.0.1:0"
[sources.in]
type = "stdin"
[sinks.k]
type = "kafka"
bootstrap_servers = "{}"
topic = "dead"
healthcheck = false
[sinks.k.buffer]
type = "memory"
max_events = 10000000
max_bytes = {BUDGET}
when_full = "block"
"#,
        broker.addr
    );
    let mut s = Sluice::with_stdin(&cfg);
    let mut stdin = s.take_stdin();
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (w, st) = (written.clone(), stop.clone());
    // Up to 300 MB, generated as it goes; the writer blocks once sluice
    // stops reading.
    let writer = std::thread::spawn(move || {
        let mut id = 0u64;
        let mut buf = String::with_capacity(1 << 20);
        while w.load(Ordering::Relaxed) < 300 << 20 && !st.load(Ordering::Relaxed) {
            buf.clear();
            while buf.len() < (1 << 20) - 512 {
                buf.push_str(&format!(
                    r#"{{"id":{id},"service":"svc-{}","level":"info","msg":"request handled","path":"/api/v1/items/{id}","status":200,"duration_ms":12.5,"user":"u-{}"}}"#,
                    id % 7,
                    id % 1000
                ));
                buf.push('\n');
                id += 1;
            }
            if stdin.write_all(buf.as_bytes()).is_err() {
                return;
            }
            w.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
    });
    let accepted = support::wait_until("sluice to stop reading", Duration::from_secs(120), || {
        let before = written.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(2));
        let after = written.load(Ordering::Relaxed);
        (after == before && after > 0).then_some(after)
    });
    let peak = vm_hwm_bytes(s.pid());
    eprintln!(
        "accepted {} MiB of input before pushing back; peak RSS {} MiB for a {} MiB queue budget",
        accepted >> 20,
        peak >> 20,
        BUDGET >> 20
    );
    assert!(accepted < 300 << 20, "sluice pushed back instead of reading everything");
    assert!(peak < 4 * BUDGET, "peak RSS {} MiB is not bounded by the budget", peak >> 20);
    stop.store(true, Ordering::Relaxed);
    drop(s);
    let _ = writer.join();
}
