//! The running topology and the one lifecycle every command runs it
//! through: API first (so `/health` answers at once), then sinks, then
//! sources; on input end, a signal or a failed sink, sources stop, queues
//! drain and sinks flush. SIGHUP and `POST /-/reload` apply a new config in
//! place: unchanged components keep running untouched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};

use super::config::{Config, SinkSpec};
use super::reload::{needs_restart, Diff};
use crate::buffer::{self, BufferCx, BufferError, DiskHandle, QueueSender};
use crate::config::ConfigErrors;
use crate::enrich::EnrichConfig;
use crate::event::FieldSet;
use crate::pipeline::{shutdown_pair, wired_output, BatchTap, Processing, ShutdownTrigger, Task, Wiring};
use crate::sinks::SinkError;
use crate::sources::{SourceCx, SourceError};
use crate::telemetry::systemd::ServiceManager;
use crate::telemetry::{self, metrics, Health, ReloadReply, ReloadRequest};

/// Why a run ended badly. The process exits non-zero with this message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The API address could not be bound.
    #[error("cannot serve the API on {addr}: {error}")]
    Api {
        /// The address.
        addr: std::net::SocketAddr,
        /// The bind error.
        error: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// A sink's queue could not be opened.
    #[error("sink {sink}: {error}")]
    Buffer {
        /// The sink.
        sink: String,
        /// Why.
        error: BufferError,
    },
    /// A source could not start or failed for good.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink could not start or failed for good.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A component's task panicked or was cancelled.
    #[error("{kind} {name}: its task failed: {error}")]
    Crashed {
        /// `source` or `sink`.
        kind: &'static str,
        /// The component's name.
        name: String,
        /// The panic or cancellation.
        error: JoinError,
    },
    /// Draining took longer than `shutdown_timeout`.
    #[error("shutdown did not finish within {0:?}; undelivered events remain queued")]
    ShutdownTimeout(Duration),
}

/// How a run was stopped, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every source reached the end of its input.
    InputEnded,
    /// SIGTERM or SIGINT, or a sink that ended before its input.
    Signal,
}

/// Re-reads the config for a reload: the file and the environment, through
/// the same code as `sluice validate`.
pub(crate) type Reloader = Box<dyn Fn() -> Result<Config, ConfigErrors> + Send + Sync>;

/// Builds a source a command brings besides the config's (replay's
/// files), as [`SourceConfig::build`](crate::sources::SourceConfig::build)
/// builds a configured one.
pub(crate) type BuildSource = Box<dyn FnOnce(SourceCx) -> Result<Task<SourceError>, SourceError> + Send>;

/// What a command hands the lifecycle besides its config.
#[derive(Default)]
pub(crate) struct RunOptions {
    /// Where a reload's config comes from. Without one (the embedded
    /// default of a pipe, a replay), SIGHUP is logged and ignored.
    pub reloader: Option<Reloader>,
    /// A source of the command's own, by name, fed to every sink whose
    /// `inputs` do not leave it out. It starts after the config's sources
    /// and no reload touches it.
    pub source: Option<(String, BuildSource)>,
}

/// How a run ended, in full, for a command that reports more than an exit
/// status.
#[derive(Debug)]
pub(crate) struct RunEnd {
    /// Why it stopped.
    pub stopped: Stopped,
    /// SIGTERM or SIGINT arrived, while running or while draining.
    pub signalled: bool,
    /// Every failure, in order; a drain cut short comes first.
    pub failures: Vec<RunError>,
}

/// Runs `config` until input ends or a signal arrives, reloading it on
/// SIGHUP and `POST /-/reload`. The first failure, if any, is the error.
pub(crate) async fn run(config: Config, options: RunOptions) -> Result<Stopped, RunError> {
    let end = run_to_end(config, options).await?;
    match end.failures.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(end.stopped),
    }
}

