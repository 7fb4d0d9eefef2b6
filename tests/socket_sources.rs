//! Socket sources with real clients and real kernels: peer process
//! metadata on unix sockets, safe socket files, TCP and UDP from socat,
//! TLS with client certificates, backpressure to a TCP sender, bounded
//! memory under load and with many idle connections, counted datagram
//! overflow.

mod support;

use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{run_client, sluice::proc_status_kib, wait_for_path, Sluice, Stdout};

const WAIT: Duration = Duration::from_secs(30);

fn unix_config(mode: &str, extra: &str) -> String {
    format!(
        r#"
[api]
enabled = false
[enrich]
disable_host = true
release = "collector-release"
[sources.app]
type = "socket"
mode = "{mode}"
path = "{{dir}}/app.sock"
{extra}
[sinks.out]
type = "stdout"
"#
    )
}

#[test]
fn unix_stream_peer_is_identified_by_pid_command_executable_and_its_release_variables() {
    let s = Sluice::start(&unix_config(
        "unix_stream",
        r#"peer_environment = ["SLUICE_RELEASE", "GIT_SHA", "NOT_SET"]"#,
    ));
    let sock = s.path("app.sock");
    wait_for_path(&sock, WAIT);
    let script = format!(
        r#"
import socket, time, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({sock:?})
for i in range(3):
    s.sendall(b'{{"i":%d,"msg":"hello"}}\n' % i)
time.sleep(0.5)  # stay alive while sluice reads /proc
s.close()
"#,
        sock = sock.display().to_string()
    );
    let mut client = Command::new("python3")
        .args(["-c", &script, "peer-marker-arg"])
        .env("SLUICE_RELEASE", "v9-peer")
        .env("GIT_SHA", "abc123")
        .env("SECRET_TOKEN", "must-not-leak")
        .spawn()
        .unwrap();
    let pid = client.id();
    let events = s.events(3, WAIT);
    assert!(client.wait().unwrap().success());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["i"], i);
        let p = &e["process"];
        assert_eq!(p["pid"], pid, "{e}");
        assert!(p["command"].as_str().unwrap().contains("peer-marker-arg"), "{e}");
        assert!(p["executable"].as_str().unwrap().contains("python"), "{e}");
        assert_eq!(p["uid"], unsafe { libc::getuid() });
        assert_eq!(p["gid"], unsafe { libc::getgid() });
        assert_eq!(p["environment"], json!({"GIT_SHA": "abc123"}));
        assert_eq!(
            e["release"]["version"], "v9-peer",
            "the peer's release wins over the collector's: {e}"
        );
        assert!(!e.to_string().contains("must-not-leak"));
    }
}

#[test]
fn unix_datagram_sender_is_identified_from_scm_credentials() {
    let s = Sluice::start(&unix_config("unix_datagram", r#"peer_environment = ["SLUICE_RELEASE"]"#));
    let sock = s.path("app.sock");
    wait_for_path(&sock, WAIT);
    let script = format!(
        r#"
import socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b'{{"n":1}}\n{{"n":2}}\n', {sock:?})
s.sendto(b'{{"n":3}}', {sock:?})
time.sleep(0.5)
"#,
        sock = sock.display().to_string()
    );
    let mut client = Command::new("python3")
        .args(["-c", &script])
        .env("SLUICE_RELEASE", "v2")
        .spawn()
        .unwrap();
    let pid = client.id();
    let events = s.events(3, WAIT);
    assert!(client.wait().unwrap().success());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["n"], i + 1, "several lines per datagram, and a last line without newline: {e}");
        assert_eq!(e["process"]["pid"], pid);
        assert_eq!(e["release"]["version"], "v2");
    }
}

