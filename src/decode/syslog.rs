//! Syslog, RFC 5424 and RFC 3164, parsed by hand into fields and rendered
//! as one JSON object per message:
//!
//! ```text
//! <165>1 2003-10-11T22:14:15.003Z mymachine evntslog 12 ID47 [exampleSDID@32473 iut="3"] An application event
//! {"facility":"local4","severity":"notice","timestamp":"2003-10-11T22:14:15.003Z","hostname":"mymachine",
//!  "appname":"evntslog","procid":"12","msgid":"ID47","structured_data":{"exampleSDID@32473":{"iut":"3"}},
//!  "message":"An application event"}
//! ```
//!
//! Nil values (`-`) and parts a message does not have are left out. When
//! the message is a JSON object, its members are merged at the top level
//! next to the syslog fields, and the message's own fields win on a clash
//! (an app that logs `{"severity":"warn",…}` keeps its `severity`). A line
//! that is not syslog at all is decoded like any other line (kept as
//! `{"message":…}`, or as-is when it is a JSON object) and reported as
//! malformed so the caller can count it.
//!
//! The parser never allocates and never panics on any input (property
//! tested); rendering reuses the [`SyslogDecoder`]'s scratch buffers.

use serde_json::{Map, Value};
use std::ops::Range;
use std::time::SystemTime;

use super::json::Decoder;
use crate::enrich::{Fragment, Member};
use crate::event::BatchBuilder;
use crate::json_text::escape_json_str;

/// Facility names by code (RFC 5424 table 1, as syslog.h names them).
const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// Severity names by code (RFC 5424 table 2).
pub(crate) const SEVERITIES: [&str; 8] = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];

/// Month abbreviations of RFC 3164 timestamps.
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Longest RFC 3164 tag (app name) taken as one. RFC 3164 says 32; real
/// senders go a little past it, and a longer word is more likely message.
const MAX_TAG_BYTES: usize = 48;

/// Which syslog format a message was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyslogFormat {
    /// RFC 5424 (`<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`).
    Rfc5424,
    /// RFC 3164, the BSD format (`<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG`),
    /// including the local variant without a host name.
    Rfc3164,
}

/// A message's timestamp as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyslogTimestamp<'a> {
    /// RFC 3339 text, kept verbatim.
    Rfc3339(&'a [u8]),
    /// RFC 3164 `Mmm dd hh:mm:ss`: no year and no zone.
    Bsd {
        /// 1 to 12.
        month: u8,
        /// 1 to 31.
        day: u8,
        /// 0 to 23.
        hour: u8,
        /// 0 to 59.
        minute: u8,
        /// 0 to 60 (a leap second).
        second: u8,
    },
}

/// One parsed syslog message; every slice borrows from the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogMessage<'a> {
    /// The format it was in.
    pub(crate) format: SyslogFormat,
    /// Facility code, 0 to 23.
    pub(crate) facility: u8,
    /// Severity code, 0 to 7.
    pub(crate) severity: u8,
    /// When the sender says it happened.
    pub(crate) timestamp: Option<SyslogTimestamp<'a>>,
    /// The sender's host name.
    pub(crate) hostname: Option<&'a [u8]>,
    /// APP-NAME (RFC 5424) or the tag (RFC 3164).
    pub(crate) appname: Option<&'a [u8]>,
    /// PROCID, or the `[pid]` of an RFC 3164 tag.
    pub(crate) procid: Option<&'a [u8]>,
    /// MSGID (RFC 5424 only).
    pub(crate) msgid: Option<&'a [u8]>,
    /// The structured data, validated, as sent (RFC 5424 only).
    pub(crate) structured_data: Option<&'a [u8]>,
    /// The free-form message, without a leading UTF-8 BOM.
    pub(crate) message: &'a [u8],
}

/// Why a line is not syslog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// No `<PRI>` at the start, or a priority above 191.
    #[error("no valid <PRI> at the start")]
    Priority,
    /// An RFC 5424 header that ends early or has an invalid field.
    #[error("incomplete or invalid RFC 5424 header")]
    Header,
    /// RFC 5424 structured data that does not follow the grammar.
    #[error("invalid RFC 5424 structured data")]
    StructuredData,
}

