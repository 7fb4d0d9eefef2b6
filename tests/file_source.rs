//! The file source against real files and the real binary: many files,
//! fairness, identity (identical headers, reused inodes), deletion while
//! reading, checkpoints across restarts, corrupt checkpoints, container
//! formats with partial lines, symlinks read once.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::file_source::{append, config, config_with_api, counts, parse};
use support::Sluice;

const T: Duration = Duration::from_secs(30);

fn glob(dir: &std::path::Path, pat: &str) -> String {
    format!("{}/{pat}", dir.display())
}

fn assert_each_once(lines: &[String], field: &str, expected: impl IntoIterator<Item = String>) {
    let got = counts(lines, field);
    let mut missing = Vec::new();
    let mut n = 0;
    for want in expected {
        n += 1;
        match got.get(&want) {
            Some(1) => {}
            Some(c) => panic!("{want} arrived {c} times"),
            None => missing.push(want),
        }
    }
    assert!(
        missing.is_empty(),
        "{} lines missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(lines.len(), n, "unexpected extra lines");
}

#[test]
fn every_line_of_a_thousand_files_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    for d in 0..10 {
        std::fs::create_dir_all(logs.join(format!("d{d}"))).unwrap();
    }
    let path = |f: usize| logs.join(format!("d{}/f{f}.log", f % 10));
    for f in 0..1000 {
        append(&path(f), (0..20).map(|i| format!(r#"{{"id":"{f}-{i}"}}"#)));
    }
    let cfg = config(&dir.path().join("data"), &[glob(&logs, "**/*.log")], "");
    let s = Sluice::start(&cfg);
    s.wait_for(20_000, T);
    // Tailing: every file grows while open.
    for f in 0..1000 {
        append(&path(f), (20..30).map(|i| format!(r#"{{"id":"{f}-{i}"}}"#)));
    }
    let lines = s.wait_for(30_000, T);
    std::thread::sleep(Duration::from_millis(300));
    let (status, lines2) = s.stop();
    assert!(status.success());
    assert_eq!(lines.len(), lines2.len());
    assert_each_once(&lines2, "id", (0..1000).flat_map(|f| (0..30).map(move |i| format!("{f}-{i}"))));
}

#[test]
fn hot_file_does_not_starve_quiet_files() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // 16 MB in the hot file: many read turns' worth.
    let hot = logs.join("hot.log");
    append(
        &hot,
        (0..200_000).map(|i| format!(r#"{{"id":"hot-{i}","pad":"{}"}}"#, "x".repeat(50))),
    );
    for q in 0..50 {
        append(&logs.join(format!("quiet{q}.log")), [format!(r#"{{"id":"quiet-{q}"}}"#)]);
    }
    let cfg = config(
        &dir.path().join("data"),
        &[glob(&logs, "*.log")],
        "readers = 1\nread_budget = \"64KiB\"",
    );
    let s = Sluice::start(&cfg);
    let lines = s.wait_for(200_050, Duration::from_secs(60));
    let pos = |id: &str| lines.iter().position(|l| l.contains(&format!("\"{id}\""))).unwrap();
    let last_quiet = (0..50).map(|q| pos(&format!("quiet-{q}"))).max().unwrap();
    let hot_mid = pos("hot-20000");
    assert!(
        last_quiet < hot_mid,
        "quiet files waited for the hot one: last quiet line at {last_quiet}, hot line 20000 at {hot_mid}"
    );
    let _ = s.stop();
}

#[test]
fn files_with_identical_first_kilobyte_are_told_apart_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let header: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"syslog":"header line {i:02} of the same daemon boot banner"}}"#))
        .collect();
    assert!(header.iter().map(|h| h.len() + 1).sum::<usize>() > 2048);
    for name in ["a", "b"] {
        append(&logs.join(format!("{name}.log")), header.clone());
        append(
            &logs.join(format!("{name}.log")),
            (0..100).map(|i| format!(r#"{{"id":"{name}-{i}"}}"#)),
        );
    }
    let data = dir.path().join("data");
    let cfg = config(&data, &[glob(&logs, "*.log")], "");
    let s = Sluice::start(&cfg);
    s.wait_for(280, T);
    std::thread::sleep(Duration::from_millis(300));
    let (status, first) = s.stop();
    assert!(status.success());
    // Both files grow while sluice is stopped; each resumes at its own offset.
    for name in ["a", "b"] {
        append(
            &logs.join(format!("{name}.log")),
            (100..150).map(|i| format!(r#"{{"id":"{name}-{i}"}}"#)),
        );
    }
    let s = Sluice::start(&cfg);
    s.wait_for(100, T);
    std::thread::sleep(Duration::from_millis(500));
    let (_, second) = s.stop();
    let all: Vec<String> = first
        .iter()
        .chain(second.iter())
        .filter(|l| l.contains("\"id\""))
        .cloned()
        .collect();
    assert_each_once(
        &all,
        "id",
        ["a", "b"].iter().flat_map(|n| (0..150).map(move |i| format!("{n}-{i}"))),
    );
    assert_eq!(first.iter().filter(|l| l.contains("syslog")).count(), 80, "both headers read once");
    assert_eq!(second.iter().filter(|l| l.contains("syslog")).count(), 0, "no header re-read");
}

#[test]
fn file_deleted_mid_read_is_read_to_its_end_then_released() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let f = logs.join("gone.log");
    append(&f, (0..100_000).map(|i| format!(r#"{{"id":"{i}","pad":"{}"}}"#, "y".repeat(40))));
    let cfg = config_with_api(
        &dir.path().join("data"),
        &[glob(&logs, "*.log")],
        "read_budget = \"16KiB\"\nreaders = 1",
    );
    let s = Sluice::start(&cfg);
    s.wait_for(1, T);
    std::fs::remove_file(&f).unwrap();
    let read_when_deleted = s.count();
    assert!(
        read_when_deleted < 100_000,
        "the file was deleted mid-read ({read_when_deleted} lines read)"
    );
    let lines = s.wait_for(100_000, Duration::from_secs(60));
    assert_each_once(&lines, "id", (0..100_000).map(|i| i.to_string()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.metrics().series("sluice_file_open_files{source=\"files\"}") != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "deleted file still open:\n{}",
            s.metrics().text
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = s.metrics().text;
    assert!(m.contains("sluice_file_rotations_total{kind=\"delete\",source=\"files\"} 1"), "{m}");
    let _ = s.stop();
}

#[test]
fn reused_inode_does_not_inherit_the_old_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let f = logs.join("app.log");
    // Same first kilobyte in the old and new file: only the inode's birth
    // time and the bytes before the offset tell them apart.
    let header: Vec<String> = (0..30)
        .map(|i| format!(r#"{{"banner":"identical startup banner line {i:02}......"}}"#))
        .collect();
    append(&f, header.clone());
    append(&f, (0..50).map(|i| format!(r#"{{"id":"old-{i}"}}"#)));
    let data = dir.path().join("data");
    let cfg = config(&data, &[glob(&logs, "app.log")], "");
    let s = Sluice::start(&cfg);
    s.wait_for(80, T);
    std::thread::sleep(Duration::from_millis(400));
    let (status, _) = s.stop();
    assert!(status.success());
    use std::os::unix::fs::MetadataExt;
    let old_ino = std::fs::metadata(&f).unwrap().ino();
    std::fs::remove_file(&f).unwrap();
    // Create files until one gets the freed inode, as a busy node would.
    // ext4 holds recently deleted inodes back for a while, so when it does
    // not hand the inode out again in time, the test does what reuse looks
    // like to sluice: the checkpoint's inode number is now the new file's.
    let mut reused = false;
    let mut made = Vec::new();
    for i in 0..500 {
        let p = logs.join(format!("tmp{i}"));
        std::fs::write(&p, b"").unwrap();
        if std::fs::metadata(&p).unwrap().ino() == old_ino {
            std::fs::rename(&p, &f).unwrap();
            reused = true;
            break;
        }
        made.push(p);
    }
    for p in made {
        std::fs::remove_file(p).unwrap();
    }
    if !reused {
        std::fs::write(&f, b"").unwrap();
        let cp = sluice::sources::file::checkpoint_path(&data, "files");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cp).unwrap()).unwrap();
        assert_eq!(v["files"][0]["ino"], old_ino);
        v["files"][0]["ino"] = std::fs::metadata(&f).unwrap().ino().into();
        std::fs::write(&cp, v.to_string()).unwrap();
    }
    append(&f, header);
    append(&f, (0..200).map(|i| format!(r#"{{"id":"new-{i}"}}"#)));
    let s = Sluice::start(&cfg);
    let lines = s.wait_for(230, T);
    std::thread::sleep(Duration::from_millis(300));
    let ids: Vec<String> = lines.iter().filter(|l| l.contains("\"id\"")).cloned().collect();
    assert_each_once(&ids, "id", (0..200).map(|i| format!("new-{i}")));
    let _ = s.stop();
}

#[test]
fn truncated_checkpoint_file_is_set_aside_and_reading_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let f = logs.join("app.log");
    append(&f, (0..100).map(|i| format!(r#"{{"id":"{i}"}}"#)));
    let data = dir.path().join("data");
    let cfg = config(&data, &[glob(&logs, "*.log")], "");
    let s = Sluice::start(&cfg);
    s.wait_for(100, T);
    std::thread::sleep(Duration::from_millis(400));
    let _ = s.stop();
    let cp = sluice::sources::file::checkpoint_path(&data, "files");
    let full = std::fs::read(&cp).unwrap();
    std::fs::write(&cp, &full[..full.len() / 2]).unwrap();
    append(&f, (100..150).map(|i| format!(r#"{{"id":"{i}"}}"#)));
    let s = Sluice::start(&cfg);
    // Without a checkpoint everything is read again: duplicates, no loss.
    let lines = s.wait_for(150, T);
    let got = counts(&lines, "id");
    for i in 0..150 {
        assert!(got.contains_key(&i.to_string()), "line {i} missing");
    }
    assert!(s.logs().contains("checkpoint file is corrupt"), "{}", s.logs());
    let aside: Vec<_> = std::fs::read_dir(cp.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "corrupt file set aside");
    std::thread::sleep(Duration::from_millis(400));
    let (status, _) = s.stop();
    assert!(status.success());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cp).unwrap()).unwrap();
    assert_eq!(v["files"][0]["offset"], std::fs::metadata(&f).unwrap().len());
}

#[test]
fn restart_continues_after_the_acknowledged_offset() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let f = logs.join("app.log");
    append(&f, (0..500).map(|i| format!(r#"{{"id":"{i}"}}"#)));
    let cfg = config(&dir.path().join("data"), &[glob(&logs, "*.log")], "");
    let s = Sluice::start(&cfg);
    s.wait_for(500, T);
    let (status, first) = s.stop();
    assert!(status.success());
    // A line in progress at shutdown: no newline yet.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut h| std::io::Write::write_all(&mut h, br#"{"id":"5"#))
        .unwrap();
    let s = Sluice::start(&cfg);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut h| std::io::Write::write_all(&mut h, b"00\"}\n"))
        .unwrap();
    append(&f, (501..600).map(|i| format!(r#"{{"id":"{i}"}}"#)));
    s.wait_for(100, T);
    std::thread::sleep(Duration::from_millis(300));
    let (_, second) = s.stop();
    let all: Vec<String> = first.into_iter().chain(second).collect();
    assert_each_once(&all, "id", (0..600).map(|i| i.to_string()));
}

#[test]
fn cri_partial_lines_are_merged_per_stream_with_time_and_stream_kept() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let f = logs.join("0.log");
    let big = "z".repeat(40_000);
    let (p1, rest) = big.split_at(16_384);
    let (p2, p3) = rest.split_at(16_384);
    let text = format!(
        "2024-05-01T10:00:00.000000001Z stdout F {{\"id\":\"one\",\"level\":\"info\"}}\n\
         2024-05-01T10:00:00.000000002Z stdout P {{\"id\":\"big\",\"blob\":\"{p1}\n\
         2024-05-01T10:00:00.000000003Z stderr F plain stderr text\n\
         2024-05-01T10:00:00.000000004Z stdout P {p2}\n\
         2024-05-01T10:00:00.000000005Z stdout F {p3}\"}}\n\
         2024-05-01T10:00:00.000000006Z stderr P half \n"
    );
    std::fs::write(&f, text).unwrap();
    let cfg = config_with_api(&dir.path().join("data"), &[glob(&logs, "*.log")], "");
    let s = Sluice::start(&cfg);
    let lines = s.wait_for(3, T);
    let v = parse(&lines);
    assert_eq!(v[0]["id"], "one");
    assert_eq!(v[0]["stream"], "stdout");
    assert_eq!(v[0]["time"], "2024-05-01T10:00:00.000000001Z");
    assert_eq!(v[1]["message"], "plain stderr text");
    assert_eq!(v[1]["stream"], "stderr");
    assert_eq!(v[2]["id"], "big");
    assert_eq!(v[2]["blob"].as_str().unwrap(), big, "pieces merged byte for byte");
    assert_eq!(v[2]["time"], "2024-05-01T10:00:00.000000002Z", "time of the first piece");
    // The stderr piece finishes later, in a later write.
    append(&f, ["2024-05-01T10:00:01.000000000Z stderr F and the rest".to_owned()]);
    let lines = s.wait_for(4, T);
    assert_eq!(parse(&lines)[3]["message"], "half and the rest");
    assert_eq!(s.metrics().series("sluice_file_partial_merges_total{source=\"files\"}"), Some(2.0));
    let _ = s.stop();
}

#[test]
fn docker_partial_lines_are_merged_and_unescaped() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let f = logs.join("c-json.log");
    let piece = |log: &str, stream: &str, t: u32| {
        serde_json::json!({"log": log, "stream": stream, "time": format!("2024-05-01T10:00:0{t}.5Z")}).to_string()
    };
    let body = "q\"\\é".repeat(5000);
    let payload = format!("{{\"id\":\"big\",\"body\":{}}}\n", serde_json::Value::String(body.clone()));
    let (a, _) = payload.split_at(payload.len() / 2);
    let a = &a[..a.char_indices().last().map(|(i, _)| i).unwrap()];
    let b = &payload[a.len()..];
    let lines = [
        piece("{\"id\":\"small\"}\n", "stdout", 1),
        piece(a, "stdout", 2),
        piece("warn: disk low\n", "stderr", 3),
        piece(b, "stdout", 4),
    ];
    append(&f, lines);
    let cfg = config(&dir.path().join("data"), &[glob(&logs, "*.log")], "");
    let s = Sluice::start(&cfg);
    let lines = s.wait_for(3, T);
    let v = parse(&lines);
    assert_eq!(v[0]["id"], "small");
    assert_eq!(v[0]["stream"], "stdout");
    assert_eq!(v[1]["message"], "warn: disk low");
    assert_eq!(v[1]["stream"], "stderr");
    assert_eq!(v[2]["id"], "big");
    assert_eq!(v[2]["body"].as_str().unwrap(), body);
    assert_eq!(v[2]["time"], "2024-05-01T10:00:02.5Z");
    let _ = s.stop();
}

#[test]
fn docker_json_with_spaces_is_unwrapped_by_the_auto_format() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // The same wrapper docker writes, laid out by another writer: spaces
    // after `:` and `,`, as many JSON libraries print by default.
    append(
        &logs.join("c-json.log"),
        (0..3).map(|i| format!(r#"{{"log": "{{\"id\":\"{i}\"}}\n", "stream": "stderr", "time": "2024-05-01T10:00:0{i}.5Z"}}"#)),
    );
    let cfg = config(&dir.path().join("data"), &[glob(&logs, "*.log")], "");
    assert!(!cfg.contains("format"), "the default format is auto");
    let s = Sluice::start(&cfg);
    let v = parse(&s.wait_for(3, T));
    for (i, e) in v.iter().enumerate() {
        assert_eq!(e["id"], i.to_string(), "{e}");
        assert_eq!(e["stream"], "stderr", "{e}");
        assert_eq!(e["time"], format!("2024-05-01T10:00:0{i}.5Z"), "{e}");
        assert!(e.get("log").is_none(), "the wrapper was unwrapped: {e}");
    }
    let _ = s.stop();
}

#[test]
fn symlinked_container_log_is_read_once_with_pod_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let pod_dir = dir.path().join("pods/shop_web-5c9_6f1e2d3c/nginx");
    let containers = dir.path().join("containers");
    std::fs::create_dir_all(&pod_dir).unwrap();
    std::fs::create_dir_all(&containers).unwrap();
    let real = pod_dir.join("0.log");
    append(
        &real,
        (0..10).map(|i| format!("2024-05-01T10:00:00.{i:09}Z stdout F {{\"id\":\"{i}\"}}")),
    );
    std::os::unix::fs::symlink(&real, containers.join(format!("web-5c9_shop_nginx-{}.log", "ab".repeat(32)))).unwrap();
    let cfg = config(
        &dir.path().join("data"),
        &[glob(dir.path(), "containers/*.log"), glob(dir.path(), "pods/**/*.log")],
        "[sources.files.kubernetes]\nenabled = true",
    );
    let s = Sluice::start(&cfg);
    let lines = s.wait_for(10, T);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.count(), 10, "read once through two paths");
    let v = parse(&lines);
    assert_eq!(v[0]["kubernetes"]["namespace"], "shop");
    assert_eq!(v[0]["kubernetes"]["pod"], "web-5c9");
    assert_eq!(v[0]["kubernetes"]["pod_uid"], "6f1e2d3c");
    assert_eq!(v[0]["kubernetes"]["container"], "nginx");
    assert_eq!(v[0]["process"]["type"], "nginx");
    let by_id: HashMap<String, usize> = counts(&lines, "id");
    assert_eq!(by_id.len(), 10);
    let _ = s.stop();
}

#[test]
fn file_source_without_data_dir_is_rejected_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[glob(dir.path(), "*.log")], "").replacen("data_dir", "# data_dir", 1);
    let s = Sluice::start(&cfg);
    let status = s.wait(T);
    assert!(!status.success());
    let err = s.logs();
    assert!(err.contains("data_dir is not set") && err.contains("SLUICE_DATA_DIR"), "{err}");
}

#[test]
fn validate_reports_a_missing_data_dir_as_the_docs_quote_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[glob(dir.path(), "*.log")], "").replacen("data_dir", "# data_dir", 1);
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("validate")
        .arg("--config")
        .arg(&path)
        .env_remove("SLUICE_DATA_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success(), "validate accepts a file source without data_dir");
    let err = String::from_utf8_lossy(&out.stderr);
    // docs/file-source.md quotes the error in a code block under its
    // `data_dir` heading: every line of it is what validate prints.
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/file-source.md")).unwrap();
    let section = docs
        .split("## `data_dir` (required)")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let quoted = section.split("```").nth(1).expect("the section quotes the error in a code block");
    for line in quoted.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        assert!(err.contains(line.trim()), "docs quote {line:?}; validate printed:\n{err}");
    }
}

#[test]
fn read_from_end_skips_existing_lines_only_on_the_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    append(&logs.join("a.log"), (0..50).map(|i| format!(r#"{{"id":"old-{i}"}}"#)));
    let cfg = config(&dir.path().join("data"), &[glob(&logs, "*.log")], "read_from = \"end\"");
    let s = Sluice::start(&cfg);
    std::thread::sleep(Duration::from_millis(500));
    append(&logs.join("a.log"), (0..5).map(|i| format!(r#"{{"id":"new-{i}"}}"#)));
    append(&logs.join("b.log"), (0..5).map(|i| format!(r#"{{"id":"b-{i}"}}"#)));
    let lines = s.wait_for(10, T);
    std::thread::sleep(Duration::from_millis(300));
    let _ = s.stop();
    let mut want: Vec<String> = (0..5).map(|i| format!("new-{i}")).collect();
    want.extend((0..5).map(|i| format!("b-{i}")));
    assert_each_once(&lines, "id", want);
}

#[test]
fn more_files_than_max_open_files_are_all_read_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for f in 0..30 {
        append(
            &logs.join(format!("f{f:02}.log")),
            (0..20).map(|i| format!(r#"{{"id":"{f}-{i}"}}"#)),
        );
    }
    let cfg = config_with_api(&dir.path().join("data"), &[glob(&logs, "*.log")], "max_open_files = 10");
    let s = Sluice::start(&cfg);
    // Open files never exceed the cap while the others wait their turn.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut saw_waiting = false;
    while s.count() < 600 {
        assert!(std::time::Instant::now() < deadline, "only {} of 600 lines", s.count());
        let open = s.metrics().series("sluice_file_open_files{source=\"files\"}").unwrap_or(0.0);
        assert!(open <= 10.0, "{open} files open with max_open_files = 10");
        saw_waiting |= s.metrics().series("sluice_file_waiting_files{source=\"files\"}").unwrap_or(0.0) > 0.0;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(saw_waiting, "files waited for a slot");
    // Files closed to make room resume at their offset when reopened.
    for f in 0..30 {
        append(
            &logs.join(format!("f{f:02}.log")),
            (20..25).map(|i| format!(r#"{{"id":"{f}-{i}"}}"#)),
        );
    }
    let lines = s.wait_for(750, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let _ = s.stop();
    assert_each_once(&lines, "id", (0..30).flat_map(|f| (0..25).map(move |i| format!("{f}-{i}"))));
}

#[test]
fn a_throttled_file_is_deferred_not_dropped_and_quiet_files_keep_their_latency() {
    // The issue's test: a throttle keyed by pod on a file source leaves the
    // noisy pod's lines on disk past 500 a second, drops none of them, and
    // the quiet pod's lines still arrive at once.
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods");
    let noisy = pods.join("shop_noisy_1a2b3c/app/0.log");
    let quiet = pods.join("shop_quiet_4d5e6f/app/0.log");
    for f in [&noisy, &quiet] {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    }
    let cri = |pod: &str, i: usize| format!("2024-05-01T10:00:00.000000000Z stdout F {{\"pod\":\"{pod}\",\"i\":{i}}}");
    append(&noisy, (0..3000).map(|i| cri("noisy", i)));
    append(&quiet, [cri("quiet", 0)]);
    let cfg = config_with_api(
        &dir.path().join("data"),
        &[glob(dir.path(), "pods/**/*.log")],
        "[sources.files.kubernetes]\nenabled = true",
    ) + "inputs = [\"calm\"]\n[transforms.calm]\ntype = \"throttle\"\ninputs = [\"files\"]\n\
         threshold = 500\nwindow = \"1s\"\nkey = \"kubernetes.pod\"\n";
    let s = Sluice::start(&cfg);
    let started = Instant::now();
    s.wait_until("the quiet pod's first line", T, |l| l.iter().any(|l| l.contains("\"quiet\"")));

    // While the noisy file waits for its windows, quiet lines go through.
    for i in 1..=5 {
        let written = Instant::now();
        append(&quiet, [cri("quiet", i)]);
        let tag = format!("\"pod\":\"quiet\",\"i\":{i},");
        s.wait_until("a quiet line", T, |l| l.iter().any(|l| l.contains(&tag)));
        let latency = written.elapsed();
        assert!(latency < Duration::from_millis(900), "quiet line {i} took {latency:?}");
    }
    let noisy_by_now = counts(&s.lines(), "pod").get("noisy").copied().unwrap_or(0);
    let windows = started.elapsed().as_secs() as usize + 1;
    assert!(
        noisy_by_now <= 500 * (windows + 1),
        "{noisy_by_now} noisy lines in {windows} windows of 500"
    );

    let lines = s.wait_until("every noisy line", T, |l| {
        l.iter().filter(|l| l.contains("\"noisy\"")).count() >= 3000
    });
    let noisy_lines: Vec<String> = lines.iter().filter(|l| l.contains("\"noisy\"")).cloned().collect();
    assert_each_once(&noisy_lines, "i", (0..3000).map(|i| i.to_string()));
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "3000 lines at 500 a second took under 4 s"
    );
    assert_eq!(
        s.metric("sluice_transform_events_dropped_total{reason=\"throttled\",transform=\"calm\"}"),
        0.0
    );
    assert!(s.metric("sluice_transform_deferred_events_total{key=\"noisy\",transform=\"calm\"}") > 0.0);
    let _ = s.stop();
}
