//! The prometheus_scrape source with real parts: a real
//! `prometheus-node-exporter` and a Python app using PyPI
//! `prometheus-client` (which answers in OpenMetrics) are scraped and their
//! values arrive exactly as JSON samples; a dead target reports `up` 0;
//! this node's annotated pods are found through the file source's pod
//! cache, fed by the loopback Kubernetes API stand-in, and their series
//! carry the same metadata as their logs; malformed lines are counted, and
//! a million distinct label values keep memory bounded by the series limit.

mod support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::file_source::{append, config, parse};
use support::kube_api::{start_api, ApiState, TOKEN};
use support::scrape::{node_exporter_bin, prometheus_client_python, Target, TEXT};
use support::sluice::proc_status_kib;
use support::{free_port, wait_until, Sluice};

const WAIT: Duration = Duration::from_secs(60);

/// A child process killed when the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The newest sample of `metric` whose labels include `labels`.
fn newest(s: &Sluice, metric: &str, labels: &Value) -> Option<Value> {
    s.lines()
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| {
            v["metric"] == metric
                && labels
                    .as_object()
                    .is_some_and(|want| want.iter().all(|(k, w)| &v["labels"][k] == w))
        })
}

fn wait_sample(s: &Sluice, metric: &str, labels: &Value) -> Value {
    wait_until(&format!("a sample of {metric} {labels}"), WAIT, || newest(s, metric, labels))
}

const APP: &str = r#"
import sys, time
from prometheus_client import Counter, Gauge, Histogram, start_http_server
jobs = Counter('jobs_processed', 'Jobs processed.', ['queue'])
jobs.labels('emails').inc(7)
jobs.labels('emails').inc(3)
jobs.labels('sms').inc(2)
latency = Histogram('job_seconds', 'Job time.', buckets=(0.1, 1.0, 10.0))
for v in (0.0625, 0.5, 0.5, 5, 50):
    latency.observe(v)
Gauge('queue_depth', 'Queue depth.').set(42)
start_http_server(int(sys.argv[1]), addr='127.0.0.1')
print('ready', flush=True)
time.sleep(600)
"#;

