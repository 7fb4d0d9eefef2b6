//! One journal entry as one sluice event: a JSON line with the fields
//! sluice knows (`message`, `level`, `time`, `host`, `process`) at the top
//! and every other journal field, under its own name, in `journald`.
//!
//! ```text
//! {"message":"…","level":"err","time":"2026-12-06T10:37:51.517618Z","host":"node-1",
//!  "process":{"pid":812,"name":"nginx","executable":"/usr/sbin/nginx",
//!             "command":"nginx: worker process","unit":"nginx.service"},
//!  "journald":{"SYSLOG_IDENTIFIER":"nginx","_BOOT_ID":"…","__CURSOR":"…",…}}
//! ```
//!
//! A field that appears more than once (the journal allows it) becomes an
//! array of its values in `journald`, in the order they came. Values that
//! are not UTF-8 are kept with U+FFFD in place of the bad bytes.

use std::borrow::Cow;
use std::io::Write;

use super::export::FieldSpan;
use crate::decode::syslog::SEVERITIES;
use crate::json_text::escape_json_str;

/// The event's fields that come from one journal field each.
#[derive(Debug, Default)]
struct Known<'a> {
    message: Option<&'a [u8]>,
    priority: Option<&'a [u8]>,
    realtime: Option<&'a [u8]>,
    hostname: Option<&'a [u8]>,
    pid: Option<&'a [u8]>,
    comm: Option<&'a [u8]>,
    exe: Option<&'a [u8]>,
    cmdline: Option<&'a [u8]>,
    unit: Option<&'a [u8]>,
}

/// What rendering needs besides the entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RenderOptions {
    /// Set the top-level `host` from `_HOSTNAME` (off when the config
    /// disables `host`).
    pub(crate) host: bool,
}

/// Reusable scratch space, so rendering allocates nothing per entry.
#[derive(Debug, Default)]
pub(crate) struct Renderer {
    /// Indexes into the entry's fields that go into `journald`.
    rest: Vec<usize>,
}

/// The value of the first field named `key`.
pub(crate) fn field<'a>(buf: &'a [u8], fields: &[FieldSpan], key: &[u8]) -> Option<&'a [u8]> {
    fields.iter().find(|f| &buf[f.key.clone()] == key).map(|f| &buf[f.value.clone()])
}

fn put_str(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    // `from_utf8` checks ASCII a word at a time; the lossy walk (invalid
    // bytes become U+FFFD) is only for the rare value that needs it.
    match std::str::from_utf8(value) {
        Ok(s) => escape_json_str(s, out),
        Err(_) => escape_json_str(&String::from_utf8_lossy(value), out),
    }
    out.push(b'"');
}

fn put_member(out: &mut Vec<u8>, first: &mut bool, key: &str, value: &[u8]) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    put_str(out, value);
}