#[test]
fn a_stale_socket_file_is_replaced_but_a_live_socket_or_a_regular_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    // A socket file left by a process that is gone.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let first = Sluice::builder().in_dir(dir).config(&unix_config("unix_stream", "")).start();
    first.wait_for_log("replacing a stale socket file", WAIT);
    first.wait_for_log("listening on a unix stream socket", WAIT);
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.write_all(b"{\"ok\":1}\n").unwrap();
    assert_eq!(first.events(1, WAIT)[0]["ok"], 1);

    // A second collector on the same, live, socket refuses to start.
    let other = tempfile::tempdir().unwrap();
    let live = unix_config("unix_stream", "").replace("{dir}/app.sock", &sock.display().to_string());
    let second = Sluice::builder().in_dir(other).config(&live).start();
    assert!(!second.wait(WAIT).success());
    assert!(second.logs().contains("is in use"), "{}", second.logs());
    c.write_all(b"{\"ok\":2}\n").unwrap();
    assert_eq!(first.events(1, WAIT)[0]["ok"], 2, "the first collector still owns its socket");

    // Something that is not a socket is never replaced.
    let plain = tempfile::tempdir().unwrap();
    let file = plain.path().join("app.sock");
    std::fs::write(&file, "precious").unwrap();
    let third = Sluice::builder().in_dir(plain).config(&unix_config("unix_datagram", "")).start();
    assert!(!third.wait(WAIT).success());
    assert!(third.logs().contains("is not a socket"), "{}", third.logs());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");

    // At shutdown the collector removes its socket file.
    first.signal(libc::SIGTERM);
    assert!(first.wait(WAIT).success());
    assert!(!sock.exists());
}

#[test]
fn the_socket_file_gets_the_configured_mode_and_owner() {
    let s = Sluice::start(&unix_config(
        "unix_datagram",
        "permissions = \"0620\"\nowner = \"root\"\ngroup = \"0\"",
    ));
    let sock = s.path("app.sock");
    wait_for_path(&sock, WAIT);
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o620);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
}

/// A socket source `name` with `settings`, the API on an ephemeral port
/// (the test reads it from the logs), and a stdout sink `out`.
fn socket_config(name: &str, settings: &str) -> String {
    format!(
        r#"
[api]
address = "127.0.0.1:0"
[enrich]
disable_host = true
[sources.{name}]
type = "socket"
{settings}
[sinks.out]
type = "stdout"
"#
    )
}

/// A TCP source on an ephemeral port (the test reads the port from the
/// logs) with the API on one too.
fn tcp_config(extra: &str) -> String {
    socket_config("tcp", &format!("mode = \"tcp\"\naddress = \"127.0.0.1:0\"\n{extra}"))
}

fn tcp_address(s: &mut Sluice) -> String {
    s.logged_address("listening on TCP", Some("tcp"), WAIT)
}

#[test]
fn ndjson_over_tcp_and_udp_from_socat_arrives_with_the_peer_address() {
    let config = tcp_config("") + "[sources.udp]\ntype = \"socket\"\nmode = \"udp\"\naddress = \"127.0.0.1:0\"\n";
    let mut s = Sluice::start(&config);
    let tcp = tcp_address(&mut s);
    let udp = s.logged_address("receiving datagrams", Some("udp"), WAIT);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.ndjson");
    let body: String = (0..1000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    std::fs::write(&file, &body).unwrap();
    run_client(
        Command::new("socat").args(["-u", &format!("FILE:{}", file.display()), &format!("TCP:{tcp}")]),
        WAIT,
    );
    let events = s.events(1000, WAIT);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e, &json!({"n": i, "peer": {"ip": "127.0.0.1"}}));
    }
    let dgram = dir.path().join("dgram");
    std::fs::write(&dgram, "{\"via\":\"udp\"}\n").unwrap();
    run_client(
        Command::new("socat").args(["-u", &format!("FILE:{}", dgram.display()), &format!("UDP:{udp}")]),
        WAIT,
    );
    assert_eq!(s.events(1, WAIT)[0], json!({"via": "udp", "peer": {"ip": "127.0.0.1"}}));
}

