//! Settings of the journald source and the `journalctl` command line they
//! make.

use serde::Deserialize;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::entry::unit_name;
use crate::config::{duration, ByteSize, ConfigError, Validate};
use crate::decode::syslog::SEVERITIES;

/// Settings of the journald source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JournaldConfig {
    /// The `journalctl` program (a path, or a name looked up in `PATH`).
    #[serde(default = "default_journalctl")]
    pub(crate) journalctl_path: PathBuf,
    /// How the journal is read: `auto` (libsystemd when this machine has
    /// it, else journalctl), `library` or `journalctl`.
    #[serde(default)]
    pub(crate) reader: ReaderKind,
    /// Read the journal files in this directory (`journalctl
    /// --directory`) instead of the system journal.
    #[serde(default)]
    pub(crate) journal_directory: Option<PathBuf>,
    /// Only entries of these units (`nginx` means `nginx.service`); empty
    /// for every unit and entries of no unit (the kernel).
    #[serde(default)]
    pub(crate) include_units: Vec<String>,
    /// Leave out entries of these units (sluice's own, to avoid reading
    /// what it writes about itself when it logs to the journal).
    #[serde(default)]
    pub(crate) exclude_units: Vec<String>,
    /// Only entries of this priority or more severe (`err`, `warning`, or
    /// `0`…`7`), as `journalctl --priority`; entries without one are left
    /// out. Unset: every entry.
    #[serde(default)]
    pub(crate) priority: Option<String>,
    /// Only entries of the running boot (`journalctl --boot`).
    #[serde(default = "default_true")]
    pub(crate) current_boot_only: bool,
    /// On a first start (no checkpoint yet), begin with entries written
    /// from now on instead of the oldest kept.
    #[serde(default)]
    pub(crate) since_now: bool,
    /// Keep reading as entries are written (`journalctl --follow`); false
    /// reads what is there and ends the source, like a file replay.
    #[serde(default = "default_true")]
    pub(crate) follow: bool,
    /// Largest entry kept whole; a larger one (a core dump) keeps its
    /// fields up to this size and is flagged `journald_truncated`.
    #[serde(default = "default_max_entry_bytes")]
    pub(crate) max_entry_bytes: ByteSize,
    /// How often the acknowledged cursor is written.
    #[serde(default = "default_checkpoint_interval", deserialize_with = "duration")]
    pub(crate) checkpoint_interval: Duration,
    /// At shutdown, how long to wait for sinks to acknowledge what was
    /// read, for the last checkpoint.
    #[serde(default = "default_drain_timeout", deserialize_with = "duration")]
    pub(crate) drain_timeout: Duration,
}

/// How the source reads the journal.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ReaderKind {
    /// libsystemd's API when `libsystemd.so.0` loads, else journalctl.
    #[default]
    Auto,
    /// libsystemd's `sd-journal` API, in-process (see `library.rs`).
    Library,
    /// `journalctl --output=export` as a child process.
    Journalctl,
}

fn default_journalctl() -> PathBuf {
    "journalctl".into()
}
fn default_true() -> bool {
    true
}
fn default_max_entry_bytes() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Smallest `max_entry_bytes`: room for the fields every entry has.
const MIN_ENTRY_BYTES: u64 = 4096;

/// Largest `max_entry_bytes`: batch spans are 32-bit.
const MAX_ENTRY_BYTES: u64 = 1 << 30;

/// A unit name systemd would accept: no spaces, slashes or control bytes.
fn valid_unit(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

impl Validate for JournaldConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.journalctl_path.as_os_str().is_empty() {
            errors.push(ConfigError::at(path, "journalctl_path", "must not be empty"));
        }
        if self.journal_directory.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            errors.push(ConfigError::at(
                path,
                "journal_directory",
                "must not be empty; leave it out for the system journal",
            ));
        }
        for (key, units) in [("include_units", &self.include_units), ("exclude_units", &self.exclude_units)] {
            if let Some(bad) = units.iter().find(|u| !valid_unit(u)) {
                errors.push(ConfigError::at(path, key, format!("{bad:?} is not a unit name")));
            }
        }
        if let Some(p) = &self.priority {
            if priority_level(p).is_none() {
                errors.push(ConfigError::at(
                    path,
                    "priority",
                    format!("{p:?} is not a priority: use one of {} or 0 to 7", SEVERITIES.join(", ")),
                ));
            }
        }
        if !(MIN_ENTRY_BYTES..=MAX_ENTRY_BYTES).contains(&self.max_entry_bytes.0) {
            errors.push(ConfigError::at(path, "max_entry_bytes", "must be between 4KiB and 1GiB"));
        }
        if self.checkpoint_interval.is_zero() {
            errors.push(ConfigError::at(path, "checkpoint_interval", "must be above zero"));
        }
    }
}

/// A priority name or digit as its number (0 is `emerg`, 7 `debug`).
pub(crate) fn priority_level(p: &str) -> Option<usize> {
    let p = p.trim();
    SEVERITIES
        .iter()
        .position(|s| s.eq_ignore_ascii_case(p))
        .or_else(|| p.parse::<usize>().ok().filter(|n| *n < SEVERITIES.len()))
}