/// Parses one syslog message. Trailing newlines, carriage returns and NULs
/// (as senders append them) are ignored.
pub fn parse(line: &[u8]) -> Result<SyslogMessage<'_>, Malformed> {
    let line = trim_end(line);
    let start = line.iter().position(|&b| b != b' ').unwrap_or(line.len());
    let (pri, rest) = priority(&line[start..]).ok_or(Malformed::Priority)?;
    let facility = pri / 8;
    let severity = pri % 8;
    match version(rest) {
        Some(after) => rfc5424(facility, severity, after),
        None => Ok(rfc3164(facility, severity, rest)),
    }
}

/// The line without the newlines, carriage returns and NULs senders append.
fn trim_end(line: &[u8]) -> &[u8] {
    let end = line.iter().rposition(|&b| !matches!(b, b'\n' | b'\r' | 0)).map_or(0, |i| i + 1);
    &line[..end]
}

/// `<PRI>`: 1 to 3 digits, at most 191. Returns the value and the rest.
fn priority(s: &[u8]) -> Option<(u8, &[u8])> {
    if s.first() != Some(&b'<') {
        return None;
    }
    let digits = s[1..].iter().take(4).take_while(|b| b.is_ascii_digit()).count();
    if !(1..=3).contains(&digits) || s.get(1 + digits) != Some(&b'>') {
        return None;
    }
    let pri = s[1..1 + digits].iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    (pri <= 191).then(|| (pri as u8, &s[2 + digits..]))
}

/// RFC 5424 VERSION: a non-zero digit and up to two more, then a space.
fn version(s: &[u8]) -> Option<&[u8]> {
    let digits = s.iter().take(4).take_while(|b| b.is_ascii_digit()).count();
    if (1..=3).contains(&digits) && s[0] != b'0' && s.get(digits) == Some(&b' ') {
        Some(&s[digits + 1..])
    } else {
        None
    }
}

/// Splits off the next space-separated header field (printable US-ASCII).
fn header_field(s: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    let len = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    let field = &s[..len];
    if field.is_empty() || !field.iter().all(|b| (33..=126).contains(b)) {
        return Err(Malformed::Header);
    }
    let rest = if len < s.len() { &s[len + 1..] } else { &s[len..] };
    Ok((field, rest))
}

fn nil(field: &[u8]) -> Option<&[u8]> {
    (field != b"-").then_some(field)
}

fn rfc5424(facility: u8, severity: u8, s: &[u8]) -> Result<SyslogMessage<'_>, Malformed> {
    let (ts, s) = header_field(s)?;
    let timestamp = match nil(ts) {
        None => None,
        Some(t) if t[0].is_ascii_digit() => Some(SyslogTimestamp::Rfc3339(t)),
        Some(_) => return Err(Malformed::Header),
    };
    let (hostname, s) = header_field(s)?;
    let (appname, s) = header_field(s)?;
    let (procid, s) = header_field(s)?;
    let (msgid, s) = header_field(s)?;
    let sd_len = structured_data_len(s)?;
    let structured_data = nil(&s[..sd_len]);
    let mut message = match s.get(sd_len) {
        None => &s[sd_len..],
        Some(b' ') => &s[sd_len + 1..],
        Some(_) => return Err(Malformed::StructuredData),
    };
    if let Some(rest) = message.strip_prefix(b"\xEF\xBB\xBF") {
        message = rest;
    }
    Ok(SyslogMessage {
        format: SyslogFormat::Rfc5424,
        facility,
        severity,
        timestamp,
        hostname: nil(hostname),
        appname: nil(appname),
        procid: nil(procid),
        msgid: nil(msgid),
        structured_data,
        message,
    })
}

/// Length of the STRUCTURED-DATA at the start of `s`: `-` or one or more
/// `[SD-ID *(SP PARAM-NAME="PARAM-VALUE")]` elements.
fn structured_data_len(s: &[u8]) -> Result<usize, Malformed> {
    if s.first() == Some(&b'-') {
        return Ok(1);
    }
    let mut i = 0;
    while s.get(i) == Some(&b'[') {
        i = sd_element_end(s, i).ok_or(Malformed::StructuredData)?;
    }
    if i == 0 {
        return Err(Malformed::StructuredData);
    }
    Ok(i)
}

