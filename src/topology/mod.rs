//! The topology: the top-level config that joins every component, the
//! checks across them, and the one lifecycle every command runs them
//! through (start, reload, drain). Building and running are apart from the
//! commands: the commands use the topology, not the other way round.
//!
//! - [`config`]: the whole config, parsed and checked.
//! - `running`: the live components, the lifecycle and reload.
//! - `reload`: what a new config changes.

pub mod config;
mod reload;
mod running;

pub use config::{ApiConfig, Config, Format, SinkSpec, DEFAULT_API_ADDRESS, DEFAULT_CONFIG, ENV_OVERRIDES};
pub use running::{run, run_to_end, BuildSource, Reloader, RunEnd, RunError, RunOptions, Stopped};
