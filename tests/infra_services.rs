//! Each real service that `scripts/test` installs starts on loopback and
//! answers: tansu (Kafka protocol), s3s-fs (S3 with SigV4), promtool and the
//! Prometheus server. When one of these fails, the sink tests that need it
//! cannot be trusted either, so the failure points here first.

mod support;

use std::net::TcpStream;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use rusty_s3::S3Action;

use support::{Kafka, PrometheusServer, KAFKA_TIMEOUT, S3};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn tansu_accepts_tcp_connections() {
    let kafka = Kafka::start();
    TcpStream::connect(&kafka.addr).expect("connect to tansu");
}

#[test]
fn tansu_creates_a_topic_and_round_trips_a_message_through_rdkafka() {
    let kafka = Kafka::start();
    let topic = "sluice-smoke";
    let rt = runtime();

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.addr)
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    let new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    let created = rt
        .block_on(async { tokio::time::timeout(KAFKA_TIMEOUT, admin.create_topics(&[new_topic], &opts)).await })
        .expect("create_topics timed out")
        .expect("create_topics");
    assert_eq!(created, vec![Ok(topic.to_string())], "tansu log:\n{}", kafka.log());

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.addr)
        .set("message.timeout.ms", "15000")
        .create()
        .expect("producer");
    let record = FutureRecord::to(topic).key("k1").payload("hello tansu");
    let delivery = rt
        .block_on(async { tokio::time::timeout(KAFKA_TIMEOUT, producer.send(record, Duration::from_secs(10))).await })
        .expect("produce timed out")
        .unwrap_or_else(|(e, _)| panic!("produce failed: {e}; tansu log:\n{}", kafka.log()));
    assert_eq!(delivery.partition, 0);
    assert_eq!(delivery.offset, 0, "first message of a new topic");

    let metadata = producer.client().fetch_metadata(Some(topic), KAFKA_TIMEOUT).expect("metadata");
    let brokers: Vec<String> = metadata.brokers().iter().map(|b| format!("{}:{}", b.host(), b.port())).collect();
    assert_eq!(brokers, vec![kafka.addr.clone()], "advertised listener");
    let t = metadata.topics().iter().find(|t| t.name() == topic).expect("topic in metadata");
    assert!(t.error().is_none(), "topic error: {:?}", t.error());
    assert_eq!(t.partitions().len(), 1);

    // Read it back from the start of the partition (no consumer group).
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.addr)
        .set("group.id", "sluice-smoke")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).expect("partition offset");
    consumer.assign(&tpl).expect("assign");
    let got = support::wait_until("the message back from tansu", KAFKA_TIMEOUT, || {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => Some((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec), m.offset())),
            Some(Err(e)) => panic!("consume failed: {e}"),
            None => None,
        }
    });
    assert_eq!(got, (Some(b"k1".to_vec()), Some(b"hello tansu".to_vec()), 0));
}

#[test]
fn s3s_fs_round_trips_an_object_with_sigv4() {
    let s3 = S3::start();
    let creds = s3.credentials();
    let bucket = s3.bucket("sluice-smoke");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client");
    let rt = runtime();
    rt.block_on(async {
        let url = bucket.create_bucket(&creds).sign(Duration::from_secs(60));
        let resp = http.put(url).send().await.expect("create bucket");
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());

        let body = "line one\nline two\n";
        let url = bucket
            .put_object(Some(&creds), "logs/2024/01/part-0.ndjson")
            .sign(Duration::from_secs(60));
        let resp = http.put(url).body(body).send().await.expect("put object");
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());

        let url = bucket
            .get_object(Some(&creds), "logs/2024/01/part-0.ndjson")
            .sign(Duration::from_secs(60));
        let resp = http.get(url).send().await.expect("get object");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.expect("object body"), body);

        // A wrong secret is refused: the server really checks signatures.
        let bad = rusty_s3::Credentials::new(s3.access_key.clone(), "not-the-secret");
        let url = bucket
            .get_object(Some(&bad), "logs/2024/01/part-0.ndjson")
            .sign(Duration::from_secs(60));
        let resp = http.get(url).send().await.expect("get with bad secret");
        assert_eq!(resp.status(), 403);
    });
    assert_eq!(s3.keys_on_disk("sluice-smoke"), vec!["logs/2024/01/part-0.ndjson".to_string()]);
    assert_eq!(
        std::fs::read_to_string(s3.object_path("sluice-smoke", "logs/2024/01/part-0.ndjson")).expect("object on disk"),
        "line one\nline two\n"
    );
}

