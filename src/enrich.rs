//! Release and process metadata, rendered once per source (file, connection,
//! process) into JSON members that the decoder splices into every event.
//! Enriching an event costs a memcpy, never a re-serialisation.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// One top-level member to add to events: `"key":<value>`, pre-rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    key: Box<str>,
    rendered: Box<[u8]>,
}

impl Member {
    /// Renders `"key":value`.
    pub(crate) fn new(key: &str, value: &Value) -> Member {
        let mut rendered = serde_json::to_vec(key).unwrap_or_default();
        rendered.push(b':');
        // Serialising a serde_json::Value cannot fail.
        rendered.extend(serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()));
        Member {
            key: key.into(),
            rendered: rendered.into(),
        }
    }

    /// Renders `"key":"value"` for a string value: the per-event members
    /// (a container line's timestamp) take this path, one buffer each.
    pub fn string(key: &str, value: &str) -> Member {
        let mut rendered = Vec::with_capacity(key.len() + value.len() + 6);
        rendered.push(b'"');
        crate::json_text::escape_json_str(key, &mut rendered);
        rendered.extend_from_slice(b"\":\"");
        crate::json_text::escape_json_str(value, &mut rendered);
        rendered.push(b'"');
        Member {
            key: key.into(),
            rendered: rendered.into(),
        }
    }

    /// The member's key.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// `"key":value` as JSON bytes.
    pub fn rendered(&self) -> &[u8] {
        &self.rendered
    }
}

/// Members added to every event of a source, in output order. Fields the
/// event already has win: a member whose key the event has is left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fragment {
    members: Vec<Member>,
    /// The union of the members' [`key_signature`]s.
    key_signatures: u64,
}

impl Fragment {
    /// Renders each top-level entry of `meta` as one member.
    pub fn from_map(meta: &Map<String, Value>) -> Fragment {
        let members: Vec<Member> = meta.iter().map(|(k, v)| Member::new(k, v)).collect();
        let key_signatures = members.iter().fold(0, |acc, m| acc | key_signature(m.key()));
        Fragment { members, key_signatures }
    }

    /// The union of the members' [`key_signature`]s: an event key whose
    /// signature is not in it is none of the members' keys.
    pub(crate) fn key_signatures(&self) -> u64 {
        self.key_signatures
    }

    /// The members, in order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Bytes the members add to each event they are spliced into: each
    /// rendered member and its comma (a size hint for decode buffers).
    pub(crate) fn spliced_len(&self) -> usize {
        self.members.iter().map(|m| m.rendered().len() + 1).sum()
    }
}

/// A key as one bit of 64: its [`crate::json_text::key_bucket`]. Two keys with
/// different signatures differ, so the decoder compares an event's key with
/// the members' keys only when the signatures meet.
#[inline]
pub(crate) fn key_signature(key: &str) -> u64 {
    1 << crate::json_text::key_bucket(key.as_bytes())
}

/// Where a batch came from and the metadata every event of it shares.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The source's name in the config.
    pub(crate) source: Arc<str>,
    /// The source type (`stdin`, `file`, …).
    pub(crate) kind: &'static str,
    /// The stream within the source: a file path, a peer address; empty for
    /// stdin.
    pub(crate) stream: String,
    /// The metadata as JSON, for label and key templates (`release.version`).
    pub(crate) meta: Map<String, Value>,
    /// The same metadata, pre-rendered for splicing.
    pub fragment: Fragment,
}

impl SourceContext {
    /// A context whose fragment is rendered from `meta`.
    pub fn new(source: Arc<str>, kind: &'static str, stream: String, meta: Map<String, Value>) -> SourceContext {
        let fragment = Fragment::from_map(&meta);
        SourceContext {
            source,
            kind,
            stream,
            meta,
            fragment,
        }
    }

    /// Looks up a dotted path (`kubernetes.namespace`) in the metadata.
    pub(crate) fn meta_value(&self, path: &str) -> Option<&Value> {
        lookup(&self.meta, path)
    }
}

