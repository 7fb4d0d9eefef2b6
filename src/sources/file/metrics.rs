//! Self-metrics of the file source, registered once on the global registry
//! under fixed `sluice_file_*` and `sluice_kubernetes_*` names. Updated per
//! read turn or batch, never per event. No per-path label unless
//! `metrics_per_file` is set, and then only on the two per-path series.

use prometheus::{IntCounterVec, IntGaugeVec};
use std::sync::OnceLock;

use crate::telemetry::{counter_vec, gauge_vec};

/// The file source's metrics.
#[derive(Debug)]
pub(crate) struct FileMetrics {
    /// `sluice_file_open_files{source}`.
    pub(crate) open_files: IntGaugeVec,
    /// `sluice_file_waiting_files{source}`: found but not opened (cap).
    pub(crate) waiting_files: IntGaugeVec,
    /// `sluice_file_bytes_read_total{source}`.
    pub(crate) bytes_read: IntCounterVec,
    /// `sluice_file_checkpoint_lag_bytes{source}`: read, not yet acknowledged.
    pub(crate) lag_bytes: IntGaugeVec,
    /// `sluice_file_rotations_total{source,kind}`: `rename`, `truncate`,
    /// `delete`, `unseen`.
    pub(crate) rotations: IntCounterVec,
    /// `sluice_file_truncations_total{source}`: files that shrank below the
    /// read offset, or changed before it (copytruncate).
    pub(crate) truncations: IntCounterVec,
    /// `sluice_file_partial_merges_total{source}`: lines assembled from pieces.
    pub(crate) partial_merges: IntCounterVec,
    /// `sluice_file_partial_overflows_total{source,reason}`: assembled lines
    /// cut at `partial_max_bytes` (`cap`) or sent alone after
    /// `partial_timeout` (`timeout`).
    pub(crate) partial_overflows: IntCounterVec,
    /// `sluice_file_checkpoint_writes_total{source}`.
    pub(crate) checkpoint_writes: IntCounterVec,
    /// `sluice_file_checkpoint_errors_total{source,kind}`: `write`, `corrupt`.
    pub(crate) checkpoint_errors: IntCounterVec,
    /// `sluice_file_copy_resumed_total{source}`: rotated copies or renamed
    /// files found by fingerprint and finished.
    pub(crate) resumed: IntCounterVec,
    /// `sluice_file_path_bytes_read_total{source,path}` (`metrics_per_file`).
    pub(crate) path_bytes_read: IntCounterVec,
    /// `sluice_file_path_lag_bytes{source,path}` (`metrics_per_file`).
    pub(crate) path_lag_bytes: IntGaugeVec,
    /// `sluice_kubernetes_pods{source}`: pods in the metadata cache.
    pub(crate) kube_pods: IntGaugeVec,
    /// `sluice_kubernetes_api_errors_total{source}`.
    pub(crate) kube_api_errors: IntCounterVec,
    /// `sluice_kubernetes_watch_restarts_total{source}`.
    pub(crate) kube_watch_restarts: IntCounterVec,
}

impl FileMetrics {
    /// The metrics, registered on first use.
    pub(crate) fn get() -> &'static FileMetrics {
        static M: OnceLock<FileMetrics> = OnceLock::new();
        M.get_or_init(FileMetrics::register)
    }

    fn register() -> FileMetrics {
        FileMetrics {
            open_files: gauge_vec("sluice_file_open_files", "Files the file source holds open.", &["source"]),
            waiting_files: gauge_vec(
                "sluice_file_waiting_files",
                "Files found but waiting for a slot under max_open_files.",
                &["source"],
            ),
            bytes_read: counter_vec("sluice_file_bytes_read_total", "Bytes read from files.", &["source"]),
            lag_bytes: gauge_vec(
                "sluice_file_checkpoint_lag_bytes",
                "Bytes read but not yet acknowledged by every sink.",
                &["source"],
            ),
            rotations: counter_vec("sluice_file_rotations_total", "Rotations seen, by kind.", &["source", "kind"]),
            truncations: counter_vec(
                "sluice_file_truncations_total",
                "Files that shrank below the read offset, or changed before it (copytruncate).",
                &["source"],
            ),
            partial_merges: counter_vec(
                "sluice_file_partial_merges_total",
                "Container log lines assembled from partial pieces.",
                &["source"],
            ),
            partial_overflows: counter_vec(
                "sluice_file_partial_overflows_total",
                "Partial lines cut at partial_max_bytes or sent alone after partial_timeout.",
                &["source", "reason"],
            ),
            checkpoint_writes: counter_vec("sluice_file_checkpoint_writes_total", "Checkpoint files written.", &["source"]),
            checkpoint_errors: counter_vec(
                "sluice_file_checkpoint_errors_total",
                "Checkpoint files that could not be written or were corrupt.",
                &["source", "kind"],
            ),
            resumed: counter_vec(
                "sluice_file_resumed_total",
                "Rotated or copied files found by fingerprint and finished from a checkpoint.",
                &["source"],
            ),
            path_bytes_read: counter_vec(
                "sluice_file_path_bytes_read_total",
                "Bytes read per file (only with metrics_per_file).",
                &["source", "path"],
            ),
            path_lag_bytes: gauge_vec(
                "sluice_file_path_lag_bytes",
                "Bytes read but not yet acknowledged, per file (only with metrics_per_file).",
                &["source", "path"],
            ),
            kube_pods: gauge_vec("sluice_kubernetes_pods", "Pods in the Kubernetes metadata cache.", &["source"]),
            kube_api_errors: counter_vec(
                "sluice_kubernetes_api_errors_total",
                "Failed list or watch requests to the API server.",
                &["source"],
            ),
            kube_watch_restarts: counter_vec(
                "sluice_kubernetes_watch_restarts_total",
                "Pod watches that ended and were started again.",
                &["source"],
            ),
        }
    }
}
