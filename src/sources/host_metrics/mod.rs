//! `type = "host_metrics"`: the node's CPU, memory, load, disk I/O,
//! filesystems and network, read from `/proc` and `statfs` every
//! `interval` and sent as one metric batch, with node_exporter's metric
//! names, labels and units (`node_cpu_seconds_total{cpu,mode}`,
//! `node_filesystem_avail_bytes{device,fstype,mountpoint}`, …) so the
//! dashboards and alerts written for node_exporter work unchanged.
//!
//! Counters are the kernel's running totals (as node_exporter reports
//! them); gauges are the current values. Series are fixed by the host's
//! devices and mounts, so no aggregation or series limit is needed. A line
//! of a `/proc` file that cannot be read is skipped and counted in
//! `sluice_metric_lines_invalid_total{source,reason="<file>"}`.

mod procfs;

use regex::Regex;
use serde::Deserialize;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use self::procfs::{Emit, Kind, Mount};
use super::internal_metrics::every_interval;
use super::{SourceComponent, SourceCx, SourceError};
use crate::config::{duration, ConfigError, Validate};
use crate::enrich::{Fragment, SourceContext};
use crate::event::{BatchBuilder, EventKind, FieldSet};
use crate::metrics::sample::{write_sample, SampleValue};
use crate::metrics::source_metrics;
use crate::pipeline::Task;

/// node_exporter's default `--collector.diskstats.device-exclude`: disk
/// partitions, ram, zram, loop and floppy devices.
pub(crate) const DEFAULT_DISK_DEVICES_EXCLUDE: &str = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$";
/// node_exporter's default `--collector.filesystem.mount-points-exclude`.
pub(crate) const DEFAULT_MOUNT_POINTS_EXCLUDE: &str =
    r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)";
/// node_exporter's default `--collector.filesystem.fs-types-exclude`:
/// pseudo and read-only image filesystems.
pub(crate) const DEFAULT_FS_TYPES_EXCLUDE: &str = "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$";

/// What can be collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Collector {
    /// `/proc/stat`: `node_cpu_seconds_total`, `node_cpu_guest_seconds_total`.
    Cpu,
    /// `/proc/meminfo`: `node_memory_*`.
    Memory,
    /// `/proc/loadavg`: `node_load1`, `node_load5`, `node_load15`.
    Load,
    /// `/proc/diskstats`: `node_disk_*`.
    Disk,
    /// `/proc/1/mounts` and `statfs`: `node_filesystem_*`.
    Filesystem,
    /// `/proc/net/dev`: `node_network_*`.
    Network,
}

const ALL_COLLECTORS: [Collector; 6] = [
    Collector::Cpu,
    Collector::Memory,
    Collector::Load,
    Collector::Disk,
    Collector::Filesystem,
    Collector::Network,
];

/// Settings of the host metrics source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostMetricsConfig {
    /// How often the host is read.
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub(crate) interval: Duration,
    /// What is read; all when not set.
    #[serde(default = "default_collectors")]
    pub(crate) collectors: Vec<Collector>,
    /// The host's root as this process sees it: `/proc` is read at
    /// `<root>/proc`, filesystems are measured at `<root>/<mountpoint>`
    /// (`/host` in a container with the host's `/` mounted there).
    #[serde(default = "default_root")]
    pub(crate) root: PathBuf,
    /// Disk devices left out (regular expression on the device name).
    #[serde(default = "default_disk_exclude")]
    pub(crate) disk_devices_exclude: String,
    /// Network devices left out (regular expression); none by default, as
    /// node_exporter.
    #[serde(default)]
    pub(crate) network_devices_exclude: Option<String>,
    /// Mount points left out (regular expression).
    #[serde(default = "default_mount_exclude")]
    pub(crate) mount_points_exclude: String,
    /// Filesystem types left out (regular expression).
    #[serde(default = "default_fs_exclude")]
    pub(crate) fs_types_exclude: String,
}