/// Looks up a dotted path (`kubernetes.namespace`) in metadata members.
pub(crate) fn lookup<'a>(meta: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = meta.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// The `[enrich]` section: metadata the collector knows about the processes
/// it serves. Each defaults to its `SLUICE_*` environment variable.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// `release.version` (`SLUICE_RELEASE`).
    pub release: Option<String>,
    /// `release.commit` (`SLUICE_RELEASE_COMMIT`).
    pub release_commit: Option<String>,
    /// `process.type`: web, worker, clock (`SLUICE_PROCESS_TYPE`).
    pub process_type: Option<String>,
    /// `host` (`SLUICE_HOST`; else the machine's host name).
    pub host: Option<String>,
    /// Leave out `host` entirely.
    #[serde(default)]
    pub disable_host: bool,
    /// Static members added to every event (`env = "prod"`).
    #[serde(default)]
    pub fields: Map<String, Value>,
}

/// Metadata about the process that writes the events, when a source knows
/// it (the pipe writer, a unix socket peer, a child of `sluice run`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessInfo {
    /// Process id.
    pub(crate) pid: Option<u32>,
    /// Command line, arguments joined by spaces.
    pub(crate) command: Option<String>,
}

impl EnrichConfig {
    /// Fills unset values from the environment (`SLUICE_RELEASE`, …).
    pub(crate) fn with_env(mut self) -> EnrichConfig {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        self.release = self.release.or_else(|| env("SLUICE_RELEASE"));
        self.release_commit = self.release_commit.or_else(|| env("SLUICE_RELEASE_COMMIT"));
        self.process_type = self.process_type.or_else(|| env("SLUICE_PROCESS_TYPE"));
        self.host = self.host.or_else(|| env("SLUICE_HOST")).or_else(host_name);
        self
    }

    /// The metadata map for a source, with what the source knows about the
    /// writing process. Unknown values are left out, never empty strings.
    pub fn metadata(&self, process: Option<&ProcessInfo>) -> Map<String, Value> {
        let mut meta = Map::new();
        let mut release = Map::new();
        put(&mut release, "version", self.release.as_deref());
        put(&mut release, "commit", self.release_commit.as_deref());
        if !release.is_empty() {
            meta.insert("release".into(), Value::Object(release));
        }
        let mut proc = Map::new();
        put(&mut proc, "type", self.process_type.as_deref());
        if let Some(p) = process {
            if let Some(pid) = p.pid {
                proc.insert("pid".into(), Value::from(pid));
            }
            put(&mut proc, "command", p.command.as_deref());
        }
        if !proc.is_empty() {
            meta.insert("process".into(), Value::Object(proc));
        }
        if !self.disable_host {
            put(&mut meta, "host", self.host.as_deref());
        }
        for (k, v) in &self.fields {
            meta.insert(k.clone(), v.clone());
        }
        meta
    }
}

fn put(map: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        map.insert(key.into(), Value::String(v.into()));
    }
}

/// The machine's host name, if it has one.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_values_are_left_out() {
        let cfg = EnrichConfig {
            release: Some("1.2.3".into()),
            process_type: Some(String::new()),
            disable_host: true,
            ..Default::default()
        };
        let meta = cfg.metadata(None);
        assert_eq!(Value::Object(meta).to_string(), r#"{"release":{"version":"1.2.3"}}"#);
    }

    #[test]
    fn string_members_match_the_general_renderer() {
        for (k, v) in [("time", "2026-11-23T01:02:03.123456789Z"), ("k\"ey", "a\nb\u{1}\\")] {
            assert_eq!(Member::string(k, v), Member::new(k, &Value::String(v.into())));
        }
    }

    #[test]
    fn fragment_members_render_key_and_value() {
        let mut m = Map::new();
        m.insert("host".into(), Value::String("n\"1".into()));
        let f = Fragment::from_map(&m);
        assert_eq!(f.members()[0].rendered(), br#""host":"n\"1""#);
    }
}
