//! SLI metrics from the real `sluice` binary reading stdin: counts against
//! a ground truth the test computes itself from the same input, a canary
//! release whose burn rate crosses the alert threshold within seconds, and
//! the cardinality guard under thousands of distinct routes.

mod support;

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use support::sli::start_sli;
use support::sluice::STOP_TIMEOUT;
use support::{repo_path, Metrics, Sluice};

/// The default latency buckets sluice documents (seconds).
const DEFAULT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];
const READS_BUCKETS: &[f64] = &[0.01, 0.1, 0.5, 1.0];

const REPLAY_RULES: &str = r#"
[[sli]]
name = "avail"
objective = 0.999
match = [{ field = "path", prefix = "/api/" }]
latency = { field = "duration_ms", unit = "ms" }
labels = { route = "path", method = "method" }

[[sli]]
name = "checkout_latency"
objective = 0.99
match = [{ field = "service", equals = "checkout" }, { field = "status", lt = 500 }]
latency = { field = "duration_ms", unit = "ms", threshold = "250ms" }

[[sli]]
name = "reads"
match = [{ field = "method", equals = "GET" }]
success = { field = "status", gte = 200, lt = 400 }
latency = { field = "duration_ms", unit = "ms", buckets = [0.01, 0.1, 0.5, 1.0] }
"#;

/// The release sluice stamps on events without their own.
const COLLECTOR_RELEASE: &str = "v0";

/// A mixed access log: JSON events with every shape the rules must handle
/// (missing, null, string and invalid status and latency; ids in paths;
/// events with and without their own release) and some lines that are not
/// JSON objects at all.
fn generate_log(n: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let mut lines = Vec::with_capacity(n);
    for i in 0..n {
        let kind = rng.below(100);
        if kind < 2 {
            lines.push(format!("plain text line {i} status=500"));
            continue;
        }
        if kind == 2 {
            lines.push("[1,2,3]".to_owned());
            continue;
        }
        let mut e = serde_json::Map::new();
        e.insert("msg".into(), json!("request"));
        if rng.below(100) >= 3 {
            e.insert("service".into(), json!(rng.pick(&["api", "checkout", "search"])));
        }
        if rng.below(100) < 40 {
            e.insert("release".into(), json!({"version": rng.pick(&["v1", "v2"])}));
        }
        e.insert("method".into(), json!(rng.pick(&["GET", "GET", "GET", "POST", "PUT"])));
        let id = rng.below(100_000);
        let uuid = format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            rng.below(1 << 32),
            rng.below(1 << 16),
            rng.below(1 << 16),
            rng.below(1 << 16),
            rng.below(1 << 48)
        );
        let path = match rng.below(6) {
            0 => format!("/api/orders/{id}"),
            1 => format!("/api/users/{uuid}/cart"),
            2 => format!("/api/search?q=w{id}"),
            3 => "/health".to_owned(),
            4 => format!("/api/items/{id}/reviews/{}", id % 7),
            _ => format!("/api/{}", rng.pick(&["cart", "wishlist", "profile"])),
        };
        e.insert("path".into(), json!(path));
        let s = rng.below(1000);
        let status = match s {
            0..850 => Some(json!(200)),
            850..880 => Some(json!(201)),
            880..900 => Some(json!(304)),
            900..930 => Some(json!(404)),
            930..945 => Some(json!(429)),
            945..965 => Some(json!(500)),
            965..975 => Some(json!(503)),
            975..985 => Some(json!("502")),
            985..990 => Some(Value::Null),
            990..995 => None,
            _ => Some(json!("n/a")),
        };
        if let Some(st) = status {
            e.insert("status".into(), st);
        }
        // Skewed latencies up to 3 s, half a microsecond off every
        // millisecond multiple so no value sits on a bucket bound.
        let x = rng.unit();
        let ms = ((x * x * x * 3000.0 * 1000.0).floor() + 0.5) / 1000.0;
        match rng.below(100) {
            0..90 => {
                e.insert("duration_ms".into(), json!(ms));
            }
            90..95 => {
                e.insert("duration_ms".into(), json!(ms.to_string()));
            }
            95..97 => {}
            97 => {
                e.insert("duration_ms".into(), json!(-5));
            }
            _ => {
                e.insert("duration_ms".into(), json!("fast"));
            }
        }
        e.insert("http".into(), json!({"proto": "HTTP/1.1", "bytes": rng.below(10_000)}));
        lines.push(Value::Object(e).to_string());
    }
    lines
}