/// [`run`], telling every failure and whether a signal stopped it. Fails
/// only when the run cannot start.
pub(crate) async fn run_to_end(config: Config, options: RunOptions) -> Result<RunEnd, RunError> {
    let mut signals = Signals::install()?;
    let health = Arc::new(Health::default());
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(1);
    let _api = start_api(&config, &health, options.reloader.is_some().then_some(reload_tx)).await?;
    let mut topology = Topology::new(config, health.clone());
    topology.start(options.source).await?;
    health.set_started(true);
    let service_manager = ServiceManager::ready();

    let mut signalled = false;
    let stopped = loop {
        tokio::select! {
            Some(id) = topology.exits.recv() => {
                if let Some(stopped) = topology.exited(id).await {
                    break stopped;
                }
            }
            _ = signals.term.recv() => {
                signalled = true;
                break Stopped::Signal;
            }
            _ = signals.int.recv() => {
                signalled = true;
                break Stopped::Signal;
            }
            _ = signals.hangup.recv() => topology.reload(options.reloader.as_ref(), None, &service_manager).await,
            Some(request) = reload_rx.recv() => {
                topology.reload(options.reloader.as_ref(), Some(request.reply), &service_manager).await;
            }
        }
        if topology.sources.is_empty() {
            // A reload replaced every source and none of them started.
            break Stopped::Signal;
        }
    };
    health.set_started(false);
    service_manager.stopping();
    tracing::info!(reason = stopped.as_str(), "stopping: draining queues and flushing sinks");
    signalled |= topology.stop(stopped, &mut signals).await;
    Ok(RunEnd {
        stopped,
        signalled,
        failures: topology.failures,
    })
}

impl Stopped {
    fn as_str(self) -> &'static str {
        match self {
            Stopped::InputEnded => "input ended",
            Stopped::Signal => "signal",
        }
    }
}

async fn start_api(
    config: &Config,
    health: &Arc<Health>,
    reload: Option<mpsc::Sender<ReloadRequest>>,
) -> Result<Option<telemetry::ApiHandle>, RunError> {
    if !config.api.enabled {
        return Ok(None);
    }
    match telemetry::serve(config.api.address, health.clone(), reload).await {
        Ok(h) => {
            tracing::info!(address = %h.local_addr, "serving /metrics, /health and /ready");
            Ok(Some(h))
        }
        Err(error) if config.api_address_explicit => Err(RunError::Api {
            addr: config.api.address,
            error,
        }),
        Err(error) => {
            tracing::warn!(address = %config.api.address, %error, "API address unavailable; running without /metrics (set api.address or SLUICE_API_ADDRESS)");
            Ok(None)
        }
    }
}

/// The signals the lifecycle answers, installed once so that none is lost
/// while a reload runs.
struct Signals {
    term: Signal,
    int: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> Result<Signals, RunError> {
        let kind = |k| signal(k).map_err(RunError::Signals);
        Ok(Signals {
            term: kind(SignalKind::terminate())?,
            int: kind(SignalKind::interrupt())?,
            hangup: kind(SignalKind::hangup())?,
        })
    }

    /// Completes on SIGTERM or SIGINT.
    async fn termination(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// A started source.
struct RunningSource {
    /// Told apart from an earlier source of the same name by this.
    id: u64,
    trigger: ShutdownTrigger,
    task: JoinHandle<Result<(), SourceError>>,
    fan_out: JoinHandle<()>,
}

/// A started sink.
struct RunningSink {
    id: u64,
    /// The queue's sending end kept for the wiring: routes hold clones.
    sender: QueueSender,
    disk: Option<DiskHandle>,
    task: JoinHandle<Result<(), SinkError>>,
}

/// Sends a component's id when its task ends, even by a panic.
struct ExitNotice {
    id: u64,
    tx: mpsc::UnboundedSender<u64>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.tx.send(self.id);
    }
}

/// The live components of a config, and how they are wired.
struct Topology {
    /// What runs: updated component by component as a reload applies.
    config: Config,
    health: Arc<Health>,
    enrich: Arc<EnrichConfig>,
    taps: Vec<Arc<dyn BatchTap>>,
    /// The transforms, compiled; `None` without any.
    graph: Option<Arc<crate::transforms::graph::Graph>>,
    wiring: Arc<Wiring>,
    sources: BTreeMap<String, RunningSource>,
    sinks: BTreeMap<String, RunningSink>,
    /// Fan-outs of stopped sources that may still be queuing batches.
    retired_fan_outs: Vec<JoinHandle<()>>,
    /// Stopped sources still waiting for their last acknowledgements.
    retired_sources: Vec<(String, JoinHandle<Result<(), SourceError>>)>,
    next_id: u64,
    exits_tx: mpsc::UnboundedSender<u64>,
    exits: mpsc::UnboundedReceiver<u64>,
    /// The name of the command's own source, if it brought one.
    command_source: Option<String>,
    /// Every failure so far.
    failures: Vec<RunError>,
}

impl Topology {
    fn new(config: Config, health: Arc<Health>) -> Topology {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let fields = Arc::new(fields_for(&config, &FieldSet::new()));
        Topology {
            enrich: Arc::new(config.enrich.clone()),
            taps: crate::sli::tap(&config.sli, &config.metrics).into_iter().collect(),
            graph: build_graph(&config),
            wiring: Arc::new(Wiring::new(fields)),
            config,
            health,
            sources: BTreeMap::new(),
            sinks: BTreeMap::new(),
            retired_fan_outs: Vec::new(),
            retired_sources: Vec::new(),
            next_id: 0,
            exits_tx,
            exits,
            command_source: None,
            failures: Vec::new(),
        }
    }

