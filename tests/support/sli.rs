//! The pipeline the SLI tests run: sluice reading stdin into a blackhole
//! sink with `[[sli]]` rules, its API on a port the kernel picks.

use super::sluice::{Sluice, Stdout};

/// Starts sluice with `sli_rules` (TOML `[[sli]]` tables) after a stdin →
/// blackhole pipeline, once `/health` answers; `env` adds variables
/// (`SLUICE_RELEASE`). Stdin is piped; stdout is discarded.
pub fn start_sli(sli_rules: &str, env: &[(&str, &str)]) -> Sluice {
    let config = format!("[sources.stdin]\ntype = \"stdin\"\ndetect_writer = false\n\n[sinks.null]\ntype = \"blackhole\"\n\n{sli_rules}\n");
    Sluice::builder()
        .config(&config)
        .env("SLUICE_API_ADDRESS", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdin_piped()
        .stdout(Stdout::Null)
        .start()
        .serving()
}
