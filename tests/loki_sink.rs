//! The Loki sink against the real push receiver (`tests/support/loki_receiver.py`,
//! which decodes Loki's snappy protobuf and JSON wire formats): the real
//! `sluice` binary reads stdin and pushes; the receiver's record of what it
//! stored is compared with what was written. Fault modes make the receiver
//! answer the way Loki does (429, 500, 400 with Loki's rejection messages).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sluice::buffer::{queue, BufferConfig};
use sluice::decode::Decoder;
use sluice::enrich::{Fragment, SourceContext};
use sluice::event::{AckGroup, AckOutcome, BatchBuilder, FieldSet};
use sluice::sinks::SinkCx;
use sluice::telemetry::Health;
use sluice::topology::{Config, Format};
use support::enriched::{enriched, start_with_sinks};
use support::{free_port, wait_until, Loki, LokiMode, ReceivedStream};

/// How long a test waits for deliveries before failing.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// An app log line. Times are `base + ns` in RFC 3339 with nanoseconds.
fn event(i: usize, service: &str, level: &str, ns: i64) -> String {
    let base = 1_714_564_800i64; // 2024-05-01T12:00:00Z
    let secs = base + ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let hms = secs - base;
    format!(
        "{{\"time\":\"2024-05-01T12:{:02}:{:02}.{frac:09}Z\",\"level\":\"{level}\",\"service\":\"{service}\",\
         \"msg\":\"request {i} \\\"quoted\\\" ü\",\"request_id\":\"req-{i}\",\"status\":200}}",
        hms / 60,
        hms % 60
    )
}

fn event_ns(ns: i64) -> i64 {
    1_714_564_800_000_000_000 + ns
}

fn loki_sink(url: &str, extra: &str) -> String {
    format!(
        "[sinks.loki]\ntype = \"loki\"\nendpoint = \"{url}\"\n\
         labels = {{ service = \"{{{{ service }}}}\", level = \"{{{{ level }}}}\", release = \"{{{{ release.version }}}}\" }}\n\
         structured_metadata = [\"request_id\"]\n\
         [sinks.loki.retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"400ms\"\n{extra}"
    )
}

fn all_entries(streams: &[ReceivedStream]) -> usize {
    streams.iter().map(|s| s.entries.len()).sum()
}

/// One expected entry: time, line, request_id metadata.
type Expected = (i64, String, String);