    /// Starts every sink, wires them, then starts every source, the
    /// command's own last.
    async fn start(&mut self, command_source: Option<(String, BuildSource)>) -> Result<(), RunError> {
        for (name, spec) in self.config.sinks.clone() {
            self.start_sink(&name, spec).await?;
        }
        self.command_source = command_source.as_ref().map(|(name, _)| name.clone());
        {
            let mut routes = self.wiring.rewire().await;
            *routes = self.routes();
            self.wiring.set_processing(self.processing(&routes));
        }
        for (name, cfg) in self.config.sources.clone() {
            self.start_source(&name, |cx| cfg.build(cx))?;
        }
        if let Some((name, build)) = command_source {
            self.start_source(&name, build)?;
        }
        Ok(())
    }

    fn spawn<E: Send + 'static>(&mut self, task: Task<E>) -> (u64, JoinHandle<Result<(), E>>) {
        self.next_id += 1;
        let notice = ExitNotice {
            id: self.next_id,
            tx: self.exits_tx.clone(),
        };
        let handle = tokio::spawn(async move {
            let _notice = notice;
            task.await
        });
        (self.next_id, handle)
    }

    /// Opens a sink's queue (memory or disk), builds the sink on it and
    /// spawns it.
    async fn start_sink(&mut self, name: &str, spec: SinkSpec) -> Result<(), RunError> {
        let buffer_cx = BufferCx {
            data_dir: self.config.data_dir.clone(),
            fields: self.wiring.fields(),
        };
        let opened = buffer::open(name, &spec.buffer, &buffer_cx).map_err(|error| RunError::Buffer {
            sink: name.to_owned(),
            error,
        })?;
        let cx = crate::sinks::SinkCx {
            name: name.into(),
            fields: buffer_cx.fields,
            health: self.health.clone(),
            data_dir: buffer_cx.data_dir,
        };
        let task = spec.config.build(cx, opened.receiver).await?;
        metrics().component_starts.with_label_values(&[name, "sink"]).inc();
        let (id, task) = self.spawn(task);
        self.sinks.insert(
            name.to_owned(),
            RunningSink {
                id,
                // A source of both kinds (OTLP) sends this sink only the
                // kind it carries.
                sender: opened.sender.taking(|kind| spec.config.accepts(kind)),
                disk: opened.disk,
                task,
            },
        );
        Ok(())
    }

    fn start_source(&mut self, name: &str, build: impl FnOnce(SourceCx) -> Result<Task<SourceError>, SourceError>) -> Result<(), RunError> {
        let source: Arc<str> = name.into();
        let (output, fan_out) = wired_output(source.clone(), self.wiring.clone(), self.taps.clone());
        let (trigger, shutdown) = shutdown_pair();
        let cx = SourceCx {
            name: source,
            output,
            shutdown,
            enrich: self.enrich.clone(),
            data_dir: self.config.data_dir.clone(),
        };
        let task = build(cx)?;
        let (id, task) = self.spawn(task);
        metrics().component_starts.with_label_values(&[name, "source"]).inc();
        self.sources.insert(
            name.to_owned(),
            RunningSource {
                id,
                trigger,
                task,
                fan_out,
            },
        );
        Ok(())
    }