/// A number, or a string holding one.
fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Latency in seconds from a millisecond field: a non-negative number.
fn latency_ms(v: Option<&Value>) -> Option<f64> {
    number(v).map(|ms| ms * 1e-3).filter(|s| s.is_finite() && *s >= 0.0)
}

fn text(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
}

/// Route normalisation as documented: query dropped, numeric and UUID
/// segments replaced by `:id`.
fn normalise(path: &str) -> String {
    let base = path.split(['?', '#']).next().unwrap_or("");
    base.split('/')
        .map(|seg| {
            let uuid = seg.len() == 36
                && seg.char_indices().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            if (!seg.is_empty() && seg.chars().all(|c| c.is_ascii_digit())) || uuid {
                ":id".to_owned()
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Per SLI: requests by (labels, outcome), latencies by labels, and
/// incomplete events by reason.
/// Label name/value pairs of one series, in exposition order.
type Labels = Vec<(String, String)>;

#[derive(Default, Debug)]
struct Truth {
    requests: BTreeMap<(Labels, &'static str), u64>,
    latencies: BTreeMap<Labels, Vec<f64>>,
    incomplete: BTreeMap<&'static str, u64>,
}

impl Truth {
    fn count(&mut self, labels: Vec<(String, String)>, outcome: &'static str, latency: Option<f64>) {
        if let Some(l) = latency {
            self.latencies.entry(labels.clone()).or_default().push(l);
        }
        *self.requests.entry((labels, outcome)).or_default() += 1;
    }

    fn total(&self) -> u64 {
        self.requests.values().sum()
    }
}

/// What each rule of [`REPLAY_RULES`] must report for `lines`, computed
/// from the rules' documented meaning with serde_json.
fn ground_truth(lines: &[String]) -> BTreeMap<&'static str, Truth> {
    let mut truth: BTreeMap<&'static str, Truth> = BTreeMap::new();
    for line in lines {
        let e = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => m,
            _ => serde_json::Map::new(), // wrapped as {"message": …}
        };
        let service = text(e.get("service")).unwrap_or("unknown").to_owned();
        let release = text(e.get("release").and_then(|r| r.get("version")))
            .unwrap_or(COLLECTOR_RELEASE)
            .to_owned();
        let status = number(e.get("status"));
        let latency = latency_ms(e.get("duration_ms"));
        let base = vec![("service".to_owned(), service.clone()), ("release".to_owned(), release.clone())];

        if let Some(path) = text(e.get("path")).filter(|p| p.starts_with("/api/")) {
            let t = truth.entry("avail").or_default();
            match status {
                None => *t.incomplete.entry("no_outcome").or_default() += 1,
                Some(st) => {
                    if latency.is_none() {
                        *t.incomplete.entry("no_latency").or_default() += 1;
                    }
                    let mut labels = base.clone();
                    labels.push(("route".into(), normalise(path)));
                    labels.push(("method".into(), text(e.get("method")).unwrap_or("unknown").to_owned()));
                    t.count(labels, if st >= 500.0 { "error" } else { "success" }, latency);
                }
            }
        }

        if service == "checkout" && status.is_some_and(|s| s < 500.0) {
            let t = truth.entry("checkout_latency").or_default();
            match latency {
                None => *t.incomplete.entry("no_latency").or_default() += 1,
                Some(l) => t.count(base.clone(), if l > 0.25 { "slow" } else { "success" }, Some(l)),
            }
        }

        if text(e.get("method")) == Some("GET") {
            let t = truth.entry("reads").or_default();
            match status {
                None => *t.incomplete.entry("no_outcome").or_default() += 1,
                Some(st) => {
                    if latency.is_none() {
                        *t.incomplete.entry("no_latency").or_default() += 1;
                    }
                    let ok = (200.0..400.0).contains(&st);
                    t.count(base.clone(), if ok { "success" } else { "error" }, latency);
                }
            }
        }
    }
    truth
}

fn labels_of(sli: &str, labels: &[(String, String)]) -> Vec<(String, String)> {
    let mut l = vec![("sli".to_owned(), sli.to_owned())];
    l.extend(labels.iter().cloned());
    l
}

fn get(samples: &Metrics, name: &str, labels: &[(String, String)]) -> Option<f64> {
    let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    samples.get(name, &refs)
}

/// Cumulative (le, count) pairs of one histogram series, `+Inf` last.
fn exported_buckets(samples: &Metrics, labels: &[(String, String)]) -> Vec<(f64, f64)> {
    let mut b: Vec<(f64, f64)> = samples
        .samples
        .iter()
        .filter(|s| s.name == "sluice_sli_latency_seconds_bucket")
        .filter(|s| s.labels.len() == labels.len() + 1 && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| (s.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY), s.value))
        .collect();
    b.sort_by(|a, b| a.0.total_cmp(&b.0));
    b
}

fn expected_buckets(bounds: &[f64], latencies: &[f64]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = bounds
        .iter()
        .map(|b| (*b, latencies.iter().filter(|l| **l <= *b).count() as f64))
        .collect();
    out.push((f64::INFINITY, latencies.len() as f64));
    out
}

/// Index of the bucket holding `x`: the number of bounds below it.
fn bucket_index(bounds: &[f64], x: f64) -> usize {
    bounds.iter().filter(|b| **b < x).count()
}

fn p95(latencies: &[f64]) -> f64 {
    let mut v = latencies.to_vec();
    v.sort_by(f64::total_cmp);
    v[((0.95 * v.len() as f64).ceil() as usize).max(1) - 1]
}

#[test]
fn replayed_log_counts_match_independent_ground_truth_exactly() {
    let lines = generate_log(30_000, 0x5eed_0005);
    let truth = ground_truth(&lines);
    let mut sluice = start_sli(REPLAY_RULES, &[("SLUICE_RELEASE", COLLECTOR_RELEASE)]);
    let mut input = lines.join("\n");
    input.push('\n');
    sluice.write(input.as_bytes());

    // Every event is in once the totals and incomplete counts all match;
    // stdin stays open, so this is the live process answering.
    let samples = sluice.wait_for_metrics("all SLI counts", Duration::from_secs(60), |s| {
        truth.iter().all(|(sli, t)| {
            s.sum("sluice_sli_requests_total", &[("sli", sli)]) == t.total() as f64
                && t.incomplete
                    .iter()
                    .all(|(reason, n)| s.sum("sluice_sli_events_incomplete_total", &[("sli", sli), ("reason", reason)]) == *n as f64)
        })
    });

    for (sli, t) in &truth {
        assert!(t.total() > 1000, "{sli}: the generated log exercises the rule ({})", t.total());
        // Every (labels, outcome) the truth has, with exactly its count...
        for ((labels, outcome), n) in &t.requests {
            let mut l = labels_of(sli, labels);
            l.push(("outcome".into(), outcome.to_string()));
            assert_eq!(get(&samples, "sluice_sli_requests_total", &l), Some(*n as f64), "{l:?}");
        }
        // ...and nothing else with a count.
        let exported = samples
            .matching("sluice_sli_requests_total", &[("sli", sli)])
            .filter(|s| s.value > 0.0)
            .count();
        assert_eq!(exported, t.requests.len(), "{sli}: series with counts");
        let bounds = if *sli == "reads" {
            READS_BUCKETS.to_vec()
        } else {
            DEFAULT_BUCKETS.to_vec()
        };
        for (labels, lat) in &t.latencies {
            let l = labels_of(sli, labels);
            assert_eq!(exported_buckets(&samples, &l), expected_buckets(&bounds, lat), "{l:?}");
            assert_eq!(get(&samples, "sluice_sli_latency_seconds_count", &l), Some(lat.len() as f64));
            let sum = get(&samples, "sluice_sli_latency_seconds_sum", &l).unwrap_or(f64::NAN);
            let want: f64 = lat.iter().sum();
            assert!((sum - want).abs() <= 1e-9 * want.max(1.0), "{l:?}: sum {sum} != {want}");
        }
    }

    // P95 from the exported histogram lands in the true P95's bucket or
    // the next one, overall and per service.
    let mut groups: BTreeMap<String, (Vec<f64>, Vec<Labels>)> = BTreeMap::new();
    for (labels, lat) in &truth["avail"].latencies {
        for key in ["all".to_owned(), labels[0].1.clone()] {
            let g = groups.entry(key).or_default();
            g.0.extend(lat);
            g.1.push(labels_of("avail", labels));
        }
    }
    for (group, (lat, series)) in &groups {
        let mut summed: Vec<(f64, f64)> = Vec::new();
        for l in series {
            let b = exported_buckets(&samples, l);
            if summed.is_empty() {
                summed = b;
            } else {
                for (acc, x) in summed.iter_mut().zip(b) {
                    acc.1 += x.1;
                }
            }
        }
        let estimate = histogram_quantile(0.95, &summed);
        let exact = p95(lat);
        let (ie, it) = (bucket_index(DEFAULT_BUCKETS, estimate), bucket_index(DEFAULT_BUCKETS, exact));
        assert!(
            ie.abs_diff(it) <= 1,
            "{group}: P95 estimate {estimate} (bucket {ie}) vs exact {exact} (bucket {it})"
        );
    }
    sluice.finish(STOP_TIMEOUT);
}

/// Writes `n` events of `release`, every `error_every`-th one a 500 (0:
/// none).
fn canary_events(out: &mut String, release: &str, n: usize, error_every: usize, counter: &mut usize) {
    for _ in 0..n {
        *counter += 1;
        let status = if error_every > 0 && *counter % error_every == 0 { 500 } else { 200 };
        out.push_str(&format!(
            r#"{{"service":"shop","release":{{"version":"{release}"}},"path":"/api/cart","status":{status},"duration_ms":12.5}}"#
        ));
        out.push('\n');
    }
}

#[test]
fn canary_release_burn_rate_crosses_fast_burn_threshold_within_ten_seconds() {
    let threshold = fast_burn_threshold();
    assert_eq!(threshold, 14.4, "the rules file pages at the workbook's 14.4");
    let rules = "[[sli]]\nname = \"shop\"\nobjective = 0.999\nwindows = [\"5m\", \"1h\"]\n";
    let mut sluice = start_sli(rules, &[]);
    let burn = |s: &Metrics, release: &str, window: &str| {
        s.get(
            "sluice_sli_error_budget_burn_rate",
            &[("sli", "shop"), ("service", "shop"), ("release", release), ("window", window)],
        )
    };

    // v1 is healthy throughout; v2 joins healthy, then fails 5% of its
    // requests. 50 requests per release every 100 ms.
    let start = Instant::now();
    let (mut v1n, mut v2n) = (0, 0);
    let mut first_error: Option<Instant> = None;
    let mut crossed: Option<Duration> = None;
    let mut polls = 0;
    for tick in 0u32.. {
        let mut chunk = String::new();
        canary_events(&mut chunk, "v1", 50, 0, &mut v1n);
        if tick >= 10 {
            let failing = tick >= 20;
            canary_events(&mut chunk, "v2", 50, if failing { 20 } else { 0 }, &mut v2n);
            if failing && first_error.is_none() {
                first_error = Some(Instant::now());
            }
        }
        sluice.write(chunk.as_bytes());

        let s = sluice.metrics();
        polls += 1;
        for w in ["5m", "1h"] {
            if let Some(b) = burn(&s, "v1", w) {
                assert_eq!(b, 0.0, "v1's {w} burn rate stays flat (tick {tick})");
            }
        }
        if let (Some(t0), Some(b)) = (first_error, burn(&s, "v2", "5m")) {
            if b > threshold {
                crossed = Some(t0.elapsed());
                break;
            }
        }
        if let Some(t0) = first_error {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "v2's 5m burn rate stayed under {threshold} for 10 s"
            );
        } else {
            // Before its errors, v2 burns nothing either.
            assert!(burn(&s, "v2", "5m").unwrap_or(0.0) == 0.0);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "canary test ran out of time");
        let next = start + Duration::from_millis(100) * (tick + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let crossed = crossed.expect("crossed");
    let s = sluice.metrics();
    assert_eq!(burn(&s, "v1", "5m"), Some(0.0));
    assert_eq!(burn(&s, "v1", "1h"), Some(0.0));
    assert!(
        burn(&s, "v2", "1h").unwrap_or(0.0) > threshold,
        "both windows of the fast-burn page are over"
    );
    assert!(polls > 10);
    eprintln!("v2's 5m burn rate crossed {threshold} {crossed:?} after its first errors");
    sluice.finish(STOP_TIMEOUT);
}

#[test]
fn cardinality_guard_keeps_the_series_limit_and_counts_overflow_with_bounded_memory() {
    let rules = r#"
[[sli]]
name = "routes"
objective = 0.999
max_series = 1000
latency = { field = "duration_ms" }
labels = { route = "path" }
"#;
    let mut sluice = start_sli(rules, &[]);
    // Every route is the same length, so the pipeline's buffers see the
    // same input shape in every pass below.
    let long = "x".repeat(200);
    let route = |tag: &str, i: usize| format!("/r/{long}/{tag}-{i:05}");
    let event = |route: &str| format!(r#"{{"service":"shop","path":"{route}","status":200,"duration_ms":3}}"#);
    let mut input = String::new();
    for i in 0..5000 {
        input.push_str(&event(&route("a", i)));
        input.push('\n');
    }
    sluice.write(input.as_bytes());
    let s = sluice.wait_for_metrics("5000 requests", Duration::from_secs(30), |s| {
        s.sum("sluice_sli_requests_total", &[("sli", "routes")]) == 5000.0
    });
    let routes: BTreeSet<&str> = s
        .matching("sluice_sli_requests_total", &[("sli", "routes"), ("outcome", "success")])
        .map(|x| x.labels["route"].as_str())
        .collect();
    assert_eq!(routes.len(), 1001, "1000 series plus overflow");
    assert!(routes.contains("__overflow__"));
    // The first thousand distinct values got series, in arrival order.
    assert!(routes.contains(route("a", 0).as_str()) && routes.contains(route("a", 999).as_str()));
    assert!(!routes.contains(route("a", 1000).as_str()));
    assert_eq!(s.get("sluice_sli_series_overflow_total", &[("sli", "routes")]), Some(4000.0));
    assert_eq!(s.get("sluice_sli_series", &[("sli", "routes")]), Some(1000.0));
    let overflow = [
        ("sli", "routes"),
        ("service", "__overflow__"),
        ("release", "__overflow__"),
        ("route", "__overflow__"),
        ("outcome", "success"),
    ];
    assert_eq!(s.get("sluice_sli_requests_total", &overflow), Some(4000.0));
    let memory = s.get("sluice_sli_series_memory_bytes", &[("sli", "routes")]).expect("memory gauge");

    // Passes of the same volume and line length: first twice over routes
    // that already have series (the pipeline's buffers reach their working
    // size), then over 45000 new route values. That last pass adds no
    // series, nothing to what the series hold, and little to the process.
    let pass = |sluice: &mut Sluice, new_routes: bool| {
        for round in 0..9 {
            let mut input = String::new();
            for i in 0..5000 {
                let r = if new_routes {
                    route(&round.to_string(), i)
                } else {
                    route("a", i % 1000)
                };
                input.push_str(&event(&r));
                input.push('\n');
            }
            sluice.write(input.as_bytes());
        }
    };
    pass(&mut sluice, false);
    pass(&mut sluice, false);
    sluice.wait_for_metrics("95000 requests", Duration::from_secs(60), |s| {
        s.sum("sluice_sli_requests_total", &[("sli", "routes")]) == 95_000.0
    });
    let rss = sluice.memory_kib("VmRSS") * 1024;
    pass(&mut sluice, true);
    let s = sluice.wait_for_metrics("140000 requests", Duration::from_secs(60), |s| {
        s.sum("sluice_sli_requests_total", &[("sli", "routes")]) == 140_000.0
    });
    assert_eq!(s.get("sluice_sli_series", &[("sli", "routes")]), Some(1000.0));
    assert_eq!(s.get("sluice_sli_series_overflow_total", &[("sli", "routes")]), Some(49_000.0));
    assert_eq!(s.get("sluice_sli_series_memory_bytes", &[("sli", "routes")]), Some(memory));
    let grown = (sluice.memory_kib("VmRSS") * 1024).saturating_sub(rss);
    eprintln!("RSS {rss} bytes before 45000 new route values, grew by {grown}");
    // A series per new route would be ~110 MiB (two 960-byte window rings,
    // 20 buckets and a 215-byte key each); pipeline buffers vary by a few
    // MiB with scheduling.
    assert!(grown < 24 << 20, "RSS grew by {grown} bytes over 45000 new route values");
    sluice.finish(STOP_TIMEOUT);
}

#[test]
fn sli_config_errors_name_their_key_paths() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[sources.in]
type = "stdin"
[sinks.out]
type = "blackhole"

[[sli]]
name = "a"
latency = { field = "d", unit = "fortnights" }

[[sli]]
name = "b"
match = [{ field = "path", pattern = "(" }]

[[sli]]
name = "c"
objective = 1.5
windows = ["5m", "300s"]
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&path)
        .arg("validate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "sli[0].latency.unit",
        "sli[1].match[0].pattern",
        "sli[2].objective",
        "sli[2].windows[1]",
    ] {
        assert!(stderr.contains(want), "{want} missing from:\n{stderr}");
    }
}

#[test]
fn example_sli_config_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(repo_path("config/sli-example.toml"))
        .arg("validate")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = sluice::topology::Config::load(&repo_path("config/sli-example.toml")).unwrap();
    let names: Vec<&str> = config.sli.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["api_availability", "checkout_latency", "read_success"]);
}

/// A small deterministic generator (xorshift64*), so a failing input can be
/// regenerated from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Prometheus' `histogram_quantile`: linear interpolation inside the bucket
/// where the rank falls. `buckets` are (upper bound, cumulative count),
/// sorted, ending with `+Inf`.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().expect("buckets").1;
    let rank = q * total;
    let i = buckets.iter().position(|(_, c)| *c >= rank).expect("rank within total");
    if buckets[i].0.is_infinite() {
        return buckets[i - 1].0;
    }
    let (lo, below) = if i == 0 { (0.0, 0.0) } else { buckets[i - 1] };
    let (hi, count) = buckets[i];
    lo + (hi - lo) * (rank - below) / (count - below)
}

/// The fast-burn threshold the alerting rules use on the 5m window.
pub fn fast_burn_threshold() -> f64 {
    let rules = std::fs::read_to_string(repo_path("deploy/prometheus/sluice-sli-rules.yml")).expect("read rules file");
    rules
        .lines()
        .find(|l| l.contains("sluice_sli_error_budget_burn_rate{window=\"5m\"}"))
        .and_then(|l| l.rsplit_once('>'))
        .and_then(|(_, v)| v.trim().parse().ok())
        .expect("a 5m burn-rate threshold in the rules file")
}
