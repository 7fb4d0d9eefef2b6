//! Metric events end to end with real parts: statsd lines from real
//! clients (PyPI `statsd` and `datadog`, npm `hot-shots`) and from raw
//! sockets, aggregated, carried through the queues, and written as JSON
//! samples to stdout or by remote write into a real Prometheus, which is
//! queried through its HTTP API; Prometheus restarted mid-stream; bad
//! input counted with memory bounded.

mod support;

use serde_json::Value;
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use support::remote_write::{statsd_node_modules, statsd_python, RemoteWriteReceiver};
use support::sluice::proc_status_kib;
use support::{node_bin, wait_until, Sluice};

const WAIT: Duration = Duration::from_secs(30);

/// sluice with one statsd source and the sinks given.
fn start(mode: &str, source_extra: &str, sinks: &str) -> Sluice {
    let listen = match mode {
        "unix_datagram" => "path = \"{dir}/statsd.sock\"".to_owned(),
        _ => "address = \"127.0.0.1:0\"".to_owned(),
    };
    let flush = if source_extra.contains("flush_interval") {
        ""
    } else {
        "flush_interval = \"200ms\""
    };
    let config = format!(
        "[api]\naddress = \"127.0.0.1:0\"\n[enrich]\ndisable_host = true\nrelease = \"v7\"\n\
         [sources.statsd]\ntype = \"statsd\"\nmode = \"{mode}\"\n{listen}\n{flush}\n{source_extra}\n{sinks}"
    );
    Sluice::builder().config(&config).start().serving()
}

/// The address the statsd source bound.
fn statsd_address(s: &Sluice, mode: &str) -> String {
    let message = if mode == "tcp" { "listening on TCP" } else { "receiving datagrams" };
    s.logged_address(message, Some("statsd"), WAIT)
}

const STDOUT: &str = "[sinks.out]\ntype = \"stdout\"\n";

