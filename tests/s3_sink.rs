//! The S3 sink against a real S3 server (s3s-fs, which enforces SigV4 and
//! implements multipart uploads): the real `sluice` binary reads stdin and
//! uploads; the objects s3s-fs wrote to its directory are decompressed and
//! compared with what was written.

mod support;

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use rusty_s3::S3Action;
use sluice::buffer::{queue, BufferConfig};
use sluice::decode::Decoder;
use sluice::enrich::{Fragment, SourceContext};
use sluice::event::{AckGroup, AckOutcome, BatchBuilder, FieldSet};
use sluice::sinks::SinkCx;
use sluice::telemetry::Health;
use sluice::topology::{Config, Format};
use support::enriched::{enriched, start_with_sinks};
use support::Sluice;
use support::{wait_until, S3};

/// How long a test waits for uploads before failing.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(90);

const BUCKET: &str = "logs";

fn app_line(i: usize, service: &str) -> String {
    format!(
        "{{\"time\":\"2024-05-01T12:00:00Z\",\"level\":\"info\",\"service\":\"{service}\",\"msg\":\"request {i} \\\"q\\\" é\",\"request_id\":\"req-{i}\"}}"
    )
}

fn s3_sink(s3_endpoint: &str, extra: &str) -> String {
    s3_sink_retrying(s3_endpoint, extra, "50ms", "500ms")
}

/// The sink with its `retry` table set.
fn s3_sink_retrying(s3_endpoint: &str, extra: &str, initial_backoff: &str, max_backoff: &str) -> String {
    format!(
        "[sinks.s3]\ntype = \"s3\"\nbucket = \"{BUCKET}\"\nendpoint = \"{s3_endpoint}\"\nregion = \"us-east-1\"\n{extra}\n\
         [sinks.s3.retry]\ninitial_backoff = \"{initial_backoff}\"\nmax_backoff = \"{max_backoff}\"\n"
    )
}

