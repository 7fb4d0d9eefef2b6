//! TLS for the HTTP sinks against loopback TLS endpoints with real
//! certificates (`openssl req` at test time, `socat openssl-listen` in
//! front of the Loki receiver and of s3s-fs): a private CA, mutual TLS, a
//! server name other than the endpoint's host, client certificates rotated
//! on disk without a restart, and the expiry metric.

mod support;

use std::time::Duration;
use support::tls::{not_after, Ca, TlsProxy};
use support::{Loki, Sluice, Stdout, S3};

const TIMEOUT: Duration = Duration::from_secs(60);

fn loki_config(port: u16, tls: &str, extra: &str) -> String {
    format!(
        r#"
[api]
address = "127.0.0.1:0"
[enrich]
disable_host = true
[sources.in]
type = "stdin"
[sinks.loki]
type = "loki"
endpoint = "https://127.0.0.1:{port}"
{extra}
[sinks.loki.batch]
timeout = "50ms"
[sinks.loki.retry]
initial_backoff = "50ms"
max_backoff = "300ms"
[sinks.loki.tls]
{tls}
"#
    )
}

/// A sluice reading stdin into the Loki sink at the TLS `port`.
fn start_loki(port: u16, tls: &str, extra: &str) -> Sluice {
    Sluice::builder()
        .config(&loki_config(port, tls, extra))
        .stdin_piped()
        .stdout(Stdout::Null)
        .start()
}

fn lines(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!(r#"{{"seq":{i},"message":"tls {i}"}}"#)).collect()
}

#[test]
fn loki_over_mutual_tls_with_a_private_ca_and_a_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new(dir.path(), "server-ca");
    let client_ca = Ca::new(dir.path(), "client-ca");
    // The certificate names loki.test only: the endpoint is an IP address.
    let (server_cert, server_key) = server_ca.issue("loki.test", "DNS:loki.test", 3);
    let (client_cert, client_key) = client_ca.issue("agent", "DNS:agent", 4);
    let loki = Loki::start();
    let port: u16 = loki.url.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = TlsProxy::start(
        &server_cert,
        &server_key,
        Some(&client_ca.cert),
        port,
        &dir.path().join("socat.log"),
    );

    let tls = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nserver_name = \"loki.test\"\n",
        server_ca.cert.display(),
        client_cert.display(),
        client_key.display()
    );
    let mut s = start_loki(proxy.port, &tls, "");
    s.write_lines(&lines(0..100));
    loki.wait_for_entries(100, TIMEOUT);
    let metrics = s.metrics();
    assert_eq!(
        metrics.get(
            "sluice_tls_certificate_expiry_timestamp_seconds",
            &[("sink", "loki"), ("certificate", "client")]
        ),
        Some(not_after(&client_cert) as f64)
    );
    assert_eq!(
        metrics.get(
            "sluice_tls_certificate_expiry_timestamp_seconds",
            &[("sink", "loki"), ("certificate", "ca")]
        ),
        Some(not_after(&server_ca.cert) as f64)
    );
    s.finish(TIMEOUT);

    // Without server_name the certificate does not match 127.0.0.1: the
    // start-up check fails with a TLS error.
    let no_name = tls.replace("server_name = \"loki.test\"\n", "");
    let s = start_loki(proxy.port, &no_name, "");
    assert!(!s.wait(TIMEOUT).success(), "a certificate for another name must be refused");
    // Without a client certificate the endpoint refuses the connection.
    let no_client = format!("ca_file = \"{}\"\nserver_name = \"loki.test\"\n", server_ca.cert.display());
    let s = start_loki(proxy.port, &no_client, "");
    assert!(!s.wait(TIMEOUT).success(), "mutual TLS needs the client certificate");
}