/// SD-NAME characters: printable US-ASCII except `=`, space, `]` and `"`.
fn sd_name_byte(b: u8) -> bool {
    (33..=126).contains(&b) && !matches!(b, b'=' | b']' | b'"')
}

/// Given `s[start] == '['`, the offset just past the element's `]`.
fn sd_element_end(s: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    let id_len = s[i..].iter().take_while(|&&b| sd_name_byte(b)).count();
    if id_len == 0 {
        return None;
    }
    i += id_len;
    loop {
        match s.get(i)? {
            b']' => return Some(i + 1),
            b' ' => i += 1,
            _ => return None,
        }
        let name_len = s[i..].iter().take_while(|&&b| sd_name_byte(b)).count();
        if name_len == 0 {
            return None;
        }
        i += name_len;
        if s.get(i) != Some(&b'=') || s.get(i + 1) != Some(&b'"') {
            return None;
        }
        i += 2;
        loop {
            match s.get(i)? {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        i += 1;
    }
}

fn rfc3164(facility: u8, severity: u8, s: &[u8]) -> SyslogMessage<'_> {
    let (timestamp, rest) = match bsd_timestamp(s) {
        Some((ts, rest)) => (Some(ts), rest),
        None => match rfc3339_prefix(s) {
            Some((ts, rest)) => (Some(SyslogTimestamp::Rfc3339(ts)), rest),
            None => (None, s),
        },
    };
    // After a timestamp comes the host name, unless the next word is
    // already a tag (the local format `logger` and glibc send on
    // /dev/log: `<13>Nov 23 02:08:02 root: text`).
    let mut hostname = None;
    let mut rest = rest;
    if timestamp.is_some() {
        let word_len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let word = &rest[..word_len];
        let tag_like = tag(rest).is_some() && (word.ends_with(b":") || word.contains(&b'['));
        if !word.is_empty() && !tag_like && word_len < rest.len() && word.iter().all(|&b| hostname_byte(b)) {
            hostname = Some(word);
            rest = &rest[word_len + 1..];
        }
    }
    let (appname, procid, message) = match tag(rest) {
        Some(t) => (Some(t.app), t.pid, t.message),
        None => (None, None, rest),
    };
    SyslogMessage {
        format: SyslogFormat::Rfc3164,
        facility,
        severity,
        timestamp,
        hostname,
        appname,
        procid,
        msgid: None,
        structured_data: None,
        message,
    }
}

/// An RFC 3164 tag, split from the message after it.
struct Tag<'a> {
    app: &'a [u8],
    pid: Option<&'a [u8]>,
    message: &'a [u8],
}

/// A byte of an RFC 3164 tag. The RFC ends the tag at the first
/// character that is not alphanumeric; real program names also use
/// `-_./@%()` (`postfix/smtpd`, `systemd-logind`, `python3.11`, `(sd-pam)`,
/// `%ASA-6-302013`). Quotes, braces and brackets end it, so a message that
/// is JSON (`{"a":1}`, sent with no tag) is never split at its first colon.
fn tag_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b'@' | b'%' | b'(' | b')')
}

/// A byte of an RFC 3164 HOSTNAME: a host name, an IPv4 or an IPv6
/// address (with a zone). A word with anything else is not a host name,
/// so the start of a JSON message is not taken for one.
fn hostname_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'%')
}

/// An RFC 3164 tag at the start of `s`: `app[pid]: ` or `app: `.
fn tag(s: &[u8]) -> Option<Tag<'_>> {
    let name_len = s.iter().take(MAX_TAG_BYTES + 1).take_while(|&&b| tag_byte(b)).count();
    if name_len == 0 || name_len > MAX_TAG_BYTES {
        return None;
    }
    let app = &s[..name_len];
    let mut i = name_len;
    let mut pid = None;
    if s.get(i) == Some(&b'[') {
        let close = s[i + 1..].iter().take(129).position(|&b| b == b']')?;
        let p = &s[i + 1..i + 1 + close];
        if !p.iter().all(|b| (33..=126).contains(b)) {
            return None;
        }
        pid = (!p.is_empty()).then_some(p);
        i += close + 2;
    }
    if s.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    if s.get(i) == Some(&b' ') {
        i += 1;
    }
    Some(Tag {
        app,
        pid,
        message: &s[i..],
    })
}

