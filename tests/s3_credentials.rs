//! The S3 sink's credential chain against real `moto_server` (STS, S3 and
//! instance metadata on one loopback port): environment keys, a profile of
//! the shared files, web identity through STS `AssumeRoleWithWebIdentity`
//! (and its refresh before expiry), container credentials from a loopback
//! endpoint that checks the authorization token, and IMDSv2. moto's
//! request log shows which access key signed each S3 request, and boto3
//! reads the objects back.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::moto::Moto;
use support::{eventually, Sluice, Stdout};

const TIMEOUT: Duration = Duration::from_secs(60);
const BUCKET: &str = "creds";

/// Variables that would steer the chain elsewhere than the test says.
const CHAIN_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
];

fn config(moto: &Moto, extra: &str) -> String {
    format!(
        r#"
[api]
address = "127.0.0.1:0"
[sources.in]
type = "stdin"
[sinks.s3]
type = "s3"
bucket = "{BUCKET}"
endpoint = "{endpoint}"
region = "us-east-1"
compression = "none"
{extra}
[sinks.s3.batch]
timeout = "300ms"
[sinks.s3.retry]
initial_backoff = "50ms"
max_backoff = "500ms"
"#,
        endpoint = moto.endpoint
    )
}

/// sluice into moto's S3 with only the given chain variables set (and a
/// HOME without `.aws`, and instance metadata off unless set).
fn start(moto: &Moto, extra: &str, env: &[(&str, String)]) -> Sluice {
    let home = tempfile::tempdir().unwrap().keep();
    let mut b = Sluice::builder()
        .config(&config(moto, extra))
        .stdin_piped()
        .stdout(Stdout::Null)
        .env("HOME", &home)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for v in CHAIN_VARS {
        b = b.env_remove(*v);
    }
    for (k, v) in env {
        b = b.env(*k, v);
    }
    b.start()
}

fn lines(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!(r#"{{"seq":{i},"message":"creds {i}"}}"#)).collect()
}

/// Every event of `range` is in the bucket, read back with boto3.
fn assert_delivered(moto: &Moto, range: std::ops::Range<usize>) {
    let text = moto.objects_text(BUCKET);
    for i in range {
        assert!(text.contains(&format!("\"seq\":{i},")), "event {i} is not in the bucket:\n{text}");
    }
}

/// Writes 20 events, waits for the clean exit, checks the bucket and
/// returns the access keys that signed the S3 requests.
fn deliver(moto: &Moto, mut s: Sluice) -> Vec<String> {
    s.write_lines(&lines(0..20));
    s.finish(TIMEOUT);
    assert_delivered(moto, 0..20);
    let keys = moto.signing_keys(BUCKET);
    assert!(!keys.is_empty(), "no signed S3 request in moto's log:\n{}", moto.log());
    keys
}

#[test]
fn environment_keys_sign_the_requests() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let s = start(
        &moto,
        "",
        &[
            ("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENT0001".into()),
            ("AWS_SECRET_ACCESS_KEY", "env-secret".into()),
        ],
    );
    let keys = deliver(&moto, s);
    assert!(keys.iter().all(|k| k == "AKIAENVIRONMENT0001"), "{keys:?}");
    assert_eq!(moto.sts_calls(), 0);
}

