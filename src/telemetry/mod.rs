//! Self-observability: fixed metric names every component reports under,
//! and the HTTP endpoints that serve them.

mod http;
pub(crate) mod systemd;
pub(crate) mod tap;

pub use http::Health;
pub(crate) use http::{serve, serve_http, ApiHandle, ReloadReply, ReloadRequest};

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::sync::OnceLock;

/// Every self-metric sluice exposes. Names are stable: dashboards and
/// alerts rely on them.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// The registry `/metrics` encodes.
    pub(crate) registry: Registry,
    /// `sluice_source_events_total{source}`: events a source produced.
    pub(crate) source_events: IntCounterVec,
    /// `sluice_source_bytes_total{source}`: line bytes a source read.
    pub(crate) source_bytes: IntCounterVec,
    /// `sluice_events_wrapped_total{source,reason}`: lines kept as
    /// `{"message":…}` (`not_json`, `invalid_utf8`).
    pub(crate) events_wrapped: IntCounterVec,
    /// `sluice_lines_truncated_total{source}`: lines cut at `max_line_bytes`.
    pub(crate) lines_truncated: IntCounterVec,
    /// `sluice_events_dropped_total{component,reason}`: events not
    /// delivered, by reason (`line_too_long`, `queue_full`, `rejected`).
    pub(crate) events_dropped: IntCounterVec,
    /// `sluice_sink_events_total{sink}`: events a sink delivered.
    pub(crate) sink_events: IntCounterVec,
    /// `sluice_sink_bytes_total{sink}`: bytes a sink delivered (before
    /// compression).
    pub(crate) sink_bytes: IntCounterVec,
    /// `sluice_sink_errors_total{sink,kind}`: failed delivery attempts.
    pub(crate) sink_errors: IntCounterVec,
    /// `sluice_sink_retries_total{sink}`: retried requests.
    pub(crate) sink_retries: IntCounterVec,
    /// `sluice_sink_request_duration_seconds{sink}`: one delivery request.
    pub(crate) sink_request_duration: HistogramVec,
    /// `sluice_buffer_events{sink}`: events queued or in flight for a sink.
    pub(crate) buffer_events: IntGaugeVec,
    /// `sluice_buffer_received_events_total{sink}`: events a sink's buffer
    /// took in (memory: queued; disk: written). The gap between two sinks
    /// is what one has and the other has not taken yet: while it lasts the
    /// sources' checkpoints wait for the slower one.
    pub(crate) buffer_received_events: IntCounterVec,
    /// `sluice_buffer_bytes{sink}`: memory of the batches queued or in flight
    /// for a sink (event bytes, their ends and extracted values).
    pub(crate) buffer_bytes: IntGaugeVec,
    /// `sluice_buffer_max_bytes{sink}`: the configured budget.
    pub(crate) buffer_max_bytes: IntGaugeVec,
    /// `sluice_buffer_corrupt_records_total{sink}`: disk buffer records
    /// (or damaged segment tails) skipped because they failed their check.
    pub(crate) buffer_corrupt_records: IntCounterVec,
    /// `sluice_buffer_corrupt_files_total{sink}`: damaged disk buffer
    /// `acked` files set aside at start.
    pub(crate) buffer_corrupt_files: IntCounterVec,
    /// `sluice_buffer_errors_total{sink,kind}`: disk buffer I/O failures
    /// (`write`, `read`, `delete`, `checkpoint`).
    pub(crate) buffer_errors: IntCounterVec,
    /// `sluice_batch_events`: events per batch, to see batching at work.
    pub(crate) batch_events: Histogram,
    /// `sluice_build_info{version}`: always 1.
    pub(crate) build_info: IntGaugeVec,
    /// `sluice_ready`: 1 while `/ready` answers 200.
    pub(crate) ready: IntGauge,
    /// `sluice_config_reloads_total{outcome}`: reloads asked for by SIGHUP
    /// or `POST /-/reload`: `applied`, `rejected` (invalid config, or a
    /// change that needs a restart), `failed` (a new component did not
    /// start; the old one runs on).
    pub(crate) config_reloads: IntCounterVec,
    /// `sluice_component_starts_total{component,kind}`: times a source or
    /// sink was started (once at start-up, again when a reload replaced it).
    pub(crate) component_starts: IntCounterVec,
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name, help, labels: &[&str]| new_counter_vec(&registry, name, help, labels);
        let gauge = |name, help, labels: &[&str]| new_gauge_vec(&registry, name, help, labels);
        let m = Metrics {
            source_events: counter("sluice_source_events_total", "Events produced by a source.", &["source"]),
            source_bytes: counter("sluice_source_bytes_total", "Line bytes read by a source.", &["source"]),
            events_wrapped: counter(
                "sluice_events_wrapped_total",
                "Lines that were not a JSON object and were kept as {\"message\":...}.",
                &["source", "reason"],
            ),
            lines_truncated: counter("sluice_lines_truncated_total", "Lines cut at max_line_bytes.", &["source"]),
            events_dropped: counter(
                "sluice_events_dropped_total",
                "Events not delivered, by component and reason.",
                &["component", "reason"],
            ),
            sink_events: counter("sluice_sink_events_total", "Events delivered by a sink.", &["sink"]),
            sink_bytes: counter(
                "sluice_sink_bytes_total",
                "Bytes of events delivered by a sink, before compression.",
                &["sink"],
            ),
            sink_errors: counter("sluice_sink_errors_total", "Failed delivery attempts, by kind.", &["sink", "kind"]),
            sink_retries: counter("sluice_sink_retries_total", "Delivery requests that were retried.", &["sink"]),
            sink_request_duration: add(
                &registry,
                "sluice_sink_request_duration_seconds",
                HistogramVec::new(
                    HistogramOpts::new("sluice_sink_request_duration_seconds", "Duration of one delivery request.")
                        .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                    &["sink"],
                ),
            ),
            buffer_events: gauge("sluice_buffer_events", "Events queued or in flight for a sink.", &["sink"]),
            buffer_received_events: counter(
                "sluice_buffer_received_events_total",
                "Events a sink's buffer took in (memory: queued; disk: written).",
                &["sink"],
            ),
            buffer_bytes: gauge(
                "sluice_buffer_bytes",
                "Memory of the batches queued or in flight for a sink, in bytes.",
                &["sink"],
            ),
            buffer_max_bytes: gauge("sluice_buffer_max_bytes", "Configured queue budget of a sink in bytes.", &["sink"]),
            buffer_corrupt_records: counter(
                "sluice_buffer_corrupt_records_total",
                "Disk buffer records skipped because they failed their length or CRC check.",
                &["sink"],
            ),
            buffer_corrupt_files: counter(
                "sluice_buffer_corrupt_files_total",
                "Damaged disk buffer acknowledgement files set aside at start (their records are replayed).",
                &["sink"],
            ),
            buffer_errors: counter(
                "sluice_buffer_errors_total",
                "Disk buffer I/O failures, by kind.",
                &["sink", "kind"],
            ),
            batch_events: add(
                &registry,
                "sluice_batch_events",
                Histogram::with_opts(
                    HistogramOpts::new("sluice_batch_events", "Events per batch leaving the decoder.")
                        .buckets(vec![1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0]),
                ),
            ),
            build_info: gauge("sluice_build_info", "Build information; always 1.", &["version"]),
            ready: add(
                &registry,
                "sluice_ready",
                IntGauge::new("sluice_ready", "1 while the pipeline is ready."),
            ),
            config_reloads: counter("sluice_config_reloads_total", "Config reloads, by outcome.", &["outcome"]),
            component_starts: counter(
                "sluice_component_starts_total",
                "Times a source or sink was started.",
                &["component", "kind"],
            ),
            registry,
        };
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes, open fds.
        install(
            &m.registry,
            "process_*",
            prometheus::process_collector::ProcessCollector::for_self(),
        );
        m
    }

    /// The registry as Prometheus text.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// The process-wide metrics.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

