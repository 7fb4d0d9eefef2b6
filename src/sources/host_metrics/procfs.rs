//! Parsers of the `/proc` files the host metrics source reads, each turning
//! the file's text into samples with node_exporter's names, labels and
//! units. A line that does not have the expected shape is skipped (and
//! counted by the caller); no input panics.

/// Kernel clock ticks per second for `/proc/stat` (`USER_HZ`): 100 on every
/// Linux architecture node_exporter supports, which it assumes too.
pub(crate) const USER_HZ: f64 = 100.0;

/// Bytes per sector in `/proc/diskstats`: the kernel always counts 512-byte
/// sectors there, whatever the device's own sector size.
const SECTOR_BYTES: f64 = 512.0;

/// Whether a sample only goes up (a counter) or moves both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `*_total`: a running total.
    Counter,
    /// A current value.
    Gauge,
}

/// Where parsed samples go: `name`, labels, kind and value.
pub(crate) trait Emit {
    /// One sample.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], kind: Kind, value: f64);
    /// A line of `file` that could not be read.
    fn invalid(&mut self, file: &'static str);
}

/// The CPU modes of a `/proc/stat` `cpuN` line, in column order.
const CPU_MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];

/// `/proc/stat`: `node_cpu_seconds_total{cpu,mode}` and
/// `node_cpu_guest_seconds_total{cpu,mode}` per CPU (the aggregate `cpu`
/// line is left out, as node_exporter does).
pub(crate) fn stat(text: &str, out: &mut impl Emit) {
    for line in text.lines() {
        let mut cols = line.split_ascii_whitespace();
        let Some(cpu) = cols.next().and_then(|c| c.strip_prefix("cpu")) else {
            continue;
        };
        if cpu.is_empty() {
            continue;
        }
        if !cpu.bytes().all(|b| b.is_ascii_digit()) {
            out.invalid("stat");
            continue;
        }
        let values: Vec<f64> = cols.map_while(|c| c.parse::<u64>().ok()).map(|t| t as f64 / USER_HZ).collect();
        if values.len() < 4 {
            out.invalid("stat");
            continue;
        }
        for (mode, v) in CPU_MODES.iter().zip(&values) {
            out.sample("node_cpu_seconds_total", &[("cpu", cpu), ("mode", mode)], Kind::Counter, *v);
        }
        for (mode, v) in ["user", "nice"].iter().zip(values.iter().skip(8)) {
            out.sample("node_cpu_guest_seconds_total", &[("cpu", cpu), ("mode", mode)], Kind::Counter, *v);
        }
    }
}

/// `/proc/meminfo`: `node_memory_<Key>_bytes` per line with a `kB` unit
/// (times 1024), `node_memory_<Key>` for lines without one
/// (`HugePages_Total`); `Active(anon)` becomes `Active_anon`.
pub(crate) fn meminfo(text: &str, out: &mut impl Emit) {
    let mut name = String::new();
    for line in text.lines() {
        let mut cols = line.split_ascii_whitespace();
        let (Some(key), Some(value)) = (cols.next().and_then(|k| k.strip_suffix(':')), cols.next()) else {
            if !line.trim().is_empty() {
                out.invalid("meminfo");
            }
            continue;
        };
        let Ok(v) = value.parse::<u64>() else {
            out.invalid("meminfo");
            continue;
        };
        let mut v = v as f64;
        let unit = cols.next();
        name.clear();
        name.push_str("node_memory_");
        for c in key.chars() {
            match c {
                '(' => name.push('_'),
                ')' => {}
                c if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                _ => name.push('_'),
            }
        }
        if unit.is_some() {
            v *= 1024.0;
            name.push_str("_bytes");
        }
        out.sample(&name, &[], Kind::Gauge, v);
    }
}

/// `/proc/loadavg`: `node_load1`, `node_load5`, `node_load15`.
pub(crate) fn loadavg(text: &str, out: &mut impl Emit) {
    let loads: Vec<f64> = text
        .split_ascii_whitespace()
        .take(3)
        .map_while(|c| c.parse::<f64>().ok().filter(|v| v.is_finite()))
        .collect();
    if loads.len() < 3 {
        out.invalid("loadavg");
        return;
    }
    for (name, v) in ["node_load1", "node_load5", "node_load15"].iter().zip(loads) {
        out.sample(name, &[], Kind::Gauge, v);
    }
}