#[test]
fn a_profile_from_the_shared_files_is_used_and_static_config_keys_win_over_it() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    let cfg = dir.path().join("config");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = AKIADEFAULTPROFILE\naws_secret_access_key = d\n\n\
         [ci]\naws_access_key_id = AKIACIPROFILE0001\naws_secret_access_key = ci-secret\n",
    )
    .unwrap();
    std::fs::write(&cfg, "[profile ci]\nregion = us-east-1\n").unwrap();
    let files = [
        ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
        ("AWS_CONFIG_FILE", cfg.display().to_string()),
    ];
    let mut env = files.to_vec();
    env.push(("AWS_PROFILE", "ci".into()));
    let keys = deliver(&moto, start(&moto, "", &env));
    assert!(keys.iter().all(|k| k == "AKIACIPROFILE0001"), "{keys:?}");

    // The sink's key files come first in the chain.
    let (k, s) = (dir.path().join("key"), dir.path().join("secret"));
    std::fs::write(&k, "AKIAFROMCONFIGFILE\n").unwrap();
    std::fs::write(&s, "file-secret\n").unwrap();
    let extra = format!(
        "access_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n",
        k.display(),
        s.display()
    );
    let before = moto.signing_keys(BUCKET).len();
    let keys = deliver(&moto, start(&moto, &extra, &env));
    assert!(keys[before..].iter().all(|k| k == "AKIAFROMCONFIGFILE"), "{keys:?}");

    // A profile that is asked for and missing is a start-up error.
    let mut env = files.to_vec();
    env.push(("AWS_PROFILE", "absent".into()));
    let s = start(&moto, "", &env);
    assert!(!s.wait(TIMEOUT).success());
    assert!(
        s.logs().contains("profile \\\"absent\\\"") || s.logs().contains("profile \"absent\""),
        "{}",
        s.logs()
    );
}

/// The IRSA variables with a token file, STS at moto.
fn web_identity_env(moto: &Moto, dir: &std::path::Path) -> Vec<(&'static str, String)> {
    let token = dir.join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl\n").unwrap();
    vec![
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.display().to_string()),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/sluice-writer".into()),
        ("AWS_ROLE_SESSION_NAME", "sluice-test".into()),
        ("AWS_ENDPOINT_URL_STS", moto.endpoint.clone()),
    ]
}

#[test]
fn web_identity_credentials_come_from_sts_and_write_objects() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let keys = deliver(&moto, start(&moto, "", &web_identity_env(&moto, dir.path())));
    assert_eq!(moto.sts_calls(), 1, "{}", moto.log());
    // moto's STS hands out temporary keys (ASIA…), never the caller's.
    assert!(keys.iter().all(|k| k.starts_with("ASIA")), "{keys:?}");
}

#[test]
fn temporary_credentials_are_refreshed_before_they_expire_without_stalling_uploads() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    // moto's STS credentials live an hour: refreshing 3598 s before expiry
    // means every 2 s.
    let mut s = start(
        &moto,
        "[sinks.s3.credentials]\nrefresh_before = \"3598s\"\n",
        &web_identity_env(&moto, dir.path()),
    );
    let mut next = 0;
    eventually("four STS calls", TIMEOUT, || {
        s.write_lines(&lines(next..next + 5));
        next += 5;
        std::thread::sleep(Duration::from_millis(200));
        moto.sts_calls() >= 4
    });
    // Uploads went on meanwhile, signed with more than one set of keys.
    s.write_lines(&lines(next..next + 5));
    next += 5;
    s.finish(TIMEOUT);
    assert_delivered(&moto, 0..next);
    let mut keys = moto.signing_keys(BUCKET);
    keys.dedup();
    assert!(keys.len() >= 2, "requests were signed with the refreshed keys too: {keys:?}");
    assert!(s.logs().contains("S3 credentials refreshed"), "{}", s.logs());
}

