//! Syslog from real clients: util-linux `logger` (RFC 5424 and RFC 3164,
//! unix datagram and stream sockets, newline and octet-counted framing),
//! Python's `logging.handlers.SysLogHandler` (unix datagram, its unix
//! stream fallback with NUL-terminated records, UDP) and
//! `socat` (TCP, UDP), parsed into fields.

mod support;

use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use support::{run_client, wait_for_path, Sluice};

const WAIT: Duration = Duration::from_secs(30);

/// Where the running sluice listens (it bound port 0 and logged the
/// ports it got).
struct Ports {
    api: String,
    tcp: String,
    udp: String,
}

fn start() -> (Sluice, Ports) {
    let config = r#"
[api]
address = "127.0.0.1:0"
[enrich]
disable_host = true
[sources.dgram]
type = "socket"
mode = "unix_datagram"
path = "{dir}/log.sock"
format = "syslog"
[sources.stream]
type = "socket"
mode = "unix_stream"
path = "{dir}/stream.sock"
format = "syslog"
[sources.nul]
type = "socket"
mode = "unix_stream"
path = "{dir}/nul.sock"
format = "syslog"
framing = "nul"
[sources.tcp]
type = "socket"
mode = "tcp"
address = "127.0.0.1:0"
format = "syslog"
[sources.udp]
type = "socket"
mode = "udp"
address = "127.0.0.1:0"
format = "syslog"
[sinks.out]
type = "stdout"
"#;
    let s = Sluice::start(config);
    let ports = Ports {
        api: s.api_address(),
        tcp: s.logged_address("listening on TCP", Some("tcp"), WAIT),
        udp: s.logged_address("receiving datagrams", Some("udp"), WAIT),
    };
    wait_for_path(&s.path("log.sock"), WAIT);
    wait_for_path(&s.path("stream.sock"), WAIT);
    wait_for_path(&s.path("nul.sock"), WAIT);
    (s, ports)
}

fn logger(args: &[&str]) -> u32 {
    let mut child = Command::new("logger").args(args).spawn().expect("logger (util-linux) is installed");
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.success(), "logger {args:?} failed");
    pid
}

fn by_message<'a>(events: &'a [Value], message: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["message"] == message)
        .unwrap_or_else(|| panic!("no event with message {message:?} in {events:#?}"))
}

#[test]
fn logger_rfc5424_and_rfc3164_over_the_unix_datagram_socket_are_parsed_with_the_senders_pid() {
    let (s, _) = start();
    let sock = s.path("log.sock");
    let sock = sock.to_str().unwrap();
    let pid5424 = logger(&[
        "--rfc5424",
        "-u",
        sock,
        "-d",
        "-t",
        "billing",
        "-p",
        "local3.err",
        "--msgid",
        "ID47",
        "--sd-id",
        "order@32473",
        "--sd-param",
        r#"id="17""#,
        "--sd-param",
        r#"note="two words""#,
        "payment declined",
    ]);
    let pid3164 = logger(&["--rfc3164", "-u", sock, "-d", "-t", "cron", "-p", "cron.info", "job started"]);
    let events = s.events(2, WAIT);

    let e = by_message(&events, "payment declined");
    assert_eq!(e["facility"], "local3");
    assert_eq!(e["severity"], "err");
    assert_eq!(e["appname"], "billing");
    assert_eq!(e["msgid"], "ID47");
    assert_eq!(e["structured_data"]["order@32473"], json!({"id": "17", "note": "two words"}));
    assert!(e["timestamp"].as_str().unwrap().starts_with("20"), "{e}");
    assert!(e["hostname"].is_string());
    // SCM_CREDENTIALS: the kernel's word on who sent the datagram.
    assert_eq!(e["process"]["pid"], pid5424);
    assert_eq!(e["process"]["uid"], unsafe { libc::getuid() });

    let e = by_message(&events, "job started");
    assert_eq!(e["facility"], "cron");
    assert_eq!(e["severity"], "info");
    assert_eq!(e["appname"], "cron");
    assert_eq!(e["process"]["pid"], pid3164);
    assert!(
        e["timestamp"].as_str().unwrap().len() == 19,
        "RFC 3164 time completed with the year: {e}"
    );
}