fn credentials(s3: &S3) -> [(&'static str, String); 2] {
    [
        ("AWS_ACCESS_KEY_ID", s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.clone()),
    ]
}

fn start(sinks: &str, creds: &[(&'static str, String)]) -> Sluice {
    let env: Vec<(&str, &str)> = creds.iter().map(|(k, v)| (*k, v.as_str())).collect();
    start_with_sinks(sinks, &env)
}

/// Decompresses an object by its extension.
fn decode(path: &std::path::Path) -> String {
    let raw = std::fs::read(path).unwrap();
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut out).unwrap();
    } else if name.ends_with(".zst") {
        out = zstd::stream::decode_all(&raw[..]).unwrap();
    } else {
        out = raw;
    }
    String::from_utf8(out).unwrap()
}

/// Every object of the bucket (keys sorted), decoded.
fn objects(root: &std::path::Path) -> Vec<(String, String)> {
    let base = root.join(BUCKET);
    let mut keys = Vec::new();
    fn walk(base: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if let Ok(rel) = p.strip_prefix(base) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    walk(&base, &base, &mut keys);
    keys.sort();
    keys.into_iter()
        .filter(|k| k.ends_with(".ndjson") || k.ends_with(".gz") || k.ends_with(".zst"))
        .map(|k| {
            let text = decode(&base.join(&k));
            (k, text)
        })
        .collect()
}

fn today_prefix() -> String {
    jiff::Timestamp::now().strftime("%Y/%m/%d/").to_string()
}

#[test]
fn gzip_objects_decode_to_exactly_the_input_lines() {
    let s3 = S3::start();
    s3.create_bucket_dir(BUCKET);
    let mut sluice = start(&s3_sink(&s3.endpoint, ""), &credentials(&s3));
    let lines: Vec<String> = (0..5000).map(|i| app_line(i, "api")).collect();
    sluice.write_lines(&lines);
    sluice.finish(UPLOAD_TIMEOUT);
    let objs = objects(s3.root.path());
    assert_eq!(objs.len(), 1, "{:?}", s3.keys_on_disk(BUCKET));
    let (key, text) = &objs[0];
    assert!(key.starts_with(&today_prefix()) && key.ends_with(".ndjson.gz"), "{key}");
    let want: String = lines.iter().map(|l| enriched(l) + "\n").collect();
    assert_eq!(text, &want);
}

#[test]
fn zstd_objects_cut_by_size_decode_to_exactly_the_input_lines() {
    let s3 = S3::start();
    s3.create_bucket_dir(BUCKET);
    let mut sluice = start(
        &s3_sink(
            &s3.endpoint,
            "compression = \"zstd\"\nkey_prefix = \"raw/%Y/\"\n[sinks.s3.batch]\nmax_bytes = \"256KiB\"\n",
        ),
        &credentials(&s3),
    );
    let lines: Vec<String> = (0..8000).map(|i| app_line(i, "api")).collect();
    sluice.write_lines(&lines);
    sluice.finish(UPLOAD_TIMEOUT);
    let objs = objects(s3.root.path());
    assert!(objs.len() >= 4, "about 1.4MiB in 256KiB objects: {} objects", objs.len());
    let mut got: Vec<String> = Vec::new();
    for (key, text) in &objs {
        assert!(key.starts_with("raw/") && key.ends_with(".ndjson.zst"), "{key}");
        // Cut between events at the first one that reaches the limit.
        let last = text.lines().last().map_or(0, |l| l.len() + 1);
        assert!(text.len() - last < 256 * 1024, "{key} holds {} bytes", text.len());
        got.extend(text.lines().map(str::to_owned));
    }
    // Objects are cut in order but their keys sort by time then a random
    // part: compare as sets, and count.
    assert_eq!(got.len(), lines.len());
    let want: BTreeSet<String> = lines.iter().map(|l| enriched(l)).collect();
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
}

#[test]
fn key_prefix_templates_route_each_event_by_its_field() {
    let s3 = S3::start();
    s3.create_bucket_dir(BUCKET);
    let mut sluice = start(
        &s3_sink(
            &s3.endpoint,
            "compression = \"none\"\nkey_prefix = \"svc={{ service }}/rel={{ release.version }}/%Y/\"\n",
        ),
        &credentials(&s3),
    );
    let services = ["api", "worker", "a/b"];
    let mut lines: Vec<String> = (0..900).map(|i| app_line(i, services[i % 3])).collect();
    lines.push("{\"msg\":\"no service\"}".to_owned());
    sluice.write_lines(&lines);
    sluice.finish(UPLOAD_TIMEOUT);
    let year = jiff::Timestamp::now().strftime("%Y").to_string();
    let objs = objects(s3.root.path());
    let mut prefixes = BTreeSet::new();
    for (key, text) in &objs {
        let prefix = key.rsplit_once('/').unwrap().0.to_owned();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let service = v["service"].as_str().map(|s| s.replace('/', "_")).unwrap_or("unknown".into());
            assert_eq!(prefix, format!("svc={service}/rel=1.4.2/{year}"), "{line}");
        }
        prefixes.insert(prefix);
    }
    assert_eq!(prefixes.len(), 4, "{prefixes:?}");
    let got: Vec<String> = {
        let mut all: Vec<String> = objs.iter().flat_map(|(_, t)| t.lines().map(str::to_owned)).collect();
        all.sort();
        all
    };
    let mut want: Vec<String> = lines.iter().map(|l| enriched(l)).collect();
    want.sort();
    assert_eq!(got, want);
}

/// Lines of `len` hex digits from a xorshift: gzip cannot shrink them much,
/// so a few MiB of input make a multi-part object.
fn incompressible_lines(n: usize, len: usize) -> Vec<String> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|i| {
            let mut pad = String::with_capacity(len);
            while pad.len() < len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                pad.push_str(&format!("{x:016x}"));
            }
            format!("{{\"i\":{i},\"service\":\"api\",\"pad\":\"{pad}\"}}")
        })
        .collect()
}

fn multipart_etag(s3: &S3, key: &str) -> String {
    let url = s3
        .bucket(BUCKET)
        .head_object(Some(&s3.credentials()), key)
        .sign(Duration::from_secs(60));
    let resp = support::http_agent().head(url.as_str()).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.headers().get("etag").unwrap().to_str().unwrap().trim_matches('"').to_owned()
}