#[test]
fn node_exporter_and_a_prometheus_client_app_are_scraped_exactly_and_a_dead_target_is_down() {
    let ne_port = free_port();
    let _ne = Killed(
        Command::new(node_exporter_bin())
            .arg(format!("--web.listen-address=127.0.0.1:{ne_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-node-exporter"),
    );
    let app_port = free_port();
    let mut app = Command::new(prometheus_client_python())
        .args(["-c", APP, &app_port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the prometheus-client app");
    let mut ready = String::new();
    BufReader::new(app.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let _app = Killed(app);
    let dead_port = free_port();

    let cfg = format!(
        "[api]\naddress = \"127.0.0.1:0\"\n[enrich]\ndisable_host = true\nrelease = \"v9\"\n\
         [sources.scrape]\ntype = \"prometheus_scrape\"\ninterval = \"1s\"\ntimeout = \"900ms\"\n\
         targets = [\"http://127.0.0.1:{ne_port}/metrics\", \"http://127.0.0.1:{app_port}/metrics\", \"http://127.0.0.1:{dead_port}/metrics\"]\n\
         [sinks.out]\ntype = \"stdout\"\n"
    );
    let s = Sluice::builder().config(&cfg).start().serving();
    let app_instance = format!("127.0.0.1:{app_port}");
    let app_labels = |extra: Value| {
        let mut l = json!({"job": "scrape", "instance": app_instance});
        if let (Some(l), Some(e)) = (l.as_object_mut(), extra.as_object()) {
            l.extend(e.clone());
        }
        l
    };

    // The app (OpenMetrics): counters, the histogram and the gauge exactly.
    let emails = wait_sample(&s, "jobs_processed_total", &app_labels(json!({"queue": "emails"})));
    assert_eq!(emails["kind"], "counter");
    assert_eq!(emails["value"], 10);
    assert_eq!(emails["release"]["version"], "v9", "the collector's metadata rides along");
    let sms = wait_sample(&s, "jobs_processed_total", &app_labels(json!({"queue": "sms"})));
    assert_eq!(sms["value"], 2);
    let h = wait_sample(&s, "job_seconds", &app_labels(json!({})));
    assert_eq!(h["kind"], "histogram");
    assert_eq!(h["count"], 5);
    assert_eq!(h["sum"], 56.0625);
    assert_eq!(
        h["buckets"],
        json!([{"le": 0.1, "count": 1}, {"le": 1, "count": 3}, {"le": 10, "count": 4}])
    );
    assert_eq!(wait_sample(&s, "queue_depth", &app_labels(json!({})))["value"], 42);
    assert_eq!(wait_sample(&s, "up", &app_labels(json!({})))["value"], 1);

    // node_exporter (text 0.0.4): counters with their labels, a summary.
    let ne = json!({"job": "scrape", "instance": format!("127.0.0.1:{ne_port}")});
    let up = wait_sample(&s, "up", &ne);
    assert_eq!(up["value"], 1);
    let cpu = wait_sample(&s, "node_cpu_seconds_total", &json!({"mode": "idle", "cpu": "0"}));
    assert_eq!(cpu["kind"], "counter");
    assert!(cpu["value"].as_f64().unwrap() > 0.0, "{cpu}");
    let gc = wait_sample(&s, "go_gc_duration_seconds", &ne);
    assert_eq!(gc["kind"], "summary");
    assert!(gc["quantiles"].as_array().is_some_and(|q| q.len() == 5), "{gc}");
    let scraped = wait_sample(&s, "scrape_samples_scraped", &ne);
    assert!(scraped["value"].as_f64().unwrap() > 100.0, "{scraped}");
    assert!(wait_sample(&s, "scrape_duration_seconds", &ne)["value"].as_f64().unwrap() > 0.0);

    // Nothing listens on the dead target's port.
    let dead = json!({"job": "scrape", "instance": format!("127.0.0.1:{dead_port}")});
    assert_eq!(wait_sample(&s, "up", &dead)["value"], 0);
    assert_eq!(wait_sample(&s, "scrape_samples_scraped", &dead)["value"], 0);

    let lines = s.lines();
    let samples = parse(&lines);
    assert!(
        samples.iter().all(|v| !v["metric"].as_str().unwrap_or("").ends_with("_created")),
        "OpenMetrics _created samples are not forwarded"
    );
    assert!(
        samples.iter().all(|v| v["labels"]["job"] == "scrape"),
        "every series has its job label"
    );
}

#[test]
fn prometheus_accept_header_is_sent_and_openmetrics_is_read_by_its_content_type() {
    let om = Target::start(Box::new(|_| {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8".to_owned(),
            "# TYPE a counter\na_total 5 1700000000.5\na_created 1\n# EOF\n".to_owned(),
        )
    }));
    let text = Target::start(Box::new(|_| (TEXT.to_owned(), "b{job=\"app\"} 7 1700000000500\n".to_owned())));
    let cfg = format!(
        "[api]\nenabled = false\n[enrich]\ndisable_host = true\n\
         [sources.s]\ntype = \"prometheus_scrape\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\njob = \"j\"\n\
         targets = [\"http://127.0.0.1:{}/metrics\", \"http://127.0.0.1:{}/metrics\"]\n\
         [sinks.out]\ntype = \"stdout\"\n",
        om.port, text.port
    );
    let s = Sluice::start(&cfg);
    let a = wait_sample(&s, "a_total", &json!({"job": "j"}));
    assert_eq!(a["timestamp_ms"], 1_700_000_000_500i64, "OpenMetrics timestamps are seconds");
    let b = wait_sample(&s, "b", &json!({"exported_job": "app", "job": "j"}));
    assert_eq!(b["timestamp_ms"], 1_700_000_000_500i64, "text timestamps are milliseconds");
    assert_eq!(b["kind"], "gauge", "untyped is kept as a gauge");
    let accept = om.accepts().first().cloned().unwrap_or_default();
    assert!(
        accept.starts_with("application/openmetrics-text;version=1.0.0") && accept.contains("text/plain;version=0.0.4"),
        "{accept}"
    );
}

const PODS: &str = "/api/v1/pods";

fn pod(name: &str, uid: &str, port: u16, annotated: bool) -> Value {
    let mut annotations = json!({"team": "payments"});
    if annotated {
        annotations["prometheus.io/scrape"] = json!("true");
        annotations["prometheus.io/port"] = json!(port.to_string());
        annotations["prometheus.io/path"] = json!("/custom/metrics");
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "shop", "uid": uid, "resourceVersion": "101",
            "labels": {"app": name, "app.kubernetes.io/version": "3.1.4", "app.kubernetes.io/component": "worker"},
            "annotations": annotations,
        },
        "spec": {"nodeName": "node-a", "containers": [
            {"name": "sidecar", "image": "registry.local/proxy:1.0"},
            {"name": "api", "image": "registry.local/shop/api:3.1.4", "ports": [{"containerPort": port}]}
        ]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"}
    })
}

#[test]
fn annotated_pods_are_scraped_with_their_log_metadata_others_ignored_and_deleted_ones_removed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body = |_| {
        (
            TEXT.to_owned(),
            "# TYPE app_requests_total counter\napp_requests_total{route=\"/a\"} 12\n".to_owned(),
        )
    };
    let annotated = Target::start(Box::new(body));
    let ignored = Target::start(Box::new(body));
    let uid = "0c1d2e3f-aaaa-4bbb-8ccc-123456789abc";
    let state = Arc::new(ApiState::default());
    state.push(PODS, pod("api-7f9", uid, annotated.port, true));
    state.push(PODS, pod("quiet-1", "11111111-2222", ignored.port, false));
    let ca = dir.path().join("ca.crt");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let port = start_api(&rt, state.clone(), &ca);
    let log_dir = dir.path().join(format!("pods/shop_api-7f9_{uid}/api"));
    std::fs::create_dir_all(&log_dir).unwrap();
    append(
        &log_dir.join("0.log"),
        ["2024-05-01T10:00:00.000000001Z stdout F {\"id\":\"log-1\"}".to_owned()],
    );
    let extra = format!(
        "[sources.files.kubernetes]\nenabled = true\napi = true\napi_url = \"https://localhost:{port}\"\n\
         token_file = \"{}\"\nca_file = \"{}\"\nnode_name = \"node-a\"\ninitial_sync_timeout = \"10s\"\n\
         [sources.pods]\ntype = \"prometheus_scrape\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\n\
         [sources.pods.kubernetes]\nfile_source = \"files\"\n",
        token.display(),
        ca.display()
    );
    let cfg = config(
        &dir.path().join("data"),
        &[format!("{}/pods/**/*.log", dir.path().display())],
        &extra,
    );
    let s = Sluice::start(&cfg);

    let sample = wait_sample(&s, "app_requests_total", &json!({"route": "/a"}));
    let log = wait_until("the pod's log line", WAIT, || {
        parse(&s.lines()).into_iter().find(|v| v["id"] == "log-1")
    });
    assert_eq!(
        sample["labels"],
        json!({"route": "/a", "job": "pods", "instance": format!("127.0.0.1:{}", annotated.port),
               "namespace": "shop", "pod": "api-7f9", "container": "api"})
    );
    assert_eq!(sample["value"], 12);
    for path in [
        "/kubernetes/namespace",
        "/kubernetes/pod",
        "/kubernetes/container",
        "/kubernetes/pod_uid",
    ] {
        assert_eq!(sample.pointer(path), log.pointer(path), "{path}");
    }
    assert_eq!(sample["release"], log["release"], "the pod's release, as on its logs");
    assert_eq!(sample["process"], log["process"], "the pod's process type, as on its logs");
    assert_eq!(sample["release"]["version"], "3.1.4");
    assert_eq!(sample["process"]["type"], "worker");
    assert_eq!(sample["kubernetes"]["labels"], log["kubernetes"]["labels"]);
    wait_until("a few scrapes", WAIT, || (annotated.requests() >= 3).then_some(()));
    assert_eq!(ignored.requests(), 0, "a pod without the annotation is not scraped");
    let reqs = state.requests.lock().unwrap().clone();
    assert_eq!(
        reqs.iter().filter(|(u, _)| !u.contains("watch=true")).count(),
        1,
        "one pod list for both sources: one watcher, one cache: {reqs:?}"
    );

    // The pod goes away: its target goes with it.
    wait_until("a watch", WAIT, || (state.watching(PODS) > 0).then_some(()));
    state.send_event(PODS, "DELETED", &pod("api-7f9", uid, annotated.port, true));
    s.wait_for_log("scrape target removed", WAIT);
    let after = annotated.requests();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        annotated.requests() <= after + 1,
        "scraped {} times after the pod was deleted",
        annotated.requests() - after
    );

    // A new annotated pod comes through the watch and is scraped.
    let late = Target::start(Box::new(body));
    state.send_event(PODS, "ADDED", &pod("late-1", "33333333-4444", late.port, true));
    wait_sample(&s, "app_requests_total", &json!({"pod": "late-1"}));
}