/// `Mmm dd hh:mm:ss ` (day space- or zero-padded), then the rest.
fn bsd_timestamp(s: &[u8]) -> Option<(SyslogTimestamp<'static>, &[u8])> {
    if s.len() < 16 || s[3] != b' ' || s[6] != b' ' || s[9] != b':' || s[12] != b':' || s[15] != b' ' {
        return None;
    }
    let month = MONTHS.iter().position(|m| &s[..3] == *m)? as u8 + 1;
    let two = |a: u8, b: u8| -> Option<u8> {
        let hi = if a == b' ' { 0 } else { a.is_ascii_digit().then(|| a - b'0')? };
        b.is_ascii_digit().then(|| hi * 10 + (b - b'0'))
    };
    let day = two(s[4], s[5])?;
    let hour = two(s[7], s[8]).filter(|_| s[7] != b' ')?;
    let minute = two(s[10], s[11]).filter(|_| s[10] != b' ')?;
    let second = two(s[13], s[14]).filter(|_| s[13] != b' ')?;
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some((
        SyslogTimestamp::Bsd {
            month,
            day,
            hour,
            minute,
            second,
        },
        &s[16..],
    ))
}

/// An RFC 3339 timestamp word (`2024-10-11T22:14:15.003+02:00 `), as
/// rsyslog's forwarding format puts in an RFC 3164 header.
fn rfc3339_prefix(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = s.iter().position(|&b| b == b' ')?;
    let word = &s[..len];
    let shaped = word.len() >= 19
        && word[..4].iter().all(u8::is_ascii_digit)
        && word[4] == b'-'
        && word[7] == b'-'
        && word[10] == b'T'
        && word.iter().all(|b| (33..=126).contains(b));
    shaped.then(|| (word, &s[len + 1..]))
}

/// Turns syslog lines into events. One per decode batch: it holds the
/// scratch buffers rendering reuses, and the year RFC 3164 timestamps get.
#[derive(Debug)]
pub struct SyslogDecoder {
    scratch: Vec<u8>,
    text: Vec<u8>,
    params: Vec<(Range<usize>, Range<usize>)>,
    ids: Vec<Range<usize>>,
    year: i64,
    month: u8,
    /// Lines that were not syslog, since the last [`SyslogDecoder::take_malformed`].
    malformed: u64,
    /// Lines decoded with the `truncated` flag.
    truncated: u64,
}

impl SyslogDecoder {
    /// A decoder for lines received at `received_at` (its year completes
    /// RFC 3164 timestamps).
    pub fn new(received_at: SystemTime) -> SyslogDecoder {
        let secs = received_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let (year, month, _) = civil_from_days(secs.div_euclid(86_400));
        SyslogDecoder {
            scratch: Vec::with_capacity(1024),
            text: Vec::new(),
            params: Vec::new(),
            ids: Vec::new(),
            year,
            month,
            malformed: 0,
            truncated: 0,
        }
    }

    /// Malformed lines seen since the last call, resetting the count.
    pub fn take_malformed(&mut self) -> u64 {
        std::mem::take(&mut self.malformed)
    }

    /// Truncated lines seen since the last call, resetting the count.
    pub fn take_truncated(&mut self) -> u64 {
        std::mem::take(&mut self.truncated)
    }

    /// Decodes one line into one event in `out`, through `decoder` (so
    /// field extraction and metadata splicing are the JSON path's).
    /// `truncated` lines keep their syslog fields, get `"truncated":true`,
    /// and their message is not parsed as JSON.
    pub fn decode_line(&mut self, decoder: &mut Decoder, line: &[u8], truncated: bool, fragment: &Fragment, out: &mut BatchBuilder) {
        if truncated {
            self.truncated += 1;
        }
        let msg = match parse(line) {
            Ok(m) => m,
            Err(_) => {
                self.malformed += 1;
                decoder.decode_line(trim_end(line), truncated, &[], fragment, out);
                return;
            }
        };
        if !truncated && looks_like_object(msg.message) {
            let members = self.members(&msg);
            decoder.decode_line(msg.message, false, &members, fragment, out);
            return;
        }
        self.render(&msg, truncated);
        let scratch = std::mem::take(&mut self.scratch);
        decoder.decode_line(&scratch, false, &[], fragment, out);
        self.scratch = scratch;
    }

