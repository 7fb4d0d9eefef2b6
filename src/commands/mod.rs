//! The commands `main.rs` dispatches to. Each builds a config and runs it
//! through the topology's lifecycle:
//!
//! - [`run`]: the pipe (`app | sluice`, the embedded default) and
//!   `--config FILE`, reloadable;
//! - [`exec`]: `sluice run -- CMD`, the command's output as the source;
//! - [`replay`]: a one-off backfill of files through the config's sinks.

pub mod exec;
pub mod replay;

use std::path::PathBuf;

use crate::topology::{self, Config, RunError, RunOptions, Stopped};

/// Allocator arenas sluice allows when `MALLOC_ARENA_MAX` is not set.
///
/// glibc gives each thread that allocates under contention its own arena
/// (up to eight per core) and rarely hands their free pages back. The decode
/// pool, the sink writers and librdkafka's threads each allocate whole
/// batches, so on two cores the default lets RSS grow by a few MiB per
/// thread: `cat corpus | sluice` peaked at 23–28 MiB with the default and
/// 17–18 MiB with four arenas, at the same speed (BENCHMARKS.md). Batches are
/// allocated a few at a time, not per event, so few arenas do not contend.
/// Once decode got faster (the scan path), four arenas peaked at 24.7–26.9
/// MiB against 23.3–24.8 with two and 21.8–23.9 with one, at the same CPU per
/// event: two keeps the pipe inside its 25 MiB budget and a thread per core
/// from sharing one lock.
pub(crate) const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`] unless the operator set
/// `MALLOC_ARENA_MAX`. Call it before the runtime starts its threads.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

/// Runs `config` until input ends or a signal arrives. With the path it
/// was loaded from, SIGHUP and `POST /-/reload` re-read that file;
/// without one (the embedded default), a reload is logged and ignored.
pub async fn run(config: Config, path: Option<PathBuf>) -> Result<Stopped, RunError> {
    let reloader: Option<topology::Reloader> = path.map(|p| Box::new(move || Config::load(&p)) as topology::Reloader);
    topology::run(config, RunOptions { reloader, source: None }).await
}
