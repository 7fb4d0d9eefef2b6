//! Self-metrics of the socket source, registered on the global registry
//! the first time a socket source starts.

use prometheus::{IntCounterVec, IntGaugeVec};
use std::sync::OnceLock;

use crate::telemetry::{counter_vec, gauge_vec};

/// The socket source's metrics. Names are stable.
#[derive(Debug)]
pub(crate) struct SocketMetrics {
    /// `sluice_source_connections{source}`: open connections.
    pub(crate) connections: IntGaugeVec,
    /// `sluice_source_connections_total{source}`: accepted connections.
    pub(crate) accepted: IntCounterVec,
    /// `sluice_source_connections_refused_total{source,reason}`: connections
    /// closed at once (`limit`: past `max_connections`; `tls`: the TLS
    /// handshake failed or timed out).
    pub(crate) refused: IntCounterVec,
    /// `sluice_syslog_malformed_total{source}`: lines that were not syslog,
    /// kept as plain messages.
    pub(crate) syslog_malformed: IntCounterVec,
}

/// The socket metrics, registered once.
pub(crate) fn socket_metrics() -> &'static SocketMetrics {
    static METRICS: OnceLock<SocketMetrics> = OnceLock::new();
    METRICS.get_or_init(|| SocketMetrics {
        connections: gauge_vec("sluice_source_connections", "Open connections of a socket source.", &["source"]),
        accepted: counter_vec(
            "sluice_source_connections_total",
            "Connections a socket source accepted.",
            &["source"],
        ),
        refused: counter_vec(
            "sluice_source_connections_refused_total",
            "Connections a socket source closed at once, by reason (limit, tls).",
            &["source", "reason"],
        ),
        syslog_malformed: counter_vec(
            "sluice_syslog_malformed_total",
            "Lines that were not syslog and were kept as plain messages.",
            &["source"],
        ),
    })
}
