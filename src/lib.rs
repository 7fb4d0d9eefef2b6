//! sluice: a log and metrics event-stream collector.
//!
//! Sources read bytes, [`framing`] cuts them into lines, [`decode`] parses
//! each line with SIMD and splices in the metadata of [`enrich`], and the
//! [`pipeline`] fans each batch out to per-sink queues ([`buffer`]) that
//! [`sinks`] drain. A batch is acknowledged back to its source once every
//! sink has delivered it ([`event`]). The [`topology`] wires it together
//! from a config and runs it; the [`commands`] are what `main.rs` calls.
//!
//! The public surface is what `main.rs`, the tests, the benches and the
//! fuzz targets use; everything else is `pub(crate)`.
#![warn(unreachable_pub)]

pub mod buffer;
pub mod commands;
pub(crate) mod condition;
pub(crate) mod config;
pub mod decode;
pub mod enrich;
pub mod event;
pub mod framing;
pub(crate) mod json_text;
pub(crate) mod otlp;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use otlp::fuzz_logs as fuzz_otlp_logs;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use otlp::fuzz_metrics as fuzz_otlp_metrics;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use sinks::s3::credentials::fuzz_credentials as fuzz_s3_credentials;
pub mod metrics;
pub mod multiline;
pub mod pipeline;
pub(crate) mod recycle;
pub mod sinks;
pub mod sli;
pub mod sources;
pub mod telemetry;
pub mod topology;
pub mod transforms;