fn default_interval() -> Duration {
    Duration::from_secs(15)
}
fn default_collectors() -> Vec<Collector> {
    ALL_COLLECTORS.to_vec()
}
fn default_root() -> PathBuf {
    PathBuf::from("/")
}
fn default_disk_exclude() -> String {
    DEFAULT_DISK_DEVICES_EXCLUDE.to_owned()
}
fn default_mount_exclude() -> String {
    DEFAULT_MOUNT_POINTS_EXCLUDE.to_owned()
}
fn default_fs_exclude() -> String {
    DEFAULT_FS_TYPES_EXCLUDE.to_owned()
}

impl Validate for HostMetricsConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.interval < Duration::from_millis(100) {
            errors.push(ConfigError::at(path, "interval", "must be at least 100ms"));
        }
        if self.collectors.is_empty() {
            errors.push(ConfigError::at(path, "collectors", "names nothing to collect"));
        }
        if !self.root.is_absolute() {
            errors.push(ConfigError::at(path, "root", "must be an absolute path"));
        }
        let patterns = [
            ("disk_devices_exclude", Some(&self.disk_devices_exclude)),
            ("network_devices_exclude", self.network_devices_exclude.as_ref()),
            ("mount_points_exclude", Some(&self.mount_points_exclude)),
            ("fs_types_exclude", Some(&self.fs_types_exclude)),
        ];
        for (key, pattern) in patterns {
            if let Some(Err(e)) = pattern.map(|p| Regex::new(p)) {
                errors.push(ConfigError::at(path, key, format!("not a regular expression: {e}")));
            }
        }
    }
}

/// The settings, compiled (patterns checked by validation).
#[derive(Debug)]
struct Plan {
    collectors: Vec<Collector>,
    proc: PathBuf,
    root: PathBuf,
    disk_exclude: Option<Regex>,
    network_exclude: Option<Regex>,
    mount_exclude: Option<Regex>,
    fs_exclude: Option<Regex>,
}

impl HostMetricsConfig {
    fn plan(&self) -> Plan {
        // Validation has refused patterns that do not compile.
        let compile = |p: &str| Regex::new(p).ok();
        Plan {
            collectors: self.collectors.clone(),
            proc: self.root.join("proc"),
            root: self.root.clone(),
            disk_exclude: compile(&self.disk_devices_exclude),
            network_exclude: self.network_devices_exclude.as_deref().and_then(compile),
            mount_exclude: compile(&self.mount_points_exclude),
            fs_exclude: compile(&self.fs_types_exclude),
        }
    }
}

impl SourceComponent for HostMetricsConfig {
    /// Metric samples.
    fn produces(&self) -> EventKind {
        EventKind::Metric
    }

    fn build(&self, cx: SourceCx) -> Result<Task<SourceError>, SourceError> {
        let plan = Arc::new(self.plan());
        Ok(every_interval(cx, "host_metrics", self.interval, move |context| {
            // File reads and statfs block (statfs on a dead network mount
            // for long): off the runtime.
            let plan = plan.clone();
            async move { tokio::task::spawn_blocking(move || collect(&plan, &context)).await.ok() }
        }))
    }
}

/// Writes each sample into a batch being built.
struct BatchEmit<'a> {
    out: BatchBuilder,
    timestamp_ms: i64,
    metadata: &'a Fragment,
    source: &'a str,
}

impl Emit for BatchEmit<'_> {
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], kind: Kind, value: f64) {
        let value = match kind {
            Kind::Counter => SampleValue::Counter(value),
            Kind::Gauge => SampleValue::Gauge(value),
        };
        write_sample(
            self.out.buffer(),
            name,
            labels.iter().copied(),
            self.timestamp_ms,
            &value,
            self.metadata,
        );
        self.out.finish_event();
    }

    fn invalid(&mut self, file: &'static str) {
        source_metrics().invalid.with_label_values(&[self.source, file]).inc();
    }
}

