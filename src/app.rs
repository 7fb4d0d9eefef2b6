//! Builds the pipeline from a config and runs it: API first (so `/health`
//! answers at once), then sinks, then sources; on a signal or at end of
//! input, stops reading, drains every queue, flushes every sink.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

use crate::buffer::{self, BufferCx, DiskHandle, QueueSender};
use crate::config::{Config, SinkSpec};
use crate::event::FieldSet;
use crate::pipeline::{shutdown_pair, source_output, BatchTap};
use crate::sinks::{SinkCx, SinkError};
use crate::sources::SourceCx;
use crate::telemetry::{self, Health};

/// Why a run ended badly. The process exits non-zero with this message.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The API address could not be bound.
    #[error("cannot serve the API on {addr}: {error}")]
    Api {
        /// The address.
        addr: std::net::SocketAddr,
        /// The bind error.
        error: std::io::Error,
    },
    /// A source or sink could not start or failed for good.
    #[error("{0}")]
    Component(String),
    /// Draining took longer than `shutdown_timeout`.
    #[error("shutdown did not finish within {0:?}; undelivered events remain queued")]
    ShutdownTimeout(Duration),
}

/// How a run was stopped, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every source reached the end of its input.
    InputEnded,
    /// SIGTERM or SIGINT.
    Signal,
}

/// Extra pieces a caller adds to the pipeline (SLI taps).
#[derive(Default)]
pub struct Extensions {
    /// Observers of every batch, before fan-out.
    pub taps: Vec<Arc<dyn BatchTap>>,
}

/// Allocator arenas sluice allows when `MALLOC_ARENA_MAX` is not set.
///
/// glibc gives each thread that allocates under contention its own arena
/// (up to eight per core) and rarely hands their free pages back. The decode
/// pool, the sink writers and librdkafka's threads each allocate whole
/// batches, so on two cores the default lets RSS grow by a few MiB per
/// thread: `cat corpus | sluice` peaked at 23–28 MiB with the default and
/// 17–18 MiB with four arenas, at the same speed (BENCHMARKS.md). Batches are
/// allocated a few at a time, not per event, so four arenas do not contend.
pub const MALLOC_ARENAS: i32 = 4;

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

/// Runs the pipeline until input ends or a signal arrives.
pub async fn run(config: Config) -> Result<Stopped, RunError> {
    run_with(config, Extensions::default()).await
}