/// The newest JSON sample on stdout of `metric` with `labels`, once its
/// value is `want`; panics with the last seen samples otherwise.
fn wait_for_sample(s: &Sluice, metric: &str, labels: &Value, member: &str, want: f64) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = s
            .lines()
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["metric"] == metric && &v["labels"] == labels);
        if let Some(v) = &last {
            if v[member].as_f64() == Some(want) {
                return v.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{metric} {labels}: want {member} = {want}, last sample {last:?}\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn statsd_over_udp_reaches_prometheus_with_exactly_the_counters_and_buckets_sent() {
    let prom = RemoteWriteReceiver::start();
    let sinks = format!(
        "[sinks.rw]\ntype = \"prometheus_remote_write\"\nendpoint = \"{}\"\nexternal_labels = {{ cluster = \"c1\" }}\n\
         metadata_labels = {{ release = \"release.version\" }}\n\
         [sinks.rw.batch]\ntimeout = \"100ms\"\n",
        prom.write_url()
    );
    let s = start("udp", "buckets = [10.0, 100.0]", &sinks);
    let addr = statsd_address(&s, "udp");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Several lines per datagram, as statsd clients pipeline them.
    let mut hits = 0;
    let mut latencies = Vec::new();
    for round in 0..50 {
        let mut datagram = String::new();
        for i in 0..10 {
            let n = (round * 10 + i) % 7 + 1;
            hits += n;
            let ms = ((round * 37 + i * 11) % 300) as f64 + 0.5;
            latencies.push(ms);
            datagram.push_str(&format!("app.hits:{n}|c|#route:/a\napp.latency:{ms}|ms|#route:/a\n"));
        }
        datagram.push_str("app.temp:21|g\napp.temp:+2|g\n");
        sock.send_to(datagram.as_bytes(), &addr).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    prom.wait_for_value("app_hits{route=\"/a\",cluster=\"c1\",release=\"v7\"}", hits as f64, WAIT);
    let count = latencies.len() as f64;
    let le10 = latencies.iter().filter(|v| **v <= 10.0).count() as f64;
    let le100 = latencies.iter().filter(|v| **v <= 100.0).count() as f64;
    prom.wait_for_value("app_latency_count{route=\"/a\"}", count, WAIT);
    prom.wait_for_value("app_latency_bucket{route=\"/a\",le=\"10\"}", le10, WAIT);
    prom.wait_for_value("app_latency_bucket{route=\"/a\",le=\"100\"}", le100, WAIT);
    prom.wait_for_value("app_latency_bucket{route=\"/a\",le=\"+Inf\"}", count, WAIT);
    prom.wait_for_value("app_latency_sum{route=\"/a\"}", latencies.iter().sum(), WAIT);
    prom.wait_for_value("app_temp", 23.0, WAIT);
    assert_eq!(
        prom.query("{__name__=~\"app_.*\",cluster!=\"c1\"}"),
        Vec::<Value>::new(),
        "external labels on every series"
    );
}

#[test]
fn prometheus_restarted_mid_stream_loses_no_sample() {
    let mut prom = RemoteWriteReceiver::start();
    let sinks = format!(
        "[sinks.rw]\ntype = \"prometheus_remote_write\"\nendpoint = \"{}\"\n[sinks.rw.batch]\ntimeout = \"50ms\"\n\
         [sinks.rw.retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"500ms\"\n",
        prom.write_url()
    );
    let s = start("tcp", "", &sinks);
    let mut conn = TcpStream::connect(statsd_address(&s, "tcp")).unwrap();
    let mut total = 0u64;
    let mut send = |rounds: u64, conn: &mut TcpStream| {
        for r in 0..rounds {
            conn.write_all(format!("jobs.done:{}|c\n", r % 5 + 1).as_bytes()).unwrap();
            total += r % 5 + 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        total
    };
    let before = send(50, &mut conn);
    prom.wait_for_value("jobs_done", before as f64, WAIT);
    prom.stop();
    let down_from = now_s();
    send(100, &mut conn);
    let down_to = now_s();
    prom.start_again();
    let all = send(50, &mut conn);
    prom.wait_for_value("jobs_done", all as f64, WAIT);
    // The flushes made while Prometheus was down arrived too, with their
    // own timestamps.
    let during = prom
        .value(&format!(
            "count_over_time(jobs_done[{}ms] @ {down_to:.3})",
            ((down_to - down_from) * 1000.0) as u64
        ))
        .unwrap_or(0.0);
    let flushes = (down_to - down_from) / 0.2;
    assert!(
        during >= flushes * 0.8,
        "{during} samples stored from the outage of ~{flushes} flushes"
    );
    let m = s.metrics();
    assert!(
        m.sum("sluice_sink_retries_total", &[("sink", "rw")]) > 0.0,
        "the outage was retried"
    );
    assert_eq!(m.sum("sluice_events_dropped_total", &[("sink", "rw")]), 0.0);
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn pypi_statsd_client_counts_arrive_exactly() {
    let s = start("tcp", "", STDOUT);
    let addr = statsd_address(&s, "tcp");
    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = format!(
        r#"
import random, statsd
c = statsd.TCPStatsClient("{host}", {port}, prefix="py")
random.seed(7)
total = 0
for i in range(2000):
    n = random.randint(1, 9)
    c.incr("orders", n)
    total += n
    c.timing("render", random.randint(1, 400))
    c.gauge("queue", i)
c.close()
print(total)
"#
    );
    let out = run_py(&script);
    let total: f64 = out.trim().parse().unwrap_or_else(|_| panic!("client printed {out:?}"));
    let orders = wait_for_sample(&s, "py.orders", &serde_json::json!({}), "value", total);
    assert_eq!(
        orders["release"]["version"], "v7",
        "a sample carries its source's metadata: {orders}"
    );
    wait_for_sample(&s, "py.render", &serde_json::json!({}), "count", 2000.0);
    wait_for_sample(&s, "py.queue", &serde_json::json!({}), "value", 1999.0);
}

#[test]
fn datadog_client_tags_become_labels_and_counts_arrive_exactly() {
    let s = start("unix_datagram", "", STDOUT);
    s.wait_for_log("receiving datagrams", WAIT);
    let sock = s.path("statsd.sock");
    let script = format!(
        r#"
import random
from datadog.dogstatsd import DogStatsd
# A blocking socket: with the default (non-blocking) the client drops
# what the kernel buffer cannot take at once.
c = DogStatsd(socket_path="{}", disable_telemetry=True, socket_timeout=10)
random.seed(11)
totals = {{"prod": 0, "dev": 0}}
for i in range(3000):
    env = "prod" if i % 3 else "dev"
    n = random.randint(1, 5)
    c.increment("checkout.items", n, tags=["env:" + env, "shop:eu"])
    totals[env] += n
    c.distribution("checkout.ms", random.random() * 100, tags=["env:" + env])
    c.set("checkout.users", "u%d" % (i % 17))
c.flush()
c.close_socket()
print(totals["prod"], totals["dev"])
"#,
        sock.display()
    );
    let out = run_py(&script);
    let mut parts = out.split_whitespace().map(|p| p.parse::<f64>().unwrap());
    let (prod, dev) = (parts.next().unwrap(), parts.next().unwrap());
    wait_for_sample(
        &s,
        "checkout.items",
        &serde_json::json!({"env": "prod", "shop": "eu"}),
        "value",
        prod,
    );
    wait_for_sample(&s, "checkout.items", &serde_json::json!({"env": "dev", "shop": "eu"}), "value", dev);
    wait_for_sample(&s, "checkout.ms", &serde_json::json!({"env": "prod"}), "count", 2000.0);
    let m = s.metrics();
    assert_eq!(
        m.sum("sluice_metric_lines_invalid_total", &[]),
        0.0,
        "the client writes only valid lines"
    );
}

#[test]
fn hot_shots_client_counts_arrive_exactly() {
    let s = start("tcp", "", STDOUT);
    let addr = statsd_address(&s, "tcp");
    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = format!(
        r#"
const StatsD = require('hot-shots');
const c = new StatsD({{ host: '{host}', port: {port}, protocol: 'tcp', prefix: 'js.', errorHandler: e => {{ console.error(e); process.exit(2); }} }});
let total = 0;
for (let i = 0; i < 2000; i++) {{
  const n = (i * 7) % 9 + 1;
  c.increment('clicks', n, ['page:home']);
  total += n;
  c.histogram('size', (i * 13) % 500, ['page:home']);
}}
c.close(err => {{ if (err) {{ console.error(err); process.exit(3); }} console.log(total); }});
"#
    );
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("client.js");
    std::fs::write(&file, script).unwrap();
    let mut cmd = Command::new(node_bin());
    cmd.arg(&file).env("NODE_PATH", statsd_node_modules());
    let out = client_output(&mut cmd);
    let total: f64 = out.trim().parse().unwrap_or_else(|_| panic!("client printed {out:?}"));
    wait_for_sample(&s, "js.clicks", &serde_json::json!({"page": "home"}), "value", total);
    wait_for_sample(&s, "js.size", &serde_json::json!({"page": "home"}), "count", 2000.0);
}

#[test]
fn malformed_lines_huge_labels_and_a_million_label_values_are_counted_with_memory_bounded() {
    let s = start("tcp", "max_series = 1000\nmax_tag_value_bytes = 256", STDOUT);
    let mut conn = TcpStream::connect(statsd_address(&s, "tcp")).unwrap();
    let rss_before = proc_status_kib(s.pid(), "VmRSS");
    let bad = [
        "no_separator\n",
        "x:1|nope\n",
        "x:abc|c\n",
        "x:1|c|@7\n",
        "_e{3,3}:abc|def\n",
        "\u{1}x:1|c\n",
    ];
    for b in bad {
        conn.write_all(b.as_bytes()).unwrap();
    }
    // Over max_line_bytes (64KiB), and over max_tag_value_bytes.
    conn.write_all(format!("x:1|c|#big:{}\n", "v".repeat(100_000)).as_bytes()).unwrap();
    conn.write_all(format!("x:1|c|#big:{}\n", "v".repeat(1000)).as_bytes()).unwrap();
    let mut chunk = String::with_capacity(1 << 20);
    for i in 0..1_000_000u32 {
        chunk.push_str("req:1|c|#user:u");
        chunk.push_str(&i.to_string());
        chunk.push('\n');
        if chunk.len() > 1 << 19 {
            conn.write_all(chunk.as_bytes()).unwrap();
            chunk.clear();
        }
    }
    conn.write_all(chunk.as_bytes()).unwrap();
    let m = s.wait_for_metrics("a million updates", WAIT * 2, |m| {
        m.sum("sluice_metric_updates_total", &[("source", "statsd")]) >= 1_000_000.0
    });
    assert_eq!(m.sum("sluice_metric_updates_total", &[("source", "statsd")]), 1_000_000.0);
    assert_eq!(m.sum("sluice_metric_lines_invalid_total", &[("source", "statsd")]), 8.0);
    for reason in ["format", "type", "value", "sample_rate", "unsupported", "name", "too_long", "tag"] {
        assert_eq!(m.sum("sluice_metric_lines_invalid_total", &[("reason", reason)]), 1.0, "{reason}");
    }
    assert_eq!(
        m.sum("sluice_metric_series_overflow_total", &[("source", "statsd")]),
        1_000_000.0 - 1000.0
    );
    let m = s.wait_for_metrics("a flush", WAIT, |m| m.sum("sluice_metric_series", &[("source", "statsd")]) > 0.0);
    assert_eq!(
        m.sum("sluice_metric_series", &[("source", "statsd")]),
        1001.0,
        "1000 series and req's overflow series"
    );
    // Every update is in req's series: the kept ones and the overflow one.
    let overflow = wait_for_sample(&s, "req", &serde_json::json!({"user": "__overflow__"}), "value", 999_000.0);
    assert_eq!(overflow["kind"], "counter");
    let rss_after = proc_status_kib(s.pid(), "VmRSS");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB for a million label values"
    );
}

fn run_py(script: &str) -> String {
    let mut cmd = Command::new(statsd_python());
    cmd.arg("-c").arg(script);
    client_output(&mut cmd)
}

fn client_output(cmd: &mut Command) -> String {
    let out = support::run_bounded(std::mem::replace(cmd, Command::new("true")), None, WAIT * 2);
    assert!(
        out.status.success(),
        "client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn exporter_sink_output_passes_promtool_and_a_real_prometheus_scrapes_exact_values() {
    let s = start(
        "tcp",
        "buckets = [10.0, 100.0]",
        "[sinks.pull]\ntype = \"prometheus_exporter\"\naddress = \"127.0.0.1:0\"\n",
    );
    let exporter = s.logged_address("serving metrics for pull", None, WAIT);
    let mut conn = TcpStream::connect(statsd_address(&s, "tcp")).unwrap();
    let mut total = 0;
    for i in 0..500 {
        total += i % 4 + 1;
        conn.write_all(
            format!(
                "shop.orders:{}|c|#env:prod\nshop.latency:{}|ms|#env:prod\nshop.users:u{}|s\n",
                i % 4 + 1,
                i % 250,
                i % 9
            )
            .as_bytes(),
        )
        .unwrap();
    }
    conn.write_all(b"shop.queue:7|g|#q:a \"quoted\" \\ value\n").unwrap();
    let text = wait_until("the exporter to show every order", WAIT, || {
        let (_, body) = support::http_get(&format!("http://{exporter}/metrics"));
        body.contains(&format!("shop_orders_total{{env=\"prod\"}} {total}\n"))
            .then_some(body)
    });
    assert!(text.contains("shop_latency_bucket{env=\"prod\",le=\"+Inf\"} 500\n"), "{text}");
    assert!(text.contains("shop_queue{q=\"a \\\"quoted\\\" \\\\ value\"} 7\n"), "{text}");
    support::promtool_check_metrics(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    let prom = support::PrometheusServer::start(&exporter, Duration::from_millis(500));
    let got = prom.wait_for("shop_orders_total{env=\"prod\"}", WAIT);
    assert_eq!(got[0]["value"][1], total.to_string());
    let got = prom.wait_for("shop_latency_count", WAIT);
    assert_eq!(got[0]["value"][1], "500");
}

#[test]
fn kafka_sink_writes_one_json_sample_per_message() {
    let kafka = support::Kafka::start();
    kafka.create_topic("metrics", 1);
    let sinks = format!(
        "[sinks.k]\ntype = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic = \"metrics\"\n",
        kafka.addr
    );
    // A flush every 2 s leaves the topic quiet between flushes.
    let s = start("tcp", "flush_interval = \"2s\"", &sinks);
    let mut conn = TcpStream::connect(statsd_address(&s, "tcp")).unwrap();
    conn.write_all(b"queue.depth:5|g|#q:a\nqueue.depth:9|g|#q:b\njobs:3|c\n").unwrap();
    let records = support::kafka::read_until(&kafka.addr, "metrics", WAIT, |got| {
        let names: std::collections::BTreeSet<String> = got
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.payload).ok())
            .map(|v| format!("{}{}", v["metric"].as_str().unwrap_or(""), v["labels"]))
            .collect();
        names.len() >= 3
    });
    let samples: Vec<Value> = records.iter().map(|r| serde_json::from_slice(&r.payload).unwrap()).collect();
    let b = samples
        .iter()
        .find(|v| v["metric"] == "queue.depth" && v["labels"]["q"] == "b")
        .expect("a sample per series");
    assert_eq!((b["kind"].as_str(), b["value"].as_f64()), (Some("gauge"), Some(9.0)));
    assert!(samples.iter().any(|v| v["metric"] == "jobs" && v["value"] == 3), "{samples:?}");
}

#[test]
fn sli_series_leave_through_remote_write_with_exact_counts() {
    let prom = RemoteWriteReceiver::start();
    let config = format!(
        r#"
[api]
address = "127.0.0.1:0"
[sources.stdin]
type = "stdin"
detect_writer = false
[sources.self]
type = "internal_metrics"
interval = "200ms"
prefixes = ["sluice_sli_"]
[sinks.null]
type = "blackhole"
inputs = ["stdin"]
[sinks.rw]
type = "prometheus_remote_write"
endpoint = "{}"
[sinks.rw.batch]
timeout = "100ms"
[[sli]]
name = "api"
objective = 0.99
[sli.error]
field = "status"
gte = 500
[sli.latency]
field = "duration_ms"
unit = "ms"
[sli.labels]
route = "path"
"#,
        prom.write_url()
    );
    let mut s = Sluice::builder()
        .config(&config)
        .stdin_piped()
        .stdout(support::Stdout::Null)
        .start()
        .serving();
    let mut input = String::new();
    let mut errors = 0;
    for i in 0..300 {
        let status = if i % 7 == 0 { 503 } else { 200 };
        errors += (status >= 500) as u32;
        input.push_str(&format!("{{\"path\":\"/a\",\"status\":{status},\"duration_ms\":{}}}\n", i % 90));
    }
    s.write(input.as_bytes());
    let all = "sluice_sli_requests_total{sli=\"api\",route=\"/a\"}";
    let q = format!("sum({all})");
    prom.wait_for_value(&q, 300.0, WAIT);
    prom.wait_for_value(
        "sum(sluice_sli_requests_total{sli=\"api\",route=\"/a\",outcome=\"error\"})",
        errors as f64,
        WAIT,
    );
    let q = "sum(sluice_sli_latency_seconds_count{sli=\"api\",route=\"/a\"})";
    prom.wait_for_value(q, 300.0, WAIT);
}

#[test]
fn what_was_aggregated_leaves_in_a_last_flush_at_shutdown() {
    let s = start("tcp", "flush_interval = \"1h\"\nexpire_after = \"2h\"", STDOUT);
    let mut conn = TcpStream::connect(statsd_address(&s, "tcp")).unwrap();
    conn.write_all(b"deploys:2|c|#env:prod\ndeploys:3|c|#env:prod\n").unwrap();
    s.wait_for_metrics("two updates", WAIT, |m| {
        m.sum("sluice_metric_updates_total", &[("source", "statsd")]) >= 2.0
    });
    assert!(s.lines().is_empty(), "nothing is flushed before the interval");
    s.signal(libc::SIGTERM);
    assert!(s.wait(WAIT).success(), "{}", s.logs());
    let last = wait_for_sample(&s, "deploys", &serde_json::json!({"env": "prod"}), "value", 5.0);
    assert_eq!(last["kind"], "counter");
}
