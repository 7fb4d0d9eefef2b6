//! The `host_metrics` source against the real node_exporter (Debian
//! `prometheus-node-exporter`) on the same machine: the same series (names
//! and labels), and the same values for the same moment.
//!
//! Tolerances, per kind of value:
//! - counters (CPU seconds, disk bytes and I/O time, network bytes and
//!   packets) lie between node_exporter's reading just before sluice's and
//!   one taken after sluice's read was over: only what the kernel counted
//!   between the two reads separates them;
//! - fixed gauges (MemTotal, filesystem size and inodes) are exactly equal;
//! - load averages equal one of the two readings (the kernel updates them
//!   every 5 s);
//! - free and available filesystem bytes are within the two readings'
//!   range widened by 256 MiB (other processes write to the disk).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{free_port, try_scrape, wait_until, Metrics, Sluice};

/// node_exporter's own upstream defaults, given explicitly (Debian's
/// package changes some) so both sides exclude the same devices and mounts.
const DISK_EXCLUDE: &str = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$";
const MOUNT_EXCLUDE: &str = r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)";
const FS_EXCLUDE: &str = "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$";

/// Kills node_exporter when the test ends, however it ends.
struct NodeExporter(Child);

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node_exporter(port: u16) -> NodeExporter {
    let child = Command::new("prometheus-node-exporter")
        .args([
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--collector.disable-defaults",
            "--collector.cpu",
            "--collector.meminfo",
            "--collector.loadavg",
            "--collector.diskstats",
            "--collector.filesystem",
            "--collector.netdev",
            &format!("--collector.diskstats.device-exclude={DISK_EXCLUDE}"),
            &format!("--collector.filesystem.mount-points-exclude={MOUNT_EXCLUDE}"),
            &format!("--collector.filesystem.fs-types-exclude={FS_EXCLUDE}"),
            "--collector.netdev.device-exclude=",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-node-exporter (Debian package, installed by scripts/test)");
    NodeExporter(child)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// One node_exporter scrape and the wall-clock span it took.
struct Reading {
    start_ms: i64,
    end_ms: i64,
    metrics: Metrics,
}

impl Reading {
    fn get(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<f64> {
        self.metrics
            .samples
            .iter()
            .find(|s| s.name == name && &s.labels == labels)
            .map(|s| s.value)
    }

    fn series(&self, name: &str) -> BTreeSet<BTreeMap<String, String>> {
        self.metrics
            .samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.labels.clone())
            .collect()
    }
}

/// One sluice sample.
struct Sample {
    name: String,
    kind: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

const COUNTERS: [&str; 8] = [
    "node_cpu_seconds_total",
    "node_disk_read_bytes_total",
    "node_disk_written_bytes_total",
    "node_disk_io_time_seconds_total",
    "node_network_receive_bytes_total",
    "node_network_receive_packets_total",
    "node_network_transmit_bytes_total",
    "node_network_transmit_packets_total",
];

#[test]
fn host_metrics_agree_with_node_exporter_for_the_same_moment() {
    let port = free_port();
    let _ne = start_node_exporter(port);
    let ne = format!("127.0.0.1:{port}");
    wait_until("node_exporter answers", Duration::from_secs(30), || try_scrape(&ne).ok());

    let sluice = Sluice::start(
        r#"
[sources.host]
type = "host_metrics"
interval = "1s"
[sinks.out]
type = "stdout"
"#,
    );

    // node_exporter is read over and over while sluice reads the host, until
    // one of sluice's flushes has a reading that ended before it and one
    // that started well after it, and a later flush (so that one is
    // complete). On a loaded machine one scrape of node_exporter can outlast
    // sluice's interval, so that flush need not be the first.
    let mut readings: Vec<Reading> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (first_ts, samples) = loop {
        assert!(
            Instant::now() < deadline,
            "no flush within 60 s with node_exporter read before and after it; log:\n{}",
            sluice.logs()
        );
        let start_ms = now_ms();
        if let Ok(metrics) = try_scrape(&ne) {
            readings.push(Reading {
                start_ms,
                end_ms: now_ms(),
                metrics,
            });
        }
        let lines = sluice.lines();
        let parsed: Vec<serde_json::Value> = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let stamps: Vec<i64> = parsed
            .iter()
            .filter_map(|v| v["timestamp_ms"].as_i64())
            .collect::<BTreeSet<i64>>()
            .into_iter()
            .collect();
        // The last flush may still be printing.
        let complete = &stamps[..stamps.len().saturating_sub(1)];
        let bracketed = complete
            .iter()
            .copied()
            .find(|&ts| readings.iter().any(|r| r.end_ms <= ts) && readings.iter().any(|r| r.start_ms >= ts + 1000));
        if let Some(flush) = bracketed {
            let samples: Vec<Sample> = parsed
                .iter()
                .filter(|v| v["timestamp_ms"].as_i64() == Some(flush))
                .map(|v| Sample {
                    name: v["metric"].as_str().unwrap().to_owned(),
                    kind: v["kind"].as_str().unwrap().to_owned(),
                    labels: serde_json::from_value(v["labels"].clone()).unwrap(),
                    value: v["value"].as_f64().unwrap(),
                })
                .collect();
            break (flush, samples);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let before = readings.iter().rev().find(|r| r.end_ms <= first_ts).unwrap();
    // sluice stamps a flush before it reads; its reads are over well
    // within a second.
    let after = readings.iter().find(|r| r.start_ms >= first_ts + 1000).unwrap();

    let ours = |name: &str| -> BTreeSet<BTreeMap<String, String>> {
        samples.iter().filter(|s| s.name == name).map(|s| s.labels.clone()).collect()
    };
    let compared_families = COUNTERS.iter().copied().chain([
        "node_load1",
        "node_memory_MemTotal_bytes",
        "node_filesystem_size_bytes",
        "node_filesystem_avail_bytes",
        "node_filesystem_files",
        "node_filesystem_readonly",
    ]);
    for family in compared_families {
        let theirs = before.series(family);
        assert!(
            !theirs.is_empty() || family.starts_with("node_disk"),
            "node_exporter has no {family}"
        );
        assert_eq!(ours(family), theirs, "{family}: the same series (labels) on both sides");
    }
    let memory = |names: BTreeSet<&str>| {
        names
            .into_iter()
            .filter(|n| n.starts_with("node_memory_"))
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        memory(samples.iter().map(|s| s.name.as_str()).collect()),
        memory(before.metrics.samples.iter().map(|s| s.name.as_str()).collect()),
        "the same node_memory_* names"
    );

    let mut checked = 0;
    for s in &samples {
        let (Some(b), Some(a)) = (before.get(&s.name, &s.labels), after.get(&s.name, &s.labels)) else {
            continue;
        };
        let what = format!("{}{:?} = {} (node_exporter before {b}, after {a})", s.name, s.labels, s.value);
        if COUNTERS.contains(&s.name.as_str()) {
            assert_eq!(s.kind, "counter", "{what}");
            // The same count in the other's float arithmetic (node_exporter
            // divides milliseconds by 1000: 1676.8400000000001) is equal.
            let ulp = 1e-9 * a.abs().max(1.0);
            assert!(b - ulp <= s.value && s.value <= a + ulp, "counter outside the two readings: {what}");
            checked += 1;
        } else if ["node_memory_MemTotal_bytes", "node_filesystem_size_bytes", "node_filesystem_files"].contains(&s.name.as_str()) {
            assert_eq!(s.kind, "gauge", "{what}");
            assert_eq!(s.value, b, "{what}");
            checked += 1;
        } else if s.name.starts_with("node_load") {
            assert!(s.value == b || s.value == a, "load is neither reading: {what}");
            checked += 1;
        } else if s.name == "node_filesystem_avail_bytes" || s.name == "node_filesystem_free_bytes" {
            let slack = 256.0 * 1024.0 * 1024.0;
            assert!(s.value >= b.min(a) - slack && s.value <= b.max(a) + slack, "{what}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} values compared");
}
