//! `Type=notify`: the real binary talks to a real unix datagram socket the
//! way systemd sets it up (`NOTIFY_SOCKET`, `WATCHDOG_USEC`), and a real
//! SIGTERM ends it.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Sluice, Stdout};

/// The next datagram, or `None` after `timeout`.
fn recv(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
        Err(e) => panic!("recv on the notify socket: {e}"),
    }
}

fn has(msg: &str, assignment: &str) -> bool {
    msg.lines().any(|l| l == assignment)
}

#[test]
fn notifies_ready_then_feeds_the_watchdog_then_reports_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();

    let t0 = Instant::now();
    // Stdin stays open: the pipeline runs until the signal.
    let sluice = Sluice::builder()
        .env("NOTIFY_SOCKET", &path)
        // 400 ms: pings every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .env("SLUICE_API_ADDRESS", "127.0.0.1:0")
        .env("SLUICE_LOG", "warn")
        .stdin_piped()
        .stdout(Stdout::Null)
        .start();

    let first = recv(&sock, Duration::from_secs(10)).expect("READY=1 within 10 s");
    assert!(has(&first, "READY=1"), "first message must be READY=1, got {first:?}");

    let mut pings = Vec::new();
    while pings.len() < 3 {
        let msg = recv(&sock, Duration::from_secs(5)).expect("a watchdog ping within 5 s");
        assert!(!has(&msg, "READY=1"), "READY=1 is sent once");
        if has(&msg, "WATCHDOG=1") {
            pings.push(Instant::now());
        }
    }
    // Three pings at ~200 ms: well inside the 400 ms timeout each, not a flood.
    let spacing = pings[2] - pings[0];
    assert!(
        spacing >= Duration::from_millis(250) && spacing < Duration::from_millis(1500),
        "two ping intervals took {spacing:?}"
    );

    sluice.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stopping = false;
    while Instant::now() < deadline {
        match recv(&sock, Duration::from_millis(500)) {
            Some(msg) if has(&msg, "STOPPING=1") => {
                stopping = true;
                break;
            }
            Some(_) => {}
            None => {}
        }
    }
    assert!(stopping, "STOPPING=1 after SIGTERM");
    let status = sluice.wait(Duration::from_secs(30).saturating_sub(t0.elapsed()));
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

#[test]
fn a_reload_is_announced_as_reloading_then_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let sluice = Sluice::builder()
        .config("[api]\naddress = \"127.0.0.1:0\"\n[sources.in]\ntype = \"stdin\"\n[sinks.out]\ntype = \"blackhole\"\n")
        .env("NOTIFY_SOCKET", &path)
        .env_remove("WATCHDOG_USEC")
        .env("SLUICE_LOG", "warn")
        .stdin_piped()
        .stdout(Stdout::Null)
        .start();
    let first = recv(&sock, Duration::from_secs(10)).expect("READY=1 within 10 s");
    assert!(has(&first, "READY=1"), "{first:?}");

    sluice.signal(libc::SIGHUP);
    let reloading = recv(&sock, Duration::from_secs(10)).expect("RELOADING=1 after SIGHUP");
    assert!(has(&reloading, "RELOADING=1"), "{reloading:?}");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MONOTONIC_USEC in {reloading:?}"));
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let now_usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    assert!(
        usec <= now_usec && now_usec - usec < 10_000_000,
        "MONOTONIC_USEC {usec} is not about now ({now_usec})"
    );
    let ready = recv(&sock, Duration::from_secs(10)).expect("READY=1 after the reload");
    assert!(has(&ready, "READY=1"), "{ready:?}");
    assert!(sluice.try_status().is_none(), "SIGHUP must not end sluice");
}

#[test]
fn watchdog_variables_without_a_notify_socket_are_harmless() {
    let mut cmd = Command::new(support::sluice::BIN);
    cmd.env_remove("NOTIFY_SOCKET")
        .env("WATCHDOG_USEC", "100000")
        .env("SLUICE_API_ENABLED", "false")
        .env("SLUICE_LOG", "warn");
    let out = support::run_bounded(cmd, None, Duration::from_secs(30));
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.stderr.is_empty(),
        "no warning expected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