/// `PRIORITY` (`"0"`…`"7"`) as a syslog severity name.
fn level(priority: &[u8]) -> Option<&'static str> {
    match priority {
        [d @ b'0'..=b'7'] => Some(SEVERITIES[usize::from(d - b'0')]),
        _ => None,
    }
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl Renderer {
    /// Appends the entry (`fields` are spans of `buf`) to `out` as one JSON
    /// object, without a newline. `truncated` marks an entry cut at the
    /// size limit (`"journald_truncated":true`).
    pub(crate) fn render(&mut self, buf: &[u8], fields: &[FieldSpan], truncated: bool, opts: RenderOptions, out: &mut Vec<u8>) {
        let mut k = Known::default();
        self.rest.clear();
        for (i, f) in fields.iter().enumerate() {
            let value = &buf[f.value.clone()];
            let slot = match &buf[f.key.clone()] {
                b"MESSAGE" => &mut k.message,
                b"PRIORITY" if level(value).is_some() => &mut k.priority,
                b"__REALTIME_TIMESTAMP" if parse_u64(value).is_some() => &mut k.realtime,
                b"_HOSTNAME" if opts.host => &mut k.hostname,
                b"_PID" if parse_u64(value).is_some() => &mut k.pid,
                b"_COMM" => &mut k.comm,
                b"_EXE" => &mut k.exe,
                b"_CMDLINE" => &mut k.cmdline,
                b"_SYSTEMD_UNIT" => &mut k.unit,
                _ => {
                    self.rest.push(i);
                    continue;
                }
            };
            if slot.is_none() {
                *slot = Some(value);
            } else {
                // A second value of a mapped field stays in `journald`.
                self.rest.push(i);
            }
        }
        out.push(b'{');
        let mut first = true;
        if let Some(m) = k.message {
            put_member(out, &mut first, "message", m);
        }
        if let Some(l) = k.priority.and_then(level) {
            put_member(out, &mut first, "level", l.as_bytes());
        }
        if let Some(t) = k
            .realtime
            .and_then(parse_u64)
            .and_then(|us| i64::try_from(us).ok())
            .and_then(|us| jiff::Timestamp::from_microsecond(us).ok())
        {
            if !first {
                out.push(b',');
            }
            first = false;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "\"time\":\"{t}\"");
        }
        if let Some(h) = k.hostname {
            put_member(out, &mut first, "host", h);
        }
        if k.pid.is_some() || k.comm.is_some() || k.exe.is_some() || k.cmdline.is_some() || k.unit.is_some() {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(b"\"process\":{");
            let mut inner = true;
            if let Some(pid) = k.pid.and_then(parse_u64) {
                inner = false;
                let _ = write!(out, "\"pid\":{pid}");
            }
            for (key, v) in [("name", k.comm), ("executable", k.exe), ("command", k.cmdline), ("unit", k.unit)] {
                if let Some(v) = v {
                    put_member(out, &mut inner, key, v);
                }
            }
            out.push(b'}');
        }
        if !self.rest.is_empty() {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(b"\"journald\":{");
            // Stable sort by name: repeated fields sit together, in order.
            self.rest
                .sort_by(|&a, &b| buf[fields[a].key.clone()].cmp(&buf[fields[b].key.clone()]));
            let mut i = 0;
            while i < self.rest.len() {
                let key = &buf[fields[self.rest[i]].key.clone()];
                let mut j = i + 1;
                while j < self.rest.len() && &buf[fields[self.rest[j]].key.clone()] == key {
                    j += 1;
                }
                if i > 0 {
                    out.push(b',');
                }
                put_str(out, key);
                out.push(b':');
                if j - i == 1 {
                    put_str(out, &buf[fields[self.rest[i]].value.clone()]);
                } else {
                    out.push(b'[');
                    for (n, &f) in self.rest[i..j].iter().enumerate() {
                        if n > 0 {
                            out.push(b',');
                        }
                        put_str(out, &buf[fields[f].value.clone()]);
                    }
                    out.push(b']');
                }
                i = j;
            }
            out.push(b'}');
        }
        if truncated {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(b"\"journald_truncated\":true");
        }
        out.push(b'}');
    }
}

/// A unit name as `systemctl` completes it: `nginx` is `nginx.service`.
pub(crate) fn unit_name(name: &str) -> Cow<'_, str> {
    if name.contains('.') {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(format!("{name}.service"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::export::{parse_entry, Step};
    use super::*;

    fn render(text: &[u8], host: bool) -> serde_json::Value {
        let mut spans = Vec::new();
        assert!(matches!(parse_entry(text, 1 << 20, &mut spans), Step::Entry { .. }));
        let mut out = Vec::new();
        Renderer::default().render(text, &spans, false, RenderOptions { host }, &mut out);
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn process_fields_and_priority_map_to_sluice_metadata() {
        let v = render(
            b"__CURSOR=s=1;i=2\n__REALTIME_TIMESTAMP=1796553471517618\nPRIORITY=3\n_PID=812\n_COMM=nginx\n\
_EXE=/usr/sbin/nginx\n_CMDLINE=nginx: worker\n_SYSTEMD_UNIT=nginx.service\n_HOSTNAME=node-1\nMESSAGE=it \"broke\"\n\n",
            true,
        );
        assert_eq!(
            v,
            serde_json::json!({
                "message": "it \"broke\"",
                "level": "err",
                "time": "2026-12-06T10:37:51.517618Z",
                "host": "node-1",
                "process": {"pid": 812, "name": "nginx", "executable": "/usr/sbin/nginx",
                            "command": "nginx: worker", "unit": "nginx.service"},
                "journald": {"__CURSOR": "s=1;i=2"}
            })
        );
    }

    #[test]
    fn repeated_fields_become_arrays_and_odd_values_stay_in_journald() {
        let v = render(b"TAG=a\nPRIORITY=9\nTAG=b\n_PID=x\nZ=\xff\n_HOSTNAME=h\n\n", false);
        assert_eq!(
            v,
            serde_json::json!({"journald": {"PRIORITY": "9", "TAG": ["a", "b"], "Z": "\u{fffd}", "_HOSTNAME": "h", "_PID": "x"}})
        );
    }

    #[test]
    fn bare_unit_names_are_services() {
        assert_eq!(unit_name("nginx"), "nginx.service");
        assert_eq!(unit_name("kubelet.service"), "kubelet.service");
        assert_eq!(unit_name("-.mount"), "-.mount");
    }
}
