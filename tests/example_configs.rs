//! Every config shipped in `config/` and `config/bench/` passes
//! `sluice validate` (the real binary), given the environment variables it
//! documents.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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
    ("KAFKA_USERNAME", "aggregator"),
    ("KAFKA_PASSWORD", "secret"),
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

/// Runs `sluice validate` on `text` (written to `path`) with the example
/// environment; panics with the errors unless it is valid.
fn validate(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("validate").arg("--config").arg(path);
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") || EXAMPLE_ENV.iter().any(|(n, _)| *n == k) {
            cmd.env_remove(k);
        }
    }
    for var in required_vars(text) {
        let (_, v) = EXAMPLE_ENV
            .iter()
            .find(|(n, _)| *n == var)
            .unwrap_or_else(|| panic!("{} needs ${{{var}}}: add it to EXAMPLE_ENV and docs/deploy.md", path.display()));
        cmd.env(&var, v);
    }
    let out = support::run_bounded(cmd, None, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{} does not validate:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("config is valid"));
}

#[test]
fn every_shipped_config_passes_sluice_validate() {
    let files = config_files();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["dev.toml", "vm.toml", "daemonset.toml", "aggregator.toml", "blackhole.toml"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    for file in &files {
        // Validated from a copy so that `validate` reads exactly this text.
        let text = std::fs::read_to_string(file).unwrap();
        validate(&dir.path().join(file.file_name().unwrap()), &text);
    }
}

/// The alternatives the configs offer as commented blocks (`# [sinks.x]`
/// up to the end of the block) stay valid when uncommented.
#[test]
fn commented_alternatives_in_the_shipped_configs_validate_when_uncommented() {
    let dir = tempfile::tempdir().unwrap();
    let mut found = 0;
    for file in config_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if !(lines[i].starts_with("# [sources.") || lines[i].starts_with("# [sinks.")) {
                i += 1;
                continue;
            }
            // The block: commented lines from the table header on.
            let start = i;
            while i < lines.len() && lines[i].starts_with('#') {
                i += 1;
            }
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            for l in &mut out[start..i] {
                *l = l.strip_prefix("# ").or_else(|| l.strip_prefix('#')).unwrap_or(l).to_owned();
            }
            found += 1;
            let name = format!("{}-alt{start}.toml", file.file_stem().unwrap().to_string_lossy());
            validate(&dir.path().join(name), &(out.join("\n") + "\n"));
        }
    }
    assert!(
        found >= 2,
        "the daemonset Loki and aggregator SASL alternatives are checked (found {found})"
    );
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