#[test]
fn s3s_fs_serves_a_bucket_created_by_the_helper() {
    let s3 = S3::start();
    s3.create_bucket("made-by-helper");
    assert!(s3.root.path().join("made-by-helper").is_dir());
    let url = s3
        .bucket("made-by-helper")
        .put_object(Some(&s3.credentials()), "k")
        .sign(Duration::from_secs(60));
    let (status, body) = support::http_request("PUT", url.as_str(), &[], b"v");
    assert_eq!(status, 200, "{body}");
    assert_eq!(s3.keys_on_disk("made-by-helper"), vec!["k".to_string()]);
}

#[test]
fn s3s_fs_treats_a_directory_under_root_as_a_bucket() {
    let s3 = S3::start();
    s3.create_bucket_dir("from-mkdir");
    let creds = s3.credentials();
    let bucket = s3.bucket("from-mkdir");
    let url = bucket.put_object(Some(&creds), "a/b.txt").sign(Duration::from_secs(60));
    let (status, body) = support::http_request("PUT", url.as_str(), &[], b"payload");
    assert_eq!(status, 200, "{body}");
    let url = bucket.list_objects_v2(Some(&creds)).sign(Duration::from_secs(60));
    let (status, listing) = support::http_get(url.as_str());
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains("<Key>a/b.txt</Key>"), "{listing}");
}

#[test]
fn kafka_helpers_create_a_topic_and_read_back_every_partition() {
    let kafka = Kafka::start();
    let rt = runtime();
    kafka.create_topic("two-parts", 2);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.addr)
        .set("message.timeout.ms", "15000")
        .create()
        .expect("producer");
    for (partition, payload) in [(0, "p0-a"), (1, "p1-a"), (0, "p0-b")] {
        let record = FutureRecord::<str, str>::to("two-parts").partition(partition).payload(payload);
        rt.block_on(async { tokio::time::timeout(KAFKA_TIMEOUT, producer.send(record, Duration::from_secs(10))).await })
            .expect("produce timed out")
            .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
    }
    let got: Vec<(i32, i64, Vec<u8>)> = kafka
        .read_topic("two-parts", 3, KAFKA_TIMEOUT)
        .into_iter()
        .map(|r| (r.partition, r.offset, r.payload))
        .collect();
    assert_eq!(
        got,
        vec![(0, 0, b"p0-a".to_vec()), (0, 1, b"p0-b".to_vec()), (1, 0, b"p1-a".to_vec()),]
    );
}

#[test]
fn promtool_accepts_valid_metrics_and_rejects_invalid() {
    let valid = "# HELP sluice_events_total Events read.\n\
                 # TYPE sluice_events_total counter\n\
                 sluice_events_total{source=\"stdin\"} 42\n\
                 # HELP sluice_latency_seconds Request latency.\n\
                 # TYPE sluice_latency_seconds histogram\n\
                 sluice_latency_seconds_bucket{le=\"0.1\"} 1\n\
                 sluice_latency_seconds_bucket{le=\"+Inf\"} 2\n\
                 sluice_latency_seconds_sum 0.35\n\
                 sluice_latency_seconds_count 2\n";
    support::promtool_check_metrics(valid).expect("valid metrics");

    let broken = "sluice_events_total{source=\"stdin\" 42\n";
    let err = support::promtool_check_metrics(broken).expect_err("a parse error");
    assert!(err.contains("parsing error"), "{err}");

    // Lint: a counter without the _total suffix.
    let lint = "# HELP sluice_events Events.\n# TYPE sluice_events counter\nsluice_events 1\n";
    let err = support::promtool_check_metrics(lint).expect_err("a lint problem");
    assert!(err.contains("_total"), "{err}");
}

#[test]
fn promtool_checks_rule_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.yml");
    std::fs::write(
        &good,
        "groups:\n  - name: sluice\n    rules:\n      - record: job:sluice_events:rate5m\n        expr: sum by (job) (rate(sluice_events_total[5m]))\n",
    )
    .expect("write rules");
    support::promtool_check_rules(&good).expect("valid rules");

    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "groups:\n  - name: sluice\n    rules:\n      - record: x\n        expr: sum(rate(\n",
    )
    .expect("write rules");
    support::promtool_check_rules(&bad).expect_err("invalid PromQL");
}

#[test]
fn prometheus_server_answers_queries_and_scrapes_its_target() {
    // Scrape Prometheus itself: a target that is certainly up.
    let port = support::free_port();
    let prom = PrometheusServer::start_on(port, &format!("127.0.0.1:{port}"), Duration::from_secs(1));
    let v = prom.query("up");
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["data"]["resultType"], "vector", "{v}");

    // The first scrape comes after Prometheus's 5 s target-update tick.
    let result = prom.wait_for("up == 1", Duration::from_secs(30));
    assert_eq!(result[0]["metric"]["job"], "sluice", "{result:?}");
    assert_eq!(result[0]["metric"]["instance"], format!("127.0.0.1:{port}"));
}