#[test]
fn oversize_frames_are_truncated_and_flagged_and_an_idle_connection_is_closed_with_its_last_line() {
    let mut s = Sluice::start(&tcp_config("max_frame_bytes = 64\nidle_timeout = \"300ms\""));
    let port = tcp_address(&mut s);
    let mut c = TcpStream::connect(&port).unwrap();
    let long = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(200));
    c.write_all(long.as_bytes()).unwrap();
    c.write_all(b"{\"after\":true}\nno newline yet").unwrap();
    let events = s.events(3, WAIT);
    assert_eq!(events[0]["truncated"], true);
    assert_eq!(events[0]["message"].as_str().unwrap().len(), 64);
    assert_eq!(events[1]["after"], true);
    assert_eq!(
        events[2]["message"], "no newline yet",
        "the partial line is kept when the idle connection closes"
    );
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(c.read(&mut buf).unwrap(), 0, "closed by the server after idle_timeout");
}

/// Self-signed CA, a server certificate for 127.0.0.1 and a client
/// certificate, made with the openssl command line tool.
fn make_certificates(dir: &std::path::Path) {
    let openssl = |args: &[&str]| run_client(Command::new("openssl").args(args).current_dir(dir), WAIT);
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=sluice test CA"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        openssl(&[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={who}")]].concat());
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &ext,
        ]);
    }
}

#[test]
fn tls_with_a_required_client_certificate_accepts_socat_with_one_and_refuses_it_without() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let d = certs.path().display();
    let config = tcp_config("")
        + &format!(
            "[sources.tcp.tls]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\nclient_ca_file = \"{d}/ca.pem\"\nclient_auth = \"required\"\n"
        );
    let mut s = Sluice::start(&config);
    let port = tcp_address(&mut s);
    let api = s.api_address();
    let input = certs.path().join("in.ndjson");
    std::fs::write(&input, "{\"secure\":1}\n{\"secure\":2}\n").unwrap();
    let target = |with_cert: bool| {
        let mut t = format!("OPENSSL:{port},cafile={d}/ca.pem,verify=1");
        if with_cert {
            t.push_str(&format!(",cert={d}/client.pem,key={d}/client.key"));
        }
        t
    };
    run_client(
        Command::new("socat").args(["-u", &format!("FILE:{}", input.display()), &target(true)]),
        WAIT,
    );
    let events = s.events(2, WAIT);
    assert_eq!(events[0]["secure"], 1);
    assert_eq!(events[1]["secure"], 2);

    // Without a client certificate the handshake fails: counted, nothing read.
    let status = Command::new("socat")
        .args(["-u", &format!("FILE:{}", input.display()), &target(false)])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let _ = status;
    let deadline = Instant::now() + WAIT;
    while support::scrape(&api).value(r#"sluice_source_connections_refused_total{reason="tls",source="tcp"}"#) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the refused handshake was not counted:\n{}",
            support::scrape(&api).text
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.remaining_events(Duration::from_millis(500)).is_empty());
}