/// [`run`] with extensions.
pub async fn run_with(config: Config, mut ext: Extensions) -> Result<Stopped, RunError> {
    crate::sli::extend(&mut ext, &config.sli);
    let health = Arc::new(Health::default());
    let _api = if config.api.enabled {
        match telemetry::serve(config.api.address, health.clone()).await {
            Ok(h) => {
                tracing::info!(address = %h.local_addr, "serving /metrics, /health and /ready");
                Some(h)
            }
            Err(error) if config.api_address_explicit => {
                return Err(RunError::Api {
                    addr: config.api.address,
                    error,
                })
            }
            Err(error) => {
                tracing::warn!(address = %config.api.address, %error, "API address unavailable; running without /metrics (set api.address or SLUICE_API_ADDRESS)");
                None
            }
        }
    } else {
        None
    };

    let mut fields = FieldSet::new();
    for spec in config.sinks.values() {
        for p in spec.config.fields_needed() {
            fields.add(p);
        }
    }
    let fields = Arc::new(fields);

    let mut sinks = JoinSet::new();
    let mut senders = BTreeMap::new();
    let mut disk_buffers = Vec::new();
    let buffer_cx = BufferCx {
        data_dir: config.data_dir.clone(),
        fields: fields.clone(),
    };
    for (name, spec) in &config.sinks {
        let (tx, disk) = start_sink(name, spec, &buffer_cx, &health, &mut sinks)
            .await
            .map_err(RunError::Component)?;
        disk_buffers.extend(disk);
        senders.insert(name.clone(), tx);
    }

    let (trigger, signal) = shutdown_pair();
    let enrich = Arc::new(config.enrich.clone());
    let mut sources = JoinSet::new();
    let mut fan_outs = Vec::new();
    for (name, cfg) in &config.sources {
        let name: Arc<str> = name.as_str().into();
        let targets = config.sinks_for(&name).filter_map(|s| senders.get(s).cloned()).collect();
        let (output, fan_out) = source_output(name.clone(), fields.clone(), targets, ext.taps.clone());
        fan_outs.push(fan_out);
        let cx = SourceCx {
            name: name.clone(),
            output,
            shutdown: signal.clone(),
            enrich: enrich.clone(),
            data_dir: config.data_dir.clone(),
        };
        sources.spawn(cfg.build(cx).map_err(|e| RunError::Component(e.to_string()))?);
    }
    // The fan-outs hold the only senders now: when they finish, the queues
    // close and the sinks drain and exit.
    drop(senders);
    health.set_started(true);
    let service_manager = telemetry::systemd::ServiceManager::ready();

    let mut failure: Option<RunError> = None;
    let stopped = tokio::select! {
        _ = wait_all(&mut sources, &mut failure) => Stopped::InputEnded,
        _ = termination() => Stopped::Signal,
        Some(res) = sinks.join_next() => {
            // A sink ended before its input did: it failed for good.
            record(res, &mut failure);
            Stopped::Signal
        }
    };
    health.set_started(false);
    service_manager.stopping();
    trigger.trigger();
    if stopped == Stopped::Signal {
        // What waits on disk stays there for the next run; sinks only
        // finish what they already hold.
        for d in &disk_buffers {
            d.stop_feeding();
        }
    }
    tracing::info!(reason = ?stopped, "stopping: draining queues and flushing sinks");

    // After a signal (or a failed sink) the drain is bounded; at the end of
    // input it is not: a slow reader downstream is backpressure, not a fault.
    let bounded = stopped == Stopped::Signal;
    let drain = async {
        wait_all(&mut sources, &mut failure).await;
        for f in fan_outs {
            let _ = f.await;
        }
        while let Some(res) = sinks.join_next().await {
            record(res, &mut failure);
        }
        for d in disk_buffers {
            d.closed().await;
        }
    };
    if bounded {
        tokio::select! {
            _ = drain => {}
            _ = tokio::time::sleep(config.shutdown_timeout) => return Err(RunError::ShutdownTimeout(config.shutdown_timeout)),
            _ = termination() => {
                tracing::warn!("second signal: exiting without draining");
                return Err(RunError::ShutdownTimeout(Duration::ZERO));
            }
        }
    } else {
        drain.await;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(stopped),
    }
}

/// Opens a sink's queue (memory or disk), builds the sink on it and spawns
/// it into `sinks`. Returns the queue's sending end for the fan-out and, for
/// a disk buffer, its handle (stop it and wait for it at shutdown). `run`
/// and `replay` start their sinks through here.
pub(crate) async fn start_sink(
    name: &str,
    spec: &SinkSpec,
    buffer_cx: &BufferCx,
    health: &Arc<Health>,
    sinks: &mut JoinSet<Result<(), SinkError>>,
) -> Result<(QueueSender, Option<DiskHandle>), String> {
    let opened = buffer::open(name, &spec.buffer, buffer_cx).map_err(|e| e.to_string())?;
    let cx = SinkCx {
        name: name.into(),
        fields: buffer_cx.fields.clone(),
        health: health.clone(),
        data_dir: buffer_cx.data_dir.clone(),
    };
    let task = spec.config.build(cx, opened.receiver).await.map_err(|e| e.to_string())?;
    sinks.spawn(task);
    Ok((opened.sender, opened.disk))
}

async fn wait_all<E: std::fmt::Display + Send + 'static>(set: &mut JoinSet<Result<(), E>>, failure: &mut Option<RunError>) {
    while let Some(res) = set.join_next().await {
        record(res, failure);
    }
}

fn record<E: std::fmt::Display>(res: Result<Result<(), E>, tokio::task::JoinError>, failure: &mut Option<RunError>) {
    let msg = match res {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("component task failed: {e}"),
    };
    tracing::error!(error = %msg, "component failed");
    failure.get_or_insert(RunError::Component(msg));
}

/// Completes on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
