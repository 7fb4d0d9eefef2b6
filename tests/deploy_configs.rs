//! The shipped configs, run for real: the real binary with `config/*.toml`
//! as written, only its absolute paths moved into a temporary directory and
//! its destinations given by the environment variables it documents,
//! against real services on loopback.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{Sluice, Stdout};

fn shipped(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name)).unwrap()
}

/// `text` with each absolute `from` prefix moved under `root`.
fn relocate(text: &str, root: &Path, prefixes: &[&str]) -> String {
    let mut out = text.to_owned();
    for p in prefixes {
        assert!(out.contains(p), "the config no longer mentions {p}");
        out = out.replace(p, &format!("{}{p}", root.display()));
    }
    out
}

fn start(config: &Path, env: &[(&str, String)]) -> Sluice {
    Sluice::builder()
        .arg("--config")
        .arg(config)
        .env("SLUICE_API_ADDRESS", "127.0.0.1:0")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdout::Null)
        .start()
}

/// SIGTERM, then the exit status and everything sluice logged.
fn stop(sluice: &Sluice) -> (std::process::ExitStatus, String) {
    sluice.signal(libc::SIGTERM);
    let status = sluice.wait(Duration::from_secs(45));
    (status, sluice.logs())
}

/// A CRI log line as containerd writes it.
fn cri(n: usize, msg: &str) -> String {
    format!("2026-01-02T03:04:{:02}.{:09}Z stdout F {msg}\n", n % 60, n)
}

#[test]
fn daemonset_config_ships_pod_logs_with_pod_metadata_to_kafka_and_skips_its_own() {
    let kafka = support::Kafka::start();
    let topic = "sluice-events";
    kafka.create_topic(topic, 1);

    let root = tempfile::tempdir().unwrap();
    let pods = root.path().join("var/log/pods");
    // An application pod, with two restarts' worth of files.
    let app = pods.join("shop_checkout-7d9f8b6c5-x2x4z_0b1c2d3e-aaaa-bbbb-cccc-000000000001/web");
    std::fs::create_dir_all(&app).unwrap();
    let n = 500;
    let mut first = String::new();
    let mut second = String::new();
    for i in 0..n {
        let line = cri(i, &format!(r#"{{"msg":"order {i}","status":200}}"#));
        if i < n / 2 {
            first.push_str(&line);
        } else {
            second.push_str(&line);
        }
    }
    std::fs::write(app.join("0.log"), first).unwrap();
    std::fs::write(app.join("1.log"), second).unwrap();
    // The agent's own pod: excluded by the shipped config.
    let own = pods.join("sluice_sluice-agent-abcde_0b1c2d3e-aaaa-bbbb-cccc-000000000002/sluice");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("0.log"), cri(0, r#"{"msg":"agent talking about itself"}"#)).unwrap();

    let text = relocate(&shipped("daemonset.toml"), root.path(), &["/var/log/pods"]);
    // Outside a pod there is no service-account token or CA to reach an
    // API server with; the API half of the metadata is proved against a
    // TLS stand-in by tests/kubernetes_metadata.rs. Here: what the path says.
    assert!(text.contains("\napi = true\n"));
    let text = without_api(&text);
    let config = root.path().join("daemonset.toml");
    std::fs::write(&config, text).unwrap();

    // The pod's environment, as the DaemonSet sets it.
    let data = root.path().join("var/lib/sluice");
    let running = start(
        &config,
        &[
            ("NODE_NAME", "node-1".into()),
            ("KAFKA_BROKERS", kafka.addr.clone()),
            ("SLUICE_DATA_DIR", data.display().to_string()),
        ],
    );
    let records = kafka.read_topic(topic, n, Duration::from_secs(60));
    // A moment for anything extra (the excluded file) to show up.
    std::thread::sleep(Duration::from_millis(500));
    let records_after = kafka.read_topic(topic, n, Duration::from_secs(20));
    let (status, stderr) = stop(&running);
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
    assert_eq!(records_after.len(), n, "exactly the application's lines, not the agent's own");

    let mut seen = Vec::new();
    for r in &records {
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        let k = &v["kubernetes"];
        assert_eq!(k["namespace"], "shop", "{v}");
        assert_eq!(k["pod"], "checkout-7d9f8b6c5-x2x4z", "{v}");
        assert_eq!(k["container"], "web", "{v}");
        assert_eq!(v["status"], 200);
        seen.push(v["msg"].as_str().unwrap().to_owned());
    }
    let want: Vec<String> = (0..n).map(|i| format!("order {i}")).collect();
    seen.sort_by_key(|m| m[6..].parse::<usize>().unwrap());
    assert_eq!(seen, want, "every line once");
    // Checkpoints and the Kafka disk buffer live where the DaemonSet
    // mounts its hostPath, so a new pod resumes where this one stopped.
    let checkpoints = std::fs::read_to_string(data.join("file/pods/checkpoints.json")).expect("checkpoints in the data dir");
    assert!(checkpoints.contains("1.log"), "{checkpoints}");
    assert!(
        data.join("buffers/kafka").is_dir(),
        "the Kafka sink's disk buffer is in the data dir"
    );
}

/// The agent config without what needs an API server (outside a pod there
/// is none): pod lookups off, no namespace or node labels, no cluster
/// Events (tests/kubernetes_metadata.rs and tests/kubernetes_events.rs
/// prove those against a TLS stand-in).
fn without_api(text: &str) -> String {
    let events = "[sources.cluster_events]\ntype = \"kubernetes_events\"\n";
    assert!(text.contains(events), "the shipped agent reports cluster Events");
    text.replace("\napi = true\n", "\napi = false\n")
        .replace("namespace_labels = true\n", "")
        .replace("node_labels = true\n", "")
        .replace(events, "")
}

/// Every event in every object of `bucket` (zstd NDJSON), parsed.
fn s3_events(s3: &support::S3, bucket: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for key in s3.keys_on_disk(bucket) {
        assert!(key.ends_with(".ndjson.zst"), "{key}");
        let raw = std::fs::read(s3.object_path(bucket, &key)).unwrap();
        let text = zstd::decode_all(&raw[..]).unwrap_or_else(|e| panic!("{key}: {e}"));
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).unwrap());
        }
    }
    out
}