#[test]
fn a_million_lines_over_tcp_into_a_slow_sink_lose_nothing_and_memory_stays_bounded() {
    const LINES: usize = 1_000_000;
    let config = tcp_config("") + "[sinks.out.buffer]\nmax_events = 10000\nmax_bytes = \"1MiB\"\n";
    let mut s = Sluice::builder().config(&config).stdout(Stdout::Raw).start();
    let port = tcp_address(&mut s);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("million.ndjson");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let pad = "p".repeat(80);
        for n in 0..LINES {
            writeln!(w, "{{\"n\":{n},\"pad\":\"{pad}\"}}").unwrap();
        }
    }
    let input_bytes = std::fs::metadata(&file).unwrap().len();
    let mut sender = Command::new("socat")
        .args(["-u", &format!("FILE:{}", file.display()), &format!("TCP:{port}")])
        .spawn()
        .unwrap();
    let baseline_kib = s.memory_kib("VmRSS");
    let mut out = BufReader::with_capacity(64 * 1024, s.take_stdout());
    let mut line = String::new();
    let mut want = String::new();
    let mut sender_was_held_back = false;
    let started = Instant::now();
    let pad = "p".repeat(80);
    for n in 0..LINES {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "output ended after {n} lines");
        want.clear();
        use std::fmt::Write as _;
        writeln!(want, "{{\"n\":{n},\"pad\":\"{pad}\",\"peer\":{{\"ip\":\"127.0.0.1\"}}}}").unwrap();
        assert_eq!(line, want, "every line exactly once, in order, byte-identical plus the peer");
        // The slow part: the first 100k lines are read at a crawl.
        if n < 100_000 && n % 1000 == 0 {
            std::thread::sleep(Duration::from_millis(5));
            if n == 50_000 {
                // Flow control reached the sender: it cannot have sent
                // everything while we have read 5%.
                sender_was_held_back = sender.try_wait().unwrap().is_none();
            }
        }
        assert!(started.elapsed() < Duration::from_secs(240), "too slow: {n} lines");
    }
    assert!(sender.wait().unwrap().success());
    let peak_kib = s.memory_kib("VmHWM");
    eprintln!(
        "{LINES} lines ({} MiB) in {:?}; RSS baseline {} MiB, peak {} MiB",
        input_bytes >> 20,
        started.elapsed(),
        baseline_kib >> 10,
        peak_kib >> 10
    );
    assert!(sender_was_held_back, "the sender was not held back by TCP flow control");
    // The input is ~100 MiB; the queue holds 1 MiB and a few read chunks
    // are in flight. Holding the input in memory would show here.
    assert!(
        peak_kib < baseline_kib + 48 * 1024,
        "peak RSS {peak_kib} KiB grew more than 48 MiB over {baseline_kib} KiB"
    );
}