#[test]
fn large_object_goes_up_in_parts_and_reassembles_exactly() {
    let s3 = S3::start();
    s3.create_bucket_dir(BUCKET);
    let mut sluice = start(
        &s3_sink(
            &s3.endpoint,
            "compression = \"none\"\nkey_prefix = \"big/\"\n[sinks.s3.batch]\nmax_bytes = \"64MiB\"\ntimeout = \"60s\"\n\
             [sinks.s3.multipart]\npart_size = \"5MiB\"\n",
        ),
        &credentials(&s3),
    );
    // About 13MiB of NDJSON: two full parts and a smaller last one.
    let lines = incompressible_lines(30_000, 400);
    for chunk in lines.chunks(2000) {
        sluice.write_lines(chunk);
    }
    sluice.finish(UPLOAD_TIMEOUT);
    let objs = objects(s3.root.path());
    assert_eq!(objs.len(), 1);
    let (key, text) = &objs[0];
    let want: String = lines.iter().map(|l| enriched(l) + "\n").collect();
    assert!(
        text == &want,
        "object differs from the input ({} vs {} bytes)",
        text.len(),
        want.len()
    );
    // A multipart object's ETag is "<md5 of part md5s>-<parts>".
    let etag = multipart_etag(&s3, key);
    assert!(etag.ends_with("-3"), "expected a 3-part upload, ETag {etag}");
}

#[test]
fn large_gzip_object_goes_up_in_parts_of_compressed_members() {
    let s3 = S3::start();
    s3.create_bucket_dir(BUCKET);
    let mut sluice = start(
        &s3_sink(
            &s3.endpoint,
            "compression_level = 1\nkey_prefix = \"big/\"\n[sinks.s3.batch]\nmax_bytes = \"256MiB\"\ntimeout = \"60s\"\n\
             [sinks.s3.multipart]\npart_size = \"5MiB\"\n",
        ),
        &credentials(&s3),
    );
    // About 17MiB of NDJSON, about 9MiB once gzipped: two parts.
    let lines = incompressible_lines(40_000, 400);
    for chunk in lines.chunks(2000) {
        sluice.write_lines(chunk);
    }
    sluice.finish(UPLOAD_TIMEOUT);
    let objs = objects(s3.root.path());
    assert_eq!(objs.len(), 1);
    let (key, text) = &objs[0];
    assert!(key.ends_with(".ndjson.gz"));
    let want: String = lines.iter().map(|l| enriched(l) + "\n").collect();
    assert!(
        text == &want,
        "object differs from the input ({} vs {} bytes)",
        text.len(),
        want.len()
    );
    let etag = multipart_etag(&s3, key);
    let parts: u32 = etag.rsplit('-').next().unwrap().parse().unwrap();
    assert!(parts >= 2, "expected a multipart upload, ETag {etag}");
}

