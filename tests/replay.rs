//! `sluice replay`: the real binary backfills real plain and gzip files
//! through real sinks, and its exit status tells whether every line was
//! delivered.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use support::{Sluice, SluiceBuilder, Stdout};

/// Stdout and blackhole sinks; the stdin source is there because a config
/// needs one, and replay must ignore it.
const CONFIG: &str = r#"
[api]
enabled = false

[enrich]
disable_host = true

[sources.stdin]
type = "stdin"

[sinks.out]
type = "stdout"

[sinks.null]
type = "blackhole"
print_summary = true
"#;

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("replay.toml");
    std::fs::write(&path, CONFIG).unwrap();
    path
}

/// `sluice --config <config> replay <args>`, stdin piped and left open:
/// replay must not read it.
fn command(config: &Path, args: &[&Path]) -> SluiceBuilder {
    Sluice::builder()
        .arg("--config")
        .arg(config)
        .arg("replay")
        .args(args.iter().copied())
        .stdin_piped()
}

/// Writes `stdin` (which replay must ignore: the config's sources are not
/// run) and waits for the exit; its status, stdout and log.
fn finish(mut replay: Sluice, stdin: &[u8], timeout: Duration) -> Output {
    replay.write(stdin);
    let status = replay.wait(timeout);
    let mut stdout = replay.lines().join("\n").into_bytes();
    if !stdout.is_empty() {
        stdout.push(b'\n');
    }
    Output {
        status,
        stdout,
        stderr: replay.logs().into_bytes(),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// JSON object lines (byte-identical on output, with host metadata off).
fn lines(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"file":"{tag}","n":{i},"msg":"line {i} of {tag} \u00e9\"q\""}}"#))
        .collect()
}

fn blackhole_events(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "blackhole summary")
        .and_then(|v| v["events"].as_u64())
}

#[test]
fn replays_plain_and_gzip_files_through_every_sink_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());

    let plain = lines("plain", 20_000);
    let plain_path = dir.path().join("app.log");
    std::fs::write(&plain_path, plain.join("\n") + "\n").unwrap();

    // A rotated file as logrotate leaves it: gzip, here in two members
    // (as `cat a.gz b.gz` makes), the last line without its newline.
    let zipped = lines("gzip", 20_000);
    let (first, second) = zipped.split_at(7_000);
    let mut gz = gzip((first.join("\n") + "\n").as_bytes());
    gz.extend(gzip(second.join("\n").as_bytes()));
    let gz_path = dir.path().join("app.log.1.gz");
    std::fs::write(&gz_path, gz).unwrap();

    let child = command(&config, &[&plain_path, &gz_path]).start();
    let out = finish(child, b"{\"from\":\"stdin\"}\n", Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}, stderr:\n{stderr}", out.status);

    let got: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    let want: Vec<&str> = plain.iter().chain(zipped.iter()).map(String::as_str).collect();
    assert_eq!(got.len(), want.len(), "line count on stdout");
    assert!(got == want, "stdout must be exactly the files' lines, in order");
    assert_eq!(blackhole_events(&stderr), Some(40_000), "blackhole sink count; stderr:\n{stderr}");

    assert!(
        stderr.contains("replay: 2/2 files"),
        "plain progress lines when stderr is not a terminal:\n{stderr}"
    );
    assert!(
        stderr.contains("40000 line(s); 40000 delivered"),
        "final summary counts every line as delivered:\n{stderr}"
    );
}

#[test]
fn missing_file_is_a_clear_error_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let present = dir.path().join("present.log");
    std::fs::write(&present, "{\"a\":1}\n").unwrap();
    let missing = dir.path().join("missing.log");

    let child = command(&config, &[&present, &missing]).start();
    let out = finish(child, b"", Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "sluice replay: cannot open {}: No such file or directory",
            missing.display()
        )),
        "the error names the file and the reason:\n{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing is sent before every file is checked");

    let child = command(&config, &[dir.path()]).start();
    let out = finish(child, b"", Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("is not a regular file"), "{stderr}");
}

#[test]
fn unknown_sink_name_is_refused_with_the_known_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let file = dir.path().join("a.log");
    std::fs::write(&file, "{\"a\":1}\n").unwrap();
    let cmd = command(&config, &[&file]).args(["--sink", "lokki"]);
    let out = finish(cmd.start(), b"", Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"no sink named "lokki" in the config (it has: null, out)"#),
        "{stderr}"
    );
}