#[test]
fn two_thousand_idle_connections_hold_little_memory_and_one_past_the_cap_is_refused_cleanly() {
    const CONNS: usize = 2000;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert!(
        limit.rlim_cur >= (CONNS as u64 + 200),
        "this test needs `ulimit -n` of at least {} (it is {})",
        CONNS + 200,
        limit.rlim_cur
    );
    let mut s = Sluice::start(&tcp_config(&format!("max_connections = {CONNS}")));
    let port = tcp_address(&mut s);
    let api = s.api_address();
    let before_kib = s.memory_kib("VmRSS");
    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| TcpStream::connect(&port).unwrap()).collect();
    let deadline = Instant::now() + WAIT;
    while support::scrape(&api).value(r#"sluice_source_connections{source="tcp"}"#) < CONNS as f64 {
        assert!(Instant::now() < deadline, "not all {CONNS} connections were accepted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let after_kib = s.memory_kib("VmRSS");
    eprintln!("{CONNS} idle connections: RSS {} -> {} KiB", before_kib, after_kib);
    // Idle connections hold no read buffer: a few KiB each at most.
    assert!(
        after_kib < before_kib + (CONNS as u64 * 16),
        "{CONNS} idle connections grew RSS from {before_kib} to {after_kib} KiB"
    );

    // Past the cap: accepted by the kernel, closed at once by sluice.
    let mut extra = TcpStream::connect(&port).unwrap();
    extra.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(extra.read(&mut buf).unwrap(), 0, "a connection past the cap is closed");
    assert_eq!(
        support::scrape(&api).value(r#"sluice_source_connections_refused_total{reason="limit",source="tcp"}"#),
        1.0
    );

    // The open ones still work, and closing some makes room again.
    conns[CONNS - 1].write_all(b"{\"from\":\"the last one\"}\n").unwrap();
    assert_eq!(s.events(1, WAIT)[0]["from"], "the last one");
    conns.truncate(CONNS - 10);
    let deadline = Instant::now() + WAIT;
    while support::scrape(&api).value(r#"sluice_source_connections{source="tcp"}"#) > (CONNS - 10) as f64 {
        assert!(Instant::now() < deadline, "closed connections were not released");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut again = TcpStream::connect(&port).unwrap();
    again.write_all(b"{\"from\":\"a new one\"}\n").unwrap();
    assert_eq!(s.events(1, WAIT)[0]["from"], "a new one");
}

#[test]
fn udp_datagrams_are_delivered_or_counted_as_dropped_when_the_pipeline_is_full() {
    const SENT: u64 = 50_000;
    let config = r#"
[api]
address = "127.0.0.1:0"
[enrich]
disable_host = true
[sources.udp]
type = "socket"
mode = "udp"
address = "127.0.0.1:0"
[sinks.out]
type = "stdout"
[sinks.out.buffer]
max_events = 100
"#;
    let mut s = Sluice::builder().config(config).stdout(Stdout::Raw).start();
    let udp = s.logged_address("receiving datagrams", Some("udp"), WAIT);
    let udp_port = udp.rsplit(':').next().unwrap().to_owned();
    let api = s.api_address();
    let dropped = || support::scrape(&api).value(r#"sluice_events_dropped_total{component="udp",reason="socket_overflow"}"#) as u64;
    // Nobody reads sluice's stdout yet: the pipeline fills up.
    let send = |from: u64, to: u64| {
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor i in range({from}, {to}):\n    s.sendto(b'{{\"seq\":%d}}\\n' % i, ('127.0.0.1', {udp_port}))\n"
        );
        run_client(Command::new("python3").args(["-c", &script]), WAIT);
    };
    let backlog_before = softnet_dropped();
    send(0, SENT);
    // The kernel says how many it dropped only with the next datagram
    // sluice reads, and sluice reads none while the pipeline is full: so
    // the kernel's own per-socket count shows the stall, and sluice's
    // counter is checked against it once drained.
    let port: u16 = udp_port.parse().unwrap();
    assert!(udp_socket_drops(port) > 0, "the pipeline never filled up");
    // Now read everything that made it.
    let stdout = s.take_stdout();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if tx.send(v["seq"].as_u64().unwrap()).is_err() {
                break;
            }
        }
    });
    let mut seen = std::collections::HashSet::new();
    while let Ok(seq) = rx.recv_timeout(Duration::from_secs(2)) {
        assert!(seen.insert(seq), "seq {seq} delivered twice");
    }
    // One more datagram, once drained, carries the kernel's final drop
    // count (SO_RXQ_OVFL is reported with the next datagram received).
    send(SENT, SENT + 1);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), SENT);
    let delivered = seen.len() as u64 + 1;
    std::thread::sleep(Duration::from_millis(200));
    let dropped = dropped();
    // A datagram can also be lost before it reaches the socket: the
    // kernel's per-CPU input backlog drops it when loopback outruns the
    // softirq (a loaded machine), and no socket sees that. The kernel
    // counts those too, machine-wide, so they bound what may be missing.
    let backlog = softnet_dropped() - backlog_before;
    eprintln!(
        "sent {} datagrams: {delivered} delivered, {dropped} dropped and counted, {backlog} dropped in the kernel's backlog",
        SENT + 1
    );
    assert!(delivered < SENT, "the pipeline never filled up");
    assert_eq!(
        dropped,
        udp_socket_drops(port),
        "sluice counts what the kernel dropped at its socket"
    );
    assert!(delivered + dropped <= SENT + 1, "more delivered and counted than sent");
    assert!(
        delivered + dropped + backlog > SENT,
        "every datagram is delivered, counted, or dropped before the socket"
    );
    assert!(proc_status_kib(s.pid(), "VmRSS") > 0);
}

/// The kernel's count of datagrams dropped at the UDP socket bound to
/// 127.0.0.1:`port` (the last column of /proc/net/udp).
fn udp_socket_drops(port: u16) -> u64 {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&local.as_str()))
        .and_then(|f| f.last()?.parse().ok())
        .expect("the UDP socket is in /proc/net/udp")
}