#[test]
fn vm_config_ships_app_log_files_and_socket_events_to_loki_and_s3() {
    let loki = support::Loki::start();
    let s3 = support::S3::start();
    s3.create_bucket_dir("archive");

    let root = tempfile::tempdir().unwrap();
    let app_dir = root.path().join("var/log/app");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::create_dir_all(root.path().join("run/sluice")).unwrap();
    let files_n = 300;
    let mut text = String::new();
    for i in 0..files_n {
        text.push_str(&format!(
            r#"{{"service":"shop","level":"info","msg":"file {i}","request_id":"r{i}"}}"#
        ));
        text.push('\n');
    }
    std::fs::write(app_dir.join("web.log"), text).unwrap();
    // logrotate's compressed leftovers are not read.
    std::fs::write(app_dir.join("web.log.1.gz"), b"\x1f\x8bnot read").unwrap();

    let config_text = relocate(
        &shipped("vm.toml"),
        root.path(),
        &["/var/log/app", "/run/sluice", "/var/lib/sluice"],
    );
    // The test's S3 server instead of AWS's regional endpoint.
    assert!(config_text.contains("type = \"s3\"\n"));
    let config_text = config_text.replace("type = \"s3\"\n", &format!("type = \"s3\"\nendpoint = \"{}\"\n", s3.endpoint));
    let config = root.path().join("vm.toml");
    std::fs::write(&config, config_text).unwrap();

    let data = root.path().join("var/lib/sluice");
    let running = start(
        &config,
        &[
            ("LOKI_ENDPOINT", loki.url.clone()),
            ("S3_BUCKET", "archive".into()),
            ("S3_REGION", s3.region.clone()),
            ("AWS_ACCESS_KEY_ID", s3.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", s3.secret_key.clone()),
            ("SLUICE_DATA_DIR", data.display().to_string()),
        ],
    );

    // An application writing to the unix socket, as `socat` would.
    let sock = root.path().join("run/sluice/app.sock");
    let socket_n = 200;
    let mut stream = support::wait_until("the unix socket", Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    });
    for i in 0..socket_n {
        use std::io::Write;
        writeln!(stream, r#"{{"service":"shop","level":"warn","msg":"socket {i}"}}"#).unwrap();
    }
    drop(stream);

    let streams = loki.wait_for_entries(files_n + socket_n, Duration::from_secs(60));
    let (status, stderr) = stop(&running);
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");

    // Loki: every line once, under the config's labels.
    let mut loki_msgs = Vec::new();
    for st in &streams {
        assert_eq!(st.labels.get("service").map(String::as_str), Some("shop"), "{:?}", st.labels);
        let source = st.labels.get("source").cloned().unwrap_or_default();
        let level = st.labels.get("level").cloned().unwrap_or_default();
        assert!(st.labels.contains_key("host"), "{:?}", st.labels);
        for e in &st.entries {
            let v: Value = serde_json::from_str(&e.line).unwrap();
            let msg = v["msg"].as_str().unwrap().to_owned();
            match source.as_str() {
                "app_files" => {
                    assert_eq!(level, "info");
                    // request_id travels as structured metadata.
                    assert_eq!(
                        e.structured_metadata.get("request_id"),
                        v["request_id"].as_str().map(str::to_owned).as_ref()
                    );
                }
                "app_socket" => {
                    assert_eq!(level, "warn");
                    // The writer's pid, from SO_PEERCRED: this test process.
                    assert_eq!(v["process"]["pid"], std::process::id(), "{v}");
                }
                other => panic!("unexpected source label {other:?}"),
            }
            loki_msgs.push(msg);
        }
    }
    let mut want: Vec<String> = (0..files_n).map(|i| format!("file {i}")).collect();
    want.extend((0..socket_n).map(|i| format!("socket {i}")));
    want.sort();
    loki_msgs.sort();
    assert_eq!(loki_msgs, want, "Loki got every line once");

    // S3: the same events, archived under the host's prefix at shutdown.
    let keys = s3.keys_on_disk("archive");
    assert!(!keys.is_empty() && keys.iter().all(|k| k.starts_with("logs/host=")), "{keys:?}");
    let mut s3_msgs: Vec<String> = s3_events(&s3, "archive")
        .iter()
        .map(|v| v["msg"].as_str().unwrap().to_owned())
        .collect();
    s3_msgs.sort();
    assert_eq!(s3_msgs, want, "S3 got every line once");

    // Checkpoints and the Loki disk buffer are in the state directory.
    assert!(data.join("file/app_files/checkpoints.json").is_file());
    assert!(data.join("buffers/loki").is_dir());
}

#[test]
fn agent_and_aggregator_configs_move_pod_logs_through_kafka_to_loki_and_s3() {
    let kafka = support::Kafka::start();
    kafka.create_topic("sluice-events", 2);
    let loki = support::Loki::start();
    let s3 = support::S3::start();
    s3.create_bucket_dir("archive");

    let root = tempfile::tempdir().unwrap();
    let pod = root
        .path()
        .join("var/log/pods/shop_cart-5f6d7c8b9-q7r8s_0b1c2d3e-aaaa-bbbb-cccc-000000000003/api");
    std::fs::create_dir_all(&pod).unwrap();
    let n = 400;
    let text: String = (0..n).map(|i| cri(i, &format!(r#"{{"msg":"cart {i}","level":"info"}}"#))).collect();
    std::fs::write(pod.join("0.log"), text).unwrap();

    // The agent, as in daemonset.toml (API lookup off: see above).
    let agent_text = without_api(&relocate(&shipped("daemonset.toml"), root.path(), &["/var/log/pods"]));
    let agent_config = root.path().join("agent.toml");
    std::fs::write(&agent_config, agent_text).unwrap();
    let agent = start(
        &agent_config,
        &[
            ("NODE_NAME", "node-1".into()),
            ("KAFKA_BROKERS", kafka.addr.clone()),
            ("SLUICE_DATA_DIR", root.path().join("agent-data").display().to_string()),
        ],
    );

    // The aggregator, as in aggregator.toml, with the test's S3 endpoint.
    let agg_text = shipped("aggregator.toml");
    assert!(agg_text.contains("type = \"s3\"\n"));
    let agg_text = agg_text.replace("type = \"s3\"\n", &format!("type = \"s3\"\nendpoint = \"{}\"\n", s3.endpoint));
    let agg_config = root.path().join("aggregator.toml");
    std::fs::write(&agg_config, agg_text).unwrap();
    let aggregator = start(
        &agg_config,
        &[
            ("KAFKA_BROKERS", kafka.addr.clone()),
            ("LOKI_ENDPOINT", loki.url.clone()),
            ("S3_BUCKET", "archive".into()),
            ("S3_REGION", s3.region.clone()),
            ("AWS_ACCESS_KEY_ID", s3.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", s3.secret_key.clone()),
            ("SLUICE_DATA_DIR", root.path().join("aggregator-data").display().to_string()),
        ],
    );

    // A consumer group's first join takes a while on tansu.
    let streams = loki.wait_for_entries(n, Duration::from_secs(120));
    let (status, stderr) = stop(&aggregator);
    assert!(status.success(), "aggregator exit {status:?}:\n{stderr}");
    let (status, stderr) = stop(&agent);
    assert!(status.success(), "agent exit {status:?}:\n{stderr}");

    let mut msgs = Vec::new();
    for st in &streams {
        // Labels from the metadata the agent added, one hop earlier.
        assert_eq!(st.labels.get("namespace").map(String::as_str), Some("shop"), "{:?}", st.labels);
        assert_eq!(st.labels.get("container").map(String::as_str), Some("api"), "{:?}", st.labels);
        assert_eq!(
            st.labels.get("host").map(String::as_str),
            Some(support_host().as_str()),
            "{:?}",
            st.labels
        );
        for e in &st.entries {
            let v: Value = serde_json::from_str(&e.line).unwrap();
            assert_eq!(v["kubernetes"]["pod"], "cart-5f6d7c8b9-q7r8s", "{v}");
            msgs.push(v["msg"].as_str().unwrap().to_owned());
        }
    }
    let mut want: Vec<String> = (0..n).map(|i| format!("cart {i}")).collect();
    want.sort();
    msgs.sort();
    assert_eq!(msgs, want, "Loki got every line once");

    let keys = s3.keys_on_disk("archive");
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k.starts_with("logs/namespace=shop/")),
        "{keys:?}"
    );
    let mut archived: Vec<String> = s3_events(&s3, "archive")
        .iter()
        .map(|v| v["msg"].as_str().unwrap().to_owned())
        .collect();
    archived.sort();
    assert_eq!(archived, want, "S3 got every line once");
}

/// The host name the agent stamps (the aggregator adds none of its own).
fn support_host() -> String {
    sluice::enrich::host_name().unwrap_or_default()
}