#[test]
fn wrong_secret_is_a_clear_start_up_error_and_a_failed_exit() {
    let s3 = S3::start();
    s3.create_bucket_dir(BUCKET);
    let creds = [
        ("AWS_ACCESS_KEY_ID", s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret".to_owned()),
    ];
    let sluice = start(&s3_sink(&s3.endpoint, ""), &creds);
    let status = sluice.wait(Duration::from_secs(30));
    assert!(!status.success());
    let log = sluice.logs();
    assert!(log.contains("S3 refused our credentials for bucket \\\"logs\\\""), "{log}");
    assert!(!log.contains("not-the-secret"), "the secret is never logged");
}

#[test]
fn unknown_bucket_and_missing_credentials_are_start_up_errors() {
    let s3 = S3::start();
    let sluice = start(&s3_sink(&s3.endpoint, ""), &credentials(&s3));
    assert!(!sluice.wait(Duration::from_secs(30)).success());
    assert!(sluice.logs().contains("does not exist"), "{}", sluice.logs());

    s3.create_bucket_dir(BUCKET);
    let sluice = start(&s3_sink(&s3.endpoint, ""), &[]);
    assert!(!sluice.wait(Duration::from_secs(30)).success());
    assert!(sluice.logs().contains("no S3 credentials"), "{}", sluice.logs());
}

#[test]
fn credentials_can_come_from_files() {
    let s3 = S3::start();
    s3.create_bucket_dir(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let secret = dir.path().join("secret");
    std::fs::write(&key, format!("{}\n", s3.access_key)).unwrap();
    std::fs::write(&secret, format!("{}\n", s3.secret_key)).unwrap();
    let extra = format!(
        "access_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n",
        key.display(),
        secret.display()
    );
    let mut sluice = start(&s3_sink(&s3.endpoint, &extra), &[]);
    let lines: Vec<String> = (0..10).map(|i| app_line(i, "api")).collect();
    sluice.write_lines(&lines);
    sluice.finish(UPLOAD_TIMEOUT);
    assert_eq!(objects(s3.root.path()).len(), 1);
}

/// s3s-fs with the bucket as a directory; [`S3::stop`] and
/// [`S3::start_again`] take it down and bring it back on the same port.
fn restartable_s3() -> S3 {
    let s3 = S3::start();
    s3.create_bucket_dir(BUCKET);
    s3
}

#[test]
fn s3_down_mid_stream_then_back_gets_every_event() {
    let mut s3 = restartable_s3();
    let (root, endpoint) = (s3.root.path().to_owned(), s3.endpoint.clone());
    let mut sluice = start(&s3_sink(&endpoint, "[sinks.s3.batch]\ntimeout = \"300ms\"\n"), &credentials(&s3));
    sluice.api_address();
    let lines: Vec<String> = (0..2000).map(|i| app_line(i, "api")).collect();
    sluice.write_lines(&lines[..1000]);
    wait_until("the first objects", UPLOAD_TIMEOUT, || {
        let n: usize = objects(&root).iter().map(|(_, t)| t.lines().count()).sum();
        (n >= 1000).then_some(())
    });
    s3.stop();
    sluice.write_lines(&lines[1000..]);
    wait_until("/ready to report the dead sink", Duration::from_secs(20), || {
        (sluice.ready_status() == 503).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    s3.start_again();
    sluice.finish(UPLOAD_TIMEOUT);
    let got: BTreeSet<String> = objects(&root).iter().flat_map(|(_, t)| t.lines().map(str::to_owned)).collect();
    let want: BTreeSet<String> = lines.iter().map(|l| enriched(l)).collect();
    assert_eq!(got, want, "every event at least once");
    assert!(sluice.logs().contains("S3 request failed; retrying"));
}

/// Lines the objects under `root` hold.
fn stored_lines(root: &std::path::Path) -> BTreeSet<String> {
    objects(root).iter().flat_map(|(_, t)| t.lines().map(str::to_owned)).collect()
}

#[test]
fn an_object_that_failed_during_an_outage_goes_up_as_soon_as_s3_answers_again() {
    let mut s3 = restartable_s3();
    let root = s3.root.path().to_owned();
    // A first retry 10 to 20 s after the failure: without a wake-up the
    // stuck object would sit that out after S3 is back.
    let config = s3_sink_retrying(&s3.endpoint, "[sinks.s3.batch]\ntimeout = \"300ms\"\n", "20s", "60s");
    let mut sluice = start(&config, &credentials(&s3));
    sluice.api_address();
    s3.stop();
    let stuck: Vec<String> = (0..100).map(|i| app_line(i, "stuck")).collect();
    sluice.write_lines(&stuck);
    wait_until("the stuck object's failed attempt", Duration::from_secs(20), || {
        sluice.logs().contains("S3 request failed; retrying").then_some(())
    });
    s3.start_again();
    let back = std::time::Instant::now();
    let newer: Vec<String> = (100..200).map(|i| app_line(i, "newer")).collect();
    sluice.write_lines(&newer);
    let want: BTreeSet<String> = stuck.iter().chain(&newer).map(|l| enriched(l)).collect();
    wait_until("every object, the stuck one too", UPLOAD_TIMEOUT, || {
        (stored_lines(&root) == want).then_some(())
    });
    let took = back.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the stuck object went up {took:?} after S3 was back (its backoff was at least 10 s)\n{}",
        sluice.logs()
    );
    sluice.finish(UPLOAD_TIMEOUT);
}

#[test]
fn every_failed_attempt_is_logged_and_warned_about_once_per_interval() {
    let mut s3 = restartable_s3();
    let root = s3.root.path().to_owned();
    let mut sluice = start(&s3_sink(&s3.endpoint, "[sinks.s3.batch]\ntimeout = \"300ms\"\n"), &credentials(&s3));
    sluice.api_address();
    s3.stop();
    // One object, retried every 25 to 500 ms for 3 s: a dozen attempts.
    let lines: Vec<String> = (0..100).map(|i| app_line(i, "api")).collect();
    sluice.write_lines(&lines);
    wait_until("a first failed attempt", Duration::from_secs(20), || {
        sluice.logs().contains("S3 request failed; retrying").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    s3.start_again();
    let want: BTreeSet<String> = lines.iter().map(|l| enriched(l)).collect();
    wait_until("the object", UPLOAD_TIMEOUT, || (stored_lines(&root) == want).then_some(()));
    let retried = sluice.metric("sluice_sink_retries_total{sink=\"s3\"}");
    let log = sluice.logs();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains("S3 request failed; retrying")).collect();
    assert!(retried >= 5.0, "{retried} retries\n{log}");
    assert_eq!(failures.len() as f64, retried, "one line per failed attempt\n{log}");
    let warnings = failures.iter().filter(|l| l.contains("\"WARN\"")).count();
    assert_eq!(warnings, 1, "one warning per 10 s, the rest at info\n{log}");
    sluice.finish(UPLOAD_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_batch_is_acknowledged_when_its_object_is_uploaded() {
    let s3 = tokio::task::spawn_blocking(|| {
        let s3 = S3::start();
        s3.create_bucket_dir(BUCKET);
        s3
    })
    .await
    .unwrap();
    std::env::set_var("AWS_ACCESS_KEY_ID", &s3.access_key);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &s3.secret_key);
    let text = format!(
        "[sources.in]\ntype = \"stdin\"\n{}",
        s3_sink(&s3.endpoint, "[sinks.s3.batch]\ntimeout = \"1500ms\"\n")
    );
    let config = Config::from_str(&text, Format::Toml, &|_| None).unwrap();
    let spec = &config.sinks["s3"];
    let fields = Arc::new(FieldSet::new());
    let (tx, rx) = queue("s3", &BufferConfig::default());
    let cx = SinkCx {
        name: "s3".into(),
        fields: fields.clone(),
        health: Arc::new(Health::default()),
        data_dir: None,
    };
    let task = tokio::spawn(spec.config.build(cx, rx).await.unwrap());
    let (group, mut acks) = AckGroup::new();
    let ctx = Arc::new(SourceContext::new("app".into(), "test", String::new(), Default::default()));
    for b in 0..3 {
        let mut builder = BatchBuilder::with_capacity(fields.clone(), 4096, 10);
        let mut d = Decoder::new();
        for i in 0..10 {
            d.decode_line(
                app_line(b * 10 + i, "api").as_bytes(),
                false,
                &[],
                &Fragment::default(),
                &mut builder,
            );
        }
        let batch = builder
            .build(ctx.clone(), std::time::SystemTime::now())
            .with_ack(Some(group.next()));
        batch.acknowledger().unwrap().expect(1);
        tx.send(Arc::new(batch)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(acks.try_recv().is_err(), "no acknowledgement before the object is cut");
    let root = s3.root.path().to_owned();
    assert!(objects(&root).is_empty());
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let c = tokio::time::timeout(UPLOAD_TIMEOUT, acks.recv()).await.unwrap().unwrap();
        assert_eq!(c.outcome, AckOutcome::Delivered);
        seqs.push(c.seq);
        let objs = objects(&root);
        assert_eq!(objs.len(), 1, "acknowledged only once the object is stored");
        assert_eq!(objs[0].1.lines().count(), 30);
    }
    seqs.sort();
    assert_eq!(seqs, [0, 1, 2]);
    drop(tx);
    tokio::time::timeout(UPLOAD_TIMEOUT, task).await.unwrap().unwrap().unwrap();
}