/// The kernel's count of packets dropped from its per-CPU input backlogs
/// (the second column of /proc/net/softnet_stat, summed over CPUs).
fn softnet_dropped() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|d| u64::from_str_radix(d, 16).unwrap())
        .sum()
}

/// A datagram source whose stdout sink is stalled until the test reads
/// it: a small sink queue, and stdout a pipe nobody reads yet.
fn stalled_datagram_config(mode_and_place: &str) -> String {
    socket_config("dgram", &format!("{mode_and_place}\nreceive_buffer_bytes = \"4MiB\"")) + "[sinks.out.buffer]\nmax_events = 100\n"
}

/// A python3 sender of `count` datagrams `{"seq":N,"pad":"…"}` of about
/// 300 bytes to the unix datagram socket `path`, as fast as the socket
/// lets it.
fn unix_datagram_burst(path: &std::path::Path, count: u64) -> Command {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\npad = 'p' * 280\nfor i in range({count}):\n    s.sendto(b'{{\"seq\":%d,\"pad\":\"%s\"}}\\n' % (i, pad.encode()), {path:?})\n",
        path = path.display().to_string()
    );
    let mut c = Command::new("python3");
    c.args(["-c", &script]);
    c
}

/// Reads `count` events from sluice's stdout (bounded by `WAIT`) and
/// checks that every `seq` below `count` arrived exactly once.
fn read_every_seq(s: &mut Sluice, count: u64) {
    let stdout = s.take_stdout();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                break;
            };
            if tx.send(v["seq"].as_u64()).is_err() {
                break;
            }
        }
    });
    let mut seen = std::collections::HashSet::new();
    while (seen.len() as u64) < count {
        match rx.recv_timeout(WAIT) {
            Ok(Some(seq)) => assert!(seen.insert(seq), "seq {seq} delivered twice"),
            Ok(None) => panic!("an event without seq"),
            Err(_) => panic!("{} of {count} datagrams arrived; logs:\n{}", seen.len(), s.logs()),
        }
    }
    assert!((0..count).all(|q| seen.contains(&q)));
}

/// Bytes waiting in the kernel receive queue of the UDP socket bound to
/// 127.0.0.1:`port` (the `rx_queue` column of /proc/net/udp).
fn udp_rx_queue_bytes(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.get(1) == Some(&local.as_str())).then(|| cols[4].split_once(':').map(|(_, rx)| u64::from_str_radix(rx, 16).unwrap()))?
        })
        .unwrap_or_else(|| panic!("no UDP socket on {local} in /proc/net/udp"))
}