/// The columns of a `/proc/diskstats` line after major, minor and name:
/// metric name, kind and the factor to node_exporter's unit.
const DISK_COLUMNS: [(&str, Kind, f64); 17] = [
    ("node_disk_reads_completed_total", Kind::Counter, 1.0),
    ("node_disk_reads_merged_total", Kind::Counter, 1.0),
    ("node_disk_read_bytes_total", Kind::Counter, SECTOR_BYTES),
    ("node_disk_read_time_seconds_total", Kind::Counter, 0.001),
    ("node_disk_writes_completed_total", Kind::Counter, 1.0),
    ("node_disk_writes_merged_total", Kind::Counter, 1.0),
    ("node_disk_written_bytes_total", Kind::Counter, SECTOR_BYTES),
    ("node_disk_write_time_seconds_total", Kind::Counter, 0.001),
    ("node_disk_io_now", Kind::Gauge, 1.0),
    ("node_disk_io_time_seconds_total", Kind::Counter, 0.001),
    ("node_disk_io_time_weighted_seconds_total", Kind::Counter, 0.001),
    ("node_disk_discards_completed_total", Kind::Counter, 1.0),
    ("node_disk_discards_merged_total", Kind::Counter, 1.0),
    ("node_disk_discarded_sectors_total", Kind::Counter, 1.0),
    ("node_disk_discard_time_seconds_total", Kind::Counter, 0.001),
    ("node_disk_flush_requests_total", Kind::Counter, 1.0),
    ("node_disk_flush_requests_time_seconds_total", Kind::Counter, 0.001),
];

/// `/proc/diskstats`: `node_disk_*{device}` for each device that
/// `include` accepts (node_exporter leaves out partitions, loop and ram
/// devices by default). Older kernels have fewer columns; those present
/// are sent.
pub(crate) fn diskstats(text: &str, include: impl Fn(&str) -> bool, out: &mut impl Emit) {
    for line in text.lines() {
        let mut cols = line.split_ascii_whitespace();
        let (Some(_major), Some(_minor), Some(device)) = (cols.next(), cols.next(), cols.next()) else {
            if !line.trim().is_empty() {
                out.invalid("diskstats");
            }
            continue;
        };
        if !include(device) {
            continue;
        }
        let values: Vec<f64> = cols.map_while(|c| c.parse::<u64>().ok()).map(|v| v as f64).collect();
        if values.len() < 11 {
            out.invalid("diskstats");
            continue;
        }
        for ((name, kind, factor), v) in DISK_COLUMNS.iter().zip(values) {
            out.sample(name, &[("device", device)], *kind, v * factor);
        }
    }
}

/// The columns of a `/proc/net/dev` line, receive then transmit.
const NET_COLUMNS: [&str; 16] = [
    "node_network_receive_bytes_total",
    "node_network_receive_packets_total",
    "node_network_receive_errs_total",
    "node_network_receive_drop_total",
    "node_network_receive_fifo_total",
    "node_network_receive_frame_total",
    "node_network_receive_compressed_total",
    "node_network_receive_multicast_total",
    "node_network_transmit_bytes_total",
    "node_network_transmit_packets_total",
    "node_network_transmit_errs_total",
    "node_network_transmit_drop_total",
    "node_network_transmit_fifo_total",
    "node_network_transmit_colls_total",
    "node_network_transmit_carrier_total",
    "node_network_transmit_compressed_total",
];

/// `/proc/net/dev`: `node_network_{receive,transmit}_*_total{device}` for
/// each device that `include` accepts. The two header lines have no `:`
/// and are skipped.
pub(crate) fn net_dev(text: &str, include: impl Fn(&str) -> bool, out: &mut impl Emit) {
    for line in text.lines() {
        let Some((device, rest)) = line.split_once(':') else { continue };
        let device = device.trim();
        if !include(device) {
            continue;
        }
        let values: Vec<f64> = rest
            .split_ascii_whitespace()
            .map_while(|c| c.parse::<u64>().ok())
            .map(|v| v as f64)
            .collect();
        if device.is_empty() || values.len() != NET_COLUMNS.len() {
            out.invalid("net_dev");
            continue;
        }
        for (name, v) in NET_COLUMNS.iter().zip(values) {
            out.sample(name, &[("device", device)], Kind::Counter, v);
        }
    }
}