#[test]
fn only_the_named_sink_receives_with_the_sink_flag() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let file = dir.path().join("a.log");
    std::fs::write(&file, "{\"a\":1}\n{\"a\":2}\n").unwrap();
    let cmd = command(&config, &[&file]).args(["--sink", "null"]);
    let out = finish(cmd.start(), b"", Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "the stdout sink was not chosen");
    assert_eq!(blackhole_events(&stderr), Some(2), "{stderr}");
}

#[test]
fn undelivered_lines_make_the_exit_status_non_zero_with_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let file = dir.path().join("a.log");
    std::fs::write(&file, lines("x", 5_000).join("\n") + "\n").unwrap();

    let mut replay = command(&config, &[&file]).stdout(Stdout::Raw).start();
    // The stdout sink's reader goes away: it cannot deliver anything.
    drop(replay.take_stdout());
    let status = replay.wait(Duration::from_secs(60));
    let stderr = replay.logs();
    assert_eq!(status.code(), Some(1), "{stderr}");
    // The reader stops once the sink has failed, so not every line need
    // have been read; every line that was read is reported undelivered.
    let summary = stderr.lines().find(|l| l.contains(" line(s); ")).expect("a summary line");
    let read: u64 = summary
        .split(" line(s); ")
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(read > 0, "{summary}");
    assert!(
        summary.ends_with(&format!(
            "; 0 delivered, {read} NOT delivered (0 dropped by a sink's policy, {read} abandoned)"
        )),
        "{summary}"
    );
    assert!(stderr.contains("standard output was closed by its reader"), "{stderr}");
}

#[test]
fn damaged_gzip_is_reported_after_sending_the_lines_before_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let all = lines("cut", 50_000);
    let gz = gzip((all.join("\n") + "\n").as_bytes());
    // A rotated file copied while it was being compressed: cut in half.
    let path = dir.path().join("cut.log.gz");
    std::fs::write(&path, &gz[..gz.len() / 2]).unwrap();

    let out = finish(command(&config, &[&path]).start(), b"", Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("replay: read error: {}: ", path.display())), "{stderr}");
    let got: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert!(!got.is_empty() && got.len() < all.len(), "{} lines out of {}", got.len(), all.len());
    // Whatever came out is the file's beginning, whole lines, in order
    // (the last one may be the cut-off piece, wrapped or not).
    let whole = &got[..got.len() - 1];
    assert!(whole.iter().zip(&all).all(|(g, w)| g == w), "a prefix of the file's lines");
}

#[test]
fn a_signal_stops_the_replay_and_the_undelivered_lines_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let file = dir.path().join("big.log");
    std::fs::write(&file, lines("big", 200_000).join("\n") + "\n").unwrap();

    let replay = command(&config, &[&file])
        .env("SLUICE_SHUTDOWN_TIMEOUT", "1s")
        .stdout(Stdout::Raw)
        .start();
    // Nobody reads stdout: the pipe fills, the stdout sink blocks, its
    // queue fills, and the reader waits. Then the operator gives up.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(replay.try_status().is_none(), "replay cannot finish with a stalled sink");
    replay.signal(libc::SIGINT);
    let status = replay.wait(Duration::from_secs(20));
    let stderr = replay.logs();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("replay: interrupted by a signal"), "{stderr}");
    assert!(stderr.contains(" NOT delivered ("), "{stderr}");
}

#[test]
fn replay_through_a_disk_buffer_delivers_every_line_and_leaves_it_empty() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("disk.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[api]\nenabled = false\n[enrich]\ndisable_host = true\n[sources.stdin]\ntype = \"stdin\"\n[sinks.out]\ntype = \"stdout\"\n[sinks.out.buffer]\ntype = \"disk\"\nmax_bytes = \"64MiB\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let want = lines("disk", 30_000);
    let file = dir.path().join("a.log");
    std::fs::write(&file, want.join("\n") + "\n").unwrap();

    let out = finish(command(&config, &[&file]).start(), b"", Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let got: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert!(
        got == want.iter().map(String::as_str).collect::<Vec<_>>(),
        "every line once, in order, through the disk buffer"
    );
    assert!(stderr.contains("30000 line(s); 30000 delivered"), "{stderr}");

    // A second replay of nothing new finds the buffer empty: nothing was
    // left on disk to be sent again.
    let empty = dir.path().join("empty.log");
    std::fs::write(&empty, "").unwrap();
    let out = finish(command(&config, &[&empty]).start(), b"", Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.stdout.is_empty(),
        "the disk buffer was left with {} bytes of events",
        out.stdout.len()
    );
}