    /// Which running sinks each source of the config feeds.
    fn routes(&self) -> std::collections::HashMap<Arc<str>, Arc<[QueueSender]>> {
        self.config
            .sources
            .keys()
            .chain(&self.command_source)
            .map(|source| {
                let sinks: Vec<QueueSender> = self
                    .config
                    .sinks_for(source)
                    .filter_map(|s| self.sinks.get(s).map(|r| r.sender.clone()))
                    .collect();
                (Arc::from(source.as_str()), sinks.into())
            })
            .chain(self.config.transforms.iter().flat_map(|(name, spec)| {
                crate::transforms::graph::output_names(name, spec).into_iter().map(|output| {
                    let sinks: Vec<QueueSender> = self
                        .config
                        .sinks_taking(&output)
                        .filter_map(|s| self.sinks.get(s).map(|r| r.sender.clone()))
                        .collect();
                    (Arc::from(output.as_str()), sinks.into())
                })
            }))
            .collect()
    }

    /// The transforms each source's events go through, given the routes
    /// (only outputs some sink takes become batches).
    fn processing(
        &self,
        routes: &std::collections::HashMap<Arc<str>, Arc<[QueueSender]>>,
    ) -> std::collections::HashMap<Arc<str>, Arc<dyn Processing>> {
        let Some(graph) = &self.graph else {
            return std::collections::HashMap::new();
        };
        let consumed = routes
            .iter()
            .filter(|(_, sinks)| !sinks.is_empty())
            .map(|(k, _)| k.to_string())
            .collect();
        let sources = self.config.sources.keys().chain(&self.command_source).map(String::as_str);
        graph.plans(sources, &consumed)
    }

    fn record(&mut self, error: RunError) {
        tracing::error!(error = %error, "component failed");
        self.failures.push(error);
    }