impl JournaldConfig {
    /// `journalctl`'s arguments: export format from `after_cursor` (the
    /// acknowledged or last read cursor), else from the start the settings
    /// say, with the unit and priority filters as journal matches.
    pub(crate) fn journalctl_args(&self, after_cursor: Option<&str>) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--output=export".into(), "--no-pager".into(), "--no-tail".into()];
        if self.follow {
            args.push("--follow".into());
        }
        if let Some(dir) = &self.journal_directory {
            let mut a = OsString::from("--directory=");
            a.push(dir);
            args.push(a);
        }
        if self.current_boot_only {
            // The running boot by its id: a bare `--boot` means the last
            // boot in the files when `--directory` is given.
            match super::library::running_boot_id() {
                Ok(id) => args.push(format!("--boot={id}").into()),
                Err(_) => args.push("--boot".into()),
            }
        }
        match after_cursor {
            Some(c) => args.push(format!("--after-cursor={c}").into()),
            None if self.since_now => args.push("--since=now".into()),
            None => {}
        }
        if let Some(level) = self.priority.as_deref().and_then(priority_level) {
            args.push(format!("--priority={level}").into());
        }
        // Matches on one field are alternatives (journalctl(1)).
        for unit in &self.include_units {
            args.push(format!("_SYSTEMD_UNIT={}", unit_name(unit)).into());
        }
        args
    }

    /// The journal matches of the unit, priority and boot settings, in
    /// groups that must all hold (the matches of one group are
    /// alternatives), as libsystemd takes them.
    pub(crate) fn match_groups(&self) -> std::io::Result<Vec<Vec<String>>> {
        let mut groups = Vec::new();
        if let Some(level) = self.priority.as_deref().and_then(priority_level) {
            groups.push((0..=level).map(|l| format!("PRIORITY={l}")).collect());
        }
        if !self.include_units.is_empty() {
            groups.push(
                self.include_units
                    .iter()
                    .map(|u| format!("_SYSTEMD_UNIT={}", unit_name(u)))
                    .collect(),
            );
        }
        if self.current_boot_only {
            groups.push(vec![format!("_BOOT_ID={}", super::library::running_boot_id()?)]);
        }
        Ok(groups)
    }

    /// True when the journal is read through libsystemd: asked for, or
    /// `auto` on a machine that has it.
    pub(crate) fn uses_library(&self) -> bool {
        match self.reader {
            ReaderKind::Library => true,
            ReaderKind::Auto => super::library::available(),
            ReaderKind::Journalctl => false,
        }
    }

    /// The excluded units as the journal spells them.
    pub(crate) fn excluded_units(&self) -> Vec<Vec<u8>> {
        self.exclude_units.iter().map(|u| unit_name(u).as_bytes().to_vec()).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::topology::{Config, Format};

    fn parse(extra: &str) -> Result<super::JournaldConfig, Vec<String>> {
        let text = format!("data_dir = \"/tmp/j\"\n[sources.j]\ntype = \"journald\"\n{extra}\n[sinks.out]\ntype = \"stdout\"\n");
        match Config::from_str(&text, Format::Toml, &|_| None) {
            Ok(c) => match &c.sources["j"] {
                crate::sources::SourceConfig::Journald(j) => Ok((**j).clone()),
                _ => panic!("not journald"),
            },
            Err(e) => Err(e.0.into_iter().map(|e| e.path).collect()),
        }
    }

    #[test]
    fn journald_settings_are_checked_with_key_paths() {
        let errs = parse("priority = \"loud\"\ninclude_units = [\"a b\"]\nmax_entry_bytes = 10\ncheckpoint_interval = \"0s\"").unwrap_err();
        for want in [
            "sources.j.priority",
            "sources.j.include_units",
            "sources.j.max_entry_bytes",
            "sources.j.checkpoint_interval",
        ] {
            assert!(errs.iter().any(|e| e == want), "missing {want} in {errs:?}");
        }
    }

    #[test]
    fn settings_become_journalctl_matches_and_flags() {
        let c = parse("journal_directory = \"/var/log/journal\"\ninclude_units = [\"nginx\", \"kubelet.service\"]\npriority = \"warning\"")
            .unwrap();
        let args: Vec<String> = c
            .journalctl_args(Some("s=1;i=2"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let boot = format!("--boot={}", super::super::library::running_boot_id().unwrap());
        assert_eq!(
            args,
            [
                "--output=export",
                "--no-pager",
                "--no-tail",
                "--follow",
                "--directory=/var/log/journal",
                boot.as_str(),
                "--after-cursor=s=1;i=2",
                "--priority=4",
                "_SYSTEMD_UNIT=nginx.service",
                "_SYSTEMD_UNIT=kubelet.service"
            ]
        );
        assert_eq!(
            c.match_groups().unwrap(),
            [
                (0..=4).map(|l| format!("PRIORITY={l}")).collect::<Vec<_>>(),
                vec!["_SYSTEMD_UNIT=nginx.service".to_owned(), "_SYSTEMD_UNIT=kubelet.service".to_owned()],
                vec![format!("_BOOT_ID={}", super::super::library::running_boot_id().unwrap())],
            ]
        );
        let first = parse("since_now = true\ncurrent_boot_only = false\nfollow = false").unwrap();
        let args: Vec<String> = first.journalctl_args(None).into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(args, ["--output=export", "--no-pager", "--no-tail", "--since=now"]);
    }
}