#[test]
fn every_event_arrives_with_its_labels_metadata_tenant_and_time_order() {
    let loki = Loki::start();
    let mut sluice = start_with_sinks(
        &loki_sink(
            &loki.url,
            "[sinks.loki.batch]\ntimeout = \"30s\"\nmax_events = 100000\nmax_bytes = \"16MiB\"\n",
        )
        .replace("labels =", "tenant_id = \"team-a\"\nlabels ="),
        &[],
    );
    // Three services, two levels; within each block of ten the times run
    // backwards, so only the sink's ordering makes each stream ordered.
    let services = ["api", "worker", "billing"];
    let mut input = String::new();
    let mut expected: BTreeMap<(String, String), Vec<Expected>> = BTreeMap::new();
    for i in 0..3000usize {
        let service = services[i % 3];
        let level = if i % 7 == 0 { "error" } else { "info" };
        let block = (i / 10) as i64;
        let ns = block * 10_000_000 + (9 - (i % 10) as i64) * 1_000_000 + i as i64;
        let line = event(i, service, level, ns);
        input.push_str(&line);
        input.push('\n');
        expected
            .entry((service.to_owned(), level.to_owned()))
            .or_default()
            .push((event_ns(ns), enriched(&line), format!("req-{i}")));
    }
    sluice.write(&input);
    sluice.close_stdin();
    let status = sluice.wait(DELIVERY_TIMEOUT);
    assert!(status.success(), "sluice failed: {}", sluice.logs());

    let streams = loki.entries();
    assert_eq!(all_entries(&streams), 3000, "every event exactly once");
    assert_eq!(streams.len(), expected.len(), "one stream per label set");
    for s in &streams {
        assert_eq!(s.tenant, "team-a");
        let key = (s.labels["service"].clone(), s.labels["level"].clone());
        let want_labels: BTreeMap<String, String> = [
            ("service", key.0.as_str()),
            ("level", key.1.as_str()),
            ("release", "1.4.2"),
            ("host", "node-7"),
            ("source", "app"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(s.labels, want_labels);
        let mut want = expected[&key].clone();
        want.sort_by_key(|(ts, _, _)| *ts);
        let got: Vec<(i64, String, String)> = s
            .entries
            .iter()
            .map(|e| (e.ts_ns, e.line.clone(), e.structured_metadata["request_id"].clone()))
            .collect();
        assert_eq!(got, want, "stream {key:?}: exact lines, times, metadata, in time order");
    }
    assert_eq!(loki.stats().by_content_type.get("application/x-protobuf"), Some(&1));
}

#[test]
fn json_encoding_with_gzip_delivers_the_same_entries() {
    let loki = Loki::start();
    let mut sluice = start_with_sinks(&loki_sink(&loki.url, "").replace("labels =", "encoding = \"json\"\nlabels ="), &[]);
    let lines: Vec<String> = (0..500).map(|i| event(i, "api", "info", i as i64 * 1000)).collect();
    sluice.write(&(lines.join("\n") + "\n"));
    sluice.close_stdin();
    assert!(sluice.wait(DELIVERY_TIMEOUT).success(), "{}", sluice.logs());
    let streams = loki.entries();
    assert_eq!(streams.len(), 1);
    let got: Vec<&str> = streams[0].entries.iter().map(|e| e.line.as_str()).collect();
    let want: Vec<String> = lines.iter().map(|l| enriched(l)).collect();
    assert_eq!(got, want);
    assert_eq!(streams[0].entries[7].structured_metadata["request_id"], "req-7");
    assert_eq!(streams[0].entries[7].ts_ns, event_ns(7000));
    let stats = loki.stats();
    assert!(stats.by_content_type.contains_key("application/json"), "{stats:?}");
}

#[test]
fn rate_limit_storm_is_retried_until_every_event_is_delivered() {
    let loki = Loki::start();
    loki.set_mode(LokiMode::TooManyRequests, Some(8));
    let mut sluice = start_with_sinks(&loki_sink(&loki.url, ""), &[]);
    let lines: Vec<String> = (0..2000).map(|i| event(i, "api", "info", i as i64)).collect();
    sluice.write(&(lines.join("\n") + "\n"));
    loki.wait_for_entries(2000, DELIVERY_TIMEOUT);
    let retries = sluice.metric("sluice_sink_retries_total{sink=\"loki\"}");
    let throttled = sluice.metric("sluice_sink_errors_total{kind=\"http_429\",sink=\"loki\"}");
    sluice.close_stdin();
    assert!(sluice.wait(DELIVERY_TIMEOUT).success(), "{}", sluice.logs());
    let stats = loki.stats();
    assert_eq!(stats.by_status.get("429"), Some(&8), "{stats:?}");
    assert!(retries >= 8.0 && throttled >= 8.0, "retries {retries}, 429s {throttled}");
    let got: BTreeSet<String> = loki.lines().into_iter().collect();
    let want: BTreeSet<String> = lines.iter().map(|l| enriched(l)).collect();
    assert_eq!(got, want);
    assert_eq!(stats.accepted_entries, 2000, "nothing stored twice");
}

#[test]
fn server_errors_are_retried_then_delivered() {
    let loki = Loki::start();
    loki.set_mode(LokiMode::ServerError, Some(3));
    let mut sluice = start_with_sinks(&loki_sink(&loki.url, ""), &[]);
    let lines: Vec<String> = (0..300).map(|i| event(i, "api", "info", i as i64)).collect();
    sluice.write(&(lines.join("\n") + "\n"));
    sluice.close_stdin();
    assert!(sluice.wait(DELIVERY_TIMEOUT).success(), "{}", sluice.logs());
    assert_eq!(loki.stats().by_status.get("500"), Some(&3));
    let want: Vec<String> = lines.iter().map(|l| enriched(l)).collect();
    assert_eq!(loki.lines(), want);
}

#[test]
fn receiver_down_mid_stream_then_back_gets_every_event_and_ready_follows() {
    let port = free_port();
    let first = Loki::start_on(port);
    let mut sluice = start_with_sinks(&loki_sink(&first.url, "[sinks.loki.batch]\ntimeout = \"200ms\"\n"), &[]);
    sluice.api_address();
    let lines: Vec<String> = (0..1000).map(|i| event(i, "api", "info", i as i64)).collect();
    sluice.write(&(lines[..500].join("\n") + "\n"));
    let before = wait_until("the first half at the receiver", DELIVERY_TIMEOUT, || {
        let l = first.lines();
        (l.len() >= 500).then_some(l)
    });
    assert_eq!(sluice.ready_status(), 200);
    drop(first);

    sluice.write(&(lines[500..].join("\n") + "\n"));
    // Pushes fail while the receiver is gone; /ready reports the sink.
    wait_until("/ready to report the dead sink", Duration::from_secs(20), || {
        (sluice.ready_status() == 503).then_some(())
    });
    std::thread::sleep(Duration::from_secs(4));
    assert!(sluice.metric("sluice_sink_errors_total{kind=\"connection\",sink=\"loki\"}") >= 3.0);

    let second = Loki::start_on(port);
    let after = wait_until("the second half at the restarted receiver", DELIVERY_TIMEOUT, || {
        let l = second.lines();
        (l.len() >= 500).then_some(l)
    });
    wait_until("/ready to recover", Duration::from_secs(20), || {
        (sluice.ready_status() == 200).then_some(())
    });
    sluice.close_stdin();
    assert!(sluice.wait(DELIVERY_TIMEOUT).success(), "{}", sluice.logs());

    let got: BTreeSet<String> = before.into_iter().chain(after).chain(second.lines()).collect();
    let want: BTreeSet<String> = lines.iter().map(|l| enriched(l)).collect();
    assert_eq!(got, want, "every event at least once");
}

#[test]
fn partial_rejection_keeps_the_accepted_entries_and_counts_the_rest() {
    let loki = Loki::start();
    loki.set_mode(LokiMode::Partial, Some(1));
    let mut sluice = start_with_sinks(
        &loki_sink(&loki.url, "[sinks.loki.batch]\ntimeout = \"30s\"\nmax_events = 100\n"),
        &[],
    );
    sluice.api_address();
    let lines: Vec<String> = (0..100).map(|i| event(i, "api", "info", i as i64 * 1000)).collect();
    sluice.write(&(lines.join("\n") + "\n"));
    // One push of 100 entries: the receiver stores entries 0, 2, 4, ... and
    // refuses the rest with Loki's per-stream "total ignored" message.
    let streams = loki.wait_for_entries(50, DELIVERY_TIMEOUT);
    wait_until("the refusal to be counted", Duration::from_secs(10), || {
        (sluice.metric("sluice_events_dropped_total{component=\"loki\",reason=\"rejected\"}") == 50.0).then_some(())
    });
    assert_eq!(
        sluice.metric("sluice_loki_entries_rejected_total{reason=\"out_of_order\",sink=\"loki\"}"),
        50.0
    );
    assert_eq!(sluice.metric("sluice_sink_events_total{sink=\"loki\"}"), 50.0);
    let stats = loki.stats();
    assert_eq!(stats.pushes, 1, "a partial refusal is not retried: {stats:?}");
    let got: Vec<&str> = streams[0].entries.iter().map(|e| e.line.as_str()).collect();
    let want: Vec<String> = lines.iter().step_by(2).map(|l| enriched(l)).collect();
    assert_eq!(got, want);

    // Later pushes go through as usual.
    let more: Vec<String> = (100..110).map(|i| event(i, "api", "info", i as i64 * 1000)).collect();
    sluice.write(&(more.join("\n") + "\n"));
    sluice.close_stdin();
    assert!(sluice.wait(DELIVERY_TIMEOUT).success(), "{}", sluice.logs());
    assert_eq!(all_entries(&loki.entries()), 60);
}

#[test]
fn a_400_that_does_not_say_how_many_were_refused_counts_the_whole_push_as_refused() {
    let loki = Loki::start();
    // "entry out of order" and nothing else: no "total ignored: N out of M",
    // no "K errors like:". Loki refused the push and kept none of it.
    let (status, text) = support::http_post(
        &format!("{}/control/mode", loki.url),
        &[("Content-Type", "application/json")],
        br#"{"mode": "400-bare-out-of-order", "count": 1}"#,
    );
    assert_eq!(status, 204, "{text}");
    let mut sluice = start_with_sinks(
        &loki_sink(&loki.url, "[sinks.loki.batch]\ntimeout = \"30s\"\nmax_events = 2000\n"),
        &[],
    );
    sluice.api_address();
    let lines: Vec<String> = (0..2000).map(|i| event(i, "api", "info", i as i64 * 1000)).collect();
    sluice.write(&(lines.join("\n") + "\n"));
    wait_until("the refusal to be counted", DELIVERY_TIMEOUT, || {
        (sluice.metric("sluice_events_dropped_total{component=\"loki\",reason=\"rejected\"}") > 0.0).then_some(())
    });
    let stats = loki.stats();
    assert_eq!((stats.pushes, stats.accepted_entries), (1, 0), "{stats:?}");
    assert_eq!(
        sluice.metric("sluice_events_dropped_total{component=\"loki\",reason=\"rejected\"}"),
        2000.0,
        "every entry of the refused push is counted as refused"
    );
    assert_eq!(
        sluice.metric("sluice_sink_events_total{sink=\"loki\"}"),
        0.0,
        "nothing Loki did not keep is counted as delivered"
    );
    assert_eq!(sluice.metric("sluice_sink_errors_total{kind=\"http_4xx\",sink=\"loki\"}"), 1.0);
    sluice.close_stdin();
    assert!(sluice.wait(DELIVERY_TIMEOUT).success(), "{}", sluice.logs());
}

#[test]
fn out_of_order_entries_in_a_later_push_are_counted_and_the_in_order_ones_kept() {
    let loki = Loki::start();
    loki.set_mode(LokiMode::StrictOrder { window_ns: 0 }, None);
    let mut sluice = start_with_sinks(
        &loki_sink(&loki.url, "[sinks.loki.batch]\ntimeout = \"30s\"\nmax_events = 10\n"),
        &[],
    );
    // Push 1: seconds 100..110. Push 2: five entries older than push 1's
    // newest (refused as out of order) and five newer (stored).
    let mut lines: Vec<String> = (0..10).map(|i| event(i, "api", "info", (100 + i as i64) * 1_000_000_000)).collect();
    lines.extend((10..15).map(|i| event(i, "api", "info", (40 + i as i64) * 1_000_000_000)));
    lines.extend((15..20).map(|i| event(i, "api", "info", (100 + i as i64) * 1_000_000_000)));
    sluice.write(&(lines.join("\n") + "\n"));
    sluice.close_stdin();
    assert!(sluice.wait(DELIVERY_TIMEOUT).success(), "{}", sluice.logs());
    let got: Vec<String> = loki.lines();
    let want: Vec<String> = lines[..10].iter().chain(&lines[15..]).map(|l| enriched(l)).collect();
    assert_eq!(got, want);
    let stats = loki.stats();
    assert_eq!((stats.pushes, stats.rejected_entries), (2, 5), "{stats:?}");
    assert!(sluice.logs().contains("Loki refused entries"));
}

#[test]
fn unreachable_loki_is_a_clear_start_up_error() {
    let port = free_port();
    let sluice = start_with_sinks(&loki_sink(&format!("http://127.0.0.1:{port}"), ""), &[]);
    let status = sluice.wait(Duration::from_secs(30));
    assert!(!status.success());
    let log = sluice.logs();
    assert!(log.contains("cannot reach Loki at http://127.0.0.1:"), "{log}");
}

/// Builds batches the way a source does, with an acknowledger each.
fn batch(group: &AckGroup, fields: &Arc<FieldSet>, lines: &[String]) -> sluice::event::Batch {
    let ctx = Arc::new(SourceContext::new("app".into(), "test", String::new(), Default::default()));
    let mut b = BatchBuilder::with_capacity(fields.clone(), 4096, lines.len());
    let mut d = Decoder::new();
    for l in lines {
        d.decode_line(l.as_bytes(), false, &[], &Fragment::default(), &mut b);
    }
    b.build(ctx, std::time::SystemTime::now()).with_ack(Some(group.next()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_batches_are_acknowledged_only_once_their_pushes_succeeded() {
    let loki = tokio::task::spawn_blocking(Loki::start).await.unwrap();
    let text = format!(
        "[sources.in]\ntype = \"stdin\"\n{}",
        loki_sink(&loki.url, "[sinks.loki.batch]\nmax_events = 5\ntimeout = \"100ms\"\n")
    );
    let config = Config::from_str(&text, Format::Toml, &|_| None).unwrap();
    let spec = &config.sinks["loki"];
    let mut fields = FieldSet::new();
    for p in spec.config.fields_needed() {
        fields.add(p);
    }
    let fields = Arc::new(fields);
    let (tx, rx) = queue("loki", &BufferConfig::default());
    let cx = SinkCx {
        name: "loki".into(),
        fields: fields.clone(),
        health: Arc::new(Health::default()),
        data_dir: None,
    };
    let url = loki.url.clone();
    let set_mode = |mode: LokiMode| {
        let url = url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let body = match mode {
                    LokiMode::Ok => r#"{"mode":"ok"}"#,
                    _ => r#"{"mode":"500","count":null}"#,
                };
                support::http_post(
                    &format!("{url}/control/mode"),
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                )
            })
            .await
            .unwrap()
        }
    };
    set_mode(LokiMode::ServerError).await;
    let task = tokio::spawn(spec.config.build(cx, rx).await.unwrap());

    let (group, mut acks) = AckGroup::new();
    // A batch of 12 spans three pushes of 5; the next two share pushes.
    let sizes = [12usize, 3, 4];
    let mut n = 0;
    for size in sizes {
        let lines: Vec<String> = (n..n + size).map(|i| event(i, "api", "info", i as i64)).collect();
        n += size;
        let b = batch(&group, &fields, &lines);
        b.acknowledger().unwrap().expect(1);
        tx.send(Arc::new(b)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(acks.try_recv().is_err(), "nothing is acknowledged while Loki answers 500");

    set_mode(LokiMode::Ok).await;
    let mut done = Vec::new();
    while done.len() < 3 {
        let c = tokio::time::timeout(DELIVERY_TIMEOUT, acks.recv()).await.unwrap().unwrap();
        assert_eq!(c.outcome, AckOutcome::Delivered);
        done.push(c.seq);
    }
    done.sort();
    assert_eq!(done, [0, 1, 2]);
    drop(tx);
    tokio::time::timeout(DELIVERY_TIMEOUT, task).await.unwrap().unwrap().unwrap();
    assert!(acks.try_recv().is_err(), "each batch is acknowledged once");
    let l = tokio::task::spawn_blocking(move || loki.lines()).await.unwrap();
    assert_eq!(l.len(), 19);
}
