//! Every config shipped in `config/` and `config/bench/` passes
//! `sluice validate` (the real binary), given the environment variables it
//! documents.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Values for the variables the example configs interpolate, as an
/// operator would set them. A config that needs a variable missing here
/// fails the test: add it here and to docs/deploy.md.
const EXAMPLE_ENV: &[(&str, &str)] = &[
    ("NODE_NAME", "node-1"),
    ("POD_NAME", "sluice-agent-abcde"),
    ("POD_NAMESPACE", "sluice"),
    ("KAFKA_BROKERS", "127.0.0.1:9092"),
    ("LOKI_ENDPOINT", "http://127.0.0.1:3100"),
    ("S3_BUCKET", "logs-archive"),
    ("S3_REGION", "us-east-1"),
    ("S3_ENDPOINT", "http://127.0.0.1:9000"),
];

fn config_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["config", "config/bench"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml" || x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Variables a config reads with no default (`${VAR}`, `${VAR:?msg}`).
fn required_vars(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // Comment lines are not interpolated.
    let live: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = live.as_str();
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let end = rest.find('}').unwrap_or(rest.len());
        let expr = &rest[..end];
        let name: String = expr.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !expr[name.len()..].starts_with(":-") && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[test]
fn every_shipped_config_passes_sluice_validate() {
    let files = config_files();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["dev.toml", "blackhole.toml"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("validate").arg("--config").arg(file);
        for (k, _) in std::env::vars() {
            if k.starts_with("SLUICE_") || EXAMPLE_ENV.iter().any(|(n, _)| *n == k) {
                cmd.env_remove(k);
            }
        }
        for var in required_vars(&text) {
            let (_, v) = EXAMPLE_ENV
                .iter()
                .find(|(n, _)| *n == var)
                .unwrap_or_else(|| panic!("{} needs ${{{var}}}: add it to EXAMPLE_ENV and docs/deploy.md", file.display()));
            cmd.env(&var, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("sluice validate {} hung", file.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{} does not validate:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("config is valid"));
    }
}

#[test]
fn a_required_variable_left_unset_is_named_by_validate() {
    // The production configs use `${VAR:?…}`: an operator who forgot one
    // is told which, instead of shipping to an empty URL.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[sources.in]\ntype = \"stdin\"\n[sinks.out]\ntype = \"stdout\"\n[enrich]\nrelease = \"${SLUICE_TEST_UNSET_RELEASE:?set it to the deployed version}\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("validate")
        .arg("--config")
        .arg(&path)
        .env_remove("SLUICE_TEST_UNSET_RELEASE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SLUICE_TEST_UNSET_RELEASE") && stderr.contains("set it to the deployed version"),
        "{stderr}"
    );
}