#[test]
fn malformed_lines_are_counted_and_a_million_label_values_keep_memory_bounded() {
    const PER_SCRAPE: usize = 200_000;
    const SCRAPES: usize = 5;
    let target = Target::start(Box::new(|n| {
        let mut text = String::with_capacity(PER_SCRAPE * 32);
        if n == 0 {
            text.push_str("9bad 1\nm{a=\"1\"} notanumber\nm 1 not_a_time\n");
            text.push_str(&format!("m{{big=\"{}\"}} 1\n", "v".repeat(100_000)));
        }
        if n < SCRAPES {
            for i in 0..PER_SCRAPE {
                text.push_str(&format!("req_total{{user=\"u{}\"}} 1\n", n * PER_SCRAPE + i));
            }
        }
        (TEXT.to_owned(), text)
    }));
    let cfg = format!(
        "[api]\naddress = \"127.0.0.1:0\"\n[enrich]\ndisable_host = true\n\
         [sources.s]\ntype = \"prometheus_scrape\"\ninterval = \"2s\"\ntimeout = \"2s\"\nmax_series = 1000\n\
         targets = [\"http://127.0.0.1:{}/metrics\"]\n[sinks.out]\ntype = \"blackhole\"\n",
        target.port
    );
    // RSS should follow what sluice holds, not glibc's high-water marks:
    // one malloc arena (glibc keeps up to four here, and a scrape's body can
    // land in any of them), and a fixed mmap threshold, so that every
    // buffer over 64 KiB is mapped and given back when freed. By default
    // glibc raises the threshold to the largest block freed (a 6 MB body),
    // and later bodies then come from the heap and stay resident: on a
    // loaded machine, where scrapes and their batches overlap, that alone
    // grew RSS past the bound.
    let s = Sluice::builder()
        .config(&cfg)
        .env("MALLOC_ARENA_MAX", "1")
        .env("MALLOC_MMAP_THRESHOLD_", "65536")
        .start()
        .serving();
    let dropped = |m: &support::metrics::Metrics| {
        m.sum(
            "sluice_metric_updates_dropped_total",
            &[("source", "s"), ("reason", "series_limit")],
        )
    };
    let m = s.wait_for_metrics("the first scrape", WAIT, |m| dropped(m) >= (PER_SCRAPE - 1000) as f64);
    let rss_first = proc_status_kib(s.pid(), "VmRSS");
    for reason in ["format", "value", "timestamp", "label"] {
        assert_eq!(
            m.sum("sluice_metric_lines_invalid_total", &[("source", "s"), ("reason", reason)]),
            1.0,
            "{reason}"
        );
    }
    let started = Instant::now();
    let m = s.wait_for_metrics("a million label values", WAIT * 2, |m| {
        dropped(m) >= (PER_SCRAPE * SCRAPES - 1000) as f64
    });
    assert_eq!(dropped(&m), 999_000.0, "every series past the limit is counted");
    s.wait_for_metrics("the series gauge", WAIT, |m| {
        m.sum("sluice_metric_series", &[("source", "s")]) == 1000.0
    });
    // A scrape's parse can still be giving its memory back (on a loaded
    // machine two scrapes overlap): a leak stays, that does not.
    let settled = Instant::now() + Duration::from_secs(10);
    let rss_after = loop {
        let rss = proc_status_kib(s.pid(), "VmRSS");
        if rss < rss_first + 48 * 1024 || Instant::now() >= settled {
            break rss;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        rss_after < rss_first + 48 * 1024,
        "RSS grew from {rss_first} KiB to {rss_after} KiB over a million label values ({:?})",
        started.elapsed()
    );
}