// The one way a metric is registered. A component's metrics are created
// once (a `OnceLock` in the component) with these functions, under fixed
// `&'static str` names, on the process-wide registry `/metrics` encodes.

/// `IntCounterVec` `name{labels}`, registered on the process-wide registry.
pub(crate) fn counter_vec(name: &'static str, help: &'static str, labels: &[&str]) -> IntCounterVec {
    new_counter_vec(&metrics().registry, name, help, labels)
}

/// `IntGaugeVec` `name{labels}`, registered on the process-wide registry.
pub(crate) fn gauge_vec(name: &'static str, help: &'static str, labels: &[&str]) -> IntGaugeVec {
    new_gauge_vec(&metrics().registry, name, help, labels)
}

/// A collector of its own (one that renders families itself, like the SLI
/// taps), registered on the process-wide registry; `name` is for the log.
pub(crate) fn register(name: &'static str, collector: impl Collector + 'static) {
    install(&metrics().registry, name, collector);
}

fn new_counter_vec(registry: &Registry, name: &'static str, help: &'static str, labels: &[&str]) -> IntCounterVec {
    add(registry, name, IntCounterVec::new(Opts::new(name, help), labels))
}

fn new_gauge_vec(registry: &Registry, name: &'static str, help: &'static str, labels: &[&str]) -> IntGaugeVec {
    add(registry, name, IntGaugeVec::new(Opts::new(name, help), labels))
}

/// Registers `made` on `registry` and hands it back. Building fails only
/// for a name, help or label that is not valid Prometheus: they are
/// constants, so that is a bug every test touching the metric finds.
/// Registering fails only for a name taken twice: that is logged, and the
/// metric still works, missing from `/metrics`.
fn add<C: Collector + Clone + 'static>(registry: &Registry, name: &'static str, made: Result<C, prometheus::Error>) -> C {
    let metric = made.unwrap_or_else(|e| panic!("metric {name} is not a valid definition: {e}"));
    install(registry, name, metric.clone());
    metric
}

fn install(registry: &Registry, name: &'static str, collector: impl Collector + 'static) {
    if let Err(error) = registry.register(Box::new(collector)) {
        tracing::error!(metric = name, %error, "cannot register a metric; it will be missing from /metrics");
    }
}