#[test]
fn a_udp_burst_during_a_pipeline_stall_waits_in_the_kernel_buffer_and_all_of_it_arrives() {
    // Datagrams of ~190 bytes: the kernel charges about 1 KiB for each, so
    // the 8 MiB it gives for a 4 MiB receive buffer holds some 8,000, more
    // than this test ever sends.
    const MOST_TO_STALL: u64 = 3_000;
    const BURST: u64 = 2_000;
    let rmem_max: u64 = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        rmem_max >= 4 << 20,
        "this test needs net.core.rmem_max of at least 4 MiB (it is {rmem_max})"
    );
    let mut s = Sluice::builder()
        .config(&stalled_datagram_config("mode = \"udp\"\naddress = \"127.0.0.1:0\""))
        .stdout(Stdout::Raw)
        .start();
    let udp = s.logged_address("receiving datagrams", Some("dgram"), WAIT);
    let port: u16 = udp.rsplit(':').next().unwrap().parse().unwrap();
    let api = s.api_address();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0u64;
    // Events of ~200 bytes: the 64 KiB pipe of the stalled stdout holds
    // a few hundred.
    let pad = "p".repeat(150);
    let send = |n: u64, sent: &mut u64| {
        for _ in 0..n {
            sender
                .send_to(format!("{{\"seq\":{sent},\"pad\":\"{pad}\"}}\n").as_bytes(), ("127.0.0.1", port))
                .unwrap();
            *sent += 1;
        }
    };
    // Trickle until the pipeline is stalled: sluice then stops reading,
    // and what arrives stays in the kernel's buffer.
    let queued = loop {
        send(50, &mut sent);
        std::thread::sleep(Duration::from_millis(100));
        let before = udp_rx_queue_bytes(port);
        if before > 0 {
            // Not merely late: nothing more is read while nothing is sent.
            std::thread::sleep(Duration::from_millis(200));
            let after = udp_rx_queue_bytes(port);
            if after >= before {
                break after;
            }
        }
        assert!(
            sent < MOST_TO_STALL,
            "sluice kept draining the socket while its pipeline was stalled"
        );
    };
    // A burst now waits in the kernel buffer: not read, not dropped.
    send(BURST, &mut sent);
    std::thread::sleep(Duration::from_millis(300));
    let after_burst = udp_rx_queue_bytes(port);
    assert!(
        after_burst > queued,
        "the burst did not wait in the kernel buffer ({queued} -> {after_burst} bytes)"
    );
    eprintln!("{after_burst} bytes waited in the kernel buffer during the stall; {sent} datagrams sent");
    read_every_seq(&mut s, sent);
    let dropped = support::scrape(&api).value(r#"sluice_events_dropped_total{component="dgram",reason="socket_overflow"}"#);
    assert_eq!(dropped, 0.0, "nothing is dropped when the burst fits the receive buffer");
}

#[test]
fn a_unix_datagram_sender_is_held_back_during_a_pipeline_stall_and_nothing_is_lost() {
    // More than the stalled pipeline can hold even when every burst is a
    // full 256 KiB (about 800 of these datagrams).
    const SENT: u64 = 20_000;
    let mut s = Sluice::builder()
        .config(&stalled_datagram_config("mode = \"unix_datagram\"\npath = \"{dir}/dgram.sock\""))
        .stdout(Stdout::Raw)
        .start();
    let sock = s.path("dgram.sock");
    wait_for_path(&sock, WAIT);
    let api = s.api_address();
    let mut sender = unix_datagram_burst(&sock, SENT).stderr(Stdio::piped()).spawn().unwrap();
    // The kernel queues a few datagrams per unix socket, then blocks the
    // sender until sluice reads: with the pipeline stalled it stays
    // blocked.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        sender.try_wait().unwrap().is_none(),
        "the sender finished during the stall: sluice kept reading"
    );
    read_every_seq(&mut s, SENT);
    assert!(sender.wait().unwrap().success());
    let dropped = support::scrape(&api).value(r#"sluice_events_dropped_total{component="dgram",reason="socket_overflow"}"#);
    assert_eq!(dropped, 0.0);
}

#[test]
fn socket_sources_log_their_socket_path_as_a_plain_value() {
    let config =
        unix_config("unix_datagram", "") + "[sources.stream]\ntype = \"socket\"\nmode = \"unix_stream\"\npath = \"{dir}/stream.sock\"\n";
    let s = Sluice::start(&config);
    s.wait_for_log("receiving datagrams", WAIT);
    s.wait_for_log("listening on a unix stream socket", WAIT);
    let logs = s.logs();
    let path_of = |message: &str| {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == message)
            .map(|v| v["path"].clone())
            .unwrap_or_else(|| panic!("no {message:?} in {logs}"))
    };
    assert_eq!(path_of("receiving datagrams"), json!(s.path("app.sock").display().to_string()));
    assert_eq!(
        path_of("listening on a unix stream socket"),
        json!(s.path("stream.sock").display().to_string())
    );
    assert!(!logs.contains("Some("), "Rust debug text in the logs:\n{logs}");
}
