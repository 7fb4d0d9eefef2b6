//! Disk and resource faults against the real binary: a file descriptor
//! limit far below the number of files, a data directory on a full file
//! system, and damaged checkpoint files at start.

mod file_support;

use file_support::{append, config, counts, Sluice};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn glob(dir: &Path, pat: &str) -> String {
    format!("{}/{pat}", dir.display())
}

/// Every expected id arrived exactly once.
fn assert_each_once(lines: &[String], expected: impl IntoIterator<Item = String>) {
    let got = counts(lines, "id");
    let mut n = 0;
    for want in expected {
        n += 1;
        assert_eq!(got.get(&want), Some(&1), "{want}");
    }
    assert_eq!(lines.len(), n, "no extra lines");
}

/// `ulimit -n 256` with 1,000 files: the files wait their turn for a
/// descriptor, nothing crashes, and every line of every file arrives.
#[test]
fn a_thousand_files_under_a_256_descriptor_limit_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = |f: usize| logs.join(format!("f{f}.log"));
    for f in 0..1000 {
        append(&path(f), (0..20).map(|i| format!(r#"{{"id":"{f}-{i}"}}"#)));
    }
    let cfg = config(&dir.path().join("data"), &[glob(&logs, "*.log")], "");
    let mut s = Sluice::start_with(dir.path(), &cfg, &[], |cmd| {
        // SAFETY: setrlimit is async-signal-safe; it runs in the child
        // between fork and exec and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 256,
                    rlim_max: 256,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    s.wait_for(20_000, T);
    // Tailing goes on under the limit: every file grows once more.
    for f in 0..1000 {
        append(&path(f), (20..25).map(|i| format!(r#"{{"id":"{f}-{i}"}}"#)));
    }
    s.wait_for(25_000, T);
    std::thread::sleep(Duration::from_millis(500));
    let (status, lines) = s.stop();
    assert!(status.success(), "exit status {status}");
    assert_each_once(&lines, (0..1000).flat_map(|f| (0..25).map(move |i| format!("{f}-{i}"))));
}