#[test]
fn a_client_certificate_rotated_on_disk_is_used_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new(dir.path(), "server-ca");
    let client_ca = Ca::new(dir.path(), "client-ca");
    let stranger = Ca::new(dir.path(), "stranger-ca");
    let (server_cert, server_key) = server_ca.issue("localhost", "IP:127.0.0.1", 3);
    let loki = Loki::start();
    let port: u16 = loki.url.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = TlsProxy::start(
        &server_cert,
        &server_key,
        Some(&client_ca.cert),
        port,
        &dir.path().join("socat.log"),
    );

    // The files sluice reads start with a certificate the endpoint does
    // not trust.
    let (cert_file, key_file) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    let (bad_cert, bad_key) = stranger.issue("agent", "DNS:agent", 2);
    std::fs::copy(&bad_cert, &cert_file).unwrap();
    std::fs::copy(&bad_key, &key_file).unwrap();
    let tls = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nreload_interval = \"200ms\"\n",
        server_ca.cert.display(),
        cert_file.display(),
        key_file.display()
    );
    let mut s = start_loki(proxy.port, &tls, "healthcheck = false");
    s.write_lines(&lines(0..50));
    let errors = || s.metrics().sum("sluice_sink_errors_total", &[("sink", "loki")]);
    support::eventually("pushes refused for the untrusted certificate", TIMEOUT, || errors() >= 2.0);
    assert!(loki.lines().is_empty(), "nothing got through with the wrong certificate");

    // Rotation: the new certificate and key replace the files (renamed
    // into place, as cert-manager and kubelet do).
    let (good_cert, good_key) = client_ca.issue("agent", "DNS:agent", 5);
    std::fs::copy(&good_key, dir.path().join("client.key.new")).unwrap();
    std::fs::copy(&good_cert, dir.path().join("client.pem.new")).unwrap();
    std::fs::rename(dir.path().join("client.key.new"), &key_file).unwrap();
    std::fs::rename(dir.path().join("client.pem.new"), &cert_file).unwrap();
    loki.wait_for_entries(50, TIMEOUT);
    assert_eq!(
        s.metrics().get(
            "sluice_tls_certificate_expiry_timestamp_seconds",
            &[("sink", "loki"), ("certificate", "client")]
        ),
        Some(not_after(&good_cert) as f64),
        "the metric follows the rotated certificate"
    );
    s.finish(TIMEOUT);
}

#[test]
fn s3_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "s3-ca");
    let (cert, key) = ca.issue("localhost", "IP:127.0.0.1", 3);
    let s3 = S3::start();
    s3.create_bucket("tls");
    let port: u16 = s3.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = TlsProxy::start(&cert, &key, None, port, &dir.path().join("socat.log"));
    let cfg = format!(
        r#"
[api]
address = "127.0.0.1:0"
[sources.in]
type = "stdin"
[sinks.s3]
type = "s3"
bucket = "tls"
endpoint = "https://127.0.0.1:{port}"
region = "us-east-1"
compression = "none"
[sinks.s3.tls]
ca_file = "{ca}"
"#,
        port = proxy.port,
        ca = ca.cert.display()
    );
    let mut s = Sluice::builder()
        .config(&cfg)
        .stdin_piped()
        .stdout(Stdout::Null)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .start();
    s.write_lines(&lines(0..30));
    s.finish(TIMEOUT);
    let keys = s3.keys_on_disk("tls");
    let text: String = keys
        .iter()
        .map(|k| std::fs::read_to_string(s3.object_path("tls", k)).unwrap())
        .collect();
    for i in 0..30 {
        assert!(text.contains(&format!("\"seq\":{i},")), "event {i} is in the bucket: {keys:?}");
    }
}

/// A server CA, a client CA and a server certificate for 127.0.0.1: the
/// pieces of a mutual-TLS endpoint; returns (server CA, client CA, server
/// cert, server key).
fn mutual_tls_pieces(dir: &std::path::Path) -> (Ca, Ca, std::path::PathBuf, std::path::PathBuf) {
    let server_ca = Ca::new(dir, "server-ca");
    let client_ca = Ca::new(dir, "client-ca");
    let (cert, key) = server_ca.issue("localhost", "IP:127.0.0.1", 3);
    (server_ca, client_ca, cert, key)
}

/// The `tls` table with the server CA and, if given, a client certificate
/// issued by `client_ca`.
fn tls_table(server_ca: &Ca, client_ca: Option<&Ca>) -> String {
    let mut t = format!("ca_file = \"{}\"\n", server_ca.cert.display());
    if let Some(ca) = client_ca {
        let (cert, key) = ca.issue("agent", "DNS:agent", 4);
        t.push_str(&format!("cert_file = \"{}\"\nkey_file = \"{}\"\n", cert.display(), key.display()));
    }
    t
}

/// A sluice with `config`, fed 10 lines: each delivery of sink `sink` is
/// refused (the endpoint wants a client certificate it does not have).
fn assert_refused_without_a_client_certificate(config: &str, sink: &str) {
    let mut s = start_piped(config);
    s.write_lines(&lines(0..10));
    support::eventually(&format!("{sink}: deliveries refused without a client certificate"), TIMEOUT, || {
        s.metrics().sum("sluice_sink_errors_total", &[("sink", sink)]) >= 2.0
    });
    s.kill();
}

fn start_piped(config: &str) -> Sluice {
    Sluice::builder().config(config).stdin_piped().stdout(Stdout::Null).start()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap()
}