/// One line of `/proc/1/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// What is mounted (`/dev/vda`, `tmpfs`).
    pub(crate) device: String,
    /// Where, with the kernel's octal escapes (`\040`) undone.
    pub(crate) mountpoint: String,
    /// The filesystem type.
    pub(crate) fstype: String,
    /// Mounted read-only (`ro` among the options).
    pub(crate) read_only: bool,
}

/// The mounts of a `mounts` file, each (device, mount point, type) once,
/// in file order. Lines with fewer than four columns are counted and
/// skipped.
pub(crate) fn mounts(text: &str, out: &mut impl Emit) -> Vec<Mount> {
    let mut found: Vec<Mount> = Vec::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_ascii_whitespace().collect();
        let [device, mountpoint, fstype, options, ..] = cols[..] else {
            if !line.trim().is_empty() {
                out.invalid("mounts");
            }
            continue;
        };
        let m = Mount {
            device: unescape_octal(device),
            mountpoint: unescape_octal(mountpoint),
            fstype: fstype.to_owned(),
            read_only: options.split(',').any(|o| o == "ro"),
        };
        if !found
            .iter()
            .any(|f| f.device == m.device && f.mountpoint == m.mountpoint && f.fstype == m.fstype)
        {
            found.push(m);
        }
    }
    found
}

/// Undoes the kernel's `\ooo` escapes of space, tab, newline and backslash
/// in `/proc/*/mounts`; anything else is kept as it is.
fn unescape_octal(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Name, labels, kind and value of one parsed sample.
    type Parsed = (String, Vec<(String, String)>, Kind, f64);

    #[derive(Default)]
    struct Collected {
        samples: Vec<Parsed>,
        invalid: Vec<&'static str>,
    }

    impl Emit for Collected {
        fn sample(&mut self, name: &str, labels: &[(&str, &str)], kind: Kind, value: f64) {
            let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            self.samples.push((name.to_owned(), labels, kind, value));
        }
        fn invalid(&mut self, file: &'static str) {
            self.invalid.push(file);
        }
    }

    impl Collected {
        fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            self.samples
                .iter()
                .find(|(n, l, _, _)| n == name && l.len() == labels.len() && l.iter().zip(labels).all(|(a, b)| a.0 == b.0 && a.1 == b.1))
                .map(|s| s.3)
        }
    }

    const STAT: &str = "cpu  1000 20 300 40000 50 0 6 0 0 0