/// A loopback HTTP server answering each request with `answer(request
/// line, headers)` -> (status, body); counts the requests.
struct StandIn {
    url: String,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl StandIn {
    fn start(answer: impl Fn(&str, &[(String, String)]) -> (u16, String) + Send + 'static) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h, sn) = (hits.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut headers = Vec::new();
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l).is_err() || l.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                sn.lock().unwrap().push(line.trim().to_owned());
                let (status, body) = answer(line.trim(), &headers);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        StandIn { url, hits, seen }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn container_credentials_are_fetched_with_the_authorization_token_from_its_file() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, "pod-identity-token-1\n").unwrap();
    let agent = StandIn::start(|line, headers| {
        if !line.starts_with("GET /v1/credentials ") {
            return (404, "{}".into());
        }
        if header(headers, "authorization") != Some("pod-identity-token-1") {
            return (401, r#"{"Message":"bad token"}"#.into());
        }
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
        (
            200,
            format!(r#"{{"AccessKeyId":"ASIACONTAINER0001","SecretAccessKey":"c-secret","Token":"c-token","Expiration":"{expires}"}}"#),
        )
    });
    let env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", format!("{}/v1/credentials", agent.url)),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file.display().to_string()),
    ];
    let keys = deliver(&moto, start(&moto, "", &env));
    assert!(keys.iter().all(|k| k == "ASIACONTAINER0001"), "{keys:?}");
    assert_eq!(agent.hits.load(Ordering::SeqCst), 1);

    // The wrong token: the agent refuses and sluice does not start.
    std::fs::write(&token_file, "stale\n").unwrap();
    let s = start(&moto, "", &env);
    assert!(!s.wait(TIMEOUT).success());
    assert!(s.logs().contains("container credentials"), "{}", s.logs());
}

#[test]
fn instance_metadata_credentials_come_from_moto_over_imdsv2() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let env = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", moto.endpoint.clone())];
    let home = tempfile::tempdir().unwrap();
    let mut b = Sluice::builder()
        .config(&config(&moto, ""))
        .stdin_piped()
        .stdout(Stdout::Null)
        .env("HOME", home.path());
    for v in CHAIN_VARS {
        b = b.env_remove(*v);
    }
    for (k, v) in &env {
        b = b.env(*k, v);
    }
    let keys = deliver(&moto, b.start());
    // moto's instance metadata hands out `test-key`.
    assert!(keys.iter().all(|k| k == "test-key"), "{keys:?}");
    let requests = moto.requests();
    let token_at = requests.iter().position(|r| r.starts_with("PUT /latest/api/token "));
    let creds_at = requests
        .iter()
        .position(|r| r.starts_with("GET /latest/meta-data/iam/security-credentials/"));
    assert!(
        matches!((token_at, creds_at), (Some(t), Some(c)) if t < c),
        "a session token first (IMDSv2): {requests:?}"
    );
}

#[test]
fn instance_metadata_requests_carry_the_session_token() {
    // moto does not insist on the token; this stand-in does, as EC2 does
    // with IMDSv2 required.
    let imds = StandIn::start(|line, headers| {
        if line.starts_with("PUT /latest/api/token ") {
            return match header(headers, "x-aws-ec2-metadata-token-ttl-seconds") {
                Some(_) => (200, "session-token-42".into()),
                None => (400, String::new()),
            };
        }
        if header(headers, "x-aws-ec2-metadata-token") != Some("session-token-42") {
            return (401, String::new());
        }
        match line.split(' ').nth(1) {
            Some("/latest/meta-data/iam/security-credentials/") => (200, "node-role\n".into()),
            Some("/latest/meta-data/iam/security-credentials/node-role") => (
                200,
                r#"{"Code":"Success","AccessKeyId":"ASIAINSTANCE0001","SecretAccessKey":"i","Token":"t","Expiration":"2099-01-01T00:00:00Z"}"#
                    .into(),
            ),
            _ => (404, String::new()),
        }
    });
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let home = tempfile::tempdir().unwrap();
    let mut b = Sluice::builder()
        .config(&config(&moto, ""))
        .stdin_piped()
        .stdout(Stdout::Null)
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url);
    for v in CHAIN_VARS.iter().filter(|v| **v != "AWS_EC2_METADATA_SERVICE_ENDPOINT") {
        b = b.env_remove(*v);
    }
    let keys = deliver(&moto, b.start());
    assert!(keys.iter().all(|k| k == "ASIAINSTANCE0001"), "{keys:?}");
    assert_eq!(imds.hits.load(Ordering::SeqCst), 3, "{:?}", imds.seen.lock().unwrap());
}

#[test]
fn secrets_never_reach_the_log() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let mut s = start(
        &moto,
        "",
        &[
            ("AWS_ACCESS_KEY_ID", "AKIALOGCHECK0001".into()),
            ("AWS_SECRET_ACCESS_KEY", "never-log-this-secret".into()),
            ("AWS_SESSION_TOKEN", "never-log-this-token".into()),
            ("SLUICE_LOG", "debug".into()),
        ],
    );
    s.write_lines(&lines(0..5));
    s.finish(TIMEOUT);
    let logs = s.logs();
    assert!(logs.contains("S3 credentials loaded"), "{logs}");
    assert!(!logs.contains("never-log-this"), "{logs}");
}