/// SLI counters of stdin requests, through internal_metrics, out by
/// remote write to `endpoint` with `tls`.
fn remote_write_config(endpoint: &str, tls: &str) -> String {
    format!(
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
inputs = ["self"]
endpoint = "{endpoint}"
[sinks.rw.batch]
timeout = "100ms"
[sinks.rw.retry]
initial_backoff = "50ms"
max_backoff = "300ms"
[sinks.rw.tls]
{tls}
[[sli]]
name = "api"
[sli.error]
field = "status"
gte = 500
"#
    )
}

#[test]
fn remote_write_over_mutual_tls_reaches_prometheus_and_is_refused_without_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, cert, key) = mutual_tls_pieces(dir.path());
    let prom = support::remote_write::RemoteWriteReceiver::start();
    let proxy = TlsProxy::start(
        &cert,
        &key,
        Some(&client_ca.cert),
        port_of(&prom.url),
        &dir.path().join("socat.log"),
    );
    let endpoint = format!("https://127.0.0.1:{}/api/v1/write", proxy.port);

    // Without a client certificate: every write is refused in the handshake.
    assert_refused_without_a_client_certificate(&remote_write_config(&endpoint, &tls_table(&server_ca, None)), "rw");
    assert_eq!(prom.value("count(sluice_sli_requests_total)"), None, "nothing got through");

    // With it: the counters arrive.
    let mut s = start_piped(&remote_write_config(&endpoint, &tls_table(&server_ca, Some(&client_ca))));
    let input: Vec<String> = (0..120)
        .map(|i| format!(r#"{{"status":{},"seq":{i}}}"#, if i % 4 == 0 { 503 } else { 200 }))
        .collect();
    s.write_lines(&input);
    prom.wait_for_value("sum(sluice_sli_requests_total{sli=\"api\"})", 120.0, TIMEOUT);
    prom.wait_for_value("sum(sluice_sli_requests_total{sli=\"api\",outcome=\"error\"})", 30.0, TIMEOUT);
    // internal_metrics runs until stopped.
    s.kill();
}

fn otlp_config(endpoint: &str, protocol: &str, tls: &str) -> String {
    format!(
        r#"
[api]
address = "127.0.0.1:0"
[sources.in]
type = "stdin"
[sinks.out]
type = "otlp"
endpoint = "{endpoint}"
protocol = "{protocol}"
[sinks.out.batch]
timeout = "100ms"
[sinks.out.retry]
initial_backoff = "50ms"
max_backoff = "300ms"
[sinks.out.tls]
{tls}
"#
    )
}

#[test]
fn otlp_over_mutual_tls_with_http_and_grpc_and_refused_without_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, cert, key) = mutual_tls_pieces(dir.path());
    let receiver = support::otlp::OtlpReceiver::start();
    // OTLP/HTTP behind socat; gRPC behind a terminator that negotiates h2
    // by ALPN, as gRPC over TLS requires.
    let http_proxy = TlsProxy::start(
        &cert,
        &key,
        Some(&client_ca.cert),
        port_of(&receiver.http),
        &dir.path().join("socat.log"),
    );
    let grpc_proxy = TlsProxy::start_alpn(
        &cert,
        &key,
        Some(&client_ca.cert),
        port_of(&receiver.grpc),
        "h2",
        &dir.path().join("alpn.log"),
    );
    let with_cert = tls_table(&server_ca, Some(&client_ca));
    let mut sent = 0;
    for (protocol, port) in [("http", http_proxy.port), ("grpc", grpc_proxy.port)] {
        let endpoint = format!("https://127.0.0.1:{port}");
        let before = receiver.record_count();
        let mut s = Sluice::builder()
            .config(&otlp_config(&endpoint, protocol, &tls_table(&server_ca, None)))
            .stdin_piped()
            .stdout(Stdout::Null)
            .start();
        s.write_lines(&lines(0..10));
        support::eventually(
            &format!("{protocol}: exports refused without a client certificate"),
            TIMEOUT,
            || s.metrics().sum("sluice_sink_errors_total", &[("sink", "out")]) >= 2.0,
        );
        s.kill();
        assert_eq!(receiver.record_count(), before, "{protocol}: nothing got through");

        let mut s = start_piped(&otlp_config(&endpoint, protocol, &with_cert));
        s.write_lines(&lines(0..40));
        sent += 40;
        receiver.wait_for_records(sent, TIMEOUT);
        s.finish(TIMEOUT);
        assert_eq!(receiver.record_count(), sent, "{protocol}: each record once");
    }
    assert!(receiver.received_json().contains("tls 39"), "the bodies arrived intact");
}