    /// Renders the whole message as a JSON object into `scratch`.
    fn render(&mut self, m: &SyslogMessage<'_>, truncated: bool) {
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        out.push(b'{');
        self.write_header(m, &mut out);
        out.extend_from_slice(b",\"message\":\"");
        escape_bytes(m.message, &mut out);
        out.push(b'"');
        if truncated {
            out.extend_from_slice(b",\"truncated\":true");
        }
        out.push(b'}');
        self.scratch = out;
    }

    /// Writes `"facility":…` through `"structured_data":…` (no braces).
    fn write_header(&mut self, m: &SyslogMessage<'_>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"facility\":\"");
        out.extend_from_slice(FACILITIES[usize::from(m.facility).min(23)].as_bytes());
        out.extend_from_slice(b"\",\"severity\":\"");
        out.extend_from_slice(SEVERITIES[usize::from(m.severity).min(7)].as_bytes());
        out.push(b'"');
        if let Some(ts) = &m.timestamp {
            out.extend_from_slice(b",\"timestamp\":\"");
            self.write_timestamp(ts, out);
            out.push(b'"');
        }
        for (key, value) in [
            ("hostname", m.hostname),
            ("appname", m.appname),
            ("procid", m.procid),
            ("msgid", m.msgid),
        ] {
            if let Some(v) = value {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\":\"");
                escape_bytes(v, out);
                out.push(b'"');
            }
        }
        if let Some(sd) = m.structured_data {
            out.extend_from_slice(b",\"structured_data\":");
            self.write_structured_data(sd, out);
        }
    }

    fn write_timestamp(&self, ts: &SyslogTimestamp<'_>, out: &mut Vec<u8>) {
        match *ts {
            SyslogTimestamp::Rfc3339(t) => escape_bytes(t, out),
            SyslogTimestamp::Bsd {
                month,
                day,
                hour,
                minute,
                second,
            } => {
                // A December message read in January is from last year.
                let year = if month > self.month + 1 { self.year - 1 } else { self.year };
                let mut num = itoa::Buffer::new();
                out.extend_from_slice(num.format(year).as_bytes());
                for (sep, v) in [(b'-', month), (b'-', day), (b'T', hour), (b':', minute), (b':', second)] {
                    out.push(sep);
                    out.push(b'0' + v / 10);
                    out.push(b'0' + v % 10);
                }
            }
        }
    }

    /// Structured data as `{"SD-ID":{"name":"value",…},…}`. A repeated
    /// SD-ID keeps its first element; a repeated parameter name within an
    /// element becomes an array of its values, in order.
    fn write_structured_data(&mut self, sd: &[u8], out: &mut Vec<u8>) {
        out.push(b'{');
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        let mut i = 0;
        while sd.get(i) == Some(&b'[') {
            let Some(end) = sd_element_end(sd, i) else { break };
            let id_len = sd[i + 1..].iter().take_while(|&&b| sd_name_byte(b)).count();
            let id = i + 1..i + 1 + id_len;
            if !ids.iter().any(|r| sd[r.clone()] == sd[id.clone()]) {
                if !ids.is_empty() {
                    out.push(b',');
                }
                out.push(b'"');
                escape_bytes(&sd[id.clone()], out);
                out.extend_from_slice(b"\":");
                self.collect_params(sd, id.end, end - 1);
                self.write_params(sd, out);
                ids.push(id);
            }
            i = end;
        }
        out.push(b'}');
        self.ids = ids;
    }

    /// Records the name and raw value ranges of the parameters in
    /// `sd[from..to]` (validated by [`sd_element_end`]).
    fn collect_params(&mut self, sd: &[u8], from: usize, to: usize) {
        self.params.clear();
        let mut i = from;
        while i < to {
            if sd[i] == b' ' {
                i += 1;
                continue;
            }
            let name_len = sd[i..to].iter().take_while(|&&b| sd_name_byte(b)).count();
            let name = i..i + name_len;
            i += name_len + 2; // `="`
            let value_start = i;
            while i < to && sd[i] != b'"' {
                i += if sd[i] == b'\\' { 2 } else { 1 };
            }
            let value_end = i.min(to);
            self.params.push((name, value_start..value_end));
            i = value_end + 1;
        }
    }

    fn write_params(&mut self, sd: &[u8], out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for p in 0..self.params.len() {
            let (name, _) = self.params[p].clone();
            if self.params[..p].iter().any(|(n, _)| sd[n.clone()] == sd[name.clone()]) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'"');
            escape_bytes(&sd[name.clone()], out);
            out.extend_from_slice(b"\":");
            let repeats = self.params[p + 1..]
                .iter()
                .filter(|(n, _)| sd[n.clone()] == sd[name.clone()])
                .count();
            if repeats > 0 {
                out.push(b'[');
            }
            let mut first_value = true;
            for q in p..self.params.len() {
                let (n, v) = self.params[q].clone();
                if sd[n] != sd[name.clone()] {
                    continue;
                }
                if !first_value {
                    out.push(b',');
                }
                first_value = false;
                out.push(b'"');
                unescape_sd_value(&sd[v], &mut self.text);
                escape_bytes(&self.text, out);
                out.push(b'"');
            }
            if repeats > 0 {
                out.push(b']');
            }
        }
        out.push(b'}');
    }

    /// The syslog fields as members, for a message that is a JSON object:
    /// its own fields win over these.
    fn members(&mut self, m: &SyslogMessage<'_>) -> Vec<Member> {
        let mut header = Vec::with_capacity(256);
        header.push(b'{');
        self.write_header(m, &mut header);
        header.push(b'}');
        // The header is our own JSON; parsing it back cannot fail.
        let map: Map<String, Value> = serde_json::from_slice(&header).unwrap_or_default();
        map.iter().map(|(k, v)| Member::new(k, v)).collect()
    }
}

