//! The pipeline the sink tests run: sluice reading stdin (source `app`),
//! enriching every event with a release and a host, into the sinks under
//! test. The API binds port 0 (see [`Sluice::api_address`]).

use super::sluice::{Sluice, Stdout};

/// The metadata every event gets from [`start_with_sinks`].
pub const META_SUFFIX: &str = r#","release":{"version":"1.4.2"},"host":"node-7"}"#;

/// What a sink receives for an input line: the line with the configured
/// metadata spliced in before its closing brace.
pub fn enriched(line: &str) -> String {
    format!("{}{META_SUFFIX}", &line[..line.len() - 1])
}

/// Starts sluice with a stdin source named `app`, enrichment that adds
/// `release.version = 1.4.2` and `host = node-7`, and `sinks` (TOML);
/// `env` adds variables. Stdin is piped; stdout is discarded.
pub fn start_with_sinks(sinks: &str, env: &[(&str, &str)]) -> Sluice {
    let config = format!(
        "shutdown_timeout = \"20s\"\n[api]\naddress = \"127.0.0.1:0\"\n\
         [enrich]\nhost = \"node-7\"\nrelease = \"1.4.2\"\n\
         [sources.app]\ntype = \"stdin\"\ndetect_writer = false\n{sinks}"
    );
    Sluice::builder()
        .config(&config)
        .envs(env.iter().copied())
        .stdin_piped()
        .stdout(Stdout::Null)
        .start()
}