/// Reads every collector of `plan` once into a batch builder.
fn collect(plan: &Plan, context: &SourceContext) -> BatchBuilder {
    let timestamp_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let mut emit = BatchEmit {
        out: BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 64 * 1024, 512),
        timestamp_ms,
        metadata: &context.fragment,
        source: &context.source,
    };
    let excluded = |re: &Option<Regex>, s: &str| re.as_ref().is_some_and(|r| r.is_match(s));
    for c in &plan.collectors {
        match c {
            Collector::Cpu => read(&plan.proc, "stat", &mut emit, procfs::stat),
            Collector::Memory => read(&plan.proc, "meminfo", &mut emit, procfs::meminfo),
            Collector::Load => read(&plan.proc, "loadavg", &mut emit, procfs::loadavg),
            Collector::Disk => read(&plan.proc, "diskstats", &mut emit, |text, out| {
                procfs::diskstats(text, |d| !excluded(&plan.disk_exclude, d), out)
            }),
            Collector::Network => read(&plan.proc, "net/dev", &mut emit, |text, out| {
                procfs::net_dev(text, |d| !excluded(&plan.network_exclude, d), out)
            }),
            Collector::Filesystem => {
                // As node_exporter: the mounts of pid 1 (the host's, given
                // the host's /proc), this process's when pid 1 is hidden.
                let text =
                    std::fs::read_to_string(plan.proc.join("1/mounts")).or_else(|_| std::fs::read_to_string(plan.proc.join("self/mounts")));
                let Ok(text) = text else {
                    emit.invalid("unreadable");
                    continue;
                };
                for m in procfs::mounts(&text, &mut emit) {
                    if excluded(&plan.mount_exclude, &m.mountpoint) || excluded(&plan.fs_exclude, &m.fstype) {
                        continue;
                    }
                    filesystem(&plan.root, &m, &mut emit);
                }
            }
        }
    }
    emit.out
}

/// Reads `<proc>/<file>` and parses it; an unreadable file is counted.
fn read<E: Emit>(proc: &Path, file: &str, emit: &mut E, parse: impl FnOnce(&str, &mut E)) {
    match std::fs::read_to_string(proc.join(file)) {
        Ok(text) => parse(&text, emit),
        Err(_) => emit.invalid("unreadable"),
    }
}

/// `node_filesystem_*{device,fstype,mountpoint}` of one mount, measured by
/// `statfs` at `<root>/<mountpoint>`. A mount that cannot be measured only
/// gets `node_filesystem_device_error 1` (and `readonly`), as with
/// node_exporter.
fn filesystem(root: &Path, m: &Mount, emit: &mut impl Emit) {
    let labels = [
        ("device", m.device.as_str()),
        ("fstype", m.fstype.as_str()),
        ("mountpoint", m.mountpoint.as_str()),
    ];
    let target = root.join(m.mountpoint.trim_start_matches('/'));
    emit.sample("node_filesystem_readonly", &labels, Kind::Gauge, f64::from(u8::from(m.read_only)));
    let Some(s) = statfs(&target) else {
        emit.sample("node_filesystem_device_error", &labels, Kind::Gauge, 1.0);
        return;
    };
    emit.sample("node_filesystem_device_error", &labels, Kind::Gauge, 0.0);
    let bsize = s.f_bsize as f64;
    emit.sample("node_filesystem_size_bytes", &labels, Kind::Gauge, s.f_blocks as f64 * bsize);
    emit.sample("node_filesystem_free_bytes", &labels, Kind::Gauge, s.f_bfree as f64 * bsize);
    emit.sample("node_filesystem_avail_bytes", &labels, Kind::Gauge, s.f_bavail as f64 * bsize);
    emit.sample("node_filesystem_files", &labels, Kind::Gauge, s.f_files as f64);
    emit.sample("node_filesystem_files_free", &labels, Kind::Gauge, s.f_ffree as f64);
}

/// `statfs(2)` of `path` (node_exporter multiplies by `f_bsize`, so this
/// does too), or `None` when it fails.
fn statfs(path: &Path) -> Option<libc::statfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `s` a buffer of the right
    // type; statfs fills it completely when it returns 0.
    let rc = unsafe { libc::statfs(c.as_ptr(), s.as_mut_ptr()) };
    // SAFETY: filled, as statfs returned 0.
    (rc == 0).then(|| unsafe { s.assume_init() })
}