#[test]
fn logger_over_the_unix_stream_socket_with_newline_and_octet_counted_framing() {
    let (s, _) = start();
    let sock = s.path("stream.sock");
    let sock = sock.to_str().unwrap();
    logger(&["--rfc5424", "-u", sock, "-T", "-t", "web", "newline framed 5424"]);
    logger(&["--rfc5424", "--octet-count", "-u", sock, "-T", "-t", "web", "octet counted 5424"]);
    logger(&["--rfc3164", "-u", sock, "-T", "-t", "worker", "newline framed 3164"]);
    logger(&["--rfc3164", "--octet-count", "-u", sock, "-T", "-t", "worker", "octet counted 3164"]);
    let events = s.events(4, WAIT);
    for (msg, app) in [
        ("newline framed 5424", "web"),
        ("octet counted 5424", "web"),
        ("newline framed 3164", "worker"),
        ("octet counted 3164", "worker"),
    ] {
        let e = by_message(&events, msg);
        assert_eq!(e["appname"], app, "{e}");
        assert_eq!(e["facility"], "user");
        assert_eq!(e["severity"], "notice");
        assert!(e["process"]["uid"].is_number(), "peer credentials on the connection: {e}");
    }
}

#[test]
fn a_json_message_inside_syslog_is_merged_and_its_fields_win() {
    let (s, _) = start();
    let sock = s.path("log.sock");
    logger(&[
        "--rfc5424",
        "-u",
        sock.to_str().unwrap(),
        "-d",
        "-t",
        "api",
        r#"{"severity":"warn","status":503,"path":"/pay"}"#,
    ]);
    let e = &s.events(1, WAIT)[0];
    assert_eq!(e["status"], 503);
    assert_eq!(e["path"], "/pay");
    assert_eq!(e["severity"], "warn", "the message's own field wins: {e}");
    assert_eq!(e["appname"], "api");
    assert_eq!(e["facility"], "user");
    assert!(e.get("message").is_none(), "merged, not kept as text: {e}");
}

#[test]
fn python_syslog_handler_over_the_unix_datagram_socket_and_udp() {
    let (s, ports) = start();
    let script = format!(
        r#"
import logging, logging.handlers
unix = logging.handlers.SysLogHandler(address={sock:?}, facility=logging.handlers.SysLogHandler.LOG_LOCAL0)
unix.setFormatter(logging.Formatter("pyapp: %(message)s"))
udp = logging.handlers.SysLogHandler(address=("127.0.0.1", {udp_port}))
udp.setFormatter(logging.Formatter("pyudp[42]: %(message)s"))
log = logging.getLogger("t")
log.addHandler(unix)
log.addHandler(udp)
log.warning("disk almost full")
log.error("disk full")
"#,
        sock = s.path("log.sock").display().to_string(),
        udp_port = ports.udp.rsplit(':').next().unwrap()
    );
    run_client(Command::new("python3").args(["-c", &script]), WAIT);
    let events = s.events(4, WAIT);
    let from = |app: &str, msg: &str| {
        events
            .iter()
            .find(|e| e["appname"] == app && e["message"] == msg)
            .unwrap_or_else(|| panic!("no {app} event {msg:?} in {events:#?}"))
            .clone()
    };
    let e = from("pyapp", "disk almost full");
    assert_eq!(e["severity"], "warning");
    assert_eq!(e["facility"], "local0");
    assert!(e["process"]["pid"].is_number());
    assert_eq!(from("pyapp", "disk full")["severity"], "err");
    let e = from("pyudp", "disk full");
    assert_eq!(e["facility"], "user");
    assert_eq!(e["procid"], "42");
    assert_eq!(e["peer"]["ip"], "127.0.0.1");
    from("pyudp", "disk almost full");
}

/// Python's `SysLogHandler` pointed at `sock` with no ident and the
/// default `%(message)s` format: it sends `<PRI>message\0`, over a unix
/// datagram socket or, when the socket is a stream one, over a stream
/// connection (its fallback), one record per send. `socktype` is the
/// socket type Python must have ended up with.
fn python_syslog_handler_without_ident(sock: &std::path::Path, socktype: &str, messages: &[&str]) {
    let script = format!(
        r#"
import logging, logging.handlers, socket
h = logging.handlers.SysLogHandler(address={sock:?})
log = logging.getLogger("t")
log.addHandler(h)
for m in {messages:?}:
    log.warning(m)
assert h.socktype == socket.{socktype}, h.socktype
"#,
        sock = sock.display().to_string(),
    );
    run_client(Command::new("python3").args(["-c", &script]), WAIT);
}