cpu0 500 10 150 20000 25 0 3 7 11 0
cpu1 500 10 150 20000 25 0 3 0 0 0
intr 12345 0 0
ctxt 999
btime 1700000000
";

    #[test]
    fn cpu_ticks_become_seconds_per_cpu_and_mode() {
        let mut c = Collected::default();
        stat(STAT, &mut c);
        assert_eq!(c.value("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "user")]), Some(5.0));
        assert_eq!(c.value("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "idle")]), Some(200.0));
        assert_eq!(c.value("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "steal")]), Some(0.07));
        assert_eq!(
            c.value("node_cpu_guest_seconds_total", &[("cpu", "0"), ("mode", "user")]),
            Some(0.11)
        );
        // Two CPUs, eight modes and two guest modes each; the total line is not a CPU.
        assert_eq!(c.samples.len(), 20);
        assert!(c.invalid.is_empty());
    }

    #[test]
    fn meminfo_keys_take_node_exporter_names_and_bytes() {
        let text = "MemTotal:       16318612 kB\nActive(anon):     81920 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n";
        let mut c = Collected::default();
        meminfo(text, &mut c);
        assert_eq!(c.value("node_memory_MemTotal_bytes", &[]), Some(16318612.0 * 1024.0));
        assert_eq!(c.value("node_memory_Active_anon_bytes", &[]), Some(81920.0 * 1024.0));
        assert_eq!(c.value("node_memory_HugePages_Total", &[]), Some(0.0));
        assert_eq!(c.value("node_memory_Hugepagesize_bytes", &[]), Some(2048.0 * 1024.0));
    }

    #[test]
    fn loadavg_gives_three_gauges() {
        let mut c = Collected::default();
        loadavg("3.11 1.34 1.30 2/345 6789\n", &mut c);
        assert_eq!(c.value("node_load1", &[]), Some(3.11));
        assert_eq!(c.value("node_load15", &[]), Some(1.3));
    }

    #[test]
    fn diskstats_converts_sectors_and_milliseconds_and_skips_excluded_devices() {
        let text = " 254       0 vda 5723587 116559 274237602 26995923 1062025 1368287 1056188408 10845516 0 1341916 38294175 1069090 319 927516160 445672 20373 7062
 254       1 vda1 10 0 80 1 0 0 0 0 0 1 1
   7       0 loop0 1 2 3 4 5 6 7 8 9 10 11
";
        let mut c = Collected::default();
        diskstats(text, |d| d != "vda1" && !d.starts_with("loop"), &mut c);
        let vda = [("device", "vda")];
        assert_eq!(c.value("node_disk_read_bytes_total", &vda), Some(274237602.0 * 512.0));
        assert_eq!(c.value("node_disk_io_time_seconds_total", &vda), Some(1341.916));
        assert_eq!(c.value("node_disk_flush_requests_total", &vda), Some(20373.0));
        assert_eq!(c.value("node_disk_io_now", &vda).map(|_| c.samples[8].2), Some(Kind::Gauge));
        assert_eq!(c.samples.len(), 17);
    }

    #[test]
    fn net_dev_reads_both_directions_after_the_headers() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  eth0: 614902033 22419 1 2 0 0 0 3 1554598 14294 4 5 0 0 0 0
";
        let mut c = Collected::default();
        net_dev(text, |_| true, &mut c);
        assert_eq!(
            c.value("node_network_receive_bytes_total", &[("device", "eth0")]),
            Some(614902033.0)
        );
        assert_eq!(c.value("node_network_receive_multicast_total", &[("device", "eth0")]), Some(3.0));
        assert_eq!(c.value("node_network_transmit_drop_total", &[("device", "eth0")]), Some(5.0));
        assert_eq!(c.samples.len(), 32);
        assert!(c.invalid.is_empty());
    }

    #[test]
    fn mounts_are_unescaped_and_listed_once() {
        let text = "/dev/vda / ext4 rw,relatime 0 0
tmpfs /mnt/my\\040disk tmpfs ro,nosuid 0 0
/dev/vda / ext4 rw,relatime 0 0
short line
";
        let mut c = Collected::default();
        let m = mounts(text, &mut c);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mountpoint, "/mnt/my disk");
        assert!(m[1].read_only && !m[0].read_only);
        assert_eq!(c.invalid, ["mounts"]);
    }

    #[test]
    fn malformed_proc_text_is_counted_never_a_panic() {
        let junk = [
            "",
            "cpu0\n",
            "cpux 1 2 3 4\n",
            "cpu0 1 2 x\n",
            "MemTotal:\n",
            "MemTotal: lots kB\n",
            "1.0 2.0\n",
            " 8 0\n",
            " 8 0 sda 1 2\n",
            ":\n",
            "eth0: 1 2 3\n",
            "\\\\0\\7 \\777 \\1",
            "ü(ä): 3 kB\n",
            "inf NaN 1\nMemFree: NaN kB\n",
        ];
        for text in junk {
            let mut c = Collected::default();
            stat(text, &mut c);
            meminfo(text, &mut c);
            loadavg(text, &mut c);
            diskstats(text, |_| true, &mut c);
            net_dev(text, |_| true, &mut c);
            let _ = mounts(text, &mut c);
            for (name, _, _, v) in &c.samples {
                assert!(name.is_ascii(), "{name}");
                assert!(v.is_finite());
            }
        }
        let mut c = Collected::default();
        stat("cpu0 1 2 x\n", &mut c);
        loadavg("1.0 2.0\n", &mut c);
        diskstats(" 8 0 sda 1 2\n", |_| true, &mut c);
        net_dev("eth0: 1 2 3\n", |_| true, &mut c);
        assert_eq!(c.invalid, ["stat", "loadavg", "diskstats", "net_dev"]);
        assert!(c.samples.is_empty());
    }
}
