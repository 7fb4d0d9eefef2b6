//! `deploy/Dockerfile`: no container engine runs here, so the image is
//! kept correct by review, by hadolint (installed by scripts/test), and by
//! checking that it agrees with the crate and with the binary the tests
//! build. scripts/build-image-binary builds the release binary with the
//! Dockerfile's very command and runs it.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dockerfile() -> String {
    std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap()
}

/// Instructions with their continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    out
}

fn hadolint() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_TEST_HADOLINT") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("SLUICE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice-test"));
    let p = cache.join("venv-k8s/bin/hadolint");
    assert!(p.exists(), "{} missing: run scripts/test --install-only", p.display());
    p
}

#[test]
fn dockerfile_passes_hadolint() {
    let mut cmd = Command::new(hadolint());
    cmd.args(["--no-color", "--failure-threshold", "info"])
        .arg(root().join("deploy/Dockerfile"));
    let out = support::run_bounded(cmd, None, Duration::from_secs(60));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "hadolint:\n{text}");
}

#[test]
fn image_builds_the_locked_release_binary_and_runs_it_unprivileged() {
    let text = dockerfile();
    let ins = instructions(&text);
    let froms: Vec<&String> = ins.iter().filter(|i| i.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 3, "build, debug-info and the runtime: {froms:?}");
    assert!(froms[1].ends_with(" AS debug-info"), "{froms:?}");
    // The image carries the stripped binary only; its debug info is the
    // debug-info stage's.
    assert!(ins.iter().any(|i| i == "COPY --from=build /out/sluice /usr/bin/sluice"));
    assert!(!ins
        .iter()
        .skip_while(|i| !i.starts_with("FROM ${RUNTIME_IMAGE}"))
        .any(|i| i.contains("sluice.debug")));

    // The builder's Rust is at least the crate's rust-version.
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap();
    let builder = ins.iter().find_map(|i| i.strip_prefix("ARG RUST_IMAGE=")).expect("ARG RUST_IMAGE");
    let tag = builder.strip_prefix("rust:").and_then(|t| t.split('-').next()).unwrap();
    let minor = |v: &str| -> (u32, u32) {
        let mut p = v.split('.').map(|n| n.parse::<u32>().unwrap());
        (p.next().unwrap(), p.next().unwrap())
    };
    assert!(
        minor(tag) >= minor(rust_version),
        "builder {builder} older than rust-version {rust_version}"
    );

    // Exactly the command scripts/build-image-binary runs.
    let script = std::fs::read_to_string(root().join("scripts/build-image-binary")).unwrap();
    assert!(script.contains("BUILD_CMD=\"cargo build --release --locked\""));
    let run = ins.iter().find(|i| i.starts_with("RUN ")).expect("a RUN in the build stage");
    assert!(run.contains("cargo build --release --locked"), "{run}");
    assert!(run.contains("/out/sluice --version"), "the build checks the binary runs: {run}");
    assert!(run.contains("scripts/split-debuginfo target/release/sluice /out"), "{run}");
    assert!(script.contains("scripts/split-debuginfo \"$BUILT\" \"$IMAGE_DIR\""));

    // Everything the crate needs to build is copied in (and let through
    // the .dockerignore): the manifest, the sources, the benches named in
    // Cargo.toml, and config/dev.toml, which is compiled in.
    let ignore = std::fs::read_to_string(root().join("deploy/Dockerfile.dockerignore")).unwrap();
    for path in ["Cargo.toml", "Cargo.lock", "src", "benches", "config", "scripts/split-debuginfo"] {
        assert!(ins.iter().any(|i| i.starts_with("COPY ") && i.contains(path)), "COPY {path}");
        assert!(
            ignore.lines().any(|l| l.trim_end_matches('/') == format!("!{path}")),
            ".dockerignore lets {path} in"
        );
    }
    assert!(std::fs::read_to_string(root().join("src/topology/config.rs"))
        .unwrap()
        .contains("../../config/dev.toml"));

    // Runtime: non-root, the labels, the data dir, the API beyond loopback.
    let user = ins.iter().rfind(|i| i.starts_with("USER ")).expect("USER");
    let uid: u32 = user[5..].split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "the image runs as a non-root user by default");
    for label in [
        "org.opencontainers.image.version=\"${VERSION}\"",
        "org.opencontainers.image.revision=\"${COMMIT}\"",
        "org.opencontainers.image.created=\"${CREATED}\"",
        "org.opencontainers.image.licenses=\"Apache-2.0\"",
    ] {
        assert!(ins.iter().any(|i| i.starts_with("LABEL ") && i.contains(label)), "LABEL {label}");
    }
    assert!(
        manifest.contains("license = \"Apache-2.0\""),
        "the label matches the crate's license"
    );
    assert!(ins.iter().any(|i| i == "ENV SLUICE_DATA_DIR=/var/lib/sluice"));
    assert!(ins.iter().any(|i| i == "VOLUME [\"/var/lib/sluice\"]"));
    assert!(ins
        .iter()
        .any(|i| i.contains("--chown=65532:65532") && i.ends_with("/var/lib/sluice")));
    assert!(ins.iter().any(|i| i == "ENV SLUICE_API_ADDRESS=0.0.0.0:9598"));
    assert!(ins.iter().any(|i| i == "EXPOSE 9598"));
    assert_eq!(ins.last().unwrap(), "ENTRYPOINT [\"/usr/bin/sluice\"]");
    // Labels describe sluice; the application's release variables stay
    // for the deployment.
    assert!(!text.contains("ENV SLUICE_RELEASE"));
}
