//! The shipped configs, run for real: the real binary with `config/*.toml`
//! as written, only its absolute paths moved into a temporary directory and
//! its destinations given by the environment variables it documents,
//! against real services on loopback.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

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

struct Running {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

fn start(config: &Path, env: &[(&str, String)]) -> Running {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .env("SLUICE_API_ADDRESS", "127.0.0.1:0")
        .env("SLUICE_LOG", "info")
        .env_remove("SLUICE_RELEASE")
        .env_remove("SLUICE_PROCESS_TYPE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn sluice");
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    Running { child, stderr }
}

impl Running {
    /// SIGTERM, then the exit status and everything sluice logged.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(45) {
                let _ = self.child.kill();
                panic!("sluice did not stop within 45 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, self.stderr.join().unwrap())
    }
}

/// A CRI log line as containerd writes it.
fn cri(n: usize, msg: &str) -> String {
    format!("2026-01-02T03:04:{:02}.{:09}Z stdout F {msg}\n", n % 60, n)
}

#[test]
fn daemonset_config_ships_pod_logs_with_pod_metadata_to_kafka_and_skips_its_own() {
    let kafka = support::Kafka::start();
    let topic = "sluice-events";
    tokio::runtime::Runtime::new().unwrap().block_on(kafka.create_topic(topic, 1));

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
    let text = text.replace("\napi = true\n", "\napi = false\n");
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
    let (status, stderr) = running.stop();
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
    assert_eq!(records_after.len(), n, "exactly the application's lines, not the agent's own");

    let mut seen = Vec::new();
    for r in &records {
        let v: Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
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