#[test]
fn a_tagless_json_message_from_python_syslog_handler_is_decoded_not_split_at_its_first_colon() {
    let (s, _) = start();
    python_syslog_handler_without_ident(
        &s.path("log.sock"),
        "SOCK_DGRAM",
        &[r#"{"a":1,"b":2}"#, r#"{"user": "ann", "ok": true}"#],
    );
    let events = s.events(2, WAIT);
    for e in &events {
        assert!(e.get("appname").is_none(), "a JSON body has no tag: {e}");
        assert!(e.get("message").is_none(), "merged, not kept as text: {e}");
        assert_eq!(e["facility"], "user");
        assert_eq!(e["severity"], "warning");
        assert!(e["process"]["pid"].is_number(), "{e}");
    }
    assert_eq!(
        (events[0]["a"].clone(), events[0]["b"].clone()),
        (json!(1), json!(2)),
        "{}",
        events[0]
    );
    assert_eq!(
        (events[1]["user"].clone(), events[1]["ok"].clone()),
        (json!("ann"), json!(true)),
        "{}",
        events[1]
    );
}

#[test]
fn python_syslog_handler_falling_back_to_a_unix_stream_socket_sends_nul_framed_records_that_stay_apart() {
    let (s, _) = start();
    let records = ["one", "two", "first line\nsecond line", r#"{"a":1,"b":2}"#];
    // `stream.sock` has the default framing (auto), `nul.sock` says nul.
    for sock in ["stream.sock", "nul.sock"] {
        python_syslog_handler_without_ident(&s.path(sock), "SOCK_STREAM", &records);
        let events = s.events(4, WAIT);
        for (e, want) in events.iter().zip(["one", "two", "first line\nsecond line"]) {
            assert_eq!(e["message"], want, "{sock}: {events:#?}");
            assert_eq!(e["severity"], "warning");
            assert!(e["process"]["uid"].is_number(), "peer credentials on the connection: {e}");
        }
        assert_eq!(events[3]["a"], 1, "{sock}: {}", events[3]);
        assert_eq!(events[3]["b"], 2, "{sock}: {}", events[3]);
        assert!(s.remaining_events(Duration::from_millis(300)).is_empty());
    }
}

#[test]
fn socat_tcp_octet_counting_keeps_newlines_inside_a_message_and_udp_works() {
    let (s, ports) = start();
    let dir = tempfile::tempdir().unwrap();
    let frames = [
        "<13>1 2024-05-01T10:00:00Z h1 app - - - first line\nsecond line",
        "<14>1 2024-05-01T10:00:01Z h1 app - - - plain",
    ];
    let mut body = String::new();
    for f in frames {
        body.push_str(&format!("{} {f}", f.len()));
    }
    let file = dir.path().join("octets");
    std::fs::write(&file, body).unwrap();
    run_client(
        Command::new("socat").args(["-u", &format!("FILE:{}", file.display()), &format!("TCP:{}", ports.tcp)]),
        WAIT,
    );
    let events = s.events(2, WAIT);
    assert_eq!(events[0]["message"], "first line\nsecond line");
    assert_eq!(events[0]["hostname"], "h1");
    assert_eq!(events[1]["message"], "plain");
    assert_eq!(events[1]["severity"], "info");

    let dgram = dir.path().join("dgram");
    std::fs::write(&dgram, "<165>Oct 11 22:14:15 relay sshd[99]: accepted").unwrap();
    run_client(
        Command::new("socat").args(["-u", &format!("FILE:{}", dgram.display()), &format!("UDP:{}", ports.udp)]),
        WAIT,
    );
    let e = &s.events(1, WAIT)[0];
    assert_eq!(e["hostname"], "relay");
    assert_eq!(e["appname"], "sshd");
    assert_eq!(e["procid"], "99");
    assert_eq!(e["facility"], "local4");
    assert_eq!(e["severity"], "notice");
    assert_eq!(e["message"], "accepted");
}

#[test]
fn malformed_syslog_lines_are_kept_as_messages_and_counted() {
    let (s, ports) = start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines");
    std::fs::write(&file, "this is not syslog\n<13>1 2024-05-01T10:00:00Z\n<13>fine\n").unwrap();
    run_client(
        Command::new("socat").args(["-u", &format!("FILE:{}", file.display()), &format!("TCP:{}", ports.tcp)]),
        WAIT,
    );
    let events = s.events(3, WAIT);
    assert_eq!(events[0], json!({"message": "this is not syslog", "peer": {"ip": "127.0.0.1"}}));
    assert_eq!(events[1]["message"], "<13>1 2024-05-01T10:00:00Z");
    assert_eq!(events[2]["message"], "fine");
    assert_eq!(events[2]["severity"], "notice");
    assert_eq!(
        support::scrape(&ports.api).value(r#"sluice_syslog_malformed_total{source="tcp"}"#),
        2.0
    );
}
