//! `deploy/systemd/sluice.env` and what `docs/deploy.md` says about it: the
//! file sets exactly the variables `config/vm.toml` cannot start without,
//! leaves every other one commented out, and the docs say so by name.

use std::collections::BTreeSet;
use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Variables the env file sets (its uncommented `KEY=VALUE` lines).
fn set_by_env_file() -> BTreeSet<String> {
    read("deploy/systemd/sluice.env")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once('=').unwrap_or_else(|| panic!("not KEY=VALUE: {l:?}")).0.to_string())
        .collect()
}

/// Variables a config requires (`${NAME:?message}`).
fn required_by(config: &str) -> BTreeSet<String> {
    config
        .split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once(":?").map(|(name, _)| name))
        .filter(|name| name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
        .map(str::to_string)
        .collect()
}

#[test]
fn env_file_sets_exactly_what_the_vm_config_requires() {
    let required = required_by(&read("config/vm.toml"));
    assert!(!required.is_empty(), "config/vm.toml requires some variables");
    assert_eq!(set_by_env_file(), required);
}

#[test]
fn deploy_docs_name_the_variables_the_env_file_sets() {
    let docs = read("docs/deploy.md");
    let start = docs
        .find("**Environment file.**")
        .expect("docs/deploy.md has an Environment file item");
    let rest = &docs[start..];
    let para = &rest[..["\n- ", "\n\n"].iter().filter_map(|end| rest.find(end)).min().unwrap_or(rest.len())];
    for var in set_by_env_file() {
        assert!(para.contains(&format!("`{var}`")), "the paragraph does not name {var}:\n{para}");
    }
}