/// Whether the message (ignoring surrounding whitespace) is shaped like a
/// JSON object; the JSON decoder decides whether it is one.
fn looks_like_object(msg: &[u8]) -> bool {
    let first = msg.iter().position(|b| !b.is_ascii_whitespace());
    let last = msg.iter().rposition(|b| !b.is_ascii_whitespace());
    matches!((first, last), (Some(f), Some(l)) if l > f && msg[f] == b'{' && msg[l] == b'}')
}

/// RFC 5424 PARAM-VALUE unescaping: `\"`, `\\` and `\]` lose the
/// backslash; any other backslash is kept.
fn unescape_sd_value(v: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\\' && matches!(v.get(i + 1), Some(b'"' | b'\\' | b']')) {
            out.push(v[i + 1]);
            i += 2;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
}

/// Appends bytes as the inside of a JSON string; invalid UTF-8 becomes
/// U+FFFD.
fn escape_bytes(b: &[u8], out: &mut Vec<u8>) {
    match std::str::from_utf8(b) {
        Ok(s) => escape_json_str(s, out),
        Err(_) => escape_json_str(&String::from_utf8_lossy(b), out),
    }
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FieldSet;
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::Arc;
    use std::time::Duration;

    fn decode_all(lines: &[&[u8]]) -> (Vec<Value>, u64) {
        // 2026-11-23T00:00:00Z
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_392_000);
        let mut sys = SyslogDecoder::new(now);
        let mut dec = Decoder::new();
        let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 1024, 8);
        let mut meta = Map::new();
        meta.insert("host".into(), json!("collector"));
        let fragment = Fragment::from_map(&meta);
        for l in lines {
            sys.decode_line(&mut dec, l, false, &fragment, &mut out);
        }
        let ctx = Arc::new(crate::enrich::SourceContext::new("t".into(), "test", String::new(), Map::new()));
        let batch = out.build(ctx, now);
        let values = batch.events().map(|e| serde_json::from_slice(e).unwrap()).collect();
        (values, sys.take_malformed())
    }

    #[test]
    fn rfc5424_fields_and_structured_data() {
        let head = br#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Appli\"cation" eventID="1011"][examplePriority@32473 class="high"] "#;
        let line = [&head[..], b"\xEF\xBB\xBF", b"An application event"].concat();
        let (v, bad) = decode_all(&[&line]);
        assert_eq!(bad, 0);
        assert_eq!(
            v[0],
            json!({
                "facility": "local4", "severity": "notice", "timestamp": "2003-10-11T22:14:15.003Z",
                "hostname": "mymachine.example.com", "appname": "evntslog", "msgid": "ID47",
                "structured_data": {
                    "exampleSDID@32473": {"iut": "3", "eventSource": "Appli\"cation", "eventID": "1011"},
                    "examplePriority@32473": {"class": "high"}
                },
                "message": "An application event", "host": "collector"
            })
        );
    }

    #[test]
    fn rfc5424_nil_values_and_missing_message() {
        let (v, bad) = decode_all(&[b"<14>1 - - - - - -"]);
        assert_eq!(bad, 0);
        assert_eq!(v[0], json!({"facility":"user","severity":"info","message":"","host":"collector"}));
    }

    #[test]
    fn rfc3164_with_host_tag_and_pid() {
        let (v, bad) = decode_all(&[b"<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed for lonvick on /dev/pts/8\n"]);
        assert_eq!(bad, 0);
        assert_eq!(
            v[0],
            json!({"facility":"auth","severity":"crit","timestamp":"2026-10-11T22:14:15","hostname":"mymachine",
                   "appname":"su","procid":"230","message":"'su root' failed for lonvick on /dev/pts/8","host":"collector"})
        );
    }

    #[test]
    fn rfc3164_local_format_without_host() {
        let (v, _) = decode_all(&[b"<13>Nov  3 02:08:02 root: default", b"<13>Jan  1 00:00:00 cron[12]: x\0"]);
        assert_eq!(v[0]["appname"], "root");
        assert!(v[0].get("hostname").is_none());
        assert_eq!(v[0]["message"], "default");
        assert_eq!(v[0]["timestamp"], "2026-11-03T02:08:02");
        assert_eq!(v[1]["procid"], "12");
        assert_eq!(v[1]["message"], "x");
    }

    #[test]
    fn a_tagless_json_body_is_merged_not_split_at_its_first_colon() {
        let (v, bad) = decode_all(&[
            b"<12>{\"a\":1,\"b\":2}\0",
            b"<12>Nov  3 02:08:02 {\"a\": 1, \"b\": \"x:y\"}",
            b"<12>[\"a:b\"]",
        ]);
        assert_eq!(bad, 0);
        assert_eq!(v[0], json!({"a":1,"b":2,"facility":"user","severity":"warning","host":"collector"}));
        assert_eq!(
            v[1],
            json!({"a":1,"b":"x:y","facility":"user","severity":"warning","timestamp":"2026-11-03T02:08:02","host":"collector"})
        );
        assert_eq!(v[2]["message"], "[\"a:b\"]");
        assert!(v[2].get("appname").is_none());
    }

    #[test]
    fn program_names_real_senders_use_are_still_tags() {
        for (line, app, pid, host) in [
            (
                &b"<22>Nov  3 02:08:02 mx postfix/smtpd[811]: connect"[..],
                "postfix/smtpd",
                Some("811"),
                Some("mx"),
            ),
            (
                b"<38>Nov  3 02:08:02 systemd-logind[1]: New session",
                "systemd-logind",
                Some("1"),
                None,
            ),
            (b"<86>Nov  3 02:08:02 (sd-pam)[9]: x", "(sd-pam)", Some("9"), None),
            (
                b"<166>Nov  3 02:08:02 10.0.0.1 %ASA-6-302013: Built",
                "%ASA-6-302013",
                None,
                Some("10.0.0.1"),
            ),
            (b"<13>python3.11: started", "python3.11", None, None),
        ] {
            let m = parse(line).unwrap();
            let shown = String::from_utf8_lossy(line);
            assert_eq!(m.appname, Some(app.as_bytes()), "{shown}");
            assert_eq!(m.procid, pid.map(str::as_bytes), "{shown}");
            assert_eq!(m.hostname, host.map(str::as_bytes), "{shown}");
        }
    }

    #[test]
    fn december_message_read_in_january_belongs_to_last_year() {
        let jan = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600 + 3600); // 2026-01-01T01:00Z
        let sys = SyslogDecoder::new(jan);
        let m = parse(b"<13>Dec 31 23:59:59 h app: x").unwrap();
        let mut out = Vec::new();
        sys.write_timestamp(m.timestamp.as_ref().unwrap(), &mut out);
        assert_eq!(out, b"2025-12-31T23:59:59");
    }

    #[test]
    fn json_message_is_merged_and_its_fields_win() {
        let (v, bad) = decode_all(&[br#"<11>1 2024-01-01T00:00:00Z h web 7 - - {"severity":"warn","status":503}"#]);
        assert_eq!(bad, 0);
        assert_eq!(
            v[0],
            json!({"severity":"warn","status":503,"facility":"user","timestamp":"2024-01-01T00:00:00Z",
                   "hostname":"h","appname":"web","procid":"7","host":"collector"})
        );
    }

    #[test]
    fn malformed_lines_are_kept_and_counted() {
        let (v, bad) = decode_all(&[b"no priority here", b"<999>x", br#"{"a":1}"#, b"<13>1 2024-01-01T00:00:00Z h"]);
        assert_eq!(bad, 4);
        assert_eq!(v[0]["message"], "no priority here");
        assert_eq!(v[1]["message"], "<999>x");
        assert_eq!(v[2], json!({"a":1,"host":"collector"}));
        assert_eq!(v[3]["message"], "<13>1 2024-01-01T00:00:00Z h");
    }

    #[test]
    fn structured_data_repeats_and_escapes() {
        let (v, _) = decode_all(&[br#"<13>1 - h a - - [x a="1" a="2\]" b="\\q\z"][x c="9"][y] m"#]);
        assert_eq!(v[0]["structured_data"], json!({"x":{"a":["1","2]"],"b":"\\q\\z"},"y":{}}));
        assert_eq!(v[0]["message"], "m");
    }

    #[test]
    fn invalid_structured_data_is_malformed() {
        for l in [
            &b"<13>1 - h a - - [x a=1] m"[..],
            b"<13>1 - h a - - [x a=\"1] m",
            b"<13>1 - h a - - [] m",
            b"<13>1 - h a - - x m",
        ] {
            assert!(parse(l).is_err(), "{}", String::from_utf8_lossy(l));
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_always_give_one_json_object(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (v, _) = decode_all(&[&line]);
            prop_assert_eq!(v.len(), 1);
            prop_assert!(v[0].is_object());
        }

        #[test]
        fn syslog_shaped_noise_never_panics(
            pri in 0u16..200,
            head in "(1 )?[-0-9A-Za-z:. \\[\\]=\"\\\\]{0,80}",
            tail in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let mut line = format!("<{pri}>{head}").into_bytes();
            line.extend(tail);
            let (v, _) = decode_all(&[&line]);
            prop_assert!(v[0].is_object());
        }

        #[test]
        fn every_valid_rfc5424_message_round_trips(
            pri in 0u8..192,
            host in "[!-~&&[^\\-]][!-~]{0,20}",
            app in "[a-z]{1,10}",
            value in "[ -~]{0,20}",
            msg in "[^\\x00\\n\\r\\u{feff}]{0,40}",
        ) {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace(']', "\\]");
            let line = format!("<{pri}>1 2024-01-01T00:00:00Z {host} {app} - - [id k=\"{escaped}\"] {msg}");
            let m = parse(line.as_bytes()).unwrap();
            prop_assert_eq!(m.hostname, Some(host.as_bytes()));
            let (v, bad) = decode_all(&[line.as_bytes()]);
            prop_assert_eq!(bad, 0);
            prop_assert_eq!(&v[0]["structured_data"]["id"]["k"], &json!(value));
            if !looks_like_object(msg.as_bytes()) {
                prop_assert_eq!(&v[0]["message"], &json!(msg.trim_end_matches(['\n', '\r', '\0'])));
            }
        }
    }
}
