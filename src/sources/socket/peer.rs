//! Who is on the other end of a unix socket: the kernel's credentials of
//! the peer (SO_PEERCRED on a connection, SCM_CREDENTIALS on a datagram),
//! and what `/proc/<pid>` says about that process. Rendered once per
//! connection (or per sending process, for datagrams) into the metadata
//! every event of it carries.

use serde_json::{Map, Value};
use std::net::IpAddr;

use crate::enrich::{EnrichConfig, ProcessInfo};

/// Most bytes read from `/proc/<pid>/environ`: environments are a few KiB;
/// this bounds the read for a process that has a huge one.
const MAX_ENVIRON_BYTES: u64 = 1 << 20;

/// Peer variables that fill the standard metadata members instead of
/// `process.environment`.
const KNOWN_VARIABLES: [(&str, &str, &str); 3] = [
    ("SLUICE_RELEASE", "release", "version"),
    ("SLUICE_RELEASE_COMMIT", "release", "commit"),
    ("SLUICE_PROCESS_TYPE", "process", "type"),
];

/// The kernel's word on a unix socket peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PeerCredentials {
    /// Process id, when the kernel knows it (0 means unknown).
    pub(crate) pid: Option<u32>,
    /// User id.
    pub(crate) uid: u32,
    /// Group id.
    pub(crate) gid: u32,
}

/// What `/proc/<pid>` says about a process.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ProcessDetails {
    /// `/proc/<pid>/cmdline`, arguments joined by spaces.
    pub(crate) command: Option<String>,
    /// The target of `/proc/<pid>/exe`.
    pub(crate) executable: Option<String>,
    /// The requested variables found in `/proc/<pid>/environ`, in the
    /// order they were requested.
    pub(crate) environment: Vec<(String, String)>,
}

/// Reads `/proc/<pid>`. Missing parts (the process exited, reading its
/// environment is not permitted) are left out, never errors. Blocking:
/// call from a blocking thread.
pub(crate) fn process_details(pid: u32, environment: &[String]) -> ProcessDetails {
    let command = crate::sources::stdin::command_line(pid);
    let executable = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let environment = if environment.is_empty() {
        Vec::new()
    } else {
        match read_environ(pid) {
            Ok(raw) => pick_variables(&raw, environment),
            Err(error) => {
                tracing::debug!(pid, %error, "cannot read the peer's environment; release variables left out");
                Vec::new()
            }
        }
    };
    ProcessDetails {
        command,
        executable,
        environment,
    }
}

fn read_environ(pid: u32) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut raw = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/environ"))?
        .take(MAX_ENVIRON_BYTES)
        .read_to_end(&mut raw)?;
    Ok(raw)
}

/// The `NAME=value` entries of a NUL-separated environment whose names are
/// in `wanted`, in the order of `wanted`.
fn pick_variables(raw: &[u8], wanted: &[String]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for name in wanted {
        let hit = raw.split(|&b| b == 0).find_map(|entry| {
            let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
            Some(String::from_utf8_lossy(value).into_owned())
        });
        if let Some(value) = hit {
            found.push((name.clone(), value));
        }
    }
    found
}

/// The metadata of a unix socket peer: the collector's own (release, host,
/// static fields) with the peer's process merged in. What the peer says
/// about itself (its `SLUICE_RELEASE`) wins over the collector's default.
pub(crate) fn unix_peer_metadata(
    enrich: &EnrichConfig,
    cred: Option<PeerCredentials>,
    details: Option<&ProcessDetails>,
) -> Map<String, Value> {
    let info = ProcessInfo {
        pid: cred.and_then(|c| c.pid),
        command: details.and_then(|d| d.command.clone()),
    };
    let mut meta = enrich.metadata(Some(&info));
    let Some(cred) = cred else { return meta };
    {
        let process = object_entry(&mut meta, "process");
        if let Some(exe) = details.and_then(|d| d.executable.clone()) {
            process.insert("executable".into(), Value::String(exe));
        }
        process.insert("uid".into(), Value::from(cred.uid));
        process.insert("gid".into(), Value::from(cred.gid));
    }
    for (name, value) in details.map(|d| d.environment.as_slice()).unwrap_or_default() {
        if value.is_empty() {
            continue;
        }
        match KNOWN_VARIABLES.iter().find(|(var, _, _)| var == name) {
            Some((_, object, key)) => {
                object_entry(&mut meta, object).insert((*key).into(), Value::String(value.clone()));
            }
            None => {
                let process = object_entry(&mut meta, "process");
                let env = object_entry(process, "environment");
                env.insert(name.clone(), Value::String(value.clone()));
            }
        }
    }
    meta
}

/// The metadata of a network peer: the collector's own plus `peer.ip`.
pub(crate) fn ip_peer_metadata(enrich: &EnrichConfig, ip: Option<IpAddr>) -> Map<String, Value> {
    let mut meta = enrich.metadata(None);
    if let Some(ip) = ip {
        object_entry(&mut meta, "peer").insert("ip".into(), Value::String(ip.to_canonical().to_string()));
    }
    meta
}

/// `meta[key]` as an object, created (or replacing a non-object) if needed.
fn object_entry<'m>(meta: &'m mut Map<String, Value>, key: &str) -> &'m mut Map<String, Value> {
    let entry = meta.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_requested_variables_are_taken() {
        let raw = b"PATH=/bin\0SLUICE_RELEASE=v7\0SECRET=x\0GIT_SHA=abc\0SLUICE_RELEASE_X=no\0";
        let got = pick_variables(raw, &["GIT_SHA".into(), "SLUICE_RELEASE".into(), "MISSING".into()]);
        assert_eq!(got, vec![("GIT_SHA".into(), "abc".into()), ("SLUICE_RELEASE".into(), "v7".into())]);
    }

    #[test]
    fn peer_release_wins_over_the_collector_default() {
        let enrich = EnrichConfig {
            release: Some("collector".into()),
            disable_host: true,
            ..Default::default()
        };
        let cred = PeerCredentials {
            pid: Some(42),
            uid: 1000,
            gid: 100,
        };
        let details = ProcessDetails {
            command: Some("web --port 80".into()),
            executable: Some("/usr/bin/web".into()),
            environment: vec![("SLUICE_RELEASE".into(), "v9".into()), ("GIT_SHA".into(), "abc".into())],
        };
        let meta = unix_peer_metadata(&enrich, Some(cred), Some(&details));
        assert_eq!(
            Value::Object(meta),
            json!({
                "release": {"version": "v9"},
                "process": {"pid": 42, "command": "web --port 80", "executable": "/usr/bin/web", "uid": 1000, "gid": 100,
                            "environment": {"GIT_SHA": "abc"}}
            })
        );
    }

    #[test]
    fn our_own_process_is_described() {
        let me = std::process::id();
        let d = process_details(me, &["PATH".into()]);
        assert!(d.command.is_some());
        assert!(d.executable.is_some());
        assert_eq!(d.environment.len(), 1);
    }
}