    /// Records how a component's task ended, if badly.
    fn record_exit<E: Into<RunError>>(&mut self, kind: &'static str, name: &str, result: Result<Result<(), E>, JoinError>) {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.record(e.into()),
            Err(error) => self.record(RunError::Crashed {
                kind,
                name: name.to_owned(),
                error,
            }),
        }
    }

    /// A component's task ended on its own. Returns how the run stops, if
    /// it does: when the last source ended, or when a sink ended before its
    /// input did (it failed for good).
    async fn exited(&mut self, id: u64) -> Option<Stopped> {
        if let Some(name) = self.sources.iter().find(|(_, s)| s.id == id).map(|(n, _)| n.clone()) {
            let source = self.sources.remove(&name)?;
            let result = source.task.await;
            self.record_exit("source", &name, result);
            self.retired_fan_outs.push(source.fan_out);
            return self.sources.is_empty().then_some(Stopped::InputEnded);
        }
        if let Some(name) = self.sinks.iter().find(|(_, s)| s.id == id).map(|(n, _)| n.clone()) {
            let sink = self.sinks.remove(&name)?;
            let result = sink.task.await;
            self.record_exit("sink", &name, result);
            return Some(Stopped::Signal);
        }
        // A component a reload already stopped and waited for.
        None
    }

    /// Stops every source, drains every queue and flushes every sink. After
    /// a signal (or a failed sink) the drain is bounded by
    /// `shutdown_timeout`; at the end of input it is not (a slow reader
    /// downstream is backpressure, not a fault) until a signal bounds it. A
    /// second signal ends it at once. True when a signal arrived.
    async fn stop(&mut self, stopped: Stopped, signals: &mut Signals) -> bool {
        for s in self.sources.values() {
            s.trigger.trigger();
        }
        if stopped == Stopped::Signal {
            // What waits on disk stays there for the next run; sinks only
            // finish what they already hold.
            for s in self.sinks.values() {
                if let Some(d) = &s.disk {
                    d.stop_feeding();
                }
            }
        }
        let timeout = self.config.shutdown_timeout;
        let mut signalled = false;
        let cut_short = {
            let drain = self.drain();
            tokio::pin!(drain);
            let mut drained = false;
            if stopped == Stopped::InputEnded {
                tokio::select! {
                    _ = &mut drain => drained = true,
                    _ = signals.termination() => {
                        signalled = true;
                        tracing::warn!(timeout = ?timeout, "signal while draining: draining for at most shutdown_timeout");
                    }
                }
            }
            if drained {
                None
            } else {
                tokio::select! {
                    _ = &mut drain => None,
                    _ = tokio::time::sleep(timeout) => Some(RunError::ShutdownTimeout(timeout)),
                    _ = signals.termination() => {
                        signalled = true;
                        tracing::warn!("second signal: exiting without draining");
                        Some(RunError::ShutdownTimeout(Duration::ZERO))
                    }
                }
            }
        };
        if let Some(e) = cut_short {
            // What the run ended with: reported before any failure.
            self.failures.insert(0, e);
        }
        signalled
    }

    async fn drain(&mut self) {
        // Sources let go of their output before they wait for their last
        // acknowledgements, and some sinks acknowledge only when their
        // input ends (S3 uploads its open objects then): so the queues
        // close once the fan-outs are done, and the sources are waited for
        // after the sinks.
        let sources = std::mem::take(&mut self.sources);
        for s in sources.values() {
            s.trigger.trigger();
        }
        let mut tasks = Vec::new();
        for (name, s) in sources {
            let _ = s.fan_out.await;
            tasks.push((name, s.task));
        }
        for f in std::mem::take(&mut self.retired_fan_outs) {
            let _ = f.await;
        }
        // Every fan-out is done: the routes hold the last senders, and
        // dropping them closes the queues, so the sinks drain and exit.
        self.wiring.rewire().await.clear();
        let names: Vec<String> = self.sinks.keys().cloned().collect();
        for name in names {
            self.stop_sink(&name, false).await;
        }
        for (name, task) in tasks.into_iter().chain(std::mem::take(&mut self.retired_sources)) {
            let result = task.await;
            self.record_exit("source", &name, result);
        }
    }

    /// Stops a source and waits until its last batch is queued, then (at
    /// most `shutdown_timeout`) until it has ended, its final checkpoint
    /// written. A source still waiting for acknowledgements then (a sink
    /// holding its batches for a while) ends on its own later; it is
    /// waited for at shutdown.
    async fn stop_source(&mut self, name: &str) {
        let Some(source) = self.sources.remove(name) else { return };
        source.trigger.trigger();
        let _ = source.fan_out.await;
        let mut task = source.task;
        match tokio::time::timeout(self.config.shutdown_timeout, &mut task).await {
            Ok(result) => self.record_exit("source", name, result),
            Err(_) => {
                tracing::warn!(source = %name, "the stopped source still waits for acknowledgements; it ends when its sinks deliver");
                self.retired_sources.push((name.to_owned(), task));
            }
        }
    }

    /// Waits for a sink whose queue is closing to deliver what it holds and
    /// exit. With `keep_on_disk`, a disk buffer stops feeding it: what is
    /// still on disk waits there for the sink that replaces it.
    async fn stop_sink(&mut self, name: &str, keep_on_disk: bool) {
        let Some(sink) = self.sinks.remove(name) else { return };
        if keep_on_disk {
            if let Some(d) = &sink.disk {
                d.stop_feeding();
            }
        }
        drop(sink.sender);
        let result = sink.task.await;
        self.record_exit("sink", name, result);
        if let Some(d) = sink.disk {
            d.closed().await;
        }
    }

    /// Re-reads the config and applies it, or keeps the running one and
    /// says why. Answers `reply` (a `POST /-/reload`) either way.
    async fn reload(&mut self, reloader: Option<&Reloader>, reply: Option<oneshot::Sender<ReloadReply>>, manager: &ServiceManager) {
        if reloader.is_some() {
            manager.reloading();
        }
        let answer = match reloader {
            None => {
                tracing::info!(
                    "reload asked for, but this run has no config file to re-read (the embedded default, or a replay): ignoring it"
                );
                ReloadReply {
                    applied: false,
                    message: "no config file to reload".into(),
                }
            }
            Some(reloader) => match reloader().and_then(|new| self.check(new)) {
                Err(errors) => {
                    metrics().config_reloads.with_label_values(&["rejected"]).inc();
                    for e in &errors.0 {
                        tracing::error!(path = %e.path, error = %e.message, "config reload rejected; the running config stays");
                    }
                    ReloadReply {
                        applied: false,
                        message: format!("config reload rejected; the running config stays:\n{errors}"),
                    }
                }
                Ok((new, diff)) => self.apply(new, diff).await,
            },
        };
        if reloader.is_some() {
            manager.reloaded();
        }
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    }

    fn check(&self, new: Config) -> Result<(Config, Diff), ConfigErrors> {
        let problems = needs_restart(&self.config, &new);
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        let diff = Diff::between(&self.config, &new);
        Ok((new, diff))
    }

    /// Applies a validated config. Sources that stop go first, so their
    /// last batches reach the old sinks; then the fan-outs pause between
    /// batches while changed sinks drain and are replaced; then sources
    /// start. Unchanged components are not touched, and the fan-outs are
    /// not paused at all when no route changes.
    async fn apply(&mut self, new: Config, diff: Diff) -> ReloadReply {
        self.config.shutdown_timeout = new.shutdown_timeout;
        if diff.rewires_nothing() {
            metrics().config_reloads.with_label_values(&["applied"]).inc();
            let message = diff.summary();
            tracing::info!("{message}");
            return ReloadReply { applied: true, message };
        }
        self.enrich = Arc::new(new.enrich.clone());
        self.config.enrich = new.enrich.clone();
        for name in diff.sources_removed.iter().chain(&diff.sources_changed) {
            self.stop_source(name).await;
            self.config.sources.remove(name);
        }
        for f in std::mem::take(&mut self.retired_fan_outs) {
            let _ = f.await;
        }

        let mut failures = Vec::new();
        {
            // Fan-outs wait between batches from here until the new routes
            // are in place: sources back up, nothing is lost.
            let wiring = self.wiring.clone();
            let mut routes = wiring.rewire().await;
            routes.clear();
            let current = self.wiring.fields();
            let grown = fields_for(&new, &current);
            if grown.len() != current.len() {
                self.wiring.set_fields(Arc::new(grown));
            }
            for name in diff.sinks_removed.iter().chain(&diff.sinks_changed) {
                self.stop_sink(name, true).await;
                self.config.sinks.remove(name);
            }
            for name in diff.sinks_changed.iter().chain(&diff.sinks_added) {
                let Some(spec) = new.sinks.get(name) else { continue };
                match self.start_sink(name, spec.clone()).await {
                    Ok(()) => {
                        self.config.sinks.insert(name.clone(), spec.clone());
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            // Inputs may have changed for sinks that kept running.
            for (name, spec) in &new.sinks {
                if let Some(running) = self.config.sinks.get_mut(name) {
                    running.inputs = spec.inputs.clone();
                }
            }
            for name in diff.sources_changed.iter().chain(&diff.sources_added) {
                if let Some(cfg) = new.sources.get(name) {
                    self.config.sources.insert(name.clone(), cfg.clone());
                }
            }
            if !diff.transforms_changed.is_empty() {
                // Replaced like a changed sink: batches already judged by
                // the old transforms are judged again by the new ones as
                // they leave (their old outputs may be gone).
                self.config.transforms = new.transforms.clone();
                self.graph = build_graph(&self.config);
            }
            *routes = self.routes();
            self.wiring.set_processing(self.processing(&routes));
        }
        for name in diff.sources_changed.iter().chain(&diff.sources_added) {
            let Some(cfg) = new.sources.get(name) else { continue };
            if let Err(e) = self.start_source(name, |cx| cfg.build(cx)) {
                self.config.sources.remove(name);
                failures.push(e.to_string());
            }
        }

        let message = diff.summary();
        if failures.is_empty() {
            metrics().config_reloads.with_label_values(&["applied"]).inc();
            tracing::info!("{message}");
            ReloadReply { applied: true, message }
        } else {
            metrics().config_reloads.with_label_values(&["failed"]).inc();
            for f in &failures {
                tracing::error!(error = %f, "config reload: a component did not start");
            }
            ReloadReply {
                applied: false,
                message: format!("{message}\nbut these did not start:\n{}", failures.join("\n")),
            }
        }
    }
}

/// The config's transforms, compiled, if it has any.
fn build_graph(config: &Config) -> Option<Arc<crate::transforms::graph::Graph>> {
    (!config.transforms.is_empty()).then(|| Arc::new(crate::transforms::graph::Graph::build(&config.transforms)))
}

/// `base` with every field the config's sinks read appended: a reload only
/// adds fields, so the indexes running sinks looked up stay valid.
fn fields_for(config: &Config, base: &FieldSet) -> FieldSet {
    let mut fields = base.clone();
    for spec in config.sinks.values() {
        for p in spec.config.fields_needed() {
            fields.add(p);
        }
    }
    fields
}
