//! A stdout reader that stops reading: sluice stops reading stdin (the
//! writer blocks), memory stays near the queue budget, and every line
//! arrives once the reader resumes. Precise memory figures are measured in
//! `scripts/bench stalled`; this test catches unbounded growth.

mod support;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{Sluice, Stdout};

#[test]
fn stalled_stdout_reader_bounds_memory_and_loses_nothing() {
    let mut sluice = Sluice::builder()
        .config(
            "[api]\nenabled = false\n[sources.stdin]\ntype = \"stdin\"\n[sinks.stdout]\ntype = \"stdout\"\n\
             [sinks.stdout.buffer]\nmax_bytes = \"4MiB\"\n",
        )
        .env("SLUICE_LOG", "warn")
        .stdin_piped()
        .stdout(Stdout::Raw)
        .start();
    let mut stdin = sluice.take_stdin();
    let line = format!("{{\"msg\":\"{}\",\"n\":1}}\n", "x".repeat(200));
    let block: Vec<u8> = line.repeat(4096).into_bytes();
    let total: u64 = 100 << 20;
    let offered = Arc::new(AtomicU64::new(0));
    let offered_w = offered.clone();
    let writer = std::thread::spawn(move || {
        let mut sent = 0u64;
        let mut lines = 0u64;
        while sent < total {
            stdin.write_all(&block).unwrap();
            sent += block.len() as u64;
            lines += 4096;
            offered_w.store(sent, Ordering::Relaxed);
        }
        lines
    });

    std::thread::sleep(Duration::from_secs(3));
    let accepted_while_stalled = offered.load(Ordering::Relaxed);
    assert!(
        accepted_while_stalled < total / 4,
        "the writer is held back: {accepted_while_stalled} bytes taken"
    );
    let hwm = sluice.memory_kib("VmHWM");
    assert!(hwm < 64 * 1024, "peak RSS {hwm} KiB with a 4 MiB queue budget");

    let mut stdout = sluice.take_stdout();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    let lines = writer.join().unwrap();
    assert!(sluice.wait(Duration::from_secs(60)).success(), "{}", sluice.logs());
    assert_eq!(got, lines, "every offered line arrives once the reader resumes");
}