/// Runs every `/proc` parser over `data` (the fuzz target's entry point):
/// no input panics, and every sample has an ASCII name and a finite value.
/// Returns the samples parsed.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_host_metrics(data: &[u8]) -> usize {
    struct Check(usize);
    impl Emit for Check {
        fn sample(&mut self, name: &str, labels: &[(&str, &str)], _: Kind, value: f64) {
            assert!(name.is_ascii() && !labels.iter().any(|(k, _)| k.is_empty()));
            assert!(value.is_finite(), "{name} = {value}");
            self.0 += 1;
        }
        fn invalid(&mut self, _: &'static str) {}
    }
    let text = String::from_utf8_lossy(data);
    let mut check = Check(0);
    procfs::stat(&text, &mut check);
    procfs::meminfo(&text, &mut check);
    procfs::loadavg(&text, &mut check);
    procfs::diskstats(&text, |_| true, &mut check);
    procfs::net_dev(&text, |_| true, &mut check);
    for m in procfs::mounts(&text, &mut check) {
        assert!(!m.mountpoint.is_empty() && !m.fstype.is_empty());
    }
    check.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_exporter_default_excludes_leave_out_partitions_and_pseudo_filesystems() {
        let cfg: HostMetricsConfig = toml::from_str("").unwrap();
        let plan = cfg.plan();
        let disk = plan.disk_exclude.unwrap();
        assert!(disk.is_match("vda1") && disk.is_match("loop0") && disk.is_match("nvme0n1p2") && disk.is_match("zram0"));
        assert!(!disk.is_match("vda") && !disk.is_match("nvme0n1") && !disk.is_match("dm-0"));
        let fs = plan.fs_exclude.unwrap();
        assert!(fs.is_match("proc") && fs.is_match("cgroup2") && !fs.is_match("ext4") && !fs.is_match("tmpfs"));
        let mounts = plan.mount_exclude.unwrap();
        assert!(mounts.is_match("/proc") && mounts.is_match("/sys/fs/cgroup") && !mounts.is_match("/") && !mounts.is_match("/home"));
        assert_eq!(plan.proc, Path::new("/proc"));
    }

    #[test]
    fn bad_patterns_and_relative_roots_are_refused_at_their_keys() {
        let cfg: HostMetricsConfig = toml::from_str("root = \"host\"\nfs_types_exclude = \"(\"\ncollectors = []").unwrap();
        let mut errors = Vec::new();
        cfg.validate("sources.h", &mut errors);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text[0].starts_with("sources.h.collectors"), "{text:?}");
        assert!(text[1].starts_with("sources.h.root"), "{text:?}");
        assert!(text[2].starts_with("sources.h.fs_types_exclude"), "{text:?}");
    }

    #[test]
    fn a_root_with_fixture_proc_files_is_read_and_a_missing_file_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(proc.join("1")).unwrap();
        std::fs::write(proc.join("loadavg"), "0.50 0.25 0.10 1/100 42\n").unwrap();
        std::fs::write(proc.join("1/mounts"), "/dev/x / ext4 rw 0 0\nproc /proc proc rw 0 0\n").unwrap();
        let cfg: HostMetricsConfig = toml::from_str(&format!(
            "root = {:?}\ncollectors = [\"load\", \"filesystem\", \"cpu\"]",
            dir.path()
        ))
        .unwrap();
        let context = SourceContext::new("h".into(), "host_metrics", String::new(), Default::default());
        let before = source_metrics().invalid.with_label_values(&["h", "unreadable"]).get();
        let batch = collect(&cfg.plan(), &context).build(Arc::new(context), SystemTime::now());
        let samples: Vec<serde_json::Value> = batch.events().map(|e| serde_json::from_slice(e).unwrap()).collect();
        let names: Vec<&str> = samples.iter().map(|s| s["metric"].as_str().unwrap()).collect();
        assert_eq!(names[..3], ["node_load1", "node_load5", "node_load15"]);
        assert_eq!(samples[0]["value"], 0.5);
        // `/` of the fixture root is measured; /proc is excluded.
        let size = samples.iter().find(|s| s["metric"] == "node_filesystem_size_bytes").unwrap();
        assert_eq!(size["labels"]["mountpoint"], "/");
        assert!(size["value"].as_f64().unwrap() > 0.0);
        assert!(!samples.iter().any(|s| s["labels"]["mountpoint"] == "/proc"));
        // No stat file under the fixture root.
        assert_eq!(source_metrics().invalid.with_label_values(&["h", "unreadable"]).get(), before + 1);
    }
}
